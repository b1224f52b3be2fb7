"""The run audit: the store contract on every backend, what the engine records, and
that an audit outage never fails a run.

`file_backend` (tests/fixtures_mongo.py) runs the contract on SQLite, on MongoDB
through PyMongo's async client and through a motor handle, against a real wire
server. Engine tests run real code in the real sandbox. Time moves by a test clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import interpreter
from config.settings import Secret
from interpreter.audit import RunAudit
from interpreter.engine import Engine
from interpreter.store import RunRecord
from tests.fixtures_mongo import MongoTestServer, TestClock

USER, OTHER = 111111111111111111, 222222222222222222
GUILD, OTHER_GUILD, CHANNEL = 900000000000000001, 900000000000000002, 800000000000000001
SECRET_CODE = "print('the-code-itself-' + 'never-stored')"
SECRET_MARKER = "the-code-itself-"


def ms(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def audit_for(backend, settings=None) -> RunAudit:
    settings = settings or backend.settings
    return RunAudit(settings, backend.store(settings), clock=backend.clock)


def result(cause: str = "ok", *, files: tuple[str, ...] = ()) -> dict:
    return {"success": cause == "ok", "exit_cause": cause,
            "generated_files": [{"filename": name, "type": "image", "data": b"", "size": 0} for name in files]}


async def record(audit: RunAudit, *, user_id: int = USER, cause: str = "ok", code: str = "print(1)",
                 guild_id: int | None = GUILD, **extra) -> RunRecord:
    outcome = extra.pop("outcome", None) or result(cause, files=extra.pop("produced", ()))
    rec = audit.build_record(outcome, user_id=user_id, code=code, started_at=audit.now(), duration_seconds=1.25,
                             guild_id=guild_id, channel_id=CHANNEL, **extra)
    assert await audit.record(rec) is True
    return rec


async def raw_runs(backend) -> list[dict]:
    """Every audit row/document straight from the database."""
    if backend.is_mongo:
        return await backend.raw_db.run_audit.find({}, {"_id": 0}).to_list(length=None)
    with sqlite3.connect(backend.settings.sqlite_path) as connection:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute("SELECT * FROM run_audit")]


# --- the store contract


async def test_a_run_is_stored_with_everything_but_the_code(file_backend):
    audit = audit_for(file_backend)
    started = audit.now()
    stored = await record(audit, code=SECRET_CODE, packages=["scipy", "statsmodels"], files=["f" * 32],
                          produced=("chart.png", "summary.csv"))

    [run] = await audit.recent(10)
    assert run == {
        "run_id": stored.run_id, "user_id": USER, "guild_id": GUILD, "channel_id": CHANNEL,
        "started_at": started.isoformat(), "duration_seconds": 1.25, "success": True,
        "status": "ok", "exit_cause": "ok", "packages": ["scipy", "statsmodels"], "files_used": ["f" * 32],
        "files_produced": ["chart.png", "summary.csv"],
        "code_sha256": hashlib.sha256(SECRET_CODE.encode()).hexdigest(),
        "expires_at": (started + timedelta(hours=48)).isoformat(),
    }
    [raw] = await raw_runs(file_backend)
    assert SECRET_MARKER not in repr(raw)  # the hash only, in the database itself
    if file_backend.is_mongo:  # real BSON dates, as for files
        assert isinstance(raw["started_at"], datetime) and isinstance(raw["expires_at"], datetime)


async def test_recent_runs_are_newest_first_per_member_and_per_guild(file_backend):
    audit = audit_for(file_backend)
    first = await record(audit, code="a = 1")
    file_backend.clock.advance(minutes=1)
    await record(audit, user_id=OTHER, code="b = 2", guild_id=OTHER_GUILD)
    file_backend.clock.advance(minutes=1)
    third = await record(audit, cause="timeout", code="c = 3")

    assert [r["code_sha256"] for r in await audit.recent(10, USER)] == [third.code_sha256, first.code_sha256]
    assert [r["user_id"] for r in await audit.recent(10)] == [USER, OTHER, USER]
    assert [r["user_id"] for r in await audit.recent(2)] == [USER, OTHER]
    assert [r["guild_id"] for r in await audit.recent(10, guild_id=OTHER_GUILD)] == [OTHER_GUILD]
    assert await audit.recent(10, OTHER, guild_id=GUILD) == []


async def test_cause_counts_cover_the_window_only(file_backend):
    audit = audit_for(file_backend)
    await record(audit, cause="timeout")  # will be older than 24 h
    file_backend.clock.advance(hours=25)
    for cause in ("ok", "ok", "exception", "timeout", "memory"):
        await record(audit, cause=cause)
    await record(audit, outcome={"success": False, "error": "File 'x' was not found"})  # refused

    assert await audit.cause_counts() == {"ok": 2, "exception": 1, "timeout": 1, "memory": 1, "refused": 1}
    summary = await audit.summary()
    assert summary["runs_last_24h"] == 6
    assert summary["failure_causes"] == {"exception": 1, "memory": 1, "refused": 1, "timeout": 1}
    assert len(summary["recent_runs"]) == 5


async def test_start_times_count_runs_that_ran_since_a_moment(file_backend):
    audit = audit_for(file_backend)
    early = audit.now()
    await record(audit)
    file_backend.clock.advance(minutes=30)
    middle = audit.now()
    await record(audit, cause="exception")  # a failed run still ran
    await record(audit, outcome={"success": False, "error": "Package 'x' is not approved"})  # refused: never ran
    await record(audit, user_id=OTHER)

    assert await audit.start_times(USER, early) == [early, middle]
    assert await audit.start_times(USER, middle) == [middle]
    assert await audit.start_times(OTHER, early) == [middle]


async def test_runs_expire_like_files_and_the_sweep_removes_them(file_backend):
    audit = audit_for(file_backend)
    await record(audit)
    file_backend.clock.advance(hours=47)
    await record(audit, user_id=OTHER)
    file_backend.clock.advance(hours=1, seconds=1)  # the first run's record is now 48 h old

    assert [r["user_id"] for r in await audit.recent(10)] == [OTHER]  # gone at once from every query
    assert await audit.cause_counts(timedelta(days=30)) == {"ok": 1}
    assert await audit.purge_expired() == 1
    assert [raw["user_id"] for raw in await raw_runs(file_backend)] == [OTHER]


async def test_zero_expiry_keeps_runs_forever(file_backend):
    audit = audit_for(file_backend, file_backend.with_settings(FILE_EXPIRY_HOURS="0"))
    await record(audit)
    file_backend.clock.advance(days=3650)

    [run] = await audit.recent(10)
    assert run["expires_at"] is None
    assert await audit.purge_expired() == 0
    assert len(await raw_runs(file_backend)) == 1


async def test_odd_request_values_are_recorded_safely(file_backend):
    audit = audit_for(file_backend)
    rec = audit.build_record({"success": False, "error": "Code must be text"}, user_id=USER, code=None,
                             started_at=audit.now(), duration_seconds=-3, packages="scipy", files=[1, "x" * 500],
                             guild_id=True, channel_id="123")
    assert await audit.record(rec)
    [run] = await audit.recent(1)
    assert (run["status"], run["exit_cause"], run["duration_seconds"]) == ("refused", "refused", 0.0)
    assert run["packages"] == [] and run["files_used"] == ["1", "x" * 200]
    assert run["guild_id"] is None and run["channel_id"] is None
    assert run["code_sha256"] == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("db_handle", ["pymongo", "motor"], indirect=True)
async def test_mongo_run_audit_indexes_include_ttl(tmp_path, db_handle):
    from interpreter.store import open_store
    from tests.fixtures_mongo import file_settings

    audit = RunAudit(file_settings(tmp_path), open_store(file_settings(tmp_path), db_handler=db_handle))
    await record(audit)
    indexes = {tuple(spec["key"]): spec for spec in (await db_handle.run_audit.index_information()).values()}
    assert indexes[(("expires_at", 1),)]["expireAfterSeconds"] == 0
    assert (("user_id", 1), ("started_at", -1)) in indexes


# --- the engine records runs


async def test_engine_records_a_run_with_the_code_hash_and_no_code(engine):
    clock = TestClock()
    engine.audit.clock = clock
    upload = await interpreter.upload_file(USER, b"a,b\n1,2\n", "data.csv")
    code = ("import matplotlib.pyplot as plt\n"
            f"df = load_file({upload['file_id']!r})\n"
            "plt.plot(df['a'], df['b']); plt.savefig('chart.png')\n"
            f"print({SECRET_MARKER!r})")
    result = await interpreter.execute_code(code, USER, user_files=[upload["file_id"]],
                                            guild_id=GUILD, channel_id=CHANNEL)
    assert result["success"], result["error"]

    [run] = await engine.recent_runs(user_id=USER)
    assert run["code_sha256"] == hashlib.sha256(code.encode()).hexdigest()
    assert (run["guild_id"], run["channel_id"], run["status"], run["exit_cause"]) == (GUILD, CHANNEL, "ok", "ok")
    assert run["started_at"] == ms(clock.now).isoformat()
    assert run["files_used"] == [upload["file_id"]] and run["files_produced"] == ["chart.png"]
    assert run["duration_seconds"] > 0
    with sqlite3.connect(engine.settings.sqlite_path) as connection:  # nowhere in the database
        dump = "\n".join(connection.iterdump())
    assert SECRET_MARKER not in dump and "savefig" not in dump


async def test_engine_records_failures_and_refusals_with_their_cause(engine):
    await interpreter.execute_code("while True:\n    pass", USER, timeout=1)
    await interpreter.execute_code("raise SystemExit(3)", USER)
    await interpreter.execute_code("print(1)", USER, user_files=["no-such-file"])
    await interpreter.execute_code("print(1)", USER, install_packages=["definitely-not-approved-pkg"])

    runs = await engine.recent_runs(user_id=USER)
    assert [(r["status"], r["exit_cause"]) for r in runs] == [
        ("refused", "refused"), ("refused", "refused"), ("failed", "exception"), ("failed", "timeout")]
    assert runs[0]["packages"] == ["definitely-not-approved-pkg"] and runs[1]["files_used"] == ["no-such-file"]
    status = await interpreter.get_interpreter_status()
    assert status["failure_causes"] == {"refused": 2, "exception": 1, "timeout": 1}
    assert status["runs_last_24h"] == 4 and len(status["recent_runs"]) == 4
    assert status["limits"]["runs_per_member_per_hour"] == "unlimited"
    assert (status["limits"]["user_max_files"], status["limits"]["user_max_storage_mb"]) == (25, 250)


@pytest.mark.parametrize("db_handle", ["pymongo"], indirect=True)
async def test_runs_through_a_db_handler_are_audited_in_that_database(engine, db_handle):
    result = await interpreter.execute_code("print(2 + 2)", USER, db_handler=db_handle, guild_id=GUILD)
    assert result["output"] == "4\n"
    await (await interpreter.get_engine(db_handle)).audit.flush()  # the record is written in the background
    [doc] = await db_handle.run_audit.find({}, {"_id": 0}).to_list(length=None)
    assert (doc["user_id"], doc["guild_id"], doc["exit_cause"]) == (USER, GUILD, "ok")
    assert doc["code_sha256"] == hashlib.sha256(b"print(2 + 2)").hexdigest()


async def test_the_hourly_sweep_also_removes_expired_runs(engine):
    clock = TestClock()
    engine.audit.clock = clock
    await interpreter.execute_code("print(1)", USER)
    clock.advance(hours=49)
    assert await interpreter.cleanup_expired_files() == 0  # still counts files only, as in the seed
    with sqlite3.connect(engine.settings.sqlite_path) as connection:
        assert connection.execute("SELECT COUNT(*) FROM run_audit").fetchone() == (0,)


# --- an audit outage never fails a run


def audit_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "interpreter.audit"]


async def test_sqlite_outage_loses_records_not_runs(engine, tmp_path, caplog):
    path: Path = engine.settings.sqlite_path
    await interpreter.execute_code("print('before')", USER)  # creates the database
    await engine.audit.flush()
    moved = tmp_path / "moved.sqlite3"
    shutil.move(path, moved)
    path.mkdir()  # a directory where the database file should be: cannot be opened
    await engine.store.close()

    with caplog.at_level(logging.INFO):
        first = await interpreter.execute_code("print('during')", USER)
        second = await interpreter.execute_code("1/0", USER)
        await engine.audit.flush()
    assert (first["success"], first["output"]) == (True, "during\n")
    assert second["success"] is False and "ZeroDivisionError" in second["error"]
    assert audit_lines(caplog) == [
        "run audit: could not record runs (database unavailable); keeping them on disk until it is back"]
    status = await interpreter.get_interpreter_status()  # status still answers
    assert status["recent_runs"] is None and "unavailable" in status["run_audit_error"]

    path.rmdir()
    shutil.move(moved, path)
    caplog.clear()
    engine.audit._retry_at = 0  # the retry is due (instead of waiting OUTAGE_RETRY_SECONDS)
    with caplog.at_level(logging.INFO):
        await interpreter.execute_code("print('after')", USER)
        await engine.audit.flush()
    assert audit_lines(caplog) == ["run audit: recording again; writing the runs kept on disk meanwhile"]
    runs = await engine.recent_runs(user_id=USER)
    assert [run["exit_cause"] for run in runs] == ["ok", "exception", "ok", "ok"]  # nothing lost, in order
    assert engine.audit.backlog() == {"waiting": 0, "on_disk": 0, "dropped": 0}


async def test_mongo_outage_loses_records_not_runs(sandbox_settings, tmp_path, caplog):
    server = MongoTestServer(sqlite_path=tmp_path / "mongo.sqlite3").start()
    settings = sandbox_settings.replace(mongodb_uri=Secret(server.uri + "&serverSelectionTimeoutMS=700"),
                                        mongodb_database="audit_outage")
    engine = Engine(settings)
    try:
        assert (await engine.execute("print(1)", USER))["success"]
        await engine.audit.flush()
        server.stop()
        with caplog.at_level(logging.INFO):
            during = await engine.execute("print('still runs')", USER, guild_id=GUILD)
            await engine.audit.flush()
        assert (during["success"], during["output"]) == (True, "still runs\n")
        assert len(audit_lines(caplog)) == 1
        assert "mongodb://" not in caplog.text
        server.start()
        engine.audit._retry_at = 0  # the retry is due
        assert (await engine.execute("print(3)", USER))["success"]
        assert len(await engine.recent_runs(user_id=USER)) == 3  # the one run during the outage was kept
    finally:
        await engine.store.close()
        server.stop()


async def test_unexpected_audit_errors_never_reach_the_member(engine, monkeypatch, caplog):
    async def broken(records):
        raise RuntimeError("bug in the audit")

    monkeypatch.setattr(engine.store, "save_runs", broken)
    with caplog.at_level(logging.INFO):
        result = await interpreter.execute_code("print('fine')", USER)
        await engine.audit.flush()
    assert result["output"] == "fine\n" and "bug in the audit" not in str(result)
    assert audit_lines(caplog) == ["run audit: could not record runs (RuntimeError); keeping them on disk until it is back"]


async def test_a_slow_audit_database_never_delays_the_result(engine, monkeypatch):
    """The record is written after the member has the result: a database that hangs
    (an unreachable MongoDB waits for its server-selection timeout) costs the run nothing."""
    database_answers = asyncio.Event()
    real_save = engine.store.save_runs

    async def hanging_insert(records):
        await database_answers.wait()
        await real_save(records)

    monkeypatch.setattr(engine.store, "save_runs", hanging_insert)
    # returns while the insert hangs (awaiting the write inline would never return: fail, not hang)
    result = await asyncio.wait_for(interpreter.execute_code("print('fast')", USER), timeout=60)
    assert result["output"] == "fast\n"
    database_answers.set()
    [run] = await engine.recent_runs(user_id=USER)  # readers wait for the pending write
    assert run["status"] == "ok"


async def test_background_records_are_written_in_run_order(file_backend, monkeypatch):
    """Runs started in the same millisecond still list newest first: the first write
    is held up (a slow database), yet the later records wait behind it."""
    audit = audit_for(file_backend)
    first_write_may_finish, first_write_started = asyncio.Event(), asyncio.Event()
    real_save = audit.store.save_runs
    calls = 0

    async def first_insert_is_slow(batch):
        nonlocal calls
        calls += 1
        if calls == 1:
            first_write_started.set()
            await first_write_may_finish.wait()
        await real_save(batch)

    monkeypatch.setattr(audit.store, "save_runs", first_insert_is_slow)
    records = [audit.build_record(result(), user_id=USER, code=f"x = {n}", started_at=audit.now(),
                                  duration_seconds=0.1) for n in range(5)]
    audit.record_later(records[0])
    await first_write_started.wait()
    for rec in records[1:]:
        audit.record_later(rec)
    for _ in range(10):
        await asyncio.sleep(0)  # let the writer run if it would; none may overtake the first
    assert calls == 1
    first_write_may_finish.set()
    listed = await audit.recent(10)
    assert [r["code_sha256"] for r in listed] == [rec.code_sha256 for rec in reversed(records)]


def test_record_times_are_aware_utc():
    clock = TestClock()
    clock.now = datetime(2025, 1, 1, 12, 0, 0, 123456)  # naive: read as UTC
    audit = RunAudit(type("S", (), {"file_expiry_hours": 1})(), store=None, clock=clock)
    assert audit.now() == datetime(2025, 1, 1, 12, 0, 0, 123000, tzinfo=timezone.utc)
