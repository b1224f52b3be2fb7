"""User files: upload, list, delete, expiry, and handing files to runs.

The FileManager owns the rules; a store (interpreter/store) keeps the metadata and a
BlobDir keeps the bytes, one file per id under `settings.files_dir/<store namespace>/`.

Consistency, without transactions spanning disk and database:
- upload writes the blob (atomically) BEFORE inserting its record;
- delete and the sweep remove the record BEFORE the blob;
so a crash at any point can leave a blob without a record (swept later), never a
record without a blob. The orphan sweep leaves alone blobs an upload in this process
is still writing, blobs younger than `orphan_grace_seconds` (an upload in another
process), and blobs a run is reading (a lease taken by `resolve_for_run`).

Across processes (several bot processes on one database, or on one machine):
- the quota check and insert run under a lease in the store (`quota:<member>`), not
  only this process's lock, so two processes uploading for one member at once cannot
  both take the last place;
- a run's claim on its input files is a lease in the store too (`reading:<id>:<run>`),
  so a sweep or delete in another process leaves the blob until the run is done;
- with MongoDB the bytes live in GridFS (the store `holds_blobs`): any process serves
  any member's file, and the local blob dir is this process's copy, filled on first use.
  Upload puts the bytes in GridFS before inserting the record; delete and the sweep
  remove the record first, then the bytes. The sweep is safe when every process runs
  it at once: a record is deleted (and counted) by exactly one of them.

Times come from `clock` (default: UTC now), so tests move time without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from interpreter import filetypes
from interpreter.clock import expiry_after, store_time, utc_now
from interpreter.keyed_locks import KeyedLocks
from interpreter.store import BlobDir, FileRecord, FileStore, StorageFull, StoreUnavailable, is_file_id, new_file_id
from interpreter.store.diskspace import MB, DiskSpace, is_disk_full
from interpreter.types import GeneratedFile, InputFile, InterpreterError

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

# A run may read its input blobs until its timeout has passed; the margin covers the
# time between resolving files and starting the sandbox.
_LEASE_MARGIN = timedelta(minutes=2)
_SWEEP_BATCH = 500
_COUNTED_MEMORY = timedelta(days=1)  # a file whose blob removal waited for a run stays counted this long
# How long one process may hold a member's quota lease (check, write, insert); a crashed
# holder's lease frees itself after this. Waiting for another process's upload polls.
_QUOTA_LEASE = timedelta(seconds=60)
_QUOTA_WAIT_POLLS = 200
_QUOTA_POLL_SECONDS = 0.05
_SHOWN_ID_LENGTH = 40



class UploadRefused(Exception):
    """A file cannot be stored. The message is for the member."""


@dataclasses.dataclass(frozen=True)
class _Prepared:
    data: bytes
    filename: str
    file_type: str
    note: str | None


class _SharedState:
    """What every FileManager writing into one blob directory must agree on, in this process.

    Engine views (one per db_handler) may share a directory; a per-directory registry
    keeps their leases, in-flight uploads and quota locks consistent.
    """

    def __init__(self) -> None:
        self.pending: set[str] = set()  # blobs written whose record is not inserted yet
        self.leases: dict[str, datetime] = {}  # file id -> until when a run may read it
        self.deferred: set[str] = set()  # blobs whose record is gone on purpose; removed once unleased
        # Quota locks, one per user. An asyncio.Lock makes check-then-insert atomic for
        # one process only; several bot processes sharing a database could each let a
        # member go one file over the quota (MongoDB has no cross-document constraint
        # for it): the quota lease (_quota_lease) covers that.
        self.quota_locks = KeyedLocks()

    def user_lock(self, user_id: int) -> asyncio.Lock:
        return self.quota_locks.lock(user_id)

    def lease(self, file_ids: Sequence[str], until: datetime) -> None:
        for file_id in file_ids:
            self.leases[file_id] = max(until, self.leases.get(file_id, until))

    def is_leased(self, file_id: str, now: datetime) -> bool:
        until = self.leases.get(file_id)
        if until is None:
            return False
        if until <= now:
            del self.leases[file_id]
            return False
        return True


_shared_by_dir: dict[str, _SharedState] = {}


def _shared_state(blobs: BlobDir) -> _SharedState:
    key = str(blobs.root.resolve())
    return _shared_by_dir.setdefault(key, _SharedState())


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _shown_id(file_id: object) -> str:
    """A file id as it may appear in a message: printable, short, no quotes or backticks."""
    text = "".join(ch for ch in str(file_id) if ch.isprintable() and ch not in "'`\"\\")
    return text[:_SHOWN_ID_LENGTH] + ("..." if len(text) > _SHOWN_ID_LENGTH else "")


_EXTENSION_FOR_TYPE = {"text": "txt", "binary": "bin", "gzip": "gz", "pickle": "pkl", "hdf5": "h5"}
_IMAGE_EXTENSIONS = ((b"\x89PNG", "png"), (b"\xff\xd8", "jpg"), (b"GIF8", "gif"), (b"RIFF", "webp"))


def _default_extension(file_type: str, data: bytes) -> str:
    if file_type == "image":
        return next((ext for magic, ext in _IMAGE_EXTENSIONS if data.startswith(magic)), "img")
    return _EXTENSION_FOR_TYPE.get(file_type, file_type)


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


class FileManager:
    def __init__(self, settings: Any, store: FileStore, *, clock: Clock | None = None,
                 orphan_grace_seconds: float = 600.0) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock or utc_now
        self.orphan_grace_seconds = orphan_grace_seconds
        self.blobs = BlobDir(settings.files_dir / store.namespace)
        self.disk = DiskSpace(settings.data_dir, floor_bytes=settings.disk_free_floor_mb * MB,
                              reserve_bytes=settings.disk_reserve_mb * MB)
        self._shared = _shared_state(self.blobs)
        self.last_cleanup: datetime | None = None

    # --- time

    def _now(self) -> datetime:
        return store_time(self.clock)

    def _expiry(self, now: datetime) -> datetime | None:
        return expiry_after(now, self.settings.file_expiry_hours)

    # --- upload

    def _prepare(self, file_data: Any, filename: Any, file_type: str | None) -> _Prepared:
        """Validate and classify one file. Raises UploadRefused with the member-facing reason."""
        if not isinstance(file_data, (bytes, bytearray, memoryview)):
            raise UploadRefused("File data must be bytes")
        data = bytes(file_data)
        if not data:
            raise UploadRefused("File is empty")
        if len(data) > self.settings.max_file_size_bytes:
            raise UploadRefused(f"File too large. Maximum size is {self.settings.max_file_size_mb}MB")
        name = filetypes.sanitize_filename(filename if isinstance(filename, (str, bytes)) else "", default="")
        declared = file_type.strip().lower().lstrip(".") if isinstance(file_type, str) else None
        try:
            detection = filetypes.detect_type(data, name, declared)
        except filetypes.UnsupportedContent as exc:
            raise UploadRefused(str(exc)) from None
        if not name:  # nothing usable in the name: make one up from the content
            name = "upload." + _default_extension(detection.file_type, data)
        return _Prepared(data, name, detection.file_type, detection.note)

    @contextlib.asynccontextmanager
    async def _quota_lease(self, user_id: int):
        """The member's quota, held for every process sharing the store (see the module doc)."""
        key, token = f"quota:{user_id}", uuid.uuid4().hex
        for _ in range(_QUOTA_WAIT_POLLS):
            now = self._now()
            if (await self.store.acquire_lease(key, token, now + _QUOTA_LEASE, now)).holder == token:
                break
            await asyncio.sleep(_QUOTA_POLL_SECONDS)  # another process is storing a file of this member
        else:
            raise UploadRefused("Another upload of yours is still being stored; try again in a moment")
        try:
            yield
        finally:
            with contextlib.suppress(StoreUnavailable):
                await self.store.release_lease(key, token)

    async def _store_new(self, user_id: int, prepared: _Prepared) -> FileRecord:
        """Quota check, blob write, record insert: atomic per member across processes."""
        async with self._shared.user_lock(user_id), self._quota_lease(user_id):
            now = self._now()
            used = await self.store.usage(user_id, now)
            size = len(prepared.data)
            if used.files + 1 > self.settings.user_max_files:
                raise UploadRefused(
                    f"You already keep {used.files} files (the limit is {self.settings.user_max_files}). "
                    "Delete some or wait for them to expire.")
            if used.bytes + size > self.settings.user_max_storage_bytes:
                raise UploadRefused(
                    f"This file ({_mb(size)}) would bring your storage to {_mb(used.bytes + size)}; "
                    f"the limit is {self.settings.user_max_storage_mb} MB. Delete some files or wait for them to expire.")
            await asyncio.to_thread(self._make_room, size)
            file_id = new_file_id()
            self._shared.pending.add(file_id)
            try:
                try:
                    path = await asyncio.to_thread(self.blobs.write, file_id, prepared.data)
                except OSError as exc:  # the partial temp file is already gone (BlobDir.write)
                    if is_disk_full(exc):
                        raise StorageFull() from None
                    raise
                if self.store.holds_blobs:
                    await self.store.put_blob(file_id, prepared.data)
                record = FileRecord(file_id=file_id, user_id=user_id, filename=prepared.filename,
                                    file_path=str(path), file_size=size, file_type=prepared.file_type,
                                    uploaded_at=now, expires_at=self._expiry(now))
                try:
                    await self.store.insert(record)
                except StorageFull:
                    # The database refused the row for want of space: it is certainly not
                    # there, so the blob goes now instead of waiting for the orphan sweep.
                    await asyncio.to_thread(self.blobs.remove, file_id)
                    raise
                # Any other failure may leave the insert's outcome unknown (a network error
                # after sending, a cancellation); removing the blob then could leave a record
                # without one. The orphan sweep removes it once it is sure there is no record.
            finally:
                self._shared.pending.discard(file_id)
            return record

    def _make_room(self, size: int) -> None:
        """Blocking: keep the disk reserve while there is room, and refuse below the free-space floor."""
        self.disk.keep_reserve()
        self.disk.check_room(size)

    async def _freeing_space(self, call: Callable[[], Any]) -> Any:
        """Run a store call that must work on a full disk (reading, deleting); if the disk
        is too full even for that, release the reserve and try once more."""
        try:
            return await call()
        except StorageFull:
            if not await asyncio.to_thread(self.disk.release_reserve):
                raise
        return await call()

    async def upload(self, user_id: int, file_data: bytes, filename: str, file_type: str | None = None) -> dict:
        """Store a member's file. Returns the seed's result dict; never raises for bad input."""
        if not isinstance(user_id, int) or isinstance(user_id, bool):
            return {"success": False, "error": "user_id must be an integer"}
        try:
            prepared = await asyncio.to_thread(self._prepare, file_data, filename, file_type)
            record = await self._store_new(user_id, prepared)
        except (UploadRefused, StoreUnavailable) as exc:
            return {"success": False, "error": str(exc)}
        except OSError as exc:
            log.error("could not write a blob for user %s: %s", user_id, exc)
            return {"success": False, "error": "The file could not be saved on the server; try again later"}
        result = {"success": True, **self._public(record)}
        if prepared.note:
            result["note"] = prepared.note
        return result

    # --- reading

    @staticmethod
    def _public(record: FileRecord) -> dict:
        """A record as members and callers see it: no host paths."""
        return {
            "file_id": record.file_id, "user_id": record.user_id, "filename": record.filename,
            "file_type": record.file_type, "file_size": record.file_size,
            "uploaded_at": _iso(record.uploaded_at), "expires_at": _iso(record.expires_at),
        }

    async def list_files(self, user_id: int) -> list[dict]:
        """The member's unexpired files, newest first. Raises StoreUnavailable when the database is down."""
        now = self._now()
        return [self._public(record) for record in await self._freeing_space(lambda: self.store.list_live(user_id, now))]

    async def get_file(self, file_id: str, user_id: int) -> dict | None:
        """Metadata of the member's own unexpired file, else None."""
        if not is_file_id(file_id):
            return None
        now = self._now()
        record = await self._freeing_space(lambda: self.store.get_live(file_id, user_id, now))
        return self._public(record) if record else None

    async def resolve_for_run(self, user_id: int, file_ids: list[str]) -> list[InputFile]:
        """The member's own unexpired files, ready for a run; any other id raises naming it."""
        if not file_ids:
            return []
        if isinstance(file_ids, (str, bytes)) or not isinstance(file_ids, Sequence):
            raise InterpreterError("user_files must be a list of file ids")
        now = self._now()
        inputs: list[InputFile] = []
        missing: list[str] = []
        seen: set[str] = set()
        for file_id in file_ids:
            if is_file_id(file_id) and file_id in seen:
                continue
            record = (await self._freeing_space(lambda: self.store.get_live(file_id, user_id, now))
                      if is_file_id(file_id) else None)
            if record is not None and not await self._local_copy(record):
                log.error("file %s has a record but its blob is missing or damaged; treating it as gone", file_id)
                record = None
            if record is None:
                missing.append(_shown_id(file_id))
                continue
            seen.add(file_id)
            inputs.append(InputFile(file_id=record.file_id, filename=record.filename, file_type=record.file_type,
                                    host_path=self.blobs.path_for(record.file_id), size=record.file_size))
        if missing:
            names = ", ".join(f"'{shown}'" for shown in missing)
            if len(missing) == 1:
                raise InterpreterError(f"File {names} was not found, has expired, or is not yours")
            raise InterpreterError(f"Files {names} were not found, have expired, or are not yours")
        lease_until = now + timedelta(seconds=self.settings.max_run_timeout) + _LEASE_MARGIN
        self._shared.lease([item.file_id for item in inputs], lease_until)
        run = uuid.uuid4().hex  # and for the other processes sharing the store
        try:
            for item in inputs:
                await self.store.acquire_lease(f"reading:{item.file_id}:{run}", run, lease_until, now)
        except (StoreUnavailable, StorageFull):  # reading must work on a full disk: this process's lease holds
            log.warning("could not record a run's claim on its input files; other processes may sweep them meanwhile")
        return inputs

    async def _local_copy(self, record: FileRecord) -> bool:
        """Whether this process has the file's bytes on disk, fetching them from the store
        (GridFS) when it holds them and the local copy is missing or damaged."""
        if await asyncio.to_thread(self.blobs.size, record.file_id) == record.file_size:
            return True
        if not self.store.holds_blobs:
            return False
        data = await self.store.get_blob(record.file_id)
        if data is None or len(data) != record.file_size:
            return False
        await asyncio.to_thread(self.blobs.write, record.file_id, data)
        return True

    async def _read_elsewhere(self, file_id: str, now: datetime) -> bool:
        """A run in some process sharing the store still reads this file."""
        return bool(await self.store.leases_with_prefix(f"reading:{file_id}:", now))

    # --- deleting and expiry

    async def _discard_blob(self, file_id: str, now: datetime) -> None:
        """Remove a blob whose record is gone, unless a run is reading it (the sweep will, later)."""
        if self._shared.is_leased(file_id, now) or await self._read_elsewhere(file_id, now):
            self._shared.deferred.add(file_id)
            # Whichever process removes the blob later must not count the file again.
            await self.store.acquire_lease(f"counted:{file_id}", "sweep", now + _COUNTED_MEMORY, now)
            return
        try:
            await asyncio.to_thread(self.blobs.remove, file_id)  # this process's copy first: the
        except OSError as exc:  # shared bytes are what the sweep counts when it finishes the job
            log.warning("could not remove blob %s (the sweep will retry): %s", file_id, exc)
        if self.store.holds_blobs:
            await self.store.delete_blob(file_id)

    async def delete(self, file_id: str, user_id: int) -> bool:
        """Delete the member's own unexpired file. False when there is no such file (idempotent)."""
        if not is_file_id(file_id):
            return False
        now = self._now()
        if not await self._freeing_space(lambda: self.store.delete_live(file_id, user_id, now)):
            return False
        await self._discard_blob(file_id, now)
        return True

    async def cleanup_expired(self) -> int:
        """Remove expired files (records, then blobs) and orphan blobs; returns how many files went.

        Safe while runs use files: blobs leased by a run stay until the lease ends.
        Raises StoreUnavailable when the database is down (nothing is deleted then).
        """
        now = self._now()
        removed = 0
        while True:
            batch = await self.store.list_expired(now, _SWEEP_BATCH)
            deleted_in_batch = 0
            for record in batch:
                if await self._freeing_space(lambda: self.store.delete_expired(record.file_id, now)):
                    deleted_in_batch += 1
                    if is_file_id(record.file_id):
                        await self._discard_blob(record.file_id, now)
            removed += deleted_in_batch
            if len(batch) < _SWEEP_BATCH or deleted_in_batch == 0:
                break
        removed += await self._sweep_orphans(now)
        await asyncio.to_thread(self.disk.keep_reserve)  # space freed: set the reserve aside again
        self.last_cleanup = now
        if removed:
            log.info("file sweep removed %d expired or orphaned files", removed)
        return removed

    async def _sweep_orphans(self, now: datetime) -> int:
        """Blobs without a record: left by a crash, a failed insert, a busy run, or MongoDB's TTL monitor."""
        entries = await asyncio.to_thread(self.blobs.scan)
        settled_before = time.time() - self.orphan_grace_seconds  # blob mtimes are real time
        candidates = {}
        for entry in entries:
            deferred_ready = entry.file_id in self._shared.deferred  # our own; no need to wait for the grace
            if entry.mtime > settled_before and not deferred_ready:
                continue
            if entry.file_id is None:  # an interrupted write
                await asyncio.to_thread(entry.path.unlink, missing_ok=True)
                continue
            if entry.file_id in self._shared.pending or self._shared.is_leased(entry.file_id, now):
                continue
            candidates[entry.file_id] = entry
        busy = set(self._shared.pending) | {file_id for file_id in list(self._shared.leases)
                                            if self._shared.is_leased(file_id, now)}
        removed = await self._sweep_stored_orphans(now, busy)
        if not candidates:
            return removed
        known = await self.store.existing_ids(candidates)
        for file_id in candidates.keys() - known:
            if await self._read_elsewhere(file_id, now):
                continue
            # A deferred blob's file was already counted when its record went; with the bytes
            # in the store the local blob is only this process's copy (its file was counted,
            # or is counted below, by the process that removed the record or stored bytes).
            counted = (file_id in self._shared.deferred or self.store.holds_blobs
                       or await self.store.read_lease(f"counted:{file_id}", now) is not None)
            self._shared.deferred.discard(file_id)
            if self.store.holds_blobs:
                await self.store.delete_blob(file_id)
            if await asyncio.to_thread(self.blobs.remove, file_id) and not counted:
                removed += 1
        return removed

    async def _sweep_stored_orphans(self, now: datetime, busy: set[str]) -> int:
        """Contents in the store (GridFS) without a record: an upload in some process that
        died between storing the bytes and inserting the record, or a record MongoDB's TTL
        monitor removed. `busy`: this process's uploads and runs in progress."""
        if not self.store.holds_blobs:
            return 0
        settled = utc_now() - timedelta(seconds=self.orphan_grace_seconds)  # upload dates are real time
        stored = set(await self.store.blob_ids_before(settled)) - busy
        removed = 0
        for file_id in stored - await self.store.existing_ids(stored):
            if await self._read_elsewhere(file_id, now) or not await self.store.delete_blob(file_id):
                continue
            if await self.store.read_lease(f"counted:{file_id}", now) is None:
                removed += 1  # a record the TTL monitor removed, or an upload that died half-way
        return removed

    # --- runs' outputs

    async def keep_generated(self, user_id: int, files: list[GeneratedFile]) -> list[GeneratedFile]:
        """Store a run's files as new user files with a fresh expiry; returns them with file_id set.

        A file that cannot be kept (quota, size, content, disk full, database down) comes back
        without file_id and with `not_kept` saying why. The run's result is never lost over it.
        """
        kept: list[GeneratedFile] = []
        for item in files:
            if item.file_id:
                kept.append(item)
                continue
            try:
                prepared = await asyncio.to_thread(self._prepare, item.data, item.filename, None)
                record = await self._store_new(user_id, prepared)
            except (UploadRefused, StoreUnavailable, OSError) as exc:
                reason = str(exc) if isinstance(exc, (UploadRefused, StoreUnavailable)) else "it could not be saved"
                log.info("generated file %r of user %s not kept: %s", filetypes.sanitize_filename(item.filename),
                         user_id, exc)
                kept.append(dataclasses.replace(item, not_kept=reason))
                continue
            kept.append(dataclasses.replace(item, file_id=record.file_id))
        return kept

    # --- status

    async def totals(self) -> dict:
        """The seed's status keys. Never raises: an unreachable database shows as an error field."""
        status: dict[str, Any] = {
            "file_expiration_hours": self.settings.file_expiry_hours,
            "max_file_size_mb": self.settings.max_file_size_mb,
            "user_max_files": self.settings.user_max_files,
            "user_max_storage_mb": self.settings.user_max_storage_mb,
            "file_store": self.store.backend,
            "last_cleanup": _iso(self.last_cleanup),
        }
        status.update(await asyncio.to_thread(self.disk.describe))
        try:
            usage = await self.store.totals(self._now())
        except StoreUnavailable as exc:
            status.update(total_user_files=None, total_file_size_mb=None, file_store_error=str(exc))
        else:
            status.update(total_user_files=usage.files, total_file_size_mb=round(usage.bytes / (1024 * 1024), 2))
        return status
