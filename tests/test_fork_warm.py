"""A fork-server spare that warms up before its job: faster charts, and nothing of it visible.

Real sandboxes, the production preload (the warm-up draws only with matplotlib preloaded).
Each test takes two runs at once from one runner with one spare: one run is served by the
spare (which drew the warm-up chart in its own process), the other is forked when it
arrives (no warm-up of its own): the second is the reference for what a run sees.
"""

from __future__ import annotations

import asyncio
import json

from bench.run_bench import PLOT
from interpreter.sandbox import forkserver
from interpreter.sandbox.forkserver import WARM_UP_CPU_SECONDS
from interpreter.sandbox.limits import DEFAULT_SHARES, nice_to_weight
from interpreter.sandbox.pool import WARMING_NICE, pooled_cpu_seconds
from interpreter.packages import PackageManager
from interpreter.sandbox import SandboxRunner
from tests.fixtures_sandbox import make_settings
from tests.sandbox_helpers import run
from tests.test_forkserver import READY_TIMEOUT, fork_runner

DATA_PRELOAD = "numpy,pandas,matplotlib,seaborn"


async def pooled_data_runner(tmp_path) -> SandboxRunner:
    """A runner without the fork server whose pool holds one heavy sandbox, warm (its
    bootstrap.prepare done) and one light sandbox fewer: a second data run starts cold."""
    data = tmp_path / "data"
    data.mkdir()
    settings = make_settings(data, SANDBOX_FORK_SERVER="false", SANDBOX_POOL_SIZE="1", SANDBOX_LIGHT_POOL_SIZE="0",
                             SANDBOX_POOL_PRELOAD=DATA_PRELOAD)
    runner = SandboxRunner(settings, PackageManager(settings))
    try:
        assert await asyncio.wait_for(runner.warm_up(), READY_TIMEOUT), runner.describe()
    except BaseException:
        await runner.close()
        raise
    return runner

CHART = PLOT  # the benchmark's chart (bench/arrivals.py measures the warm-up's effect on it)

# What a run could find of a warm-up: figures, figure numbers, rcParams, seaborn's
# palette, warning registries, files, and how much of its CPU limit is already used.
PROBE = """
import json, os, resource, sys, time
cpu_left = resource.getrlimit(resource.RLIMIT_CPU)[0] - time.process_time()
import matplotlib, matplotlib.pyplot as plt, seaborn as sns
def files(root):
    return sorted(os.path.relpath(os.path.join(folder, name), root)
                  for folder, _, names in os.walk(root) for name in names)
state = {
    "open_figures": plt.get_fignums(),
    "new_figure_number": plt.figure().number,
    "rcparams": sorted((key, repr(value)) for key, value in matplotlib.rcParams.items()),
    "palette": sns.color_palette().as_hex(),
    "warning_registries": sorted(name for name, module in list(sys.modules.items())
                                 if len(getattr(module, "__warningregistry__", {}) or {}) > 1),
    "tmp": [name for name in files("/tmp")  # but the font list every run gets (bootstrap.prepare_matplotlib_cache)
            if not os.path.join("/tmp", name).startswith(os.environ["MPLCONFIGDIR"] + "/")],
    "work": files("/work"),
}
plt.close("all")
print(json.dumps(state))
print(json.dumps({"cpu_left": cpu_left}))
"""


def faulted_pages(code: str) -> str:
    """`code`, then the minor page faults it took in the member's process."""
    return ("import resource as _resource\n_faults = _resource.getrusage(0).ru_minflt\n" + code
            + "print('faults', _resource.getrusage(0).ru_minflt - _faults)\n")


async def spare_and_arrival(tmp_path, code: str):
    """(outcomes of two runs of `code` started together, the runner's fork-server stats)."""
    runner = fork_runner(tmp_path, SANDBOX_POOL_PRELOAD=DATA_PRELOAD, SANDBOX_FORK_SPARES="1",
                         SANDBOX_FORK_WARM_SPARES="true")
    try:
        assert await asyncio.wait_for(runner.warm_up(), READY_TIMEOUT), runner.describe()["fork_server"]
        assert runner.fork_server.spares[0].warm
        outcomes = await asyncio.gather(run(runner, code), run(runner, code))
        for outcome in outcomes:
            assert outcome.success, outcome.error
        return outcomes, runner.fork_server.describe(), pooled_cpu_seconds(runner.settings)
    finally:
        await runner.close()


async def test_a_warmed_spares_first_chart_copies_far_fewer_pages_than_a_run_forked_on_arrival(tmp_path,
                                                                                                sandbox_venv):
    """The cost a fresh fork pays on its first chart (copy-on-write faults on the template's
    pages, caches no fork keeps) is paid by the spare before its job arrives."""
    outcomes, stats, _ = await spare_and_arrival(tmp_path, faulted_pages(CHART))
    assert stats["served_by_a_spare"] == 1 and stats["runs_forked"] == 2, stats
    faults = sorted(int(outcome.output.split()[-1]) for outcome in outcomes)
    assert faults[0] * 2 < faults[1], f"page faults of the chart: spare vs on arrival {faults}"


async def test_nothing_of_a_spares_warm_up_is_visible_to_the_run_it_serves(tmp_path, sandbox_venv):
    """No open figure (the member's first is figure 1), rcParams, palette, warning registries
    and files as in a run that never warmed up, and the CPU the warm-up took is not taken
    from the run's limit."""
    outcomes, stats, budget = await spare_and_arrival(tmp_path, PROBE)
    assert stats["served_by_a_spare"] == 1, stats
    states = [json.loads(outcome.output.splitlines()[0]) for outcome in outcomes]
    assert states[0] == states[1]
    assert states[0]["open_figures"] == [] and states[0]["new_figure_number"] == 1
    assert states[0]["tmp"] == [] and states[0]["work"] == []
    cpu_left = sorted(json.loads(outcome.output.splitlines()[1])["cpu_left"] for outcome in outcomes)
    # The spare's limit is its budget + 1 (as any run's) + what its warm-up may use; the run
    # forked on arrival gets the limit of its own 20 s timeout.
    assert cpu_left[1] >= budget + 1 - 0.1, (cpu_left, budget, WARM_UP_CPU_SECONDS)


async def test_without_warm_spares_a_spare_waits_as_forked(tmp_path, sandbox_venv):
    runner = fork_runner(tmp_path, SANDBOX_POOL_PRELOAD=DATA_PRELOAD, SANDBOX_FORK_SPARES="1",
                         SANDBOX_FORK_WARM_SPARES="false")
    try:
        assert await asyncio.wait_for(runner.warm_up(), READY_TIMEOUT)
        spare = runner.fork_server.spares[0]
        assert not spare.warm
        outcome = await run(runner, "import resource; print(resource.getrlimit(resource.RLIMIT_CPU)[0])")
        assert int(outcome.output) == pooled_cpu_seconds(runner.settings) + 1
    finally:
        await runner.close()


async def test_idle_one_spare_of_two_is_warmed_and_while_runs_arrive_both_are(tmp_path, sandbox_venv, monkeypatch):
    """SANDBOX_FORK_WARM_SPARES=1 of 2 spares: idle, one warms up (~20 MB more while it waits)
    and the other waits as forked; a run takes the warmed one wherever it is; while runs
    arrive (within forkserver.BUSY_SECONDS) the other is replaced by a warmed one too, and
    once they stop, one warmed spare goes back to one as forked."""
    runner = fork_runner(tmp_path, SANDBOX_POOL_PRELOAD=DATA_PRELOAD, SANDBOX_FORK_SPARES="2",
                         SANDBOX_FORK_WARM_SPARES="1")
    try:
        assert await asyncio.wait_for(runner.warm_up(), READY_TIMEOUT)
        server = runner.fork_server
        assert [spare.warm for spare in server.spares] == [True, False]
        assert server.describe()["warmed_spares"] == "1 of 1"
        taken = await server.fork(5)
        assert taken.warm
        await taken.destroy()
        await asyncio.wait_for(server.wait_settled(), READY_TIMEOUT)
        assert [spare.warm for spare in server.spares] == [True, True]
        assert server.describe()["warmed_spares"] == "2 of 2 (runs arriving)"
        monkeypatch.setattr(forkserver, "BUSY_SECONDS", 0.5)
        taken = await server.fork(5)  # the last run to arrive for a while
        assert taken.warm
        await taken.destroy()
        await asyncio.wait_for(server.wait_idle(), READY_TIMEOUT)
        assert sorted(spare.warm for spare in server.spares) == [False, True]
        assert server.describe()["warmed_spares"] == "1 of 1"
        taken = await server.fork(5)
        assert taken.warm, "a run takes the warmed spare first, wherever it waits"
        await taken.destroy()
    finally:
        await runner.close()


def cpu_shares(sandbox) -> int:
    assert sandbox.cgroup is not None and sandbox.cgroup.cpu_dir is not None, "the tests run as root, with cgroups"
    return int((sandbox.cgroup.cpu_dir / "cpu.shares").read_text())


async def test_a_spare_waits_at_a_low_cpu_weight_and_its_run_competes_at_the_normal_one(tmp_path, sandbox_venv):
    """A spare's set-up and warm-up yield to the runs in flight; the job that takes it does not."""
    runner = fork_runner(tmp_path, SANDBOX_FORK_SPARES="1")
    try:
        assert await asyncio.wait_for(runner.warm_up(), READY_TIMEOUT)
        spare = runner.fork_server.spares[0]
        assert cpu_shares(spare) == nice_to_weight(WARMING_NICE)
        taken = await runner.fork_server.fork(5)
        try:
            assert taken is spare and cpu_shares(taken) == DEFAULT_SHARES
        finally:
            await taken.destroy()
    finally:
        await runner.close()


async def test_a_pooled_sandbox_that_warmed_up_shows_the_run_what_a_cold_start_does(tmp_path, sandbox_venv):
    """The pool's heavy sandboxes draw the same warm-up chart (bootstrap.prepare): their run
    sees no figure, file, rcParams or palette of it, as a sandbox started cold for the run."""
    runner = await pooled_data_runner(tmp_path)
    try:
        pooled, cold = await asyncio.gather(run(runner, PROBE), run(runner, PROBE))  # one pooled sandbox: one is cold
        for outcome in (pooled, cold):
            assert outcome.success, outcome.error
        assert runner.pool.describe()["heavy"]["served_warm"] == 1, runner.pool.describe()
        states = [json.loads(outcome.output.splitlines()[0]) for outcome in (pooled, cold)]
        for state in states:
            state.pop("warning_registries")  # a cold start imports the libraries during the run: its own warnings
        assert states[0] == states[1]
        assert states[0]["open_figures"] == [] and states[0]["new_figure_number"] == 1
    finally:
        await runner.close()
