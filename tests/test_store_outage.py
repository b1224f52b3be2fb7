"""A database that goes away: a clear error for the caller, one clear log line, and
recovery without a restart once it is back.

MongoDB: a file-backed wire server is stopped and restarted on the same port.
SQLite: the database path becomes unusable, then usable again.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from interpreter.files import FileManager
from interpreter.store import UNAVAILABLE_MESSAGE, StoreUnavailable, open_store
from interpreter.types import InterpreterError
from tests.fixtures_mongo import MongoTestServer, TestClock, file_settings
from tests.fixtures_sandbox import FAKE_MONGODB_URI

USER = 5150
CSV = b"a,b\n1,2\n"


async def assert_down(manager: FileManager, file_id: str) -> None:
    assert await manager.upload(USER, CSV, "x.csv") == {"success": False, "error": UNAVAILABLE_MESSAGE}
    for call in (manager.list_files(USER), manager.get_file(file_id, USER), manager.delete(file_id, USER),
                 manager.cleanup_expired()):
        with pytest.raises(StoreUnavailable, match="unavailable right now; try again in a minute"):
            await call
    with pytest.raises(InterpreterError, match=UNAVAILABLE_MESSAGE):
        await manager.resolve_for_run(USER, [file_id])
    totals = await manager.totals()
    assert totals["file_store_error"] == UNAVAILABLE_MESSAGE and totals["total_user_files"] is None


@pytest.fixture
def restartable_server(tmp_path: Path):
    server = MongoTestServer(sqlite_path=tmp_path / "mongo.sqlite3").start()
    yield server
    server.stop()


@pytest.mark.parametrize("driver", ["pymongo", "motor"])
async def test_mongo_down_then_back(restartable_server, tmp_path, caplog, driver):
    uri = restartable_server.uri + "&serverSelectionTimeoutMS=700"
    settings = file_settings(tmp_path / "data", MONGODB_URI=uri, MONGODB_DATABASE="outage")
    motor_client = None
    if driver == "motor":
        from motor.motor_asyncio import AsyncIOMotorClient

        motor_client = AsyncIOMotorClient(uri)
        store = open_store(settings, db_handler=motor_client["outage"])
    else:
        store = open_store(settings)
    manager = FileManager(settings, store, clock=TestClock())
    try:
        file_id = (await manager.upload(USER, CSV, "kept.csv"))["file_id"]

        restartable_server.stop()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="interpreter.store"):
            await assert_down(manager, file_id)
        down_lines = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(down_lines) == 1  # one line per outage, not one per call
        assert down_lines[0].startswith("file store (mongodb) is unavailable: ")
        assert "mongodb://" not in caplog.text

        restartable_server.start()  # same port, same data
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="interpreter.store"):
            assert [item["file_id"] for item in await manager.list_files(USER)] == [file_id]
        assert "reachable again" in caplog.text
        assert (await manager.upload(USER, CSV, "after.csv"))["success"]
        assert len(await manager.resolve_for_run(USER, [file_id])) == 1
    finally:
        await store.close()
        if motor_client is not None:
            motor_client.close()


async def test_sqlite_unusable_then_fixed(tmp_path, caplog):
    settings = file_settings(tmp_path / "data")
    manager = FileManager(settings, open_store(settings), clock=TestClock())
    file_id = (await manager.upload(USER, CSV, "kept.csv"))["file_id"]

    moved = tmp_path / "moved.sqlite3"
    shutil.move(settings.sqlite_path, moved)
    settings.sqlite_path.mkdir()  # a directory where the database file should be: cannot be opened
    await manager.store.close()
    with caplog.at_level(logging.INFO, logger="interpreter.store"):
        await assert_down(manager, file_id)
    assert "file store (sqlite) is unavailable" in caplog.text

    settings.sqlite_path.rmdir()
    shutil.move(moved, settings.sqlite_path)
    assert [item["file_id"] for item in await manager.list_files(USER)] == [file_id]


async def test_unreachable_uri_with_credentials_never_reaches_logs_or_messages(tmp_path, caplog):
    # The session's canary URI (user:password@db.invalid): DNS fails, nothing may leak.
    settings = file_settings(tmp_path / "data", MONGODB_URI=FAKE_MONGODB_URI + "?serverSelectionTimeoutMS=300")
    manager = FileManager(settings, open_store(settings), clock=TestClock())
    with caplog.at_level(logging.DEBUG):
        result = await manager.upload(USER, CSV, "x.csv")
        with pytest.raises(StoreUnavailable) as caught:
            await manager.list_files(USER)
    assert result == {"success": False, "error": UNAVAILABLE_MESSAGE}
    for text in (caplog.text, str(caught.value), repr(caught.value)):
        assert "canary-password" not in text and "canary-user" not in text
    assert "file store (mongodb) is unavailable" in caplog.text
