"""Host side of the control channel spoken by interpreter/runtime/bootstrap.py.

Every frame is a JSON line followed by `size` raw bytes. Everything here is
untrusted input from the member's sandbox: frames are size-checked before reading,
names are sanitised, counts and totals are capped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import Callable

from interpreter.filetypes import classify, sanitize_filename
from interpreter.types import GeneratedFile

MAX_HEADER_BYTES = 64 * 1024


class ProtocolError(Exception):
    """The sandbox sent something malformed (a broken or hostile run)."""


@dataclasses.dataclass
class ControlState:
    """What the host learned from the control channel about one job (a session has one per run)."""

    ready: bool = False
    finished: dict | None = None
    files: list[GeneratedFile] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    ended: bool = False
    _names: set[str] = dataclasses.field(default_factory=set)

    def unique_name(self, raw: str) -> str:
        # "out/plot.png" -> "out_plot.png": one flat, safe, unique attachment name
        name = sanitize_filename(re.sub(r"[/\\]+", "_", raw.strip("/")), default="file")
        stem, dot, ext = name.rpartition(".")
        if not dot:
            stem, ext = name, ""
        candidate, n = name, 1
        while candidate in self._names:
            n += 1
            candidate = f"{stem}_{n}{dot}{ext}"
        self._names.add(candidate)
        return candidate


async def read_frame(reader: asyncio.StreamReader, max_payload: int) -> tuple[dict, bytes] | None:
    """One frame, or None at a clean end of stream."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("truncated frame header") from None
        return None
    except asyncio.LimitOverrunError:
        raise ProtocolError("frame header too long") from None
    try:
        header = json.loads(line)
        size = int(header.get("size", 0))
    except (ValueError, TypeError, AttributeError):
        raise ProtocolError("malformed frame header") from None
    if not isinstance(header, dict) or size < 0 or size > max_payload:
        raise ProtocolError("frame too large")
    payload = await reader.readexactly(size) if size else b""
    return header, payload


async def consume(reader: asyncio.StreamReader, state: ControlState, *, max_files: int,
                  max_file_size: int, max_total: int,
                  on_ready: Callable[[], None] = lambda: None,
                  on_finished: Callable[[], None] = lambda: None) -> None:
    """Read frames until this job's "end" frame (or the stream's end), filling `state`.

    Caps are enforced here, not trusted. A session calls it once per job, with a
    fresh `state`; the sandbox's "ready" frame arrives before the first job's frames.
    """
    total = 0
    while True:
        frame = await read_frame(reader, max_file_size)
        if frame is None:
            return
        header, payload = frame
        kind = header.get("kind")
        if kind == "ready":
            state.ready = True
            on_ready()
        elif kind == "finished" and state.finished is None:
            state.finished = {
                "status": str(header.get("status", "")),
                "exit_code": header.get("exit_code") if isinstance(header.get("exit_code"), int) else 1,
                "error": str(header.get("error", ""))[:20000],
            }
            on_finished()
        elif kind == "file":
            raw_name = str(header.get("name", "file"))[:512]
            if len(state.files) >= max_files:
                state.skipped.append(f"{state.unique_name(raw_name)} (too many files)")
            elif total + len(payload) > max_total:
                state.skipped.append(f"{state.unique_name(raw_name)} (total size limit)")
            else:
                name = state.unique_name(raw_name)
                state.files.append(GeneratedFile(filename=name, type=classify(name), data=payload, size=len(payload)))
                total += len(payload)
        elif kind == "skipped":
            reason = str(header.get("reason", "skipped"))[:100]
            state.skipped.append(f"{state.unique_name(str(header.get('name', 'file'))[:512])} ({reason})")
        elif kind == "end":
            state.ended = True
            return
