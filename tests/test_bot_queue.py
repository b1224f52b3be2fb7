"""The bot's request rules in front of the engine's queue: per-member limits, a bound on
the whole bot, cooldown. (Who runs next is the engine's queue: tests/test_admission.py.)"""

from __future__ import annotations

import pytest

from cogs._queue import RunRefused, RunScheduler


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scheduler(**overrides) -> tuple[RunScheduler, FakeClock]:
    clock = FakeClock()
    options = dict(capacity=2, per_member_queued=2, max_waiting=10, cooldown_seconds=0, clock=clock)
    options.update(overrides)
    return RunScheduler(**options), clock


def test_too_many_runs_of_one_member_are_refused():
    s, _ = scheduler(per_member_queued=1)
    s.submit(1), s.submit(1)
    with pytest.raises(RunRefused, match="limit is 2"):
        s.submit(1)
    assert s.stats().refused_total == 1
    s.submit(2)  # others are unaffected


def test_one_run_at_a_time_reads_naturally():
    s, _ = scheduler(per_member_queued=0)
    s.submit(1)
    with pytest.raises(RunRefused, match="already have a run in progress"):
        s.submit(1)


def test_the_whole_bot_refuses_beyond_capacity_plus_waiting():
    s, _ = scheduler(capacity=1, max_waiting=1)
    s.submit(1), s.submit(2)
    with pytest.raises(RunRefused, match=r"busy \(1 runs waiting\)"):
        s.submit(3)


def test_cooldown_uses_the_clock():
    s, clock = scheduler(cooldown_seconds=5)
    s.submit(1).release()
    clock.now += 2
    with pytest.raises(RunRefused, match="in 3 s"):
        s.submit(1)
    clock.now += 3
    s.submit(1)


def test_a_released_request_frees_its_place_and_releasing_twice_is_harmless():
    s, _ = scheduler(capacity=1, max_waiting=0, per_member_queued=0)
    first = s.submit(1)
    with pytest.raises(RunRefused):
        s.submit(2)
    first.release()
    first.release()
    s.submit(2)
    assert s.stats().in_progress == 1 and s.stats().started_total == 2
