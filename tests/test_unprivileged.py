"""Unprivileged mode: the bot running as an ordinary user still isolates runs.

The whole sandbox suite (work and attacks) is run again by a second pytest process
that runs as an ordinary uid, with the fake token and database URI in its environment.
There the engine has no root: no setpriv, no cgroups (rlimit fallbacks), bwrap makes
its namespaces as that user. The suite adapts its expectations where the layers differ
(see `RUNNING_AS_ROOT` in tests/fixtures_sandbox.py) and must pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

from tests.fixtures_sandbox import FAKE_MONGODB_URI, FAKE_TOKEN

REPO = Path(__file__).resolve().parent.parent
ORDINARY_UID = 4242
SYSTEM_PYTHON = "/usr/bin/python3"


def _copy_for_ordinary_user(target: Path) -> tuple[Path, Path]:
    """The project and its installed dependencies, where an ordinary uid can read them.

    The project's venv Python may live under /root (pyenv, mode 700), so the ordinary
    user runs the system Python of the same minor version over a copy of site-packages.
    """
    code = target / "repo"
    shutil.copytree(REPO, code, ignore=shutil.ignore_patterns(".git", ".venv*", "data", "__pycache__", "*.pyc"))
    site = target / "site-packages"
    shutil.copytree(sysconfig.get_paths()["purelib"], site, ignore=shutil.ignore_patterns("__pycache__"))
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return code, site


@pytest.fixture
def ordinary_user_tree():
    if os.geteuid() != 0:
        pytest.fail("this test starts the suite as an ordinary uid and must itself run as root", pytrace=False)
    same_minor = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
                                capture_output=True, text=True)
    if same_minor.stdout.strip() != str(sys.version_info[:2]):
        pytest.fail(f"{SYSTEM_PYTHON} must be Python {sys.version_info.major}.{sys.version_info.minor} like the "
                    f"project venv (got {same_minor.stdout.strip() or same_minor.stderr})", pytrace=False)
    target = Path(tempfile.mkdtemp(prefix="unprivileged-", dir="/var/tmp"))
    try:
        yield _copy_for_ordinary_user(target)
    finally:
        shutil.rmtree(target, ignore_errors=True)


def test_sandbox_suite_passes_as_an_ordinary_user(ordinary_user_tree, sandbox_venv):
    code, site = ordinary_user_tree
    home = code.parent / "home"
    home.mkdir()
    os.chown(home, ORDINARY_UID, ORDINARY_UID)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "PYTHONPATH": f"{code}:{site}",
        "PYTHONDONTWRITEBYTECODE": "1",
        "TMPDIR": str(home),
        "DISCORD_TOKEN": FAKE_TOKEN,
        "MONGODB_URI": FAKE_MONGODB_URI,
        "TEST_SANDBOX_VENV_DIR": str(sandbox_venv.parent),
        "TEST_SANDBOX_FORK_SERVER": os.environ.get("TEST_SANDBOX_FORK_SERVER", ""),  # the same mode as this suite
    }
    command = [
        "setpriv", f"--reuid={ORDINARY_UID}", f"--regid={ORDINARY_UID}", "--clear-groups", "--inh-caps=-all",
        SYSTEM_PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(home / "pytest"),
        "tests/test_sandbox_attacks.py", "tests/test_sandbox_work.py",
    ]
    done = subprocess.run(command, cwd=code, env=env, capture_output=True, text=True, timeout=900)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-2000:]
    assert done.returncode == 0, f"suite failed as uid {ORDINARY_UID}: {summary}\n{done.stdout[-6000:]}"
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary


async def test_no_isolation_possible_means_no_code_runs_and_says_why(tmp_path, sandbox_venv):
    """A host where bwrap cannot make namespaces: runs are refused with the reason, nothing runs."""
    from interpreter.packages import PackageManager
    from interpreter.sandbox import SandboxRunner
    from interpreter.types import ExitCause
    from tests.fixtures_sandbox import make_settings
    from tests.sandbox_helpers import run

    # What Debian's bwrap prints where unprivileged user namespaces are switched off.
    tools = Path(tempfile.mkdtemp(prefix="fake-bwrap-", dir="/var/tmp"))  # reachable by the sandbox uid
    tools.chmod(0o755)
    fake_bwrap = tools / "bwrap"
    fake_bwrap.write_text("#!/bin/sh\necho 'bwrap: No permissions to create a new namespace' >&2\nexit 1\n")
    fake_bwrap.chmod(0o755)
    settings = make_settings(tmp_path, BWRAP_PATH=str(fake_bwrap))
    runner = SandboxRunner(settings, PackageManager(settings))

    try:
        outcome = await run(runner, "print('SHOULD NOT RUN')")
    finally:
        shutil.rmtree(tools)

    assert outcome.cause is ExitCause.SANDBOX
    assert outcome.error == ("Code cannot run: the sandbox could not start on this host. "
                             "Nothing ran; an admin can see why in /status and the bot's log.")
    assert "SHOULD NOT RUN" not in outcome.output
    status = runner.describe()
    assert status["available"] is False
    assert status["unavailable_reason"] == "bwrap: No permissions to create a new namespace"


async def test_a_missing_bwrap_is_reported_the_same_way(tmp_path, sandbox_venv):
    from interpreter.packages import PackageManager
    from interpreter.sandbox import SandboxRunner
    from interpreter.types import ExitCause
    from tests.fixtures_sandbox import make_settings
    from tests.sandbox_helpers import run

    settings = make_settings(tmp_path, BWRAP_PATH=str(tmp_path / "no-such-bwrap"))
    runner = SandboxRunner(settings, PackageManager(settings))
    outcome = await run(runner, "print('SHOULD NOT RUN')")
    assert outcome.cause is ExitCause.SANDBOX
    assert outcome.error.startswith("Code cannot run: the sandbox could not start on this host.")
    assert str(tmp_path) not in outcome.error  # host paths reach /status and the log, not members
    status = runner.describe()
    assert status["available"] is False and "BWRAP_PATH=" in status["unavailable_reason"]
