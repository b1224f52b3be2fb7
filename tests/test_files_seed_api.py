"""The seed's public file API (`interpreter.upload_file` & co.), with and without db_handler."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

import interpreter
from tests.fixtures_mongo import TestClock, file_settings

USER = 123456789
CSV = b"product,units\nA,3\nB,5\n"


@pytest.fixture
def configured(tmp_path):
    engine = interpreter.configure(file_settings(tmp_path / "data"))
    yield engine
    interpreter.configure(file_settings(tmp_path / "unused"))  # leave no engine pointing at this test's dir


@pytest.mark.parametrize("db_handle", [None, "pymongo", "motor"], indirect=True)
async def test_seed_file_api_round_trip(configured, db_handle):
    db = db_handle
    clock = TestClock()
    manager = interpreter.get_file_manager(db_handler=db)
    manager.clock = clock

    result = await interpreter.upload_file(user_id=USER, file_data=CSV, filename="sales.csv", file_type="csv", db_handler=db)
    assert result["success"] and result["file_type"] == "csv"
    file_id = result["file_id"]

    files = await interpreter.list_user_files(user_id=USER, db_handler=db)
    assert [item["file_id"] for item in files] == [file_id]
    meta = await interpreter.get_file_manager(db_handler=db).get_file(file_id, USER)
    assert datetime.fromisoformat(meta["expires_at"]) > clock.now + timedelta(hours=47)
    assert await interpreter.get_file_manager(db_handler=db).get_file(file_id, USER + 1) is None

    totals = await (await interpreter.get_engine(db)).files.totals()
    assert totals["total_user_files"] == 1 and totals["file_expiration_hours"] == 48

    clock.advance(hours=48, seconds=1)
    assert await interpreter.list_user_files(user_id=USER, db_handler=db) == []
    assert await interpreter.cleanup_expired_files(db_handler=db) == 1

    second = await interpreter.upload_file(user_id=USER, file_data=CSV, filename="again.csv", db_handler=db)
    assert await interpreter.delete_user_file(file_id=second["file_id"], user_id=USER, db_handler=db) is True
    assert await interpreter.delete_user_file(file_id=second["file_id"], user_id=USER, db_handler=db) is False


async def test_upload_file_reports_the_configured_size_limit(tmp_path):
    interpreter.configure(file_settings(tmp_path / "data", MAX_FILE_SIZE_MB="2"))
    try:
        result = await interpreter.upload_file(user_id=USER, file_data=b"x" * (2 * 1024 * 1024 + 1), filename="big.csv")
        assert result == {"success": False, "error": "File too large. Maximum size is 2MB"}
    finally:
        interpreter.configure(file_settings(tmp_path / "unused"))
