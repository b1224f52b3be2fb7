"""Installed packages inside the real sandbox: importable, read-only, and safe across a rebuild.

A small venv per test (no base set) with a wheel built here, installed offline, and the
real SandboxRunner (bubblewrap, dropped uid) running members' code against it.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from interpreter.packages import PackageManager
from interpreter.sandbox import SandboxRunner
from interpreter.types import ExitCause
from tests.sandbox_helpers import run
from tests.test_packages_install import data_dir, make_wheel, offline_settings, wheelhouse  # noqa: F401 - fixtures


async def installed_manager(settings) -> PackageManager:
    manager = PackageManager(settings, base_packages=())
    report = await manager.ensure_packages(["tinywheel"])
    assert report.installed == ["tinywheel"], report.error_message()
    return manager


async def test_an_installed_package_imports_inside_the_sandbox(offline_settings) -> None:
    manager = await installed_manager(offline_settings)
    outcome = await run(SandboxRunner(offline_settings, manager), "import tinywheel; print(tinywheel.VALUE)")
    assert outcome.cause is ExitCause.OK, outcome.error
    assert outcome.output == "tiny 1.0\n"


async def test_a_run_cannot_write_into_the_venv(offline_settings) -> None:
    manager = await installed_manager(offline_settings)
    module = manager.site_packages()[0] / "tinywheel" / "__init__.py"
    original = module.read_bytes()
    outcome = await run(
        SandboxRunner(offline_settings, manager),
        """
        import os, sys, sysconfig, tinywheel
        site = sysconfig.get_paths()['purelib']
        attempts = {
            'modify module': lambda: open(tinywheel.__file__, 'a').write('VALUE = "owned"'),
            'delete module': lambda: os.remove(tinywheel.__file__),
            'new module': lambda: open(os.path.join(site, 'evil.py'), 'w').write('x = 1'),
            'new pth': lambda: open(os.path.join(site, 'evil.pth'), 'w').write('import os'),
            'new dir in prefix': lambda: os.mkdir(os.path.join(sys.prefix, 'evil')),
            'rename bin': lambda: os.rename(os.path.join(sys.prefix, 'bin'), os.path.join(sys.prefix, 'bin2')),
            'chmod python': lambda: os.chmod(sys.executable, 0o777),
        }
        for name, attempt in attempts.items():
            try:
                attempt()
                print(name, 'SUCCEEDED')
            except OSError as exc:
                print(name, 'refused', exc.errno)
        """,
    )
    assert outcome.cause is ExitCause.OK, outcome.error
    assert "SUCCEEDED" not in outcome.output, outcome.output
    assert outcome.output.count("refused") == 7, outcome.output
    assert module.read_bytes() == original
    assert not (manager.site_packages()[0] / "evil.py").exists()
    assert not (manager.site_packages()[0] / "evil.pth").exists()
    assert not (manager.venv_dir / "evil").exists()


def bwrap_binding(venv: Path) -> bool:
    """True once a sandbox process has been started with `venv` bound into it."""
    needle = str(venv).encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if needle in cmdline.read():
                    return True
        except OSError:
            continue
    return False


async def test_rebuild_with_a_run_in_flight(offline_settings, wheelhouse: Path) -> None:  # noqa: F811
    manager = await installed_manager(offline_settings)
    runner = SandboxRunner(offline_settings, manager)
    old_venv = manager.venv_dir
    release = old_venv / "release-the-run"

    # The run imports tinywheel 1.0, then waits until the test lets it finish (a file the
    # host writes into the venv it holds; bounded by the run's own timeout).
    in_flight = asyncio.create_task(run(runner, """
        import os, sys, tinywheel
        while not os.path.exists(os.path.join(sys.prefix, 'release-the-run')):
            pass
        import importlib.metadata
        print(tinywheel.VALUE, importlib.metadata.version('tinywheel'))
        """, timeout=60))
    deadline = time.monotonic() + 30
    while not bwrap_binding(old_venv):  # wait for the sandbox to hold the old venv
        assert time.monotonic() < deadline and not in_flight.done(), "the run never started"
        await asyncio.sleep(0.02)

    make_wheel(wheelhouse, "tinywheel", "2.0", "VALUE = 'tiny 2.0'\n")
    new_venv = await manager.rebuild()  # reinstalls the unpinned request, so it gets 2.0
    assert new_venv != old_venv and manager.venv_dir == new_venv
    release.write_text("go")

    finished = await in_flight
    assert finished.cause is ExitCause.OK, finished.error
    assert finished.output == "tiny 1.0 1.0\n", "the run in flight keeps the venv it started with"

    after = await run(runner, "import tinywheel; print(tinywheel.VALUE)")
    assert after.cause is ExitCause.OK, after.error
    assert after.output == "tiny 2.0\n", "the next run sees the rebuilt venv"


async def test_execute_code_reports_installs_and_fails_cleanly(offline_settings, wheelhouse: Path) -> None:  # noqa: F811
    from interpreter.engine import Engine

    engine = Engine(offline_settings, packages=PackageManager(offline_settings, base_packages=()))
    ok = await engine.execute("import tinywheel; print(tinywheel.VALUE)", 1, install_packages=["TinyWheel"])
    assert ok["success"], ok["error"]
    assert ok["output"] == "tiny 1.0\n"
    assert ok["installed_packages"] == ["tinywheel"] and ok["failed_packages"] == []

    refused = await engine.execute("print('must not run')", 1, install_packages=["tinywheel", "requests"])
    assert refused["success"] is False
    assert refused["error"] == "Package 'requests' is not in the approved list"
    assert refused["failed_packages"] == [{"package": "requests", "reason": refused["error"]}]
    assert refused["output"] == ""
    assert engine.runner.completed == 1, "a refused install never starts a run"


async def test_one_member_cannot_change_what_another_imports(offline_settings, wheelhouse: Path) -> None:  # noqa: F811
    """Issue 12 item 4 through the engine and the real sandbox: member 1 asks for an exact old
    version, then for an extra package that needs the old version, then for one that would
    hook every interpreter start; member 2's runs keep importing the version the server's
    policy chose, unhooked, before and after a rebuild."""
    from interpreter.engine import Engine

    make_wheel(wheelhouse, "tinywheel", "2.0", "VALUE = 'tiny 2.0'\n")
    make_wheel(wheelhouse, "tinydep", "1.0", "", requires=("tinywheel==1.0",))
    packages = PackageManager(offline_settings, base_packages=())
    engine = Engine(offline_settings, packages=packages)
    probe = "import tinywheel, importlib.metadata; print(tinywheel.VALUE, importlib.metadata.version('tinywheel'))"

    first = await engine.execute(probe, 2, install_packages=["tinywheel"])
    assert first["success"] and first["output"] == "tiny 2.0 2.0\n", first

    rollback = await engine.execute("print('must not run')", 1, install_packages=["tinywheel==1.0"])
    assert rollback["success"] is False and rollback["output"] == ""
    assert "this server provides tinywheel 2.0" in rollback["error"]

    by_dependency = await engine.execute("print('must not run')", 1, install_packages=["tinydep"])
    assert by_dependency["success"] is False
    assert "its dependencies conflict with the installed packages" in by_dependency["error"]

    make_wheel(wheelhouse, "tinyhook", "1.0", "", extra_files={"tinyhook.pth": "import os; os.environ['HOOKED'] = '1'\n"})
    hook = await engine.execute("print('must not run')", 1, install_packages=["tinyhook"])
    assert "would run code in every member's runs" in hook["error"], hook

    after = await engine.execute(probe + "; import os; print(os.environ.get('HOOKED'))", 2)
    assert after["output"] == "tiny 2.0 2.0\nNone\n", after
    await packages.rebuild()
    rebuilt = await engine.execute(probe, 2)
    assert rebuilt["output"] == "tiny 2.0 2.0\n", rebuilt
    await engine.close()
