"""Plain data shared by the engine's parts (no behaviour, no I/O)."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class InputFile:
    """A stored user file made available to one run, read-only, through load_file/FILES."""

    file_id: str
    filename: str  # already sanitised
    file_type: str  # csv, xlsx, json, parquet, image, text, ...
    host_path: Path  # the blob on the host; never shown to the sandbox
    size: int


@dataclasses.dataclass(frozen=True)
class GeneratedFile:
    """A file a run produced, as returned in result['generated_files']."""

    filename: str
    type: str  # image, data, text, html, pdf, archive, file
    data: bytes
    size: int
    file_id: str | None = None  # set when the file was kept as a user file
    not_kept: str | None = None  # why it was not kept as a user file, when that was asked for

    def to_dict(self) -> dict:
        out = {"filename": self.filename, "type": self.type, "data": self.data, "size": self.size}
        if self.file_id:
            out["file_id"] = self.file_id
        if self.not_kept:
            out["not_kept"] = self.not_kept
        return out


class ExitCause(enum.Enum):
    """Why a run ended. The engine turns each into the seed's error strings."""

    OK = "ok"
    EXCEPTION = "exception"  # user code raised, or exited non-zero
    TIMEOUT = "timeout"
    MEMORY = "memory"
    CPU = "cpu"
    OUTPUT_LIMIT = "output_limit"
    SIGNAL = "signal"  # killed by a signal we did not send
    CRASH = "crash"  # segfault, abort, bus error...
    SANDBOX = "sandbox"  # the sandbox itself failed to start
    PROTOCOL = "protocol"  # the sandbox's control channel broke the protocol or its limits: stopped


class InterpreterError(Exception):
    """An error whose message is safe and meant for the member (no paths, no secrets)."""
