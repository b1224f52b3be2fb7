"""The bot while its database is down: /run is acknowledged within Discord's deadline
and runs (it needs no database), the hourly limit says it could not be counted, audit
records of the outage are kept on local disk and written once the database is back,
and shutdown does not wait a database timeout per unwritten record.

Real bot, cogs, engine and sandbox; a file-backed MongoDB wire server killed with
SIGKILL and restarted on the same port; only Discord's network is recorded.
"""

from __future__ import annotations

import contextlib
import signal
import time

import discord.ext.test as dpytest
import pytest

import interpreter
from config.settings import Secret
from interpreter.access import UNCOUNTED_NOTE
from interpreter.audit import coalesce
from interpreter.engine import Engine
from tests.fixtures_discord import start_bot
from tests.fixtures_mongo import MongoTestServer

DISCORD_DEADLINE = 3.0  # an interaction not acknowledged within 3 s fails in the member's client
# Longer than Discord's deadline: before the fix, one store query alone made /run miss it.
SERVER_SELECTION_MS = 4000


def kill(server: MongoTestServer) -> None:
    """SIGKILL, as a crash or an OOM kill would: no goodbye to the clients."""
    process = server._process
    process.send_signal(signal.SIGKILL)
    process.wait()
    server.stop()  # closes the pipes


@contextlib.asynccontextmanager
async def bot_on_mongo(bot_settings, monkeypatch, tmp_path, database: str, selection_ms: int = SERVER_SELECTION_MS,
                       **settings):
    """The real bot on a file-backed MongoDB wire server (`world.mongo`, to kill and restart)."""
    server = MongoTestServer(sqlite_path=tmp_path / "mongo.sqlite3").start()
    settings = bot_settings.replace(
        mongodb_uri=Secret(f"{server.uri}&serverSelectionTimeoutMS={selection_ms}"),
        mongodb_database=database, **settings)
    world = await start_bot(settings, monkeypatch, tmp_path)
    engine = await interpreter.get_engine()
    world.mongo = server
    try:
        yield world
    finally:
        world.bot.expiry_sweep.cancel()
        await dpytest.empty_queue()
        await engine.close()
        await engine.store.close()
        server.stop()


def acknowledged_after(reply, dispatched: float, stamps: dict[int, float]) -> float:
    callback = reply.callback
    return stamps[id(callback)] - dispatched


@pytest.fixture
def stamped(monkeypatch):
    """When each request reached Discord's (recorded) API: id(Sent) -> time.monotonic()."""
    stamps: dict[int, float] = {}

    def install(world):
        recorder = world.harness.recorder
        original = recorder._answer

        def answer(sent):
            stamps[id(sent)] = time.monotonic()
            return original(sent)

        monkeypatch.setattr(recorder, "_answer", answer)
        return stamps

    return install


async def test_run_is_acknowledged_and_runs_while_mongodb_is_down(bot_settings, monkeypatch, tmp_path, stamped):
    server = MongoTestServer(sqlite_path=tmp_path / "mongo.sqlite3").start()
    settings = bot_settings.replace(
        mongodb_uri=Secret(f"{server.uri}&serverSelectionTimeoutMS={SERVER_SELECTION_MS}"),
        mongodb_database="outage", runs_per_member_per_hour=20)
    world = await start_bot(settings, monkeypatch, tmp_path)
    stamps = stamped(world)
    engine = await interpreter.get_engine()
    try:
        assert "up" in (await world.harness.slash("run", world.alice, code="print('up')")).content
        await engine.audit.flush()
        kill(server)

        for member, word in ((world.alice, "first"), (world.bob, "second"), (world.alice, "third")):
            dispatched = time.monotonic()
            reply = await world.harness.start_slash("run", member, code=f"print('{word}')").wait()
            assert reply.callback.payload["type"] == 5  # deferred: public "thinking"
            assert acknowledged_after(reply, dispatched, stamps) < 1.0, "acknowledge before any database call"
            assert word in reply.content and "✅" in reply.content  # the run needs no database
            [note] = reply.followups
            assert note.ephemeral and note.content == f"ℹ️ {UNCOUNTED_NOTE}"

        # Shutdown with records unwritten: bounded, not a database timeout per record.
        shutdown_started = time.monotonic()
        world.bot.expiry_sweep.cancel()
        await dpytest.empty_queue()
        await engine.close()
        assert time.monotonic() - shutdown_started < SERVER_SELECTION_MS / 1000 + 2
        assert engine.audit.backlog()["dropped"] == 0
        kept, unreadable = engine.audit.spool.read()  # the outage's runs, on local disk:
        assert unreadable == 0 and [r.status for r in kept].count("running") == 3  # each admission,
        assert len(coalesce(kept)) == 3  # then its end under the same run id: three runs

        # The database returns; a new process (same DATA_DIR) writes the kept records first.
        server.start()
        restarted = Engine(settings)
        try:
            assert (await restarted.execute("print('after')", world.alice.id))["success"]
            runs = await restarted.recent_runs(10)
            assert len(runs) == 5  # up, the three during the outage, after
            assert restarted.audit.spool.count == 0
        finally:
            await restarted.close()
            await restarted.store.close()
    finally:
        world.bot.expiry_sweep.cancel()
        await engine.store.close()
        server.stop()


async def test_hourly_limit_still_refuses_what_this_process_counted_during_an_outage(
        bot_settings, monkeypatch, tmp_path):
    """Failing open is bounded: the memory window of this process still counts."""
    async with bot_on_mongo(bot_settings, monkeypatch, tmp_path, "outage_limit", runs_per_member_per_hour=2) as world:
        assert "one" in (await world.harness.slash("run", world.alice, code="print('one')")).content
        kill(world.mongo)
        assert "two" in (await world.harness.slash("run", world.alice, code="print('two')")).content
        refused = await world.harness.slash("run", world.alice, code="print('three')")
        assert refused.callback.ephemeral  # refused before acknowledging: no database needed to know
        assert refused.callback.content.startswith("⏳ You've used your 2 runs for this hour")


async def test_a_limit_only_the_run_history_knows_is_refused_privately_after_the_acknowledgement(
        bot_settings, monkeypatch, tmp_path):
    """Runs of an earlier process are in the store only: the refusal comes after the
    deferral, privately, and the public "thinking" message is removed."""
    world = await start_bot(bot_settings.replace(runs_per_member_per_hour=1), monkeypatch, tmp_path)
    engine = await interpreter.get_engine()
    try:
        earlier = engine.audit.build_record({"success": True, "exit_cause": "ok"}, user_id=world.alice.id,
                                            code="print(0)", started_at=engine.audit.now(), duration_seconds=0.1)
        assert await engine.audit.record(earlier)

        reply = await world.harness.slash("run", world.alice, code="print('over the limit')")
        assert [s.kind for s in reply.sent] == ["callback", "edit_original", "followup", "delete_original"]
        assert reply.callback.payload["type"] == 5
        [refusal] = reply.followups
        assert refusal.ephemeral
        assert refusal.content.startswith("⏳ You've used your 1 run for this hour; next one available <t:")
        assert reply.message_id in world.harness.recorder.deleted
        assert len(await engine.recent_runs(10)) == 1  # nothing ran
    finally:
        world.bot.expiry_sweep.cancel()
        await dpytest.empty_queue()
        await engine.close()


def test_status_shows_audit_records_not_yet_in_the_database():
    from cogs._queue import QueueStats
    from cogs.admin import status_embed

    status = {"run_audit_error": "The file database is unavailable right now; try again in a minute",
              "run_audit_backlog": {"waiting": 1, "on_disk": 3, "dropped": 0}}
    embed = status_embed(status, queue=QueueStats(0, 0, 0, 2), bot_uptime=1.0, latency=0.1)
    fields = {field.name: field.value for field in embed.fields}
    assert fields["Run audit backlog"] == "**waiting:** 1 · **kept on disk:** 3 · **dropped:** 0"
    assert "unavailable" in fields["Recent runs"]
    quiet = status_embed({"run_audit_backlog": {"waiting": 0, "on_disk": 0, "dropped": 0}},
                         queue=QueueStats(0, 0, 0, 2), bot_uptime=1.0, latency=0.1)
    assert "Run audit backlog" not in {field.name for field in quiet.fields}
