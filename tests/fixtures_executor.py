"""Execution workers (`python -m interpreter.service`) as real processes on loopback.

`executor_workers(n)` starts n workers, each with its own data dir, sharing the test
session's sandbox venv, and waits until each answers /readyz. A worker's environment
is built from scratch: it holds no bot token and no database URI, only its own token,
as in production. Workers are stopped (SIGKILL if they ignore SIGTERM) after the test.

Helpers read the process tree from /proc: `descendants(pid)` and `cgroups_of(pids)`,
to prove no sandbox process or run cgroup outlives a worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.fixtures_mongo import free_port
from tests.fixtures_sandbox import DEFAULT_TEST_VENV

REPO = Path(__file__).resolve().parent.parent
WORKER_TOKEN = "test-worker-token-7f3a"
START_SECONDS = 120
READY_POLLS = 1200  # of 0.1 s: warm-up imports the data libraries, slowly on a shared machine


@dataclasses.dataclass
class WorkerProcess:
    process: subprocess.Popen
    port: int
    data_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None


def worker_environment(data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(data_dir),
        "PYTHONPATH": str(REPO),
        "DATA_DIR": str(data_dir),
        "SANDBOX_VENV_DIR": os.environ.get("TEST_SANDBOX_VENV_DIR", DEFAULT_TEST_VENV),
        "VENV_MAX_AGE_DAYS": "0",
        "EXECUTOR_HOST": "127.0.0.1",
        "EXECUTOR_PORT": str(port),
        "EXECUTOR_TOKEN": WORKER_TOKEN,
        "SANDBOX_POOL_SIZE": "0",  # cold runs: warm-up costs CPU the shared test machine lacks
        "SANDBOX_LIGHT_POOL_SIZE": "1",
        "MAX_CONCURRENT_RUNS": "4",
        "RUN_TIMEOUT_SECONDS": "30",
        "MAX_RUN_TIMEOUT_SECONDS": "30",
        "LOG_LEVEL": "INFO",
    }
    env.update(extra)
    return env


def start_worker(tmp_path: Path, name: str, **extra: str) -> WorkerProcess:
    data_dir = tmp_path / name
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "interpreter.service"], cwd=data_dir,
                               env=worker_environment(data_dir, port, **extra),
                               stdout=subprocess.PIPE, stderr=open(data_dir / "worker.log", "wb"))
    ready, _, _ = select.select([process.stdout], [], [], START_SECONDS)
    line = process.stdout.readline() if ready else b""
    if not line.startswith(b"listening on"):
        process.kill()
        process.wait()
        pytest.fail(f"worker {name} did not start: {line!r}\n{(data_dir / 'worker.log').read_text()[-3000:]}",
                    pytrace=False)
    return WorkerProcess(process, port, data_dir)


async def wait_ready(worker: WorkerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(READY_POLLS):
            try:
                async with http.get(worker.url + "/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            if not worker.alive():
                break
            await asyncio.sleep(0.1)  # polling a probe, not timing a behaviour
    pytest.fail(f"worker on {worker.url} never became ready:\n{(worker.data_dir / 'worker.log').read_text()[-3000:]}",
                pytrace=False)


def stop_worker(worker: WorkerProcess) -> None:
    if worker.alive():
        worker.process.send_signal(signal.SIGTERM)
        try:
            worker.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()
    if worker.process.stdout:
        worker.process.stdout.close()


def descendants(pid: int) -> set[int]:
    """Every process below `pid` now (from /proc's children lists)."""
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    frontier.append(child)
    return found


def cgroups_of(pids: set[int]) -> set[Path]:
    """The per-run cgroup directories these processes are in."""
    dirs: set[Path] = set()
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            _, controllers, path = line.split(":", 2)
            if "/run-" not in path:
                continue
            for controller in controllers.split(",") or [""]:
                root = Path("/sys/fs/cgroup") / controller if controller else Path("/sys/fs/cgroup")
                dirs.add(root / path.lstrip("/"))
    return dirs


def alive_pids(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            alive.add(pid)
    return alive


async def until_gone(pids: set[int], polls: int = 300) -> set[int]:
    """Wait (bounded) until none of `pids` is alive; returns those still alive."""
    for _ in range(polls):
        left = alive_pids(pids)
        if not left:
            return left
        await asyncio.sleep(0.1)
    return alive_pids(pids)


@pytest.fixture
async def executor_workers(tmp_path, sandbox_venv):
    """Factory: `await executor_workers(2)` -> [WorkerProcess, ...], ready."""
    started: list[WorkerProcess] = []

    async def start(count: int, **extra: str) -> list[WorkerProcess]:
        workers = [start_worker(tmp_path, f"worker{len(started) + i}", **extra) for i in range(count)]
        started.extend(workers)
        await asyncio.gather(*(wait_ready(w) for w in workers))
        return workers

    yield start
    for worker in started:
        stop_worker(worker)
