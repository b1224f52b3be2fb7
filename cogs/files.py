"""A member's files: /upload, /files list|delete, the "Upload to interpreter" message
menu, and data files dropped in chat (needs the message-content intent)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

import interpreter
from cogs._format import NO_MENTIONS, display_filename, human_size, inline
from cogs._uploads import (AUTO_UPLOAD_EXTENSIONS, MAX_UPLOADS_PER_MESSAGE, _expires_timestamp, brief, not_stored_line,
                           store_attachment)
from cogs.run import analyse_view, own_file_choices, report_error
from interpreter.filetypes import extension

if TYPE_CHECKING:
    from bot.client import CodeInterpreterBot

log = logging.getLogger(__name__)

FILES_PER_PAGE = 5


class FilesCog(commands.Cog, name="Files"):
    files_group = app_commands.Group(name="files", description="Your stored files (they expire automatically)")

    def __init__(self, bot: "CodeInterpreterBot") -> None:
        self.bot = bot
        self.settings = bot.settings
        self.upload_menu = app_commands.ContextMenu(name="Upload to interpreter", callback=self.upload_from_message)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.upload_menu)
        self.bot.add_dynamic_items(FilesPageButton, FileDeleteButton)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.upload_menu.name, type=self.upload_menu.type)
        self.bot.remove_dynamic_items(FilesPageButton, FileDeleteButton)

    # --- uploads

    @app_commands.command(name="upload", description="Store a file for your code (CSV, Excel, JSON, Parquet, images…)")
    @app_commands.describe(file="The file to store; tables get a preview")
    async def upload(self, interaction: discord.Interaction, file: discord.Attachment) -> None:
        await interaction.response.defer(thinking=True)

        def show(content: str):
            return interaction.edit_original_response(content=content, allowed_mentions=NO_MENTIONS)
        reply = await store_attachment(interaction.user.id, file, self.settings, show=show)
        await interaction.edit_original_response(content=reply.content, allowed_mentions=NO_MENTIONS,
                                                 view=analyse_view(interaction.user.id, reply.file_id if reply.table else None))

    async def upload_from_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Message menu: store the attachments of any message as the member's own files."""
        if not message.attachments:
            await interaction.response.send_message("That message has no attachments to upload.", ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        taken, left = message.attachments[:MAX_UPLOADS_PER_MESSAGE], message.attachments[MAX_UPLOADS_PER_MESSAGE:]
        replies: list = []

        def show(content: str):  # the files stored so far, and this one waiting for its preview
            so_far = "\n\n".join([*(r.content for r in replies), content])
            return interaction.edit_original_response(content=so_far[:2000], allowed_mentions=NO_MENTIONS)
        for attachment in taken:
            replies.append(await store_attachment(interaction.user.id, attachment, self.settings, show=show))
        tail = f"\n\n{not_stored_line(left)}" if left else ""
        content = "\n\n".join(r.content for r in replies)
        if len(content) + len(tail) > 2000:
            content = "\n".join(brief(r) for r in replies)
        await interaction.edit_original_response(content=(content[:2000 - len(tail)] + tail),
                                                 allowed_mentions=NO_MENTIONS)

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        """Data files dropped in chat are uploaded automatically (where enabled)."""
        if message.author.bot or not message.attachments or not self.auto_upload_here(message):
            return
        data_files = [a for a in message.attachments if extension(a.filename) in AUTO_UPLOAD_EXTENSIONS]
        for attachment in data_files[:MAX_UPLOADS_PER_MESSAGE]:
            interim: list[discord.Message] = []

            async def show(content: str) -> None:
                interim.append(await message.reply(content, allowed_mentions=NO_MENTIONS, mention_author=False))
            try:
                reply = await store_attachment(message.author.id, attachment, self.settings, show=show)
                view = analyse_view(message.author.id, reply.file_id if reply.table else None)
                if interim:  # the reply that said the preview was waiting becomes the answer
                    await interim[0].edit(content=reply.content, allowed_mentions=NO_MENTIONS, view=view)
                else:
                    await message.reply(reply.content, allowed_mentions=NO_MENTIONS, mention_author=False, view=view)
            except Exception:  # one bad file must not stop the listener or the others
                log.exception("auto-upload of attachment %s failed", attachment.id)
        if len(data_files) > MAX_UPLOADS_PER_MESSAGE:
            await message.reply(not_stored_line(data_files[MAX_UPLOADS_PER_MESSAGE:]), allowed_mentions=NO_MENTIONS,
                                mention_author=False)

    def auto_upload_here(self, message: discord.Message) -> bool:
        if not self.settings.auto_upload or not self.bot.intents.message_content:
            return False
        channels = self.settings.upload_channel_ids
        return not channels or message.channel.id in channels

    # --- listing and deleting

    @files_group.command(name="list", description="List your files (only you see this)")
    async def files_list(self, interaction: discord.Interaction) -> None:
        # Acknowledged before the database: a slow or dead one must not outlast Discord's 3 s.
        await interaction.response.defer(ephemeral=True, thinking=True)
        files = await interpreter.list_user_files(interaction.user.id)
        embed, view = files_page(interaction.user.id, files, 0)
        await interaction.edit_original_response(embed=embed, view=view, allowed_mentions=NO_MENTIONS)

    @files_group.command(name="delete", description="Delete one of your files")
    @app_commands.describe(file="The file to delete (start typing to pick)")
    async def files_delete(self, interaction: discord.Interaction, file: str) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)  # before the database, as above
        deleted = await interpreter.delete_user_file(file.strip(), interaction.user.id)
        if deleted:
            message = f"🗑️ Deleted `{inline(file.strip(), 80)}`."
        else:
            message = "I found no file of yours with that id (it may have expired). `/files list` shows what you have."
        await interaction.edit_original_response(content=message, allowed_mentions=NO_MENTIONS)

    @files_delete.autocomplete("file")
    async def files_delete_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return await own_file_choices(interaction.user.id, current)


def describe_file(meta: dict[str, Any]) -> str:
    name = display_filename(str(meta.get("filename") or "file"))
    kind = inline(str(meta.get("file_type") or "file"), 20)
    size = human_size(int(meta.get("file_size") or meta.get("size") or 0))
    expires = _expires_timestamp(meta.get("expires_at"))
    return f"**{name}** ({kind}, {size})" + (f", expires {expires}" if expires else "") + f"\n`{meta.get('file_id')}`"


def files_page(user_id: int, files: list[dict[str, Any]], page: int) -> tuple[discord.Embed, discord.ui.View | None]:
    """One page of a member's files: the embed, and its delete and page buttons (None: no files).

    The buttons are persistent (discord.ui.DynamicItem): their custom ids carry the owner,
    the page and the file, and a click lists the files again, so the list keeps working
    after a restart and on any shard."""
    pages = max(1, -(-len(files) // FILES_PER_PAGE))
    page = max(0, min(page, pages - 1))
    start = page * FILES_PER_PAGE
    shown = files[start:start + FILES_PER_PAGE]
    embed = discord.Embed(title="Your files", colour=discord.Colour.blurple())
    if not files:
        embed.description = "You have no stored files. Use `/upload` or drop a CSV in chat."
        return embed, None
    embed.description = "\n\n".join(f"{start + i + 1}. {describe_file(meta)}" for i, meta in enumerate(shown))[:4096]
    embed.set_footer(text=f"Page {page + 1} of {pages} · {len(files)} files · use a file in code with load_file('<id>')")
    view = discord.ui.View(timeout=None)
    for i, meta in enumerate(shown):
        view.add_item(FileDeleteButton(user_id, page, str(meta.get("file_id")), start + i + 1))
    if pages > 1:
        view.add_item(FilesPageButton(user_id, page - 1, "prev", disabled=page == 0))
        view.add_item(FilesPageButton(user_id, page + 1, "next", disabled=page >= pages - 1))
    return embed, view


async def _show_page(interaction: discord.Interaction, owner_id: int, page: int, action=None) -> None:
    """A click on the list: the owner's files listed again (after `action`), the page redrawn."""
    if interaction.user.id != owner_id:
        await interaction.response.send_message("These are someone else's files.", ephemeral=True)
        return
    try:
        await interaction.response.defer()  # acknowledged before the database; the list is redrawn below
        note = await action() if action is not None else None
        files = await interpreter.list_user_files(owner_id)
        embed, view = files_page(owner_id, files, page)
        await interaction.edit_original_response(embed=embed, view=view, allowed_mentions=NO_MENTIONS)
        if note:
            await interaction.followup.send(note, ephemeral=True)
    except Exception as error:  # noqa: BLE001 - dynamic items' errors are only logged by discord.py
        await report_error(interaction, error, "the files list")


class FilesPageButton(discord.ui.DynamicItem[discord.ui.Button],
                      template=r"files:page:(?P<owner>[0-9]{1,20}):(?P<page>-?[0-9]{1,4}):(?P<which>prev|next)"):
    def __init__(self, owner_id: int, page: int, which: str, *, disabled: bool = False) -> None:
        super().__init__(discord.ui.Button(label="Previous" if which == "prev" else "Next", row=1, disabled=disabled,
                                           style=discord.ButtonStyle.secondary,
                                           custom_id=f"files:page:{owner_id}:{page}:{which}"))
        self.owner_id, self.page = owner_id, page

    @classmethod
    async def from_custom_id(cls, interaction, item, match) -> "FilesPageButton":
        return cls(int(match["owner"]), int(match["page"]), match["which"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await _show_page(interaction, self.owner_id, self.page)


class FileDeleteButton(discord.ui.DynamicItem[discord.ui.Button],
                       template=r"files:del:(?P<owner>[0-9]{1,20}):(?P<page>[0-9]{1,4}):(?P<file_id>[0-9a-f]{32})"):
    def __init__(self, owner_id: int, page: int, file_id: str, number: int = 0) -> None:
        super().__init__(discord.ui.Button(label=f"Delete {number}", emoji="🗑️", style=discord.ButtonStyle.danger, row=0,
                                           custom_id=f"files:del:{owner_id}:{page}:{file_id}"))
        self.owner_id, self.page, self.file_id = owner_id, page, file_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match) -> "FileDeleteButton":
        return cls(int(match["owner"]), int(match["page"]), match["file_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        async def delete() -> str | None:
            deleted = await interpreter.delete_user_file(self.file_id, self.owner_id)
            return None if deleted else "That file had already expired or been deleted."
        await _show_page(interaction, self.owner_id, self.page, delete)


async def setup(bot: "CodeInterpreterBot") -> None:
    await bot.add_cog(FilesCog(bot))
