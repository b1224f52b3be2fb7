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

import ast
import dataclasses
import io
import re
import textwrap
import warnings

import discord

from interpreter.filetypes import sanitize_filename
from interpreter.invisible import strip_invisible
from interpreter.result import RunResult
from interpreter.store import StoreUnavailable

MESSAGE_LIMIT = 2000
EMBED_DESCRIPTION_LIMIT = 4096
EMBED_FIELD_LIMIT = 1024
MAX_ATTACHMENTS = 10
NO_MENTIONS = discord.AllowedMentions.none()

_FENCE = re.compile(r"```(?:([A-Za-z0-9_+.-]*)\n)?(.*?)```", re.DOTALL)
_ZWSP = "\u200b"


# --- failures

GENERIC_FAILURE = "⚠️ Something went wrong on our side. The error was logged; please try again."


def failure_message(error: BaseException) -> str:
    """What a member reads when a command or button failed. The database being down or the
    disk being full is said in its own words (StoreUnavailable's message is written for
    members and holds no secret): "try again in a minute" is the truth, not a bug report.
    Anything else gets the generic line; its trace goes to the log."""
    original = getattr(error, "original", None) or error  # app_commands.CommandInvokeError wraps it
    if isinstance(original, StoreUnavailable):
        return f"⚠️ {original}"
    return GENERIC_FAILURE


def is_outage(error: BaseException) -> bool:
    """A database outage or a full disk: logged in one line, not with a trace per command
    (the store already logs the outage once)."""
    return isinstance(getattr(error, "original", None) or error, StoreUnavailable)


# --- input


MAX_PARSED_CHARS = 100_000  # the longest code a run takes; longer text is never parsed on the event loop


def parses_as_python(code: str) -> bool:
    if len(code) > MAX_PARSED_CHARS:
        return False
    try:
        with warnings.catch_warnings():  # e.g. "invalid escape sequence": still Python
            warnings.simplefilter("ignore")
            ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # nesting too deep counts as not Python
        return False
    return True


def extract_code(text: str) -> str:
    """The code in `text`: the first fenced block if there is one, else the text itself,
    dedented (code pasted from inside a function or a notebook keeps its common indent).

    Accepts ```py ...```, ```python ...```, ``` ...``` and `single backticks`. Text that is
    Python as it stands is run as it stands: its ``` can only be inside a string, e.g.
    print("```"), and taking that for a fence would run a piece of it.
    """
    match = _FENCE.search(text)
    if match and not parses_as_python(textwrap.dedent(text)):
        code = match.group(2)
    else:
        stripped = text.strip()
        if len(stripped) >= 2 and stripped.startswith("`") and stripped.endswith("`") and "\n" not in stripped:
            code = stripped.strip("`")
        else:
            code = text
    return textwrap.dedent(code).strip("\n")


def looks_like_code(text: str) -> bool:
    """Text without a code block that is Python worth running: it parses, and it is not
    just words (a sentence like `thanks` or `hello world` parses as names or fails)."""
    code = extract_code(text)
    if not parses_as_python(code):
        return False
    tree = ast.parse(code)
    trivial = (ast.Name, ast.Constant)
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, trivial)) for node in tree.body)


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


def inline(text: str, limit: int = 200, *, links: bool = False) -> str:
    """Member text shown in a normal line: cleaned, shortened, markdown and mentions escaped,
    and links left unlinked (`links` keeps them, for the bot's own configuration): outside a
    code block Discord makes a link of any http:// and unfurls a preview card of that site
    under the bot's message (a run's error message could post a phishing page's card with
    the bot's authority)."""
    text = clean_text(text).replace("\n", " ")
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    text = discord.utils.escape_mentions(discord.utils.escape_markdown(text))
    return text if links else text.replace("://", ":/" + _ZWSP + "/")


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


CODE_PREVIEW_LINES = 6
CODE_PREVIEW_CHARS = 500
CODE_FILE = "code.py"  # the whole code, attached when the preview shows only its start


def code_preview(code: str) -> tuple[str, bool]:
    """The code block shown at the top of a public result; True when it holds the whole code.

    Members expect to see what ran (as under an `!eval`); long code shows its first lines and
    comes whole as code.py, so the buttons can find it again after a restart."""
    lines = code.strip("\n").splitlines()
    if len(lines) <= CODE_PREVIEW_LINES and len(code) <= CODE_PREVIEW_CHARS:
        return code_block(code.strip("\n"), "py"), True
    shown = "\n".join(lines[:CODE_PREVIEW_LINES - 1])[:CODE_PREVIEW_CHARS]
    rest = len(lines) - shown.count("\n") - 1
    return code_block(f"{shown}\n# … {rest} more line{'s' if rest != 1 else ''}: whole code in {CODE_FILE}", "py"), False


def code_from_message(content: str) -> str | None:
    """The code of a result message whose preview held all of it (see code_preview)."""
    match = _FENCE.search(content or "")
    if match is None or match.group(1) != "py":
        return None
    code = match.group(2).replace(_ZWSP, "").strip("\n")
    if f"whole code in {CODE_FILE}" in code.rsplit("\n", 1)[-1]:
        return None
    return code


def render_result(result: RunResult, *, upload_limit: int, header: str = "", code: str | None = None,
                  hints: tuple[str, ...] = ()) -> RenderedResult:
    """The Discord message for one run's result.

    `upload_limit`: largest total of attachment bytes the destination accepts.
    `header`: first line (e.g. who ran it), already safe.
    `code`: what ran, previewed under the header (and attached whole when long).
    `hints`: lines that help with a failure (already safe), shown under the status line.
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
    lines.extend(f"💡 {hint}" for hint in hints)
    lines.extend(f"ℹ️ {inline(warning, 300)}" for warning in result.warnings)  # e.g. the run was paused

    if result.installed_packages:
        lines.append("📦 Installed: " + inline(", ".join(map(str, result.installed_packages)), 300))
    if result.output_truncated:
        lines.append("✂️ The output was longer than the interpreter keeps: the end was cut.")

    preview_whole = True
    if code is not None and code.strip():
        preview, preview_whole = code_preview(code)
        lines.append(preview)

    # Attachments: images first so Discord shows them inline (each kind in creation order), then other files.
    generated = sorted(result.generated_files, key=lambda f: 0 if f.type == "image" else 1)
    files: list[discord.File] = []
    taken: set[str] = set()
    not_attached: list[str] = []
    total = 0
    reserved = 0 if preview_whole else 1  # code.py goes last, but its place is kept
    if not preview_whole:
        # And its name: the buttons read the code back from the attachment named code.py, so a
        # code.py the run wrote must not take it (it is attached as code_2.py).
        taken.add(CODE_FILE.lower())

    def attach(name: str, data: bytes, *, room: int = 0) -> bool:
        nonlocal total
        if len(files) + room >= MAX_ATTACHMENTS or total + len(data) > upload_limit:
            return False
        files.append(discord.File(io.BytesIO(data), filename=_unique_name(name, taken)))
        total += len(data)
        return True

    # Output block sized to what remains of the 2,000 characters; the rest goes as output.txt.
    listed = len(generated) + len(result.skipped_files)
    footer_reserve = min(350 + 40 * listed, 900) if listed else 0
    budget = MESSAGE_LIMIT - len("\n".join(lines)) - 1 - footer_reserve
    block = ""
    if block_text.strip():
        kept = ("… (output.txt has all that was kept; the end was cut)"
                if result.output_truncated else "… (full output in output.txt)")
        block, cut = fit_block(block_text, budget, kept)
        if cut and not attach("output.txt", block_text.encode("utf-8", "replace"), room=reserved):
            block, _ = fit_block(block_text, budget, "… (output cut: too long to attach)")
    elif success and not generated:
        block = "*(no output)*"

    for item in generated:
        data = item.data
        size = item.size or len(data)
        name = sanitize_filename(item.filename or "file")
        if len(files) + reserved >= MAX_ATTACHMENTS:
            not_attached.append(f"{display_filename(name)} ({human_size(size)}): more than {MAX_ATTACHMENTS} files")
        elif not attach(name, data, room=reserved):
            not_attached.append(f"{display_filename(name)} ({human_size(size)}): over this server's upload limit")
    if not preview_whole and code is not None:
        taken.discard(CODE_FILE.lower())
        attach(CODE_FILE, code.encode("utf-8", "replace"))
    # Files the sandbox itself did not return (too many, too large): never dropped without a word.
    for skipped in result.skipped_files:
        name, _, reason = str(skipped).rpartition(" (")
        shown = display_filename(name or str(skipped))
        not_attached.append(f"{shown}: {inline(reason.rstrip(')'), 60)}" if reason else shown)

    content = "\n".join(lines)
    if block:
        content += "\n" + block
    if not_attached:
        listing = "\n".join(f"• {line}" for line in not_attached)
        extra = "\n📎 Not attached:\n" + listing
        if len(content) + len(extra) > MESSAGE_LIMIT:
            shown_lines, more = _fit_lines(not_attached, MESSAGE_LIMIT - len(content) - 40)
            extra = "\n📎 Not attached:\n" + "\n".join(f"• {line}" for line in shown_lines)
            if more:
                extra += f"\n• … and {more} more"
        content += extra
    return RenderedResult(content=content[:MESSAGE_LIMIT], files=files, not_attached=not_attached)


def _fit_lines(lines: list[str], budget: int) -> tuple[list[str], int]:
    """The lines that fit in `budget` characters (each with its bullet), and how many did not."""
    shown: list[str] = []
    used = 0
    for line in lines:
        if used + len(line) + 3 > budget:
            break
        shown.append(line)
        used += len(line) + 3
    return shown, len(lines) - len(shown)
