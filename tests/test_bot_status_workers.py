"""/status for a whole deployment: every execution worker with its health, load, warm
sandboxes and version, and one that does not answer shown as such within seconds.

Real worker processes on loopback (`python -m interpreter.service`), a bot that knows only
their URLs, discord.py's real interaction dispatch; a worker that accepts connections and
never answers stands in for a hung pod."""

from __future__ import annotations

import asyncio
import re
import signal
import time

import pytest

from config.settings import Secret
from interpreter.remote import STATUS_TIMEOUT_SECONDS
from tests.discord_harness import admin_permissions
from tests.fixtures_executor import WORKER_TOKEN


@pytest.fixture
async def hung_worker():
    """A TCP port that accepts and reads but never answers (a wedged process, a black-holed pod)."""
    connections = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await reader.read()  # until the client gives up

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    for writer in connections:
        writer.close()
    server.close()
    await server.wait_closed()


async def remote_bot(bot_settings, monkeypatch, tmp_path, urls):
    from tests.fixtures_discord import start_bot

    settings = bot_settings.replace(executor_urls=tuple(urls), executor_token=Secret(WORKER_TOKEN),
                                    run_timeout=30, max_run_timeout=30)  # as the test workers
    return await start_bot(settings, monkeypatch, tmp_path)


async def close(world) -> None:
    import interpreter

    world.bot.expiry_sweep.cancel()
    await (await interpreter.get_engine()).close()  # the client's HTTP connections to the workers


async def client_workers():
    """The bot's own record of each worker (runs it has in flight there)."""
    import interpreter

    return await (await interpreter.get_engine()).executor.workers()


def workers_field(reply) -> str:
    embed = reply.message["embeds"][0]
    return {f["name"]: f["value"] for f in embed["fields"]}["Execution workers"]


async def test_status_lists_every_worker_and_a_hung_one_quickly(executor_workers, hung_worker, bot_settings,
                                                                monkeypatch, tmp_path):
    live, = await executor_workers(1)
    world = await remote_bot(bot_settings, monkeypatch, tmp_path, [live.url, hung_worker])
    try:
        began = time.monotonic()
        reply = await world.harness.slash("status", world.carol, permissions=admin_permissions())
        elapsed = time.monotonic() - began
        field = workers_field(reply)
        lines = field.splitlines()
        assert lines[0] == "**2 workers:** 1 ready, 1 not answering"
        ready = next(line for line in lines if line.startswith("🟢"))
        assert re.fullmatch(r"🟢 \S+ · ready · 0 running · 0 waiting · \d+ warm · 0 sessions · v\S+", ready), ready
        assert "🔴 worker 2 · not answering" in lines
        assert elapsed < STATUS_TIMEOUT_SECONDS + 5, f"/status took {elapsed:.1f} s with a hung worker"
        assert reply.message["embeds"][0]["color"] != 0x2ECC71  # not all green
        # A server's admin sees no infrastructure addresses; the bot's owner does.
        assert "127.0.0.1" not in field
        world.bot.settings = world.bot.settings.replace(owner_ids=(world.alice.id,))
        owner_view = workers_field(await world.harness.slash("status", world.alice))
        assert f"({live.url})" in owner_view.replace("\\", "") and f"({hung_worker})" in owner_view
    finally:
        await close(world)


async def test_a_draining_worker_shows_as_draining_not_gone(executor_workers, bot_settings, monkeypatch, tmp_path):
    draining, steady = await executor_workers(2)
    world = await remote_bot(bot_settings, monkeypatch, tmp_path, [draining.url, steady.url])
    try:
        # Hold the worker in its drain with a run in flight, then ask for /status.
        run = world.harness.start_slash("run", world.bob, code="import time; time.sleep(8)")
        for _ in range(300):
            if any(w.in_flight for w in await client_workers()):
                break
            await asyncio.sleep(0.05)  # polling for the run to reach a worker, not timing it
        busy = next(w for w in await client_workers() if w.in_flight)
        victim = draining if busy.url == draining.url else steady
        victim.process.send_signal(signal.SIGTERM)
        for _ in range(300):
            field = workers_field(await world.harness.slash("status", world.carol, permissions=admin_permissions()))
            if "draining" in field:
                break
        assert "🟡" in field and "1 draining" in field.splitlines()[0], field
        assert "not answering" not in field
        await run.wait()
    finally:
        await close(world)


async def test_a_bot_process_that_stops_leaves_sessions_on_the_workers(executor_workers, bot_settings,
                                                                       monkeypatch, tmp_path):
    """Several bot pods share the workers, and a restarting pod comes back: stopping one bot
    process must not end members' sessions (it once ended every session of the deployment)."""
    import aiohttp

    worker, = await executor_workers(1)
    world = await remote_bot(bot_settings, monkeypatch, tmp_path, [worker.url])
    started = await world.harness.slash("session", world.alice, subcommand="start")
    assert "session" in started.content.lower(), started.content

    async def sessions_on_worker() -> list:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {WORKER_TOKEN}"}) as http:
            async with http.get(worker.url + "/v1/sessions") as resp:
                assert resp.status == 200
                return (await resp.json())["sessions"]

    assert len(await sessions_on_worker()) == 1
    # What close() does after a drain (discord.py unloads every extension, then the engine
    # closes); the harness's fake gateway cannot be closed itself.
    import interpreter

    for extension in list(world.bot.extensions):
        await world.bot.unload_extension(extension)
    await interpreter.shutdown()
    world.bot.expiry_sweep.cancel()
    assert len(await sessions_on_worker()) == 1, "a bot process stopping ended a member's session"


async def test_status_names_the_shards_of_the_bot_process_that_answered(discord_world):
    from bot.sharding import ShardPlan

    w = discord_world
    reply = await w.harness.slash("status", w.carol, permissions=admin_permissions())
    fields = {f["name"]: f["value"] for f in reply.message["embeds"][0]["fields"]}
    assert "this bot process" not in fields["Uptime"]  # not sharded: nothing to say
    assert "Execution workers" not in fields  # in-process engine: no workers to list
    w.bot.shards_plan = ShardPlan(4, (2, 3))  # as pod 1 of a StatefulSet with SHARDS_PER_POD=2
    reply = await w.harness.slash("status", w.carol, permissions=admin_permissions())
    fields = {f["name"]: f["value"] for f in reply.message["embeds"][0]["fields"]}
    assert "**this bot process:** shards 2, 3 of 4" in fields["Uptime"]
