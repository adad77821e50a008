"""Pacing in one place: Retry-After parsing and the minimum gap every adapter shares."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from digest.pacing import Gap, parse_retry_after

NOW = datetime(2025, 2, 11, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("  7 ", 7.0),
        ("1.5", 1.5),
        ("-3", 0.0),  # never a negative wait
        ("Tue, 11 Feb 2025 12:00:30 GMT", 30.0),  # an HTTP date
        ("Tue, 11 Feb 2025 11:59:00 GMT", 0.0),  # in the past: go now
        ("soon", None),
        ("Tue, 99 Foo", None),
    ],
)
def test_retry_after_is_seconds_or_an_http_date(value: str | None, seconds: float | None) -> None:
    """Both forms of RFC 9110's Retry-After, and garbage as no advice at all."""
    assert parse_retry_after(value, now=NOW) == seconds


def test_a_gap_books_slots_one_interval_apart_per_key() -> None:
    """Concurrent callers queue; another key has its own slots."""
    gap = Gap(1.0)
    assert gap.reserve("C1", 10.0) == 0.0
    assert gap.reserve("C1", 10.0) == 1.0  # booked before the first one waited
    assert gap.reserve("C1", 10.5) == 1.5
    assert gap.reserve("C2", 10.5) == 0.0
    assert gap.reserve("C1", 20.0) == 0.0  # long after: at once


def test_a_gap_counts_from_the_end_of_the_last_answer_and_obeys_retry_after() -> None:
    """`after` moves the next slot past a slow answer; `defer` past a server's Retry-After."""
    gap = Gap(3.0)
    assert gap.reserve("arxiv", 0.0) == 0.0
    gap.after("arxiv", 5.0)  # the answer took five seconds
    assert gap.reserve("arxiv", 5.0) == 3.0
    gap.after("arxiv", 8.5)
    gap.defer("arxiv", 8.5, 30.0)
    assert gap.reserve("arxiv", 9.0) == pytest.approx(29.5)
