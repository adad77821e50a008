"""What status, /healthz and /metrics judge by: the health rule against the schedule (a table),
and the alert for subscriptions disabled since the last ok cycle (a real store)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from digest.config import settings_for_tests
from digest.domain import Outcome, OutcomeKind, RunReport, Target
from digest.monitoring import assess_health, find_alerts, read_overview
from storage.sql_store import SqlStore
from tests.test_sql_store import harvest, paper

# The default schedule: 21:00 New York, i.e. 02:00 UTC in February. Grace: 6 hours.
SLOT = datetime(2025, 2, 11, 2, 0, tzinfo=UTC)
SETTINGS = settings_for_tests(schedule={"misfire_grace_hours": 6})
HOUR = timedelta(hours=1)


@pytest.mark.parametrize(
    ("last_started", "running", "server_started", "now", "ok", "reason"),
    [
        # a fresh install: healthy while serve's first cycle may still be starting
        (None, False, SLOT + HOUR, SLOT + 2 * HOUR, True, "no cycle has run yet"),
        (None, False, SLOT + HOUR, SLOT + 8 * HOUR, False, "no cycle has started since this"),
        (None, True, SLOT + HOUR, SLOT + 8 * HOUR, True, "a cycle is running"),
        # the latest scheduled time's cycle started: recent
        (SLOT + timedelta(minutes=1), False, SLOT - 48 * HOUR, SLOT + 20 * HOUR, True, "the last"),
        # it has not started yet, but the slot is within the misfire grace
        (SLOT - 24 * HOUR, False, SLOT - 48 * HOUR, SLOT + 5 * HOUR, True, "within its grace"),
        # missed, with this server up all along: unhealthy
        (SLOT - 24 * HOUR, False, SLOT - 48 * HOUR, SLOT + 7 * HOUR, False, "has not started"),
        # missed while this server was not running, past the grace: it waits for the next
        (SLOT - 24 * HOUR, False, SLOT + 7 * HOUR, SLOT + 8 * HOUR, True, "waiting for the next"),
        # a cycle that ran long ago but is running again now
        (SLOT - 24 * HOUR, True, SLOT - 48 * HOUR, SLOT + 7 * HOUR, True, "a cycle is running"),
    ],
)
def test_health_follows_the_schedule(
    last_started: datetime | None,
    running: bool,
    server_started: datetime,
    now: datetime,
    ok: bool,
    reason: str,
) -> None:
    """/healthz is 200 while the cycle keeps to the schedule (misfire grace included), 503 when
    a scheduled cycle never started or a fresh install never ran one."""
    health = assess_health(
        settings=SETTINGS,
        last_started=last_started,
        running=running,
        server_started=server_started,
        now=now,
    )
    assert (health.ok, reason in health.reason) == (ok, True), health.reason


def test_only_subscriptions_disabled_since_the_last_ok_cycle_alert(store: SqlStore) -> None:
    """A subscription disabled before the last ok cycle is listed as failing without an alert;
    one disabled since (or with no ok cycle at all) alerts; a failed cycle does not reset it."""
    t0 = SLOT
    old = store.add_subscription(Target("slack", "C0OLD"), "LLM Agents", now=t0)
    new = store.add_subscription(Target("slack", "C0NEW"), "LLM Agents", now=t0)
    harvest(store, [paper("2501.00001")], now=t0)
    store.record_outcomes([Outcome(old.id, "2501.00001", OutcomeKind.PERMANENT, "gone")], now=t0)

    def kinds() -> list[str]:
        return [a.kind for a in find_alerts(read_overview(SETTINGS, store), SETTINGS)]

    assert kinds() == ["subscriptions_disabled"]  # no ok cycle yet
    store.record_run(RunReport(t0 + HOUR, t0 + HOUR, ok=True))
    assert kinds() == []
    overview = read_overview(SETTINGS, store)
    assert [s.target.address for s in overview.failing] == ["C0OLD"]

    later = t0 + 2 * HOUR
    store.record_outcomes([Outcome(new.id, "2501.00001", OutcomeKind.PERMANENT, "gone")], now=later)
    store.record_run(RunReport(t0 + 3 * HOUR, t0 + 3 * HOUR, ok=False, error="arXiv down"))
    assert kinds() == ["subscriptions_disabled"]
    store.record_run(RunReport(t0 + 4 * HOUR, t0 + 4 * HOUR, ok=True))
    assert kinds() == []
