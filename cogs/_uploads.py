"""Storing a Discord attachment as a member's file, and previewing tables safely.

The preview (shape, columns with dtypes, first rows) is computed by a small snippet
(interpreter/preview.py) that runs *in the sandbox* through `run_code`: the bot process never parses a
member's file with pandas, so a zip-bomb workbook or a pathological CSV can only
exhaust a sandbox, not the bot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import discord

import interpreter
from cogs._format import code_block, display_filename, human_size, inline
from config import Settings
from interpreter.filetypes import extension, sanitize_filename
from interpreter.preview import TABLE_EXTENSIONS, parse_previews, preview_code

log = logging.getLogger(__name__)

# Dropped in chat, these are uploaded automatically (the list).
AUTO_UPLOAD_EXTENSIONS = frozenset({"csv", "tsv", "xlsx", "json", "parquet"})
PREVIEW_EXTENSIONS = TABLE_EXTENSIONS  # these get a table preview
PREVIEW_TIMEOUT_SECONDS = 30
# Files taken from one message (menu or drop): each is stored and previewed in turn, so a
# message of ten files does not hold the member's line for ten previews.
MAX_UPLOADS_PER_MESSAGE = 5


@dataclasses.dataclass
class UploadReply:
    ok: bool
    content: str
    file_id: str | None = None
    table: bool = False  # stored as a table (by its content): it gets the "Analyse in /run" button


def _expires_timestamp(value: Any) -> str:
    """A Discord relative timestamp for an expiry given as datetime or ISO text."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return ""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return discord.utils.format_dt(value, "R")
    return ""


def too_large_message(filename: str, size: int, settings: Settings) -> str:
    return (f"⚠️ **{display_filename(filename)}** is {human_size(size)}; the largest file I can take is "
            f"{settings.max_file_size_mb} MB. Try a smaller extract (or compress it as Parquet).")


# Shows a reply before it is final: the file is stored and its preview waits for a run slot.
ShowStored = Callable[[str], Awaitable[Any]]


async def store_bytes(user_id: int, data: bytes, filename: str, settings: Settings, *,
                      preview_tables: bool = True, show: ShowStored | None = None) -> UploadReply:
    """Upload `data` for `user_id` and describe the result (with a preview for tables,
    unless `preview_tables` is off: /ask describes the file to its model itself).

    The preview is a run and waits in the run queue like any other; while it waits, `show`
    gets the reply so far (stored, its id, the place in line), so a busy bot does not leave
    the member looking at "thinking" with no word that the file is safe."""
    name = sanitize_filename(filename)
    if len(data) > settings.max_file_size_bytes:
        return UploadReply(False, too_large_message(name, len(data), settings))
    try:
        stored = await interpreter.upload_file(user_id=user_id, file_data=data, filename=name)
    except interpreter.InterpreterError as exc:
        return UploadReply(False, f"⚠️ Could not store **{display_filename(name)}**: {inline(str(exc), 300)}")
    if not stored.get("success", True) or not stored.get("file_id"):
        reason = stored.get("error") or "the file was refused"
        return UploadReply(False, f"⚠️ Could not store **{display_filename(name)}**: {inline(str(reason), 300)}")

    file_id = str(stored["file_id"])
    kind = stored.get("file_type") or extension(name) or "file"
    size = int(stored.get("file_size") or stored.get("size") or len(data))
    expires = _expires_timestamp(stored.get("expires_at"))
    lines = [
        f"📁 Stored **{display_filename(stored.get('filename') or name)}** ({inline(str(kind), 20)}, {human_size(size)})"
        + (f", expires {expires}" if expires else ""),
        f"File id: `{file_id}`",
    ]
    if stored.get("note"):
        lines.append(f"ℹ️ {inline(str(stored['note']), 300)}")
    # The stored type is the content's: a binary file renamed .csv gets no table preview.
    table = str(kind) in PREVIEW_EXTENSIONS
    use = (f"Use it: **Analyse in /run** below, or `/run code:df = load_file('{file_id}')`" if table
           else f"Use it: `/run code:data = load_file('{file_id}')`")

    def joined(*more: str) -> str:
        return "\n".join(line for line in (*lines, *more) if line)[:2000]

    if preview_tables and table:
        def waiting(position: int) -> Awaitable[Any] | None:
            if show is None:
                return None
            return show(joined(f"⏳ Preview: waiting for a free run slot (number {position} in line)…", use))
        lines.append(await preview(file_id, user_id, waiting))
    return UploadReply(True, joined(use), file_id, table)


async def preview(file_id: str, user_id: int,
                  waiting: Callable[[int], Awaitable[Any] | None] | None = None) -> str:
    """Shape, columns with dtypes and first rows, computed in the sandbox (interpreter/preview.py).
    `waiting(position)` is called once if the preview has to wait for a run slot."""
    told: list[asyncio.Task] = []

    def report(position: int) -> None:
        if position and not told and waiting is not None:
            shown = waiting(position)
            if shown is not None:
                told.append(asyncio.ensure_future(_quietly(shown)))

    try:
        with interpreter.observe_queue(report):
            result = await interpreter.run_code(preview_code([file_id]), user_id=user_id, user_files=[file_id],
                                                timeout=PREVIEW_TIMEOUT_SECONDS)
    except Exception:  # the preview is a courtesy: never let it fail the upload
        log.exception("preview of %s failed", file_id)
        return "*(no preview: the interpreter had a problem; the file is stored)*"
    finally:
        if told:  # the interim reply goes out before the final one replaces it
            await asyncio.wait(told)
    info = parse_previews(result.output).get(file_id)
    if not result.success or info is None or info.get("note"):
        reason = str((info or {}).get("note") or result.error or "could not read the file").strip().splitlines()
        return f"*(no preview: {inline(reason[-1] if reason else 'unknown error', 200)})*"
    return render_preview(info)


async def _quietly(shown: Awaitable[Any]) -> None:
    try:
        await shown
    except discord.HTTPException:  # the interim line is a courtesy; the final reply still goes out
        log.warning("could not show that an upload's preview is waiting")


def render_preview(info: dict) -> str:
    if "rows" in info:
        columns = info.get("columns") or []
        col_text = ", ".join(f"{name} ({dtype})" for name, dtype in columns)
        if info.get("cols", 0) > len(columns):
            col_text += f", … {info['cols'] - len(columns)} more"
        parts = [
            f"**Shape:** {info['rows']:,} rows × {info['cols']:,} columns",
            "**Columns:** " + inline(col_text, 600),
        ]
        head = str(info.get("head") or "")
        if head:
            parts.append(code_block(head[:1000]))
        return "\n".join(parts)
    if "length" in info:
        return f"**Loaded as** {inline(str(info.get('kind')), 40)} with {info['length']:,} items"
    return f"**Loaded as** {inline(str(info.get('kind')), 40)}"


async def store_attachment(user_id: int, attachment: discord.Attachment, settings: Settings, *,
                           preview_tables: bool = True, show: ShowStored | None = None) -> UploadReply:
    """Download and store one Discord attachment; refuses too-large files before downloading."""
    if attachment.size and attachment.size > settings.max_file_size_bytes:
        return UploadReply(False, too_large_message(attachment.filename, attachment.size, settings))
    try:
        data = await attachment.read()
    except (discord.HTTPException, OSError):
        log.exception("download of attachment %s failed", attachment.id)
        return UploadReply(False, f"⚠️ I could not download **{display_filename(attachment.filename)}** from Discord. Please try again.")
    return await store_bytes(user_id, data, attachment.filename, settings, preview_tables=preview_tables, show=show)


def not_stored_line(attachments: list[discord.Attachment]) -> str:
    """The attachments of a message past MAX_UPLOADS_PER_MESSAGE, named: never dropped without a word."""
    names = ", ".join(f"**{display_filename(a.filename)}**" for a in attachments)
    return (f"⚠️ Not stored: {names} (I take {MAX_UPLOADS_PER_MESSAGE} files from one message; "
            "store the rest with `/upload`).")


def brief(reply: UploadReply) -> str:
    """A stored file in two lines (name and id), for when the previews of several do not fit."""
    return "\n".join(reply.content.splitlines()[:2 if reply.ok else 1])
