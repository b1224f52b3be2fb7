"""A scripted OpenAI-compatible Chat Completions server on loopback (aiohttp).

Tests give it the replies to send, in order; it records every request (headers and
JSON body) so a test can check what the model was shown. The bot talks to it through
the real `openai` SDK, exactly as it would talk to OpenAI or a local Ollama/vLLM/
llama.cpp server: only the model is scripted.

    server = await ScriptedModel.start([tool_call("print(1/0)"), tool_call("print(2)"), answer("It is 2.")])
    settings = settings.replace(openai_base_url=server.url, openai_api_key=Secret("sk-test"))
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

_ids = itertools.count(1)

Reply = Callable[[dict[str, Any]], web.StreamResponse] | dict[str, Any]


def completion(message: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{next(_ids)}",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "scripted",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def tool_call(code: str, *, packages: list[str] | None = None, text: str | None = None,
              raw_arguments: str | None = None, name: str = "run_python") -> dict[str, Any]:
    """A reply that calls the run_python tool with `code`."""
    arguments = raw_arguments if raw_arguments is not None else json.dumps(
        {"code": code, **({"packages": packages} if packages else {})})
    call = {"id": f"call_{next(_ids)}", "type": "function", "function": {"name": name, "arguments": arguments}}
    return completion({"content": text, "tool_calls": [call]}, "tool_calls")


def answer(text: str) -> dict[str, Any]:
    return completion({"content": text})


def refusal(text: str) -> dict[str, Any]:
    return completion({"content": None, "refusal": text})


def status(code: int, error_code: str = "", message: str = "") -> Callable[[dict[str, Any]], web.Response]:
    """An HTTP error reply, shaped like OpenAI's error bodies."""
    def reply(_: dict[str, Any]) -> web.Response:
        body = {"error": {"message": message or f"scripted {code}", "type": error_code or "error", "code": error_code or None}}
        return web.json_response(body, status=code)
    return reply


def garbage(body: str = "<html>502 Bad Gateway</html>", content_type: str = "application/json") -> Callable[[dict[str, Any]], web.Response]:
    def reply(_: dict[str, Any]) -> web.Response:
        return web.Response(text=body, content_type=content_type)
    return reply


def hang() -> Callable[[dict[str, Any]], Any]:
    """A reply that never comes (a server that accepted the request and stalls)."""
    async def reply(_: dict[str, Any]) -> web.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")
    return reply


@dataclasses.dataclass
class Received:
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages") or []

    @property
    def last_tool_result(self) -> str:
        tools = [m for m in self.messages if m.get("role") == "tool"]
        assert tools, f"no tool result in {self.messages}"
        return tools[-1]["content"]


class ScriptedModel:
    """Serves `script` replies in order; after the script, `then` (default: an answer)."""

    def __init__(self, script: list[Reply], then: Reply | None = None) -> None:
        self.script = list(script)
        self.then = then
        self.received: list[Received] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    @classmethod
    async def start(cls, script: list[Reply], then: Reply | None = None) -> "ScriptedModel":
        server = cls(script, then)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", server._handle)
        server._runner = web.AppRunner(app, access_log=None)
        await server._runner.setup()
        site = web.TCPSite(server._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        server.url = f"http://127.0.0.1:{port}/v1"
        return server

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received.append(Received(dict(request.headers), body))
        if self.script:
            reply = self.script.pop(0)
        elif self.then is not None:
            reply = self.then
        else:
            raise AssertionError(f"the model was asked more often than scripted ({len(self.received)} requests)")
        if callable(reply):
            response = reply(body)
            return await response if inspect.isawaitable(response) else response
        return web.json_response(reply)


@pytest.fixture
async def model():
    """A scripted model server for one test (set `.script` / `.then`); tests/conftest.py registers it."""
    server = await ScriptedModel.start([])
    yield server
    await server.close()
