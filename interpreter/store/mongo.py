"""The MongoDB store: collection `user_files`, as in the seed, and `run_audit`.

Works with a PyMongo async database (`pymongo.AsyncMongoClient(uri)[name]`, the
driver MongoDB now recommends) and with a motor database (the seed's db_handler), so
it only uses calls both share: insert_one, bulk_write, find_one, find().sort().to_list(),
delete_one, delete_many, count_documents, aggregate, create_index. (`aggregate` is a
coroutine in PyMongo and returns the cursor directly in motor; `_aggregate` accepts both.)

Indexes (created on first use, once per store):
- unique `file_id`;
- compound (`user_id` 1, `expires_at` -1): a member's live files;
- TTL on `expires_at` with expireAfterSeconds=0: the server removes a record once its
  `expires_at` has passed. A file that never expires stores `expires_at: null`, which
  the TTL monitor ignores. TTL removal is lazy (up to ~60 s on mongod), so every query
  still filters on `expires_at`; the FileManager's sweep removes blobs whose record the
  TTL monitor removed first.

Collection `run_audit` (one document per run; code hash, never code) has a TTL on
`expires_at` like `user_files`, a compound (`user_id` 1, `started_at` -1) index for a
member's recent runs and the hourly run limit, `started_at` -1 for status, and a unique
`run_id` (partial: only documents that have one, so records from before run ids, which
have none, keep working) that a run's admission and its end are upserted on.

Collection `counters` holds limits that must hold across processes (/ask's daily
budget): `{_id: key, value, expires_at}`, counted with one conditional upsert, with a
TTL on `expires_at`.

Datetimes are stored as BSON dates (UTC). Handles built without tz_aware return naive
datetimes; they are read back as UTC.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from pymongo import ASCENDING, DESCENDING, InsertOne, ReturnDocument, UpdateOne
from pymongo.errors import (BulkWriteError, ConfigurationError, ConnectionFailure, DuplicateKeyError, OperationFailure,
                            PyMongoError)

from interpreter.store.base import (RUN_INTERRUPTED, RUN_REFUSED, RUN_RUNNING, FileRecord, FileStore, Lease, RunRecord,
                                   StoreUnavailable, Usage, scrub)

log = logging.getLogger("interpreter.store")

COLLECTION = "user_files"
RUN_AUDIT_COLLECTION = "run_audit"
COUNTERS_COLLECTION = "counters"
LEASES_COLLECTION = "leases"
BLOB_BUCKET = "user_blobs"
_INDEX_CONFLICT_CODES = {85, 86}  # IndexOptionsConflict, IndexKeySpecsConflict
_AUTH_FAILURE_CODES = {13, 18}  # Unauthorized, AuthenticationFailed: as good as down for us
_DEFAULT_SERVER_SELECTION_MS = 5000  # fail a call in seconds, not PyMongo's default 30 s


class _Unavailable(Exception):
    """Internal marker: an OperationFailure that means 'cannot use the database'."""


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _record(doc: dict[str, Any]) -> FileRecord:
    return FileRecord(
        file_id=doc["file_id"], user_id=int(doc["user_id"]), filename=doc.get("filename") or "file",
        file_path=doc.get("file_path") or "", file_size=int(doc.get("file_size") or 0),
        file_type=doc.get("file_type") or "binary", uploaded_at=_utc(doc.get("uploaded_at")),
        expires_at=_utc(doc.get("expires_at")),
    )


def _run_record(doc: dict[str, Any]) -> RunRecord:
    return RunRecord(
        user_id=int(doc["user_id"]), guild_id=doc.get("guild_id"), channel_id=doc.get("channel_id"),
        started_at=_utc(doc.get("started_at")), duration_seconds=float(doc.get("duration_seconds") or 0.0),
        success=bool(doc.get("success")), status=doc.get("status") or "", exit_cause=doc.get("exit_cause") or "",
        packages=tuple(doc.get("packages") or ()), files_used=tuple(doc.get("files_used") or ()),
        files_produced=tuple(doc.get("files_produced") or ()), code_sha256=doc.get("code_sha256") or "",
        expires_at=_utc(doc.get("expires_at")), run_id=doc.get("run_id"),
    )


def _run_document(record: RunRecord) -> dict[str, Any]:
    document = {
        "user_id": record.user_id, "guild_id": record.guild_id, "channel_id": record.channel_id,
        "started_at": record.started_at, "duration_seconds": record.duration_seconds,
        "success": record.success, "status": record.status, "exit_cause": record.exit_cause,
        "packages": list(record.packages), "files_used": list(record.files_used),
        "files_produced": list(record.files_produced), "code_sha256": record.code_sha256,
        "expires_at": record.expires_at,
    }
    if record.run_id is not None:  # a missing field, not null: the partial unique index skips it
        document["run_id"] = record.run_id
    return document


def _run_write(record: RunRecord) -> InsertOne | UpdateOne:
    document = _run_document(record)
    if record.run_id is None:
        return InsertOne(document)
    # The admission only fills in a run that has no record yet ($setOnInsert), so arriving
    # late (a spool replay) it never undoes the end; the end sets every field.
    operator = "$setOnInsert" if record.running else "$set"
    return UpdateOne({"run_id": record.run_id}, {operator: document}, upsert=True)


def _expired(now: datetime) -> dict[str, Any]:
    # "$type" keeps never-expiring (null) records out on every server: MongoDB's type
    # bracketing already does, some compatible servers order null before dates.
    return {"expires_at": {"$type": "date", "$lte": now}}


def _live(now: datetime) -> dict[str, Any]:
    # {"expires_at": None} matches null and a missing field: files that never expire.
    return {"$or": [{"expires_at": None}, {"expires_at": {"$gt": now}}]}


class MongoStore(FileStore):
    backend = "mongodb"
    holds_blobs = True

    def __init__(self, *, database: Any = None, uri: str | None = None, database_name: str | None = None) -> None:
        """Either `database` (a PyMongo async or motor database) or `uri` + `database_name`.

        With a URI the client is created on first use, inside the running event loop.
        """
        super().__init__()
        if (database is None) == (uri is None):
            raise ValueError("MongoStore needs either a database handle or a URI")
        self._database = database
        self._uri = uri
        self._database_name = database_name if database is None else database.name
        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._indexes_ready: set[str] = set()  # collections whose indexes exist

    @property
    def namespace(self) -> str:
        return "mongo-" + re.sub(r"[^A-Za-z0-9_.-]", "_", self._database_name or "default")

    # --- plumbing

    def _collection(self, name: str = COLLECTION) -> Any:
        return self._db()[name]

    def _db(self) -> Any:
        if self._database is not None:
            return self._database
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            # A PyMongo async client belongs to the loop it was first used in; a new loop
            # (tests, a restarted bot) gets a new client.
            from pymongo import AsyncMongoClient

            options: dict[str, Any] = {"tz_aware": True}
            if "serverselectiontimeoutms" not in self._uri.lower():
                options["serverSelectionTimeoutMS"] = _DEFAULT_SERVER_SELECTION_MS
            self._client = AsyncMongoClient(self._uri, **options)
            self._client_loop = loop
            self._indexes_ready = set()
        return self._client[self._database_name]

    async def _call(self, operation, collection_name: str = COLLECTION):
        """Run `operation(collection)` with indexes in place; outages become StoreUnavailable."""
        async def run():
            try:
                collection = self._collection(collection_name)
                if collection_name not in self._indexes_ready:
                    if collection_name == RUN_AUDIT_COLLECTION:
                        await self._ensure_run_audit_indexes(collection)
                    elif collection_name in (COUNTERS_COLLECTION, LEASES_COLLECTION):
                        await collection.create_index("expires_at", expireAfterSeconds=0)
                    else:
                        await self._ensure_indexes(collection)
                    self._indexes_ready.add(collection_name)
                return await operation(collection)
            except OperationFailure as exc:
                if exc.code in _AUTH_FAILURE_CODES:
                    raise _Unavailable(f"authorization failed (code {exc.code})") from None
                raise
            except ConfigurationError as exc:  # e.g. an invalid MONGODB_URI, found on first use
                raise _Unavailable(f"configuration error: {scrub(str(exc))}") from None

        return await self._guarded(run(), (ConnectionFailure, _Unavailable))

    async def _ensure_indexes(self, collection: Any) -> None:
        await collection.create_index("file_id", unique=True)
        await collection.create_index([("user_id", ASCENDING), ("expires_at", DESCENDING)])
        try:
            await collection.create_index("expires_at", expireAfterSeconds=0)
        except OperationFailure as exc:
            if exc.code not in _INDEX_CONFLICT_CODES:
                raise
            # The seed created a plain index on expires_at; MongoDB refuses to change its
            # options in place. Queries filter on expires_at and the hourly sweep removes
            # expired files, so this only costs the server-side cleanup.
            log.warning("user_files already has a non-TTL index on expires_at; expired records are removed by "
                        "the sweep only (drop index 'expires_at_1' to let MongoDB's TTL monitor help)")

    @staticmethod
    async def _ensure_run_audit_indexes(collection: Any) -> None:
        await collection.create_index([("user_id", ASCENDING), ("started_at", DESCENDING)])
        await collection.create_index([("started_at", DESCENDING)])
        await collection.create_index("run_id", unique=True, partialFilterExpression={"run_id": {"$type": "string"}})
        # A run that never expires stores expires_at: null, which the TTL monitor ignores.
        await collection.create_index("expires_at", expireAfterSeconds=0)

    @staticmethod
    async def _aggregate(collection: Any, pipeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
        cursor = collection.aggregate(pipeline)
        if inspect.isawaitable(cursor):  # PyMongo async; motor returns the cursor itself
            cursor = await cursor
        return await cursor.to_list(length=None)

    async def _usage(self, match: dict[str, Any]) -> Usage:
        async def op(collection):
            rows = await self._aggregate(collection, [
                {"$match": match},
                {"$group": {"_id": None, "files": {"$sum": 1}, "bytes": {"$sum": "$file_size"}}},
            ])
            return Usage(int(rows[0]["files"]), int(rows[0]["bytes"])) if rows else Usage(0, 0)

        return await self._call(op)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._client_loop is asyncio.get_running_loop():
            try:
                await client.close()
            except PyMongoError:
                pass

    # --- the interface

    async def insert(self, record: FileRecord) -> None:
        document = {
            "file_id": record.file_id, "user_id": record.user_id, "filename": record.filename,
            "file_path": record.file_path, "file_size": record.file_size, "file_type": record.file_type,
            "uploaded_at": record.uploaded_at, "expires_at": record.expires_at,
        }
        await self._call(lambda c: c.insert_one(document))

    async def delete_live(self, file_id: str, user_id: int, now: datetime) -> bool:
        result = await self._call(lambda c: c.delete_one({"file_id": file_id, "user_id": user_id, **_live(now)}))
        return result.deleted_count > 0

    async def delete_expired(self, file_id: str, now: datetime) -> bool:
        result = await self._call(lambda c: c.delete_one({"file_id": file_id, **_expired(now)}))
        return result.deleted_count > 0

    async def get_live(self, file_id: str, user_id: int, now: datetime) -> FileRecord | None:
        doc = await self._call(lambda c: c.find_one({"file_id": file_id, "user_id": user_id, **_live(now)}, {"_id": 0}))
        return _record(doc) if doc else None

    async def list_live(self, user_id: int, now: datetime) -> list[FileRecord]:
        async def op(collection):
            cursor = collection.find({"user_id": user_id, **_live(now)}, {"_id": 0})
            return await cursor.sort([("uploaded_at", DESCENDING), ("file_id", ASCENDING)]).to_list(length=None)

        return [_record(doc) for doc in await self._call(op)]

    async def usage(self, user_id: int, now: datetime) -> Usage:
        return await self._usage({"user_id": user_id, **_live(now)})

    async def totals(self, now: datetime) -> Usage:
        return await self._usage(_live(now))

    async def list_expired(self, now: datetime, limit: int) -> list[FileRecord]:
        async def op(collection):
            cursor = collection.find(_expired(now), {"_id": 0})
            return await cursor.sort([("expires_at", ASCENDING)]).limit(limit).to_list(length=None)

        return [_record(doc) for doc in await self._call(op)]

    async def existing_ids(self, file_ids: Iterable[str]) -> set[str]:
        ids = list(file_ids)
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            batch = ids[start:start + 500]

            async def op(collection, batch=batch):
                return await collection.find({"file_id": {"$in": batch}}, {"_id": 0, "file_id": 1}).to_list(length=None)

            found.update(doc["file_id"] for doc in await self._call(op))
        return found

    # --- the run audit

    async def save_runs(self, records: Sequence[RunRecord]) -> None:
        if not records:
            return
        writes = [_run_write(record) for record in records]

        async def op(collection):
            try:
                await collection.bulk_write(writes, ordered=True)
            except BulkWriteError as exc:
                # Two upserts of one new run id at the same moment: the loser's insert hits the
                # unique index. Everything before it was written; once more writes the rest,
                # now as updates (and an admission, as nothing).
                if not all(error.get("code") == 11000 for error in exc.details.get("writeErrors", ())):
                    raise
                done = exc.details["writeErrors"][0]["index"]
                await collection.bulk_write(writes[done:], ordered=True)

        await self._call(op, RUN_AUDIT_COLLECTION)

    async def recent_runs(self, now: datetime, limit: int, user_id: int | None = None,
                          guild_id: int | None = None) -> list[RunRecord]:
        query = {key: value for key, value in (("user_id", user_id), ("guild_id", guild_id)) if value is not None}
        query.update(_live(now))

        async def op(collection):
            # _id (an ObjectId, increasing per process) breaks ties between equal start times.
            cursor = collection.find(query, {"_id": 0}).sort([("started_at", DESCENDING), ("_id", DESCENDING)])
            return await cursor.limit(limit).to_list(length=None)

        return [_run_record(doc) for doc in await self._call(op, RUN_AUDIT_COLLECTION)]

    async def run_start_times(self, user_id: int, since: datetime, now: datetime) -> list[datetime]:
        query = {"user_id": user_id, "started_at": {"$gte": since}, "status": {"$ne": RUN_REFUSED}, **_live(now)}

        async def op(collection):
            cursor = collection.find(query, {"_id": 0, "started_at": 1}).sort([("started_at", ASCENDING)])
            return await cursor.to_list(length=None)

        return [_utc(doc["started_at"]) for doc in await self._call(op, RUN_AUDIT_COLLECTION)]

    async def run_cause_counts(self, since: datetime, now: datetime, interrupted_before: datetime) -> dict[str, int]:
        interrupted = {"$and": [{"$eq": ["$status", RUN_RUNNING]}, {"$lt": ["$started_at", interrupted_before]}]}

        async def op(collection):
            return await self._aggregate(collection, [
                {"$match": {"started_at": {"$gte": since}, **_live(now)}},
                {"$group": {"_id": {"$cond": [interrupted, RUN_INTERRUPTED, "$exit_cause"]}, "count": {"$sum": 1}}},
            ])

        return {str(row["_id"]): int(row["count"]) for row in await self._call(op, RUN_AUDIT_COLLECTION)}

    async def delete_expired_runs(self, now: datetime) -> int:
        # The TTL monitor removes these too, lazily; the sweep makes expiry prompt everywhere.
        result = await self._call(lambda c: c.delete_many(_expired(now)), RUN_AUDIT_COLLECTION)
        return result.deleted_count

    # --- counters

    async def count_up_to(self, key: str, limit: int, now: datetime, expires_at: datetime) -> int | None:
        if limit < 1:
            return None
        # An expired counter (the TTL monitor is lazy) is reset first; the reset only
        # matches an expired document, so it cannot undo a concurrent count.
        await self._call(lambda c: c.update_one({"_id": key, "expires_at": {"$lte": now}},
                                                {"$set": {"value": 0, "expires_at": expires_at}}), COUNTERS_COLLECTION)

        async def op(collection):
            # Matches only below the limit; when the document exists at the limit, the
            # upsert's insert collides on _id: that collision is the "no".
            try:
                return await collection.find_one_and_update(
                    {"_id": key, "value": {"$lt": limit}},
                    {"$inc": {"value": 1}, "$setOnInsert": {"expires_at": expires_at}},
                    upsert=True, return_document=ReturnDocument.AFTER)
            except DuplicateKeyError:
                return None

        document = await self._call(op, COUNTERS_COLLECTION)
        return int(document["value"]) if document else None

    async def count_down(self, key: str, now: datetime) -> None:
        await self._call(lambda c: c.update_one({"_id": key, "value": {"$gt": 0}, "expires_at": {"$gt": now}},
                                                {"$inc": {"value": -1}}), COUNTERS_COLLECTION)

    async def delete_expired_counters(self, now: datetime) -> int:
        result = await self._call(lambda c: c.delete_many({"expires_at": {"$lte": now}}), COUNTERS_COLLECTION)
        return result.deleted_count


    # --- file contents in GridFS (bucket `user_blobs`, one file per id), shared by every process

    def _bucket(self) -> Any:
        database = self._db()
        if type(database).__module__.startswith("motor"):
            from motor.motor_asyncio import AsyncIOMotorGridFSBucket

            return AsyncIOMotorGridFSBucket(database, bucket_name=BLOB_BUCKET)
        from gridfs import AsyncGridFSBucket

        return AsyncGridFSBucket(database, bucket_name=BLOB_BUCKET)

    async def _on_bucket(self, operation):
        async def run():
            try:
                return await operation(self._bucket())
            except OperationFailure as exc:
                if exc.code in _AUTH_FAILURE_CODES:
                    raise _Unavailable(f"authorization failed (code {exc.code})") from None
                raise

        return await self._guarded(run(), (ConnectionFailure, _Unavailable))

    async def put_blob(self, file_id: str, data: bytes) -> None:
        await self._on_bucket(lambda bucket: bucket.upload_from_stream_with_id(file_id, file_id, data))

    async def get_blob(self, file_id: str) -> bytes | None:
        from gridfs.errors import NoFile

        async def op(bucket):
            try:
                stream = await bucket.open_download_stream(file_id)
            except NoFile:
                return None
            return await stream.read()

        return await self._on_bucket(op)

    async def delete_blob(self, file_id: str) -> bool:
        from gridfs.errors import NoFile

        async def op(bucket):
            try:
                await bucket.delete(file_id)
            except NoFile:
                return False
            return True

        return await self._on_bucket(op)

    async def blob_ids_before(self, uploaded_before: datetime) -> list[str]:
        async def op(bucket):
            cursor = bucket.find({"uploadDate": {"$lt": uploaded_before}})
            items = await cursor.to_list(length=None)  # GridOut objects (PyMongo) or documents (motor)
            return [str(item["_id"] if isinstance(item, dict) else item._id) for item in items]

        return await self._on_bucket(op)

    # --- leases: one document per key (_id), taken with a conditional upsert

    async def acquire_lease(self, key: str, holder: str, expires_at: datetime, now: datetime,
                            data: dict | None = None) -> Lease:
        async def op(collection):
            try:
                # Matches only a free (expired) or own lease; when someone else holds it the
                # upsert's insert collides with their _id, which is the refusal.
                return await collection.find_one_and_update(
                    {"_id": key, "$or": [{"expires_at": {"$lte": now}}, {"holder": holder}]},
                    {"$set": {"holder": holder, "expires_at": expires_at, "data": data or {}}},
                    upsert=True, return_document=ReturnDocument.AFTER)
            except DuplicateKeyError:
                return await collection.find_one({"_id": key})

        doc = await self._call(op, LEASES_COLLECTION)
        if doc is None:  # released between the two calls: try once more
            doc = await self._call(op, LEASES_COLLECTION)
        return _lease(doc)

    async def read_lease(self, key: str, now: datetime) -> Lease | None:
        doc = await self._call(lambda c: c.find_one({"_id": key, "expires_at": {"$gt": now}}), LEASES_COLLECTION)
        return _lease(doc) if doc else None

    async def leases_with_prefix(self, prefix: str, now: datetime) -> list[Lease]:
        async def op(collection):
            cursor = collection.find({"_id": {"$gte": prefix, "$lt": prefix + "\uffff"}, "expires_at": {"$gt": now}})
            return await cursor.sort([("expires_at", ASCENDING), ("_id", ASCENDING)]).to_list(length=None)

        return [_lease(doc) for doc in await self._call(op, LEASES_COLLECTION)]

    async def release_lease(self, key: str, holder: str) -> bool:
        result = await self._call(lambda c: c.delete_one({"_id": key, "holder": holder}), LEASES_COLLECTION)
        return result.deleted_count > 0

    async def delete_expired_leases(self, now: datetime) -> int:
        result = await self._call(lambda c: c.delete_many({"expires_at": {"$lte": now}}), LEASES_COLLECTION)
        return result.deleted_count


def _lease(doc: dict[str, Any]) -> Lease:
    return Lease(key=doc["_id"], holder=doc["holder"], expires_at=_utc(doc["expires_at"]), data=dict(doc.get("data") or {}))


__all__ = ["MongoStore", "StoreUnavailable"]

