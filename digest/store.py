"""The PaperStore port: everything the core asks of the database.

`storage.sql_store.SqlStore` implements it with SQLAlchemy (SQLite or PostgreSQL). Methods are
synchronous; async callers run them through `asyncio.to_thread`. Every method is one
transaction, and `commit_harvest` in particular writes papers, matches, deliveries and the
watermark atomically: a crash before it returns leaves the database as it was, so the next run
harvests the same window again and nothing is lost.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from digest.domain import (
    Batch,
    Delivery,
    DeliveryRecord,
    DeliveryStatus,
    Keyword,
    LeaseHolder,
    OutboxCount,
    Outcome,
    Paper,
    PaperText,
    RunReport,
    Subscription,
    Target,
)


@dataclass(frozen=True, slots=True)
class HarvestCommit:
    """What `commit_harvest` changed."""

    new_papers: int  # ids never stored before
    revised_papers: int  # stored ids whose version went up
    new_matches: int  # (keyword, paper) pairs first seen now
    new_deliveries: int  # outbox rows created


@dataclass(frozen=True, slots=True)
class OutcomeCounts:
    """What `record_outcomes` did to the outbox."""

    sent: int = 0
    retried: int = 0  # deferred: failed this time, pending again for a later try
    failed: int = 0  # gave up on the delivery (too many attempts, or its subscription disabled)
    disabled: int = 0  # subscriptions disabled by a permanent error (or paused: token refused)
    # The earliest next try of the deferred ones (a detail for messages, not compared).
    next_retry: datetime | None = field(default=None, compare=False)

    def __add__(self, other: OutcomeCounts) -> OutcomeCounts:
        """Both counts together (a target's messages are recorded one by one)."""
        tries = [t for t in (self.next_retry, other.next_retry) if t is not None]
        return OutcomeCounts(
            sent=self.sent + other.sent,
            retried=self.retried + other.retried,
            failed=self.failed + other.failed,
            disabled=self.disabled + other.disabled,
            next_retry=min(tries) if tries else None,
        )


@dataclass(frozen=True, slots=True)
class Reopened:
    """What `reopen_deliveries` did."""

    failed: int = 0  # failed deliveries made pending again (attempts start over)
    deferred: int = 0  # deferred deliveries made due now
    resumed: int = 0  # disabled subscriptions made active again


@dataclass(frozen=True, slots=True)
class RunTotals:
    """Sums over every recorded cycle (the deployment's counters, for /metrics)."""

    cycles_ok: int = 0
    cycles_failed: int = 0
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    harvested: int = 0
    new_papers: int = 0
    new_matches: int = 0
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    disabled: int = 0


@dataclass(frozen=True, slots=True)
class SubscriptionCount:
    """How many subscriptions of one kind are active, or disabled for one reason."""

    kind: str
    active: bool
    reason: str | None  # disabled_reason (None when active)
    count: int


class PaperStore(Protocol):
    """Persistence for papers, keywords, matches, subscriptions, the outbox and run history."""

    # -- keywords -------------------------------------------------------------------------
    def list_keywords(self) -> list[Keyword]:
        """Every tracked keyword, config ones first, each group in the order added."""
        ...

    def add_keyword(self, query: str, *, from_config: bool = False) -> bool:
        """Track `query` (already validated) as the operator's; True when it was new."""
        ...

    def remove_keyword(self, query: str) -> bool:
        """Stop tracking `query` and drop its matches; True when it was tracked.

        Refuses (StoreError) while active subscriptions still use it.
        """
        ...

    def keywords_to_backfill(self) -> list[str]:
        """Keywords that have never had their one-off backfill, oldest request first."""
        ...

    def mark_backfilled(self, query: str, when: datetime) -> None:
        """Record that `query` got its backfill."""
        ...

    # -- papers and matches ---------------------------------------------------------------
    def known_versions(self, arxiv_ids: Collection[str]) -> dict[str, int]:
        """The stored version of each of these ids that is stored at all."""
        ...

    def iter_papers(self, *, batch_size: int = 1000) -> Iterator[Paper]:
        """Every stored paper (for matching a newly added keyword locally)."""
        ...

    def papers_submitted_since(self, start: datetime) -> list[Paper]:
        """Stored papers first submitted at or after `start` (a new keyword's harvest window)."""
        ...

    def texts_submitted_since(self, start: datetime) -> list[PaperText]:
        """The searchable text of the papers `papers_submitted_since` would return."""
        ...

    def papers_by_id(self, arxiv_ids: Collection[str]) -> list[Paper]:
        """The stored papers of these ids (unknown ids are left out)."""
        ...

    def recent_papers(self, limit: int) -> list[Paper]:
        """The `limit` most recently updated stored papers, newest first (`like:` and relevance
        order's background)."""
        ...

    # -- like: models -----------------------------------------------------------------------
    def load_similarity_model(self, query: str) -> tuple[str, bytes] | None:
        """The cached model of a `like:` keyword: (seed key, SimilarityModel JSON), or None."""
        ...

    def save_similarity_model(
        self, query: str, *, seed_key: str, model: bytes, now: datetime
    ) -> bool:
        """Keep (or replace) a tracked keyword's model; False when the keyword is not tracked."""
        ...

    def commit_harvest(
        self,
        *,
        papers: Sequence[Paper],
        matches: Mapping[str, Collection[str]],
        deliverable: Collection[str],
        now: datetime,
        watermark: datetime | None = None,
        backfilled: bool = False,
    ) -> HarvestCommit:
        """In one transaction: upsert `papers`, add `matches` (keyword -> arxiv ids), create a
        pending delivery for every active subscription of a matched keyword whose paper is in
        `deliverable` and was never delivered to it, and, when given, advance the watermark.
        `backfilled` papers stored for the first time are history, never a day's new papers."""
        ...

    def latest_matches(
        self, query: str, limit: int, *, stored_before: datetime | None = None
    ) -> list[Paper]:
        """The newest `limit` papers matching `query`, by last-updated date, newest first; with
        `stored_before`, only those first stored before it or by a backfill (a keyword's
        history without the day's papers: relevance order's positives)."""
        ...

    def latest_matches_by_keyword(self, limit: int) -> dict[str, tuple[list[Paper], int]]:
        """Every tracked keyword's newest `limit` papers and its total number of matches."""
        ...

    def count_matches(self, query: str) -> int:
        """How many stored papers match `query`."""
        ...

    def matches_first_seen_between(self, start: datetime, end: datetime) -> list[tuple[str, Paper]]:
        """(keyword, paper) pairs whose paper was first stored in [start, end), newest first.

        The day's new papers per keyword: what the daily Markdown digest archive lists.
        """
        ...

    # -- translations ---------------------------------------------------------------------
    def get_translations(
        self, arxiv_ids: Collection[str], language: str
    ) -> dict[str, tuple[str, str]]:
        """Stored (title, abstract) translations into `language`, by arxiv id."""
        ...

    def save_translation(self, arxiv_id: str, language: str, title: str, abstract: str) -> None:
        """Store one paper's translation (replacing an older one)."""
        ...

    def papers_missing_translation(
        self, language: str, *, since: datetime, limit: int = 500
    ) -> list[Paper]:
        """Matched papers first stored (or revised) after `since` without a translation into
        `language`. Storing a version whose title or abstract changed drops its translations,
        so such a paper is listed here again."""
        ...

    # -- subscriptions --------------------------------------------------------------------
    def add_subscription(
        self, target: Target, query: str, *, now: datetime, pending_reason: str | None = None
    ) -> Subscription:
        """Subscribe `target` to `query` (tracking it if needed); re-activates a disabled one.

        With `pending_reason` the subscription is stored inactive with that reason (waiting
        for a confirmation) instead; an active one stays active.
        """
        ...

    def remove_subscription(self, target: Target, query: str) -> bool:
        """Delete the subscription; True when there was one."""
        ...

    def list_subscriptions(
        self, target: Target | None = None, *, active_only: bool = False
    ) -> list[Subscription]:
        """Subscriptions, of one target or all, in the order they were made."""
        ...

    def disable_subscription(self, subscription_id: int, reason: str) -> None:
        """Stop delivering to a subscription, keeping the reason for `status` and `list`."""
        ...

    def count_subscriptions(self) -> list[SubscriptionCount]:
        """Subscriptions counted by kind, active or not, and reason (for /metrics)."""
        ...

    def get_target_option(self, target: Target, name: str) -> str | None:
        """A per-target setting (for example the translation language of a channel)."""
        ...

    def set_target_option(self, target: Target, name: str, value: str | None) -> None:
        """Set or (with None) clear a per-target setting."""
        ...

    # -- the outbox -----------------------------------------------------------------------
    def pending_batches(
        self, *, now: datetime, kinds: Collection[str] | None = None
    ) -> list[Batch]:
        """Due pending deliveries grouped one batch per target (of these kinds, or all)."""
        ...

    def sent_between(self, target: Target, start: datetime, end: datetime) -> list[Delivery]:
        """Deliveries to `target` sent in [start, end): what its messages carried then."""
        ...

    def targets_served_since(self, kind: str, since: datetime) -> set[str]:
        """Addresses of `kind` targets sent a delivery at or after `since`, or still owed one."""
        ...

    def record_outcomes(self, outcomes: Sequence[Outcome], *, now: datetime) -> OutcomeCounts:
        """Mark deliveries sent, schedule retries with backoff, disable on permanent errors."""
        ...

    def list_deliveries(
        self,
        *,
        target: Target | None = None,
        statuses: Collection[DeliveryStatus] | None = None,
        subscription_ids: Collection[int] | None = None,
        limit: int | None = None,
    ) -> list[DeliveryRecord]:
        """Outbox rows (of one target, these statuses, these subscriptions), failed first,
        then pending by next try, then sent newest first; at most `limit`."""
        ...

    def count_outbox(self) -> list[OutboxCount]:
        """The outbox counted by target kind and status, deferred apart from pending."""
        ...

    def reopen_deliveries(self, subscription_ids: Collection[int], *, now: datetime) -> Reopened:
        """Retry what these subscriptions left undelivered: re-activate the disabled ones, make
        their failed deliveries pending again (attempts start over) and the deferred ones due
        at `now`, so the next cycle sends them."""
        ...

    def check_writable(self) -> None:
        """Write one small row and commit it; StoreError when the database cannot be written.

        The cycle calls it before its first send: nothing is sent that could not be recorded.
        """
        ...

    # -- leases ---------------------------------------------------------------------------
    def acquire_lease(
        self, name: str, *, owner: str, host: str, pid: int, ttl: timedelta
    ) -> LeaseHolder:
        """Take lease `name` for `ttl` when it is free, expired or already `owner`'s.

        Returns the holder after the attempt: `owner`'s own when it was taken, else whoever
        holds it. Atomic across processes and machines sharing the database.
        """
        ...

    def renew_lease(self, name: str, *, owner: str, ttl: timedelta) -> bool:
        """Extend `owner`'s lease to `ttl` from now; False when `owner` no longer holds it."""
        ...

    def release_lease(self, name: str, *, owner: str) -> None:
        """Free the lease if `owner` still holds it (a no-op otherwise)."""
        ...

    def lease_holder(self, name: str) -> LeaseHolder | None:
        """The current holder of lease `name`, or None when it is free or expired."""
        ...

    # -- runs and state -------------------------------------------------------------------
    def get_watermark(self) -> datetime | None:
        """The upper end of the last complete harvest window."""
        ...

    def record_run(self, report: RunReport) -> None:
        """Append one cycle to the runs table."""
        ...

    def recent_runs(self, limit: int = 10) -> list[RunReport]:
        """The latest cycles, newest first."""
        ...

    def last_ok_run(self) -> RunReport | None:
        """The latest cycle that succeeded, or None."""
        ...

    def run_totals(self) -> RunTotals:
        """Sums over every recorded cycle."""
        ...

    def get_state(self, key: str) -> str | None:
        """A small named value kept between runs (alert bookkeeping and the like)."""
        ...

    def set_state(self, key: str, value: str | None) -> None:
        """Set or (with None) delete a named value."""
        ...
