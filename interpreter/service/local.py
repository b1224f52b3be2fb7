"""Starting execution workers as child processes on this machine (tests, benchmarks, a
development setup): `python -m interpreter.service` with an environment built from
scratch, so a worker inherits no bot token and no database URI from its parent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[2]
START_SECONDS = 120


class WorkerStartError(RuntimeError):
    """The worker did not start or never became ready; the message carries its log's end."""


@dataclasses.dataclass
class LocalWorker:
    process: subprocess.Popen
    port: int
    data_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.data_dir / "worker.log"

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (the worker drains), then SIGKILL after `timeout`; returns the exit status."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        return self.process.returncode


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_local_worker(data_dir: Path, token: str, **settings: str) -> LocalWorker:
    """Start a worker on a free loopback port; returns once it accepts connections."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(data_dir), "PYTHONPATH": str(REPO),
           "DATA_DIR": str(data_dir), "EXECUTOR_HOST": "127.0.0.1", "EXECUTOR_PORT": str(port),
           "EXECUTOR_TOKEN": token, **settings}
    with open(data_dir / "worker.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "interpreter.service"], cwd=data_dir, env=env,
                                   stdout=subprocess.PIPE, stderr=log)
    worker = LocalWorker(process, port, data_dir)
    ready, _, _ = select.select([process.stdout], [], [], START_SECONDS)
    line = process.stdout.readline() if ready else b""
    if not line.startswith(b"listening on"):
        process.kill()
        process.wait()
        raise WorkerStartError(f"worker did not start: {line!r}\n{worker.log_tail()}")
    return worker


async def wait_ready(worker: LocalWorker, polls: int = 1200) -> None:
    """Until /readyz answers 200 (warm-up done), polling every 0.1 s; raises if it never does."""
    async with aiohttp.ClientSession() as http:
        for _ in range(polls):
            try:
                async with http.get(worker.url + "/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            if not worker.alive():
                break
            await asyncio.sleep(0.1)
    raise WorkerStartError(f"worker on {worker.url} never became ready\n{worker.log_tail()}")
