"""How many runs execute at once, and who goes next when a slot frees.

A plain FIFO semaphore makes a `print('hi')` wait behind every chart queued before
it, although it needs a few milliseconds of CPU where a chart needs most of a
second. Here waiting light runs go first (shortest job first), and a heavy run
that has waited longer than `heavy_max_wait` is "overdue": it may then go before
light runs, but only into a slot that leaves at least one slot serving light runs.
So charts are never starved (an overdue chart always gets a slot), and a backlog of
overdue charts never blocks every slot while small runs wait. With a single slot,
overdue heavy runs take turns with light ones instead.
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
        self._heavy_running = 0
        self._last_jumped_queue = False  # (one slot) the last grant was an overdue heavy run ahead of light ones

    @property
    def waiting(self) -> int:
        return len(self._light) + len(self._heavy)

    async def acquire(self, *, light: bool) -> None:
        """Wait for a slot. Give it back with `release(light=...)` (the same `light`)."""
        if self._free > 0 and not self.waiting:
            self._free -= 1
            self._heavy_running += not light
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
                self.release(light=light)  # granted just as we were cancelled: pass the slot on
            else:
                self._forget(future)
            raise

    def release(self, *, light: bool) -> None:
        self._heavy_running -= not light
        while True:
            waiter = self._next_waiter()
            if waiter is None:
                self._free = min(self.capacity, self._free + 1)
                return
            future, waiter_is_light = waiter
            if not future.done():
                self._heavy_running += not waiter_is_light
                future.set_result(None)  # the slot moves straight to the waiter
                return

    def _next_waiter(self) -> tuple[asyncio.Future, bool] | None:
        """The waiter the freed slot goes to, and whether it is a light run."""
        if self._heavy and self._light and self._overdue_heavy_may_go_first():
            return self._heavy.popleft()[1], False
        self._last_jumped_queue = False
        if self._light:
            return self._light.popleft(), True
        if self._heavy:
            return self._heavy.popleft()[1], False
        return None

    def _overdue_heavy_may_go_first(self) -> bool:
        if self._clock() - self._heavy[0][0] < self.heavy_max_wait:
            return False
        if self.capacity > 1:
            return self._heavy_running < self.capacity - 1  # one slot stays with the light runs
        if self._last_jumped_queue:
            return False  # one slot: take turns
        self._last_jumped_queue = True
        return True

    def _forget(self, future: asyncio.Future) -> None:
        try:
            self._light.remove(future)
        except ValueError:
            for entry in self._heavy:
                if entry[1] is future:
                    self._heavy.remove(entry)
                    break
