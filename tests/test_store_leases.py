"""Leases: the one atomic document every process sharing a store agrees on (session
placement, per-member locks, cooldowns, the sweep), on SQLite, PyMongo and motor."""

from __future__ import annotations

import asyncio
from datetime import timedelta


async def test_a_lease_has_one_holder_until_it_expires_or_is_released(file_backend):
    first, second = file_backend.store(), file_backend.store()  # two processes' stores
    now = file_backend.clock()
    until = now + timedelta(seconds=30)
    taken = await first.acquire_lease("session:s1", "worker-a", until, now, {"instance": "i1"})
    assert (taken.holder, taken.data) == ("worker-a", {"instance": "i1"})
    refused = await second.acquire_lease("session:s1", "worker-b", until, now)
    assert refused.holder == "worker-a", "someone else's live lease is never taken over"
    renewed = await first.acquire_lease("session:s1", "worker-a", until + timedelta(seconds=30), now, {"instance": "i2"})
    assert renewed.data == {"instance": "i2"} and renewed.expires_at > until
    assert not await second.release_lease("session:s1", "worker-b"), "only the holder releases"
    assert (await second.read_lease("session:s1", now)).holder == "worker-a"
    later = until + timedelta(seconds=31)
    assert await second.read_lease("session:s1", later) is None, "an expired lease reads as free"
    assert (await second.acquire_lease("session:s1", "worker-b", later + timedelta(seconds=5), later)).holder == "worker-b"
    assert await second.release_lease("session:s1", "worker-b")
    assert await first.read_lease("session:s1", now) is None


async def test_racing_acquirers_get_exactly_one_winner(file_backend):
    stores = [file_backend.store() for _ in range(4)]
    now = file_backend.clock()
    until = now + timedelta(seconds=30)
    results = await asyncio.gather(*(store.acquire_lease("sweep", f"p{i}", until, now)
                                     for i, store in enumerate(stores) for _ in range(3)))
    holders = {lease.holder for lease in results}
    assert len(holders) == 1, holders


async def test_expired_leases_are_swept(file_backend):
    store = file_backend.store()
    now = file_backend.clock()
    await store.acquire_lease("a", "x", now + timedelta(seconds=1), now)
    await store.acquire_lease("b", "x", now + timedelta(hours=1), now)
    assert await store.delete_expired_leases(now + timedelta(seconds=2)) == 1
    assert await store.read_lease("b", now) is not None


async def test_leases_are_listed_by_prefix_soonest_first(file_backend):
    store = file_backend.store()
    now = file_backend.clock()
    await store.acquire_lease("admission:7:b", "b", now + timedelta(seconds=20), now)
    await store.acquire_lease("admission:7:a", "a", now + timedelta(seconds=10), now)
    await store.acquire_lease("admission:70:c", "c", now + timedelta(seconds=5), now)
    await store.acquire_lease("admission:7:old", "o", now + timedelta(seconds=1), now)
    later = now + timedelta(seconds=2)
    assert [lease.key for lease in await store.leases_with_prefix("admission:7:", later)] == ["admission:7:a",
                                                                                              "admission:7:b"]
