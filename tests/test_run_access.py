"""The abuse limits as plain Python (no Discord): denied members and roles, run channels,
and the hourly run limit counted from the run audit plus this process's admissions.

Real stores (SQLite; MongoDB over the wire for the restart case), a test clock.
"""

from __future__ import annotations

import asyncio
import shutil
from datetime import timedelta

import pytest

from interpreter.access import Admission, Denial, DenialReason, RunAccess, RunContext
from interpreter.audit import RunAudit
from interpreter.store import open_store
from tests.fixtures_mongo import TestClock, file_settings
from tests.waiting import until

MEMBER, OTHER = 1001, 1002
GUILD = 5000
LAB, GENERAL, THREAD, CATEGORY = 7001, 7002, 7003, 7004
BANNED_ROLE, OTHER_ROLE = 6001, 6002


def make(tmp_path, clock=None, store=None, **environ):
    environ.setdefault("RUN_COOLDOWN_SECONDS", "0")  # the cooldown has its own tests (test_shared_limits.py)
    settings = file_settings(tmp_path / "data", **environ)
    audit = RunAudit(settings, store or open_store(settings), clock=clock or TestClock())
    return RunAccess(settings, audit), audit


def ctx(member=MEMBER, channels=(GENERAL,), roles=()) -> RunContext:
    return RunContext(member_id=member, guild_id=GUILD, channel_ids=tuple(channels), role_ids=frozenset(roles))


async def ran(audit: RunAudit, member=MEMBER, *, refused=False) -> None:
    """Record a finished run as the engine does."""
    outcome = {"success": False, "error": "File 'x' was not found"} if refused else {"success": True, "exit_cause": "ok"}
    assert await audit.record(audit.build_record(outcome, user_id=member, code="print(1)", started_at=audit.now(),
                                                 duration_seconds=1.0, guild_id=GUILD))


async def test_nothing_set_allows_everyone_everywhere(tmp_path):
    access, _ = make(tmp_path)
    assert isinstance(await access.admit(ctx(channels=())), Admission)
    assert await access.check(ctx(roles=(BANNED_ROLE,))) is None


async def test_denied_members_and_roles(tmp_path):
    access, _ = make(tmp_path, DENIED_MEMBER_IDS=str(MEMBER), DENIED_ROLE_IDS=f"{BANNED_ROLE}")
    assert await access.admit(ctx()) == Denial(DenialReason.MEMBER)
    assert await access.admit(ctx(OTHER, roles=(OTHER_ROLE, BANNED_ROLE))) == Denial(DenialReason.ROLE)
    assert isinstance(await access.admit(ctx(OTHER, roles=(OTHER_ROLE,))), Admission)
    assert Denial(DenialReason.ROLE).describe() == "You're not allowed to run code on this server"


async def test_run_channels_accept_the_channel_its_thread_and_its_category(tmp_path):
    access, _ = make(tmp_path, RUN_CHANNEL_IDS=f"{LAB},{CATEGORY}")
    denial = await access.admit(ctx(channels=(GENERAL,)))
    assert denial == Denial(DenialReason.CHANNEL, allowed_channel_ids=(LAB, CATEGORY))
    assert isinstance(await access.admit(ctx(channels=(LAB,))), Admission)
    assert isinstance(await access.admit(ctx(channels=(THREAD, LAB))), Admission)  # a thread in #lab
    assert isinstance(await access.admit(ctx(channels=(GENERAL, CATEGORY))), Admission)  # a channel in the category
    assert isinstance(await access.admit(ctx(channels=())), Denial)  # a DM is no run channel


async def test_a_denied_member_hears_that_before_the_channel_rule(tmp_path):
    access, _ = make(tmp_path, DENIED_MEMBER_IDS=str(MEMBER), RUN_CHANNEL_IDS=str(LAB))
    assert (await access.admit(ctx(channels=(GENERAL,)))).reason is DenialReason.MEMBER


async def test_hourly_limit_counts_recorded_runs_and_says_when_the_next_is_free(tmp_path):
    clock = TestClock()
    access, audit = make(tmp_path, clock, RUNS_PER_MEMBER_PER_HOUR="3")
    first_at = audit.now()
    for _ in range(3):
        assert isinstance(await access.admit(ctx()), Admission)
        await ran(audit)
        clock.advance(minutes=10)
    denial = await access.admit(ctx())
    assert denial == Denial(DenialReason.RATE, limit=3, retry_at=first_at + timedelta(hours=1))
    assert isinstance(await access.admit(ctx(OTHER)), Admission)  # per member

    clock.advance(minutes=20)  # 10 min before the first run leaves the window
    assert (await access.check(ctx())).retry_at == first_at + timedelta(hours=1)
    clock.advance(minutes=10)  # the first run is exactly an hour old: one slot free
    assert isinstance(await access.admit(ctx()), Admission)
    assert isinstance(await access.admit(ctx()), Denial)


async def test_queued_runs_count_before_they_are_recorded(tmp_path):
    access, _ = make(tmp_path, RUNS_PER_MEMBER_PER_HOUR="2")
    assert isinstance(await access.admit(ctx()), Admission)
    assert isinstance(await access.admit(ctx()), Admission)
    assert (await access.admit(ctx())).reason is DenialReason.RATE


async def test_concurrent_requests_of_one_member_cannot_both_take_the_last_run(tmp_path):
    access, _ = make(tmp_path, RUNS_PER_MEMBER_PER_HOUR="1")
    outcomes = await asyncio.gather(*(access.admit(ctx()) for _ in range(5)))
    assert sum(isinstance(o, Admission) for o in outcomes) == 1


async def test_a_cancelled_admission_and_a_check_do_not_count(tmp_path):
    access, _ = make(tmp_path, RUNS_PER_MEMBER_PER_HOUR="1")
    for _ in range(3):
        assert await access.check(ctx()) is None
    admission = await access.admit(ctx())
    admission.cancel()  # e.g. the queue refused it
    admission.cancel()  # idempotent
    assert isinstance(await access.admit(ctx()), Admission)


async def test_refused_runs_do_not_count(tmp_path):
    access, audit = make(tmp_path, RUNS_PER_MEMBER_PER_HOUR="1")
    for _ in range(3):
        await ran(audit, refused=True)
    assert isinstance(await access.admit(ctx()), Admission)


async def test_limit_survives_a_restart_because_it_counts_from_the_audit(file_backend):
    settings = file_backend.with_settings(RUNS_PER_MEMBER_PER_HOUR="2")
    audit = RunAudit(settings, file_backend.store(settings), clock=file_backend.clock)
    for _ in range(2):
        await ran(audit)
    # A new process: nothing in memory, same database.
    restarted = RunAccess(settings, RunAudit(settings, file_backend.store(settings), clock=file_backend.clock))
    denial = await restarted.admit(ctx())
    assert denial.reason is DenialReason.RATE and denial.limit == 2


async def test_database_down_the_memory_window_still_limits(tmp_path, caplog):
    access, audit = make(tmp_path, RUNS_PER_MEMBER_PER_HOUR="2")
    await ran(audit, OTHER)  # creates the database
    path = audit.settings.sqlite_path
    shutil.move(path, tmp_path / "moved")
    path.mkdir()
    await audit.store.close()

    assert isinstance(await access.admit(ctx()), Admission)
    assert isinstance(await access.admit(ctx()), Admission)
    assert (await access.admit(ctx())).reason is DenialReason.RATE
    assert "file store (sqlite) is unavailable" in caplog.text


async def test_unlimited_never_asks_the_database(tmp_path, monkeypatch):
    access, audit = make(tmp_path)

    async def must_not_be_called(*args):
        raise AssertionError("the audit was queried with no hourly limit set")

    monkeypatch.setattr(audit, "start_times", must_not_be_called)
    for _ in range(50):
        assert isinstance(await access.admit(ctx()), Admission)


@pytest.mark.parametrize("value", ["-1", "ten", "1.5"])
def test_bad_limit_values_stop_start_up_with_a_clear_message(value):
    from config import SettingsError, load_settings

    with pytest.raises(SettingsError, match="RUNS_PER_MEMBER_PER_HOUR=.* is invalid: expected an integer >= 0"):
        load_settings({"RUNS_PER_MEMBER_PER_HOUR": value}, dotenv=False)
    with pytest.raises(SettingsError, match="DENIED_ROLE_IDS=.* is invalid: expected a comma-separated list of numeric"):
        load_settings({"DENIED_ROLE_IDS": "moderators"}, dotenv=False)


# ------------------------------------------- one member's admissions: one at a time, in a process and across


def count_admitting_lease_calls(monkeypatch, store) -> list[str]:
    """The holder of every attempt to take an `admitting:` lease through `store`."""
    attempts: list[str] = []
    acquire = store.acquire_lease

    async def counted(key, holder, *args, **kwargs):
        if key.startswith("admitting:"):
            attempts.append(holder)
        return await acquire(key, holder, *args, **kwargs)

    monkeypatch.setattr(store, "acquire_lease", counted)
    return attempts


def hold_up_history_reads(monkeypatch, audit) -> tuple[asyncio.Event, list[int]]:
    """Admissions read the member's run history while they hold the admitting lease: the
    first read waits for the returned event, so its admission holds the lease until then."""
    go, reads = asyncio.Event(), []
    start_times = audit.start_times

    async def held_up(*args):
        reads.append(1)
        if len(reads) == 1:
            await go.wait()
        return await start_times(*args)

    monkeypatch.setattr(audit, "start_times", held_up)
    return go, reads


def waiting_on(lock: asyncio.Lock) -> int:
    return len(lock._waiters or ())  # asyncio.Lock keeps its waiters there; no public count


async def test_two_requests_of_a_member_in_one_process_queue_on_a_lock_not_by_polling_the_store(tmp_path, monkeypatch):
    access, audit = make(tmp_path, RUNS_PER_MEMBER_PER_HOUR="5")
    attempts = count_admitting_lease_calls(monkeypatch, audit.store)
    go, _ = hold_up_history_reads(monkeypatch, audit)
    first = asyncio.create_task(access.admit(ctx()))
    await until(lambda: len(attempts) == 1, "the first request takes the admitting lease")
    second = asyncio.create_task(access.admit(ctx()))
    lock = access._local_leases.lock(f"admitting:{MEMBER}")
    # The second waits, either on the process's lock or by polling the store (the old way).
    await until(lambda: waiting_on(lock) or len(attempts) > 2, "the second request waits for the first")
    assert len(attempts) == 1, f"the second request polled the store while the first held the lease: {attempts}"
    go.set()
    assert all(isinstance(a, Admission) for a in await asyncio.gather(first, second))
    assert len(attempts) == 2 and attempts[0] != attempts[1], attempts  # one attempt each, no polling
    await asyncio.gather(*access._releasing)
    del lock  # the test's own reference
    assert len(access._local_leases) == 0, "a lock nobody uses is dropped"
    assert await audit.store.leases_with_prefix("admitting:", audit.now()) == []


async def test_a_member_admitted_in_another_process_meanwhile_waits_for_the_store_lease(tmp_path, monkeypatch):
    """Two processes on one database (two RunAccess, two connections): the in-process lock
    does not replace the store lease, and a burst through both gets exactly the limit."""
    clock = TestClock()
    here, here_audit = make(tmp_path, clock=clock, RUNS_PER_MEMBER_PER_HOUR="3")
    there, there_audit = make(tmp_path, clock=clock, RUNS_PER_MEMBER_PER_HOUR="3")
    there_attempts = count_admitting_lease_calls(monkeypatch, there_audit.store)
    go, _ = hold_up_history_reads(monkeypatch, here_audit)
    held = asyncio.create_task(here.admit(ctx()))
    await until(lambda: here._local_leases.lock(f"admitting:{MEMBER}").locked(), "this process takes the lease")
    elsewhere = asyncio.create_task(there.admit(ctx()))
    await until(lambda: len(there_attempts) >= 2, "the other process polls the store while the lease is held")
    assert not elsewhere.done()
    go.set()
    burst = [here.admit(ctx()) for _ in range(3)] + [there.admit(ctx()) for _ in range(3)]
    outcomes = [await held, await elsewhere, *await asyncio.gather(*burst)]
    assert sum(isinstance(o, Admission) for o in outcomes) == 3, outcomes
    assert all(o.reason is DenialReason.RATE for o in outcomes if not isinstance(o, Admission))
