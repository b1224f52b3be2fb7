"""Waiting in tests for a state the code reaches on its own, with a deadline instead of a count.

A count of event-loop turns is not a deadline: work done in threads (SQLite writes, the
sandbox's start) takes wall time, and on a loaded machine any count of turns runs out first.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

POLL_SECONDS = 0.01  # how often the condition is looked at, not a time the test depends on


async def until(condition: Callable[[], object], what: str = "the condition", within: float = 60.0) -> None:
    """Let the event loop run until `condition()` holds; fail saying `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not within {within:g} s: {what}"
        await asyncio.sleep(POLL_SECONDS)
