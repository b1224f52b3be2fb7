"""/ask: a question in plain words; a model writes Python, runs it in the member's sandbox,
reads the result and answers, with the charts attached. "Follow up" continues the talk.

The cog holds no model logic (interpreter/assistant.py does, without Discord). It checks
the member may run code here (the same rules as /run), takes one question from their
daily budget (counted in the database), shows the progress (edits throttled to stay
inside Discord's rate limits), and gives the model a `RunCode` that runs each snippet
exactly the way /run does: the access rules and hourly limit, a place in the fair
queue, the sandbox limits, the audit. When sessions are on, the conversation's runs
continue the member's session in this channel, so variables persist between steps,
follow-ups and /run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

import interpreter
from cogs._access import denial_message, precheck_run, refuse_after_defer, run_context
from cogs._format import (
    MAX_ATTACHMENTS,
    MESSAGE_LIMIT,
    NO_MENTIONS,
    clean_text,
    code_block,
    display_filename,
    human_size,
    inline,
)
from cogs._queue import RunRefused
from cogs._uploads import store_attachment
from cogs.run import upload_limit
from cogs.session import session_id_for, session_summary
from interpreter.access import Denial
from interpreter.assistant import (
    NOT_CHARGED,
    Answer,
    AskOutcome,
    Conversation,
    MemberFile,
    Progress,
    RunNotStarted,
    Stage,
    sandbox_facts,
    system_prompt,
)
from interpreter.budget import Allowance
from interpreter.filetypes import extension, sanitize_filename
from interpreter.preview import TABLE_EXTENSIONS, parse_previews, preview_code, shape_text
from interpreter.store import StoreUnavailable

if TYPE_CHECKING:
    from bot.client import CodeInterpreterBot

log = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 2000
FILES_IN_REACH = 10  # the member's most recent files the model can load
FILES_PREVIEWED = 5  # of those, tables whose shape the model is told
PREVIEW_TIMEOUT_SECONDS = 30
EDIT_INTERVAL_SECONDS = 1.5  # interaction edits share a webhook rate limit (about 5 per 5 s)
VIEW_SECONDS = 840  # buttons live a little less than the 15-minute interaction token
OFF_MESSAGE = ("🔌 `/ask` is off on this bot. An admin can turn it on by setting `OPENAI_API_KEY` "
               "(or `OPENAI_BASE_URL` for a local model server); `/help` says what it does.")

OUTCOME_MESSAGES = {
    AskOutcome.STEP_LIMIT: "🔁 The model used all {steps} of its steps without a final answer.",
    AskOutcome.TIMEOUT: "⏱️ The question took longer than {timeout} s and was stopped.",
    AskOutcome.REFUSED: "🙅 The model declined to answer.",
    AskOutcome.GARBAGE: "⚠️ The model's endpoint sent a reply I can't use ({detail}). Try again, or rephrase.",
    AskOutcome.ENDPOINT_DOWN: "🔌 The AI model can't be reached right now. Try again later; if it keeps happening, tell an admin.",
    AskOutcome.RATE_LIMITED: "⏳ The AI model is rate-limiting this bot right now (HTTP 429). Try again in a minute.",
    AskOutcome.AUTH: "🔑 The AI model refused the bot's credentials. An admin needs to check `OPENAI_API_KEY`.",
    AskOutcome.ENDPOINT_ERROR: "⚠️ The AI model answered with an error ({detail}). If it keeps happening, tell an admin.",
    AskOutcome.RUN_REFUSED: "⛔ The code could not run: {detail}",
}


@dataclasses.dataclass
class Thread:
    """One member's conversation in one channel, shared by the buttons of its replies."""

    conversation: Conversation
    guild_id: int | None
    channel_id: int | None
    file_ids: list[str]
    session_wanted: str | None = None  # the session to open before the first run (sessions on)
    opened_session: bool = False  # /ask opened the member's session (it was not open before)
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)


class ProgressEditor:
    """Shows the latest progress in the reply without breaking Discord's edit rate limit
    (interaction edits share a webhook bucket of about 5 per 5 s): at most one edit per
    `interval`; an update that comes sooner is shown when the interval is over, unless a
    newer one (or the answer, after `stop()`) replaces it first."""

    def __init__(self, interaction: discord.Interaction, header: str, *, interval: float | None = None,
                 clock=time.monotonic) -> None:
        self.interaction = interaction
        self.header = header
        self.interval = EDIT_INTERVAL_SECONDS if interval is None else interval
        self.clock = clock
        self._last: float | None = None
        self._pending: str | None = None
        self._timer: asyncio.Task | None = None
        self.shown: list[str] = []  # what was shown, in order (tests, logs)

    async def show(self, line: str, *, force: bool = False) -> None:
        self._pending = line
        wait = 0.0 if self._last is None else self.interval - (self.clock() - self._last)
        if force or wait <= 0:
            await self._flush()
        elif self._timer is None:
            self._timer = asyncio.create_task(self._flush_after(wait))

    async def _flush_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self._flush()
        finally:  # until the edit is done, stop() can still cancel it: it must not land after the answer
            self._timer = None

    async def _flush(self) -> None:
        line, self._pending = self._pending, None
        if line is None:
            return
        self._last = self.clock()
        self.shown.append(line)
        try:
            await self.interaction.edit_original_response(content=f"{self.header}\n{line}"[:MESSAGE_LIMIT],
                                                          allowed_mentions=NO_MENTIONS)
        except discord.HTTPException:
            log.warning("could not show /ask progress")

    @contextlib.asynccontextmanager
    async def queue_notices(self) -> AsyncIterator[None]:
        """Within this block, a run (or a session's sandbox) that waits in the engine's queue
        shows its place in line; the line is shown before the block ends, never after."""
        shown: list[asyncio.Task] = []

        def queued(position: int) -> None:
            if position:
                shown.append(asyncio.get_running_loop().create_task(
                    self.show(f"⏳ Queued: number {position} in line…", force=True)))

        try:
            with interpreter.observe_queue(queued):
                yield
        finally:
            if shown:
                await asyncio.wait(shown)

    def stop(self) -> None:
        """No more progress: the answer replaces it."""
        self._pending = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def on_progress(self, update: Progress) -> None:
        if update.stage is Stage.THINKING:
            line = ("🤔 Thinking about your question…" if update.step == 1
                    else f"🤔 Reading the result (step {update.step} of {update.max_steps})…")
        elif update.stage is Stage.RUNNING:
            line = f"▶️ Running code (run {update.runs + 1})…"
        else:
            line = f"🔁 Run {update.runs} failed; the model is fixing the code…"
        await self.show(line)


class AskCog(commands.Cog, name="Ask"):
    def __init__(self, bot: "CodeInterpreterBot") -> None:
        self.bot = bot
        self.settings = bot.settings

    @app_commands.command(name="ask", description="Ask about your data in plain words: a model writes and runs the code")
    @app_commands.describe(
        question="What you want to know, e.g. 'which region grew fastest? chart it'",
        file="A data file to use (it is stored as one of your files, like /upload)",
    )
    async def ask(self, interaction: discord.Interaction, question: app_commands.Range[str, 1, MAX_QUESTION_CHARS],
                  file: discord.Attachment | None = None) -> None:
        allowance = await self._admit_question(interaction, question)
        if allowance is None:
            return
        engine = await interpreter.get_engine()
        file_ids: list[str] = []
        if file is not None:
            stored = await store_attachment(interaction.user.id, file, self.settings, preview_tables=False)
            if not stored.ok:
                await engine.ask_budget.give_back(allowance)
                await interaction.edit_original_response(content=stored.content, allowed_mentions=NO_MENTIONS)
                return
            file_ids.append(str(stored.file_id))
        thread = Thread(Conversation(interaction.user.id), interaction.guild_id, interaction.channel_id, file_ids,
                        session_id_for(interaction) if self.settings.max_sessions > 0 else None)
        await self.answer(interaction, thread, question, allowance)

    # --- gates shared by /ask and Follow up (both before deferring: refusals are ephemeral)

    async def _admit_question(self, interaction: discord.Interaction, question: str) -> Allowance | None:
        """/ask on, a question in words, the run rules, one question of the daily budget.

        Like /run, nothing touches the database before the interaction is acknowledged
        (Discord allows 3 s): the rules that need none first, then the (public) deferral,
        then the stored rules and the budget, whose refusals the member alone reads.
        Returns None (the member was told why) when any fails."""
        if not (await interpreter.get_engine()).assistant.enabled:
            await interaction.response.send_message(OFF_MESSAGE, ephemeral=True, allowed_mentions=NO_MENTIONS)
            return None
        if not question.strip():
            await interaction.response.send_message("Ask a question in words.", ephemeral=True)
            return None
        if not await precheck_run(interaction):
            return None
        await interaction.response.defer(thinking=True)
        denial = await interpreter.check_run(run_context(interaction))
        if denial is not None:
            await refuse_after_defer(interaction, denial_message(denial))
            return None
        try:
            allowance = await (await interpreter.get_engine()).ask_budget.take(interaction.user.id)
        except StoreUnavailable as exc:
            await refuse_after_defer(interaction, f"⚠️ {exc}")
            return None
        if not allowance.granted:
            when = discord.utils.format_dt(allowance.resets_at, "R")
            await refuse_after_defer(interaction, f"⏳ You've asked your {allowance.limit} questions for today; more {when}.")
            return None
        return allowance

    @staticmethod
    async def _open_session(thread: Thread, editor: "ProgressEditor") -> None:
        """Open (or join) the member's session in this channel before the first run, so the
        model is told runs share variables; when none can be opened every run starts fresh
        and the model is told that instead. Opening starts a sandbox, which waits its turn
        in the queue like a run: the member sees where it stands."""
        session_id, thread.session_wanted = thread.session_wanted, None
        if session_id is None:
            return
        try:
            async with editor.queue_notices():
                opened = await interpreter.start_session(session_id, thread.conversation.member_id)
        except interpreter.InterpreterError as exc:
            log.info("/ask runs without a session for member %s: %s", thread.conversation.member_id, exc)
            return
        thread.conversation.session_id = session_id
        thread.opened_session = bool(opened["created"])

    # --- one question

    async def answer(self, interaction: discord.Interaction, thread: Thread, question: str, allowance: Allowance) -> None:
        """Answer one question of `thread` in the deferred reply of `interaction`."""
        engine = await interpreter.get_engine()
        asked = f"❓ {inline(question, 300)}"
        editor = ProgressEditor(interaction, asked)
        try:
            async with thread.lock:
                try:
                    reply = await self._ask_model(thread, question, editor, interaction)
                finally:
                    editor.stop()
            if nothing_was_done(reply):
                await engine.ask_budget.give_back(allowance)
            content, files = await self._render(interaction, thread, asked, reply)
            await interaction.edit_original_response(content=content, attachments=files,
                                                     view=AskView(self, thread, reply, interaction),
                                                     allowed_mentions=NO_MENTIONS)
        except Exception:
            log.exception("/ask failed for member %s", interaction.user.id)
            await engine.ask_budget.give_back(allowance)
            await interaction.edit_original_response(
                content=f"{asked}\n⚠️ Something went wrong on our side. The error was logged; please try again.",
                allowed_mentions=NO_MENTIONS)

    async def _ask_model(self, thread: Thread, question: str, editor: ProgressEditor,
                         interaction: discord.Interaction) -> Answer:
        engine = await interpreter.get_engine()
        await editor.show("🤔 Looking at your files…", force=True)
        await self._open_session(thread, editor)
        in_reach = await self._files_in_reach(thread)
        runner = QueuedRunner(self.bot, interaction, thread, in_reach, editor)
        try:
            files = await self._describe_files(in_reach, runner)
        except RunNotStarted as refusal:  # the look at the files could not start (queue, cooldown)
            return Answer(AskOutcome.RUN_REFUSED, detail=str(refusal))
        facts = sandbox_facts(engine.applied_settings(), interpreter.get_package_manager().approved,
                              stateful=thread.conversation.session_id is not None)
        return await engine.assistant.ask(thread.conversation, question, system=system_prompt(facts, files),
                                          run_code=runner.run, progress=editor.on_progress)

    async def follow_up(self, interaction: discord.Interaction, thread: Thread, question: str) -> None:
        if thread.lock.locked():
            await interaction.response.send_message("⏳ The last question of this conversation is still being answered.",
                                                    ephemeral=True)
            return
        allowance = await self._admit_question(interaction, question)
        if allowance is not None:
            await self.answer(interaction, thread, question, allowance)

    async def _files_in_reach(self, thread: Thread) -> list[dict]:
        """The member's most recent files (the attached one first), as list_user_files gives them."""
        try:
            listed = await interpreter.list_user_files(thread.conversation.member_id)
        except interpreter.InterpreterError:  # database down: the attached file may still be usable
            listed = []
        by_id = {str(meta.get("file_id")): meta for meta in listed}
        ordered = [by_id[file_id] for file_id in thread.file_ids if file_id in by_id]
        ordered += [meta for file_id, meta in by_id.items() if file_id not in thread.file_ids]
        return ordered[:FILES_IN_REACH]

    async def _describe_files(self, in_reach: list[dict], runner: "QueuedRunner") -> list[MemberFile]:
        """The files by name, type and size; tables also by shape and columns (one sandbox run)."""
        tables = [str(m["file_id"]) for m in in_reach if extension(str(m.get("filename") or "")) in TABLE_EXTENSIONS]
        shapes: dict[str, str] = {}
        if tables:
            result = await runner.run(preview_code(tables[:FILES_PREVIEWED]), (), preview=True)
            shapes = {file_id: shape_text(info) for file_id, info in parse_previews(result.output).items()}
        return [MemberFile(file_id=str(m["file_id"]), filename=sanitize_filename(str(m.get("filename") or "file")),
                           file_type=str(m.get("file_type") or "file"), size=int(m.get("file_size") or 0),
                           shape=shapes.get(str(m["file_id"]), "")) for m in in_reach]

    # --- the reply

    async def _render(self, interaction: discord.Interaction, thread: Thread, asked: str,
                      reply: Answer) -> tuple[str, list[discord.File]]:
        lines = [asked]
        if reply.outcome is AskOutcome.ANSWERED:
            body = clean_text(reply.text)
        else:
            body = OUTCOME_MESSAGES[reply.outcome].format(steps=reply.steps, timeout=self.settings.ask_timeout_seconds,
                                                          detail=clean_text(reply.detail or "unknown")[:300])
            if reply.outcome is AskOutcome.REFUSED and reply.text:
                body += f"\n> {inline(reply.text, 500)}"
            final = reply.final_run
            if final is not None and reply.outcome in (AskOutcome.STEP_LIMIT, AskOutcome.TIMEOUT):
                body += "\nThe last run " + ("succeeded" if final.success else "failed") + "; its code is behind **Show code**."
        footer = []
        if reply.runs:
            failed = sum(1 for run in reply.runs if not run.success)
            footer.append(f"🐍 {len(reply.runs)} run{'s' if len(reply.runs) != 1 else ''}"
                          + (f" ({failed} failed and fixed)" if failed and reply.outcome is AskOutcome.ANSWERED else ""))
        if thread.conversation.session_id:
            executor = await interpreter.get_executor()
            info = await executor.get_session(thread.conversation.session_id)
            if info is not None and info.runs == 0 and thread.opened_session:
                # Opened for this question, which ran nothing: do not keep a sandbox for it.
                await executor.end_session(thread.conversation.session_id)
                thread.opened_session = False
            elif info is not None:
                footer.append(f"🧠 session: {session_summary(info)}")
        files, not_attached = attach_generated(reply.files, upload_limit(interaction))
        if not_attached:
            footer.append("📎 Not attached: " + "; ".join(not_attached))
        room = MESSAGE_LIMIT - len(asked) - sum(len(line) + 1 for line in footer) - 2
        if len(body) > room:
            if len(files) < MAX_ATTACHMENTS:
                files.append(discord.File(io.BytesIO(body.encode("utf-8")), filename="answer.md"))
                body = body[: max(room - 40, 0)].rstrip() + "\n… (the whole answer is in answer.md)"
            else:
                body = body[: max(room - 2, 0)] + "…"
        lines.append(body)
        lines.extend(footer)
        return "\n".join(lines)[:MESSAGE_LIMIT], files


def nothing_was_done(reply: Answer) -> bool:
    """The question cost nothing, so it does not count against the daily budget: the
    endpoint refused or failed its first request, or no run could start before it."""
    if reply.outcome in NOT_CHARGED:
        return reply.steps <= 1
    return reply.outcome is AskOutcome.RUN_REFUSED and reply.steps == 0


def attach_generated(generated: list, limit: int) -> tuple[list[discord.File], list[str]]:
    """Files as attachments, images first, within Discord's count and the upload limit;
    what does not fit is listed as 'name (size): reason'."""
    files: list[discord.File] = []
    not_attached: list[str] = []
    taken: set[str] = set()
    total = 0
    for item in sorted(generated, key=lambda f: 0 if f.type == "image" else 1):
        name = sanitize_filename(item.filename or "file")
        if name.lower() in taken:
            stem, dot, ext = name.rpartition(".")
            name = f"{stem or name}_{len(taken) + 1}{dot}{ext}" if dot else f"{name}_{len(taken) + 1}"
        size = len(item.data)
        if len(files) >= MAX_ATTACHMENTS:
            not_attached.append(f"{display_filename(name)} ({human_size(size)}): more than {MAX_ATTACHMENTS} files")
        elif total + size > limit:
            not_attached.append(f"{display_filename(name)} ({human_size(size)}): over this server's upload limit")
        else:
            files.append(discord.File(io.BytesIO(item.data), filename=name))
            taken.add(name.lower())
            total += size
    return files, not_attached


class QueuedRunner:
    """The model's runs, the way /run runs code: access rules and the hourly limit, a place
    in the fair queue (one run at a time per member; the cooldown applies to the question's
    first run only), the sandbox limits, the audit."""

    def __init__(self, bot: "CodeInterpreterBot", interaction: discord.Interaction, thread: Thread,
                 in_reach: list[dict], editor: ProgressEditor) -> None:
        self.bot = bot
        self.interaction = interaction
        self.thread = thread
        self.file_ids = [str(meta["file_id"]) for meta in in_reach]
        self.editor = editor
        self.submitted = False  # by the bot's scheduler (its cooldown applies to the first)
        self.admitted = False  # by the access rules (their cooldown applies to the first)

    async def run(self, code: str, packages: tuple[str, ...], *, preview: bool = False) -> interpreter.RunResult:
        """One of the model's runs; with `preview`, the look at the member's files before the
        model starts (not counted against the hourly limit, one-shot: it leaves nothing in
        the session)."""
        admission = None
        if not preview:
            # The cooldown between requests applies to the question's first run only.
            outcome = await interpreter.admit_run(run_context(self.interaction), cooldown=not self.admitted)
            if isinstance(outcome, Denial):
                raise RunNotStarted(denial_message(outcome))
            admission = outcome
            self.admitted = True
        try:
            ticket = self.bot.scheduler.submit(self.interaction.user.id, cooldown=not self.submitted)
        except RunRefused as refusal:
            if admission is not None:
                admission.cancel()
            raise RunNotStarted(str(refusal)) from None
        self.submitted = True
        # Admitted runs hold the member's run lease: their runs in other bot processes go first.
        async with ticket, self.editor.queue_notices(), admission.running() if admission else contextlib.nullcontext():
            return await interpreter.run_code(
                code, user_id=self.interaction.user.id, user_files=self.file_ids or None,
                install_packages=list(packages) or None, timeout=PREVIEW_TIMEOUT_SECONDS if preview else None,
                session_id=None if preview else self.thread.conversation.session_id,
                guild_id=self.thread.guild_id, channel_id=self.thread.channel_id)


class FollowUpModal(discord.ui.Modal, title="Follow up"):
    question: discord.ui.TextInput = discord.ui.TextInput(
        label="Your question", style=discord.TextStyle.paragraph, max_length=MAX_QUESTION_CHARS,
        placeholder="e.g. now split it by month")

    def __init__(self, cog: AskCog, thread: Thread) -> None:
        super().__init__(timeout=VIEW_SECONDS)
        self.cog = cog
        self.thread = thread

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.cog.follow_up(interaction, self.thread, self.question.value)

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        from cogs.run import report_error

        await report_error(interaction, error, "the follow-up box")


class AskView(discord.ui.View):
    """Show code (anyone) and Follow up (the member who asked)."""

    def __init__(self, cog: AskCog, thread: Thread, reply: Answer, origin: discord.Interaction) -> None:
        super().__init__(timeout=VIEW_SECONDS)
        self.cog = cog
        self.thread = thread
        self.reply = reply
        self.origin = origin
        if not reply.runs:
            self.remove_item(self.show_code)

    @discord.ui.button(label="Show code", emoji="📄", style=discord.ButtonStyle.secondary)
    async def show_code(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        content, files = code_message(self.reply)
        await interaction.response.send_message(content, files=files, ephemeral=True, allowed_mentions=NO_MENTIONS)

    @discord.ui.button(label="Follow up", emoji="💬", style=discord.ButtonStyle.primary)
    async def follow(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        if interaction.user.id != self.thread.conversation.member_id:
            await interaction.response.send_message("Only the member who asked can follow up here; "
                                                    "ask your own with `/ask`.", ephemeral=True)
            return
        await interaction.response.send_modal(FollowUpModal(self.cog, self.thread))

    async def on_timeout(self) -> None:
        try:  # drop the buttons; the token may already be gone, which is fine
            await self.origin.edit_original_response(view=None)
        except discord.HTTPException:
            pass

    async def on_error(self, interaction: discord.Interaction, error: Exception, item: discord.ui.Item) -> None:
        from cogs.run import report_error

        await report_error(interaction, error, f"the {getattr(item, 'label', 'button')} button")


def code_message(reply: Answer) -> tuple[str, list[discord.File]]:
    """The code behind the answer (the last run that worked), and every run as code.py
    when there were several or it does not fit."""
    final = reply.final_run
    assert final is not None
    note = ""
    if len(reply.runs) > 1:
        note = f"\n-# The last of {len(reply.runs)} runs{' that worked' if final.success else ''}; every run is in code.py."
    shown = code_block(final.code, "py")
    files: list[discord.File] = []
    if len(shown) + len(note) > MESSAGE_LIMIT - 10:
        shown = code_block(final.code[:1500] + "\n# … (cut: the whole code is in code.py)", "py")
    if len(reply.runs) > 1 or len(final.code) > 1500:
        parts = [f"# --- run {number}: {'worked' if run.success else 'failed'} ---\n{run.code}\n"
                 for number, run in enumerate(reply.runs, 1)]
        files.append(discord.File(io.BytesIO("\n".join(parts).encode("utf-8")), filename="code.py"))
    return (shown + note)[:MESSAGE_LIMIT], files


async def setup(bot: "CodeInterpreterBot") -> None:
    await bot.add_cog(AskCog(bot))
