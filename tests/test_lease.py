"""The cycle lease: one holder at a time on SQLite and PostgreSQL, expiry, renewal, waiting."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import pytest

from digest.domain import LeaseHolder
from digest.errors import CycleStopped
from digest.lease import CYCLE_LEASE, Lease, LeaseBusy, hold_lease
from storage.sql_store import SqlStore

MINUTE = timedelta(minutes=1)


def take(store: SqlStore, owner: str, ttl: timedelta = MINUTE) -> LeaseHolder:
    """Try to take the cycle lease for `owner` (host `h-<owner>`, pid 42)."""
    return store.acquire_lease(CYCLE_LEASE, owner=owner, host=f"h-{owner}", pid=42, ttl=ttl)


def test_the_first_taker_holds_and_the_second_learns_who(store: SqlStore) -> None:
    """A held lease is refused to another owner, who is told the holder's host, pid and time."""
    first = take(store, "a")
    assert first.owner == "a"
    second = take(store, "b")
    assert second.owner == "a"
    assert second.host == "h-a"
    assert second.pid == 42
    assert "h-a pid 42 since" in second.describe()
    assert store.lease_holder(CYCLE_LEASE) == first


def test_an_expired_lease_is_taken_over(store: SqlStore) -> None:
    """A holder that stopped renewing (killed) loses the lease once it expired."""
    take(store, "killed", ttl=timedelta(seconds=-1))
    assert store.lease_holder(CYCLE_LEASE) is None  # expired: nobody holds it
    assert take(store, "next").owner == "next"
    assert not store.renew_lease(CYCLE_LEASE, owner="killed", ttl=MINUTE)


def test_release_frees_and_renew_extends(store: SqlStore) -> None:
    """Renewing moves the expiry; releasing frees the lease for the next owner at once."""
    held = take(store, "a")
    assert store.renew_lease(CYCLE_LEASE, owner="a", ttl=timedelta(hours=1))
    renewed = store.lease_holder(CYCLE_LEASE)
    assert renewed is not None
    assert renewed.expires_at > held.expires_at + timedelta(minutes=30)
    store.release_lease(CYCLE_LEASE, owner="b")  # not b's: changes nothing
    assert take(store, "b").owner == "a"
    store.release_lease(CYCLE_LEASE, owner="a")
    assert store.lease_holder(CYCLE_LEASE) is None
    assert take(store, "b").owner == "b"


def test_contenders_in_threads_get_exactly_one_lease(store: SqlStore) -> None:
    """Eight threads racing for a fresh lease: exactly one wins, all agree on whom."""
    barrier = threading.Barrier(8)
    results: list[LeaseHolder] = []
    errors: list[BaseException] = []

    def contend(owner: str) -> None:
        try:
            barrier.wait()
            results.append(take(store, owner))
        except BaseException as exc:  # collected and reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=contend, args=(f"o{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    winners = {holder.owner for holder in results}
    assert len(winners) == 1
    assert sum(1 for i in range(8) if results[i].owner == f"o{i}") <= 1


async def test_hold_lease_waits_for_the_holder_and_hears_who_it_is(store: SqlStore) -> None:
    """A second holder waits (told once who holds it) and gets the lease once it is released."""
    heard: list[LeaseHolder] = []
    order: list[str] = []
    first_in = asyncio.Event()

    async def first() -> None:
        async with hold_lease(store, ttl=30, poll=0.01):
            first_in.set()
            order.append("first")
            await asyncio.sleep(0.2)
            order.append("first done")

    async def second() -> None:
        await first_in.wait()
        async with hold_lease(store, ttl=30, poll=0.01, on_busy=heard.append):
            order.append("second")

    await asyncio.gather(first(), second())
    assert order == ["first", "first done", "second"]
    assert heard  # told at least once (a loaded machine may poll it again), always the same one
    assert len({holder.owner for holder in heard}) == 1
    assert heard[0].pid > 0


async def test_no_wait_raises_lease_busy_and_stop_ends_a_wait(store: SqlStore) -> None:
    """Without waiting a held lease is LeaseBusy; a stop request ends a wait with CycleStopped."""
    take(store, "elsewhere")
    with pytest.raises(LeaseBusy, match="h-elsewhere pid 42"):
        async with hold_lease(store, ttl=30, wait=False):
            pytest.fail("entered a lease another process holds")
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.1, stop.set)
    with pytest.raises(CycleStopped):
        async with hold_lease(store, ttl=30, poll=0.01, stop=stop):
            pytest.fail("entered a lease another process holds")


async def test_a_lease_that_cannot_be_renewed_stops_being_held(store: SqlStore) -> None:
    """Once another process took the lease over, the holder's `held()` turns False."""
    async with hold_lease(store, ttl=3, poll=0.01) as lease:
        assert lease.held()
        # Another process takes over (as if ours had expired while this one was frozen).
        store.release_lease(CYCLE_LEASE, owner=lease.holder.owner)
        assert take(store, "usurper").owner == "usurper"
        for _ in range(100):
            if not lease.held():
                break
            await asyncio.sleep(0.05)
        assert not lease.held()
    assert store.lease_holder(CYCLE_LEASE) is not None  # ours released nothing of theirs


def test_held_turns_false_by_the_local_clock_before_the_lease_could_expire() -> None:
    """Without a successful renewal, `held()` ends before the ttl runs out (fencing)."""
    now = [100.0]
    holder = LeaseHolder(CYCLE_LEASE, "o", "h", 1, *(2 * [None]))  # type: ignore[arg-type]
    lease = Lease(holder=holder, ttl=10, clock=lambda: now[0])
    lease.renewed(100.0)
    now[0] = 107.0
    assert lease.held()
    now[0] = 108.5  # within ttl, past the safety margin
    assert not lease.held()
