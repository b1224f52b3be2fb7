"""Run jobs in sandboxes: spawn, feed, watch, collect, explain how each ended.

A `SandboxProcess` is one bubblewrap sandbox. A one-shot run gives it one job and
destroys it (`execute`); a session (interpreter/sessions.py) gives it job after job
(`run_job`), each with its own output, files and exit cause. The runner limits how
many jobs run at once. The launch chain, all exec'd
with an empty environment (ARCHITECTURE.md pitfall 2):

    sh -c 'echo $$ > <run cgroups>; exec "$@"'   join the run's cgroups before anything runs
      setpriv --reuid --regid --clear-groups      drop root before bwrap (pitfall 1)
        prlimit --cpu --fsize --nofile --core     rlimits inherited by everything inside
          bwrap ...                               namespaces, mounts, seccomp
            python -I -B bootstrap.py             the job
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import functools
import importlib.util
import json
import logging
import marshal
import os
import shlex
import shutil
import signal
import sys
import termios
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from config import Settings
from interpreter.sandbox.bwrap import (
    MASKED_PROC_FILES, RUNTIME_MOUNT, BwrapBinary, BwrapNotFound, build_bwrap_args, find_bwrap, sandbox_env,
)
from interpreter.sandbox.admission import AdmissionGate, ClockStop, Grant, RunClock
from interpreter.sandbox.schedstat import RunTaskTimes, schedstat_unavailable
from interpreter.sandbox.job import SandboxJob, SandboxOutcome
from interpreter.sandbox.limits import CgroupManager, RunCgroup, prlimit_args
from interpreter.sandbox.pool import SandboxPool, renice_sandbox
from interpreter.sandbox.uids import UidLeases
from interpreter.sandbox.protocol import ControlState, FrameLimits, ProtocolError, consume
from interpreter.sandbox.workload import Workload, classify
from interpreter.types import ExitCause

if TYPE_CHECKING:
    from interpreter.sandbox.forkserver import ForkServer

log = logging.getLogger(__name__)

_RUNTIME_DIR = Path(__file__).resolve().parent.parent / "runtime"
# The one copy of the runtime's source: cold launches here and the fork server's template
# (forkserver.py) read these attributes when they launch, so a test swaps them in one place.
BOOTSTRAP_SOURCE = (_RUNTIME_DIR / "bootstrap.py").read_bytes()
# The bootstrap's companion modules (display, errors, offline), bound beside it at /opt/runtime.
RUNTIME_MODULES = {path.name: path.read_bytes() for path in sorted(_RUNTIME_DIR.glob("*.py"))
                   if path.name not in {"bootstrap.py", "__init__.py"}}
COLLECT_GRACE_SECONDS = 15.0  # after the code ends, time to save figures and send files
READ_CHUNK = 64 * 1024
CONTROL_READER_LIMIT = 64 * 1024  # StreamReader buffer; protocol.py bounds headers itself
WARM_UP_TIMEOUT = 180.0  # warm_up() gives up waiting (not preparing) after this long
DRAIN_TURNS = 400  # after a session job's "end": event-loop turns allowed for reading its output

# What the member reads. The reason (it can quote host paths and settings) goes to the
# log and /status only.
SANDBOX_UNAVAILABLE = ("Code cannot run: the sandbox could not start on this host. "
                       "Nothing ran; an admin can see why in /status and the bot's log.")

_SIGNAL_NAMES = {
    signal.SIGSEGV: "segmentation fault",
    signal.SIGABRT: "aborted",
    signal.SIGBUS: "bus error",
    signal.SIGILL: "illegal instruction",
    signal.SIGFPE: "floating-point exception",
    signal.SIGSYS: "bad system call",
}


@dataclasses.dataclass
class _Watch:
    """What the host observed while a run was going on."""

    output: bytearray = dataclasses.field(default_factory=bytearray)
    output_total: int = 0
    killed_for: ExitCause | None = None
    wall_capped: bool = False  # timed out at the wall cap: it waited for a CPU most of the time (admission.py)


class SandboxProcess:
    """One sandbox for one job. Start it (cold) or let a pool start it ahead (warm)."""

    def __init__(self, runner: "SandboxRunner", venv_dir: Path, *, preload: str = "", cpu_seconds: float) -> None:
        self.runner = runner
        self.settings = runner.settings
        self.venv_dir = venv_dir
        self.preload = preload
        self.cpu_seconds = cpu_seconds
        self.proc: asyncio.subprocess.Process | None = None
        self.cgroup: RunCgroup | None = None
        self.uid: int | None = None  # the host uid leased for this sandbox (when the bot is root)
        self.state = ControlState()
        self._control_reader: asyncio.StreamReader | None = None
        self._control_transport: asyncio.BaseTransport | None = None
        self._job_writer: asyncio.StreamWriter | None = None  # jobs go to the supervisor on their own pipe
        self._watch = _Watch()
        self._output_task: asyncio.Task | None = None
        self._control_task: asyncio.Task | None = None
        self._finished = asyncio.Event()
        self._ready = asyncio.Event()
        self.jobs_started = 0
        self._clock = RunClock()  # the current job's time-out clock (run_job)
        self._stopped_after_job = False  # execute(): killed once its job ended cleanly

    # ------------------------------------------------------------------ start

    async def start(self) -> None:
        runner, settings = self.runner, self.settings
        self.cgroup = runner.cgroups.create(settings) if runner.cgroups.available else None
        if runner.running_as_root:
            self.uid = runner.uids.acquire()
        control_r, control_w = os.pipe()
        job_r, job_w = os.pipe()
        fds = [control_w, job_r]
        seccomp_r = None
        try:
            bootstrap_r = data_fd("bootstrap", BOOTSTRAP_SOURCE)
            fds.append(bootstrap_r)
            empty_fds = empty_proc_fds()
            fds += empty_fds.values()
            module_fds = {}
            for name, data in runtime_bytecode({"bootstrap.py": BOOTSTRAP_SOURCE, **RUNTIME_MODULES}).items():
                module_fds[name] = data_fd(name.rpartition("/")[2], data)
                fds.append(module_fds[name])
            for name, source in RUNTIME_MODULES.items():
                module_fds[name] = data_fd(name, source)
                fds.append(module_fds[name])
            program = runner.seccomp_program
            if program is not None:
                seccomp_r = data_fd("seccomp", program)
                fds.append(seccomp_r)
            bwrap_args = build_bwrap_args(
                settings, runner.bwrap, self.venv_dir,
                bootstrap_fd=bootstrap_r, control_fd=control_w, job_fd=job_r, seccomp_fd=seccomp_r,
                env=sandbox_env(self.preload), module_fds=module_fds, empty_fds=empty_fds,
            )
            argv = runner.launch_prefix(self.cgroup, self.cpu_seconds, self.uid) + bwrap_args
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                # Not the job channel: bwrap's pid 1 keeps its stdin, and any process of the run
                # could open it through /proc/1/fd/0.
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                pass_fds=fds,
                env={},
                cwd="/",
                start_new_session=True,
            )
        except BaseException:
            os.close(job_w)
            os.close(control_r)
            raise
        finally:
            for fd in fds:
                os.close(fd)
        await self._watch_channels(control_r, job_w)

    async def _watch_channels(self, control_r: int, job_w: int) -> None:
        """Read the sandbox's output (self.proc.stdout) and control pipe; write jobs to `job_w`."""
        loop = asyncio.get_running_loop()
        self._control_reader = asyncio.StreamReader(limit=CONTROL_READER_LIMIT)
        self._control_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(self._control_reader), os.fdopen(control_r, "rb", buffering=0)
        )
        job_transport, job_protocol = await loop.connect_write_pipe(
            lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), os.fdopen(job_w, "wb", buffering=0)
        )
        self._job_writer = asyncio.StreamWriter(job_transport, job_protocol, None, loop)
        self._output_task = asyncio.create_task(self._read_output())
        self._control_task = asyncio.create_task(self._read_control())

    async def wait_ready(self) -> bool:
        """True once the bootstrap has imported what it preloads and waits for a job."""
        ready = asyncio.create_task(self._ready.wait())
        died = asyncio.create_task(self.proc.wait())
        try:
            await asyncio.wait({ready, died}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when cancelled: no helper task outlives the wait
            ready.cancel()
            died.cancel()
        return self._ready.is_set()

    # ------------------------------------------------------------------ watching

    async def _read_output(self) -> None:
        settings = self.settings
        stream = self.proc.stdout
        while True:
            chunk = await stream.read(READ_CHUNK)
            if not chunk:
                return
            watch = self._watch  # looked up per chunk: each job of a session gets a fresh one
            watch.output_total += len(chunk)
            room = settings.output_limit_bytes - len(watch.output)
            if room > 0:
                watch.output += chunk[:room]
            if watch.output_total > settings.output_kill_bytes and watch.killed_for is None:
                watch.killed_for = ExitCause.OUTPUT_LIMIT
                self.kill()
                # keep draining so nothing blocks; the process is going away

    @property
    def frame_limits(self) -> FrameLimits:
        settings = self.settings
        return FrameLimits(max_files=settings.max_generated_files, max_file_size=settings.max_file_size_bytes,
                           max_total=settings.run_workdir_mb * 1024 * 1024)

    async def _read_control(self) -> None:
        try:
            await consume(self._control_reader, self.state, self.frame_limits,
                          on_ready=self._ready.set, on_finished=self._finished.set)
        except ProtocolError as exc:
            self._break_channel(str(exc))
        except Exception as exc:  # noqa: BLE001 - whatever hostile bytes provoke is a broken channel too
            log.exception("reading a sandbox's control channel failed")
            self._break_channel(f"unreadable control channel ({type(exc).__name__})")
        finally:
            self._finished.set()  # a run that closed its channel early is finished too

    def _break_channel(self, reason: str) -> None:
        """The channel broke the protocol: stop the sandbox; the run fails and says so (and is audited)."""
        log.warning("a sandbox broke the control protocol (%s); it was stopped", reason)
        self.state.broken = reason
        if self._watch.killed_for is None:
            self._watch.killed_for = ExitCause.PROTOCOL
        self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            # bwrap; --die-with-parent takes the sandbox's pid 1 down with it. os.kill, not
            # proc.kill(): Popen.send_signal polls first, and that waitpid can reap the
            # process under asyncio's child watcher, which then reports exit status 255.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        if self.cgroup is not None:
            self.cgroup.kill_all()

    # ------------------------------------------------------------------ the job

    async def execute(self, job: SandboxJob, clock: RunClock | None = None) -> SandboxOutcome:
        """One job, then the sandbox is destroyed with its cgroup (one-shot runs).

        When the job ended cleanly, run_job has already SIGKILLed everything in the
        sandbox, so no code of the run can act after this returns; reaping the dead
        processes and removing the cgroup then happens in the background (the kernel's
        teardown of a 200 MB process takes ~20 ms, which the reply need not wait for).
        """
        stopped = False
        try:
            outcome = await self.run_job(job, last=True, clock=clock)
            stopped = self._stopped_after_job
            return outcome
        finally:
            if stopped:
                self.runner.destroy_later(self)
            else:
                await self.destroy()

    @property
    def can_take_job(self) -> bool:
        """True while the sandbox is alive, ready, and its last job (if any) ended cleanly (a session may go on)."""
        return (self.proc is not None and self.proc.returncode is None and self._ready.is_set()
                and (self.jobs_started == 0 or self.state.ended) and self._watch.killed_for is None)

    async def run_job(self, job: SandboxJob, *, last: bool = False, clock: RunClock | None = None) -> SandboxOutcome:
        """Send one job and wait until it ends: its "end" frame, the sandbox's death, or the timeout.

        The time-out, and the grace for collecting files, run on `clock` (the admission
        grant's): time the run spent paused by the queue, or waiting for a CPU in the long
        lane, does not count, up to the clock's wall cap (admission.py).

        Output, files and the exit cause are this job's only. With `last` (one-shot
        runs) the job channel is closed after the job, so the bootstrap exits when it is done and
        the output is read to its end; without it the sandbox waits for the next job
        (check `can_take_job`: a timeout or a crash leaves it unusable).
        """
        if self.jobs_started:
            self._begin_next_job()
        self.jobs_started += 1
        self._clock = clock = clock or RunClock()
        started = clock.mark()
        feeder = asyncio.create_task(self._send_job(job, close=last))
        try:
            stop = await clock.until(self._finished, job.timeout)
            if stop is not ClockStop.DONE:
                if self._watch.killed_for is None:
                    self._watch.killed_for = ExitCause.TIMEOUT
                    self._watch.wall_capped = stop is ClockStop.WALL_CAP
                self.kill()
            duration, paused, starved = clock.ran_since(started), clock.paused_since(started), clock.starved_since(started)
            if last:
                self._stopped_after_job = await self._stop_after_clean_end()
                if not self._stopped_after_job:
                    await self._await_exit()  # its exit status tells what happened
            else:
                await self._await_job_end()
                if not self.can_take_job:
                    await self._await_exit()
            return self._outcome(job, duration, paused, starved)
        finally:
            feeder.cancel()

    def _begin_next_job(self) -> None:
        """Fresh per-job state for the next job of a long-lived sandbox.

        The previous job's control reading has returned at its "end" frame, so a new
        reader takes the channel from here.
        """
        self.state = ControlState(ready=self._ready.is_set())
        self._watch = _Watch()
        self._finished = asyncio.Event()
        self._control_task = asyncio.create_task(self._read_control())

    async def _await_job_end(self) -> None:
        """Until this job's "end" frame (files collected) and its output are read; kill when it stalls."""
        if not await self._control_read_within(COLLECT_GRACE_SECONDS):
            self.state.skipped.append("(file collection took too long and was stopped)")
            self.kill()
        if self.can_take_job:
            await self._drain_output()
        # else: it died or is dying; _await_exit reads its exit status (a kill now would hide it)

    async def _stop_after_clean_end(self) -> bool:
        """A one-shot job that ended cleanly: read the rest of its output, then SIGKILL
        everything in the sandbox. False (nothing done) when it did not end cleanly."""
        if self._watch.killed_for is not None or self.state.finished is None:
            return False
        if not await self._control_read_within(COLLECT_GRACE_SECONDS):
            return False  # stalled while sending files: _await_exit stops it and says so
        if not self.state.ended or self._watch.killed_for is not None:
            return False
        await self._drain_output()
        self.kill()
        return True

    async def _control_read_within(self, timeout: float) -> bool:
        """Until the control channel's reader is done (True) or `timeout` passed (False).
        Not an await of the task itself: a session ended meanwhile cancels the reader
        (destroy closes the channels), and that must end this job, not cancel its caller.
        On the job's clock: time the queue kept the run paused does not count (admission.py)."""
        return await self._clock.wait(self._control_task, timeout)

    async def _await_exit(self) -> None:
        """Until the sandbox has exited and both channels are read to their end."""
        exited = asyncio.ensure_future(self.proc.wait())
        if not await self._clock.wait(exited, COLLECT_GRACE_SECONDS):
            exited.cancel()
            self.state.skipped.append("(file collection took too long and was stopped)")
            self.kill()
            await self.proc.wait()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self._output_task, timeout=5)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self._control_task, timeout=5)

    async def _drain_output(self) -> None:
        """Wait until the reader task has taken this job's output out of the pipe.

        The bootstrap flushes stdout and stderr before it sends "finished", so when
        "end" arrives the job's output is in the pipe or already read; only the reader
        task may still be behind. Bounded, so a background process the member left
        printing cannot hold the run (its output goes to the next job).
        """
        for turn in range(DRAIN_TURNS):
            if self._output_pending() == 0:
                return
            await asyncio.sleep(0 if turn < DRAIN_TURNS // 2 else 0.002)

    def _output_pending(self) -> int:
        """Bytes of output still in the pipe or in the stream's buffer (0 when unknown)."""
        pending = len(getattr(self.proc.stdout, "_buffer", b""))
        try:
            pipe = self.proc._transport.get_pipe_transport(1).get_extra_info("pipe")
            size = bytearray(4)
            fcntl.ioctl(pipe.fileno(), termios.FIONREAD, size)
            pending += int.from_bytes(size, "little")
        except (AttributeError, OSError, ValueError):
            pass  # pipe gone (the sandbox exited): nothing more will come
        return pending

    async def _send_job(self, job: SandboxJob, *, close: bool = True) -> None:
        frame_limits = self.frame_limits
        limits = {"max_files": frame_limits.max_files, "max_file_size": frame_limits.max_file_size,
                  "max_total": frame_limits.max_total}
        header = {
            "code": job.code,
            "files": [
                {"file_id": f.file_id, "filename": f.filename, "file_type": f.file_type, "size": f.size}
                for f in job.input_files
            ],
            "limits": limits,
            "last": close,  # the sandbox is killed after this job: no need to settle its processes
        }
        channel = self._job_writer
        try:
            channel.write(json.dumps(header).encode() + b"\n")
            for item in job.input_files:
                data = await asyncio.to_thread(item.host_path.read_bytes)
                channel.write(data[: item.size].ljust(item.size, b"\0"))
                await channel.drain()
            await channel.drain()
            if close:
                channel.close()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the sandbox died early; the outcome explains why

    def _outcome(self, job: SandboxJob, duration: float, paused: float = 0.0, starved: float = 0.0) -> SandboxOutcome:
        watch, state = self._watch, self.state
        truncated = watch.output_total > len(watch.output)
        output = bytes(watch.output).decode("utf-8", errors="replace")
        if truncated:
            output += (
                f"\n… [output truncated: showing {len(watch.output):,} of {watch.output_total:,} bytes]"
            )
        outcome = SandboxOutcome(
            cause=ExitCause.OK, output=output, duration=duration, output_truncated=truncated,
            files=list(state.files), skipped_files=list(state.skipped), paused_seconds=paused,
            starved_seconds=max(0.0, starved),
        )
        rc = self.proc.returncode
        finished = state.finished
        if watch.killed_for is ExitCause.TIMEOUT:
            outcome.cause, outcome.return_code = ExitCause.TIMEOUT, -1
            outcome.error = f"Execution timeout after {job.timeout:g} seconds"  # the seed's string
            outcome.wall_capped = watch.wall_capped  # the result says why, in a warning
        elif watch.killed_for is ExitCause.PROTOCOL:
            outcome.cause, outcome.return_code, outcome.files = ExitCause.PROTOCOL, -1, []
            outcome.error = (f"The run was stopped: its sandbox sent a malformed result ({state.broken}). "
                             "Its files were not kept")
        elif watch.killed_for is ExitCause.OUTPUT_LIMIT:
            outcome.cause, outcome.return_code = ExitCause.OUTPUT_LIMIT, -1
            outcome.error = (
                f"Output limit exceeded: the code printed more than "
                f"{self.settings.output_kill_bytes:,} bytes and was stopped"
            )
        elif finished is not None and finished["status"] == "ok":
            outcome.return_code = 0
        elif finished is not None and finished["status"] == "memory":
            outcome.cause, outcome.return_code, outcome.error = ExitCause.MEMORY, 1, self._memory_message()
        elif finished is not None:
            outcome.cause, outcome.return_code = ExitCause.EXCEPTION, finished["exit_code"] or 1
            outcome.error = finished["error"] or f"Exited with status {outcome.return_code}"
        else:
            self._explain_death(outcome, rc)
        if outcome.cause is not ExitCause.OK and outcome.cause is not ExitCause.EXCEPTION and self.cgroup and self.cgroup.oom_killed():
            outcome.cause = ExitCause.MEMORY
            outcome.error = self._memory_message()
        return outcome

    def _memory_message(self) -> str:
        return f"Out of memory: the code used more than {self.settings.run_memory_mb} MB and was stopped"

    def _explain_death(self, outcome: SandboxOutcome, rc: int | None) -> None:
        """No 'finished' frame: the code never got to the end. Say why."""
        rc = rc if rc is not None else -1
        sig = rc - 128 if rc > 128 else (-rc if rc < 0 else 0)
        outcome.return_code = rc
        if self.cgroup is not None and self.cgroup.oom_killed():
            outcome.cause, outcome.error = ExitCause.MEMORY, self._memory_message()
        elif sig == signal.SIGXCPU:  # the soft CPU limit; Python does not catch it
            outcome.cause = ExitCause.CPU
            outcome.error = f"CPU time limit exceeded ({int(self.cpu_seconds)} s of CPU)"
        elif sig in _SIGNAL_NAMES:
            outcome.cause = ExitCause.CRASH
            outcome.error = f"The Python process crashed ({_SIGNAL_NAMES[sig]})"
        elif sig == signal.SIGKILL and self.cgroup is None:
            outcome.cause = ExitCause.MEMORY  # rlimit fallback: the likeliest SIGKILL is memory
            outcome.error = f"The code was killed (signal 9), probably for using more than {self.settings.run_memory_mb} MB"
        elif sig:
            outcome.cause = ExitCause.SIGNAL
            outcome.error = f"The code was killed by signal {sig} ({_signal_name(sig)})"
        elif not self.state.ready:
            # The launcher or bwrap refused (e.g. no user namespaces on this host): the
            # member gets a short reason, the admin the whole message in the log.
            log.error("sandbox failed to start (exit %s): %s", rc, outcome.output[-2000:])
            reason = _launcher_reason(outcome.output, rc)
            outcome.cause, outcome.output = ExitCause.SANDBOX, ""
            outcome.error = SANDBOX_UNAVAILABLE
            self.runner.unavailable_reason = reason
        elif rc == 0:
            outcome.cause = ExitCause.OK  # os._exit(0): ended without the usual wrap-up
        else:
            outcome.cause = ExitCause.EXCEPTION
            outcome.error = f"Exited with status {rc}"

    def _close_channels(self) -> None:
        """Stop reading and close our ends of the pipes. The subprocess transport too:
        a run stopped before its output reached EOF would otherwise leave it open."""
        for task in (self._output_task, self._control_task):
            if task is not None and not task.done():
                task.cancel()
        job_transport = self._job_writer.transport if self._job_writer is not None else None
        for transport in (getattr(self.proc, "_transport", None), self._control_transport, job_transport):
            if transport is not None:
                transport.close()

    def abandon(self) -> None:
        """Kill and let go without waiting, while the event loop still runs (it is shutting
        down): the kernel finishes the exit; a later CgroupManager.sweep removes the group."""
        self.kill()
        self._close_channels()

    async def destroy(self) -> None:
        self.kill()
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                await self.proc.wait()
        self._close_channels()
        gone = True
        if self.cgroup is not None:
            gone = await self.cgroup.remove_when_empty()  # its processes may still be leaving: wait for the last
        if gone:  # a uid is reused only once nothing of this sandbox is left
            self.runner.uids.release(self.uid)
            self.uid = None


LONG_RUN_NICE = 19  # a run moved to the long lane (admission.py)
NORMAL_NICE = 0


class _PausableRun:
    """How the admission gate pauses a sandbox's run: its whole cgroup frozen (limits.py)."""

    def __init__(self, sandbox: SandboxProcess) -> None:
        self.sandbox = sandbox
        self.cgroup = sandbox.cgroup

    def memory_bytes(self) -> int | None:
        return self.cgroup.memory_bytes()

    def freeze(self) -> bool:
        if self.sandbox.state.finished is not None:
            return False  # its code has ended; collecting its files is short: let it finish
        # A paused run only ever goes on in the long lane: its weight is lowered before the
        # thaw can let it run (the threads' nice values follow through on_long).
        self.cgroup.set_cpu_weight(LONG_RUN_NICE)
        return self.cgroup.freeze()

    def thaw(self) -> None:
        self.cgroup.thaw()


class SandboxRunner:
    """Starts sandboxes and limits how many run at once."""

    def __init__(self, settings: Settings, packages) -> None:
        self.settings = settings
        self.packages = packages
        self.running_as_root = os.geteuid() == 0
        self.cgroups = CgroupManager.detect(settings) if self.running_as_root else CgroupManager(0, [], "the bot is not root")
        self.seccomp_program, self.seccomp_reason = _load_seccomp()
        self.uids = UidLeases(settings.sandbox_uid, settings.sandbox_uid_count)
        self._bwrap: BwrapBinary | None = None
        self._gate: AdmissionGate | None = None
        self._gate_loop: asyncio.AbstractEventLoop | None = None
        self.pool: SandboxPool | None = None
        self.fork_server: "ForkServer | None" = None  # SANDBOX_FORK_SERVER: replaces the pool
        # SANDBOX_FORK_LIGHT_TEMPLATE: a second template, with nothing preloaded, for light runs
        self.light_fork_server: "ForkServer | None" = None
        self.in_flight = 0
        self.queued = 0
        self.completed = 0
        self.cold_starts = 0  # runs and sessions launched because no warm capacity was ready
        self.failures_by_cause: dict[str, int] = {}
        self._reaping: set[asyncio.Task] = set()  # destroy_later(): sandboxes killed, being reaped
        self._renicing: set[asyncio.Task] = set()  # long runs whose priority is being lowered
        self.unavailable_reason: str | None = None  # set when the last sandbox could not start

    @property
    def bwrap(self) -> BwrapBinary:
        if self._bwrap is None:
            self._bwrap = find_bwrap(self.settings)
        return self._bwrap

    def launch_prefix(self, cgroup: RunCgroup | None, cpu_seconds: float | None, uid: int | None = None,
                      *, limits: Settings | None = None) -> list[str]:
        """The chain before bwrap: join the cgroups, drop root, set rlimits (no CPU limit with None).

        `limits`: settings whose run limits apply instead of the runner's (the render sandbox's)."""
        prefix: list[str] = []
        if cgroup is not None:
            joins = "".join(f"echo $$ > {shlex.quote(str(p))} && " for p in cgroup.procs_files)
            prefix += ["/bin/sh", "-c", joins + 'exec "$@"', "sandbox-launch"]
        if self.running_as_root:
            prefix += [
                _tool("setpriv"),
                f"--reuid={uid if uid is not None else self.settings.sandbox_uid}",
                f"--regid={self.settings.sandbox_gid}",
                "--clear-groups",
            ]
        prefix += [_tool("prlimit"), *prlimit_args(limits or self.settings, cpu_seconds, with_fallbacks=cgroup is None), "--"]
        return prefix

    async def run(self, job: SandboxJob) -> SandboxOutcome:
        self.warm_in_background()
        workload = classify(job.code)
        async with self.slot(light=workload is Workload.LIGHT, member=job.owner) as grant:  # light runs go first
            outcome = await self._run_pooled_or_cold(job, workload, grant)
        self._count(outcome)
        return outcome

    async def run_in(self, sandbox: SandboxProcess, job: SandboxJob) -> SandboxOutcome:
        """One job of a session, in its long-lived sandbox: admitted and counted like any run."""
        async with self.slot(light=classify(job.code) is Workload.LIGHT, member=job.owner) as grant:
            self._follow_lanes(grant, sandbox)
            outcome = await sandbox.run_job(job, clock=grant.clock)
            if grant.long or grant.clock.paused_seconds():  # the session's next job starts at normal priority again
                await self._set_priority(sandbox, NORMAL_NICE)
        self._count(outcome)
        return outcome

    @contextlib.asynccontextmanager
    async def slot(self, *, light: bool, member: int | None = None) -> AsyncIterator[Grant]:
        """Hold a place in the one admission queue (admission.py) until the block ends."""
        gate = self._admission()
        self.queued += 1
        self._refills_look_again()  # a run that may have to wait: refills held back go now
        try:
            grant = await gate.acquire(light=light, member=member)
        finally:
            self.queued -= 1
        self.in_flight += 1
        try:
            yield grant
        finally:
            self.in_flight -= 1
            gate.release(grant)
            self._refills_look_again()

    def _refills_look_again(self) -> None:
        """Refills (pool.py) and spare forks (forkserver.py) are held back while runs are in
        flight and none waits (pool.defer_refill): a run that ended or queued changes that."""
        if (pool := self.pool_of_this_loop()) is not None:
            pool.run_ended()
        for server in self.fork_servers_of_this_loop():
            server.run_ended()

    def _count(self, outcome: SandboxOutcome) -> None:
        self.completed += 1
        if outcome.cause is not ExitCause.SANDBOX:
            self.unavailable_reason = None  # a sandbox started: isolation works (again)
        if not outcome.success:
            self.failures_by_cause[outcome.cause.value] = self.failures_by_cause.get(outcome.cause.value, 0) + 1

    def _admission(self) -> AdmissionGate:
        loop = asyncio.get_running_loop()
        if self._gate is None or self._gate_loop is not loop:  # a new event loop (tests): fresh state
            s = self.settings
            # Moving a run aside is only safe when its priority can be lowered: per-run cgroups list its processes.
            long_capacity = s.max_long_runs if self.cgroups.available else 0
            self._gate = AdmissionGate(s.max_concurrent_runs, long_capacity=long_capacity,
                                       long_after=s.run_long_after_seconds,
                                       heavy_long_after=s.run_heavy_long_after_seconds,
                                       pause_memory_bytes=s.paused_runs_memory_mb * 1024 * 1024,
                                       wall_time_factor=s.run_wall_time_factor,
                                       wait_for_probe=True)  # _follow_lanes measures every run
            if long_capacity and (reason := schedstat_unavailable()):
                log.warning("long runs are judged, and time out, by wall time, so time a run waited for a CPU "
                            "counts too: %s", reason)
            self._gate_loop = loop
        return self._gate

    def _follow_lanes(self, grant: Grant, sandbox: SandboxProcess) -> None:
        """A long run uses only the CPU short runs leave, and the queue may pause it
        (admission.py); the sandbox can undo neither."""
        def lower() -> None:
            task = asyncio.get_running_loop().create_task(self._set_priority(sandbox, LONG_RUN_NICE))
            self._renicing.add(task)  # a reference until done (the loop keeps only a weak one)
            task.add_done_callback(self._renicing.discard)
        grant.on_long(lower)
        # Long is judged by the time the run ran or slept, not the time it waited for a CPU.
        grant.measure_with(RunTaskTimes.of_cgroup(sandbox.cgroup) if sandbox.cgroup is not None else None)
        if sandbox.cgroup is not None and sandbox.cgroup.freezer_dir is not None:
            grant.can_pause(_PausableRun(sandbox))

    @staticmethod
    async def _set_priority(sandbox: SandboxProcess, nice: int) -> None:
        await asyncio.to_thread(renice_sandbox, sandbox, nice)

    async def warm_up(self, timeout: float = WARM_UP_TIMEOUT) -> bool:
        """Start the warm capacity and return once it is ready: the fork-server template
        has imported its libraries (SANDBOX_FORK_SERVER), or every pool lane is full.

        False when warm capacity is configured off, or it could not start (within
        `timeout`; it keeps trying in the background and runs start cold meanwhile).
        Stop it with `await close()` before the event loop ends (a loop that ends
        without it drains it when it cancels the keeper).
        """
        server, pool = self.start_warm_capacity()
        ready = server is not None or pool is not None
        try:
            async with asyncio.timeout(timeout):
                if server is not None:
                    ready = all([await each.wait_ready() for each in self.fork_servers_of_this_loop()])
                if pool is not None:
                    await pool.wait_until_full()
                    ready = ready and not pool.closed
        except TimeoutError:
            log.warning("warm capacity not ready after %ss; runs start cold until it is", timeout)
            return False
        return ready

    def start_warm_capacity(self) -> tuple["ForkServer | None", SandboxPool | None]:
        """Begin preparing warm capacity in the background (idempotent): the fork-server template
        and its spares with SANDBOX_FORK_SERVER (they replace both pool lanes), else the pool.
        None where configured off."""
        if self.settings.sandbox_fork_server:
            return self._start_fork_server(), None
        return None, self._start_pool()

    def warm_in_background(self) -> None:
        """First run on this loop and nothing warm started (a library calling execute_code):
        start warm capacity now, unless SANDBOX_WARM_ON_FIRST_RUN is off. This run does not wait."""
        if not self.settings.sandbox_warm_on_first_run:
            return
        if self.fork_server_of_this_loop() is None and self.pool_of_this_loop() is None:
            self.start_warm_capacity()

    def _start_fork_server(self) -> "ForkServer":
        """The data-library template (returned), and the light one with SANDBOX_FORK_LIGHT_TEMPLATE."""
        from interpreter.sandbox.forkserver import ForkServer

        loop = asyncio.get_running_loop()
        for server in (self.fork_server, self.light_fork_server):
            if server is not None and server.loop is not loop:
                server.abandon()  # its loop has ended; its keeper drained it then
        if self.fork_server is not None and self.fork_server.loop is not loop:
            self.fork_server = None
        if self.light_fork_server is not None and self.light_fork_server.loop is not loop:
            self.light_fork_server = None
        if self.fork_server is None:
            self.fork_server = ForkServer(self, preload=",".join(self.settings.sandbox_pool_preload),
                                          spares=self.settings.sandbox_fork_spares,
                                          warm_spares=self.settings.sandbox_fork_warm_spares)
            self.fork_server.start()
        if self.settings.sandbox_fork_light_template and self.light_fork_server is None:
            self.light_fork_server = ForkServer(self, preload="", spares=self.settings.sandbox_fork_light_spares)
            self.light_fork_server.start()
        return self.fork_server

    def fork_server_of_this_loop(self) -> "ForkServer | None":
        server = self.fork_server
        return server if server is not None and server.loop is asyncio.get_running_loop() else None

    def fork_servers_of_this_loop(self) -> "list[ForkServer]":
        """The data-library template's server, then the light one's (where started)."""
        loop = asyncio.get_running_loop()
        return [server for server in (self.fork_server, self.light_fork_server)
                if server is not None and server.loop is loop]

    async def take_warm(self, workload: Workload, cpu_seconds: float) -> "SandboxProcess | None":
        """A started sandbox for one run or a session, with `cpu_seconds` of CPU: forked from
        a template, else from the pool. None: start cold.

        A light run is forked from the light template where there is one: a fork copies
        the page tables of the process it forks (four forks a run), and those of a template
        that imported the data libraries made a print cost ~60 ms of CPU against ~15 ms.
        """
        pool = self.pool_of_this_loop()
        servers = self.fork_servers_of_this_loop()
        if workload is Workload.LIGHT:
            servers.reverse()
        else:
            servers = [server for server in servers if server is self.fork_server]
        for server in servers:
            sandbox = await server.fork(cpu_seconds)
            if sandbox is not None:
                return sandbox
        if pool is not None:
            sandbox = await pool.acquire(workload)
            if sandbox is not None:
                sandbox.cpu_seconds = cpu_seconds  # launched with the largest budget; the message names this one
                return sandbox
        return None

    async def start_pool(self) -> SandboxPool | None:
        """Start keeping warm sandboxes (SANDBOX_POOL_SIZE, SANDBOX_LIGHT_POOL_SIZE). None: configured off.

        Explicit, not on the first run: whoever starts the pool also stops it with
        `await close()` before its event loop ends (the bot's setup_hook and close).
        """
        return self._start_pool()

    def _start_pool(self) -> SandboxPool | None:
        s = self.settings
        if s.sandbox_pool_size <= 0 and s.sandbox_light_pool_size <= 0:
            return None
        if self.pool is not None and self.pool.loop is not asyncio.get_running_loop():
            self._forget_pool_of_another_loop()
        if self.pool is None:
            self.pool = SandboxPool(self, heavy=s.sandbox_pool_size, light=s.sandbox_light_pool_size,
                                    heavy_preload=",".join(s.sandbox_pool_preload))
            self.pool.start()
        return self.pool

    def pool_of_this_loop(self) -> SandboxPool | None:
        """The warm pool, if it was started on the running event loop (a pool belongs to
        the loop that started it; another loop's pool is never used)."""
        pool = self.pool
        return pool if pool is not None and pool.loop is asyncio.get_running_loop() else None

    def _forget_pool_of_another_loop(self) -> None:
        # Its loop has shut down (its keeper drained it then); kill anything left, synchronously.
        for lane in self.pool.lanes.values():
            for warm in list(lane.idle) + ([lane.warming] if lane.warming else []):
                warm.sandbox.kill()
        self.pool = None

    def destroy_later(self, sandbox: SandboxProcess) -> None:
        """Reap a sandbox whose processes were already SIGKILLed, in the background."""
        task = asyncio.get_running_loop().create_task(sandbox.destroy())
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)
        # Cancelled (the loop is shutting down without close()), perhaps before it even
        # started: let the sandbox go at once rather than leave its pipes open.
        task.add_done_callback(lambda done: sandbox.abandon() if done.cancelled() else None)

    async def wait_reaped(self) -> None:
        """Until every finished run's sandbox has exited and its cgroup is gone."""
        while self._reaping:
            await asyncio.gather(*list(self._reaping), return_exceptions=True)

    async def close(self) -> None:
        """Destroy the pooled sandboxes (bot/engine shutdown). Runs still in flight finish."""
        if self.pool is not None:
            await self.pool.close()
        await self.wait_reaped()  # forked runs end before their template goes
        for server in (self.fork_server, self.light_fork_server):
            if server is not None:
                await server.close()

    async def _run_pooled_or_cold(self, job: SandboxJob, workload: Workload, grant: Grant) -> SandboxOutcome:
        sandbox = await self.take_warm(workload, job.timeout)
        if sandbox is not None:
            self._follow_lanes(grant, sandbox)
            return await sandbox.execute(job, grant.clock)  # runs once, then destroyed with its cgroup
        return await self._run_cold(job, grant)

    async def _run_cold(self, job: SandboxJob, grant: Grant) -> SandboxOutcome:
        try:
            venv_dir = await self.packages.ensure_venv()
            sandbox = SandboxProcess(self, venv_dir, cpu_seconds=job.timeout)
            self.cold_starts += 1
            await sandbox.start()
        except (BwrapNotFound, OSError) as exc:
            log.error("cannot start a sandbox: %s", exc)
            self.unavailable_reason = str(exc)
            return SandboxOutcome(cause=ExitCause.SANDBOX, error=SANDBOX_UNAVAILABLE, return_code=-1)
        self._follow_lanes(grant, sandbox)
        return await sandbox.execute(job, grant.clock)

    def describe(self) -> dict:
        """Which isolation layers are active, for /status and start-up logs."""
        try:
            bwrap = f"{self.bwrap.path} ({self.bwrap.source})"
        except BwrapNotFound as exc:
            bwrap = f"missing: {exc}"
        s = self.settings
        return {
            "backend": "bubblewrap",
            "available": self.unavailable_reason is None,
            "unavailable_reason": self.unavailable_reason,
            "bwrap": bwrap,
            "unprivileged_uid": s.sandbox_uid if self.running_as_root else os.geteuid(),
            "uids": self.uids.description if self.running_as_root else f"{os.geteuid()} (the bot's own)",
            "cgroups": self._describe_cgroups(),
            "seccomp": "on" if self.seccomp_program is not None else f"off: {self.seccomp_reason}",
            "network": "none (private loopback only)",
            "fork_server": self.fork_server.describe() if self.fork_server is not None else {
                "enabled": s.sandbox_fork_server, "started": False,
            },
            "light_fork_server": self.light_fork_server.describe() if self.light_fork_server is not None else {
                "enabled": s.sandbox_fork_server and s.sandbox_fork_light_template, "started": False,
            },
            "pool": self.pool.describe() if self.pool is not None else {
                "heavy": {"size": s.sandbox_pool_size}, "light": {"size": s.sandbox_light_pool_size}, "started": False,
            },
            "limits": {
                "timeout_s": s.run_timeout,
                "max_timeout_s": s.max_run_timeout,
                "memory_mb": s.run_memory_mb,
                "processes": s.run_max_processes,
                "workdir_mb": s.run_workdir_mb,
                "open_files": s.run_max_open_files,
                "output_kb": s.output_limit_bytes // 1000,
                "max_file_size_mb": s.max_file_size_mb,
            },
        }

    def _describe_cgroups(self) -> str:
        cgroups = self.cgroups
        if not cgroups.available:
            return f"off: {cgroups.reason}"
        text = f"v{cgroups.version} ({cgroups.controllers} per run)"
        if cgroups.cpu and self.settings.run_cpu_cores > 0:
            text += f", CPU quota {self.settings.run_cpu_cores:g} cores per run"
        elif not cgroups.cpu:
            text += f"; no CPU control: {cgroups.cpu_reason}"
        if self.settings.max_long_runs and (reason := schedstat_unavailable()):
            text += f"; long runs judged and timed by wall time ({reason})"
        return text

    def load(self) -> dict:
        return {
            "in_flight": self.in_flight,
            "queued": self.queued,
            "long": self._gate.long_running if self._gate is not None else 0,
            "paused": self._gate.paused if self._gate is not None else 0,
            "lanes": dataclasses.asdict(self._gate.counts) if self._gate is not None else {},
            "completed": self.completed,
            "max_concurrent": self.settings.max_concurrent_runs,
            "pool_idle": {
                lane.workload.value: len(lane.idle) for lane in self.pool.lanes.values()
            } if self.pool is not None else {},
            "failures_by_cause": dict(self.failures_by_cause),
        }


def runtime_bytecode(sources: dict[str, bytes]) -> dict[str, bytes]:
    """`__pycache__/NAME.TAG.pyc` -> a compiled module, for each runtime module: bound beside
    the sources, they spare every sandbox compiling ~1,200 lines (~5 ms of CPU a run).

    Checked hash-based pycs (PEP 552): the sandbox's Python compares each with its
    source and compiles the source instead when they differ, and ignores them when its
    version (cache tag, magic number) is not the host's; so they can only save time.
    """
    tag = sys.implementation.cache_tag
    if tag is None:  # this Python keeps no bytecode caches
        return {}
    return {f"__pycache__/{name.removesuffix('.py')}.{tag}.pyc": data for name, source in sources.items()
            if (data := _pyc(name, source)) is not None}


@functools.lru_cache(maxsize=32)
def _pyc(name: str, source: bytes) -> bytes | None:
    try:
        code = compile(source, f"{RUNTIME_MOUNT}/{name}", "exec", dont_inherit=True)
    except SyntaxError:  # a runtime under test may be anything; the sandbox reports it
        return None
    header = importlib.util.MAGIC_NUMBER + (0b11).to_bytes(4, "little")  # flags: hash-based, checked
    return header + importlib.util.source_hash(source) + marshal.dumps(code)


def data_fd(name: str, data: bytes) -> int:
    """An fd to read `data` from, for bwrap to copy in (--ro-bind-data, --seccomp).

    A memfd, not a pipe: writing into a pipe nobody reads yet blocks (the event loop!)
    once the data passes the pipe's buffer, and an unprivileged bot's pipes shrink to
    one page when its uid's pipe quota is used up, which a run of the same uid can do.
    """
    fd = os.memfd_create(f"sandbox-{name}", os.MFD_CLOEXEC)  # pass_fds hands bwrap a copy
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def empty_proc_fds() -> dict[str, int]:
    """An empty fd for each of MASKED_PROC_FILES this kernel has (build_bwrap_args's `empty_fds`)."""
    # Not every kernel has them all, e.g. /proc/modules on a kernel built without modules.
    return {path: data_fd("empty", b"") for path in MASKED_PROC_FILES if os.path.exists(path)}


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "unknown"


def _launcher_reason(output: str, rc: int | None) -> str:
    """bwrap's (or setpriv's/prlimit's) own one-line complaint, else the exit status."""
    for line in output.splitlines():
        if line.startswith(("bwrap:", "setpriv:", "prlimit:", "sh:")):
            return line.strip()[:200]
    return f"the launcher exited with status {rc}"


def _load_seccomp() -> tuple[bytes | None, str]:
    try:
        from interpreter.sandbox.seccomp import seccomp_program, seccomp_unavailable_reason
    except ImportError as exc:
        return None, f"seccomp support not installed ({exc})"
    program = seccomp_program()
    return program, "" if program else seccomp_unavailable_reason()


def _tool(name: str) -> str:
    path = shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")
    if path is None:
        raise BwrapNotFound(f"'{name}' (util-linux) is required to start sandboxes")
    return path
