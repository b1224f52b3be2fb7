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


# A session's job that keeps 1,200 pipes open in 12 processes (RLIMIT_NOFILE is 256 a
# process) after it has ended: 16 pages a pipe, past the 16,384 pages a host uid may hold
# before its new pipes shrink to one page (pipe-user-pages-soft). tests/test_sandbox_attacks.py
# and tests/test_forkserver.py show that another run's new pipes keep their 64 KiB.
PIPE_HOG = """
import os, time
pipes = []
children = []
for _ in range(11):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        held = [os.pipe() for _ in range(100)]
        os.write(w, b'x')
        time.sleep(1000)
    children.append(pid)
    os.read(r, 1)
    os.close(r)
    os.close(w)
pipes = [os.pipe() for _ in range(100)]
print('holding', 12 * 100)
"""
PIPE_SIZE_PROBE = """
import fcntl, os
r, w = os.pipe()
print(fcntl.fcntl(w, 1032))  # F_GETPIPE_SZ
"""
