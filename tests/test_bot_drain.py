"""A bot process that is told to stop (SIGTERM: a rolling restart, `docker compose down`)
answers the runs it has in progress before it leaves, and refuses new ones with a reason."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from bot.client import RESTARTING
from tests.fake_discord import FakeDiscord
from tests.test_bot_main import REJECTED_TOKEN, bot_env
from tests.waiting import until

ROOT = Path(__file__).resolve().parents[1]


async def test_drain_lets_a_run_in_progress_answer_and_refuses_new_ones(discord_world):
    w = discord_world
    slow = w.harness.start_slash("run", w.bob, code="import time; time.sleep(1.5); print('finished after all')")
    await until(lambda: w.bot.scheduler.stats().in_progress == 1, "the run is in progress")

    drain = asyncio.create_task(w.bot.drain(timeout=60))
    refused = await w.harness.slash("run", w.carol, code="print(1)")
    assert refused.ephemeral and RESTARTING in refused.callback.content
    assert not drain.done()  # still waiting for bob's run

    assert await drain == 0
    assert slow.task.done(), "drain returned before the run in progress had answered"
    assert "finished after all" in slow.content


async def test_drain_gives_up_after_its_limit(discord_world):
    w = discord_world
    stuck = w.harness.start_slash("run", w.bob, code="import time; time.sleep(20)")
    await until(lambda: w.bot.scheduler.stats().in_progress == 1, "the run is in progress")
    assert await w.bot.drain(timeout=0.2) == 1  # the process may go; the grace period is spent
    stuck.task.cancel()


# A real `python -m bot` process against the fake Discord, stopped with SIGTERM as Kubernetes does.
LAUNCH = """
import os, sys, yarl, discord
discord.http.Route.BASE = os.environ["FAKE_DISCORD_API"]
discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ["FAKE_DISCORD_GATEWAY"])
from bot.__main__ import main
sys.exit(main())
"""


def test_sigterm_drains_then_exits_cleanly(tmp_path, sandbox_venv):
    identified = threading.Event()
    fake = FakeDiscord(identified.set)
    try:
        env = bot_env(tmp_path, DISCORD_TOKEN=REJECTED_TOKEN, AUTO_UPLOAD="false", SANDBOX_POOL_SIZE="0",
                      SANDBOX_LIGHT_POOL_SIZE="0",
                      FAKE_DISCORD_API=f"http://127.0.0.1:{fake.port}/api/v10",
                      FAKE_DISCORD_GATEWAY=f"ws://127.0.0.1:{fake.port}/gateway")
        proc = subprocess.Popen([sys.executable, "-c", LAUNCH], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert identified.wait(120), "the bot never reached the gateway"
            os.kill(proc.pid, signal.SIGTERM)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        fake.stop()
    assert proc.returncode == 0, err[-3000:]
    assert "draining: 0 interactions in progress" in err
    assert "Traceback" not in err
    assert REJECTED_TOKEN not in out + err
