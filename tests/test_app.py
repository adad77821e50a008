"""The composition root: `serve` schedules, catches up on start, persists its job, stops cleanly,
and keeps running while a chat platform is down."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import discord.http
import pytest
import yarl
from discord.gateway import DiscordWebSocket

from digest.app import cycle_is_overdue, serve
from digest.cli import cmd_status
from digest.config import Secrets, Settings, settings_for_tests
from digest.errors import ConfigError
from storage.sql_store import SqlStore
from tests.fakes.arxiv_server import ArxivStandIn
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.slack_api import APP_TOKEN, BOT_TOKEN, FakeSlackApi, error
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


async def test_serve_catches_up_on_a_first_start_and_stops(tmp_path: Path) -> None:
    """A first start runs a cycle at once, records its success, and stops."""
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


# -- a chat platform down ---------------------------------------------------------------------


@pytest.fixture
def arxiv() -> Iterator[ArxivStandIn]:
    """The arXiv stand-in serving the reference papers (the catch-up cycle's source)."""
    with ArxivStandIn(load_reference_papers()) as stand_in:
        yield stand_in


@pytest.fixture(autouse=True)
def restore_route_base() -> Iterator[None]:
    """serve points discord.py's process-wide Route.BASE at discord.api_url: put it back."""
    before = discord.http.Route.BASE
    yield
    discord.http.Route.BASE = before


def platform_settings(
    tmp_path: Path, arxiv: ArxivStandIn, secrets: Secrets, **tables: Any
) -> Settings:
    """Test settings for serve with one keyword, a free web port and the given tokens."""
    settings = settings_for_tests(
        service={"data_dir": str(tmp_path)},
        arxiv={"api_url": arxiv.url, "categories": ["cs.CV"]},
        keywords={"queries": ["Video Understanding"]},
        web={"port": free_port()},
        **tables,
    )
    return replace(settings, secrets=secrets)


def status(settings: Settings, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`daily-papers status` for these settings: its exit status and output."""
    capsys.readouterr()
    code = cmd_status(argparse.Namespace(runs=5, json=False), lambda: settings)
    return code, capsys.readouterr().out


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[None]:
    """serve in the background until the block ends, then it must stop within two seconds."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop=stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 2)


async def assert_ready(settings: Settings) -> None:
    """The catch-up cycle ran (README written, success recorded); the web server answers."""
    await wait_cycle_recorded(settings)
    assert settings.readme_path.exists()
    url = f"http://127.0.0.1:{settings.web.port}/healthz"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200


def platform_lines(caplog: pytest.LogCaptureFixture, event: str, kind: str) -> list[str]:
    """Our log lines of `event` for `kind`."""
    return [m for m in caplog.messages if m.split()[:2] == [event, f"kind={kind}"]]


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """No log record carried a traceback (an expected outage is one line per attempt)."""
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


@pytest.mark.parametrize("failure", ["invalid_auth", "refused-port"])
async def test_serve_runs_while_slack_socket_mode_fails(
    tmp_path: Path,
    arxiv: ArxivStandIn,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    failure: str,
) -> None:
    """Socket Mode refused or unreachable: serve is ready anyway, logs one line per attempt,
    status alerts (exit 1), and stopping ends it at once."""
    caplog.set_level(logging.INFO)
    async with FakeSlackApi() as slack:
        api_url = slack.api_url
        if failure == "refused-port":
            api_url = f"http://127.0.0.1:{free_port()}/api/"
        secrets = Secrets(slack_bot_token=BOT_TOKEN, slack_app_token="xapp-revoked")
        settings = platform_settings(tmp_path, arxiv, secrets, slack={"api_url": api_url})
        async with serving(settings):
            await assert_ready(settings)
            await wait_until(
                lambda: len(platform_lines(caplog, "platform.unreachable", "slack")) >= 3
            )
            code, out = status(settings, capsys)
    assert code == 1
    [alert] = [line for line in out.splitlines() if line.startswith("ALERT: slack")]
    assert alert.startswith("ALERT: slack unreachable since ")
    if failure == "invalid_auth":
        assert alert.endswith("Slack refused the app token (invalid_auth): check SLACK_APP_TOKEN")
        assert len(slack.calls_to("apps.connections.open")) >= 3
    else:
        assert "cannot reach Slack" in alert
    [first, *_] = platform_lines(caplog, "platform.unreachable", "slack")
    assert "retry_in=0.02s" in first
    assert_no_traceback(caplog)
    assert "serve.stopped" in caplog.messages


@pytest.mark.parametrize("failure", ["refused-port", "token-refused"])
async def test_serve_runs_while_discord_fails(
    tmp_path: Path,
    arxiv: ArxivStandIn,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    failure: str,
) -> None:
    """Discord's REST unreachable or the bot token refused (401): serve is ready anyway, logs
    one line per attempt, status alerts (exit 1), and stopping ends it at once."""
    caplog.set_level(logging.INFO)
    async with FakeDiscord() as fake:
        fake.accepted_token = "the-real-token"
        api_url = fake.api_base
        if failure == "refused-port":
            api_url = f"http://127.0.0.1:{free_port()}/api/v10"
        secrets = Secrets(discord_bot_token="bot-token")
        settings = platform_settings(tmp_path, arxiv, secrets, discord={"api_url": api_url})
        async with serving(settings):
            await assert_ready(settings)
            await wait_until(
                lambda: len(platform_lines(caplog, "platform.unreachable", "discord")) >= 3
            )
            code, out = status(settings, capsys)
    assert code == 1
    [alert] = [line for line in out.splitlines() if line.startswith("ALERT: discord")]
    assert alert.startswith("ALERT: discord unreachable since ")
    if failure == "token-refused":
        assert alert.endswith(
            "Discord refused the bot token (401 Unauthorized): check DISCORD_BOT_TOKEN"
        )
    else:
        assert "cannot log in to Discord" in alert
    assert_no_traceback(caplog)


async def test_serve_connects_slack_once_it_answers(
    tmp_path: Path,
    arxiv: ArxivStandIn,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Slack refusing Socket Mode twice, then answering: the supervisor connects on the third
    attempt and status stops alerting."""
    caplog.set_level(logging.INFO)
    async with FakeSlackApi() as slack:
        slack.script("apps.connections.open", error("invalid_auth"), error("invalid_auth"))
        secrets = Secrets(slack_bot_token=BOT_TOKEN, slack_app_token=APP_TOKEN)
        settings = platform_settings(tmp_path, arxiv, secrets, slack={"api_url": slack.api_url})
        async with serving(settings):
            await assert_ready(settings)
            async with asyncio.timeout(20):
                await slack.socket_connected.wait()
            await wait_until(lambda: bool(platform_lines(caplog, "platform.connected", "slack")))
            code, out = status(settings, capsys)
    assert len(platform_lines(caplog, "platform.unreachable", "slack")) == 2
    assert len(slack.calls_to("apps.connections.open")) == 3
    assert "ALERT" not in out
    assert "slack: connected since " in out
    assert code == 0


async def test_serve_connects_discord_once_it_answers(
    tmp_path: Path,
    arxiv: ArxivStandIn,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Discord refusing the token, then accepting it (the operator fixed it): the supervisor
    logs in on a later attempt, the bot identifies on the gateway and status stops alerting."""
    caplog.set_level(logging.INFO)
    async with FakeDiscord() as fake:
        monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))
        fake.accepted_token = "not-yet"
        secrets = Secrets(discord_bot_token="bot-token")
        settings = platform_settings(tmp_path, arxiv, secrets, discord={"api_url": fake.api_base})
        async with serving(settings):
            await assert_ready(settings)
            await wait_until(
                lambda: len(platform_lines(caplog, "platform.unreachable", "discord")) >= 2
            )
            code, out = status(settings, capsys)
            assert code == 1
            assert "ALERT: discord unreachable" in out
            fake.accepted_token = "bot-token"
            async with asyncio.timeout(20):
                await fake.wait_identified(1)
            await wait_until(lambda: bool(platform_lines(caplog, "platform.connected", "discord")))
            code, out = status(settings, capsys)
    assert "ALERT" not in out
    assert "discord: connected since " in out
    assert code == 0
    assert_no_traceback(caplog)


def test_serve_process_with_slack_down_stops_on_sigterm(
    tmp_path: Path, arxiv: ArxivStandIn
) -> None:
    """A real `daily-papers serve` with Slack unreachable gets ready, and SIGTERM ends it with
    exit status 0 within seconds."""
    port = free_port()
    env = {
        **os.environ,
        "DAILY_PAPERS_SERVICE_TEST_MODE": "true",
        "DAILY_PAPERS_SERVICE_DATA_DIR": str(tmp_path / "data"),
        "DAILY_PAPERS_ARXIV_API_URL": arxiv.url,
        "DAILY_PAPERS_ARXIV_CATEGORIES": '["cs.CV"]',
        "DAILY_PAPERS_KEYWORDS_QUERIES": '["Video Understanding"]',
        "DAILY_PAPERS_WEB_PORT": str(port),
        "DAILY_PAPERS_SLACK_API_URL": f"http://127.0.0.1:{free_port()}/api/",
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_APP_TOKEN": APP_TOKEN,
    }
    env.pop("DAILY_PAPERS_CONFIG", None)
    command = [sys.executable, "-c", "import sys; from digest.cli import main; sys.exit(main())"]
    process = subprocess.Popen(  # noqa: S603 -- our own CLI, fixed arguments
        [*command, "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(2000):  # the README means the catch-up cycle ran; allow a loaded machine
            if (tmp_path / "data" / "README.md").exists():
                break
            assert process.poll() is None, process.communicate()[1]
            time.sleep(0.01)
        else:
            pytest.fail("serve did not run its catch-up cycle")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert "platform.unreachable kind=slack" in stderr
    assert "serve.stopped" in stderr
    assert "Traceback" not in stderr


# -- the schedule across a restart (misfire grace) -----------------------------------------------

# A cron that fires once in four years, so APScheduler's real-time timer never fires during the
# test: the only cycles are the start-up ones, decided by the clock the test moves.
LEAP_DAY_CRON = "0 21 29 2 *"
LEAP_DAY_SLOT = datetime(2024, 3, 1, 2, 0, tzinfo=UTC)  # 21:00 New York on Feb 29, 2024


class MovableClock:
    """A clock the test sets: serve's catch-up, slots, cycles and /healthz all read it."""

    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment


def recorded_starts(settings: Settings) -> list[datetime]:
    """When each recorded cycle started, oldest first."""
    with SqlStore.from_settings(settings) as store:
        return sorted(run.started_at for run in store.recent_runs(50))


async def serve_once(
    settings: Settings, clock: MovableClock, caplog: pytest.LogCaptureFixture, *, cycles: int
) -> dict[str, Any]:
    """Start serve at the clock's time, wait until it is ready and `cycles` cycles are recorded
    in all, read /healthz, and stop it; returns /healthz's JSON."""
    caplog.clear()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop=stop, now=clock))
    try:
        await wait_until(lambda: "serve.ready" in " ".join(caplog.messages) or task.done())
        with SqlStore.from_settings(settings) as store:
            await wait_until(lambda: len(store.recent_runs(50)) >= cycles)
        url = f"http://127.0.0.1:{settings.web.port}/healthz"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            health = await response.json()
            assert response.status == 200, health
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
    return dict(health)


async def test_serve_stopped_over_a_scheduled_time_catches_it_up_once(
    tmp_path: Path, arxiv: ArxivStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    """serve stopped over a scheduled time and started again within misfire_grace_hours runs
    the missed cycle at once, and only once: a later start within the same grace runs none."""
    caplog.set_level(logging.INFO)
    settings = platform_settings(
        tmp_path,
        arxiv,
        Secrets(),
        schedule={"cron": LEAP_DAY_CRON, "timezone": "America/New_York", "misfire_grace_hours": 6},
    )
    clock = MovableClock(LEAP_DAY_SLOT - timedelta(days=1))
    await serve_once(settings, clock, caplog, cycles=1)  # a first start runs one cycle
    assert recorded_starts(settings) == [clock.moment]

    clock.moment = LEAP_DAY_SLOT + timedelta(hours=3)  # stopped over the slot; back within grace
    health = await serve_once(settings, clock, caplog, cycles=2)
    assert [m for m in caplog.messages if m.startswith("serve.catch_up")] == [
        "serve.catch_up reason=missed-schedule slot=2024-02-29T21:00:00-05:00"
    ]
    assert recorded_starts(settings) == [LEAP_DAY_SLOT - timedelta(days=1), clock.moment]
    assert health["reason"] == "the last cycle started at 2024-03-01 05:00 UTC"

    clock.moment = LEAP_DAY_SLOT + timedelta(hours=5)  # restarted again, same grace
    await serve_once(settings, clock, caplog, cycles=2)
    assert not [m for m in caplog.messages if m.startswith("serve.catch_up")]
    assert len(recorded_starts(settings)) == 2  # the slot ran once


async def test_serve_started_after_the_grace_waits_for_the_next_scheduled_time(
    tmp_path: Path, arxiv: ArxivStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    """A scheduled time missed longer than misfire_grace_hours ago is not caught up on start,
    and /healthz still answers 200: serve rightly waits for the next scheduled time."""
    caplog.set_level(logging.INFO)
    settings = platform_settings(
        tmp_path,
        arxiv,
        Secrets(),
        schedule={"cron": LEAP_DAY_CRON, "timezone": "America/New_York", "misfire_grace_hours": 6},
    )
    clock = MovableClock(LEAP_DAY_SLOT - timedelta(days=1))
    await serve_once(settings, clock, caplog, cycles=1)
    clock.moment = LEAP_DAY_SLOT + timedelta(hours=7)
    health = await serve_once(settings, clock, caplog, cycles=1)
    assert not [m for m in caplog.messages if m.startswith("serve.catch_up")]
    assert len(recorded_starts(settings)) == 1
    assert health["status"] == "ok"
    assert (
        health["reason"] == "started after the grace of 2024-03-01 02:00 UTC; waiting for the next"
    )


async def test_an_alert_target_no_channel_serves_is_refused_at_start(tmp_path: Path) -> None:
    """A misspelt alerts.target kind stops run and serve at once, naming the kinds there are."""
    from contextlib import AsyncExitStack

    from digest.app import build_channels, open_store

    settings = settings_for_tests(
        service={"data_dir": str(tmp_path)}, alerts={"target": "slak:C0123ABCD"}
    )
    store = open_store(settings)
    try:
        async with AsyncExitStack() as stack:
            with pytest.raises(ConfigError, match=r"no channel delivers to 'slak'.*slack:"):
                await build_channels(settings, store=store, stack=stack)
    finally:
        store.close()
