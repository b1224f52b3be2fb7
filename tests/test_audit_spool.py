"""The run audit's backlog is bounded and durable: records the database cannot take go
to a local spool (bounded, counted when dropped), are written back in order when it
returns, and a known outage costs later records no wait. Real SQLite made unusable."""

from __future__ import annotations

import asyncio
import shutil
import time

import interpreter.audit as audit_module
from interpreter.audit import RunAudit
from interpreter.audit_spool import AuditSpool
from interpreter.store import open_store
from tests.fixtures_mongo import TestClock, file_settings

USER = 4242


def make_audit(tmp_path):
    settings = file_settings(tmp_path / "data")
    return RunAudit(settings, open_store(settings), clock=TestClock())


def records(audit: RunAudit, count: int, start: int = 0):
    return [audit.build_record({"success": True, "exit_cause": "ok"}, user_id=USER, code=f"x = {n}",
                               started_at=audit.now(), duration_seconds=0.1) for n in range(start, start + count)]


async def insert_that_hangs(records) -> None:
    """A database that accepted the connection and never answers."""
    await asyncio.Event().wait()


def break_database(audit: RunAudit, tmp_path) -> callable:
    """Make the SQLite file unusable (a directory in its place); returns how to repair it."""
    path = audit.settings.sqlite_path
    moved = tmp_path / "moved.sqlite3"
    shutil.move(path, moved)
    path.mkdir()

    def repair():
        path.rmdir()
        shutil.move(moved, path)
    return repair


async def test_records_of_an_outage_are_kept_on_disk_and_written_back_in_order(tmp_path):
    audit = make_audit(tmp_path)
    for record in records(audit, 1):
        audit.record_later(record)
    await audit.flush()
    await audit.store.close()
    repair = break_database(audit, tmp_path)

    during = records(audit, 40, start=1)
    started = time.monotonic()
    for record in during:
        audit.record_later(record)
    assert await audit.flush(timeout=10)
    assert time.monotonic() - started < 5  # one failed write, then straight to disk: no wait per record
    assert audit.backlog() == {"waiting": 0, "on_disk": 40, "dropped": 0}

    repair()
    audit._retry_at = 0  # the retry is due
    later = records(audit, 1, start=41)
    audit.record_later(later[0])
    assert await audit.flush(timeout=10)
    listed = await audit.recent(100)
    expected = [r.code_sha256 for r in reversed(records(audit, 42))]
    assert [r["code_sha256"] for r in listed] == expected  # all 42, newest first: order kept
    assert audit.backlog() == {"waiting": 0, "on_disk": 0, "dropped": 0}
    await audit.store.close()


async def test_the_spool_is_bounded_and_drops_are_counted(tmp_path):
    audit = make_audit(tmp_path)
    audit._spool = AuditSpool(tmp_path / "spool.jsonl", max_records=5)
    audit.settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    audit.settings.sqlite_path.mkdir()  # never openable
    for record in records(audit, 8):
        audit.record_later(record)
    assert await audit.flush(timeout=10)
    assert audit.backlog() == {"waiting": 0, "on_disk": 5, "dropped": 3}
    status = await audit.summary()
    assert status["run_audit_backlog"] == {"waiting": 0, "on_disk": 5, "dropped": 3}


async def test_memory_backlog_is_bounded_while_a_write_hangs(tmp_path, monkeypatch):
    audit = make_audit(tmp_path)
    monkeypatch.setattr(audit_module, "MAX_PENDING", 10)
    monkeypatch.setattr(audit_module, "WRITE_TIMEOUT_SECONDS", 0.5)
    monkeypatch.setattr(audit.store, "save_runs", insert_that_hangs)
    for record in records(audit, 25):
        audit.record_later(record)
    assert audit.backlog()["dropped"] == 15  # beyond the bound: counted, not kept in memory
    assert await audit.flush(timeout=10)  # the hanging write counts as an outage after WRITE_TIMEOUT_SECONDS
    assert audit.backlog() == {"waiting": 0, "on_disk": 10, "dropped": 15}


async def test_shutdown_is_bounded_and_spools_what_is_left(tmp_path, monkeypatch):
    audit = make_audit(tmp_path)
    monkeypatch.setattr(audit_module, "SHUTDOWN_WAIT_SECONDS", 0.2)
    monkeypatch.setattr(audit.store, "save_runs", insert_that_hangs)
    for record in records(audit, 4):
        audit.record_later(record)
    started = time.monotonic()
    await audit.close()
    assert time.monotonic() - started < 2
    assert AuditSpool(audit.spool.path).count == 4  # all four, including the one being written


async def test_records_of_new_runs_are_not_dropped_during_a_long_replay(tmp_path, monkeypatch):
    monkeypatch.setattr(audit_module, "MAX_PENDING", 4)
    monkeypatch.setattr(audit_module, "WRITE_BATCH", 2)  # a long replay: many writes
    audit = make_audit(tmp_path)
    earlier = records(audit, 10)
    audit.spool.append(earlier)  # an earlier outage's records, on disk
    replayed = {record.code_sha256 for record in earlier}
    arriving = iter(records(audit, 10, start=10))
    real_save = audit.store.save_runs

    async def a_run_ends_during_each_replayed_write(batch):
        await real_save(batch)
        for record in batch:
            if record.code_sha256 in replayed:
                audit.record_later(next(arriving))

    monkeypatch.setattr(audit.store, "save_runs", a_run_ends_during_each_replayed_write)
    audit._wake()  # the database answers again: the replay starts
    assert await audit.flush(timeout=10)
    assert audit.backlog() == {"waiting": 0, "on_disk": 0, "dropped": 0}
    assert len(await audit.recent(100)) == 20
    await audit.store.close()
