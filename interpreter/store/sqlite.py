"""The embedded default store: one SQLite file in the data dir, no server.

sqlite3 is blocking, so every query runs in a worker thread. One connection is shared
under a threading lock (check_same_thread=False): queries are tiny, and a single
connection works from whichever event loop or thread calls. WAL mode lets another
process (a CLI, a second bot) read while this one writes.

Datetimes are stored as UTC epoch seconds (REAL, millisecond precision, like BSON);
NULL `expires_at` means "never expires".
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from interpreter.store.base import FileRecord, FileStore, Usage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS user_files (
    file_id     TEXT PRIMARY KEY,
    user_id     INTEGER NOT NULL,
    filename    TEXT NOT NULL,
    file_path   TEXT NOT NULL,
    file_size   INTEGER NOT NULL,
    file_type   TEXT NOT NULL,
    uploaded_at REAL NOT NULL,
    expires_at  REAL            -- NULL: never expires
);
CREATE INDEX IF NOT EXISTS user_files_user_expiry ON user_files (user_id, expires_at DESC);
CREATE INDEX IF NOT EXISTS user_files_expiry ON user_files (expires_at);
"""

_COLUMNS = "file_id, user_id, filename, file_path, file_size, file_type, uploaded_at, expires_at"
_LIVE = "(expires_at IS NULL OR expires_at > ?)"


def _to_epoch(value: datetime | None) -> float | None:
    return None if value is None else round(value.timestamp(), 3)


def _from_epoch(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc)


def _record(row: tuple[Any, ...]) -> FileRecord:
    file_id, user_id, filename, file_path, file_size, file_type, uploaded_at, expires_at = row
    return FileRecord(file_id, int(user_id), filename, file_path, int(file_size), file_type,
                      _from_epoch(uploaded_at), _from_epoch(expires_at))


class SQLiteStore(FileStore):
    backend = "sqlite"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @property
    def namespace(self) -> str:
        return "sqlite"

    # --- plumbing

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            connection = sqlite3.connect(self.path, timeout=10, check_same_thread=False, isolation_level=None)
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA busy_timeout=10000")
                connection.executescript(_SCHEMA)
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def _run_sync(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[list[tuple[Any, ...]], int]:
        with self._lock:
            try:
                cursor = self._connect().execute(sql, params)
                return cursor.fetchall(), cursor.rowcount
            except sqlite3.Error:
                # Drop the connection so the next call reopens it: the file may have been
                # moved, the disk remounted, or the directory fixed meanwhile.
                self._close_sync()
                raise

    async def _run(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[list[tuple[Any, ...]], int]:
        # sqlite3.Error covers "unable to open database file", "disk I/O error",
        # "database is locked" (after busy_timeout): all mean the store is unusable now.
        return await self._guarded(asyncio.to_thread(self._run_sync, sql, params), (sqlite3.Error, OSError))

    def _close_sync(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except sqlite3.Error:
                pass

    async def close(self) -> None:
        with self._lock:
            self._close_sync()

    # --- the interface

    async def insert(self, record: FileRecord) -> None:
        await self._run(
            f"INSERT INTO user_files ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (record.file_id, record.user_id, record.filename, record.file_path, record.file_size,
             record.file_type, _to_epoch(record.uploaded_at), _to_epoch(record.expires_at)),
        )

    async def delete_live(self, file_id: str, user_id: int, now: datetime) -> bool:
        _, count = await self._run(f"DELETE FROM user_files WHERE file_id = ? AND user_id = ? AND {_LIVE}",
                                   (file_id, user_id, _to_epoch(now)))
        return count > 0

    async def delete_expired(self, file_id: str, now: datetime) -> bool:
        _, count = await self._run("DELETE FROM user_files WHERE file_id = ? AND expires_at <= ?",
                                   (file_id, _to_epoch(now)))
        return count > 0

    async def get_live(self, file_id: str, user_id: int, now: datetime) -> FileRecord | None:
        rows, _ = await self._run(f"SELECT {_COLUMNS} FROM user_files WHERE file_id = ? AND user_id = ? AND {_LIVE}",
                                  (file_id, user_id, _to_epoch(now)))
        return _record(rows[0]) if rows else None

    async def list_live(self, user_id: int, now: datetime) -> list[FileRecord]:
        rows, _ = await self._run(
            f"SELECT {_COLUMNS} FROM user_files WHERE user_id = ? AND {_LIVE} ORDER BY uploaded_at DESC, file_id",
            (user_id, _to_epoch(now)))
        return [_record(row) for row in rows]

    async def usage(self, user_id: int, now: datetime) -> Usage:
        rows, _ = await self._run(f"SELECT COUNT(*), COALESCE(SUM(file_size), 0) FROM user_files WHERE user_id = ? AND {_LIVE}",
                                  (user_id, _to_epoch(now)))
        return Usage(int(rows[0][0]), int(rows[0][1]))

    async def totals(self, now: datetime) -> Usage:
        rows, _ = await self._run(f"SELECT COUNT(*), COALESCE(SUM(file_size), 0) FROM user_files WHERE {_LIVE}",
                                  (_to_epoch(now),))
        return Usage(int(rows[0][0]), int(rows[0][1]))

    async def list_expired(self, now: datetime, limit: int) -> list[FileRecord]:
        rows, _ = await self._run(f"SELECT {_COLUMNS} FROM user_files WHERE expires_at <= ? ORDER BY expires_at LIMIT ?",
                                  (_to_epoch(now), limit))
        return [_record(row) for row in rows]

    async def existing_ids(self, file_ids: Iterable[str]) -> set[str]:
        ids = list(file_ids)
        found: set[str] = set()
        for start in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
            batch = ids[start:start + 500]
            rows, _ = await self._run(f"SELECT file_id FROM user_files WHERE file_id IN ({','.join('?' * len(batch))})",
                                      tuple(batch))
            found.update(row[0] for row in rows)
        return found
