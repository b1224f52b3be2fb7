"""A bot whose settings disagree with its execution workers' limits: the workers' apply.

A bot with the default 60 s run time-out in front of a worker whose maximum is 30 s used
to send 60 with every /run, and the worker refused every run ("timeout: must be above 0
and at most 30 seconds") though no member chose a time-out. Real worker process over
HTTP, discord.py's real dispatch.
"""

from __future__ import annotations

import asyncio
import logging

import interpreter
from config.settings import Secret
from tests.fixtures_executor import WORKER_TOKEN
from tests.openai_script import answer
from tests.test_bot_help import fields_of


def limit_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "interpreter.worker_limits" and r.levelno == logging.WARNING]


async def test_a_bot_above_its_workers_limits_runs_with_the_workers_limits(
        executor_workers, bot_settings, monkeypatch, tmp_path, caplog):
    from tests.fixtures_discord import start_bot

    caplog.set_level(logging.WARNING, logger="interpreter.worker_limits")
    worker, = await executor_workers(1, RUN_TIMEOUT_SECONDS="30", MAX_RUN_TIMEOUT_SECONDS="30", RUN_MEMORY_MB="512")
    settings = bot_settings.replace(executor_urls=(worker.url,), executor_token=Secret(WORKER_TOKEN),
                                    run_timeout=60, max_run_timeout=120, run_memory_mb=1024)
    w = await start_bot(settings, monkeypatch, tmp_path)
    try:
        await interpreter.warm_up()  # what the bot does at start-up (prepare_sandbox)
        assert len(limit_warnings(caplog)) == 1, limit_warnings(caplog)  # before any run

        # /help tells the limits a run really gets: the worker's.
        shown = await w.harness.slash("help", w.alice)
        limits = fields_of(shown)["⏱️ Limits"]
        assert limits.startswith("Each run: 30 s (up to 30 s") and "512 MB of memory" in limits, limits

        # The member chose no time-out: the run goes ahead under the worker's 30 s, silently.
        ran = await w.harness.slash("run", w.alice, code="print(6 * 7)")
        assert ran.content.startswith("✅ Finished") and "42" in ran.content, ran.content
        assert "timeout" not in ran.content.lower(), ran.content

        # An explicit value above the worker's maximum: lowered, and the member is told, as
        # for a value above the bot's own maximum.
        asked = await w.harness.slash("run", w.alice, code="print('ok')", timeout=100)
        assert asked.content.startswith("✅ Finished"), asked.content
        assert "timeout lowered from 100 to the maximum of 30 seconds" in asked.content, asked.content
        within = await w.harness.slash("run", w.alice, code="print('ok')", timeout=20)
        assert within.content.startswith("✅ Finished") and "lowered" not in within.content, within.content

        # One warning for the whole class of limits, naming each disagreeing setting.
        warned = limit_warnings(caplog)
        assert len(warned) == 1, warned
        for named in ("RUN_TIMEOUT_SECONDS=60", "MAX_RUN_TIMEOUT_SECONDS=120", "RUN_MEMORY_MB=1024", "512"):
            assert named in warned[0], warned[0]
        assert "OUTPUT_LIMIT_BYTES" not in warned[0], warned[0]  # the same on both sides
    finally:
        w.bot.expiry_sweep.cancel()
        await (await interpreter.get_engine()).close()


async def test_a_bot_matching_its_workers_logs_no_warning(executor_workers, bot_settings, monkeypatch, tmp_path,
                                                          caplog):
    from tests.fixtures_discord import start_bot

    caplog.set_level(logging.WARNING, logger="interpreter.worker_limits")
    worker, = await executor_workers(1)
    settings = bot_settings.replace(executor_urls=(worker.url,), executor_token=Secret(WORKER_TOKEN),
                                    run_timeout=30, max_run_timeout=30)
    w = await start_bot(settings, monkeypatch, tmp_path)
    try:
        ran = await w.harness.slash("run", w.alice, code="print(6 * 7)")
        assert ran.content.startswith("✅ Finished"), ran.content
        assert limit_warnings(caplog) == []
    finally:
        w.bot.expiry_sweep.cancel()
        await (await interpreter.get_engine()).close()


async def test_ask_tells_the_model_the_workers_limits(executor_workers, bot_settings, model, monkeypatch, tmp_path):
    from tests.fixtures_discord import start_bot

    worker, = await executor_workers(1, RUN_TIMEOUT_SECONDS="30", MAX_RUN_TIMEOUT_SECONDS="30", RUN_MEMORY_MB="512")
    settings = bot_settings.replace(executor_urls=(worker.url,), executor_token=Secret(WORKER_TOKEN),
                                    run_timeout=60, max_run_timeout=120, run_memory_mb=1024,
                                    openai_base_url=model.url, openai_api_key=Secret("sk-test-limits"))
    w = await start_bot(settings, monkeypatch, tmp_path)
    try:
        await interpreter.warm_up()
        model.script = [answer("Nothing to run for that.")]
        reply = await w.harness.slash("ask", w.alice, question="What can the sandbox do?")
        assert "Nothing to run for that." in reply.content, reply.content
        system = model.received[0].messages[0]["content"]
        assert "30 s and 512 MB per run" in system, system
    finally:
        w.bot.expiry_sweep.cancel()
        await (await interpreter.get_engine()).close()


async def test_a_worker_that_hangs_on_status_costs_no_run_a_wait(bot_settings, monkeypatch):
    """The limits are asked of every worker, and a worker may hang on /v1/status. Once they
    are known, a run never waits for their refresh: it gets the last answer while the
    workers are asked again in the background. With nothing known, the first question is
    awaited, and when no worker answers it is not asked again by every following run."""
    from interpreter import remote
    from interpreter.remote import RemoteExecutor

    asked = []

    async def hangs(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        asked.append(1)
        await reader.read()  # never answers; ends when the bot gives up and closes
        writer.close()

    server = await asyncio.start_server(hangs, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    settings = bot_settings.replace(executor_urls=(url,), executor_token=Secret(WORKER_TOKEN))
    known = {"max_timeout_s": 30.0}
    stale = RemoteExecutor(settings, store=None)
    fresh = RemoteExecutor(settings, store=None)
    try:
        monkeypatch.setattr(remote, "STATUS_TIMEOUT_SECONDS", 30.0)
        stale._limits = known  # learned a while ago, and due to be asked again
        assert await asyncio.wait_for(stale.run_limits(), 10) == known  # not the worker's 30 s

        assert stale._learning is not None and not stale._learning.done()  # asked in the background
        stale._learning.cancel()
        await stale.close()

        monkeypatch.setattr(remote, "STATUS_TIMEOUT_SECONDS", 0.2)
        asked.clear()
        assert await fresh.run_limits() is None  # asked, and no worker answered
        assert await fresh.run_limits() is None
        assert len(asked) == 1, "every run asked the hung worker again"
    finally:
        for executor in (stale, fresh):
            if executor._learning is not None:
                executor._learning.cancel()
            await executor.close()
        server.close()
