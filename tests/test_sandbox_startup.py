"""A launched sandbox's start-up: the runtime comes from bytecode the host compiled, but
only bytecode that matches the source it was compiled from; and a print imports
nothing it does not need (each import is paid by every run)."""

from __future__ import annotations

import importlib.util
import marshal
from pathlib import Path

import pytest

from config import Settings
from interpreter.packages import PackageManager
from interpreter.sandbox import SandboxRunner
from interpreter.sandbox import runner as runner_module
from interpreter.sandbox.bwrap import RUNTIME_MOUNT
from interpreter.types import ExitCause
from tests.fixtures_sandbox import make_settings
from tests.sandbox_helpers import run

# What the member process's modules say about where the runtime came from.
WHERE_FROM = """
import sys
bootstrap = sys.modules["bootstrap"]
print("marker", getattr(bootstrap, "MARKER", "source"))
print("cached", bootstrap.__spec__.cached)
"""


@pytest.fixture
async def launched(tmp_path: Path, sandbox_venv: Path):
    """A runner that launches every sandbox (no fork server, nothing warm)."""
    data = tmp_path / "data"
    data.mkdir()
    settings: Settings = make_settings(data, SANDBOX_FORK_SERVER="false")
    runner = SandboxRunner(settings, PackageManager(settings))
    yield runner
    await runner.close()


def _pyc_of_other_code(real_source: bytes, hash_of: bytes) -> bytes:
    """A checked pyc whose code is the bootstrap plus a MARKER, stamped with `hash_of`'s hash."""
    code = compile(real_source + b"\nMARKER = 'compiled by the host'\n", f"{RUNTIME_MOUNT}/bootstrap.py", "exec",
                   dont_inherit=True)
    return (importlib.util.MAGIC_NUMBER + (0b11).to_bytes(4, "little") + importlib.util.source_hash(hash_of)
            + marshal.dumps(code))


async def test_the_bootstrap_runs_from_the_hosts_bytecode(launched, monkeypatch):
    # Before: bootstrap.py ran as a script, compiled from source in every sandbox.
    source = runner_module.BOOTSTRAP_SOURCE
    monkeypatch.setattr(runner_module, "_pyc", lambda name, data: (
        _pyc_of_other_code(data, data) if name == "bootstrap.py" else None))
    outcome = await run(launched, WHERE_FROM)
    assert outcome.cause is ExitCause.OK, outcome.error
    assert "marker compiled by the host" in outcome.output
    assert f"cached {RUNTIME_MOUNT}/__pycache__/bootstrap." in outcome.output
    assert source == runner_module.BOOTSTRAP_SOURCE


async def test_bytecode_that_does_not_match_its_source_is_never_run(launched, monkeypatch):
    stale = b"# an older bootstrap\n" + runner_module.BOOTSTRAP_SOURCE
    monkeypatch.setattr(runner_module, "_pyc", lambda name, data: (
        _pyc_of_other_code(data, stale) if name == "bootstrap.py" else None))
    outcome = await run(launched, WHERE_FROM)
    assert outcome.cause is ExitCause.OK, outcome.error
    assert "marker source" in outcome.output


@pytest.mark.parametrize("fork_server", ["false", "true"], ids=["launched", "forked"])
async def test_one_swap_of_the_bootstrap_reaches_launched_and_forked_runs(fork_server, tmp_path, sandbox_venv,
                                                                         monkeypatch):
    # Before: forkserver.py imported its own reference to the source, so a test that swapped the
    # bootstrap had to patch it twice, and one that patched runner.py alone got the old one forked
    # (once forkserver.py had been imported, as it is in a whole-suite run: import it first).
    importlib.import_module("interpreter.sandbox.forkserver")
    monkeypatch.setattr(runner_module, "BOOTSTRAP_SOURCE",
                        runner_module.BOOTSTRAP_SOURCE + b"\nMARKER = 'swapped in runner.py'\n")
    data = tmp_path / "data"
    data.mkdir()
    settings = make_settings(data, SANDBOX_FORK_SERVER=fork_server, SANDBOX_POOL_PRELOAD="json",
                             SANDBOX_FORK_SPARES="0", SANDBOX_FORK_LIGHT_SPARES="0",
                             SANDBOX_FORK_LIGHT_TEMPLATE="false")
    runner = SandboxRunner(settings, PackageManager(settings))
    try:
        if fork_server == "true":
            assert await runner.warm_up(), runner.describe()["fork_server"]
        outcome = await run(runner, WHERE_FROM)
        assert outcome.cause is ExitCause.OK, outcome.error
        assert "marker swapped in runner.py" in outcome.output, outcome.output
        if fork_server == "true":
            assert runner.fork_server.describe()["runs_forked"] == 1, "the run was not forked"
    finally:
        await runner.close()


async def test_every_runtime_module_has_its_bytecode_bound(launched):
    outcome = await run(launched, """
        import os
        print(sorted(os.listdir("/opt/runtime/__pycache__")))
        """)
    assert outcome.cause is ExitCause.OK, outcome.error
    listed = outcome.output.splitlines()[-1]
    for name in ("bootstrap", "display", "errors", "offline"):
        assert f"'{name}." in listed, listed


async def test_a_print_imports_nothing_heavy_yet_the_network_guard_still_answers(launched):
    """socket, traceback, difflib, ast.py, json (re, enum...), linecache: ~13 ms of every run's
    start together, and a print needs none of them."""
    outcome = await run(launched, """
        import sys
        print(sorted(name for name in ("socket", "traceback", "difflib", "ast", "textwrap", "json", "re", "enum",
                                       "linecache", "tokenize", "contextlib", "functools", "collections")
                     if name in sys.modules))
        import socket  # the first import patches in the friendly refusal
        try:
            socket.create_connection(("example.com", 80), timeout=2)
        except Exception as exc:
            print(type(exc).__name__, exc)
        """)
    assert outcome.cause is ExitCause.OK, outcome.error
    first, second = outcome.output.splitlines()[:2]
    assert first == "[]"
    assert second.startswith("NoInternet This sandbox has no internet (could not reach example.com)")


async def test_tracebacks_show_the_members_lines_though_linecache_is_imported_late(launched):
    """linecache is imported when something first needs it (here the member's own traceback
    module, after the code is known): the member's lines are there all the same."""
    outcome = await run(launched, """
        def broken():
            return 1 / 0
        import traceback
        try:
            broken()
        except ZeroDivisionError:
            traceback.print_exc()
        """)
    assert outcome.cause is ExitCause.OK, outcome.error
    assert "    return 1 / 0" in outcome.output and "    broken()" in outcome.output, outcome.output


def test_the_wire_codec_writes_what_json_writes_and_refuses_what_json_refuses():
    import json

    from interpreter.runtime import wire

    for value in ({"kind": "file", "name": "r\u00e9sum\u00e9\n\"x\".png", "size": 12}, [1, -2.5, None, True, "\u2603"],
                  {"files": [{"file_id": "f_1", "size": 2**40}], "limits": {}, "last": False}, "text", 3):
        assert wire.dumps(value) == json.dumps(value)
        assert wire.loads(wire.dumps(value)) == value == wire.loads(json.dumps(value).encode())
    for bad in (b"", b"{", b'{"a": 1} x', b'{"a": 1}{}', b"[1,]", b"\xff", b'{"a": nan}', b"{'a': 1}"):
        with pytest.raises(ValueError):
            json.loads(bad)
        with pytest.raises(ValueError):
            wire.loads(bad)
    with pytest.raises(RecursionError):
        wire.loads(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(TypeError):
        wire.dumps({"a": object()})
