"""Relevance order of broad keywords: ranked by the cycle, seen at the wire of every channel."""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.apprise_channel import AppriseChannel
from bot.discord_channel import DiscordChannel, use_api_url
from bot.slack_channel import SlackChannel, build_web_client
from digest.config import Settings, settings_for_tests
from digest.cycle import _Tally, deliver, render_snapshot
from digest.domain import OutcomeKind, Paper, Target
from digest.mail import OPTION_CONFIRMED
from digest.mail.channel import EmailChannel
from digest.mail.links import EmailLinks
from digest.mail.smtp import SmtpPool
from digest.relevance import broad_keywords, rank_keywords
from storage.sql_store import SqlStore
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.recording_channel import RecordingChannel
from tests.fakes.recording_http import RecordingHttpServer
from tests.fakes.slack_api import BOT_TOKEN, FakeSlackApi
from tests.fakes.smtp import FakeSmtpServer, email_settings, smtp_server
from tests.mail_helpers import parse_html, parts

NOW = datetime(2025, 3, 5, 21, 0, tzinfo=UTC)
YESTERDAY = NOW - timedelta(days=1)
BROAD = "vision language models"
SMALL = "protein folding"


def words(text: str) -> list[str]:
    """The words of a topic's vocabulary."""
    return text.split()


ON_TOPIC = words(
    "visual instruction tuning image caption grounding region multimodal benchmark "
    "zero-shot retrieval contrastive pretraining encoder alignment hallucination chart "
    "document understanding visual question answering pixels"
)
OFF_TOPIC = words(
    "protein folding molecule docking enzyme binding affinity residue sequence "
    "genome kinase ligand crystal chemistry dynamics simulation peptide assay"
)
OTHER_TOPICS = [
    words("reinforcement robot locomotion policy reward manipulation grasp controller"),
    words("compiler loop vectorization register allocation kernel cache scheduling"),
    words("graph traffic forecasting sensor road spatial temporal congestion"),
    words("auction mechanism equilibrium bidder pricing market welfare"),
]


def topic_paper(n: int, words: list[str], *, updated: datetime, rng: random.Random) -> Paper:
    """A paper numbered `n` about `words` (ten of them), mentioning the broad keyword."""
    picked = rng.sample(words, 10)
    abstract = (
        f"We study {' '.join(picked[:5])} with vision language models. "
        f"Results on {' '.join(picked[5:])} improve. " * 3
    )
    return Paper(
        arxiv_id=f"2503.{n:05d}",
        version=1,
        title=f"On {picked[0]} and {picked[1]} number {n}",
        authors=("Ada Lovelace", "Alan Turing"),
        abstract=abstract.strip(),
        published=updated,
        updated=updated,
        primary_category="cs.CV",
        categories=("cs.CV",),
    )


def seed_history(store: SqlStore) -> None:
    """Yesterday: the broad keyword's on-topic history and 200 background papers."""
    store.add_keyword(BROAD)
    rng = random.Random(7)
    history = [
        topic_paper(9000 + i, ON_TOPIC, updated=YESTERDAY - timedelta(hours=i), rng=rng)
        for i in range(30)
    ]
    background = [
        topic_paper(
            8000 + i,
            [*OTHER_TOPICS[i % 4], *OFF_TOPIC][: 10 + (i % 3)]
            if i % 2
            else OTHER_TOPICS[i % 4] + OFF_TOPIC[:4],
            updated=YESTERDAY - timedelta(hours=1 + i),
            rng=rng,
        )
        for i in range(200)
    ]
    store.commit_harvest(
        papers=[*history, *background],
        matches={BROAD: {p.arxiv_id for p in history}},
        deliverable=(),
        now=YESTERDAY,
    )


def todays_papers(on: int, off: int, *, start: int = 0) -> tuple[list[Paper], list[Paper]]:
    """Today's on-topic papers (the older ones) and off-topic ones (newer, yet less relevant)."""
    rng = random.Random(11 + start)
    base = NOW - timedelta(hours=6)
    on_topic = [
        topic_paper(start + i, ON_TOPIC, updated=base - timedelta(minutes=i), rng=rng)
        for i in range(on)
    ]
    off_topic = [
        topic_paper(start + 500 + i, OFF_TOPIC, updated=base + timedelta(minutes=1 + i), rng=rng)
        for i in range(off)
    ]
    return on_topic, off_topic


def owe(store: SqlStore, targets: list[Target], keyword: str, papers: list[Paper]) -> None:
    """Subscribe the targets to `keyword` and owe them today's `papers`."""
    for target in targets:
        store.add_subscription(target, keyword, now=YESTERDAY)
    store.commit_harvest(
        papers=papers,
        matches={keyword: {p.arxiv_id for p in papers}},
        deliverable={p.arxiv_id for p in papers},
        now=NOW,
    )


async def run_delivery(settings: Settings, store: SqlStore, channels: dict[str, Any]) -> None:
    """The cycle's delivery step, as run_cycle runs it."""
    await deliver(settings=settings, store=store, channels=channels, now=NOW, tally=_Tally())


def newest_first(papers: list[Paper]) -> list[str]:
    """The digest's usual order: newest first, then id."""
    return [p.arxiv_id for p in sorted(papers, key=lambda p: (p.updated, p.arxiv_id))[::-1]]


# -- the ranking as the cycle computes it ------------------------------------------------------


def test_on_topic_papers_rank_first_though_older_and_ranking_is_deterministic(
    sqlite_store: SqlStore,
) -> None:
    """Learned from yesterday's matches: every on-topic paper before any newer off-topic one."""
    seed_history(sqlite_store)
    on_topic, off_topic = todays_papers(8, 8)
    owe(sqlite_store, [Target("slack", "C1")], BROAD, [*on_topic, *off_topic])
    batches = sqlite_store.pending_batches(now=NOW)
    wanted = broad_keywords(batches, 10)
    assert list(wanted) == [BROAD]
    first = rank_keywords(sqlite_store, wanted, before=NOW.replace(hour=0))
    order = sorted(first.orders[BROAD], key=first.orders[BROAD].__getitem__)
    assert set(order[:8]) == {p.arxiv_id for p in on_topic}
    assert first.background == 30 + 200 + 16  # every stored paper: fewer than the bound
    again = rank_keywords(sqlite_store, wanted, before=NOW.replace(hour=0))
    assert again.orders == first.orders  # a re-sent message is packed in the same order


def test_broad_keywords_off_and_below_the_threshold(sqlite_store: SqlStore) -> None:
    """relevance_from = 0 ranks nothing; a keyword under the threshold is not ranked."""
    on_topic, off_topic = todays_papers(3, 3)
    owe(sqlite_store, [Target("slack", "C1")], BROAD, [*on_topic, *off_topic])
    batches = sqlite_store.pending_batches(now=NOW)
    assert broad_keywords(batches, 0) == {}
    assert broad_keywords(batches, 7) == {}
    assert list(broad_keywords(batches, 6)) == [BROAD]


async def test_small_keyword_stays_newest_first_broad_one_is_ranked(
    tmp_path: Path, sqlite_store: SqlStore
) -> None:
    """Through deliver(): the broad keyword's list is ranked, a 4-paper keyword newest first."""
    seed_history(sqlite_store)
    on_topic, off_topic = todays_papers(6, 6)
    target = Target("slack", "C1")
    owe(sqlite_store, [target], BROAD, [*on_topic, *off_topic])
    small_on, small_off = todays_papers(2, 2, start=100)
    small = [*small_on, *small_off]
    owe(sqlite_store, [target], SMALL, small)
    recording = RecordingChannel(kind="slack")
    settings = settings_for_tests(service={"data_dir": str(tmp_path)})
    await run_delivery(settings, sqlite_store, {"slack": recording})
    (batch,) = recording.batches
    groups = dict(batch.by_keyword())
    assert {p.arxiv_id for p in groups[BROAD][:6]} == {p.arxiv_id for p in on_topic}
    assert [p.arxiv_id for p in groups[SMALL]] == newest_first(small)
    assert SMALL not in batch.ranks


async def test_relevance_off_keeps_newest_first(tmp_path: Path, sqlite_store: SqlStore) -> None:
    """[digest] relevance_from = 0: the broad keyword is listed newest first."""
    seed_history(sqlite_store)
    on_topic, off_topic = todays_papers(6, 6)
    owe(sqlite_store, [Target("slack", "C1")], BROAD, [*on_topic, *off_topic])
    recording = RecordingChannel(kind="slack")
    settings = settings_for_tests(service={"data_dir": str(tmp_path)}, digest={"relevance_from": 0})
    await run_delivery(settings, sqlite_store, {"slack": recording})
    (batch,) = recording.batches
    ((_, papers),) = batch.by_keyword()
    assert [p.arxiv_id for p in papers] == newest_first([*on_topic, *off_topic])


async def test_readme_keeps_newest_first_for_a_broad_keyword(
    tmp_path: Path, sqlite_store: SqlStore
) -> None:
    """The README snapshot lists the broad keyword's papers newest first, as DailyArXiv does."""
    seed_history(sqlite_store)
    on_topic, off_topic = todays_papers(6, 6)
    owe(sqlite_store, [Target("slack", "C1")], BROAD, [*on_topic, *off_topic])
    settings = settings_for_tests(
        service={"data_dir": str(tmp_path)}, keywords={"queries": [BROAD]}
    )
    await run_delivery(settings, sqlite_store, {"slack": RecordingChannel(kind="slack")})
    await render_snapshot(settings=settings, store=sqlite_store, now=NOW)
    text = settings.readme_path.read_text(encoding="utf-8")
    listed = re.findall(r"arxiv\.org/(?:abs|pdf)/(2503\.\d{5})", text)
    today = {p.arxiv_id for p in [*on_topic, *off_topic]}
    shown = list(dict.fromkeys(i for i in listed if i in today))
    assert shown == newest_first([*on_topic, *off_topic])


# -- at the wire -------------------------------------------------------------------------------


@pytest.fixture
async def smtp() -> AsyncIterator[FakeSmtpServer]:
    """A recording SMTP server on 127.0.0.1."""
    async with smtp_server() as server:
        yield server


async def test_email_shows_on_topic_first_and_the_cut_drops_the_least_relevant(
    smtp: FakeSmtpServer, sqlite_store: SqlStore
) -> None:
    """300 papers: the HTML shows the older on-topic ones first; the newer off-topic ones are
    what "and N more" counts."""
    seed_history(sqlite_store)
    on_topic, off_topic = todays_papers(150, 150)
    target = Target("email", "alice@lab.example.org")
    owe(sqlite_store, [target], BROAD, [*on_topic, *off_topic])
    sqlite_store.set_target_option(target, OPTION_CONFIRMED, YESTERDAY.isoformat())
    settings = email_settings(smtp, base_url="https://papers.lab.org")
    channel = EmailChannel(
        settings=settings,
        store=sqlite_store,
        links=EmailLinks.from_settings(settings),
        pool=SmtpPool(hostname="127.0.0.1", port=smtp.port, security="none", size=1),
        clock=lambda: NOW,
    )
    await run_delivery(settings, sqlite_store, {"email": channel})
    await channel.close()
    (received,) = smtp.messages
    _, html = parts(received.message)
    page = parse_html(html)
    shown = list(dict.fromkeys(re.findall(r"2503\.\d{5}", page.text)))
    on_ids = {p.arxiv_id for p in on_topic}
    assert 20 <= len(shown) < 300
    count = min(len(shown), 150)
    assert set(shown[:count]) <= on_ids  # the most relevant first, though older
    assert not set(shown[count:]) & on_ids
    (more,) = re.findall(rf"and (\d+) more papers? for {BROAD}", page.text)
    assert int(more) == 300 - len(shown)
    assert {p.arxiv_id for p in off_topic[-5:]}.isdisjoint(shown)  # newest, least relevant: cut


async def test_slack_post_lists_on_topic_first(tmp_path: Path, sqlite_store: SqlStore) -> None:
    """The fake Slack API receives the broad keyword's papers most relevant first."""
    seed_history(sqlite_store)
    on_topic, off_topic = todays_papers(6, 6)
    owe(sqlite_store, [Target("slack", "C0123TEST")], BROAD, [*on_topic, *off_topic])
    settings = settings_for_tests(service={"data_dir": str(tmp_path)})
    async with FakeSlackApi() as slack:
        client = build_web_client(
            token=BOT_TOKEN, api_url=slack.api_url, connection_retry_delay=0.0
        )
        await run_delivery(settings, sqlite_store, {"slack": SlackChannel(client=client)})
        text = "\n".join(
            block["text"]["text"]
            for call in slack.posted()
            for block in call.params["blocks"]
            if "text" in block
        )
    posted = list(dict.fromkeys(re.findall(r"arxiv\.org/abs/(2503\.\d{5})v\d", text)))
    assert len(posted) == 12
    assert set(posted[:6]) == {p.arxiv_id for p in on_topic}


async def test_discord_post_lists_on_topic_first(tmp_path: Path, sqlite_store: SqlStore) -> None:
    """The fake Discord API receives the embeds most relevant first."""
    import discord.http

    seed_history(sqlite_store)
    on_topic, off_topic = todays_papers(6, 6)
    channel_id = "123456789012345678"
    owe(sqlite_store, [Target("discord", channel_id)], BROAD, [*on_topic, *off_topic])
    settings = settings_for_tests(service={"data_dir": str(tmp_path)})
    before = discord.http.Route.BASE
    try:
        async with FakeDiscord() as fake:
            use_api_url(fake.api_base)
            async with DiscordChannel(token="bot-token", timeout=5.0) as channel:
                await run_delivery(settings, sqlite_store, {"discord": channel})
            embeds = [e for m in fake.channel_messages[channel_id] for e in m["embeds"]]
    finally:
        discord.http.Route.BASE = before
    posted = [re.findall(r"2503\.\d{5}", e["url"])[0] for e in embeds]
    assert len(posted) == 12
    assert set(posted[:6]) == {p.arxiv_id for p in on_topic}


async def test_a_retried_batch_is_ordered_as_before(tmp_path: Path, sqlite_store: SqlStore) -> None:
    """A post that failed is re-sent next time in the same order: the order comes from stored
    data, not from the run."""
    seed_history(sqlite_store)
    on_topic, off_topic = todays_papers(6, 6)
    owe(sqlite_store, [Target("slack", "C1")], BROAD, [*on_topic, *off_topic])
    settings = settings_for_tests(service={"data_dir": str(tmp_path)})
    failing = RecordingChannel(kind="slack", answer=OutcomeKind.RETRY, error="500")
    await run_delivery(settings, sqlite_store, {"slack": failing})
    healthy = RecordingChannel(kind="slack")
    later = NOW + timedelta(hours=2)  # past the retry backoff, the same day
    await deliver(
        settings=settings,
        store=sqlite_store,
        channels={"slack": healthy},
        now=later,
        tally=_Tally(),
    )
    (first,) = failing.batches
    (second,) = healthy.batches
    assert list(first.ranks) == [BROAD]
    assert second.ranks == first.ranks
    assert [p.arxiv_id for _, ps in second.by_keyword() for p in ps] == [
        p.arxiv_id for _, ps in first.by_keyword() for p in ps
    ]


async def test_apprise_notification_lists_on_topic_first(
    tmp_path: Path, sqlite_store: SqlStore
) -> None:
    """The recording HTTP server behind a json:// target receives the papers most relevant
    first."""
    seed_history(sqlite_store)
    on_topic, off_topic = todays_papers(6, 6)
    settings = settings_for_tests(service={"data_dir": str(tmp_path)})
    async with RecordingHttpServer() as server:
        url = f"json://127.0.0.1:{server.port}/hook"
        owe(sqlite_store, [Target("apprise", url)], BROAD, [*on_topic, *off_topic])
        await run_delivery(settings, sqlite_store, {"apprise": AppriseChannel()})
        (request,) = server.received
    body = request.json()["message"]
    posted = list(dict.fromkeys(re.findall(r"arxiv\.org/abs/(2503\.\d{5})v\d", body)))
    assert len(posted) == 12
    assert set(posted[:6]) == {p.arxiv_id for p in on_topic}
