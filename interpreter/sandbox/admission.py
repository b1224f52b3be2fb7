"""The one queue in front of the sandboxes: how many runs execute at once, who goes
next when a slot frees, and what happens to runs that turn out to be long.

Every run (one-shot, session job, the bot's, the seed API's, the HTTP worker's) waits
here, and only here; the bot's own rules (cooldown, per-member depth, cogs/_queue.py)
only decide whether a request may join.

Who goes next, when a slot frees:
- light runs first (shortest job first: a `print` needs milliseconds, a chart most of
  a second). A heavy run that has waited longer than `heavy_max_wait` is "overdue": it
  may then go first, but only into a slot that leaves at least one slot serving light
  runs (with a single slot, overdue heavy runs take turns with light ones). So charts
  are never starved, and a backlog of charts never blocks every slot;
- within that, members with fewer runs executing go first, then the member whose last
  run started longest ago, then arrival order: one member's backlog never holds up
  another member's run, and members waiting together take turns.

The lane is a guess from the code's imports (workload.py), and a guess can be wrong: a
`time.sleep` loop or a plain-Python loop looks light. So the queue does not trust it
for long: a run still executing after `long_after` seconds (heavy runs: HEAVY_LONG_FACTOR
times that) becomes "long". It gives its slot to the next waiter and goes on in the
long lane (at most `long_capacity` runs, and one per member), where the runner lowers
its CPU priority to the minimum (`on_long` callbacks), so it uses only the CPU short
runs leave. When the long lane is full the
run keeps its slot until a long run ends. `long_capacity=0` turns this off.

Queue position: a caller that wants to tell a member where their run stands wraps the
call in `observe_queue(callback)`; the callback gets the 1-based position when the run
has to wait, and 0 when it starts after waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
import time
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

DEFAULT_HEAVY_MAX_WAIT = 5.0
DEFAULT_LONG_AFTER = 0.5
# A heavy run (a chart) needs most of a second of CPU alone, more under load: it counts
# as long only after this many times `long_after`, so charts do not fill the long lane
# that exists for runs the guess called light.
HEAVY_LONG_FACTOR = 4
_REMEMBERED_MEMBERS = 10_000  # last-start times kept; beyond, only those of waiting members

QueueObserver = Callable[[int], None]
_observer: contextvars.ContextVar[QueueObserver | None] = contextvars.ContextVar("queue_observer", default=None)


@contextlib.contextmanager
def observe_queue(callback: QueueObserver) -> Iterator[None]:
    """Within this block, runs report their queue position to `callback` (see the module doc)."""
    token = _observer.set(callback)
    try:
        yield
    finally:
        _observer.reset(token)


class Grant:
    """A run's hold on the gate, from admission to `release`."""

    def __init__(self, gate: "AdmissionGate", member: int | None, light: bool, order: int, arrived: float) -> None:
        self.gate = gate
        self.member = member
        self.light = light
        self.order = order  # arrival order, for ties
        self.arrived = arrived
        self.started = False
        self.long = False  # moved to the long lane
        self.released = False
        self._future: asyncio.Future | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._on_long: list[Callable[[], None]] = []

    def on_long(self, callback: Callable[[], None]) -> None:
        """Call `callback` when this run moves to the long lane (at once if it already has)."""
        if self.long:
            _call(callback)
        else:
            self._on_long.append(callback)


def _call(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:  # noqa: BLE001 - a failed priority change must not break the queue
        log.exception("admission: an on_long callback failed")


class AdmissionGate:
    def __init__(self, capacity: int, *, long_capacity: int = 0, long_after: float = DEFAULT_LONG_AFTER,
                 heavy_max_wait: float = DEFAULT_HEAVY_MAX_WAIT, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.long_capacity = long_capacity
        self.long_after = long_after
        self.heavy_max_wait = heavy_max_wait
        self._clock = clock
        self._waiting: list[Grant] = []
        self._in_slots: list[Grant] = []  # started runs holding one of `capacity` slots
        self._long: list[Grant] = []  # started runs in the long lane
        self._numbers = itertools.count()
        self._starts = itertools.count(1)
        self._last_start: dict[int, int] = {}  # member -> when (in start order) their last run started
        self._last_jumped_queue = False  # (one slot) the last grant was an overdue heavy run ahead of light ones

    # --- what status shows

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._in_slots) + len(self._long)

    @property
    def long_running(self) -> int:
        return len(self._long)

    # --- a run's way through

    async def acquire(self, *, light: bool, member: int | None = None) -> Grant:
        """Wait for a slot; give it back with `release(grant)`."""
        grant = Grant(self, member, light, next(self._numbers), self._clock())
        if len(self._in_slots) < self.capacity and not self._waiting:
            self._start(grant)
            return grant
        loop = asyncio.get_running_loop()
        grant._future = loop.create_future()
        self._waiting.append(grant)
        observer = _observer.get()
        if observer is not None:
            _call(lambda: observer(self._position(grant)))
        try:
            await grant._future
        except asyncio.CancelledError:
            if grant.started:
                self.release(grant)  # granted just as we were cancelled: pass the slot on
            else:
                self._waiting.remove(grant)
            raise
        if observer is not None:
            _call(lambda: observer(0))
        return grant

    def release(self, grant: Grant) -> None:
        if grant.released:
            return
        grant.released = True
        if grant._timer is not None:
            grant._timer.cancel()
        if grant in self._long:
            self._long.remove(grant)
            self._move_overdue_to_long_lane()
        elif grant in self._in_slots:
            self._in_slots.remove(grant)
            self._fill_slots()
        elif grant in self._waiting:
            self._waiting.remove(grant)

    # --- internals

    def _start(self, grant: Grant) -> None:
        grant.started = True
        self._in_slots.append(grant)
        if grant.member is not None:
            if len(self._last_start) > _REMEMBERED_MEMBERS:
                self._last_start = {g.member: self._last_start.get(g.member, 0) for g in self._waiting}
            self._last_start[grant.member] = next(self._starts)
        if self.long_capacity > 0:
            after = self.long_after * (1 if grant.light else HEAVY_LONG_FACTOR)
            grant._timer = asyncio.get_running_loop().call_later(after, self._became_long, grant)
        if grant._future is not None and not grant._future.done():
            grant._future.set_result(None)

    def _became_long(self, grant: Grant) -> None:
        grant._timer = None
        if not grant.released and grant in self._in_slots:
            self._move_overdue_to_long_lane()

    def _move_overdue_to_long_lane(self) -> None:
        """Runs that have held a slot past `long_after` move to the long lane while it has room."""
        for grant in [g for g in self._in_slots if g._timer is None and self.long_capacity > 0]:
            if len(self._long) >= self.long_capacity:
                break
            if grant.member is not None and any(g.member == grant.member for g in self._long):
                continue  # one long run per member: their next long one keeps its slot meanwhile
            self._in_slots.remove(grant)
            self._long.append(grant)
            grant.long = True
            callbacks, grant._on_long = grant._on_long, []
            for callback in callbacks:
                _call(callback)
        self._fill_slots()

    def _fill_slots(self) -> None:
        while len(self._in_slots) < self.capacity and self._waiting:
            grant = self._next_waiter()
            self._waiting.remove(grant)
            self._start(grant)

    def _executing(self, member: int | None) -> int:
        if member is None:
            return 0
        return sum(g.member == member for g in itertools.chain(self._in_slots, self._long))

    def _fair_first(self, grants: list[Grant]) -> Grant:
        return min(grants, key=self._fairness)

    def _fairness(self, grant: Grant) -> tuple[int, int, int]:
        last = self._last_start.get(grant.member, 0) if grant.member is not None else 0
        return (self._executing(grant.member), last, grant.order)

    def _next_waiter(self) -> Grant:
        light = [g for g in self._waiting if g.light]
        heavy = [g for g in self._waiting if not g.light]
        if heavy and light:
            overdue = [g for g in heavy if self._clock() - g.arrived >= self.heavy_max_wait]
            if overdue and self._overdue_heavy_may_go_first():
                return self._fair_first(overdue)
        self._last_jumped_queue = False
        return self._fair_first(light or heavy)

    def _overdue_heavy_may_go_first(self) -> bool:
        if self.capacity > 1:
            heavy_in_slots = sum(not g.light for g in self._in_slots)
            return heavy_in_slots < self.capacity - 1  # one slot stays with the light runs
        if self._last_jumped_queue:
            return False  # one slot: take turns
        self._last_jumped_queue = True
        return True

    def _position(self, grant: Grant) -> int:
        """Where `grant` stands if nothing else changes: light before heavy, fewer executing first."""
        ahead = [g for g in self._waiting if g is not grant and self._sort_key(g) < self._sort_key(grant)]
        return len(ahead) + 1

    def _sort_key(self, grant: Grant) -> tuple[bool, int, int, int]:
        return (not grant.light, *self._fairness(grant))
