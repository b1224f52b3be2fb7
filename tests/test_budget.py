"""The daily allowance (/ask's ASK_QUESTIONS_PER_DAY), counted in the store, on every backend.

`file_backend` runs each test on SQLite and on MongoDB (PyMongo async and motor handles)
against a real wire-protocol server; two stores on one database stand for two processes.
"""

from __future__ import annotations

import asyncio

from interpreter.budget import DailyBudget

MEMBER, OTHER = 111111111111111111, 222222222222222222


def budget(backend, limit: int = 3) -> DailyBudget:
    return DailyBudget(backend.store(), "ask", limit, clock=backend.clock)


async def test_allowance_runs_out_and_is_per_member(file_backend):
    first = budget(file_backend)
    used = [(await first.take(MEMBER)).used for _ in range(3)]
    assert used == [1, 2, 3]
    refused = await first.take(MEMBER)
    assert not refused.granted and refused.left == 0
    assert (await first.take(OTHER)).granted


async def test_two_processes_share_the_count(file_backend):
    one, two = budget(file_backend), budget(file_backend)  # two stores: as two bot processes
    assert (await one.take(MEMBER)).used == 1
    assert (await two.take(MEMBER)).used == 2
    assert (await one.take(MEMBER)).used == 3
    assert not (await two.take(MEMBER)).granted


async def test_concurrent_takes_never_exceed_the_limit(file_backend):
    stores = [budget(file_backend, limit=5) for _ in range(3)]
    grants = await asyncio.gather(*(stores[i % 3].take(MEMBER) for i in range(20)))
    assert sum(1 for grant in grants if grant.granted) == 5
    assert sorted(grant.used for grant in grants if grant.granted) == [1, 2, 3, 4, 5]


async def test_given_back_unit_can_be_used_again(file_backend):
    allowance = budget(file_backend, limit=1)
    taken = await allowance.take(MEMBER)
    assert not (await allowance.take(MEMBER)).granted
    await allowance.give_back(taken)
    assert (await allowance.take(MEMBER)).granted


async def test_a_new_utc_day_starts_afresh_and_old_counters_are_swept(file_backend):
    allowance = budget(file_backend, limit=1)
    taken = await allowance.take(MEMBER)
    assert not (await allowance.take(MEMBER)).granted
    file_backend.clock.advance(hours=24)
    assert (await allowance.take(MEMBER)).granted
    assert (taken.resets_at.hour, taken.resets_at.minute) == (0, 0)  # UTC midnight
    file_backend.clock.advance(hours=48)
    assert await allowance.purge_expired() >= 1


async def test_unlimited_never_touches_the_store(file_backend):
    allowance = budget(file_backend, limit=0)
    for _ in range(10):
        assert (await allowance.take(MEMBER)).granted
