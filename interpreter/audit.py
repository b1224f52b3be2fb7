"""The run audit: one record per run in the metadata store, and what admins ask of it.

A record says who ran what where and how it ended (member, guild, channel, start,
duration, status, exit cause, packages requested, file ids used, names of the files
produced) and carries the SHA-256 of the code, never the code: admins can see that a
member ran the same snippet 200 times, or match a snippet someone reports, without
the bot keeping members' code. Records expire like files (FILE_EXPIRY_HOURS).

Every run has a run id (a uuid) from the moment it is admitted. Its record is written
twice under that id: at admission (status "running": who, where, when, the code's hash,
what it asked for), so a run in flight is visible and counts against the hourly limit
wherever the limit is read, and at its end, which completes the same record (an upsert
keyed on the run id: see FileStore.save_runs). A record still "running" long after any
run could have ended (`interrupted_after`) belongs to a process that died mid-run: readers
show it as "interrupted", never as running for ever.

Recording never fails or delays a run: records are written in the background, in run
order, by a single writer, in batches: it waits WRITE_LINGER_SECONDS for more records,
then writes every record waiting in one transaction, leaving out an admission whose end
is in the same batch (a run shorter than that costs one write, not two). When the database is down (or a write
takes longer than WRITE_TIMEOUT_SECONDS) the writer moves every waiting record to a
local spool file (interpreter/audit_spool.py) and stops trying for
OUTAGE_RETRY_SECONDS; records of runs meanwhile go straight to the spool. The spool is
replayed, in order, as soon as a write succeeds again. Memory is bounded: at most
MAX_PENDING records wait in memory, beyond that (or when the spool cannot be written)
records are dropped and counted, and /status shows all three numbers. Replaying is
idempotent (the upsert), so a record written just before the connection broke and
replayed afterwards is still one record. The audit logs
one line when an outage starts and one when it ends, not a line per run. Shutdown waits
at most SHUTDOWN_WAIT_SECONDS for the writer, then spools what is left.

Times come from `clock` (default: UTC now), so tests move time without sleeping.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from interpreter.audit_spool import AuditSpool
from interpreter.clock import expiry_after, store_time, utc_now
from interpreter.run_ids import new_run_id
from interpreter.store import RUN_INTERRUPTED, RUN_REFUSED, RUN_RUNNING, FileStore, RunRecord, StoreUnavailable

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

STATUS_WINDOW = timedelta(hours=24)  # the span /status counts failure causes over
STATUS_RECENT_RUNS = 5
MAX_LISTED_ITEMS = 50  # packages or files kept per record: an audit, not a copy of the request
MAX_ITEM_CHARS = 200
MAX_PENDING = 1_000  # records waiting in memory for the writer
WRITE_BATCH = 200  # records written in one round trip (one transaction)
WRITE_LINGER_SECONDS = 0.05  # the writer waits this long for more records before a write that is not full
INTERRUPTED_MARGIN = timedelta(minutes=5)  # beyond the longest a run can take, before it counts as interrupted
WRITE_TIMEOUT_SECONDS = 10.0  # one insert longer than this counts as an outage
OUTAGE_RETRY_SECONDS = 30.0  # after a failed write, records go to the spool this long before the next try
READ_WAIT_SECONDS = 2.0  # readers wait this long at most for waiting records to be written
SHUTDOWN_WAIT_SECONDS = 3.0


def code_sha256(code: Any) -> str:
    """Hex SHA-256 of the code's UTF-8 bytes (lone surrogates kept, so any str hashes)."""
    text = code if isinstance(code, str) else ""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _names(items: Iterable[Any] | None) -> tuple[str, ...]:
    """Request items as short strings: whatever a caller passed, the record stays small."""
    if items is None or isinstance(items, (str, bytes)):
        return ()
    try:
        listed = list(items)
    except TypeError:
        return ()
    return tuple(str(item)[:MAX_ITEM_CHARS] for item in listed[:MAX_LISTED_ITEMS])


def _snowflake(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def interrupted_after(settings: Any) -> timedelta:
    """How long after its admission a run must have ended: waiting its turn behind a full
    queue (each run ahead taking the longest timeout), installing packages, running, and a
    margin. A record still "running" after that was left by a process that died."""
    slots = max(1, settings.max_concurrent_runs)
    waiting = math.ceil(settings.run_queue_max / slots) * settings.max_run_timeout
    return timedelta(seconds=waiting + settings.install_timeout + settings.max_run_timeout) + INTERRUPTED_MARGIN


def coalesce(records: Sequence[RunRecord]) -> list[RunRecord]:
    """`records` without the admissions whose run's end is among them: the end says it all."""
    ended = {record.run_id for record in records if record.run_id is not None and not record.running}
    return [record for record in records if not (record.running and record.run_id in ended)]


def run_status(result: dict) -> tuple[str, str]:
    """(status, exit cause) of a result dict: refused runs carry no exit cause."""
    cause = result.get("exit_cause")
    if not cause:
        return RUN_REFUSED, RUN_REFUSED
    return ("ok" if result.get("success") else "failed"), str(cause)


def public_run(record: RunRecord, interrupted_before: datetime | None = None) -> dict:
    """A record as status, admins and the API see it: plain types, ISO times. A run still
    "running" that started before `interrupted_before` shows as "interrupted"."""
    status = record.status
    if record.running and interrupted_before is not None and record.started_at < interrupted_before:
        status = RUN_INTERRUPTED
    return {
        "run_id": record.run_id,
        "user_id": record.user_id,
        "guild_id": record.guild_id,
        "channel_id": record.channel_id,
        "started_at": record.started_at.isoformat() if record.started_at else None,
        "duration_seconds": record.duration_seconds,
        "success": record.success,
        "status": status,
        "exit_cause": status if status in (RUN_RUNNING, RUN_INTERRUPTED) else record.exit_cause,
        "packages": list(record.packages),
        "files_used": list(record.files_used),
        "files_produced": list(record.files_produced),
        "code_sha256": record.code_sha256,
        "expires_at": record.expires_at.isoformat() if record.expires_at else None,
    }


class RunAudit:
    def __init__(self, settings: Any, store: FileStore, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock or utc_now
        self._pending: collections.deque[RunRecord] = collections.deque()
        self._writer: asyncio.Task | None = None
        self._retry_at = 0.0  # time.monotonic(); until then the database is taken to be down
        self._retry_timer: asyncio.TimerHandle | None = None
        self._in_outage = False
        self._spool: AuditSpool | None = None
        self.dropped = 0  # records lost for good (memory bound, spool bound, spool unwritable)

    def now(self) -> datetime:
        return store_time(self.clock)

    def _expiry(self, start: datetime) -> datetime | None:
        return expiry_after(start, self.settings.file_expiry_hours)

    def interrupted_before(self, now: datetime) -> datetime:
        """Runs admitted before this moment and still "running" were interrupted."""
        return now - interrupted_after(self.settings)

    @property
    def spool(self) -> AuditSpool:
        if self._spool is None:
            self._spool = AuditSpool(self.settings.data_dir / f"audit-spool-{self.store.namespace}.jsonl")
        return self._spool

    def store_known_down(self) -> bool:
        """True while the last write failed and its retry is not due: asking the store now would only wait."""
        return time.monotonic() < self._retry_at

    # --- writing

    def build_record(self, result: dict, *, user_id: int, code: Any, started_at: datetime, duration_seconds: float,
                     guild_id: int | None = None, channel_id: int | None = None,
                     packages: Sequence[str] | None = None, files: Sequence[str] | None = None,
                     run_id: str | None = None) -> RunRecord:
        """The record of a run that ended with `result` (a result dict). Give the `run_id` its
        admission record had, so this one completes it; without one a new id is made."""
        status, cause = run_status(result)
        produced = [item.get("filename") for item in result.get("generated_files") or () if isinstance(item, dict)]
        return RunRecord(
            user_id=user_id, guild_id=_snowflake(guild_id), channel_id=_snowflake(channel_id),
            started_at=started_at, duration_seconds=round(max(0.0, float(duration_seconds)), 3),
            success=bool(result.get("success")), status=status, exit_cause=cause,
            packages=_names(packages), files_used=_names(files), files_produced=_names(produced),
            code_sha256=code_sha256(code), expires_at=self._expiry(started_at), run_id=run_id or new_run_id(),
        )

    def admission_record(self, *, run_id: str, user_id: int, code: Any, started_at: datetime,
                         guild_id: int | None = None, channel_id: int | None = None,
                         packages: Sequence[str] | None = None, files: Sequence[str] | None = None) -> RunRecord:
        """The record of a run admitted and not ended: its end (build_record with this
        `run_id`) completes it."""
        return dataclasses.replace(
            self.build_record({"exit_cause": RUN_RUNNING}, user_id=user_id, code=code, started_at=started_at,
                              duration_seconds=0.0, guild_id=guild_id, channel_id=channel_id,
                              packages=packages, files=files, run_id=run_id),
            status=RUN_RUNNING)

    def record_later(self, record: RunRecord) -> None:
        """Store one run in the background, so a slow or unreachable database never
        delays the member's result. Readers below wait (a little) for these writes first."""
        if len(self._pending) >= MAX_PENDING:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("run audit: %d records waiting; dropping new ones (%d so far)", MAX_PENDING, self.dropped)
            return
        self._pending.append(record)
        self._wake()

    def _wake(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        """The single writer: the spool first (it holds older runs), then waiting records, in
        order; but waiting records first once half of MAX_PENDING of them have piled up."""
        while self._pending or await self._spooled():
            if self.store_known_down():
                await self._spool_pending()
                return
            if await self._spooled() and len(self._pending) < MAX_PENDING // 2:
                written = await self._replay()
            else:
                if len(self._pending) < WRITE_BATCH:
                    # Let a few more records join this transaction: the runs starting and
                    # ending meanwhile (a tiny run's admission and end become one write).
                    await asyncio.sleep(WRITE_LINGER_SECONDS)
                batch = [self._pending[index] for index in range(min(WRITE_BATCH, len(self._pending)))]
                written = await self._write(batch)
                if written:
                    for _ in batch:
                        self._pending.popleft()
            if not written:
                self._retry_at = time.monotonic() + OUTAGE_RETRY_SECONDS
                self._retry_timer = asyncio.get_running_loop().call_later(OUTAGE_RETRY_SECONDS, self._wake)
                await self._spool_pending()
                return

    async def _spooled(self) -> int:
        spool = self.spool
        return spool.count if spool.count_known else await asyncio.to_thread(lambda: spool.count)

    async def _spool_pending(self) -> None:
        records = list(self._pending)
        self._pending.clear()
        if records:
            _kept, dropped = await asyncio.to_thread(self.spool.append, records)
            self.dropped += dropped

    async def _replay(self) -> bool:
        records, unreadable = await asyncio.to_thread(self.spool.read)
        self.dropped += unreadable
        records = coalesce(records)  # an outage's admissions whose end was spooled too
        for index in range(0, len(records), WRITE_BATCH):
            if len(self._pending) >= MAX_PENDING // 2:
                # Runs went on during a long replay: write theirs first rather than drop them
                # at MAX_PENDING (readers sort by start time, so the order of writes does not show).
                await asyncio.to_thread(self.spool.replace, records[index:])
                return True
            if not await self._write(records[index:index + WRITE_BATCH]):
                await asyncio.to_thread(self.spool.replace, records[index:])
                return False
        await asyncio.to_thread(self.spool.replace, [])
        return True

    async def _write(self, records: Sequence[RunRecord]) -> bool:
        """One batch, in one bounded round trip. Never raises: a failure is logged once per outage."""
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_SECONDS):
                await self.store.save_runs(coalesce(records))
        except Exception as exc:  # noqa: BLE001 - an audit problem must never become a run failure
            if not self._in_outage:
                self._in_outage = True
                reason = ("database unavailable" if isinstance(exc, (StoreUnavailable, TimeoutError))
                          else type(exc).__name__)
                log.warning("run audit: could not record runs (%s); keeping them on disk until it is back",
                            reason, exc_info=not isinstance(exc, (StoreUnavailable, TimeoutError)))
            return False
        if self._in_outage:
            self._in_outage = False
            log.warning("run audit: recording again; writing the runs kept on disk meanwhile")
        return True

    async def record(self, record: RunRecord) -> bool:
        """Store one run now. Never raises: False when it could not be written."""
        return await self._write((record,))

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until the writer is idle: every waiting record written or spooled. False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._writer is not None and not self._writer.done():
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = await asyncio.wait([self._writer], timeout=remaining)
            if not done:
                return False
        return True

    async def close(self) -> None:
        """Shutdown: a bounded wait for the writer, then what is still waiting goes to the spool."""
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        if not await self.flush(SHUTDOWN_WAIT_SECONDS) and self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        await self._spool_pending()

    def backlog(self) -> dict[str, int]:
        """Records not in the database yet, for /status."""
        return {"waiting": len(self._pending), "on_disk": self._spool.count if self._spool else 0,
                "dropped": self.dropped}

    # --- reading (these raise StoreUnavailable when the database is down)

    async def recent(self, limit: int = 10, user_id: int | None = None, guild_id: int | None = None) -> list[dict]:
        """Unexpired runs, newest first: everyone's, or one member's, or those asked for in one guild."""
        await self.flush(READ_WAIT_SECONDS)  # what was just run counts
        limit = max(1, min(int(limit), 100))
        now = self.now()
        records = await self.store.recent_runs(now, limit, user_id, guild_id)
        return [public_run(record, self.interrupted_before(now)) for record in records]

    async def start_times(self, user_id: int, since: datetime) -> list[datetime]:
        """Start times of the member's runs admitted from `since` on (running, interrupted or
        ended, but not refused), oldest first.

        No wait for waiting records: the run limit counts them in its own memory window."""
        return await self.store.run_start_times(user_id, since, self.now())

    async def cause_counts(self, window: timedelta = STATUS_WINDOW) -> dict[str, int]:
        """Runs in the window by exit cause; runs in flight under "running", runs whose
        process died under "interrupted"."""
        await self.flush(READ_WAIT_SECONDS)  # what was just run counts
        now = self.now()
        return await self.store.run_cause_counts(now - window, now, self.interrupted_before(now))

    async def purge_expired(self) -> int:
        """Delete expired records (the hourly sweep; MongoDB's TTL does it too, lazily). Never raises."""
        self._wake()  # also a chance to replay the spool
        await self.flush(READ_WAIT_SECONDS)
        try:
            removed = await self.store.delete_expired_runs(self.now())
        except StoreUnavailable:
            return 0  # the store logged the outage; the next sweep retries
        except Exception:  # noqa: BLE001 - the file sweep that follows must still run
            log.exception("run audit: expiry sweep failed; will retry next hour")
            return 0
        if removed:
            log.info("run audit: removed %d expired run records", removed)
        return removed

    async def summary(self) -> dict:
        """What /status shows of the audit. Never raises: an outage shows as an error field."""
        try:
            recent = await self.recent(STATUS_RECENT_RUNS)
            counts = await self.cause_counts()
        except StoreUnavailable as exc:
            return {"recent_runs": None, "failure_causes": None, "runs_last_24h": None, "runs_in_flight": None,
                    "run_audit_error": str(exc), "run_audit_backlog": self.backlog()}
        running = counts.pop(RUN_RUNNING, 0)
        failures = {cause: count for cause, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                    if cause != "ok"}
        return {"recent_runs": recent, "failure_causes": failures, "runs_last_24h": sum(counts.values()) + running,
                "runs_in_flight": running, "run_audit_backlog": self.backlog()}
