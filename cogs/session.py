"""/session start|status|reset|end [member]: a Python session that keeps a member's variables
between runs in one channel, like a notebook.

While a member's session is open in a channel, /run there continues it (cogs/run.py
asks `continues()`), and each reply says how the session stands. The session itself
lives in the engine (interpreter/sessions.py); this cog only words it. One session
per member per channel: its id is "guild:channel:member".

The cog also sweeps expired sessions every minute (the engine ends them lazily on
access too) and ends every session when the bot shuts down.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands, tasks

import interpreter
from cogs._access import is_bot_admin, precheck_run
from cogs._format import NO_MENTIONS
from interpreter import EndReason, SessionInfo, SessionState

if TYPE_CHECKING:
    from bot.client import CodeInterpreterBot

log = logging.getLogger(__name__)

SWEEP_MINUTES = 1.0


# --- ids and wording, shared with /run and /status


def session_id_for(interaction: discord.Interaction) -> str:
    """The member's session id in this channel (threads have their own)."""
    return f"{interaction.guild_id or 'dm'}:{interaction.channel_id}:{interaction.user.id}"


def parse_session_id(session_id: str) -> tuple[int | None, int, int] | None:
    """(guild, channel, member) from an id made by `session_id_for`; None for other ids."""
    parts = session_id.split(":")
    if len(parts) != 3 or not all(part.isdigit() for part in parts[1:]):
        return None
    guild = int(parts[0]) if parts[0].isdigit() else None
    return guild, int(parts[1]), int(parts[2])


def minutes(seconds: float) -> str:
    if seconds < 60:
        return "less than a minute"
    return f"{math.floor(seconds / 60)} min"


def runs_text(runs: int) -> str:
    return f"{runs} run{'s' if runs != 1 else ''}"


def session_summary(info: SessionInfo) -> str:
    """'3 runs, 4 min idle left' (or the time to its maximum age, when that comes first)."""
    if info.age_left_seconds < info.idle_left_seconds:
        return f"{runs_text(info.runs)}, ends in {minutes(info.age_left_seconds)} (maximum age)"
    return f"{runs_text(info.runs)}, {minutes(info.idle_left_seconds)} idle left"


def session_header(session: SessionState | None) -> str:
    """The lines a /run reply starts with when it ran in a session ('' when it did not)."""
    if session is None:
        return ""
    lines = [f"⏱️ {session.note}"] if session.note else []
    if session.active:
        lines.append(f"🧠 session: {session_summary(session.info)}")
    else:
        lines.append("🧠 session ended: your next /run here starts a fresh one")
    return "\n".join(lines)


def session_line_for_status(info: dict[str, Any]) -> str:
    """One open session for admins: who, where, runs, idle, age."""
    parsed = parse_session_id(str(info.get("session_id", "")))
    where = f"<@{int(info.get('user_id', 0))}>"
    if parsed is not None:
        where += f" in <#{parsed[1]}>"
    busy = " · ▶️ running" if info.get("busy") else ""
    return (f"{where} · {runs_text(int(info.get('runs', 0)))} · idle {minutes(float(info.get('idle_seconds', 0)))}"
            f" · {minutes(float(info.get('age_seconds', 0)))} old{busy}")


def opened_in_guild(session_id: str, guild_id: int | None) -> bool:
    parsed = parse_session_id(session_id)
    return parsed is not None and parsed[0] == guild_id


def sessions_in_guild(sessions: list[dict[str, Any]], guild_id: int | None) -> list[dict[str, Any]]:
    """Only the sessions opened in this guild (a server's admins see their server's only)."""
    return [s for s in sessions if opened_in_guild(str(s.get("session_id", "")), guild_id)]


ABOUT = ("While it lasts, `/run` in this channel continues it: variables, imports and files in the work dir "
         "are kept between runs, and your files named by id in the code (`load_file('<id>')`) are loaded into it.")


class SessionCog(commands.Cog, name="Session"):
    session = app_commands.Group(name="session", description="A Python session that keeps your variables between runs here")

    def __init__(self, bot: "CodeInterpreterBot") -> None:
        self.bot = bot
        self.settings = bot.settings

    async def cog_load(self) -> None:
        self.sweep.start()

    async def cog_unload(self) -> None:
        self.sweep.cancel()
        if self.settings.executor_urls:
            # Sessions on remote workers outlive this bot process: it may be one of several
            # pods, or restarting, and their members go on with them.
            return
        try:  # shutdown: no session's sandbox may outlive the bot
            executor = await interpreter.get_executor()
            for info in await executor.list_sessions():
                await executor.end_session(info.session_id, EndReason.SHUTDOWN)
        except Exception:
            log.exception("closing sessions at shutdown failed")

    @tasks.loop(minutes=SWEEP_MINUTES)
    async def sweep(self) -> None:
        """End sessions past their idle time or maximum age, freeing their memory."""
        try:
            ended = await (await interpreter.get_executor()).sweep_sessions()
        except Exception:
            log.exception("session sweep failed; will retry")
            return
        if ended:
            log.info("session sweep ended %d sessions", ended)

    def _lifetime(self) -> str:
        s = self.settings
        return (f"It ends after {s.session_idle_minutes:g} minutes without a run, {s.session_max_age_minutes:g} "
                "minutes in all, or with `/session end`.")

    async def _reply(self, interaction: discord.Interaction, content: str) -> None:
        await interaction.edit_original_response(content=content, allowed_mentions=NO_MENTIONS)

    @session.command(name="start", description="Start a session: /run here keeps your variables between runs")
    async def start(self, interaction: discord.Interaction) -> None:
        if not await precheck_run(interaction):  # same rules as running code; nothing counted
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        session_id = session_id_for(interaction)
        try:
            opened = await (await interpreter.get_executor()).open_session(session_id, interaction.user.id)
        except interpreter.InterpreterError as exc:
            await self._reply(interaction, f"⚠️ {exc}")
            return
        if not opened.created:
            await self._reply(interaction, f"🧠 You already have a session here: {session_summary(opened.info)}. "
                                           "`/session reset` starts over.")
            return
        await self._reply(interaction, f"🧠 Session started. {ABOUT}\n{self._lifetime()}")

    @session.command(name="status", description="Your session in this channel: runs and time left")
    async def status(self, interaction: discord.Interaction) -> None:
        # Acknowledged first: with execution workers, where the session lives is read from the database.
        await interaction.response.defer(ephemeral=True, thinking=True)
        executor = await interpreter.get_executor()
        session_id = session_id_for(interaction)
        info = await executor.get_session(session_id)
        if info is not None:
            content = f"🧠 Session: {session_summary(info)}." + (" A run is going on." if info.busy else "")
        else:
            note = await executor.session_ending_note(session_id)
            content = (f"{note} " if note else "") + "No session in this channel. `/session start` opens one; " \
                                                     "without one, each `/run` starts fresh."
        await self._reply(interaction, content)

    @session.command(name="reset", description="Start your session over: variables and work files are cleared")
    async def reset(self, interaction: discord.Interaction) -> None:
        if not await precheck_run(interaction):
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        executor = await interpreter.get_executor()
        try:
            await executor.reset_session(session_id_for(interaction), interaction.user.id)
        except interpreter.InterpreterError as exc:
            await self._reply(interaction, f"⚠️ {exc}")
            return
        await self._reply(interaction, f"🔄 Session reset: a fresh one is ready; earlier variables and work files are gone.\n{self._lifetime()}")

    @session.command(name="end", description="End your session in this channel; /run starts fresh again")
    @app_commands.describe(member="Admins: end this member's sessions in this server instead of your own")
    async def end(self, interaction: discord.Interaction, member: discord.User | None = None) -> None:
        if member is not None and member.id != interaction.user.id:
            await self._end_for_admin(interaction, member)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)  # its processes are reaped first
        executor = await interpreter.get_executor()
        info = await executor.end_session(session_id_for(interaction), EndReason.ENDED)
        if info is None:
            await self._reply(interaction, "You have no session in this channel.")
            return
        await self._reply(interaction, f"⏹️ Session ended after {runs_text(info.runs)}. "
                                       "`/run` starts fresh again in this channel.")

    async def _end_for_admin(self, interaction: discord.Interaction, member: discord.User) -> None:
        """An admin ends a member's sessions in this server (a stuck or runaway session,
        say); the member's next /run says a server admin ended it."""
        if interaction.guild_id is None or not is_bot_admin(interaction, self.settings.owner_ids):
            await interaction.response.send_message(
                "Only server admins (Manage Server) and the bot's owners can end someone else's session.",
                ephemeral=True, allowed_mentions=NO_MENTIONS)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        executor = await interpreter.get_executor()
        theirs = [s.session_id for s in await executor.list_sessions(member.id)
                  if opened_in_guild(s.session_id, interaction.guild_id)]
        ended = [info for session_id in theirs if (info := await executor.end_session(session_id, EndReason.BY_ADMIN))]
        if not ended:
            await self._reply(interaction, f"<@{member.id}> has no open session in this server.")
            return
        log.info("admin %s ended %d sessions of member %s in guild %s",
                 interaction.user.id, len(ended), member.id, interaction.guild_id)
        where = ", ".join(f"<#{parse_session_id(info.session_id)[1]}>" for info in ended)
        await self._reply(interaction, f"⏹️ Ended <@{member.id}>'s session{'s' if len(ended) != 1 else ''} in {where}. "
                                       "Their next `/run` there starts fresh and tells them a server admin ended it.")


async def setup(bot: "CodeInterpreterBot") -> None:
    await bot.add_cog(SessionCog(bot))
