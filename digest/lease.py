"""One daily cycle at a time, across processes and machines: the cycle lease.

Two `daily-papers run`s, or a `serve` replica's scheduled cycle and a manual run, must not both
deliver what is owed. The cycle therefore holds a lease: a row in the database every process
already shares (`PaperStore.acquire_lease`), with the holder's host, pid and an expiry that a
background task renews every third of `ttl` while the cycle runs.

Why a lease row and not PostgreSQL advisory locks: it works the same on SQLite and PostgreSQL
(SQLite has no such locks), it can say who holds it and since when (`daily-papers run` tells the
person waiting, `status` shows it), and it needs no connection held open for the whole cycle.
A holder killed with `kill -9` cannot release it: its lease expires `ttl` after the last
renewal and the next contender takes it over.

Fencing: a holder whose renewals fail (the database is unreachable, or the process was frozen
past its expiry) must stop sending before another process could take over. `Lease.held()` is
False from `ttl - margin` after the start of the last successful renewal, by this process's
monotonic clock, which needs no agreement between clocks; the cycle asks it before every
message it sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from digest.domain import LeaseHolder
from digest.errors import CycleStopped, DailyPapersError
from digest.store import PaperStore

log = logging.getLogger(__name__)

CYCLE_LEASE = "cycle"  # the daily cycle and keyword backfills: one at a time per database
RENEWALS_PER_TTL = 3  # renew every third of the lease: two renewals may fail before it expires
SAFETY_MARGIN = 0.2  # stop sending this share of ttl before the lease could be taken over


class LeaseBusy(DailyPapersError):
    """Another process holds the lease and the caller chose not to wait (`run --no-wait`)."""

    def __init__(self, holder: LeaseHolder) -> None:
        self.holder = holder
        super().__init__(
            f"a cycle is already running on {holder.describe()}; try again when it has "
            "finished (without --no-wait, run waits for it)"
        )


@dataclass
class Lease:
    """A lease this process holds; `held()` turns False when it may have been lost."""

    holder: LeaseHolder
    ttl: float
    clock: Callable[[], float] = time.monotonic
    _valid_until: float = 0.0
    _lost: bool = field(default=False, repr=False)

    def held(self) -> bool:
        """True while no other process can have taken the lease over."""
        return not self._lost and self.clock() < self._valid_until

    def renewed(self, started: float) -> None:
        """A renewal that began at `started` (monotonic) succeeded."""
        self._valid_until = started + self.ttl * (1 - SAFETY_MARGIN)

    def lose(self) -> None:
        """The database says another process holds the lease now."""
        self._lost = True


def _identity() -> tuple[str, str, int]:
    """(owner token, host, pid) of a new holder; the token tells two holders apart."""
    return uuid.uuid4().hex, socket.gethostname(), os.getpid()


@contextlib.asynccontextmanager
async def hold_lease(
    store: PaperStore,
    *,
    ttl: float,
    name: str = CYCLE_LEASE,
    wait: bool = True,
    poll: float = 1.0,
    on_busy: Callable[[LeaseHolder], None] | None = None,
    stop: asyncio.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[Lease]:
    """Hold lease `name` for the body, renewed in the background, released at the end.

    When another process holds it: wait (polling every `poll` seconds; `on_busy` hears of
    each new holder) or, with `wait=False`, raise LeaseBusy. A StoreError while acquiring
    (a read-only or unreachable database) propagates: nothing may run that cannot be recorded.
    Setting `stop` ends the wait with CycleStopped.
    """
    owner, host, pid = _identity()
    span = timedelta(seconds=ttl)
    announced: str | None = None
    while True:
        started = clock()
        holder = await asyncio.to_thread(
            store.acquire_lease, name, owner=owner, host=host, pid=pid, ttl=span
        )
        if holder.owner == owner:
            break
        if not wait:
            raise LeaseBusy(holder)
        if holder.owner != announced:
            announced = holder.owner
            log.info("lease.waiting name=%s holder=%r", name, holder.describe())
            if on_busy is not None:
                on_busy(holder)
        if stop is None:
            await asyncio.sleep(poll)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll)
            if stop.is_set():
                raise CycleStopped("stopped while waiting for the cycle lease")
    lease = Lease(holder=holder, ttl=ttl, clock=clock)
    lease.renewed(started)
    log.info("lease.acquired name=%s host=%s pid=%d", name, host, pid)
    renewer = asyncio.create_task(_renew(store, lease, owner=owner, name=name, span=span))
    try:
        yield lease
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        try:
            await asyncio.to_thread(store.release_lease, name, owner=owner)
        except DailyPapersError as exc:
            # Not fatal: the lease expires by itself `ttl` after its last renewal.
            log.warning("lease.release_failed name=%s error=%s", name, exc)
        else:
            log.info("lease.released name=%s", name)


async def _renew(
    store: PaperStore, lease: Lease, *, owner: str, name: str, span: timedelta
) -> None:
    """Extend the lease every third of its ttl until cancelled or lost."""
    interval = lease.ttl / RENEWALS_PER_TTL
    while True:
        await asyncio.sleep(interval)
        started = lease.clock()
        try:
            still_ours = await asyncio.to_thread(store.renew_lease, name, owner=owner, ttl=span)
        except DailyPapersError as exc:
            # Keep trying: `held()` turns False on its own once the lease may have expired.
            log.warning("lease.renew_failed name=%s error=%s", name, exc)
            continue
        if not still_ours:
            log.error("lease.lost name=%s (another process took it over)", name)
            lease.lose()
            return
        lease.renewed(started)


__all__ = ["CYCLE_LEASE", "Lease", "LeaseBusy", "hold_lease"]
