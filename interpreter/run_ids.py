"""Run ids: made once, when the bot admits a run (interpreter/engine.py), and carried
with the run wherever it goes: the audit record's key, the request to an execution
worker, and the worker's log lines about the run, so a worker's log can be matched to
the bot's audit record.

A worker receives the id from the network, so it accepts only the one format made here
(32 lowercase hex digits): never a string that could be long, or forge a line in its log.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

RUN_ID_CHARS = 32
_RUN_ID = re.compile(r"[0-9a-f]{32}")


def new_run_id() -> str:
    return uuid.uuid4().hex


def is_run_id(value: Any) -> bool:
    """`value` has the format `new_run_id` makes (checked for type and length before the pattern)."""
    return isinstance(value, str) and len(value) == RUN_ID_CHARS and _RUN_ID.fullmatch(value) is not None
