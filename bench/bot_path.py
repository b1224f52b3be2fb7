"""A run the way a member's /run makes it, minus Discord: the bot's request rules
(cogs/_queue.py RunScheduler, as bot/client.py builds it, but accepting every run of a
benchmark plan), then `interpreter.run_code` inside `observe_queue`, into the engine's
one admission queue. Discord itself (rendering, HTTP) is left out: it costs the same
whatever happens below it.
"""

from __future__ import annotations

import time


def bot_scheduler(settings, *, members: int, runs_each: int):
    """The bot's request rules with the cooldown off and room for every run of the plan."""
    import interpreter
    from cogs._queue import RunScheduler

    return RunScheduler(capacity=settings.max_concurrent_runs, per_member_queued=runs_each,
                        max_waiting=members * runs_each, cooldown_seconds=0, queue_waiting=interpreter.queued_runs)


async def run_like_a_member(scheduler, member: int, code: str, timeout: float = 60):
    """(seconds from request to result, RunResult) for one run through the bot's path."""
    import interpreter

    started = time.perf_counter()
    async with scheduler.submit(member):
        with interpreter.observe_queue(lambda position: None):
            result = await interpreter.run_code(code, user_id=member, timeout=timeout)
    return time.perf_counter() - started, result
