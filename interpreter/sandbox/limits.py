"""Per-run resource limits: cgroups (memory, pids) where the host allows, rlimits always.

cgroup v1 (separate memory/ and pids/ hierarchies) and v2 (one unified tree) are both
handled. Each run gets its own child group, so one run's fork bomb or memory bomb
cannot starve another run, and the whole group can be killed at once. Where no cgroup
can be created (no root, no delegation), rlimit fallbacks apply: RLIMIT_AS for memory
and RLIMIT_NPROC for processes (the latter counts every process of the sandbox uid, so
concurrent runs share it; the status report says so).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import uuid
from pathlib import Path

from config import Settings

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
GROUP_NAME = "code-interpreter"


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


@dataclasses.dataclass
class RunCgroup:
    """The cgroup directories of one run (one per v1 hierarchy, or one v2 dir)."""

    dirs: list[Path]
    version: int

    @property
    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for procs in self.procs_files:
            try:
                found.update(int(p) for p in procs.read_text().split())
            except OSError:
                pass
        return found

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
        """SIGKILL everything in the run's group (a fork bomb included)."""
        if self.version == 2:
            try:
                _write(self.dirs[0] / "cgroup.kill", "1")
                return
            except OSError:
                pass
        for _ in range(20):  # v1: pids.max bounds how many can appear meanwhile
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def remove(self) -> None:
        for d in self.dirs:
            try:
                d.rmdir()
            except OSError:
                # Still emptying (processes being reaped); the next sweep removes it.
                pass


@dataclasses.dataclass
class CgroupManager:
    """Creates per-run groups under one parent group of ours."""

    version: int
    parents: list[Path]  # v1: [memory parent, pids parent]; v2: [parent]
    reason: str = ""  # why cgroups are unavailable (when parents is empty)
    # Groups this process created, so a shutdown removes its own leftovers and never an
    # empty group another process (a second worker on the host) is about to fill.
    created: list[RunCgroup] = dataclasses.field(default_factory=list, repr=False)

    @property
    def available(self) -> bool:
        return bool(self.parents)

    @classmethod
    def detect(cls) -> "CgroupManager":
        own = _own_cgroup_paths()
        if (CGROUP_ROOT / "cgroup.controllers").exists():
            return cls._detect_v2(own.get("", "/"))
        return cls._detect_v1(own)

    @classmethod
    def _detect_v1(cls, own: dict[str, str]) -> "CgroupManager":
        parents = []
        for controller in ("memory", "pids"):
            base = CGROUP_ROOT / controller
            if not base.is_dir():
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
            except OSError as exc:
                return cls(1, [], f"cannot create cgroups in {base} ({exc.strerror})")
            parents.append(parent)
        return cls(1, parents)

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
        return cls(2, [parent])

    def create(self, settings: Settings) -> RunCgroup | None:
        if not self.available:
            return None
        name = f"run-{uuid.uuid4().hex[:12]}"
        memory = settings.run_memory_mb * 1024 * 1024
        dirs: list[Path] = []
        try:
            if self.version == 1:
                mem_dir, pids_dir = self.parents[0] / name, self.parents[1] / name
                mem_dir.mkdir()
                dirs.append(mem_dir)
                pids_dir.mkdir()
                dirs.append(pids_dir)
                _write(mem_dir / "memory.limit_in_bytes", str(memory))
                swap_limit = mem_dir / "memory.memsw.limit_in_bytes"
                if swap_limit.exists():  # no escaping the limit into swap
                    _write(swap_limit, str(memory))
                _write(pids_dir / "pids.max", str(settings.run_max_processes))
            else:
                run_dir = self.parents[0] / name
                run_dir.mkdir()
                dirs.append(run_dir)
                _write(run_dir / "memory.max", str(memory))
                if (run_dir / "memory.swap.max").exists():
                    _write(run_dir / "memory.swap.max", "0")
                _write(run_dir / "pids.max", str(settings.run_max_processes))
        except OSError as exc:
            log.warning("could not create a run cgroup (%s); using rlimit fallbacks for this run", exc)
            RunCgroup(dirs, self.version).remove()
            return None
        group = RunCgroup(dirs, self.version)
        self.forget_removed()
        self.created.append(group)
        return group

    def forget_removed(self) -> None:
        self.created = [group for group in self.created if any(d.exists() for d in group.dirs)]

    def remove_own_leftovers(self) -> int:
        """Remove this process's groups that are still there (emptied by now); how many remain."""
        for group in self.created:
            group.remove()
        self.forget_removed()
        return len(self.created)

    def sweep(self) -> None:
        """Remove run groups left behind (processes were still exiting at removal)."""
        for parent in self.parents:
            for child in parent.glob("run-*"):
                try:
                    child.rmdir()
                except OSError:
                    pass


def prlimit_args(settings: Settings, timeout: float, *, with_fallbacks: bool) -> list[str]:
    """`prlimit` options for one run. CPU: SIGXCPU at the soft limit, SIGKILL at the hard."""
    cpu = int(timeout) + 1
    args = [
        f"--cpu={cpu}:{cpu + 2}",
        f"--fsize={settings.max_file_size_bytes}",
        f"--nofile={settings.run_max_open_files}",
        "--core=0",
    ]
    if with_fallbacks:
        args.append(f"--as={settings.run_memory_mb * 1024 * 1024 * 4}")  # address space, generous: not RSS
        args.append(f"--nproc={settings.run_max_processes * max(1, settings.max_concurrent_runs)}")
    return args
