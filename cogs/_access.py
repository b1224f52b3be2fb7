"""Who may use what: bot admins for admin commands, and the run access check.

The rules themselves are plain Python in interpreter/access.py (testable without
Discord); this module only turns an interaction into a RunContext and a Denial into
an ephemeral message. Every way of starting a run (/run, its code box, the Run code
menu, the Run again button) goes through `precheck_run` before the interaction is
acknowledged (no database: Discord allows 3 s) and `admit_run` after it (the hourly
limit may read the run history, which can be slow or down), so there is one place to check.
"""

from __future__ import annotations

import math

import discord
from discord import app_commands

import interpreter
from cogs._format import NO_MENTIONS
from interpreter.access import Admission, Denial, DenialReason, RunContext

MAX_CHANNELS_SUGGESTED = 3


class NotBotAdmin(app_commands.CheckFailure):
    """Raised by `admin_only`; the tree's error handler turns it into a polite refusal."""


def is_bot_admin(interaction: discord.Interaction, owner_ids: tuple[int, ...]) -> bool:
    """Manage Server in this guild (from the interaction's resolved permissions), or a configured owner."""
    if interaction.user.id in owner_ids:
        return True
    permissions = interaction.permissions
    return interaction.guild_id is not None and (permissions.manage_guild or permissions.administrator)


def is_bot_owner(interaction: discord.Interaction) -> bool:
    owner_ids = getattr(getattr(interaction.client, "settings", None), "owner_ids", ())
    return interaction.user.id in owner_ids


def admin_only():
    """app_commands check: the member must be a bot admin (see `is_bot_admin`)."""

    async def predicate(interaction: discord.Interaction) -> bool:
        owner_ids = getattr(getattr(interaction.client, "settings", None), "owner_ids", ())
        if not is_bot_admin(interaction, owner_ids):
            raise NotBotAdmin("This command is for server admins (Manage Server) and the bot's owners.")
        return True

    return app_commands.check(predicate)


# --- running code


def member_role_ids(user: discord.abc.User) -> frozenset[int]:
    """The member's role ids. `Member.roles` lists only roles in the guild's cache; the ids
    from the interaction payload (`_roles`) are there even when the cache is not."""
    ids = {role.id for role in getattr(user, "roles", ())}
    ids.update(int(role_id) for role_id in getattr(user, "_roles", ()))
    return frozenset(ids)


def run_context(interaction: discord.Interaction) -> RunContext:
    """Who asks and where: the channel, then the thread's parent channel, then the category."""
    channel = interaction.channel
    channel_ids: list[int] = []
    for candidate in (interaction.channel_id, getattr(channel, "parent_id", None), getattr(channel, "category_id", None)):
        if candidate and candidate not in channel_ids:
            channel_ids.append(int(candidate))
    return RunContext(member_id=interaction.user.id, guild_id=interaction.guild_id,
                      channel_ids=tuple(channel_ids), role_ids=member_role_ids(interaction.user))


def _or_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def denial_message(denial: Denial) -> str:
    """What the member reads (ephemeral). Channel links and times render in their client."""
    if denial.reason is DenialReason.CHANNEL:
        channels = [f"<#{channel_id}>" for channel_id in denial.allowed_channel_ids[:MAX_CHANNELS_SUGGESTED]]
        return "🚫 Code can't be run in this channel; try " + _or_list(channels)
    if denial.reason is DenialReason.RATE:
        when = f"<t:{math.ceil(denial.retry_at.timestamp())}:R>" if denial.retry_at else "later"
        runs = "run" if denial.limit == 1 else "runs"
        return f"⏳ You've used your {denial.limit} {runs} for this hour; next one available {when}"
    if denial.reason is DenialReason.COOLDOWN:  # the scheduler's words: the same rule, held across processes
        when = f"<t:{math.ceil(denial.retry_at.timestamp())}:R>" if denial.retry_at else "in a moment"
        return f"⏳ Slow down a little: you can start another run {when}."
    return "🚫 You're not allowed to run code on this server"


NOT_STARTED = "This run was not started."


async def precheck_run(interaction: discord.Interaction) -> bool:
    """Before the interaction is acknowledged: every rule that needs no database (member,
    role, channel, and the hourly limit as this process counts it). Nothing is counted.
    On refusal, tells the member why (ephemeral) and returns False."""
    denial = await interpreter.check_run(run_context(interaction), use_store=False)
    if denial is not None:
        await interaction.response.send_message(denial_message(denial), ephemeral=True, allowed_mentions=NO_MENTIONS)
        return False
    return True


async def admit_run(interaction: discord.Interaction) -> Admission | None:
    """After the interaction was deferred (publicly): every rule; the run now counts against
    the member's hourly limit (cancel the Admission if it does not start after all).

    On refusal the member alone reads why and the public "thinking" message goes away;
    returns None. An Admission's `note` (the limit could not be counted) is for the
    member too: send it with `tell_privately` once the response shows something.
    """
    outcome = await interpreter.admit_run(run_context(interaction))
    if isinstance(outcome, Denial):
        await refuse_after_defer(interaction, denial_message(outcome))
        return None
    return outcome


async def refuse_after_defer(interaction: discord.Interaction, message: str) -> None:
    """Turn a public deferral into a private refusal. The first message after a deferral
    takes over its (public) loading state, whatever its flags; so the loading message is
    resolved with a neutral line first, then the reason goes privately, then it is deleted."""
    await interaction.edit_original_response(content=NOT_STARTED, allowed_mentions=NO_MENTIONS)
    await tell_privately(interaction, message)
    try:
        await interaction.delete_original_response()
    except discord.HTTPException:
        pass  # the neutral line stays; the member has the reason


async def tell_privately(interaction: discord.Interaction, message: str) -> None:
    """An ephemeral follow-up (only after the response was sent or edited once)."""
    await interaction.followup.send(message, ephemeral=True, allowed_mentions=NO_MENTIONS)
