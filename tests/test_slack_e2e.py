"""End to end: subscribe by slash command, run the daily cycle, the Slack channel gets it once."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.slack_app import EVENTS_PATH, SlackCommandApp
from bot.slack_channel import SlackChannel
from digest.arxiv_source import ArxivSource
from digest.config import Secrets, Settings, settings_for_tests
from digest.cycle import run_cycle
from digest.domain import Target
from storage.sql_store import SqlStore
from tests.fakes.arxiv_server import ArxivStandIn
from tests.fakes.slack_api import BOT_TOKEN, FakeSlackApi, error
from tests.reference_papers import load_reference_papers, load_reference_sections
from tests.test_slack_app import SIGNING_SECRET, signed_command

REFERENCE_DAY = datetime(2025, 2, 11, 12, 0, tzinfo=UTC)
KEYWORD = "Video Understanding"
CHANNEL_ID = "C0E2ETEST"


@pytest.fixture
def arxiv() -> Iterator[ArxivStandIn]:
    """The arXiv stand-in serving the reference README's papers."""
    with ArxivStandIn(load_reference_papers()) as stand_in:
        yield stand_in


def _settings(tmp_path: Path, arxiv: ArxivStandIn, slack: FakeSlackApi) -> Settings:
    settings = settings_for_tests(
        service={"data_dir": str(tmp_path)},
        arxiv={"api_url": arxiv.url, "categories": ["cs.CV", "cs.LG"], "retries": 1},
        readme={"enabled": False},
        delivery={"retry_base_minutes": 0},
        slack={"api_url": slack.api_url},
    )
    return dataclasses.replace(
        settings,
        secrets=Secrets(slack_bot_token=BOT_TOKEN, slack_signing_secret=SIGNING_SECRET),
    )


async def _slash(settings: Settings, store: SqlStore, slack: FakeSlackApi, text: str) -> str:
    """Send one signed slash command to the app on a live server; return the reply text."""
    app = SlackCommandApp.from_settings(settings, store=store, request_backfill=lambda q: None)
    assert app is not None
    web_app = web.Application()
    web_app.add_routes(app.routes())
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    before = len(slack.responses())
    try:
        body, headers = signed_command(
            text, response_url=slack.response_url(), channel_id=CHANNEL_ID
        )
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{port}{EVENTS_PATH}", data=body, headers=headers) as r,
        ):
            assert r.status == 200
        while len(slack.responses()) <= before:
            slack.response_received.clear()
            await slack.response_received.wait()
    finally:
        await runner.cleanup()
    return str(slack.responses()[before]["text"])


async def _cycle(settings: Settings, store: SqlStore, moment: datetime) -> Any:
    channel = SlackChannel.from_settings(settings)
    assert channel is not None
    with ArxivSource.from_settings(settings) as source:
        return await run_cycle(
            settings=settings,
            store=store,
            source=source,
            channels={"slack": channel},
            now=lambda: moment,
        )


def _posted_ids(slack: FakeSlackApi) -> list[str]:
    ids: list[str] = []
    for call in slack.posted():
        assert call.params["channel"] == CHANNEL_ID
        for block in call.params["blocks"]:
            text = block.get("text", {}).get("text", "")
            ids += re.findall(r"<http://arxiv\.org/abs/([0-9.]+)v\d+\|", text)
    return ids


def _expected(settings: Settings) -> set[str]:
    """Reference papers of the keyword submitted inside the first cycle's harvest window."""
    window_start = REFERENCE_DAY - timedelta(days=settings.arxiv.lookback_days)
    section = next(s for s in load_reference_sections() if s.keyword == KEYWORD)
    return {p.arxiv_id for p in section.papers if window_start <= p.published < REFERENCE_DAY}


async def test_subscribe_then_cycle_posts_expected_papers_once(
    tmp_path: Path, arxiv: ArxivStandIn
) -> None:
    """Slash-command subscription -> cycle -> exactly the window's matches, once; rerun: nothing."""
    async with FakeSlackApi() as slack:
        settings = _settings(tmp_path, arxiv, slack)
        with SqlStore.from_settings(settings) as store:
            store.migrate()
            reply = await _slash(settings, store, slack, f"subscribe {KEYWORD.lower()}")
            assert reply.startswith("<@U0MEMBER> subscribed this channel to")
            assert store.list_subscriptions(Target("slack", CHANNEL_ID))

            first = await _cycle(settings, store, REFERENCE_DAY)
            assert first.ok, first.error
            expected = _expected(settings)
            assert expected, "the reference corpus should have papers inside the window"
            posted = _posted_ids(slack)
            assert sorted(posted) == sorted(expected)  # each exactly once
            assert first.sent == len(expected)
            assert len(slack.posted()) == 1  # one message for the day

            second = await _cycle(settings, store, REFERENCE_DAY + timedelta(hours=1))
            assert second.ok
            assert second.sent == 0
            assert sorted(_posted_ids(slack)) == sorted(expected)
            assert len(slack.posted()) == 1

            # The slash command's `latest` now answers from what the cycle stored.
            latest = await _slash(settings, store, slack, f"latest {KEYWORD} 3")
            assert "Newest papers for" in latest


async def test_archived_channel_is_disabled_and_list_says_why(
    tmp_path: Path, arxiv: ArxivStandIn
) -> None:
    """Channel archived before the post: subscription disabled, `/papers list` says why."""
    async with FakeSlackApi() as slack:
        settings = _settings(tmp_path, arxiv, slack)
        with SqlStore.from_settings(settings) as store:
            store.migrate()
            await _slash(settings, store, slack, f"subscribe {KEYWORD}")
            slack.script("chat.postMessage", error("is_archived"))
            report = await _cycle(settings, store, REFERENCE_DAY)
            assert report.disabled == 1
            assert slack.posted() == []
            [sub] = store.list_subscriptions(Target("slack", CHANNEL_ID))
            assert not sub.active
            assert sub.disabled_reason is not None
            assert sub.disabled_reason.startswith("is_archived")
            listing = await _slash(settings, store, slack, "list")
            assert "paused: is_archived" in listing
            # Nothing more is attempted on the next cycle.
            calls = len(slack.calls_to("chat.postMessage"))
            await _cycle(settings, store, REFERENCE_DAY + timedelta(hours=1))
            assert len(slack.calls_to("chat.postMessage")) == calls
