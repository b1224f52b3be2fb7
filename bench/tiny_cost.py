"""Where the CPU of one tiny run goes: the bot's process, the fork-server templates and
the runs forked from them, the kernel's worker threads, the whole machine.

    cd /work/main && .venv/bin/python -m bench.tiny_cost                 # 3 rounds of 150 prints
    .venv/bin/python -m bench.tiny_cost --rounds 5 --runs 200 --perf     # + a per-process breakdown

Each round submits `--runs` prints from as many members at once through the bot's path
(bench/bot_path.py) with the default warm capacity, after `warm_up()`, and waits until
every finished run's sandbox is reaped, so teardown is counted. CPU per run:
- host: this process (getrusage): engine, admission, audit, launch and teardown;
- forked: a cpuacct group of this benchmark's own (the v1 cpuacct hierarchy, which the
  project does not use) holding the templates, so every process forked from them (the
  runs' inits, which are their supervisors, members, spares) and the kernel's work done in their name
  (fork, unshare, mounts, exit) is counted;
- kworkers: the kernel threads (kworker, ksoftirqd, rcu) of the whole machine, from
  /proc: network-namespace cleanup and cgroup freeing happen there (other processes'
  work too: noisy on a shared machine);
- machine: /proc/stat's busy time over the round.

`--perf` also samples the templates' process trees and the whole machine with
`perf record` and splits the forked time by process (template, init (the run's pid 1 and
supervisor), member) and by what it was doing (page faults, fork, unshare, mount, exit, ...).
Needs root, a built sandbox venv (SANDBOX_VENV_DIR), and `perf` for --perf.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import glob
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bot_path import bot_scheduler, run_like_a_member  # noqa: E402
from bench.run_bench import TINY, make_settings  # noqa: E402

CPUACCT = Path("/sys/fs/cgroup/cpuacct")
KERNEL_THREADS = ("kworker", "ksoftirqd", "rcu")
ROLES = {0: "template", 1: "init", 2: "member"}  # a run: the template clones its init, which forks the member


def kernel_thread_ticks() -> int:
    total = 0
    for path in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        if text[text.index("(") + 1:text.rindex(")")].startswith(KERNEL_THREADS):
            fields = text.rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
    return total


def machine_busy_ticks() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return sum(fields[i] for i in (0, 1, 2, 5, 6)), fields[3] + fields[4]


async def measure(rounds: int, runs: int, concurrent: int, perf_dir: Path | None) -> None:
    import interpreter

    settings = make_settings(Path(tempfile.mkdtemp()), heavy=None, light=None, fork_server=None,
                             concurrent=concurrent)
    engine = interpreter.configure(settings)
    group = CPUACCT / f"bench-tiny-cost-{os.getpid()}"
    perf: list[subprocess.Popen] = []
    try:
        await interpreter.warm_up()
        scheduler = bot_scheduler(settings, members=runs, runs_each=1)
        for member in range(10):  # a first run of each kind pays for what warm_up does not
            await run_like_a_member(scheduler, 1000 + member, TINY)
        await interpreter.warm_up()
        runner = engine.runner
        templates = sorted({pid for server in runner.fork_servers_of_this_loop() for pid in server.template_pids()})
        if not templates:
            raise SystemExit("no fork-server template is running (SANDBOX_FORK_SERVER off?)")
        group.mkdir()
        for pid in templates:  # their children from now on are counted here
            try:
                (group / "cgroup.procs").write_text(str(pid))
            except OSError:
                pass
        if perf_dir is not None:
            perf = [subprocess.Popen(["perf", "record", "-q", "-F", "1000", "-g", "-o", str(perf_dir / name), *where],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    for name, where in (("forked.data", ["-p", ",".join(map(str, templates))]),
                                        ("machine.data", ["-a"]))]
            await asyncio.sleep(1)
        for _ in range(rounds):
            await interpreter.warm_up()
            before_self = resource.getrusage(resource.RUSAGE_SELF)
            before_forked = int((group / "cpuacct.usage").read_text())
            before_kernel, before_machine = kernel_thread_ticks(), machine_busy_ticks()
            started = time.perf_counter()
            results = await asyncio.gather(*(run_like_a_member(scheduler, m + 1, TINY) for m in range(runs)))
            elapsed = time.perf_counter() - started
            await runner.wait_reaped()
            after_self = resource.getrusage(resource.RUSAGE_SELF)
            forked = (int((group / "cpuacct.usage").read_text()) - before_forked) / 1e6 / runs
            kernel = (kernel_thread_ticks() - before_kernel) * 1000 / os.sysconf("SC_CLK_TCK") / runs
            busy, idle = (after - before for after, before in zip(machine_busy_ticks(), before_machine))
            host = (after_self.ru_utime + after_self.ru_stime - before_self.ru_utime - before_self.ru_stime) * 1000 / runs
            failed = sum(1 for _, result in results if not result.success)
            print(f"{runs / elapsed:5.1f} runs/s | CPU per run: host {host:4.1f} ms, forked {forked:4.1f} ms, "
                  f"kworkers {kernel:3.1f} ms, machine {busy * 1000 / os.sysconf('SC_CLK_TCK') / runs:4.1f} ms "
                  f"(busy {busy / max(1, busy + idle):.0%}){f'; {failed} FAILED' if failed else ''}", flush=True)
    finally:
        for process in perf:
            process.send_signal(2)
            process.wait()
        await engine.close()
        if group.exists():
            for pid in (group / "cgroup.procs").read_text().split():
                try:
                    (CPUACCT / "cgroup.procs").write_text(pid)
                except OSError:
                    pass
            group.rmdir()
    if perf_dir is not None:
        breakdown(perf_dir / "machine.data", set(templates), os.getpid(), rounds * runs)


def breakdown(data: Path, templates: set[int], host: int, runs: int) -> None:
    """perf samples of the host, the kernel threads and each process of a forked run, by activity."""
    script = subprocess.run(["perf", "script", "-i", str(data), "--show-task-events", "-F", "comm,pid,tid,period,ip,sym"],
                            capture_output=True, text=True).stdout
    parent: dict[int, int] = {}
    samples: list[tuple[str, int, int, list[str]]] = []
    for line in script.splitlines():
        if fork := re.search(r"PERF_RECORD_FORK\((\d+):\d+\):\((\d+):\d+\)", line):
            parent[int(fork.group(1))] = int(fork.group(2))
        elif head := re.match(r"\s*(\S.*?)\s+(\d+)/\d+\s+(\d+)\s*$", line):
            samples.append((head.group(1), int(head.group(2)), int(head.group(3)), []))
        elif samples and line.strip() and "PERF_RECORD" not in line:
            samples[-1][3].append(line.split(None, 1)[-1].split("+")[0])

    def role(comm: str, pid: int) -> str | None:
        if pid == host:
            return "host"
        if comm.startswith(KERNEL_THREADS):
            return "kworkers"
        depth = 0
        while pid not in templates:
            if pid not in parent or depth > 12:
                return None  # another process of the machine
            pid, depth = parent[pid], depth + 1
        return ROLES.get(depth, "member's children")

    def activity(chain: list[str]) -> str:  # innermost frame first
        for index, frame in enumerate(chain):
            if frame in ("process_one_work", "rcu_do_batch") and index:
                return f"{frame}:{chain[index - 1]}"
        for frame in reversed(chain):
            if syscall := re.match(r"__(?:x64|do)_sys_(\w+)", frame):
                return syscall.group(1)
            if frame == "asm_exc_page_fault":
                return "page fault"
        if any(frame.startswith(("do_exit", "do_group_exit")) for frame in chain):
            return "exit (killed)"
        return "user"

    by_role: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for comm, pid, period, chain in samples:
        if (who := role(comm, pid)) is not None:
            by_role[who][activity(chain)] += period
    print(f"\nperf samples over {runs} runs (perf's own overhead included), ms of CPU per run:")
    for who, activities in sorted(by_role.items(), key=lambda item: -sum(item[1].values())):
        print(f"  {who:10s} {sum(activities.values()) / 1e6 / runs:5.2f}  "
              + ", ".join(f"{name} {ns / 1e6 / runs:.2f}" for name, ns in activities.most_common(7)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=150, help="prints per round, all submitted at once")
    parser.add_argument("--concurrent", type=int, default=2, help="MAX_CONCURRENT_RUNS")
    parser.add_argument("--perf", action="store_true", help="also a perf breakdown by process and activity")
    args = parser.parse_args()
    perf_dir = Path(tempfile.mkdtemp(prefix="tiny-cost-")) if args.perf else None
    asyncio.run(measure(args.rounds, args.runs, args.concurrent, perf_dir))


if __name__ == "__main__":
    main()
