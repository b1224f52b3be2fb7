"""`python -m bot`: start-up problems end with one clear line, never a traceback or the token."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import discord
import pytest
import yarl

from tests.fake_discord import FakeDiscord
from tests.fixtures_sandbox import DEFAULT_TEST_VENV

ROOT = Path(__file__).resolve().parents[1]
REJECTED_TOKEN = "MTIzNDU2Nzg5MDEy.rejected-token-canary.xyz"


def bot_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DISCORD_TOKEN", "MONGODB_URI"}}
    env.update(DATA_DIR=str(tmp_path / "data"),
               SANDBOX_VENV_DIR=os.environ.get("TEST_SANDBOX_VENV_DIR", DEFAULT_TEST_VENV),
               VENV_MAX_AGE_DAYS="0", PYTHONPATH=str(ROOT),
               SANDBOX_FORK_SERVER="false")  # warm capacity as the pool sizes a test gives (0: none)
    env.update(extra)
    return env


def run_bot_main(monkeypatch, tmp_path: Path, fake, **environ: str) -> int:
    """`python -m bot`'s main() in this process against `fake` (tests/fake_discord.py), with
    bot_env(tmp_path, **environ) and no warm pool; the root logger's handlers are restored."""
    import bot.__main__ as bot_main

    monkeypatch.setattr(discord.http.Route, "BASE", f"http://127.0.0.1:{fake.port}/api/v10")
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY",
                        yarl.URL(f"ws://127.0.0.1:{fake.port}/gateway"))
    for key, value in bot_env(tmp_path, DISCORD_TOKEN=REJECTED_TOKEN, SANDBOX_POOL_SIZE="0",
                              SANDBOX_LIGHT_POOL_SIZE="0", **environ).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    root_handlers = list(logging.getLogger().handlers)
    try:
        return bot_main.main()
    finally:
        logging.getLogger().handlers[:] = root_handlers


class _DiscordSaysUnauthorized(http.server.BaseHTTPRequestHandler):
    """Discord's answer to a bad token: 401 on GET /users/@me."""

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        body = json.dumps({"message": "401: Unauthorized", "code": 0}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_discord_api(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DiscordSaysUnauthorized)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(discord.http.Route, "BASE", f"http://127.0.0.1:{server.server_address[1]}/api/v10")
    yield
    server.shutdown()


def test_rejected_token_gives_one_line_and_non_zero_exit(tmp_path, monkeypatch, capsys, caplog, sandbox_venv,
                                                         fake_discord_api):
    from bot.__main__ import main

    for key, value in bot_env(tmp_path, DISCORD_TOKEN=REJECTED_TOKEN, LOG_LEVEL="DEBUG").items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    root_handlers = list(logging.getLogger().handlers)
    try:
        with caplog.at_level(logging.DEBUG):
            code = main()
    finally:
        logging.getLogger().handlers[:] = root_handlers
    captured = capsys.readouterr()
    assert code == 1
    error_lines = [line for line in captured.err.splitlines() if "DISCORD_TOKEN" in line]
    assert error_lines == ["Discord rejected DISCORD_TOKEN: check the bot token in the developer portal (Bot → Reset Token)."]
    assert "Traceback" not in captured.err
    for text in (captured.out, captured.err, caplog.text):
        assert REJECTED_TOKEN not in text


def test_invalid_setting_gives_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bot"], cwd=tmp_path, capture_output=True, text=True,
                          env=bot_env(tmp_path, RUN_TIMEOUT_SECONDS="soon"), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "Configuration error: RUN_TIMEOUT_SECONDS='soon' is invalid: expected an integer >= 1 and <= 3600."]


def test_without_token_the_offline_demo_runs(tmp_path, sandbox_venv):
    proc = subprocess.run([sys.executable, "-m", "bot"], cwd=tmp_path, capture_output=True, text=True,
                          env=bot_env(tmp_path, DISCORD_TOKEN=""), timeout=300)
    first_line = proc.stdout.splitlines()[0] if proc.stdout else ""
    assert first_line == "No DISCORD_TOKEN is configured: running the offline demo instead of the bot (see README).", \
        (proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


# --- the Message Content intent not enabled in the portal


def test_without_the_message_content_intent_the_bot_starts_with_drops_off(tmp_path, monkeypatch, capsys, caplog,
                                                                          sandbox_venv):
    import bot.__main__ as bot_main

    bots = []

    def recording_create_bot(settings):
        bots.append(real_create_bot(settings))
        return bots[-1]

    def close_the_bot() -> None:  # the member-facing part is proven: stop the bot as an admin would
        asyncio.run_coroutine_threadsafe(bots[-1].close(), bots[-1].loop)

    real_create_bot = bot_main.create_bot
    fake = FakeDiscord(close_the_bot)
    try:
        monkeypatch.setattr(bot_main, "create_bot", recording_create_bot)
        code = run_bot_main(monkeypatch, tmp_path, fake)
    finally:
        fake.stop()

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert [bool(i & FakeDiscord.MESSAGE_CONTENT) for i in fake.identified_intents] == [True, False]
    assert [b.settings.auto_upload for b in bots] == [True, False]
    assert "The Message Content intent is not enabled for this bot, so CSV drops are off; " \
           "/upload and the 'Upload to interpreter' menu still work." in captured.err
    assert "Traceback" not in captured.err
    for text in (captured.out, captured.err, caplog.text):
        assert REJECTED_TOKEN not in text
