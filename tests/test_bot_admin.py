"""/status: refused to members, the truth for admins; the tree's error handling; the sweep."""

from __future__ import annotations

import interpreter
from tests.discord_harness import admin_permissions


async def test_status_refuses_a_member(discord_world):
    w = discord_world
    reply = await w.harness.slash("status", w.alice)
    assert reply.ephemeral
    assert "for server admins" in reply.callback.content
    assert not reply.callback.data.get("embeds")


async def test_status_shows_an_admin_the_truth(discord_world):
    w = discord_world
    await interpreter.upload_file(w.bob.id, b"a,b\n1,2\n", "x.csv")
    await w.harness.slash("run", w.bob, code="print(1)")
    reply = await w.harness.slash("status", w.carol, permissions=admin_permissions())
    assert reply.ephemeral
    embed = reply.message["embeds"][0]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert {"Sandbox", "Packages", "Storage", "Queue", "Uptime"} <= set(fields)
    assert "**total user files:** 1" in fields["Storage"]
    assert "**started:** 1" in fields["Queue"]
    assert "not connected" in fields["Uptime"]  # no gateway in tests: latency is honest about it


async def test_status_for_configured_owner_without_manage_server(bot_settings, monkeypatch, tmp_path):
    from tests.fixtures_discord import start_bot

    world = await start_bot(bot_settings, monkeypatch, tmp_path)
    world.bot.settings = world.bot.settings.replace(owner_ids=(world.alice.id,))
    try:
        reply = await world.harness.slash("status", world.alice)
        assert reply.message["embeds"][0]["title"] == "Code interpreter status"
    finally:
        world.bot.expiry_sweep.cancel()


async def test_status_is_hidden_from_members_by_default(discord_world):
    command = discord_world.bot.tree.get_command("status")
    assert command.default_permissions.manage_guild


async def test_commands_and_menus_are_registered(discord_world):
    tree = discord_world.bot.tree
    assert {c.qualified_name for c in tree.walk_commands()} >= {"run", "upload", "files list", "files delete", "status"}
    menus = {c.name for c in tree.get_commands(type=__import__("discord").AppCommandType.message)}
    assert menus == {"Run code", "Upload to interpreter"}


async def test_hourly_sweep_is_running_and_deletes_expired_files(discord_world):
    w = discord_world
    assert w.bot.expiry_sweep.is_running()
    assert w.bot.expiry_sweep.hours == 1
    assert await interpreter.cleanup_expired_files() == 0


async def test_status_has_no_noise_and_a_members_error_is_not_a_failure_of_the_bot(discord_world):
    w = discord_world
    await w.harness.slash("run", w.bob, code="print(nme)")  # the member's NameError
    reply = await w.harness.slash("status", w.carol, permissions=admin_permissions())
    embed = reply.message["embeds"][0]
    text = "\n".join(f"{f['name']}\n{f['value']}" for f in embed["fields"])
    for noise in ("None", "=", "{", "pool idle:", "unavailable reason"):
        assert noise not in text, f"{noise!r} in /status:\n{text}"
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert "**members' errors:** exception 1" in fields["Runs (24 h)"]
    assert "**interpreter failures:** none" in fields["Runs (24 h)"]
    assert "**limits:** 60 s (max" in fields["Sandbox"]


async def test_status_says_whether_plotly_figures_get_a_png(discord_world):
    w = discord_world
    await w.harness.slash("run", w.bob, code="import plotly.express as px\npx.bar(x=[1], y=[2])")
    reply = await w.harness.slash("status", w.carol, permissions=admin_permissions())
    fields = {f["name"]: f["value"] for f in reply.message["embeds"][0]["fields"]}
    assert "**plotly png:** on, 1 rendered, 0 failed" in fields["Sandbox"], fields["Sandbox"]
