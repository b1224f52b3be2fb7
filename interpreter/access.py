"""Who may start a run, where, and how often: the abuse limits admins set.

Plain Python on ids (no Discord here), so every rule is testable on its own; the
bot's cogs turn a Denial into a message (cogs/_access.py).

Rules, in the order a request meets them:
- DENIED_MEMBER_IDS / DENIED_ROLE_IDS: these members may not run code at all;
- RUN_CHANNEL_IDS: when set, runs start only in those channels (a thread counts as
  its parent channel, a channel as its category: ids listed in `RunContext.channel_ids`);
- RUNS_PER_MEMBER_PER_HOUR: at most that many runs in any sliding hour (0: no limit).

How the hourly limit counts: from the run audit in the store, combined with an
in-memory sliding window of the runs this process admitted. The store makes the
limit survive a restart (a member cannot reset it by waiting for one) and apply
across processes sharing the database; it is also exactly what admins see in /runs.
The audit records a run when the engine takes it (status "running", under its run id)
and completes that same record when it ends, so runs in flight count, once each, and a
run whose process died still counts (as "interrupted"). The memory window covers the
moment between admission and that first write (records are written in the background)
and keeps the limit working while the database is down. The count is the larger of
the two, never their sum. Refused requests (bad file id, package refused) do not count:
their record ends as "refused".

Across processes (several bot processes on one database), each admission is also a
lease in the store (`admission:<member>:<id>`, expiring after the hour): an admission
takes its lease first, then counts the member's leases, and keeps its place only if it
is among the first RUNS_PER_MEMBER_PER_HOUR (ordered by time, then id, which every
process sees alike). One member's admissions are decided one at a time, in every process,
under a short lock lease (`admitting:<member>`): ordering by time alone let a request
whose earlier place was written after a later request had counted be granted too, so a
burst went over the limit. With the lock, a burst of any size through any number of
processes gets exactly the limit. Within one process, requests for a lease queue on an
in-process lock of that key first (keyed_locks.py, dropped when unused), so only one of
them at a time asks the store, and the store is polled only while another process holds
the lease; the lock is let go once the store lease is given back. The cooldown (RUN_COOLDOWN_SECONDS) is a lease too (`cooldown:<member>`),
so a member cannot dodge it by landing on another process; and a run holds
`running:<member>` while it executes (`Admission.running()`), so one member's runs
execute one at a time across processes as they do within one.

When the run history cannot be read (the database is down, or does not answer within
STORE_CHECK_SECONDS), the limit is NOT a reason to stop runs that need no database:
it counts this process's memory window alone, and the Admission carries a note for
the member saying so (`UNCOUNTED_NOTE`). While the audit knows the database is down,
the history is not even asked for, so no member waits for it. `check(use_store=False)`
never touches the store (for answers that must come before Discord's 3 s deadline).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import logging
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from interpreter.audit import RunAudit
from interpreter.keyed_locks import KeyedLocks
from interpreter.store import StoreUnavailable

log = logging.getLogger(__name__)

RATE_WINDOW = timedelta(hours=1)
STORE_CHECK_SECONDS = 2.0
RUN_LEASE_MARGIN = timedelta(seconds=60)  # past the longest run: queueing and answering
# One member's admissions are decided one at a time across processes (`admitting:<member>`):
# the lock expires by itself after this (a process that died holding it), and an admission
# waits for it at most ADMITTING_WAIT_SECONDS, polling every ADMITTING_POLL_SECONDS while
# another process holds it (requests of this process queue on an in-process lock instead).
ADMITTING_HOLD = timedelta(seconds=10)
ADMITTING_WAIT_SECONDS = 12.0
ADMITTING_POLL_SECONDS = 0.02
RUN_LEASE_POLL_SECONDS = 0.25
UNCOUNTED_NOTE = ("The run history can't be read right now, so your hourly run limit only counts "
                  "the runs since the bot last started.")
_PRUNE_ALL_ABOVE = 1000  # members remembered before stale windows of absent members are dropped


@dataclasses.dataclass(frozen=True)
class RunContext:
    """Who asks for a run and where. Ids as the chat platform gives them."""

    member_id: int
    guild_id: int | None = None
    channel_ids: tuple[int, ...] = ()  # the channel first, then what contains it (thread parent, category)
    role_ids: frozenset[int] = frozenset()


class DenialReason(enum.Enum):
    MEMBER = "member"  # the member is on DENIED_MEMBER_IDS
    ROLE = "role"  # the member has a role on DENIED_ROLE_IDS
    CHANNEL = "channel"  # not one of RUN_CHANNEL_IDS
    RATE = "rate"  # RUNS_PER_MEMBER_PER_HOUR used up
    COOLDOWN = "cooldown"  # RUN_COOLDOWN_SECONDS since the member's last run have not passed


@dataclasses.dataclass(frozen=True)
class Denial:
    """Why a run may not start; the front end words it (it knows how to show channels and times)."""

    reason: DenialReason
    allowed_channel_ids: tuple[int, ...] = ()  # CHANNEL: where runs work
    limit: int = 0  # RATE: the hourly limit
    retry_at: datetime | None = None  # RATE, COOLDOWN: when the next run will be allowed

    def describe(self) -> str:
        """Plain-text wording, for logs and front ends without markup."""
        if self.reason in (DenialReason.MEMBER, DenialReason.ROLE):
            return "You're not allowed to run code on this server"
        if self.reason is DenialReason.CHANNEL:
            return "Code can't be run in this channel"
        if self.reason is DenialReason.COOLDOWN:
            return "Slow down a little: you can start another run in a moment."
        when = self.retry_at.isoformat(timespec="seconds") if self.retry_at else "later"
        return f"You've used your {self.limit} runs for this hour; next one available at {when}"


class Admission:
    """A run counted against the member's hourly limit. `cancel()` it if the run never starts.

    `note`: something the member should know about how the run was admitted (UNCOUNTED_NOTE)."""

    def __init__(self, access: "RunAccess | None" = None, member_id: int = 0, at: datetime | None = None,
                 note: str | None = None, leases: tuple[tuple[str, str], ...] = ()) -> None:
        self._access = access
        self._member_id = member_id
        self._at = at
        self._leases = leases  # (key, holder) of the store leases it holds: its place in the hour, the cooldown
        self._runner = access  # for running(), also after cancel()
        self.note = note

    @contextlib.asynccontextmanager
    async def running(self):
        """Hold the member's run lease while the run executes: a run of the same member in
        another process (another shard) waits for it, as two runs in one process do."""
        access = self._runner
        if access is None:
            yield
            return
        async with access._run_lease(self._member_id):
            yield

    def cancel(self) -> None:
        access, self._access = self._access, None
        if access is None:
            return
        if self._at is not None:
            access._forget(self._member_id, self._at)
        if self._leases:
            access._release_later(self._leases)


class RunAccess:
    def __init__(self, settings: Any, audit: RunAudit) -> None:
        self.settings = settings
        self.audit = audit
        self._admitted: dict[int, collections.deque[datetime]] = {}  # member -> admission times, oldest first
        self._releasing: set[asyncio.Task] = set()
        self._local_leases = KeyedLocks()  # this process's requests for one lease queue here, not by polling the store

    # --- the rules

    def check_identity(self, context: RunContext) -> Denial | None:
        """Member, role and channel rules (no I/O)."""
        if context.member_id in self.settings.denied_member_ids:
            return Denial(DenialReason.MEMBER)
        if context.role_ids & set(self.settings.denied_role_ids):
            return Denial(DenialReason.ROLE)
        allowed = self.settings.run_channel_ids
        if allowed and not set(context.channel_ids) & set(allowed):
            return Denial(DenialReason.CHANNEL, allowed_channel_ids=tuple(allowed))
        return None

    async def check(self, context: RunContext, *, use_store: bool = True) -> Denial | None:
        """Every rule, without counting a run (e.g. before showing a code box). Without
        `use_store` the hourly limit counts this process's memory window only (no I/O)."""
        denial = self.check_identity(context)  # the cooldown counts from starting runs: admit() alone
        if denial is None and self.settings.runs_per_member_per_hour:
            denial, _ = await self._rate_denial(context.member_id, self.audit.now(), reserved=False,
                                                use_store=use_store)
        return denial

    async def admit(self, context: RunContext, *, cooldown: bool = True) -> Admission | Denial:
        """Every rule; when they pass, the run counts against the hourly limit from now on.

        `cooldown=False`: a later run of one request already admitted (the second run of an
        /ask question), which the cooldown between requests does not apply to."""
        denial = self.check_identity(context)
        if denial is not None:
            return denial
        now = self.audit.now()
        token = uuid.uuid4().hex
        leases: tuple[tuple[str, str], ...] = ()
        if cooldown and self.settings.run_cooldown_seconds:
            denial = await self._cooldown_denial(context.member_id, now, take=token)
            if denial is not None:
                return denial
            leases = ((_cooldown_key(context.member_id), token),)
        if not self.settings.runs_per_member_per_hour:
            return Admission(self, context.member_id, None, leases=leases)
        if len(self._admitted) > _PRUNE_ALL_ABOVE:
            for member_id in list(self._admitted):
                self._remembered(member_id, now)
        # Reserve before asking the store, so a second request of the same member that
        # arrives meanwhile already sees this one.
        self._admitted.setdefault(context.member_id, collections.deque()).append(now)
        # Counting the member's hour and taking a place in it is one step for every process:
        # without the lock, a request that read the places before another's place was
        # written (or whose earlier place was written after a later one's count) could
        # both be granted, and a burst of one member's requests went over the limit.
        async with self._admitting(context.member_id, token):
            denial, counted = await self._rate_denial(context.member_id, now, reserved=True)
            if denial is None and counted:
                # Places order by time, then by key (the wall clock in ns), both taken under the
                # lock: admissions are decided one at a time, so a later one never overtakes
                # one already granted.
                place = _admission_key(context.member_id, f"{time.time_ns():020d}-{token}")
                denial, counted = await self._take_place(context.member_id, place, self.audit.now())
                if denial is None and counted:
                    leases += ((place, place),)
        if denial is not None:
            self._forget(context.member_id, now)
            self._release_later(leases)
            return denial
        return Admission(self, context.member_id, now, note=None if counted else UNCOUNTED_NOTE, leases=leases)

    # --- the leases in the store, shared by every process

    async def _in_store(self, operation):
        """`operation()` on the store, or None when it cannot answer now (down, slow, broken)."""
        if self.audit.store_known_down():
            return None
        try:
            async with asyncio.timeout(STORE_CHECK_SECONDS):
                return await operation()
        except (StoreUnavailable, TimeoutError):
            return None
        except Exception:  # noqa: BLE001 - a broken store must not stop every run
            log.exception("run limits: the store failed; counting this process's runs only")
            return None

    def _admitting(self, member_id: int, token: str) -> contextlib.AbstractAsyncContextManager[bool]:
        """Hold `admitting:<member>` (in every process sharing the store) while one admission of
        the member is decided. Without an answer from the store, or after waiting
        ADMITTING_WAIT_SECONDS, the admission goes ahead unlocked (the limit then counts
        this process's runs, as whenever the store cannot answer)."""
        return self._lease(_admitting_key(member_id), token, ADMITTING_HOLD, ADMITTING_WAIT_SECONDS,
                           ADMITTING_POLL_SECONDS, f"member {member_id}: another admission held the admission "
                           "lock too long; going ahead")

    async def _cooldown_denial(self, member_id: int, now: datetime, *, take: str) -> Denial | None:
        """Start the member's cooldown (a lease held by `take`) unless another run started it."""
        store = self.audit.store
        until = now + timedelta(seconds=self.settings.run_cooldown_seconds)
        lease = await self._in_store(lambda: store.acquire_lease(_cooldown_key(member_id), take, until, now))
        if lease is None or lease.holder == take:
            return None
        return Denial(DenialReason.COOLDOWN, retry_at=lease.expires_at)

    async def _take_place(self, member_id: int, place: str, now: datetime) -> tuple[Denial | None, bool]:
        """Take a place in the member's hour in the store; keep it only if it is among the
        first `limit` places (every process orders them alike). (denial or None, counted)."""
        store = self.audit.store
        limit = self.settings.runs_per_member_per_hour

        async def take() -> list:
            await store.acquire_lease(place, place, now + RATE_WINDOW, now)
            return await store.leases_with_prefix(_admission_key(member_id, ""), now)

        places = await self._in_store(take)
        if places is None:
            self._release_later(((place, place),))
            return None, False
        ordered = sorted(places, key=lambda lease: (lease.expires_at, lease.key))
        keys = [lease.key for lease in ordered]
        if place in keys and keys.index(place) < limit:
            return None, True
        self._release_later(((place, place),))
        return Denial(DenialReason.RATE, limit=limit, retry_at=ordered[0].expires_at), True

    def _run_lease(self, member_id: int) -> contextlib.AbstractAsyncContextManager[bool]:
        """Hold `running:<member>`, waiting while another run of theirs holds it (bounded by
        the longest run: its time-out, stretched up to RUN_WALL_TIME_FACTOR times in the
        long lane); without an answer from the store, runs go ahead."""
        hold = timedelta(seconds=self.settings.max_run_timeout * self.settings.run_wall_time_factor) + RUN_LEASE_MARGIN
        return self._lease(_running_key(member_id), uuid.uuid4().hex, hold, hold.total_seconds(),
                           RUN_LEASE_POLL_SECONDS, f"member {member_id}: another process's run held the run lease "
                           "too long; running anyway")

    @contextlib.asynccontextmanager
    async def _lease(self, key: str, token: str, hold: timedelta, wait_seconds: float, poll_seconds: float,
                     too_long: str):
        """Hold lease `key` for `token` (the block gets True) or go ahead without it (False:
        the store cannot answer, or `wait_seconds` passed; then `too_long` is logged).

        This process's requests for `key` queue on an in-process lock first, so the store is
        asked by one of them at a time and polled only while another process holds the
        lease. The lock is let go once the lease is given back (in the background: the
        block's caller does not wait for the store), so the next request in line finds it free."""
        deadline = time.monotonic() + wait_seconds
        lock = self._local_leases.lock(key)
        if not await _acquire_within(lock, wait_seconds):
            log.warning("%s", too_long)
            yield False
            return
        held = False
        try:
            held = await self._wait_for_lease(key, token, hold, deadline - time.monotonic(), poll_seconds, too_long)
            yield held
        finally:
            self._give_back(key if held else None, token, lock)

    async def _wait_for_lease(self, key: str, token: str, hold: timedelta, wait_seconds: float, poll_seconds: float,
                              too_long: str) -> bool:
        """Take lease `key` for `token` (held for `hold`), polling while someone else holds it.
        False, and the caller goes ahead without it, when the store cannot answer or after
        `wait_seconds` (then `too_long` is logged)."""
        store = self.audit.store
        deadline = time.monotonic() + wait_seconds
        while True:
            now = self.audit.now()
            lease = await self._in_store(lambda: store.acquire_lease(key, token, now + hold, now))
            if lease is None:
                return False
            if lease.holder == token:
                return True
            if time.monotonic() >= deadline:
                log.warning("%s", too_long)
                return False
            await asyncio.sleep(poll_seconds)

    def _give_back(self, key: str | None, token: str, lock: asyncio.Lock) -> None:
        """Release store lease `key` (None: not held), then the in-process `lock`, in the background."""
        store = self.audit.store

        async def give_back() -> None:
            try:
                if key is not None and await self._in_store(lambda: store.release_lease(key, token)) is None:
                    self._release_later(((key, token),))  # one more try; it expires by itself anyway
            finally:
                lock.release()

        self._track(asyncio.get_running_loop().create_task(give_back()))

    def _release_later(self, leases: tuple[tuple[str, str], ...]) -> None:
        """Give leases back in the background (cancel() is synchronous, and never waits on the store)."""
        if not leases:
            return
        store = self.audit.store

        async def release() -> None:
            for key, holder in leases:
                try:
                    await store.release_lease(key, holder)
                except Exception:  # noqa: BLE001 - it expires by itself
                    log.warning("could not release lease %s; it expires by itself", key)

        self._track(asyncio.get_running_loop().create_task(release()))

    def _track(self, task: asyncio.Task) -> None:
        """Keep a reference until done (the loop keeps only a weak one); tests wait for `_releasing`."""
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    # --- the hourly limit

    def _remembered(self, member_id: int, now: datetime) -> list[datetime]:
        """This process's admissions of the member within the window, oldest first (drops older ones)."""
        window = self._admitted.get(member_id)
        if window is None:
            return []
        while window and window[0] <= now - RATE_WINDOW:
            window.popleft()
        if not window:
            del self._admitted[member_id]
        return sorted(window)

    def _forget(self, member_id: int, at: datetime) -> None:
        window = self._admitted.get(member_id)
        if window is None:
            return
        try:
            window.remove(at)
        except ValueError:
            pass
        if not window:
            del self._admitted[member_id]

    async def _recorded_start_times(self, member_id: int, since: datetime) -> list[datetime] | None:
        """The member's runs in the audit since `since`; None when they cannot be read now."""
        if self.audit.store_known_down():
            return None
        try:
            async with asyncio.timeout(STORE_CHECK_SECONDS):
                return await self.audit.start_times(member_id, since)
        except (StoreUnavailable, TimeoutError):
            return None  # the store logged the outage (a slow answer is one too, for a member waiting)
        except Exception:  # noqa: BLE001 - a broken audit must not stop every run
            log.exception("run limit: could not read the run audit; counting this process's runs only")
            return None

    async def _store_admissions(self, member_id: int, now: datetime) -> list[datetime]:
        """When the member's admissions in every process (their places in the store) were made."""
        store = self.audit.store
        places = await self._in_store(lambda: store.leases_with_prefix(_admission_key(member_id, ""), now))
        return [lease.expires_at - RATE_WINDOW for lease in places or ()]

    async def _rate_denial(self, member_id: int, now: datetime, *, reserved: bool,
                           use_store: bool = True) -> tuple[Denial | None, bool]:
        """(the denial or None, whether the run history in the store was counted)."""
        limit = self.settings.runs_per_member_per_hour
        since = now - RATE_WINDOW
        recorded = await self._recorded_start_times(member_id, since) if use_store else None
        counted = recorded is not None
        recorded = recorded or []
        remembered = self._remembered(member_id, now)
        if reserved:
            remembered.remove(now)  # count what came before this request
        earlier = sorted(t for t in recorded if t > since)
        if len(remembered) > len(earlier):
            earlier = remembered
        if counted and not reserved:  # admitting takes its place in the store afterwards (_take_place)
            admitted = sorted(await self._store_admissions(member_id, now))
            if len(admitted) > len(earlier):
                earlier = admitted
        if len(earlier) < limit:
            return None, counted
        # The next run is allowed once enough earlier runs have left the window.
        retry_at = earlier[len(earlier) - limit] + RATE_WINDOW
        return Denial(DenialReason.RATE, limit=limit, retry_at=retry_at), counted


async def _acquire_within(lock: asyncio.Lock, seconds: float) -> bool:
    """Take `lock`, waiting at most `seconds`; False when the time ran out first."""
    try:
        async with asyncio.timeout(max(0.0, seconds)):
            await lock.acquire()
    except TimeoutError:
        return False
    return True


def _admission_key(member_id: int, token: str) -> str:
    return f"admission:{member_id}:{token}"


def _admitting_key(member_id: int) -> str:
    return f"admitting:{member_id}"


def _cooldown_key(member_id: int) -> str:
    return f"cooldown:{member_id}"


def _running_key(member_id: int) -> str:
    return f"running:{member_id}"
