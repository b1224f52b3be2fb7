"""The user-files contract, run against every metadata backend.

`file_backend` (tests/fixtures_mongo.py) runs each test on SQLite, on MongoDB through
PyMongo's async client (MONGODB_URI), and on MongoDB through a motor database handle,
the last two against a real wire-protocol server over TCP. Time moves by a test clock.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from datetime import datetime, timedelta

import pytest

from interpreter.types import GeneratedFile, InterpreterError

SALES_CSV = b"region,month,revenue\nnorth,2024-01,1200\nsouth,2024-01,900\nnorth,2024-02,1500\n"
USER, OTHER = 111111111111111111, 222222222222222222


def ms(moment: datetime) -> datetime:
    """A time at the millisecond precision the stores keep (as BSON does)."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def blob_names(backend) -> set[str]:
    root = backend.settings.files_dir
    return {path.name for path in root.rglob("*") if path.is_file()} if root.exists() else set()


async def upload_ok(manager, user_id=USER, data=SALES_CSV, filename="sales.csv") -> dict:
    result = await manager.upload(user_id, data, filename)
    assert result["success"], result
    return result


# --- the basic cycle


async def test_upload_list_get_delete_cycle(file_backend):
    manager = file_backend.manager()
    result = await upload_ok(manager)

    assert result["filename"] == "sales.csv"
    assert result["file_type"] == "csv"
    assert result["file_size"] == len(SALES_CSV)
    uploaded = datetime.fromisoformat(result["uploaded_at"])
    assert datetime.fromisoformat(result["expires_at"]) - uploaded == timedelta(hours=48)

    listed = await manager.list_files(USER)
    assert [item["file_id"] for item in listed] == [result["file_id"]]
    assert "file_path" not in listed[0]  # host paths never reach members
    assert (await manager.get_file(result["file_id"], USER))["filename"] == "sales.csv"

    assert await manager.delete(result["file_id"], USER) is True
    assert await manager.delete(result["file_id"], USER) is False  # idempotent
    assert await manager.list_files(USER) == []
    assert await manager.get_file(result["file_id"], USER) is None
    assert blob_names(file_backend) == set()
    assert await file_backend.raw_records() == []


async def test_list_is_newest_first_and_per_user(file_backend):
    manager = file_backend.manager()
    first = await upload_ok(manager, filename="a.csv")
    file_backend.clock.advance(minutes=1)
    second = await upload_ok(manager, filename="b.csv")
    await upload_ok(manager, user_id=OTHER, filename="theirs.csv")

    assert [item["file_id"] for item in await manager.list_files(USER)] == [second["file_id"], first["file_id"]]
    assert [item["filename"] for item in await manager.list_files(OTHER)] == ["theirs.csv"]


async def test_ids_are_random_and_blobs_are_named_by_id_only(file_backend):
    manager = file_backend.manager()
    ids = [(await upload_ok(manager, filename="../../etc/passwd"))["file_id"] for _ in range(3)]

    assert len(set(ids)) == 3
    assert all(len(file_id) == 32 and str(USER) not in file_id for file_id in ids)
    assert blob_names(file_backend) == set(ids)
    for path in file_backend.settings.files_dir.rglob("*"):
        assert path.resolve().is_relative_to(file_backend.settings.files_dir.resolve())


async def test_database_holds_seed_fields_with_real_utc_datetimes(file_backend):
    manager = file_backend.manager()
    result = await upload_ok(manager)
    [record] = await file_backend.raw_records()

    assert {"file_id", "user_id", "filename", "file_path", "file_size", "file_type", "uploaded_at",
            "expires_at"} <= set(record)
    assert record["user_id"] == USER and record["file_size"] == len(SALES_CSV)
    if file_backend.is_mongo:
        assert isinstance(record["uploaded_at"], datetime) and isinstance(record["expires_at"], datetime)
        assert record["expires_at"] - record["uploaded_at"] == timedelta(hours=48)
        assert record["expires_at"].replace(tzinfo=None) == datetime.fromisoformat(result["expires_at"]).replace(tzinfo=None)
    else:  # SQLite keeps UTC epoch seconds
        assert record["expires_at"] == pytest.approx(datetime.fromisoformat(result["expires_at"]).timestamp())


# --- isolation


async def test_other_users_guessed_expired_and_deleted_ids_are_unreachable(file_backend):
    manager = file_backend.manager()
    theirs = (await upload_ok(manager, user_id=OTHER))["file_id"]
    deleted = (await upload_ok(manager))["file_id"]
    await manager.delete(deleted, USER)
    expiring = (await upload_ok(manager))["file_id"]
    file_backend.clock.advance(hours=48, seconds=1)
    guessed = secrets.token_hex(16)

    for file_id in (theirs, deleted, expiring, guessed):
        assert await manager.get_file(file_id, USER) is None
        assert await manager.delete(file_id, USER) is False
        with pytest.raises(InterpreterError, match=f"File '{file_id}' was not found, has expired, or is not yours"):
            await manager.resolve_for_run(USER, [file_id])
    assert await manager.list_files(USER) == []
    # the failed delete by someone else removed nothing
    assert theirs in {record["file_id"] for record in await file_backend.raw_records()}


async def test_delete_by_another_user_keeps_the_file(file_backend):
    manager = file_backend.manager()
    theirs = (await upload_ok(manager, user_id=OTHER))["file_id"]
    assert await manager.delete(theirs, USER) is False
    assert (await manager.get_file(theirs, OTHER))["file_id"] == theirs
    assert theirs in blob_names(file_backend)


async def test_resolve_for_run_gives_own_files_and_names_every_bad_id(file_backend):
    manager = file_backend.manager()
    mine = await upload_ok(manager)
    theirs = (await upload_ok(manager, user_id=OTHER))["file_id"]

    assert await manager.resolve_for_run(USER, []) == []
    [item] = await manager.resolve_for_run(USER, [mine["file_id"], mine["file_id"]])  # duplicates once
    assert (item.file_id, item.filename, item.file_type, item.size) == (mine["file_id"], "sales.csv", "csv", len(SALES_CSV))
    assert item.host_path.read_bytes() == SALES_CSV

    with pytest.raises(InterpreterError) as caught:
        await manager.resolve_for_run(USER, [mine["file_id"], theirs, "../../etc/passwd"])
    message = str(caught.value)
    assert f"'{theirs}'" in message and "'../../etc/passwd'" in message
    assert mine["file_id"] not in message
    assert "were not found, have expired, or are not yours" in message


# --- expiry and the sweep


async def test_expired_files_vanish_at_once_and_from_disk_at_the_sweep(file_backend):
    manager = file_backend.manager()
    file_id = (await upload_ok(manager))["file_id"]
    file_backend.clock.advance(hours=47, minutes=59)
    assert [item["file_id"] for item in await manager.list_files(USER)] == [file_id]

    file_backend.clock.advance(minutes=1, seconds=1)
    assert await manager.list_files(USER) == []  # at once, before any sweep
    assert file_id in blob_names(file_backend)

    assert await manager.cleanup_expired() == 1
    assert blob_names(file_backend) == set()
    assert await file_backend.raw_records() == []
    assert await manager.cleanup_expired() == 0
    assert (await manager.totals())["last_cleanup"] == ms(file_backend.clock.now).isoformat()


async def test_expiry_is_configurable_and_zero_means_never(file_backend):
    short = file_backend.manager(file_backend.with_settings(FILE_EXPIRY_HOURS="1.5"))
    result = await upload_ok(short)
    assert datetime.fromisoformat(result["expires_at"]) - datetime.fromisoformat(result["uploaded_at"]) == timedelta(hours=1.5)
    await short.delete(result["file_id"], USER)

    forever = file_backend.manager(file_backend.with_settings(FILE_EXPIRY_HOURS="0"))
    result = await upload_ok(forever)
    assert result["expires_at"] is None
    [record] = await file_backend.raw_records()
    assert record["expires_at"] is None  # MongoDB's TTL monitor ignores null
    file_backend.clock.advance(days=3650)
    assert await forever.cleanup_expired() == 0
    assert [item["file_id"] for item in await forever.list_files(USER)] == [result["file_id"]]
    assert len(await forever.resolve_for_run(USER, [result["file_id"]])) == 1


async def test_record_already_gone_by_ttl_still_loses_its_blob(file_backend):
    # An upload dated 49 h in the real past: MongoDB's TTL monitor may remove its record
    # before our sweep does. Either way the sweep removes the blob and counts the file once.
    manager = file_backend.manager(orphan_grace_seconds=0)
    real_now = file_backend.clock.now
    file_backend.clock.now = real_now - timedelta(hours=49)
    file_id = (await upload_ok(manager))["file_id"]
    file_backend.clock.now = real_now

    assert await manager.list_files(USER) == []
    assert await manager.cleanup_expired() == 1
    assert file_id not in blob_names(file_backend)
    assert await file_backend.raw_records() == []


async def test_sweep_during_a_run_keeps_the_blob_until_the_run_is_over(file_backend):
    manager = file_backend.manager(orphan_grace_seconds=0)
    file_id = (await upload_ok(manager))["file_id"]
    file_backend.clock.advance(hours=47, minutes=59, seconds=59)
    [item] = await manager.resolve_for_run(USER, [file_id])
    file_backend.clock.advance(seconds=2)

    assert await manager.cleanup_expired() == 1  # the record goes: nobody can start a new run with it
    assert await manager.list_files(USER) == []
    assert item.host_path.read_bytes() == SALES_CSV  # the running job can still read it

    file_backend.clock.advance(seconds=file_backend.settings.max_run_timeout + 180)
    assert await manager.cleanup_expired() == 0  # not counted twice
    assert blob_names(file_backend) == set()


# --- limits


async def test_file_quota_is_enforced_and_frees_up_after_delete(file_backend):
    manager = file_backend.manager(file_backend.with_settings(USER_MAX_FILES="2"))
    first = await upload_ok(manager)
    await upload_ok(manager)
    refused = await manager.upload(USER, SALES_CSV, "third.csv")
    assert refused == {"success": False, "error": "You already keep 2 files (the limit is 2). "
                                                  "Delete some or wait for them to expire."}
    assert (await upload_ok(manager, user_id=OTHER))["success"]  # quotas are per member

    await manager.delete(first["file_id"], USER)
    await upload_ok(manager, filename="third.csv")
    file_backend.clock.advance(hours=49)  # expired files stop counting at once
    await upload_ok(manager, filename="fourth.csv")


async def test_storage_quota_is_enforced(file_backend):
    manager = file_backend.manager(file_backend.with_settings(USER_MAX_STORAGE_MB="1"))
    chunk = b"x," * (300 * 1024)  # 600 KiB of CSV-ish text
    await upload_ok(manager, data=chunk, filename="a.csv")
    refused = await manager.upload(USER, chunk, "b.csv")
    assert not refused["success"]
    assert refused["error"].startswith("This file (0.6 MB) would bring your storage to 1.2 MB; the limit is 1 MB.")
    assert len(blob_names(file_backend)) == 1  # nothing written for the refused upload


async def test_concurrent_uploads_cannot_exceed_the_quota(file_backend):
    manager = file_backend.manager(file_backend.with_settings(USER_MAX_FILES="3"))
    results = await asyncio.gather(*(manager.upload(USER, SALES_CSV, f"f{i}.csv") for i in range(10)))

    assert sum(result["success"] for result in results) == 3
    assert len(await manager.list_files(USER)) == 3
    assert len(await file_backend.raw_records()) == 3
    assert len(blob_names(file_backend)) == 3


# --- crash consistency


async def test_crash_between_blob_and_record_leaves_only_an_orphan_the_sweep_removes(file_backend, monkeypatch):
    manager = file_backend.manager()

    async def crash(record):
        raise RuntimeError("simulated crash before the record is written")

    monkeypatch.setattr(manager.store, "insert", crash)
    with pytest.raises(RuntimeError):
        await manager.upload(USER, SALES_CSV, "sales.csv")
    monkeypatch.undo()
    [orphan] = blob_names(file_backend)
    assert await file_backend.raw_records() == []

    # a fresh orphan could be another process's upload in flight: the grace period protects it
    assert await manager.cleanup_expired() == 0
    assert blob_names(file_backend) == {orphan}
    swept = file_backend.manager(orphan_grace_seconds=0)
    assert await swept.cleanup_expired() == 1
    assert blob_names(file_backend) == set()


async def test_crash_inside_a_blob_write_leaves_a_temp_file_the_sweep_removes(file_backend):
    manager = file_backend.manager(orphan_grace_seconds=60)
    blob_dir = manager.blobs.root
    blob_dir.mkdir(parents=True)
    leftover = blob_dir / f".{secrets.token_hex(16)}.abcd1234.tmp"
    leftover.write_bytes(b"half a file")
    old = datetime.now().timestamp() - 3600
    os.utime(leftover, (old, old))

    assert await manager.cleanup_expired() == 0  # not a file anyone had: not counted
    assert not leftover.exists()


async def test_crash_between_record_and_blob_removal_on_delete(file_backend, monkeypatch):
    manager = file_backend.manager(orphan_grace_seconds=0)
    file_id = (await upload_ok(manager))["file_id"]

    def crash(file_id):
        raise RuntimeError("simulated crash after the record is gone")

    monkeypatch.setattr(manager.blobs, "remove", crash)
    with pytest.raises(RuntimeError):
        await manager.delete(file_id, USER)
    monkeypatch.undo()

    assert await manager.get_file(file_id, USER) is None  # never a record without a blob
    assert await file_backend.raw_records() == []
    assert await manager.cleanup_expired() == 1
    assert blob_names(file_backend) == set()


async def test_sweep_leaves_an_upload_in_flight_alone(file_backend, monkeypatch):
    manager = file_backend.manager(orphan_grace_seconds=0)
    real_insert = manager.store.insert
    blob_written, release = asyncio.Event(), asyncio.Event()

    async def slow_insert(record):
        blob_written.set()
        await release.wait()
        await real_insert(record)

    monkeypatch.setattr(manager.store, "insert", slow_insert)
    upload = asyncio.create_task(manager.upload(USER, SALES_CSV, "sales.csv"))
    await blob_written.wait()
    assert await manager.cleanup_expired() == 0
    release.set()
    result = await upload
    [item] = await manager.resolve_for_run(USER, [result["file_id"]])
    assert item.host_path.read_bytes() == SALES_CSV


async def test_record_whose_blob_vanished_is_treated_as_gone(file_backend):
    manager = file_backend.manager()
    file_id = (await upload_ok(manager))["file_id"]
    manager.blobs.path_for(file_id).unlink()
    if manager.store.holds_blobs:  # MongoDB keeps the bytes in GridFS: the local copy comes back
        [item] = await manager.resolve_for_run(USER, [file_id])
        assert item.host_path.read_bytes() == manager.blobs.path_for(file_id).read_bytes() != b""
        manager.blobs.path_for(file_id).unlink()
        assert await manager.store.delete_blob(file_id)
    with pytest.raises(InterpreterError, match=file_id):
        await manager.resolve_for_run(USER, [file_id])


# --- generated files and status


async def test_keep_generated_stores_run_outputs_with_fresh_expiry(file_backend):
    manager = file_backend.manager(file_backend.with_settings(USER_MAX_FILES="2"))
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    generated = [
        GeneratedFile("chart.png", "image", png, len(png)),
        GeneratedFile("summary.csv", "data", SALES_CSV, len(SALES_CSV)),
        GeneratedFile("over_quota.csv", "data", SALES_CSV, len(SALES_CSV)),
        GeneratedFile("empty.txt", "text", b"", 0),
    ]
    file_backend.clock.advance(hours=10)
    kept = await manager.keep_generated(USER, generated)

    assert [item.filename for item in kept] == [item.filename for item in generated]
    assert kept[0].file_id and kept[1].file_id
    assert kept[2].file_id is None and kept[3].file_id is None
    assert kept[0].data == png
    chart = await manager.get_file(kept[0].file_id, USER)
    assert chart["file_type"] == "image"
    assert datetime.fromisoformat(chart["expires_at"]) == ms(file_backend.clock.now) + timedelta(hours=48)


async def test_totals_count_unexpired_files_of_everyone(file_backend):
    manager = file_backend.manager()
    assert (await manager.totals())["total_user_files"] == 0
    await upload_ok(manager)
    await upload_ok(manager, user_id=OTHER, data=b"y" * (1024 * 1024), filename="big.txt")
    totals = await manager.totals()
    assert totals["total_user_files"] == 2
    assert totals["total_file_size_mb"] == round((len(SALES_CSV) + 1024 * 1024) / 2**20, 2)
    assert totals["file_expiration_hours"] == 48
    assert totals["max_file_size_mb"] == 50
    assert totals["last_cleanup"] is None
    file_backend.clock.advance(hours=49)
    assert (await manager.totals())["total_user_files"] == 0


# --- the acceptance scenario (the run itself is tested end to end by the engine's suite)


async def test_acceptance_sales_csv_lives_48_hours_then_is_gone_everywhere(file_backend):
    manager = file_backend.manager()
    file_id = (await upload_ok(manager))["file_id"]
    [item] = await manager.resolve_for_run(USER, [file_id])
    assert item.host_path.read_bytes() == SALES_CSV

    file_backend.clock.advance(hours=48)
    assert await manager.list_files(USER) == []
    with pytest.raises(InterpreterError):
        await manager.resolve_for_run(USER, [file_id])
    file_backend.clock.advance(minutes=5)  # a sweep an hour later; any lease has ended
    assert await manager.cleanup_expired() == 1
    assert blob_names(file_backend) == set()
    assert await file_backend.raw_records() == []
