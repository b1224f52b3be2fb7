"""The Executor seam: where runs and sessions execute.

A front end (the bot's cogs through `interpreter`'s API, the seed's `execute_code`)
decides *who* may run *what* with *which files*: policy pre-check, file ownership,
quotas, the audit. It then hands an `ExecutionRequest` (code, the input files
themselves, packages, timeout, session id) to an `Executor`, which only executes:

- `LocalExecutor` (the default): sandboxes on this machine (interpreter/sandbox),
  the package manager of this machine's sandbox venv, and its sessions;
- `RemoteExecutor` (interpreter/remote.py, when EXECUTOR_URLS is set): the same calls
  over HTTP to execution workers (`python -m interpreter.service`), which serve a
  LocalExecutor each.

An executor needs no database and knows no member rule beyond session ownership:
everything it needs travels in the request, and everything it produced comes back
in the `RunResult`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Protocol

from interpreter.render import PlotlyRenderer
from interpreter.result import RunResult, SessionState
from interpreter.sandbox.job import SandboxJob
from interpreter.sessions import EndReason, SessionInfo, SessionManager
from interpreter.types import InputFile, InterpreterError

if TYPE_CHECKING:
    from config import Settings
    from interpreter.packages import PackageManager
    from interpreter.sandbox.runner import SandboxRunner

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExecutionRequest:
    """One run, with everything an executor needs (already checked by the front end)."""

    code: str
    timeout: float  # seconds, already within MAX_RUN_TIMEOUT_SECONDS
    user_id: int
    input_files: tuple[InputFile, ...] = ()
    packages: tuple[str, ...] = ()
    session_id: str | None = None  # run in this member's session (opened if needed)
    # The id of the run's audit record (interpreter/run_ids.py), made at admission on the bot
    # side; a worker logs it beside the run. None for runs nothing audits (the CLI's snippets).
    run_id: str | None = None


@dataclasses.dataclass(frozen=True)
class SessionOpened:
    info: SessionInfo
    created: bool  # False: the member's open session was returned


class SessionGone(InterpreterError):
    """The worker that held a session is gone; the message tells the member (remote executors)."""


class Executor(Protocol):
    """Runs, sessions, status and warm-up. Implementations: LocalExecutor, RemoteExecutor."""

    async def run(self, request: ExecutionRequest) -> RunResult:
        """Run once (or in the request's session). Never raises for the member's errors: a
        refusal (packages, session capacity or ownership) is a refused RunResult."""

    async def open_session(self, session_id: str, user_id: int) -> SessionOpened:
        """The member's session with this id, opened if needed. Raises InterpreterError (for the member)."""

    async def get_session(self, session_id: str) -> SessionInfo | None: ...

    async def session_continues(self, session_id: str) -> bool:
        """A run with this id belongs in a session: one is open, or the last one ended without
        the member asking (the next run starts a fresh one and says why)."""

    async def session_ending_note(self, session_id: str) -> str:
        """Why the last session with this id ended without its member asking ('' otherwise)."""

    async def end_session(self, session_id: str, reason: EndReason = EndReason.ENDED) -> SessionInfo | None: ...

    async def reset_session(self, session_id: str, user_id: int) -> SessionInfo: ...

    async def list_sessions(self, user_id: int | None = None) -> list[SessionInfo]: ...

    async def sweep_sessions(self) -> int:
        """End sessions past their idle time or maximum age; how many."""

    async def status(self) -> dict:
        """Packages, sandbox layers, load and sessions, for /status (keys as get_interpreter_status)."""

    async def run_limits(self) -> dict[str, float] | None:
        """The per-run limits the machines that execute enforce (keys as status()["sandbox"]
        ["limits"]) when they are other machines' and may differ from this process's
        settings; None when they are this process's own, or cannot be learned now."""

    async def warm_up(self) -> dict:
        """Build the sandbox venv and start warm capacity now rather than on the first run.
        Returns the sandbox layers in force (as status()["sandbox"])."""

    async def close(self) -> None:
        """End every session and stop warm capacity: no sandbox process is left."""


class LocalExecutor:
    """Executes on this machine: the sandbox runner, the sandbox venv's packages, sessions."""

    def __init__(self, settings: "Settings", *, packages: "PackageManager | None" = None,
                 runner: "SandboxRunner | None" = None, sessions: SessionManager | None = None) -> None:
        from interpreter.packages import PackageManager
        from interpreter.sandbox import SandboxRunner

        self.settings = settings
        self.packages = packages or PackageManager(settings)
        self.runner = runner or SandboxRunner(settings, self.packages)
        self.sessions = sessions or SessionManager(settings, self.runner)
        self.renderer = PlotlyRenderer(settings, self.runner, self.packages)  # plotly figures as PNG, after the run

    async def run(self, request: ExecutionRequest) -> RunResult:
        installed: tuple[str, ...] | None = None
        failed: tuple[dict, ...] | None = None
        if request.packages:
            report = await self.packages.ensure_packages(request.packages)
            installed, failed = tuple(report.installed), tuple(report.failed)
            if report.failed:
                return RunResult.refusal(report.error_message(), installed_packages=installed, failed_packages=failed)
        job = SandboxJob(code=request.code, timeout=request.timeout, input_files=request.input_files,
                         owner=request.user_id)
        if request.session_id is None:
            outcome = await self.runner.run(job)
            return await self.renderer.finish(RunResult.from_outcome(
                outcome, request.timeout, installed_packages=installed, failed_packages=failed), request.user_id)
        try:
            ran = await self.sessions.run(request.session_id, request.user_id, job)
        except InterpreterError as exc:  # SessionRefused: capacity, ownership, sandbox start
            return RunResult.refusal(str(exc), installed_packages=installed, failed_packages=failed)
        state = SessionState(info=ran.info, active=ran.active, started=ran.started, note=ran.note,
                             ended=ran.ended.value if ran.ended else None)
        return await self.renderer.finish(RunResult.from_outcome(
            ran.outcome, request.timeout, installed_packages=installed, failed_packages=failed, session=state),
            request.user_id)

    async def open_session(self, session_id: str, user_id: int) -> SessionOpened:
        info, created = await self.sessions.open(session_id, user_id)
        return SessionOpened(info, created)

    async def get_session(self, session_id: str) -> SessionInfo | None:
        return self.sessions.get(session_id)

    async def session_continues(self, session_id: str) -> bool:
        return self.sessions.continues(session_id)

    async def session_ending_note(self, session_id: str) -> str:
        return self.sessions.ending_note(session_id)

    async def end_session(self, session_id: str, reason: EndReason = EndReason.ENDED) -> SessionInfo | None:
        return await self.sessions.end(session_id, reason)

    async def reset_session(self, session_id: str, user_id: int) -> SessionInfo:
        return await self.sessions.reset(session_id, user_id)

    async def list_sessions(self, user_id: int | None = None) -> list[SessionInfo]:
        return self.sessions.active(user_id)

    async def sweep_sessions(self) -> int:
        return await self.sessions.sweep()

    async def status(self) -> dict:
        status = dict(await self.packages.status())
        status["sandbox"] = {**self.runner.describe(), "plotly_png": self.renderer.describe()}
        status["runs"] = self.runner.load()
        status["sessions"] = self.sessions.describe()
        return status

    async def run_limits(self) -> dict[str, float] | None:
        return None  # this process's own settings are the limits

    async def warm_up(self) -> dict:
        await self.packages.ensure_venv()
        layers = self.runner.describe()
        self.runner.start_warm_capacity()  # the fork server or the pool, filling in the background
        return layers

    async def wait_warm(self) -> bool:
        """Until warm capacity is ready (False: configured off or failed; runs start cold)."""
        return await self.runner.warm_up()

    async def close(self) -> None:
        await self.sessions.close()
        await self.runner.close()
