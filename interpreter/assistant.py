"""/ask's engine: a model answers a member's question by running Python in their sandbox.

Discord-free. One question is a loop over an OpenAI-compatible Chat Completions
endpoint (OpenAI itself, or a local Ollama, vLLM or llama.cpp server), with one tool,
`run_python`. Each tool call is handed to the caller's `RunCode`, which runs it the
way /run does (access rules, fair queue, sandbox limits, audit); the run's output and
errors go back to the model, truncated, and it may try again until it answers in
words or the step limit (ASK_MAX_STEPS model calls) is reached. On the last step the
model is told to answer without tools, so a model that keeps calling tools ends with
what it has instead of looping.

Replies are not streamed: Discord allows only a few message edits per second, and the
words come after the runs anyway; the member sees each stage instead (`Progress`).

What can go wrong ends in an `AskOutcome`, never in an exception: endpoint down,
429, key refused, a reply that is not a chat completion, a refusal, the wall-clock
limit (ASK_TIMEOUT_SECONDS). Every failure costs at most the limits.

The API key lives in this module's client only: it is never put in a message to the
model, in a run (the sandbox's environment is empty anyway) or in a log line; as a
last line of defence, text that goes to the model or comes back from it has the key
replaced, in case it was pasted somewhere it should not have been.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from interpreter.result import RunResult
from interpreter.types import GeneratedFile

log = logging.getLogger(__name__)

TOOL_NAME = "run_python"
MAX_CODE_CHARS = 100_000  # as /run
OUTPUT_HEAD_CHARS = 2500  # of a run's output the model sees: the start...
OUTPUT_TAIL_CHARS = 1000  # ... and the end, where totals usually are
ERROR_TAIL_CHARS = 2500  # tracebacks matter at their end
MAX_ANSWER_CHARS = 20_000  # of a reply's words; an endpoint that ignores max_tokens cannot flood Discord
MAX_CALLS_PER_REPLY = 5  # tool calls read from one reply; more are dropped (each run is also a step)
HISTORY_CHARS = 60_000  # a conversation kept for follow-ups; older turns are dropped first
REQUEST_TIMEOUT_CAP = 120.0  # one model request never waits longer than this
NO_KEY_PLACEHOLDER = "not-needed"  # local servers accept any key; the SDK insists on one
HIDDEN = "[hidden]"
OPENAI_URL = "https://api.openai.com/v1"

TOOL = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": ("Run Python 3 code in the member's sandbox and get back its printed output, its error "
                        "(if any) and the files it produced. Print what you need to read."),
        "parameters": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "description": "The Python code to run."},
                "packages": {"type": "array", "items": {"type": "string"},
                             "description": "Approved packages to install first (only when not ready to import)."},
            },
            "required": ["code"],
        },
    },
}


class AskOutcome(enum.Enum):
    """How a question ended. Only ANSWERED carries the model's answer."""

    ANSWERED = "answered"
    STEP_LIMIT = "step_limit"  # the model still wanted to run code after the last step
    TIMEOUT = "timeout"  # ASK_TIMEOUT_SECONDS passed
    REFUSED = "refused"  # the model declined (refusal field, content filter)
    GARBAGE = "garbage"  # the endpoint's reply was not a usable chat completion
    ENDPOINT_DOWN = "endpoint_down"  # connection refused, DNS, request timeout
    RATE_LIMITED = "rate_limited"  # HTTP 429
    AUTH = "auth"  # HTTP 401/403: the key was refused
    ENDPOINT_ERROR = "endpoint_error"  # any other HTTP error (404 model not found, 400, 5xx)
    RUN_REFUSED = "run_refused"  # a run could not start (hourly limit, queue full): `detail` says why


# What an HTTP error most likely means, for the member and the admin they tell.
STATUS_HINTS = {
    400: "HTTP 400: the request was refused; the model may not support tool calls, or the conversation got too long",
    404: "HTTP 404: the model name (OPENAI_MODEL) or the URL (OPENAI_BASE_URL) may be wrong",
}

# Outcomes where the endpoint never did any work for this question: the member's
# daily budget is given back.
NOT_CHARGED = frozenset({AskOutcome.ENDPOINT_DOWN, AskOutcome.RATE_LIMITED, AskOutcome.AUTH})


class RunNotStarted(Exception):
    """Raised by a RunCode when the run may not start (limits, queue). The message is for the member."""


@dataclasses.dataclass(frozen=True)
class CodeRun:
    """One run the model asked for, as the member and the model see it."""

    step: int
    code: str
    success: bool
    output: str
    error: str
    files: tuple[GeneratedFile, ...] = ()
    exit_cause: str = ""

    @classmethod
    def from_result(cls, step: int, code: str, result: "RunResult") -> "CodeRun":
        cause = "refused" if result.exit_cause is None else result.exit_cause.value
        return cls(step=step, code=code, success=result.success, output=result.output, error=result.error,
                   files=tuple(result.generated_files), exit_cause=cause)


RunCode = Callable[[str, tuple[str, ...]], Awaitable[RunResult]]
"""Runs (code, packages) for the member the way /run does; returns the run's result or
raises RunNotStarted."""


class Stage(enum.Enum):
    THINKING = "thinking"  # waiting for the model
    RUNNING = "running"  # a run is queued or executing
    RETRYING = "retrying"  # the last run failed; the model is told


@dataclasses.dataclass(frozen=True)
class Progress:
    stage: Stage
    step: int  # model calls made so far, 1-based while thinking
    max_steps: int
    runs: int  # runs made so far


ProgressCallback = Callable[[Progress], Awaitable[None]]


@dataclasses.dataclass
class Conversation:
    """What the model has seen of one member's conversation (not the system prompt, which
    is rebuilt per question so it lists the files as they are now)."""

    member_id: int
    session_id: str | None = None  # runs continue this session (variables persist), when sessions are on
    messages: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def trim(self, limit: int = HISTORY_CHARS) -> None:
        """Drop the oldest whole turns (a question and everything after it) while the
        history is over `limit` characters; the latest turn always stays."""
        while _size(self.messages) > limit:
            starts = [i for i, m in enumerate(self.messages) if m.get("role") == "user"]
            if len(starts) < 2:
                return
            del self.messages[: starts[1]]


def _size(messages: list[dict[str, Any]]) -> int:
    return sum(len(json.dumps(m, ensure_ascii=False, default=str)) for m in messages)


@dataclasses.dataclass(frozen=True)
class Answer:
    outcome: AskOutcome
    text: str = ""  # the model's words (ANSWERED), or its refusal (REFUSED)
    runs: tuple[CodeRun, ...] = ()
    steps: int = 0  # model calls made
    detail: str = ""  # safe detail for the member: HTTP status, a run refusal's reason

    @property
    def final_run(self) -> CodeRun | None:
        """The run behind the answer: the last that succeeded, else the last one."""
        for run in reversed(self.runs):
            if run.success:
                return run
        return self.runs[-1] if self.runs else None

    @property
    def files(self) -> list[GeneratedFile]:
        """Files of the successful runs; a later file of the same name replaces an earlier one."""
        latest: dict[str, GeneratedFile] = {}
        for run in self.runs:
            if run.success:
                for file in run.files:
                    latest.pop(file.filename, None)
                    latest[file.filename] = file
        return list(latest.values())


@dataclasses.dataclass(frozen=True)
class MemberFile:
    """One of the member's files, as the system prompt describes it."""

    file_id: str
    filename: str
    file_type: str
    size: int
    shape: str = ""  # e.g. "120 rows × 4 columns: region (object), sales (int64)"


@dataclasses.dataclass(frozen=True)
class SandboxFacts:
    timeout_seconds: int
    memory_mb: int
    ready_packages: tuple[str, ...]
    installable_packages: tuple[str, ...]
    stateful: bool  # runs of one conversation share variables (a session)


def sandbox_facts(settings: Any, approved: Any, *, stateful: bool) -> SandboxFacts:
    """The facts the system prompt states, from the settings and the approved package list."""
    ready = tuple(settings.sandbox_base_packages)
    others = sorted(name for names in approved.by_category().values() for name in names if name not in ready)
    return SandboxFacts(timeout_seconds=int(settings.run_timeout), memory_mb=int(settings.run_memory_mb),
                        ready_packages=ready, installable_packages=tuple(others), stateful=stateful)


def system_prompt(facts: SandboxFacts, files: Sequence[MemberFile]) -> str:
    """The short description of the sandbox the model works in."""
    lines = [
        "You are a data analyst in a Discord server. Answer the member's question by running Python with the "
        f"`{TOOL_NAME}` tool, then reply in plain words: short, Discord markdown, the numbers that answer the question. "
        "Do not paste the code in your reply (the member can see it) and never invent numbers: use what the runs printed.",
        f"The sandbox: Python 3, no network, {facts.timeout_seconds} s and {facts.memory_mb} MB per run.",
        "Ready to import: " + (", ".join(facts.ready_packages) or "the standard library only") + ".",
    ]
    if facts.installable_packages:
        shown = ", ".join(facts.installable_packages[:60])
        lines.append(f"Other approved packages install when listed in the tool's `packages`: {shown}.")
    lines.append("Charts: draw with matplotlib or seaborn; every open figure comes back to the member as a PNG "
                 "(or save it yourself: plt.savefig('name.png')). Files you write to the current directory "
                 "(CSV, Excel, HTML...) are attached too. Plotly figures (fig.show()) come back as "
                 "interactive HTML, and as a PNG where the server can render one.")
    if facts.stateful:
        lines.append("Runs of this conversation share one Python session: variables and imports persist.")
    else:
        lines.append("Each run starts fresh: load the data again in every run.")
    if files:
        lines.append("The member's files (load one with `df = load_file('<id>')`: tables become pandas DataFrames, "
                     "text a str, other files bytes; FILES maps ids to paths):")
        for item in files:
            described = f"- `{item.file_id}` {item.filename} ({item.file_type}, {item.size:,} bytes)"
            lines.append(described + (f": {item.shape}" if item.shape else ""))
    else:
        lines.append("The member has no uploaded files; they can add one with the `file` option of /ask or /upload.")
    lines.append("If a run fails, read the error, fix the code and run it again.")
    return "\n".join(lines)


def truncate_middle(text: str, head: int = OUTPUT_HEAD_CHARS, tail: int = OUTPUT_TAIL_CHARS) -> str:
    if len(text) <= head + tail:
        return text
    cut = len(text) - head - tail
    return f"{text[:head]}\n[… {cut:,} characters cut …]\n{text[-tail:]}"


def truncate_start(text: str, keep: int = ERROR_TAIL_CHARS) -> str:
    if len(text) <= keep:
        return text
    return f"[… {len(text) - keep:,} characters cut …]\n{text[-keep:]}"


def tool_result_text(run: CodeRun) -> str:
    """What the model reads of a run: status, output, error, files (bounded)."""
    status = "succeeded" if run.success else f"failed ({run.exit_cause or 'error'})"
    parts = [f"The run {status}."]
    parts.append("Output:\n" + (truncate_middle(run.output) if run.output.strip() else "(nothing printed)"))
    if run.error.strip():
        parts.append("Error:\n" + truncate_start(run.error))
    if run.files:
        listed = ", ".join(f"{f.filename} ({f.type}, {f.size:,} bytes)" for f in run.files[:20])
        parts.append(f"Files produced (the member will get them): {listed}")
    return "\n".join(parts)


class _Scrubber:
    """Replaces the API key in any text, so it cannot travel even if it was pasted somewhere."""

    def __init__(self, secret: str) -> None:
        self.secret = secret if len(secret) >= 8 else ""  # a short placeholder key is not worth hiding

    def __call__(self, text: str) -> str:
        return text.replace(self.secret, HIDDEN) if self.secret and self.secret in text else text


@dataclasses.dataclass(frozen=True)
class ModelTurn:
    """One model reply, checked: text, tool calls, or neither (then `problem` says why)."""

    text: str = ""
    tool_calls: tuple[dict[str, Any], ...] = ()
    refusal: str = ""
    problem: str = ""


def read_turn(response: Any) -> ModelTurn:
    """Check a chat completion defensively: local servers and proxies send all sorts."""
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list) or not choices:
        return ModelTurn(problem="no choices in the reply")
    choice = choices[0]
    message = getattr(choice, "message", None)
    if message is None:
        return ModelTurn(problem="no message in the reply")
    refusal = getattr(message, "refusal", None)
    if isinstance(refusal, str) and refusal.strip():
        return ModelTurn(refusal=refusal.strip())
    if getattr(choice, "finish_reason", None) == "content_filter":
        return ModelTurn(refusal="the endpoint's content filter stopped the reply")
    calls = []
    for index, call in enumerate((getattr(message, "tool_calls", None) or ())[:MAX_CALLS_PER_REPLY]):
        function = getattr(call, "function", None)
        arguments = getattr(function, "arguments", "") or ""
        if isinstance(arguments, dict):  # some local servers send an object, not a JSON string
            arguments = json.dumps(arguments)
        calls.append({
            "id": str(getattr(call, "id", None) or f"call_{index}")[:100],
            "type": "function",
            "function": {"name": str(getattr(function, "name", "") or ""), "arguments": str(arguments)},
        })
    content = getattr(message, "content", None)
    text = content.strip()[:MAX_ANSWER_CHARS] if isinstance(content, str) else ""
    if not calls and not text:
        return ModelTurn(problem="an empty reply")
    return ModelTurn(text=text, tool_calls=tuple(calls))


def parse_tool_arguments(call: dict[str, Any]) -> tuple[str, tuple[str, ...]] | str:
    """(code, packages) from a tool call, or what is wrong with it (told to the model)."""
    function = call["function"]
    if function["name"] != TOOL_NAME:
        return f"There is no tool named {function['name'][:60]!r}; the only tool is {TOOL_NAME}."
    try:
        arguments = json.loads(function["arguments"] or "{}")
    except ValueError:
        return "The tool arguments were not valid JSON. Send an object like {\"code\": \"print(1)\"}."
    if not isinstance(arguments, dict) or not isinstance(arguments.get("code"), str) or not arguments["code"].strip():
        return "The tool arguments need a non-empty string `code`."
    code = arguments["code"]
    if len(code) > MAX_CODE_CHARS:
        return f"That code is too long ({len(code):,} characters; at most {MAX_CODE_CHARS:,})."
    packages = arguments.get("packages") or []
    if not isinstance(packages, list) or not all(isinstance(p, str) for p in packages):
        return "`packages` must be a list of package names."
    return code, tuple(p.strip() for p in packages[:10] if p.strip())


def ask_enabled(settings: Any) -> bool:
    """/ask is on when there is somewhere to send questions: a key (OpenAI) or a base URL (a local server)."""
    key = settings.openai_api_key
    return bool((key.reveal() if hasattr(key, "reveal") else key) or settings.openai_base_url)


class Assistant:
    """Holds the endpoint's client; `ask` answers one question of a conversation."""

    def __init__(self, settings: Any, *, client: Any = None) -> None:
        self.settings = settings
        self._client = client

    @property
    def enabled(self) -> bool:
        return ask_enabled(self.settings)

    def _key(self) -> str:
        key = self.settings.openai_api_key
        return key.reveal() if hasattr(key, "reveal") else str(key or "")

    @property
    def official(self) -> bool:
        """Talking to OpenAI itself (no base URL), which wants `max_completion_tokens`."""
        return not self.settings.openai_base_url

    def endpoint_label(self) -> str:
        """Where questions go, for status: the host only (a URL can carry credentials)."""
        if self.official:
            return "api.openai.com"
        parts = urlsplit(self.settings.openai_base_url)
        return parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else "(invalid URL)"

    def describe(self) -> dict[str, Any]:
        s = self.settings
        if not self.enabled:
            return {"enabled": False}
        return {"enabled": True, "model": s.openai_model, "endpoint": self.endpoint_label(),
                "max_steps": s.ask_max_steps, "questions_per_member_per_day": s.ask_questions_per_day or "unlimited"}

    def client(self) -> Any:
        if self._client is None:
            from openai import AsyncOpenAI

            self._client = AsyncOpenAI(
                api_key=self._key() or NO_KEY_PLACEHOLDER,
                # Always explicit: the SDK would otherwise read OPENAI_BASE_URL itself, and
                # an empty value there breaks it.
                base_url=self.settings.openai_base_url or OPENAI_URL,
                # No SDK retries: a 429 or an outage is reported to the member at once,
                # instead of the SDK waiting and sending the question again.
                max_retries=0,
                timeout=REQUEST_TIMEOUT_CAP,
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None and hasattr(self._client, "close"):
            await self._client.close()
        self._client = None

    async def ask(self, conversation: Conversation, question: str, *, system: str, run_code: RunCode,
                  progress: ProgressCallback | None = None) -> Answer:
        """Answer `question` as the next turn of `conversation` (which is updated)."""
        scrub = _Scrubber(self._key())
        conversation.messages.append({"role": "user", "content": scrub(question)})
        conversation.trim()
        state = _QuestionState(self.settings.ask_max_steps)
        deadline = time.monotonic() + self.settings.ask_timeout_seconds
        try:
            async with asyncio.timeout(self.settings.ask_timeout_seconds):
                answer = await self._loop(conversation, scrub(system), run_code, progress, state, deadline, scrub)
        except TimeoutError:
            answer = state.answer(AskOutcome.TIMEOUT)
        if answer.outcome is AskOutcome.ANSWERED:
            conversation.messages.append({"role": "assistant", "content": answer.text})
        else:
            # Leave a valid history for a follow-up: every tool call answered, then a note.
            _close_open_tool_calls(conversation.messages)
            conversation.messages.append({"role": "assistant", "content": f"(No answer: {answer.outcome.value}.)"})
        return answer

    async def _loop(self, conversation: Conversation, system: str, run_code: RunCode,
                    progress: ProgressCallback | None, state: "_QuestionState", deadline: float,
                    scrub: _Scrubber) -> Answer:
        max_steps = state.max_steps
        while state.steps < max_steps:
            state.steps += 1
            last = state.steps == max_steps
            await _tell(progress, Progress(Stage.THINKING, state.steps, max_steps, len(state.runs)))
            turn_or_answer = await self._call_model(conversation, system, last=last, deadline=deadline, state=state)
            if isinstance(turn_or_answer, Answer):
                return turn_or_answer
            turn = turn_or_answer
            if turn.refusal:
                return state.answer(AskOutcome.REFUSED, text=scrub(turn.refusal))
            if turn.problem:
                log.warning("ask: the model endpoint sent %s", turn.problem)
                return state.answer(AskOutcome.GARBAGE, detail=turn.problem)
            if not turn.tool_calls:
                return state.answer(AskOutcome.ANSWERED, text=scrub(turn.text))
            if last:
                break  # told to answer without tools and still called one: a loop
            conversation.messages.append({"role": "assistant", "content": turn.text or None,
                                          "tool_calls": list(turn.tool_calls)})
            for call in turn.tool_calls:
                stopped = await self._run_call(call, conversation, run_code, progress, state, scrub)
                if stopped is not None:
                    return stopped
        return state.answer(AskOutcome.STEP_LIMIT)

    async def _call_model(self, conversation: Conversation, system: str, *, last: bool, deadline: float,
                          state: "_QuestionState") -> "ModelTurn | Answer":
        import openai

        request: dict[str, Any] = {
            "model": self.settings.openai_model,
            "messages": [{"role": "system", "content": system}, *conversation.messages],
            "tools": [TOOL],
            # On the last step the model must answer with what it has.
            "tool_choice": "none" if last else "auto",
            ("max_completion_tokens" if self.official else "max_tokens"): self.settings.ask_max_reply_tokens,
            # A little past the question's own deadline, so that deadline (TIMEOUT) fires first
            # and a stalled request is not mistaken for an unreachable endpoint.
            "timeout": min(REQUEST_TIMEOUT_CAP, max(0.0, deadline - time.monotonic()) + 5.0),
        }
        try:
            response = await self.client().chat.completions.create(**request)
        except openai.RateLimitError as exc:
            log.warning("ask: the model endpoint answered 429 (%s)", _error_code(exc))
            return state.answer(AskOutcome.RATE_LIMITED, detail=_error_code(exc))
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            log.error("ask: the model endpoint refused the API key (HTTP %s)", exc.status_code)
            return state.answer(AskOutcome.AUTH)
        except openai.APIStatusError as exc:
            log.warning("ask: the model endpoint answered HTTP %s (%s)", exc.status_code, _error_code(exc))
            return state.answer(AskOutcome.ENDPOINT_ERROR, detail=STATUS_HINTS.get(exc.status_code, f"HTTP {exc.status_code}"))
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:  # timeout is a connection error subclass
            log.warning("ask: the model endpoint cannot be reached (%s)", type(exc).__name__)
            return state.answer(AskOutcome.ENDPOINT_DOWN)
        except (openai.APIResponseValidationError, ValueError, TypeError, KeyError) as exc:
            log.warning("ask: the model endpoint sent a reply that is not a chat completion (%s)", type(exc).__name__)
            return state.answer(AskOutcome.GARBAGE, detail="not a chat completion")
        except Exception as exc:  # noqa: BLE001 - whatever the SDK or a proxy throws, the member gets a clear line
            log.warning("ask: the request to the model endpoint failed (%s)", type(exc).__name__)
            return state.answer(AskOutcome.ENDPOINT_ERROR, detail=f"unexpected {type(exc).__name__}")
        return read_turn(response)

    async def _run_call(self, call: dict[str, Any], conversation: Conversation, run_code: RunCode,
                        progress: ProgressCallback | None, state: "_QuestionState", scrub: _Scrubber) -> Answer | None:
        """Run one tool call and answer it in the history; an Answer when the question must stop."""
        parsed = parse_tool_arguments(call)
        if isinstance(parsed, str):
            content = parsed
        elif len(state.runs) >= state.max_steps:  # several calls per reply: still at most one run per step
            content = "Not run: this question has used all its runs. Answer with what you have."
        else:
            code, packages = parsed
            await _tell(progress, Progress(Stage.RUNNING, state.steps, state.max_steps, len(state.runs)))
            try:
                result = await run_code(code, packages)
            except RunNotStarted as refusal:
                _answer_tool_call(conversation.messages, call, "Not run: the member's run limits stopped it.")
                return state.answer(AskOutcome.RUN_REFUSED, detail=str(refusal))
            run = CodeRun.from_result(state.steps, code, result)
            state.runs.append(run)
            content = scrub(tool_result_text(run))
            if not run.success:
                await _tell(progress, Progress(Stage.RETRYING, state.steps, state.max_steps, len(state.runs)))
        _answer_tool_call(conversation.messages, call, content)
        return None


@dataclasses.dataclass
class _QuestionState:
    max_steps: int
    steps: int = 0
    runs: list[CodeRun] = dataclasses.field(default_factory=list)

    def answer(self, outcome: AskOutcome, *, text: str = "", detail: str = "") -> Answer:
        return Answer(outcome=outcome, text=text, runs=tuple(self.runs), steps=self.steps, detail=detail)


def _answer_tool_call(messages: list[dict[str, Any]], call: dict[str, Any], content: str) -> None:
    messages.append({"role": "tool", "tool_call_id": call["id"], "content": content})


def _close_open_tool_calls(messages: list[dict[str, Any]]) -> None:
    """Answer tool calls left unanswered (the question stopped mid-way): the API refuses a
    history with an open call, and a follow-up would then fail."""
    answered = {m.get("tool_call_id") for m in messages if m.get("role") == "tool"}
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.get("role") == "assistant" and message.get("tool_calls"):
            missing = [c for c in message["tool_calls"] if c["id"] not in answered]
            position = index + 1
            while position < len(messages) and messages[position].get("role") == "tool":
                position += 1
            for call in missing:
                messages.insert(position, {"role": "tool", "tool_call_id": call["id"], "content": "Not run: the question stopped."})
                position += 1
            return


def _error_code(exc: Any) -> str:
    """The error's machine code (e.g. insufficient_quota), never its free text (it can quote the key)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error") if isinstance(body.get("error"), dict) else body
        code = error.get("code") or error.get("type")
        if isinstance(code, str):
            return code[:60]
    return ""


async def _tell(progress: ProgressCallback | None, update: Progress) -> None:
    if progress is None:
        return
    try:
        await progress(update)
    except Exception:  # noqa: BLE001 - showing progress must never stop the question
        log.exception("ask: progress update failed")
