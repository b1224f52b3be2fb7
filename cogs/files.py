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
from cogs._uploads import AUTO_UPLOAD_EXTENSIONS, _expires_timestamp, store_attachment
from cogs.run import analyse_view, own_file_choices, report_error
from interpreter.filetypes import extension

if TYPE_CHECKING:
    from bot.client import CodeInterpreterBot

log = logging.getLogger(__name__)

FILES_PER_PAGE = 5
FILES_VIEW_SECONDS = 600


class FilesCog(commands.Cog, name="Files"):
    files_group = app_commands.Group(name="files", description="Your stored files (they expire automatically)")

    def __init__(self, bot: "CodeInterpreterBot") -> None:
        self.bot = bot
        self.settings = bot.settings
        self.upload_menu = app_commands.ContextMenu(name="Upload to interpreter", callback=self.upload_from_message)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.upload_menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.upload_menu.name, type=self.upload_menu.type)

    # --- uploads

    @app_commands.command(name="upload", description="Store a file for your code (CSV, Excel, JSON, Parquet, images…)")
    @app_commands.describe(file="The file to store; tables get a preview")
    async def upload(self, interaction: discord.Interaction, file: discord.Attachment) -> None:
        await interaction.response.defer(thinking=True)
        reply = await store_attachment(interaction.user.id, file, self.settings)
        await interaction.edit_original_response(content=reply.content, allowed_mentions=NO_MENTIONS,
                                                 view=analyse_view(interaction.user.id, reply.file_id if reply.table else None))

    async def upload_from_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Message menu: store the attachments of any message as the member's own files."""
        if not message.attachments:
            await interaction.response.send_message("That message has no attachments to upload.", ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        replies = [await store_attachment(interaction.user.id, a, self.settings) for a in message.attachments[:5]]
        content = "\n\n".join(r.content for r in replies)
        if len(content) > 2000:
            content = "\n".join(r.content.splitlines()[0] for r in replies)
        await interaction.edit_original_response(content=content[:2000], allowed_mentions=NO_MENTIONS)

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        """Data files dropped in chat are uploaded automatically (where enabled)."""
        if message.author.bot or not message.attachments or not self.auto_upload_here(message):
            return
        data_files = [a for a in message.attachments if extension(a.filename) in AUTO_UPLOAD_EXTENSIONS]
        for attachment in data_files[:5]:
            try:
                reply = await store_attachment(message.author.id, attachment, self.settings)
                await message.reply(reply.content, allowed_mentions=NO_MENTIONS, mention_author=False,
                                    view=analyse_view(message.author.id, reply.file_id if reply.table else None))
            except Exception:  # one bad file must not stop the listener or the others
                log.exception("auto-upload of attachment %s failed", attachment.id)

    def auto_upload_here(self, message: discord.Message) -> bool:
        if not self.settings.auto_upload or not self.bot.intents.message_content:
            return False
        channels = self.settings.upload_channel_ids
        return not channels or message.channel.id in channels

    # --- listing and deleting

    @files_group.command(name="list", description="List your files (only you see this)")
    async def files_list(self, interaction: discord.Interaction) -> None:
        files = await interpreter.list_user_files(interaction.user.id)
        view = FilesView(interaction.user.id, files)
        await interaction.response.send_message(embed=view.embed(), view=view if files else discord.utils.MISSING,
                                                ephemeral=True, allowed_mentions=NO_MENTIONS)

    @files_group.command(name="delete", description="Delete one of your files")
    @app_commands.describe(file="The file to delete (start typing to pick)")
    async def files_delete(self, interaction: discord.Interaction, file: str) -> None:
        deleted = await interpreter.delete_user_file(file.strip(), interaction.user.id)
        if deleted:
            message = f"🗑️ Deleted `{inline(file.strip(), 80)}`."
        else:
            message = "I found no file of yours with that id (it may have expired). `/files list` shows what you have."
        await interaction.response.send_message(message, ephemeral=True, allowed_mentions=NO_MENTIONS)

    @files_delete.autocomplete("file")
    async def files_delete_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return await own_file_choices(interaction.user.id, current)


def describe_file(meta: dict[str, Any]) -> str:
    name = display_filename(str(meta.get("filename") or "file"))
    kind = inline(str(meta.get("file_type") or "file"), 20)
    size = human_size(int(meta.get("file_size") or meta.get("size") or 0))
    expires = _expires_timestamp(meta.get("expires_at"))
    return f"**{name}** ({kind}, {size})" + (f", expires {expires}" if expires else "") + f"\n`{meta.get('file_id')}`"


class FilesView(discord.ui.View):
    """One page of a member's files, with a delete button per file and page buttons."""

    def __init__(self, user_id: int, files: list[dict[str, Any]], page: int = 0) -> None:
        super().__init__(timeout=FILES_VIEW_SECONDS)
        self.user_id = user_id
        self.files = files
        self.page = page
        self._rebuild()

    @property
    def pages(self) -> int:
        return max(1, -(-len(self.files) // FILES_PER_PAGE))

    def _page_files(self) -> list[dict[str, Any]]:
        start = self.page * FILES_PER_PAGE
        return self.files[start:start + FILES_PER_PAGE]

    def embed(self) -> discord.Embed:
        embed = discord.Embed(title="Your files", colour=discord.Colour.blurple())
        if not self.files:
            embed.description = "You have no stored files. Use `/upload` or drop a CSV in chat."
            return embed
        start = self.page * FILES_PER_PAGE
        embed.description = "\n\n".join(f"{start + i + 1}. {describe_file(meta)}" for i, meta in enumerate(self._page_files()))[:4096]
        embed.set_footer(text=f"Page {self.page + 1} of {self.pages} · {len(self.files)} files · "
                              "use a file in code with load_file('<id>')")
        return embed

    def _rebuild(self) -> None:
        self.clear_items()
        self.page = min(self.page, self.pages - 1)
        start = self.page * FILES_PER_PAGE
        for i, meta in enumerate(self._page_files()):
            button = discord.ui.Button(label=f"Delete {start + i + 1}", emoji="🗑️", style=discord.ButtonStyle.danger,
                                       custom_id=f"files:del:{meta.get('file_id')}"[:100], row=0)
            button.callback = self._delete_callback(str(meta.get("file_id")))
            self.add_item(button)
        if self.pages > 1:
            previous = discord.ui.Button(label="Previous", style=discord.ButtonStyle.secondary,
                                         custom_id="files:prev", row=1, disabled=self.page == 0)
            following = discord.ui.Button(label="Next", style=discord.ButtonStyle.secondary,
                                          custom_id="files:next", row=1, disabled=self.page >= self.pages - 1)
            previous.callback = self._turn(-1)
            following.callback = self._turn(+1)
            self.add_item(previous)
            self.add_item(following)

    def _turn(self, step: int):
        async def callback(interaction: discord.Interaction) -> None:
            self.page = max(0, min(self.pages - 1, self.page + step))
            self._rebuild()
            await interaction.response.edit_message(embed=self.embed(), view=self, allowed_mentions=NO_MENTIONS)
        return callback

    def _delete_callback(self, file_id: str):
        async def callback(interaction: discord.Interaction) -> None:
            deleted = await interpreter.delete_user_file(file_id, self.user_id)
            self.files = [f for f in self.files if str(f.get("file_id")) != file_id]
            self._rebuild()
            await interaction.response.edit_message(embed=self.embed(), view=self if self.files else None,
                                                    allowed_mentions=NO_MENTIONS)
            if not deleted:
                await interaction.followup.send("That file had already expired or been deleted.", ephemeral=True)
        return callback

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id != self.user_id:
            await interaction.response.send_message("These are someone else's files.", ephemeral=True)
            return False
        return True

    async def on_error(self, interaction: discord.Interaction, error: Exception, item: discord.ui.Item) -> None:
        await report_error(interaction, error, "the files list")


async def setup(bot: "CodeInterpreterBot") -> None:
    await bot.add_cog(FilesCog(bot))
