"""Sessions: state kept between runs in one long-lived sandbox, and nowhere else.

Real sandboxes, real SQLite store, the public facade. Expiry runs on a controllable
clock (no sleeping); every test ends by closing the engine and checking on the host
that no sandbox process of its sessions is left.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import interpreter
from interpreter import execute_code, upload_file
from interpreter.sessions import EndReason, SessionRefused
from interpreter.types import ExitCause
from interpreter.sandbox.pool import is_running as alive
from interpreter.sandbox.pool import sandbox_pids
from tests.fixtures_sandbox import FORK_SERVER, make_settings

ALICE, BOB = 111, 222


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += minutes * 60


def host_pids(engine) -> set[int]:
    """Host pids of every open session's sandbox: bwrap and, with cgroups, everything inside."""
    return {pid for info in engine.sessions.active() for pid in sandbox_pids(engine.sessions._sessions[info.session_id].sandbox)}


async def assert_gone(pids: set[int]) -> None:
    """Every one of `pids` has exited (ended sessions are reaped before `wait_closed` returns)."""
    survivors = {pid for pid in pids if alive(pid)}
    assert not survivors, f"sandbox processes survived their session: {survivors}"


def make_engine(tmp_path: Path, **environ: str):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    engine = interpreter.configure(make_settings(data, **environ))
    engine.sessions.clock = FakeClock()
    return engine


@pytest.fixture
async def engine(tmp_path, sandbox_venv):
    engine = make_engine(tmp_path)
    if FORK_SERVER:
        assert await engine.runner.warm_up(), engine.runner.describe()["fork_server"]
    seen: set[int] = set()
    engine.seen_pids = seen
    yield engine
    seen |= host_pids(engine)
    await engine.close()
    assert engine.sessions.active() == []
    await assert_gone(seen)


async def run(code: str, user_id: int = ALICE, session_id: str | None = "g:c:alice", **options) -> dict:
    return await execute_code(code, user_id=user_id, session_id=session_id, **options)


# ---------------------------------------------------------------------- state


async def test_globals_imports_and_work_files_are_kept_between_runs(engine):
    first = await run("import statistics\nnumbers = [3, 1, 4, 1, 5]\nopen('notes.txt', 'w').write('kept')")
    assert first["success"], first
    assert first["session"]["started"] is True and first["session"]["runs"] == 1
    assert [f["filename"] for f in first["generated_files"]] == ["notes.txt"]

    second = await run("print(statistics.mean(numbers), open('notes.txt').read())")
    assert second["output"] == "2.8 kept\n"
    assert second["session"]["started"] is False and second["session"]["runs"] == 2
    assert second["generated_files"] == []  # notes.txt was returned by the run that wrote it, not again

    third = await run("numbers.append(9)\nlen(numbers)")  # a final expression is shown, as in a notebook
    assert third["output"] == "6\n"


async def test_a_dataframe_table_and_a_chart_in_later_runs(engine):
    await run("import pandas as pd\ndf = pd.DataFrame({'units': [5, 7, 10], 'price': [2.0, 3.5, 1.0]})")
    described = await run("df.describe()")
    assert described["success"], described
    assert "units" in described["output"] and "mean" in described["output"] and "7.333333" in described["output"]
    chart = await run("df.plot()")
    images = [f for f in chart["generated_files"] if f["type"] == "image"]
    assert images and images[0]["data"].startswith(b"\x89PNG"), chart


async def test_state_is_invisible_to_another_member_and_to_one_shot_runs(engine):
    await run("secret = 'alice-only'")
    bobs = await run("print(secret)", user_id=BOB, session_id="g:c:bob")
    assert "NameError" in bobs["error"]
    one_shot = await run("print(secret)", session_id=None)
    assert "NameError" in one_shot["error"] and "session" not in one_shot
    assert (await run("print(secret)"))["output"] == "alice-only\n"  # still there for alice


async def test_another_member_cannot_use_someone_elses_session_id(engine):
    await run("x = 1")
    refused = await run("print(x)", user_id=BOB)
    assert refused["success"] is False
    assert refused["error"] == "That session belongs to another member"


async def test_a_user_error_keeps_the_session(engine):
    await run("kept = 41")
    failed = await run("1/0")
    assert "ZeroDivisionError" in failed["error"] and failed["session"]["active"] is True
    assert (await run("print(kept + 1)"))["output"] == "42\n"


# ---------------------------------------------------------------------- files


async def test_files_uploaded_mid_session_arrive_once_without_a_restart(engine):
    sent: list[tuple[str, ...]] = []
    real_run_in = engine.runner.run_in

    async def recording_run_in(sandbox, job):
        sent.append(tuple(f.filename for f in job.input_files))
        return await real_run_in(sandbox, job)

    engine.runner.run_in = recording_run_in
    first = await upload_file(ALICE, b"region,units\neast,5\nnorth,10\n", "sales.csv")
    loaded = await run(f"df = load_file('{first['file_id']}')\nprint(df.units.sum())")
    assert loaded["output"] == "15\n", loaded

    second = await upload_file(ALICE, b"region,target\neast,6\n", "targets.csv")
    # Named by id only (no user_files): the session gets it now; the first file is not sent again.
    both = await run(f"t = load_file('{second['file_id']}')\nprint(sorted(FILES), int(df.units.sum()), int(t.target[0]))",
                     user_files=[first["file_id"]])
    assert both["success"], both
    assert both["output"] == f"{sorted([first['file_id'], second['file_id']])} 15 6\n"
    assert sent == [("sales.csv",), ("targets.csv",)]


async def test_another_members_file_id_in_the_code_is_not_sent(engine):
    bobs = await upload_file(BOB, b"a\n1\n", "bob.csv")
    result = await run(f"load_file('{bobs['file_id']}')")
    assert "FileNotFoundError" in result["error"]


# ---------------------------------------------------------------------- lifetime


async def test_idle_expiry_ends_the_session_and_the_next_run_says_so(engine):
    clock = engine.sessions.clock
    await run("x = 1")
    engine.seen_pids |= host_pids(engine)
    clock.advance(9.9)
    assert engine.sessions.get("g:c:alice") is not None
    clock.advance(0.2)
    assert engine.sessions.get("g:c:alice") is None  # expired on access
    assert engine.sessions.continues("g:c:alice")  # the member's next run starts a fresh one
    await engine.sessions.wait_closed()
    await assert_gone(engine.seen_pids)

    fresh = await run("print('x' in globals())")
    assert fresh["output"] == "False\n"
    assert fresh["session"]["started"] is True
    assert fresh["session"]["note"] == "Your session ended after 10 minutes idle; this run started fresh."
    assert (await run("print(1)"))["session"]["note"] == ""  # said once


async def test_the_sweep_ends_idle_and_too_old_sessions(engine):
    clock = engine.sessions.clock
    await run("a = 1", session_id="g:c1:alice")
    clock.advance(6)
    await run("b = 1", session_id="g:c2:alice")
    engine.seen_pids |= host_pids(engine)
    clock.advance(5)  # c1 idle 11 min, c2 idle 5 min
    assert await engine.sessions.sweep() == 1
    assert [s.session_id for s in engine.sessions.active()] == ["g:c2:alice"]

    for _ in range(30):  # busy every few minutes, but not past the maximum age (120 min)
        clock.advance(4)
        await run("b += 1", session_id="g:c2:alice") if engine.sessions.get("g:c2:alice") else None
    assert engine.sessions.get("g:c2:alice") is None
    assert engine.sessions.ended_by_reason == {"idle": 1, "max_age": 1}
    note = (await run("print(1)", session_id="g:c2:alice"))["session"]["note"]
    assert note == "Your session reached its maximum age of 120 minutes and was ended; this run started fresh."


async def test_a_session_opened_before_its_first_run_is_used_by_it(engine):
    info, created = await engine.sessions.open("g:c:alice", ALICE)
    assert created and info.runs == 0
    assert engine.sessions.get("g:c:alice") is not None
    first = await run("print('hi')")
    assert first["session"]["started"] is False and first["session"]["runs"] == 1 and first["session"]["note"] == ""


async def test_reset_and_end_drop_the_state(engine):
    await run("x = 1")
    info = await engine.sessions.reset("g:c:alice", ALICE)
    assert info.runs == 0
    assert "NameError" in (await run("x"))["error"]
    await run("y = 2")
    ended = await interpreter.end_session("g:c:alice")
    assert ended["runs"] == 2
    assert not engine.sessions.continues("g:c:alice")  # the member ended it: /run is one-shot again
    assert engine.sessions.ending_note("g:c:alice") == ""  # and needs no explaining
    again = await run("print('y' in globals())")
    assert again["output"] == "False\n" and again["session"]["note"] == ""


async def test_a_timeout_ends_only_its_own_session_and_says_so(engine):
    await run("mine = 'alice'")
    await run("theirs = 'bob'", user_id=BOB, session_id="g:c:bob")
    engine.seen_pids |= host_pids(engine)
    timed_out = await run("while True:\n    pass", timeout=2)
    assert timed_out["error"] == "Execution timeout after 2 seconds; the session was ended"
    assert timed_out["exit_cause"] == "timeout"
    assert timed_out["session"]["active"] is False and timed_out["session"]["ended"] == "timeout"
    assert (await run("print(theirs)", user_id=BOB, session_id="g:c:bob"))["output"] == "bob\n"
    after = await run("print('mine' in globals())")
    assert after["output"] == "False\n"
    assert after["session"]["note"] == "Your session was ended because a run timed out; this run started fresh."


@pytest.mark.parametrize(("code", "cause"), [
    ("import ctypes\nctypes.string_at(0)", ExitCause.CRASH),
    ("import os\nos._exit(3)", ExitCause.EXCEPTION),
])
async def test_a_crash_ends_only_its_own_session(engine, code, cause):
    await run("mine = 1")
    await run("theirs = 2", user_id=BOB, session_id="g:c:bob")
    crashed = await run(code)
    assert crashed["exit_cause"] == cause.value, crashed
    assert crashed["error"].endswith("; the session was ended")
    assert crashed["session"]["ended"] == "crash"
    assert (await run("print(theirs)", user_id=BOB, session_id="g:c:bob"))["output"] == "2\n"
    assert (await run("print('mine' in globals())"))["output"] == "False\n"


async def test_memory_limit_applies_to_a_session_and_ends_it(tmp_path, sandbox_venv):
    engine = make_engine(tmp_path, RUN_MEMORY_MB="200")
    try:
        await run("kept = 1")
        bomb = await run("blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 1024 * 1024))", timeout=30)
        assert bomb["exit_cause"] == "memory", bomb
        assert bomb["error"].endswith("; the session was ended")
    finally:
        pids = host_pids(engine)
        await engine.close()
        await assert_gone(pids)


# ---------------------------------------------------------------------- capacity


async def test_session_count_limits(tmp_path, sandbox_venv):
    engine = make_engine(tmp_path, MAX_SESSIONS="2", SESSIONS_PER_MEMBER="1")
    try:
        assert (await run("a = 1", session_id="g:c1:alice"))["success"]
        per_member = await run("a = 1", session_id="g:c2:alice")
        assert per_member["error"].startswith("You already have 1 session open (the limit is 1)")
        assert (await run("b = 1", user_id=BOB, session_id="g:c1:bob"))["success"]
        full = await run("c = 1", user_id=333, session_id="g:c1:carol")
        assert full["error"].startswith("All 2 session slots are in use")
        assert (await run("print('one-shot still works')", user_id=333, session_id=None))["success"]
        await engine.sessions.end("g:c1:bob")
        assert (await run("c = 1", user_id=333, session_id="g:c1:carol"))["success"]
    finally:
        pids = host_pids(engine)
        await engine.close()
        await assert_gone(pids)


async def test_sessions_off_is_a_clear_refusal(tmp_path, sandbox_venv):
    engine = make_engine(tmp_path, MAX_SESSIONS="0")
    result = await run("x = 1")
    assert result["error"] == "Sessions are turned off on this bot; runs start fresh every time"
    await engine.close()


async def test_a_session_run_waits_for_a_run_slot_like_any_run(tmp_path, sandbox_venv):
    engine = make_engine(tmp_path, MAX_CONCURRENT_RUNS="1")
    try:
        await run("x = 1")  # open: idle sessions hold no run slot
        assert engine.runner.in_flight == 0
        async with engine.runner.slot(light=False):  # another run is executing
            waiting = asyncio.create_task(run("print(x)"))
            while engine.runner.queued == 0:
                await asyncio.sleep(0)
            assert not waiting.done() and engine.runner.in_flight == 1
        assert (await waiting)["output"] == "1\n"
    finally:
        pids = host_pids(engine)
        await engine.close()
        await assert_gone(pids)


# ---------------------------------------------------------------------- warm pool and shutdown


async def test_a_warm_pooled_sandbox_becomes_a_session_with_a_sessions_cpu_budget(tmp_path, sandbox_venv):
    engine = make_engine(tmp_path, SANDBOX_POOL_SIZE="1", SANDBOX_LIGHT_POOL_SIZE="0", SESSION_CPU_SECONDS="700",
                         SANDBOX_FORK_SERVER="false")  # the pool's sandbox (a forked session: test_forkserver.py)
    try:
        pool = await engine.runner.start_pool()
        await asyncio.wait_for(pool.wait_until_full(), 120)
        info, created = await engine.sessions.open("g:c:alice", ALICE)
        assert created and info.warm is True, info
        assert engine.sessions.describe()["opened_warm"] == 1
        assert pool.describe()["heavy"]["served_warm"] == 1
        first = await run("import resource, sys\nprint(resource.getrlimit(resource.RLIMIT_CPU)[0], 'pandas' in sys.modules)")
        assert first["output"] == "701 True\n", first  # RLIMIT_CPU: the session's budget + 1; pandas preloaded
        await run("import pandas as pd\ndf = pd.DataFrame({'a': [1, 2, 3]})")
        assert (await run("int(df.a.sum())"))["output"] == "6\n"
    finally:
        pids = host_pids(engine)
        await engine.close()
        await assert_gone(pids)


async def test_shutdown_ends_every_session_and_leaves_no_process(tmp_path, sandbox_venv):
    engine = make_engine(tmp_path)
    for member in (ALICE, BOB, 333):
        await run("import subprocess\nchild = subprocess.Popen(['sleep', '600'])", user_id=member,
                  session_id=f"g:c:{member}")
    pids = host_pids(engine)
    assert len(engine.sessions.active()) == 3 and len(pids) >= 3
    await engine.close()
    assert engine.sessions.active() == []
    await assert_gone(pids)
    assert engine.sessions.ended_by_reason == {"shutdown": 3}


async def test_bad_session_ids_are_refused_clearly(engine):
    for bad in ("", "   ", 42, "x" * 201):
        result = await run("print(1)", session_id=bad)
        assert result["error"] == "session_id must be a non-empty string of at most 200 characters"


async def test_end_during_a_run_stops_it_and_says_why(engine):
    await run("x = 1")
    running = asyncio.create_task(run("import time\ntime.sleep(60)", timeout=90))
    while not engine.sessions.get("g:c:alice").busy or engine.runner.in_flight == 0:
        await asyncio.sleep(0.01)
    engine.seen_pids |= host_pids(engine)
    await engine.sessions.end("g:c:alice", EndReason.ENDED)
    result = await running
    assert result["error"] == "The session was ended while this run was going on"
    assert result["session"]["active"] is False


def test_session_refused_is_a_member_facing_error():
    assert issubclass(SessionRefused, interpreter.InterpreterError)


# ---------------------------------------------------------------------- processes and CPU between runs


def host_states(engine, session_id: str = "g:c:alice") -> dict[str, list[str]]:
    """cmdline -> states of the session sandbox's processes, read on the host."""
    from pathlib import Path

    found: dict[str, list[str]] = {}
    for pid in sandbox_pids(engine.sessions._sessions[session_id].sandbox):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        found.setdefault(cmdline, []).append(state)
    return found


async def test_nothing_of_a_session_runs_between_its_runs(engine):
    """Before: a session's background processes kept running (and burning CPU) after their run
    returned, until the session ended. Now every process of the run is stopped when the run
    ends, and continues with the next run, under that run's time-out."""
    first = await run("""
import os, subprocess, sys, threading
sleeper = subprocess.Popen(['sleep', '1000'])
spinner = subprocess.Popen([sys.executable, '-c', 'while True: pass'], start_new_session=True)
threading.Thread(target=lambda: [None for _ in iter(int, 1)], daemon=True).start()  # a spinning thread
print('started')
""")
    assert first["success"], first["error"]
    states = host_states(engine)
    bootstrap = [states[c] for c in states if c.startswith("/opt/venv/bin/python -I")]
    spinning = [states[c] for c in states if "while True" in c or c.startswith("sleep")]
    # The supervisor waits; the member's Python is stopped. (A run forked from the template is
    # the same two processes: its pid 1, cloned by the template, is the supervisor.)
    waiting = ["S"]
    assert sorted(sum(bootstrap, [])) in (waiting + ["T"], ["R"] + waiting[1:] + ["T"]), states
    assert sum(spinning, []) == ["T", "T"], states
    second = await run("print(sleeper.poll(), spinner.poll())")
    assert second["output"].strip() == "None None", second  # the same processes, continued


async def test_a_pool_opened_in_one_run_is_usable_in_the_next(engine):
    first = await run("import multiprocessing\npool = multiprocessing.Pool(2)\nprint(pool.map(abs, [-1, -2]))")
    assert first["output"].strip() == "[1, 2]", first["error"]
    second = await run("print(pool.map(abs, [-3, -4]))", timeout=20)
    assert second["success"], second["error"]
    assert second["output"].strip() == "[3, 4]"
