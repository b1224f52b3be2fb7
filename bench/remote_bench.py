"""Benchmark: runs through execution workers over HTTP against runs in the bot's own
process, and one worker against two, in one invocation.

    cd /work/main && .venv/bin/python -m bench.remote_bench                  # a few minutes
    .venv/bin/python -m bench.remote_bench --charts 5 --tiny 10 --load 24   # a quick check

Measured, in this order (each phase alone on the machine):
1. in-process: `print('hi')` and a seaborn chart, one at a time (p50, p95), then a burst
   of short runs from many members at once (runs/s);
2. through one worker (`python -m interpreter.service` on loopback, same settings):
   the same; the difference of the p50s is what the HTTP hop costs a run;
3. through two workers: the burst again (runs/s), spread by the client.

Each worker gets MAX_CONCURRENT_RUNS sandbox slots, as the bot process does in phase 1,
so two workers have twice the slots on the same 2 cores: on this machine the second
worker can only help while the first waits (on I/O, sandbox start-up), not by CPU.

Needs root (per-run cgroups) and a built sandbox venv (SANDBOX_VENV_DIR, default the
test suite's /var/tmp/code-interpreter/sandbox-venv). Uses temporary data dirs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.run_bench import DEFAULT_VENV, PLOT, TINY, make_settings, p95  # noqa: E402
from config import Secret  # noqa: E402

TOKEN = "bench-token"
POOL = {"heavy": 1, "light": 2}


def line(label: str, values: list[float]) -> str:
    return (f"{label:<28} p50 {statistics.median(values) * 1000:7.1f} ms   p95 {p95(values) * 1000:7.1f} ms"
            f"   (n={len(values)})")


async def one_at_a_time(engine, code: str, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = await engine.run(code, 1, timeout=60)
        times.append(time.perf_counter() - started)
        if not result.success:
            raise SystemExit(f"benchmark run failed: {result.error[:500]}")
    return times


async def burst(engine, runs: int, members: int) -> float:
    """`runs` short runs from `members` members at once; runs per second."""
    started = time.perf_counter()
    results = await asyncio.gather(*(engine.run(TINY, 1000 + i % members, timeout=60) for i in range(runs)))
    elapsed = time.perf_counter() - started
    failed = [r.error for r in results if not r.success]
    if failed:
        raise SystemExit(f"{len(failed)} burst runs failed, e.g. {failed[0][:300]}")
    return runs / elapsed


async def round_trips(engine, repeats: int) -> list[float]:
    """The HTTP hop alone: a session lookup on the worker (no sandbox), over the client's
    pooled connection, as every run pays it."""
    executor = engine.executor
    [worker] = (await executor.workers())[:1]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        await executor._call(worker, "GET", "/v1/sessions/bench")
        times.append(time.perf_counter() - started)
    return times


async def measure(engine, args) -> dict:
    await engine.executor.warm_up()
    await one_at_a_time(engine, PLOT, 1)  # first chart: font cache, imports
    return {"tiny": await one_at_a_time(engine, TINY, args.tiny),
            "chart": await one_at_a_time(engine, PLOT, args.charts),
            "runs_per_s": await burst(engine, args.load, args.members)}


def settings_for(data_dir: Path, **extra: str):
    base = make_settings(data_dir, heavy=POOL["heavy"], light=POOL["light"], concurrent=2)
    return base.replace(**extra) if extra else base


async def in_process(root: Path, args) -> dict:
    from interpreter.engine import Engine

    engine = Engine(settings_for(root / "local"))
    try:
        return await measure(engine, args)
    finally:
        await engine.close()


async def through_workers(root: Path, count: int, args, *, full: bool) -> dict:
    from interpreter.engine import Engine
    from interpreter.service.local import start_local_worker, wait_ready

    worker_env = {"SANDBOX_VENV_DIR": os.environ.get("SANDBOX_VENV_DIR", DEFAULT_VENV), "VENV_MAX_AGE_DAYS": "0",
                  "MAX_CONCURRENT_RUNS": "2", "SANDBOX_POOL_SIZE": str(POOL["heavy"]),
                  "SANDBOX_LIGHT_POOL_SIZE": str(POOL["light"]), "LOG_LEVEL": "WARNING"}
    workers = [start_local_worker(root / f"worker{count}-{i}", TOKEN, **worker_env) for i in range(count)]
    try:
        await asyncio.gather(*(wait_ready(w) for w in workers))
        # The bot side hands each worker as many runs as it has slots.
        engine = Engine(settings_for(root / f"bot{count}", executor_urls=tuple(w.url for w in workers),
                                     executor_token=Secret(TOKEN),
                                     max_concurrent_runs=2 * count))
        try:
            if full:
                measured = await measure(engine, args)
                measured["round_trip"] = await round_trips(engine, args.tiny * 4)
                return measured
            await engine.executor.warm_up()
            return {"runs_per_s": await burst(engine, args.load, args.members)}
        finally:
            await engine.close()
    finally:
        for worker in workers:
            worker.stop()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="remote-bench-") as tmp:
        root = Path(tmp)
        local = await in_process(root, args)
        one = await through_workers(root, 1, args, full=True)
        two = await through_workers(root, 2, args, full=False)
    print(line("in-process print('hi')", local["tiny"]))
    print(line("one worker print('hi')", one["tiny"]))
    print(line("in-process chart", local["chart"]))
    print(line("one worker chart", one["chart"]))
    hop = statistics.median(one["tiny"]) - statistics.median(local["tiny"])
    print(f"HTTP hop (p50 difference, print('hi')): {hop * 1000:+.1f} ms")
    print(line("HTTP round trip alone", one["round_trip"]))
    print(f"burst of {args.load} short runs from {args.members} members:")
    print(f"  in-process    {local['runs_per_s']:6.1f} runs/s")
    print(f"  one worker    {one['runs_per_s']:6.1f} runs/s")
    print(f"  two workers   {two['runs_per_s']:6.1f} runs/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", type=int, default=30, help="print('hi') runs one at a time, per phase")
    parser.add_argument("--charts", type=int, default=15, help="chart runs one at a time, per phase")
    parser.add_argument("--load", type=int, default=60, help="short runs in each burst")
    parser.add_argument("--members", type=int, default=20, help="members the burst comes from")
    asyncio.run(main(parser.parse_args()))
