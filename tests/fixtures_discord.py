"""Fixtures for the Discord side: the real bot (real cogs, real engine and sandbox) on
dpytest's fake gateway/HTTP, plus the interaction harness (tests/discord_harness.py).

Only Discord's network is replaced: dpytest's FakeHttp for channel messages, and the
webhook adapter's `request` for interaction responses.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import discord
import discord.ext.test as dpytest
import discord.ext.test.backend as dpytest_backend
import discord.ext.test.factories as dpytest_factories
import pytest

from tests.discord_harness import InteractionHarness


@dataclasses.dataclass
class DiscordWorld:
    bot: "discord.ext.commands.Bot"
    harness: InteractionHarness
    guild: discord.Guild
    channel: discord.TextChannel
    alice: discord.User
    bob: discord.User
    carol: discord.User


@pytest.fixture
def bot_settings(sandbox_settings):
    """Test settings: no cooldown (tests that need one set it), everything else as configured."""
    return sandbox_settings.replace(run_cooldown_seconds=0.0)


async def start_bot(settings, monkeypatch, tmp_path: Path) -> DiscordWorld:
    from bot import create_bot

    # dpytest writes dpytest_*.dat files for sent attachments into the cwd.
    monkeypatch.chdir(tmp_path)
    bot = create_bot(settings, sync_commands=False)
    await bot._async_setup_hook()
    dpytest.configure(bot, members=0)
    # dpytest swaps in a new ConnectionState; the tree registered itself on the old one.
    bot._connection._command_tree = bot.tree
    await bot.setup_hook()
    config = dpytest.get_config()
    guild = config.guilds[0]
    channel = config.channels[0]
    # Like the real bot, the test bot has no members intent, so members are not cached:
    # people are plain users (interactions carry their member data themselves).
    alice, bob, carol = (dpytest_backend.make_user(name, f"{n:04}") for n, name in enumerate(("alice", "bob", "carol"), 1))
    # The guild always knows the bot's own member (Discord sends it in GUILD_CREATE even
    # without the members intent); dpytest's FakeHttp needs it to check send permissions.
    state = dpytest_backend.get_state()
    member_data = dpytest_factories.make_member_dict(guild, bot.user, [], nick=None)
    guild._add_member(discord.Member(data=member_data, guild=guild, state=state))
    harness = InteractionHarness(bot, guild, channel, monkeypatch)
    return DiscordWorld(bot, harness, guild, channel, alice, bob, carol)


@pytest.fixture
async def discord_world(bot_settings, monkeypatch, tmp_path):
    import interpreter

    world = await start_bot(bot_settings, monkeypatch, tmp_path)
    yield world
    world.bot.expiry_sweep.cancel()
    await dpytest.empty_queue()
    await (await interpreter.get_engine()).close()
