"""Small helpers for tests that run code in the real sandbox."""

from __future__ import annotations

import textwrap
from pathlib import Path

from interpreter.filetypes import classify
from interpreter.sandbox import SandboxJob, SandboxOutcome, SandboxRunner
from interpreter.types import InputFile


async def run(runner: SandboxRunner, code: str, *, timeout: float = 20, inputs: tuple[InputFile, ...] = ()) -> SandboxOutcome:
    return await runner.run(SandboxJob(code=textwrap.dedent(code), timeout=timeout, input_files=inputs))


def input_file(tmp_path: Path, name: str, data: bytes, file_id: str = "f_test0001") -> InputFile:
    blob = tmp_path / f"blob-{file_id}"
    blob.write_bytes(data)
    return InputFile(file_id=file_id, filename=name, file_type=classify(name), host_path=blob, size=len(data))


def files_by_name(outcome: SandboxOutcome) -> dict[str, bytes]:
    return {f.filename: f.data for f in outcome.files}
