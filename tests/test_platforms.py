"""The platform supervisor's rules as data: the backoff, and the record `status` reads."""

from __future__ import annotations

from datetime import UTC, datetime

from digest.config import settings_for_tests
from digest.errors import PlatformUnreachable
from digest.platforms import PlatformStatus, RetryPolicy, describe_error


def test_retry_waits_double_from_5_seconds_to_5_minutes() -> None:
    """Production backoff: 5 s after the first failure, doubling, never above 5 minutes."""
    policy = RetryPolicy()
    assert [policy.delay(n) for n in range(1, 10)] == [5, 10, 20, 40, 80, 160, 300, 300, 300]


def test_test_mode_waits_are_short_but_not_zero() -> None:
    """service.test_mode: fractions of a second (zero would spin on a refused port)."""
    policy = RetryPolicy.from_settings(settings_for_tests())
    assert 0 < policy.delay(1) < policy.delay(10) <= 0.2
    assert policy.stable_seconds == 0


def test_status_record_round_trips_and_ignores_garbage() -> None:
    """The stored JSON reads back as it was written; an unreadable value reads as None."""
    status = PlatformStatus(
        kind="slack",
        state="unreachable",
        since=datetime(2026, 12, 6, 18, 0, tzinfo=UTC),
        reason="Slack refused the app token (invalid_auth): check SLACK_APP_TOKEN",
    )
    assert PlatformStatus.from_json("slack", status.to_json()) == status
    assert not status.connected
    assert PlatformStatus.from_json("slack", "not json") is None
    assert PlatformStatus.from_json("slack", '{"state": "connected"}') is None


def test_describe_error_names_the_type_only_when_the_message_does_not() -> None:
    """Our own errors speak for themselves; a library's error is prefixed with its type."""
    assert describe_error(PlatformUnreachable("cannot reach Slack")) == "cannot reach Slack"
    assert describe_error(ConnectionRefusedError("refused\n  twice")) == (
        "ConnectionRefusedError: refused twice"
    )
    assert describe_error(TimeoutError()) == "TimeoutError"
