"""What goes into a sandbox run and what comes out of it."""

from __future__ import annotations

import dataclasses

from interpreter.types import ExitCause, GeneratedFile, InputFile


@dataclasses.dataclass(frozen=True)
class SandboxJob:
    code: str
    timeout: float
    input_files: tuple[InputFile, ...] = ()
    owner: int | None = None  # the member it runs for: the queue keeps members fair (admission.py)


@dataclasses.dataclass
class SandboxOutcome:
    cause: ExitCause
    output: str = ""
    error: str = ""  # the member's traceback, or our explanation of the exit cause
    return_code: int = 0
    duration: float = 0.0
    output_truncated: bool = False
    files: list[GeneratedFile] = dataclasses.field(default_factory=list)
    skipped_files: list[str] = dataclasses.field(default_factory=list)  # "name (reason)"
    paused_seconds: float = 0.0  # the queue paused the run this long (admission.py); not in `duration`
    starved_seconds: float = 0.0  # in the long lane it waited this long for a CPU (admission.py); not in `duration`
    wall_capped: bool = False  # timed out at its wall cap, before it had run its time-out (admission.py)

    @property
    def success(self) -> bool:
        return self.cause is ExitCause.OK
