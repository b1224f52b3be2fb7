"""Sessions: a member's long-lived sandbox that keeps its globals, imports and files
between runs, as a notebook kernel does.

A session is one `SandboxProcess` given job after job (`SandboxRunner.run_in`):
the bootstrap keeps one `__main__` module and one work dir for as long as it lives.
The same launch chain, cgroup (memory, pids, CPU quota RUN_CPU_CORES), host uid,
rlimits and seccomp as one-shot runs apply; the cgroup lives as long as the session.
Each run is bound by its timeout and takes one of the MAX_CONCURRENT_RUNS slots while
it runs. Between runs nothing of the session runs: when a job ends the sandbox's
supervisor stops every process of it (threads and background processes included),
and continues them with the next job (interpreter/runtime/bootstrap.py `pause_run`).

Lifetime:
- idle expiry (SESSION_IDLE_MINUTES after the last run) and a maximum age
  (SESSION_MAX_AGE_MINUTES), checked lazily whenever a session is looked up and by
  `sweep()` (the bot calls it every minute and in the hourly clean-up);
- a run that times out, or whose sandbox dies (memory, CPU, crash, output flood),
  ends its own session and says so; the next run with that id starts a fresh one
  with a note saying why the old one is gone;
- `close()` ends every session (shutdown).

Capacity: MAX_SESSIONS sessions at once (each keeps a sandbox and its memory), and
SESSIONS_PER_MEMBER per member. Ids are the caller's (the bot uses
"guild:channel:member"); a session belongs to the member who opened it.

Files: input files are sent to a session's sandbox once; later runs send only files
it has not had yet. Generated files come back with the run that made or changed them.

Time comes from `clock` (seconds, monotonic), which tests replace to expire
sessions without sleeping.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from interpreter.sandbox.bwrap import BwrapNotFound
from interpreter.sandbox.job import SandboxJob, SandboxOutcome
from interpreter.sandbox.workload import Workload, classify
from interpreter.types import ExitCause, InterpreterError

if TYPE_CHECKING:
    from config import Settings
    from interpreter.sandbox.runner import SandboxProcess, SandboxRunner

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0  # a cold session sandbox that cannot import its preload in this long is broken
ENDINGS_KEPT = 1000  # why sessions ended, remembered for their next run (oldest dropped first)
ENDING_MEMORY_SECONDS = 24 * 3600


class SessionRefused(InterpreterError):
    """A session cannot be opened or used; the message is for the member."""


class EndReason(enum.Enum):
    IDLE = "idle"
    MAX_AGE = "max_age"
    TIMEOUT = "timeout"  # a run hit its timeout
    CRASH = "crash"  # the sandbox died during a run (memory, CPU, signal, output flood)
    ENDED = "ended"  # the member ended it
    BY_ADMIN = "admin"  # a server admin ended it
    RESET = "reset"
    SHUTDOWN = "shutdown"

    @property
    def involuntary(self) -> bool:
        """Ended without the member asking: their next run says so and starts a fresh session."""
        return self in {EndReason.IDLE, EndReason.MAX_AGE, EndReason.TIMEOUT, EndReason.CRASH, EndReason.BY_ADMIN}


@dataclasses.dataclass(frozen=True)
class SessionInfo:
    """A session as members and admins see it."""

    session_id: str
    user_id: int
    runs: int
    warm: bool  # its sandbox came from the warm pool
    busy: bool  # a run is going on
    age_seconds: float
    idle_seconds: float
    idle_left_seconds: float  # until idle expiry (counted from the last run)
    age_left_seconds: float  # until the maximum age

    @property
    def time_left_seconds(self) -> float:
        return min(self.idle_left_seconds, self.age_left_seconds)

    def to_dict(self) -> dict:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class SessionRun:
    """What a run in a session returned, and what happened to the session."""

    outcome: SandboxOutcome
    info: SessionInfo  # after the run
    active: bool  # the session is still open for the next run
    started: bool  # this run opened the session
    note: str = ""  # why an earlier session with this id is gone, when this run started a fresh one
    ended: EndReason | None = None  # set when this run ended the session

    def to_dict(self) -> dict:
        return {**self.info.to_dict(), "active": self.active, "started": self.started, "note": self.note,
                "ended": self.ended.value if self.ended else None}


@dataclasses.dataclass
class _Session:
    session_id: str
    user_id: int
    sandbox: "SandboxProcess"
    created_at: float
    last_used: float
    warm: bool
    runs: int = 0
    sent_files: set[str] = dataclasses.field(default_factory=set)
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    ended: EndReason | None = None


@dataclasses.dataclass(frozen=True)
class _Ending:
    reason: EndReason
    at: float
    user_id: int
    detail: str = ""


class SessionManager:
    def __init__(self, settings: "Settings", runner: "SandboxRunner", *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.runner = runner
        self.clock = clock
        self._sessions: dict[str, _Session] = {}
        self._opening: dict[str, tuple[int, asyncio.Future]] = {}  # id -> (member, done) while a sandbox starts
        self._endings: collections.OrderedDict[str, _Ending] = collections.OrderedDict()
        self._closing: set[asyncio.Task] = set()
        self.opened_total = 0
        self.opened_warm = 0
        self.ended_by_reason: dict[str, int] = {}

    # ------------------------------------------------------------------ limits

    @property
    def idle_seconds(self) -> float:
        return self.settings.session_idle_minutes * 60

    @property
    def max_age_seconds(self) -> float:
        return self.settings.session_max_age_minutes * 60

    # ------------------------------------------------------------------ looking up

    def get(self, session_id: str) -> SessionInfo | None:
        """The open session with this id (an expired one is ended first, so: None)."""
        session = self._live(session_id)
        return self._info(session) if session is not None else None

    def active(self, user_id: int | None = None) -> list[SessionInfo]:
        """Open sessions (one member's when given), oldest first."""
        self._expire_due()
        return [self._info(s) for s in self._sessions.values() if user_id is None or s.user_id == user_id]

    def continues(self, session_id: str) -> bool:
        """True when a run with this id should run in a session: one is open, or the last one
        ended without the member asking (its next run starts a fresh one and says why)."""
        if self._live(session_id) is not None:
            return True
        ending = self._endings.get(session_id)
        return ending is not None and ending.reason.involuntary and self.clock() - ending.at < ENDING_MEMORY_SECONDS

    def ending_note(self, session_id: str) -> str:
        """Why the last session with this id ended without its member asking ('' otherwise)."""
        ending = self._endings.get(session_id)
        return self._note(ending) if ending is not None and ending.reason.involuntary else ""

    # ------------------------------------------------------------------ opening, running, ending

    async def open(self, session_id: str, user_id: int, *, code: str = "") -> tuple[SessionInfo, bool]:
        """The member's session with this id, opened if needed. Returns (info, opened now).

        `code` (the first run's, if any) picks the kind of sandbox: data libraries
        preloaded or not. Raises SessionRefused (ownership, capacity, sandbox start).
        """
        session = self._live(session_id)
        if session is not None:
            self._check_owner(session.user_id, user_id)
            return self._info(session), False
        session = await self._open(session_id, user_id, code)
        return self._info(session), True

    async def run(self, session_id: str, user_id: int, job: SandboxJob) -> SessionRun:
        """Run `job` in the member's session `session_id`, opening (or reopening) it as needed."""
        started = False
        note = ""
        session = self._live(session_id)
        if session is None:
            ending = self._endings.get(session_id)
            session = await self._open(session_id, user_id, job.code)
            started = True
            if ending is not None and ending.user_id == user_id and ending.reason.involuntary:
                note = self._note(ending, fresh=True)
        self._check_owner(session.user_id, user_id)
        async with session.lock:
            if session.ended is not None:  # ended (e.g. /session end) while this run waited
                raise SessionRefused("This session was ended just now; run again to start a fresh one")
            new_files = tuple(f for f in job.input_files if f.file_id not in session.sent_files)
            outcome = await self.runner.run_in(session.sandbox, dataclasses.replace(job, input_files=new_files))
            session.runs += 1
            session.last_used = self.clock()
            ended: EndReason | None = None
            if session.sandbox.can_take_job:
                session.sent_files.update(f.file_id for f in new_files)
            elif session.ended is not None:
                outcome.error = "The session was ended while this run was going on"
                if outcome.cause is ExitCause.OK:
                    outcome.cause = ExitCause.SIGNAL
            else:
                ended = EndReason.TIMEOUT if outcome.cause is ExitCause.TIMEOUT else EndReason.CRASH
                outcome.error = (outcome.error or "The session's Python stopped") + "; the session was ended"
                await self._end(session, ended, detail=outcome.error)
        return SessionRun(outcome=outcome, info=self._info(session), active=session.ended is None,
                          started=started, note=note, ended=ended)

    async def end(self, session_id: str, reason: EndReason = EndReason.ENDED) -> SessionInfo | None:
        """End the session with this id (a run in progress is stopped). Its last info, or None if none was open."""
        session = self._sessions.get(session_id)
        if session is None:
            return None
        info = self._info(session)
        await self._end(session, reason)
        return info

    async def reset(self, session_id: str, user_id: int) -> SessionInfo:
        """End the member's session (if any) and open a fresh one in its place."""
        session = self._sessions.get(session_id)
        if session is not None:
            self._check_owner(session.user_id, user_id)
            await self._end(session, EndReason.RESET)
        info, _ = await self.open(session_id, user_id)
        return info

    async def sweep(self) -> int:
        """End every session past its idle time or maximum age; returns how many. Busy sessions wait for their run."""
        due = self._due()
        for session, reason in due:
            await self._end(session, reason)
        return len(due)

    async def close(self) -> None:
        """End every session and wait until their processes are gone (shutdown)."""
        for session in list(self._sessions.values()):
            await self._end(session, EndReason.SHUTDOWN)
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Until every ended session's sandbox has exited and its cgroup is removed."""
        while self._closing:
            await asyncio.wait(list(self._closing))

    def describe(self) -> dict:
        """For status: counts, limits and every open session."""
        sessions = self.active()
        return {
            "active": len(sessions),
            "max": self.settings.max_sessions,
            "per_member": self.settings.sessions_per_member,
            "idle_minutes": self.settings.session_idle_minutes,
            "max_age_minutes": self.settings.session_max_age_minutes,
            "opened": self.opened_total,
            "opened_warm": self.opened_warm,
            "ended_by_reason": dict(self.ended_by_reason),
            "sessions": [info.to_dict() for info in sessions],
        }

    # ------------------------------------------------------------------ internals

    def _info(self, session: _Session) -> SessionInfo:
        now = self.clock()
        idle = max(0.0, now - session.last_used)
        age = max(0.0, now - session.created_at)
        return SessionInfo(
            session_id=session.session_id, user_id=session.user_id, runs=session.runs, warm=session.warm,
            busy=session.lock.locked(), age_seconds=age, idle_seconds=idle,
            idle_left_seconds=max(0.0, self.idle_seconds - idle), age_left_seconds=max(0.0, self.max_age_seconds - age))

    @staticmethod
    def _check_owner(owner: int, user_id: int) -> None:
        if owner != user_id:
            raise SessionRefused("That session belongs to another member")

    def _expiry(self, session: _Session) -> EndReason | None:
        if session.lock.locked():
            return None  # a run is going on: it ends the session itself if it must, or renews it
        now = self.clock()
        if now - session.created_at >= self.max_age_seconds:
            return EndReason.MAX_AGE
        if now - session.last_used >= self.idle_seconds:
            return EndReason.IDLE
        return None

    def _due(self) -> list[tuple[_Session, EndReason]]:
        return [(s, reason) for s in list(self._sessions.values()) if (reason := self._expiry(s)) is not None]

    def _expire_due(self) -> None:
        for session, reason in self._due():
            self._end_now(session, reason)

    def _live(self, session_id: str) -> _Session | None:
        """The open session, ending it first (lazily) when it has expired."""
        session = self._sessions.get(session_id)
        if session is None:
            return None
        reason = self._expiry(session)
        if reason is not None:
            self._end_now(session, reason)
            return None
        if not session.lock.locked() and not session.sandbox.can_take_job:
            self._end_now(session, EndReason.CRASH, detail="its sandbox stopped between runs")
            return None
        return session

    async def _open(self, session_id: str, user_id: int, code: str) -> _Session:
        opening = self._opening.get(session_id)
        if opening is not None:  # the same id is being opened right now: share that start
            self._check_owner(opening[0], user_id)
            await asyncio.shield(opening[1])
            session = self._live(session_id)
            if session is None:
                raise SessionRefused("The session could not be started; please try again")
            return session
        self._check_capacity(user_id)
        done = asyncio.get_running_loop().create_future()
        self._opening[session_id] = (user_id, done)
        try:
            sandbox, warm = await self._start_sandbox(code)
            now = self.clock()
            session = _Session(session_id, user_id, sandbox, created_at=now, last_used=now, warm=warm)
            self._sessions[session_id] = session
            self._endings.pop(session_id, None)
            self.opened_total += 1
            self.opened_warm += int(warm)
            log.info("session %s opened for member %s (%s)", session_id, user_id, "warm" if warm else "cold")
            return session
        finally:
            del self._opening[session_id]
            done.set_result(None)

    def _check_capacity(self, user_id: int) -> None:
        settings = self.settings
        if settings.max_sessions <= 0:
            raise SessionRefused("Sessions are turned off on this bot; runs start fresh every time")
        self._expire_due()  # expired sessions free their places first
        mine = sum(1 for s in self._sessions.values() if s.user_id == user_id)
        mine += sum(1 for owner, _ in self._opening.values() if owner == user_id)
        if mine >= settings.sessions_per_member:
            limit = settings.sessions_per_member
            raise SessionRefused(
                f"You already have {mine} session{'s' if mine != 1 else ''} open (the limit is {limit}); "
                "end one with /session end where it runs, or wait for it to expire")
        if len(self._sessions) + len(self._opening) >= settings.max_sessions:
            raise SessionRefused(
                f"All {settings.max_sessions} session slots are in use; runs without a session still work. "
                "Try again in a few minutes")

    async def _start_sandbox(self, code: str) -> tuple["SandboxProcess", bool]:
        """A sandbox for a new session: a warm one from the pool when it can serve a session, else cold.

        Starting takes a run slot, like the start of a one-shot run.
        """
        from interpreter.sandbox.runner import SandboxProcess

        workload = classify(code) if code.strip() else Workload.HEAVY  # no code yet: data work is likely
        async with self.runner.slot(light=workload is Workload.LIGHT):
            warm = await self._take_warm(workload)
            if warm is not None:
                return warm, True
            try:
                venv_dir = await self.runner.packages.ensure_venv()
                preload = ",".join(self.settings.sandbox_pool_preload) if workload is Workload.HEAVY else ""
                sandbox = SandboxProcess(self.runner, venv_dir, preload=preload,
                                         cpu_seconds=self.settings.session_cpu_seconds)
                self.runner.cold_starts += 1
                await sandbox.start()
            except (BwrapNotFound, OSError) as exc:
                log.error("cannot start a session sandbox: %s", exc)
                raise SessionRefused(f"The sandbox is unavailable: {exc}") from None
            try:
                ready = await asyncio.wait_for(sandbox.wait_ready(), READY_TIMEOUT)
            except TimeoutError:
                ready = False
            if not ready:
                self._destroy(sandbox)
                raise SessionRefused("The session's sandbox failed to start; please try again")
            return sandbox, False

    async def _take_warm(self, workload: Workload) -> "SandboxProcess | None":
        """A warm sandbox with a session's CPU budget (forked, or from the pool); None: start cold."""
        self.runner.warm_in_background()
        return await self.runner.take_warm(workload, self.settings.session_cpu_seconds)

    def _end_now(self, session: _Session, reason: EndReason, *, detail: str = "") -> None:
        """Forget the session and kill its sandbox at once; its processes are reaped in the background."""
        if session.ended is not None:
            return
        session.ended = reason
        if self._sessions.get(session.session_id) is session:
            del self._sessions[session.session_id]
        self._remember_ending(session, reason, detail)
        self.ended_by_reason[reason.value] = self.ended_by_reason.get(reason.value, 0) + 1
        log.info("session %s of member %s ended (%s) after %d runs", session.session_id, session.user_id,
                 reason.value, session.runs)
        self._destroy(session.sandbox)

    async def _end(self, session: _Session, reason: EndReason, *, detail: str = "") -> None:
        self._end_now(session, reason, detail=detail)
        await self.wait_closed()

    def _destroy(self, sandbox: "SandboxProcess") -> None:
        from interpreter.sandbox.pool import destroy_fully, sandbox_pids

        pids = sandbox_pids(sandbox)
        sandbox.kill()
        task = asyncio.get_running_loop().create_task(destroy_fully(sandbox, pids))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _remember_ending(self, session: _Session, reason: EndReason, detail: str) -> None:
        self._endings.pop(session.session_id, None)
        self._endings[session.session_id] = _Ending(reason, self.clock(), session.user_id, detail)
        cutoff = self.clock() - ENDING_MEMORY_SECONDS
        while self._endings and (len(self._endings) > ENDINGS_KEPT or next(iter(self._endings.values())).at < cutoff):
            self._endings.popitem(last=False)

    def _note(self, ending: _Ending, *, fresh: bool = False) -> str:
        """Why the member's session is gone, in one sentence."""
        settings = self.settings
        why = {
            EndReason.IDLE: f"ended after {_minutes(settings.session_idle_minutes)} idle",
            EndReason.MAX_AGE: (f"reached its maximum age of {_minutes(settings.session_max_age_minutes)} "
                                "and was ended"),
            EndReason.TIMEOUT: "was ended because a run timed out",
            EndReason.CRASH: "was ended because its run stopped abnormally",
            EndReason.BY_ADMIN: "was ended by a server admin",
            EndReason.SHUTDOWN: "was ended because the interpreter restarted",
        }.get(ending.reason, "was ended")
        return f"Your session {why}" + ("; this run started fresh." if fresh else ".")


def _minutes(value: float) -> str:
    if value < 1:
        seconds = round(value * 60)
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    return f"{value:g} minute{'s' if value != 1 else ''}"
