"""Execution workers (`python -m interpreter.service`) as real processes on loopback.

`executor_workers(n)` starts n workers (interpreter/service/local.py), each with its own
data dir, sharing the test session's sandbox venv, and waits until each answers /readyz.
A worker's environment is built from scratch: it holds no bot token and no database URI,
only its own token, as in production. Workers are stopped (SIGKILL if they ignore
SIGTERM) after the test.

Helpers read the process tree from /proc: `descendants(pid)` and `cgroups_of(pids)`,
to prove no sandbox process or run cgroup outlives a worker.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from interpreter.service.local import LocalWorker, WorkerStartError, start_local_worker, wait_ready
from tests.fixtures_sandbox import DEFAULT_TEST_VENV

WORKER_TOKEN = "test-worker-token-7f3a"


def worker_settings(**extra: str) -> dict[str, str]:
    settings = {
        "SANDBOX_VENV_DIR": os.environ.get("TEST_SANDBOX_VENV_DIR", DEFAULT_TEST_VENV),
        "VENV_MAX_AGE_DAYS": "0",
        "SANDBOX_FORK_SERVER": "false",
        "SANDBOX_POOL_SIZE": "0",  # cold runs: warm-up costs CPU the shared test machine lacks
        "SANDBOX_LIGHT_POOL_SIZE": "1",
        "MAX_CONCURRENT_RUNS": "4",
        "RUN_TIMEOUT_SECONDS": "30",
        "MAX_RUN_TIMEOUT_SECONDS": "30",
        "LOG_LEVEL": "INFO",
    }
    settings.update(extra)
    return settings


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
    """Factory: `await executor_workers(2)` -> [LocalWorker, ...], ready."""
    started: list[LocalWorker] = []

    async def start(count: int, **extra: str) -> list[LocalWorker]:
        try:
            workers = []
            for _ in range(count):
                workers.append(start_local_worker(tmp_path / f"worker{len(started)}", WORKER_TOKEN,
                                                  **worker_settings(**extra)))
                started.append(workers[-1])
            await asyncio.gather(*(wait_ready(w) for w in workers))
        except WorkerStartError as exc:
            pytest.fail(str(exc), pytrace=False)
        return workers

    yield start
    for worker in started:
        worker.stop()
