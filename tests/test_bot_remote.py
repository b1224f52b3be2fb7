"""The bot in front of execution workers: /upload, /run and /session through discord.py's
real dispatch, with every run going over HTTP to a worker process (EXECUTOR_URLS). The
cogs see only the Executor seam, so a member cannot tell the difference, except when
the machine holding their session goes away, which they are told."""

from __future__ import annotations

import signal

import interpreter
from config.settings import Secret
from interpreter.remote import RemoteExecutor
from tests.discord_harness import attachment_payload
from tests.fixtures_executor import WORKER_TOKEN


async def test_upload_run_and_session_through_a_worker(executor_workers, bot_settings, monkeypatch, tmp_path):
    from tests.fixtures_discord import start_bot

    worker, = await executor_workers(1)
    settings = bot_settings.replace(executor_urls=(worker.url,), executor_token=Secret(WORKER_TOKEN),
                                    run_timeout=30, max_run_timeout=30)
    w = await start_bot(settings, monkeypatch, tmp_path)
    try:
        assert isinstance((await interpreter.get_engine()).executor, RemoteExecutor)
        csv = tmp_path / "sales.csv"
        csv.write_bytes(b"region,units\nnorth,3\nsouth,4\n")
        uploaded = await w.harness.slash("upload", w.alice, attachments={"file": attachment_payload(csv)})
        assert "2 rows × 2 columns" in uploaded.content, uploaded.content  # the preview ran on the worker
        file_id = (await interpreter.list_user_files(w.alice.id))[0]["file_id"]

        ran = await w.harness.slash("run", w.alice, code=f"print(int(load_file('{file_id}')['units'].sum()))")
        assert ran.content.startswith("✅ Finished") and "```\n7\n```" in ran.content, ran.content

        started = await w.harness.slash("session", w.alice, subcommand="start")
        assert started.content.startswith("🧠 Session started."), started.content
        await w.harness.slash("run", w.alice, code="x = 41")
        kept = await w.harness.slash("run", w.alice, code="print(x + 1)")
        assert kept.content.startswith("🧠 session: 2 runs") and "42" in kept.content, kept.content

        worker.process.send_signal(signal.SIGKILL)  # the machine holding the session goes away
        worker.process.wait()
        lost = await w.harness.slash("run", w.alice, code="print(x)")
        assert "Your session ended: the machine running it stopped" in lost.content, lost.content
        status = await w.harness.slash("session", w.alice, subcommand="status")
        assert "machine running it stopped" in status.content, status.content
    finally:
        w.bot.expiry_sweep.cancel()
        await (await interpreter.get_engine()).close()
