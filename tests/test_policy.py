"""The pre-check's cost: it runs on the bot's event loop for every run, so its work must be
linear in the code's length whatever shape the code has (issue 12: 30,000 blank lines
stalled the loop for ~4 s, because `^\\s*` at every line start rescanned all the lines after it).

CPU time of this thread is measured (not wall time), so a busy machine does not make these
tests flaky: the quadratic version took tens of seconds of CPU on 100,000 characters.
"""

from __future__ import annotations

import time

import pytest

from interpreter import execute_code
from interpreter.policy import MAX_CODE_CHARS, precheck

SIZE = MAX_CODE_CHARS - 100
CPU_BUDGET_SECONDS = 0.5  # linear work on 100,000 characters takes about a millisecond


def cpu_seconds(work) -> tuple[float, object]:
    started = time.thread_time()
    value = work()
    return time.thread_time() - started, value


# Shapes that make backtracking regexes rescan: runs of whitespace and blank lines where a
# pattern allows `\s*`, and the words the patterns look for repeated with whitespace after them.
HOSTILE_SHAPES = {
    "blank lines": "\n" * SIZE + "x = 1",
    "blank lines with spaces": " \n" * (SIZE // 2) + "x = 1",
    "lines of bangs": "!\n" * (SIZE // 2) + "x = 1",
    "lines of '! pip'": "! pip\n" * (SIZE // 6) + "x = 1",
    "spaces": " " * SIZE + "x = 1",
    "requests then whitespace": ("requests" + " \n" * 200) * (SIZE // 408),
    "requests dot then whitespace": ("requests." + " \n" * 200) * (SIZE // 409),
    "urlopen then whitespace": ("urlopen(" + " " * 400) * (SIZE // 408),
}


@pytest.mark.parametrize("shape", sorted(HOSTILE_SHAPES))
def test_precheck_work_is_linear_for_hostile_shapes(shape):
    code = HOSTILE_SHAPES[shape]
    assert len(code) <= MAX_CODE_CHARS
    took, reason = cpu_seconds(lambda: precheck(code))
    assert reason is None, reason
    assert took < CPU_BUDGET_SECONDS, f"{shape}: {took:.2f} s of CPU for {len(code):,} characters"


@pytest.mark.parametrize("code", ["!pip install seaborn", "  %pip install x", "x = 1\n\t! pip3  install y", "\n\n!pip install z"])
def test_notebook_installs_are_still_answered(code):
    assert precheck(code).startswith("Blocked unsafe operation: pip install")


async def test_many_blank_lines_run_through_the_engine(engine):
    started = time.thread_time()
    result = await execute_code(code="\n" * SIZE + "print('ok')", user_id=1)
    took = time.thread_time() - started  # the event loop's own CPU: pre-check, launch, reading the result
    assert result["success"], result["error"]
    assert result["output"] == "ok\n"
    assert took < 2 * CPU_BUDGET_SECONDS + 1, f"the bot's loop spent {took:.2f} s of CPU on one run"
    refused = await execute_code(code="\n" * SIZE + "!pip install seaborn", user_id=1)
    assert refused["error"].startswith("Security validation failed: Blocked unsafe operation: pip install")
