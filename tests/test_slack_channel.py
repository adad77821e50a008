"""SlackChannel: the daily post, its limits, escaping and the failure table, at a fake Slack API."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.slack_channel import (
    MAX_BLOCKS,
    MAX_SECTION_CHARS,
    PERMANENT_ERRORS,
    TOKEN_ERRORS,
    SlackChannel,
    build_web_client,
    escape_mrkdwn,
)
from digest.channels import send_all
from digest.config import Secrets, settings_for_tests
from digest.domain import Batch, Delivery, OutcomeKind, Paper, Target
from tests.fakes.slack_api import (
    BOT_TOKEN,
    FakeAnswer,
    FakeSlackApi,
    error,
    ok,
    rate_limited,
    server_error,
)
from tests.reference_papers import load_reference_sections

TARGET = Target("slack", "C0123TEST")
T0 = datetime(2025, 2, 5, 12, 0, tzinfo=UTC)


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlackApi]:
    """A running fake Slack Web API."""
    async with FakeSlackApi() as fake:
        yield fake


def _channel(slack: FakeSlackApi, **kwargs: Any) -> SlackChannel:
    client = build_web_client(
        token=BOT_TOKEN, api_url=slack.api_url, connection_retry_delay=0.0, **kwargs
    )
    return SlackChannel(client=client)


def _reference_batch(*keywords: str, subscription_base: int = 1) -> Batch:
    deliveries = []
    sections = [s for s in load_reference_sections() if not keywords or s.keyword in keywords]
    for index, section in enumerate(sections):
        for paper in section.papers:
            deliveries.append(Delivery(subscription_base + index, section.keyword, paper))
    return Batch(target=TARGET, deliveries=tuple(deliveries))


def _paper(n: int, **fields: Any) -> Paper:
    values: dict[str, Any] = {
        "arxiv_id": f"2502.{n:05d}",
        "version": 1,
        "title": f"Paper number {n}",
        "authors": ("Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra"),
        "abstract": "An abstract.",
        "published": T0 - timedelta(minutes=n),
        "updated": T0 - timedelta(minutes=n),
        "primary_category": "cs.LG",
        "comment": "12 pages",
    }
    values.update(fields)
    return Paper(**values)


def _posted_text(call_params: dict[str, Any]) -> str:
    """All mrkdwn/plain text of one posted message's blocks."""
    return "\n".join(block["text"]["text"] for block in call_params["blocks"] if "text" in block)


def _posted_ids(slack: FakeSlackApi) -> list[str]:
    """arXiv ids linked in the accepted posts, in order, one per (keyword, paper) occurrence."""
    ids: list[str] = []
    for call in slack.posted():
        ids += re.findall(r"<http://arxiv\.org/abs/([0-9.]+)v\d+\|", _posted_text(call.params))
    return ids


async def test_one_message_grouped_by_keyword_with_all_fields(slack: FakeSlackApi) -> None:
    """A normal day: one message, keyword headings, linked bold title, authors, date, category."""
    batch = _reference_batch("Video Anomaly Detection", "Video Understanding")
    outcomes = await send_all(_channel(slack), batch)
    assert {o.kind for o in outcomes} == {OutcomeKind.SENT}
    assert len(outcomes) == len(batch.deliveries)
    [call] = slack.posted()
    params = call.params
    assert params["channel"] == TARGET.address
    assert params["unfurl_links"] is False
    assert params["unfurl_media"] is False
    assert params["text"].startswith("40 new arXiv papers: Video Anomaly Detection (20)")
    assert len(params["blocks"]) <= MAX_BLOCKS
    text = _posted_text(params)
    assert text.index("*Video Anomaly Detection* · 20 new") < text.index(
        "*Video Understanding* · 20 new"
    )
    first = batch.by_keyword()[0][1][0]
    assert f"*<{first.abs_url}|{escape_mrkdwn(first.title)}>*" in text
    assert first.updated.date().isoformat() in text
    assert first.primary_category in text
    assert sorted(_posted_ids(slack)) == sorted(d.paper.arxiv_id for d in batch.deliveries)


async def test_authors_first_three_then_et_al_and_comment(slack: FakeSlackApi) -> None:
    """Four authors show as three plus et al.; the comment follows."""
    batch = Batch(TARGET, (Delivery(1, "graphs", _paper(1)),))
    await send_all(_channel(slack), batch)
    text = _posted_text(slack.posted()[0].params)
    assert "Ada Lovelace, Alan Turing, Grace Hopper et al. · 2025-02-05 · cs.LG" in text
    assert "Edsger" not in text
    assert "Comment: 12 pages" in text
    assert slack.posted()[0].params["text"] == "1 new arXiv paper: graphs (1)"


async def test_translated_title_shown_under_original(slack: FakeSlackApi) -> None:
    """With a translation in the batch, the translated title follows the original."""
    paper = _paper(1)
    batch = Batch(
        TARGET,
        (Delivery(1, "graphs", paper),),
        language="zh",
        translations={paper.arxiv_id: ("第一篇论文 <b>", "摘要")},
    )
    await send_all(_channel(slack), batch)
    text = _posted_text(slack.posted()[0].params)
    assert "Paper number 1>*\n_第一篇论文 &lt;b&gt;_\n" in text


async def test_a_hostile_translated_title_stays_one_inert_line(slack: FakeSlackApi) -> None:
    """A model's title with breaks, ``` fences, links and mentions: one escaped, inert line."""
    papers = [_paper(1), _paper(2)]
    hostile = "第一篇\n```\n<!channel> <https://evil.example|点击> <@U0ADMIN>\n# 标题\n---"
    batch = Batch(
        TARGET,
        tuple(Delivery(1, "graphs", p) for p in papers),
        language="zh",
        translations={p.arxiv_id: (hostile, "摘要") for p in papers},
    )
    await send_all(_channel(slack), batch)
    params = slack.posted()[0].params
    text = _posted_text(params)
    assert "`" not in text
    for forbidden in ("<!channel>", "<https://evil", "<@U0ADMIN>"):
        assert forbidden not in text
    shown = (
        "_第一篇 ˋˋˋ &lt;!channel&gt; &lt;https://evil.example|点击&gt; &lt;@U0ADMIN&gt; "
        "# 标题 ---_"
    )
    assert text.count(f"\n{shown}\n") == 2  # one line under each title
    assert sorted(re.findall(r"<(http[^|>]*)\|", text)) == sorted(p.abs_url for p in papers)


async def test_hostile_titles_cannot_ping_or_forge_links(slack: FakeSlackApi) -> None:
    """Titles, authors, comments and keywords are mrkdwn-escaped: no <!channel>, no fake link."""
    paper = _paper(
        1,
        title="Hi <!channel> see <https://evil.example|arxiv.org> & more",
        authors=("<@U0ADMIN>",),
        comment="<!here> code at <https://evil.example>",
    )
    batch = Batch(TARGET, (Delivery(1, "<!everyone> & co", paper),))
    await send_all(_channel(slack), batch)
    params = slack.posted()[0].params
    text = _posted_text(params) + params["text"]
    for forbidden in ("<!channel>", "<!here>", "<!everyone>", "<https://evil", "<@U0ADMIN>"):
        assert forbidden not in text
    assert "Hi &lt;!channel&gt; see &lt;https://evil.example|arxiv.org&gt; &amp; more" in text
    # The only links left are the ones we made.
    assert re.findall(r"<(http[^|>]*)\|", text) == [paper.abs_url]


async def test_long_batch_continues_in_thread_replies_without_losing_a_paper(
    slack: FakeSlackApi,
) -> None:
    """Past 50 blocks and 3000 characters per section, the post continues in its thread."""
    long_comment = "c" * 450
    papers = [
        _paper(n, title=f"A fairly long title for paper {n} " + "x" * 200, comment=long_comment)
        for n in range(300)
    ]
    deliveries = [Delivery(1 + n % 3, f"keyword {n % 3}", p) for n, p in enumerate(papers)]
    batch = Batch(TARGET, tuple(deliveries))
    outcomes = await send_all(_channel(slack), batch)
    assert [o.kind for o in outcomes].count(OutcomeKind.SENT) == 300
    posts = slack.posted()
    assert len(posts) > 1
    root_ts = posts[0].body["ts"] if posts[0].body else None
    assert "thread_ts" not in posts[0].params
    for reply in posts[1:]:
        assert reply.params["thread_ts"] == root_ts
        assert reply.params["text"]  # a fallback on every message
    for post in posts:
        assert len(post.params["blocks"]) <= MAX_BLOCKS
        for block in post.params["blocks"]:
            if block["type"] == "section":
                assert len(block["text"]["text"]) <= MAX_SECTION_CHARS
    posted = _posted_ids(slack)
    assert sorted(posted) == sorted(p.arxiv_id for p in papers)  # each exactly once


async def test_same_paper_under_two_keywords_reported_for_both(slack: FakeSlackApi) -> None:
    """A paper matching two subscribed keywords is shown under each and both deliveries sent."""
    paper = _paper(1)
    batch = Batch(TARGET, (Delivery(1, "alpha", paper), Delivery(2, "beta", paper)))
    outcomes = await send_all(_channel(slack), batch)
    assert sorted((o.subscription_id, o.kind) for o in outcomes) == [
        (1, OutcomeKind.SENT),
        (2, OutcomeKind.SENT),
    ]
    assert _posted_ids(slack) == [paper.arxiv_id, paper.arxiv_id]


async def test_rate_limit_waits_retry_after_then_posts_once(slack: FakeSlackApi) -> None:
    """429 with Retry-After: the client waits as told and posts; the channel shows it once."""
    slack.script("chat.postMessage", rate_limited(0), rate_limited(0))
    batch = Batch(TARGET, (Delivery(1, "graphs", _paper(1)),))
    outcomes = await send_all(_channel(slack), batch)
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT]
    assert [c.status for c in slack.calls_to("chat.postMessage")] == [429, 429, 200]
    assert len(slack.posted()) == 1


async def test_rate_limit_retry_after_one_second_is_obeyed(slack: FakeSlackApi) -> None:
    """Retry-After: 1 is waited for (the retry comes at least a second later)."""
    slack.script("chat.postMessage", rate_limited(1))
    batch = Batch(TARGET, (Delivery(1, "graphs", _paper(1)),))
    started = time.monotonic()
    outcomes = await send_all(_channel(slack), batch)
    assert time.monotonic() - started >= 1.0
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT]


async def test_rate_limit_is_bounded(slack: FakeSlackApi) -> None:
    """Endless 429s stop after the configured retries: RETRY, nothing posted."""
    slack.script("chat.postMessage", *[rate_limited(0)] * 10)
    batch = Batch(TARGET, (Delivery(1, "graphs", _paper(1)),))
    outcomes = await send_all(_channel(slack, rate_limit_retries=2), batch)
    assert [o.kind for o in outcomes] == [OutcomeKind.RETRY]
    assert len(slack.calls_to("chat.postMessage")) == 3
    assert slack.posted() == []


async def test_retry_after_longer_than_allowed_is_not_waited(slack: FakeSlackApi) -> None:
    """A Retry-After beyond max_retry_after is left for the next cycle rather than slept."""
    slack.script("chat.postMessage", rate_limited(3600))
    batch = Batch(TARGET, (Delivery(1, "graphs", _paper(1)),))
    outcomes = await send_all(_channel(slack, max_retry_after=5), batch)
    assert [o.kind for o in outcomes] == [OutcomeKind.RETRY]
    assert len(slack.calls_to("chat.postMessage")) == 1


@pytest.mark.parametrize("code", sorted(PERMANENT_ERRORS))
async def test_permanent_errors_disable_with_reason(slack: FakeSlackApi, code: str) -> None:
    """Each error that means the channel is gone is PERMANENT, one that means Slack refuses the
    bot token UNAUTHORIZED (both pause the subscription), named in the reason."""
    slack.script("chat.postMessage", error(code))
    batch = _reference_batch("Video Understanding")
    outcomes = await send_all(_channel(slack), batch)
    expected = OutcomeKind.UNAUTHORIZED if code in TOKEN_ERRORS else OutcomeKind.PERMANENT
    assert {o.kind for o in outcomes} == {expected}
    assert expected.disables
    assert len(outcomes) == len(batch.deliveries)
    assert all(o.error and o.error.startswith(code) for o in outcomes)


@pytest.mark.parametrize(
    "answer",
    [
        error("internal_error"),
        error("fatal_error"),
        error("msg_too_long"),
        server_error(500),
        server_error(503),
        FakeAnswer(status=200, body={"ok": False, "error": "request_timeout"}),
    ],
)
async def test_other_errors_retry_next_cycle(slack: FakeSlackApi, answer: FakeAnswer) -> None:
    """Any other error is transient: every delivery RETRY, none lost, none disabled."""
    slack.script("chat.postMessage", answer)
    batch = Batch(TARGET, (Delivery(1, "graphs", _paper(1)), Delivery(1, "graphs", _paper(2))))
    outcomes = await send_all(_channel(slack), batch)
    assert [o.kind for o in outcomes] == [OutcomeKind.RETRY, OutcomeKind.RETRY]
    assert all(o.error for o in outcomes)


async def test_connection_refused_is_retry() -> None:
    """Slack unreachable: RETRY, and send() does not raise."""
    async with FakeSlackApi() as gone:
        url = gone.api_url
    channel = SlackChannel(
        client=build_web_client(token=BOT_TOKEN, api_url=url, connection_retry_delay=0.0)
    )
    outcomes = await send_all(channel, Batch(TARGET, (Delivery(1, "graphs", _paper(1)),)))
    assert [o.kind for o in outcomes] == [OutcomeKind.RETRY]


async def test_timeout_is_retry(slack: FakeSlackApi) -> None:
    """A Slack that does not answer in time: RETRY."""
    slack.script("chat.postMessage", FakeAnswer(body={"ok": True}, delay=2.0))
    channel = SlackChannel(
        client=build_web_client(
            token=BOT_TOKEN, api_url=slack.api_url, timeout=1, connection_retry_delay=0.0
        )
    )
    outcomes = await send_all(channel, Batch(TARGET, (Delivery(1, "graphs", _paper(1)),)))
    assert [o.kind for o in outcomes] == [OutcomeKind.RETRY]


async def test_failure_in_thread_reports_posted_papers_sent_and_rest_retry(
    slack: FakeSlackApi,
) -> None:
    """A thread reply failing mid-way: what was posted is SENT, only the rest is retried."""
    papers = [_paper(n, comment="c" * 450) for n in range(400)]
    batch = Batch(TARGET, tuple(Delivery(1, "graphs", p) for p in papers))
    slack.script("chat.postMessage", ok(), error("internal_error"))
    outcomes = await send_all(_channel(slack), batch)
    posted = set(_posted_ids(slack))
    assert 0 < len(posted) < len(papers)
    sent = {o.arxiv_id for o in outcomes if o.kind is OutcomeKind.SENT}
    retry = {o.arxiv_id for o in outcomes if o.kind is OutcomeKind.RETRY}
    assert sent == posted
    assert retry == {p.arxiv_id for p in papers} - posted
    assert len(outcomes) == len(papers)
    # The retried papers go out next cycle; together nothing is missing and nothing doubled.
    rest = Batch(TARGET, tuple(d for d in batch.deliveries if d.paper.arxiv_id in retry))
    second = await send_all(_channel(slack), rest)
    assert {o.kind for o in second} == {OutcomeKind.SENT}
    assert sorted(_posted_ids(slack)) == sorted(p.arxiv_id for p in papers)


async def test_channel_archived_mid_thread_keeps_posted_papers_sent(slack: FakeSlackApi) -> None:
    """A permanent error on a thread reply: posted papers SENT, the rest PERMANENT."""
    papers = [_paper(n, comment="c" * 450) for n in range(400)]
    batch = Batch(TARGET, tuple(Delivery(1, "graphs", p) for p in papers))
    slack.script("chat.postMessage", ok(), error("is_archived"))
    outcomes = await send_all(_channel(slack), batch)
    kinds = {o.kind for o in outcomes}
    assert kinds == {OutcomeKind.SENT, OutcomeKind.PERMANENT}
    assert {o.arxiv_id for o in outcomes if o.kind is OutcomeKind.SENT} == set(_posted_ids(slack))


async def test_notify_posts_escaped_plain_text(slack: FakeSlackApi) -> None:
    """Operator alerts are plain escaped text; True when Slack accepted, False otherwise."""
    channel = _channel(slack)
    assert await channel.notify(TARGET, "arXiv failed 3 cycles <!channel> & more")
    [call] = slack.posted()
    assert call.params["text"] == "arXiv failed 3 cycles &lt;!channel&gt; &amp; more"
    slack.script("chat.postMessage", error("channel_not_found"))
    assert not await channel.notify(TARGET, "again")


async def test_empty_batch_posts_nothing(slack: FakeSlackApi) -> None:
    """No deliveries: no call at all."""
    assert await send_all(_channel(slack), Batch(TARGET, ())) == []
    assert slack.calls == []


def test_from_settings_needs_the_bot_token() -> None:
    """Without SLACK_BOT_TOKEN the channel is not built."""
    assert SlackChannel.from_settings(settings_for_tests()) is None


async def test_from_settings_posts_to_the_configured_api_url(slack: FakeSlackApi) -> None:
    """slack.api_url decides where the Web API calls go (GovSlack, proxies, tests)."""
    settings = dataclasses.replace(
        settings_for_tests(slack={"api_url": slack.api_url}),
        secrets=Secrets(slack_bot_token=BOT_TOKEN),
    )
    channel = SlackChannel.from_settings(settings)
    assert channel is not None
    outcomes = await send_all(channel, Batch(TARGET, (Delivery(1, "graphs", _paper(1)),)))
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT]
    assert slack.posted()[0].token == BOT_TOKEN
