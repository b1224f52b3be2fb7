"""/session and /run in a session, through real interactions: the acceptance path of
issue 8 as a new member would take it, plus isolation, lifetime and admin status.

Real bot, cogs, engine and sandboxes; only Discord's network is recorded. Idle
expiry uses the session manager's controllable clock (no sleeping). Every test ends
by ending all sessions and checking on the host that their processes are gone.
"""

from __future__ import annotations

import re

import pytest

import interpreter
from tests.discord_harness import admin_permissions, attachment_payload
from tests.test_bot_run import no_pings
from tests.test_sessions import FakeClock, alive
from tests.test_sessions import host_pids as session_pids

SALES_CSV = "region,units,price\nnorth,10,2.5\nsouth,7,3.0\neast,12,2.0\n"


@pytest.fixture
async def world(discord_world):
    engine = await interpreter.get_engine()
    engine.sessions.clock = FakeClock()
    discord_world.engine = engine
    discord_world.pids = set()
    yield discord_world
    discord_world.pids |= session_pids(engine)
    await engine.sessions.close()
    assert engine.sessions.active() == []
    survivors = {pid for pid in discord_world.pids if alive(pid)}
    assert not survivors, f"sandbox processes outlived their sessions: {survivors}"


async def upload_sales(w, tmp_path) -> str:
    path = tmp_path / "sales.csv"
    path.write_text(SALES_CSV)
    reply = await w.harness.slash("upload", w.alice, attachments={"file": attachment_payload(path)})
    return re.search(r"File id: `([^`]+)`", reply.content).group(1)


async def test_acceptance_a_new_member_works_in_a_session(world, tmp_path):
    """/session start, load a table once, ask about it twice, then go idle for ten minutes."""
    w = world
    file_id = await upload_sales(w, tmp_path)

    started = await w.harness.slash("session", w.alice, subcommand="start")
    assert started.ephemeral
    assert started.content.startswith("🧠 Session started.")
    assert "/run` in this channel continues it" in started.content
    assert "after 10 minutes without a run" in started.content

    loaded = await w.harness.slash("run", w.alice, code=f"df = load_file('{file_id}')")
    assert loaded.content.startswith("🧠 session: 1 run, 10 min idle left\n✅ Finished"), loaded.content

    described = await w.harness.slash("run", w.alice, code="df.describe()")
    assert described.content.startswith("🧠 session: 2 runs, 10 min idle left\n✅"), described.content
    for expected in ("units", "price", "count", "mean", "9.666667", "max"):
        assert expected in described.content, (expected, described.content)

    charted = await w.harness.slash("run", w.alice, code="df.plot()")
    assert "🧠 session: 3 runs" in charted.content, charted.content
    pngs = [data for name, data in charted.final.files.items() if name.endswith(".png")]
    assert len(pngs) == 1 and pngs[0].startswith(b"\x89PNG"), list(charted.final.files)

    again = await w.harness.slash("run", w.alice, code="print(len(df))")
    assert "```\n3\n```" in again.content
    assert not again.final.files  # the chart came with its own run, and is not sent again

    w.engine.sessions.clock.advance(4)
    status = await w.harness.slash("session", w.alice, subcommand="status")
    assert status.ephemeral and status.content == "🧠 Session: 4 runs, 6 min idle left."

    w.pids |= session_pids(w.engine)
    w.engine.sessions.clock.advance(10)
    after_idle = await w.harness.slash("run", w.alice, code="df.describe()")
    assert after_idle.content.startswith(
        "⏱️ Your session ended after 10 minutes idle; this run started fresh.\n🧠 session: 1 run, 10 min idle left\n❌"
    ), after_idle.content
    assert "NameError" in after_idle.content


async def test_without_a_session_runs_stay_one_shot_and_others_see_nothing(world):
    w = world
    plain = await w.harness.slash("run", w.alice, code="x = 1")
    assert plain.content.startswith("✅") and "session" not in plain.content
    assert "NameError" in (await w.harness.slash("run", w.alice, code="print(x)")).content

    await w.harness.slash("session", w.alice, subcommand="start")
    await w.harness.slash("run", w.alice, code="secret = 'alice'")
    bobs = await w.harness.slash("run", w.bob, code="print(secret)")  # same channel, no session of his own
    assert "NameError" in bobs.content and "session" not in bobs.content
    await w.harness.slash("session", w.bob, subcommand="start")
    bobs = await w.harness.slash("run", w.bob, code="print(secret)")
    assert "NameError" in bobs.content and "🧠 session: 1 run" in bobs.content
    assert "```\nalice\n```" in (await w.harness.slash("run", w.alice, code="print(secret)")).content


async def test_start_twice_reset_and_end(world):
    w = world
    await w.harness.slash("session", w.alice, subcommand="start")
    await w.harness.slash("run", w.alice, code="x = 41")
    twice = await w.harness.slash("session", w.alice, subcommand="start")
    assert twice.content == "🧠 You already have a session here: 1 run, 10 min idle left. `/session reset` starts over."

    reset = await w.harness.slash("session", w.alice, subcommand="reset")
    assert reset.content.startswith("🔄 Session reset")
    after_reset = await w.harness.slash("run", w.alice, code="print('x' in globals())")
    assert "🧠 session: 1 run" in after_reset.content and "```\nFalse\n```" in after_reset.content

    ended = await w.harness.slash("session", w.alice, subcommand="end")
    assert ended.ephemeral and ended.content == "⏹️ Session ended after 1 run. `/run` starts fresh again in this channel."
    one_shot = await w.harness.slash("run", w.alice, code="print(1)")
    assert "session" not in one_shot.content
    assert (await w.harness.slash("session", w.alice, subcommand="end")).content == "You have no session in this channel."
    status = await w.harness.slash("session", w.alice, subcommand="status")
    assert status.content.startswith("No session in this channel.")


async def test_a_timed_out_run_ends_the_session_and_says_so(world):
    w = world
    await w.harness.slash("session", w.alice, subcommand="start")
    w.pids |= session_pids(w.engine)
    reply = await w.harness.slash("run", w.alice, code="while True:\n    pass", timeout=2)
    assert reply.content.startswith(
        "🧠 session ended: your next /run here starts a fresh one\n❌ Execution timeout after 2 seconds; the session was ended"
    ), reply.content
    following = await w.harness.slash("run", w.alice, code="print('fresh')")
    assert following.content.startswith(
        "⏱️ Your session was ended because a run timed out; this run started fresh.\n🧠 session: 1 run"), following.content


async def test_session_limits_are_told_plainly(bot_settings, monkeypatch, tmp_path):
    from tests.fixtures_discord import start_bot

    w = await start_bot(bot_settings.replace(max_sessions=1), monkeypatch, tmp_path)
    engine = await interpreter.get_engine()
    try:
        assert (await w.harness.slash("session", w.alice, subcommand="start")).content.startswith("🧠 Session started")
        full = await w.harness.slash("session", w.bob, subcommand="start")
        assert full.ephemeral
        assert full.content.startswith("⚠️ All 1 session slots are in use; runs without a session still work.")
        assert "session" not in (await w.harness.slash("run", w.bob, code="print(2)")).content  # one-shot works
    finally:
        pids = session_pids(engine)
        w.bot.expiry_sweep.cancel()
        await w.bot.remove_cog("Session")  # what bot.close() does: ends every session
        assert engine.sessions.active() == []
        assert not {pid for pid in pids if alive(pid)}


async def test_denied_members_cannot_start_a_session(world):
    w = world
    w.engine.access.settings = w.engine.settings.replace(denied_member_ids=(w.alice.id,))
    refused = await w.harness.slash("session", w.alice, subcommand="start")
    assert refused.ephemeral and refused.callback.content == "🚫 You're not allowed to run code on this server"
    assert w.engine.sessions.active() == []


async def test_status_lists_open_sessions_for_admins(world):
    w = world
    await w.harness.slash("session", w.alice, subcommand="start")
    await w.harness.slash("run", w.alice, code="a = 1")
    await w.harness.slash("run", w.alice, code="a += 1")
    w.engine.sessions.clock.advance(3)
    reply = await w.harness.slash("status", w.carol, permissions=admin_permissions())
    fields = {f["name"]: f["value"] for f in reply.message["embeds"][0]["fields"]}
    sessions = fields["Sessions"]
    assert sessions.startswith("**open:** 1 of 8 · idle expiry 10 min"), sessions
    assert f"<@{w.alice.id}> in <#{w.channel.id}> · 2 runs · idle 3 min · 3 min old" in sessions


async def test_an_admin_ends_a_members_session_and_the_member_is_told(world):
    w = world
    await w.harness.slash("session", w.alice, subcommand="start")
    await w.harness.slash("run", w.alice, code="secret = 41")
    pids = session_pids(w.engine)
    w.pids |= pids

    refused = await w.harness.slash("session", w.bob, subcommand="end", member=w.alice)
    assert refused.ephemeral and refused.callback.content.startswith("Only server admins")
    assert len(w.engine.sessions.active(w.alice.id)) == 1  # a member cannot end someone else's

    ended = await w.harness.slash("session", w.carol, subcommand="end", member=w.alice, permissions=admin_permissions())
    assert ended.ephemeral
    assert ended.content.startswith(f"⏹️ Ended <@{w.alice.id}>'s session in <#{w.channel.id}>."), ended.content
    no_pings(ended.final)  # names the member without pinging them
    assert w.engine.sessions.active() == [] and not {pid for pid in pids if alive(pid)}

    following = await w.harness.slash("run", w.alice, code="print(secret)")
    assert following.content.startswith(
        "⏱️ Your session was ended by a server admin; this run started fresh.\n🧠 session: 1 run"), following.content
    assert "NameError" in following.content  # the old variables went with it

    none_left = await w.harness.slash("session", w.carol, subcommand="end", member=w.bob, permissions=admin_permissions())
    assert none_left.content == f"<@{w.bob.id}> has no open session in this server."


async def test_shutdown_ends_sessions_and_leaves_no_process(world):
    w = world
    await w.harness.slash("session", w.alice, subcommand="start")
    await w.harness.slash("session", w.bob, subcommand="start")
    pids = session_pids(w.engine)
    assert len(w.engine.sessions.active()) == 2
    await w.bot.remove_cog("Session")  # bot.close() unloads every cog like this
    assert w.engine.sessions.active() == []
    assert not {pid for pid in pids if alive(pid)}


async def test_run_code_on_someone_elses_message_never_sees_the_clickers_session(world, tmp_path):
    """Issue 12 item 5 (confused deputy): bob's code, run by alice from the message menu,
    runs in a fresh sandbox: none of alice's variables, work-dir files or stored files,
    and "Run again" on that result stays fresh. Alice's own message still continues her session."""
    w = world
    await upload_sales(w, tmp_path)
    await w.harness.slash("session", w.alice, subcommand="start")
    kept = await w.harness.slash("run", w.alice, code="secret = 'alice-private'\nopen('notes.txt', 'w').write('mine')")
    assert "🧠 session: 1 run" in kept.content, kept.content

    probe = ("```py\nimport os\nprint('secret' in globals(), sorted(os.listdir('.')), FILES)\n"
             "print(secret)\n```")
    target = w.harness.message_payload(w.bob, probe)
    reply = await w.harness.message_menu("Run code", w.alice, target)
    assert "NameError" in reply.content and "alice-private" not in reply.content, reply.content
    assert "notes.txt" not in reply.content and "sales.csv" not in reply.content, reply.content
    assert "🧠 session" not in reply.content, reply.content
    assert "fresh sandbox" in reply.content, reply.content
    no_pings(reply.final)

    again = await w.harness.click(reply, "Run again", w.alice)
    assert "NameError" in again.content and "alice-private" not in again.content, again.content
    assert "🧠 session" not in again.content, again.content

    own = await w.harness.message_menu("Run code", w.alice, w.harness.message_payload(w.alice, "print(secret)"))
    assert "```\nalice-private\n```" in own.content and "🧠 session: 2 runs" in own.content, own.content
