"""The Engine is the front of the interpreter: input checks, policy, files, audit and
access rules, with execution behind the Executor seam (interpreter/executor.py).

One Engine per settings. `get_engine(db_handler)` returns the default engine, or a
view of it whose file metadata lives in the given MongoDB database (the seed's
`db_handler`), sharing the same executor.

Every `run` is recorded in the run audit (interpreter/audit.py) of the engine's
store; `access` holds the abuse limits front ends check before queueing a run
(interpreter/access.py). `executor` runs the code: this machine's sandboxes and
sessions (LocalExecutor), or the execution workers named by EXECUTOR_URLS. `assistant`
answers /ask questions with a model that runs code (interpreter/assistant.py), within
the members' daily `ask_budget` (interpreter/budget.py).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

from config import Settings, load_settings
from interpreter import policy
from interpreter.worker_limits import as_applied
from interpreter.access import RunAccess
from interpreter.assistant import Assistant
from interpreter.audit import Clock, RunAudit
from interpreter.run_ids import new_run_id
from interpreter.budget import DailyBudget
from interpreter.packages import PackageManager
from interpreter.clock import store_time
from interpreter.executor import ExecutionRequest, Executor, LocalExecutor
from interpreter.result import RunResult
from interpreter.sandbox import SandboxRunner
from interpreter.sessions import SessionManager
from interpreter.store.blobs import FILE_ID_PATTERN
from interpreter.types import InputFile, InterpreterError

log = logging.getLogger(__name__)

_FILE_ID_IN_CODE = re.compile(rf"\b{FILE_ID_PATTERN.pattern}\b")
# The audit's member id for a call whose user_id is not an integer (Discord ids never are 0):
# such a call runs nothing, but it is still recorded.
UNKNOWN_MEMBER_ID = 0


@dataclasses.dataclass(frozen=True)
class _Checked:
    """A request after validation: the refusal to answer with, or the time limit to run under."""

    refusal: str | None = None
    limit: float = 0.0
    warnings: tuple[str, ...] = ()


class Engine:
    """The front of the interpreter: member rules and files here, execution behind the Executor seam."""

    def __init__(self, settings: Settings, *, store: Any = None, runner: SandboxRunner | None = None,
                 packages: PackageManager | None = None, clock: Clock | None = None,
                 sessions: SessionManager | None = None, executor: Executor | None = None) -> None:
        # Imported here so `import interpreter.sandbox` alone stays light (benchmarks, CLI).
        from interpreter.files import FileManager
        from interpreter.store import open_store

        self.settings = settings
        self.store = store if store is not None else open_store(settings)
        if executor is None:
            executor = make_executor(settings, self.store, packages=packages, runner=runner, sessions=sessions)
        self.executor = executor
        self._run_limits: dict[str, float] = {}  # the execution workers', as last learned (none: local)
        # The in-process parts when execution is local (tests and the seed's get_package_manager
        # reach them); a remote executor has no runner or sessions in this process.
        self.packages = getattr(executor, "packages", None) or packages or PackageManager(settings)
        self.runner = getattr(executor, "runner", None)
        self.sessions = getattr(executor, "sessions", None)
        self.files = FileManager(settings, self.store, clock=clock)
        self.audit = RunAudit(settings, self.store, clock=clock)
        self.access = RunAccess(settings, self.audit)
        self.assistant = Assistant(settings)
        self.ask_budget = DailyBudget(self.store, "ask", settings.ask_questions_per_day, clock=clock)
        self.clock = clock
        self.started_at = time.time()
        self._db_views: dict[int, Engine] = {}

    def for_db(self, db_handler: Any) -> "Engine":
        """This engine with file metadata in `db_handler` (a PyMongo async or motor database)."""
        if db_handler is None:
            return self
        key = id(db_handler)
        view = self._db_views.get(key)
        if view is None:
            from interpreter.store import open_store

            view = Engine(self.settings, store=open_store(self.settings, db_handler=db_handler),
                          clock=self.clock, executor=self.executor)
            self._db_views[key] = view
        return view

    async def execute(self, code: str, user_id: int, user_files: list[str] | None = None,
                      install_packages: list[str] | None = None, timeout: float | None = None, **options: Any) -> dict:
        """`run`, as the seed's result dict."""
        return (await self.run(code, user_id, user_files, install_packages, timeout, **options)).to_dict()

    async def run(
        self,
        code: str,
        user_id: int,
        user_files: list[str] | None = None,
        install_packages: list[str] | None = None,
        timeout: float | None = None,
        *,
        keep_generated_files: bool = False,
        guild_id: int | None = None,
        channel_id: int | None = None,
        session_id: str | None = None,
        attach_named_files: bool = True,
    ) -> RunResult:
        """Run one snippet for a member; never raises for the member's errors.

        The member's live files whose ids the code names (`load_file('<id>')`) are made
        available without listing them in `user_files` (ownership checked), unless
        `attach_named_files` is off: the bot turns it off for code written by someone else.

        With `session_id` the snippet runs in the member's session of that id (opened
        if needed; see interpreter/sessions.py): globals, imports and work-dir files
        persist between runs, and result.session says how the session stands.
        Without it the run is one-shot, in a fresh sandbox.

        Bad input (wrong types, a file id given as a bare string, a user_id that is not
        an integer) runs nothing and comes back as a clear `error`; a timeout above
        MAX_RUN_TIMEOUT_SECONDS is lowered to it and `warnings` says so
        (`timeout_seconds` is the limit the run had).

        Every call is recorded in the audit, in the background (`guild_id`/`channel_id`
        say where it was asked for; a call without a valid user_id is recorded under
        UNKNOWN_MEMBER_ID): once the request is valid, as a run in flight under a new run
        id, and when it ends, completing that record. Recording never changes or delays
        the result and never raises. Execution may be remote (and retried on another
        worker): the record is written here, on the side that owns the store, so a run
        keeps one id and one record however many workers it took.
        """
        started_at = self.audit.now()
        began = time.monotonic()
        run_id = new_run_id()
        member = user_id if _is_int(user_id) else UNKNOWN_MEMBER_ID

        def admitted() -> None:
            self.audit.record_later(self.audit.admission_record(
                run_id=run_id, user_id=member, code=code, started_at=started_at, guild_id=guild_id,
                channel_id=channel_id, packages=install_packages, files=user_files))

        result = await self._run(code, user_id, user_files, install_packages, timeout,
                                 keep_generated_files=keep_generated_files, session_id=session_id,
                                 attach_named_files=attach_named_files, admitted=admitted, run_id=run_id)
        record = self.audit.build_record(
            result.to_dict(), user_id=member, code=code, started_at=started_at,
            duration_seconds=time.monotonic() - began, guild_id=guild_id, channel_id=channel_id,
            packages=install_packages, files=user_files, run_id=run_id)
        self.audit.record_later(record)
        return result

    async def _run(self, code: Any, user_id: int, user_files: list[str] | None,
                   install_packages: list[str] | None, timeout: float | None, *,
                   keep_generated_files: bool, session_id: str | None = None,
                   attach_named_files: bool = True, admitted: Callable[[], None] = lambda: None,
                   run_id: str | None = None) -> RunResult:
        checked = self._check(code, timeout, user_id=user_id, user_files=user_files,
                              install_packages=install_packages, session_id=session_id,
                              maximum=await self._max_timeout())
        if checked.refusal:
            return RunResult.refusal(checked.refusal)
        admitted()  # a valid request: from here on it is a run in flight (the audit's admission record)
        try:
            inputs = await self.files.resolve_for_run(user_id, list(user_files or ()))
            if attach_named_files:
                inputs += await self._files_named_in(code, user_id, inputs)
        except InterpreterError as exc:
            result = RunResult.refusal(str(exc))
        else:
            request = ExecutionRequest(code=code, timeout=checked.limit, user_id=user_id, input_files=tuple(inputs),
                                       packages=tuple(install_packages or ()), session_id=session_id,
                                       run_id=run_id)
            result = await self.executor.run(request)
            if keep_generated_files and result.generated_files:
                kept = await self.files.keep_generated(user_id, list(result.generated_files))
                not_kept = tuple(f"{item.filename} was not kept as a file: {item.not_kept}" for item in kept
                                 if item.not_kept)
                return result.replace(generated_files=tuple(kept), timeout_seconds=checked.limit,
                                      warnings=checked.warnings + result.warnings + not_kept)
        return result.replace(timeout_seconds=checked.limit, warnings=checked.warnings + result.warnings)

    async def run_snippet(self, code: str, inputs: list[InputFile], timeout: float | None = None) -> RunResult:
        """Run code with these input files (no store involved: the CLI and demo use this)."""
        checked = self._check(code, timeout, maximum=await self._max_timeout())
        if checked.refusal:
            return RunResult.refusal(checked.refusal)
        return await self.executor.run(ExecutionRequest(code=code, timeout=checked.limit, user_id=0,
                                                        input_files=tuple(inputs)))

    async def _files_named_in(self, code: str, user_id: int, given: list[InputFile]) -> list[InputFile]:
        """The member's live files whose ids the code names (`load_file('<id>')`), so a file
        uploaded a moment ago (or mid-session) is there without listing it. Unknown ids and
        other members' ids are left to load_file's own message."""
        named = set(_FILE_ID_IN_CODE.findall(code)) - {f.file_id for f in given}
        if not named:
            return []
        owned = [meta["file_id"] for meta in await self.files.list_files(user_id) if meta.get("file_id") in named]
        return await self.files.resolve_for_run(user_id, owned) if owned else []

    async def _max_timeout(self) -> float:
        """The largest timeout a run may have: this bot's maximum, or the execution workers'
        when it is lower (theirs is what they accept)."""
        return float((await self.learn_run_limits()).max_run_timeout)

    async def learn_run_limits(self) -> Settings:
        """Ask the execution side for its per-run limits (the executor caches them) and
        return applied_settings()."""
        self._run_limits = await self.executor.run_limits() or self._run_limits
        return self.applied_settings()

    def applied_settings(self) -> Settings:
        """This bot's settings with the per-run limits a run really gets, as last learned
        (the execution workers' apply): what /help tells members."""
        return as_applied(self.settings, self._run_limits)

    def _check(self, code: Any, timeout: Any, *, maximum: float, user_id: Any = 0, user_files: Any = None,
               install_packages: Any = None, session_id: Any = None) -> _Checked:
        """Validate a request the way a caller of the seed API may get it wrong: the first
        problem becomes the refusal; a timeout above the maximum is lowered, with a warning
        when the caller chose it (the default is lowered silently: the member chose nothing)."""
        refusal = (_code_refusal(code) or _member_refusal(user_id) or _timeout_refusal(timeout)
                   or _list_refusal(user_files, "user_files", "file ids")
                   or _list_refusal(install_packages, "install_packages", "package names")
                   or _session_refusal(session_id))
        if refusal:
            return _Checked(refusal)
        reason = policy.precheck(code)
        if reason:
            return _Checked(f"Security validation failed: {reason}")
        if timeout is None:
            return _Checked(limit=min(float(self.settings.run_timeout), maximum))
        requested = timeout
        if requested <= maximum:
            return _Checked(limit=float(requested))
        shown = f"{requested:g}" if isinstance(requested, float) else (str(requested) if requested < 10**18 else "more than 10**18")
        return _Checked(limit=float(maximum), warnings=(f"timeout lowered from {shown} to the maximum of {maximum:g} seconds",))

    async def recent_runs(self, limit: int = 10, user_id: int | None = None, guild_id: int | None = None) -> list[dict]:
        """Audited runs, newest first (only one member's / one guild's when given).

        Raises StoreUnavailable (its message is for members) when the database is down.
        """
        return await self.audit.recent(limit, user_id, guild_id)

    async def cleanup_expired(self) -> int:
        """The hourly sweep: expired files (returns how many), expired run records, leases and sessions."""
        removed = await self.files.cleanup_expired()
        await self.audit.purge_expired()
        await self.ask_budget.purge_expired()
        await self.store.delete_expired_leases(store_time(self.files.clock))  # SQLite has no TTL index
        await self.executor.sweep_sessions()
        return removed

    async def close(self) -> None:
        """Shutdown: end every session and stop the warm pool, leaving no sandbox process."""
        await self.executor.close()
        for audit in [view.audit for view in self._db_views.values()] + [self.audit]:
            await audit.close()  # each bounded; what is left goes to its spool
        await self.assistant.close()

    def run_limits(self) -> dict:
        """The abuse limits in force, for status."""
        settings = self.settings
        return {
            "runs_per_member_per_hour": settings.runs_per_member_per_hour or "unlimited",
            "user_max_files": settings.user_max_files,
            "user_max_storage_mb": settings.user_max_storage_mb,
            "denied_members": len(settings.denied_member_ids),
            "denied_roles": len(settings.denied_role_ids),
            "run_channels": list(settings.run_channel_ids) or "everywhere",
        }

    async def status(self) -> dict:
        """The seed's status keys plus what an admin needs (sandbox layers, limits, load, recent runs)."""
        executor_status = await self.executor.status()
        placed_last = ("sandbox", "runs", "sessions")
        status: dict[str, Any] = {key: value for key, value in executor_status.items() if key not in placed_last}
        status.update(await self.files.totals())
        status.update(await self.audit.summary())
        status["limits"] = self.run_limits()
        status.update({key: executor_status[key] for key in placed_last if key in executor_status})
        status["ask"] = self.assistant.describe()
        status["uptime_seconds"] = round(time.time() - self.started_at, 1)
        return status


def make_executor(settings: Settings, store: Any, **local_parts: Any) -> Executor:
    """The remote client when EXECUTOR_URLS is set (session placement kept in `store`),
    else the in-process executor."""
    if settings.executor_urls:
        from interpreter.remote import RemoteExecutor

        return RemoteExecutor(settings, store)
    return LocalExecutor(settings, **local_parts)


_default: Engine | None = None


def configure(settings: Settings | None = None, **overrides: Any) -> Engine:
    """(Re)build the default engine from `settings` (default: the environment)."""
    global _default
    settings = settings or load_settings()
    if overrides:
        settings = dataclasses.replace(settings, **overrides)
    _default = Engine(settings)
    return _default


def default_engine() -> Engine:
    return _default or configure()


async def get_engine(db_handler: Any = None) -> Engine:
    return default_engine().for_db(db_handler)


# --- request validation (each returns the member-facing refusal, or None)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _code_refusal(code: Any) -> str | None:
    return None if isinstance(code, str) else "Code must be text"


def _member_refusal(user_id: Any) -> str | None:
    return None if _is_int(user_id) else "user_id must be an integer"  # upload_file's words


def _timeout_refusal(timeout: Any) -> str | None:
    if timeout is None:
        return None
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0 or (isinstance(timeout, float) and not math.isfinite(timeout)):
        return "Timeout must be a positive number of seconds"
    return None  # values above the maximum are lowered to it, with a warning


def _list_refusal(items: Any, name: str, of_what: str) -> str | None:
    """None, or a list/tuple of strings; a lone string is the common slip, named as such."""
    if items is None:
        return None
    if isinstance(items, str):
        if name == "user_files":
            return f"{name} must be a list of {of_what} (got one id as text: put it in a list)"
        return f"{name} must be a list of {of_what}"
    if not isinstance(items, (list, tuple)):
        return f"{name} must be a list of {of_what}"
    if not all(isinstance(item, str) for item in items):
        return f"{name} must be a list of {of_what} (text)"
    return None


def _session_refusal(session_id: Any) -> str | None:
    if session_id is not None and (not isinstance(session_id, str) or not session_id.strip() or len(session_id) > 200):
        return "session_id must be a non-empty string of at most 200 characters"
    return None
