"""DiscordChannel and DiscordWebhookChannel against the fake Discord REST API on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import discord.http
import pytest

from bot.discord_channel import (
    LOGIN_REFUSED,
    MAX_EMBED_TOTAL,
    MAX_EMBEDS,
    DiscordChannel,
    DiscordWebhookChannel,
    channel_factory,
    escape_text,
    fit,
    render_embed,
    render_messages,
    split_text,
    subscribe_configured_webhooks,
    use_api_url,
    validate_target,
    validate_webhook_url,
    webhook_channel_factory,
    webhook_subscriptions,
)
from digest.channels import send_all
from digest.cli import main as cli_main
from digest.config import settings_for_tests
from digest.domain import Batch, Delivery, OutcomeKind, Paper, Target
from digest.errors import ConfigError
from digest.pacing import TokenBucket
from storage.sql_store import SqlStore
from tests.fakes.discord_api import (
    MISSING_ACCESS,
    UNKNOWN_CHANNEL,
    FakeDiscord,
    Scripted,
    webhook_url,
)
from tests.reference_papers import load_reference_papers

CHANNEL = "123456789012345678"
ROUTE = f"POST /channels/{CHANNEL}/messages"
HOOK_ID = "223456789012345678"
HOOK_URL = webhook_url(HOOK_ID)
HOOK_ROUTE = f"POST /webhooks/{HOOK_ID}/{HOOK_URL.rsplit('/', 1)[1]}"


def make_paper(n: int, **changes: object) -> Paper:
    """A small synthetic paper numbered `n` (newer for larger n)."""
    when = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=n)
    paper = Paper(
        arxiv_id=f"2501.{n:05d}",
        version=1,
        title=f"Paper number {n}",
        authors=("Ada Lovelace", "Alan Turing"),
        abstract=f"Abstract of paper {n}.",
        published=when,
        updated=when,
        primary_category="cs.LG",
        categories=("cs.LG", "stat.ML"),
    )
    return replace(paper, **changes)  # type: ignore[arg-type]


def make_batch(papers: list[Paper], *, target: Target | None = None, keyword: str = "k") -> Batch:
    """A batch owing `papers` to one subscription (id 1) of `target`."""
    return Batch(
        target=target or Target("discord", CHANNEL),
        deliveries=tuple(Delivery(subscription_id=1, keyword=keyword, paper=p) for p in papers),
    )


@pytest.fixture(autouse=True)
def restore_route_base() -> Iterator[None]:
    """Route.BASE is process-wide: put discord.py's default back after each test."""
    before = discord.http.Route.BASE
    yield
    discord.http.Route.BASE = before


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    """A fake Discord with discord.py pointed at it."""
    async with FakeDiscord() as server:
        use_api_url(server.api_base)
        yield server


@pytest.fixture
async def channel() -> AsyncIterator[DiscordChannel]:
    """A bot channel with a short timeout (the hang test waits for it)."""
    async with DiscordChannel(token="bot-token", timeout=0.5) as chan:
        yield chan


@pytest.fixture
async def webhook_channel() -> AsyncIterator[DiscordWebhookChannel]:
    """A webhook channel with a short timeout."""
    async with DiscordWebhookChannel(timeout=0.5) as chan:
        yield chan


# -- rendering --------------------------------------------------------------------------------


def test_embed_has_linked_title_authors_date_categories_abstract_comment() -> None:
    """One paper renders to exactly the expected embed."""
    paper = make_paper(
        7,
        authors=("A. One", "B. Two", "C. Three", "D. Four"),
        comment="Accepted at ICML 2025",
        version=2,
    )
    embed = render_embed(paper, "diffusion models").to_dict()
    assert embed == {
        "title": "Paper number 7",
        "url": "http://arxiv.org/abs/2501.00007v2",
        "description": "Abstract of paper 7.",
        "color": 0xB31B1B,
        "type": "rich",
        "flags": 0,
        "author": {"name": "A. One, B. Two, C. Three et al."},
        "fields": [
            {"name": "Date", "value": "2025-01-08", "inline": True},
            {"name": "Categories", "value": "cs.LG, stat.ML", "inline": True},
            {"name": "Comment", "value": "Accepted at ICML 2025", "inline": False},
        ],
        "footer": {"text": "diffusion models · arXiv:2501.00007v2"},
    }


def test_hostile_title_cannot_mention_or_format() -> None:
    """@everyone, role mentions, links and Markdown in paper text come out inert."""
    paper = make_paper(
        1,
        title="@everyone **Bold** [click](http://evil) <@&123456789012345678> __u__",
        abstract="# Heading\n> quote ||spoiler|| `code` @here",
        comment="*x*",
    )
    embed = render_embed(paper, "k")
    assert embed.title is not None
    assert embed.description is not None
    assert "@everyone" not in embed.title
    assert "@\u200beveryone" in embed.title
    assert "\\*\\*Bold\\*\\*" in embed.title
    assert "\\[click" in embed.title
    assert "<@&123456789012345678>" not in embed.title
    assert "\\_\\_u\\_\\_" in embed.title
    assert "@here" not in embed.description
    assert embed.description.startswith("\\# Heading")
    assert "\\|\\|spoiler\\|\\|" in embed.description
    assert embed.fields[2].value == "\\*x\\*"


def test_fit_never_splits_an_escape_and_respects_the_limit() -> None:
    """Shortened text stays within the limit and never ends in a lone backslash."""
    text = "a_b " * 300
    for limit in (10, 11, 12, 100, 1023):
        out = fit(text, limit)
        assert len(out) <= limit
        assert out.endswith("…")
        assert not out[:-1].endswith("\\")
    assert fit("short", 100) == "short"


def test_every_embed_field_within_discord_limits() -> None:
    """Huge title, author list, abstract and comment are cut to the per-field limits."""
    paper = make_paper(
        1,
        title="T" * 1000,
        authors=tuple("N" * 300 for _ in range(5)),
        abstract="word " * 3000,
        comment="c " * 2000,
        categories=tuple(f"cs.{i}" for i in range(400)),
    )
    embed = render_embed(paper, "q" * 3000, translated_title="译" * 500)
    assert len(embed.title or "") <= 256
    assert len(embed.description or "") <= 4096
    assert len(embed.author.name or "") <= 256
    assert len(embed.footer.text or "") <= 2048
    assert all(len(f.value or "") <= 1024 for f in embed.fields)
    assert len(embed) <= MAX_EMBED_TOTAL


def test_translated_title_shown_under_the_original() -> None:
    """A translation in the batch appears in italics at the top of the description."""
    paper = make_paper(3)
    batch = replace(
        make_batch([paper]), language="zh", translations={paper.arxiv_id: ("论文三", "摘要")}
    )
    (message,) = render_messages(batch)
    embed = message.embeds[0]
    assert embed.title == "Paper number 3"
    assert embed.description == "*论文三*\n\nAbstract of paper 3."


def test_split_at_ten_embeds_and_six_thousand_characters() -> None:
    """Messages hold at most 10 embeds and 6000 characters, and every paper is in one."""
    small = [make_paper(i) for i in range(1, 24)]
    messages = render_messages(make_batch(small))
    assert [len(m.embeds) for m in messages] == [10, 10, 3]
    big = [make_paper(i, abstract="x" * 590, title="y" * 250, comment="z" * 1000) for i in range(9)]
    messages = render_messages(make_batch(big))
    assert len(messages) > 1
    for m in messages:
        assert len(m.embeds) <= MAX_EMBEDS
        assert sum(len(e) for e in m.embeds) <= MAX_EMBED_TOTAL
    carried = [d.paper.arxiv_id for m in messages for d in m.deliveries]
    assert sorted(carried) == sorted(p.arxiv_id for p in big)


def test_reference_papers_all_rendered_once_per_keyword() -> None:
    """The reference papers under two keywords: each delivery carried by exactly one message."""
    papers = list({p.arxiv_id: p for p in load_reference_papers()}.values())
    deliveries = [Delivery(1, "alpha", p) for p in papers] + [
        Delivery(2, "beta", p) for p in papers[:10]
    ]
    batch = Batch(target=Target("discord", CHANNEL), deliveries=tuple(deliveries))
    messages = render_messages(batch)
    carried = [(d.subscription_id, d.paper.arxiv_id) for m in messages for d in m.deliveries]
    assert sorted(carried) == sorted((d.subscription_id, d.paper.arxiv_id) for d in deliveries)
    assert sum(len(m.embeds) for m in messages) == len(deliveries)
    assert all(len(m.embeds) <= MAX_EMBEDS for m in messages)
    assert all(sum(len(e) for e in m.embeds) <= MAX_EMBED_TOTAL for m in messages)
    assert messages[0].content == f"**{len(papers)} new arXiv papers** (1/{len(messages)})"


def test_split_text_cuts_at_lines() -> None:
    """Long plain text is cut into pieces of at most the limit, at line breaks."""
    text = "\n".join(["x" * 30] * 10)
    pieces = split_text(text, 100)
    assert all(len(p) <= 100 for p in pieces)
    assert "\n".join(pieces) == text


# -- the bot channel against the fake server ---------------------------------------------------


async def test_send_posts_exact_embeds_with_mentions_off(
    fake: FakeDiscord, channel: DiscordChannel
) -> None:
    """A batch becomes one message with one embed per paper, allowed_mentions empty."""
    papers = [make_paper(1), make_paper(2)]
    outcomes = await send_all(channel, make_batch(papers, keyword="diffusion"))
    assert {(o.arxiv_id, o.kind) for o in outcomes} == {
        ("2501.00001", OutcomeKind.SENT),
        ("2501.00002", OutcomeKind.SENT),
    }
    (call,) = fake.calls_to(ROUTE)
    assert call.headers["Authorization"] == "Bot bot-token"
    assert call.body["allowed_mentions"] == {"parse": []}
    assert call.body["content"] == "**2 new arXiv papers**"
    expected = [render_embed(p, "diffusion").to_dict() for p in (papers[1], papers[0])]
    assert call.body["embeds"] == expected
    assert len(fake.channel_messages[CHANNEL]) == 1


async def test_a_hostile_translated_title_is_one_inert_line(
    fake: FakeDiscord, channel: DiscordChannel
) -> None:
    """A model's title with line breaks, Markdown blocks, tags and mentions: one escaped line."""
    paper = make_paper(1)
    hostile = "论文\n# 标题\n>>> 引用\n```\n<@123> <#456> <t:1:R> </papers:1> @everyone ||x||"
    batch = replace(
        make_batch([paper]), language="zh", translations={paper.arxiv_id: (hostile, "摘要")}
    )
    await send_all(channel, batch)
    (call,) = fake.calls_to(ROUTE)
    description = call.body["embeds"][0]["description"]
    first, _, rest = description.partition("\n\n")
    assert rest == "Abstract of paper 1."  # nothing swallowed, nothing added
    assert first.startswith("*论文 ")
    assert first.endswith("*")
    assert "\n" not in first
    for tag in ("<@123>", "<#456>", "<t:1:R>", "</papers:1>", "@everyone", "```", "||x||"):
        assert tag not in first
    assert call.body["allowed_mentions"] == {"parse": []}


async def test_many_papers_go_out_in_several_messages(
    fake: FakeDiscord, channel: DiscordChannel
) -> None:
    """25 papers: three messages, 10 + 10 + 5 embeds, every paper SENT."""
    papers = [make_paper(i) for i in range(1, 26)]
    outcomes = await send_all(channel, make_batch(papers))
    assert [len(m["embeds"]) for m in fake.channel_messages[CHANNEL]] == [10, 10, 5]
    assert sorted(o.arxiv_id for o in outcomes if o.kind is OutcomeKind.SENT) == sorted(
        p.arxiv_id for p in papers
    )


async def test_429_is_waited_out_and_retried(fake: FakeDiscord, channel: DiscordChannel) -> None:
    """A 429 with retry_after 0 is retried by discord.py; the paper is posted once."""
    fake.script(ROUTE, fake.rate_limited(retry_after=0))
    outcomes = await send_all(channel, make_batch([make_paper(1)]))
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT]
    assert len(fake.calls_to(ROUTE)) == 2
    assert len(fake.channel_messages[CHANNEL]) == 1


async def test_global_429_is_waited_out(fake: FakeDiscord, channel: DiscordChannel) -> None:
    """A global 429 holds every request, then the post goes through."""
    fake.script(ROUTE, fake.rate_limited(retry_after=0, is_global=True))
    outcomes = await send_all(channel, make_batch([make_paper(1)]))
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT]
    assert len(fake.calls_to(ROUTE)) == 2


async def test_exhausted_bucket_delays_the_next_message(
    fake: FakeDiscord, channel: DiscordChannel
) -> None:
    """X-RateLimit-Remaining 0 on a success makes discord.py wait Reset-After before the next."""
    exhausted = {
        "X-RateLimit-Limit": "1",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset-After": "0.3",
        "X-RateLimit-Bucket": "tightbucket",
    }
    fake.script(ROUTE, Scripted(200, {"id": "1"}, exhausted), Scripted(200, {"id": "2"}, exhausted))
    papers = [make_paper(i) for i in range(1, 16)]  # two messages
    outcomes = await send_all(channel, make_batch(papers))
    assert all(o.kind is OutcomeKind.SENT for o in outcomes)
    first, second = fake.calls_to(ROUTE)
    assert second.at - first.at >= 0.25


async def test_very_long_429_gives_up_as_retry(fake: FakeDiscord, channel: DiscordChannel) -> None:
    """A 429 asking for an hour is not slept through: the papers are retried next cycle."""
    fake.script(ROUTE, fake.rate_limited(retry_after=3600))
    outcomes = await send_all(channel, make_batch([make_paper(1)]))
    assert [o.kind for o in outcomes] == [OutcomeKind.RETRY]
    assert "rate limit" in (outcomes[0].error or "")


@pytest.mark.parametrize(
    ("answer", "kind", "reason"),
    [
        (
            FakeDiscord.error(403, MISSING_ACCESS, "Missing Access"),
            OutcomeKind.PERMANENT,
            "Discord 403 Missing Access (code 50001)",
        ),
        (
            FakeDiscord.error(404, UNKNOWN_CHANNEL, "Unknown Channel"),
            OutcomeKind.PERMANENT,
            "Discord 404 Unknown Channel (code 10003)",
        ),
        (FakeDiscord.error(503, 0, "upstream down"), OutcomeKind.RETRY, "Discord 503"),
        (FakeDiscord.hang(5), OutcomeKind.RETRY, "did not answer in time"),
        (FakeDiscord.error(400, 50035, "Invalid Form Body"), OutcomeKind.RETRY, "Discord 400"),
    ],
    ids=["403-missing-access", "404-unknown-channel", "503", "timeout", "400"],
)
async def test_failure_table(
    fake: FakeDiscord,
    channel: DiscordChannel,
    answer: Scripted,
    kind: OutcomeKind,
    reason: str,
) -> None:
    """Each failure maps to the right outcome and a reason a person can act on."""
    fake.script(ROUTE, answer)
    outcomes = await send_all(channel, make_batch([make_paper(1), make_paper(2)]))
    assert {o.kind for o in outcomes} == {kind}
    assert all(reason in (o.error or "") for o in outcomes)


async def test_a_refused_bot_token_is_unauthorized_at_login_and_on_a_post(
    fake: FakeDiscord, channel: DiscordChannel
) -> None:
    """Discord refusing the bot token (401) pauses delivery like Slack's invalid_auth: at login,
    and on a post after the token was reset, every delivery is UNAUTHORIZED with the reason."""
    fake.accepted_token = "another-token"
    outcomes = await send_all(channel, make_batch([make_paper(1), make_paper(2)]))
    assert {(o.kind, o.error) for o in outcomes} == {(OutcomeKind.UNAUTHORIZED, LOGIN_REFUSED)}
    assert fake.calls_to(ROUTE) == []  # never got past the login

    fake.accepted_token = "bot-token"
    assert [o.kind for o in await send_all(channel, make_batch([make_paper(3)]))] == [
        OutcomeKind.SENT
    ]
    fake.script(ROUTE, FakeDiscord.error(401, 0, "401: Unauthorized"))  # reset meanwhile
    outcomes = await send_all(channel, make_batch([make_paper(4)]))
    assert [(o.kind, o.error) for o in outcomes] == [(OutcomeKind.UNAUTHORIZED, LOGIN_REFUSED)]


async def test_a_webhook_401_is_that_webhooks_own_token(
    fake: FakeDiscord, webhook_channel: DiscordWebhookChannel
) -> None:
    """A 401 on a webhook means its URL's token was reset: PERMANENT for that target only."""
    fake.script(HOOK_ROUTE, FakeDiscord.error(401, 50027, "Invalid Webhook Token"))
    outcomes = await send_all(
        webhook_channel, make_batch([make_paper(1)], target=Target("discord_webhook", HOOK_URL))
    )
    assert [o.kind for o in outcomes] == [OutcomeKind.PERMANENT]


async def test_connection_refused_is_retry(channel: DiscordChannel) -> None:
    """Nothing listening at the API URL: RETRY, no exception into the cycle."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    use_api_url(f"http://127.0.0.1:{port}/api/v10")
    outcomes = await send_all(channel, make_batch([make_paper(1)]))
    assert [o.kind for o in outcomes] == [OutcomeKind.RETRY]
    assert "cannot reach Discord" in (outcomes[0].error or "")


async def test_partial_failure_reports_posted_papers_sent_and_never_reposts(
    fake: FakeDiscord, channel: DiscordChannel
) -> None:
    """Second message fails: first message SENT, the rest RETRY, nothing posted twice."""
    papers = [make_paper(i) for i in range(1, 16)]  # 10 + 5 embeds
    fake.script(ROUTE, FakeDiscord.normal(), FakeDiscord.error(503, 0, "down"))
    outcomes = await send_all(channel, make_batch(papers))
    first = render_messages(make_batch(papers))[0]
    first_ids = {d.paper.arxiv_id for d in first.deliveries}
    sent = {o.arxiv_id for o in outcomes if o.kind is OutcomeKind.SENT}
    retry = {o.arxiv_id for o in outcomes if o.kind is OutcomeKind.RETRY}
    assert sent == first_ids
    assert len(sent) == 10
    assert retry == {p.arxiv_id for p in papers} - first_ids
    assert len(fake.calls_to(ROUTE)) == 2

    # Next cycle the outbox owes only the RETRY ones: they are posted, the others are not again.
    again = await send_all(channel, make_batch([p for p in papers if p.arxiv_id in retry]))
    assert {o.kind for o in again} == {OutcomeKind.SENT}
    posted = [e["url"] for m in fake.channel_messages[CHANNEL] for e in m["embeds"]]
    assert sorted(posted) == sorted(p.abs_url for p in papers)
    assert len(fake.calls_to(ROUTE)) == 3


async def test_notify_posts_plain_text(fake: FakeDiscord, channel: DiscordChannel) -> None:
    """An operator alert is posted as text with mentions disabled."""
    ok = await channel.notify(Target("discord", CHANNEL), "harvest failed @everyone")
    assert ok is True
    (call,) = fake.calls_to(ROUTE)
    assert call.body["content"] == "harvest failed @\u200beveryone"
    assert call.body["allowed_mentions"] == {"parse": []}


async def test_notify_reports_failure(fake: FakeDiscord, channel: DiscordChannel) -> None:
    """A refused alert returns False instead of raising."""
    fake.unknown_channels.add(CHANNEL)
    assert await channel.notify(Target("discord", CHANNEL), "x") is False


def test_from_settings_needs_a_token_and_applies_api_url() -> None:
    """No token, no channel; with one, Route.BASE follows discord.api_url."""
    settings = settings_for_tests(discord={"api_url": "http://127.0.0.1:1/api/v10/"})
    assert DiscordChannel.from_settings(settings) is None
    with_token = replace(settings, secrets=replace(settings.secrets, discord_bot_token="t"))
    assert isinstance(DiscordChannel.from_settings(with_token), DiscordChannel)
    assert discord.http.Route.BASE == "http://127.0.0.1:1/api/v10"


# -- the webhook channel -----------------------------------------------------------------------


async def test_webhook_posts_the_same_embeds(
    fake: FakeDiscord, webhook_channel: DiscordWebhookChannel
) -> None:
    """A webhook target gets the same embeds, mentions off, confirmed with wait=true."""
    papers = [make_paper(1), make_paper(2)]
    outcomes = await send_all(
        webhook_channel,
        make_batch(papers, target=Target("discord_webhook", HOOK_URL), keyword="kw"),
    )
    assert {o.kind for o in outcomes} == {OutcomeKind.SENT}
    (call,) = fake.calls_to(HOOK_ROUTE)
    assert call.query["wait"] == "1"
    assert call.body["allowed_mentions"] == {"parse": []}
    assert call.body["embeds"] == [render_embed(p, "kw").to_dict() for p in (papers[1], papers[0])]
    assert len(fake.webhook_messages[HOOK_ID]) == 1


async def test_webhook_429_then_success(
    fake: FakeDiscord, webhook_channel: DiscordWebhookChannel
) -> None:
    """The webhook path honours 429 retry_after too."""
    fake.script(HOOK_ROUTE, fake.rate_limited(retry_after=0))
    outcomes = await send_all(
        webhook_channel, make_batch([make_paper(1)], target=Target("discord_webhook", HOOK_URL))
    )
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT]
    assert len(fake.calls_to(HOOK_ROUTE)) == 2


async def test_deleted_webhook_disables(
    fake: FakeDiscord, webhook_channel: DiscordWebhookChannel
) -> None:
    """404 Unknown Webhook (deleted in Discord) is PERMANENT with that reason."""
    fake.deleted_webhooks.add(HOOK_ID)
    outcomes = await send_all(
        webhook_channel, make_batch([make_paper(1)], target=Target("discord_webhook", HOOK_URL))
    )
    assert [(o.kind, o.error) for o in outcomes] == [
        (OutcomeKind.PERMANENT, "Discord 404 Unknown Webhook (code 10015)")
    ]


async def test_webhook_server_error_times_out_as_retry(
    fake: FakeDiscord, webhook_channel: DiscordWebhookChannel
) -> None:
    """A 500 (which discord.py retries with multi-second sleeps) ends as RETRY at our timeout."""
    fake.script(HOOK_ROUTE, FakeDiscord.error(500, 0, "boom"))
    outcomes = await send_all(
        webhook_channel, make_batch([make_paper(1)], target=Target("discord_webhook", HOOK_URL))
    )
    assert [o.kind for o in outcomes] == [OutcomeKind.RETRY]


async def test_invalid_webhook_url_is_permanent(webhook_channel: DiscordWebhookChannel) -> None:
    """A stored address that is not a webhook URL disables the subscription, no request made."""
    outcomes = await send_all(
        webhook_channel,
        make_batch([make_paper(1)], target=Target("discord_webhook", "https://example.org/x")),
    )
    assert [o.kind for o in outcomes] == [OutcomeKind.PERMANENT]
    assert "not a Discord webhook URL" in (outcomes[0].error or "")


async def test_webhook_notify(fake: FakeDiscord, webhook_channel: DiscordWebhookChannel) -> None:
    """Alerts through a webhook arrive as plain text."""
    assert await webhook_channel.notify(Target("discord_webhook", HOOK_URL), "cycle failed")
    assert fake.webhook_messages[HOOK_ID][0]["content"] == "cycle failed"


def test_webhook_subscriptions_from_config() -> None:
    """`discord.webhooks` entries become (target, query) pairs; bad ones name their key only."""
    settings = settings_for_tests(
        discord={"webhooks": [f"{HOOK_URL} diffusion models", f"  {HOOK_URL}   ti:llm  "]}
    )
    assert webhook_subscriptions(settings) == [
        (Target("discord_webhook", HOOK_URL), "diffusion models"),
        (Target("discord_webhook", HOOK_URL), "ti:llm"),
    ]
    bad_url = settings_for_tests(discord={"webhooks": ["https://example.org/secret-token q"]})
    with pytest.raises(ConfigError, match=r"discord.webhooks\[0\]") as info:
        webhook_subscriptions(bad_url)
    assert "secret-token" not in str(info.value)
    no_query = settings_for_tests(discord={"webhooks": [HOOK_URL]})
    with pytest.raises(ConfigError, match="has no query"):
        webhook_subscriptions(no_query)
    bad_query = settings_for_tests(discord={"webhooks": [f'{HOOK_URL} "unclosed']})
    with pytest.raises(ConfigError, match="invalid query"):
        webhook_subscriptions(bad_query)
    # A like: seed list is a keyword too: kept in canonical form (its seeds are fetched by the
    # harvest), refused with the like: reason when it is not one.
    like = settings_for_tests(
        discord={"webhooks": [f"{HOOK_URL} like:2501.09733v2, 2412.20455 arXiv:2410.01234"]}
    )
    assert webhook_subscriptions(like) == [
        (Target("discord_webhook", HOOK_URL), "like:2410.01234,2412.20455,2501.09733")
    ]
    too_few = settings_for_tests(discord={"webhooks": [f"{HOOK_URL} like:2501.09733"]})
    with pytest.raises(ConfigError, match="invalid query: like: needs at least 3 seed papers"):
        webhook_subscriptions(too_few)


def test_validate_webhook_url() -> None:
    """Discord's webhook URL forms pass; anything else is refused."""
    assert validate_webhook_url(f" {HOOK_URL} ") == HOOK_URL
    canary = HOOK_URL.replace("https://discord.com", "https://canary.discord.com")
    assert validate_webhook_url(canary) == canary
    for bad in ("http://discord.com/api/webhooks/1/2", "https://discord.com/api/webhooks/1/x"):
        with pytest.raises(ValueError, match="not a Discord webhook URL"):
            validate_webhook_url(bad)


def test_escape_text_collapses_whitespace() -> None:
    """Newlines in titles cannot start a heading or quote on a new line."""
    assert escape_text("A\n# B\n> C") == "A # B > C"


def test_configured_webhooks_subscribed_once_and_disabled_ones_left_alone(
    sqlite_store: SqlStore,
) -> None:
    """Start-up subscribes new `discord.webhooks` entries; a disabled one is not re-enabled."""
    settings = settings_for_tests(discord={"webhooks": [f"{HOOK_URL} llm", f"{HOOK_URL} ti:gan"]})
    now = datetime(2025, 2, 1, tzinfo=UTC)
    assert subscribe_configured_webhooks(settings, sqlite_store, now=now) == 2
    assert subscribe_configured_webhooks(settings, sqlite_store, now=now) == 0
    target = Target("discord_webhook", HOOK_URL)
    first = sqlite_store.list_subscriptions(target)[0]
    sqlite_store.disable_subscription(first.id, "Discord 404 Unknown Webhook (code 10015)")
    assert subscribe_configured_webhooks(settings, sqlite_store, now=now) == 0
    subs = {s.keyword: s.active for s in sqlite_store.list_subscriptions(target)}
    assert subs == {"llm": False, "ti:gan": True}


async def test_channel_factories(sqlite_store: SqlStore) -> None:
    """The composition-root factories: bot channel only with a token; webhooks always."""
    settings = settings_for_tests(discord={"webhooks": [f"{HOOK_URL} llm"]})
    async with AsyncExitStack() as stack:
        assert await channel_factory(settings, sqlite_store, stack) is None
        hooks = await webhook_channel_factory(settings, sqlite_store, stack)
        assert hooks.kind == "discord_webhook"
    assert [s.keyword for s in sqlite_store.list_subscriptions()] == ["llm"]


def test_validate_target_for_the_cli() -> None:
    """`subscriptions add` checks Discord targets and leaves other kinds alone."""
    assert validate_target(Target("discord", CHANNEL)) == Target("discord", CHANNEL)
    with pytest.raises(ValueError, match="not a channel id"):
        validate_target(Target("discord", "#general"))
    assert validate_target(Target.parse(f"discord_webhook: {HOOK_URL}")).address == HOOK_URL
    with pytest.raises(ValueError, match="not a Discord webhook URL"):
        validate_target(Target("discord_webhook", "https://example.org/hook"))
    assert validate_target(Target("slack", "C0123")) == Target("slack", "C0123")


def test_cli_subscriptions_add_discord_webhook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`daily-papers subscriptions add discord_webhook:<url> "<query>"` stores a webhook
    target; a URL that is not a Discord webhook is refused with the reason."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DAILY_PAPERS_CONFIG", raising=False)
    monkeypatch.setenv("DAILY_PAPERS_SERVICE_DATA_DIR", str(tmp_path))
    assert cli_main(["subscriptions", "add", f"discord_webhook:{HOOK_URL}", "llm"]) == 0
    assert cli_main(["subscriptions", "add", "discord_webhook:https://example.org/x", "q"]) != 0
    assert "not a Discord webhook URL" in capsys.readouterr().err
    assert cli_main(["subscriptions", "add", "discord:#general", "q"]) != 0
    assert cli_main(["subscriptions", "list"]) == 0
    listed = capsys.readouterr().out
    hook_id, token = HOOK_URL.rstrip("/").rsplit("/", 2)[-2:]
    assert f"/webhooks/{hook_id}/********\tllm\tactive" in listed
    assert token not in listed  # the token is the webhook's credential
    assert "example.org" not in listed
    assert "#general" not in listed


async def test_global_pacing_stays_under_the_limit_in_every_second() -> None:
    """Discord's per-bot global limit: 200 requests through a 40/s bucket with bursts of 5, on
    a fake clock, never start more than 45 in any one second, and the first 5 go at once."""
    clock = [1000.0]

    async def sleep(seconds: float) -> None:
        clock[0] += seconds

    bucket = TokenBucket(40, 5, clock=lambda: clock[0], sleep=sleep)
    starts = []
    for _ in range(200):
        await bucket.acquire()
        starts.append(clock[0])
    assert starts[:5] == [1000.0] * 5
    assert starts[5] > 1000.0
    busiest = max(sum(1 for s in starts[i:] if s < start + 1.0) for i, start in enumerate(starts))
    assert busiest <= 45
    assert starts[-1] - starts[0] == pytest.approx((200 - 5) / 40)  # paced, never slower


async def test_every_request_goes_through_the_global_limit(
    fake: FakeDiscord, channel: DiscordChannel
) -> None:
    """The login and each message take a slot of the per-bot limit, at the moment they go out."""
    taken: list[int] = []

    class Counting(TokenBucket):
        async def acquire(self) -> None:
            taken.append(len(fake.calls))  # requests the fake had seen when this one left
            await super().acquire()

    channel._global_limit = Counting(40, 5)
    await send_all(channel, make_batch([make_paper(i) for i in range(1, 26)]))
    assert len(fake.channel_messages[CHANNEL]) == 3
    assert len(taken) == len(fake.calls)  # login included: one slot per request made
    assert taken == sorted(set(taken))  # each taken just before its own request
