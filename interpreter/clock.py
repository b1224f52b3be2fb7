"""Time as the stores keep it: aware UTC datetimes at millisecond precision (as BSON does),
and the one rule for when something stored expires."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def store_time(clock: Clock) -> datetime:
    """`clock()` as aware UTC, cut to milliseconds so results and the database agree."""
    now = clock()
    now = now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now.astimezone(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def expiry_after(start: datetime, hours: float) -> datetime | None:
    """When something stored at `start` expires; None (never) when `hours` is 0."""
    return None if not hours else start + timedelta(hours=hours)
