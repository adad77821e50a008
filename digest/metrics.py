"""Prometheus metrics for `serve`'s `GET /metrics` (prometheus-client).

Two kinds, named apart (docs/operations.md lists them all):

- **The deployment**, `daily_papers_*`: read from the database at every scrape by
  `DeploymentCollector`, so every `serve` replica sharing a database reports the same numbers,
  whichever process (another replica, a cron-driven `daily-papers run`) ran the cycles. The
  counters are sums over the runs table, so they only grow while runs are kept.
- **This process**, `daily_papers_process_*` (plus prometheus-client's `process_*` and
  `python_*`): the cycles this `serve` process ran itself. They start from zero at every start
  and differ between replicas; sum them over replicas, or prefer the deployment metrics.

The scrape reads the database in a thread (`render` is blocking); when the database does not
answer, only `daily_papers_database_up 0` and the process metrics are reported.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from digest.config import Settings
from digest.domain import DeliveryStatus, RunReport
from digest.errors import DailyPapersError
from digest.mail import UNCONFIRMED
from digest.monitoring import ALERT_KINDS, DEFERRED, find_alerts, read_overview
from digest.store import PaperStore

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST  # the text exposition format
# Cycle durations: seconds for a quiet day against a stand-in, up to an hour for a first run
# with thousands of keywords to backfill.
CYCLE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
OUTBOX_STATUSES = (
    DeliveryStatus.PENDING.value,
    DEFERRED,
    DeliveryStatus.SENT.value,
    DeliveryStatus.FAILED.value,
)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


class DeploymentCollector(Collector):
    """The deployment's numbers, read from the database at each scrape."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: PaperStore,
        kinds: Sequence[str] = (),
        unconfigured: Mapping[str, str] | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._kinds = tuple(kinds)
        self._unconfigured = dict(unconfigured or {})

    def collect(self) -> Iterator[Metric]:
        """Every deployment metric (blocking: the database is read here)."""
        try:
            overview = read_overview(
                self._settings,
                self._store,
                runs=1,
                kinds=self._kinds,
                unconfigured=self._unconfigured,
            )
            totals = self._store.run_totals()
            subscriptions = self._store.count_subscriptions()
        except DailyPapersError as exc:
            log.warning("metrics.database_failed error=%s", exc)
            yield _gauge("daily_papers_database_up", "1 when the database answered.", 0)
            return
        yield _gauge("daily_papers_database_up", "1 when the database answered.", 1)

        cycles = CounterMetricFamily(
            "daily_papers_cycles", "Recorded cycles by outcome.", labels=["outcome"]
        )
        cycles.add_metric(["ok"], totals.cycles_ok)
        cycles.add_metric(["failed"], totals.cycles_failed)
        yield cycles
        if overview.last_success is not None:
            yield _gauge(
                "daily_papers_last_success_timestamp_seconds",
                "Start of the last successful cycle (Unix time).",
                overview.last_success.timestamp(),
            )
        if overview.runs:
            yield _gauge(
                "daily_papers_last_cycle_timestamp_seconds",
                "Start of the last recorded cycle, ok or not (Unix time).",
                overview.runs[0].started_at.timestamp(),
            )
        yield _gauge(
            "daily_papers_cycle_running",
            "1 while a process holds the cycle lease.",
            int(overview.running is not None),
        )

        yield _counter(
            "daily_papers_arxiv_requests", "arXiv API requests, retries included.", totals.requests
        )
        yield _counter(
            "daily_papers_arxiv_retries",
            "arXiv requests that repeated a failed one.",
            totals.retries,
        )
        yield _counter(
            "daily_papers_arxiv_throttled", "arXiv answers of 429 (rate limited).", totals.throttled
        )
        yield _counter(
            "daily_papers_papers_harvested",
            "Entries received from arXiv (harvests and backfills).",
            totals.harvested,
        )
        yield _counter(
            "daily_papers_papers_new", "Papers stored for the first time.", totals.new_papers
        )
        yield _counter(
            "daily_papers_papers_matched",
            "New (keyword, paper) matches.",
            totals.new_matches,
        )

        outcomes = CounterMetricFamily(
            "daily_papers_delivery_outcomes",
            "Delivery outcomes recorded by cycles: sent, deferred (tried again later), failed "
            "(for good).",
            labels=["outcome"],
        )
        outcomes.add_metric(["sent"], totals.sent)
        outcomes.add_metric(["deferred"], totals.deferred)
        outcomes.add_metric(["failed"], totals.failed)
        yield outcomes
        yield _counter(
            "daily_papers_subscriptions_disabled",
            "Subscriptions disabled (or paused) by cycles.",
            totals.disabled,
        )

        deliveries = GaugeMetricFamily(
            "daily_papers_deliveries",
            "Outbox rows by channel and status: pending (due), deferred (waiting for a retry), "
            "sent, failed (for good).",
            labels=["channel", "status"],
        )
        for channel, counts in sorted(overview.outbox.by_channel().items()):
            for status in OUTBOX_STATUSES:
                deliveries.add_metric([channel, status], counts.get(status, 0))
        yield deliveries
        pending = overview.outbox.total(DeliveryStatus.PENDING.value)
        yield _gauge(
            "daily_papers_deliveries_pending",
            "Deliveries not sent yet that will be tried: due ones and deferred ones.",
            pending + overview.outbox.total(DEFERRED),
        )
        if overview.outbox.next_retry_at is not None:
            yield _gauge(
                "daily_papers_next_retry_timestamp_seconds",
                "Earliest next try of a deferred delivery (Unix time).",
                overview.outbox.next_retry_at.timestamp(),
            )
        yield _gauge(
            "daily_papers_backfills_waiting",
            "Keywords still waiting for their one-off backfill.",
            overview.backfills_waiting,
        )
        yield _gauge("daily_papers_keywords", "Tracked keywords.", overview.keywords)

        subscribed = GaugeMetricFamily(
            "daily_papers_subscriptions",
            "Subscriptions by channel and state: active, disabled (or paused), unconfirmed "
            "(an email sign-up waiting for its link).",
            labels=["channel", "state"],
        )
        states: dict[tuple[str, str], int] = {}
        for row in subscriptions:
            state = (
                "active"
                if row.active
                else "unconfirmed"
                if row.reason == UNCONFIRMED
                else "disabled"
            )
            states[(row.kind, state)] = states.get((row.kind, state), 0) + row.count
        for (channel, state), count in sorted(states.items()):
            subscribed.add_metric([channel, state], count)
        yield subscribed

        alerts = GaugeMetricFamily(
            "daily_papers_alerts",
            "Alerts on, by kind, as `daily-papers status` shows them (exit 1 when any).",
            labels=["kind"],
        )
        found = find_alerts(overview, self._settings)
        for kind in ALERT_KINDS:
            alerts.add_metric([kind], sum(1 for a in found if a.kind == kind))
        yield alerts


class Metrics:
    """The registry `/metrics` shows: the deployment's metrics, read from the database at each
    scrape, and this process's own."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: PaperStore,
        kinds: Sequence[str] = (),
        unconfigured: Mapping[str, str] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(
            DeploymentCollector(
                settings=settings, store=store, kinds=kinds, unconfigured=unconfigured
            )
        )
        self._cycles = Counter(
            "daily_papers_process_cycles",
            "Cycles this process ran, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("ok", "failed"):
            self._cycles.labels(outcome)  # present from the start, at zero
        self._seconds = Histogram(
            "daily_papers_process_cycle_seconds",
            "Wall time of the cycles this process ran.",
            buckets=CYCLE_BUCKETS,
            registry=self.registry,
        )

    def observe_cycle(self, report: RunReport) -> None:
        """Count a cycle this process ran."""
        self._cycles.labels("ok" if report.ok else "failed").inc()
        self._seconds.observe(report.seconds)

    def render(self) -> bytes:
        """The text exposition of every metric (blocking: reads the database)."""
        return generate_latest(self.registry)
