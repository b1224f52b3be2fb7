"""MongoDB specifics: the seed's indexes, an existing seed deployment, store selection,
and stores that share a data dir without touching each other's blobs."""

from __future__ import annotations

import logging

import pytest

from interpreter.files import FileManager
from interpreter.store import open_store
from interpreter.store.mongo import MongoStore
from interpreter.store.sqlite import SQLiteStore
from tests.fixtures_mongo import TestClock, file_settings

USER = 77
CSV = b"a,b\n1,2\n"


@pytest.mark.parametrize("db_handle", ["pymongo", "motor"], indirect=True)
async def test_indexes_are_the_seeds_with_ttl(tmp_path, db_handle):
    database = db_handle
    manager = FileManager(file_settings(tmp_path), open_store(file_settings(tmp_path), db_handler=database),
                          clock=TestClock())
    assert (await manager.upload(USER, CSV, "x.csv"))["success"]

    indexes = {tuple(spec["key"]): spec for spec in (await database.user_files.index_information()).values()}
    assert indexes[(("file_id", 1),)]["unique"] is True
    assert (("user_id", 1), ("expires_at", -1)) in indexes
    assert indexes[(("expires_at", 1),)]["expireAfterSeconds"] == 0


async def test_a_seed_deployment_with_a_plain_expiry_index_keeps_working(pymongo_db, tmp_path, caplog):
    await pymongo_db.user_files.create_index("expires_at")  # what the seed created
    settings = file_settings(tmp_path)
    clock = TestClock()
    manager = FileManager(settings, open_store(settings, db_handler=pymongo_db), clock=clock)
    with caplog.at_level(logging.WARNING, logger="interpreter.store"):
        file_id = (await manager.upload(USER, CSV, "x.csv"))["file_id"]
    assert "non-TTL index on expires_at" in caplog.text
    clock.advance(hours=49)
    assert await manager.list_files(USER) == []
    assert await manager.cleanup_expired() == 1  # the sweep does the TTL's work
    assert await pymongo_db.user_files.count_documents({"file_id": file_id}) == 0


def test_open_store_picks_the_backend_from_configuration(tmp_path):
    assert isinstance(open_store(file_settings(tmp_path)), SQLiteStore)
    store = open_store(file_settings(tmp_path, MONGODB_URI="mongodb://127.0.0.1:1", MONGODB_DATABASE="prod"))
    assert isinstance(store, MongoStore) and store.namespace == "mongo-prod"  # constructed without any I/O


async def test_stores_sharing_a_data_dir_never_sweep_each_others_blobs(mongo_server, motor_db, tmp_path):
    settings = file_settings(tmp_path)
    local = FileManager(settings, open_store(settings), clock=TestClock())
    remote = FileManager(settings, open_store(settings, db_handler=motor_db), clock=TestClock(), orphan_grace_seconds=0)
    local_id = (await local.upload(USER, CSV, "local.csv"))["file_id"]
    remote_id = (await remote.upload(USER, CSV, "remote.csv"))["file_id"]

    assert await remote.cleanup_expired() == 0
    assert local.blobs.path_for(local_id).exists() and remote.blobs.path_for(remote_id).exists()
    assert local.blobs.root != remote.blobs.root
    assert await remote.get_file(local_id, USER) is None  # one store's ids mean nothing in the other
