"""The embedded default store: one SQLite file in the data dir, no server.

sqlite3 is blocking, so every query runs in a worker thread. One connection is shared
under a threading lock (check_same_thread=False): queries are tiny, and a single
connection works from whichever event loop or thread calls. WAL mode lets another
process (a CLI, a second bot) read while this one writes.

Datetimes are stored as UTC epoch seconds (REAL, millisecond precision, like BSON);
NULL `expires_at` means "never expires". The run audit's lists (packages, files) are
JSON arrays in TEXT columns; SQLite has no TTL, so the hourly sweep deletes expired runs.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from interpreter.store.base import (RUN_INTERRUPTED, RUN_REFUSED, RUN_RUNNING, FileRecord, FileStore, Lease, RunRecord,
                                   Usage)

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
CREATE TABLE IF NOT EXISTS run_audit (
    id               INTEGER PRIMARY KEY,  -- insertion order: breaks ties between equal start times
    user_id          INTEGER NOT NULL,
    guild_id         INTEGER,
    channel_id       INTEGER,
    started_at       REAL NOT NULL,
    duration_seconds REAL NOT NULL,
    success          INTEGER NOT NULL,
    status           TEXT NOT NULL,
    exit_cause       TEXT NOT NULL,
    packages         TEXT NOT NULL,        -- JSON array of names
    files_used       TEXT NOT NULL,        -- JSON array of file ids
    files_produced   TEXT NOT NULL,        -- JSON array of file names
    code_sha256      TEXT NOT NULL,
    expires_at       REAL,                 -- NULL: never expires
    run_id           TEXT                  -- NULL: written before run ids (see _migrate)
);
CREATE INDEX IF NOT EXISTS run_audit_user_started ON run_audit (user_id, started_at DESC);
CREATE INDEX IF NOT EXISTS run_audit_started ON run_audit (started_at DESC);
CREATE INDEX IF NOT EXISTS run_audit_expiry ON run_audit (expires_at);
CREATE TABLE IF NOT EXISTS counters (
    key        TEXT PRIMARY KEY,
    value      INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS counters_expiry ON counters (expires_at);
CREATE TABLE IF NOT EXISTS leases (
    key        TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at REAL NOT NULL,
    data       TEXT NOT NULL           -- JSON object
);
CREATE INDEX IF NOT EXISTS leases_expiry ON leases (expires_at);
"""
# After _migrate: the key a run's admission and its end are upserted on (NULLs never collide).
_RUN_ID_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS run_audit_run_id ON run_audit (run_id)"

_COLUMNS = "file_id, user_id, filename, file_path, file_size, file_type, uploaded_at, expires_at"
_LIVE = "(expires_at IS NULL OR expires_at > ?)"


def _to_epoch(value: datetime | None) -> float | None:
    return None if value is None else round(value.timestamp(), 3)


def _from_epoch(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc)


_RUN_COLUMN_NAMES = ("user_id", "guild_id", "channel_id", "started_at", "duration_seconds", "success", "status",
                     "exit_cause", "packages", "files_used", "files_produced", "code_sha256", "expires_at", "run_id")
_RUN_COLUMNS = ", ".join(_RUN_COLUMN_NAMES)
_RUN_INSERT = f"INSERT INTO run_audit ({_RUN_COLUMNS}) VALUES ({', '.join('?' * len(_RUN_COLUMN_NAMES))})"
# The end of a run replaces whatever its run id has (the admission, or an earlier copy of the end).
_RUN_END_UPSERT = (_RUN_INSERT + " ON CONFLICT(run_id) DO UPDATE SET "
                   + ", ".join(f"{name} = excluded.{name}" for name in _RUN_COLUMN_NAMES if name != "run_id"))
# An admission never overwrites: arriving after the end (a late spool replay), it changes nothing.
_RUN_ADMISSION_INSERT = _RUN_INSERT + " ON CONFLICT(run_id) DO NOTHING"


def _run_params(record: RunRecord) -> tuple[Any, ...]:
    return (record.user_id, record.guild_id, record.channel_id, _to_epoch(record.started_at),
            record.duration_seconds, int(record.success), record.status, record.exit_cause,
            json.dumps(list(record.packages)), json.dumps(list(record.files_used)),
            json.dumps(list(record.files_produced)), record.code_sha256, _to_epoch(record.expires_at), record.run_id)


def _run_statement(record: RunRecord) -> str:
    if record.run_id is None:
        return _RUN_INSERT
    return _RUN_ADMISSION_INSERT if record.running else _RUN_END_UPSERT


def _run_record(row: tuple[Any, ...]) -> RunRecord:
    (user_id, guild_id, channel_id, started_at, duration, success, status, exit_cause,
     packages, files_used, files_produced, code_sha256, expires_at, run_id) = row
    return RunRecord(
        user_id=int(user_id), guild_id=guild_id, channel_id=channel_id, started_at=_from_epoch(started_at),
        duration_seconds=float(duration), success=bool(success), status=status, exit_cause=exit_cause,
        packages=tuple(json.loads(packages)), files_used=tuple(json.loads(files_used)),
        files_produced=tuple(json.loads(files_produced)), code_sha256=code_sha256, expires_at=_from_epoch(expires_at),
        run_id=run_id)


def _migrate(connection: sqlite3.Connection) -> None:
    """Bring a database made before run ids up to date: add the column (old rows keep NULL
    and keep working) and its unique index. Safe when several processes open it at once."""
    columns = {row[1] for row in connection.execute("PRAGMA table_info(run_audit)")}
    if "run_id" not in columns:
        try:
            connection.execute("ALTER TABLE run_audit ADD COLUMN run_id TEXT")
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):  # another process added it just now
                raise
    connection.execute(_RUN_ID_INDEX)


def _record(row: tuple[Any, ...]) -> FileRecord:
    file_id, user_id, filename, file_path, file_size, file_type, uploaded_at, expires_at = row
    return FileRecord(file_id, int(user_id), filename, file_path, int(file_size), file_type,
                      _from_epoch(uploaded_at), _from_epoch(expires_at))


BUSY_TIMEOUT_MS = 10_000  # how long a statement waits for another connection's write lock


def _use_write_ahead_log(connection: sqlite3.Connection) -> None:
    """Switch the database to WAL (it stays so, in the file). Several processes opening a new
    database at once race for the switch, and SQLite answers the loser "database is locked"
    at once instead of waiting (the busy handler is not used for it): retry until the
    busy timeout, as any other statement would wait."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)  # in the store's worker thread, never on the event loop
        delay = min(delay * 2, 0.2)


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
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False, isolation_level=None)
            try:
                connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                _use_write_ahead_log(connection)
                connection.executescript(_SCHEMA)
                _migrate(connection)
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
            except sqlite3.Error as exc:
                # Drop the connection so the next call reopens it: the file may have been
                # moved, the disk remounted, or the directory fixed meanwhile. Not when the
                # disk is full: the open connection still reads, and reopening would need
                # space for the write-ahead log's files.
                if not self._disk_full(exc):
                    self._close_sync()
                raise

    def _transaction_sync(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
        """Run statements in one write transaction (BEGIN IMMEDIATE: other processes wait
        for it); returns the last statement's rows."""
        with self._lock:
            connection = self._connect()
            try:
                connection.execute("BEGIN IMMEDIATE")
                rows: list[tuple[Any, ...]] = []
                for sql, params in statements:
                    rows = connection.execute(sql, params).fetchall()
                connection.execute("COMMIT")
                return rows
            except sqlite3.Error:
                self._close_sync()  # rolls the transaction back
                raise

    async def _transaction(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
        return await self._guarded(asyncio.to_thread(self._transaction_sync, statements), (sqlite3.Error, OSError))

    async def _run(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[list[tuple[Any, ...]], int]:
        # sqlite3.Error covers "unable to open database file", "disk I/O error",
        # "database is locked" (after busy_timeout): all mean the store is unusable now.
        return await self._guarded(asyncio.to_thread(self._run_sync, sql, params), (sqlite3.Error, OSError))

    def _disk_full(self, exc: BaseException) -> bool:
        # On a full disk SQLite does not always say "full": opening the write-ahead log's
        # shared-memory file fails as "disk I/O error". With (almost) no space left, that is the cause.
        from interpreter.store.diskspace import is_disk_full, nearly_full

        return is_disk_full(exc) or (isinstance(exc, sqlite3.OperationalError) and nearly_full(self.path.parent))

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

    # --- the run audit

    async def save_runs(self, records: Sequence[RunRecord]) -> None:
        # One transaction for the batch: one commit (one sync of the write-ahead log) for
        # every record the audit's writer had waiting, rather than one per record.
        if records:
            await self._transaction([(_run_statement(record), _run_params(record)) for record in records])

    async def recent_runs(self, now: datetime, limit: int, user_id: int | None = None,
                          guild_id: int | None = None) -> list[RunRecord]:
        filters = [(column, value) for column, value in (("user_id", user_id), ("guild_id", guild_id)) if value is not None]
        where = "".join(f"{column} = ? AND " for column, _ in filters)
        params = tuple(value for _, value in filters) + (_to_epoch(now), limit)
        rows, _ = await self._run(
            f"SELECT {_RUN_COLUMNS} FROM run_audit WHERE {where}{_LIVE} ORDER BY started_at DESC, id DESC LIMIT ?",
            params)
        return [_run_record(row) for row in rows]

    async def run_start_times(self, user_id: int, since: datetime, now: datetime) -> list[datetime]:
        rows, _ = await self._run(
            f"SELECT started_at FROM run_audit WHERE user_id = ? AND started_at >= ? AND status != ? AND {_LIVE} "
            "ORDER BY started_at",
            (user_id, _to_epoch(since), RUN_REFUSED, _to_epoch(now)))
        return [_from_epoch(row[0]) for row in rows]

    async def run_cause_counts(self, since: datetime, now: datetime, interrupted_before: datetime) -> dict[str, int]:
        rows, _ = await self._run(
            "SELECT CASE WHEN status = ? AND started_at < ? THEN ? ELSE exit_cause END AS cause, COUNT(*) "
            f"FROM run_audit WHERE started_at >= ? AND {_LIVE} GROUP BY cause",
            (RUN_RUNNING, _to_epoch(interrupted_before), RUN_INTERRUPTED, _to_epoch(since), _to_epoch(now)))
        return {cause: int(count) for cause, count in rows}

    async def delete_expired_runs(self, now: datetime) -> int:
        _, count = await self._run("DELETE FROM run_audit WHERE expires_at <= ?", (_to_epoch(now),))
        return max(count, 0)

    # --- counters

    async def count_up_to(self, key: str, limit: int, now: datetime, expires_at: datetime) -> int | None:
        if limit < 1:
            return None
        # One statement, so concurrent processes cannot both take the last unit: the
        # upsert's WHERE decides under SQLite's write lock. An expired row restarts at 1.
        rows, _ = await self._run(
            "INSERT INTO counters (key, value, expires_at) VALUES (?, 1, ?) "
            "ON CONFLICT(key) DO UPDATE SET "
            "value = CASE WHEN counters.expires_at <= ? THEN 1 ELSE counters.value + 1 END, "
            "expires_at = CASE WHEN counters.expires_at <= ? THEN excluded.expires_at ELSE counters.expires_at END "
            "WHERE counters.expires_at <= ? OR counters.value < ? "
            "RETURNING value",
            (key, _to_epoch(expires_at), *([_to_epoch(now)] * 3), limit))
        return int(rows[0][0]) if rows else None

    async def count_down(self, key: str, now: datetime) -> None:
        await self._run("UPDATE counters SET value = value - 1 WHERE key = ? AND value > 0 AND expires_at > ?",
                        (key, _to_epoch(now)))

    async def delete_expired_counters(self, now: datetime) -> int:
        _, count = await self._run("DELETE FROM counters WHERE expires_at <= ?", (_to_epoch(now),))
        return max(count, 0)
    # --- leases

    async def acquire_lease(self, key: str, holder: str, expires_at: datetime, now: datetime,
                            data: dict | None = None) -> Lease:
        rows = await self._transaction([
            ("INSERT INTO leases (key, holder, expires_at, data) VALUES (?, ?, ?, ?) "
             "ON CONFLICT(key) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at, "
             "data = excluded.data WHERE leases.expires_at <= ? OR leases.holder = excluded.holder",
             (key, holder, _to_epoch(expires_at), json.dumps(data or {}), _to_epoch(now))),
            ("SELECT key, holder, expires_at, data FROM leases WHERE key = ?", (key,)),
        ])
        return _lease(rows[0])

    async def read_lease(self, key: str, now: datetime) -> Lease | None:
        rows, _ = await self._run("SELECT key, holder, expires_at, data FROM leases WHERE key = ? AND expires_at > ?",
                                  (key, _to_epoch(now)))
        return _lease(rows[0]) if rows else None

    async def leases_with_prefix(self, prefix: str, now: datetime) -> list[Lease]:
        rows, _ = await self._run(
            "SELECT key, holder, expires_at, data FROM leases WHERE key >= ? AND key < ? AND expires_at > ? "
            "ORDER BY expires_at, key", (prefix, prefix + "\uffff", _to_epoch(now)))
        return [_lease(row) for row in rows]

    async def release_lease(self, key: str, holder: str) -> bool:
        _, count = await self._run("DELETE FROM leases WHERE key = ? AND holder = ?", (key, holder))
        return count > 0

    async def delete_expired_leases(self, now: datetime) -> int:
        _, count = await self._run("DELETE FROM leases WHERE expires_at <= ?", (_to_epoch(now),))
        return max(count, 0)


def _lease(row: tuple[Any, ...]) -> Lease:
    key, holder, expires_at, data = row
    return Lease(key=key, holder=holder, expires_at=_from_epoch(expires_at), data=json.loads(data))
