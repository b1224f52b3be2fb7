"""Host side of the control channel spoken by interpreter/runtime/bootstrap.py.

Every frame is one JSON line (a flat object of strings and integers) followed by
`size` raw bytes. The channel is written by the sandbox's supervisor process, which
the member's code has no handle on (bootstrap.py), but everything here is still
treated as hostile input, as a parser of network data would treat it:

- bounded: a header line is at most MAX_HEADER_BYTES; per job at most
  `FrameLimits.max_frames` frames and `max_bytes` payload bytes are read; at most
  MAX_SKIPPED_LISTED skipped names are kept; strings are cut to fixed lengths;
- linear: every frame costs work proportional to its size, once (no rescans, no
  name-collision loops that grow with the count);
- strict: unknown kinds, non-integer or out-of-range numbers, nested values and
  payloads where none belong raise ProtocolError, which the runner turns into a
  failed, audited run ("the sandbox sent a malformed result").
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import Callable

from interpreter.filetypes import classify, sanitize_filename
from interpreter.types import GeneratedFile

MAX_HEADER_BYTES = 4096  # the longest honest header is a file name of 1024 characters, JSON-escaped
MAX_ERROR_BYTES = 80 * 1024  # a "finished" frame's traceback (20,000 characters of UTF-8)
MAX_ERROR_CHARS = 20_000
MAX_NAME_CHARS = 512
MAX_REASON_CHARS = 100
MAX_SKIPPED_LISTED = 50  # skipped files named one by one; the rest are counted
EXTRA_FRAMES = 8  # ready, finished, skipped_more, end, and slack
EXIT_CODE_RANGE = range(-(2**31), 2**31)
STATUSES = frozenset({"ok", "exception", "exit", "memory"})
KINDS_WITH_PAYLOAD = frozenset({"file", "finished"})
KINDS = KINDS_WITH_PAYLOAD | {"ready", "skipped", "skipped_more", "end"}


class ProtocolError(Exception):
    """The sandbox sent something malformed (a broken or hostile run)."""


@dataclasses.dataclass(frozen=True)
class FrameLimits:
    """What one job may send back."""

    max_files: int
    max_file_size: int
    max_total: int  # bytes of files kept per job

    @property
    def max_frames(self) -> int:
        return self.max_files + MAX_SKIPPED_LISTED + EXTRA_FRAMES

    @property
    def max_bytes(self) -> int:
        # Files up to the total (the last one may cross it and is skipped), plus a traceback.
        return self.max_total + self.max_file_size + MAX_ERROR_BYTES


@dataclasses.dataclass
class ControlState:
    """What the host learned from the control channel about one job (a session has one per run)."""

    ready: bool = False
    finished: dict | None = None
    files: list[GeneratedFile] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    ended: bool = False
    broken: str = ""  # why the channel was found malformed ("" when it was not)
    _names: set[str] = dataclasses.field(default_factory=set)
    _next_suffix: dict[str, int] = dataclasses.field(default_factory=dict)
    _skipped_unlisted: int = 0

    def unique_name(self, raw: str) -> str:
        # "out/plot.png" -> "out_plot.png": one flat, safe, unique attachment name
        name = sanitize_filename(re.sub(r"[/\\]+", "_", raw.strip("/")), default="file")
        if name not in self._names:
            self._names.add(name)
            return name
        stem, dot, ext = name.rpartition(".")
        if not dot:
            stem, ext = name, ""
        n = self._next_suffix.get(name, 1)  # resumes where the last collision stopped: linear overall
        while True:
            n += 1
            candidate = f"{stem}_{n}{dot}{ext}"
            if candidate not in self._names:
                break
        self._next_suffix[name] = n
        self._names.add(candidate)
        return candidate

    def skip(self, raw_name: str, reason: str) -> None:
        if len(self.skipped) < MAX_SKIPPED_LISTED:
            self.skipped.append(f"{self.unique_name(raw_name)} ({reason})")
        else:
            self._skipped_unlisted += 1

    def skip_more(self, count: int) -> None:
        self._skipped_unlisted += count

    def close_skipped(self) -> None:
        """Count the files that were skipped without being named, once, at the end."""
        if self._skipped_unlisted:
            self.skipped.append(f"… and {self._skipped_unlisted:,} more files that were not sent")
            self._skipped_unlisted = 0


def _text(value: str, limit: int) -> str:
    # Lone surrogates (from names that were not UTF-8) become "?": the result must encode.
    return value[:limit].encode("utf-8", "replace").decode("utf-8")


def parse_header(line: bytes, max_payload: int) -> tuple[str, dict, int]:
    """(kind, fields, payload size) of one header line; ProtocolError if it is not a valid frame."""
    try:
        header = json.loads(line)
    except (ValueError, RecursionError):
        raise ProtocolError("malformed frame header") from None
    if not isinstance(header, dict):
        raise ProtocolError("malformed frame header")
    for value in header.values():
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ProtocolError("frame header values must be strings or integers")
    kind = header.get("kind")
    if kind not in KINDS:
        raise ProtocolError("unknown frame kind")
    size = header.get("size", 0)
    if not isinstance(size, int) or size < 0:
        raise ProtocolError("malformed frame size")
    if size > max_payload:
        raise ProtocolError("frame too large")
    if size and kind not in KINDS_WITH_PAYLOAD:
        raise ProtocolError(f"a {kind!r} frame carries no payload")
    return kind, header, size


async def read_frame(reader: asyncio.StreamReader, max_payload: int) -> tuple[str, dict, bytes] | None:
    """One frame, or None at a clean end of stream."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("truncated frame header") from None
        return None
    except asyncio.LimitOverrunError:
        raise ProtocolError("frame header too long") from None
    if len(line) > MAX_HEADER_BYTES:
        raise ProtocolError("frame header too long")
    kind, header, size = parse_header(line, max_payload)
    try:
        payload = await reader.readexactly(size) if size else b""
    except asyncio.IncompleteReadError:
        raise ProtocolError("truncated frame payload") from None
    return kind, header, payload


def _string(header: dict, key: str, default: str, limit: int) -> str:
    value = header.get(key, default)
    if not isinstance(value, str):
        raise ProtocolError(f"{key!r} must be a string")
    return _text(value, limit)


def _finished(header: dict, payload: bytes) -> dict:
    status = header.get("status")
    exit_code = header.get("exit_code", 0)
    if status not in STATUSES:
        raise ProtocolError("unknown run status")
    if not isinstance(exit_code, int) or exit_code not in EXIT_CODE_RANGE:
        raise ProtocolError("exit code out of range")
    if len(payload) > MAX_ERROR_BYTES:
        raise ProtocolError("error text too long")
    return {"status": status, "exit_code": exit_code,
            "error": payload.decode("utf-8", errors="replace")[:MAX_ERROR_CHARS]}


async def consume(reader: asyncio.StreamReader, state: ControlState, limits: FrameLimits, *,
                  on_ready: Callable[[], None] = lambda: None,
                  on_finished: Callable[[], None] = lambda: None) -> None:
    """Read frames until this job's "end" frame (or the stream's end), filling `state`.

    Caps are enforced here, not trusted. A session calls it once per job, with a
    fresh `state`; the sandbox's "ready" frame arrives before the first job's frames.
    Raises ProtocolError when the stream breaks the protocol or its limits.
    """
    kept = 0
    frames = 0
    received = 0
    max_payload = max(limits.max_file_size, MAX_ERROR_BYTES)
    try:
        while True:
            frame = await read_frame(reader, max_payload)
            if frame is None:
                return
            kind, header, payload = frame
            frames += 1
            received += len(payload)
            if frames > limits.max_frames:
                raise ProtocolError("too many frames for one run")
            if received > limits.max_bytes:
                raise ProtocolError("more data than one run may send")
            if kind == "ready":
                if state.ready:
                    raise ProtocolError("a second 'ready' frame")
                state.ready = True
                on_ready()
            elif kind == "finished":
                if state.finished is not None:
                    raise ProtocolError("a second 'finished' frame")
                state.finished = _finished(header, payload)
                on_finished()
            elif kind == "file":
                raw_name = _string(header, "name", "file", MAX_NAME_CHARS)
                if len(payload) > limits.max_file_size:
                    raise ProtocolError("file larger than the per-file limit")
                if len(state.files) >= limits.max_files:
                    state.skip(raw_name, "too many files")
                elif kept + len(payload) > limits.max_total:
                    state.skip(raw_name, "total size limit")
                else:
                    name = state.unique_name(raw_name)
                    state.files.append(GeneratedFile(filename=name, type=classify(name), data=payload, size=len(payload)))
                    kept += len(payload)
            elif kind == "skipped":
                state.skip(_string(header, "name", "file", MAX_NAME_CHARS),
                           _string(header, "reason", "skipped", MAX_REASON_CHARS))
            elif kind == "skipped_more":
                count = header.get("count", 0)
                if not isinstance(count, int) or not 0 <= count <= 10**9:
                    raise ProtocolError("skipped count out of range")
                state.skip_more(count)
            else:  # "end"
                state.ended = True
                return
    finally:
        state.close_skipped()
