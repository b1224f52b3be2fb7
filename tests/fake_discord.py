"""Discord's HTTP API and gateway faked on localhost, for tests that start the real bot
(login, IDENTIFY, READY, slash-command sync) without Discord's network."""

from __future__ import annotations

import asyncio
import json
import threading

from aiohttp import web


class FakeDiscord:
    """Discord's HTTP API and gateway, on localhost, as they answer a bot whose portal
    settings do not allow the Message Content intent: the gateway closes with 4014 when
    the bot identifies with it, and lets the bot in when it identifies without it."""

    MESSAGE_CONTENT = 1 << 15
    USER = {"id": "100000000000000001", "username": "interpreter", "discriminator": "0", "avatar": None, "bot": True}

    def __init__(self, on_ready) -> None:
        self.on_ready = on_ready  # called (in the server's thread) once a bot is in
        self.identified_intents: list[int] = []
        self.identified_shards: list[list[int] | None] = []  # IDENTIFY's [shard_id, shard_count]
        self.api_calls: list[tuple[str, str]] = []  # (method, path) of every API request
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
        self.api_calls.append((request.method, path))
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
            self.identified_shards.append(payload["d"].get("shard"))
            if intents & self.MESSAGE_CONTENT:
                await ws.close(code=4014, message=b"Disallowed intent(s).")
                break
            await ws.send_json({"op": 0, "t": "READY", "s": 1, "d": {
                "v": 10, "user": self.USER, "guilds": [], "session_id": "fake-session",
                "resume_gateway_url": f"ws://127.0.0.1:{self.port}/gateway",
                "application": {"id": self.USER["id"], "flags": 0},
                **({"shard": payload["d"]["shard"]} if "shard" in payload["d"] else {})}})
            self.on_ready()
        return ws
