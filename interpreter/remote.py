"""RemoteExecutor: the Executor seam over HTTP to execution workers (interpreter/service).

Configured by EXECUTOR_URLS (comma-separated base URLs; a name that resolves to several
addresses, such as a headless Kubernetes Service, counts as each address) and
EXECUTOR_TOKEN (sent as a bearer token).

Spreading: each run goes to the worker with the fewest runs in flight from this process
(ties: the one used longest ago). A worker that failed is avoided for a few seconds.

At-least-once: a one-shot run is a function of its inputs (code, files, packages), so
when a worker dies or refuses before answering (connection refused or reset, 502/503/504,
the answer cut off mid-way) the same run is sent once more to another worker. The
member gets exactly one answer; in the rare case the first worker had already started,
the run executed twice with no effect outside its own sandbox.

Sessions live on one worker. Their placement is a lease in the store
(`session:<id>`, holder: the worker's URL, data: the worker process's instance id), so
every bot process sharing the store sends a session's runs to the same worker. A
session run is never retried elsewhere (its variables exist only there): when its
worker is gone (unreachable, or restarted under the same address, which the instance id
reveals) the member is told the session ended and why, and their next run starts a
fresh session on a live worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import socket
import time
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp

from interpreter.executor import ExecutionRequest, SessionOpened
from interpreter.result import RunResult
from interpreter.service.wire import (
    INSTANCE_HEADER,
    WireError,
    request_to_wire,
    result_from_wire,
    session_info_from_wire,
)
from interpreter.sessions import EndReason, SessionInfo, SessionRefused
from interpreter.types import InterpreterError
from interpreter.worker_limits import LimitsWarning, lowest_limits

if TYPE_CHECKING:
    from config import Settings
    from interpreter.store import FileStore

log = logging.getLogger(__name__)

RESOLVE_EVERY_SECONDS = 15.0
AVOID_FAILED_SECONDS = 10.0
CALL_TIMEOUT_SECONDS = 30.0  # session calls, sweep
STATUS_TIMEOUT_SECONDS = 3.0  # /status shows a worker that does not answer as such, quickly
CONNECT_TIMEOUT_SECONDS = 5.0
RUN_MARGIN_SECONDS = 300.0  # past the run's own timeout: queueing on the worker, files both ways
LIMITS_EVERY_SECONDS = 60.0  # a worker reconfigured and restarted is noticed within this
LIMITS_RETRY_SECONDS = 5.0  # no worker answered: asked again no sooner than this
UNAVAILABLE_STATUSES = frozenset({502, 503, 504})

NO_WORKER = "The code runners are unavailable right now; please try again in a minute"
MISCONFIGURED = "The code runners refused this bot's credentials; an admin can see why in the log"
SESSION_GONE_NOTE = "Your session was ended because the machine running it stopped."
SESSION_GONE_FRESH = "Your session was ended because the machine running it stopped; this run started fresh."
SESSION_GONE = ("Your session ended: the machine running it stopped, and its variables are gone. "
                "Run again to start a fresh session.")


class WorkerUnavailable(Exception):
    """The worker died, refused or is draining before answering: another may take the request."""


class WorkerRefused(Exception):
    """The worker answered with a 4xx (our request or credentials are wrong): retrying will not help."""

    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


@dataclasses.dataclass
class Worker:
    url: str  # base URL as requests are sent (an address when the name resolved to several)
    in_flight: int = 0
    last_used: int = 0
    failed_at: float = 0.0

    def avoid(self, now: float) -> bool:
        return now - self.failed_at < AVOID_FAILED_SECONDS


@dataclasses.dataclass(frozen=True)
class Answer:
    body: Any
    instance: str


class RemoteExecutor:
    def __init__(self, settings: "Settings", store: "FileStore") -> None:
        self.settings = settings
        self.store = store
        token = settings.executor_token.reveal() if settings.executor_token else ""
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._max_answer = settings.executor_max_request_mb * 1024 * 1024
        self._workers: dict[str, Worker] = {}
        self._resolved_at = -RESOLVE_EVERY_SECONDS
        self._uses = itertools.count(1)
        self._http: aiohttp.ClientSession | None = None
        self._http_loop: asyncio.AbstractEventLoop | None = None
        self.retried = 0  # runs answered by a second worker after the first failed
        self._limits: dict[str, float] | None = None
        self._ask_limits_at = float("-inf")  # when the workers' limits are asked again
        self._limits_warning = LimitsWarning()
        self._learning: asyncio.Future[dict[str, float] | None] | None = None

    # ------------------------------------------------------------------ workers

    async def workers(self) -> list[Worker]:
        """The workers EXECUTOR_URLS names now (names re-resolved every RESOLVE_EVERY_SECONDS)."""
        if time.monotonic() - self._resolved_at >= RESOLVE_EVERY_SECONDS:
            urls: list[str] = []
            for base in self.settings.executor_urls:
                urls.extend(await self._expand(base))
            self._workers = {url: self._workers.get(url) or Worker(url) for url in dict.fromkeys(urls)}
            self._resolved_at = time.monotonic()
        return list(self._workers.values())

    @staticmethod
    async def _expand(base: str) -> list[str]:
        parts = urlsplit(base)
        host = parts.hostname or ""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port, type=socket.SOCK_STREAM)
        except OSError:
            return [base]  # unresolvable now: keep it, connecting will fail and be retried elsewhere
        # One family: a name such as localhost gives ::1 and 127.0.0.1 for one and the same
        # process, and a pod has one address per family.
        family = socket.AF_INET if any(info[0] == socket.AF_INET for info in infos) else socket.AF_INET6
        addresses = list(dict.fromkeys(info[4][0] for info in infos if info[0] == family))
        if len(addresses) <= 1:
            return [base]
        port = f":{parts.port}" if parts.port else ""
        return [urlunsplit((parts.scheme, (f"[{a}]" if ":" in a else a) + port, parts.path, "", ""))
                for a in addresses]

    async def _pick(self, exclude: set[str]) -> Worker | None:
        now = time.monotonic()
        candidates = [w for w in await self.workers() if w.url not in exclude]
        healthy = [w for w in candidates if not w.avoid(now)] or candidates
        if not healthy:
            return None
        return min(healthy, key=lambda w: (w.in_flight, w.last_used))

    async def _worker(self, url: str) -> Worker | None:
        for worker in await self.workers():
            if worker.url == url:
                return worker
        return None

    # ------------------------------------------------------------------ HTTP

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._http is None or self._http.closed or self._http_loop is not loop:
            self._http = aiohttp.ClientSession(headers=self._headers)
            self._http_loop = loop
        return self._http

    async def _call(self, worker: Worker, method: str, path: str, body: bytes | None = None, *,
                    timeout: float = CALL_TIMEOUT_SECONDS, params: dict | None = None) -> Answer:
        worker.in_flight += 1
        worker.last_used = next(self._uses)
        try:
            client_timeout = aiohttp.ClientTimeout(total=timeout, connect=CONNECT_TIMEOUT_SECONDS)
            async with self._session().request(method, worker.url + path, data=body, params=params,
                                               timeout=client_timeout,
                                               headers={"Content-Type": "application/json"} if body else None) as resp:
                raw = await self._read_bounded(resp)
                instance = resp.headers.get(INSTANCE_HEADER, "")
                status = resp.status
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            # refused, reset, or the answer cut off mid-way: the worker is gone or going
            worker.failed_at = time.monotonic()
            raise WorkerUnavailable(f"{worker.url}: {type(exc).__name__}: {exc}") from None
        finally:
            worker.in_flight -= 1
        if status in UNAVAILABLE_STATUSES:
            worker.failed_at = time.monotonic()
            raise WorkerUnavailable(f"{worker.url}: HTTP {status}")
        parsed = await self._parse(raw, worker)
        if status >= 400:
            message = parsed.get("error", "") if isinstance(parsed, dict) else ""
            kind = parsed.get("kind", "") if isinstance(parsed, dict) else ""
            if status == 401:
                log.error("execution worker %s refused our token: EXECUTOR_TOKEN differs between bot and worker",
                          worker.url)
            raise WorkerRefused(status, str(message)[:500], str(kind))
        return Answer(parsed, instance)

    async def _read_bounded(self, resp: aiohttp.ClientResponse) -> bytes:
        chunks, size = [], 0
        async for chunk in resp.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > self._max_answer:
                raise aiohttp.ClientPayloadError(f"answer larger than {self.settings.executor_max_request_mb} MB")
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    async def _parse(raw: bytes, worker: Worker) -> Any:
        try:
            return json.loads(raw) if len(raw) < 64 * 1024 else await asyncio.to_thread(json.loads, raw)
        except ValueError:
            worker.failed_at = time.monotonic()
            raise WorkerUnavailable(f"{worker.url}: the answer is not JSON") from None

    # ------------------------------------------------------------------ runs

    async def run(self, request: ExecutionRequest) -> RunResult:
        try:
            body = await asyncio.to_thread(lambda: json.dumps(request_to_wire(request)).encode())
        except OSError:
            log.exception("could not read a run's input files")
            return RunResult.refusal("One of the files could not be read; please try again")
        timeout = request.timeout + RUN_MARGIN_SECONDS + (self.settings.install_timeout if request.packages else 0)
        if request.session_id is not None:
            return await self._run_in_session(request, body, timeout)
        tried: set[str] = set()
        # A retry is still the same run: its audit record (one run id, one record) is written
        # by the engine on this side, which owns the store; workers keep none, but log each
        # run under the id sent with it, and so does this side when a worker fails it.
        for attempt in range(2):  # the first worker, then once more on another
            worker = await self._pick(tried)
            if worker is None:
                break
            tried.add(worker.url)
            try:
                answer = await self._call(worker, "POST", "/v1/run", body, timeout=timeout)
                result = self._result(answer)
            except WorkerUnavailable as exc:
                log.warning("run %s not answered (%s)%s", request.run_id, exc,
                            "; sending it to another worker" if attempt == 0 else "")
                continue
            except WorkerRefused as exc:
                return self._refused(exc, request.run_id)
            except asyncio.TimeoutError:
                log.error("execution worker %s gave no answer to run %s within %.0f s", worker.url, request.run_id,
                          timeout)
                return RunResult.refusal("The code runner gave no answer in time; please try again")
            self.retried += attempt
            return result
        return RunResult.refusal(NO_WORKER)

    @staticmethod
    def _result(answer: Answer) -> RunResult:
        try:
            return result_from_wire(answer.body)
        except WireError as exc:
            raise WorkerUnavailable(f"malformed answer: {exc}") from None

    @staticmethod
    def _refused(exc: WorkerRefused, run_id: str | None) -> RunResult:
        if exc.status == 401:
            return RunResult.refusal(MISCONFIGURED)
        if exc.status == 413:
            return RunResult.refusal("The files for this run are too large to send to the code runners")
        log.error("execution worker refused run %s: HTTP %s %s", run_id, exc.status, exc)
        return RunResult.refusal(f"The code runner refused this run: {exc}")

    # ------------------------------------------------------------------ session placement

    def _now(self) -> datetime:
        return datetime.now(timezone.utc)

    def _lease_until(self) -> datetime:
        return self._now() + timedelta(minutes=self.settings.session_max_age_minutes) + timedelta(minutes=1)

    async def _placement(self, session_id: str) -> tuple[Worker | None, str]:
        """The live worker holding the session (None if none yet), and the instance it had."""
        lease = await self.store.read_lease(_key(session_id), self._now())
        if lease is None or lease.data.get("gone"):
            return None, ""
        return await self._worker(lease.holder), str(lease.data.get("instance") or "")

    async def _place(self, session_id: str) -> tuple[Worker, str, bool]:
        """Where the session's next call goes: (worker, instance expected or '', whether an
        earlier placement's worker is gone).

        A session without a live placement is placed on the least busy worker; when
        another bot process places it at the same moment, the store's lease decides.
        """
        key = _key(session_id)
        lease = await self.store.read_lease(key, self._now())
        if lease is not None and not lease.data.get("gone"):
            worker = await self._worker(lease.holder)
            if worker is not None:
                return worker, str(lease.data.get("instance") or ""), False
        if lease is not None:  # its worker is gone (or no longer configured)
            await self.store.release_lease(key, lease.holder)
        worker = await self._pick(set())
        if worker is None:
            raise WorkerUnavailable("no execution worker configured")
        taken = await self.store.acquire_lease(key, worker.url, self._lease_until(), self._now(), {"instance": ""})
        placed = await self._worker(taken.holder) or worker
        return placed, str(taken.data.get("instance") or ""), lease is not None

    async def _pin(self, session_id: str, worker: Worker, instance: str) -> None:
        await self.store.acquire_lease(_key(session_id), worker.url, self._lease_until(), self._now(),
                                       {"instance": instance})

    async def _mark_gone(self, session_id: str, worker: Worker) -> None:
        """Remember for every bot process that the session's worker is gone: its next run
        starts fresh elsewhere and says why."""
        await self.store.acquire_lease(_key(session_id), worker.url, self._lease_until(), self._now(), {"gone": True})

    async def _run_in_session(self, request: ExecutionRequest, body: bytes, timeout: float) -> RunResult:
        session_id = request.session_id
        try:
            worker, instance, gone_before = await self._place(session_id)
        except WorkerUnavailable:
            return RunResult.refusal(NO_WORKER)
        try:
            answer = await self._call(worker, "POST", "/v1/run", body, timeout=timeout)
            result = self._result(answer)
        except WorkerUnavailable as exc:
            log.warning("session %s: its worker is gone (%s) during run %s", session_id, exc, request.run_id)
            await self._mark_gone(session_id, worker)
            return RunResult.refusal(SESSION_GONE)
        except WorkerRefused as exc:
            return self._refused(exc, request.run_id)
        except asyncio.TimeoutError:
            return RunResult.refusal("The code runner gave no answer in time; please try again")
        restarted = bool(instance) and answer.instance != instance  # same address, new process: sessions lost
        session = result.session
        if session is not None and session.started and not session.note and (gone_before or restarted):
            result = result.replace(session=dataclasses.replace(session, note=SESSION_GONE_FRESH))
        if result.session is not None and result.session.active:
            await self._pin(session_id, worker, answer.instance)
        elif result.session is not None:
            await self.store.release_lease(_key(session_id), worker.url)
        return result

    # ------------------------------------------------------------------ sessions

    async def open_session(self, session_id: str, user_id: int) -> SessionOpened:
        try:
            worker, _, _ = await self._place(session_id)
            answer = await self._call(worker, "POST", "/v1/sessions/open",
                                      _json({"session_id": session_id, "user_id": user_id}))
        except WorkerUnavailable:
            raise InterpreterError(NO_WORKER) from None
        except WorkerRefused as exc:
            raise SessionRefused(str(exc) if exc.kind == "refused" else MISCONFIGURED) from None
        await self._pin(session_id, worker, answer.instance)
        return SessionOpened(session_info_from_wire(answer.body.get("info")), bool(answer.body.get("created")))

    async def _session_state(self, session_id: str) -> dict | None:
        """The worker's view of the session ({info, continues, ending_note}), or None when
        no live worker holds it."""
        worker, instance = await self._placement(session_id)
        if worker is None:
            return None
        try:
            answer = await self._call(worker, "GET", f"/v1/sessions/{quote(session_id, safe='')}")
        except (WorkerUnavailable, WorkerRefused):
            return None
        if instance and answer.instance != instance:
            return None  # restarted: the session it held is gone
        return answer.body if isinstance(answer.body, dict) else None

    async def _gone(self, session_id: str) -> bool:
        lease = await self.store.read_lease(_key(session_id), self._now())
        return lease is not None and (bool(lease.data.get("gone")) or await self._session_state(session_id) is None)

    async def get_session(self, session_id: str) -> SessionInfo | None:
        state = await self._session_state(session_id)
        return session_info_from_wire(state.get("info")) if state else None

    async def session_continues(self, session_id: str) -> bool:
        state = await self._session_state(session_id)
        if state is not None:
            return bool(state.get("continues"))
        return await self._gone(session_id)

    async def session_ending_note(self, session_id: str) -> str:
        state = await self._session_state(session_id)
        if state is not None:
            return str(state.get("ending_note") or "")
        return SESSION_GONE_NOTE if await self._gone(session_id) else ""

    async def end_session(self, session_id: str, reason: EndReason = EndReason.ENDED) -> SessionInfo | None:
        lease = await self.store.read_lease(_key(session_id), self._now())
        if lease is None:
            return None
        await self.store.release_lease(_key(session_id), lease.holder)
        worker = None if lease.data.get("gone") else await self._worker(lease.holder)
        if worker is None:
            return None
        try:
            answer = await self._call(worker, "POST", f"/v1/sessions/{quote(session_id, safe='')}/end",
                                      _json({"reason": reason.value}))
        except (WorkerUnavailable, WorkerRefused):
            return None
        return session_info_from_wire(answer.body.get("info"))

    async def reset_session(self, session_id: str, user_id: int) -> SessionInfo:
        await self.end_session(session_id, EndReason.RESET)
        return (await self.open_session(session_id, user_id)).info

    async def _every_worker(self, method: str, path: str, body: bytes | None = None, params: dict | None = None,
                            timeout: float = CALL_TIMEOUT_SECONDS) -> list[tuple[Worker, Answer | Exception]]:
        workers = await self.workers()

        async def one(worker: Worker) -> Answer | Exception:
            try:
                return await self._call(worker, method, path, body, params=params, timeout=timeout)
            except (WorkerUnavailable, WorkerRefused, asyncio.TimeoutError) as exc:
                return exc

        return list(zip(workers, await asyncio.gather(*(one(w) for w in workers))))

    async def list_sessions(self, user_id: int | None = None) -> list[SessionInfo]:
        params = {"user_id": str(user_id)} if user_id is not None else None
        sessions = []
        for _, answer in await self._every_worker("GET", "/v1/sessions", params=params):
            if isinstance(answer, Answer):
                sessions.extend(session_info_from_wire(info) for info in answer.body.get("sessions") or [])
        return sessions

    async def sweep_sessions(self) -> int:
        ended = 0
        for _, answer in await self._every_worker("POST", "/v1/sessions/sweep", b"{}"):
            if isinstance(answer, Answer):
                ended += int(answer.body.get("ended") or 0)
        return ended

    # ------------------------------------------------------------------ status, warm-up, close

    async def status(self) -> dict:
        """The first answering worker's status, with load and sessions summed over all of them
        and one line per worker under "executors"."""
        status: dict[str, Any] = {}
        runs = {"in_flight": 0, "queued": 0, "completed": 0, "max_concurrent": 0}
        sessions: dict[str, Any] = {"active": 0, "max": 0, "sessions": []}
        executors = []
        for worker, answer in await self._every_worker("GET", "/v1/status", timeout=STATUS_TIMEOUT_SECONDS):
            if not isinstance(answer, Answer) or not isinstance(answer.body, dict):
                executors.append({"url": worker.url, "reachable": False, "error": str(answer)[:200]})
                continue
            body = answer.body
            if not status:
                status = {key: value for key, value in body.items() if key not in ("runs", "sessions", "worker")}
            for key in runs:
                runs[key] += int((body.get("runs") or {}).get(key) or 0)
            theirs = body.get("sessions") or {}
            sessions["active"] += int(theirs.get("active") or 0)
            sessions["max"] += int(theirs.get("max") or 0)
            sessions["sessions"].extend(theirs.get("sessions") or [])
            for key in ("per_member", "idle_minutes", "max_age_minutes"):
                sessions.setdefault(key, theirs.get(key))
            executors.append({"url": worker.url, "reachable": True, **(body.get("worker") or {})})
        if not status:
            status["sandbox"] = {"available": False, "unavailable_reason": NO_WORKER}
        status["runs"] = {**runs, "retried_elsewhere": self.retried}
        status["sessions"] = sessions
        status["executors"] = executors
        return status

    async def run_limits(self) -> dict[str, float] | None:
        """The lowest of each per-run limit over the workers answering /v1/status (a run may go
        to any of them); None while none has answered yet.

        A run never waits for a refresh: once limits are known, a stale answer is returned
        while the workers are asked again in the background (every LIMITS_EVERY_SECONDS), so
        a worker that hangs on /status costs no run its STATUS_TIMEOUT_SECONDS. Only the
        first question, with nothing known, is awaited; when no worker answers it, it is
        asked again no sooner than LIMITS_RETRY_SECONDS later."""
        if time.monotonic() >= self._ask_limits_at:
            # One question at a time: runs arriving together share it rather than each
            # asking every worker (which would also count as load in _pick).
            learning = self._learning
            if learning is None or learning.done() or learning.get_loop() is not asyncio.get_running_loop():
                learning = self._learning = asyncio.ensure_future(self._learn_limits())
            if self._limits is None:
                return await asyncio.shield(learning)
        return self._limits

    async def _learn_limits(self) -> dict[str, float] | None:
        try:
            answers = await self._every_worker("GET", "/v1/status", timeout=STATUS_TIMEOUT_SECONDS)
            limits = lowest_limits([answer.body for _, answer in answers if isinstance(answer, Answer)])
        except Exception:  # noqa: BLE001 - often in the background: a run goes on with what is known
            log.warning("could not ask the execution workers for their limits", exc_info=True)
            limits = None
        if not limits:
            self._ask_limits_at = time.monotonic() + LIMITS_RETRY_SECONDS
            return self._limits
        self._limits, self._ask_limits_at = limits, time.monotonic() + LIMITS_EVERY_SECONDS
        self._limits_warning.check(self.settings, limits)
        return limits

    async def warm_up(self) -> dict:
        layers: dict = {}
        for worker, answer in await self._every_worker("POST", "/v1/warm-up", b"{}"):
            if isinstance(answer, Answer) and not layers:
                layers = dict(answer.body.get("sandbox") or {})
            elif not isinstance(answer, Answer):
                log.warning("execution worker %s did not warm up: %s", worker.url, answer)
        return layers or {"available": False, "unavailable_reason": NO_WORKER}

    async def close(self) -> None:
        """Sessions stay on their workers (other bot processes may use them); only our connections close."""
        http, self._http = self._http, None
        if http is not None and not http.closed and self._http_loop is asyncio.get_running_loop():
            await http.close()


def _key(session_id: str) -> str:
    return f"session:{session_id}"


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()
