"""The run audit: one record per run in the metadata store, and what admins ask of it.

A record says who ran what where and how it ended (member, guild, channel, start,
duration, status, exit cause, packages requested, file ids used, names of the files
produced) and carries the SHA-256 of the code, never the code: admins can see that a
member ran the same snippet 200 times, or match a snippet someone reports, without
the bot keeping members' code. Records expire like files (FILE_EXPIRY_HOURS).

Recording never fails a run: when the database is down the run's result still goes
back, and the audit logs one line when it starts losing records and one when it can
record again (with how many were lost), not a line per run.

Times come from `clock` (default: UTC now), so tests move time without sleeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from interpreter.clock import expiry_after, store_time, utc_now
from interpreter.store import RUN_REFUSED, FileStore, RunRecord, StoreUnavailable

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

STATUS_WINDOW = timedelta(hours=24)  # the span /status counts failure causes over
STATUS_RECENT_RUNS = 5
MAX_LISTED_ITEMS = 50  # packages or files kept per record: an audit, not a copy of the request
MAX_ITEM_CHARS = 200



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


def run_status(result: dict) -> tuple[str, str]:
    """(status, exit cause) of a result dict: refused runs carry no exit cause."""
    cause = result.get("exit_cause")
    if not cause:
        return RUN_REFUSED, RUN_REFUSED
    return ("ok" if result.get("success") else "failed"), str(cause)


def public_run(record: RunRecord) -> dict:
    """A record as status, admins and the API see it: plain types, ISO times."""
    return {
        "user_id": record.user_id,
        "guild_id": record.guild_id,
        "channel_id": record.channel_id,
        "started_at": record.started_at.isoformat() if record.started_at else None,
        "duration_seconds": record.duration_seconds,
        "success": record.success,
        "status": record.status,
        "exit_cause": record.exit_cause,
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
        self._lost = 0  # records not written during the current outage
        # The newest write started by record_later(); each write waits for the one before
        # it, so when this one is done, all are.
        self._last_write: asyncio.Task | None = None

    def now(self) -> datetime:
        return store_time(self.clock)

    def _expiry(self, start: datetime) -> datetime | None:
        return expiry_after(start, self.settings.file_expiry_hours)

    # --- writing

    def build_record(self, result: dict, *, user_id: int, code: Any, started_at: datetime, duration_seconds: float,
                     guild_id: int | None = None, channel_id: int | None = None,
                     packages: Sequence[str] | None = None, files: Sequence[str] | None = None) -> RunRecord:
        status, cause = run_status(result)
        produced = [item.get("filename") for item in result.get("generated_files") or () if isinstance(item, dict)]
        return RunRecord(
            user_id=user_id, guild_id=_snowflake(guild_id), channel_id=_snowflake(channel_id),
            started_at=started_at, duration_seconds=round(max(0.0, float(duration_seconds)), 3),
            success=bool(result.get("success")), status=status, exit_cause=cause,
            packages=_names(packages), files_used=_names(files), files_produced=_names(produced),
            code_sha256=code_sha256(code), expires_at=self._expiry(started_at),
        )

    def record_later(self, record: RunRecord) -> None:
        """Store one run in the background, so a slow or unreachable database never
        delays the member's result. Readers below wait for these writes first."""
        self._last_write = asyncio.get_running_loop().create_task(self._record_after(self._last_write, record))

    async def _record_after(self, previous: asyncio.Task | None, record: RunRecord) -> None:
        # Writes go one after another, in run order: records that start in the same
        # millisecond still list newest first, and an outage loses them in order too.
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        await self.record(record)

    async def flush(self) -> None:
        """Wait until every record started with record_later() is written (or lost)."""
        while self._last_write is not None and not self._last_write.done():
            await asyncio.wait([self._last_write])  # a write started meanwhile is the new last one

    async def record(self, record: RunRecord) -> bool:
        """Store one run. Never raises: a lost record is logged, the run is not affected."""
        try:
            await self.store.insert_run(record)
        except Exception as exc:  # noqa: BLE001 - an audit problem must never become a run failure
            self._lost += 1
            if self._lost == 1:
                reason = "database unavailable" if isinstance(exc, StoreUnavailable) else type(exc).__name__
                log.warning("run audit: could not record runs (%s); runs go on unrecorded until it is back",
                            reason, exc_info=not isinstance(exc, StoreUnavailable))
            return False
        if self._lost:
            log.warning("run audit: recording again; %d runs were not recorded", self._lost)
            self._lost = 0
        return True

    # --- reading (these raise StoreUnavailable when the database is down)

    async def recent(self, limit: int = 10, user_id: int | None = None, guild_id: int | None = None) -> list[dict]:
        """Unexpired runs, newest first: everyone's, or one member's, or those asked for in one guild."""
        await self.flush()  # what was just run counts
        limit = max(1, min(int(limit), 100))
        records = await self.store.recent_runs(self.now(), limit, user_id, guild_id)
        return [public_run(record) for record in records]

    async def start_times(self, user_id: int, since: datetime) -> list[datetime]:
        """Start times of the member's runs that reached the sandbox, from `since` on, oldest first."""
        await self.flush()  # what was just run counts
        return await self.store.run_start_times(user_id, since, self.now())

    async def cause_counts(self, window: timedelta = STATUS_WINDOW) -> dict[str, int]:
        await self.flush()  # what was just run counts
        now = self.now()
        return await self.store.run_cause_counts(now - window, now)

    async def purge_expired(self) -> int:
        """Delete expired records (the hourly sweep; MongoDB's TTL does it too, lazily). Never raises."""
        await self.flush()  # what was just run counts
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
            return {"recent_runs": None, "failure_causes": None, "runs_last_24h": None, "run_audit_error": str(exc)}
        failures = {cause: count for cause, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                    if cause != "ok"}
        return {"recent_runs": recent, "failure_causes": failures, "runs_last_24h": sum(counts.values())}
