"""The composition root: `serve` schedules, catches up on start, persists its job, stops cleanly."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy

from digest.app import JOB_ID, cycle_is_overdue, serve
from digest.config import Settings, settings_for_tests
from digest.errors import ConfigError
from storage.sql_store import SqlStore
from tests.fakes.arxiv_server import ArxivStandIn
from tests.local import free_port, wait_until
from tests.reference_papers import load_reference_papers


async def wait_cycle_recorded(settings: Settings) -> None:
    """Wait until a cycle has recorded its success in the database serve uses."""
    await wait_until(settings.readme_path.exists)  # the database exists by then
    with SqlStore.from_settings(settings) as store:
        await wait_until(lambda: store.get_state("cycle.last_success"))


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


async def test_serve_catches_up_persists_its_job_and_stops(tmp_path: Path) -> None:
    """A first start runs a cycle at once, stores the cron job in the database, and stops."""
    with ArxivStandIn(load_reference_papers()) as arxiv:
        settings = settings_for_tests(
            service={"data_dir": str(tmp_path)},
            arxiv={"api_url": arxiv.url, "categories": ["cs.CV"]},
            keywords={"queries": ["Video Understanding"]},
            web={"port": free_port()},
        )
        stop = asyncio.Event()
        task = asyncio.create_task(serve(settings, stop=stop))
        try:
            # The catch-up cycle's last step records its success (the README comes before it).
            await wait_cycle_recorded(settings)
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
    assert "## Video Understanding" in settings.readme_path.read_text(encoding="utf-8")
    engine = sqlalchemy.create_engine(settings.database_url)
    with engine.connect() as conn:
        jobs = conn.execute(sqlalchemy.text("SELECT id FROM apscheduler_jobs")).scalars().all()
    engine.dispose()
    assert jobs == [JOB_ID]
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
