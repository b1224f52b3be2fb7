"""Fixtures for everything that runs code: settings with a ready sandbox venv, runner, engine.

The sandbox venv (pandas, matplotlib, seaborn, plotly...) takes a minute or two to
build, so one is shared by the whole test session and kept between sessions at
SANDBOX_VENV_DIR (default /var/tmp/code-interpreter/sandbox-venv, a path the
unprivileged sandbox uid can reach). `scripts/dev.sh test` builds it first.

The bot's process environment holds a fake token and database URI during the whole
test session, so every sandbox test also proves they do not leak into runs.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from config import Settings, load_settings

FAKE_TOKEN = "FAKE-DISCORD-TOKEN-MTIzNDU2Nzg5.leak-canary"
FAKE_MONGODB_URI = "mongodb://canary-user:canary-password-4242@db.invalid:27017/leakcheck"
DEFAULT_TEST_VENV = "/var/tmp/code-interpreter/sandbox-venv"
# As root the engine drops runs to SANDBOX_UID and uses per-run cgroups; as an ordinary
# user (tests/test_unprivileged.py runs the sandbox suite that way) it has neither and
# falls back to rlimits. Tests whose expectations differ branch on this.
RUNNING_AS_ROOT = os.geteuid() == 0

# Set at import time: the secrets are in the environment before any engine exists.
os.environ["DISCORD_TOKEN"] = FAKE_TOKEN
os.environ["MONGODB_URI"] = FAKE_MONGODB_URI


# TEST_SANDBOX_FORK_SERVER=1 runs every sandbox test through runs forked from the
# fork-server template (the runner and engine fixtures wait until it is ready).
FORK_SERVER = os.environ.get("TEST_SANDBOX_FORK_SERVER", "") not in ("", "0")


def make_settings(data_dir: Path, **environ: str) -> Settings:
    """Settings for a test: explicit values only (never the process environment).

    Warm capacity never starts by itself in tests (a test that wants it says so).
    """
    values = {
        "DATA_DIR": str(data_dir),
        "SANDBOX_VENV_DIR": os.environ.get("TEST_SANDBOX_VENV_DIR", DEFAULT_TEST_VENV),
        "VENV_MAX_AGE_DAYS": "0",
        "MAX_CONCURRENT_RUNS": "4",
        "SANDBOX_FORK_SERVER": "true" if FORK_SERVER else "false",
        "SANDBOX_WARM_ON_FIRST_RUN": "false",
    }
    values.update(environ)
    return load_settings(values, dotenv=False)


@pytest.fixture(scope="session")
def sandbox_venv() -> Path:
    """Build (or reuse) the shared sandbox venv once per session."""
    from interpreter.packages import PackageManager

    settings = make_settings(Path("/nonexistent-unused"))
    manager = PackageManager(settings)

    async def ready() -> Path:
        await manager.ensure_venv()
        await manager.wait_for_rebuild()  # a venv of an older build recipe is rebuilt first
        return manager.venv_dir

    try:
        return asyncio.run(ready())
    except Exception as exc:  # fail loudly: a missing venv must not turn into skipped tests
        pytest.fail(f"could not build the sandbox venv at {settings.venv_dir}: {exc}", pytrace=False)


@pytest.fixture
def sandbox_settings(tmp_path: Path, sandbox_venv: Path) -> Settings:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    return make_settings(data_dir)


@pytest.fixture
async def runner(sandbox_settings: Settings):
    from interpreter.packages import PackageManager
    from interpreter.sandbox import SandboxRunner

    runner = SandboxRunner(sandbox_settings, PackageManager(sandbox_settings))
    if FORK_SERVER:
        assert await runner.warm_up(), runner.describe()["fork_server"]
    yield runner
    try:
        if FORK_SERVER:
            assert_all_runs_were_forked(runner)
    finally:  # a failed check must not leave templates running (the event loop's close would wait for them)
        await runner.close()  # finished runs' sandboxes are reaped in the background: wait for them


@pytest.fixture
async def engine(sandbox_settings: Settings):
    """A full engine (SQLite store in the test's data dir) made the default for the facade."""
    import interpreter

    engine = interpreter.configure(sandbox_settings)
    if FORK_SERVER:
        assert await engine.runner.warm_up(), engine.runner.describe()["fork_server"]
    yield engine
    try:
        if FORK_SERVER:
            assert_all_runs_were_forked(engine.runner)
    finally:
        await engine.close()


def assert_all_runs_were_forked(runner) -> None:
    """In the fork-server mode of the suite, a run that quietly went cold would prove nothing."""
    servers = [server.describe() for server in (runner.fork_server, runner.light_fork_server) if server is not None]
    assert all(stats["fork_failures"] == 0 for stats in servers), servers
    # Counted by launches, not by completed jobs: a session's jobs all run in its one fork.
    assert runner.cold_starts == 0, (servers, runner.cold_starts)
