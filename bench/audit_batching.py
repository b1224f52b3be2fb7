"""Benchmark: the run audit's writer (interpreter/audit.py) batching records into
transactions, against one transaction per record, in the same invocation.

    cd /work/main && .venv/bin/python -m bench.audit_batching              # 400 runs at 400/s, 3 rounds, ~15 s
    .venv/bin/python -m bench.audit_batching --runs 100 --rounds 1         # a quick sanity check
    .venv/bin/python -m bench.audit_batching --mongodb-uri mongodb://127.0.0.1:27017  # MongoDB instead of SQLite

Each run is recorded as the engine records it: an admission record ("running") when it
is admitted and, `--run-seconds` later, its end under the same run id, both through
`RunAudit.record_later` on the real store (SQLite in a temporary DATA_DIR by default).
Runs are admitted at `--rate` per second on the event loop's clock (`call_at`), so the
writer sees them arrive as a busy bot's would.

Two writers, alternating which goes first each round:
- batched: the project's writer (one transaction every WRITE_LINGER_SECONDS, at most
  WRITE_BATCH records, an admission left out when its end is in the same batch);
- one per record: the same records written in order by a single writer, each in its own
  transaction (`RunAudit.record`), as the audit wrote them before batching.

Reported per writer: transactions (calls of the store's `save_runs`, each one transaction),
records written, the lag from the last record queued to the last one written, and the
process's CPU time over the round (SQLite's work in worker threads included). Both must
end with exactly one completed record per run; the benchmark stops if not.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@dataclasses.dataclass
class Round:
    writer: str
    transactions: int
    records_written: int
    lag_seconds: float
    cpu_seconds: float


def settings_for(data_dir: Path, mongodb_uri: str):
    from config import load_settings

    values = {"DATA_DIR": str(data_dir)}
    if mongodb_uri:
        values |= {"MONGODB_URI": mongodb_uri, "MONGODB_DATABASE": f"bench_audit_{data_dir.name}"}
    return load_settings(values, dotenv=False)


async def one_round(data_dir: Path, writer: str, *, runs: int, rate: float, run_seconds: float,
                    mongodb_uri: str) -> Round:
    from interpreter.audit import RunAudit
    from interpreter.run_ids import new_run_id
    from interpreter.store import open_store

    data_dir.mkdir(parents=True)
    store = open_store(settings_for(data_dir, mongodb_uri))
    audit = RunAudit(settings_for(data_dir, mongodb_uri), store)
    transactions = 0
    records_written = 0
    real_save = store.save_runs

    async def counted_save(records):  # observes the real store's writes; changes nothing
        nonlocal transactions, records_written
        transactions += 1
        records_written += len(records)
        await real_save(records)

    store.save_runs = counted_save
    queue: asyncio.Queue = asyncio.Queue()

    async def one_per_record() -> None:
        while (record := await queue.get()) is not None:
            if not await audit.record(record):
                raise SystemExit("a record could not be written")

    unbatched = asyncio.ensure_future(one_per_record()) if writer == "one per record" else None
    submit = audit.record_later if unbatched is None else queue.put_nowait
    loop = asyncio.get_running_loop()
    all_queued = loop.create_future()
    started_at = datetime.now(timezone.utc)

    def admit(n: int) -> None:
        run_id = new_run_id()
        code = f"print({n})"
        submit(audit.admission_record(run_id=run_id, user_id=1 + n % 40, code=code, started_at=started_at))
        loop.call_later(run_seconds, end, n, run_id, code)

    def end(n: int, run_id: str, code: str) -> None:
        submit(audit.build_record({"success": True, "exit_cause": "ok"}, user_id=1 + n % 40, code=code,
                                  started_at=started_at, duration_seconds=run_seconds, run_id=run_id))
        if n == runs - 1:
            all_queued.set_result(time.perf_counter())

    cpu_before = time.process_time()
    first = loop.time() + 0.05
    for n in range(runs):
        loop.call_at(first + n / rate, admit, n)
    last_queued = await all_queued
    if unbatched is not None:
        queue.put_nowait(None)
        await unbatched
    elif not await audit.flush(timeout=120):
        raise SystemExit("the audit writer did not finish within 120 s")
    lag = time.perf_counter() - last_queued
    cpu = time.process_time() - cpu_before
    store.save_runs = real_save
    recent = await audit.recent(100)
    summary = await audit.summary()
    await audit.close()
    await store.close()
    if summary["runs_in_flight"] != 0 or summary["runs_last_24h"] != runs or any(r["status"] != "ok" for r in recent):
        raise SystemExit(f"{writer}: the store does not hold one completed record per run: {summary}")
    return Round(writer, transactions, records_written, lag, cpu)


async def main_async(args: argparse.Namespace) -> None:
    from bench.run_bench import announce_machine

    announce_machine("nothing differs: the audit needs no root")
    print(f"{args.runs} runs at {args.rate:g}/s, each ending {args.run_seconds * 1000:g} ms after its admission; "
          f"store: {'MongoDB' if args.mongodb_uri else 'SQLite'}; {args.rounds} rounds, order alternating\n")
    writers = ("batched", "one per record")
    results: dict[str, list[Round]] = {writer: [] for writer in writers}
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        for round_index in range(args.rounds):
            order = writers if round_index % 2 == 0 else writers[::-1]
            for writer in order:
                data_dir = Path(tmp) / f"r{round_index}-{writer.replace(' ', '-')}"
                done = await one_round(data_dir, writer, runs=args.runs, rate=args.rate,
                                       run_seconds=args.run_seconds, mongodb_uri=args.mongodb_uri)
                results[writer].append(done)
                print(f"round {round_index + 1} {writer:15s} {done.transactions:5d} transactions  "
                      f"{done.records_written:5d} records  lag {done.lag_seconds * 1000:7.1f} ms  "
                      f"CPU {done.cpu_seconds * 1000:7.1f} ms")
    print()
    print(f"{'writer':15s} {'transactions':>13s} {'records':>8s} {'lag p50':>9s} {'CPU p50':>9s} {'CPU/run':>9s}")
    for writer, rounds in results.items():
        cpu = statistics.median(r.cpu_seconds for r in rounds)
        print(f"{writer:15s} {statistics.median(r.transactions for r in rounds):13g} "
              f"{statistics.median(r.records_written for r in rounds):8g} "
              f"{statistics.median(r.lag_seconds for r in rounds) * 1000:7.1f}ms "
              f"{cpu * 1000:7.1f}ms {cpu / args.runs * 1e6:7.0f}us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--rate", type=float, default=400.0, help="runs admitted per second")
    parser.add_argument("--run-seconds", type=float, default=0.02,
                        help="from a run's admission record to its end record (a print: ~20 ms)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mongodb-uri", default="", help="write to this MongoDB instead of SQLite")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
