"""The one queue in front of the sandboxes: members take turns, a short run never waits
behind a long one that the import-based guess called light, and a long run goes on at
the lowest CPU priority. Gate rules on their own, then real runs in the real sandbox."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import interpreter
from interpreter.sandbox.admission import AdmissionGate, observe_queue
from tests.fixtures_sandbox import make_settings

ALICE, BOB, CAROL = 1, 2, 3
SLEEPER = "import time\ntime.sleep(60)"  # no heavy import: the guess says "light"
SPINNER = "while True:\n    pass"  # the same


async def queued(gate: AdmissionGate, member: int, name: str, order: list[str], *, light: bool = True) -> asyncio.Task:
    async def wait() -> None:
        grant = await gate.acquire(light=light, member=member)
        order.append(name)
        grants[name] = grant

    task = asyncio.create_task(wait())
    await asyncio.sleep(0)
    return task


grants: dict[str, object] = {}


async def test_members_waiting_together_take_turns():
    gate = AdmissionGate(1)
    order: list[str] = []
    holder = await gate.acquire(light=True, member=ALICE)
    for name in ("alice-2", "alice-3"):
        await queued(gate, ALICE, name, order)
    await queued(gate, BOB, "bob-1", order)
    await queued(gate, CAROL, "carol-1", order)
    gate.release(holder)
    for _ in range(4):
        await asyncio.sleep(0)
        gate.release(grants[order[-1]])
    await asyncio.sleep(0)
    # alice's backlog arrived first, yet bob and carol each go before her second run
    assert order == ["bob-1", "carol-1", "alice-2", "alice-3"]


async def test_a_member_with_a_run_executing_goes_after_members_without():
    gate = AdmissionGate(2)
    order: list[str] = []
    alice_running = await gate.acquire(light=True, member=ALICE)
    other = await gate.acquire(light=True, member=CAROL)
    await queued(gate, ALICE, "alice-2", order)
    await queued(gate, BOB, "bob-1", order)
    gate.release(other)
    await asyncio.sleep(0)
    assert order == ["bob-1"]
    gate.release(alice_running)
    await asyncio.sleep(0)
    assert order == ["bob-1", "alice-2"]


async def test_queue_positions_are_reported_then_the_start():
    gate = AdmissionGate(1)
    holder = await gate.acquire(light=True, member=ALICE)
    seen: list[int] = []
    with observe_queue(seen.append):
        heavy = asyncio.create_task(gate.acquire(light=False, member=BOB))
        await asyncio.sleep(0)
        light = asyncio.create_task(gate.acquire(light=True, member=CAROL))
        await asyncio.sleep(0)
    assert seen == [1, 1]  # the light run goes before the heavy one queued earlier
    gate.release(holder)
    gate.release(await light)
    gate.release(await heavy)
    assert seen == [1, 1, 0, 0]


async def test_a_run_becomes_long_and_gives_its_slot_to_the_next():
    gate = AdmissionGate(1, long_capacity=1, long_after=0.05)
    became_long = asyncio.Event()
    sleeper = await gate.acquire(light=True, member=ALICE)
    sleeper.on_long(became_long.set)
    waiter = asyncio.create_task(gate.acquire(light=True, member=BOB))
    await asyncio.wait_for(became_long.wait(), 5)
    bob = await asyncio.wait_for(waiter, 5)  # the slot moved on while alice's run goes on
    assert gate.long_running == 1 and gate.running == 2
    # the long lane is full: a second long run keeps its slot until the first ends
    third = asyncio.create_task(gate.acquire(light=True, member=CAROL))
    await asyncio.sleep(0.2)  # bob's run is long by now, but has nowhere to go
    assert not third.done() and not bob.long
    gate.release(sleeper)
    assert bob.long
    gate.release(await asyncio.wait_for(third, 5))
    gate.release(bob)
    assert gate.running == 0


async def test_one_long_run_per_member():
    gate = AdmissionGate(2, long_capacity=4, long_after=0.05)
    first = await gate.acquire(light=True, member=ALICE)
    second = await gate.acquire(light=True, member=ALICE)
    long_event = asyncio.Event()
    first.on_long(long_event.set)
    await asyncio.wait_for(long_event.wait(), 5)
    await asyncio.sleep(0.1)
    assert [first.long, second.long] == [True, False]  # alice's second long run keeps its slot
    gate.release(first)
    assert second.long
    gate.release(second)


async def test_charts_count_as_long_only_after_several_times_as_long():
    """Charts need most of a second of CPU: they must not fill the lane meant for runs
    the import-based guess got wrong."""
    from interpreter.sandbox.admission import HEAVY_LONG_FACTOR

    gate = AdmissionGate(2, long_capacity=2, long_after=0.05)
    light = await gate.acquire(light=True, member=ALICE)
    heavy = await gate.acquire(light=False, member=BOB)
    light_long, heavy_long = asyncio.Event(), asyncio.Event()
    light.on_long(light_long.set)
    heavy.on_long(heavy_long.set)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(light_long.wait(), 5)
    assert not heavy.long
    await asyncio.wait_for(heavy_long.wait(), 5)
    assert loop.time() - started >= 0.05 * HEAVY_LONG_FACTOR * 0.9
    gate.release(light)
    gate.release(heavy)


# ---------------------------------------------------------------------- real runs


@pytest.fixture(params=["cold", "forked"])
async def one_slot_engine(request, tmp_path: Path, sandbox_venv):
    """One run slot; runs start cold, or are forked from the fork server's template."""
    data = tmp_path / "data"
    data.mkdir()
    forked = request.param == "forked"
    engine = interpreter.configure(make_settings(
        data, MAX_CONCURRENT_RUNS="1", MAX_LONG_RUNS="4", RUN_LONG_AFTER_SECONDS="0.5",
        MAX_RUN_TIMEOUT_SECONDS="60", SANDBOX_WARM_ON_FIRST_RUN="false",
        SANDBOX_FORK_SERVER="true" if forked else "false"))
    if forked:
        await interpreter.warm_up()
        assert engine.runner.fork_server_of_this_loop() is not None
    yield engine
    await engine.close()


@pytest.mark.parametrize("long_code", [SLEEPER, SPINNER])
async def test_a_print_does_not_wait_behind_a_long_run_the_guess_called_light(one_slot_engine, long_code):
    long_run = asyncio.create_task(interpreter.execute_code(long_code, user_id=ALICE, timeout=60))
    gate = one_slot_engine.runner._admission()
    while gate.running == 0:  # alice's run holds the only slot
        await asyncio.sleep(0.01)
    started = time.monotonic()
    result = await asyncio.wait_for(interpreter.execute_code("print('quick')", user_id=BOB), 30)
    assert result["output"] == "quick\n"
    assert not long_run.done(), "the long run is still going: the print did not wait for it"
    assert time.monotonic() - started < 15
    long_run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await long_run


REPORTS_ITS_PRIORITY = """
import os, threading, time
stop = False
def spin():
    while not stop:
        pass
helper = threading.Thread(target=spin)
helper.start()
def nice_values():
    values = set()
    for tid in os.listdir('/proc/self/task'):
        with open(f'/proc/self/task/{tid}/stat') as stat:
            values.add(int(stat.read().rpartition(')')[2].split()[16]))
    return sorted(values)
deadline = time.time() + 20
while nice_values() != [19] and time.time() < deadline:
    pass
stop = True
helper.join()
print(nice_values())
"""


async def test_a_long_run_goes_on_at_the_lowest_cpu_priority_in_every_thread(one_slot_engine):
    result = await interpreter.execute_code(REPORTS_ITS_PRIORITY, user_id=ALICE, timeout=30)
    assert result["output"] == "[19]\n", result


async def test_a_short_run_keeps_normal_priority(one_slot_engine):
    result = await interpreter.execute_code("import os\nprint(os.nice(0))", user_id=ALICE)
    assert result["output"] == "0\n"


def test_the_mixed_load_benchmark_plans_ten_percent_time_outs_for_every_member():
    from bench.mixed_load import plan

    runs = plan(40, 5, seed=13)
    assert len(runs) == 200
    assert sum(kind == "timeout" for _, kind, _ in runs) == 20
    assert sorted({member for member, _, _ in runs}) == list(range(1, 41))
    assert all(sum(m == member for m, _, _ in runs) == 5 for member in range(1, 41))
