"""Fair scheduling of runs between members (no Discord here, so it is easy to test).

Rules, in the order a request meets them:
- cooldown: a member may start a new request only every `cooldown_seconds`;
- per member: one run executing and at most `per_member_queued` more waiting;
- whole bot: at most `max_waiting` requests waiting; beyond that new ones are refused;
- `capacity` runs execute at once; waiting requests start in arrival order, except
  that a member never has two runs executing, so one member's backlog cannot hold
  up everyone else (their later request is skipped over until their first ends).

The engine keeps its own semaphore (MAX_CONCURRENT_RUNS); this scheduler uses the
same capacity so members see an honest queue position instead of a silent wait.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Callable


class RunRefused(Exception):
    """A request was not queued. The message is for the member."""


@dataclasses.dataclass
class QueueStats:
    running: int
    waiting: int
    started_total: int
    refused_total: int
    capacity: int


class Ticket:
    """One member's place in the scheduler. Always `release()` it (use `async with`)."""

    def __init__(self, scheduler: "RunScheduler", member_id: int, number: int) -> None:
        self.scheduler = scheduler
        self.member_id = member_id
        self.number = number
        self._started = asyncio.Event()
        self._released = False

    @property
    def started(self) -> bool:
        return self._started.is_set()

    @property
    def position(self) -> int:
        """1-based place among waiting requests; 0 once started."""
        return self.scheduler.position_of(self)

    async def wait_until_started(self) -> None:
        await self._started.wait()

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.scheduler._release(self)

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
    ) -> None:
        self.capacity = max(1, capacity)
        self.per_member_queued = per_member_queued
        self.max_waiting = max_waiting
        self.cooldown_seconds = cooldown_seconds
        self._clock = clock
        self._waiting: list[Ticket] = []
        self._running: list[Ticket] = []
        self._last_submit: dict[int, float] = {}
        self._numbers = itertools.count(1)
        self._started_total = 0
        self._refused_total = 0

    def submit(self, member_id: int, *, cooldown: bool = True) -> Ticket:
        """Queue a request for `member_id` or raise RunRefused with a member-facing reason.

        `cooldown=False`: a later run of a request already admitted (an /ask question's
        second run), which the cooldown between requests does not apply to."""
        now = self._clock()
        last = self._last_submit.get(member_id)
        if cooldown and last is not None and self.cooldown_seconds > 0 and now - last < self.cooldown_seconds:
            wait = self.cooldown_seconds - (now - last)
            self._refused_total += 1
            raise RunRefused(f"Slow down a little: you can start another run in {wait:.0f} s." if wait >= 1
                             else "Slow down a little: you can start another run in a moment.")

        mine_running = sum(1 for t in self._running if t.member_id == member_id)
        mine_waiting = sum(1 for t in self._waiting if t.member_id == member_id)
        if mine_running + mine_waiting >= 1 + self.per_member_queued:
            self._refused_total += 1
            if self.per_member_queued == 0:
                raise RunRefused("You already have a run in progress. Wait for it to finish, then try again.")
            raise RunRefused(
                f"You already have {mine_running + mine_waiting} runs in progress or queued "
                f"(the limit is {1 + self.per_member_queued}). Wait for one to finish, then try again."
            )
        if len(self._waiting) >= self.max_waiting and not self._can_start_now(member_id):
            self._refused_total += 1
            raise RunRefused(
                f"The interpreter is busy ({len(self._waiting)} runs waiting). Please try again in a minute."
            )

        self._last_submit[member_id] = now
        ticket = Ticket(self, member_id, next(self._numbers))
        self._waiting.append(ticket)
        self._pump()
        return ticket

    def position_of(self, ticket: Ticket) -> int:
        try:
            return self._waiting.index(ticket) + 1
        except ValueError:
            return 0

    def stats(self) -> QueueStats:
        return QueueStats(
            running=len(self._running),
            waiting=len(self._waiting),
            started_total=self._started_total,
            refused_total=self._refused_total,
            capacity=self.capacity,
        )

    # --- internals

    def _can_start_now(self, member_id: int) -> bool:
        return (not self._waiting and len(self._running) < self.capacity
                and all(t.member_id != member_id for t in self._running))

    def _release(self, ticket: Ticket) -> None:
        if ticket in self._running:
            self._running.remove(ticket)
        elif ticket in self._waiting:  # cancelled while waiting
            self._waiting.remove(ticket)
        self._pump()

    def _pump(self) -> None:
        """Start waiting tickets, in arrival order, while there is capacity."""
        busy_members = {t.member_id for t in self._running}
        for ticket in list(self._waiting):
            if len(self._running) >= self.capacity:
                break
            if ticket.member_id in busy_members:
                continue
            self._waiting.remove(ticket)
            self._running.append(ticket)
            busy_members.add(ticket.member_id)
            self._started_total += 1
            ticket._started.set()
