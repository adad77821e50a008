"""What the operator sees: the facts behind `daily-papers status` (its lines and `--json`), the
alert rules, and `/healthz`'s verdict. `/metrics` (digest.metrics) reads the same facts.

Every alert rule lives here (`find_alerts`), so `status`, its JSON and the `daily_papers_alerts`
metric can never disagree. The cycle pushes its own alerts (log line, `alerts.target`) as it
runs; these are the standing ones, read from the database by any process at any time:

| kind                   | on while                                                         |
|------------------------|------------------------------------------------------------------|
| failed_cycles          | `alerts.failed_cycles` cycles in a row have failed               |
| zero_papers            | `alerts.zero_paper_days` announcement days in a row had none     |
| platform_unreachable   | the running `serve` cannot connect to Slack or Discord           |
| token_refused          | a platform refused our token while delivering, until it takes one |
| subscriptions_disabled | a subscription was disabled since the start of the last ok cycle |
| readme                 | the README snapshot could not be written, until it is            |
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from digest.config import Settings
from digest.domain import (
    DeliveryStatus,
    LeaseHolder,
    OutboxCount,
    RunReport,
    Subscription,
    when,
)
from digest.mail import UNCONFIRMED
from digest.platforms import PlatformStatus, read_platform_status
from digest.schedule import latest_fire_time
from digest.store import PaperStore

# The store's state keys the cycle writes and the operator's view reads.
STATE_README_FAILURE = "readme.failure"  # JSON {path, error, since} while it cannot be written
STATE_ZERO_DAYS = "alerts.zero_paper_days"
STATE_ZERO_LAST_DAY = "alerts.zero_paper_days.last_day"
STATE_FAILED_CYCLES = "alerts.failed_cycles"
STATE_LAST_SUCCESS = "cycle.last_success"
STATE_LAST_STARTED = "cycle.last_started"  # a scheduled slot another replica ran is not run again
JSON_SCHEMA = 1  # `status --json`'s shape; raised only when a field changes meaning or goes

ALERT_KINDS = (
    "failed_cycles",
    "zero_papers",
    "platform_unreachable",
    "token_refused",
    "subscriptions_disabled",
    "readme",
)
DEFERRED = "deferred"  # an OutboxCount status: pending after a failed try


# -- the README's record ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadmeFailure:
    """The README snapshot could not be written (or committed) since `since`."""

    path: str
    error: str
    since: datetime

    def to_json(self) -> str:
        """The stored form."""
        return json.dumps({"path": self.path, "error": self.error, "since": self.since.isoformat()})


def read_readme_failure(store: PaperStore) -> ReadmeFailure | None:
    """The README failure on record, or None (a broken value reads as none)."""
    text = store.get_state(STATE_README_FAILURE)
    if text is None:
        return None
    try:
        data = json.loads(text)
        return ReadmeFailure(
            path=str(data["path"]),
            error=str(data["error"]),
            since=datetime.fromisoformat(str(data["since"])),
        )
    except (ValueError, TypeError, KeyError):
        return None


def record_readme_failure(
    store: PaperStore, path: Path, error: str | None, *, now: datetime
) -> None:
    """Store why the README snapshot at `path` is not written (keeping when that began), or,
    with no error, clear the record. Writes only changes."""
    before = read_readme_failure(store)
    if error is None:
        if before is not None:
            store.set_state(STATE_README_FAILURE, None)
        return
    if before is not None and before.error == error and before.path == str(path):
        return
    since = before.since if before is not None else now
    store.set_state(STATE_README_FAILURE, ReadmeFailure(str(path), error, since).to_json())


# -- the overview -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outbox:
    """The outbox in numbers: each status over all channels, and per channel."""

    counts: tuple[OutboxCount, ...]

    def total(self, status: str) -> int:
        """Rows in `status` (a DeliveryStatus value, or "deferred") over all channels."""
        return sum(c.count for c in self.counts if c.status == status)

    @property
    def next_retry_at(self) -> datetime | None:
        """The earliest next try of a deferred delivery."""
        tries = [c.next_attempt_at for c in self.counts if c.next_attempt_at is not None]
        return min(tries) if tries else None

    def by_channel(self) -> dict[str, dict[str, int]]:
        """{kind: {status: count}} with every status present (0 when none)."""
        statuses = (DeliveryStatus.PENDING.value, DEFERRED, *OUTBOX_FINAL)
        channels: dict[str, dict[str, int]] = {}
        for count in self.counts:
            row = channels.setdefault(count.kind, dict.fromkeys(statuses, 0))
            row[count.status] = row.get(count.status, 0) + count.count
        return channels


OUTBOX_FINAL = (DeliveryStatus.SENT.value, DeliveryStatus.FAILED.value)


@dataclass(frozen=True)
class Overview:
    """Everything `status` shows, read from the store in one go."""

    source: str  # the config file in use
    database: str  # its URL, password hidden
    keywords: int
    backfills_waiting: int
    subscriptions: tuple[Subscription, ...]
    runs: tuple[RunReport, ...]  # newest first
    last_ok: RunReport | None
    last_success: datetime | None
    failed_cycles: int  # in a row
    zero_days: int  # announcement days in a row with zero new papers
    running: LeaseHolder | None
    platforms: tuple[PlatformStatus, ...]  # the running serve's live connections
    refusals: tuple[PlatformStatus, ...]  # tokens refused while delivering
    outbox: Outbox
    readme: ReadmeFailure | None
    readme_path: str | None  # None when the README is off
    unconfigured: Mapping[str, str]  # kind -> the environment variable its token needs

    @property
    def sign_ups_waiting(self) -> tuple[Subscription, ...]:
        """Email sign-ups waiting for their link to be clicked: pending, not failing."""
        return tuple(s for s in self.subscriptions if _unconfirmed(s))

    @property
    def failing(self) -> tuple[Subscription, ...]:
        """Disabled (or paused) subscriptions, the waiting sign-ups aside."""
        return tuple(s for s in self.subscriptions if not s.active and not _unconfirmed(s))

    @property
    def disabled_recently(self) -> tuple[Subscription, ...]:
        """Failing subscriptions disabled since the start of the last ok cycle (all of them
        when no cycle was ok yet; those disabled before this was recorded never)."""
        since = self.last_ok.started_at if self.last_ok is not None else None
        return tuple(
            s
            for s in self.failing
            if s.disabled_at is not None and (since is None or s.disabled_at >= since)
        )

    def waiting_for_token(self) -> dict[str, int]:
        """Active subscriptions of a platform whose token is not set, by kind."""
        waiting = {}
        for kind in self.unconfigured:
            idle = sum(1 for s in self.subscriptions if s.active and s.target.kind == kind)
            if idle:
                waiting[kind] = idle
        return waiting


def _unconfirmed(subscription: Subscription) -> bool:
    return not subscription.active and subscription.disabled_reason == UNCONFIRMED


def read_overview(
    settings: Settings,
    store: PaperStore,
    *,
    runs: int = 5,
    kinds: Sequence[str] = (),
    unconfigured: Mapping[str, str] | None = None,
) -> Overview:
    """Read what `status` shows (blocking: run it in a thread from async code).

    `kinds` are the registered delivery channels' kinds and `unconfigured` those that wait
    for a secret (kind -> variable): `digest.app.channel_specs` and `unconfigured_channels`.
    """
    from digest.lease import CYCLE_LEASE
    from storage.sql_store import redact_url

    unconfigured = dict(unconfigured or {})
    # A platform whose secret is set may have a live connection that serve records (Slack's
    # Socket Mode, Discord's gateway); any channel may have had its token refused.
    live = [kind for kind in kinds if kind not in unconfigured]
    delivering = list(kinds)
    last_success = store.get_state(STATE_LAST_SUCCESS)
    return Overview(
        source=settings.source,
        database=redact_url(settings.database_url),
        keywords=len(store.list_keywords()),
        backfills_waiting=len(store.keywords_to_backfill()),
        subscriptions=tuple(store.list_subscriptions()),
        runs=tuple(store.recent_runs(runs)),
        last_ok=store.last_ok_run(),
        last_success=datetime.fromisoformat(last_success) if last_success else None,
        failed_cycles=int(store.get_state(STATE_FAILED_CYCLES) or 0),
        zero_days=int(store.get_state(STATE_ZERO_DAYS) or 0),
        running=store.lease_holder(CYCLE_LEASE),
        platforms=_present(read_platform_status(store, kind) for kind in live),
        refusals=_present(read_platform_status(store, k, delivery=True) for k in delivering),
        outbox=Outbox(tuple(store.count_outbox())),
        readme=read_readme_failure(store) if settings.readme.enabled else None,
        readme_path=str(settings.readme_path) if settings.readme.enabled else None,
        unconfigured=unconfigured,
    )


def _present(records: Iterable[PlatformStatus | None]) -> tuple[PlatformStatus, ...]:
    return tuple(r for r in records if r is not None)


# -- alerts -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Alert:
    """A standing problem for the operator: `kind` is one of ALERT_KINDS, `text` the line."""

    kind: str
    text: str


def find_alerts(overview: Overview, settings: Settings) -> list[Alert]:
    """Every alert that is on, in a stable order (see the module's table)."""
    alerts: list[Alert] = []
    if overview.failed_cycles >= settings.alerts.failed_cycles:
        alerts.append(
            Alert("failed_cycles", f"{overview.failed_cycles} cycles in a row have failed")
        )
    if overview.zero_days >= settings.alerts.zero_paper_days:
        alerts.append(
            Alert(
                "zero_papers",
                f"zero new papers on {overview.zero_days} announcement days in a row",
            )
        )
    for platform in overview.platforms:
        if not platform.connected:
            alerts.append(
                Alert(
                    "platform_unreachable",
                    f"{platform.kind} unreachable since {when(platform.since)}: {platform.reason}",
                )
            )
    for refusal in overview.refusals:
        paused = sum(
            1
            for s in overview.failing
            if s.target.kind == refusal.kind and s.disabled_reason == refusal.reason
        )
        alerts.append(
            Alert(
                "token_refused",
                f"{refusal.kind} refused our token while delivering, since "
                f"{when(refusal.since)}: {refusal.reason}; {paused} subscription(s) paused: fix "
                "the token, then `daily-papers deliveries retry --all`",
            )
        )
    recent = overview.disabled_recently
    if recent:
        since = (
            f"since the last ok cycle ({when(overview.last_ok.started_at)})"
            if overview.last_ok is not None
            else "and no cycle has succeeded yet"
        )
        alerts.append(
            Alert(
                "subscriptions_disabled",
                f"{len(recent)} subscription(s) disabled {since}: see failing subscriptions "
                "below; `daily-papers deliveries retry TARGET` resumes one once it is fixed",
            )
        )
    if overview.readme is not None:
        alerts.append(
            Alert(
                "readme",
                f"README snapshot not written since {when(overview.readme.since)}: "
                f"{overview.readme.error}",
            )
        )
    return alerts


def status_ok(overview: Overview, alerts: Iterable[Alert]) -> bool:
    """What `status`'s exit status says: no alert on, and the last cycle (if any) ok."""
    return not list(alerts) and (not overview.runs or overview.runs[0].ok)


# -- status --json ----------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment is not None else None


def _run_json(run: RunReport) -> dict[str, Any]:
    return {
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "ok": run.ok,
        "seconds": round(run.seconds, 3),
        "requests": run.requests,
        "retries": run.retries,
        "throttled": run.throttled,
        "harvested": run.harvested,
        "new_papers": run.new_papers,
        "new_matches": run.new_matches,
        "sent": run.sent,
        "deferred": run.deferred,
        "failed": run.failed,
        "disabled": run.disabled,
        "next_retry_at": _iso(run.next_retry_at),
        "error": run.error,
        "warnings": list(run.warnings),
    }


def _platform_json(record: PlatformStatus, source: str) -> dict[str, Any]:
    return {
        "kind": record.kind,
        "source": source,
        "state": record.state,
        "since": _iso(record.since),
        "reason": record.reason,
    }


def overview_json(overview: Overview, alerts: list[Alert]) -> dict[str, Any]:
    """`daily-papers status --json`: the documented, stable shape (docs/operations.md)."""
    outbox = overview.outbox
    running = overview.running
    readme = overview.readme
    return {
        "schema": JSON_SCHEMA,
        "ok": status_ok(overview, alerts),
        "config": overview.source,
        "database": overview.database,
        "alerts": [{"kind": a.kind, "message": a.text} for a in alerts],
        "keywords": overview.keywords,
        "backfills_waiting": overview.backfills_waiting,
        "subscriptions": {
            "active": sum(1 for s in overview.subscriptions if s.active),
            "failing": len(overview.failing),
            "unconfirmed": len(overview.sign_ups_waiting),
            "waiting_for_token": overview.waiting_for_token(),
        },
        "cycle_running": None
        if running is None
        else {"host": running.host, "pid": running.pid, "since": _iso(running.acquired_at)},
        "last_success": _iso(overview.last_success),
        "runs": [_run_json(run) for run in overview.runs],
        "deliveries": {
            "pending": outbox.total(DeliveryStatus.PENDING.value),
            "deferred": outbox.total(DEFERRED),
            "failed": outbox.total(DeliveryStatus.FAILED.value),
            "sent": outbox.total(DeliveryStatus.SENT.value),
            "next_retry_at": _iso(outbox.next_retry_at),
            "by_channel": outbox.by_channel(),
        },
        "platforms": [
            *(_platform_json(p, "serve") for p in overview.platforms),
            *(_platform_json(p, "delivery") for p in overview.refusals),
        ],
        "failing_subscriptions": [
            {
                "target": s.target.display,
                "keyword": s.keyword,
                "reason": s.disabled_reason,
                "disabled_at": _iso(s.disabled_at),
            }
            for s in overview.failing
        ],
        "readme": {
            "enabled": overview.readme_path is not None,
            "path": overview.readme_path,
            "error": readme.error if readme is not None else None,
            "since": _iso(readme.since) if readme is not None else None,
        },
    }


# -- /healthz ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Health:
    """/healthz's verdict: `ok` (200) or not (503), and why, in a few words."""

    ok: bool
    reason: str
    last_started: datetime | None = None  # the last cycle's start, ok or not
    last_run: RunReport | None = None  # the last recorded (finished) cycle
    last_success: datetime | None = None


def check_health(
    settings: Settings, store: PaperStore, *, server_started: datetime, now: datetime
) -> Health:
    """Read what /healthz needs and judge it (blocking; StoreError when the database does not
    answer)."""
    from digest.lease import CYCLE_LEASE

    started = store.get_state(STATE_LAST_STARTED)
    success = store.get_state(STATE_LAST_SUCCESS)
    runs = store.recent_runs(1)
    last_started = datetime.fromisoformat(started) if started else None
    verdict = assess_health(
        settings=settings,
        last_started=last_started,
        running=store.lease_holder(CYCLE_LEASE) is not None,
        server_started=server_started,
        now=now,
    )
    return Health(
        ok=verdict.ok,
        reason=verdict.reason,
        last_started=last_started,
        last_run=runs[0] if runs else None,
        last_success=datetime.fromisoformat(success) if success else None,
    )


def health_json(health: Health) -> dict[str, Any]:
    """/healthz's body: `status` ok or error, the reason, and the last cycle's times."""
    last = health.last_run
    return {
        "status": "ok" if health.ok else "error",
        "reason": health.reason,
        "last_started": _iso(health.last_started),
        "last_run": _iso(last.finished_at) if last is not None else None,
        "last_run_ok": last.ok if last is not None else None,
        "last_success": _iso(health.last_success),
    }


def assess_health(
    *,
    settings: Settings,
    last_started: datetime | None,
    running: bool,
    server_started: datetime,
    now: datetime,
) -> Health:
    """Is the cycle keeping to its schedule? Recent means: the cycle of the latest scheduled
    time has started, or may still (that time is less than `schedule.misfire_grace_hours` ago,
    or this server started after that grace, so `serve` rightly waits for the next one).

    A fresh install has run no cycle: `serve` runs one at once on a first start, so it is
    healthy for the grace after this server started, and unhealthy after that. A failed cycle
    still counts as the schedule kept (arXiv being down is an alert in `status`, not a reason
    for a load balancer to take replicas out).
    """
    grace = timedelta(hours=settings.schedule.misfire_grace_hours)
    if running:
        return Health(True, "a cycle is running")
    if last_started is None:
        if now - server_started <= grace:
            return Health(True, "no cycle has run yet; serve runs the first one at start")
        started = when(server_started)
        return Health(False, f"no cycle has started since this server started at {started}")
    schedule = settings.schedule
    slot = latest_fire_time(cron=schedule.cron, timezone=schedule.timezone, now=now)
    if slot is None or last_started >= slot:
        return Health(True, f"the last cycle started at {when(last_started)}")
    if now - slot <= grace:
        return Health(True, f"the cycle scheduled at {when(slot)} is within its grace")
    if server_started - slot > grace:
        return Health(True, f"started after the grace of {when(slot)}; waiting for the next")
    return Health(
        False,
        f"the cycle scheduled at {when(slot)} has not started (the last one started at "
        f"{when(last_started)})",
    )
