"""Per-run resource limits: cgroups (memory, pids, cpu) where the host allows, rlimits always.

cgroup v1 (separate memory/, pids/ and cpu/ hierarchies) and v2 (one unified tree) are
both handled. Each run gets its own child group, so one run's fork bomb or memory bomb
cannot starve another run, and the whole group can be killed at once. CPU: every run's
group has the same weight however many processes it starts, and a quota of
RUN_CPU_CORES, so no run takes more than its slot. The cpu controller is optional: a
host without it keeps memory and pids (the status report says so).

A run can be paused whole (`freeze`/`thaw`: the v1 freezer hierarchy, or v2's
cgroup.freeze): the admission queue parks a long run there when the long lane is full
(admission.py). A frozen run cannot allocate, so the memory it holds is fixed and
known (`memory_bytes`). Optional too: without a freezer, runs are never paused. A run
left frozen by a bot that died would ignore its die-with-parent SIGKILL for ever: the
sweep kills it (`_kill_orphaned_frozen`).

Where no cgroup can be created (no root, no delegation), rlimit fallbacks apply:
RLIMIT_AS for memory and RLIMIT_NPROC for processes (the latter counts every process of
the sandbox uid, so concurrent runs share it; the status report says so).

A run's group is removed only once its last process has left (`remove_when_empty`):
the kernel tears a killed sandbox down for a while after bwrap itself has exited.
Groups left behind anyway (a crash of the bot) are swept at start-up and then at most
every SWEEP_INTERVAL_SECONDS, once they are older than STALE_AFTER_SECONDS (a fresh
group is empty for a moment before its launcher joins it, and other processes of the
host may share the parent).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import os
import signal
import time
import uuid
from pathlib import Path

from config import Settings

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
GROUP_NAME = "code-interpreter"
CPU_PERIOD_US = 100_000  # the kernel's default cfs period (v1), so never written there
DEFAULT_SHARES = 1024  # cgroup v1 cpu.shares of a nice-0 task, and of a run's group
LOWEST_NICE = 19
REMOVE_TIMEOUT_SECONDS = 10.0  # a killed sandbox leaves its group in ms; bounded all the same
REMOVE_POLL_SECONDS = 0.005
KILL_AGAIN_EVERY_POLLS = 20
STALE_AFTER_SECONDS = 60.0
SWEEP_INTERVAL_SECONDS = 300.0


def _own_cgroup_paths() -> dict[str, str]:
    """controller -> path of this process's cgroup ('' key for the v2 unified tree)."""
    paths: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _write_text(path: str, value: str) -> None:
    """One write(2) of `value` (a cgroup file takes a value in one write), without pathlib."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def nice_to_weight(nice: int) -> int:
    """The scheduler's weight for a nice value (1024 at 0, x1.25 per step), as a cgroup v1 cpu.shares."""
    return max(2, round(DEFAULT_SHARES / 1.25 ** nice))


@dataclasses.dataclass
class RunCgroup:
    """The cgroup directories of one run (one per v1 hierarchy, or one v2 dir)."""

    dirs: list[Path]
    version: int
    cpu_dir: Path | None = None  # where the cpu controller's files are (None: no CPU control)
    freezer_dir: Path | None = None  # where the freezer's files are (None: cannot be paused)
    frozen: bool = False  # paused by freeze() (only this object freezes the group)
    removed: bool = False  # remove() found every directory gone

    @property
    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs]

    @functools.cached_property
    def _paths(self) -> tuple[list[str], list[str]]:
        """(dirs, procs files) as text: pids() and remove() run many times per run, and
        pathlib's joins and conversions were a visible share of the host's CPU per run."""
        return [str(d) for d in self.dirs], [str(procs) for procs in self.procs_files]

    def join(self, pid: int) -> None:
        """Move `pid` into every directory of the group (OSError: it is in none or some of
        them; the caller kills it). Nothing inside a run can move itself out again: it has
        no cgroup filesystem, and its cgroup namespace hides the hierarchy."""
        for procs in self._paths[1]:
            _write_text(procs, str(pid))  # the move happens in this write (its error is the kernel's refusal)

    def pids(self) -> set[int]:
        """Every process of the run. One hierarchy is read, not each: a run's processes are
        in all of its directories at once (joined together, before anything of the run
        starts, by `join` or the launcher's chain, which stops at the first that fails, and
        the first directory is joined first), and they cannot leave. Reading all four was
        four times the cost on every kill pass and removal poll, for the same set."""
        try:
            with open(self._paths[1][0], "rb") as handle:
                return {int(p) for p in handle.read().split()}
        except OSError:
            return set()

    def oom_killed(self) -> bool:
        for d in self.dirs:
            for name in ("memory.events", "memory.oom_control"):
                try:
                    text = (d / name).read_text()
                except OSError:
                    continue
                for line in text.splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill" and value.strip() not in {"", "0"}:
                        return True
            try:
                if int((d / "memory.failcnt").read_text()) > 0:
                    return True
            except (OSError, ValueError):
                pass
        return False

    def kill_all(self) -> None:
        """SIGKILL everything in the run's group (a fork bomb included), paused or not."""
        try:
            if self.version == 2:
                try:
                    _write(self.dirs[0] / "cgroup.kill", "1")
                    return
                except OSError:
                    pass
            # v1: pass after pass until no process appears that was not killed already (pids.max
            # bounds how many can appear meanwhile). A killed process stays listed until its exit
            # is done, some ms: signalling it again gains nothing, and waiting for the list to
            # empty made every kill ~20 passes of reading the groups (the host's largest cost in a
            # tiny run). Whatever is still leaving, remove_when_empty waits for.
            killed: set[int] = set()
            for _ in range(20):
                pids = self.pids() - killed
                if not pids:
                    return
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                killed |= pids
        finally:
            if self.frozen:  # a v1-frozen process dies only once thawed; signalled first, it runs no code of its own
                self.thaw()

    def freeze(self) -> bool:
        """Stop every process of the run where it stands (they cannot resist it or notice).
        False: this run cannot be frozen (no freezer, or the group is gone)."""
        return self._set_frozen(True)

    def thaw(self) -> None:
        self._set_frozen(False)

    def _set_frozen(self, frozen: bool) -> bool:
        if self.freezer_dir is None:
            return False
        try:
            if self.version == 1:
                _write(self.freezer_dir / "freezer.state", "FROZEN" if frozen else "THAWED")
            else:
                _write(self.freezer_dir / "cgroup.freeze", "1" if frozen else "0")
        except OSError:
            return False
        self.frozen = frozen
        return True

    def memory_bytes(self) -> int | None:
        """What the run's memory cgroup charges it now (pages, page cache, its tmpfs files)."""
        name = "memory.usage_in_bytes" if self.version == 1 else "memory.current"
        try:
            return int((self.dirs[0] / name).read_text())
        except (OSError, ValueError):
            return None

    def set_cpu_weight(self, nice: int) -> None:
        """Weigh the whole run like one task of this nice value (the warm pool lowers a warming
        sandbox). The lowest (nice 19, a run in the long lane) makes the group SCHED_IDLE
        where the kernel has cpu.idle (5.15+): it runs only on CPU no other run wants, and a
        run that wakes up preempts it at once, rather than sharing at weight 15 of 1024."""
        if self.cpu_dir is None:
            return
        idle = self.cpu_dir / "cpu.idle"
        try:
            if idle.exists():  # the weight of an idle group cannot be written: leave idle first
                _write(idle, "1" if nice >= LOWEST_NICE else "0")
                if nice >= LOWEST_NICE:
                    return
            weight = nice_to_weight(nice)
            if self.version == 1:
                _write(self.cpu_dir / "cpu.shares", str(weight))
            else:  # cpu.weight: 1..10000, 100 for nice 0
                _write(self.cpu_dir / "cpu.weight", str(max(1, min(10_000, weight * 100 // DEFAULT_SHARES))))
        except OSError:
            pass  # gone already, or not permitted: priority is best effort

    def cpu_idle(self) -> bool:
        """True when the group is SCHED_IDLE (see set_cpu_weight)."""
        try:
            return self.cpu_dir is not None and (self.cpu_dir / "cpu.idle").read_text().strip() == "1"
        except OSError:
            return False

    def remove(self) -> bool:
        """rmdir every directory now; True when none is left. Fails while processes remain."""
        left = False
        for d in self._paths[0]:
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError:
                left = True
        self.removed = not left
        return self.removed

    async def remove_when_empty(self, timeout: float = REMOVE_TIMEOUT_SECONDS) -> bool:
        """Kill what is left and remove the group once its last process has gone. False: timed out
        (logged; the periodic sweep removes it later).

        Each poll reads the one list of the run's processes and signals only those not
        signalled yet (a process forked meanwhile included); the directories are removed
        once that list is empty. (Trying every rmdir and re-reading every hierarchy's list
        on each poll, while a killed run was still leaving, cost the host more CPU than
        creating the group.)"""
        deadline = time.monotonic() + timeout
        killed: set[int] = set()
        for poll in itertools.count():
            if poll % KILL_AGAIN_EVERY_POLLS == 0:
                killed.clear()  # and so, now and then, signal everyone again: a reused pid is no excuse
            pids = self.pids()
            if self.frozen or pids - killed:
                self.kill_all()
                killed |= pids
            if not pids and self.remove():  # rmdir refuses a group that still has a process
                return True
            if time.monotonic() >= deadline:
                log.warning("run cgroup %s still busy after %ss; left for the sweep", self.dirs[0].name, timeout)
                return False
            await asyncio.sleep(REMOVE_POLL_SECONDS)


@dataclasses.dataclass
class CgroupManager:
    """Creates per-run groups under one parent group of ours."""

    version: int
    parents: list[Path]  # v1: [memory parent, pids parent(, cpu parent)(, freezer parent)]; v2: [parent]
    reason: str = ""  # why cgroups are unavailable (when parents is empty)
    cpu: bool = False  # runs get a CPU weight and quota
    cpu_reason: str = ""  # why not, when cpu is False
    freezer: bool = False  # runs can be paused (v1: the last of `parents` is the freezer's)
    # Groups this process created, so a shutdown removes its own leftovers and never an
    # empty group another process (a second worker on the host) is about to fill.
    created: list[RunCgroup] = dataclasses.field(default_factory=list, repr=False)
    _last_sweep: float = dataclasses.field(default=0.0, repr=False)
    _memsw: bool | None = dataclasses.field(default=None, repr=False)

    @property
    def available(self) -> bool:
        return bool(self.parents)

    @property
    def controllers(self) -> str:
        return ", ".join(["memory", "pids"] + ["cpu"] * self.cpu + ["freezer"] * self.freezer)

    @classmethod
    def detect(cls, settings: Settings | None = None) -> "CgroupManager":
        """Find or make our parent group; sweep run groups a previous process left behind."""
        own = _own_cgroup_paths()
        if (CGROUP_ROOT / "cgroup.controllers").exists():
            manager = cls._detect_v2(own.get("", "/"))
        else:
            manager = cls._detect_v1(own, settings)
        manager.sweep()
        return manager

    @classmethod
    def _detect_v1(cls, own: dict[str, str], settings: Settings | None) -> "CgroupManager":
        manager = cls._detect_v1_limits(own, settings)
        if manager.available:
            freezer = CGROUP_ROOT / "freezer" / own.get("freezer", "/").lstrip("/") / GROUP_NAME
            try:
                freezer.mkdir(exist_ok=True)
            except OSError:
                return manager  # no freezer: runs are never paused (admission.py keeps them in their slot)
            manager.parents.append(freezer)
            manager.freezer = True
        return manager

    @classmethod
    def _detect_v1_limits(cls, own: dict[str, str], settings: Settings | None) -> "CgroupManager":
        parents = []
        for controller in ("memory", "pids", "cpu"):
            base = CGROUP_ROOT / controller
            if not base.is_dir():
                if controller == "cpu":
                    return cls(1, parents, cpu_reason="cgroup v1 cpu controller not mounted")
                return cls(1, [], f"cgroup v1 {controller} controller not mounted")
            parent = base / own.get(controller, "/").lstrip("/") / GROUP_NAME
            try:
                parent.mkdir(exist_ok=True)
                if controller == "memory":
                    # Hierarchical accounting, so limits of the parent (a container) still apply.
                    try:
                        _write(parent / "memory.use_hierarchy", "1")
                    except OSError:
                        pass
                if controller == "cpu":
                    # All runs together weigh like MAX_CONCURRENT_RUNS busy tasks against the rest
                    # of the host (one group would otherwise weigh like a single task).
                    slots = settings.max_concurrent_runs if settings is not None else 1
                    _write(parent / "cpu.shares", str(DEFAULT_SHARES * max(1, slots)))
            except OSError as exc:
                if controller == "cpu":
                    return cls(1, parents, cpu_reason=f"cannot create cgroups in {base} ({exc.strerror})")
                return cls(1, [], f"cannot create cgroups in {base} ({exc.strerror})")
            parents.append(parent)
        return cls(1, parents, cpu=True)

    @classmethod
    def _detect_v2(cls, own: str) -> "CgroupManager":
        own_dir = CGROUP_ROOT / own.lstrip("/")
        parent = own_dir / GROUP_NAME
        try:
            parent.mkdir(exist_ok=True)
            _write(own_dir / "cgroup.subtree_control", "+memory +pids")
            _write(parent / "cgroup.subtree_control", "+memory +pids")
        except OSError as exc:
            return cls(2, [], f"cannot delegate memory/pids controllers under {own_dir} ({exc.strerror})")
        try:
            _write(own_dir / "cgroup.subtree_control", "+cpu")
            _write(parent / "cgroup.subtree_control", "+cpu")
        except OSError as exc:
            return cls(2, [parent], cpu_reason=f"cannot delegate the cpu controller under {own_dir} ({exc.strerror})",
                       freezer=(parent / "cgroup.freeze").exists())
        return cls(2, [parent], cpu=True, freezer=(parent / "cgroup.freeze").exists())

    def create(self, settings: Settings) -> RunCgroup | None:
        if not self.available:
            return None
        name = f"run-{uuid.uuid4().hex[:12]}"
        memory = settings.run_memory_mb * 1024 * 1024
        dirs: list[Path] = []
        quota = round(settings.run_cpu_cores * CPU_PERIOD_US) if settings.run_cpu_cores > 0 else 0
        cpu_dir: Path | None = None
        freezer_dir: Path | None = None
        try:
            if self.version == 1:
                for parent in self.parents:
                    (parent / name).mkdir()
                    dirs.append(parent / name)
                mem_dir, pids_dir = str(dirs[0]), str(dirs[1])
                _write_text(f"{mem_dir}/memory.limit_in_bytes", str(memory))
                if self._has_memsw(dirs[0]):  # no escaping the limit into swap
                    _write_text(f"{mem_dir}/memory.memsw.limit_in_bytes", str(memory))
                _write_text(f"{pids_dir}/pids.max", str(settings.run_max_processes))
                if self.cpu:
                    cpu_dir = dirs[2]
                    # A new group starts at cpu.shares 1024 (DEFAULT_SHARES) and a period of
                    # 100 ms (CPU_PERIOD_US) whatever its parent's: only the quota is written.
                    if quota:
                        _write_text(f"{cpu_dir}/cpu.cfs_quota_us", str(max(1000, quota)))
                if self.freezer:
                    freezer_dir = dirs[-1]
            else:
                run_dir = self.parents[0] / name
                run_dir.mkdir()
                dirs.append(run_dir)
                _write(run_dir / "memory.max", str(memory))
                if (run_dir / "memory.swap.max").exists():
                    _write(run_dir / "memory.swap.max", "0")
                _write(run_dir / "pids.max", str(settings.run_max_processes))
                if self.cpu:
                    cpu_dir = run_dir
                    _write(run_dir / "cpu.max", f"{max(1000, quota)} {CPU_PERIOD_US}" if quota else "max")
                if self.freezer:
                    freezer_dir = run_dir
        except OSError as exc:
            log.warning("could not create a run cgroup (%s); using rlimit fallbacks for this run", exc)
            RunCgroup(dirs, self.version).remove()
            return None
        group = RunCgroup(dirs, self.version, cpu_dir, freezer_dir)
        self.created = [group for group in self.created if not group.removed]  # no stat of every live group per run
        self.created.append(group)
        self.maybe_sweep()
        return group

    def _has_memsw(self, memory_dir: Path) -> bool:
        """Whether the memory controller accounts swap (the same for every group: looked up once)."""
        if self._memsw is None:
            self._memsw = (memory_dir / "memory.memsw.limit_in_bytes").exists()
        return self._memsw

    def forget_removed(self) -> None:
        self.created = [group for group in self.created
                        if not group.removed and any(d.exists() for d in group.dirs)]

    def remove_own_leftovers(self) -> int:
        """Remove this process's groups that are still there (emptied by now); how many remain."""
        for group in self.created:
            group.remove()
        self.forget_removed()
        return len(self.created)

    def sweep(self, stale_after: float = STALE_AFTER_SECONDS) -> int:
        """Remove empty run groups older than `stale_after` seconds; returns how many.

        Non-empty groups refuse rmdir, so a live run (or a session between its runs) is
        never touched; the age spares a group created a moment ago that its launcher has
        not joined yet, here or in another process sharing the parent.
        """
        self._last_sweep = time.monotonic()
        self._kill_orphaned_frozen()
        removed = 0
        now = time.time()
        for parent in self.parents:
            for child in parent.glob("run-*"):
                try:
                    if now - child.stat().st_mtime < stale_after:
                        continue
                    child.rmdir()
                    removed += 1
                except OSError:
                    pass
        if removed:
            log.info("removed %d stale run cgroups", removed)
        return removed

    def _kill_orphaned_frozen(self) -> None:
        """A run paused by a bot that has died stays frozen, deaf even to its die-with-parent
        SIGKILL, with the memory it holds. A frozen group none of whose processes has a
        parent outside it but init, or a bwrap, is such a run: a live bot is the parent of
        its sandboxes' bwrap, a live fork-server template's Python of its runs' inits; when
        that template dies, the inits it cloned fall to its bwrap (pid 1 of its namespace),
        which waits for them for ever. Kill it and thaw it."""
        if not self.freezer:
            return
        state = "freezer.state" if self.version == 1 else "cgroup.freeze"
        for child in self.parents[-1].glob("run-*"):
            try:
                if (child / state).read_text().strip() not in {"FROZEN", "FREEZING", "1"}:
                    continue
            except OSError:
                continue
            group = RunCgroup([child], self.version, freezer_dir=child, frozen=True)  # kill_all thaws it
            pids = group.pids()
            if pids and all(_parent_pid(pid) in pids | {0, 1} or _is_bwrap(_parent_pid(pid)) for pid in pids):
                log.warning("killing run cgroup %s: paused, and the bot that paused it is gone", child.name)
                group.kill_all()

    def maybe_sweep(self) -> None:
        """A sweep at most every SWEEP_INTERVAL_SECONDS (called as runs start)."""
        if time.monotonic() - self._last_sweep >= SWEEP_INTERVAL_SECONDS:
            self.sweep()


def _is_bwrap(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "bwrap"
    except OSError:
        return False


def _parent_pid(pid: int) -> int:
    """`pid`'s parent, 0 when it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def run_rlimits(settings: Settings, timeout: float, *, with_fallbacks: bool) -> dict[str, tuple[int, int]]:
    """The rlimits of one run, as (soft, hard). CPU: SIGXCPU at the soft limit, SIGKILL at the hard.

    `prlimit` sets them for a launched sandbox; a run forked from the fork-server
    template sets the same values itself (interpreter/runtime/forkserver.py).
    """
    cpu = int(timeout) + 1
    limits = {
        "RLIMIT_CPU": (cpu, cpu + 2),
        "RLIMIT_FSIZE": (settings.max_file_size_bytes, settings.max_file_size_bytes),
        "RLIMIT_NOFILE": (settings.run_max_open_files, settings.run_max_open_files),
        "RLIMIT_CORE": (0, 0),
    }
    if with_fallbacks:
        address_space = settings.run_memory_mb * 1024 * 1024 * 4  # address space, generous: not RSS
        processes = settings.run_max_processes * max(1, settings.max_concurrent_runs)
        limits["RLIMIT_AS"] = (address_space, address_space)
        limits["RLIMIT_NPROC"] = (processes, processes)
    return limits


_PRLIMIT_OPTIONS = {"RLIMIT_CPU": "cpu", "RLIMIT_FSIZE": "fsize", "RLIMIT_NOFILE": "nofile", "RLIMIT_CORE": "core",
                    "RLIMIT_AS": "as", "RLIMIT_NPROC": "nproc"}


def prlimit_args(settings: Settings, timeout: float | None, *, with_fallbacks: bool) -> list[str]:
    """`prlimit` options for one run (`timeout` None: no CPU limit, for the fork-server template)."""
    limits: dict = run_rlimits(settings, timeout or 0, with_fallbacks=with_fallbacks)
    if timeout is None:
        limits["RLIMIT_CPU"] = ("unlimited", "unlimited")
    return [f"--{_PRLIMIT_OPTIONS[name]}={soft}:{hard}" for name, (soft, hard) in limits.items()]
