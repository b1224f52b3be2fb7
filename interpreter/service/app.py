"""The execution worker's HTTP API (aiohttp): a LocalExecutor served to the bot.

Routes (JSON in and out; see interpreter/service/wire.py for the shapes):
- POST /v1/run                       run once, or in the request's session
- POST /v1/sessions/open             {session_id, user_id} -> {info, created}
- GET  /v1/sessions?user_id=N        -> {sessions: [info]}
- GET  /v1/sessions/{id}             -> {info|null, continues, ending_note}
- POST /v1/sessions/{id}/end         {reason} -> {info|null}
- POST /v1/sessions/{id}/reset       {user_id} -> {info}
- POST /v1/sessions/sweep            -> {ended}
- GET  /v1/status                    the executor's status (packages, sandbox, load, sessions)
- POST /v1/warm-up                   -> {sandbox: layers}
- GET  /healthz                      200 while the process serves (no token: for the kubelet)
- GET  /readyz                       200 once warm and accepting; 503 before and while draining
- GET  /metrics                      Prometheus text format (needs the token like the API)

Every route but /healthz and /readyz needs `Authorization: Bearer <EXECUTOR_TOKEN>`,
compared in constant time. Bodies above EXECUTOR_MAX_REQUEST_MB are refused (413)
before they are read whole; malformed requests get 400 with the field named. Every
answer names this process (`X-Executor-Instance`), so the bot can tell a restarted
worker, which lost its sessions, from the one that opened them.

A worker keeps no audit (the bot that owns the store writes it). It logs each run it
executes, started and ended, under the run id the bot's audit record has (sent with the
request, interpreter/run_ids.py), so its log can be matched to that record.

Draining (SIGTERM): /readyz turns 503 and new requests get 503 {"kind": "draining"}
(the bot retries one-shot runs elsewhere); runs in flight finish, up to the longest
run timeout; then every session is ended with a reason and the sandboxes and their
cgroups are gone before the process exits.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import shutil
import socket
import time
import uuid
from importlib import metadata
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from interpreter.executor import LocalExecutor
from interpreter.result import RunResult
from interpreter.service.metrics import ServiceMetrics
from interpreter.service.wire import (
    INSTANCE_HEADER,
    WireError,
    request_from_wire,
    result_to_wire,
    session_info_to_wire,
)
from interpreter.sessions import EndReason
from interpreter.types import InterpreterError

log = logging.getLogger(__name__)

DRAIN_MARGIN_SECONDS = 15.0  # past the longest run timeout: result upload, sandbox teardown
SWEEP_SECONDS = 60.0
CGROUP_POLLS = 50  # of 0.1 s
WARM_UP_SECONDS = 300.0
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _version() -> str:
    try:
        return metadata.version("discord-code-interpreter")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


VERSION = _version()  # shown per worker in /status: a rolling upgrade half done is visible


def _error(status: int, message: str, kind: str = "bad_request") -> web.Response:
    return web.json_response({"error": message, "kind": kind}, status=status)


class ExecutionService:
    def __init__(self, settings: Any, executor: LocalExecutor | None = None) -> None:
        self.settings = settings
        self.executor = executor or LocalExecutor(settings)
        self.instance = uuid.uuid4().hex
        token = settings.executor_token.reveal() if settings.executor_token else ""
        self._expected = f"Bearer {token}".encode() if token else None
        self.metrics = ServiceMetrics()
        self.ready = False
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._incoming = Path(settings.data_dir) / "incoming"
        self._background: set[asyncio.Task] = set()

    # --- the application

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.executor_max_request_mb * 1024 * 1024,
                              middlewares=[self._errors, self._auth, self._track])
        app.add_routes([
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/metrics", self.metrics_text),
            web.post("/v1/run", self.run),
            web.post("/v1/sessions/open", self.open_session),
            web.post("/v1/sessions/sweep", self.sweep_sessions),
            web.get("/v1/sessions", self.list_sessions),
            web.get("/v1/sessions/{session_id}", self.get_session),
            web.post("/v1/sessions/{session_id}/end", self.end_session),
            web.post("/v1/sessions/{session_id}/reset", self.reset_session),
            web.get("/v1/status", self.status),
            web.post("/v1/warm-up", self.warm_up),
        ])
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except WireError as exc:
            response = _error(400, str(exc))
        except web.HTTPRequestEntityTooLarge:
            response = _error(413, f"request larger than {self.settings.executor_max_request_mb} MB", "too_large")
        except web.HTTPException as exc:  # 404, 405...
            response = _error(exc.status, exc.reason, "http")
        response.headers[INSTANCE_HEADER] = self.instance
        return response

    @web.middleware
    async def _auth(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        if self._expected is not None and request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization", "").encode("utf-8", "replace")
            if not hmac.compare_digest(given, self._expected):
                self.metrics.unauthorized.inc()
                return _error(401, "missing or wrong bearer token", "unauthorized")
        return await handler(request)

    @web.middleware
    async def _track(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """API calls in flight (draining waits for them); none are accepted while draining."""
        if not request.path.startswith("/v1/"):
            return await handler(request)
        if self.draining and request.path != "/v1/status":  # /status still shows the worker as draining
            return _error(503, "this worker is shutting down", "draining")
        self.in_flight += 1
        self._idle.clear()
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    # --- probes and metrics

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(self, request: web.Request) -> web.Response:
        if self.draining:
            return _error(503, "draining", "draining")
        if not self.ready:
            return _error(503, "warming up", "not_ready")
        return web.json_response({"ready": True})

    async def metrics_text(self, request: web.Request) -> web.Response:
        load = self.load()
        self.metrics.observe_state(queued=load["queued"], in_flight=load["runs_in_flight"],
                                   warm=load["warm_sandboxes"], sessions=load["sessions"], draining=self.draining)
        body, content_type = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    # --- the API

    async def _json(self, request: web.Request) -> Any:
        body = await request.read()  # bounded by client_max_size
        try:
            # Large bodies carry base64 files: parse them off the event loop.
            return json.loads(body) if len(body) < 64 * 1024 else await asyncio.to_thread(json.loads, body)
        except (ValueError, UnicodeDecodeError):
            raise WireError("the body is not valid JSON") from None

    async def run(self, request: web.Request) -> web.Response:
        obj = await self._json(request)
        files_dir = self._incoming / uuid.uuid4().hex
        began = time.monotonic()
        try:
            job = await asyncio.to_thread(request_from_wire, obj, files_dir,
                                          max_timeout=float(self.settings.max_run_timeout))
            # The bot's audit id (checked by request_from_wire): this worker's lines about the
            # run can be matched to the bot's audit record.
            run_id = job.run_id or "(no id)"
            log.info("run %s: started (%s, %d input files, %d packages)", run_id,
                     "in a session" if job.session_id else "one-shot", len(job.input_files), len(job.packages))
            try:
                result = await self.executor.run(job)
            except Exception:
                log.exception("run %s: stopped by an error of this worker", run_id)
                raise
        finally:
            await asyncio.to_thread(shutil.rmtree, files_dir, True)
        log.info("run %s: ended %s in %.2f s", run_id, _how_it_ended(result), time.monotonic() - began)
        self.metrics.record_run(result, time.monotonic() - began)
        payload = await asyncio.to_thread(lambda: json.dumps(result_to_wire(result)).encode())
        return web.Response(body=payload, content_type="application/json")

    async def open_session(self, request: web.Request) -> web.Response:
        obj = await self._json(request)
        session_id, user_id = _session_id(obj.get("session_id") if isinstance(obj, dict) else None), _user_id(obj)
        try:
            opened = await self.executor.open_session(session_id, user_id)
        except InterpreterError as exc:
            return _error(409, str(exc), "refused")
        return web.json_response({"info": session_info_to_wire(opened.info), "created": opened.created})

    async def list_sessions(self, request: web.Request) -> web.Response:
        raw = request.query.get("user_id")
        if raw is not None and not raw.isdigit():
            raise WireError("user_id: expected a number")
        sessions = await self.executor.list_sessions(int(raw) if raw is not None else None)
        return web.json_response({"sessions": [session_info_to_wire(info) for info in sessions]})

    async def get_session(self, request: web.Request) -> web.Response:
        session_id = _session_id(request.match_info["session_id"])
        info = await self.executor.get_session(session_id)
        return web.json_response({
            "info": session_info_to_wire(info),
            "continues": await self.executor.session_continues(session_id),
            "ending_note": await self.executor.session_ending_note(session_id),
        })

    async def end_session(self, request: web.Request) -> web.Response:
        session_id = _session_id(request.match_info["session_id"])
        obj = await self._json(request)
        try:
            reason = EndReason(obj.get("reason", EndReason.ENDED.value) if isinstance(obj, dict) else None)
        except ValueError:
            raise WireError("reason: unknown value") from None
        info = await self.executor.end_session(session_id, reason)
        return web.json_response({"info": session_info_to_wire(info)})

    async def reset_session(self, request: web.Request) -> web.Response:
        session_id = _session_id(request.match_info["session_id"])
        user_id = _user_id(await self._json(request))
        try:
            info = await self.executor.reset_session(session_id, user_id)
        except InterpreterError as exc:
            return _error(409, str(exc), "refused")
        return web.json_response({"info": session_info_to_wire(info)})

    async def sweep_sessions(self, request: web.Request) -> web.Response:
        return web.json_response({"ended": await self.executor.sweep_sessions()})

    def load(self) -> dict[str, int]:
        """This worker's load now, for /metrics and for the deployment-wide /status."""
        load = self.executor.runner.load()
        return {"queued": load["queued"], "runs_in_flight": load["in_flight"],
                "warm_sandboxes": sum(load["pool_idle"].values()),
                "sessions": len(self.executor.sessions.active())}

    async def status(self, request: web.Request) -> web.Response:
        status = await self.executor.status()
        status["worker"] = {"instance": self.instance, "name": socket.gethostname(), "version": VERSION,
                            "ready": self.ready, "draining": self.draining,
                            "requests_in_flight": self.in_flight, **self.load()}
        return web.json_response(status, dumps=lambda value: json.dumps(value, default=str))

    async def warm_up(self, request: web.Request) -> web.Response:
        return web.json_response({"sandbox": await self.executor.warm_up()}, dumps=lambda v: json.dumps(v, default=str))

    # --- lifetime

    async def start_background(self) -> None:
        """Warm up (then report ready) and sweep expired sessions every minute."""
        self._spawn(self._warm_then_ready())
        self._spawn(self._sweep_forever())

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _warm_then_ready(self) -> None:
        try:
            layers = await self.executor.warm_up()
            missing = [name for name in ("cgroups", "seccomp") if str(layers.get(name, "")).startswith("off")]
            if missing:
                log.warning("sandbox layers missing on this worker: %s", ", ".join(missing))
            async with asyncio.timeout(WARM_UP_SECONDS):  # ready means warm, unless warming is stuck
                await self.executor.wait_warm()
        except TimeoutError:
            log.warning("warm capacity not ready after %.0f s; accepting runs, which start cold meanwhile",
                        WARM_UP_SECONDS)
        except Exception:  # noqa: BLE001 - runs still work cold; status says why
            log.exception("warm-up failed; this worker serves runs cold")
        self.ready = True
        log.info("execution worker %s ready", self.instance)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                await self.executor.sweep_sessions()
            except Exception:  # noqa: BLE001
                log.exception("session sweep failed; will retry")

    async def drain(self) -> None:
        """Stop accepting, let requests in flight finish (bounded), end sessions, leave no sandbox."""
        if self.draining:
            return
        self.draining = True
        limit = float(self.settings.max_run_timeout) + DRAIN_MARGIN_SECONDS
        log.info("draining: %d requests in flight (waiting up to %.0f s)", self.in_flight, limit)
        try:
            await asyncio.wait_for(self._idle.wait(), limit)
        except TimeoutError:
            log.warning("draining: %d requests still in flight after %.0f s; stopping them", self.in_flight, limit)
        for task in list(self._background):
            task.cancel()
        await self.executor.close()  # sessions end with reason "shutdown"; warm sandboxes destroyed
        await self._remove_run_cgroups()
        log.info("drained: no sandbox left")

    async def _remove_run_cgroups(self) -> None:
        """A run's group can outlive its sandbox for a moment (the kernel still emptying it,
        so its removal failed): remove what this worker created before the process exits."""
        cgroups = self.executor.runner.cgroups
        for _ in range(CGROUP_POLLS):
            if not cgroups.remove_own_leftovers():
                return
            await asyncio.sleep(0.1)
        log.warning("draining: %d run cgroups could not be removed", len(cgroups.created))


def _how_it_ended(result: RunResult) -> str:
    """A run's end for the log: its exit cause, or "refused" (nothing of the member's output)."""
    return result.exit_cause.value if result.exit_cause is not None else "refused"


def _session_id(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise WireError("session_id: expected a non-empty string of at most 200 characters")
    return value


def _user_id(obj: Any) -> int:
    value = obj.get("user_id") if isinstance(obj, dict) else None
    if not isinstance(value, int) or isinstance(value, bool):
        raise WireError("user_id: expected an integer")
    return value
