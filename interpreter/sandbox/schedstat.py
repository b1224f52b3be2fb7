"""How much of a run's time was its own: CPU its tasks used, and time they spent waiting
for a CPU, from the kernel's per-task scheduler statistics (/proc/TID/schedstat: ns on
a CPU, ns waiting on a runqueue, timeslices).

The admission queue (admission.py) asks this when it decides whether a run is "long": a
run that is merely starved of CPU (its tasks runnable but not running, because the
machine is busy) must not be taken for a sleep or a loop.

The run's tasks are those listed in its cgroup (every thread of every process, as the
host sees them: `tasks` in cgroup v1, `cgroup.threads` in v2). Counters are taken from
the moment a `RunTaskTimes` is made, per task: a task already there (a spare forked
ahead, a session's sandbox) counts only what it does from then on. A task that has
exited takes its counters with it: it counts what it had when last read (each reading
remembers every task's), and what it did after that is lost. Lost wait makes the run
look *more* its own, never less: the safe side, with wall-time judgement as the limit.
CPU is not lost that way: a process's counters in /proc/PID/stat carry the CPU of its
threads that ended and of the children it reaped (utime, stime, cutime, cstime), so the
run's CPU is also summed over its processes (`cgroup.procs`, beside the task list), and
the larger of the two sums counts. Otherwise a run doing its work in short-lived
processes (subprocess calls in a loop) would look starved while it ran, and its
time-out, which counts only CPU while a task is runnable, would stretch to its wall cap.
Reads are bounded by the run's pids limit, and by MAX_TASKS.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from pathlib import Path

NS = 1e-9
TICK = 1 / os.sysconf("SC_CLK_TCK")  # seconds of one clock tick, the unit of /proc/PID/stat's times
MAX_TASKS = 1024  # a run's tasks read at most (its pids cgroup limit is smaller by default)


@dataclasses.dataclass(frozen=True)
class TaskTimes:
    """Summed over a run's tasks since the probe was made, in seconds."""

    on_cpu: float  # time its tasks ran on a CPU
    waited: float  # time its tasks were runnable but waited on a runqueue (for a CPU, or throttled by its quota)
    # Some task was runnable when read. The kernel adds a wait to `waited` only when the
    # task gets a CPU, so a task waiting now has an unknown wait missing from it: the
    # time not accounted for may be a sleep or that wait, and cannot count as the run's.
    runnable: bool = False
    # No task of the run is left (its code has ended; the host is collecting and tearing
    # down): nothing of it runs or sleeps any more.
    ended: bool = False
    # `waited` task by task (tid -> seconds; ended tasks as last read). Empty: not known
    # task by task, and `waited` is taken for one task's.
    task_waits: Mapping[int, float] = dataclasses.field(default_factory=dict)

    def own_seconds(self, wall: float) -> float:
        """Of `wall` seconds these times cover, those the run ran or slept: wall time less
        the time some task of it waited for a CPU, or its CPU time if that is more. While a
        task is runnable, only CPU time (see `runnable`)."""
        return self.on_cpu if self.runnable else max(wall - self.waited_at_once(wall), self.on_cpu)

    def waited_at_once(self, wall: float) -> float:
        """Of `wall` seconds, at least how long some task of the run waited for a CPU.

        Not `waited`: waits overlap. Tasks of one run compete with each other (a burst of
        busy threads or processes, or a run throttled by its own CPU quota) and wait at
        once, so their waits can add up to more than the wall time, and wall less their
        sum would count a sleep right after such a burst as nothing. The time some task
        waited is at least the longest single task's wait (one task's waits never overlap)
        and at least the summed wait shared out over the tasks that waited (no more than
        all of them wait at once). The larger of those two is taken: so a run's own time
        is never less for its tasks' number, a single starved task (or a thread joining a
        starved one) leaves its own time small, and what is left out (waits that did not
        overlap, spread over many tasks) errs towards counting the run's time, up to the
        wall time."""
        waits = [wait for wait in self.task_waits.values() if wait > 0] or [self.waited]
        return min(wall, max(max(waits), self.waited / len(waits)))

    def since(self, earlier: "TaskTimes") -> "TaskTimes":
        """These times less `earlier`'s (flags as now; a task's wait as its growth since then)."""
        return dataclasses.replace(
            self, on_cpu=max(0.0, self.on_cpu - earlier.on_cpu),
            waited=max(0.0, self.waited - earlier.waited),
            task_waits={tid: wait - earlier.task_waits.get(tid, 0.0) for tid, wait in self.task_waits.items()
                        if wait > earlier.task_waits.get(tid, 0.0)})


def read_schedstat(tid: int | str) -> tuple[int, int] | None:
    """(ns on a CPU, ns waiting on a runqueue) of one task; None when it is gone or unreadable."""
    try:
        with open(f"/proc/{tid}/schedstat", "rb") as handle:
            fields = handle.read().split()
        return int(fields[0]), int(fields[1])
    except (OSError, ValueError, IndexError):
        return None


def read_stat(tid: int | str) -> tuple[bool, float] | None:
    """(running or waiting for a CPU, seconds of CPU of its process: its threads, those
    that ended included, and the children it reaped) from /proc/TID/stat; None when gone."""
    try:
        with open(f"/proc/{tid}/stat", "rb") as handle:
            # the state follows the command name, which may itself hold ') '
            fields = handle.read().rpartition(b") ")[2].split()
        # fields[0] is the state (field 3); utime, stime, cutime, cstime are fields 14-17
        return fields[0] == b"R", sum(int(field) for field in fields[11:15]) * TICK
    except (OSError, ValueError, IndexError):
        return None


def is_runnable(tid: int | str) -> bool:
    """The task is running or waiting for a CPU (state R in /proc/TID/stat)."""
    stat = read_stat(tid)
    return stat is not None and stat[0]


@functools.cache
def schedstat_unavailable() -> str | None:
    """Why per-task scheduler statistics cannot be read here (None: they can). Checked
    once: a kernel without CONFIG_SCHED_INFO has no /proc/PID/schedstat at all."""
    if read_schedstat("self") is None:
        return "/proc/PID/schedstat is not readable on this kernel"
    return None


class RunTaskTimes:
    """A probe for admission.py's `Grant.measure_with`: the CPU and runqueue wait of one
    run's tasks (its cgroup's) since this object was made. Returns None when nothing
    could be read (the gate then judges by wall time, and counts that it did)."""

    def __init__(self, task_list: Path, *, max_tasks: int = MAX_TASKS) -> None:
        self.task_list = task_list
        self.process_list = task_list.with_name("cgroup.procs")  # beside `tasks` (v1) or `cgroup.threads` (v2)
        self.max_tasks = max_tasks
        self._baseline: dict[int, tuple[int, int]] = dict(self._read() or [])
        self._last_seen: dict[int, tuple[int, int]] = {}  # tid -> (cpu, wait) ns since the baseline, last read
        self._process_baseline: dict[int, float] = self._process_cpu()  # pid -> CPU seconds (read_stat)

    @classmethod
    def of_cgroup(cls, cgroup) -> "RunTaskTimes | None":
        """For a RunCgroup (limits.py); None without per-task statistics on this host."""
        if schedstat_unavailable() is not None or not cgroup.dirs:
            return None
        name = "tasks" if cgroup.version == 1 else "cgroup.threads"
        return cls(cgroup.dirs[0] / name)

    def __call__(self) -> TaskTimes | None:
        found = self._read()
        if found is None:
            return None
        runnable = any(is_runnable(tid) for tid, _ in found)
        for tid, (cpu_ns, wait_ns) in found:
            base_cpu, base_wait = self._baseline.get(tid, (0, 0))
            # max(0, ...): a task id reused by a newer task of the run starts again from 0
            self._last_seen[tid] = (max(0, cpu_ns - base_cpu), max(0, wait_ns - base_wait))
        if len(self._last_seen) > self.max_tasks * 4:  # a run that keeps starting tasks: forget the oldest
            self._last_seen = dict(list(self._last_seen.items())[-self.max_tasks:])
        on_cpu = sum(cpu for cpu, _ in self._last_seen.values()) * NS
        task_waits = {tid: wait * NS for tid, (_, wait) in self._last_seen.items() if wait}
        # The same CPU by process, with what ended between readings (a process gone and not
        # yet reaped is missing from both until its reaper's counters have it).
        by_process = sum(max(0.0, cpu - self._process_baseline.get(pid, 0.0))
                         for pid, cpu in self._process_cpu().items())
        # No task left, whether or not one was seen before: its code has ended.
        return TaskTimes(max(on_cpu, by_process), sum(task_waits.values()), runnable, ended=not found,
                         task_waits=task_waits)

    def _process_cpu(self) -> dict[int, float]:
        """pid -> CPU seconds (read_stat) of the run's processes; none when their list is unreadable."""
        try:
            with open(self.process_list, "rb") as handle:
                pids = handle.read().split()[: self.max_tasks]
        except OSError:
            return {}
        found = {}
        for raw in pids:
            stat = read_stat(int(raw))
            if stat is not None:
                found[int(raw)] = stat[1]
        return found

    def _read(self) -> list[tuple[int, tuple[int, int]]] | None:
        """(tid, counters) of the run's tasks; None when its task list cannot be read."""
        try:
            with open(self.task_list, "rb") as handle:
                tids = handle.read().split()[: self.max_tasks]
        except OSError:
            return None
        found = []
        for raw in tids:
            counters = read_schedstat(int(raw))
            if counters is not None:
                found.append((int(raw), counters))
        return found
