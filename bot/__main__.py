"""`python -m bot`: run the bot, or the offline demo when no token is configured.

Start-up problems end with one clear line on stderr and a non-zero exit, never a
traceback, and never the token.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import discord

from bot.client import CodeInterpreterBot, create_bot
from bot.sharding import plan_shards
from config import Settings, SettingsError, load_settings

log = logging.getLogger("bot")


async def _serve(bot: CodeInterpreterBot, token: str) -> None:
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task] = []

    async def drain_then_close() -> None:
        await bot.drain()
        await bot.close()

    def on_sigterm() -> None:  # Kubernetes, Docker and systemd stop a process with SIGTERM
        if not stopping:
            stopping.append(asyncio.ensure_future(drain_then_close()))

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        async with bot:
            await bot.start(token)
        if stopping:
            await stopping[0]
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def run_bot(settings: Settings) -> int:
    token = settings.discord_token.reveal()
    try:
        asyncio.run(_serve(create_bot(settings), token))
    except discord.LoginFailure:
        print("Discord rejected DISCORD_TOKEN: check the bot token in the developer portal (Bot → Reset Token).",
              file=sys.stderr)
        return 1
    except discord.PrivilegedIntentsRequired:
        if not settings.auto_upload:
            print("Discord refused a privileged intent the bot asked for; check the Bot page of the developer portal.",
                  file=sys.stderr)
            return 1
        print("The Message Content intent is not enabled for this bot, so CSV drops are off; "
              "/upload and the 'Upload to interpreter' menu still work. Enable it in the developer portal "
              "(Bot → Privileged Gateway Intents) to turn drops on.", file=sys.stderr)
        return run_bot(settings.replace(auto_upload=False))
    except KeyboardInterrupt:
        return 0
    return 0


def run_demo() -> int:
    from interpreter import demo

    code = demo.main()
    return code if isinstance(code, int) else 0


def main() -> int:
    try:
        settings = load_settings()
        plan_shards(settings)  # a pod with no shard of its own stops here, with the reason
    except SettingsError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return 2
    level = logging.getLevelName(settings.log_level.upper())
    discord.utils.setup_logging(level=level if isinstance(level, int) else logging.INFO)
    if not settings.discord_token:
        print("No DISCORD_TOKEN is configured: running the offline demo instead of the bot (see README).")
        return run_demo()
    return run_bot(settings)


if __name__ == "__main__":
    sys.exit(main())
