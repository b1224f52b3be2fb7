"""Per-run cgroups: removed only after their last process has left (none leak under load),
stale ones swept, and a CPU weight and quota per run so no member takes more than a slot.

Real sandboxes and the host's real cgroup tree (v1 here, as root).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import pytest

import interpreter
from interpreter.packages import PackageManager
from interpreter.sandbox import SandboxJob, SandboxRunner
from interpreter.sandbox.limits import DEFAULT_SHARES, STALE_AFTER_SECONDS, CgroupManager, RunCgroup
from interpreter.types import ExitCause
from tests.fixtures_sandbox import RUNNING_AS_ROOT, make_settings

assert RUNNING_AS_ROOT, "tests/test_cgroups.py needs root: the suite runs as root (per-run cgroups, setpriv)"


# Leaves a process holding 80 MB behind, itself holds 60 MB: the kernel takes a while to
# tear such a sandbox down after bwrap has gone, which is when removal used to fail.
HEAVY_EXIT = """
import subprocess, sys
subprocess.Popen([sys.executable, '-c', 'b = bytearray(80 << 20); import time; time.sleep(100)'])
b = bytearray(60 << 20)
print('ok')
"""


def recording(runner: SandboxRunner) -> list[RunCgroup]:
    made: list[RunCgroup] = []
    create = runner.cgroups.create

    def create_and_record(settings):
        group = create(settings)
        made.append(group)
        return group

    runner.cgroups.create = create_and_record
    return made


async def test_no_run_cgroup_is_left_behind_under_load(tmp_path, sandbox_venv):
    """Before: the group was removed while the sandbox was still exiting, the error ignored, and
    the sweep never called: here 14 of 48 directories stayed behind, forever."""
    settings = make_settings(tmp_path, MAX_CONCURRENT_RUNS="4")
    runner = SandboxRunner(settings, PackageManager(settings))
    made = recording(runner)
    jobs = [SandboxJob(code=HEAVY_EXIT, timeout=30) for _ in range(16)]
    jobs += [SandboxJob(code="while True: pass", timeout=1) for _ in range(4)]  # killed at their time-out
    outcomes = await asyncio.gather(*[runner.run(job) for job in jobs])
    await runner.close()
    assert [o.cause for o in outcomes] == [ExitCause.OK] * 16 + [ExitCause.TIMEOUT] * 4, [o.error for o in outcomes]
    assert len(made) == 20 and all(group is not None for group in made)
    left = [d for group in made for d in group.dirs if d.exists()]
    assert left == [], f"{len(left)} run cgroup directories left behind"


async def test_session_cgroups_are_removed_when_sessions_end(tmp_path, sandbox_venv):
    engine = interpreter.configure(make_settings(tmp_path, MAX_CONCURRENT_RUNS="4", SESSIONS_PER_MEMBER="3"))
    made = recording(engine.runner)
    try:
        results = await asyncio.gather(*[interpreter.execute_code(HEAVY_EXIT, user_id=7, session_id=f"g:c:{n}")
                                         for n in range(3)])
        assert all(r["success"] for r in results), [r["error"] for r in results]
    finally:
        await engine.close()
    assert made and [d for group in made for d in group.dirs if d.exists()] == []


def test_stale_run_cgroups_are_swept_at_start_up_and_fresh_ones_are_not():
    manager = CgroupManager.detect()
    assert manager.available, manager.reason
    stale = [parent / f"run-stale{uuid.uuid4().hex[:6]}" for parent in manager.parents]
    fresh = [parent / f"run-fresh{uuid.uuid4().hex[:6]}" for parent in manager.parents]
    try:
        for d in stale + fresh:
            d.mkdir()
        old = time.time() - STALE_AFTER_SECONDS - 5
        for d in stale:
            os.utime(d, (old, old))
        CgroupManager.detect()  # a bot starting up after a crash
        assert [d for d in stale if d.exists()] == []
        assert all(d.exists() for d in fresh)  # perhaps another process's, about to be joined
    finally:
        for d in stale + fresh:
            if d.exists():
                d.rmdir()


async def test_a_run_gets_an_equal_cpu_weight_and_its_quota(tmp_path, sandbox_venv):
    """Before: CPU was limited per process only (RLIMIT_CPU); a run with several processes took
    as many cores as it liked. Read on the host while the session's sandbox is alive."""
    engine = interpreter.configure(make_settings(tmp_path, RUN_CPU_CORES="0.1"))
    try:
        assert "cpu" in engine.runner.describe()["cgroups"]
        result = await interpreter.execute_code("""
import time
wall, cpu = time.monotonic(), time.process_time()
while time.monotonic() - wall < 0.6:
    pass
print(round(time.process_time() - cpu, 2))
""", user_id=7, session_id="g:c:cpu")
        assert result["success"], result["error"]
        used = float(result["output"])
        assert used <= 0.1 * 0.6 + 0.1, f"{used} s of CPU in 0.6 s under a 0.1-core quota"
        cgroup = engine.sessions._sessions["g:c:cpu"].sandbox.cgroup
        cpu_dir = Path(cgroup.cpu_dir)
        assert (cpu_dir / "cpu.cfs_quota_us").read_text().strip() == "10000"
        assert (cpu_dir / "cpu.shares").read_text().strip() == str(DEFAULT_SHARES)
        throttled = dict(line.split() for line in (cpu_dir / "cpu.stat").read_text().splitlines())
        assert int(throttled["nr_throttled"]) > 0
    finally:
        await engine.close()


def in_a_frozen_run_group(manager: CgroupManager, *, orphaned: bool) -> tuple[RunCgroup, int]:
    """A run group holding one `sleep`, frozen: its parent is this test, or (orphaned) init,
    as when the bot that paused the run has died."""
    import subprocess

    group = manager.create(make_settings(Path("/tmp")))
    assert group is not None and group.freezer_dir is not None, manager
    joins = " && ".join(f"echo $$ > {procs}" for procs in group.procs_files)
    inner = f"{joins} && exec sleep 300"
    if orphaned:  # the outer shell exits at once: the inner one is re-parented to init
        out = subprocess.run(["sh", "-c", f"sh -c '{inner}' >/dev/null 2>&1 & echo $!"], capture_output=True,
                             text=True, check=True).stdout
        pid = int(out)
    else:
        pid = subprocess.Popen(["sh", "-c", inner]).pid
    deadline = time.monotonic() + 10
    while pid not in group.pids():
        assert time.monotonic() < deadline, "the sleep never joined its group"
        time.sleep(0.01)
    assert group.freeze()
    return group, pid


def test_a_run_left_frozen_by_a_bot_that_died_is_killed_and_a_live_bots_is_not():
    manager = CgroupManager.detect()
    orphan, orphan_pid = in_a_frozen_run_group(manager, orphaned=True)
    live, live_pid = in_a_frozen_run_group(manager, orphaned=False)
    try:
        CgroupManager.detect()  # the bot starting up again
        deadline = time.monotonic() + 10
        while orphan.pids():
            assert time.monotonic() < deadline, "the orphaned frozen run was left frozen"
            time.sleep(0.01)
        assert live.pids() == {live_pid}  # another bot's paused run is left alone
    finally:
        for group in (orphan, live):
            group.frozen = True
            group.kill_all()
        for group in (orphan, live):
            assert asyncio.run(group.remove_when_empty())
        os.waitpid(live_pid, 0)  # reap the live one's sleep
