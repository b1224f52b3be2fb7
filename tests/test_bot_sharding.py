"""Sharding: SHARD_COUNT / SHARD_IDS / SHARDS_PER_POD choose the gateway shards of a bot process,
a StatefulSet pod's ordinal picks its share, and slash commands are synced once per deployment.

The processes are real `python -m bot` starts (bot.__main__.main) against a local fake of
Discord's API and gateway, which records each IDENTIFY's shard and each API call."""

from __future__ import annotations

import asyncio

import pytest
from discord.ext import commands

from bot.sharding import ShardPlan, plan_shards
from config import SettingsError, load_settings
from tests.fake_discord import FakeDiscord
from tests.test_bot_main import REJECTED_TOKEN, bot_env, run_bot_main


def settings_with(**env: str):
    return load_settings(env, dotenv=False)


# --- the plan: which shards a process runs


def test_no_shard_settings_means_one_unsharded_connection_that_syncs():
    plan = plan_shards(settings_with(), hostname="code-interpreter-bot-7")
    assert plan == ShardPlan(None, None)
    assert not plan.sharded and plan.syncs_commands


@pytest.mark.parametrize(("hostname", "shards"), [
    ("code-interpreter-bot-0", (0, 1)),
    ("code-interpreter-bot-1", (2, 3)),
    ("code-interpreter-bot-2", (4,)),  # the last pod takes what is left
])
def test_pod_ordinal_picks_a_contiguous_block_of_shards(hostname, shards):
    plan = plan_shards(settings_with(SHARD_COUNT="5", SHARDS_PER_POD="2"), hostname=hostname)
    assert plan == ShardPlan(5, shards)
    assert plan.syncs_commands == (0 in shards)


def test_every_shard_is_run_by_exactly_one_pod():
    settings = settings_with(SHARD_COUNT="16", SHARDS_PER_POD="3")
    held = [shard for pod in range(6) for shard in plan_shards(settings, hostname=f"bot-{pod}").shard_ids]
    assert held == list(range(16))
    assert [pod for pod in range(6) if plan_shards(settings, hostname=f"bot-{pod}").syncs_commands] == [0]


def test_named_shards_win_and_sync_only_with_shard_zero():
    assert plan_shards(settings_with(SHARD_COUNT="4", SHARD_IDS="3,1")) == ShardPlan(4, (1, 3))
    assert not plan_shards(settings_with(SHARD_COUNT="4", SHARD_IDS="3,1")).syncs_commands
    assert plan_shards(settings_with(SHARD_COUNT="4")) == ShardPlan(4, None)  # all shards in this process


def test_a_pod_beyond_the_shards_is_refused_with_the_fix():
    with pytest.raises(SettingsError) as caught:
        plan_shards(settings_with(SHARD_COUNT="4", SHARDS_PER_POD="2"), hostname="code-interpreter-bot-2")
    assert str(caught.value) == ("this is bot pod 2, but SHARD_COUNT=4 with SHARDS_PER_POD=2 needs only 2 pod(s): "
                                 "lower the StatefulSet's replicas or raise SHARD_COUNT.")


def test_a_host_name_without_an_ordinal_is_refused():
    with pytest.raises(SettingsError, match="does not end in a pod ordinal"):
        plan_shards(settings_with(SHARD_COUNT="4", SHARDS_PER_POD="2"), hostname="laptop")


@pytest.mark.parametrize(("env", "message"), [
    ({"SHARD_IDS": "1"}, "SHARD_IDS is set but SHARD_COUNT is 0: set SHARD_COUNT to the total number of shards."),
    ({"SHARDS_PER_POD": "2"}, "SHARDS_PER_POD is set but SHARD_COUNT is 0: set SHARD_COUNT to the total number of shards."),
    ({"SHARD_COUNT": "4", "SHARD_IDS": "2,4,9"},
     "SHARD_IDS=4,9 is invalid: shards are numbered 0 to 3 when SHARD_COUNT=4."),
    ({"SHARD_COUNT": "4", "SHARD_IDS": "1,1"},
     "SHARD_IDS='1,1' is invalid: expected a comma-separated list of distinct numbers >= 0."),
    ({"SHARD_COUNT": "4", "SHARD_IDS": "1", "SHARDS_PER_POD": "2"},
     "SHARD_IDS and SHARDS_PER_POD are both set: use one (SHARD_IDS names the shards, "
     "SHARDS_PER_POD derives them from the pod ordinal)."),
])
def test_inconsistent_shard_settings_name_what_is_wrong(env, message):
    with pytest.raises(SettingsError) as caught:
        load_settings(env, dotenv=False)
    assert str(caught.value) == message


# --- real starts against a fake Discord


def start_bot(monkeypatch, tmp_path, *, hostname: str, shards_to_wait: int, **env: str):
    """`python -m bot`'s main() in this process with `hostname` as the pod's host name; it is
    closed once Discord has let `shards_to_wait` shards in. Returns (exit code, the bot, the fake)."""
    import bot.__main__ as bot_main
    import bot.sharding

    bots = []
    ready = []

    def on_ready() -> None:  # in the fake's thread, once per READY sent
        ready.append(1)
        if len(ready) == shards_to_wait:
            asyncio.run_coroutine_threadsafe(bots[-1].close(), bots[-1].loop)

    real_create_bot = bot_main.create_bot

    def recording_create_bot(settings):
        bots.append(real_create_bot(settings))
        return bots[-1]

    fake = FakeDiscord(on_ready)
    try:
        monkeypatch.setattr(bot_main, "create_bot", recording_create_bot)
        monkeypatch.setattr(bot.sharding.socket, "gethostname", lambda: hostname)
        code = run_bot_main(monkeypatch, tmp_path, fake, AUTO_UPLOAD="false", **env)
    finally:
        fake.stop()
    return code, (bots[-1] if bots else None), fake


def command_syncs(fake: FakeDiscord) -> list[tuple[str, str]]:
    return [(method, path) for method, path in fake.api_calls if method == "PUT" and path.endswith("/commands")]


def test_two_statefulset_pods_identify_their_own_shards_and_only_pod_0_syncs(tmp_path, monkeypatch, sandbox_venv):
    shard_env = {"SHARD_COUNT": "3", "SHARDS_PER_POD": "2"}
    code0, bot0, fake0 = start_bot(monkeypatch, tmp_path, hostname="code-interpreter-bot-0", shards_to_wait=2,
                                   **shard_env)
    code1, bot1, fake1 = start_bot(monkeypatch, tmp_path, hostname="code-interpreter-bot-1", shards_to_wait=1,
                                   **shard_env)
    assert (code0, code1) == (0, 0)
    assert isinstance(bot0, commands.AutoShardedBot) and isinstance(bot1, commands.AutoShardedBot)
    assert sorted(fake0.identified_shards) == [[0, 3], [1, 3]]  # discord.py spaces identifies 5 s apart
    assert fake1.identified_shards == [[2, 3]]
    assert len(command_syncs(fake0)) == 1, fake0.api_calls
    assert command_syncs(fake1) == [], fake1.api_calls


def test_without_shard_settings_the_bot_starts_as_before(tmp_path, monkeypatch, sandbox_venv):
    code, bot, fake = start_bot(monkeypatch, tmp_path, hostname="code-interpreter-bot-3", shards_to_wait=1)
    assert code == 0
    assert type(bot).__name__ == "CodeInterpreterBot" and not isinstance(bot, commands.AutoShardedBot)
    assert fake.identified_shards == [None]  # one connection, no shard field in IDENTIFY
    assert len(command_syncs(fake)) == 1


def test_a_pod_with_no_shard_left_stops_with_one_line(tmp_path, monkeypatch, capsys):
    import bot.__main__ as bot_main
    import bot.sharding

    monkeypatch.setattr(bot.sharding.socket, "gethostname", lambda: "code-interpreter-bot-2")
    for key, value in bot_env(tmp_path, DISCORD_TOKEN=REJECTED_TOKEN, SHARD_COUNT="4", SHARDS_PER_POD="2").items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    assert bot_main.main() == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "Configuration error: this is bot pod 2, but SHARD_COUNT=4 with SHARDS_PER_POD=2 needs only 2 pod(s): "
        "lower the StatefulSet's replicas or raise SHARD_COUNT."]
