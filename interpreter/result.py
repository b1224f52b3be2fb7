"""What one run returned, as a typed object at the boundary.

Every path that answers a run (the in-process executor, the remote client, the HTTP
service, the seed's `execute_code`) produces a `RunResult`; front ends read its fields,
never dict keys, so a renamed key cannot silently turn into "never shown". `to_dict()`
gives exactly the seed's result dict (the public shape `execute_code` returns).

A run refused before it started (bad input, policy, packages, files, session capacity)
has no `exit_cause`; its dict then carries only the seed's base keys, as it always did.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from interpreter.types import ExitCause, GeneratedFile

if TYPE_CHECKING:
    from interpreter.sandbox.job import SandboxOutcome
    from interpreter.sessions import SessionInfo


PAUSE_WORTH_TELLING = 0.05  # seconds; shorter pauses are noise next to the launch itself
STARVED_WORTH_TELLING = 0.5  # seconds; a long run waits a little for a CPU even on a quiet machine


def paused_note(seconds: float) -> str:
    """What a member reads when the queue paused their run (admission.py)."""
    return (f"This run was paused for {seconds:.1f} s while other long runs had the long-run lane; "
            "its time-out counts only the time it ran.")


def starved_note(seconds: float) -> str:
    """What a member reads when their long run waited for a CPU (admission.py)."""
    return (f"This run waited {seconds:.1f} s for a CPU while the server was busy (a run that goes on "
            "for a while gets only the CPU other runs leave); its time-out counts only the time it ran.")


def wall_cap_note(timeout: float, ran: float, starved: float) -> str:
    """What a member reads when their long run was stopped at its wall cap before it used its
    time-out (admission.py); the error stays the seed's time-out string."""
    return (f"The server was too busy to finish this run: it was stopped after {ran + starved:.0f} s, "
            f"{starved:.0f} s of them spent waiting for a CPU, having run {ran:.1f} s of its {timeout:g} s "
            "time-out. Try again when the server is less busy.")


@dataclasses.dataclass(frozen=True)
class SessionState:
    """How the member's session stands after a run in it."""

    info: "SessionInfo"
    active: bool  # still open for the next run
    started: bool  # this run opened it
    note: str = ""  # why an earlier session with this id is gone, when this run started a fresh one
    ended: str | None = None  # EndReason value, when this run ended the session

    def to_dict(self) -> dict:
        return {**self.info.to_dict(), "active": self.active, "started": self.started, "note": self.note,
                "ended": self.ended}


@dataclasses.dataclass(frozen=True)
class RunResult:
    success: bool
    output: str
    error: str
    execution_time: float  # seconds; the timeout itself when the run timed out (as the seed reports it)
    return_code: int  # -1 when refused before starting
    generated_files: tuple[GeneratedFile, ...] = ()
    exit_cause: ExitCause | None = None  # None: refused before a sandbox started
    output_truncated: bool = False  # the output was longer than OUTPUT_LIMIT_BYTES and was cut
    skipped_files: tuple[str, ...] = ()  # generated files not returned, "name (reason)"
    timeout_seconds: float | None = None  # the limit the run had (set once the request was valid)
    warnings: tuple[str, ...] = ()  # e.g. the timeout was lowered to the maximum
    installed_packages: tuple[str, ...] | None = None  # set when packages were asked for
    failed_packages: tuple[dict, ...] | None = None  # {"package", "reason"} each
    session: SessionState | None = None  # set when the run was in a session

    @property
    def refused(self) -> bool:
        return self.exit_cause is None

    @classmethod
    def refusal(cls, error: str, *, installed_packages: tuple[str, ...] | None = None,
                failed_packages: tuple[dict, ...] | None = None) -> "RunResult":
        """A run refused before it started (bad input, policy, packages, files)."""
        return cls(success=False, output="", error=error, execution_time=0.0, return_code=-1,
                   installed_packages=installed_packages, failed_packages=failed_packages)

    @classmethod
    def from_outcome(cls, outcome: "SandboxOutcome", timeout: float, **fields: Any) -> "RunResult":
        execution_time = round(outcome.duration, 3)
        if outcome.cause is ExitCause.TIMEOUT:
            execution_time = timeout  # as the seed reports it
        if outcome.paused_seconds >= PAUSE_WORTH_TELLING:
            fields["warnings"] = (*fields.get("warnings", ()), paused_note(outcome.paused_seconds))
        if outcome.wall_capped:
            fields["warnings"] = (*fields.get("warnings", ()),
                                  wall_cap_note(timeout, outcome.duration, outcome.starved_seconds))
        elif outcome.starved_seconds >= STARVED_WORTH_TELLING:
            fields["warnings"] = (*fields.get("warnings", ()), starved_note(outcome.starved_seconds))
        return cls(success=outcome.success, output=outcome.output, error=outcome.error,
                   execution_time=execution_time, return_code=outcome.return_code,
                   generated_files=tuple(outcome.files), exit_cause=outcome.cause,
                   output_truncated=outcome.output_truncated, skipped_files=tuple(outcome.skipped_files), **fields)

    def replace(self, **changes: Any) -> "RunResult":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The seed's result dict, key for key as `execute_code` has always returned it."""
        out: dict[str, Any] = {
            "success": self.success,
            "output": self.output,
            "error": self.error,
            "execution_time": self.execution_time,
            "return_code": self.return_code,
            "generated_files": [f.to_dict() for f in self.generated_files],
        }
        if self.exit_cause is not None:
            out["exit_cause"] = self.exit_cause.value
            out["output_truncated"] = self.output_truncated
            out["skipped_files"] = list(self.skipped_files)
        if self.timeout_seconds is not None:
            out["timeout_seconds"] = self.timeout_seconds
        if self.warnings:
            out["warnings"] = list(self.warnings)
        if self.installed_packages is not None:
            out["installed_packages"] = list(self.installed_packages)
        if self.failed_packages is not None:
            out["failed_packages"] = list(self.failed_packages)
        if self.session is not None:
            out["session"] = self.session.to_dict()
        return out
