"""SANDBOX_FORK_LIGHT_TEMPLATE: runs that import no data library are forked from a second
template that imported nothing heavy. A fork copies the page tables of the process it
forks, so a print forked from the data-library template paid for pandas' memory map; from
the light template it does not. Everything else is the same fork server (its own tests:
tests/test_forkserver.py): fresh namespaces, its own cgroups, nothing shared."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from interpreter.packages import PackageManager
from interpreter.sandbox import SandboxRunner
from tests.fixtures_sandbox import make_settings
from tests.sandbox_helpers import run

READY_TIMEOUT = 180


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} for {pid}")


@pytest.fixture
async def two_templates(tmp_path: Path, sandbox_venv: Path):
    data = tmp_path / "data"
    data.mkdir()
    settings = make_settings(data, SANDBOX_FORK_SERVER="true", SANDBOX_FORK_LIGHT_TEMPLATE="true",
                             SANDBOX_POOL_PRELOAD="numpy,pandas", SANDBOX_FORK_SPARES="0",
                             SANDBOX_FORK_LIGHT_SPARES="0")
    runner = SandboxRunner(settings, PackageManager(settings))
    assert await asyncio.wait_for(runner.warm_up(), READY_TIMEOUT), runner.describe()
    yield runner
    await runner.close()
    assert runner.fork_server.template is None and runner.light_fork_server.template is None


async def test_warm_up_waits_for_both_templates_and_status_shows_both(two_templates):
    layers = two_templates.describe()
    assert layers["fork_server"]["ready"] and layers["fork_server"]["preload"] == "numpy,pandas"
    assert layers["light_fork_server"]["ready"] and layers["light_fork_server"]["preload"] == "(none)"


async def test_the_light_template_keeps_spares_of_its_own_for_a_burst_of_small_runs(tmp_path, sandbox_venv):
    """SANDBOX_FORK_LIGHT_SPARES: a burst of prints takes runs forked ahead from the light
    template (cheap: it imported nothing), whatever the data template's SANDBOX_FORK_SPARES."""
    settings = make_settings(tmp_path, SANDBOX_FORK_SERVER="true", SANDBOX_FORK_LIGHT_TEMPLATE="true",
                             SANDBOX_POOL_PRELOAD="numpy", SANDBOX_FORK_SPARES="0", SANDBOX_FORK_LIGHT_SPARES="3")
    runner = SandboxRunner(settings, PackageManager(settings))
    try:
        assert await asyncio.wait_for(runner.warm_up(), READY_TIMEOUT), runner.describe()
        light, heavy = runner.light_fork_server, runner.fork_server
        assert (light.describe()["spares"], heavy.describe()["spares"]) == ("3 of 3", "0 of 0")
        printed = await asyncio.gather(*(run(runner, f"print({i})") for i in range(3)))
        assert [outcome.output for outcome in printed] == ["0\n", "1\n", "2\n"], [o.error for o in printed]
        assert light.served_spare == 3 and heavy.describe()["runs_forked"] == 0
    finally:
        await runner.close()


async def test_a_print_is_forked_from_the_light_template_and_a_pandas_run_from_the_data_one(two_templates):
    light, heavy = two_templates.light_fork_server, two_templates.fork_server
    printed = await run(two_templates, "import sys; print('hi', len(sys.modules) < 150)")  # the data template: 700+
    assert printed.success and printed.output == "hi True\n", printed.error
    assert (light.describe()["runs_forked"], heavy.describe()["runs_forked"]) == (1, 0)
    table = await run(two_templates, "import sys, pandas as pd; print('pandas' in sys.modules, len(pd.DataFrame({'a': [1, 2]})))")
    assert table.success and table.output == "True 2\n", table.error
    assert (light.describe()["runs_forked"], heavy.describe()["runs_forked"]) == (1, 1)


async def test_a_light_run_that_raises_imports_nothing_to_tell_its_exception(two_templates):
    """Telling an exception needs traceback (and difflib for suggestions): the light template
    imports them once, so a forked run that raises does not (it cost such a run ~8 ms), and
    the member still sees their own line."""
    code = "import sys\nprint('traceback' in sys.modules, 'difflib' in sys.modules)\nvalue = 1 / 0\n"
    raised = await run(two_templates, code)
    assert two_templates.light_fork_server.describe()["runs_forked"] == 1
    assert raised.output == "True True\n", raised.output
    assert "value = 1 / 0" in raised.error and "ZeroDivisionError" in raised.error, raised.error


async def test_the_light_template_holds_a_small_fraction_of_the_data_templates_memory(two_templates):
    light = status_kb(two_templates.light_fork_server.template.python_pid, "VmRSS")
    heavy = status_kb(two_templates.fork_server.template.python_pid, "VmRSS")
    assert light * 3 < heavy, (light, heavy)
    assert light < 40_000, f"the light template holds {light} kB"


async def test_a_light_run_sees_only_its_own_processes_and_is_alone_in_its_namespaces(two_templates):
    outcome = await run(two_templates, """
        import os
        print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))
        print(os.getuid(), open('/proc/self/uid_map').read().split()[:2])
        """)
    assert outcome.success, outcome.error
    pids, ids = outcome.output.splitlines()
    assert pids in ("[1, 2]", "[1, 2, 3]"), pids  # init (the supervisor), member (and its child for listdir)
    assert ids.startswith("1000 ['1000',"), ids


async def test_with_the_light_template_gone_light_runs_fork_from_the_data_template(two_templates):
    light, heavy = two_templates.light_fork_server, two_templates.fork_server
    await light.close()
    outcome = await run(two_templates, "print('still warm')")
    assert outcome.success and outcome.output == "still warm\n"
    assert heavy.describe()["runs_forked"] == 1


NAMESPACES = ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup")


async def test_a_light_run_shares_nothing_with_a_data_run_forked_beside_it(two_templates):
    """A run of each template at once: no namespace in common, none of the data run's processes or
    files visible to the light run, and the module the data run tampered with untouched.
    (Light runs among themselves: tests/test_forkserver.py's BOTH_TEMPLATES tests.)"""
    show = """
        import json, os
        print(json.dumps({"ns": {n: os.readlink(f"/proc/self/ns/{n}") for n in %r},
                          "pids": sorted(int(p) for p in os.listdir('/proc') if p.isdigit()),
                          "left": sorted(place for place in ('/tmp', '/dev/shm', '/work', '/data')
                                         if os.path.exists(os.path.join(place, 'left-behind'))),
                          "tampered": hasattr(json, 'LEFT_BEHIND')}), flush=True)
    """ % (NAMESPACES,)
    holder = asyncio.create_task(run(two_templates, """
        import json, os, subprocess, time, pandas
        json.LEFT_BEHIND = 'member data'
        for place in ('/tmp', '/dev/shm', '/work', '/data'):
            open(os.path.join(place, 'left-behind'), 'w').write('member data')
        child = subprocess.Popen(['sleep', '30'])
    """ + show + """
        time.sleep(2.5)
    """, timeout=20))
    looker = await run(two_templates, show)
    held = await holder
    assert looker.success and held.success, (looker.error, held.error)
    light, data = json.loads(looker.output), json.loads(held.output)
    assert data["left"] == ["/data", "/dev/shm", "/tmp", "/work"] and data["tampered"], data
    for name in NAMESPACES:
        assert light["ns"][name] != data["ns"][name], f"a light run and a data run share a {name} namespace"
    assert light["pids"] in ([1, 2], [1, 2, 3]), light["pids"]  # its own init (the supervisor), member
    assert light["left"] == [] and not light["tampered"], light
    counts = (two_templates.light_fork_server.describe()["runs_forked"], two_templates.fork_server.describe()["runs_forked"])
    assert counts == (1, 1), counts
