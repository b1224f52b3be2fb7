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
the time some task of it waited for a CPU, or the CPU time its tasks used if that is more.
Not less their summed wait: tasks of one run (a burst of busy threads or processes, or a
run throttled by its own CPU quota) wait at once, their waits can add up to more than the
wall time, and a sleep after such a burst would count as nothing. The time some task
waited is taken as the longest single task's wait, or the summed wait shared out over the
tasks that waited if that is more (`TaskTimes.waited_at_once`): however many tasks a run
has, its sleeps count, and a starved run (one task, or a thread joining a starved one)
keeps its own time small. While one of its tasks is runnable, only its CPU time counts: the kernel
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

A long run's time-out, too, is the time it was allowed to run: at the lowest CPU weight
a run under a backlog gets a few percent of a CPU, so on wall time a member's 8-second
computation would time out having had a fraction of a second, broken by other members'
load. So from the moment it moves to the long lane, its clock leaves out the time its
tasks waited for a CPU (`RunClock.count_own_time`, the same per-task times as above), and
the result says how long it waited. So that no run holds its memory and its long-lane
place forever, a run is stopped all the same once its wall time (paused time aside)
reaches `wall_time_factor` times its time-out. In a slot a run's time-out stays wall
time: there it runs at normal weight beside at most `capacity` others, so what it waits
for a CPU is the machine's own load, shared alike, not a weight we lowered; and slots are
what the queue waits for, so a slot's time-out stretched by a busy machine would hold
every waiter back. Without per-task times the long lane's time-outs are wall time too
(`counts.timed_by_wall` says how often).

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
import enum
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
TimesProbe = Callable[[], TaskTimes | None]  # a run's task times since its probe was made (schedstat.py)
_observer: contextvars.ContextVar[QueueObserver | None] = contextvars.ContextVar("queue_observer", default=None)


@contextlib.contextmanager
def observe_queue(callback: QueueObserver) -> Iterator[None]:
    """Within this block, runs report their queue position to `callback` (see the module doc)."""
    token = _observer.set(callback)
    try:
        yield
    finally:
        _observer.reset(token)


class ClockStop(enum.Enum):
    """Why `RunClock.until` returned."""

    DONE = "done"  # what it waited for happened
    BUDGET = "budget"  # the run used up its time-out of running time
    WALL_CAP = "wall_cap"  # it starved so long that its unpaused wall time reached the cap


# A starved run's time is read again no sooner than this (seconds), and half as often
# each time it made no progress (up to OWN_TIME_RECHECK_MAX): a run that gets no CPU at
# all is not read in a tight loop while its last fraction of a second stays unused.
OWN_TIME_RECHECK = 0.02
OWN_TIME_RECHECK_MAX = 1.0


@dataclasses.dataclass(frozen=True)
class ClockMark:
    """A moment of a RunClock, for the `*_since` methods."""

    at: float
    paused: float
    starved: float


@dataclasses.dataclass
class _OwnTimeReading:
    """Where a run's own time stood at its last reading that knew every wait."""

    unpaused: float  # the clock's unpaused seconds then
    counted: float  # its running seconds then (unpaused less starved)
    times: TaskTimes  # the probe's figures then


class RunClock:
    """A run's time-out clock: the time the run was allowed to run.

    It stands still while the run is paused (`pause`/`resume`: the queue froze it), and,
    once `count_own_time` is called (the queue lowered the run's CPU weight, admission.py),
    it leaves out the time the run's tasks waited for a CPU: its running time is then its
    own time as the probe tells it (`TaskTimes.own_seconds`: wall time less the time some
    task waited for a CPU, or its CPU time if that is more; while one of its tasks is runnable, a wait going on is not in the figures
    yet, so only CPU time counts until it is known). The time it left out is
    `starved_seconds`. So that no run holds its memory and place forever, `until` also
    stops a run whose unpaused wall time reached `wall_factor` times its budget, however
    little of it the run got. Where the probe reads nothing, the clock goes back to wall
    time for good (`own_time_lost`).

    `wait(done, budget)` is the time-out: it returns once `done` is set, or once the run
    has been *running* for `budget` seconds since the wait began (or hit the wall cap).
    """

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._paused_since: float | None = None
        self._paused_before = 0.0  # seconds paused in earlier pauses
        self._changed = asyncio.Event()  # set (and replaced) at every pause and resume
        self._probe: TimesProbe | None = None  # set by count_own_time
        self.wall_factor: float | None = None  # the wall cap, as a multiple of a wait's budget
        self._own: _OwnTimeReading | None = None  # the last reading that knew every wait
        self._starved = 0.0  # seconds left out, at the last reading
        self.own_time_lost = False  # the probe read nothing once: wall time from then on

    @property
    def paused(self) -> bool:
        return self._paused_since is not None

    @property
    def counts_own_time(self) -> bool:
        return self._probe is not None

    def pause(self) -> None:
        if self._paused_since is None:
            self._paused_since = self._now()
            self._signal_change()

    def resume(self) -> None:
        if self._paused_since is not None:
            self._paused_before += self._now() - self._paused_since
            self._paused_since = None
            self._signal_change()

    def count_own_time(self, probe: TimesProbe, wall_factor: float) -> bool:
        """From now on, time the run waits for a CPU does not count (up to the wall cap of
        `wall_factor` times a wait's budget). False (wall time goes on) when the probe reads nothing."""
        if self._probe is not None or self.own_time_lost:
            return self._probe is not None
        times = probe()
        if times is None:
            self.own_time_lost = True
            return False
        self._probe, self.wall_factor = probe, wall_factor
        self._own = _OwnTimeReading(self._unpaused(), self._unpaused(), times)
        return True

    def paused_seconds(self) -> float:
        """Seconds paused in all, the current pause included."""
        current = self._now() - self._paused_since if self._paused_since is not None else 0.0
        return self._paused_before + current

    def starved_seconds(self) -> float:
        """Seconds not counted because the run waited for a CPU (since `count_own_time`)."""
        own, probe = self._own, self._probe
        if own is None or probe is None:
            return self._starved
        unpaused = self._unpaused()
        times = probe()
        if times is None:  # its task list is gone or unreadable: wall time from here on
            log.warning("admission: a run's task times could not be read; its time-out counts wall time from now")
            self._probe, self.own_time_lost = None, True
            return self._starved
        ran = unpaused - own.unpaused
        counted = own.counted + min(ran, times.since(own.times).own_seconds(ran))
        if not times.runnable:  # every wait is known: later readings count from here
            self._own = _OwnTimeReading(unpaused, counted, times)
        # Not kept from reading to reading as a maximum: a reading that caught a task
        # runnable (one that just woke from a sleep, say) under-counts until the next one.
        self._starved = unpaused - counted
        return self._starved

    def mark(self) -> ClockMark:
        """Now, for `ran_since`, `paused_since` and `starved_since`."""
        return ClockMark(self._now(), self.paused_seconds(), self.starved_seconds())

    def ran_since(self, mark: ClockMark) -> float:
        """Seconds the run was allowed to run since `mark`: neither paused nor waiting for a CPU."""
        return self.unpaused_since(mark) - self.starved_since(mark)

    def unpaused_since(self, mark: ClockMark) -> float:
        return self._now() - mark.at - self.paused_since(mark)

    def paused_since(self, mark: ClockMark) -> float:
        return self.paused_seconds() - mark.paused

    def starved_since(self, mark: ClockMark) -> float:
        return self.starved_seconds() - mark.starved

    def _unpaused(self) -> float:
        return self._now() - self.paused_seconds()

    async def wait(self, done: asyncio.Event | asyncio.Future, budget: float) -> bool:
        """True when `done` was set (or finished), False when the run used up `budget`
        running seconds first (or its wall cap). A future is waited for, never cancelled."""
        return await self.until(done, budget) is ClockStop.DONE

    async def until(self, done: asyncio.Event | asyncio.Future, budget: float) -> ClockStop:
        """`wait`, saying why it returned."""
        finished = done.is_set if isinstance(done, asyncio.Event) else done.done
        mark = self.mark()
        recheck, last_ran = OWN_TIME_RECHECK, -1.0
        while not finished():
            changed = self._changed
            timeout = None
            if not self.paused:
                ran = self.ran_since(mark)
                if ran >= budget:
                    return ClockStop.BUDGET
                timeout = budget - ran  # it cannot run faster than the wall clock
                if self.counts_own_time:
                    cap_in = budget * self.wall_factor - self.unpaused_since(mark)
                    if cap_in <= 0:
                        return ClockStop.WALL_CAP
                    recheck = OWN_TIME_RECHECK if ran > last_ran else min(recheck * 2, OWN_TIME_RECHECK_MAX)
                    last_ran = ran
                    timeout = min(max(timeout, recheck), cap_in)
            ours = {asyncio.ensure_future(changed.wait())}
            if isinstance(done, asyncio.Event):
                ours.add(asyncio.ensure_future(done.wait()))
            try:
                await asyncio.wait(ours if isinstance(done, asyncio.Event) else {*ours, done},
                                   timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in ours:
                    waiter.cancel()
        return ClockStop.DONE

    def _signal_change(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


class Pausable(Protocol):
    """What the gate needs to pause a run (a RunCgroup, or the runner's wrapper of one)."""

    def memory_bytes(self) -> int | None: ...

    def freeze(self) -> bool: ...

    def thaw(self) -> None: ...



@dataclasses.dataclass
class LaneCounts:
    """What the gate decided about long runs since it was made (status, benchmarks, tests)."""

    moved_to_long: int = 0  # runs that went on in the long lane (from a slot, or resumed)
    paused: int = 0  # runs paused because the long lane had no place for them
    rechecked: int = 0  # times a run reached its long-after time in wall time but not in its own time
    judged_by_wall: int = 0  # judgements made without per-task times (no probe, or it read nothing)
    timed_by_wall: int = 0  # long runs whose time-out counted wall time (no per-task times to leave their CPU waits out)


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
        before the probe came; `TaskTimes.own_seconds` after)."""
        now = asyncio.get_running_loop().time()
        since = self._measured_since if self._measured_since is not None else now
        times = self._probe() if self._probe is not None else None
        if times is None:
            self.gate.counts.judged_by_wall += 1
            return now - since
        probed = self._probe_since
        if times.ended:  # an ended run sleeps no more
            return (probed - since) + times.on_cpu
        return (probed - since) + times.own_seconds(now - probed)

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
                 wall_time_factor: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.long_capacity = long_capacity
        self.pause_memory_bytes = pause_memory_bytes if long_capacity > 0 else 0  # paused runs wait for the long lane
        self.long_after = long_after
        self.heavy_long_after = heavy_long_after if heavy_long_after is not None else long_after * HEAVY_LONG_FACTOR
        # Every run gets a probe once started (measure_with), and is judged only from then on.
        self.wait_for_probe = wait_for_probe
        # A long run's time-out leaves out the time it waited for a CPU, up to this many
        # times its time-out in wall time (1: wall time, as in a slot).
        self.wall_time_factor = wall_time_factor
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
        # At the lowest weight it waits for a CPU because of our choice, not its code: from
        # here its time-out counts only the time it was let run (up to the wall cap).
        if self.wall_time_factor > 1 and (grant._probe is None
                                          or not grant.clock.count_own_time(grant._probe, self.wall_time_factor)):
            self.counts.timed_by_wall += 1
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
