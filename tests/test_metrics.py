"""`GET /metrics` and `GET /healthz` over HTTP on 127.0.0.1: scraped with aiohttp and parsed with
prometheus_client's own parser; the deployment's numbers come from the database (the same on two
replicas), the process's from the cycles it ran; health follows the schedule."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from digest.config import Settings, settings_for_tests
from digest.domain import Outcome, OutcomeKind, RunReport, Target
from digest.metrics import Metrics
from digest.monitoring import STATE_LAST_STARTED, STATE_LAST_SUCCESS
from digest.web import ServerClock, WebServer, build_web_app
from storage.sql_store import SqlStore
from tests.local import free_port
from tests.test_sql_store import harvest, paper

SLOT = datetime(2025, 2, 11, 2, 0, tzinfo=UTC)  # 21:00 New York, the default schedule
SLACK = Target("slack", "C0METRICS")
EMAIL = Target("email", "reader@lab.example.org")
KEYWORD = "LLM Agents"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Clock:
    """A settable clock for /healthz."""

    moment: datetime

    def __call__(self) -> datetime:
        return self.moment


@asynccontextmanager
async def web_app(
    settings: Settings, store: SqlStore, *, metrics: Metrics | None = None, clock: Clock
) -> AsyncIterator[str]:
    """The web app on a free port of 127.0.0.1, started (for /healthz) at the clock's time."""
    app = build_web_app(
        settings=settings,
        store=store,
        metrics=metrics,
        clock=ServerClock(now=clock, started=clock()),
    )
    async with WebServer(app=app, host="127.0.0.1", port=0) as server:
        yield server.url


async def scrape(url: str) -> tuple[str, Samples]:
    """GET /metrics: its content type and every sample, parsed by prometheus_client."""
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
        content_type = response.headers["Content-Type"]
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return content_type, samples


async def health(url: str) -> tuple[int, dict[str, Any]]:
    """GET /healthz: status and JSON."""
    async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as response:
        return response.status, dict(await response.json())


def seed(store: SqlStore) -> None:
    """Two keywords (one waiting for its backfill), a Slack and an email subscription, three
    papers: one sent, one deferred, one failed for good with its subscription disabled; two
    recorded cycles (one ok, one failed)."""
    store.add_keyword("Diffusion")  # never backfilled
    store.add_subscription(SLACK, KEYWORD, now=SLOT)
    reader = store.add_subscription(EMAIL, KEYWORD, now=SLOT)
    store.mark_backfilled(KEYWORD, SLOT)
    harvest(store, [paper("2501.00001"), paper("2501.00002")], keyword=KEYWORD, now=SLOT)
    slack = store.list_subscriptions(SLACK)[0]
    store.record_outcomes(
        [
            Outcome(reader.id, "2501.00001", OutcomeKind.SENT),
            Outcome(reader.id, "2501.00002", OutcomeKind.RETRY, "451 greylisted"),
            Outcome(slack.id, "2501.00001", OutcomeKind.PERMANENT, "channel_not_found"),
        ],
        now=SLOT,
    )
    store.record_run(
        RunReport(
            SLOT,
            SLOT + timedelta(seconds=12),
            ok=True,
            requests=4,
            retries=1,
            throttled=1,
            harvested=2,
            new_papers=2,
            new_matches=2,
            sent=1,
            deferred=1,
            failed=2,
            disabled=1,
        )
    )
    store.record_run(RunReport(SLOT + timedelta(hours=1), SLOT + timedelta(hours=1), ok=False))
    store.set_state(STATE_LAST_SUCCESS, SLOT.isoformat())
    store.set_state(STATE_LAST_STARTED, (SLOT + timedelta(hours=1)).isoformat())


def deployment(samples: Samples) -> Samples:
    """The samples read from the database (not this process's own)."""
    return {
        key: value
        for key, value in samples.items()
        if key[0].startswith("daily_papers_") and not key[0].startswith("daily_papers_process_")
    }


async def test_metrics_are_scraped_and_parsed(store: SqlStore) -> None:
    """Every metric the issue asks for, with the seeded values, parsed by prometheus_client."""
    seed(store)
    settings = settings_for_tests()
    async with web_app(settings, store, clock=Clock(SLOT + timedelta(hours=2))) as url:
        content_type, samples = await scrape(url)
    assert content_type.startswith("text/plain; version=")

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("daily_papers_database_up") == 1
    assert value("daily_papers_cycles_total", outcome="ok") == 1
    assert value("daily_papers_cycles_total", outcome="failed") == 1
    assert value("daily_papers_last_success_timestamp_seconds") == SLOT.timestamp()
    assert value("daily_papers_last_cycle_timestamp_seconds") == SLOT.timestamp() + 3600
    assert value("daily_papers_cycle_running") == 0
    assert value("daily_papers_arxiv_requests_total") == 4
    assert value("daily_papers_arxiv_retries_total") == 1
    assert value("daily_papers_arxiv_throttled_total") == 1
    assert value("daily_papers_papers_harvested_total") == 2
    assert value("daily_papers_papers_new_total") == 2
    assert value("daily_papers_papers_matched_total") == 2
    assert value("daily_papers_delivery_outcomes_total", outcome="sent") == 1
    assert value("daily_papers_delivery_outcomes_total", outcome="deferred") == 1
    assert value("daily_papers_delivery_outcomes_total", outcome="failed") == 2
    assert value("daily_papers_subscriptions_disabled_total") == 1
    outbox = {
        (dict(labels)["channel"], dict(labels)["status"]): v
        for (name, labels), v in samples.items()
        if name == "daily_papers_deliveries"
    }
    assert outbox == {
        ("email", "pending"): 0,
        ("email", "deferred"): 1,
        ("email", "sent"): 1,
        ("email", "failed"): 0,
        ("slack", "pending"): 0,
        ("slack", "deferred"): 0,
        ("slack", "sent"): 0,
        ("slack", "failed"): 2,
    }
    assert value("daily_papers_deliveries_pending") == 1
    assert value("daily_papers_next_retry_timestamp_seconds") == SLOT.timestamp() + 30 * 60
    assert value("daily_papers_backfills_waiting") == 1
    assert value("daily_papers_keywords") == 2
    assert value("daily_papers_subscriptions", channel="slack", state="disabled") == 1
    assert value("daily_papers_subscriptions", channel="email", state="active") == 1
    assert value("daily_papers_alerts", kind="subscriptions_disabled") == 1
    assert value("daily_papers_alerts", kind="readme") == 0
    assert value("daily_papers_process_cycles_total", outcome="ok") == 0
    assert ("process_cpu_seconds_total", ()) in samples


async def test_two_replicas_report_one_deployment_and_their_own_process(store: SqlStore) -> None:
    """Two web apps on one database (two serve replicas): the same deployment numbers, read at
    scrape time; each counts only the cycles it ran itself."""
    seed(store)
    settings = settings_for_tests()
    clock = Clock(SLOT + timedelta(hours=2))
    ran_here = Metrics(settings=settings, store=store)
    ran_here.observe_cycle(RunReport(SLOT, SLOT + timedelta(seconds=12), ok=True))
    async with (
        web_app(settings, store, metrics=ran_here, clock=clock) as first,
        web_app(settings, store, clock=clock) as second,
    ):
        _, one = await scrape(first)
        _, other = await scrape(second)
        store.record_run(RunReport(SLOT + timedelta(hours=2), SLOT + timedelta(hours=2), ok=True))
        _, after = await scrape(second)
    assert deployment(one) == deployment(other)
    assert one[("daily_papers_process_cycles_total", (("outcome", "ok"),))] == 1
    assert other[("daily_papers_process_cycles_total", (("outcome", "ok"),))] == 0
    assert one[("daily_papers_process_cycle_seconds_count", ())] == 1
    # a cycle another process recorded shows at the next scrape of either replica
    assert after[("daily_papers_cycles_total", (("outcome", "ok"),))] == 2


async def test_metrics_and_health_say_when_the_database_is_down() -> None:
    """A database that does not answer: /metrics reports database_up 0 (and still answers),
    /healthz 503 with the reason."""
    store = SqlStore(url=f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/nothing")
    settings = settings_for_tests()
    try:
        async with web_app(settings, store, clock=Clock(SLOT)) as url:
            _, samples = await scrape(url)
            status, body = await health(url)
    finally:
        store.close()
    assert deployment(samples) == {("daily_papers_database_up", ()): 0}
    assert (status, body["status"], body["reason"]) == (503, "error", "database unavailable")


async def test_healthz_follows_the_schedule_over_http(sqlite_store: SqlStore) -> None:
    """/healthz: 200 for a fresh install within the grace, 503 once the grace passed with no
    cycle; 200 when the scheduled cycle started; 503 when a later one never did."""
    settings = settings_for_tests(schedule={"misfire_grace_hours": 6})
    clock = Clock(SLOT - timedelta(hours=20))
    async with web_app(settings, sqlite_store, clock=clock) as url:
        status, body = await health(url)
        assert (status, body["status"]) == (200, "ok")
        assert body["reason"] == "no cycle has run yet; serve runs the first one at start"
        assert body["last_run"] is None

        clock.moment += timedelta(hours=7)
        status, body = await health(url)
        assert (status, body["status"]) == (503, "error")
        assert body["reason"].startswith("no cycle has started since this server started at")

        sqlite_store.set_state(STATE_LAST_STARTED, (SLOT + timedelta(minutes=1)).isoformat())
        sqlite_store.record_run(RunReport(SLOT, SLOT + timedelta(minutes=2), ok=False))
        clock.moment = SLOT + timedelta(hours=23)
        status, body = await health(url)
        assert (status, body["last_run_ok"]) == (200, False)  # a failed cycle kept the schedule
        assert body["last_started"] == (SLOT + timedelta(minutes=1)).isoformat()

        clock.moment = SLOT + timedelta(days=1, hours=7)  # the next day's slot never started
        status, body = await health(url)
    assert status == 503
    assert body["reason"] == (
        "the cycle scheduled at 2025-02-12 02:00 UTC has not started (the last one started at "
        "2025-02-11 02:01 UTC)"
    )
