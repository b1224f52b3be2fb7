"""What every metadata store offers, and how a store reports that its database is down.

The FileManager (interpreter/files.py) owns the rules (ownership, expiry, quotas);
a store only keeps `FileRecord`s and answers queries. Every query that reads files on
behalf of a member takes `now` and filters on `expires_at` itself: MongoDB's TTL
monitor is lazy (up to a minute on mongod), and the SQLite store has no TTL at all.

The same store keeps the run audit (`RunRecord`s, written by interpreter/audit.py):
one record per run, expiring like files, with a hash of the code and never the code.
A run's record is written when the run is admitted (status RUN_RUNNING) and completed
when it ends, both keyed on its `run_id`: `save_runs` is an idempotent upsert, so a
record written twice (a spool replay, a retry after a broken connection) is still one.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import re
from collections.abc import Awaitable, Iterable, Sequence
from datetime import datetime
from typing import TypeVar

from interpreter.types import InterpreterError

log = logging.getLogger("interpreter.store")

T = TypeVar("T")

UNAVAILABLE_MESSAGE = "The file database is unavailable right now; try again in a minute"


class StoreUnavailable(InterpreterError):
    """The metadata database cannot be reached. The message is safe to show to members."""

    def __init__(self, message: str = UNAVAILABLE_MESSAGE) -> None:
        super().__init__(message)


DISK_FULL_MESSAGE = ("The server's disk is full, so this was not saved. Deleting old files frees space; "
                     "please try again later")


class StorageFull(StoreUnavailable):
    """The disk under DATA_DIR is full (or below its floor): not an outage, and said so.

    A StoreUnavailable, so every caller that copes with an outage copes with this too;
    the message tells the truth."""

    def __init__(self, message: str = DISK_FULL_MESSAGE) -> None:
        super().__init__(message)


@dataclasses.dataclass(frozen=True)
class FileRecord:
    """One stored user file: the seed's `user_files` document."""

    file_id: str
    user_id: int
    filename: str  # sanitised display name; never used to build a path
    file_path: str  # where the blob was written (informational: readers derive it from file_id)
    file_size: int
    file_type: str
    uploaded_at: datetime  # aware, UTC
    expires_at: datetime | None  # aware, UTC; None: never expires


RUN_REFUSED = "refused"  # a run's status and exit cause when it never reached the sandbox
RUN_RUNNING = "running"  # status and exit cause of a run admitted and not ended (yet)
# How readers show a RUN_RUNNING record older than any run can last: the process running it
# died (or lost the database for good) before it could record the end. Never stored.
RUN_INTERRUPTED = "interrupted"


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One run in the audit: who, where, when, how it ended, and what it touched.

    The code itself is never stored, only its SHA-256: enough to tell runs of the same
    code apart or match a snippet someone reports, without keeping members' code.
    """

    user_id: int
    guild_id: int | None  # None: not run from a server (CLI, API, DM)
    channel_id: int | None
    started_at: datetime  # aware, UTC
    duration_seconds: float  # wall time of the whole request (packages, files, the run)
    success: bool
    status: str  # "ok", "failed" (ran and failed), "refused" (never reached the sandbox) or "running"
    exit_cause: str  # result["exit_cause"] (ok, exception, timeout, memory...), "refused" or "running"
    packages: tuple[str, ...]  # packages requested
    files_used: tuple[str, ...]  # ids of the member's files requested
    files_produced: tuple[str, ...]  # names of the files the run produced
    code_sha256: str
    expires_at: datetime | None  # aware, UTC; None: never expires
    # Created when the run is admitted; the admission record and the final one share it.
    # None only in records written before run ids existed (old rows, old spool lines).
    run_id: str | None = None

    @property
    def running(self) -> bool:
        return self.status == RUN_RUNNING


@dataclasses.dataclass(frozen=True)
class Lease:
    """A named claim held by one holder until `expires_at`: the atomic document every
    process sharing the store agrees on (session placement, per-member locks, cooldowns,
    the sweep). An expired lease is free whether or not the database has removed it yet."""

    key: str
    holder: str
    expires_at: datetime  # aware, UTC
    data: dict  # small JSON-able values the holder keeps with it


@dataclasses.dataclass(frozen=True)
class Usage:
    files: int
    bytes: int


_URI_PATTERN = re.compile(r"mongodb(?:\+srv)?://\S+", re.IGNORECASE)


def scrub(text: str) -> str:
    """An error message with any connection string removed (they can carry passwords)."""
    return _URI_PATTERN.sub("mongodb://<hidden>", text)


class FileStore(abc.ABC):
    """Metadata of user files. Implementations: SQLiteStore, MongoStore."""

    backend: str = "?"  # "sqlite" or "mongodb", for status and logs
    # True when the store also keeps file contents (MongoDB: GridFS) for every process to
    # read; False when the bytes live only on this machine's disk (SQLite: shared by the
    # processes of one machine through the data dir).
    holds_blobs: bool = False

    def __init__(self) -> None:
        self._down = False

    @property
    @abc.abstractmethod
    def namespace(self) -> str:
        """Names the blob directory whose files this store describes.

        Blobs of different stores live in different directories, so the orphan sweep of
        one store never deletes blobs another store (say, a db_handler view) still lists.
        """

    # --- writes
    @abc.abstractmethod
    async def insert(self, record: FileRecord) -> None: ...

    @abc.abstractmethod
    async def delete_live(self, file_id: str, user_id: int, now: datetime) -> bool:
        """Delete the record if it is `user_id`'s and not expired at `now`."""

    @abc.abstractmethod
    async def delete_expired(self, file_id: str, now: datetime) -> bool:
        """Delete the record only if it is (still) expired at `now`."""

    # --- reads
    @abc.abstractmethod
    async def get_live(self, file_id: str, user_id: int, now: datetime) -> FileRecord | None: ...

    @abc.abstractmethod
    async def list_live(self, user_id: int, now: datetime) -> list[FileRecord]:
        """The user's unexpired records, newest upload first."""

    @abc.abstractmethod
    async def usage(self, user_id: int, now: datetime) -> Usage:
        """What counts against the user's quota: unexpired files and their bytes."""

    @abc.abstractmethod
    async def totals(self, now: datetime) -> Usage:
        """Unexpired files and bytes of all users (admin status)."""

    @abc.abstractmethod
    async def list_expired(self, now: datetime, limit: int) -> list[FileRecord]: ...

    @abc.abstractmethod
    async def existing_ids(self, file_ids: Iterable[str]) -> set[str]:
        """Which of `file_ids` have a record (expired or not): the orphan sweep's question."""

    # --- the run audit

    @abc.abstractmethod
    async def save_runs(self, records: Sequence[RunRecord]) -> None:
        """Write records in order, in one round trip (one transaction on SQLite).

        Keyed on `run_id`, and idempotent: a RUN_RUNNING record (the admission) is added
        only when the run has no record yet, so it never overwrites the end of the run
        however late it arrives; any other record (the end) replaces the run's record or
        adds it. A record without a run_id (written before run ids) is simply added.
        """

    async def insert_run(self, record: RunRecord) -> None:
        """One record (see save_runs)."""
        await self.save_runs((record,))

    @abc.abstractmethod
    async def recent_runs(self, now: datetime, limit: int, user_id: int | None = None,
                          guild_id: int | None = None) -> list[RunRecord]:
        """Unexpired runs, newest first, at most `limit`; only `user_id`'s and/or only in `guild_id` when given."""

    @abc.abstractmethod
    async def run_start_times(self, user_id: int, since: datetime, now: datetime) -> list[datetime]:
        """When the member's unexpired runs that were admitted (status not 'refused': running,
        interrupted or ended) started, from `since` on, oldest first: what an hourly run limit counts."""

    @abc.abstractmethod
    async def run_cause_counts(self, since: datetime, now: datetime, interrupted_before: datetime) -> dict[str, int]:
        """How many unexpired runs started from `since` on ended with each exit cause; runs
        still RUN_RUNNING count as "running", or as RUN_INTERRUPTED when they started before
        `interrupted_before` (no run lasts that long: whatever ran them is gone)."""

    @abc.abstractmethod
    async def delete_expired_runs(self, now: datetime) -> int:
        """Delete audit records expired at `now`; returns how many went."""

    # --- counters: limits that must hold across processes (e.g. /ask's daily budget)

    @abc.abstractmethod
    async def count_up_to(self, key: str, limit: int, now: datetime, expires_at: datetime) -> int | None:
        """Atomically add one to counter `key` unless it already reached `limit`.

        Returns the new count, or None (nothing changed) when the limit was reached. A
        missing counter, or one expired at `now`, starts from 0 and expires at
        `expires_at`. Safe when many processes call at once.
        """

    @abc.abstractmethod
    async def count_down(self, key: str, now: datetime) -> None:
        """Take one back from a live counter (never below 0): what was counted did not happen."""

    @abc.abstractmethod
    async def delete_expired_counters(self, now: datetime) -> int:
        """Delete counters expired at `now`; returns how many went."""

    # --- file contents, when `holds_blobs` (the local blob dir is then a per-process copy)

    async def put_blob(self, file_id: str, data: bytes) -> None:
        raise NotImplementedError

    async def get_blob(self, file_id: str) -> bytes | None:
        """The contents, or None when the store has none for this id."""
        raise NotImplementedError

    async def delete_blob(self, file_id: str) -> bool:
        raise NotImplementedError

    async def blob_ids_before(self, uploaded_before: datetime) -> list[str]:
        """Ids of contents stored before this time (the sweep's candidates for orphans)."""
        raise NotImplementedError

    # --- leases (atomic across every process sharing the store)

    @abc.abstractmethod
    async def acquire_lease(self, key: str, holder: str, expires_at: datetime, now: datetime,
                            data: dict | None = None) -> Lease:
        """Take the lease `key` for `holder` when it is free (absent or expired at `now`) or
        already theirs (then renewed, with `data`), in one atomic step. Returns the lease as
        it stands afterwards: its holder is someone else when they hold it."""

    @abc.abstractmethod
    async def read_lease(self, key: str, now: datetime) -> Lease | None:
        """The unexpired lease `key`, or None."""

    @abc.abstractmethod
    async def leases_with_prefix(self, prefix: str, now: datetime) -> list[Lease]:
        """Every unexpired lease whose key starts with `prefix`, soonest to expire first."""

    @abc.abstractmethod
    async def release_lease(self, key: str, holder: str) -> bool:
        """Give the lease up, only if `holder` holds it; True when it was released."""

    @abc.abstractmethod
    async def delete_expired_leases(self, now: datetime) -> int:
        """Remove leases expired at `now` (the TTL index does it lazily on MongoDB)."""

    async def close(self) -> None:
        """Release connections. Stores reconnect by themselves when used again."""

    # --- outage reporting shared by the backends

    async def _guarded(self, operation: Awaitable[T], unavailable: tuple[type[BaseException], ...]) -> T:
        """Await `operation`; turn a database outage into StoreUnavailable with one log line.

        Logs once when the database goes away and once when it is back, instead of a
        line per call during an outage. The log line names the backend and the error
        class, never the connection string.
        """
        try:
            result = await operation
        except unavailable as exc:
            if self._disk_full(exc):  # the database is there; the disk under it is full
                log.error("file store (%s): the disk is full: %s", self.backend, scrub(str(exc))[:200])
                raise StorageFull() from None
            self._report_down(exc)
            raise StoreUnavailable() from None
        if self._down:
            self._down = False
            log.warning("file store (%s) is reachable again", self.backend)
        return result

    def _disk_full(self, exc: BaseException) -> bool:
        """Whether `exc` means the disk is full rather than the database gone."""
        from interpreter.store.diskspace import is_disk_full

        return is_disk_full(exc)

    def _report_down(self, exc: BaseException) -> None:
        if not self._down:
            self._down = True
            log.error("file store (%s) is unavailable: %s: %s", self.backend, type(exc).__name__,
                      scrub(str(exc))[:500])
