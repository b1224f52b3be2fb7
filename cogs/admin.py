"""/status for admins: the interpreter's health, storage, queue and run statistics.

Tolerant of missing keys: the engine's status grows over time and a partial status
is more useful than an error.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

import interpreter
from cogs._access import admin_only
from cogs._format import EMBED_FIELD_LIMIT, NO_MENTIONS, clean_text

if TYPE_CHECKING:
    from bot.client import CodeInterpreterBot

MAX_FIELD_LINES = 12


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    parts.append(f"{minutes}m" if days or hours or minutes else f"{secs}s")
    return " ".join(parts)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    if isinstance(value, (list, tuple, set)):
        items = [str(v) for v in value]
        shown = ", ".join(items[:15])
        return shown + (f", … {len(items) - 15} more" if len(items) > 15 else "")
    if isinstance(value, dict):
        return ", ".join(f"{k}={_value(v)}" for k, v in list(value.items())[:8])
    return str(value)


def _lines(mapping: dict[str, Any], keys: list[str] | None = None) -> str:
    keys = keys if keys is not None else list(mapping)
    lines = [f"**{k.replace('_', ' ')}:** {_value(mapping[k])}" for k in keys if k in mapping][:MAX_FIELD_LINES]
    text = clean_text("\n".join(lines)) or "—"
    return text if len(text) <= EMBED_FIELD_LIMIT else text[: EMBED_FIELD_LIMIT - 1] + "…"


def status_embed(status: dict[str, Any], *, queue: Any, bot_uptime: float, latency: float) -> discord.Embed:
    sandbox = status.get("sandbox") if isinstance(status.get("sandbox"), dict) else {}
    runs = status.get("runs") if isinstance(status.get("runs"), dict) else {}
    healthy = bool(status.get("venv_exists", True)) and sandbox.get("available", True) is not False
    embed = discord.Embed(title="Code interpreter status",
                          colour=discord.Colour.green() if healthy else discord.Colour.orange())
    embed.add_field(name="Sandbox", value=_lines(sandbox), inline=False)
    embed.add_field(name="Packages", value=_lines(status, ["venv_exists", "package_count", "python_path", "last_cleanup"]), inline=False)
    embed.add_field(name="Storage", value=_lines(status, ["total_user_files", "total_file_size_mb",
                                                          "file_expiration_hours", "max_file_size_mb"]))
    queue_info = {"running": queue.running, "waiting": queue.waiting, "capacity": queue.capacity,
                  "started": queue.started_total, "refused": queue.refused_total}
    embed.add_field(name="Queue", value=_lines(queue_info))
    if runs:
        embed.add_field(name="Runs", value=_lines(runs))
    latency_text = f"{latency * 1000:.0f} ms" if math.isfinite(latency) else "not connected"
    engine_uptime = status.get("uptime_seconds")
    lines = [f"**bot:** {format_duration(bot_uptime)}"]
    if isinstance(engine_uptime, (int, float)):
        lines.append(f"**engine:** {format_duration(engine_uptime)}")
    lines.append(f"**gateway latency:** {latency_text}")
    embed.add_field(name="Uptime", value="\n".join(lines), inline=False)
    installed = status.get("installed_packages")
    if installed:
        embed.set_footer(text=("Installed: " + _value(installed))[:2048])
    return embed


class AdminCog(commands.Cog, name="Admin"):
    def __init__(self, bot: "CodeInterpreterBot") -> None:
        self.bot = bot

    @app_commands.command(name="status", description="Interpreter health, storage, queue and runs (admins)")
    @app_commands.default_permissions(manage_guild=True)
    @admin_only()
    async def status(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        status = await interpreter.get_interpreter_status()
        embed = status_embed(status, queue=self.bot.scheduler.stats(),
                             bot_uptime=time.monotonic() - self.bot.started_at, latency=self.bot.latency)
        await interaction.edit_original_response(embed=embed, allowed_mentions=NO_MENTIONS)


async def setup(bot: "CodeInterpreterBot") -> None:
    await bot.add_cog(AdminCog(bot))
