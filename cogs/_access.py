"""Who counts as an admin of the bot, and the check used by admin-only commands."""

from __future__ import annotations

import discord
from discord import app_commands


class NotBotAdmin(app_commands.CheckFailure):
    """Raised by `admin_only`; the tree's error handler turns it into a polite refusal."""


def is_bot_admin(interaction: discord.Interaction, owner_ids: tuple[int, ...]) -> bool:
    """Manage Server in this guild (from the interaction's resolved permissions), or a configured owner."""
    if interaction.user.id in owner_ids:
        return True
    permissions = interaction.permissions
    return interaction.guild_id is not None and (permissions.manage_guild or permissions.administrator)


def admin_only():
    """app_commands check: the member must be a bot admin (see `is_bot_admin`)."""

    async def predicate(interaction: discord.Interaction) -> bool:
        owner_ids = getattr(getattr(interaction.client, "settings", None), "owner_ids", ())
        if not is_bot_admin(interaction, owner_ids):
            raise NotBotAdmin("This command is for server admins (Manage Server) and the bot's owners.")
        return True

    return app_commands.check(predicate)
