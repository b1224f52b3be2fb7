"""The control channel from a sandbox to the host: member code has no handle on it, and
whatever arrives on it anyway (a compromised supervisor) is parsed as hostile input:
bounded, linear, never stalling the event loop, and every violation a failed, audited run.

The hostile streams come from a replacement bootstrap (`hostile_bootstrap`), run in the
real sandbox through the real engine: it plays a supervisor that the member's code took
over, which is the worst the host can receive.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from interpreter.sandbox import runner as runner_module
from interpreter.sandbox.protocol import MAX_SKIPPED_LISTED
from interpreter.types import ExitCause
from tests.sandbox_helpers import run

USER = 424242424242424242

# A supervisor taken over by the run: answers "ready", then floods the control channel.
# It replaces the bootstrap module, so it serves both launch modes: a launched sandbox calls
# main(); a fork-server template imports it, calls prepare(), and each forked run calls
# run_supervised() on the run's own channels.
HOSTILE_TEMPLATE = '''
import json, os, sys

def prepare():
    pass

def main():
    run_supervised(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0)

def run_supervised(control_fd, job_fd, **_options):  # whatever options the real one takes
    control = os.fdopen(control_fd, "wb", buffering=1 << 16)
    jobs = os.fdopen(job_fd, "rb")
    def frame(kind, payload=b"", **fields):
        return json.dumps(dict(fields, kind=kind, size=len(payload))).encode() + b"\\n" + payload
    control.write(frame("ready")); control.flush()
    jobs.readline()
    %s
    control.flush()
    os._exit(0)
'''

HOSTILE_STREAMS = {
    # Before: each duplicate name was compared with every earlier one, on the event loop.
    "same name 300,000 times": 'control.write(frame("skipped", name="a.png", reason="x") * 300_000)',
    # Before: every name was kept: hundreds of MB held by the bot.
    "300,000 long distinct names": 'control.write(b"".join(frame("skipped", name="%06d" % i + "n" * 480, reason="x")'
                                   ' for i in range(300_000)))',
    # Before: RecursionError / OverflowError escaped from execute_code, and nothing was audited.
    "deep nesting": 'control.write(b"[" * 3000 + b"]" * 3000 + b"\\n")',
    "infinite size": 'control.write(b\'{"kind": "file", "name": "x", "size": 1e999}\\n\')',
    "exit code past 64 bits": 'control.write(frame("finished", status="exception", exit_code=2**70) + frame("end"))',
    "payload on a frame that has none": 'control.write(frame("end", b"x" * 1000))',
    "unknown kind": 'control.write(frame("exec", name="rm -rf /"))',
    "endless file frames": 'control.write(frame("file", b"x" * (1 << 20), name="f.bin") * 400)',
}


@pytest.fixture(params=list(HOSTILE_STREAMS))
def hostile_bootstrap(request, monkeypatch) -> str:
    """Installs one hostile stream's bootstrap, before the engine fixture starts anything:
    a fork-server template reads the bootstrap when it is launched (TEST_SANDBOX_FORK_SERVER=1)."""
    source = (HOSTILE_TEMPLATE % HOSTILE_STREAMS[request.param]).encode()
    monkeypatch.setattr(runner_module, "BOOTSTRAP_SOURCE", source)  # the fork server reads it there too
    return request.param


class LoopLag:
    """The longest time the event loop went without running a 10 ms ticker."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task | None = None

    async def _tick(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.worst = max(self.worst, now - last - 0.01)
            last = now

    def __enter__(self) -> "LoopLag":
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc) -> None:
        self._task.cancel()


async def test_member_code_has_no_handle_on_the_control_channel(runner):
    """Before: the control pipe was an open fd of the process running the member's code, so
    one os.write() forged files and results (and could flood the host)."""
    outcome = await run(runner, """
        import json, os, sys
        forged = json.dumps({"kind": "file", "name": "forged.txt", "size": 6}).encode() + b"\\n" + b"forged"
        for fd in [int(arg) for arg in sys.argv[1:]]:  # the channel fds the bootstrap was given
            try:
                os.fstat(fd)
                print("open:", fd)
            except OSError as exc:
                print("closed:", exc.strerror)
        refused = set()
        for pid in sorted(int(p) for p in os.listdir('/proc') if p.isdigit()):
            if pid == os.getpid():
                continue
            try:
                fds = os.listdir(f'/proc/{pid}/fd')
            except PermissionError:
                refused.add(pid)  # not dumpable: the supervisor (and a forked run's init)
                continue
            for fd in fds:
                try:
                    target = os.open(f'/proc/{pid}/fd/{fd}', os.O_WRONLY | os.O_NONBLOCK)
                except OSError:
                    continue
                try:
                    os.write(target, forged)
                except OSError:
                    pass
                os.close(target)
        print("the supervisor's fds are out of reach:", os.getppid() in refused)
        """)
    assert outcome.cause is ExitCause.OK, outcome.error
    lines = outcome.output.splitlines()
    assert lines[:2] == ["closed: Bad file descriptor", "closed: Bad file descriptor"]
    assert lines[-1] == "the supervisor's fds are out of reach: True"
    assert [f.filename for f in outcome.files] == []


# Both kinds of run: with TEST_SANDBOX_FORK_SERVER=1 one is forked from the light template, the
# other from the data-library template (each template's runs are read by the same host code).
RUNS = {"light run": "print('hi')", "data-library run": "import pandas; print('hi')"}


@pytest.mark.parametrize("code", list(RUNS.values()), ids=list(RUNS))
async def test_a_hostile_control_stream_is_a_failed_audited_run_that_never_stalls_the_bot(
        hostile_bootstrap, engine, code):
    with LoopLag() as lag:
        started = time.monotonic()
        result = await engine.execute(code, USER)
        took = time.monotonic() - started
    assert result["success"] is False
    assert result["exit_cause"] == ExitCause.PROTOCOL.value, result
    assert "sandbox sent a malformed result" in result["error"]
    assert result["generated_files"] == []
    assert lag.worst < 0.5, f"the event loop stalled for {lag.worst:.2f} s"
    assert took < 15, f"the run took {took:.1f} s"
    [record] = await engine.audit.recent(5, USER)
    assert record["exit_cause"] == ExitCause.PROTOCOL.value


async def test_skipped_files_are_listed_up_to_a_bound_and_counted_beyond(runner):
    """The real bootstrap names the first skipped files and counts the rest; the host keeps no more."""
    outcome = await run(runner, """
        import os
        for i in range(3000):
            open(f'f{i:04d}.txt', 'w').write('x')
        """, timeout=60)
    assert outcome.cause is ExitCause.OK, outcome.error
    assert len(outcome.files) == runner.settings.max_generated_files
    assert len(outcome.skipped_files) == MAX_SKIPPED_LISTED + 1
    assert outcome.skipped_files[-1] == (
        f"… and {3000 - runner.settings.max_generated_files - MAX_SKIPPED_LISTED:,} more files that were not sent")

