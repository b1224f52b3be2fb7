"""In-process asyncio locks by key (a member, a lease name), for one event loop at a time.

A key's lock exists only while someone holds or waits for it: the table keeps weak
references, and a coroutine holding or awaiting a lock keeps it alive. So memory stays
as small as the contention, however many keys (members) pass through.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Hashable


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[Hashable, asyncio.Lock] = weakref.WeakValueDictionary()
        self._loop: asyncio.AbstractEventLoop | None = None

    def lock(self, key: Hashable) -> asyncio.Lock:
        """The lock of `key`: the same one for everyone who asks while it is in use."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # asyncio locks belong to one event loop (tests run several)
            self._locks = weakref.WeakValueDictionary()
            self._loop = loop
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    def __len__(self) -> int:
        """Locks in use (held, or waited for)."""
        return len(self._locks)
