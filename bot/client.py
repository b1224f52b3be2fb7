"""The Discord client: a commands.Bot that loads one cog per area and sweeps expired files.

Sharded (SHARD_COUNT set) it is an AutoShardedBot running this process's shards
(bot/sharding.py); otherwise one plain gateway connection, as always.
"""

from __future__ import annotations

import asyncio
import logging
import time

import discord
from discord import app_commands
from discord.ext import commands, tasks

import interpreter
from bot.sharding import ShardPlan, plan_shards
from cogs._access import NotBotAdmin
from cogs._format import NO_MENTIONS, failure_message, is_outage
from cogs._queue import RunScheduler
from config import Settings, load_settings

log = logging.getLogger(__name__)

EXTENSIONS = ("cogs.run", "cogs.files", "cogs.admin", "cogs.session", "cogs.ask", "cogs.help")
SWEEP_INTERVAL_HOURS = 1.0
# discord.py runs each interaction's handler (slash commands, buttons, modals, dynamic items)
# in a task with one of these names; a draining bot waits for them so replies still go out.
# Listeners of every interaction too: a code box sent after a restart runs in one (cogs/run.py).
INTERACTION_TASKS = ("CommandTree-invoker", "discord-ui-view-dispatch-", "discord-ui-modal-dispatch-",
                     "discord-ui-dynamic-item-", "discord.py: on_interaction")
DRAIN_MARGIN_SECONDS = 20.0  # past the longest run: the reply's upload to Discord
RESTARTING = "This bot is restarting; please try again in a minute."
# Discord checks option types against the definition the member's app holds; one loaded
# before an update can send options the running code no longer has (or of another type).
STALE_COMMAND = ("🔄 This command has changed since your Discord app loaded it. Reload Discord "
                 "(Ctrl+R on desktop, or reopen the app) and try again.")
_OPTION_TYPES = {
    discord.AppCommandOptionType.string: (str,),
    discord.AppCommandOptionType.integer: (int,),
    discord.AppCommandOptionType.number: (int, float),
    discord.AppCommandOptionType.boolean: (bool,),
}


class InterpreterTree(app_commands.CommandTree):
    """Every app-command failure becomes a short message to the member; the trace goes to the log."""

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        """Every option holds the type its parameter declares, before any command code sees it.
        discord.py passes option values on as sent; only a stale definition sends another type."""
        command = interaction.command
        if interaction.type is discord.InteractionType.application_command and isinstance(command, app_commands.Command):
            for parameter in command.parameters:
                value = getattr(interaction.namespace, parameter.display_name, None)
                expected = _OPTION_TYPES.get(parameter.type)
                if value is not None and expected and (isinstance(value, bool) is not (bool in expected)
                                                        or not isinstance(value, expected)):
                    raise app_commands.CommandSignatureMismatch(command)
        return True

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        if isinstance(error, NotBotAdmin):
            message = f"🔒 {error}"
        elif isinstance(error, (app_commands.CommandSignatureMismatch, app_commands.CommandNotFound)):
            log.warning("user %s used a command as an older definition had it: %s", interaction.user.id, error)
            message = STALE_COMMAND
        elif isinstance(error, app_commands.CheckFailure):
            message = "🔒 You can't use this command here."
        elif isinstance(error, app_commands.TransformerError):
            message = f"That value doesn't look right: {discord.utils.escape_markdown(str(error.value))[:100]}"
        else:
            command = interaction.command.qualified_name if interaction.command else "?"
            if is_outage(error):
                log.warning("command %s for user %s: %s", command, interaction.user.id, failure_message(error))
            else:
                log.error("command %s failed for user %s", command, interaction.user.id, exc_info=error)
            message = failure_message(error)
        try:
            if interaction.response.is_done():
                await interaction.followup.send(message, ephemeral=True, allowed_mentions=NO_MENTIONS)
            else:
                await interaction.response.send_message(message, ephemeral=True, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException:
            log.warning("could not report a command error to user %s", interaction.user.id)


class CodeInterpreterBot(commands.Bot):
    def __init__(self, settings: Settings, *, sync_commands: bool | None = None,
                 shards: ShardPlan = ShardPlan(None, None)) -> None:
        intents = discord.Intents.default()
        # Attachments of ordinary messages are only visible with this privileged intent.
        intents.message_content = settings.auto_upload
        sharding = {"shard_count": shards.shard_count, "shard_ids": list(shards.shard_ids or ()) or None}
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            help_command=None,
            tree_cls=InterpreterTree,
            allowed_mentions=NO_MENTIONS,  # nothing the bot sends pings anyone unless a call says so
            **(sharding if shards.sharded else {}),
        )
        self.settings = settings
        self.shards_plan = shards
        # A real start (tests drive the bot without one) prepares the sandbox and syncs
        # slash commands: once per deployment, in the process holding shard 0.
        self.real_start = bool(settings.discord_token) if sync_commands is None else sync_commands
        self.sync_commands = self.real_start and shards.syncs_commands
        self.started_at = time.monotonic()
        self.scheduler = RunScheduler(
            capacity=settings.max_concurrent_runs,
            per_member_queued=settings.run_queue_per_member,
            max_waiting=settings.run_queue_max,
            cooldown_seconds=settings.run_cooldown_seconds,
            queue_waiting=interpreter.queued_runs,
        )

    async def setup_hook(self) -> None:
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        self.expiry_sweep.start()
        if self.shards_plan.sharded:
            log.info("gateway: %s", self.shards_plan.describe())
        if self.sync_commands:
            await self.sync_app_commands()
        if self.real_start:
            self._sandbox_warmup = asyncio.create_task(self.prepare_sandbox())

    async def prepare_sandbox(self) -> None:
        """Build the sandbox venv and the warm capacity now rather than on the first /run,
        and say in the log which isolation layers are in force."""
        try:
            layers = await interpreter.warm_up()
        except Exception:
            log.exception("could not prepare the sandbox; /run will report why")
            return
        for layer in ("bwrap", "unprivileged_uid", "cgroups", "seccomp", "network"):
            log.info("sandbox %s: %s", layer, layers.get(layer))
        missing = [name for name in ("cgroups", "seccomp") if str(layers.get(name, "")).startswith("off")]
        if missing:
            log.warning("sandbox layers missing on this host: %s (see /status)", ", ".join(missing))

    async def sync_app_commands(self) -> None:
        """Register slash commands: instantly in DEV_GUILD_ID, else globally (may take a while to show)."""
        try:
            if self.settings.dev_guild_id:
                guild = discord.Object(id=self.settings.dev_guild_id)
                self.tree.copy_global_to(guild=guild)
                synced = await self.tree.sync(guild=guild)
                log.info("synced %d commands to dev guild %s", len(synced), self.settings.dev_guild_id)
            else:
                synced = await self.tree.sync()
                log.info("synced %d commands globally", len(synced))
        except discord.HTTPException as exc:  # e.g. the bot was invited without applications.commands
            log.error("could not sync slash commands (%s %s); invite the bot with the applications.commands scope",
                      exc.status, exc.text)

    @tasks.loop(hours=SWEEP_INTERVAL_HOURS)
    async def expiry_sweep(self) -> None:
        """Delete expired files (metadata and blobs) every hour."""
        try:
            deleted = await interpreter.cleanup_expired_files()
        except Exception:
            log.exception("expired-file sweep failed; will retry next hour")
            return
        if deleted:
            log.info("expired-file sweep removed %d files", deleted)

    async def on_ready(self) -> None:
        log.info("logged in as %s (%s) in %d servers", self.user, getattr(self.user, "id", "?"), len(self.guilds))

    async def drain(self, timeout: float | None = None) -> int:
        """Stop taking runs and let the interactions in progress answer, up to `timeout` (default:
        the longest run plus the reply); returns how many were still going. SIGTERM calls this
        before close(), so a rolling restart does not drop members' runs."""
        self.scheduler.closed_reason = RESTARTING
        limit = self.settings.max_run_timeout + DRAIN_MARGIN_SECONDS if timeout is None else timeout
        current = asyncio.current_task()
        pending = {task for task in asyncio.all_tasks()
                   if task is not current and task.get_name().startswith(INTERACTION_TASKS)}
        log.info("draining: %d interactions in progress (waiting up to %.0f s)", len(pending), limit)
        if not pending:
            return 0
        _, still = await asyncio.wait(pending, timeout=limit)
        if still:
            log.warning("draining: %d interactions still in progress after %.0f s", len(still), limit)
        return len(still)

    async def close(self) -> None:
        self.expiry_sweep.cancel()
        # Cogs unload first (discord.py's close), while the engine still serves what their
        # unloading needs; then the engine: local sessions ended, warm sandboxes destroyed,
        # connections to remote workers closed.
        await super().close()
        await interpreter.shutdown()


class ShardedCodeInterpreterBot(CodeInterpreterBot, commands.AutoShardedBot):
    """The same bot over several gateway shards (AutoShardedClient's connection handling)."""


def create_bot(settings: Settings | None = None, *, sync_commands: bool | None = None,
               hostname: str | None = None) -> CodeInterpreterBot:
    """The bot, configured but not started; its cogs load in setup_hook (at login, or when a test calls it).

    `hostname` (default: this host's) carries the pod ordinal when SHARDS_PER_POD is set."""
    settings = settings or load_settings()
    shards = plan_shards(settings, hostname)
    interpreter.configure(settings)
    bot_class = ShardedCodeInterpreterBot if shards.sharded else CodeInterpreterBot
    return bot_class(settings, sync_commands=sync_commands, shards=shards)
