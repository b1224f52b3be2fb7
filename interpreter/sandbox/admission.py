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
- within that, members with fewer runs in slots go first, then the member whose last
  run started longest ago, then arrival order: one member's backlog never holds up
  another member's run, and members waiting together take turns.

The lane is a guess from the code's imports (workload.py), and a guess can be wrong: a
`time.sleep` loop or a plain-Python loop looks light. So the queue does not trust it
for long: a run that has been running or sleeping for `long_after` seconds in its slot
(heavy runs: `heavy_long_after`) becomes "long". It gives its slot to the next waiter and
goes on in the long lane (at most `long_capacity` runs, and one per member), where the
runner gives it the lowest CPU weight (`on_long` callbacks), so it uses only the CPU short
runs leave. `long_capacity=0` turns this off.

"Running or sleeping", not wall time: on a busy machine a print can spend most of its
time waiting for a CPU, and a run judged long for that would be demoted to the idle lane
(or paused) where it starves further with its time-out running. So the runner gives each
run a probe (`Grant.measure_with`, schedstat.py) once its sandbox has started: its tasks'
CPU time and runqueue wait since then. A run's own time is its wall time since then less
the time its tasks waited for a CPU, or the CPU time its tasks used if that is more (a run
of many busy processes waits in all of them at once: its wait can exceed its wall time,
never its CPU). While one of its tasks is runnable, only its CPU time counts: the kernel
adds a wait to the statistics when it ends, so a wait going on cannot be told from a
sleep. A run whose tasks have all ended is not long (its code is done; the runner is
collecting its files). At its long-after time a run whose own time is shorter is looked at again when it
could have reached it. Without a probe, or where the probe reads nothing (no
per-task statistics: `counts.judged_by_wall` says how often), wall time decides, as before.
With `wait_for_probe`, the time before the probe (the sandbox starting: the host's work,
not the member's code) does not count either.

When the long lane has no place for it (full, or its member already has a run there),
a long run is paused rather than left in its slot: its whole cgroup is frozen (see
`Grant.can_pause`; limits.py), its time-out clock (`Grant.clock`) stops, and it gives
its slot up all the same. Paused runs take long-lane places as they free, heavy ones
first, then first paused first (still one per member), thawed at the lowest CPU weight. A run's time-out is
the time it was allowed to run: paused time does not count, and the result says how
long it was paused. Pausing is bounded by memory: a frozen run cannot allocate, so what
it holds is measured when it is frozen, and runs are paused only while the paused ones
hold at most `pause_memory_bytes` in all. A long run that cannot be paused (no freezer,
no memory left for pausing) keeps its slot until there is room, as it would without
this. So memory worst case: (capacity + long_capacity) runs at their memory limit each,
plus `pause_memory_bytes`.

A long or paused run holds no slot, so it does not count against its member in the
order below: a member's short run does not queue behind everyone because their own
earlier run sleeps in the long lane.

Queue position: a caller that wants to tell a member where their run stands wraps the
call in `observe_queue(callback)`; the callback gets the 1-based position when the run
has to wait, and 0 when it starts after waiting.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from interpreter.sandbox.schedstat import TaskTimes

log = logging.getLogger(__name__)

DEFAULT_HEAVY_MAX_WAIT = 5.0
DEFAULT_LONG_AFTER = 0.05  # RUN_LONG_AFTER_SECONDS's default
# A heavy run (a chart) needs most of a second of CPU alone, more under load: by default
# it counts as long only after this many times `long_after`, so charts do not fill the
# long lane that exists for runs the guess called light.
HEAVY_LONG_FACTOR = 4
# A run found short of its long-after time (it waited for a CPU) is looked at again when
# it could have reached it, but not sooner than this share of that time: a starved run
# is not re-read in a tight loop.
RECHECK_FRACTION = 0.25
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


class RunClock:
    """A run's time-out clock: it stands still while the run is paused.

    `wait(done, budget)` is the time-out: it returns once `done` is set, or once the run
    has been *running* (not paused) for `budget` seconds since the wait began.
    """

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._paused_since: float | None = None
        self._paused_before = 0.0  # seconds paused in earlier pauses
        self._changed = asyncio.Event()  # set (and replaced) at every pause and resume

    @property
    def paused(self) -> bool:
        return self._paused_since is not None

    def pause(self) -> None:
        if self._paused_since is None:
            self._paused_since = self._now()
            self._signal_change()

    def resume(self) -> None:
        if self._paused_since is not None:
            self._paused_before += self._now() - self._paused_since
            self._paused_since = None
            self._signal_change()

    def paused_seconds(self) -> float:
        """Seconds paused in all, the current pause included."""
        current = self._now() - self._paused_since if self._paused_since is not None else 0.0
        return self._paused_before + current

    def mark(self) -> tuple[float, float]:
        """Now, for `ran_since` and `paused_since`."""
        return self._now(), self.paused_seconds()

    def ran_since(self, mark: tuple[float, float]) -> float:
        return self._now() - mark[0] - self.paused_since(mark)

    def paused_since(self, mark: tuple[float, float]) -> float:
        return self.paused_seconds() - mark[1]

    async def wait(self, done: asyncio.Event | asyncio.Future, budget: float) -> bool:
        """True when `done` was set (or finished), False when the run used up `budget`
        running seconds first. A future is waited for, never cancelled."""
        finished = done.is_set if isinstance(done, asyncio.Event) else done.done
        mark = self.mark()
        while not finished():
            changed = self._changed
            timeout = None
            if not self.paused:
                timeout = budget - self.ran_since(mark)
                if timeout <= 0:
                    return False
            ours = {asyncio.ensure_future(changed.wait())}
            if isinstance(done, asyncio.Event):
                ours.add(asyncio.ensure_future(done.wait()))
            try:
                await asyncio.wait(ours if isinstance(done, asyncio.Event) else {*ours, done},
                                   timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in ours:
                    waiter.cancel()
        return True

    def _signal_change(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


class Pausable(Protocol):
    """What the gate needs to pause a run (a RunCgroup, or the runner's wrapper of one)."""

    def memory_bytes(self) -> int | None: ...

    def freeze(self) -> bool: ...

    def thaw(self) -> None: ...


TimesProbe = Callable[[], TaskTimes | None]


@dataclasses.dataclass
class LaneCounts:
    """What the gate decided about long runs since it was made (status, benchmarks, tests)."""

    moved_to_long: int = 0  # runs that went on in the long lane (from a slot, or resumed)
    paused: int = 0  # runs paused because the long lane had no place for them
    rechecked: int = 0  # times a run reached its long-after time in wall time but not in its own time
    judged_by_wall: int = 0  # judgements made without per-task times (no probe, or it read nothing)


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
        self.clock = RunClock()  # the run's time-out clock (stops while paused); real time, whatever the gate's clock
        self._future: asyncio.Future | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._judged_long = False  # its long-after time came, in its own time
        self._probe: TimesProbe | None = None
        self._measured_since: float | None = None  # loop time from which its own time counts
        self._probe_since: float | None = None  # loop time the probe was attached
        self._on_long: list[Callable[[], None]] = []
        self._pausable: Pausable | None = None
        self._paused_bytes = 0  # what it held when frozen (counted while paused)

    @property
    def paused(self) -> bool:
        return self.clock.paused

    @property
    def overdue(self) -> bool:
        """Started, and still in its slot past its long-after time."""
        return self._judged_long and not self.long and not self.released

    def measure_with(self, probe: TimesProbe | None) -> None:
        """From now on, judge whether this run is long by the time it ran or slept, from
        `probe` (its tasks' CPU and runqueue wait since the probe was made; None: by wall
        time from now). The runner calls it once the run's sandbox has started."""
        if self._probe_since is not None or self.released:
            return
        now = asyncio.get_running_loop().time()
        self._probe, self._probe_since = probe, now
        if self._measured_since is None:  # the gate waited for the probe: its own time starts now
            self._measured_since = now
            if self.started and not self.long:
                self.gate._arm(self, self.gate._long_after_of(self))

    def own_seconds(self) -> float:
        """Seconds this run has run or slept since its own time began counting (wall time
        before the probe came; wall time less runqueue wait, or CPU time, after)."""
        now = asyncio.get_running_loop().time()
        since = self._measured_since if self._measured_since is not None else now
        times = self._probe() if self._probe is not None else None
        if times is None:
            self.gate.counts.judged_by_wall += 1
            return now - since
        probed = self._probe_since
        if times.runnable or times.ended:  # a wait going on is not in `waited` yet; an ended run sleeps no more
            return (probed - since) + times.on_cpu
        return (probed - since) + max(now - probed - times.waited, times.on_cpu)

    def can_pause(self, pausable: Pausable) -> None:
        """This run can be paused whole through `pausable` (the runner passes its cgroup)."""
        self._pausable = pausable
        if self.overdue and not self.paused:
            self.gate._rebalance()  # it became long before it could be paused

    def on_long(self, callback: Callable[[], None]) -> None:
        """Call `callback` when this run moves to the long lane (at once if it already has)."""
        if self.long:
            _call(callback)
        else:
            self._on_long.append(callback)


def _call(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:  # noqa: BLE001 - a failed priority change or thaw must not break the queue
        log.exception("admission: a lane change callback failed")


class _WaitingRuns:
    """The runs waiting for a slot, by lane (light, heavy) and member, each member's in
    arrival order.

    Who goes next, and where a run stands, depend first on its member's standing (runs in
    slots, when their last run started), which all of a member's waiting runs share, and
    then on arrival: so a decision looks at the first waiting run of each member, or counts
    a member's runs at once, instead of weighing every waiting run. With 200 runs queued by
    40 members, the gate weighed ~58,000 runs to admit them (every arrival and every start
    went through the whole list: quadratic in the backlog, ~0.3 ms of the event loop per
    run at 200 queued); now it weighs at most one per waiting member each time.
    """

    def __init__(self) -> None:
        self._lanes: dict[bool, dict[int | None, collections.deque[Grant]]] = {True: {}, False: {}}
        self._counts = {True: 0, False: 0}

    def __len__(self) -> int:
        return self._counts[True] + self._counts[False]

    def __contains__(self, grant: Grant) -> bool:
        runs = self._lanes[grant.light].get(grant.member)
        return runs is not None and any(run is grant for run in runs)

    def add(self, grant: Grant) -> None:
        self._lanes[grant.light].setdefault(grant.member, collections.deque()).append(grant)
        self._counts[grant.light] += 1

    def remove(self, grant: Grant) -> None:
        members = self._lanes[grant.light]
        runs = members[grant.member]
        runs.remove(grant)
        if not runs:
            del members[grant.member]
        self._counts[grant.light] -= 1

    def count(self, light: bool) -> int:
        return self._counts[light]

    def by_member(self, light: bool) -> dict[int | None, collections.deque[Grant]]:
        """Member -> their waiting runs of this lane, first arrived first (do not change it)."""
        return self._lanes[light]

    def firsts(self, light: bool) -> list[Grant]:
        """Each member's first waiting run of this lane: the one of theirs that goes first."""
        return [runs[0] for runs in self._lanes[light].values()]

    def members(self) -> set[int | None]:
        return {*self._lanes[True], *self._lanes[False]}


class AdmissionGate:
    def __init__(self, capacity: int, *, long_capacity: int = 0, long_after: float = DEFAULT_LONG_AFTER,
                 heavy_long_after: float | None = None, pause_memory_bytes: int = 0,
                 heavy_max_wait: float = DEFAULT_HEAVY_MAX_WAIT, wait_for_probe: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.long_capacity = long_capacity
        self.pause_memory_bytes = pause_memory_bytes if long_capacity > 0 else 0  # paused runs wait for the long lane
        self.long_after = long_after
        self.heavy_long_after = heavy_long_after if heavy_long_after is not None else long_after * HEAVY_LONG_FACTOR
        # Every run gets a probe once started (measure_with), and is judged only from then on.
        self.wait_for_probe = wait_for_probe
        self.counts = LaneCounts()
        self.heavy_max_wait = heavy_max_wait
        self._clock = clock
        self._waiting = _WaitingRuns()
        self._in_slots: list[Grant] = []  # started runs holding one of `capacity` slots
        self._long: list[Grant] = []  # started runs in the long lane
        self._paused: list[Grant] = []  # started runs frozen until the long lane has room, first paused first
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
        """Started and not released: in a slot, in the long lane, or paused."""
        return len(self._in_slots) + len(self._long) + len(self._paused)

    @property
    def long_running(self) -> int:
        return len(self._long)

    @property
    def paused(self) -> int:
        return len(self._paused)

    @property
    def paused_bytes(self) -> int:
        return sum(g._paused_bytes for g in self._paused)

    # --- a run's way through

    async def acquire(self, *, light: bool, member: int | None = None) -> Grant:
        """Wait for a slot; give it back with `release(grant)`."""
        grant = Grant(self, member, light, next(self._numbers), self._clock())
        if len(self._in_slots) < self.capacity and not self._waiting:
            self._start(grant)
            return grant
        loop = asyncio.get_running_loop()
        grant._future = loop.create_future()
        self._waiting.add(grant)
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
            self._rebalance()
        elif grant in self._paused:  # cancelled while paused: thawed, so the runner's kill takes effect
            self._paused.remove(grant)
            grant.clock.resume()
            _call(grant._pausable.thaw)
            self._rebalance()
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
                self._last_start = {member: self._last_start.get(member, 0) for member in self._waiting.members()}
            self._last_start[grant.member] = next(self._starts)
        if self.long_capacity > 0 and not self.wait_for_probe:
            grant._measured_since = asyncio.get_running_loop().time()
            self._arm(grant, self._long_after_of(grant))
        if grant._future is not None and not grant._future.done():
            grant._future.set_result(None)

    def _long_after_of(self, grant: Grant) -> float:
        return self.long_after if grant.light else self.heavy_long_after

    def _arm(self, grant: Grant, delay: float) -> None:
        if self.long_capacity > 0:
            grant._timer = asyncio.get_running_loop().call_later(delay, self._long_after_came, grant)

    def _long_after_came(self, grant: Grant) -> None:
        """Its long-after time came in wall time: long if its own time says so too, else look again later."""
        grant._timer = None
        if grant.released or grant not in self._in_slots:
            return
        after = self._long_after_of(grant)
        own = grant.own_seconds()
        if own < after:  # it waited for a CPU meanwhile: not long (yet)
            self.counts.rechecked += 1
            self._arm(grant, max(after - own, after * RECHECK_FRACTION))
            return
        grant._judged_long = True
        self._rebalance()

    def _rebalance(self) -> None:
        """Paused runs take the long lane's free places; overdue runs in slots move to the
        long lane or are paused; then the freed slots are filled."""
        if self.long_capacity > 0:
            while len(self._long) < self.long_capacity:
                ready = [g for g in self._paused if not self._has_long_run(g.member)]
                if not ready:
                    break
                # Heavy runs (charts) first, then first paused first: a chart that outlived its
                # long-after time needs about a second more; a run the guess called light that
                # outlived its (a print takes ~10 ms) is a sleep or a loop, and most of those
                # run to their time-out.
                self._resume(min(ready, key=lambda g: g.light))
            for grant in [g for g in self._in_slots if g.overdue]:
                if len(self._long) < self.long_capacity and not self._has_long_run(grant.member):
                    self._in_slots.remove(grant)
                    self._to_long_lane(grant)
                elif self._pause(grant):
                    self._in_slots.remove(grant)
                # else: nowhere to go; it keeps its slot until there is room
        self._fill_slots()

    def _has_long_run(self, member: int | None) -> bool:
        """One long run per member: their next long ones are paused (or keep their slot) meanwhile."""
        return member is not None and any(g.member == member for g in self._long)

    def _to_long_lane(self, grant: Grant) -> None:
        self._long.append(grant)
        grant.long = True
        self.counts.moved_to_long += 1
        callbacks, grant._on_long = grant._on_long, []
        for callback in callbacks:
            _call(callback)

    def _pause(self, grant: Grant) -> bool:
        """Freeze `grant`'s run if the memory set aside for paused runs holds it; True when paused."""
        pausable = grant._pausable
        room = self.pause_memory_bytes - self.paused_bytes
        if pausable is None or room <= 0:
            return False
        before = pausable.memory_bytes()
        if before is None or before > room or not pausable.freeze():
            return False
        held = pausable.memory_bytes()  # frozen: it can no longer grow
        if held is None or held > room:
            _call(pausable.thaw)
            return False
        grant._paused_bytes = held
        grant.clock.pause()
        self._paused.append(grant)
        self.counts.paused += 1
        return True

    def _resume(self, grant: Grant) -> None:
        self._paused.remove(grant)
        grant._paused_bytes = 0
        grant.clock.resume()
        self._to_long_lane(grant)  # its weight is lowered first (the runner's thaw does that too)
        _call(grant._pausable.thaw)

    def _fill_slots(self) -> None:
        while len(self._in_slots) < self.capacity and self._waiting:
            grant = self._next_waiter()
            self._waiting.remove(grant)
            self._start(grant)

    def _in_slots_of(self, member: int | None) -> int:
        if member is None:
            return 0
        return sum(g.member == member for g in self._in_slots)

    def _fair_first(self, grants: list[Grant]) -> Grant:
        return min(grants, key=self._fairness)

    def _fairness(self, grant: Grant) -> tuple[int, int, int]:
        last = self._last_start.get(grant.member, 0) if grant.member is not None else 0
        return (self._in_slots_of(grant.member), last, grant.order)

    def _next_waiter(self) -> Grant:
        # Each member's first run of a lane is the one of theirs the order below picks (the
        # same standing, the earliest arrival), and, having waited longest, the one that is
        # overdue if any of theirs is.
        light = self._waiting.firsts(True)
        heavy = self._waiting.firsts(False)
        if heavy and light:
            now = self._clock()
            overdue = [g for g in heavy if now - g.arrived >= self.heavy_max_wait]
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
        """Where waiting `grant` stands if nothing else changes: light before heavy, then by
        member standing (fewer in slots, last start longer ago), then arrival."""
        ahead = 0 if grant.light else self._waiting.count(True)  # every light run goes first
        standing = self._fairness(grant)[:2]
        for runs in self._waiting.by_member(grant.light).values():
            theirs = self._fairness(runs[0])[:2]  # the same for all of a member's runs
            if theirs < standing:
                ahead += len(runs)
            elif theirs == standing:  # arrival decides; a new run arrived after all of them
                ahead += len(runs) if runs[-1].order < grant.order else sum(g.order < grant.order for g in runs)
        return ahead + 1
