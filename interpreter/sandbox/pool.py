"""Warm sandboxes: started ahead, each serves exactly one run, then is destroyed.

Two lanes, because a `print('hi')` should not pay for pandas:
- heavy: sandboxes whose bootstrap already imported numpy, pandas, matplotlib (Agg,
  font cache ready) and seaborn (about 610 ms of CPU each to prepare);
- light: plain sandboxes, the namespaces and Python already up (a few ms each).
`workload.classify` picks the lane. A pooled sandbox is an ordinary
`SandboxProcess` started before its job: the same launch chain, per-run cgroups,
rlimits, seccomp, output caps and file collection. Only two things differ:
- RLIMIT_CPU is fixed at launch, before the job's timeout is known, so pooled
  sandboxes get the largest timeout's CPU budget; the job's own limit is enforced
  by the wall-clock timeout, which counts from when the job is handed over;
- preloaded modules use part of the run's memory limit (about 90 MB).

Nothing passes between runs: a sandbox is taken out of the pool, given one job and
destroyed with its cgroup (`SandboxProcess.execute` does that), and a sandbox
prepared on an older sandbox venv generation is never handed out.

CPU on a small machine: one keeper task prepares one sandbox at a time, and while it
prepares, the sandbox runs at low CPU priority (nice + its autogroup's nice) so
replenishing never starves runs in flight, and a refill first waits (briefly) for
the runs in flight to end. A run that finds its lane empty does
not wait for replenishment it could beat: it takes over the sandbox being prepared
for its lane (restoring its priority; its imports are already partly done, so it
is never slower than a cold start), or else starts cold at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from interpreter.sandbox.bwrap import VENV_MOUNT
from interpreter.sandbox.workload import Workload

if TYPE_CHECKING:
    from interpreter.sandbox.runner import SandboxProcess, SandboxRunner

log = logging.getLogger(__name__)

WARMING_NICE = 10  # CFS weight ~10x below normal: runs in flight keep their cores
REFILL_DEFER_SECONDS = 1.0  # a refill waits at most this long for the runs in flight to end
READY_TIMEOUT = 60.0  # a sandbox that cannot import its preload in this long is broken
MAX_BACKOFF = 30.0  # between failed starts (a broken venv must not spin the CPU)
PRIORITY_POLLS = 200  # x 5 ms: how long to look for a warming sandbox's Python to appear
PRIORITY_POLL_SECONDS = 0.005
REAP_TIMEOUT = 10.0
EXIT_POLLS = 400  # x 5 ms: how long a killed sandbox may take to leave its cgroup


async def defer_refill(runner, runs_changed: asyncio.Event, closed: Callable[[], bool]) -> bool:
    """Hold a refill (a pooled sandbox, a fork-server spare) back while runs are in flight,
    for at most REFILL_DEFER_SECONDS, but never while a run waits in the queue: that run
    is about to need what the refill makes. True if it waited at all.

    Preparing a sandbox costs CPU and kernel work (namespaces, mounts, imports) that the
    run which just took one would feel, even at low priority: measured on a 2-core VM, a
    warm print('hi') took 17 ms with the refill started at once and 6 ms with it started
    after the run. Under a backlog the opposite holds: a refill held back means the next
    runs are prepared while their member waits, one after another, and the CPUs idle
    between them (bench.mixed_load: print p95 about 20% shorter when spares refill at once).
    `runs_changed` is set by the runner when a run leaves its slot or joins the queue.
    """
    def held_back() -> bool:
        return runner.in_flight > 0 and runner.queued == 0 and not closed()

    if not held_back():
        return False
    deadline = time.monotonic() + REFILL_DEFER_SECONDS
    while held_back() and (remaining := deadline - time.monotonic()) > 0:
        runs_changed.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(runs_changed.wait(), remaining)
    return True


@dataclasses.dataclass
class _Warm:
    """A pooled sandbox and what it was prepared on."""

    sandbox: "SandboxProcess"
    generation: int
    claimed: bool = False  # taken over by a run while still warming
    started_at: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def alive(self) -> bool:
        proc = self.sandbox.proc
        return proc is not None and proc.returncode is None


@dataclasses.dataclass
class _Lane:
    workload: Workload
    preload: str
    target: int
    idle: collections.deque[_Warm] = dataclasses.field(default_factory=collections.deque)
    warming: _Warm | None = None
    served_warm: int = 0  # took a ready sandbox
    served_warming: int = 0  # took over the sandbox being prepared
    served_cold: int = 0  # lane empty: the run started cold
    prepared: int = 0
    failed_starts: int = 0


_OPEN_POOLS: "set[SandboxPool]" = set()


class SandboxPool:
    """Pre-started sandboxes for one runner (`SandboxRunner.start_pool()` makes one). Stop with `await close()`."""

    def __init__(self, runner: "SandboxRunner", *, heavy: int, light: int, heavy_preload: str,
                 warming_nice: int = WARMING_NICE) -> None:
        self.runner = runner
        self.packages = runner.packages
        self.lanes = {
            Workload.HEAVY: _Lane(Workload.HEAVY, heavy_preload, heavy),
            Workload.LIGHT: _Lane(Workload.LIGHT, "", light),
        }
        # Lowering a sandbox's priority is only undoable with CAP_SYS_NICE (root).
        self.warming_nice = warming_nice if os.geteuid() == 0 else 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.generation: int | None = None
        self.drained_for_generation = 0
        self._wake = asyncio.Event()
        self._runs_ended = asyncio.Event()
        self._filled = asyncio.Condition()
        self._keeper: asyncio.Task | None = None
        self._reapers: set[asyncio.Task] = set()
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def enabled(self) -> bool:
        return any(lane.target > 0 for lane in self.lanes.values())

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        """Begin filling the pool in the background (idempotent). Needs a running loop."""
        if self._closed or self._keeper is not None or not self.enabled:
            return
        self.loop = asyncio.get_running_loop()
        self._keeper = self.loop.create_task(self._keep(), name="sandbox-pool-keeper")
        # The loop holds tasks weakly: were the runner dropped without close(), the keeper
        # could be collected before loop shutdown cancels it, leaving its sandboxes running.
        _OPEN_POOLS.add(self)

    async def close(self) -> None:
        """Stop replenishing and destroy every pooled sandbox (runs already handed out finish)."""
        self._closed = True
        keeper, self._keeper = self._keeper, None
        await stop_keeper(keeper)
        await self._drain()
        _OPEN_POOLS.discard(self)

    @property
    def full(self) -> bool:
        return all(len(lane.idle) >= lane.target for lane in self.lanes.values())

    async def wait_until_full(self) -> None:
        """Until every lane holds its target of ready sandboxes (start-up, tests, benchmarks)."""
        async with self._filled:
            await self._filled.wait_for(lambda: self.full or self._closed)

    async def wait_reaped(self) -> None:
        """Until every discarded sandbox has exited and its cgroup is gone (bounded: shutdown never hangs)."""
        deadline = time.monotonic() + REAP_TIMEOUT
        while self._reapers and time.monotonic() < deadline:
            await asyncio.wait(list(self._reapers), timeout=max(0.0, deadline - time.monotonic()))
        if self._reapers:
            log.warning("%d pooled sandboxes did not exit within %ss", len(self._reapers), REAP_TIMEOUT)

    # ------------------------------------------------------------------ taking a sandbox

    async def acquire(self, workload: Workload) -> "SandboxProcess | None":
        """A started sandbox for `workload`, or None: start cold (never slower than waiting)."""
        if self._closed or self._keeper is None:
            return None
        self._check_generation()
        lane = self.lanes[workload]
        if lane.target <= 0:
            return None
        try:
            while lane.idle:
                warm = lane.idle.popleft()
                if warm.alive and warm.generation == self.generation:
                    lane.served_warm += 1
                    self._set_priority(warm.sandbox, 0)
                    return warm.sandbox
                self._discard(warm)
            warm = lane.warming
            if warm is not None and not warm.claimed and warm.generation == self.generation:
                # Its imports are partly done: finishing them at full priority beats starting over.
                warm.claimed = True
                self._set_priority(warm.sandbox, 0)
                try:
                    ready = warm.sandbox.proc is not None and await _ready_within(warm.sandbox, READY_TIMEOUT)
                except BaseException:
                    self._discard(warm)  # ours now: nobody else would destroy it
                    raise
                if ready:
                    lane.served_warming += 1
                    return warm.sandbox
                self._discard(warm)
            lane.served_cold += 1
            return None
        finally:
            self._wake.set()  # something was taken (or found dead): replenish

    # ------------------------------------------------------------------ replenishing

    async def _keep(self) -> None:
        backoff = 0.5
        deferred = False
        me = asyncio.current_task()
        try:
            # cancelling(): a cancellation some await inside swallowed still ends the keeper;
            # otherwise a loop shutting down (asyncio.run's end) would wait on it for ever.
            while not self._closed and not me.cancelling():
                self._check_generation()
                lane = self._lane_to_fill()
                if lane is None:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if not deferred and await self._waited_for_runs_in_flight():
                    deferred = True  # once per refill: under constant load it must still happen
                    continue  # look again: the pool may have been taken from, drained or closed meanwhile
                deferred = False
                if await self._prepare_one(lane):
                    backoff = 0.5
                else:
                    lane.failed_starts += 1
                    await asyncio.sleep(backoff)
                    backoff = min(MAX_BACKOFF, backoff * 2)
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - the pool is an optimisation: runs go cold without it
            log.exception("sandbox pool keeper stopped; runs start cold from now on")
        finally:
            # Also reached when the event loop shuts down with the pool still open.
            self._closed = True
            await self._drain()
            _OPEN_POOLS.discard(self)
            async with self._filled:
                self._filled.notify_all()

    def run_ended(self) -> None:
        """The runner's word that a run left its slot or joined the queue: a deferred refill
        looks again (defer_refill)."""
        self._runs_ended.set()

    async def _waited_for_runs_in_flight(self) -> bool:
        return await defer_refill(self.runner, self._runs_ended, lambda: self._closed)

    def _lane_to_fill(self) -> _Lane | None:
        # Light first: a few ms, and the cheap runs are the ones that come in bursts.
        for workload in (Workload.LIGHT, Workload.HEAVY):
            lane = self.lanes[workload]
            if len(lane.idle) < lane.target:
                return lane
        return None

    async def _prepare_one(self, lane: _Lane) -> bool:
        """Start one sandbox for `lane` and wait until it is ready (or taken over). False: it failed."""
        from interpreter.sandbox.runner import SandboxProcess

        venv_dir: Path = await self.packages.ensure_venv()
        self._check_generation()
        sandbox = SandboxProcess(self.runner, venv_dir, preload=lane.preload,
                                 cpu_seconds=pooled_cpu_seconds(self.runner.settings))
        warm = _Warm(sandbox, self.generation or 0)
        lane.warming = warm
        try:
            await _start_uninterrupted(sandbox)
            await self._lower_priority_once_started(warm)
            ready = await _ready_within(sandbox, READY_TIMEOUT)
        except BaseException:
            if not warm.claimed:
                self._discard(warm)
            raise
        finally:
            if lane.warming is warm:
                lane.warming = None
        if warm.claimed:
            return True  # a run has it now (or found it broken and discarded it)
        if not ready:
            log.warning("a pooled %s sandbox failed to start: %s", lane.workload.value,
                        bytes(sandbox._watch.output[-500:]).decode(errors="replace"))
            self._discard(warm)
            return False
        if self._closed or warm.generation != self.generation:
            self._discard(warm)
            return True
        lane.prepared += 1
        lane.idle.append(warm)
        async with self._filled:
            self._filled.notify_all()
        return True

    # ------------------------------------------------------------------ retiring

    def _check_generation(self) -> None:
        """Drain sandboxes prepared on an older venv: they hold modules from before the change."""
        generation = self.packages.generation
        if generation == self.generation:
            return
        if self.generation is not None:
            self.drained_for_generation += 1
            log.info("sandbox venv generation %s -> %s: draining the pool", self.generation, generation)
        self.generation = generation
        for lane in self.lanes.values():
            while lane.idle:
                self._discard(lane.idle.popleft())
            # A sandbox still warming on the old generation is discarded when it is ready.

    def _discard(self, warm: _Warm) -> None:
        pids = sandbox_pids(warm.sandbox)
        warm.sandbox.kill()
        task = asyncio.get_running_loop().create_task(destroy_fully(warm.sandbox, pids))
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)

    async def _drain(self) -> None:
        for lane in self.lanes.values():
            while lane.idle:
                self._discard(lane.idle.popleft())
            if lane.warming is not None and not lane.warming.claimed:
                self._discard(lane.warming)
                lane.warming = None
        await self.wait_reaped()

    # ------------------------------------------------------------------ CPU priority

    async def _lower_priority_once_started(self, warm: _Warm) -> None:
        """Renice a warming sandbox as soon as its Python exists.

        The sandbox's Python runs in an autogroup made by bwrap's setsid, after launch:
        renicing before it exists would miss that group. Polls every few ms, for the
        first moments of a start only.
        """
        if self.warming_nice == 0:
            return
        sandbox = warm.sandbox
        python = f"{VENV_MOUNT}/bin/python".encode()
        for _ in range(PRIORITY_POLLS):
            if warm.claimed or sandbox._ready.is_set() or not warm.alive:
                return
            pids = sandbox_pids(sandbox)
            for pid in pids:
                _renice_process(pid, self.warming_nice)
            if any(_cmdline(pid).startswith(python) for pid in pids):
                self._set_priority(sandbox, self.warming_nice)  # and anything forked meanwhile
                return
            await asyncio.sleep(PRIORITY_POLL_SECONDS)

    def _set_priority(self, sandbox: "SandboxProcess", nice: int) -> None:
        """Set the nice value of every thread of the sandbox, and of their autogroups.

        With autogroup scheduling (most distributions) each session competes as one
        group, and a sandbox is its own session, so a thread's nice alone would not
        lower it against other sandboxes: the autogroup's nice must change too.
        """
        if self.warming_nice == 0:
            return
        renice_sandbox(sandbox, nice)

    # ------------------------------------------------------------------ reporting

    def describe(self) -> dict:
        return {
            lane.workload.value: {
                "size": lane.target,
                "idle": len(lane.idle),
                "warming": lane.warming is not None,
                "served_warm": lane.served_warm,
                "served_warming": lane.served_warming,
                "served_cold": lane.served_cold,
                "preload": lane.preload or "(none)",
            }
            for lane in self.lanes.values()
        } | {"generation": self.generation, "closed": self._closed}

    def idle_sandboxes(self, workload: Workload) -> list["SandboxProcess"]:
        return [warm.sandbox for warm in self.lanes[workload].idle]


async def stop_keeper(keeper: asyncio.Task | None) -> None:
    """Cancel a background keeper (the pool's, the fork server's) and wait until it has ended."""
    if keeper is not None and not keeper.done():
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper


async def destroy_fully(sandbox: "SandboxProcess", pids: set[int]) -> None:
    """Destroy, then wait until every process of the sandbox has finished exiting.

    The sandbox's own pid 1 dies by --die-with-parent a moment after bwrap, and
    tears its pid namespace down after leaving the cgroup: without this wait, a pool
    that says it is closed could still have a process on its way out.
    """
    try:
        await asyncio.wait_for(sandbox.destroy(), REAP_TIMEOUT)
    except TimeoutError:
        log.warning("a pooled sandbox did not exit after SIGKILL within %ss", REAP_TIMEOUT)
    cgroup = sandbox.cgroup
    for _ in range(EXIT_POLLS):
        if cgroup is not None and cgroup.pids():
            cgroup.kill_all()
        elif not any(is_running(pid) for pid in pids):
            break
        await asyncio.sleep(PRIORITY_POLL_SECONDS)
    if cgroup is not None:
        cgroup.remove()


def is_running(pid: int) -> bool:
    """True while the process exists and is not yet a zombie (killed processes pass through this)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


async def _start_uninterrupted(sandbox: "SandboxProcess") -> None:
    """`sandbox.start()`, never abandoned half-way.

    asyncio's create_subprocess_exec, cancelled while it connects the pipes, closes
    the transport and waits for pipes that never connected: it never returns
    (CPython 3.11). close() cancelling the keeper at that moment would hang shutdown,
    so a start in progress is finished first, then the cancellation goes on.
    """
    starting = asyncio.ensure_future(sandbox.start())
    try:
        await asyncio.shield(starting)
    except asyncio.CancelledError:
        if not starting.done():
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(starting), READY_TIMEOUT)
        raise


async def _ready_within(sandbox: "SandboxProcess", seconds: float) -> bool:
    """True once the sandbox's bootstrap said "ready"; False if it died or took too long.

    Own helper tasks, cancelled on every way out (a cancelled pool must not leave them pending).
    """
    ready = asyncio.ensure_future(sandbox._ready.wait())
    died = asyncio.ensure_future(sandbox.proc.wait())
    try:
        await asyncio.wait({ready, died}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ready.cancel()
        died.cancel()
    return sandbox._ready.is_set()


def sandbox_pids(sandbox: "SandboxProcess") -> set[int]:
    if sandbox.proc is None:
        return set()
    if sandbox.cgroup is not None:
        # The launcher itself first: it may not have joined the cgroup yet.
        return {sandbox.proc.pid} | sandbox.cgroup.pids()
    return _descendants(sandbox.proc.pid)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children[ppid].append(int(entry))
    found, stack = set(), [root]
    while stack:
        pid = stack.pop()
        found.add(pid)
        stack.extend(children.get(pid, ()))
    return found


def renice_sandbox(sandbox: "SandboxProcess", nice: int) -> None:
    """The sandbox's cpu cgroup weight, every thread and their autogroups (see
    SandboxPool._set_priority). Blocking (/proc, cgroup files)."""
    if sandbox.cgroup is not None:
        # With a cpu cgroup per run, nice values only order the threads inside it:
        # the group's own weight is what other runs compete with.
        sandbox.cgroup.set_cpu_weight(nice)
    for _ in range(2):  # a process forked during the first pass inherits, or is seen in the second
        for pid in sandbox_pids(sandbox):
            _renice_process(pid, nice)


def _renice_process(pid: int, nice: int) -> None:
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for tid in threads:
        with contextlib.suppress(OSError):  # gone, or not permitted: priority is best effort
            os.setpriority(os.PRIO_PROCESS, int(tid), nice)


def pooled_cpu_seconds(settings) -> int:
    """RLIMIT_CPU of a pooled sandbox, fixed at launch before its job is known.

    Large enough for the longest one-shot run and for a whole session, so any warm
    sandbox can become either. The job's own limit is its wall-clock timeout, which
    the runner enforces from the moment the job is handed over.
    """
    sessions = settings.session_cpu_seconds if settings.max_sessions > 0 else 0
    return max(settings.max_run_timeout, sessions)
