"""The composition root: `serve` schedules, catches up on start, persists its job, stops cleanly."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest

from digest.app import cycle_is_overdue, serve
from digest.config import settings_for_tests
from digest.errors import ConfigError
from storage.sql_store import SqlStore
from tests.fakes.arxiv_server import ArxivStandIn
from tests.reference_papers import load_reference_papers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("last", "now", "overdue"),
    [
        (None, datetime(2025, 2, 11, 12, tzinfo=UTC), True),
        # 21:00 New York on Feb 10 is 02:00 UTC Feb 11: a success at 03:00 UTC covers it
        (datetime(2025, 2, 11, 3, tzinfo=UTC), datetime(2025, 2, 11, 12, tzinfo=UTC), False),
        # the success was before the 02:00 UTC firing: the service missed a run
        (datetime(2025, 2, 10, 3, tzinfo=UTC), datetime(2025, 2, 11, 12, tzinfo=UTC), True),
    ],
)
def test_cycle_is_overdue_when_the_schedule_fired_since_the_last_success(
    last: datetime | None, now: datetime, overdue: bool
) -> None:
    """On start, serve runs at once only when a scheduled run was missed."""
    assert (
        cycle_is_overdue(cron="0 21 * * *", timezone="America/New_York", last_success=last, now=now)
        is overdue
    )


async def test_serve_catches_up_on_a_first_start_and_stops(tmp_path: Path) -> None:
    """A first start runs a cycle at once, records its success, and stops."""
    with ArxivStandIn(load_reference_papers()) as arxiv:
        settings = settings_for_tests(
            service={"data_dir": str(tmp_path)},
            arxiv={"api_url": arxiv.url, "categories": ["cs.CV"]},
            keywords={"queries": ["Video Understanding"]},
            web={"port": _free_port()},
        )
        stop = asyncio.Event()
        task = asyncio.create_task(serve(settings, stop=stop))
        try:
            for _ in range(400):  # the catch-up cycle writes the README; allow a loaded machine
                if settings.readme_path.exists():
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("serve did not run its catch-up cycle")
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
    assert "## Video Understanding" in settings.readme_path.read_text(encoding="utf-8")
    with SqlStore.from_settings(settings) as store:
        assert store.get_state("cycle.last_success") is not None


async def test_serve_explains_a_busy_port(tmp_path: Path) -> None:
    """A taken web.port is one clear error naming the setting, not a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = settings_for_tests(service={"data_dir": str(tmp_path)}, web={"port": port})
        with pytest.raises(ConfigError, match=r"web\.port"):
            await asyncio.wait_for(serve(settings), 20)


def test_latest_fire_time_finds_the_last_slot_for_dense_and_sparse_schedules() -> None:
    """Every minute, daily and yearly schedules: the last fire time at or before now."""
    from digest.app import latest_fire_time

    now = datetime(2025, 2, 11, 12, 30, 15, tzinfo=UTC)
    minute = latest_fire_time(cron="* * * * *", timezone="UTC", now=now)
    assert minute == datetime(2025, 2, 11, 12, 30, tzinfo=UTC)
    daily = latest_fire_time(cron="0 21 * * *", timezone="America/New_York", now=now)
    assert daily == datetime(2025, 2, 11, 2, 0, tzinfo=UTC)  # 21:00 New York, the day before
    yearly = latest_fire_time(cron="0 0 1 1 *", timezone="UTC", now=now)
    assert yearly == datetime(2025, 1, 1, tzinfo=UTC)
    exact = latest_fire_time(cron="30 12 * * *", timezone="UTC", now=now.replace(second=0))
    assert exact == now.replace(second=0)


def test_catch_up_on_start_honours_misfire_grace_hours(tmp_path: Path) -> None:
    """A restart within misfire_grace_hours of a missed run catches it up; later, it waits."""
    from datetime import timedelta

    from digest.app import catch_up_slot

    settings = settings_for_tests(
        service={"data_dir": str(tmp_path)},
        schedule={"cron": "0 21 * * *", "timezone": "UTC", "misfire_grace_hours": 6},
    )
    missed = datetime(2025, 2, 10, 21, 0, tzinfo=UTC)
    last = missed - timedelta(days=1)
    assert catch_up_slot(settings, last_success=None, now=missed) == datetime(
        1970, 1, 1, tzinfo=UTC
    )
    assert catch_up_slot(settings, last_success=last, now=missed + timedelta(hours=5)) == missed
    assert catch_up_slot(settings, last_success=last, now=missed + timedelta(hours=7)) is None
    assert catch_up_slot(settings, last_success=missed, now=missed + timedelta(hours=1)) is None
