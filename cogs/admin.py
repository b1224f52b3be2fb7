"""/status for admins: the interpreter's health, storage, queue, limits, open sessions and
recent runs; /runs: one member's recent runs from the run audit.

Tolerant of missing keys: the engine's status grows over time and a partial status
is more useful than an error.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

import interpreter
from cogs._access import admin_only, is_bot_owner
from cogs._format import EMBED_DESCRIPTION_LIMIT, EMBED_FIELD_LIMIT, NO_MENTIONS, clean_text, display_filename, inline
from cogs._uploads import _expires_timestamp
from cogs.session import session_line_for_status, sessions_in_guild
from interpreter.store import StoreUnavailable

if TYPE_CHECKING:
    from bot.client import CodeInterpreterBot

MAX_FIELD_LINES = 12
STATUS_RECENT_RUNS = 5
RUNS_SHOWN = 10
RUN_ICONS = {"ok": "✅", "failed": "❌", "refused": "🚫", "running": "⏳", "interrupted": "⚠️"}


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


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, (list, tuple, set, dict, str)) and not value)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    if isinstance(value, (list, tuple, set)):
        items = [str(v) for v in value]
        shown = ", ".join(items[:15])
        return shown + (f", … {len(items) - 15} more" if len(items) > 15 else "")
    if isinstance(value, dict):  # in words, not as a raw mapping: "heavy 1, light 2"
        return ", ".join(f"{str(k).replace('_', ' ')} {_value(v)}" for k, v in list(value.items())[:8]
                         if not _empty(v)) or "none"
    return str(value)


def _lines(mapping: dict[str, Any], keys: list[str] | None = None) -> str:
    """`**key:** value` lines; keys without a value (None, empty) are left out, not shown as 'None'."""
    keys = keys if keys is not None else list(mapping)
    lines = [f"**{k.replace('_', ' ')}:** {_value(mapping[k])}" for k in keys
             if k in mapping and not _empty(mapping[k])][:MAX_FIELD_LINES]
    text = clean_text("\n".join(lines)) or "—"
    return text if len(text) <= EMBED_FIELD_LIMIT else text[: EMBED_FIELD_LIMIT - 1] + "…"


# Exit causes of the member's own code (and refused requests): their errors, not the bot's. The rest (the sandbox did not
# start, a crash, a signal nobody sent) are failures an admin should look at.
MEMBER_CAUSES = frozenset({"exception", "timeout", "memory", "cpu", "output_limit", "exit", "refused"})


def failures_text(counts: dict[str, Any]) -> str:
    """Failures split into the members' code errors and the interpreter's own failures."""
    member = {k: v for k, v in counts.items() if k in MEMBER_CAUSES}
    ours = {k: v for k, v in counts.items() if k not in MEMBER_CAUSES}

    def listed(group: dict[str, Any]) -> str:
        return ", ".join(f"{inline(str(cause).replace('_', ' '), 30)} {count}" for cause, count in group.items()) or "none"

    return f"**members' errors:** {listed(member)}\n**interpreter failures:** {listed(ours)}"


def _sandbox_text(sandbox: dict[str, Any]) -> str:
    """The sandbox layers in words (limits and warm pool summarised, nothing raw)."""
    shown = {key: sandbox.get(key) for key in ("backend", "bwrap", "unprivileged_uid", "cgroups", "seccomp", "network")}
    if sandbox.get("available") is False:
        shown["unavailable"] = sandbox.get("unavailable_reason") or "yes"
    pool = sandbox.get("pool")
    if isinstance(pool, dict):
        kinds = ", ".join(f"{kind} {info.get('size')}" for kind, info in pool.items() if isinstance(info, dict))
        shown["warm pool"] = f"{kinds or 'off'}{'' if pool.get('started') else ' (not started yet)'}"
    png = sandbox.get("plotly_png")
    if isinstance(png, dict):
        shown["plotly png"] = (f"on, {png.get('rendered')} rendered, {png.get('failed')} failed" if png.get("enabled")
                               else f"off: {png.get('reason')}")
    limits = sandbox.get("limits")
    if isinstance(limits, dict):
        parts = [f"{limits.get('timeout_s')} s (max {limits.get('max_timeout_s')} s)",
                 f"{limits.get('memory_mb')} MB memory", f"{limits.get('processes')} processes",
                 f"{limits.get('workdir_mb')} MB work dir", f"{limits.get('output_kb')} KB output",
                 f"{limits.get('max_file_size_mb')} MB a file"]
        shown["limits"] = ", ".join(part for part in parts if "None" not in part)
    return _lines({key.replace(" ", "_"): value for key, value in shown.items()})


def _fit(lines: list[str], limit: int) -> str:
    """Whole lines while they fit in `limit` characters, then a count of the rest."""
    shown: list[str] = []
    used = 0
    for index, line in enumerate(lines):
        rest = len(lines) - index
        if used + len(line) + 1 > limit - 20:
            shown.append(f"… {rest} more")
            break
        shown.append(line)
        used += len(line) + 1
    return "\n".join(shown) or "—"


def _timestamp(iso: Any) -> str:
    try:
        return f"<t:{int(datetime.fromisoformat(str(iso)).timestamp())}:R>"
    except ValueError:
        return "?"


def run_line(run: dict[str, Any], *, show_member: bool) -> str:
    """One audited run on one line: when, (who), outcome, time, where, packages, files, code hash."""
    status = str(run.get("status") or "")
    parts = [_timestamp(run.get("started_at"))]
    if show_member:
        parts.append(f"<@{int(run.get('user_id') or 0)}>")
    parts.append(f"{RUN_ICONS.get(status, '•')} {inline(str(run.get('exit_cause') or status), 30)}")
    duration = run.get("duration_seconds")
    if isinstance(duration, (int, float)) and status not in ("running", "interrupted"):  # no end, no duration
        parts.append(f"{duration:.1f} s")
    if run.get("channel_id"):
        parts.append(f"<#{int(run['channel_id'])}>")
    if run.get("packages"):
        parts.append("📦 " + inline(", ".join(map(str, run["packages"])), 80))
    if run.get("files_used"):
        parts.append(f"📥 {len(run['files_used'])} file{'s' if len(run['files_used']) != 1 else ''}")
    produced = run.get("files_produced") or []
    if produced:
        names = ", ".join(display_filename(str(name)) for name in produced[:3])
        parts.append(f"📤 {names}" + (f" +{len(produced) - 3}" if len(produced) > 3 else ""))
    if run.get("code_sha256"):
        parts.append(f"`{str(run['code_sha256'])[:12]}`")
    return " · ".join(parts)


def _limits_text(limits: dict[str, Any]) -> str:
    channels = limits.get("run_channels")
    shown = {
        "runs per member per hour": limits.get("runs_per_member_per_hour"),
        "files per member": limits.get("user_max_files"),
        "storage per member": f"{limits.get('user_max_storage_mb')} MB",
        "denied members": limits.get("denied_members"),
        "denied roles": limits.get("denied_roles"),
        "run channels": " ".join(f"<#{int(c)}>" for c in channels) if isinstance(channels, list) else channels,
    }
    return _lines({key: value for key, value in shown.items() if value is not None})


def _runs_fields(status: dict[str, Any]) -> list[tuple[str, str]]:
    """The audit's part of /status: records not in the database yet, failure causes over
    24 h and the latest runs."""
    fields = []
    backlog = status.get("run_audit_backlog")
    if isinstance(backlog, dict) and any(backlog.values()):
        fields.append(("Run audit backlog", f"**waiting:** {backlog.get('waiting', 0)} · "
                       f"**kept on disk:** {backlog.get('on_disk', 0)} · **dropped:** {backlog.get('dropped', 0)}"))
    if status.get("run_audit_error"):
        return fields + [("Recent runs", clean_text(str(status["run_audit_error"])))]
    counts = status.get("failure_causes")
    if isinstance(counts, dict):
        in_flight = f" · **in flight:** {status['runs_in_flight']}" if status.get("runs_in_flight") else ""
        fields.append(("Runs (24 h)", f"**runs:** {status.get('runs_last_24h', 0)}{in_flight}\n{failures_text(counts)}"))
    recent = status.get("recent_runs")
    if isinstance(recent, list):
        fields.append(("Recent runs", _fit([run_line(run, show_member=True) for run in recent], EMBED_FIELD_LIMIT)))
    return fields


def _sessions_field(sessions: dict[str, Any]) -> str:
    """Open sessions: how many of the allowed, then one line each."""
    listed = sessions.get("sessions") or []
    head = (f"**open:** {sessions.get('active', len(listed))} of {sessions.get('max', '?')} · "
            f"idle expiry {_value(sessions.get('idle_minutes'))} min")
    return _fit([head] + [session_line_for_status(info) for info in listed], EMBED_FIELD_LIMIT)


WORKER_ICONS = {"ready": "🟢", "warming up": "🟡", "draining": "🟡", "not answering": "🔴"}


def worker_state(worker: dict[str, Any]) -> str:
    if not worker.get("reachable"):
        return "not answering"
    if worker.get("draining"):
        return "draining"
    return "ready" if worker.get("ready", True) else "warming up"


def worker_line(worker: dict[str, Any], number: int, *, show_address: bool) -> str:
    """One execution worker: health, load, warm sandboxes, version. Addresses only for the bot's owners."""
    state = worker_state(worker)
    name = inline(str(worker.get("name") or str(worker.get("instance") or "")[:12] or f"worker {number}"), 60)
    if show_address and worker.get("url"):
        name += f" ({inline(str(worker['url']), 80, links=True)})"  # the owner's own setting
    parts = [f"{WORKER_ICONS[state]} {name}", state]
    if state != "not answering":
        for key, label in (("runs_in_flight", "running"), ("queued", "waiting"), ("warm_sandboxes", "warm"),
                           ("sessions", "sessions")):
            if isinstance(worker.get(key), int):
                parts.append(f"{worker[key]} {label}")
        if worker.get("version"):
            parts.append(f"v{inline(str(worker['version']), 40)}")
    return " · ".join(parts)


def executors_field(executors: list[dict[str, Any]], *, show_address: bool) -> str:
    """Every execution worker of the deployment, those not answering included."""
    states = [worker_state(worker) for worker in executors]
    counts = ", ".join(f"{states.count(state)} {state}" for state in WORKER_ICONS if state in states) or "none"
    head = f"**{len(executors)} worker{'s' if len(executors) != 1 else ''}:** {counts}"
    lines = [worker_line(worker, number, show_address=show_address) for number, worker in enumerate(executors, 1)]
    return _fit([head] + lines, EMBED_FIELD_LIMIT)


def status_embed(status: dict[str, Any], *, queue: Any, bot_uptime: float, latency: float,
                 shards: str = "", show_addresses: bool = False) -> discord.Embed:
    # Times as everywhere else the bot shows one: in the reader's clock, relative ("2 hours ago").
    status = {**status, "last_cleanup": _expires_timestamp(status.get("last_cleanup")) or None}
    sandbox = status.get("sandbox") if isinstance(status.get("sandbox"), dict) else {}
    runs = status.get("runs") if isinstance(status.get("runs"), dict) else {}
    executors = [w for w in status.get("executors") or [] if isinstance(w, dict)]
    healthy = (bool(status.get("venv_exists", True)) and sandbox.get("available", True) is not False
               and all(worker_state(w) == "ready" for w in executors))
    embed = discord.Embed(title="Code interpreter status",
                          colour=discord.Colour.green() if healthy else discord.Colour.orange())
    if "executors" in status:
        embed.add_field(name="Execution workers", value=executors_field(executors, show_address=show_addresses),
                        inline=False)
    embed.add_field(name="Sandbox", value=_sandbox_text(sandbox), inline=False)
    embed.add_field(name="Packages", value=_lines(status, ["venv_exists", "package_count", "python_path", "last_cleanup"]), inline=False)
    embed.add_field(name="Storage", value=_lines(status, ["total_user_files", "total_file_size_mb", "disk_free_mb",
                                                          "file_expiration_hours", "max_file_size_mb"]))
    if isinstance(status.get("limits"), dict):
        embed.add_field(name="Limits", value=_limits_text(status["limits"]))
    queue_info = {"in progress": queue.in_progress, "capacity": queue.capacity,
                  "started": queue.started_total, "refused": queue.refused_total}
    embed.add_field(name="Queue", value=_lines(queue_info))
    if runs:
        load = {key: value for key, value in runs.items() if key != "failures_by_cause"}
        text = _lines(load)
        if isinstance(runs.get("failures_by_cause"), dict):
            text += "\n" + failures_text(runs["failures_by_cause"])
        embed.add_field(name="Runs", value=text)
    if isinstance(status.get("sessions"), dict):
        embed.add_field(name="Sessions", value=_sessions_field(status["sessions"]), inline=False)
    if isinstance(status.get("ask"), dict):
        ask = status["ask"]
        embed.add_field(name="/ask", value=_lines(ask) if ask.get("enabled")
                        else "off (set OPENAI_API_KEY, or OPENAI_BASE_URL for a local model server)")
    for name, value in _runs_fields(status):
        embed.add_field(name=name, value=value, inline=False)
    latency_text = f"{latency * 1000:.0f} ms" if math.isfinite(latency) else "not connected"
    engine_uptime = status.get("uptime_seconds")
    lines = [f"**bot:** {format_duration(bot_uptime)}"]
    if isinstance(engine_uptime, (int, float)):
        lines.append(f"**engine:** {format_duration(engine_uptime)}")
    lines.append(f"**gateway latency:** {latency_text}")
    if shards:
        lines.append(f"**this bot process:** {shards}")
    embed.add_field(name="Uptime", value="\n".join(lines), inline=False)
    installed = status.get("installed_packages")
    if installed:
        embed.set_footer(text=("Installed: " + _value(installed))[:2048])
    return embed


def runs_embed(member: discord.abc.User, runs: list[dict[str, Any]]) -> discord.Embed:
    embed = discord.Embed(title=f"Recent runs of {inline(member.display_name, 80)}", colour=discord.Colour.blurple())
    if runs:
        embed.description = _fit([run_line(run, show_member=False) for run in runs], EMBED_DESCRIPTION_LIMIT)
    else:
        embed.description = f"No runs by <@{member.id}> in the audit (records expire with files)."
    embed.set_footer(text="Newest first. The code is never stored; the short hash tells runs of the same code apart.")
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
        if not is_bot_owner(interaction) and isinstance(status.get("recent_runs"), list):
            # A server's admins see that server's runs only; the bot's owners see all.
            try:
                status["recent_runs"] = await interpreter.recent_runs(STATUS_RECENT_RUNS, guild_id=interaction.guild_id)
            except StoreUnavailable as exc:
                status["run_audit_error"] = str(exc)
        if not is_bot_owner(interaction) and isinstance(status.get("sessions"), dict):
            listed = status["sessions"].get("sessions") or []
            status["sessions"]["sessions"] = sessions_in_guild(listed, interaction.guild_id)
        plan = self.bot.shards_plan
        embed = status_embed(status, queue=self.bot.scheduler.stats(),
                             bot_uptime=time.monotonic() - self.bot.started_at, latency=self.bot.latency,
                             shards=plan.describe() if plan.sharded else "",
                             show_addresses=is_bot_owner(interaction))
        await interaction.edit_original_response(embed=embed, allowed_mentions=NO_MENTIONS)

    @app_commands.command(name="runs", description="A member's recent runs from the run audit (admins)")
    @app_commands.describe(member="Whose runs to show")
    @app_commands.default_permissions(manage_guild=True)
    @admin_only()
    async def runs(self, interaction: discord.Interaction, member: discord.User) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        # A server's admins see runs asked for in their server; the bot's owners see all.
        guild_id = None if is_bot_owner(interaction) else interaction.guild_id
        try:
            runs = await interpreter.recent_runs(RUNS_SHOWN, user_id=member.id, guild_id=guild_id)
        except StoreUnavailable as exc:
            await interaction.edit_original_response(content=f"⚠️ {exc}", allowed_mentions=NO_MENTIONS)
            return
        await interaction.edit_original_response(embed=runs_embed(member, runs), allowed_mentions=NO_MENTIONS)


async def setup(bot: "CodeInterpreterBot") -> None:
    await bot.add_cog(AdminCog(bot))
