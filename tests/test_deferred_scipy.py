"""Warm sandboxes import seaborn with scipy deferred to its first use (runtime/deferred.py).

scipy is ~37 MB of every data template's memory, held for the few runs that draw a KDE or
a dendrogram. Real sandboxes, the production preload: a run forked from the template (and
a pooled, launched sandbox: the same bootstrap.prepare) sees no scipy until it uses one;
every seaborn function that needs scipy works and gives scipy's own numbers; a member's
`import scipy` is the real one. A seaborn laid out otherwise gets scipy eagerly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import textwrap
from pathlib import Path

from interpreter.sandbox import SandboxRunner
from tests.sandbox_helpers import files_by_name, run
from tests.test_fork_warm import DATA_PRELOAD, pooled_data_runner
from tests.test_forkserver import READY_TIMEOUT, fork_runner

RUNTIME_DIR = Path(__file__).resolve().parent.parent / "interpreter" / "runtime"

SCIPY_LOADED = "sorted(name for name in sys.modules if name == 'scipy' or name.startswith('scipy.'))"

# Every seaborn entry point that needs scipy: kdeplot, violinplot, histplot(kde=True) and
# so.KDE take gaussian_kde; clustermap takes scipy.cluster.hierarchy.
EVERY_SCIPY_CHART = f"""
import json, sys
idle = {SCIPY_LOADED}
import numpy as np, pandas as pd, matplotlib.pyplot as plt, seaborn as sns, seaborn.objects as so
import seaborn._statistics, seaborn._stats.density, seaborn.matrix
flags = [module._no_scipy for module in (seaborn._statistics, seaborn._stats.density, seaborn.matrix)]
imported = "seaborn" in sys.modules and {SCIPY_LOADED}
rng = np.random.default_rng(7)
x = rng.normal(size=300)
sns.kdeplot(x); plt.savefig("kde.png"); plt.close("all")
sns.violinplot(x=x); plt.savefig("violin.png"); plt.close("all")
sns.histplot(x, kde=True); plt.savefig("hist_kde.png"); plt.close("all")
sns.clustermap(pd.DataFrame(rng.normal(size=(12, 5)))).savefig("cluster.png"); plt.close("all")
so.Plot(x=x).add(so.Line(), so.KDE()).save("objects_kde.png"); plt.close("all")
used = {SCIPY_LOADED}
print(json.dumps({{"idle": idle, "flags": flags, "after_seaborn": imported,
                   "used": [name for name in used if name in ("scipy.stats", "scipy.cluster.hierarchy")]}}))
"""

# The numbers of a KDE: seaborn's estimator and kdeplot's curve against scipy's own gaussian_kde.
KDE_NUMBERS = """
import numpy as np, seaborn as sns
from seaborn._statistics import KDE
x = np.random.default_rng(3).gamma(2.0, size=250)
density, support = KDE(bw_adjust=0.7)(x)
from scipy.stats import gaussian_kde
reference = gaussian_kde(x)
reference.set_bandwidth(reference.factor * 0.7)
curve = sns.kdeplot(x).lines[0]
plain = gaussian_kde(x)
print(bool(np.array_equal(density, reference(support))),
      bool(np.array_equal(curve.get_ydata(), plain(curve.get_xdata()))))
"""

MEMBERS_OWN_SCIPY = """
import sys
import scipy.stats
import scipy.cluster.hierarchy as hierarchy
import scipy.linalg
modules = [sys.modules[name] for name in ("scipy", "scipy.stats", "scipy.cluster", "scipy.cluster.hierarchy")]
print(scipy.stats.norm.cdf(0.0), all(module.__file__.endswith(".py") for module in modules),
      hierarchy.linkage([[0.0], [1.0], [5.0]]).shape, scipy.linalg.det([[2.0, 0.0], [0.0, 3.0]]))
"""


async def forked_runner(tmp_path: Path, preload: str = DATA_PRELOAD) -> SandboxRunner:
    runner = fork_runner(tmp_path, SANDBOX_POOL_PRELOAD=preload)
    assert await asyncio.wait_for(runner.warm_up(), READY_TIMEOUT), runner.describe()["fork_server"]
    return runner


async def test_every_seaborn_chart_that_needs_scipy_works_in_a_forked_run_that_imports_it_only_then(
        tmp_path, sandbox_venv):
    runner = await forked_runner(tmp_path)
    try:
        outcome = await run(runner, EVERY_SCIPY_CHART, timeout=60)
        assert outcome.success, outcome.error
        assert runner.fork_server.describe()["runs_forked"] == 1
    finally:
        await runner.close()
    state = json.loads(outcome.output.splitlines()[-1])
    assert state["idle"] == [], "the idle template imported scipy"
    assert state["after_seaborn"] == [], "importing seaborn in the run imported scipy"
    assert state["flags"] == [False, False, False], "seaborn must take its with-scipy path"
    assert state["used"] == ["scipy.cluster.hierarchy", "scipy.stats"]
    files = files_by_name(outcome)
    for name in ("kde.png", "violin.png", "hist_kde.png", "cluster.png", "objects_kde.png"):
        assert files.get(name, b"").startswith(b"\x89PNG"), (name, sorted(files))


async def test_a_kde_gives_exactly_scipys_numbers_and_a_members_import_scipy_is_the_real_one(
        tmp_path, sandbox_venv):
    runner = await forked_runner(tmp_path)
    try:
        numbers, own = await asyncio.gather(run(runner, KDE_NUMBERS, timeout=60),
                                            run(runner, MEMBERS_OWN_SCIPY, timeout=60))
    finally:
        await runner.close()
    assert numbers.success and own.success, (numbers.error, own.error)
    assert numbers.output.split() == ["True", "True"], numbers.output
    assert own.output.split() == ["0.5", "True", "(2,", "4)", "6.0"], own.output


async def test_a_pooled_sandbox_launched_with_the_preload_defers_scipy_the_same_way(tmp_path, sandbox_venv):
    """The pool (no fork server) runs the same bootstrap.prepare as the template."""
    runner = await pooled_data_runner(tmp_path)
    try:
        outcome = await run(runner, EVERY_SCIPY_CHART, timeout=60)
        assert runner.pool.describe()["heavy"]["served_warm"] == 1, runner.pool.describe()
    finally:
        await runner.close()
    assert outcome.success, outcome.error
    state = json.loads(outcome.output.splitlines()[-1])
    assert state["idle"] == [] and state["flags"] == [False, False, False], state
    assert len(outcome.files) == 5


async def test_an_admin_who_preloads_scipy_gets_it_imported_eagerly(tmp_path, sandbox_venv):
    runner = await forked_runner(tmp_path, DATA_PRELOAD + ",scipy.stats")
    try:
        outcome = await run(runner, f"""
            import sys
            import scipy.stats, seaborn._statistics
            print({SCIPY_LOADED}.count("scipy.stats"), seaborn._statistics.gaussian_kde is scipy.stats.gaussian_kde)
            """)
    finally:
        await runner.close()
    assert outcome.success, outcome.error
    assert outcome.output.split() == ["1", "True"], outcome.output


# --------------------------------------------------------------- another seaborn layout


def import_fake_seaborn(sandbox_venv: Path, tmp_path: Path, source: str, use: str) -> list[str]:
    """Import a stand-in `seaborn` package with `source` through deferred.import_seaborn, in the
    sandbox venv's Python (its real scipy); then run `use`. Its printed lines."""
    package = tmp_path / "fake" / "seaborn"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(source))
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(tmp_path / "fake")!r}, {str(RUNTIME_DIR)!r}]
        import deferred
        print(deferred.import_seaborn())
        import seaborn
        {use}
        """)
    done = subprocess.run([str(sandbox_venv / "bin" / "python"), "-I", "-c", script],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_a_seaborn_that_asks_scipy_for_more_gets_the_real_scipy_imported_eagerly(tmp_path, sandbox_venv):
    lines = import_fake_seaborn(sandbox_venv, tmp_path, """
        from scipy.stats import gaussian_kde, norm
        """, "import scipy.stats; print(seaborn.norm is scipy.stats.norm, seaborn.gaussian_kde is scipy.stats.gaussian_kde)")
    assert lines[0].startswith("scipy imported eagerly: seaborn's import needs more of scipy"), lines
    assert lines[1] == "True True", lines


def test_a_seaborn_that_keeps_scipy_elsewhere_gets_every_binding_replaced_by_the_real_one(tmp_path, sandbox_venv):
    lines = import_fake_seaborn(sandbox_venv, tmp_path, """
        import scipy.stats as stats
        from scipy.cluster import hierarchy
        def spread(x):
            return stats.gaussian_kde(x).factor
        """, "import scipy.stats, scipy.cluster.hierarchy as h; "
             "print(seaborn.stats is scipy.stats, seaborn.hierarchy is h, seaborn.spread([0.0, 1.0, 3.0]) > 0)")
    assert lines[0].startswith("scipy imported eagerly: seaborn keeps scipy objects at"), lines
    assert lines[1] == "True True True", lines



async def test_a_template_whose_seaborn_is_laid_out_otherwise_imports_scipy_eagerly_and_says_so(
        tmp_path, sandbox_venv, monkeypatch, caplog):
    """The fallback through the real template: deferred.py expecting a binding seaborn does not
    have (as a seaborn laid out otherwise would show) leaves seaborn with the real scipy, and the
    host's log says why."""
    from interpreter.sandbox import runner as runner_module

    source = runner_module.RUNTIME_MODULES["deferred.py"]
    expected = b'("seaborn.matrix", "hierarchy"),'
    assert expected in source
    monkeypatch.setattr(runner_module, "RUNTIME_MODULES", {
        **runner_module.RUNTIME_MODULES,
        "deferred.py": source.replace(expected, b'("seaborn.matrix", "a_name_seaborn_does_not_have"),')})
    caplog.set_level(logging.WARNING, logger="interpreter.sandbox.forkserver")
    runner = await forked_runner(tmp_path)
    try:
        outcome = await run(runner, f"""
            import sys
            idle = {SCIPY_LOADED}
            import scipy.stats, scipy.cluster.hierarchy, seaborn as sns, seaborn._statistics, seaborn.matrix
            import pandas as pd, numpy as np
            sns.clustermap(pd.DataFrame(np.random.default_rng(1).normal(size=(8, 3)))).savefig("cluster.png")
            print("scipy.stats" in idle, seaborn._statistics.gaussian_kde is scipy.stats.gaussian_kde,
                  seaborn.matrix.hierarchy is scipy.cluster.hierarchy)
            """, timeout=60)
    finally:
        await runner.close()
    assert outcome.success, outcome.error
    assert outcome.output.split() == ["True", "True", "True"], outcome.output
    assert "cluster.png" in files_by_name(outcome)
    notices = [record.getMessage() for record in caplog.records if "scipy imported eagerly" in record.getMessage()]
    assert len(notices) == 1 and "seaborn keeps scipy objects at" in notices[0], caplog.text
