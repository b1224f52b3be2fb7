"""The Discord bot: `create_bot(settings)` builds it; `python -m bot` runs it."""

from bot.client import CodeInterpreterBot, create_bot

__all__ = ["CodeInterpreterBot", "create_bot"]
