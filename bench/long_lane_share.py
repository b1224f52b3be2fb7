"""Benchmark: how much CPU runs in the long lane take from a short run, measured on the
host from /proc/<pid>/task/*/schedstat, against two baselines in the same invocation.

    cd /work/main && .venv/bin/python -m bench.long_lane_share              # 3 rounds of 3 modes, ~1-2 min
    .venv/bin/python -m bench.long_lane_share --rounds 1 --spinners 4      # a quick sanity check

The whole benchmark is pinned to one CPU (`--cpu`; every sandbox inherits the affinity
and the benchmark checks each run's tasks kept it), so the runs compete for one core.
Through the real runner (interpreter/sandbox: admission gate, per-run cgroups, cold
bwrap sandboxes, a slot for every run): `--spinners` members each start a run that spins
(`while True: pass`);
once they are all where the mode puts them, a short run spins for `--short-cpu` seconds
of CPU. The host samples, from schedstat, the CPU the short run's tasks and every
spinner's tasks got between the moment the short run had 0.15 s of CPU and the moment it
had 0.15 s + `--window`, and reports the spinners' CPU as a share of the short run's.

Modes, alternating order each round:
- long lane: the spinners leave their slots for the long lane after `--long-after`
  seconds of their own time (RUN_LONG_AFTER_SECONDS: by default 0.25 s more than
  `--short-cpu`, so the short run is not taken for a long one; a run's own time is what it
  ran or slept, so each spinner spins that much CPU before it moves),
  and their cgroups become SCHED_IDLE (`cpu.idle`, limits.py set_cpu_weight);
- weight 15: the same, then each spinner's group is set as set_cpu_weight sets it on a
  kernel without `cpu.idle` (weight 15 of 1024; expected share 8 x 15/1024 = 12%);
- equal weight: no long lane (MAX_LONG_RUNS=0, no pausing) and a slot for every run:
  spinners and the short run share the core at equal weight (expected 800%).

Needs root (per-run cgroups; the long lane needs them) and the sandbox venv
(SANDBOX_VENV_DIR, default the test suite's). Uses a temporary DATA_DIR.
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

SPIN = "while True:\n    pass"
SHORT = """
import time
started = time.process_time()
while time.process_time() - started < {seconds}:
    pass
print("spun", round(time.process_time() - started, 3))
"""
WINDOW_STARTS_AT = 0.15  # seconds of the short run's CPU: its Python started and it is spinning
SPINNER_READY_CPU = 0.1  # a spinner with this much CPU is past its start-up, in its loop
POLL_SECONDS = 0.005
MODES = ("long lane", "weight 15", "equal weight")


def task_cpu_ns(pids: set[int]) -> int:
    """CPU time of every thread of these processes (schedstat's first field: ns on a CPU)."""
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as handle:
                    total += int(handle.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # gone between the listing and the read
    return total


def check_pinned(pids: set[int], cpu: int) -> None:
    for pid in pids:
        try:
            allowed = os.sched_getaffinity(pid)
        except OSError:
            continue
        if allowed != {cpu}:
            raise SystemExit(f"process {pid} of a run may use CPUs {sorted(allowed)}, not only {cpu}: "
                             "the figures would not be of runs sharing one core")


def settings_for(data_dir: Path, mode: str, spinners: int, long_after: float):
    """A slot for every run in every mode (all spinners start at once; the short run never
    queues): the modes differ only in where the spinners are when the short run spins."""
    from bench.run_bench import make_settings

    settings = make_settings(data_dir, heavy=0, light=0, concurrent=spinners + 1, fork_server=False)
    if mode == "equal weight":
        return settings.replace(max_long_runs=0, paused_runs_memory_mb=0)
    return settings.replace(max_long_runs=max(spinners, settings.max_long_runs), run_long_after_seconds=long_after,
                            paused_runs_memory_mb=0)


async def until(condition, what: str, seconds: float = 120) -> None:
    """Poll `condition` (a benchmark may poll: it measures, it proves nothing)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def lower_to_weight_15(cgroup) -> None:
    """What set_cpu_weight(LONG_RUN_NICE) does where the kernel has no cpu.idle."""
    from interpreter.sandbox.limits import DEFAULT_SHARES, LOWEST_NICE, nice_to_weight

    weight = nice_to_weight(LOWEST_NICE)
    (cgroup.cpu_dir / "cpu.idle").write_text("0")
    if (cgroup.cpu_dir / "cpu.shares").exists():
        (cgroup.cpu_dir / "cpu.shares").write_text(str(weight))
    else:
        (cgroup.cpu_dir / "cpu.weight").write_text(str(max(1, weight * 100 // DEFAULT_SHARES)))


async def one_round(data_dir: Path, mode: str, *, spinners: int, short_cpu: float, window: float,
                    cpu: int, long_after: float) -> float:
    """The spinners' CPU as a share of the short run's, over the window."""
    from interpreter.packages import PackageManager
    from interpreter.sandbox import SandboxJob, SandboxRunner

    data_dir.mkdir(parents=True)
    settings = settings_for(data_dir, mode, spinners, long_after)
    runner = SandboxRunner(settings, PackageManager(settings))
    if not runner.cgroups.available:
        raise SystemExit(f"no per-run cgroups ({runner.cgroups.reason}): run as root")
    spinning = [asyncio.ensure_future(runner.run(SandboxJob(code=SPIN, timeout=300, owner=member)))
                for member in range(1, spinners + 1)]
    short: asyncio.Future | None = None
    try:
        # Past their start-up, in their loop (they start in slots at equal weight in every mode).
        await until(lambda: len(runner.cgroups.created) >= spinners
                    and all(task_cpu_ns(group.pids()) >= SPINNER_READY_CPU * 1e9
                            for group in runner.cgroups.created[:spinners]), "the spinners to spin")
        spinner_groups = list(runner.cgroups.created[:spinners])
        long_runs = 0 if mode == "equal weight" else spinners
        if long_runs:
            await until(lambda: runner.load()["long"] == spinners and all(g.cpu_idle() for g in spinner_groups),
                        "the spinners to be in the long lane, SCHED_IDLE")
        if mode == "weight 15":
            for group in spinner_groups:
                lower_to_weight_15(group)
        spinner_pids = set().union(*(group.pids() for group in spinner_groups))
        check_pinned(spinner_pids, cpu)
        short = asyncio.ensure_future(runner.run(SandboxJob(code=SHORT.format(seconds=short_cpu), timeout=300,
                                                            owner=spinners + 1)))
        await until(lambda: len(runner.cgroups.created) > spinners or short.done(), "the short run's cgroup")
        short_group = next(g for g in runner.cgroups.created if g not in spinner_groups)

        async def short_cpu_reaches(seconds: float) -> tuple[int, int]:
            while True:
                pids = short_group.pids()
                used = task_cpu_ns(pids)
                if used >= seconds * 1e9:
                    check_pinned(pids, cpu)
                    return used, task_cpu_ns(spinner_pids)
                if short.done():
                    raise SystemExit(f"the short run ended before {seconds} s of CPU: {short.result()}")
                await asyncio.sleep(POLL_SECONDS)

        short_before, spinners_before = await short_cpu_reaches(WINDOW_STARTS_AT)
        short_after, spinners_after = await short_cpu_reaches(WINDOW_STARTS_AT + window)
        if (runner.load()["long"], runner.load()["paused"]) != (long_runs, 0):
            raise SystemExit(f"the short run was taken for a long one ({runner.load()}): the machine is too "
                             "busy for this measurement; raise --long-after")
        outcome = await short
        if not outcome.success or not outcome.output.startswith("spun"):
            raise SystemExit(f"the short run failed: {outcome.error or outcome.output}")
        return (spinners_after - spinners_before) / (short_after - short_before)
    finally:
        for task in spinning + ([short] if short is not None else []):
            task.cancel()  # the sandbox is destroyed with its cgroup (SandboxProcess.execute)
        await asyncio.gather(*spinning, *([short] if short is not None else []), return_exceptions=True)
        await runner.close()


async def main_async(args: argparse.Namespace) -> None:
    from bench.run_bench import announce_machine

    os.sched_setaffinity(0, {args.cpu})  # before anything starts: every sandbox inherits it
    announce_machine("no per-run cgroups: this benchmark cannot run")
    print(f"{args.spinners} spinners and one short run ({args.short_cpu:g} s of CPU), all on CPU {args.cpu}; "
          f"window: {args.window:g} s of the short run's CPU; {args.rounds} rounds, order alternating\n", flush=True)
    shares: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="bench-long-lane-") as tmp:
        for round_index in range(args.rounds):
            order = MODES[round_index % len(MODES):] + MODES[:round_index % len(MODES)]
            for mode in order:
                share = await one_round(Path(tmp) / f"r{round_index}-{mode.replace(' ', '-')}", mode,
                                        spinners=args.spinners, short_cpu=args.short_cpu, window=args.window,
                                        cpu=args.cpu, long_after=args.long_after)
                shares[mode].append(share)
                print(f"round {round_index + 1} {mode:13s} spinners got {share * 100:7.2f}% of the short run's CPU",
                      flush=True)
    print()
    for mode, values in shares.items():
        print(f"{mode:13s} median {statistics.median(values) * 100:7.2f}%   range "
              f"{min(values) * 100:.2f}-{max(values) * 100:.2f}%   (n={len(values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spinners", type=int, default=8)
    parser.add_argument("--short-cpu", type=float, default=0.5, help="CPU seconds the short run spins")
    parser.add_argument("--window", type=float, default=0.3, help="CPU seconds of the short run measured")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)))
    parser.add_argument("--long-after", type=float, default=None,
                        help="RUN_LONG_AFTER_SECONDS in the long-lane modes (default: --short-cpu + 0.25): "
                             "above the short run's own time in its slot")
    args = parser.parse_args()
    if args.long_after is None:
        args.long_after = args.short_cpu + 0.25
    if args.short_cpu < WINDOW_STARTS_AT + args.window + 0.05:
        parser.error(f"--short-cpu must leave room for the window: at least {WINDOW_STARTS_AT + args.window + 0.05:g}")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
