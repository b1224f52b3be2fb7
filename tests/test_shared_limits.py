"""State shared through the store, so N bot processes enforce one set of rules: file
contents in GridFS, the upload quota, the hourly run limit and the cooldown as atomic
documents, a sweep every process may run at once, run input files protected across
processes. Real MongoDB wire server; real processes where the race matters."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from interpreter.access import Admission, DenialReason, RunAccess, RunContext
from interpreter.audit import RunAudit
from interpreter.engine import Engine
from interpreter.files import FileManager
from interpreter.store import open_store
from tests.fixtures_mongo import TestClock, file_settings

REPO = Path(__file__).resolve().parent.parent
CSV = b"city,sales\nLyon,3\nNantes,4\n"
MEMBER = 4242

# One bot process: connects, says READY, waits for "go" (so both race from the same
# moment), then uploads and admits as fast as it can and prints what it got.
_BOT_PROCESS = r"""
import asyncio, json, sys
from config import load_settings
from interpreter.access import Admission, RunContext
from interpreter.engine import Engine

async def main(member, tries):
    engine = Engine(load_settings(dotenv=False))
    await engine.store.usage(member, engine.files._now())  # connected before the race
    print("READY", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    uploads = await asyncio.gather(*(engine.files.upload(member, b"a,b\n1,%d\n" % i, f"f{i}.csv") for i in range(tries)))
    admits = await asyncio.gather(*(engine.access.admit(RunContext(member_id=member)) for _ in range(tries)))
    print(json.dumps({"stored": sum(bool(u.get("success")) for u in uploads),
                      "admitted": sum(isinstance(a, Admission) for a in admits)}), flush=True)
    await engine.close()
    await engine.store.close()

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


def mongo_env(tmp_path: Path, name: str, mongo_server, database: str, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "DATA_DIR": str(tmp_path / name),
            "MONGODB_URI": mongo_server.uri, "MONGODB_DATABASE": database, **extra}


@pytest.mark.parametrize("backend", ["mongodb", "sqlite"])
async def test_two_bot_processes_enforce_one_quota_and_one_hourly_limit(tmp_path, request, mongo_db_name, backend):
    """MongoDB: two machines' processes (separate data dirs). SQLite: two processes of one machine."""
    limits = {"USER_MAX_FILES": "5", "RUNS_PER_MEMBER_PER_HOUR": "3", "RUN_COOLDOWN_SECONDS": "0"}
    if backend == "mongodb":
        server = request.getfixturevalue("mongo_server")
        envs = [mongo_env(tmp_path, f"bot{i}", server, mongo_db_name, **limits) for i in range(2)]
    else:
        envs = [{"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "DATA_DIR": str(tmp_path / "shared"),
                 **limits}] * 2
    processes = [subprocess.Popen([sys.executable, "-c", _BOT_PROCESS, str(MEMBER), "8"], env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for env in envs]
    try:
        for process in processes:
            line = await asyncio.to_thread(process.stdout.readline)
            assert line.strip() == b"READY", line + process.stderr.read()
        for process in processes:  # go: both race for the same member's places
            process.stdin.write(b"go\n")
            process.stdin.flush()
        outputs = [json.loads(await asyncio.to_thread(p.stdout.readline)) for p in processes]
    finally:
        for process in processes:
            process.kill()
            process.wait()
            for stream in (process.stdin, process.stdout, process.stderr):
                stream.close()
    assert sum(o["stored"] for o in outputs) == 5, outputs
    assert sum(o["admitted"] for o in outputs) == 3, outputs


def _settings(tmp_path, name, mongo_server, mongo_db_name, **environ):
    return file_settings(tmp_path / name, MONGODB_URI=mongo_server.uri, MONGODB_DATABASE=mongo_db_name, **environ)


async def test_a_file_uploaded_through_one_process_runs_in_another(tmp_path, mongo_server, mongo_db_name, sandbox_venv):
    from tests.fixtures_sandbox import make_settings

    first = FileManager(_settings(tmp_path, "a", mongo_server, mongo_db_name), open_store(
        _settings(tmp_path, "a", mongo_server, mongo_db_name)))
    file_id = (await first.upload(MEMBER, CSV, "sales.csv"))["file_id"]
    other = Engine(make_settings(tmp_path / "b", MONGODB_URI=mongo_server.uri, MONGODB_DATABASE=mongo_db_name))
    try:
        result = await other.run(f"df = load_file({file_id!r}); print(int(df['sales'].sum()))", MEMBER, [file_id])
        assert result.success and result.output == "7\n", result.error
        refused = await other.run(f"print(load_file({file_id!r}))", MEMBER + 1, [file_id])
        assert not refused.success and "not yours" in refused.error
    finally:
        await other.close()
        await other.store.close()
        await first.store.close()


async def test_every_process_sweeping_at_once_removes_each_file_once(tmp_path, mongo_server, mongo_db_name):
    clock = TestClock()
    managers = [FileManager(s, open_store(s), clock=clock, orphan_grace_seconds=0)
                for s in (_settings(tmp_path, name, mongo_server, mongo_db_name, FILE_EXPIRY_HOURS="1")
                          for name in ("a", "b", "c"))]
    for i in range(4):
        assert (await managers[i % 3].upload(MEMBER, CSV + b"x" * i, f"f{i}.csv"))["success"]
    clock.advance(hours=2)
    removed = await asyncio.gather(*(m.cleanup_expired() for m in managers))
    assert sum(removed) == 4, removed
    assert await managers[0].store.blob_ids_before(clock() + timedelta(days=1)) == [], "GridFS holds nothing"
    for manager in managers:
        await manager.store.close()


async def test_a_file_being_read_by_a_run_elsewhere_outlives_its_deletion(tmp_path, mongo_server, mongo_db_name):
    clock = TestClock()
    reader, deleter = (FileManager(s, open_store(s), clock=clock, orphan_grace_seconds=0)
                       for s in (_settings(tmp_path, n, mongo_server, mongo_db_name) for n in ("a", "b")))
    file_id = (await deleter.upload(MEMBER, CSV, "sales.csv"))["file_id"]
    [item] = await reader.resolve_for_run(MEMBER, [file_id])  # a run in the reader's process starts
    assert await deleter.delete(file_id, MEMBER)
    await deleter.cleanup_expired()
    assert item.host_path.read_bytes() == CSV
    assert await deleter.store.get_blob(file_id) == CSV, "kept while the run may read it"
    clock.advance(hours=1)  # the run's claim has ended
    await deleter.cleanup_expired()
    assert await deleter.store.get_blob(file_id) is None
    for manager in (reader, deleter):
        await manager.store.close()


async def test_the_cooldown_holds_across_processes(tmp_path, mongo_server, mongo_db_name):
    clock = TestClock()
    settings = _settings(tmp_path, "a", mongo_server, mongo_db_name, RUN_COOLDOWN_SECONDS="30")
    first, second = (RunAccess(settings, RunAudit(settings, open_store(settings), clock=clock)) for _ in range(2))
    admitted = await first.admit(RunContext(member_id=MEMBER))
    assert isinstance(admitted, Admission)
    denial = await second.admit(RunContext(member_id=MEMBER))
    assert denial.reason is DenialReason.COOLDOWN
    assert abs(denial.retry_at - (clock() + timedelta(seconds=30))) < timedelta(milliseconds=2)  # BSON: ms
    assert isinstance(await second.admit(RunContext(member_id=MEMBER + 1)), Admission), "per member"
    clock.advance(seconds=31)
    assert isinstance(await second.admit(RunContext(member_id=MEMBER)), Admission)


@pytest.mark.parametrize("cancel", [False, True])
async def test_an_admission_cancelled_in_one_process_frees_its_place_for_another(tmp_path, mongo_server,
                                                                                 mongo_db_name, cancel):
    settings = _settings(tmp_path, "a", mongo_server, mongo_db_name, RUNS_PER_MEMBER_PER_HOUR="1",
                         RUN_COOLDOWN_SECONDS="0")
    clock = TestClock()
    first, second = (RunAccess(settings, RunAudit(settings, open_store(settings), clock=clock)) for _ in range(2))
    admission = await first.admit(RunContext(member_id=MEMBER))
    assert isinstance(admission, Admission)
    if cancel:
        admission.cancel()
        await asyncio.gather(*first._releasing)
    outcome = await second.admit(RunContext(member_id=MEMBER))
    assert isinstance(outcome, Admission) is cancel


async def test_one_members_runs_execute_one_at_a_time_across_processes(tmp_path, mongo_server, mongo_db_name):
    settings = _settings(tmp_path, "a", mongo_server, mongo_db_name, RUN_COOLDOWN_SECONDS="0")
    first, second = (RunAccess(settings, RunAudit(settings, open_store(settings))) for _ in range(2))
    mine, theirs = await first.admit(RunContext(member_id=MEMBER)), await second.admit(RunContext(member_id=MEMBER))
    other_member = await second.admit(RunContext(member_id=MEMBER + 1))
    order: list[str] = []

    async def run(admission, name):
        async with admission.running():
            order.append(f"{name} starts")
            await started.wait() if name == "first" else None
            order.append(f"{name} ends")

    started = asyncio.Event()
    running_first = asyncio.ensure_future(run(mine, "first"))
    while order != ["first starts"]:
        await asyncio.sleep(0)
    waiting = asyncio.ensure_future(run(theirs, "second"))
    await run(other_member, "another member")  # not held up by someone else's run
    assert "second starts" not in order, "the member's second run waits in the other process"
    started.set()
    await asyncio.wait_for(asyncio.gather(running_first, waiting), 10)
    assert order.index("first ends") < order.index("second starts")


async def test_the_hourly_sweep_drops_expired_leases(tmp_path):
    engine = Engine(file_settings(tmp_path / "data"))  # SQLite: no TTL index does it
    now = engine.files._now()
    await engine.store.acquire_lease("cooldown:1", "x", now - timedelta(seconds=1), now - timedelta(seconds=5))
    await engine.store.acquire_lease("cooldown:2", "y", now + timedelta(hours=1), now)
    await engine.cleanup_expired()
    assert [lease.key for lease in await engine.store.leases_with_prefix("cooldown:", now - timedelta(days=1))] == [
        "cooldown:2"]
    await engine.close()


async def test_processes_opening_a_new_sqlite_database_at_once_all_get_in(tmp_path):
    """Several processes starting together on a fresh data dir race to switch the new
    database to WAL; SQLite answers the losers "database is locked" at once (no busy
    wait). Each open must wait its turn like any write, never report the store down."""
    from datetime import datetime, timezone

    from interpreter.store.sqlite import SQLiteStore

    now = datetime.now(timezone.utc)
    for round_ in range(60):
        path = tmp_path / f"round-{round_}" / "interpreter.sqlite"
        stores = [SQLiteStore(path) for _ in range(4)]  # four connections: as four processes
        # some connections are still opening while others already write
        counts = await asyncio.gather(*(stores[i % 4].count_up_to("runs", 100, now, now + timedelta(days=1))
                                        for i in range(16)))
        assert sorted(counts) == list(range(1, 17)), counts
        for store in stores:
            await store.close()
