"""TL;DRs ([summary]): written once per paper by the fake provider, never late, inert everywhere."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.apprise_channel import render_notification
from bot.discord_channel import render_embed
from bot.slack_channel import SlackChannel, build_web_client, render_paper
from digest.archive import render_digest_markdown
from digest.arxiv_source import ArxivSource
from digest.channels import send_all
from digest.config import Settings, settings_for_tests
from digest.cycle import run_cycle
from digest.domain import Batch, Delivery, Paper, RunReport, Target
from digest.mail import OPTION_CONFIRMED
from digest.mail.channel import EmailChannel
from digest.mail.links import EmailLinks
from digest.mail.render import render_digest
from digest.mail.smtp import SmtpPool
from digest.summary import (
    SUMMARY_KEY,
    SYSTEM_PROMPT,
    OpenAISummarizer,
    build_summarizer,
    clean_summary,
    stored_summaries,
    summarize_new_papers,
    summary_request,
)
from storage.sql_store import SqlStore
from tests.fakes.arxiv_server import ArxivStandIn
from tests.fakes.openai_api import FakeOpenAI, Slow, serve_openai
from tests.fakes.recording_channel import RecordingChannel
from tests.fakes.slack_api import BOT_TOKEN, FakeSlackApi
from tests.fakes.smtp import email_settings, smtp_server
from tests.mail_helpers import parse_html, parts
from tests.reference_papers import load_reference_papers

REFERENCE_DAY = datetime(2025, 2, 11, 12, 0, tzinfo=UTC)
KEYWORD = "Video Understanding"
HOSTILE = (
    "See https://evil.example/x and [click here](https://evil.example/y) www.evil.example "
    "<!channel> @everyone @channel <@U123> <b>bold</b> # Heading ```code``` *stars* ||spoiler||"
)


def sentence(paper: Paper) -> str:
    """The TL;DR the fake provider gives for `paper`."""
    return f"The paper {paper.arxiv_id} finds that a careful method works."


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAI]:
    """The fake provider, taught a one-sentence TL;DR for every reference paper."""
    async with serve_openai() as fake:
        for paper in load_reference_papers():
            fake.teach(summary_request(paper), sentence(paper))
        yield fake


@pytest.fixture
def arxiv() -> Iterator[ArxivStandIn]:
    """The arXiv stand-in serving the reference README's papers."""
    with ArxivStandIn(load_reference_papers()) as stand_in:
        yield stand_in


def cycle_settings(
    tmp_path: Path, arxiv: ArxivStandIn, openai: FakeOpenAI, **summary: Any
) -> Settings:
    """A cycle against the stand-in, summaries on through the fake provider."""
    return settings_for_tests(
        service={"data_dir": str(tmp_path)},
        arxiv={"api_url": arxiv.url, "categories": ["cs.CV", "cs.LG"], "retries": 0},
        keywords={"queries": [KEYWORD]},
        readme={"enabled": False},
        translation={"base_url": openai.url, "model": "translate-model"},
        summary={"enabled": True, **summary},
        digest={"archive_dir": str(tmp_path / "digests")},
    )


async def run(settings: Settings, channel: RecordingChannel, *, at: datetime) -> RunReport:
    """One cycle as `daily-papers run` does it, with the summariser the settings describe."""
    store = SqlStore.from_settings(settings)
    store.migrate()
    summarizer = build_summarizer(settings)
    assert summarizer is not None
    try:
        async with summarizer:
            with ArxivSource.from_settings(settings) as source:
                return await run_cycle(
                    settings=settings,
                    store=store,
                    source=source,
                    channels={"slack": channel},
                    now=lambda: at,
                    summarizer=summarizer,
                )
    finally:
        store.close()


def subscribe(settings: Settings) -> None:
    """A Slack channel subscribed to the keyword before the cycle."""
    with SqlStore.from_settings(settings) as store:
        store.migrate()
        store.add_subscription(Target("slack", "C1"), KEYWORD, now=REFERENCE_DAY)


def summary_requests(openai: FakeOpenAI) -> list[str]:
    """The user messages of the TL;DR requests the provider received."""
    return [r.text for r in openai.requests if r.system == SYSTEM_PROMPT]


async def test_summaries_are_delivered_archived_and_asked_for_once(
    tmp_path: Path, arxiv: ArxivStandIn, openai: FakeOpenAI
) -> None:
    """Cycle 1 writes each new paper's TL;DR before delivery; cycle 2 asks the provider nothing."""
    settings = cycle_settings(tmp_path, arxiv, openai, model="tldr-model")
    subscribe(settings)
    slack = RecordingChannel(kind="slack")
    report = await run(settings, slack, at=REFERENCE_DAY)
    assert report.ok, report.error
    (batch,) = slack.batches
    assert batch.summaries == {p.arxiv_id: sentence(p) for p in batch.papers}
    asked = summary_requests(openai)
    assert len(asked) == len(set(asked)) >= len(batch.papers)
    assert {r.body["model"] for r in openai.requests} == {"tldr-model"}
    digest = (tmp_path / "digests" / "2025-02-11.md").read_text(encoding="utf-8")
    assert f"**TL;DR**: {sentence(batch.papers[0])} \n" in digest

    again = await run(
        settings, RecordingChannel(kind="slack"), at=REFERENCE_DAY + timedelta(hours=1)
    )
    assert again.ok
    assert summary_requests(openai) == asked  # cached: not one more request


async def test_model_falls_back_to_the_translation_model(
    tmp_path: Path, arxiv: ArxivStandIn, openai: FakeOpenAI
) -> None:
    """`[summary] model = ''` asks translation.model; `prompt` replaces the system prompt."""
    settings = cycle_settings(tmp_path, arxiv, openai, prompt="One sentence, please.")
    summarizer = build_summarizer(settings)
    assert summarizer is not None
    paper = load_reference_papers()[0]
    async with summarizer:
        result = await summarizer.summarize(paper)
    assert result.translation is not None
    assert result.translation.abstract == sentence(paper)
    (request,) = openai.requests
    assert request.body["model"] == "translate-model"
    assert request.system == "One sentence, please."
    assert request.text == summary_request(paper)


async def test_a_slow_provider_delays_nothing_and_the_next_cycle_fills_in(
    tmp_path: Path, arxiv: ArxivStandIn, openai: FakeOpenAI
) -> None:
    """Past [summary] deadline_seconds the papers go out without a TL;DR; next cycle writes them."""
    settings = cycle_settings(tmp_path, arxiv, openai, deadline_seconds=0.3)
    subscribe(settings)
    openai.always(Slow(60.0))
    slack = RecordingChannel(kind="slack")
    started = time.perf_counter()
    report = await run(settings, slack, at=REFERENCE_DAY)
    assert time.perf_counter() - started < 5.0
    assert report.ok
    assert report.sent > 0
    assert slack.batches[0].summaries == {}
    openai._rules.clear()
    # The provider answers again and the next cycle has time for every paper (0.3 s may not be
    # enough on a loaded machine, and is not what this checks).
    patient = replace(settings, summary=replace(settings.summary, deadline_seconds=30.0))
    await run(patient, RecordingChannel(kind="slack"), at=REFERENCE_DAY + timedelta(hours=1))
    with SqlStore.from_settings(settings) as store:
        ids = slack.sent_ids()
        assert set(stored_summaries(store, ids)) == set(ids)


async def test_summaries_off_ask_nothing_and_show_nothing(
    tmp_path: Path, arxiv: ArxivStandIn, openai: FakeOpenAI
) -> None:
    """The default, [summary] enabled = false: no summariser, no TL;DR in the batch."""
    settings = cycle_settings(tmp_path, arxiv, openai, enabled=False)
    assert build_summarizer(settings) is None
    subscribe(settings)
    slack = RecordingChannel(kind="slack")
    store = SqlStore.from_settings(settings)
    try:
        with ArxivSource.from_settings(settings) as source:
            await run_cycle(
                settings=settings,
                store=store,
                source=source,
                channels={"slack": slack},
                now=lambda: REFERENCE_DAY,
            )
    finally:
        store.close()
    assert slack.batches[0].summaries == {}
    assert openai.requests == []


# -- a model's answer stays text ---------------------------------------------------------------


def test_clean_summary_drops_links_and_keeps_one_line() -> None:
    """Markdown links keep their text, bare URLs go, line breaks become spaces."""
    cleaned = clean_summary("It works.\n\nSee [the code](https://x.example) at https://y.example/z")
    assert cleaned == "It works. See the code at"


async def test_too_long_an_answer_is_retried_then_skipped(openai: FakeOpenAI) -> None:
    """An answer of several sentences is refused (asked again), then the paper has none."""
    paper = load_reference_papers()[0]
    openai.teach(summary_request(paper), "A long ramble. " * 40)
    async with OpenAISummarizer(
        base_url=openai.url, model="m", attempts=2, wait_initial=0.0, wait_max=0.0
    ) as summarizer:
        result = await summarizer.summarize(paper)
    assert result.translation is None
    assert result.error is not None
    assert "not one sentence" in result.error
    assert len(openai.requests) == 2


@pytest.fixture
async def hostile_summary(openai: FakeOpenAI, sqlite_store: SqlStore) -> tuple[Paper, str]:
    """A paper whose TL;DR came back hostile, summarised by the cycle's step and read back."""
    paper = load_reference_papers()[0]
    openai.teach(summary_request(paper), HOSTILE)
    sqlite_store.add_keyword(KEYWORD)
    sqlite_store.commit_harvest(
        papers=[paper], matches={KEYWORD: [paper.arxiv_id]}, deliverable=(), now=REFERENCE_DAY
    )
    settings = settings_for_tests(translation={"base_url": openai.url}, summary={"enabled": True})
    summarizer = build_summarizer(settings)
    assert summarizer is not None
    async with summarizer:
        report = await summarize_new_papers(
            settings=settings, store=sqlite_store, summarizer=summarizer, now=REFERENCE_DAY
        )
    assert report.translated == 1
    stored = stored_summaries(sqlite_store, [paper.arxiv_id])[paper.arxiv_id]
    assert sqlite_store.get_translations([paper.arxiv_id], SUMMARY_KEY)
    return paper, stored


def test_a_hostile_summary_is_stored_without_links(hostile_summary: tuple[Paper, str]) -> None:
    """What is stored has no URL left and is one line."""
    _, stored = hostile_summary
    assert "http" not in stored
    assert "www." not in stored
    assert "evil.example" not in stored
    assert "\n" not in stored
    assert "click here" in stored


def _batch(paper: Paper, summary: str, kind: str = "slack", address: str = "C1") -> Batch:
    return Batch(
        target=Target(kind, address),
        deliveries=(Delivery(1, KEYWORD, paper),),
        options={"confirmed": "2025-01-01T00:00:00+00:00"},
        summaries={paper.arxiv_id: summary},
    )


def test_a_hostile_summary_is_inert_in_slack(hostile_summary: tuple[Paper, str]) -> None:
    """Slack: no <!channel>, no tag, no preformatted block; the sentence is there, escaped."""
    paper, stored = hostile_summary
    text = render_paper(paper, None, stored)
    line = next(line for line in text.splitlines() if line.startswith("TL;DR: "))
    assert "<!channel>" not in line
    assert "&lt;!channel&gt;" in line
    assert "<@U123>" not in line
    assert "<b>" not in line
    assert "```" not in line
    assert text.count("<") == 1  # only the paper's own title link


def test_a_hostile_summary_is_inert_in_discord(hostile_summary: tuple[Paper, str]) -> None:
    """Discord: mentions and tags broken, Markdown escaped."""
    paper, stored = hostile_summary
    description = render_embed(paper, KEYWORD, summary=stored).description or ""
    line = description.split("\n\n")[0]
    assert line.startswith("**TL;DR:** ")
    body = line.removeprefix("**TL;DR:** ")
    assert "@everyone" not in body
    assert "<@U123>" not in body
    assert "```" not in body
    assert "||spoiler||" not in body
    assert "\\*stars\\*" in body


def test_a_hostile_summary_is_inert_in_apprise(hostile_summary: tuple[Paper, str]) -> None:
    """Apprise Markdown and text: mentions defused, no heading, HTML or code opened."""
    paper, stored = hostile_summary
    markdown = render_notification(_batch(paper, stored, "apprise", "json://h")).body
    (line,) = [line for line in markdown.splitlines() if line.startswith("TL;DR: ")]
    assert "@everyone" not in line
    assert "@channel" not in line
    assert "<b>" not in line
    assert "```" not in line
    assert "[click here]" not in line
    text = render_notification(_batch(paper, stored, "apprise", "json://h"), markdown=False).body
    assert "TL;DR: " in text
    assert "@everyone" not in text


def test_a_hostile_summary_is_inert_in_email(hostile_summary: tuple[Paper, str]) -> None:
    """Email: escaped in HTML (no tag, no link to the model's URL), plain in text."""
    paper, stored = hostile_summary
    settings = email_settings(None, base_url="https://papers.lab.org")
    rendered = render_digest(
        _batch(paper, stored, "email", "alice@lab.example.org"),
        links=EmailLinks.from_settings(settings),
        now=REFERENCE_DAY,
        timezone="UTC",
        list_name="papers",
    )
    assert "&lt;b&gt;bold&lt;/b&gt;" in rendered.html
    assert "<b>bold" not in rendered.html
    page = parse_html(rendered.html)
    assert not any("evil" in link for link in page.links)
    assert f"TL;DR: {stored}" in " ".join(page.text.split())
    assert f"TL;DR: {stored}" in " ".join(rendered.text.split())


def test_a_hostile_summary_is_inert_in_the_markdown_digest(
    hostile_summary: tuple[Paper, str],
) -> None:
    """The Markdown digest: one TL;DR line that opens no heading, HTML or code block."""
    paper, stored = hostile_summary
    markdown = render_digest_markdown([paper], {}, None, {paper.arxiv_id: stored})
    (line,) = [line for line in markdown.splitlines() if line.startswith("**TL;DR**: ")]
    assert "<b>" not in line
    assert "```" not in line
    assert markdown.count("\n---\n") == 1
    assert not any(line.startswith("# Heading") for line in markdown.splitlines())


async def test_a_hostile_summary_arrives_inert_at_slack_and_smtp(
    hostile_summary: tuple[Paper, str], sqlite_store: SqlStore
) -> None:
    """At the wire: the fake Slack API gets the TL;DR escaped; the SMTP server gets it escaped
    in the HTML part, with no link to the model's URLs."""
    paper, stored = hostile_summary
    async with FakeSlackApi() as slack:
        client = build_web_client(
            token=BOT_TOKEN, api_url=slack.api_url, connection_retry_delay=0.0
        )
        await send_all(SlackChannel(client=client), _batch(paper, stored))
        posted = "\n".join(
            block["text"]["text"]
            for call in slack.posted()
            for block in call.params["blocks"]
            if "text" in block
        )
    (line,) = [line for line in posted.splitlines() if line.startswith("TL;DR: ")]
    assert "&lt;!channel&gt;" in line
    assert "<" not in line
    async with smtp_server() as smtp:
        settings = email_settings(smtp, base_url="https://papers.lab.org")
        channel = EmailChannel(
            settings=settings,
            store=sqlite_store,
            links=EmailLinks.from_settings(settings),
            pool=SmtpPool(hostname="127.0.0.1", port=smtp.port, security="none", size=1),
            clock=lambda: REFERENCE_DAY,
        )
        batch = replace(
            _batch(paper, stored, "email", "alice@lab.example.org"),
            options={OPTION_CONFIRMED: REFERENCE_DAY.isoformat()},
        )
        await send_all(channel, batch)
        await channel.close()
        (received,) = smtp.messages
    text, html = parts(received.message)
    assert "&lt;b&gt;bold&lt;/b&gt;" in html
    assert not any("evil" in link for link in parse_html(html).links)
    assert "TL;DR: " in text
