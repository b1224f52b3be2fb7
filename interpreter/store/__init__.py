"""Metadata stores for user files and the run audit: one interface, two backends,
chosen by configuration.

- A `db_handler` (PyMongo async or motor database) given by the caller: MongoDB, in it.
- Else `MONGODB_URI` set: MongoDB via PyMongo's async client.
- Else: SQLite at `settings.sqlite_path` (the embedded default; no server).

`open_store` never does I/O: stores connect on first use, so it is safe to call
outside an event loop and a database that is down does not stop the bot from starting.
"""

from __future__ import annotations

from typing import Any

from interpreter.store.base import (
    RUN_INTERRUPTED,
    RUN_REFUSED,
    RUN_RUNNING,
    UNAVAILABLE_MESSAGE,
    FileRecord,
    FileStore,
    Lease,
    RunRecord,
    StorageFull,
    StoreUnavailable,
    Usage,
)
from interpreter.store.blobs import BlobDir, is_file_id, new_file_id

__all__ = [
    "RUN_INTERRUPTED",
    "RUN_REFUSED",
    "RUN_RUNNING",
    "UNAVAILABLE_MESSAGE",
    "BlobDir",
    "FileRecord",
    "FileStore",
    "Lease",
    "RunRecord",
    "StorageFull",
    "StoreUnavailable",
    "Usage",
    "is_file_id",
    "new_file_id",
    "open_store",
]


def open_store(settings: Any, db_handler: Any = None) -> FileStore:
    if db_handler is not None:
        from interpreter.store.mongo import MongoStore

        return MongoStore(database=db_handler)
    uri = settings.mongodb_uri.reveal() if hasattr(settings.mongodb_uri, "reveal") else str(settings.mongodb_uri or "")
    if uri:
        from interpreter.store.mongo import MongoStore

        return MongoStore(uri=uri, database_name=settings.mongodb_database)
    from interpreter.store.sqlite import SQLiteStore

    return SQLiteStore(settings.sqlite_path)
