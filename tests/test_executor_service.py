"""The execution service and its client on loopback: real worker processes, the real
sandbox, the real MongoDB wire server for the bot side's store.

Two workers with separate data dirs; a bot-side Engine that knows only their URLs.
"""

from __future__ import annotations

import asyncio
import json
import signal

import aiohttp
import pytest

from interpreter.engine import Engine
from interpreter.remote import NO_WORKER, SESSION_GONE, RemoteExecutor
from tests.fixtures_executor import WORKER_TOKEN, cgroups_of, descendants, until_gone
from tests.fixtures_mongo import file_settings

CSV = b"city,sales\nLyon,3\nNantes,4\nLille,5\n"
LOAD = "df = load_file({fid!r}); print('total', int(df['sales'].sum()))"


def bot_settings(tmp_path, mongo_server, mongo_db_name, workers, **environ):
    return file_settings(tmp_path / "bot", MONGODB_URI=mongo_server.uri, MONGODB_DATABASE=mongo_db_name,
                         EXECUTOR_URLS=",".join(w.url for w in workers), EXECUTOR_TOKEN=WORKER_TOKEN,
                         RUN_TIMEOUT_SECONDS="30", MAX_RUN_TIMEOUT_SECONDS="30", **environ)


@pytest.fixture
async def two_workers(executor_workers):
    return await executor_workers(2)


@pytest.fixture
async def bot_engine(tmp_path, mongo_server, mongo_db_name, two_workers):
    engine = Engine(bot_settings(tmp_path, mongo_server, mongo_db_name, two_workers))
    assert isinstance(engine.executor, RemoteExecutor)
    yield engine
    await engine.close()
    await engine.store.close()


async def client_view(engine, worker):
    """The bot's record of a worker (runs in flight from this process)."""
    return next(w for w in await engine.executor.workers() if w.url == worker.url)


async def call(url, method="GET", path="/healthz", *, token=WORKER_TOKEN, body=None, raw=None):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url + path, headers=headers, data=data) as resp:
            return resp.status, await resp.text()


async def test_token_is_required_and_probes_are_open(two_workers):
    url = two_workers[0].url
    assert (await call(url, "GET", "/v1/status", token="wrong-token"))[0] == 401
    assert (await call(url, "GET", "/v1/status", token=None))[0] == 401
    assert (await call(url, "POST", "/v1/run", token=WORKER_TOKEN[:-1] + "x", body={"code": "print(1)"}))[0] == 401
    assert (await call(url, "GET", "/healthz", token=None))[0] == 200
    assert (await call(url, "GET", "/readyz", token=None))[0] == 200
    assert (await call(url, "GET", "/metrics", token=None))[0] == 401
    status, text = await call(url, "GET", "/metrics")
    assert status == 200 and "interpreter_queue_depth" in text and "interpreter_unauthorized_requests_total 4.0" in text


@pytest.mark.parametrize(("body", "field"), [
    ({"code": "print(1)"}, "timeout"),
    ({"code": 5, "timeout": 5, "user_id": 1}, "code"),
    ({"code": "print(1)", "timeout": 5, "user_id": "1"}, "user_id"),
    ({"code": "print(1)", "timeout": 10_000, "user_id": 1}, "timeout"),
    ({"code": "print(1)", "timeout": 5, "user_id": 1, "files": [{"file_id": "a", "filename": "a", "file_type": "csv",
                                                                  "data": "not base64!"}]}, "files[0].data"),
    # The run id is written into the worker's log: one format, bounded, no forged log lines.
    ({"code": "print(1)", "timeout": 5, "user_id": 1, "run_id": 7}, "run_id"),
    ({"code": "print(1)", "timeout": 5, "user_id": 1, "run_id": "0" * 31 + "\nINFO forged"}, "run_id"),
    ({"code": "print(1)", "timeout": 5, "user_id": 1, "run_id": "a" * 1_000_000}, "run_id"),
    ({"code": "print(1)", "timeout": 5, "user_id": 1, "run_id": "A" * 32}, "run_id"),
])
async def test_malformed_requests_get_a_clear_400(two_workers, body, field):
    status, text = await call(two_workers[0].url, "POST", "/v1/run", body=body)
    assert status == 400 and field in json.loads(text)["error"], text


async def test_bodies_over_the_limit_are_refused_with_413(executor_workers):
    [worker] = await executor_workers(1, EXECUTOR_MAX_REQUEST_MB="1")
    status, text = await call(worker.url, "POST", "/v1/run", raw=b"x" * (2 * 1024 * 1024))
    assert status == 413 and json.loads(text)["kind"] == "too_large"
    assert (await call(worker.url, "POST", "/v1/run", raw=b"{not json"))[0] == 400


async def test_runs_with_files_go_through_the_workers(bot_engine):
    uploaded = await bot_engine.files.upload(1, CSV, "sales.csv")
    fid = uploaded["file_id"]
    results = await asyncio.gather(*(bot_engine.run(LOAD.format(fid=fid), 1, [fid]) for _ in range(4)))
    for result in results:
        assert result.success, result.error
        assert result.output == "total 12\n"
    chart = await bot_engine.run("import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.savefig('c.png')", 1)
    assert chart.success and chart.generated_files[0].data.startswith(b"\x89PNG")
    served = [w for w in await bot_engine.executor.workers() if w.last_used]
    assert len(served) == 2, "runs are spread over both workers"


async def test_member_cannot_load_another_members_file_remotely(bot_engine):
    theirs = (await bot_engine.files.upload(2, CSV, "secret.csv"))["file_id"]
    result = await bot_engine.run(LOAD.format(fid=theirs), 1, [theirs])
    assert not result.success and "not found" in result.error
    named_only = await bot_engine.run(LOAD.format(fid=theirs), 1)  # named in code, not listed
    assert not named_only.success and "total" not in named_only.output


def logged_runs(worker) -> dict[str, list[str]]:
    """The worker's log lines about each run, by run id ("run <id>: ...")."""
    lines: dict[str, list[str]] = {}
    for line in worker.log_path.read_text(errors="replace").splitlines():
        head, found, rest = line.partition(" run ")
        if found and ": " in rest:
            run_id, _, what = rest.partition(": ")
            lines.setdefault(run_id, []).append(what)
    return lines


async def test_the_worker_logs_each_run_under_its_audit_records_id(bot_engine, two_workers):
    # Before: the run id stayed on the bot side; a worker's log could not be matched to the audit.
    results = [await bot_engine.run(f"print({n})", 1) for n in range(3)]
    assert [r.output for r in results] == ["0\n", "1\n", "2\n"], [r.error for r in results]
    await bot_engine.audit.flush()
    audited = {run["run_id"] for run in await bot_engine.recent_runs(10, user_id=1)}
    assert len(audited) == 3
    logged = {run_id: what for worker in two_workers for run_id, what in logged_runs(worker).items()}
    for run_id in audited:
        assert [line.split(" in ")[0] for line in logged.get(run_id, [])] == [
            "started (one-shot, 0 input files, 0 packages)", "ended ok"], (run_id, logged)


async def test_sigkill_mid_load_every_run_gets_one_correct_answer(bot_engine, two_workers):
    fid = (await bot_engine.files.upload(1, CSV, "sales.csv"))["file_id"]
    code = "import time\ntime.sleep(1.5)\n" + LOAD.format(fid=fid)
    runs = [asyncio.ensure_future(bot_engine.run(code, 1, [fid])) for _ in range(6)]
    victim = two_workers[0]
    client_side = await client_view(bot_engine, victim)
    for _ in range(600):
        if client_side.in_flight >= 2 and descendants(victim.pid):
            break
        await asyncio.sleep(0.05)
    sandboxes = descendants(victim.pid)
    assert sandboxes, "the victim had runs in flight"
    victim.process.send_signal(signal.SIGKILL)
    results = await asyncio.gather(*runs)
    assert [r.output for r in results] == ["total 12\n"] * 6, [r.error for r in results]
    assert bot_engine.executor.retried >= 1
    assert await until_gone(sandboxes) == set(), "no sandbox outlives the killed worker"
    # The bot side owns the audit: a retried run kept its one run id and one record.
    await bot_engine.audit.flush()
    audited = await bot_engine.recent_runs(20, user_id=1)
    assert [run["status"] for run in audited] == ["ok"] * 6 and len({run["run_id"] for run in audited}) == 6
    # ...and the worker that answered it logged its end under that id (a retried run: the
    # survivor, under the id the victim logged it started with).
    ended = {run_id for worker in two_workers for run_id, what in logged_runs(worker).items()
             if any(line.startswith("ended ok") for line in what)}
    assert {run["run_id"] for run in audited} <= ended, ended


async def test_sigterm_drains_runs_in_flight_and_leaves_nothing(bot_engine, two_workers):
    draining = two_workers[1]
    code = "import time\ntime.sleep(2)\nprint('finished')"
    runs = [asyncio.ensure_future(bot_engine.run(code, 1)) for _ in range(4)]
    for _ in range(600):
        if len(descendants(draining.pid)) >= 2 and (await client_view(bot_engine, draining)).in_flight:
            break
        await asyncio.sleep(0.05)
    sandboxes = descendants(draining.pid)
    groups = cgroups_of(sandboxes)
    draining.process.send_signal(signal.SIGTERM)
    for _ in range(100):
        if (await call(draining.url, "GET", "/readyz", token=None))[0] == 503:
            break
        await asyncio.sleep(0.05)
    status, text = await call(draining.url, "POST", "/v1/run", body={"code": "print(1)", "timeout": 5, "user_id": 1})
    assert status == 503 and json.loads(text)["kind"] == "draining"
    results = await asyncio.gather(*runs)
    assert all(r.success and r.output == "finished\n" for r in results), [r.error for r in results]
    assert await asyncio.to_thread(draining.process.wait, 60) == 0
    assert await until_gone(sandboxes) == set()
    assert not [g for g in groups if g.exists()], "no run cgroup is left behind"


async def test_session_is_pinned_and_its_loss_is_told(bot_engine, two_workers, tmp_path, mongo_server, mongo_db_name):
    first = await bot_engine.run("x = 41", 1, session_id="g:c:1")
    assert first.success and first.session.started
    # A second bot process on the same store finds the session where the first put it.
    other = Engine(bot_settings(tmp_path, mongo_server, mongo_db_name, two_workers))
    try:
        second = await other.run("x += 1\nprint(x)", 1, session_id="g:c:1")
        assert second.output == "42\n" and not second.session.started
        lease = await other.store.read_lease("session:g:c:1", other.executor._now())
        holder = next(w for w in two_workers if w.url == lease.holder)
        holder.process.send_signal(signal.SIGKILL)
        holder.process.wait()
        lost = await other.run("print(x)", 1, session_id="g:c:1")
        assert not lost.success and lost.error == SESSION_GONE
        assert await bot_engine.executor.session_continues("g:c:1")
        fresh = await bot_engine.run("print('fresh')", 1, session_id="g:c:1")
        assert fresh.success and fresh.session.started and "machine running it stopped" in fresh.session.note
    finally:
        await other.close()
        await other.store.close()


async def test_no_worker_reachable_is_a_clear_refusal(tmp_path, mongo_server, mongo_db_name, two_workers):
    for worker in two_workers:
        worker.process.kill()
        worker.process.wait()
    engine = Engine(bot_settings(tmp_path, mongo_server, mongo_db_name, two_workers))
    try:
        result = await engine.run("print(1)", 1)
        assert not result.success and result.error == NO_WORKER
    finally:
        await engine.close()
        await engine.store.close()


async def test_a_name_counts_once_per_address_of_one_family(tmp_path):
    """`localhost` (::1 and 127.0.0.1: one process) is one worker; the loopback range
    stands in for a headless Service's pods."""
    from interpreter.remote import RemoteExecutor

    assert await RemoteExecutor._expand("http://localhost:8790") == ["http://localhost:8790"]
    assert await RemoteExecutor._expand("http://127.0.0.1:8790") == ["http://127.0.0.1:8790"]
    assert await RemoteExecutor._expand("http://no-such-host.invalid:8790") == ["http://no-such-host.invalid:8790"]
