"""A full disk under DATA_DIR: the truth ("disk full", not "database unavailable"), no
blob left without a record, deletes that still work, a free-space floor for uploads,
free space in status, and a generated file that could not be kept named in the result.

DATA_DIR lives on a small tmpfs mounted for the test (the tests run as root); the disk
is filled the way something else on the host would fill it: a file written until ENOSPC.
Real SQLite, real FileManager, real sandbox for the run.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import interpreter
from interpreter.files import FileManager
from interpreter.store import open_store
from interpreter.store.base import DISK_FULL_MESSAGE
from tests.fixtures_mongo import TestClock, file_settings
from tests.fixtures_sandbox import make_settings

USER = 777
CSV = b"a,b\n" + b"1,2\n" * 100


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 6 MB tmpfs; unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m,mode=0755", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"could not mount a tmpfs (the disk-full tests need root): {done.stderr.strip()}", pytrace=False)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk: Path, leave: int = 0) -> Path:
    """Write a filler file until the disk is full, then give back `leave` bytes."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError:
        pass
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError:
        pass
    if leave:
        os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    os.close(fd)
    return filler


def blob_dir_entries(manager: FileManager) -> list[str]:
    return sorted(os.listdir(manager.blobs.root)) if manager.blobs.root.exists() else []


async def new_manager(disk: Path, **environ: str) -> FileManager:
    settings = file_settings(disk / "data", **environ)
    return FileManager(settings, open_store(settings), clock=TestClock())


async def test_a_full_disk_says_so_leaves_no_blob_and_deletes_still_work(small_disk):
    manager = await new_manager(small_disk, DISK_FREE_FLOOR_MB="0", DISK_RESERVE_MB="1")
    kept = await manager.upload(USER, CSV, "kept.csv")
    assert kept["success"], kept
    assert manager.disk.reserve_path.exists()  # set aside while there was room
    before = blob_dir_entries(manager)
    await manager.store.close()  # as after a restart: SQLite's write-ahead log needs new space

    # Something else fills the disk, but for room enough for the new file's bytes alone.
    fill(small_disk, leave=8192)
    refused = await manager.upload(USER, b"a,b\n" + b"3,4\n" * 1000, "new.csv")
    assert refused == {"success": False, "error": DISK_FULL_MESSAGE}
    assert blob_dir_entries(manager) == before  # no blob without a record, no temp file
    assert [f["filename"] for f in await manager.list_files(USER)] == ["kept.csv"]

    assert await manager.delete(kept["file_id"], USER) is True  # the reserve made room for the delete
    assert await manager.list_files(USER) == []
    assert blob_dir_entries(manager) == []
    status = await manager.totals()
    assert status["disk_free_mb"] >= 0 and status["disk_total_mb"] > 0
    assert "file_store_error" not in status
    await manager.store.close()


async def test_uploads_stop_at_the_free_space_floor(small_disk):
    manager = await new_manager(small_disk, DISK_FREE_FLOOR_MB="4", DISK_RESERVE_MB="0")
    big = b"a,b\n" + b"1,2\n" * (700 * 1024)  # ~2.8 MB: would leave less than 4 MB of 6
    refused = await manager.upload(USER, big, "big.csv")
    assert refused["success"] is False
    assert refused["error"].startswith("The server is low on disk space, so the file was not saved")
    assert "4 MB" in refused["error"]
    assert blob_dir_entries(manager) == []
    assert (await manager.upload(USER, CSV, "small.csv"))["success"]
    status = await manager.totals()
    assert status["disk_free_floor_mb"] == 4
    await manager.store.close()


async def test_status_reports_free_space(small_disk):
    settings = make_settings(small_disk / "data", DISK_FREE_FLOOR_MB="1", DISK_RESERVE_MB="1")
    engine = interpreter.configure(settings)
    try:
        status = await interpreter.get_interpreter_status()
        assert 0 < status["disk_free_mb"] <= 6 and status["disk_total_mb"] == 6.0
        assert status["disk_free_floor_mb"] == 1
    finally:
        await engine.close()


async def test_a_generated_file_not_kept_for_space_is_named_in_the_result(small_disk):
    settings = make_settings(small_disk / "data", DISK_FREE_FLOOR_MB="5", DISK_RESERVE_MB="0")
    engine = interpreter.configure(settings)
    try:
        code = "open('report.csv', 'w').write('x,y\\n' + '1,2\\n' * 300000)\nprint('written')"
        result = await interpreter.execute_code(code, user_id=USER, keep_generated_files=True)
        assert result["success"] and result["output"] == "written\n"
        [report] = result["generated_files"]
        assert "file_id" not in report and report["not_kept"].startswith("The server is low on disk space")
        assert any(w.startswith("report.csv was not kept as a file: The server is low on disk space")
                   for w in result["warnings"])
    finally:
        await engine.close()
