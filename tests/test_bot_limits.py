"""Abuse limits and the run audit through real interactions: denials by member, role,
channel and rate (exact ephemeral message, no run started), /status's recent runs and
limits, and the admin-only /runs lookup.

Real bot, cogs, engine and sandbox; only Discord's network is recorded.
"""

from __future__ import annotations

import math
from datetime import timedelta

import discord.ext.test.backend as dpytest_backend
import pytest

import interpreter
from interpreter.engine import default_engine
from tests.discord_harness import admin_permissions, snowflake
from tests.fixtures_mongo import TestClock

NOT_ALLOWED = "🚫 You're not allowed to run code on this server"
OTHER_GUILD = 900000000000000009


@pytest.fixture
def limits(discord_world):
    """Set abuse limits on the running bot's engine: limits(denied_member_ids=(...), ...)."""
    engine = default_engine()

    def apply(**values):
        engine.access.settings = engine.settings.replace(**values)

    return apply


@pytest.fixture
def member_roles(discord_world, monkeypatch):
    """member id -> role ids carried in that member's interaction payloads."""
    roles: dict[int, list[int]] = {}
    harness = discord_world.harness
    original = harness._member_payload

    def with_roles(member, permissions):
        payload = original(member, permissions)
        payload["roles"] = [str(role_id) for role_id in roles.get(member.id, ())]
        return payload

    monkeypatch.setattr(harness, "_member_payload", with_roles)
    return roles


def assert_refused(reply, message: str) -> None:
    """Exactly one ephemeral message, nothing deferred, no modal, no follow-ups."""
    assert [s.kind for s in reply.sent] == ["callback"], reply.sent
    assert reply.callback.payload["type"] == 4, reply.callback.payload
    assert reply.ephemeral
    assert reply.callback.content == message
    assert reply.callback.allowed_mentions["parse"] == []


async def runs_started(world) -> tuple[int, int]:
    """(runs the queue started, runs in the audit): both must stay put on a refusal."""
    return world.bot.scheduler.stats().started_total, len(await default_engine().recent_runs(100))


async def test_a_denied_member_cannot_run_by_any_way(discord_world, limits):
    w = discord_world
    limits(denied_member_ids=(w.alice.id,))
    before = await runs_started(w)

    assert_refused(await w.harness.slash("run", w.alice, code="print(1)"), NOT_ALLOWED)
    assert_refused(await w.harness.slash("run", w.alice), NOT_ALLOWED)  # refused before the code box opens
    target = w.harness.message_payload(w.bob, "```py\nprint('bob')\n```")
    assert_refused(await w.harness.message_menu("Run code", w.alice, target), NOT_ALLOWED)
    assert await runs_started(w) == before

    ok = await w.harness.slash("run", w.bob, code="print('bob runs')")
    assert "bob runs" in ok.content


async def test_a_denied_role_cannot_run(discord_world, limits, member_roles):
    w = discord_world
    muted = dpytest_backend.make_role("muted", w.guild)
    limits(denied_role_ids=(muted.id,))
    member_roles[w.alice.id] = [muted.id]
    member_roles[w.bob.id] = [snowflake()]  # some other role
    before = await runs_started(w)

    assert_refused(await w.harness.slash("run", w.alice, code="print(1)"), NOT_ALLOWED)
    assert await runs_started(w) == before
    assert "✅" in (await w.harness.slash("run", w.bob, code="print(2)")).content


async def test_runs_only_in_the_run_channels(discord_world, limits):
    w = discord_world
    lab = dpytest_backend.make_text_channel("data-lab", w.guild)
    limits(run_channel_ids=(lab.id,))
    before = await runs_started(w)
    refusal = f"🚫 Code can't be run in this channel; try <#{lab.id}>"

    assert_refused(await w.harness.slash("run", w.alice, code="print(1)"), refusal)
    target = w.harness.message_payload(w.alice, "```py\nprint(1)\n```")
    assert_refused(await w.harness.message_menu("Run code", w.alice, target), refusal)
    assert await runs_started(w) == before

    w.harness.channel = lab
    reply = await w.harness.slash("run", w.alice, code="print('in the lab')")
    assert "in the lab" in reply.content
    [run] = await default_engine().recent_runs(user_id=w.alice.id)
    assert (run["channel_id"], run["guild_id"]) == (lab.id, w.guild.id)


async def test_several_run_channels_are_suggested(discord_world, limits):
    w = discord_world
    channels = [snowflake() for _ in range(4)]
    limits(run_channel_ids=tuple(channels))
    reply = await w.harness.slash("run", w.alice, code="print(1)")
    assert_refused(reply, f"🚫 Code can't be run in this channel; try <#{channels[0]}>, <#{channels[1]}> or <#{channels[2]}>")


async def test_hourly_limit_refuses_with_the_time_of_the_next_run(discord_world, limits):
    w = discord_world
    clock = TestClock()
    default_engine().audit.clock = clock
    limits(runs_per_member_per_hour=2)
    first_at = default_engine().audit.now()

    first = await w.harness.slash("run", w.alice, code="print('one')")
    assert "one" in first.content
    clock.advance(minutes=10)
    assert "two" in (await w.harness.slash("run", w.alice, code="print('two')")).content
    clock.advance(minutes=5)
    before = await runs_started(w)

    next_at = math.ceil((first_at + timedelta(hours=1)).timestamp())
    refusal = f"⏳ You've used your 2 runs for this hour; next one available <t:{next_at}:R>"
    assert_refused(await w.harness.slash("run", w.alice, code="print('three')"), refusal)
    assert_refused(await w.harness.click(first, "Run again", w.alice), refusal)  # the button too
    assert await runs_started(w) == before
    assert "bob" in (await w.harness.slash("run", w.bob, code="print('bob')")).content  # per member

    clock.advance(minutes=45)  # the first run has left the window
    assert "three" in (await w.harness.slash("run", w.alice, code="print('three')")).content


async def test_a_limit_of_one_reads_naturally(discord_world, limits):
    w = discord_world
    limits(runs_per_member_per_hour=1)
    await w.harness.slash("run", w.alice, code="print(1)")
    reply = await w.harness.slash("run", w.alice, code="print(2)")
    assert reply.callback.content.startswith("⏳ You've used your 1 run for this hour; next one available <t:")


async def test_a_run_the_queue_refuses_does_not_count_against_the_hour(bot_settings, monkeypatch, tmp_path):
    from tests.fixtures_discord import start_bot

    world = await start_bot(bot_settings.replace(run_cooldown_seconds=60.0, runs_per_member_per_hour=2),
                            monkeypatch, tmp_path)
    try:
        await world.harness.slash("run", world.alice, code="print(1)")
        cooled = await world.harness.slash("run", world.alice, code="print(2)")
        assert cooled.callback.content.startswith("⏳ Slow down a little")
        world.bot.scheduler.cooldown_seconds = 0
        engine = await interpreter.get_engine()  # the cooldown is also held in the store, for every process
        engine.access.settings = engine.settings.replace(run_cooldown_seconds=0.0, runs_per_member_per_hour=2)
        assert "✅" in (await world.harness.slash("run", world.alice, code="print(3)")).content
    finally:
        world.bot.expiry_sweep.cancel()


# --- /status and /runs


async def test_status_shows_recent_runs_failure_causes_and_limits(discord_world, limits):
    w = discord_world
    limits(runs_per_member_per_hour=20)
    await w.harness.slash("run", w.alice, code="print('fine')")
    await w.harness.slash("run", w.bob, code="1/0")
    reply = await w.harness.slash("status", w.carol, permissions=admin_permissions())
    assert reply.ephemeral
    fields = {f["name"]: f["value"] for f in reply.message["embeds"][0]["fields"]}

    recent = fields["Recent runs"].splitlines()
    assert len(recent) == 2
    assert f"<@{w.bob.id}> · ❌ exception" in recent[0] and f"<#{w.channel.id}>" in recent[0]
    assert f"<@{w.alice.id}> · ✅ ok" in recent[1]
    assert "**runs:** 2" in fields["Runs (24 h)"] and "**members' errors:** exception 1" in fields["Runs (24 h)"]
    assert "**files per member:** 25" in fields["Limits"] and "**storage per member:** 250 MB" in fields["Limits"]
    assert "**run channels:** everywhere" in fields["Limits"]
    assert "print(" not in str(reply.message)  # hashes, never code


async def test_status_shows_this_servers_runs_only(discord_world):
    w = discord_world
    await interpreter.execute_code("print('elsewhere')", w.bob.id, guild_id=OTHER_GUILD)
    await w.harness.slash("run", w.alice, code="print('here')")
    reply = await w.harness.slash("status", w.carol, permissions=admin_permissions())
    fields = {f["name"]: f["value"] for f in reply.message["embeds"][0]["fields"]}
    assert f"<@{w.alice.id}>" in fields["Recent runs"] and f"<@{w.bob.id}>" not in fields["Recent runs"]
    assert "**runs:** 2" in fields["Runs (24 h)"]  # counts are bot-wide


async def test_status_shows_runs_in_flight_and_runs_a_dead_process_left(discord_world):
    """Another process's run in flight shows as such (no duration yet); once no run could
    still be going, the same record is an interpreter failure, "interrupted"."""
    from interpreter.audit import interrupted_after, new_run_id

    w = discord_world
    engine = await interpreter.get_engine()
    engine.audit.clock = clock = TestClock()
    admission = engine.audit.admission_record(run_id=new_run_id(), user_id=w.alice.id, code="print(1)",
                                              started_at=engine.audit.now(), guild_id=w.guild.id,
                                              channel_id=w.channel.id)
    assert await engine.audit.record(admission)  # written by a process that is about to die

    reply = await w.harness.slash("status", w.carol, permissions=admin_permissions())
    fields = {f["name"]: f["value"] for f in reply.message["embeds"][0]["fields"]}
    assert "**runs:** 1 · **in flight:** 1" in fields["Runs (24 h)"]
    assert "**interpreter failures:** none" in fields["Runs (24 h)"]
    [line] = fields["Recent runs"].splitlines()
    assert "⏳ running" in line and " s ·" not in line

    clock.advance(seconds=interrupted_after(engine.settings).total_seconds() + 1)
    reply = await w.harness.slash("status", w.carol, permissions=admin_permissions())
    fields = {f["name"]: f["value"] for f in reply.message["embeds"][0]["fields"]}
    assert "in flight" not in fields["Runs (24 h)"]
    assert "**interpreter failures:** interrupted 1" in fields["Runs (24 h)"]
    assert "⚠️ interrupted" in fields["Recent runs"]


def runs_lookup(world, caller, member, *, permissions=None):
    """/runs member:@member"""
    return world.harness.slash("runs", caller, permissions=permissions, member=member)


async def test_runs_lookup_is_for_admins_only(discord_world):
    w = discord_world
    await w.harness.slash("run", w.alice, code="print(1)")
    reply = await runs_lookup(w, w.bob, w.alice)
    assert reply.ephemeral
    assert "for server admins" in reply.callback.content
    assert not reply.callback.data.get("embeds")
    assert w.bot.tree.get_command("runs").default_permissions.manage_guild


async def test_runs_lookup_shows_a_members_runs_to_an_admin(discord_world):
    w = discord_world
    code = "print('alice was here')"
    await w.harness.slash("run", w.alice, code=code)
    await w.harness.slash("run", w.alice, code="import time; time.sleep(30)", timeout=1)
    await w.harness.slash("run", w.bob, code="print('bob')")
    await interpreter.execute_code("print('other server')", w.alice.id, guild_id=OTHER_GUILD)

    reply = await runs_lookup(w, w.carol, w.alice, permissions=admin_permissions())
    assert reply.ephemeral
    embed = reply.message["embeds"][0]
    assert embed["title"] == "Recent runs of alice"
    lines = embed["description"].splitlines()
    assert len(lines) == 2  # alice's, in this server; not bob's, not the other server's
    assert "❌ timeout" in lines[0] and "✅ ok" in lines[1]
    import hashlib

    assert f"`{hashlib.sha256(code.encode()).hexdigest()[:12]}`" in lines[1]
    assert "alice was here" not in str(reply.message)


async def test_runs_lookup_for_a_member_without_runs(discord_world):
    w = discord_world
    reply = await runs_lookup(w, w.carol, w.bob, permissions=admin_permissions())
    assert reply.message["embeds"][0]["description"].startswith(f"No runs by <@{w.bob.id}>")
