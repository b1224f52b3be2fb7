"""A per-member daily allowance counted in the store, so it holds across restarts and
across every process sharing the database (several bot shards, a CLI).

Used by /ask (ASK_QUESTIONS_PER_DAY): each question takes one unit before the model is
asked; a question the endpoint never worked on (down, 429, key refused) gives it back.
Days are UTC days. When the database is down nothing is granted: a model costs money,
so the allowance fails closed (StoreUnavailable carries a message for the member).
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta

from interpreter.audit import Clock
from interpreter.clock import store_time, utc_now
from interpreter.store import FileStore

log = logging.getLogger(__name__)

DAY = timedelta(days=1)


@dataclasses.dataclass(frozen=True)
class Allowance:
    """The outcome of `take`: granted or not, how much is used, when it resets."""

    granted: bool
    used: int  # units used today, this one included when granted
    limit: int  # 0: unlimited
    resets_at: datetime
    key: str = ""

    @property
    def left(self) -> int | None:
        return None if not self.limit else max(0, self.limit - self.used)


class DailyBudget:
    def __init__(self, store: FileStore, name: str, limit: int, *, clock: Clock | None = None) -> None:
        self.store = store
        self.name = name
        self.limit = limit
        self.clock = clock or utc_now

    def _day(self) -> tuple[datetime, datetime]:
        now = store_time(self.clock)
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return now, start + DAY

    def _key(self, member_id: int, day_ends: datetime) -> str:
        return f"{self.name}:{member_id}:{(day_ends - DAY).date().isoformat()}"

    async def take(self, member_id: int) -> Allowance:
        """One unit for `member_id` today, if any is left (raises StoreUnavailable when the database is down)."""
        now, resets_at = self._day()
        key = self._key(member_id, resets_at)
        if not self.limit:
            return Allowance(True, 0, 0, resets_at, key)
        # The counter lives a day past its end, so a member's count is never read as expired early.
        used = await self.store.count_up_to(key, self.limit, now, resets_at + DAY)
        if used is None:
            return Allowance(False, self.limit, self.limit, resets_at, key)
        return Allowance(True, used, self.limit, resets_at, key)

    async def give_back(self, allowance: Allowance) -> None:
        """Return a granted unit (what it was for did not happen). Never raises."""
        if not allowance.granted or not allowance.limit:
            return
        try:
            await self.store.count_down(allowance.key, store_time(self.clock))
        except Exception:  # noqa: BLE001 - a lost refund costs the member one unit, nothing else
            log.warning("could not give back a %s unit (database unavailable?)", self.name)

    async def purge_expired(self) -> int:
        try:
            return await self.store.delete_expired_counters(store_time(self.clock))
        except Exception:  # noqa: BLE001 - the hourly sweep goes on
            log.warning("could not delete expired %s counters", self.name)
            return 0
