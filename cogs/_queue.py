"""Which run requests may join the queue (no Discord here, so it is easy to test).

There is one queue in a run's path: the engine's admission gate
(interpreter/sandbox/admission.py) decides which run executes next (light runs first,
members fairly, runs that turn out long moved aside). This module only bounds what a
member, and the whole bot, may have in progress, and refuses the rest at once with a
reason, before Discord's 3 s deadline:
- cooldown: a member may start a new request only every `cooldown_seconds`;
- per member: at most 1 + `per_member_queued` requests in progress (running or waiting);
- whole bot: at most `max_waiting` runs waiting; beyond that new ones are refused.
  Waiting is what the engine's queue reports (`queue_waiting`, which also counts runs
  that did not come through the bot), or, when it cannot tell (remote workers), the
  requests in progress beyond `capacity` (MAX_CONCURRENT_RUNS).

A request is in progress from `submit` until its Ticket is released (`async with`).
Where a request stands in the queue, the cog learns from the gate (`observe_queue`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable


class RunRefused(Exception):
    """A request was not accepted. The message is for the member."""


@dataclasses.dataclass
class QueueStats:
    in_progress: int
    started_total: int  # requests accepted
    refused_total: int
    capacity: int


class Ticket:
    """One member's request in progress. Always `release()` it (use `async with`)."""

    def __init__(self, scheduler: "RunScheduler", member_id: int) -> None:
        self.scheduler = scheduler
        self.member_id = member_id
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.scheduler._in_progress.remove(self)

    async def __aenter__(self) -> "Ticket":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


class RunScheduler:
    def __init__(
        self,
        capacity: int,
        per_member_queued: int,
        max_waiting: int,
        cooldown_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        queue_waiting: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.capacity = max(1, capacity)
        self.per_member_queued = per_member_queued
        self.max_waiting = max_waiting
        self.cooldown_seconds = cooldown_seconds
        self._clock = clock
        self._queue_waiting = queue_waiting
        self._in_progress: list[Ticket] = []
        self._last_submit: dict[int, float] = {}
        self._started_total = 0
        self._refused_total = 0
        self.closed_reason = ""  # set while the bot process drains: every new request is refused with it

    def submit(self, member_id: int, *, cooldown: bool = True) -> Ticket:
        """Accept a request of `member_id`, or raise RunRefused with a member-facing reason.

        `cooldown=False`: a later run of a request already admitted (an /ask question's
        second run), which the cooldown between requests does not apply to."""
        if self.closed_reason:
            self._refused_total += 1
            raise RunRefused(self.closed_reason)
        now = self._clock()
        last = self._last_submit.get(member_id)
        if cooldown and last is not None and self.cooldown_seconds > 0 and now - last < self.cooldown_seconds:
            wait = self.cooldown_seconds - (now - last)
            self._refused_total += 1
            raise RunRefused(f"Slow down a little: you can start another run in {wait:.0f} s." if wait >= 1
                             else "Slow down a little: you can start another run in a moment.")

        mine = sum(1 for t in self._in_progress if t.member_id == member_id)
        if mine >= 1 + self.per_member_queued:
            self._refused_total += 1
            if self.per_member_queued == 0:
                raise RunRefused("You already have a run in progress. Wait for it to finish, then try again.")
            raise RunRefused(
                f"You already have {mine} runs in progress or queued "
                f"(the limit is {1 + self.per_member_queued}). Wait for one to finish, then try again."
            )
        waiting = max(len(self._in_progress) - self.capacity, self._queue_waiting() or 0)
        would_wait = waiting > 0 or len(self._in_progress) >= self.capacity
        if would_wait and waiting >= self.max_waiting:
            self._refused_total += 1
            raise RunRefused(f"The interpreter is busy ({max(waiting, 0)} runs waiting). Please try again in a minute.")

        self._last_submit[member_id] = now
        ticket = Ticket(self, member_id)
        self._in_progress.append(ticket)
        self._started_total += 1
        return ticket

    def stats(self) -> QueueStats:
        return QueueStats(
            in_progress=len(self._in_progress),
            started_total=self._started_total,
            refused_total=self._refused_total,
            capacity=self.capacity,
        )
