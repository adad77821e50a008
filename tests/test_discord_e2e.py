"""End to end: subscribe with /papers (or a configured webhook), run the daily cycle against the
arXiv stand-in, and the fake Discord got exactly the expected embeds, once."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import discord.http
import pytest

from bot.discord_app import build_bot
from bot.discord_channel import (
    DiscordChannel,
    DiscordWebhookChannel,
    render_embed,
    webhook_subscriptions,
)
from digest.arxiv_source import ArxivSource
from digest.channels import Channel
from digest.config import Secrets, Settings, settings_for_tests
from digest.cycle import run_cycle
from digest.domain import Paper, RunReport, Target
from storage.sql_store import SqlStore
from tests.fakes.arxiv_server import ArxivStandIn
from tests.fakes.discord_api import FakeDiscord, webhook_url
from tests.reference_papers import load_reference_papers, load_reference_sections
from tests.test_discord_app import CHANNEL, dispatch, interaction_payload

REFERENCE_DAY = datetime(2025, 2, 11, 12, 0, tzinfo=UTC)
KEYWORD = "Video Understanding"
HOOK_ID = "323456789012345678"


@pytest.fixture
def arxiv() -> Iterator[ArxivStandIn]:
    """The arXiv stand-in serving the reference README's papers."""
    with ArxivStandIn(load_reference_papers()) as stand_in:
        yield stand_in


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    """The fake Discord; Route.BASE is put back afterwards (it is process-wide)."""
    before = discord.http.Route.BASE
    async with FakeDiscord() as server:
        yield server
    discord.http.Route.BASE = before


def make_settings(
    tmp_path: Path, arxiv: ArxivStandIn, fake: FakeDiscord, **discord: Any
) -> Settings:
    """Test settings: the stand-in, the fake Discord, no README, immediate retries."""
    settings = settings_for_tests(
        service={"data_dir": str(tmp_path)},
        arxiv={"api_url": arxiv.url, "categories": ["cs.CV", "cs.LG"], "retries": 1},
        readme={"enabled": False},
        delivery={"retry_base_minutes": 0},
        discord={"api_url": fake.api_base, **discord},
    )
    return dataclasses.replace(settings, secrets=Secrets(discord_bot_token="bot-token"))


async def cycle(
    settings: Settings, store: SqlStore, channel: Channel, moment: datetime
) -> RunReport:
    """One daily cycle at `moment` with only this channel registered."""
    with ArxivSource.from_settings(settings) as source:
        return await run_cycle(
            settings=settings,
            store=store,
            source=source,
            channels={channel.kind: channel},
            now=lambda: moment,
        )


def expected_papers(settings: Settings, store: SqlStore, keyword: str) -> list[Paper]:
    """The keyword's reference papers submitted inside the first harvest window, newest first,
    as stored (what the channel renders)."""
    window_start = REFERENCE_DAY - timedelta(days=settings.arxiv.lookback_days)
    section = next(s for s in load_reference_sections() if s.keyword == KEYWORD)
    ids = {p.arxiv_id for p in section.papers if window_start <= p.published < REFERENCE_DAY}
    stored = store.latest_matches(keyword, 1000)
    return [p for p in stored if p.arxiv_id in ids]


async def test_interaction_subscribe_then_cycle_posts_embeds_once(
    tmp_path: Path, arxiv: ArxivStandIn, fake: FakeDiscord
) -> None:
    """/papers subscribe -> cycle -> exactly the window's papers as embeds, once; rerun: nothing."""
    settings = make_settings(tmp_path, arxiv, fake)
    with SqlStore.from_settings(settings) as store:
        store.migrate()
        backfills: list[str] = []
        bot = build_bot(settings, store=store, request_backfill=backfills.append)
        async with bot:
            await bot.login("bot-token")
            await dispatch(bot, interaction_payload("subscribe", {"query": KEYWORD.lower()}))
        callback = fake.interaction_callbacks[-1]
        assert "subscribed this channel to" in callback["data"]["content"]
        (sub,) = store.list_subscriptions(Target("discord", CHANNEL))

        async with DiscordChannel.from_settings(settings) as channel:  # type: ignore[union-attr]
            first = await cycle(settings, store, channel, REFERENCE_DAY)
            assert first.ok, first.error
            expected = expected_papers(settings, store, sub.keyword)
            assert expected, "the reference corpus should have papers inside the window"
            messages = fake.channel_messages[CHANNEL]
            embeds = [e for m in messages for e in m["embeds"]]
            assert embeds == [render_embed(p, sub.keyword).to_dict() for p in expected]
            assert first.sent == len(expected)
            assert all(m["allowed_mentions"] == {"parse": []} for m in messages)

            second = await cycle(settings, store, channel, REFERENCE_DAY + timedelta(hours=1))
            assert second.ok
            assert second.sent == 0
            assert fake.channel_messages[CHANNEL] == messages


async def test_configured_webhook_gets_the_same_posts_once(
    tmp_path: Path, arxiv: ArxivStandIn, fake: FakeDiscord
) -> None:
    """A `discord.webhooks` entry subscribed at start-up receives the same embeds, once."""
    url = webhook_url(HOOK_ID)
    settings = make_settings(tmp_path, arxiv, fake, webhooks=[f"{url} {KEYWORD}"])
    with SqlStore.from_settings(settings) as store:
        store.migrate()
        for target, query in webhook_subscriptions(settings):
            store.add_subscription(target, query, now=REFERENCE_DAY)
        async with DiscordWebhookChannel.from_settings(settings) as channel:
            first = await cycle(settings, store, channel, REFERENCE_DAY)
            assert first.ok, first.error
            expected = expected_papers(settings, store, KEYWORD)
            assert expected
            messages = fake.webhook_messages[HOOK_ID]
            embeds = [e for m in messages for e in m["embeds"]]
            assert embeds == [render_embed(p, KEYWORD).to_dict() for p in expected]

            second = await cycle(settings, store, channel, REFERENCE_DAY + timedelta(hours=1))
            assert second.sent == 0
            assert fake.webhook_messages[HOOK_ID] == messages


async def test_deleted_webhook_disables_the_subscription(
    tmp_path: Path, arxiv: ArxivStandIn, fake: FakeDiscord
) -> None:
    """A webhook deleted in Discord disables its subscription with the reason; nothing retried."""
    url = webhook_url(HOOK_ID)
    settings = make_settings(tmp_path, arxiv, fake)
    with SqlStore.from_settings(settings) as store:
        store.migrate()
        store.add_subscription(Target("discord_webhook", url), KEYWORD, now=REFERENCE_DAY)
        fake.deleted_webhooks.add(HOOK_ID)
        async with DiscordWebhookChannel.from_settings(settings) as channel:
            report = await cycle(settings, store, channel, REFERENCE_DAY)
        assert report.disabled == 1
        (sub,) = store.list_subscriptions(Target("discord_webhook", url))
        assert not sub.active
        assert sub.disabled_reason == "Discord 404 Unknown Webhook (code 10015)"
