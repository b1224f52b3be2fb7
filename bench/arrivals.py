"""Benchmark: issue 16's arrival patterns, through the bot's path, with each kind of warm capacity.

    cd /work/main && .venv/bin/python -m bench.arrivals                    # fork server and pool, ~3 min
    .venv/bin/python -m bench.arrivals --warm fork --charts 6 --tiny 40   # a quick sanity check
    .venv/bin/python -m bench.arrivals --warm fork --warm-spares both     # spares warming up or not, paired
    .venv/bin/python -m bench.arrivals --snekbox http://127.0.0.1:8060   # also 8 prints at a running snekbox
    (bench/snekbox.py starts snekbox itself and compares side by side, round by round)

Every run goes the way a member's /run does (bench/bot_path.py: the bot's request
rules, then `interpreter.run_code` into the engine's one queue), MAX_CONCURRENT_RUNS=2.
For each warm capacity (`fork`: the fork-server templates, data-library and light, and
their spares; `pool`: one heavy and two light pooled sandboxes) it measures, after `interpreter.warm_up()`:

  idle      print('hi') and the chart one at a time, warm capacity ready before each
  memory    what the idle warm capacity holds, once runs stopped arriving (the fork
            server's BUSY_SECONDS, 30 s: while they arrive every spare warms up; idle, only
            SANDBOX_FORK_WARM_SPARES of them, the bench waits for that): the anonymous memory its cgroups are
            charged (heap and the like, each page once however many forks share it: what
            stopping the warm capacity would free, and the figure the goal is judged by),
            all they are charged (anonymous plus page cache charged to them), the RSS of
            its processes (shared pages once per process), their PSS (shared pages split
            between their users) and USS (pages of a process's own; it leaves out the
            template's pages its forks still share, so it understates what is held)
  steady    a chart from a different member every --interval seconds (--charts of them)
  burst     --burst charts from different members at once
  tiny      --tiny print('hi') runs from different members at once: runs/s
  8 prints  8 print('hi') at once: time until all 8 answered (and at snekbox, if given)
  cold      (once, after the warm capacities) --cold charts with nothing warm: through the
            bot's path into a sandbox launched for the run, and as a plain `python`
            subprocess; each against the idle chart p50 of the warm capacities measured

Goals (issue 16; the lead measures them on a quiet machine): steady p50 <= 150 ms and
max <= 400 ms; burst max <= 500 ms; print <= 40 ms; idle >= 6x faster than cold;
idle memory <= 150 MB; tiny >= 40/s;
8 prints in at most half of snekbox's time. Figures taken while other work shares
the CPUs are noise.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.bot_path import bot_scheduler, run_like_a_member
from bench.run_bench import DEFAULT_VENV, PLOT, TINY, make_settings, p95, plain_python_plot, status_kb
from bench.snekbox import snekbox_eight_prints


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def stats_line(values: list[float]) -> str:
    return f"p50 {ms(statistics.median(values))}  p95 {ms(p95(values))}  max {ms(max(values))}  (n={len(values)})"


async def checked(scheduler, member: int, code: str) -> float:
    latency, result = await run_like_a_member(scheduler, member, code)
    if not result.success:
        raise SystemExit(f"benchmark run failed: {result.error[:500]}")
    return latency


async def warm_capacity_memory(runner) -> dict[str, float]:
    """What the idle warm capacity holds (MB): the anonymous memory its cgroups are charged and
    all they are charged (a page a fork shares with its template is charged once, to the
    template), the RSS of its processes (shared pages once per process, library files from the
    page cache included), their PSS and their USS (see the module doc: USS understates)."""
    from interpreter.sandbox.pool import sandbox_pids

    parts: list[tuple[str, object]] = []  # (what it is, its cgroup) for the parts table
    pids: set[int] = set()
    servers = runner.fork_servers_of_this_loop()  # the data-library template, and the light one
    for server in servers:
        kind = "light" if server is runner.light_fork_server else "data-library"
        if server.template is not None:
            pids |= server.template_pids()
            parts.append((f"{kind} template", server.template.cgroup))
        for spare in server.spares:
            pids |= sandbox_pids(spare)
            parts.append((f"{kind} spare{' (warmed)' if spare.warm else ''}", spare.cgroup))
    if runner.pool is not None:
        for lane in runner.pool.lanes.values():
            for warm in lane.idle:
                pids |= sandbox_pids(warm.sandbox)
                parts.append((f"pooled {lane.workload.value} sandbox", warm.sandbox.cgroup))
    charged = anonymous = 0
    by_part: dict[str, list[float]] = {}
    for label, group in parts:
        part_anonymous = 0
        for folder in group.dirs if group is not None else ():
            for name in ("memory.usage_in_bytes", "memory.current"):
                if (folder / name).exists():
                    charged += int((folder / name).read_text())
            if (folder / "memory.stat").exists():
                stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines())
                part_anonymous += int(stat.get("rss", stat.get("anon", 0)))  # cgroup v1 "rss", v2 "anon"
        anonymous += part_anonymous
        by_part.setdefault(label, []).append(part_anonymous / 2**20)
    rollups = [smaps_rollup_kb(pid) for pid in pids]
    return {"anonymous_mb": anonymous / 2**20, "charged_mb": charged / 2**20, "rss_mb": sum(status_kb(pid, "VmRSS") for pid in pids) / 1024,
            "pss_mb": sum(r.get("Pss", 0) for r in rollups) / 1024,
            "uss_mb": sum(r.get("Private_Clean", 0) + r.get("Private_Dirty", 0) for r in rollups) / 1024,
            "processes": len(pids), "parts": by_part}


def smaps_rollup_kb(pid: int) -> dict[str, int]:
    """A process's memory totals in kB: Pss (shared pages split among their users), and
    Private_* (its own pages: what killing it would free)."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    except OSError:
        return {}
    return {key: int(value.split()[0]) for key, _, value in (line.partition(":") for line in lines) if value.strip()}



async def measure(data_dir: Path, warm: str, args: argparse.Namespace, warm_spares: int | None = None) -> dict:
    """One kind of warm capacity; for the fork server, `warm_spares` (None: the project's default),
    --fork-spares and --light-spares (SANDBOX_FORK_WARM_SPARES, SANDBOX_FORK_SPARES,
    SANDBOX_FORK_LIGHT_SPARES) may differ from the defaults."""
    import interpreter

    fork = warm == "fork"
    settings = make_settings(data_dir / f"{warm}-{warm_spares}", heavy=0 if fork else 1, light=2, fork_server=fork)
    if fork and warm_spares is not None:
        settings = dataclasses.replace(settings, sandbox_fork_warm_spares=warm_spares)
    if fork and args.fork_spares is not None:
        settings = dataclasses.replace(settings, sandbox_fork_spares=args.fork_spares)
    if fork and args.light_spares is not None:
        settings = dataclasses.replace(settings, sandbox_fork_light_spares=args.light_spares)
    engine = interpreter.configure(settings)
    members = max(args.charts, args.burst, args.tiny, 8) + 1
    scheduler = bot_scheduler(settings, members=members, runs_each=args.repeats + 2)
    out: dict = {}
    try:
        await interpreter.warm_up()
        await checked(scheduler, 1, PLOT)  # page cache, font cache, SQLite file: not measured
        out["idle_print"], out["idle_chart"] = [], []
        for _ in range(args.repeats):
            for key, code in (("idle_print", TINY), ("idle_chart", PLOT)):
                await engine.runner.warm_up()
                out[key].append(await checked(scheduler, 2, code))
        await engine.runner.warm_up()
        for server in engine.runner.fork_servers_of_this_loop():  # idle: runs no longer arriving
            await server.wait_idle()
        out["memory"] = await warm_capacity_memory(engine.runner)

        async def arriving(index: int) -> float:
            await asyncio.sleep(index * args.interval)
            return await checked(scheduler, 10 + index, PLOT)

        out["steady"] = list(await asyncio.gather(*(arriving(i) for i in range(args.charts))))
        await engine.runner.warm_up()
        out["burst"] = list(await asyncio.gather(*(checked(scheduler, 100 + i, PLOT) for i in range(args.burst))))
        await engine.runner.warm_up()
        began = time.perf_counter()
        await asyncio.gather(*(checked(scheduler, 200 + i, TINY) for i in range(args.tiny)))
        out["tiny_per_s"] = args.tiny / (time.perf_counter() - began)
        await engine.runner.warm_up()
        began = time.perf_counter()
        await asyncio.gather(*(checked(scheduler, 300 + i, TINY) for i in range(8)))
        out["eight_prints"] = time.perf_counter() - began
        out["warm"] = (engine.runner.describe().get("fork_server"), engine.runner.describe().get("light_fork_server"),
                       engine.runner.pool.describe() if engine.runner.pool else {})
    finally:
        await engine.close()
    return out


async def cold_charts(data_dir: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    """The chart with nothing warm, for the goal "idle: >= 6x faster than a cold subprocess":
    through the bot's path into a sandbox launched for the run, and as the seed ran code (a
    plain `python` subprocess of the sandbox venv, no sandbox)."""
    import interpreter

    settings = make_settings(data_dir / "cold", heavy=0, light=0, fork_server=False)
    engine = interpreter.configure(settings)
    scheduler = bot_scheduler(settings, members=2, runs_each=args.cold + 1)
    try:
        await checked(scheduler, 1, PLOT)  # page cache and the venv checked once: not measured
        sandbox = [await checked(scheduler, 1, PLOT) for _ in range(args.cold)]
    finally:
        await engine.close()
    venv_python = str(Path(os.environ.get("SANDBOX_VENV_DIR", DEFAULT_VENV)) / "current" / "bin" / "python")
    return {"sandbox": sandbox, "plain": plain_python_plot(venv_python, args.cold)}


def report(warm: str, out: dict) -> None:
    print(f"\n{warm}:")
    print(f"  idle print   {stats_line(out['idle_print'])}")
    print(f"  idle chart   {stats_line(out['idle_chart'])}")
    memory = out["memory"]
    print(f"  idle warm capacity: anonymous {memory['anonymous_mb']:.0f} MB (goal <= 150), "
          f"cgroups charged {memory['charged_mb']:.0f} MB, RSS {memory['rss_mb']:.0f} MB, "
          f"PSS {memory['pss_mb']:.0f} MB, USS {memory['uss_mb']:.0f} MB ({memory['processes']} processes)")
    print("    anonymous by part: " + ", ".join(
        f"{label} {' + '.join(f'{mb:.1f}' for mb in sizes)}" for label, sizes in memory["parts"].items()))
    print(f"  steady       {stats_line(out['steady'])}")
    print(f"  burst        {stats_line(out['burst'])}")
    print(f"  tiny at once {out['tiny_per_s']:.1f} runs/s")
    print(f"  8 prints     {ms(out['eight_prints'])}")


ALL_SPARES = 16  # SANDBOX_FORK_WARM_SPARES=true


def warm_spare_counts(option: str) -> list[int]:
    """--warm-spares: on (every spare), off (none), both (off, then on) or counts, e.g. 1,2."""
    named = {"on": [ALL_SPARES], "off": [0], "both": [0, ALL_SPARES]}
    return named.get(option) or [int(count) for count in option.split(",")]


async def main(args: argparse.Namespace) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    if os.geteuid() != 0:
        print("note: not root: no per-run cgroups; figures differ from production")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    idle_chart: dict[str, float] = {}  # warm capacity -> its idle chart p50, for the cold ratio
    with tempfile.TemporaryDirectory(prefix="bench-arrivals-") as tmp:
        for warm in (["fork", "pool"] if args.warm == "both" else [args.warm]):
            if warm == "fork" and args.warm_spares != "default":
                for warm_spares in warm_spare_counts(args.warm_spares):
                    label = f"fork, {'every' if warm_spares >= ALL_SPARES else warm_spares} spare(s) warming up"
                    report(label, await measure(Path(tmp), warm, args, warm_spares))
            else:
                report(warm, idle := await measure(Path(tmp), warm, args))
                idle_chart[warm] = statistics.median(idle["idle_chart"])
        if args.cold:
            cold = await cold_charts(Path(tmp), args)
            print("\ncold (nothing warm):")
            for key, label in (("sandbox", "a sandbox launched for the run"), ("plain", "plain python subprocess")):
                ratios = ", ".join(f"{statistics.median(cold[key]) / chart:.1f}x {warm}'s idle chart"
                                   for warm, chart in idle_chart.items())
                print(f"  chart, {label:30} {stats_line(cold[key])}  ({ratios}; goal >= 6x)")
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end (other work on this machine adds noise)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm", choices=("fork", "pool", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=10, help="idle runs of each kind")
    parser.add_argument("--charts", type=int, default=20, help="charts in the steady pattern")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between steady charts")
    parser.add_argument("--burst", type=int, default=4)
    parser.add_argument("--fork-spares", type=int, default=None, help="SANDBOX_FORK_SPARES (default: the project's)")
    parser.add_argument("--light-spares", type=int, default=None,
                        help="SANDBOX_FORK_LIGHT_SPARES (default: the project's)")
    parser.add_argument("--warm-spares", default="default",
                        help="SANDBOX_FORK_WARM_SPARES: on (every spare), off, both (off, then on) or counts "
                             "measured one after the other, e.g. 1,2 (default: the project's)")
    parser.add_argument("--tiny", type=int, default=120, help="tiny runs submitted at once")
    parser.add_argument("--cold", type=int, default=6, help="charts with nothing warm, for the 6x goal (0: none)")
    parser.add_argument("--snekbox", default="", help="URL of a running snekbox to compare 8 prints with")
    arguments = parser.parse_args()
    asyncio.run(main(arguments))
    if arguments.snekbox:
        print(f"snekbox 8 prints {ms(snekbox_eight_prints(arguments.snekbox))}")
