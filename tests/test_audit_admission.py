"""Audit records are written at admission and completed at the end, under one run id.

A run in flight has a record (status "running"), a run that ended has exactly one,
a record whose process died shows as "interrupted" rather than running for ever, spool
replays are idempotent, and the hourly limit counts runs from the moment they are
admitted. Real SQLite and the real MongoDB wire server (tests/fixtures_mongo.py); engine
tests run real code in the real sandbox (the executor is only held at its door, so a
run stays in flight as long as the test needs).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from config.settings import Secret
from interpreter.access import DenialReason, RunContext
from interpreter.audit import RunAudit, interrupted_after
from interpreter.engine import Engine
from interpreter.store import RUN_INTERRUPTED, RUN_RUNNING
from tests.fixtures_mongo import TestClock

MEMBER = 333333333333333333
GUILD, CHANNEL = 900000000000000001, 800000000000000001
LIMIT = 3


def audit_for(backend) -> RunAudit:
    return RunAudit(backend.settings, backend.store(), clock=backend.clock)


def run_records(audit: RunAudit, run_id: str, *, cause: str = "ok"):
    """(admission, end) of one run, as the engine writes them."""
    started = audit.now()
    admission = audit.admission_record(run_id=run_id, user_id=MEMBER, code="print(1)", started_at=started,
                                       guild_id=GUILD, channel_id=CHANNEL)
    end = audit.build_record({"success": cause == "ok", "exit_cause": cause}, user_id=MEMBER, code="print(1)",
                             started_at=started, duration_seconds=0.5, guild_id=GUILD, channel_id=CHANNEL,
                             run_id=run_id)
    return admission, end


async def raw_rows(backend) -> list[dict]:
    if backend.is_mongo:
        return await backend.raw_db.run_audit.find({}, {"_id": 0}).to_list(length=None)
    with contextlib.closing(sqlite3.connect(backend.settings.sqlite_path)) as connection:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute("SELECT * FROM run_audit")]


# --- the store contract: one record per run id, whatever order and however often it is written


async def test_the_end_completes_the_admission_record(file_backend):
    audit = audit_for(file_backend)
    admission, end = run_records(audit, "a" * 32)
    assert await audit.record(admission)
    [running] = await audit.recent(10)
    assert (running["run_id"], running["status"], running["exit_cause"]) == ("a" * 32, RUN_RUNNING, RUN_RUNNING)
    assert await audit.record(end)
    [ended] = await audit.recent(10)
    assert (ended["run_id"], ended["status"], ended["duration_seconds"]) == ("a" * 32, "ok", 0.5)
    assert len(await raw_rows(file_backend)) == 1


async def test_a_late_admission_never_undoes_the_end(file_backend):
    """A spool replay may bring a run's admission after its end was written: nothing changes."""
    audit = audit_for(file_backend)
    admission, end = run_records(audit, "b" * 32, cause="timeout")
    assert await audit.record(end)
    assert await audit.record(admission)
    [run] = await audit.recent(10)
    assert (run["status"], run["exit_cause"]) == ("failed", "timeout")
    assert len(await raw_rows(file_backend)) == 1


async def test_replaying_the_spool_twice_keeps_one_record_per_run(file_backend):
    """A replay whose writes reached the database just before it broke is replayed again
    (the spool was not yet emptied): still one record per run, each with its end."""
    audit = audit_for(file_backend)
    runs = [run_records(audit, f"{n:032x}") for n in range(5)]
    kept = [record for pair in runs for record in pair]
    for _ in range(2):
        audit.spool.append(kept)
        audit._wake()
        assert await audit.flush(timeout=10)
        assert audit.backlog() == {"waiting": 0, "on_disk": 0, "dropped": 0}
    rows = await raw_rows(file_backend)
    assert sorted(row["run_id"] for row in rows) == [f"{n:032x}" for n in range(5)]
    assert {row["status"] for row in rows} == {"ok"}


async def test_concurrent_writers_of_one_run_leave_one_record(file_backend):
    """Two processes (two stores) writing the same run's end at the same moment, as a retry
    after a broken connection may: the unique run id keeps one."""
    audit = audit_for(file_backend)
    other = file_backend.store()
    ends = [run_records(audit, f"{n:032x}")[1] for n in range(20)]
    await asyncio.gather(*(store.save_runs([end]) for end in ends for store in (audit.store, other)))
    rows = await raw_rows(file_backend)
    assert len(rows) == 20 and len({row["run_id"] for row in rows}) == 20


async def test_records_are_written_in_few_transactions(file_backend, monkeypatch):
    """The per-run cost of recording at admission: runs arriving together share one write,
    and a run that ends before its admission was written costs one record, not two."""
    audit = audit_for(file_backend)
    written: list[list] = []
    real_save = audit.store.save_runs

    async def counting(records):
        written.append(list(records))
        await real_save(records)

    monkeypatch.setattr(audit.store, "save_runs", counting)
    for n in range(20):
        admission, end = run_records(audit, f"{n:032x}")
        audit.record_later(admission)
        audit.record_later(end)
    assert await audit.flush(timeout=10)
    assert len(written) == 1 and len(written[0]) == 20 and not any(r.running for r in written[0])
    assert len(await raw_rows(file_backend)) == 20


async def test_a_run_left_running_by_a_dead_process_shows_as_interrupted(file_backend):
    audit = audit_for(file_backend)
    admission, end = run_records(audit, "c" * 32)
    assert await audit.record(admission)  # ... and the process dies before the end
    status = await audit.summary()
    assert status["runs_in_flight"] == 1 and status["failure_causes"] == {} and status["runs_last_24h"] == 1

    file_backend.clock.advance(seconds=interrupted_after(audit.settings).total_seconds() + 1)
    status = await audit.summary()
    assert status["runs_in_flight"] == 0
    assert status["failure_causes"] == {RUN_INTERRUPTED: 1} and status["runs_last_24h"] == 1
    [run] = await audit.recent(10)
    assert (run["status"], run["exit_cause"]) == (RUN_INTERRUPTED, RUN_INTERRUPTED)
    # It did start: the hourly limit still counts it (it is within the hour).
    assert len(await audit.start_times(MEMBER, audit.now() - timedelta(hours=1))) == 1

    assert await audit.record(end)  # the process was only slow after all: its end wins
    [run] = await audit.recent(10)
    assert run["status"] == "ok"


def test_interrupted_means_longer_than_any_run_can_take(tmp_path):
    """Queued behind a full queue of longest runs, installing packages, running: a live run
    is never shown as interrupted."""
    from tests.fixtures_mongo import file_settings

    settings = file_settings(tmp_path, MAX_RUN_TIMEOUT_SECONDS="100", RUN_QUEUE_MAX="10", MAX_CONCURRENT_RUNS="2",
                             INSTALL_TIMEOUT_SECONDS="50")
    assert interrupted_after(settings) > timedelta(seconds=5 * 100 + 50 + 100)


# --- schema migration: databases written before run ids keep working


LEGACY_SQLITE_SCHEMA = """
CREATE TABLE run_audit (
    id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, guild_id INTEGER, channel_id INTEGER,
    started_at REAL NOT NULL, duration_seconds REAL NOT NULL, success INTEGER NOT NULL, status TEXT NOT NULL,
    exit_cause TEXT NOT NULL, packages TEXT NOT NULL, files_used TEXT NOT NULL, files_produced TEXT NOT NULL,
    code_sha256 TEXT NOT NULL, expires_at REAL
);
"""


async def test_an_sqlite_database_from_before_run_ids_is_migrated(tmp_path):
    from tests.fixtures_mongo import file_settings

    settings = file_settings(tmp_path / "data")
    settings.sqlite_path.parent.mkdir(parents=True)
    clock = TestClock()
    with contextlib.closing(sqlite3.connect(settings.sqlite_path)) as connection, connection:
        connection.executescript(LEGACY_SQLITE_SCHEMA)
        for n in range(2):
            connection.execute("INSERT INTO run_audit (user_id, started_at, duration_seconds, success, status, "
                               "exit_cause, packages, files_used, files_produced, code_sha256) "
                               "VALUES (?, ?, 1.0, 1, 'ok', 'ok', '[]', '[]', '[]', ?)",
                               (MEMBER, clock.now.timestamp() - 60 + n, f"{n}" * 64))
    from interpreter.store import open_store

    audits = [RunAudit(settings, open_store(settings), clock=clock) for _ in range(2)]  # two processes open it
    await asyncio.gather(*(audit.recent(10) for audit in audits))
    admission, end = run_records(audits[0], "d" * 32)
    for record in (admission, end, end):
        assert await audits[0].record(record)
    runs = await audits[1].recent(10)
    assert [run["run_id"] for run in runs] == ["d" * 32, None, None]
    assert len(await audits[1].start_times(MEMBER, clock.now - timedelta(hours=1))) == 3
    for audit in audits:
        await audit.store.close()


@pytest.mark.parametrize("db_handle", ["pymongo", "motor"], indirect=True)
async def test_a_mongo_collection_from_before_run_ids_keeps_working(tmp_path, db_handle):
    from interpreter.store import open_store
    from tests.fixtures_mongo import file_settings

    clock = TestClock()
    for n in range(2):  # documents as the audit wrote them before run ids: no run_id field
        await db_handle.run_audit.insert_one({
            "user_id": MEMBER, "guild_id": None, "channel_id": None, "started_at": clock.now,
            "duration_seconds": 1.0, "success": True, "status": "ok", "exit_cause": "ok", "packages": [],
            "files_used": [], "files_produced": [], "code_sha256": f"{n}" * 64, "expires_at": None})
    settings = file_settings(tmp_path)
    audit = RunAudit(settings, open_store(settings, db_handler=db_handle), clock=clock)
    admission, end = run_records(audit, "e" * 32)
    for record in (admission, end, admission):
        assert await audit.record(record)
    runs = await audit.recent(10)
    assert sorted(str(run["run_id"]) for run in runs) == ["None", "None", "e" * 32]
    assert {run["status"] for run in runs} == {"ok"}
    indexes = await db_handle.run_audit.index_information()
    [run_id_index] = [spec for spec in indexes.values() if spec["key"] == [("run_id", 1)]]
    assert run_id_index["unique"]


# --- the engine: a record from admission on, one after the end, the hourly limit at admission


class HeldExecutor:
    """The engine's real executor, with the door held shut: runs wait in flight until `release()`."""

    def __init__(self, executor) -> None:
        self.real_run = executor.run
        self.door = asyncio.Event()
        self.waiting = 0
        self.arrived = asyncio.Condition()

    async def run(self, request):
        async with self.arrived:
            self.waiting += 1
            self.arrived.notify_all()
        await self.door.wait()
        return await self.real_run(request)

    async def until_waiting(self, count: int) -> None:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: self.waiting >= count), timeout=60)

    def release(self) -> None:
        self.door.set()


@pytest.fixture(params=["sqlite", "mongodb"])
def audited_settings(request, sandbox_settings):
    settings = sandbox_settings.replace(runs_per_member_per_hour=LIMIT, run_cooldown_seconds=0)
    if request.param == "mongodb":
        server = request.getfixturevalue("mongo_server")
        settings = settings.replace(mongodb_uri=Secret(server.uri),
                                    mongodb_database=request.getfixturevalue("mongo_db_name"))
    return settings


@pytest.fixture
async def two_processes(audited_settings, monkeypatch):
    """Two engines on one store (as two bot processes would be) sharing this machine's executor."""
    first = Engine(audited_settings)
    second = Engine(audited_settings, executor=first.executor)
    held = HeldExecutor(first.executor)
    monkeypatch.setattr(first.executor, "run", held.run)
    yield first, second, held
    held.release()
    await second.audit.close()
    await second.store.close()
    await first.close()
    await first.store.close()


async def test_a_run_has_its_record_while_in_flight_and_one_after(two_processes):
    engine, other, held = two_processes
    run = asyncio.ensure_future(engine.run("print('hi')", MEMBER, guild_id=GUILD, channel_id=CHANNEL))
    await held.until_waiting(1)
    await engine.audit.flush()
    [in_flight] = await other.recent_runs(10)  # seen from the other process too
    assert (in_flight["status"], in_flight["user_id"], in_flight["guild_id"]) == (RUN_RUNNING, MEMBER, GUILD)
    assert (await other.status())["runs_in_flight"] == 1

    held.release()
    assert (await run).output == "hi\n"
    await engine.audit.flush()
    [ended] = await other.recent_runs(10)
    assert ended["run_id"] == in_flight["run_id"] and ended["status"] == "ok"
    status = await other.status()
    assert (status["runs_last_24h"], status["runs_in_flight"], status["failure_causes"]) == (1, 0, {})


async def test_a_refused_request_has_one_record_and_does_not_count(two_processes):
    engine, _other, _held = two_processes
    result = await engine.run("print(1)", MEMBER, user_files=["f" * 32])  # no such file
    assert not result.success
    await engine.audit.flush()
    [run] = await engine.recent_runs(10)
    assert run["status"] == "refused"
    assert await engine.audit.start_times(MEMBER, engine.audit.now() - timedelta(hours=1)) == []


async def test_runs_in_flight_count_against_the_hourly_limit(two_processes):
    """Runs started through the API (no bot admission) count from the moment the engine
    takes them, in every process: a member with LIMIT runs in flight is refused the next."""
    engine, other, held = two_processes
    runs = [asyncio.ensure_future(engine.run(f"print({n})", MEMBER)) for n in range(LIMIT)]
    await held.until_waiting(LIMIT)
    await engine.audit.flush()
    denial = await other.access.admit(RunContext(MEMBER, GUILD, (CHANNEL,)))
    assert getattr(denial, "reason", None) is DenialReason.RATE
    held.release()
    assert [r.output for r in await asyncio.gather(*runs)] == [f"{n}\n" for n in range(LIMIT)]


async def test_the_hourly_limit_holds_when_many_runs_are_submitted_at_once(two_processes):
    """3 * LIMIT requests at the same moment through both processes' admission: LIMIT run,
    and the audit shows exactly those, in flight and then ended, none counted twice."""
    engine, other, held = two_processes
    engines = [engine, other] * (LIMIT + LIMIT // 2 + 1)

    async def request(front: Engine, n: int):
        admission = await front.access.admit(RunContext(MEMBER, GUILD, (CHANNEL,)))
        if getattr(admission, "reason", None) is not None:
            return admission
        # (Not inside admission.running(): that runs one member's runs one at a time, and
        # here they must all be in flight together.)
        return await front.run(f"print({n})", MEMBER, guild_id=GUILD, channel_id=CHANNEL)

    requests = [asyncio.ensure_future(request(front, n)) for n, front in enumerate(engines)]
    try:
        await held.until_waiting(LIMIT)
        for front in (engine, other):
            await front.audit.flush()
        since = engine.audit.now() - timedelta(hours=1)
        assert len(await other.audit.start_times(MEMBER, since)) == LIMIT  # counted while in flight
        assert [run["status"] for run in await engine.recent_runs(50)] == [RUN_RUNNING] * LIMIT

        held.release()
        answers = await asyncio.gather(*requests)
        ran = [a for a in answers if getattr(a, "reason", None) is None]
        assert len(ran) == LIMIT and all(r.success for r in ran)
        assert all(a.reason is DenialReason.RATE for a in answers if a not in ran)
        for front in (engine, other):
            await front.audit.flush()
        assert [run["status"] for run in await other.recent_runs(50)] == ["ok"] * LIMIT
        assert (await other.status())["runs_last_24h"] == LIMIT
        assert len(await engine.audit.start_times(MEMBER, since)) == LIMIT
    finally:  # never leave runs held at the door (a failure above would hang the teardown)
        held.release()
        await asyncio.gather(*requests, return_exceptions=True)


# --- a real process dies mid-run


DYING_PROCESS = """
import asyncio, sys
import interpreter

asyncio.run(interpreter.execute_code("import time; time.sleep(600)", int(sys.argv[1]), timeout=120))
"""


@pytest.mark.parametrize("backend", ["sqlite", "mongodb"])
async def test_a_process_killed_mid_run_leaves_a_record_that_ends_as_interrupted(backend, request, tmp_path,
                                                                                 sandbox_venv):
    """SIGKILL a process (a bot or API replica) while its run is in flight: its run was
    recorded at admission, so another process sees it running, then interrupted."""
    import os
    import signal
    import subprocess
    import sys

    from interpreter.store import open_store
    from tests.fixtures_executor import cgroups_of, descendants, until_gone
    from tests.fixtures_sandbox import make_settings

    data_dir = tmp_path / "dying"
    data_dir.mkdir()
    environ = {"SANDBOX_POOL_SIZE": "0", "SANDBOX_LIGHT_POOL_SIZE": "0", "MAX_RUN_TIMEOUT_SECONDS": "120"}
    if backend == "mongodb":
        environ |= {"MONGODB_URI": request.getfixturevalue("mongo_server").uri,
                    "MONGODB_DATABASE": request.getfixturevalue("mongo_db_name")}
    settings = make_settings(data_dir, **environ)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(data_dir),
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "DATA_DIR": str(data_dir),
           "SANDBOX_VENV_DIR": str(settings.sandbox_venv_dir), "VENV_MAX_AGE_DAYS": "0",
           "SANDBOX_FORK_SERVER": "false", "SANDBOX_WARM_ON_FIRST_RUN": "false", **environ}
    process = subprocess.Popen([sys.executable, "-c", DYING_PROCESS, str(MEMBER)], cwd=data_dir, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    audit = RunAudit(settings, open_store(settings))
    sandboxes: set[int] = set()
    run_cgroups: set[Path] = set()
    try:
        runs: list[dict] = []
        for _ in range(600):  # polling for a state (the record and the sandbox), bounded
            runs = await audit.recent(10)
            if runs and descendants(process.pid) or process.poll() is not None:
                break
            await asyncio.sleep(0.1)
        assert process.poll() is None, process.stderr.read().decode(errors="replace")[-2000:]
        assert [run["status"] for run in runs] == [RUN_RUNNING], "recorded at admission, seen from another process"
        sandboxes = descendants(process.pid)
        run_cgroups = cgroups_of(sandboxes)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert await until_gone(sandboxes) == set(), "the run's sandbox died with its process"

        assert [run["status"] for run in await audit.recent(10)] == [RUN_RUNNING]  # nothing completed it
        audit.clock = clock = TestClock()  # now: after the run started
        clock.advance(seconds=interrupted_after(settings).total_seconds() + 1)
        [run] = await audit.recent(10)
        assert (run["status"], run["user_id"]) == (RUN_INTERRUPTED, MEMBER)
        assert (await audit.summary())["failure_causes"] == {RUN_INTERRUPTED: 1}
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for cgroup in sorted(run_cgroups, reverse=True):  # a killed process cannot remove its own
            with contextlib.suppress(OSError):
                cgroup.rmdir()
        await audit.store.close()
