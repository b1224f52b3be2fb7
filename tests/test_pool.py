"""Warm sandboxes: pooled runs keep every promise of cold runs, and never share anything.

Real sandboxes throughout. Waiting for the pool uses `pool.wait_until_full()` (an
event, not a sleep); the admission gate runs on a controllable clock.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from pathlib import Path

import pytest

from interpreter.packages import PackageManager
from interpreter.sandbox import SandboxRunner
from interpreter.sandbox.admission import AdmissionGate
from interpreter.sandbox.pool import is_running as alive
from interpreter.sandbox.pool import sandbox_pids
from interpreter.sandbox.workload import Workload, classify
from interpreter.types import ExitCause
from tests.fixtures_sandbox import make_settings
from tests.sandbox_helpers import files_by_name, run
from tests.waiting import until

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FILL_TIMEOUT = 120  # preparing a heavy sandbox takes ~1 s; a loaded CI machine may take far longer


class BumpablePackages(PackageManager):
    """The real PackageManager, whose generation a test can advance (as an install would)."""

    bump = 0

    @property
    def generation(self) -> int:
        return super().generation + self.bump


def pool_runner(data_dir: Path, *, heavy: int = 1, light: int = 1, **environ: str) -> SandboxRunner:
    settings = make_settings(
        data_dir,
        SANDBOX_POOL_SIZE=str(heavy),
        SANDBOX_LIGHT_POOL_SIZE=str(light),
        **({"SANDBOX_FORK_SERVER": "false"} | environ),  # the pool's own promises (test_forkserver.py has the template's)
    )
    return SandboxRunner(settings, BumpablePackages(settings))


@pytest.fixture
async def pooled(tmp_path, sandbox_venv):
    data = tmp_path / "data"
    data.mkdir()
    runner = pool_runner(data)
    pool = await runner.start_pool()
    await asyncio.wait_for(pool.wait_until_full(), FILL_TIMEOUT)
    yield runner
    await runner.close()


def served(runner: SandboxRunner, workload: Workload) -> dict:
    return runner.pool.describe()[workload.value]


def host_pids(runner: SandboxRunner) -> set[int]:
    pids: set[int] = set()
    for lane in runner.pool.lanes.values():
        for warm in list(lane.idle) + ([lane.warming] if lane.warming else []):
            pids |= sandbox_pids(warm.sandbox)
    return pids


def describe(pid: int) -> str:
    try:
        return f"{pid}: {Path(f'/proc/{pid}/stat').read_text()[:200]} {Path(f'/proc/{pid}/cmdline').read_bytes()[:80]!r}"
    except OSError:
        return f"{pid}: gone"


def nice_of(pid: int) -> tuple[int, int]:
    """(the process's nice, its autogroup's nice): with autogroup scheduling both matter."""
    nice = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[16])
    autogroup = Path(f"/proc/{pid}/autogroup").read_text().split()[-1]  # "/autogroup-123 nice 10"
    return nice, int(autogroup)


# ---------------------------------------------------------------------- classification and admission


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("print('hi')", Workload.LIGHT),
        ("import json, math\nprint(math.pi)", Workload.LIGHT),
        ("import pandas as pd\nprint(pd.__version__)", Workload.HEAVY),
        ("from matplotlib import pyplot as plt", Workload.HEAVY),
        ("import seaborn.objects", Workload.HEAVY),
        ("df = load_file('f_1')", Workload.HEAVY),
        ("plt.plot([1, 2])", Workload.HEAVY),  # the seed's examples use plt without importing it
        ("m = __import__('numpy')", Workload.HEAVY),
        ("print('no pandas or numpy imported here')", Workload.LIGHT),
        ("def broken(:\n import pandas", Workload.HEAVY),
        ("def broken(:", Workload.LIGHT),
    ],
)
def test_classify_looks_at_imports_and_names(code, expected):
    assert classify(code) is expected


class GateScene:
    """Busy slots, a controllable clock, and waiters that note the order they get in."""

    def __init__(self, capacity: int = 1) -> None:
        self.now = 0.0
        self.gate = AdmissionGate(capacity, heavy_max_wait=5.0, clock=lambda: self.now)
        self.order: list[str] = []
        self.tasks: list[asyncio.Task] = []
        self.holders: list[tuple[str, object]] = []  # (who, grant) holding a slot, oldest first
        self.heavy_holding_while_light_waited: list[int] = []

    async def occupy(self, count: int = 1) -> None:
        for n in range(count):
            self.holders.append((f"heavy-occupant-{n}", await self.gate.acquire(light=False)))

    async def queue(self, *names: str) -> None:
        """Queue waiters in this order ('light-…' names are light runs)."""
        for name in names:
            self.tasks.append(asyncio.create_task(self._wait(name, name.startswith("light"))))
        await asyncio.sleep(0)

    async def _wait(self, name: str, light: bool) -> None:
        grant = await self.gate.acquire(light=light)
        self.order.append(name)
        self.holders.append((name, grant))
        if self.gate._waiting.count(light=True):  # light runs still wait: how many slots do heavy runs hold?
            self.heavy_holding_while_light_waited.append(sum(not h.startswith("light") for h, _ in self.holders))

    async def release(self) -> None:
        """The oldest holder finishes."""
        _, grant = self.holders.pop(0)
        self.gate.release(grant)
        await asyncio.sleep(0)


async def test_gate_admits_light_runs_first_but_not_forever():
    scene = GateScene()
    await scene.occupy()
    await scene.queue("heavy-1")
    await scene.queue("light-1", "light-2")
    await scene.release()
    assert scene.order == ["light-1"]  # a light run overtook the heavy one queued before it
    scene.now = 6.0  # the heavy run has now waited longer than heavy_max_wait
    await scene.release()
    assert scene.order == ["light-1", "heavy-1"]
    await scene.release()
    await asyncio.gather(*scene.tasks)
    assert scene.order == ["light-1", "heavy-1", "light-2"]


async def test_with_one_slot_overdue_heavy_runs_take_turns_with_light_ones():
    scene = GateScene()
    await scene.occupy()
    await scene.queue("heavy-1", "heavy-2", "heavy-3", "light-1", "light-2", "light-3")
    scene.now = 60.0  # every queued chart is overdue now
    for _ in range(6):
        await scene.release()
    await asyncio.gather(*scene.tasks)
    # a backlog of overdue charts does not push every small run to the end
    assert scene.order == ["heavy-1", "light-1", "heavy-2", "light-2", "heavy-3", "light-3"]


async def test_overdue_heavy_runs_never_take_the_last_slot_from_light_ones():
    """Two slots: overdue charts keep one slot busy, the other keeps serving small runs
    (taking turns per grant let two 2-second charts hold both slots while 60 ms runs
    queued up behind them)."""
    scene = GateScene(capacity=2)
    await scene.occupy(2)
    await scene.queue("heavy-1", "heavy-2", "heavy-3", "light-1", "light-2", "light-3", "light-4")
    scene.now = 60.0  # every queued chart is overdue
    for _ in range(7):
        await scene.release()
    await asyncio.gather(*scene.tasks)
    assert scene.order == ["light-1", "heavy-1", "light-2", "heavy-2", "light-3", "heavy-3", "light-4"]
    assert scene.heavy_holding_while_light_waited and max(scene.heavy_holding_while_light_waited) == 1
    # and with nothing light waiting, charts use every slot
    await scene.queue("heavy-4", "heavy-5")
    await scene.release()
    await scene.release()
    await asyncio.gather(*scene.tasks)
    assert scene.order[-2:] == ["heavy-4", "heavy-5"] and all(h.startswith("heavy") for h, _ in scene.holders)


async def test_gate_passes_on_a_slot_granted_to_a_cancelled_waiter():
    gate = AdmissionGate(1)
    holder = await gate.acquire(light=True)
    first = asyncio.create_task(gate.acquire(light=True))
    second = asyncio.create_task(gate.acquire(light=True))
    await asyncio.sleep(0)
    gate.release(holder)  # granted to `first`...
    first.cancel()  # ...which is cancelled before it runs: `second` must get the slot
    await asyncio.wait_for(second, 5)


# ---------------------------------------------------------------------- pooled runs keep the promises


async def test_pooled_runs_return_the_same_result_shape_as_cold_runs(tmp_path, sandbox_venv):
    import interpreter

    data = tmp_path / "data"
    data.mkdir()
    engine = interpreter.configure(make_settings(data, SANDBOX_POOL_SIZE="1", SANDBOX_LIGHT_POOL_SIZE="1"))
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.savefig('chart.png')\nprint('drawn')"
    cold = await engine.execute(code, user_id=1)  # no pool started yet: a cold run
    pool = await engine.runner.start_pool()
    await asyncio.wait_for(pool.wait_until_full(), FILL_TIMEOUT)
    warm = await engine.execute(code, user_id=1)
    try:
        assert served(engine.runner, Workload.HEAVY)["served_warm"] == 1
        assert cold["success"] and warm["success"], (cold["error"], warm["error"])
        assert set(warm) == set(cold)
        assert warm["output"] == cold["output"] == "drawn\n"
        assert [f["filename"] for f in warm["generated_files"]] == ["chart.png"]
        assert warm["generated_files"][0]["data"].startswith(PNG_MAGIC)
        assert warm["exit_cause"] == "ok" and warm["return_code"] == 0
    finally:
        await engine.runner.close()


async def test_pooled_run_times_out_with_the_jobs_own_limit(pooled):
    # The sandbox was launched before this job's 1 s limit was known: the wall clock enforces it.
    outcome = await run(pooled, "import pandas\nwhile True: pass", timeout=1)
    assert served(pooled, Workload.HEAVY)["served_warm"] == 1
    assert outcome.cause is ExitCause.TIMEOUT
    assert outcome.error == "Execution timeout after 1 seconds"


async def test_pooled_run_keeps_the_memory_limit(tmp_path, sandbox_venv):
    data = tmp_path / "data"
    data.mkdir()
    runner = pool_runner(data, heavy=1, light=0, RUN_MEMORY_MB="300")
    pool = await runner.start_pool()
    try:
        await asyncio.wait_for(pool.wait_until_full(), FILL_TIMEOUT)
        outcome = await run(runner, "import numpy as np\nhog = np.ones(600 * 2**20, dtype=np.uint8)\nprint('survived')")
        assert served(runner, Workload.HEAVY)["served_warm"] == 1
        assert outcome.cause is ExitCause.MEMORY, (outcome.cause, outcome.error, outcome.output)
        assert "survived" not in outcome.output
        assert outcome.error == "Out of memory: the code used more than 300 MB and was stopped"
    finally:
        await runner.close()


async def test_pooled_run_keeps_the_output_cap_and_collects_files(pooled):
    outcome = await run(
        pooled,
        """
        import seaborn as sns, matplotlib.pyplot as plt
        sns.barplot(x=['a', 'b'], y=[1, 2])
        with open('notes.txt', 'w') as fh:
            fh.write('kept')
        print('x' * 200_000)
        """,
    )
    assert served(pooled, Workload.HEAVY)["served_warm"] == 1
    assert outcome.cause is ExitCause.OK, outcome.error
    assert outcome.output_truncated
    files = files_by_name(outcome)
    assert files["notes.txt"] == b"kept"
    assert files["figure_1.png"].startswith(PNG_MAGIC)


# ---------------------------------------------------------------------- one sandbox, one run


async def test_a_pooled_sandbox_never_serves_a_second_run(pooled):
    leave_traces = """
    import builtins, os, subprocess
    builtins.SECRET_OF_RUN_ONE = 'member one'
    open('/tmp/left-by-run-one', 'w').write('member one')
    open('/dev/shm/left-by-run-one', 'w').write('member one')
    subprocess.Popen(['sleep', '300'], start_new_session=True)
    print('traces left')
    """
    look_for_traces = """
    import builtins, os
    print(hasattr(builtins, 'SECRET_OF_RUN_ONE'))
    print(os.path.exists('/tmp/left-by-run-one'), os.path.exists('/dev/shm/left-by-run-one'))
    print(any(open(f'/proc/{p}/cmdline', 'rb').read().startswith(b'sleep')
              for p in os.listdir('/proc') if p.isdigit()))
    """
    first = await run(pooled, leave_traces)
    assert first.output == "traces left\n", first.error
    await asyncio.wait_for(pooled.pool.wait_until_full(), FILL_TIMEOUT)
    second = await run(pooled, look_for_traces)
    assert served(pooled, Workload.LIGHT)["served_warm"] == 2  # both runs were served warm
    assert second.output == "False\nFalse False\nFalse\n", second.error


async def test_the_pool_refills_with_new_sandboxes(pooled):
    before = {id(s) for s in pooled.pool.idle_sandboxes(Workload.HEAVY)}
    outcome = await run(pooled, "import pandas as pd\nprint(pd.DataFrame({'a': [1, 2]}).a.sum())")
    assert outcome.output == "3\n", outcome.error
    assert pooled.pool.idle_sandboxes(Workload.HEAVY) == []
    await asyncio.wait_for(pooled.pool.wait_until_full(), FILL_TIMEOUT)
    after = pooled.pool.idle_sandboxes(Workload.HEAVY)
    assert len(after) == 1 and id(after[0]) not in before


async def turns(count: int = 200) -> None:
    """Let the event loop run `count` times (no wall-clock waiting)."""
    for _ in range(count):
        await asyncio.sleep(0)


async def test_a_refill_waits_for_the_run_in_flight(pooled):
    """Preparing a sandbox would slow the run that just took one: the refill starts
    when the run leaves its slot."""
    lane = pooled.pool.lanes[Workload.LIGHT]
    async with pooled.slot(light=True):  # a run in flight
        taken = await pooled.pool.acquire(Workload.LIGHT)
        assert taken is not None
        await turns()
        assert lane.warming is None and not lane.idle, "a refill started while the run was in flight"
        await taken.destroy()
    await asyncio.wait_for(pooled.pool.wait_until_full(), FILL_TIMEOUT)  # the run ended: refilled


async def test_a_refill_waits_only_so_long_for_busy_runs(pooled, monkeypatch):
    """Under constant load the pool still refills: the wait is capped."""
    monkeypatch.setattr("interpreter.sandbox.pool.REFILL_DEFER_SECONDS", 0.05)
    async with pooled.slot(light=True):  # in flight throughout
        taken = await pooled.pool.acquire(Workload.LIGHT)
        await asyncio.wait_for(pooled.pool.wait_until_full(), FILL_TIMEOUT)
        await taken.destroy()


async def test_a_refill_goes_at_once_while_a_run_waits_in_the_queue(pooled, monkeypatch):
    """Holding a refill back spares the runs in flight, but a run waiting in the queue is
    about to need what the refill makes: under a backlog, refills must not wait."""
    monkeypatch.setattr("interpreter.sandbox.pool.REFILL_DEFER_SECONDS", 3600)  # only the queue lets it go
    holders = [pooled.slot(light=True) for _ in range(pooled.settings.max_concurrent_runs)]
    for holder in holders:
        await holder.__aenter__()  # every slot taken: runs in flight

    async def wait_in_the_queue() -> None:
        async with pooled.slot(light=True):
            pass

    queued = asyncio.create_task(wait_in_the_queue())
    try:
        await until(lambda: pooled.queued == 1, "a run waiting in the queue")
        taken = await pooled.pool.acquire(Workload.LIGHT)
        assert taken is not None
        await asyncio.wait_for(pooled.pool.wait_until_full(), FILL_TIMEOUT)  # refilled, runs still in flight
        await taken.destroy()
    finally:
        for holder in holders:
            await holder.__aexit__(None, None, None)
        await asyncio.wait_for(queued, FILL_TIMEOUT)


async def test_warming_sandboxes_run_at_low_priority_and_jobs_at_normal(pooled):
    sandbox = pooled.pool.idle_sandboxes(Workload.LIGHT)[0]
    pids = sandbox.cgroup.pids()
    assert pids and all(nice_of(pid) == (10, 10) for pid in pids)
    taken = await pooled.pool.acquire(Workload.LIGHT)
    assert taken is sandbox
    try:
        assert all(nice_of(pid) == (0, 0) for pid in pids)
    finally:
        await taken.destroy()


async def test_a_new_venv_generation_drains_the_pool(pooled):
    old = pooled.pool.idle_sandboxes(Workload.HEAVY) + pooled.pool.idle_sandboxes(Workload.LIGHT)
    old_pids = host_pids(pooled)
    pooled.packages.bump += 1  # as a package install or a venv rebuild does
    outcome = await run(pooled, "print('after the upgrade')")
    assert outcome.output == "after the upgrade\n", outcome.error
    assert served(pooled, Workload.LIGHT)["served_warm"] == 0  # the old ones were not used
    await asyncio.wait_for(pooled.pool.wait_until_full(), FILL_TIMEOUT)
    new = pooled.pool.idle_sandboxes(Workload.HEAVY) + pooled.pool.idle_sandboxes(Workload.LIGHT)
    assert not {id(s) for s in new} & {id(s) for s in old}
    assert pooled.pool.drained_for_generation == 1
    await pooled.pool.wait_reaped()
    assert all(s.proc.returncode is not None for s in old)
    assert [describe(pid) for pid in old_pids if alive(pid)] == []


async def test_an_empty_lane_falls_back_to_cold_at_once(pooled):
    outcomes = await asyncio.gather(*(run(pooled, f"print({i})") for i in range(3)))
    assert [o.output for o in outcomes] == ["0\n", "1\n", "2\n"]
    light = served(pooled, Workload.LIGHT)
    assert light["served_warm"] == 1
    assert light["served_warming"] + light["served_cold"] == 2
    assert light["served_cold"] >= 1  # one sandbox warms at a time: the third cannot wait for one


async def test_runs_stay_cold_until_the_pool_is_started(tmp_path, sandbox_venv):
    data = tmp_path / "data"
    data.mkdir()
    runner = pool_runner(data)
    outcome = await run(runner, "print('cold')")
    assert outcome.output == "cold\n"
    assert runner.pool is None  # nobody started it, so nothing is left running for nobody to stop


async def test_a_pool_configured_off_runs_everything_cold(tmp_path, sandbox_venv):
    data = tmp_path / "data"
    data.mkdir()
    runner = pool_runner(data, heavy=0, light=0)
    outcome = await run(runner, "print('cold')")
    assert outcome.output == "cold\n"
    assert runner.pool is None and await runner.start_pool() is None


async def test_idle_heavy_sandbox_is_charged_under_150_mb(pooled):
    # What the sandbox's cgroup is charged (its own memory; library files are shared page
    # cache) is what each extra pooled sandbox costs the machine. Its RSS, which counts the
    # shared library pages too, is higher: docs/performance.md gives both.
    sandbox = pooled.pool.idle_sandboxes(Workload.HEAVY)[0]
    charged = _cgroup_memory_bytes(sandbox)
    assert 20 * 2**20 < charged <= 150 * 2**20, f"idle heavy sandbox charged {charged / 2**20:.0f} MB"


# ---------------------------------------------------------------------- stopping


async def test_close_leaves_no_sandbox_processes(pooled):
    pids = host_pids(pooled)
    cgroup_dirs = [d for lane in pooled.pool.lanes.values() for w in lane.idle for d in w.sandbox.cgroup.dirs]
    assert len(pids) >= 4 and cgroup_dirs
    await pooled.close()
    assert [describe(pid) for pid in pids if alive(pid)] == []
    assert [d for d in cgroup_dirs if d.exists()] == []
    outcome = await run(pooled, "print('still works, cold')")  # a closed pool is not restarted
    assert outcome.output == "still works, cold\n"
    assert host_pids(pooled) == set()


def test_an_event_loop_ending_without_close_still_destroys_the_pool(tmp_path, sandbox_venv):
    data = tmp_path / "data"
    data.mkdir()
    runner = pool_runner(data, heavy=0, light=2)

    async def fill() -> set[int]:
        pool = await runner.start_pool()
        await asyncio.wait_for(pool.wait_until_full(), FILL_TIMEOUT)
        return host_pids(runner)

    pids = asyncio.run(fill())  # asyncio.run cancels the keeper, which drains the pool
    assert len(pids) >= 2
    assert [describe(pid) for pid in pids if alive(pid)] == []


def test_a_loop_ending_while_finished_runs_are_reaped_leaves_nothing_behind(tmp_path, sandbox_venv, monkeypatch):
    """A clean run's sandbox is reaped in the background. A caller that ends its event
    loop without `close()` (asyncio.run around one execute) cancels that reaping: the
    sandbox is then let go at once, its processes already killed and its pipes closed,
    so no process survives and no transport complains after the loop is gone."""
    from interpreter.sandbox.runner import SandboxProcess

    data = tmp_path / "data"
    data.mkdir()
    runner = pool_runner(data, heavy=0, light=0)
    abandoned: list[set[int]] = []
    real_abandon = SandboxProcess.abandon

    def recording_abandon(sandbox):
        abandoned.append(sandbox_pids(sandbox))
        real_abandon(sandbox)

    async def reaping_that_outlasts_the_loop(sandbox):
        await asyncio.Event().wait()  # the loop ends first, always

    monkeypatch.setattr(SandboxProcess, "abandon", recording_abandon)
    monkeypatch.setattr(SandboxProcess, "destroy", reaping_that_outlasts_the_loop)
    complaints = []
    monkeypatch.setattr(sys, "unraisablehook", complaints.append)

    outcome = asyncio.run(run(runner, "import subprocess\nsubprocess.Popen(['sleep', '123.456'])\nprint('done')"))
    gc.collect()  # transports left open would complain here, with their loop closed

    assert outcome.output == "done\n" and outcome.cause is ExitCause.OK
    assert len(abandoned) == 1 and abandoned[0], "the background reaping was not cut short"
    assert complaints == [], [str(c.exc_value) for c in complaints]
    for _ in range(100):  # SIGKILLed: give the kernel a moment to finish the exits
        if not [pid for pid in abandoned[0] if alive(pid)]:
            break
        time.sleep(0.05)
    assert [describe(pid) for pid in abandoned[0] if alive(pid)] == []


def _cgroup_memory_bytes(sandbox) -> int:
    for directory in sandbox.cgroup.dirs:
        for name in ("memory.usage_in_bytes", "memory.current"):
            if (directory / name).exists():
                return int((directory / name).read_text())
    raise AssertionError(f"no memory accounting in {sandbox.cgroup.dirs}")
