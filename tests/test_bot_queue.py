"""The fair run scheduler: per-member limits, global capacity, cooldown, arrival order."""

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


def test_member_runs_one_at_a_time_and_the_rest_queue_in_order():
    s, _ = scheduler()
    first, second, third = s.submit(1), s.submit(1), s.submit(1)
    assert first.started and not second.started and not third.started
    assert (second.position, third.position) == (1, 2)
    first.release()
    assert second.started and third.position == 1


def test_a_members_backlog_does_not_hold_up_others():
    s, _ = scheduler(capacity=2)
    alice_1, alice_2 = s.submit(1), s.submit(1)
    bob = s.submit(2)
    # alice_2 waits for alice_1 even though a global slot is free; bob takes that slot.
    assert alice_1.started and not alice_2.started and bob.started


def test_global_capacity_and_positions():
    s, _ = scheduler(capacity=1)
    a, b, c = s.submit(1), s.submit(2), s.submit(3)
    assert a.started and (b.position, c.position) == (1, 2)
    assert s.stats().running == 1 and s.stats().waiting == 2
    a.release()
    assert b.started and c.position == 1


def test_too_many_runs_of_one_member_are_refused():
    s, _ = scheduler(per_member_queued=1)
    s.submit(1), s.submit(1)
    with pytest.raises(RunRefused, match="limit is 2"):
        s.submit(1)
    assert s.stats().refused_total == 1
    s.submit(2)  # others are unaffected


def test_full_queue_refuses_new_runs():
    s, _ = scheduler(capacity=1, max_waiting=1)
    s.submit(1), s.submit(2)
    with pytest.raises(RunRefused, match="busy"):
        s.submit(3)


def test_cooldown_uses_the_clock():
    s, clock = scheduler(cooldown_seconds=5)
    s.submit(1).release()
    clock.now += 2
    with pytest.raises(RunRefused, match="in 3 s"):
        s.submit(1)
    clock.now += 3
    assert s.submit(1).started


def test_release_while_waiting_leaves_the_queue():
    s, _ = scheduler(capacity=1)
    a, b, c = s.submit(1), s.submit(2), s.submit(3)
    b.release()  # e.g. the member's interaction was cancelled
    assert c.position == 1
    a.release()
    assert c.started
    c.release()
    c.release()  # releasing twice is harmless
    assert s.stats().running == 0 and s.stats().waiting == 0
