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
from aiohttp import web

from tests.fixtures_sandbox import DEFAULT_TEST_VENV

ROOT = Path(__file__).resolve().parents[1]
REJECTED_TOKEN = "MTIzNDU2Nzg5MDEy.rejected-token-canary.xyz"


def bot_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DISCORD_TOKEN", "MONGODB_URI"}}
    env.update(DATA_DIR=str(tmp_path / "data"),
               SANDBOX_VENV_DIR=os.environ.get("TEST_SANDBOX_VENV_DIR", DEFAULT_TEST_VENV),
               VENV_MAX_AGE_DAYS="0", PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


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


class FakeDiscord:
    """Discord's HTTP API and gateway, on localhost, as they answer a bot whose portal
    settings do not allow the Message Content intent: the gateway closes with 4014 when
    the bot identifies with it, and lets the bot in when it identifies without it."""

    MESSAGE_CONTENT = 1 << 15
    USER = {"id": "100000000000000001", "username": "interpreter", "discriminator": "0", "avatar": None, "bot": True}

    def __init__(self, on_ready) -> None:
        self.on_ready = on_ready  # called (in the server's thread) once a bot is in
        self.identified_intents: list[int] = []
        self.loop = asyncio.new_event_loop()
        self.port = 0
        started = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(started,), daemon=True)
        self.thread.start()
        assert started.wait(30), "the fake Discord server did not start"

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._api)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)

    @staticmethod
    def _json(body, status: int = 200) -> web.Response:
        # discord.py reads a body as JSON only when the type is exactly this (no charset)
        return web.Response(body=json.dumps(body).encode(), status=status, headers={"Content-Type": "application/json"})

    async def _api(self, request: web.Request) -> web.Response:
        path = request.match_info["tail"]
        if path == "users/@me":
            return self._json(self.USER)
        if path == "oauth2/applications/@me":
            return self._json({"id": self.USER["id"], "name": "interpreter", "icon": None, "description": "",
                                      "bot_public": True, "bot_require_code_grant": False, "verify_key": "0" * 64,
                                      "owner": self.USER, "flags": 0})
        if path.endswith("/commands"):  # slash commands synced at start
            return self._json([])
        return self._json({"message": f"not faked: {path}", "code": 0}, status=404)

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"op": 10, "d": {"heartbeat_interval": 45000}})
        async for message in ws:
            payload = json.loads(message.data)
            if payload.get("op") != 2:  # only IDENTIFY matters here
                continue
            intents = payload["d"]["intents"]
            self.identified_intents.append(intents)
            if intents & self.MESSAGE_CONTENT:
                await ws.close(code=4014, message=b"Disallowed intent(s).")
                break
            await ws.send_json({"op": 0, "t": "READY", "s": 1, "d": {
                "v": 10, "user": self.USER, "guilds": [], "session_id": "fake-session",
                "resume_gateway_url": f"ws://127.0.0.1:{self.port}/gateway",
                "application": {"id": self.USER["id"], "flags": 0}}})
            self.on_ready()
        return ws


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
        monkeypatch.setattr(discord.http.Route, "BASE", f"http://127.0.0.1:{fake.port}/api/v10")
        monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY",
                            yarl.URL(f"ws://127.0.0.1:{fake.port}/gateway"))
        for key, value in bot_env(tmp_path, DISCORD_TOKEN=REJECTED_TOKEN, SANDBOX_POOL_SIZE="0",
                                  SANDBOX_LIGHT_POOL_SIZE="0").items():
            monkeypatch.setenv(key, value)
        monkeypatch.chdir(tmp_path)
        root_handlers = list(logging.getLogger().handlers)
        try:
            code = bot_main.main()
        finally:
            logging.getLogger().handlers[:] = root_handlers
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
