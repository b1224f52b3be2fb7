"""How many runs execute at once, and who goes next when a slot frees.

A plain FIFO semaphore makes a `print('hi')` wait behind every chart queued before
it, although it needs a few milliseconds of CPU where a chart needs most of a
second. Here waiting light runs go first (shortest job first), and a heavy run
that has waited longer than `heavy_max_wait` goes before them, so a steady stream
of small runs cannot starve charts. Overdue heavy runs take turns with light ones
(never two in a row while light runs wait): once every queued chart is overdue, a
plain "overdue first" rule would send the whole backlog of charts ahead of every
small run again.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

DEFAULT_HEAVY_MAX_WAIT = 5.0


class AdmissionGate:
    def __init__(self, capacity: int, *, heavy_max_wait: float = DEFAULT_HEAVY_MAX_WAIT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.heavy_max_wait = heavy_max_wait
        self._clock = clock
        self._free = capacity
        self._light: collections.deque[asyncio.Future] = collections.deque()
        self._heavy: collections.deque[tuple[float, asyncio.Future]] = collections.deque()
        self._last_jumped_queue = False  # the last grant was an overdue heavy run ahead of light ones

    @property
    def waiting(self) -> int:
        return len(self._light) + len(self._heavy)

    async def acquire(self, *, light: bool) -> None:
        if self._free > 0 and not self.waiting:
            self._free -= 1
            return
        future = asyncio.get_running_loop().create_future()
        if light:
            self._light.append(future)
        else:
            self._heavy.append((self._clock(), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted just as we were cancelled: pass the slot on
            else:
                self._forget(future)
            raise

    def release(self) -> None:
        while True:
            future = self._next_waiter()
            if future is None:
                self._free = min(self.capacity, self._free + 1)
                return
            if not future.done():
                future.set_result(None)  # the slot moves straight to the waiter
                return

    def _next_waiter(self) -> asyncio.Future | None:
        overdue = bool(self._heavy) and self._clock() - self._heavy[0][0] >= self.heavy_max_wait
        if self._heavy and (not self._light or (overdue and not self._last_jumped_queue)):
            self._last_jumped_queue = bool(self._light)
            return self._heavy.popleft()[1]
        self._last_jumped_queue = False
        if self._light:
            return self._light.popleft()
        return None

    def _forget(self, future: asyncio.Future) -> None:
        try:
            self._light.remove(future)
        except ValueError:
            for entry in self._heavy:
                if entry[1] is future:
                    self._heavy.remove(entry)
                    break
