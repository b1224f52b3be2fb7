"""/run, its code modal, the "Run code" message menu and the buttons under a result.

The cog holds no execution logic: it validates options, checks the member may run
code here (cogs/_access.py: denied members and roles, run channels, hourly limit),
takes a place in the fair queue (cogs/_queue.py), calls `interpreter.execute_code`
and renders the result (cogs/_format.py). While the member has a session in the
channel (cogs/session.py), the run continues it and the reply says so.
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc
import dataclasses
import logging
import re
import secrets
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

import interpreter
from cogs._access import admit_run, is_bot_admin, precheck_run, tell_privately
from cogs._format import (CODE_FILE, NO_MENTIONS, code_block, code_from_message, extract_code, failure_message,
                          has_code_block, inline, is_outage, looks_like_code, render_result, split_list)
from cogs._queue import RunRefused
from interpreter.store import StoreUnavailable
from cogs.session import session_header, session_id_for

if TYPE_CHECKING:
    from bot.client import CodeInterpreterBot

log = logging.getLogger(__name__)

RECENT_REQUESTS = 500  # results whose full request (files, packages, timeout) is remembered in memory
MAX_CODE_CHARS = 4000  # a modal text input holds at most 4,000 characters
AUTOCOMPLETE_CHOICES = 25
SOMETHING_WENT_WRONG = "⚠️ Something went wrong on our side while running this. The error was logged; please try again."


@dataclasses.dataclass(frozen=True)
class RunRequest:
    code: str
    author_id: int
    files: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()
    timeout: int | None = None
    header: str = ""  # first line of the result, already safe (e.g. whose code ran)
    # Someone else's code (the "Run code" menu): never the member's session. It would run
    # with their variables and work-dir files and post the result publicly (a confused deputy).
    fresh_sandbox: bool = False


class RunCog(commands.Cog, name="Run"):
    def __init__(self, bot: "CodeInterpreterBot") -> None:
        self.bot = bot
        self.settings = bot.settings
        # Discord enforces the bound in the client, so members see the configured maximum.
        self.run_command._params["timeout"].max_value = self.settings.max_run_timeout
        self.run_message_menu = app_commands.ContextMenu(name="Run code", callback=self.run_message)
        # message id -> the request behind that result. A cache only: after a restart, or on
        # another shard, the buttons find the code in the message itself (see request_behind).
        self.recent: collections.OrderedDict[int, RunRequest] = collections.OrderedDict()
        # Custom ids of the code boxes this process opened: discord.py answers those. A box
        # opened before a restart (or by another process) is answered by on_interaction.
        self.opened_boxes: collections.OrderedDict[str, None] = collections.OrderedDict()

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.run_message_menu)
        self.bot.add_dynamic_items(*RESULT_BUTTONS, AnalyseFileButton)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.run_message_menu.name, type=self.run_message_menu.type)
        self.bot.remove_dynamic_items(*RESULT_BUTTONS, AnalyseFileButton)

    # --- entry points

    @app_commands.command(name="run", description="Run Python in the sandbox (no code: a box opens to paste it)")
    @app_commands.describe(
        code="Python code; ```py fenced``` code is fine. Leave empty to get a multi-line box.",
        files="Your files to make available, comma-separated (start typing to pick)",
        packages="Extra approved packages to install, comma-separated (e.g. scipy, statsmodels)",
        timeout="Seconds before the run is stopped",
    )
    async def run_command(
        self,
        interaction: discord.Interaction,
        code: str | None = None,
        files: str | None = None,
        packages: str | None = None,
        timeout: app_commands.Range[int, 1, 3600] | None = None,
    ) -> None:
        file_ids = tuple(split_list(files))
        package_names = tuple(split_list(packages))
        if timeout is not None:
            timeout = min(timeout, self.settings.max_run_timeout)
        if not code or not code.strip():
            # Refuse before the member types code into a box that cannot run; nothing is counted yet.
            if not await precheck_run(interaction):
                return
            await interaction.response.send_modal(
                RunModal(self, interaction.user.id, file_ids, package_names, timeout))
            return
        await self.execute(interaction, RunRequest(extract_code(code), interaction.user.id, file_ids,
                                                   package_names, timeout))

    @run_command.autocomplete("files")
    async def files_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return await own_file_choices(interaction.user.id, current, multi=True)

    @run_command.autocomplete("packages")
    async def packages_autocomplete(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return await package_choices(current)

    async def run_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Message menu "Run code": run the code block of any message, as the member who asked.

        Another member's code runs in a fresh sandbox with none of the clicker's session or
        files, whatever it does; to use it in their session they paste it into /run themselves.
        """
        if not message.content.strip() or not (has_code_block(message.content) or looks_like_code(message.content)):
            await interaction.response.send_message(
                "That message has no code to run (no ```py code block, and its text is not Python). Nothing was run.",
                ephemeral=True)
            return
        code = extract_code(message.content)
        if interaction.client.user is not None and message.author.id == interaction.client.user.id:
            # One of our results: its first block is a preview (maybe only the first lines, with
            # zero-width spaces in its backticks); the code that ran is in the preview or code.py.
            code = await code_of_result(message)
            if code is None:
                await interaction.response.send_message(CODE_GONE, ephemeral=True)
                return
        source = "code block" if has_code_block(message.content) else "message"
        someone_else = message.author.id != interaction.user.id
        header = f"▶️ {interaction.user.mention} ran the {source} from {message.author.mention}'s message {message.jump_url}"
        if someone_else:
            header += " in a fresh sandbox (no session, no files)"
        await self.execute(interaction, RunRequest(code, interaction.user.id, header=header, fresh_sandbox=someone_else))

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """A code box submitted after the bot restarted: discord.py forgets open modals, so
        without this the member's code went nowhere and their app said only that it failed.
        The box's id carries its timeout and whether files or packages were given (their
        names do not fit in it: the member is told they were left out)."""
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        data = interaction.data or {}
        match = BOX_ID.fullmatch(str(data.get("custom_id", "")))
        if match is None or match[0] in self.opened_boxes:
            return
        try:
            code = next(submitted_texts(data.get("components") or []), "")
            header = ("ℹ️ The bot restarted while your code box was open: this ran without the files and "
                      "packages you gave; add them again with /run if it needs them.") if match["options"] == "1" else ""
            timeout = min(int(match["timeout"]), self.settings.max_run_timeout) or None
            await self.execute(interaction, RunRequest(extract_code(code), interaction.user.id, timeout=timeout,
                                                       header=header))
        except Exception as error:  # noqa: BLE001 - a listener's errors are only logged by discord.py
            await report_error(interaction, error, "a code box sent after a restart")

    # --- the run itself

    async def execute(self, interaction: discord.Interaction, request: RunRequest) -> None:
        """Queue, run and answer. Refusals are ephemeral; the result is public."""
        if not request.code.strip():
            await interaction.response.send_message("There is no code to run.", ephemeral=True)
            return
        if len(request.code) > 100_000:
            await interaction.response.send_message("That code is too long to run (100,000 characters at most).", ephemeral=True)
            return
        if not await precheck_run(interaction):  # no database before the acknowledgement
            return
        try:
            ticket = self.bot.scheduler.submit(interaction.user.id)
        except RunRefused as refusal:
            await interaction.response.send_message(f"⏳ {refusal}", ephemeral=True)
            return

        async with ticket:
            await interaction.response.defer(thinking=True)
            admission = await admit_run(interaction)  # the hourly limit may read the run history
            if admission is None:
                return
            session_id = session_id_for(interaction)
            in_session, session_note = await self._continues_session(request, session_id)
            notices = QueueNotices(interaction)
            try:
                # the engine's queue says where the run stands; the member's runs in other processes go first
                with interpreter.observe_queue(notices.report):
                    async with admission.running():
                        result = await interpreter.run_code(
                            request.code,
                            user_id=request.author_id,
                            user_files=list(request.files) or None,
                            install_packages=list(request.packages) or None,
                            timeout=request.timeout,
                            guild_id=interaction.guild_id,
                            channel_id=interaction.channel_id,
                            session_id=session_id if in_session else None,
                            attach_named_files=not request.fresh_sandbox,
                        )
            except Exception:
                log.exception("execute_code failed for member %s", request.author_id)
                await notices.settle()
                await interaction.edit_original_response(content=SOMETHING_WENT_WRONG, allowed_mentions=NO_MENTIONS)
                return
            await notices.settle()

        header = "\n".join(line for line in (request.header, session_note, session_header(result.session)) if line)
        rendered = render_result(result, upload_limit=upload_limit(interaction), header=header, code=request.code,
                                 hints=failure_hints(result))
        message = await interaction.edit_original_response(
            content=rendered.content, attachments=rendered.files, view=result_view(request),
            allowed_mentions=NO_MENTIONS)
        self.remember(message.id, request)
        if admission.note:
            await tell_privately(interaction, f"ℹ️ {admission.note}")

    async def _continues_session(self, request: RunRequest, session_id: str) -> tuple[bool, str]:
        """Whether the run continues the member's session here, and a line for the reply when
        that could not be known. With execution workers, where a session lives is a lease in
        the database; while it is down the run goes ahead in a fresh sandbox (a run needs no
        database) and the reply says why it did not see the session."""
        if request.fresh_sandbox:
            return False, ""
        try:
            return await (await interpreter.get_executor()).session_continues(session_id), ""
        except StoreUnavailable as outage:
            return False, f"ℹ️ Ran in a fresh sandbox: your session could not be looked up ({inline(str(outage), 200)})."

    def remember(self, message_id: int, request: RunRequest) -> None:
        self.recent[message_id] = request
        while len(self.recent) > RECENT_REQUESTS:
            self.recent.popitem(last=False)


class QueueNotices:
    """Tells the member where their run stands while it waits in the engine's queue.

    The queue reports synchronously (a position, then 0 when the run starts); the edits
    go out in that order, one after another, and `settle()` waits for them so the
    result is always the last edit."""

    def __init__(self, interaction: discord.Interaction) -> None:
        self.interaction = interaction
        self._last: asyncio.Task | None = None

    def report(self, position: int) -> None:
        content = (f"⏳ Queued: your run is number {position} in line. It starts as soon as a slot is free."
                   if position else "▶️ Your run has started…")
        self._last = asyncio.get_running_loop().create_task(self._edit(self._last, content))

    async def _edit(self, previous: asyncio.Task | None, content: str) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        try:
            await self.interaction.edit_original_response(content=content, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException:
            log.warning("could not show the queue position to member %s", self.interaction.user.id)

    async def settle(self) -> None:
        if self._last is not None:
            await asyncio.wait([self._last])


def failure_hints(result: interpreter.RunResult) -> tuple[str, ...]:
    """What helps with a failed run that the sandbox cannot know: an approved package to ask for."""
    if result.success or "ModuleNotFoundError" not in result.error:
        return ()
    package = interpreter.get_package_manager().approved.for_missing_module(result.error)
    if package is None:
        return ()
    return (f"**{package}** is an approved package that is not installed yet: run again with `packages: {package}`.",)


def upload_limit(interaction: discord.Interaction) -> int:
    """Bytes the destination accepts in one message (interaction's limit, else the guild's)."""
    limit = getattr(interaction, "filesize_limit", None)
    if not limit and interaction.guild is not None:
        limit = interaction.guild.filesize_limit
    return int(limit or 10 * 1024 * 1024)


def list_choices(current: str, candidates: list[tuple[str, str]], *, multi: bool) -> list[app_commands.Choice[str]]:
    """Autocomplete for a comma list: `candidates` are (label, value); with `multi` the
    last item of `current` is completed and the items before it are kept."""
    prefix, _, typed = current.rpartition(",") if multi else ("", "", current)
    prefix = f"{prefix}," if prefix else ""
    already = {item.lower() for item in split_list(prefix)}
    typed = typed.strip().lower()
    choices = []
    for label, value in candidates:
        if value.lower() in already or (typed and typed not in label.lower() and typed not in value.lower()):
            continue
        completed = prefix + value
        if len(completed) > 100:  # Discord's limit for a choice's value
            continue
        choices.append(app_commands.Choice(name=label[:100], value=completed))
        if len(choices) >= AUTOCOMPLETE_CHOICES:
            break
    return choices


async def own_file_choices(user_id: int, current: str, *, multi: bool = False) -> list[app_commands.Choice[str]]:
    """Autocomplete choices from the member's own files; with `multi`, completes the last item of a comma list."""
    try:
        files = await interpreter.list_user_files(user_id)
    except Exception as error:  # autocomplete must answer within 3 s; an empty list is a fine answer
        if not is_outage(error):  # an outage is logged once by the store, not at every keystroke
            log.exception("listing files for autocomplete failed")
        return []
    candidates = []
    for meta in files:
        file_id = str(meta.get("file_id"))
        candidates.append((f"{meta.get('filename') or file_id} · {file_id}", file_id))
    return list_choices(current, candidates, multi=multi)


async def package_choices(current: str) -> list[app_commands.Choice[str]]:
    """Autocomplete for `packages`: the approved list, installed ones marked."""
    try:
        packages = interpreter.get_package_manager()
        # reading ~100 packages' metadata takes tens of ms: off the event loop
        installed = set(await asyncio.to_thread(packages.installed_distributions)) if packages.is_ready else set()
        grouped = packages.approved.by_category()
    except Exception:  # see own_file_choices
        log.exception("listing packages for autocomplete failed")
        return []
    candidates = [(f"{name} · {category}" + (" · installed" if name in installed else ""), name)
                  for category, names in grouped.items() for name in names]
    return list_choices(current, candidates, multi=True)


BOX_PREFIX = "run:box:"
BOX_ID = re.compile(re.escape(BOX_PREFIX) + r"(?P<timeout>[0-9]{1,4}):(?P<options>[01]):[0-9a-f]{16}")


def submitted_texts(components: list) -> "collections.abc.Iterator[str]":
    """The values of the text inputs in a submitted modal's components (rows or labels)."""
    for component in components:
        if component.get("type") == 4:
            yield str(component.get("value") or "")
        yield from submitted_texts(component.get("components") or [])
        if isinstance(component.get("component"), dict):
            yield from submitted_texts([component["component"]])


class RunModal(discord.ui.Modal, title="Run Python"):
    code: discord.ui.TextInput = discord.ui.TextInput(
        label="Code", style=discord.TextStyle.paragraph, max_length=MAX_CODE_CHARS,
        placeholder="import pandas as pd\nprint(pd.__version__)")

    def __init__(self, cog: RunCog, author_id: int, files: tuple[str, ...], packages: tuple[str, ...],
                 timeout: int | None, *, code: str = "") -> None:
        # The id says what a box submitted after a restart needs (see RunCog.on_interaction).
        custom_id = f"{BOX_PREFIX}{timeout or 0}:{int(bool(files or packages))}:{secrets.token_hex(8)}"
        super().__init__(timeout=900, custom_id=custom_id)
        cog.opened_boxes[custom_id] = None
        while len(cog.opened_boxes) > RECENT_REQUESTS:
            cog.opened_boxes.popitem(last=False)
        if code:
            self.code.default = code[:MAX_CODE_CHARS]
        self.cog = cog
        self.author_id = author_id
        self.files = files
        self.packages = packages
        self.run_timeout = timeout

    async def on_submit(self, interaction: discord.Interaction) -> None:
        request = RunRequest(extract_code(self.code.value), interaction.user.id, self.files, self.packages, self.run_timeout)
        await self.cog.execute(interaction, request)

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await report_error(interaction, error, "the code box")


# --- buttons under a result: persistent (discord.ui.DynamicItem). Their custom ids carry what
# they need (whose run it was, whether it was someone else's code), and the code is read back
# from the message, so they keep working after a restart and on any shard.


def result_view(request: RunRequest) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    fresh = int(request.fresh_sandbox)
    view.add_item(RunAgainButton(request.author_id, fresh))
    view.add_item(EditRunButton())
    view.add_item(ShowCodeButton())
    view.add_item(DeleteButton(request.author_id))
    return view


def _cog(interaction: discord.Interaction) -> RunCog:
    return interaction.client.get_cog("Run")  # type: ignore[return-value]


async def request_behind(interaction: discord.Interaction, author_id: int, fresh_sandbox: bool = False) -> RunRequest | None:
    """The request whose result carries this button: remembered, else read from the message
    (its code preview when whole, else its code.py attachment). None, after telling the
    member, when neither has it."""
    message = interaction.message
    if message is None:
        await interaction.response.send_message(CODE_GONE, ephemeral=True)
        return None
    remembered = _cog(interaction).recent.get(message.id)
    if remembered is not None:
        return remembered
    code = await code_of_result(message)
    if code is None:
        await interaction.response.send_message(CODE_GONE, ephemeral=True)
        return None
    return RunRequest(code, author_id, fresh_sandbox=fresh_sandbox)


async def code_of_result(message: discord.Message) -> str | None:
    """The whole code behind one of our result messages: its preview when whole, else its code.py."""
    code = code_from_message(message.content)
    if code is None:
        attached = next((a for a in message.attachments if a.filename == CODE_FILE), None)
        if attached is not None and attached.size <= 200_000:
            try:
                code = (await attached.read()).decode("utf-8", "replace")
            except (discord.HTTPException, OSError):
                log.warning("could not read %s of message %s", CODE_FILE, message.id)
    return code


CODE_GONE = "I can no longer find the code of this result. Run it again with /run."


async def _guarded(interaction: discord.Interaction, where: str, action) -> None:
    """Dynamic items' errors are only logged by discord.py: tell the member too."""
    try:
        await action()
    except Exception as error:  # noqa: BLE001
        await report_error(interaction, error, where)


class RunAgainButton(discord.ui.DynamicItem[discord.ui.Button], template=r"run:again:(?P<author>[0-9]{1,20}):(?P<fresh>[01])"):
    def __init__(self, author_id: int, fresh: int) -> None:
        super().__init__(discord.ui.Button(label="Run again", emoji="🔁", style=discord.ButtonStyle.primary,
                                           custom_id=f"run:again:{author_id}:{fresh}"))
        self.author_id = author_id
        self.fresh = bool(fresh)

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]) -> "RunAgainButton":
        return cls(int(match["author"]), int(match["fresh"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        async def act() -> None:
            if interaction.user.id != self.author_id:
                await interaction.response.send_message("Only the member who ran this can run it again. "
                                                        "Use **Edit & run** to run your own copy.", ephemeral=True)
                return
            request = await request_behind(interaction, self.author_id, self.fresh)
            if request is None:
                return
            await _cog(interaction).execute(interaction, dataclasses.replace(request, header=""))  # keeps fresh_sandbox
        await _guarded(interaction, "the Run again button", act)


class _CodeButton(discord.ui.DynamicItem[discord.ui.Button], template=r"(?!)"):
    """A button with a fixed custom id that acts on the code of the result it is under."""

    LABEL = EMOJI = CUSTOM_ID = ""

    def __init__(self) -> None:
        super().__init__(discord.ui.Button(label=self.LABEL, emoji=self.EMOJI, style=discord.ButtonStyle.secondary,
                                           custom_id=self.CUSTOM_ID))

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]) -> "_CodeButton":
        return cls()

    async def callback(self, interaction: discord.Interaction) -> None:
        async def act() -> None:
            request = await request_behind(interaction, interaction.user.id)
            if request is not None:
                await self.use(interaction, request)
        await _guarded(interaction, f"the {self.LABEL} button", act)

    async def use(self, interaction: discord.Interaction, request: RunRequest) -> None:
        raise NotImplementedError


class EditRunButton(_CodeButton, template=r"run:edit"):
    """Opens the code box prefilled with this result's code; whoever submits it runs it as theirs."""

    LABEL, EMOJI, CUSTOM_ID = "Edit & run", "✏️", "run:edit"

    async def use(self, interaction: discord.Interaction, request: RunRequest) -> None:
        if len(request.code) > MAX_CODE_CHARS:
            await interaction.response.send_message(
                f"This code is longer than the {MAX_CODE_CHARS:,} characters a code box holds: "
                f"download {CODE_FILE} or use **Show code**, edit it, and run it with /run.", ephemeral=True)
            return
        if not await precheck_run(interaction):
            return
        mine = request.author_id == interaction.user.id and not request.fresh_sandbox
        await interaction.response.send_modal(RunModal(
            _cog(interaction), interaction.user.id, request.files if mine else (), request.packages,
            request.timeout, code=request.code))


class ShowCodeButton(_CodeButton, template=r"run:code"):
    LABEL, EMOJI, CUSTOM_ID = "Show code", "📄", "run:code"

    async def use(self, interaction: discord.Interaction, request: RunRequest) -> None:
        shown = code_block(request.code[:1900], "py")
        if len(shown) > 1990:
            shown = code_block(request.code[:1800] + "\n# … (cut)", "py")
        await interaction.response.send_message(shown, ephemeral=True, allowed_mentions=NO_MENTIONS)


class DeleteButton(discord.ui.DynamicItem[discord.ui.Button], template=r"run:delete:(?P<author>[0-9]{1,20})"):
    def __init__(self, author_id: int) -> None:
        super().__init__(discord.ui.Button(label="Delete", emoji="🗑️", style=discord.ButtonStyle.danger,
                                           custom_id=f"run:delete:{author_id}"))
        self.author_id = author_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]) -> "DeleteButton":
        return cls(int(match["author"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        async def act() -> None:
            cog = _cog(interaction)
            if interaction.user.id != self.author_id and not is_bot_admin(interaction, cog.settings.owner_ids):
                await interaction.response.send_message("Only the member who ran this, or an admin, can delete it.",
                                                        ephemeral=True)
                return
            await interaction.response.defer()
            await interaction.delete_original_response()  # the message this button is on
            if interaction.message is not None:
                cog.recent.pop(interaction.message.id, None)
        await _guarded(interaction, "the Delete button", act)


RESULT_BUTTONS = (RunAgainButton, EditRunButton, ShowCodeButton, DeleteButton)


class AnalyseFileButton(discord.ui.DynamicItem[discord.ui.Button],
                        template=r"run:load:(?P<owner>[0-9]{1,20}):(?P<file_id>[0-9a-f]{32})"):
    """Under a stored table: opens the code box with `df = load_file('<id>')` already written."""

    def __init__(self, owner_id: int, file_id: str) -> None:
        super().__init__(discord.ui.Button(label="Analyse in /run", emoji="📊", style=discord.ButtonStyle.primary,
                                           custom_id=f"run:load:{owner_id}:{file_id}"))
        self.owner_id = owner_id
        self.file_id = file_id

    @classmethod
    async def from_custom_id(cls, interaction, item, match: re.Match[str]) -> "AnalyseFileButton":
        return cls(int(match["owner"]), match["file_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        async def act() -> None:
            if interaction.user.id != self.owner_id:
                await interaction.response.send_message(
                    "This file belongs to the member who uploaded it: drop your own copy to analyse it.", ephemeral=True)
                return
            if not await precheck_run(interaction):
                return
            code = f"df = load_file('{self.file_id}')\ndf.describe()"
            await interaction.response.send_modal(RunModal(_cog(interaction), interaction.user.id, (), (), None,
                                                           code=code))
        await _guarded(interaction, "the Analyse button", act)


def analyse_view(owner_id: int, file_id: str | None) -> discord.ui.View | discord.utils._MissingSentinel:
    """The button under a stored table (nothing for other files)."""
    if not file_id:
        return discord.utils.MISSING
    view = discord.ui.View(timeout=None)
    view.add_item(AnalyseFileButton(owner_id, file_id))
    return view


async def report_error(interaction: discord.Interaction, error: Exception, where: str) -> None:
    """Log the full trace (an outage: one line); tell the member briefly (ephemeral)."""
    message = failure_message(error)
    if is_outage(error):
        log.warning("error in %s: %s", where, message)
    else:
        log.error("error in %s", where, exc_info=error)
    try:
        if interaction.response.is_done():
            await interaction.followup.send(message, ephemeral=True)
        else:
            await interaction.response.send_message(message, ephemeral=True)
    except discord.HTTPException:
        log.warning("could not tell the member about the error in %s", where)


async def setup(bot: "CodeInterpreterBot") -> None:
    await bot.add_cog(RunCog(bot))
