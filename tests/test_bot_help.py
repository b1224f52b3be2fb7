"""/help through a real interaction: ephemeral, and worded from this bot's own settings."""

from __future__ import annotations

from tests.fixtures_discord import start_bot
from tests.test_bot_run import no_pings


def fields_of(reply) -> dict[str, str]:
    [embed] = reply.message["embeds"]
    return {field["name"]: field["value"] for field in embed["fields"]}


async def test_help_explains_the_commands_with_the_configured_limits(discord_world):
    reply = await discord_world.harness.slash("help", discord_world.alice)
    assert reply.ephemeral
    no_pings(reply.final)
    fields = fields_of(reply)
    assert list(fields) == ["▶️ Run code", "💬 Ask in words", "📁 Your data", "🧠 Sessions", "📦 Packages",
                            "⏱️ Limits", "🛠️ Admins"]
    assert fields["💬 Ask in words"].startswith("Off on this bot")  # no OPENAI_API_KEY / OPENAI_BASE_URL here
    assert "`/run code: print('hi')`" in fields["▶️ Run code"] and "Apps → Run code" in fields["▶️ Run code"]
    assert "Drop a CSV" in fields["📁 Your data"] and "Files expire after 48 hours" in fields["📁 Your data"]
    assert "at most 25 files and 250 MB each" in fields["📁 Your data"]
    assert "after 10 minutes without a run" in fields["🧠 Sessions"]
    assert fields["📦 Packages"].startswith("Ready to import: numpy, pandas, matplotlib, seaborn, plotly, scipy")
    assert "statsmodels" in fields["📦 Packages"] and "requests" not in fields["📦 Packages"]
    assert fields["⏱️ Limits"].startswith("Each run: 60 s (up to 120 s with the `timeout` option), 1024 MB of memory")
    assert all(len(value) <= 1024 for value in fields.values())


async def test_help_follows_what_the_admin_configured(bot_settings, monkeypatch, tmp_path):
    settings = bot_settings.replace(run_timeout=30, max_run_timeout=90, file_expiry_hours=0.0, max_sessions=0,
                                    auto_upload=False)
    w = await start_bot(settings, monkeypatch, tmp_path)
    try:
        fields = fields_of(await w.harness.slash("help", w.alice))
    finally:
        w.bot.expiry_sweep.cancel()
    assert fields["⏱️ Limits"].startswith("Each run: 30 s (up to 90 s with the `timeout` option)")
    assert fields["📁 Your data"].startswith("Use `/upload`") and "Files are kept until you delete them" in fields["📁 Your data"]
    assert fields["🧠 Sessions"] == "Sessions are off on this bot: every `/run` starts fresh."
