"""Render the plotly figures a run queued as PNG, in a render sandbox (see the package doc).

The render sandbox is launched by the runs' own chain (SandboxRunner.launch_prefix:
cgroups, unprivileged host uid, rlimits; build_bwrap_args: namespaces, no network,
read-only /usr and venv, seccomp), with limits of its own (RENDER_*: Chromium needs
more threads than a run may have) and nothing of the member's: its /work and /data are
empty, and it sees only the figures' JSON at /in. It answers on stdout, read here as
hostile bytes: capped in total, parsed frame by frame in linear time, every PNG's
signature and size checked.

A render that fails or times out costs the member nothing but the PNG: the HTML stays,
and one line in the run's `skipped_files` says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import shlex
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING

from interpreter.result import RunResult
from interpreter.sandbox.bwrap import VENV_MOUNT, build_bwrap_args, sandbox_env
from interpreter.sandbox.runner import data_fd, empty_proc_fds
from interpreter.types import GeneratedFile

if TYPE_CHECKING:
    from config import Settings
    from interpreter.packages import PackageManager
    from interpreter.sandbox.runner import SandboxRunner

log = logging.getLogger(__name__)

# Where a run puts the figures it wants as PNG (runtime/display.py writes them; the
# bootstrap sends them with the charts). They arrive flattened by the protocol's naming
# (".plotly-png/plotly_figure_1.json" -> "plotly-png_plotly_figure_1.json") and are
# never shown to the member as files.
PNG_QUEUE_DIR = ".plotly-png"
QUEUED_PREFIX = "plotly-png_"
_QUEUED = re.compile(rf"^{QUEUED_PREFIX}([A-Za-z0-9_-]{{1,80}})\.json$")
MAX_FIGURES = 4  # rendered per run (the runtime queues no more); Discord shows ten attachments
MAX_FIGURE_JSON_BYTES = 8 * 1024 * 1024  # the runtime queues no larger figure either
MAX_PNG_BYTES = 8 * 1024 * 1024
MAX_PNG_SIDE = 4096  # the worker asks for at most 1600 px; anything larger is not its answer
MAX_HEADER_BYTES = 512
MAX_REASON_CHARS = 40  # the member reads it in a one-line list entry
STDERR_TAIL_BYTES = 4096  # kept for the log when a render fails

# The render sandbox's own limits. Chromium (no zygote) peaks at ~70 processes and threads
# and ~170 MB; its V8 reserves a large address space, so memory is bounded by the cgroup only.
RENDER_TIMEOUT_SECONDS = 30.0  # wall time for all of a run's figures, start-up included
RENDER_CPU_SECONDS = 30
RENDER_MEMORY_MB = 1024
RENDER_MAX_PROCESSES = 256
RENDER_MAX_OPEN_FILES = 1024
# Chromium sizes a sparse shared-memory file in /tmp past a run's RLIMIT_FSIZE (it died of
# SIGXFSZ at 50 MB); what it really writes is bounded by the /tmp tmpfs and the memory cgroup.
RENDER_MAX_FILE_MB = 4096

CHROMIUM_CANDIDATES = ("/usr/bin/chromium-headless-shell", "/usr/bin/chromium", "/usr/bin/google-chrome",
                       "/usr/bin/google-chrome-stable")
# No zygote: it has nothing to do without Chromium's own sandbox (bubblewrap and seccomp are
# the boundary; kaleido passes --no-sandbox). Measured under load: a one-figure render in
# 2.4 s median, ~1.1 s of it Chromium's CPU; --single-process used more CPU (2.9 s median).
CHROMIUM_FLAGS = ("--no-zygote",)
FONT_CACHE = Path("/var/cache/fontconfig")  # the distribution's prebuilt cache: no font scan at start-up
RENDER_MOUNT = "/opt/render"
WORKER_PATH = f"{RENDER_MOUNT}/worker.py"
BROWSER_PATH = f"{RENDER_MOUNT}/chromium"
FIGURES_MOUNT = "/in"
WORKER_SOURCE = (Path(__file__).resolve().parent / "worker.py").read_bytes()


class _TooMuchOutput(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class RenderOutcome:
    """One render sandbox's answer: per figure, the PNG or why there is none."""

    pngs: tuple[bytes | None, ...]
    reasons: tuple[str, ...]  # "" where a PNG came back
    duration: float


def find_chromium() -> str | None:
    """A Chromium under /usr (the render sandbox binds only /usr of the host's programs)."""
    for candidate in CHROMIUM_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


class PlotlyRenderer:
    """Turns the figure JSON a run queued into PNG files of its result (PLOTLY_PNG)."""

    def __init__(self, settings: "Settings", runner: "SandboxRunner", packages: "PackageManager") -> None:
        self.settings = settings
        self.runner = runner
        self.packages = packages
        # The run limits the render sandbox's launch chain applies instead of a run's.
        self.limits = settings.replace(run_memory_mb=RENDER_MEMORY_MB, run_max_processes=RENDER_MAX_PROCESSES,
                                       run_max_open_files=RENDER_MAX_OPEN_FILES, max_file_size_mb=RENDER_MAX_FILE_MB)
        self.rendered = 0
        self.failed = 0

    def unavailable_reason(self) -> str | None:
        """Why figures get no PNG on this host (None: they do)."""
        if self.settings.plotly_png == "off":
            return "off (PLOTLY_PNG=off)"
        if find_chromium() is None:
            return "no Chromium under /usr/bin (install Debian's chromium-headless-shell or chromium)"
        if not self.runner.cgroups.available:
            # Without cgroups the rlimit fallbacks apply, and RLIMIT_AS stops Chromium's V8.
            return f"needs per-run cgroups ({self.runner.cgroups.reason})"
        if not any((site / "kaleido").is_dir() for site in self.packages.site_packages()):
            return "kaleido is not in the sandbox venv (SANDBOX_BASE_PACKAGES)"
        return None

    def describe(self) -> dict:
        reason = self.unavailable_reason()
        return {"enabled": reason is None, "reason": reason, "chromium": find_chromium(),
                "rendered": self.rendered, "failed": self.failed}

    async def finish(self, result: RunResult, owner: int | None = None) -> RunResult:
        """`result` with its queued figures replaced by PNGs (or a line saying why not)."""
        queued = [item for item in result.generated_files if _QUEUED.match(item.filename)]
        skipped = tuple(line for line in result.skipped_files if not line.startswith(QUEUED_PREFIX))
        if not queued:
            return result if len(skipped) == len(result.skipped_files) else result.replace(skipped_files=skipped)
        others = tuple(item for item in result.generated_files if not _QUEUED.match(item.filename))
        if self.unavailable_reason() is not None:  # the HTML is what they get; /status says why
            return result.replace(generated_files=others, skipped_files=skipped)
        names = [f"{_QUEUED.match(item.filename).group(1)}.png" for item in queued]
        notes: list[str] = []
        wanted = []
        for name, item in zip(names, queued):
            if len(wanted) >= MAX_FIGURES:
                notes.append(f"{name} (not rendered: over {MAX_FIGURES} plotly figures)")
            elif item.size > MAX_FIGURE_JSON_BYTES:
                notes.append(f"{name} (not rendered: figure data too large)")
            else:
                wanted.append((name, item))
        pngs: dict[str, bytes] = {}
        if wanted:
            outcome = await self.render([item.data for _, item in wanted], owner)
            for (name, _), png, reason in zip(wanted, outcome.pngs, outcome.reasons):
                if png is not None:
                    pngs[name] = png
                else:
                    notes.append(f"{name} (not rendered: {reason}; the HTML has it)")
        files: list[GeneratedFile] = []
        for item in result.generated_files:
            match = _QUEUED.match(item.filename)
            if match is None:
                files.append(item)
            elif (png := pngs.get(f"{match.group(1)}.png")) is not None:
                files.append(GeneratedFile(filename=f"{match.group(1)}.png", type="image", data=png, size=len(png)))
        return result.replace(generated_files=tuple(files), skipped_files=skipped + tuple(notes))

    async def render(self, figures: list[bytes], owner: int | None = None) -> RenderOutcome:
        """Render `figures` (plotly JSON) in one render sandbox, admitted like a run."""
        started = time.monotonic()
        async with self.runner.slot(light=False, member=owner):
            try:
                pngs, reasons = await self._render_in_sandbox(figures)
            except Exception as exc:  # noqa: BLE001 - a render never breaks the run it belongs to
                log.exception("plotly render sandbox failed")
                pngs, reasons = [None] * len(figures), [_short(f"render failed ({type(exc).__name__})")] * len(figures)
        log.info("plotly render: %d of %d figures in %.2f s", sum(png is not None for png in pngs), len(figures),
                 time.monotonic() - started)
        self.rendered += sum(png is not None for png in pngs)
        self.failed += sum(png is None for png in pngs)
        return RenderOutcome(tuple(pngs), tuple(reasons), time.monotonic() - started)

    async def _render_in_sandbox(self, figures: list[bytes]) -> tuple[list[bytes | None], list[str]]:
        runner = self.runner
        cgroup = runner.cgroups.create(self.limits)
        uid = runner.uids.acquire() if runner.running_as_root else None
        proc = None
        try:
            proc = await self._launch(figures, uid, cgroup)
            return await _collect(proc, len(figures))
        finally:
            await _stop(proc, cgroup)
            if cgroup is None or await cgroup.remove_when_empty():  # a uid is reused once nothing of it is left
                runner.uids.release(uid)

    async def _launch(self, figures: list[bytes], uid: int | None, cgroup) -> asyncio.subprocess.Process:
        """Start the render sandbox: the worker, the Chromium wrapper and the figures bound in, nothing else."""
        runner = self.runner
        venv = await self.packages.ensure_venv()
        fds: list[int] = []
        try:
            worker_fd = data_fd("render-worker", WORKER_SOURCE)
            fds.append(worker_fd)
            wrapper = f"#!/bin/sh\nexec {shlex.quote(find_chromium())} {' '.join(CHROMIUM_FLAGS)} \"$@\"\n"
            browser_fd = data_fd("render-browser", wrapper.encode())
            fds.append(browser_fd)
            binds = ["--ro-bind-data", str(worker_fd), WORKER_PATH,
                     "--perms", "0555", "--ro-bind-data", str(browser_fd), BROWSER_PATH]
            for index, data in enumerate(figures):
                fds.append(data_fd("render-figure", data))
                binds += ["--ro-bind-data", str(fds[-1]), f"{FIGURES_MOUNT}/{index:03d}.json"]
            if FONT_CACHE.is_dir():
                binds += ["--ro-bind", str(FONT_CACHE), str(FONT_CACHE)]
            empty_fds = empty_proc_fds()
            fds += empty_fds.values()
            seccomp_fd = None
            if runner.seccomp_program is not None:
                seccomp_fd = data_fd("seccomp", runner.seccomp_program)
                fds.append(seccomp_fd)
            env = {**sandbox_env(), "HOME": "/tmp", "BROWSER_PATH": BROWSER_PATH}
            args = build_bwrap_args(self.limits, runner.bwrap, venv, bootstrap_fd=None, control_fd=-1, job_fd=-1,
                                    seccomp_fd=seccomp_fd, env=env, empty_fds=empty_fds, extra_binds=binds,
                                    command=[f"{VENV_MOUNT}/bin/python", "-I", "-B", WORKER_PATH])
            argv = runner.launch_prefix(cgroup, RENDER_CPU_SECONDS, uid, limits=self.limits) + args
            return await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, pass_fds=fds, env={}, cwd="/", start_new_session=True)
        finally:
            for fd in fds:
                os.close(fd)


async def _collect(proc: asyncio.subprocess.Process, count: int) -> tuple[list[bytes | None], list[str]]:
    """Read the render sandbox's answer (capped, within RENDER_TIMEOUT_SECONDS) and parse it."""
    stderr_tail = bytearray()
    readers = [asyncio.ensure_future(_read_capped(proc.stdout, count * (MAX_PNG_BYTES + MAX_HEADER_BYTES))),
               asyncio.ensure_future(_read_tail(proc.stderr, stderr_tail))]
    reason = ""
    try:
        async with asyncio.timeout(RENDER_TIMEOUT_SECONDS):
            answer = await readers[0]
            await readers[1]
            await proc.wait()
    except TimeoutError:
        reason = f"timed out after {RENDER_TIMEOUT_SECONDS:g} s"
    except _TooMuchOutput:
        reason = "too much output"
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    if reason:
        pngs, reasons = [None] * count, [reason] * count
    else:
        pngs, reasons = parse_answer(answer, count)
    if any(png is None for png in pngs):
        log.warning("plotly render: %s (exit %s); Chromium said: %s", "; ".join(dict.fromkeys(r for r in reasons if r)),
                    proc.returncode, _tail_text(stderr_tail))
    return pngs, reasons


async def _stop(proc: asyncio.subprocess.Process | None, cgroup) -> None:
    """Kill everything of the render sandbox and reap it.

    Its pipes are read to their end first: on Python 3.11, Process.wait() returns only once
    every pipe has closed, and a pipe whose reading was paused (a flood left unread) never
    reports its end. The end comes as soon as the last process of the sandbox is gone."""
    if proc is None:
        return
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    if cgroup is not None:
        cgroup.kill_all()
    for stream in (proc.stdout, proc.stderr):
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                while await stream.read(64 * 1024):
                    pass
    await proc.wait()


def parse_answer(data: bytes, count: int) -> tuple[list[bytes | None], list[str]]:
    """The worker's frames (worker.py) for `count` figures, checked one by one, in order.

    Linear in len(data): each header is looked for within MAX_HEADER_BYTES. The first
    malformed frame ends the parse; that figure and the rest get the reason.
    """
    pngs: list[bytes | None] = []
    reasons: list[str] = []
    position = 0
    broken = ""
    while len(pngs) < count and not broken:
        index = len(pngs)
        newline = data.find(b"\n", position, position + MAX_HEADER_BYTES)
        if newline < 0:
            broken = "no answer" if position >= len(data) else "malformed answer"
            break
        try:
            header = json.loads(data[position:newline])
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("index") != index:
            broken = "malformed answer"
            break
        position = newline + 1
        if isinstance(header.get("error"), str):
            pngs.append(None)
            reasons.append(_short(header["error"]))
            continue
        size = header.get("size")
        if type(size) is not int or not 0 < size <= MAX_PNG_BYTES or position + size > len(data):
            broken = "malformed answer"
            break
        png = data[position:position + size]
        position += size
        problem = png_problem(png)
        pngs.append(None if problem else png)
        reasons.append(problem)
    while len(pngs) < count:
        pngs.append(None)
        reasons.append(broken or "no answer")
    return pngs, reasons


def png_problem(data: bytes) -> str:
    """'' for a PNG whose header is sound and whose size is within MAX_PNG_SIDE; else why not."""
    if len(data) < 33 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    if not (0 < width <= MAX_PNG_SIDE and 0 < height <= MAX_PNG_SIDE):
        return "image too large"
    return ""


async def _read_capped(stream: asyncio.StreamReader, cap: int) -> bytes:
    data = bytearray()
    while chunk := await stream.read(64 * 1024):
        data += chunk
        if len(data) > cap:
            raise _TooMuchOutput
    return bytes(data)


async def _read_tail(stream: asyncio.StreamReader, tail: bytearray) -> None:
    """Read to the end, keeping the last STDERR_TAIL_BYTES (Chromium's logging is chatty)."""
    while chunk := await stream.read(64 * 1024):
        tail += chunk
        del tail[:-STDERR_TAIL_BYTES]


def _short(text: str) -> str:
    """A reason the sandbox sent, made one printable line a member can read."""
    printable = "".join(ch if ch.isprintable() else " " for ch in str(text))
    line = " ".join(printable.split()) or "failed"
    return line if len(line) <= MAX_REASON_CHARS else line[:MAX_REASON_CHARS - 1] + "…"


def _tail_text(tail: bytearray) -> str:
    return bytes(tail[-1500:]).decode("utf-8", "replace").strip()
