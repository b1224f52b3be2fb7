"""Benchmark: warm (pooled) against cold sandboxes, through the public `execute_code`.

    cd /work/main && .venv/bin/python -m bench.run_bench            # ~3-4 minutes
    .venv/bin/python -m bench.run_bench --repeats 30 --members 40 --runs-per-member 5

Everything is measured in one invocation, so ratios compare like with like on a
machine whose load changes (other people's tests share these 2 cores): each figure
is a median (and p95) over repeats, warm and cold interleaved.

Needs root (per-run cgroups) and a built sandbox venv (SANDBOX_VENV_DIR, default the
test suite's /var/tmp/code-interpreter/sandbox-venv). Uses a temporary DATA_DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT_VENV = "/var/tmp/code-interpreter/sandbox-venv"
TINY = "print('hi')"
PLOT = """
import pandas as pd, seaborn as sns, matplotlib.pyplot as plt
df = pd.DataFrame({'month': ['Jan', 'Feb', 'Mar', 'Apr'] * 2, 'region': ['N'] * 4 + ['S'] * 4,
                   'revenue': [120, 150, 170, 160, 90, 80, 110, 130]})
sns.barplot(data=df, x='month', y='revenue', hue='region')
plt.savefig('revenue.png')
print(df.groupby('region').revenue.sum().to_dict())
"""
# The plot job as it runs through execute_code: it also times its own code (inside the
# sandbox), so the report can split a run into the job's work and what surrounds it.
JOB_TIMER = "bench-job-ms"
PLOT_TIMED = ("import time as _bench_time\n_bench_started = _bench_time.perf_counter()\n" + PLOT
              + f"print({JOB_TIMER!r}, (_bench_time.perf_counter() - _bench_started) * 1000)\n")


def job_seconds(output: str) -> float:
    """The job's own time, as PLOT_TIMED printed it."""
    line = next(line for line in output.splitlines() if line.startswith(JOB_TIMER))
    return float(line.split()[1]) / 1000


# ---------------------------------------------------------------------- statistics


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:7.1f} ms   p95 {p95(values) * 1000:7.1f} ms   (n={len(values)})"


# ---------------------------------------------------------------------- engine set-up


def make_settings(data_dir: Path, *, heavy: int | None, light: int | None, concurrent: int = 2,
                  fork_server: bool | None = False):
    """Explicit warm capacity: `fork_server` (the template; with `light` > 0 also the light
    template, SANDBOX_FORK_LIGHT_TEMPLATE, that forks the runs which import no data library),
    else the pool's `heavy` and `light` lanes; None leaves that setting at the project's
    default. Nothing starts by itself on a first run."""
    from config import load_settings

    values = {
        "DATA_DIR": str(data_dir),
        "SANDBOX_VENV_DIR": os.environ.get("SANDBOX_VENV_DIR", DEFAULT_VENV),
        "VENV_MAX_AGE_DAYS": "0",
        "MAX_CONCURRENT_RUNS": str(concurrent),
        "SANDBOX_WARM_ON_FIRST_RUN": "false",
    }
    for name, value in (("SANDBOX_POOL_SIZE", heavy), ("SANDBOX_LIGHT_POOL_SIZE", light),
                        ("SANDBOX_FORK_SERVER", fork_server)):
        if value is not None:
            values[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    if fork_server and light is not None:
        values["SANDBOX_FORK_LIGHT_TEMPLATE"] = "true" if light > 0 else "false"
    return load_settings(values, dotenv=False)


async def timed_execute(code: str, user_id: int = 1) -> tuple[float, dict]:
    import interpreter

    started = time.perf_counter()
    result = await interpreter.execute_code(code, user_id=user_id, timeout=60)
    elapsed = time.perf_counter() - started
    if not result["success"]:
        raise SystemExit(f"benchmark run failed: {result['error'][:500]}")
    return elapsed, result


# ---------------------------------------------------------------------- single runs


async def warm_vs_cold(data_dir: Path, repeats: int) -> dict[str, list[float]]:
    """Interleave: warm (pool full before each run) and cold (pool off) for both jobs."""
    import interpreter

    times: dict[str, list[float]] = {k: [] for k in ("tiny_warm", "tiny_cold", "plot_warm", "plot_cold",
                                                      "plot_warm_job", "plot_warm_around")}
    warm_engine = interpreter.configure(make_settings(data_dir / "warm", heavy=1, light=1))
    pool = await warm_engine.runner.start_pool()
    cold_engine = interpreter.Engine(make_settings(data_dir / "cold", heavy=0, light=0))
    # one unmeasured run of each kind first: page cache, font cache, SQLite file
    for engine in (warm_engine, cold_engine):
        for code in (TINY, PLOT_TIMED):
            await asyncio.wait_for(pool.wait_until_full(), 120)
            await engine.execute(code, 1)
    for _ in range(repeats):
        for name, code in (("tiny", TINY), ("plot", PLOT_TIMED)):
            await asyncio.wait_for(pool.wait_until_full(), 120)  # warm means warm: a ready sandbox waits
            interpreter.engine._default = warm_engine
            elapsed, result = await timed_execute(code)
            times[f"{name}_warm"].append(elapsed)
            if name == "plot":
                times["plot_warm_job"].append(job_seconds(result["output"]))
                times["plot_warm_around"].append(elapsed - times["plot_warm_job"][-1])
            interpreter.engine._default = cold_engine
            times[f"{name}_cold"].append((await timed_execute(code))[0])
    stats = pool.describe()
    assert stats["heavy"]["served_warm"] >= repeats and stats["light"]["served_warm"] >= repeats, stats
    interpreter.engine._default = warm_engine
    await warm_engine.runner.close()
    return times


def plain_python_plot(venv_python: str, repeats: int) -> list[float]:
    """The seed's approach: a fresh `python` subprocess per run, no sandbox."""
    times = []
    with tempfile.TemporaryDirectory() as work:
        for _ in range(repeats):
            started = time.perf_counter()
            subprocess.run([venv_python, "-c", PLOT], cwd=work, check=True, capture_output=True,
                           env={"MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin", "MPLCONFIGDIR": f"{work}/mpl"})
            times.append(time.perf_counter() - started)
    return times


# ---------------------------------------------------------------------- launch overhead


async def launch_overhead(data_dir: Path, repeats: int) -> tuple[list[float], list[float]]:
    """`python -c pass` through the full launch chain (cgroups, setpriv, prlimit, bwrap, seccomp) vs bare."""
    from interpreter.packages import PackageManager
    from interpreter.sandbox import SandboxRunner
    from interpreter.sandbox.bwrap import VENV_MOUNT, build_bwrap_args, sandbox_env

    settings = make_settings(data_dir / "launch", heavy=0, light=0)
    runner = SandboxRunner(settings, PackageManager(settings))
    venv = await runner.packages.ensure_venv()
    bare_python = str(venv / "bin" / "python")
    sandboxed, bare = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(bare_python, "-c", "pass", env={})
        await proc.wait()
        bare.append(time.perf_counter() - started)

        cgroup = runner.cgroups.create(settings) if runner.cgroups.available else None
        bootstrap_r, bootstrap_w = os.pipe()
        os.close(bootstrap_w)
        control_r, control_w = os.pipe()
        fds = [bootstrap_r, control_w]
        seccomp_r = None
        if runner.seccomp_program:
            seccomp_r, seccomp_w = os.pipe()
            os.write(seccomp_w, runner.seccomp_program)
            os.close(seccomp_w)
            fds.append(seccomp_r)
        args = build_bwrap_args(settings, runner.bwrap, venv, bootstrap_fd=bootstrap_r, control_fd=control_w,
                                seccomp_fd=seccomp_r, env=sandbox_env())
        args = args[: args.index(f"{VENV_MOUNT}/bin/python")] + [f"{VENV_MOUNT}/bin/python", "-c", "pass"]
        argv = runner.launch_prefix(cgroup, 10) + args
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(*argv, env={}, pass_fds=fds, cwd="/", start_new_session=True)
        for fd in fds:
            os.close(fd)
        rc = await proc.wait()
        sandboxed.append(time.perf_counter() - started)
        os.close(control_r)
        if cgroup is not None:
            cgroup.kill_all()
            cgroup.remove()
        if rc != 0:
            raise SystemExit(f"sandboxed `python -c pass` failed with {rc}")
    return sandboxed, bare


# ---------------------------------------------------------------------- memory


async def idle_memory(data_dir: Path) -> dict[str, float]:
    """One idle pooled sandbox of each kind: RSS of its processes, and what its cgroup is charged."""
    from interpreter.packages import PackageManager
    from interpreter.sandbox import SandboxRunner
    from interpreter.sandbox.workload import Workload

    settings = make_settings(data_dir / "memory", heavy=1, light=1)
    runner = SandboxRunner(settings, PackageManager(settings))
    pool = await runner.start_pool()
    await asyncio.wait_for(pool.wait_until_full(), 120)
    out = {}
    for workload in (Workload.HEAVY, Workload.LIGHT):
        sandbox = pool.idle_sandboxes(workload)[0]
        pids = sandbox.cgroup.pids() if sandbox.cgroup else {sandbox.proc.pid}
        out[f"{workload.value}_rss_mb"] = sum(status_kb(pid, "VmRSS") for pid in pids) / 1024
        out[f"{workload.value}_anon_mb"] = sum(status_kb(pid, "RssAnon") for pid in pids) / 1024
        if sandbox.cgroup:
            for d in sandbox.cgroup.dirs:
                for name in ("memory.usage_in_bytes", "memory.current"):
                    if (d / name).exists():
                        out[f"{workload.value}_cgroup_mb"] = int((d / name).read_text()) / 2**20
    await runner.close()
    return out


def status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# ---------------------------------------------------------------------- saturation


async def saturation(data_dir: Path, members: int, runs_each: int, plot_share: float, *, pooled: bool,
                     seed: int = 7) -> dict:
    """members x runs_each runs submitted at once (no bot scheduler: the engine's own queue)."""
    import interpreter

    heavy, light = (1, 2) if pooled else (0, 0)
    engine = interpreter.configure(make_settings(data_dir / f"sat-{pooled}", heavy=heavy, light=light))
    if pooled:
        await asyncio.wait_for((await engine.runner.start_pool()).wait_until_full(), 120)
    rng = random.Random(seed)
    jobs = [(member, PLOT if rng.random() < plot_share else TINY) for member in range(members) for _ in range(runs_each)]
    rng.shuffle(jobs)
    done: list[tuple[str, float, float, bool]] = []  # kind, latency, finished_at, ok
    started = time.perf_counter()

    async def one(member: int, code: str) -> None:
        t0 = time.perf_counter()
        result = await interpreter.execute_code(code, user_id=member + 1, timeout=60)
        t1 = time.perf_counter()
        done.append(("plot" if code is PLOT else "tiny", t1 - t0, t1 - started, bool(result["success"])))

    await asyncio.gather(*(one(m, c) for m, c in jobs))
    wall = time.perf_counter() - started
    pool_stats = engine.runner.pool.describe() if engine.runner.pool else {}
    await engine.runner.close()
    out = {"wall": wall, "runs": len(done), "failures": sum(not ok for *_, ok in done), "pool": pool_stats}
    for kind in ("tiny", "plot"):
        rows = [d for d in done if d[0] == kind]
        if rows:
            out[kind] = {
                "n": len(rows),
                "p50": statistics.median(r[1] for r in rows),
                "p95": p95([r[1] for r in rows]),
                "all_done_at": max(r[2] for r in rows),
            }
    out["all_p50"] = statistics.median(d[1] for d in done)
    out["all_p95"] = p95([d[1] for d in done])
    return out


def print_saturation(label: str, sat: dict) -> None:
    print(f"  {label}: {sat['runs']} runs in {sat['wall']:.1f} s = {sat['runs'] / sat['wall']:.1f} runs/s, "
          f"failures {sat['failures']}, latency p50 {sat['all_p50']:.2f} s p95 {sat['all_p95']:.2f} s")
    for kind in ("tiny", "plot"):
        k = sat.get(kind)
        if k:
            print(f"    {kind:4}: n={k['n']:3}  p50 {k['p50']:.2f} s  p95 {k['p95']:.2f} s  "
                  f"last done at {k['all_done_at']:.1f} s -> {k['n'] / k['all_done_at']:.1f} {kind} runs/s")
    if sat["pool"]:
        h, l = sat["pool"]["heavy"], sat["pool"]["light"]
        print(f"    pool: heavy warm/taken-over/cold {h['served_warm']}/{h['served_warming']}/{h['served_cold']}, "
              f"light {l['served_warm']}/{l['served_warming']}/{l['served_cold']}")


# ---------------------------------------------------------------------- main


def announce_machine(without_root: str) -> None:
    """What every benchmark says first: quiet logging, the machine and its load, and what
    differs when not run as root (`without_root`)."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    if os.geteuid() != 0:
        print(f"note: not root: {without_root}; figures differ from production")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")


async def main(args: argparse.Namespace) -> None:
    announce_machine("no per-run cgroups and no low-priority warming")
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        data = Path(tmp)

        print("\n1. single runs through execute_code (median / p95; warm = a ready pooled sandbox)")
        times = await warm_vs_cold(data, args.repeats)
        for key in ("tiny_warm", "tiny_cold", "plot_warm", "plot_cold"):
            print(f"  {key:10} {summary(times[key])}")
        print(f"  plot_warm, the job's own code timed inside the sandbox: {summary(times['plot_warm_job'])}")
        print(f"  plot_warm, everything around it (job hand-over, PNG collection, reply): "
              f"{summary(times['plot_warm_around'])}")
        venv_python = str(Path(os.environ.get("SANDBOX_VENV_DIR", DEFAULT_VENV)) / "current" / "bin" / "python")
        bare_plot = plain_python_plot(venv_python, max(5, args.repeats // 2))
        print(f"  plot as a plain cold python subprocess, no sandbox (the seed's approach): {summary(bare_plot)}")
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"  ratios: plot cold/warm {med['plot_cold'] / med['plot_warm']:.1f}x, "
              f"plain-python/warm {statistics.median(bare_plot) / med['plot_warm']:.1f}x, "
              f"tiny cold/warm {med['tiny_cold'] / med['tiny_warm']:.1f}x")

        print("\n2. cold-path launch overhead: `python -c pass` in the full launch chain vs bare")
        sandboxed, bare = await launch_overhead(data, args.repeats)
        print(f"  bare      {summary(bare)}")
        print(f"  sandboxed {summary(sandboxed)}")
        print(f"  overhead  {(statistics.median(sandboxed) - statistics.median(bare)) * 1000:.1f} ms (medians)")

        print("\n3. memory of one idle pooled sandbox")
        mem = await idle_memory(data)
        for kind in ("heavy", "light"):
            print(f"  {kind}: RSS {mem[f'{kind}_rss_mb']:.0f} MB (anonymous {mem[f'{kind}_anon_mb']:.0f} MB), "
                  f"cgroup charged {mem.get(f'{kind}_cgroup_mb', float('nan')):.0f} MB")

        print(f"\n4. saturation: {args.members} members x {args.runs_per_member} runs submitted at once, "
              f"{args.plot_share:.0%} plot jobs, MAX_CONCURRENT_RUNS=2")
        for pooled in (True, False):
            sat = await saturation(data, args.members, args.runs_per_member, args.plot_share, pooled=pooled)
            print_saturation("pooled + light-first queue" if pooled else "pool off (light-first queue still on)", sat)
        print(f"\nload average {os.getloadavg()[0]:.2f} at the end (other work on this machine adds noise)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--members", type=int, default=40)
    parser.add_argument("--runs-per-member", type=int, default=5)
    parser.add_argument("--plot-share", type=float, default=0.2, help="share of plot jobs in the saturation mix")
    asyncio.run(main(parser.parse_args()))
