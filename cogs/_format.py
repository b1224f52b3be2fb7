"""Turning member text and engine results into safe Discord messages.

Everything that echoes member-controlled text (program output, errors, filenames,
column names) goes through here, so the rules live in one place:
- code blocks cannot be closed early: every backtick is followed by a zero-width
  space, so no run of three backticks survives;
- characters that draw nothing (bidi controls, zero-width and default-ignorable
  characters, fillers, blank braille: interpreter/invisible.py) are removed or shown
  as spaces, so text cannot look empty, look like other text, or read differently
  from what it is;
- filenames are sanitised (interpreter.filetypes) and markdown-escaped;
- sizes respect Discord's limits (2,000 characters a message, 10 attachments,
  the guild's upload limit); what does not fit is listed by name and size.
Mentions are handled by the callers with `discord.AllowedMentions.none()`.
"""

from __future__ import annotations

import dataclasses
import io
import re

import discord

from interpreter.filetypes import sanitize_filename
from interpreter.invisible import strip_invisible
from interpreter.result import RunResult

MESSAGE_LIMIT = 2000
EMBED_DESCRIPTION_LIMIT = 4096
EMBED_FIELD_LIMIT = 1024
MAX_ATTACHMENTS = 10
NO_MENTIONS = discord.AllowedMentions.none()

_FENCE = re.compile(r"```(?:([A-Za-z0-9_+.-]*)\n)?(.*?)```", re.DOTALL)
_ZWSP = "\u200b"


# --- input


def extract_code(text: str) -> str:
    """The code in `text`: the first fenced block if there is one, else the text itself.

    Accepts ```py ...```, ```python ...```, ``` ...``` and `single backticks`.
    """
    match = _FENCE.search(text)
    if match:
        return match.group(2).strip("\n")
    stripped = text.strip()
    if len(stripped) >= 2 and stripped.startswith("`") and stripped.endswith("`") and "\n" not in stripped:
        return stripped.strip("`")
    return text.strip("\n")


def has_code_block(text: str) -> bool:
    return bool(_FENCE.search(text))


def split_list(raw: str | None) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c'] (for package and file options)."""
    if not raw:
        return []
    return [part.strip() for part in raw.replace(";", ",").split(",") if part.strip()]


# --- neutralising echoed text


def clean_text(text: str) -> str:
    """Remove invisible and control characters, blank ones become spaces (keeps newlines and tabs)."""
    return strip_invisible(text)


def code_block_body(text: str) -> str:
    """Text safe to put between ``` fences: it cannot close the block."""
    return clean_text(text).replace("`", "`" + _ZWSP)


def code_block(text: str, language: str = "") -> str:
    body = code_block_body(text).rstrip("\n") or " "
    return f"```{language}\n{body}\n```"


def inline(text: str, limit: int = 200) -> str:
    """Member text shown in a normal line: cleaned, shortened, markdown and mentions escaped."""
    text = clean_text(text).replace("\n", " ")
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return discord.utils.escape_mentions(discord.utils.escape_markdown(text))


def display_filename(name: str) -> str:
    """A filename as shown in a message (sanitised, escaped)."""
    return inline(sanitize_filename(name), 120)


def human_size(size: int | float) -> str:
    size = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"  # pragma: no cover


def fit_block(text: str, budget: int, note: str) -> tuple[str, bool]:
    """A code block of `text` no longer than `budget` characters; True when it was cut."""
    block = code_block(text)
    if len(block) <= budget:
        return block, False
    room = budget - len(code_block("")) - len(note) - 2
    body = code_block_body(text)
    cut = body[: max(room, 0)]
    # Never end the cut between a backtick and its zero-width space.
    if cut.endswith("`"):
        cut = cut[:-1]
    return f"```\n{cut}\n{note}\n```", True


# --- results


@dataclasses.dataclass
class RenderedResult:
    content: str
    files: list[discord.File]
    not_attached: list[str]  # "name (size): reason" lines, already shown in content


def _unique_name(name: str, taken: set[str]) -> str:
    candidate = name
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    n = 2
    while candidate.lower() in taken:
        candidate = f"{stem}_{n}.{ext}" if ext else f"{stem}_{n}"
        n += 1
    taken.add(candidate.lower())
    return candidate


def render_result(result: RunResult, *, upload_limit: int, header: str = "") -> RenderedResult:
    """The Discord message for one run's result.

    `upload_limit`: largest total of attachment bytes the destination accepts.
    `header`: first line (e.g. who ran it), already safe.
    """
    success = result.success
    output = result.output
    error = result.error
    took = f" in {result.execution_time:.2f} s"

    lines: list[str] = [header] if header else []
    if success:
        lines.append(f"✅ Finished{took}")
        block_text = output
    else:
        one_line = error and "\n" not in error.strip() and len(error) <= 300
        lines.append(f"❌ {inline(error.strip(), 300)}" if one_line else f"❌ Failed{took}")
        block_text = output if one_line else (output + ("\n" if output and error else "") + error)

    if result.installed_packages:
        lines.append("📦 Installed: " + inline(", ".join(map(str, result.installed_packages)), 300))
    if result.output_truncated:
        lines.append("✂️ The output was longer than the interpreter keeps; the end was cut.")

    # Attachments: images first so Discord shows them inline, then other files.
    generated = sorted(result.generated_files, key=lambda f: 0 if f.type == "image" else 1)
    files: list[discord.File] = []
    taken: set[str] = set()
    not_attached: list[str] = []
    total = 0

    def attach(name: str, data: bytes) -> bool:
        nonlocal total
        if len(files) >= MAX_ATTACHMENTS or total + len(data) > upload_limit:
            return False
        files.append(discord.File(io.BytesIO(data), filename=_unique_name(name, taken)))
        total += len(data)
        return True

    # Output block sized to what remains of the 2,000 characters; the rest goes as output.txt.
    footer_reserve = 350 if generated else 0
    budget = MESSAGE_LIMIT - len("\n".join(lines)) - 1 - footer_reserve
    block = ""
    if block_text.strip():
        block, cut = fit_block(block_text, budget, "… (full output in output.txt)")
        if cut and not attach("output.txt", block_text.encode("utf-8", "replace")):
            block, _ = fit_block(block_text, budget, "… (output cut: too long to attach)")
    elif success:
        block = "*(no output)*"

    for item in generated:
        data = item.data
        size = item.size or len(data)
        name = sanitize_filename(item.filename or "file")
        if len(files) >= MAX_ATTACHMENTS:
            not_attached.append(f"{display_filename(name)} ({human_size(size)}): more than {MAX_ATTACHMENTS} files")
        elif not attach(name, data):
            not_attached.append(f"{display_filename(name)} ({human_size(size)}): over this server's upload limit")

    content = "\n".join(lines)
    if block:
        content += "\n" + block
    if not_attached:
        listing = "\n".join(f"• {line}" for line in not_attached)
        extra = "\n📎 Not attached:\n" + listing
        if len(content) + len(extra) > MESSAGE_LIMIT:
            extra = extra[: MESSAGE_LIMIT - len(content) - 2] + "…"
        content += extra
    return RenderedResult(content=content[:MESSAGE_LIMIT], files=files, not_attached=not_attached)
