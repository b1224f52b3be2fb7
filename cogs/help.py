"""/help: what the bot does and how to use it, worded from this bot's own settings.

Members see the limits and lifetimes this server's admin configured (timeout, memory,
file expiry, sessions, packages), not generic defaults. The reply is ephemeral.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

import interpreter
from cogs._format import EMBED_FIELD_LIMIT, NO_MENTIONS, inline
from config import Settings
from interpreter.assistant import ask_enabled

if TYPE_CHECKING:
    from bot.client import CodeInterpreterBot

EMBED_COLOUR = discord.Colour.blurple()


def _hours(hours: float) -> str:
    return f"{hours:g} hour{'s' if hours != 1 else ''}"


def _join_fitting(names: list[str], limit: int) -> str:
    """'a, b, c' cut to `limit` characters with '…' when it does not fit."""
    text = ", ".join(names)
    return text if len(text) <= limit else text[: limit - 1].rsplit(",", 1)[0] + ", …"


def run_text() -> str:
    return ("`/run code: print('hi')` runs Python here; leave `code` empty for a multi-line box. "
            "On any message, **Apps → Run code** runs its code block.\n"
            "Charts (`plt.show()` or any open figure) come back as images, plotly figures as a PNG plus an interactive HTML file, "
            "files your code writes as attachments, and the value of the last line is shown, as in a notebook. "
            "Under a result: **Edit & run** opens the code again to change it.")


def ask_text(settings: Settings) -> str:
    if not ask_enabled(settings):
        return ("Off on this bot. An admin can turn it on with an OpenAI API key or a local model server "
                "(`OPENAI_API_KEY` / `OPENAI_BASE_URL`).")
    per_day = (f"{settings.ask_questions_per_day} questions a day each" if settings.ask_questions_per_day
               else "no daily limit")
    return ("`/ask question: which region grew fastest? chart it` — a model writes the Python, runs it in your "
            "sandbox, fixes its own errors and answers in words, with the charts attached and the code behind "
            "**Show code**. Add a file with `file:`, or it uses the files you uploaded. **Follow up** continues "
            f"the conversation. Model: {inline(settings.openai_model, 80)}; {per_day}; up to "
            f"{settings.ask_max_steps} steps a question.")


def files_text(settings: Settings) -> str:
    drop = "Drop a CSV, TSV, Excel, JSON or Parquet file in chat, or use" if settings.auto_upload else "Use"
    expiry = (f"Files expire after {_hours(settings.file_expiry_hours)}" if settings.file_expiry_hours
              else "Files are kept until you delete them")
    return (f"{drop} `/upload` (also **Apps → Upload to interpreter** on a message). Then in `/run`: "
            "`df = load_file('<id>')` (or the **Analyse in /run** button under a table). seaborn's example "
            "datasets (`sns.load_dataset('tips')`, iris, penguins, mpg, anscombe) work offline.\n"
            f"`/files list` shows yours and `/files delete` removes one. {expiry}; "
            f"at most {settings.user_max_files} files and {settings.user_max_storage_mb} MB each. "
            "Nobody else can use them.")


def sessions_text(settings: Settings) -> str:
    if settings.max_sessions <= 0:
        return "Sessions are off on this bot: every `/run` starts fresh."
    return (f"`/session start` keeps your variables, imports and work files between runs in this channel, "
            f"like a notebook. It ends after {settings.session_idle_minutes:g} minutes without a run, "
            "or with `/session end`. `/session reset` starts over.")


def packages_text(settings: Settings) -> str:
    approved = interpreter.get_package_manager().approved
    names = sorted(name for names in approved.by_category().values() for name in names)
    base = ", ".join(settings.sandbox_base_packages) or "none"
    return (f"Ready to import: {base}.\n"
            "More approved packages install on request, e.g. `/run packages: statsmodels` "
            f"(start typing to see them): {_join_fitting(names, 600)}")


def limits_text(settings: Settings) -> str:
    return (f"Each run: {settings.run_timeout} s (up to {settings.max_run_timeout} s with the `timeout` option), "
            f"{settings.run_memory_mb} MB of memory, {settings.output_limit_bytes // 1000} KB of output, "
            f"files up to {settings.max_file_size_mb} MB. No internet (upload data instead) and no keyboard "
            "(`input()` cannot read anything), and no access to the bot or to other members' files.")


def help_embed(settings: Settings) -> discord.Embed:
    embed = discord.Embed(
        title="Python code interpreter",
        description="Run Python in a locked-down sandbox and get the output, tables and charts back here.",
        colour=EMBED_COLOUR,
    )
    for name, value in (
        ("▶️ Run code", run_text()),
        ("💬 Ask in words", ask_text(settings)),
        ("📁 Your data", files_text(settings)),
        ("🧠 Sessions", sessions_text(settings)),
        ("📦 Packages", packages_text(settings)),
        ("⏱️ Limits", limits_text(settings)),
        ("🛠️ Admins", "`/status` shows health, queue and recent runs; `/runs member:` a member's runs; "
                     "`/session end member:` ends a member's sessions."),
    ):
        embed.add_field(name=name, value=value[:EMBED_FIELD_LIMIT], inline=False)
    return embed


class HelpCog(commands.Cog, name="Help"):
    def __init__(self, bot: "CodeInterpreterBot") -> None:
        self.bot = bot

    @app_commands.command(name="help", description="How to run code, use your files, sessions and packages")
    async def help(self, interaction: discord.Interaction) -> None:
        # The limits a run really gets: with execution workers, theirs (learned at start-up).
        settings = (await interpreter.get_engine()).applied_settings()
        await interaction.response.send_message(embed=help_embed(settings), ephemeral=True,
                                                allowed_mentions=NO_MENTIONS)


async def setup(bot: "CodeInterpreterBot") -> None:
    await bot.add_cog(HelpCog(bot))
