"""Benchmark: the mixed load of issue 13, through the bot's path, and the tail latency
of tiny runs while 10% of runs are time-outs.

    cd /work/main && .venv/bin/python -m bench.mixed_load                 # 40 members x 5 runs
    .venv/bin/python -m bench.mixed_load --members 8 --runs-per-member 3  # a quick sanity check
    .venv/bin/python -m bench.mixed_load --compare --rounds 3              # paired: pausing on and off

Every member submits all their runs at once; the runs are shuffled. Each run goes the
way a /run does after Discord: the bot's request rules (cogs/_queue.py RunScheduler,
with the cooldown off and room for every run of a member, so none is refused), then
`interpreter.run_code` inside `observe_queue`, into the engine's one queue with
the project's default MAX_CONCURRENT_RUNS and the warm capacity started (the project's default, the fork
server with its light template; `--warm pool` for the pool). What is left out is Discord itself
(rendering, HTTP), which costs the same whatever the queue does.

The mix: `print` (50%), a pandas/seaborn chart (20%), an exception (20%), and a
time-out (10%: half `time.sleep`, half a plain-Python loop; both look "light" to the
import-based guess, which is the case the long lane exists for), each time-out with
`--timeout` seconds. Goal on a quiet 2-core machine: `print` p95 <= 2 s.

`--compare` runs the same plan twice per round, alternating which goes first over
`--rounds`, and prints the ratio (the other variant / the project's default) of print p50
and p95 per round: on a shared machine the ratios of paired runs mean more than the
absolute figures. `--compare pausing` (the default): long runs that find the long lane
full paused (PAUSED_RUNS_MEMORY_MB) against kept in their slot (PAUSED_RUNS_MEMORY_MB=0,
the behaviour before pausing). `--compare judgement`: "long" judged by the time a run ran
or slept (the runner's per-task schedstat probe, the default) against wall time from the
sandbox's start (the behaviour before it: a print starved of CPU could be taken for long).

`--concurrent`, `--long-after` and `--heavy-long-after` set MAX_CONCURRENT_RUNS,
RUN_LONG_AFTER_SECONDS and RUN_HEAVY_LONG_AFTER_SECONDS for both variants (default: the
project's defaults), to try other values the same way.

Needs root (per-run cgroups: without them runs are never moved to the long lane) and
the sandbox venv (SANDBOX_VENV_DIR, default the test suite's). Uses a temporary DATA_DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from bench.bot_path import bot_scheduler, run_like_a_member
from bench.run_bench import PLOT, announce_machine, make_settings, p95

MIX = (("print", 0.5), ("chart", 0.2), ("error", 0.2), ("timeout", 0.1))
CODE = {
    "print": "print('hi')",
    "chart": PLOT,
    "error": "1 / 0",
    "sleep": "import time\ntime.sleep(3600)",
    "loop": "while True:\n    pass",
}
WARM = {"default": None, "fork": True, "pool": False}  # make_settings' fork_server
EXPECTED_CAUSE = {"print": "ok", "chart": "ok", "error": "exception", "timeout": "timeout"}


def plan(members: int, runs_each: int, seed: int) -> list[tuple[int, str, str]]:
    """(member, kind, code) for every run, shuffled; exactly 10% time-outs (rounded)."""
    rng = random.Random(seed)
    total = members * runs_each
    kinds: list[str] = []
    for kind, share in MIX:
        kinds += [kind] * round(total * share)
    kinds = (kinds + ["print"] * total)[:total]
    rng.shuffle(kinds)
    runs = []
    for index, kind in enumerate(kinds):
        code = CODE[kind] if kind != "timeout" else CODE["sleep" if index % 2 else "loop"]
        runs.append((index % members + 1, kind, code))
    rng.shuffle(runs)
    return runs


def default_of(name: str) -> str:
    """The project's default of setting `name` (config/settings.py FIELDS)."""
    from config.settings import FIELDS

    return next(field.default for field in FIELDS if field.env == name)


@contextlib.contextmanager
def judged_by_wall_time(on: bool):
    """With `on`, the runner's probes read nothing, so the gate judges "long" by wall time
    from the sandbox's start (what it did before runs were measured by schedstat)."""
    if not on:
        yield
        return
    from interpreter.sandbox.schedstat import RunTaskTimes

    real = RunTaskTimes.of_cgroup
    RunTaskTimes.of_cgroup = classmethod(lambda cls, cgroup: None)
    try:
        yield
    finally:
        RunTaskTimes.of_cgroup = real


async def mixed_load(data_dir: Path, members: int, runs_each: int, timeout: int, *, long_runs: int,
                     long_after: float | None = None, heavy_long_after: float | None = None,
                     concurrent: int | None = None, fork_server: bool | None = None, paused_mb: int | None = None,
                     wall_time: bool = False, seed: int = 13) -> dict:
    import interpreter

    # fork_server None: the project's default warm capacity (the fork server and its light template)
    concurrent = concurrent or int(default_of("MAX_CONCURRENT_RUNS"))
    settings = make_settings(data_dir, heavy=1, light=2, fork_server=fork_server, concurrent=concurrent)
    settings = settings.replace(max_long_runs=long_runs)
    if long_after is not None:
        settings = settings.replace(run_long_after_seconds=long_after)
    if heavy_long_after is not None:
        settings = settings.replace(run_heavy_long_after_seconds=heavy_long_after)
    if paused_mb is not None:
        settings = settings.replace(paused_runs_memory_mb=paused_mb)
    with judged_by_wall_time(wall_time):
        return await _mixed_load(interpreter, settings, members, runs_each, timeout, seed)


async def _mixed_load(interpreter, settings, members: int, runs_each: int, timeout: int, seed: int) -> dict:
    engine = interpreter.configure(settings)
    await asyncio.wait_for(interpreter.warm_up(), 180)  # the pool, or the fork server's template
    scheduler = bot_scheduler(settings, members=members, runs_each=runs_each)
    gate = engine.runner._admission()
    done: list[tuple[str, float, str, float]] = []  # kind, latency, exit cause, execution time
    most = {"long": 0, "paused": 0, "paused_mb": 0.0}
    told_paused = told_waited = wall_capped = 0

    async def one(member: int, kind: str, code: str) -> None:
        nonlocal told_paused, told_waited, wall_capped
        latency, result = await run_like_a_member(scheduler, member, code, timeout if kind == "timeout" else 60)
        done.append((kind, latency, result.exit_cause.value if result.exit_cause else "refused",
                     result.execution_time))
        told_paused += any("was paused" in warning for warning in result.warnings)
        told_waited += any("for a CPU" in warning for warning in result.warnings)  # a long run's wait (RUN_WALL_TIME_FACTOR)
        wall_capped += any("server was too busy" in warning for warning in result.warnings)

    async def watch_lanes() -> None:  # the lanes change at events; sampling at 20 Hz sees their peaks well enough
        while True:
            most["long"] = max(most["long"], gate.long_running)
            most["paused"] = max(most["paused"], gate.paused)
            most["paused_mb"] = max(most["paused_mb"], gate.paused_bytes / 2**20)
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch_lanes())
    began = time.perf_counter()
    await asyncio.gather(*(one(*run) for run in plan(members, runs_each, seed)))
    wall = time.perf_counter() - began
    watcher.cancel()
    await engine.close()
    unexpected = collections.Counter(f"{kind}->{cause}" for kind, _, cause, _ in done if cause != EXPECTED_CAUSE[kind])
    out: dict = {"wall": wall, "runs": len(done), "most": most, "told_paused": told_paused,
                 "told_waited": told_waited, "wall_capped": wall_capped,
                 "unexpected": dict(unexpected), "lanes": dataclasses.asdict(gate.counts)}
    for kind, _ in MIX:
        latencies = [latency for k, latency, _, _ in done if k == kind]
        if latencies:
            out[kind] = {"n": len(latencies), "p50": statistics.median(latencies), "p95": p95(latencies),
                         "max": max(latencies), "ran_p95": p95([ran for k, _, _, ran in done if k == kind])}
    return out


def report(label: str, result: dict, goal: float) -> None:
    most = result["most"]
    print(f"  {label}: {result['runs']} runs in {result['wall']:.1f} s, unexpected outcomes "
          f"{result['unexpected'] or 'none'}; at most {most['long']} runs in the long lane and {most['paused']} "
          f"paused ({most['paused_mb']:.0f} MB) at once; {result['told_paused']} members told their run was paused")
    print(f"    {result['told_waited']} long runs' time-outs left out their wait for a CPU (members told), "
          f"{result['wall_capped']} stopped at the wall cap")
    lanes = result["lanes"]
    print(f"    the gate: {lanes['moved_to_long']} moves to the long lane, {lanes['paused']} pauses, "
          f"{lanes['rechecked']} runs at their long-after time in wall time but not their own, "
          f"{lanes['judged_by_wall']} judgements by wall time")
    for kind, _ in MIX:
        k = result.get(kind)
        if k:
            print(f"    {kind:7}: n={k['n']:3}  p50 {k['p50']:6.2f} s  p95 {k['p95']:6.2f} s  max {k['max']:6.2f} s"
                  f"  (running, paused time aside: p95 {k['ran_p95']:5.2f} s)")
    verdict = "meets" if result["print"]["p95"] <= goal else "MISSES"
    print(f"    print p95 {result['print']['p95']:.2f} s {verdict} the goal of {goal:.1f} s", flush=True)


VARIANTS = {  # --compare: (label, mixed_load keyword arguments); the project's default first
    None: [("the project's defaults", {})],
    "pausing": [("long runs paused when the long lane is full", {}),
                ("long runs kept in their slot (PAUSED_RUNS_MEMORY_MB=0)", {"paused_mb": 0})],
    "judgement": [("long judged by the time a run ran or slept", {}),
                  ("long judged by wall time from the sandbox's start (before)", {"wall_time": True})],
}


async def main(args: argparse.Namespace) -> None:
    announce_machine("no per-run cgroups, so no long lane")
    concurrent = args.concurrent or int(default_of("MAX_CONCURRENT_RUNS"))
    print(f"mixed load: {args.members} members x {args.runs_per_member} runs at once, 10% time-outs of "
          f"{args.timeout} s, MAX_CONCURRENT_RUNS={concurrent}, MAX_LONG_RUNS={args.long_runs}, "
          f"RUN_LONG_AFTER_SECONDS={args.long_after or default_of('RUN_LONG_AFTER_SECONDS')}, "
          f"RUN_HEAVY_LONG_AFTER_SECONDS={args.heavy_long_after or default_of('RUN_HEAVY_LONG_AFTER_SECONDS')}, "
          f"warm capacity: {args.warm}, through the bot's request rules and the engine's queue")
    variants = VARIANTS[args.compare]
    ratios: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-mixed-") as tmp:
        for round_ in range(args.rounds):
            order = variants if round_ % 2 == 0 else variants[::-1]  # paired, alternating who goes first
            results = {}
            for index, (label, overrides) in enumerate(order):
                results[label] = await mixed_load(
                    Path(tmp) / f"{round_}-{index}", args.members, args.runs_per_member, args.timeout,
                    long_runs=args.long_runs, long_after=args.long_after, heavy_long_after=args.heavy_long_after,
                    concurrent=args.concurrent, fork_server=WARM[args.warm], **overrides)
                report(f"round {round_ + 1}, {label}", results[label], args.goal)
            if args.compare:
                default, other = (results[label]["print"] for label, _ in variants)
                ratios.append((other["p50"] / default["p50"], other["p95"] / default["p95"]))
                print(f"  round {round_ + 1}: print p50 {ratios[-1][0]:.2f}x, p95 {ratios[-1][1]:.2f}x "
                      f"as long with {variants[1][0]}", flush=True)
    if len(ratios) > 1:
        print(f"median over {len(ratios)} rounds: print p50 {statistics.median(r[0] for r in ratios):.2f}x, "
              f"p95 {statistics.median(r[1] for r in ratios):.2f}x as long with {variants[1][0]}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end (other work on this machine adds noise)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=40)
    parser.add_argument("--runs-per-member", type=int, default=5)
    parser.add_argument("--timeout", type=int, default=10, help="seconds before a time-out run is stopped")
    parser.add_argument("--goal", type=float, default=2.0, help="print p95 goal, seconds")
    parser.add_argument("--compare", nargs="?", const="pausing", choices=["pausing", "judgement"], default=None,
                        help="run the same load again, paired: with long runs kept in their slot when the long lane "
                             "is full (pausing), or with long judged by wall time (judgement)")
    parser.add_argument("--concurrent", type=int, default=None,
                        help="MAX_CONCURRENT_RUNS for this run (default: the setting's default)")
    parser.add_argument("--heavy-long-after", type=float, default=None,
                        help="RUN_HEAVY_LONG_AFTER_SECONDS for this run (default: the setting's default)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat (with --compare: paired, alternating order)")
    parser.add_argument("--long-runs", type=int, default=8, help="MAX_LONG_RUNS (0: the long lane off)")
    parser.add_argument("--warm", choices=list(WARM), default="default",
                        help="warm capacity: the project's default (the fork server), the fork server, or the pool")
    parser.add_argument("--long-after", type=float, default=None,
                        help="RUN_LONG_AFTER_SECONDS for this run (default: the setting's default)")
    asyncio.run(main(parser.parse_args()))
