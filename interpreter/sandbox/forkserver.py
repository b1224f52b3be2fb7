"""Warm capacity by forking: one template per sandbox venv generation, one forked child per run.

The template is an ordinary bubblewrap sandbox (same launch chain: its own cgroups,
setpriv, prlimit, bwrap with every namespace) whose Python has imported numpy,
pandas, matplotlib and seaborn once (SANDBOX_POOL_PRELOAD). For each run it forks a
child that builds a private world before anything of the run begins: new user,
mount, pid, network, IPC, UTS and cgroup namespaces, a private /proc, fresh tmpfs
for /tmp, /dev/shm, /work and /data, its own memory and pids cgroup, rlimits from
the job's timeout, no capabilities, no_new_privs and the seccomp filter. What runs
inside is interpreter/runtime/forkserver.py; this module is the host's side.

Promises, and what keeps them:
- A run never reaches the template: it is in a pid namespace below it (the template
  is not visible), it holds none of its descriptors (the request socket is closed
  right after the fork), and every writable mount it can see was made for it (the
  run's init checks mountinfo and refuses to start otherwise).
- Nothing of one run reaches the next: each run starts from the template, never from
  another run, and fork copies memory on write. The template holds no secret (its
  environment is `sandbox_env`) and never sees member data (a request carries only
  limits and four fresh descriptors).
- The host, not the run, puts the run into its cgroups: the child's first act is a
  "hello" on its own socket, the kernel attaches its pid, the host moves that pid into
  the run's memory and pids cgroups and only then says "go".
- Each run has a host uid of its own (per-uid kernel pools are not shared), leased by
  the host from the range launched sandboxes use (uids.py): the host writes the
  template's user namespace maps (the template's uid and the whole range), the template
  keeps CAP_SETUID there alone, takes the leased uid as its effective uid only to clone
  the run's init (so the run's user namespace is owned by that uid), and the init maps
  inside-uid 1000 onto it and takes it for real, effective and saved uid before its
  hello. The host checks the uid the kernel attaches to the run's hello; the lease ends
  when the run's cgroup is empty.
- A template that dies is replaced (with backoff); meanwhile `fork` returns None and
  the run starts cold. A new sandbox venv generation gets a new template; the old
  one serves no new run and exits once the runs forked from it have ended.

Runs in flight die with their template (its pid namespace ends with it): a template
only dies by a bug or an admin's kill, and such a run reports that it was killed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import resource
import signal
import socket
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING

from interpreter.sandbox.bwrap import build_bwrap_args, run_tmpfs_sizes, sandbox_env
from interpreter.sandbox.limits import RunCgroup, run_rlimits
from interpreter.sandbox.pool import WARMING_NICE, defer_refill, pooled_cpu_seconds, stop_keeper
from interpreter.sandbox import runner as sandbox_runner
from interpreter.sandbox.runner import NORMAL_NICE, SandboxProcess, data_fd

if TYPE_CHECKING:
    from interpreter.sandbox.runner import SandboxRunner

log = logging.getLogger(__name__)

READY_TIMEOUT = 120.0  # the template's imports; a loaded machine may take long
HANDSHAKE_TIMEOUT = 10.0  # a fork and one message: anything slower means the template is stuck
RUN_READY_TIMEOUT = 10.0  # a forked run's namespaces and mounts (~20 ms normally)
MAX_BACKOFF = 30.0  # between failed template starts: a broken venv must not spin the CPU
SPARE_READY_TIMEOUT = 60.0  # a spare sets up and warms up at a low CPU weight: slow while runs keep the CPUs
# A spare's warm-up chart (~0.1-0.3 s of CPU in its member process) must not come out of the
# CPU the member's job may use: a warming spare's RLIMIT_CPU is this much higher.
WARM_UP_CPU_SECONDS = 1
# While data-library runs arrive (one within this long), every spare warms up; once none has
# for this long, only SANDBOX_FORK_WARM_SPARES do (a warmed spare holds ~20 MB more).
BUSY_SECONDS = 30.0
FAILED_FORKS_BEFORE_RESTART = 3  # consecutive forks that never became ready: relaunch the template
OUTPUT_KEPT = 4000  # of the template's own stderr, for the log
_CREDENTIALS = struct.Struct("iII")  # struct ucred: pid, uid, gid


class ForkFailed(Exception):
    """The template could not give this run a child; the run starts cold instead."""


@dataclasses.dataclass
class _Template:
    proc: asyncio.subprocess.Process
    requests: socket.socket  # our end; SO_PASSCRED, non-blocking
    cgroup: RunCgroup | None
    venv_dir: Path
    generation: int
    preload: str
    uid: int | None  # the host uid leased for the template (each run leases one of its own)
    runs_get_own_uids: bool = False  # the reserved range is mapped in the template's user namespace
    started_at: float = dataclasses.field(default_factory=time.monotonic)
    python_pid: int | None = None  # the template's Python, as the host sees it (from its "ready")
    ready: bool = False
    retired: bool = False
    in_use: int = 0  # forked runs not yet destroyed
    failed_forks: int = 0  # in a row
    output: bytearray = dataclasses.field(default_factory=bytearray)
    output_task: asyncio.Task | None = None

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def can_fork(self, generation: int) -> bool:
        return self.ready and self.alive and not self.retired and self.generation == generation

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)  # bwrap; --die-with-parent ends its pid namespace
        if self.cgroup is not None:
            self.cgroup.kill_all()
        self.requests.close()

    async def destroy(self, runner: "SandboxRunner") -> None:
        self.stop()
        with contextlib.suppress(ProcessLookupError):
            await self.proc.wait()
        if self.output_task is not None:
            self.output_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.output_task
        gone = True
        if self.cgroup is not None:
            gone = await self.cgroup.remove_when_empty()  # its processes leave a moment after bwrap exits
        if gone:  # the uid is reused only once nothing of the template is left
            runner.uids.release(self.uid)


# Pools the kernel counts per user namespace level ("ucounts") and caps, at each level,
# by the rlimit its namespace's creator had. Every forked run's namespace lies below the
# template's, so at the level of the template's own uid all forked runs are summed and
# capped by the template's rlimit (the bot's own): with that same limit, one forked run
# queuing its 96,363 pending signals left none to any other, whatever its uid. Raising
# the template's limit needs CAP_SYS_RESOURCE, which containers rarely grant; so each
# forked run gets an equal share instead, for as many forked runs as can be alive at
# once (runs, sessions, spares).
UCOUNT_RLIMITS = ("RLIMIT_SIGPENDING", "RLIMIT_MEMLOCK", "RLIMIT_MSGQUEUE")


def run_pool_limits(settings) -> dict[str, tuple[int, int]]:
    """The rlimits of UCOUNT_RLIMITS for one forked run."""
    live = settings.max_concurrent_runs + settings.max_sessions + settings.sandbox_fork_spares
    if settings.sandbox_fork_light_template:
        live += settings.sandbox_fork_light_spares
    limits = {}
    for name in UCOUNT_RLIMITS:
        soft, _hard = resource.getrlimit(getattr(resource, name))
        if soft != resource.RLIM_INFINITY:  # unlimited: nothing shared is capped
            share = max(1, soft // max(1, live))
            limits[name] = (share, share)
    return limits


UID_IN_TEMPLATE = 1000  # the template's own uid inside its user namespace (bwrap's --uid, as for any run)
INFO_LIMIT = 64 * 1024  # bwrap's --info-fd JSON: a few hundred bytes


@dataclasses.dataclass
class _UsernsSetup:
    """The host's half of bwrap's `--userns-block-fd`/`--info-fd`: bwrap reports the pid of
    its sandbox child and waits while we, root in the parent namespace, write that child's
    user namespace maps. Only root may write a map of more than the writer's own uid: this
    is how the reserved uid range gets into the template's namespace."""

    info_r: int
    info_w: int  # bwrap's
    block_r: int  # bwrap's
    block_w: int

    @classmethod
    def open(cls) -> "_UsernsSetup":
        info_r, info_w = os.pipe()
        block_r, block_w = os.pipe()
        return cls(info_r, info_w, block_r, block_w)

    @property
    def bwrap_fds(self) -> tuple[int, int]:
        return self.block_r, self.info_w

    async def write_maps(self, uid_map: str, gid_map: str) -> None:
        """Raises OSError, ValueError or TimeoutError when bwrap did not get that far."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=INFO_LIMIT)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                    os.fdopen(self.info_r, "rb", buffering=0))
        self.info_r = -1
        try:
            info = await asyncio.wait_for(reader.read(INFO_LIMIT), HANDSHAKE_TIMEOUT)
            while info and not reader.at_eof() and len(info) < INFO_LIMIT:  # bwrap closes it when done
                info += await asyncio.wait_for(reader.read(INFO_LIMIT - len(info)), HANDSHAKE_TIMEOUT)
        finally:
            transport.close()
        child = json.loads(info or b"{}").get("child-pid")
        if not isinstance(child, int) or isinstance(child, bool) or child <= 1:
            raise ValueError(f"bwrap reported no sandbox pid ({info[:200]!r})")
        Path(f"/proc/{child}/uid_map").write_text(uid_map)
        Path(f"/proc/{child}/gid_map").write_text(gid_map)
        os.write(self.block_w, b"1")  # bwrap's sandbox goes on

    def close_bwrap_ends(self) -> None:
        self._close("info_w", "block_r")

    def close(self) -> None:
        self._close("info_r", "info_w", "block_r", "block_w")

    def _close(self, *names: str) -> None:
        for name in names:
            fd = getattr(self, name)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, -1)


class ForkServer:
    """The fork-server template of one runner, on the event loop that started it."""

    def __init__(self, runner: "SandboxRunner", *, preload: str, spares: int, warm_spares: int = 0) -> None:
        self.runner = runner
        self.packages = runner.packages
        self.preload = preload
        self.loop: asyncio.AbstractEventLoop | None = None
        self.template: _Template | None = None
        self.retired: list[_Template] = []  # old generations, waiting for their runs to end
        self.closed = False
        self.started = 0
        self.launch_failures = 0
        self.deaths = 0  # templates that died while serving
        self.forked = 0
        self.fork_failures = 0
        self.last_failure = ""
        self.own_uids_refused: str | None = None  # why forked runs share the template's uid, if they do
        self.spares_target = spares
        # Up to this many spares draw a throwaway chart in their own process before they are
        # ready (only a template that preloaded matplotlib has one to draw: bootstrap.warm_up);
        # the others wait as forked. A warmed spare holds ~20 MB more (the pages its chart
        # copied ahead): idle, the default warms one of two (the idle memory goal); while
        # runs arrive (busy_until), every spare does (the charts' latency goals).
        self.warm_spares = warm_spares if "matplotlib" in preload.split(",") else 0
        self.busy_until = 0.0  # time.monotonic() until which runs count as arriving
        self.spares: collections.deque[ForkedSandbox] = collections.deque()  # forked ahead, waiting for a job
        self.served_spare = 0
        self._wake = asyncio.Event()
        self._runs_ended = asyncio.Event()
        self._ready_changed = asyncio.Condition()
        self._keeper: asyncio.Task | None = None
        self._reaping: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._keeper is not None or self.closed:
            return
        self.loop = asyncio.get_running_loop()
        self._keeper = self.loop.create_task(self._keep(), name="fork-server-keeper")
        _OPEN.add(self)  # the loop holds tasks weakly; a dropped runner must still be drained

    @property
    def ready(self) -> bool:
        return self.template is not None and self.template.can_fork(self.packages.generation)

    @property
    def full(self) -> bool:
        return self.ready and len(self.spares) >= self.spares_target

    @property
    def warm_target(self) -> int:
        """How many spares should be warmed now: all while runs arrive, else SANDBOX_FORK_WARM_SPARES."""
        if self.warm_spares and time.monotonic() < self.busy_until:
            return max(self.spares_target, self.warm_spares)
        return self.warm_spares

    @property
    def settled(self) -> bool:
        """Full, with as many warmed spares as the moment wants (what idle memory is measured on)."""
        return self.full and sum(spare.warm for spare in self.spares) == min(self.warm_target, self.spares_target)

    async def wait_ready(self) -> bool:
        """Until a template of the current generation is ready with its spares forked (True), or
        the server closed or the next template start failed (False: the keeper retries later,
        runs start cold)."""
        if not self.ready:
            self._wake.set()  # perhaps a new generation the keeper has not noticed yet
        failures = self.launch_failures
        async with self._ready_changed:
            await self._ready_changed.wait_for(lambda: self.full or self.closed or self.launch_failures > failures)
        return self.ready

    async def wait_idle(self) -> None:
        """Until runs no longer count as arriving and the spares are what an idle server keeps
        (BUSY_SECONDS after the last run; the benchmark measures idle memory then)."""
        while not self.closed:
            left = self.busy_until - time.monotonic()
            if left > 0:
                await asyncio.sleep(left)
            await self.wait_settled()
            if time.monotonic() >= self.busy_until:
                return

    async def wait_settled(self) -> None:
        """Until every spare is forked, as many of them warmed as the moment wants (or closed)."""
        async with self._ready_changed:
            await self._ready_changed.wait_for(lambda: self.settled or self.closed)

    async def close(self) -> None:
        """Stop the template(s); runs already forked finish first (their template must outlive them)."""
        self.closed = True
        keeper, self._keeper = self._keeper, None
        await stop_keeper(keeper)
        await self._stop_all()

    async def _stop_all(self) -> None:
        spares = list(self.spares)
        self.spares.clear()
        await asyncio.gather(*(spare.destroy() for spare in spares), return_exceptions=True)
        templates = [t for t in [self.template, *self.retired] if t is not None]
        self.template, self.retired = None, []
        await asyncio.gather(*(t.destroy(self.runner) for t in templates), return_exceptions=True)
        _OPEN.discard(self)
        async with self._ready_changed:
            self._ready_changed.notify_all()

    # ------------------------------------------------------------------ keeping a template

    async def _keep(self) -> None:
        backoff = 0.5
        me = asyncio.current_task()
        try:
            while not self.closed and not me.cancelling():  # see SandboxPool._keep
                current = self.template
                if current is not None and current.failed_forks >= FAILED_FORKS_BEFORE_RESTART and not current.retired:
                    log.warning("fork-server template failed %d forks in a row; replacing it: %s",
                                current.failed_forks, self.last_failure)
                    current.retired = True
                if current is not None and current.can_fork(self.packages.generation):
                    warmed = sum(spare.warm for spare in self.spares)
                    if len(self.spares) < self.spares_target:
                        await self._add_spare(current)
                    elif warmed < min(self.warm_target, len(self.spares)):
                        # Runs arrive: a warmed spare first, then one as forked goes (not
                        # before: the charts arriving meanwhile still find it).
                        await self._add_spare(current)
                        self._drop_spares(lambda spare: not spare.warm, len(self.spares) - self.spares_target)
                    elif not self._drop_spares(lambda spare: spare.warm, warmed - self.warm_target):
                        busy_left = self.busy_until - time.monotonic()
                        await self._wait_for_change(current, busy_left if busy_left > 0 else None)
                    continue
                if current is not None:
                    self.template = None
                    self._replace(current)
                if await self._launch():
                    backoff = 0.5
                else:
                    await asyncio.sleep(backoff)
                    backoff = min(MAX_BACKOFF, backoff * 2)
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - warm capacity is an optimisation: runs go cold without it
            log.exception("fork-server keeper stopped; runs start cold from now on")
        finally:
            self.closed = True
            await self._stop_all()

    def _drop_spares(self, which, count: int) -> bool:
        """Destroy up to `count` waiting spares `which` picks, the last forked first: a warmed
        spare too many once runs stopped arriving (the refill forks one as forked), or one as
        forked that a warmed spare replaced. True if any went."""
        dropped = [spare for spare in reversed(self.spares) if which(spare)][:max(count, 0)]
        for spare in dropped:
            self.spares.remove(spare)
            self._destroy_later(spare)
        return bool(dropped)

    async def _wait_for_change(self, template: _Template, timeout: float | None = None) -> None:
        """Until the template dies, a fork asks for a look (a new generation, failed forks, a
        spare taken), or `timeout` (runs stop counting as arriving)."""
        self._wake.clear()
        died = asyncio.ensure_future(template.proc.wait())
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({died, woken}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            died.cancel()
            woken.cancel()

    async def _add_spare(self, template: _Template) -> None:
        """Fork one run ahead, once the runs in flight have ended (or after REFILL_DEFER_SECONDS),
        at once while runs wait in the queue (pool.defer_refill): setting a fork up costs CPU the
        run that just took a spare would feel, but a queued run would pay it while it waits."""
        await defer_refill(self.runner, self._runs_ended, lambda: self.closed)
        if self.closed or self.template is not template or not template.can_fork(self.packages.generation):
            return
        spare = await self._fork_now(template, pooled_cpu_seconds(self.runner.settings), spare=True)
        if spare is None:
            await asyncio.sleep(min(MAX_BACKOFF, 0.5 * 2 ** template.failed_forks))  # a broken fork must not spin
        elif self.closed or self.template is not template:
            await spare.destroy()
        else:
            self.spares.append(spare)
            async with self._ready_changed:
                self._ready_changed.notify_all()

    def run_ended(self) -> None:
        """The runner's word that a run left its slot or joined the queue: a deferred spare
        looks again (pool.defer_refill)."""
        self._runs_ended.set()

    def _replace(self, template: _Template) -> None:
        """The template can no longer fork runs: say why, and let it go."""
        if not template.alive:
            self.deaths += 1
            log.warning("fork-server template ended (status %s): %s; runs start cold until it is replaced",
                        template.proc.returncode, _tail(template.output))
        elif template.generation != self.packages.generation:
            log.info("sandbox venv generation %s -> %s: a new fork-server template",
                     template.generation, self.packages.generation)
        self._retire(template)

    async def _launch(self) -> bool:
        runner, settings = self.runner, self.runner.settings
        venv_dir = await self.packages.ensure_venv()
        generation = self.packages.generation
        cgroup = runner.cgroups.create(settings) if runner.cgroups.available else None
        uid = runner.uids.acquire() if runner.running_as_root else None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        ours.setblocking(False)
        fds = [theirs.detach()]
        userns_setup: _UsernsSetup | None = None
        try:
            if uid is not None and self.own_uids_refused is None:  # root: we write the template's uid map
                userns_setup = _UsernsSetup.open()
            # Read from runner.py at each launch, not imported by value: the one reference cold
            # runs use too, so a swapped bootstrap reaches both launch paths.
            bootstrap_fd = data_fd("bootstrap", sandbox_runner.BOOTSTRAP_SOURCE)
            fds.append(bootstrap_fd)
            module_fds = {}
            for name, source in sandbox_runner.RUNTIME_MODULES.items():  # forkserver.py among them
                module_fds[name] = data_fd(name, source)
                fds.append(module_fds[name])
            seccomp_fd = None
            if runner.seccomp_program is not None:
                seccomp_fd = data_fd("seccomp", runner.seccomp_program)
                fds.append(seccomp_fd)
            args = build_bwrap_args(settings, runner.bwrap, venv_dir, bootstrap_fd=bootstrap_fd,
                                    control_fd=fds[0], job_fd=-1, seccomp_fd=seccomp_fd,
                                    env=sandbox_env(self.preload), module_fds=module_fds, fork_server=True,
                                    userns_from_host=userns_setup.bwrap_fds if userns_setup else None)
            proc = await asyncio.create_subprocess_exec(
                *runner.launch_prefix(cgroup, None, uid), *args,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                pass_fds=[*fds, *(userns_setup.bwrap_fds if userns_setup else ())], env={}, cwd="/",
                start_new_session=True,
            )
        except Exception as exc:  # noqa: BLE001 - bwrap missing, no fds...: runs go cold, the log says why
            ours.close()
            if userns_setup is not None:
                userns_setup.close()
            if cgroup is not None:
                cgroup.remove()
            runner.uids.release(uid)
            self.last_failure = f"the template could not be launched: {exc}"
            log.error("fork server: %s", self.last_failure)
            await self._launch_failed()
            return False
        finally:
            for fd in fds:
                os.close(fd)
            if userns_setup is not None:
                userns_setup.close_bwrap_ends()  # bwrap has its copies: EOF on info_r once it closes its own
        template = _Template(proc, ours, cgroup, venv_dir, generation, self.preload, uid,
                             runs_get_own_uids=userns_setup is not None)
        template.output_task = asyncio.ensure_future(_keep_tail(proc.stdout, template.output))
        self.template = template
        self.started += 1
        try:
            if userns_setup is not None:
                try:
                    await userns_setup.write_maps(runner.uids.template_uid_map(uid, UID_IN_TEMPLATE),
                                                  f"{UID_IN_TEMPLATE} {settings.sandbox_gid} 1\n")
                except PermissionError as exc:  # e.g. a container that forbids it: the next template goes without
                    self.own_uids_refused = f"the host may not write the template's uid map ({exc.strerror})"
                    log.warning("fork server: %s; forked runs share the template's uid", self.own_uids_refused)
                    raise
            message, credentials = await _receive(ours, READY_TIMEOUT, until_dead=proc)
            hello = json.loads(message) if message else {}
        except (TimeoutError, ValueError, OSError) as exc:
            message, credentials, hello = b"", None, {"error": str(exc)}
        finally:
            if userns_setup is not None:
                userns_setup.close()
        if hello.get("kind") != "ready" or credentials is None:
            self.last_failure = f"the template did not start: {_tail(template.output) or hello}"
            log.error("fork server: %s", self.last_failure)
            self.template = None
            self._reap(template)
            await self._launch_failed()
            return False
        template.python_pid = credentials[0]
        template.ready = True
        async with self._ready_changed:
            self._ready_changed.notify_all()
        log.info("fork-server template ready (generation %s, preload %s) in %.1f s",
                 generation, self.preload or "(none)", time.monotonic() - template.started_at)
        if isinstance(hello.get("notice"), str):  # e.g. seaborn's scipy imported eagerly after all
            log.warning("fork-server template: %s", " ".join(hello["notice"][:500].split()))
        async with self._ready_changed:
            self._ready_changed.notify_all()
        return True

    async def _launch_failed(self) -> None:
        self.launch_failures += 1
        async with self._ready_changed:
            self._ready_changed.notify_all()

    def _retire(self, template: _Template) -> None:
        """No new runs from it; it is stopped once the runs forked from it have ended."""
        template.retired = True
        for spare in [spare for spare in self.spares if spare.template is template]:
            self.spares.remove(spare)
            self._destroy_later(spare)
        if template.in_use == 0:
            self._reap(template)
        else:
            self.retired.append(template)

    def _reap(self, template: _Template) -> None:
        template.stop()
        self._track(template.destroy(self.runner))

    def _destroy_later(self, sandbox: "ForkedSandbox") -> None:
        sandbox.kill()
        self._track(sandbox.destroy())

    def _track(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

    def released(self, template: _Template) -> None:
        """A forked run of `template` was destroyed."""
        template.in_use -= 1
        if template.retired and template.in_use <= 0 and template in self.retired:
            self.retired.remove(template)
            self._reap(template)

    # ------------------------------------------------------------------ forking a run

    async def fork(self, cpu_seconds: float) -> "ForkedSandbox | None":
        """A ready sandbox forked from the template, or None: start the run cold.

        `cpu_seconds` is the run's RLIMIT_CPU (its timeout, or a session's budget).
        """
        template = self.template
        self.busy_until = time.monotonic() + BUSY_SECONDS
        self._wake.set()  # the keeper looks: warm the spares up for the runs arriving
        if self.closed or template is None or not template.can_fork(self.packages.generation):
            return None  # perhaps a new generation: the keeper looks
        while self.spares:
            # A warmed spare first: its member's first chart is the faster.
            spare = next((spare for spare in self.spares if spare.warm), self.spares[0])
            self.spares.remove(spare)
            self._wake.set()  # the keeper forks the next one
            if spare.template is template and spare.can_take_job and cpu_seconds <= spare.cpu_seconds:
                if spare.cgroup is not None:  # its job competes as any run does
                    spare.cgroup.set_cpu_weight(NORMAL_NICE)
                self.served_spare += 1
                self.forked += 1
                return spare
            self._destroy_later(spare)
        sandbox = await self._fork_now(template, cpu_seconds)
        if sandbox is not None:
            self.forked += 1
        return sandbox

    async def _fork_now(self, template: _Template, cpu_seconds: float, *,
                        spare: bool = False) -> "ForkedSandbox | None":
        """A run forked now: for a job waiting (at normal CPU weight), or a `spare` forked ahead
        (at WARMING_NICE until a job takes it, warming up while fewer than warm_target waiting did)."""
        warm = spare and sum(waiting.warm for waiting in self.spares) < self.warm_target
        sandbox = ForkedSandbox(self, template, cpu_seconds=cpu_seconds, spare=spare, warm=warm)
        try:
            await sandbox.start()
            ready = await asyncio.wait_for(sandbox.wait_ready(), SPARE_READY_TIMEOUT if spare else RUN_READY_TIMEOUT)
        except (ForkFailed, OSError, TimeoutError) as exc:
            ready = False
            sandbox._watch.output += str(exc).encode()
        except BaseException:
            sandbox.abandon()
            raise
        if not ready:
            self.fork_failures += 1
            template.failed_forks += 1
            self.last_failure = bytes(sandbox._watch.output[-500:]).decode(errors="replace").strip()
            log.warning("fork server: a run could not be forked (it starts cold): %s", self.last_failure)
            await sandbox.destroy()
            self._wake.set()
            return None
        template.failed_forks = 0
        return sandbox

    def describe(self) -> dict:
        template = self.template
        return {
            "ready": self.ready,
            "generation": template.generation if template else None,
            "preload": self.preload or "(none)",
            "templates_started": self.started,
            "template_deaths": self.deaths,
            "runs_forked": self.forked,
            "spares": f"{len(self.spares)} of {self.spares_target}",
            "warmed_spares": f"{sum(spare.warm for spare in self.spares)} of {min(self.warm_target, self.spares_target)}"
                             + (" (runs arriving)" if self.warm_target > self.warm_spares else ""),
            "served_by_a_spare": self.served_spare,
            "fork_failures": self.fork_failures,
            "run_uids": "one per run" if template is not None and template.runs_get_own_uids
                        else f"the template's ({self.own_uids_refused or 'the bot is not root'})",
            "retired_templates_in_use": len(self.retired),
            "last_failure": self.last_failure or None,
            "closed": self.closed,
        }

    def template_pids(self) -> set[int]:
        """Every host process of the current template (tests, benchmarks)."""
        template = self.template
        if template is None:
            return set()
        return {template.proc.pid} | (template.cgroup.pids() if template.cgroup else set())

    def abandon(self) -> None:
        """Kill everything at once, without waiting (a loop that ended without close())."""
        for spare in self.spares:
            spare.abandon()
        self.spares.clear()
        for template in [self.template, *self.retired]:
            if template is not None:
                template.stop()
        self.template, self.retired = None, []


_OPEN: "set[ForkServer]" = set()


# ---------------------------------------------------------------------- one forked run


class ForkedProcess:
    """The parts of asyncio.subprocess.Process that SandboxProcess uses, for a forked run.

    `pid` is the run's pid 1 (its init, the template's child) as the host sees it;
    signals go through a pidfd, so a reused pid is never signalled. Its exit status comes
    from the template, which reaps it and sends it on the run's socket (no process of the
    run holds that socket by then); without one, the template itself died, and the run
    with it (its init's PDEATHSIG): SIGKILLed.
    """

    def __init__(self, pid: int, pidfd: int, handshake: socket.socket, stdout: asyncio.StreamReader,
                 stdout_transport: asyncio.ReadTransport) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stdout = stdout
        self._transport = _OutputPipe(stdout_transport)  # SandboxProcess._output_pending and _close_channels look here
        self._pidfd = pidfd
        self._handshake = handshake
        self._exited = asyncio.Event()
        self._watcher = asyncio.ensure_future(self._watch_exit())

    async def _watch_exit(self) -> None:
        status = -signal.SIGKILL
        try:
            message, _ = await _receive(self._handshake, None)
            reported = json.loads(message).get("exit") if message else None
            if isinstance(reported, int) and not isinstance(reported, bool):
                status = reported
        except (OSError, ValueError, AttributeError):
            pass
        with contextlib.suppress(OSError, ValueError):  # (a pidfd closed by release: let go of already)
            await _readable(self._pidfd)  # the init itself has gone
        self._ended(status)

    def _ended(self, status: int) -> None:
        if self.returncode is None:
            self.returncode = status
        self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)  # the run's init follows (PDEATHSIG)

    def release(self) -> None:
        """Let go of the run: killed, and no longer watched. Whoever still waits for it is
        told it was killed rather than left waiting for a status nobody will read."""
        self._watcher.cancel()
        with contextlib.suppress(OSError):
            os.close(self._pidfd)
        self._handshake.close()
        self._ended(-signal.SIGKILL)


@dataclasses.dataclass
class _OutputPipe:
    """Stands in for the subprocess transport: the run's output pipe is its fd 1."""

    stdout: asyncio.ReadTransport

    def get_pipe_transport(self, fd: int):
        return self.stdout if fd == 1 else None

    def close(self) -> None:
        self.stdout.close()


class ForkedSandbox(SandboxProcess):
    """A SandboxProcess whose process comes from the fork-server template instead of bwrap."""

    def __init__(self, server: ForkServer, template: _Template, *, cpu_seconds: float, spare: bool = False,
                 warm: bool = False) -> None:
        super().__init__(server.runner, template.venv_dir, preload=template.preload, cpu_seconds=cpu_seconds)
        self.server = server
        self.template = template
        self.spare = spare  # forked ahead: a low CPU weight until a job takes it (ForkServer.fork)
        self.warm = warm  # its member process draws the warm-up chart before it is ready
        self._released = False

    async def start(self) -> None:
        runner, settings = self.runner, self.settings
        loop = asyncio.get_running_loop()
        self.cgroup = runner.cgroups.create(settings) if runner.cgroups.available else None
        if self.cgroup is not None and self.spare:  # its set-up and warm-up yield to the runs in flight
            self.cgroup.set_cpu_weight(WARMING_NICE)
        if self.template.runs_get_own_uids:  # released by destroy(), once nothing of the run is left
            self.uid = runner.uids.acquire()
        self.template.in_use += 1
        job_r, job_w = os.pipe()
        output_r, output_w = os.pipe()
        control_r, control_w = os.pipe()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        ours.setblocking(False)
        request = {
            "rlimits": run_rlimits(settings, self.cpu_seconds + (WARM_UP_CPU_SECONDS if self.warm else 0),
                                   with_fallbacks=self.cgroup is None) | run_pool_limits(settings),
            "tmpfs": run_tmpfs_sizes(settings),
            "uid": self.uid,  # a host uid: the template finds it in its user namespace's map
            "warm": self.warm,
        }
        try:
            try:
                socket.send_fds(self.template.requests, [json.dumps(request).encode()],
                                [job_r, output_w, control_w, theirs.fileno()])
            finally:
                for fd in (job_r, output_w, control_w):
                    os.close(fd)
                theirs.close()
            message, credentials = await _receive(ours, HANDSHAKE_TIMEOUT)
            if message != b"hello" or credentials is None:
                raise ForkFailed(f"the template did not fork the run ({_tail(self.template.output)})")
            pid = credentials[0]
            pidfd = os.pidfd_open(pid)
            try:
                self._check_parent(pid)
                if self.uid is not None and credentials[1] != self.uid:
                    raise ForkFailed(f"the run has host uid {credentials[1]}, not the {self.uid} leased for it")
                if self.cgroup is not None:
                    self.cgroup.join(pid)
                ours.send(b"go")
            except BaseException:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                os.close(pidfd)
                raise
            stdout = asyncio.StreamReader(limit=2**16)
            stdout_transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(stdout), os.fdopen(output_r, "rb", buffering=0))
            output_r = -1
            self.proc = ForkedProcess(pid, pidfd, ours, stdout, stdout_transport)
        except BaseException:
            for fd in (job_w, output_r, control_r):
                if fd >= 0:
                    os.close(fd)
            ours.close()
            raise
        await self._watch_channels(control_r, job_w)

    def _check_parent(self, pid: int) -> None:
        """The process that said hello must be a child of our template's Python."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            parent = int(stat.rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError) as exc:
            raise ForkFailed(f"the forked run vanished ({exc})") from None
        if parent != self.template.python_pid:
            raise ForkFailed(f"process {pid} said hello but is not the template's child")

    def kill(self) -> None:
        if isinstance(self.proc, ForkedProcess):
            self.proc.kill()
        if self.cgroup is not None:
            self.cgroup.kill_all()

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        if isinstance(self.proc, ForkedProcess):
            self.proc.release()
        self.server.released(self.template)

    def abandon(self) -> None:
        super().abandon()
        self._release()

    async def destroy(self) -> None:
        try:
            await super().destroy()
        finally:
            self._release()


# ---------------------------------------------------------------------- small helpers



async def _receive(sock: socket.socket, timeout: float | None, *,
                   until_dead: asyncio.subprocess.Process | None = None) -> tuple[bytes, tuple[int, int, int] | None]:
    """One message and its sender's credentials (pid as the host sees it); b"" at EOF."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future = loop.create_future()

    def on_readable() -> None:
        try:
            message, ancillary, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(_CREDENTIALS.size))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            received.done() or received.set_exception(exc)
            return
        credentials = None
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(data) >= _CREDENTIALS.size:
                credentials = _CREDENTIALS.unpack(data[:_CREDENTIALS.size])
        received.done() or received.set_result((message, credentials))

    fd = sock.fileno()
    loop.add_reader(fd, on_readable)
    died = asyncio.ensure_future(until_dead.wait()) if until_dead is not None else None
    try:
        waiting = {received} | ({died} if died else set())
        done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if received in done:
            return received.result()
        if died is not None and died in done:
            return b"", None
        raise TimeoutError("no answer")
    finally:
        loop.remove_reader(fd)
        if died is not None:
            died.cancel()
        if not received.done():
            received.cancel()


async def _readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def _keep_tail(stream: asyncio.StreamReader, into: bytearray) -> None:
    while chunk := await stream.read(4096):
        into += chunk
        del into[:-OUTPUT_KEPT]


def _tail(output: bytearray) -> str:
    return bytes(output[-500:]).decode(errors="replace").strip()
