"""EmailChannel against a real aiosmtpd server in the test's loop, on a real SQLite store."""

from __future__ import annotations

import asyncio
import re
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from digest.channels import Channel, send_all
from digest.config import Settings
from digest.domain import Batch, Delivery, OutcomeKind, Target
from digest.errors import ConfigError
from digest.mail import OPTION_CONFIRMED, OPTION_FAILURES, UNCONFIRMED
from digest.mail.channel import FAILURE_LIMIT, EmailChannel
from digest.mail.links import EmailLinks, SubscriptionError
from digest.mail.render import MAX_HTML_BYTES
from digest.mail.signup import EmailSubscriptions
from digest.mail.smtp import (
    CONNECT_TIMEOUT,
    RELAY_DOWN_SECONDS,
    SMTP_TIMEOUT,
    TEST_CONNECT_TIMEOUT,
    SmtpPool,
)
from storage.sql_store import SqlStore
from tests.fakes.smtp import FakeSmtpServer, email_settings, smtp_server
from tests.mail_helpers import (
    ALICE,
    NOW,
    assert_folded,
    batch_for,
    flat,
    many_papers,
    paper,
    parse_html,
    parts,
    squeeze,
)
from tests.reference_digest import REFERENCE_LANGUAGE, load_reference_digest


@pytest.fixture
async def smtp() -> AsyncIterator[FakeSmtpServer]:
    """A recording SMTP server on 127.0.0.1."""
    async with smtp_server() as server:
        yield server


def make_channel(settings: Settings, store: SqlStore, **pool: object) -> EmailChannel:
    """The channel on a clock fixed at NOW, optionally with a tuned pool."""
    pool_obj = SmtpPool(
        hostname=settings.email.smtp_host,
        port=settings.email.smtp_port,
        security=settings.email.security,
        size=settings.email.concurrency,
        **pool,  # type: ignore[arg-type]
    )
    return EmailChannel(
        settings=settings,
        store=store,
        links=EmailLinks.from_settings(settings),
        pool=pool_obj,
        clock=lambda: NOW,
    )


def test_from_settings_is_none_when_disabled_and_refuses_without_secret(
    sqlite_store: SqlStore,
) -> None:
    """Email off: no channel. Email on without DAILY_PAPERS_SECRET_KEY: a clear ConfigError."""
    off = email_settings(None, email={"enabled": False})
    assert EmailChannel.from_settings(off, store=sqlite_store) is None
    with pytest.raises(ConfigError, match="DAILY_PAPERS_SECRET_KEY"):
        EmailChannel.from_settings(email_settings(None, secret_key=""), store=sqlite_store)
    with pytest.raises(ConfigError, match=r"web\.base_url"):
        EmailChannel.from_settings(email_settings(None, base_url=""), store=sqlite_store)


def test_channel_satisfies_the_protocol(sqlite_store: SqlStore) -> None:
    """EmailChannel.from_settings builds a Channel for kind 'email' with the configured pool."""
    settings = email_settings(None, email={"smtp_port": 2525, "concurrency": 3})
    channel = EmailChannel.from_settings(settings, store=sqlite_store)
    assert channel is not None
    assert (channel.pool.hostname, channel.pool.port) == ("127.0.0.1", 2525)
    assert isinstance(channel, Channel)
    assert channel.kind == "email"


# -- the digest on the wire --------------------------------------------------------------------


async def test_digest_parts_headers_and_fields(
    smtp: FakeSmtpServer, sqlite_store: SqlStore
) -> None:
    """One multipart digest with list headers and every field of every paper in both parts."""
    settings = email_settings(smtp, base_url="https://papers.lab.example.org")
    channel = make_channel(settings, sqlite_store)
    revised = paper("2501.00002", version=2, updated=datetime(2025, 1, 12, tzinfo=UTC))
    papers = [paper("2501.00001"), revised, paper("2501.00003", comment=None)]
    batch = batch_for(
        ALICE,
        [
            (1, "diffusion models", papers[0]),
            (1, "diffusion models", papers[1]),
            (2, "anomaly detection", papers[2]),
        ],
    )
    outcomes = await send_all(channel, batch)
    await channel.close()

    assert {o.kind for o in outcomes} == {OutcomeKind.SENT}
    assert len(outcomes) == 3
    assert len(smtp.messages) == 1
    received = smtp.messages[0]
    assert received.rcpt_tos == [ALICE]
    assert received.mail_from == "papers@lab.example.org"
    msg = received.message
    assert msg["To"] == ALICE
    assert msg["Subject"] == "3 new arXiv papers: diffusion models, anomaly detection"
    assert re.fullmatch(r"<digest\.[0-9a-f]{32}@lab\.example\.org>", msg["Message-ID"])
    assert msg["Date"] == "Sat, 11 Jan 2025 02:00:00 +0000"
    assert msg["List-Id"] == "daily-papers <papers.lab.example.org>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https, mailto = re.findall(r"<([^>]+)>", msg["List-Unsubscribe"])
    assert https.startswith("https://papers.lab.example.org/unsubscribe?token=")
    assert mailto == "mailto:papers@lab.example.org?subject=unsubscribe%20alice%40lab.example.org"

    text, html = parts(msg)
    page = parse_html(html)
    for p in papers:
        for body in (flat(text), page.text):
            assert p.title in body
            assert "Ada Lovelace, Alan Turing" in body
            assert p.abstract in body
            assert "cs.LG, stat.ML" in body
        assert f"https://arxiv.org/abs/{p.versioned_id}" in page.links
        assert f"https://arxiv.org/pdf/{p.versioned_id}" in page.links
        assert f"https://arxiv.org/pdf/{p.versioned_id}" in text
    assert "10 pages, 3 figures" in page.text
    assert "10 pages, 3 figures" in text
    assert "2025-01-10 (v2: 2025-01-12)" in text
    assert "2025-01-10 (v2: 2025-01-12)" in page.text
    # Grouped by keyword, in the order of the subscriptions.
    assert text.index("== diffusion models (2) ==") < text.index("== anomaly detection (1) ==")
    assert page.text.index("diffusion models") < page.text.index("anomaly detection")
    # Manage and unsubscribe links in the footer of both parts.
    assert any(
        link.startswith("https://papers.lab.example.org/manage?token=") for link in page.links
    )
    assert https in page.links
    assert https in text


async def test_html_is_inlined_dark_mode_ready_and_self_contained(
    smtp: FakeSmtpServer, sqlite_store: SqlStore
) -> None:
    """Inlined styles, @media rules kept, table layout, no images, scripts or remote CSS."""
    channel = make_channel(email_settings(smtp), sqlite_store)
    await send_all(channel, batch_for(ALICE, [(1, "k", paper())]))
    await channel.close()
    _, html = parts(smtp.messages[0].message)
    assert re.search(r'<h3 style="[^"]*font-size', html)
    assert "@media (prefers-color-scheme: dark)" in html
    assert "@media (max-width: 480px)" in html
    assert 'name="viewport"' in html
    assert 'name="color-scheme"' in html
    tags = parse_html(html).tags
    assert not tags & {"img", "script", "link", "iframe", "object"}
    assert "src=" not in html
    assert "url(" not in html
    # Table layout, as Outlook (Word's renderer) needs: presentation tables frame the email,
    # and a conditional table holds Outlook at 680 px, since it ignores max-width.
    assert html.count('role="presentation"') >= 2
    assert '<td class="card"' in html
    assert "<!--[if mso]>" in html
    assert 'width="680"' in html


async def test_hostile_paper_text_is_escaped_and_intact(
    smtp: FakeSmtpServer, sqlite_store: SqlStore
) -> None:
    """Markup, ampersands, pipes, TeX, long abstracts and non-ASCII names survive both parts."""
    title = "<script>alert('x')</script> Fast & Sound | $\\mathcal{O}(n^2)$ </p><b>bold</b>"
    abstract = (
        "We show <img src=x onerror=alert(1)> that R&D | costs $\\alpha \\leq 10\\%$ "
        "&lt;not an entity&gt; ]]> " + "long sentence about matrices. " * 700 + "THE END."
    )
    authors = ("Zoë Ćwikła", "李雷", "José Álvarez-Núñez", "Ørjan Ødegård")
    comment = "Accepted at <NeurIPS> & ICML | 12 pages"
    hostile = paper(title=title, abstract=abstract, authors=authors, comment=comment)
    channel = make_channel(email_settings(smtp), sqlite_store)
    outcomes = await send_all(channel, batch_for(ALICE, [(1, "x <y> & z", hostile)]))
    await channel.close()
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT]

    text, html = parts(smtp.messages[0].message)
    assert "<script>" not in html
    assert "<img" not in html
    assert "<NeurIPS>" not in html
    assert "&lt;script&gt;" in html
    assert "&lt;not an entity&gt;" in parse_html(html).text  # shown literally, not decoded
    page = parse_html(html)
    assert not page.tags & {"script", "img", "b"}
    for expected in (title, abstract, comment, ", ".join(authors), "x <y> & z"):
        assert flat(expected) in page.text
        assert flat(expected) in flat(text)
    assert "THE END." in text
    assert "THE END." in page.text
    assert smtp.messages[0].message["Subject"] == "1 new arXiv paper: x <y> & z"


async def test_a_hostile_translation_is_one_escaped_paragraph_in_both_parts(
    smtp: FakeSmtpServer, sqlite_store: SqlStore
) -> None:
    """A model's answer with blank lines, fences and HTML: one paragraph, shown as text."""
    hostile_title = "标题\n\n<h1>大标题</h1>"
    hostile_abstract = "第一段。\n\n---\n# 假标题\n```\n<script>alert(1)</script>\n\n最后一段。"
    batch = batch_for(
        ALICE,
        [(1, "k", paper("2501.00001")), (1, "k", paper("2501.00002"))],
        language="zh",
        translations={
            "2501.00001": (hostile_title, hostile_abstract),
            "2501.00002": ("第二篇", "第二篇的摘要。"),
        },
    )
    channel = make_channel(email_settings(smtp), sqlite_store)
    await send_all(channel, batch)
    await channel.close()
    text, html = parts(smtp.messages[0].message)
    page = parse_html(html)
    assert "script" not in page.tags
    assert "<script>" not in html
    assert "<h1>大标题" not in html
    one_line = "第一段。 --- # 假标题 ``` <script>alert(1)</script> 最后一段。"
    assert f"Abstract (ZH): {one_line}" in page.text
    shown = re.findall(r"<p class=\"abstract translated\"[^>]*>(.*?)</p>", html, re.S)
    [paragraph] = [p for p in shown if "第一段" in p]
    assert "最后一段" in paragraph
    assert "\n" not in paragraph
    # Plain text: the same single paragraph (folded, never split by a blank line).
    lines = text.replace("\r\n", "\n")
    block = lines.split("Abstract (ZH): 第一段。", 1)[1].split("\n\n", 1)[0]
    assert "最后一段。" in squeeze(block)
    assert "Title (ZH): 标题 <h1>大标题</h1>" in text
    assert squeeze("第二篇的摘要。") in squeeze(text)  # the next paper is still there


async def test_translations_are_rendered_when_the_batch_has_them(
    smtp: FakeSmtpServer, sqlite_store: SqlStore
) -> None:
    """The reference digest's Chinese titles and abstracts appear under each paper, marked."""
    entries = load_reference_digest()[:3]
    batch = batch_for(
        ALICE,
        [(1, "multimodal", e.paper) for e in entries],
        language=REFERENCE_LANGUAGE,
        translations={e.paper.arxiv_id: (e.title_zh, e.abstract_zh) for e in entries},
    )
    channel = make_channel(email_settings(smtp), sqlite_store)
    await send_all(channel, batch)
    await channel.close()
    text, html = parts(smtp.messages[0].message)
    page = parse_html(html)
    for entry in entries:
        # Chinese is folded between characters, with no space to mark the break.
        assert squeeze(f"Title (ZH): {entry.title_zh}") in squeeze(text)
        assert squeeze(f"Abstract (ZH): {entry.abstract_zh}") in squeeze(text)
        assert f"Title (ZH): {entry.title_zh}" in page.text
        assert flat(entry.abstract_zh) in page.text
    assert 'lang="zh"' in html


async def test_every_line_of_every_text_part_is_folded_at_76_columns(
    smtp: FakeSmtpServer, sqlite_store: SqlStore
) -> None:
    """Digest (titles, Chinese lines, footer), confirmation and empty note: all folded."""
    entries = load_reference_digest()[:4]
    long_title = paper(
        "2501.00009",
        title="An Extremely Long Title About Many Things " * 4,
        comment="Accepted at a workshop with a very long name " * 3,
    )
    keyword = "a rather long keyword about vision language models and their friends"
    batch = batch_for(
        ALICE,
        [(1, keyword, long_title), *((2, "multimodal", e.paper) for e in entries)],
        language=REFERENCE_LANGUAGE,
        translations={e.paper.arxiv_id: (e.title_zh * 2, e.abstract_zh) for e in entries},
    )
    channel = make_channel(email_settings(smtp, email={"send_empty": True}), sqlite_store)
    await send_all(channel, batch)
    target = Target("email", "bob@lab.example.org")
    for query in (keyword, "multimodal", "graph neural networks for molecules and materials"):
        sqlite_store.add_subscription(target, query, now=NOW)
    sqlite_store.set_target_option(target, OPTION_CONFIRMED, NOW.isoformat())
    assert await channel.send_empty(now=NOW) == 1
    pending = [keyword, "multimodal", "diffusion models for video generation and editing"]
    assert await channel.send_confirmation(
        "carol@lab.example.org", pending=pending, active=[], now=NOW
    )
    await channel.close()
    assert len(smtp.messages) == 3
    for received in smtp.messages:
        text, _ = parts(received.message)
        assert_folded(text)
    digest, _ = parts(smtp.messages[0].message)
    assert flat(f"{long_title.title.strip()}") in flat(digest)
    for entry in entries:
        assert squeeze(entry.abstract_zh) in squeeze(digest)


async def test_a_300_paper_digest_fits_gmail_with_its_footer_and_counts_the_rest(
    smtp: FakeSmtpServer, sqlite_store: SqlStore
) -> None:
    """HTML under 100,000 bytes with its footer, the rest counted and linked; text lists all."""
    papers = many_papers(300)
    keywords = ["vision language models", "model evaluation"]
    items = [(1 + n % 2, keywords[n % 2], p) for n, p in enumerate(papers)]
    items += [(2, keywords[1], p) for p in papers[:10:2]]  # five papers match both keywords
    channel = make_channel(email_settings(smtp, base_url="https://papers.lab.org"), sqlite_store)
    outcomes = await send_all(channel, batch_for(ALICE, items))
    await channel.close()
    assert {o.kind for o in outcomes} == {OutcomeKind.SENT}
    assert len(outcomes) == len(items)
    message = smtp.messages[0].message
    assert message["Subject"].startswith("300 new arXiv papers: ")
    text, html = parts(message)
    assert len(html.encode("utf-8")) < MAX_HTML_BYTES
    page = parse_html(html)
    links = page.links
    assert any(u.startswith("https://papers.lab.org/manage?token=") for u in links)
    assert any(u.startswith("https://papers.lab.org/unsubscribe?token=") for u in links)
    assert "Change keywords" in page.text
    assert "Unsubscribe" in page.text
    shown = sorted(
        (p for p in papers if f"END {p.arxiv_id[-3:]}." in page.text),
        key=lambda p: page.text.index(f"END {p.arxiv_id[-3:]}."),
    )
    assert 20 <= len(shown) < 300
    # Each keyword keeps its newest papers, the two keywords about as many each (they take
    # turns), listed by keyword: the cut drops the end of both sections, not the second one.
    first = [p for p in shown if p in papers[::2]]
    assert shown == first + papers[1::2][: len(shown) - len(first)]
    assert first == papers[::2][: len(first)]
    assert abs(len(first) - (len(shown) - len(first))) <= 3
    assert f"This email shows {len(shown)} of the 300 papers" in page.text
    day_links = [u for u in links if u.startswith("https://papers.lab.org/day?token=")]
    assert day_links
    more = re.findall(rf"and (\d+) more papers? for ({'|'.join(keywords)})", page.text)
    counted = {keyword: int(n) for n, keyword in more}
    in_full = {
        k: sum(1 for n, p in enumerate(papers) if keywords[n % 2] == k and p in shown)
        for k in keywords
    }
    also = sum(1 for p in papers[:10:2] if p in shown)
    assert counted["vision language models"] == 150 - in_full["vision language models"]
    assert counted["model evaluation"] == 155 - in_full["model evaluation"] - also
    # No client clips the plain text: it lists all 300, for readers without HTML.
    assert_folded(text)
    assert all(f"END {p.arxiv_id[-3:]}." in text for p in papers)
    assert "more papers for" not in text


async def test_one_connection_carries_many_digests_within_the_concurrency_bound(
    smtp: FakeSmtpServer, sqlite_store: SqlStore
) -> None:
    """Twelve addresses at once over at most `email.concurrency` sessions, reused next cycle."""
    settings = email_settings(smtp, email={"concurrency": 2})
    channel = make_channel(settings, sqlite_store)
    addresses = [f"reader{i}@lab.example.org" for i in range(12)]
    batches = [batch_for(a, [(i, "k", paper())]) for i, a in enumerate(addresses)]
    results = await asyncio.gather(*(send_all(channel, b) for b in batches))
    assert all(o.kind is OutcomeKind.SENT for outcomes in results for o in outcomes)
    assert sorted(m.rcpt_tos[0] for m in smtp.messages) == sorted(addresses)
    assert smtp.connections <= 2
    opened = smtp.connections
    await send_all(channel, batch_for("late@lab.example.org", [(99, "k", paper())]))
    assert smtp.connections == opened  # the idle session was reused
    await channel.close()


async def test_a_dropped_idle_connection_is_replaced_without_a_duplicate(
    smtp: FakeSmtpServer, sqlite_store: SqlStore
) -> None:
    """The relay closed the pooled session: the next digest goes out once on a new one."""
    channel = make_channel(email_settings(smtp), sqlite_store)
    await send_all(channel, batch_for(ALICE, [(1, "k", paper("2501.00001"))]))
    smtp.drop_connections()
    await asyncio.sleep(0)  # let the client notice the close
    outcomes = await send_all(channel, batch_for(ALICE, [(1, "k", paper("2501.00002"))]))
    await channel.close()
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT]
    assert len(smtp.messages) == 2
    assert smtp.connections == 2


async def test_temporary_refusal_is_retried_later(
    smtp: FakeSmtpServer, sqlite_store: SqlStore
) -> None:
    """4xx for the recipient: RETRY, nothing delivered, no refusal counted."""
    smtp.handler.refuse[ALICE] = "451 4.3.0 try again later"
    channel = make_channel(email_settings(smtp), sqlite_store)
    outcomes = await send_all(channel, batch_for(ALICE, [(1, "k", paper())]))
    await channel.close()
    assert [o.kind for o in outcomes] == [OutcomeKind.RETRY]
    assert "451" in (outcomes[0].error or "")
    assert smtp.messages == []
    assert sqlite_store.get_target_option(Target("email", ALICE), OPTION_FAILURES) is None


async def test_data_4xx_and_5xx(smtp: FakeSmtpServer, sqlite_store: SqlStore) -> None:
    """DATA refused with 4xx retries; with 5xx it counts as a refusal of the address."""
    channel = make_channel(email_settings(smtp), sqlite_store)
    smtp.handler.data_reply = "452 4.3.1 insufficient storage"
    first = await send_all(channel, batch_for(ALICE, [(1, "k", paper())]))
    smtp.handler.data_reply = "554 5.6.0 message content rejected"
    second = await send_all(channel, batch_for(ALICE, [(1, "k", paper())]))
    await channel.close()
    assert [o.kind for o in first] == [OutcomeKind.RETRY]
    assert [o.kind for o in second] == [OutcomeKind.RETRY]
    assert "(1/3)" in (second[0].error or "")
    assert sqlite_store.get_target_option(Target("email", ALICE), OPTION_FAILURES) == "1"


async def test_three_permanent_refusals_in_a_row_disable_the_subscription(
    smtp: FakeSmtpServer, sqlite_store: SqlStore
) -> None:
    """5xx is recorded; the third in a row disables the subscriptions with the server's words."""
    target = Target("email", ALICE)
    sub = sqlite_store.add_subscription(target, "diffusion", now=NOW)
    sqlite_store.set_target_option(target, OPTION_CONFIRMED, NOW.isoformat())
    smtp.handler.refuse[ALICE] = "550 5.1.1 mailbox unavailable"
    channel = make_channel(email_settings(smtp), sqlite_store)
    kinds = []
    for _ in range(FAILURE_LIMIT):
        options = {OPTION_CONFIRMED: "yes"}
        failures = sqlite_store.get_target_option(target, OPTION_FAILURES)
        if failures:
            options[OPTION_FAILURES] = failures
        batch = Batch(target, (Delivery(sub.id, "diffusion", paper()),), options=options)
        outcomes = await send_all(channel, batch)
        kinds.append(outcomes[0].kind)
    await channel.close()
    assert kinds == [OutcomeKind.RETRY, OutcomeKind.RETRY, OutcomeKind.PERMANENT]
    sqlite_store.record_outcomes(outcomes, now=NOW)
    [stored] = sqlite_store.list_subscriptions(target)
    assert not stored.active
    assert "550 5.1.1 mailbox unavailable" in (stored.disabled_reason or "")
    assert "3 times in a row" in (stored.disabled_reason or "")


async def test_success_resets_the_refusal_count(
    smtp: FakeSmtpServer, sqlite_store: SqlStore
) -> None:
    """Refusals must be consecutive: an accepted digest starts the count again."""
    target = Target("email", ALICE)
    channel = make_channel(email_settings(smtp), sqlite_store)
    smtp.handler.refuse[ALICE] = "550 5.1.1 mailbox unavailable"
    await send_all(channel, batch_for(ALICE, [(1, "k", paper())]))
    assert sqlite_store.get_target_option(target, OPTION_FAILURES) == "1"
    del smtp.handler.refuse[ALICE]
    options = {OPTION_CONFIRMED: "y", OPTION_FAILURES: "1"}  # as pending_batches reads them
    outcomes = await send_all(channel, Batch(target, (Delivery(1, "k", paper()),), options=options))
    await channel.close()
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT]
    assert sqlite_store.get_target_option(target, OPTION_FAILURES) is None


async def test_unreachable_relay_and_timeouts_are_transient(sqlite_store: SqlStore) -> None:
    """Connection refused or a stalled relay: RETRY with the reason, never an exception."""
    async with smtp_server() as closed:
        port = closed.port
    refused = make_channel(email_settings(None, email={"smtp_port": port}), sqlite_store)
    outcomes = await send_all(refused, batch_for(ALICE, [(1, "k", paper())]))
    assert [o.kind for o in outcomes] == [OutcomeKind.RETRY]
    assert outcomes[0].error

    async with smtp_server() as slow:
        slow.handler.delay = 1.0
        channel = make_channel(email_settings(slow), sqlite_store, timeout=0.2)
        outcomes = await send_all(channel, batch_for(ALICE, [(1, "k", paper())]))
        await channel.close()
    assert [o.kind for o in outcomes] == [OutcomeKind.RETRY]


@asynccontextmanager
async def silent_relay() -> AsyncIterator[tuple[int, list[float]]]:
    """A server on 127.0.0.1 that accepts connections and never says a word (no greeting)."""
    accepted: list[float] = []
    loop = asyncio.get_running_loop()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(loop.time())
        try:
            await reader.read()  # until the client gives up
        finally:
            writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], accepted
    finally:
        server.close()
        await server.wait_closed()


async def test_a_relay_that_never_answers_is_down_for_the_cycle_after_one_short_wait(
    sqlite_store: SqlStore,
) -> None:
    """No greeting: one short timeout, then digests and sign-ups fail at once for a while."""
    monotonic = [1000.0]
    async with silent_relay() as (port, accepted):
        settings = email_settings(None, email={"smtp_port": port})
        channel = make_channel(
            settings,
            sqlite_store,
            connect_timeout=TEST_CONNECT_TIMEOUT,
            clock=lambda: monotonic[0],
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        for n in range(5):
            batch = batch_for(f"reader{n}@lab.example.org", [(n + 1, "k", paper())])
            outcomes = await send_all(channel, batch)
            assert [o.kind for o in outcomes] == [OutcomeKind.RETRY]
        assert "unreachable" in outcomes[0].error  # type: ignore[operator]
        # One connection tried, one short wait (test mode's connect timeout), not 5 x 60 s.
        assert len(accepted) == 1
        assert loop.time() - started < TEST_CONNECT_TIMEOUT + 1.5
        # A sign-up meanwhile is told at once that the mail could not go out.
        signup = EmailSubscriptions(store=sqlite_store, settings=settings, sender=channel)
        sqlite_store.add_keyword("k", from_config=True)
        asked = loop.time()
        with pytest.raises(SubscriptionError, match="could not be sent"):
            await signup.request(ALICE, ["k"])
        assert loop.time() - asked < 1.0
        assert len(accepted) == 1
        # Once the window has passed, the relay is tried again.
        monotonic[0] += RELAY_DOWN_SECONDS
        await send_all(channel, batch_for(ALICE, [(9, "k", paper())]))
        assert len(accepted) == 2
        await channel.close()


async def test_the_channel_uses_short_connect_timeouts(sqlite_store: SqlStore) -> None:
    """EmailChannel's own pool: the test-mode connect timeout, never the 60 s command one."""
    async with silent_relay() as (port, _):
        settings = email_settings(None, email={"smtp_port": port})
        channel = EmailChannel.from_settings(settings, store=sqlite_store)
        assert channel is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcomes = await send_all(channel, batch_for(ALICE, [(1, "k", paper())]))
        assert [o.kind for o in outcomes] == [OutcomeKind.RETRY]
        assert loop.time() - started < TEST_CONNECT_TIMEOUT + 1.0
        await channel.close()
    assert TEST_CONNECT_TIMEOUT < CONNECT_TIMEOUT <= 10 < SMTP_TIMEOUT


async def test_unconfirmed_address_is_never_mailed(
    smtp: FakeSmtpServer, sqlite_store: SqlStore
) -> None:
    """An active subscription of an address that never confirmed is parked, not mailed."""
    channel = make_channel(email_settings(smtp), sqlite_store)
    outcomes = await send_all(channel, batch_for(ALICE, [(1, "k", paper())], confirmed=False))
    await channel.close()
    assert [(o.kind, o.error) for o in outcomes] == [(OutcomeKind.PERMANENT, UNCONFIRMED)]
    assert smtp.messages == []


async def test_outbox_round_trip_sends_each_paper_once(
    smtp: FakeSmtpServer, sqlite_store: SqlStore
) -> None:
    """pending_batches -> send -> record_outcomes: a second round has nothing to send."""
    target = Target("email", ALICE)
    sub = sqlite_store.add_subscription(target, "things", now=NOW - timedelta(days=1))
    sqlite_store.set_target_option(target, OPTION_CONFIRMED, NOW.isoformat())
    papers = [paper("2501.00001"), paper("2501.00002")]
    sqlite_store.commit_harvest(
        papers=papers,
        matches={"things": [p.arxiv_id for p in papers]},
        deliverable=[p.arxiv_id for p in papers],
        now=NOW,
    )
    channel = make_channel(email_settings(smtp), sqlite_store)
    [batch] = sqlite_store.pending_batches(now=NOW, kinds={"email"})
    assert batch.options[OPTION_CONFIRMED]
    outcomes = await send_all(channel, batch)
    counts = sqlite_store.record_outcomes(outcomes, now=NOW)
    assert counts.sent == 2
    assert {o.subscription_id for o in outcomes} == {sub.id}
    assert sqlite_store.pending_batches(now=NOW + timedelta(days=1), kinds={"email"}) == []
    await channel.close()
    assert len(smtp.messages) == 1


async def test_same_deliveries_keep_the_same_message_id(
    smtp: FakeSmtpServer, sqlite_store: SqlStore
) -> None:
    """A re-send of the same papers (after an ambiguous failure) is recognisably the same."""
    channel = make_channel(email_settings(smtp), sqlite_store)
    batch = batch_for(ALICE, [(1, "k", paper("2501.00001"))])
    await send_all(channel, batch)
    await send_all(channel, batch)
    await send_all(channel, batch_for(ALICE, [(1, "k", paper("2501.00002"))]))
    await channel.close()
    ids = [m.message["Message-ID"] for m in smtp.messages]
    assert ids[0] == ids[1] != ids[2]


async def test_send_empty_notes_once_a_day_for_confirmed_addresses_without_a_digest(
    smtp: FakeSmtpServer, sqlite_store: SqlStore
) -> None:
    """email.send_empty: a short note to those without a digest today, once; off by default."""
    for address in (ALICE, "bob@lab.example.org", "carol@lab.example.org"):
        sqlite_store.add_subscription(Target("email", address), "things", now=NOW)
    for address in (ALICE, "bob@lab.example.org"):  # carol never confirmed
        sqlite_store.set_target_option(Target("email", address), OPTION_CONFIRMED, "x")
    off = make_channel(email_settings(smtp), sqlite_store)
    assert await off.send_empty(now=NOW) == 0

    channel = make_channel(email_settings(smtp, email={"send_empty": True}), sqlite_store)
    await send_all(channel, batch_for(ALICE, [(1, "things", paper())]))  # alice got a digest
    assert await channel.send_empty(now=NOW) == 1
    assert await channel.send_empty(now=NOW) == 0  # a second cycle the same day
    await channel.close()
    notes = smtp.handler.to("bob@lab.example.org")
    assert len(notes) == 1
    note = notes[0].message
    assert note["Subject"] == "No new arXiv papers today"
    assert note["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text, _ = parts(note)
    assert "things" in text
    assert smtp.handler.to("carol@lab.example.org") == []
    assert len(smtp.handler.to(ALICE)) == 1  # only the digest


async def test_send_empty_switched_on_mid_day_spares_who_already_got_a_digest(
    smtp: FakeSmtpServer, sqlite_store: SqlStore
) -> None:
    """A digest went out while send_empty was off; turned on later that day, no note for it."""
    bob, carol = "bob@lab.example.org", "carol@lab.example.org"
    for address in (ALICE, bob, carol):
        target = Target("email", address)
        sqlite_store.add_subscription(target, "things", now=NOW - timedelta(days=1))
        sqlite_store.set_target_option(target, OPTION_CONFIRMED, NOW.isoformat())
    sqlite_store.add_subscription(Target("email", carol), "stuff", now=NOW - timedelta(days=1))
    sqlite_store.commit_harvest(
        papers=[paper("2501.00001"), paper("2501.00002")],
        matches={"things": ["2501.00001"], "stuff": ["2501.00002"]},
        deliverable=["2501.00001", "2501.00002"],
        now=NOW,
    )
    morning = make_channel(email_settings(smtp), sqlite_store)  # send_empty off
    for batch in sqlite_store.pending_batches(now=NOW, kinds={"email"}):
        if batch.target.address == carol:
            continue  # carol's digest waits for a retry: she is owed papers, not "nothing"
        sqlite_store.record_outcomes(await send_all(morning, batch), now=NOW)
    await morning.close()
    digests = len(smtp.messages)
    assert digests == 2  # alice and bob

    evening = NOW + timedelta(hours=8)  # the same day (UTC)
    channel = make_channel(email_settings(smtp, email={"send_empty": True}), sqlite_store)
    assert await channel.send_empty(now=evening) == 0
    assert len(smtp.messages) == digests
    # The next day, with nothing new, the note goes to those who are owed nothing.
    assert await channel.send_empty(now=evening + timedelta(days=1)) == 2
    await channel.close()
    assert {m.rcpt_tos[0] for m in smtp.messages[digests:]} == {ALICE, bob}


async def test_notify_sends_plain_text(smtp: FakeSmtpServer, sqlite_store: SqlStore) -> None:
    """Operator alerts arrive as plain text; a refused one reports False."""
    channel = make_channel(email_settings(smtp), sqlite_store)
    assert await channel.notify(Target("email", "admin@lab.example.org"), "3 cycles failed & more")
    smtp.handler.refuse["gone@lab.example.org"] = "550 no such user"
    assert not await channel.notify(Target("email", "gone@lab.example.org"), "x")
    await channel.close()
    [alert] = smtp.messages
    assert alert.message.get_content_type() == "text/plain"
    assert alert.message.get_content().strip() == "3 cycles failed & more"


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1 made with the openssl command."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(  # noqa: S603 - fixed arguments, a test-only certificate
        [
            shutil.which("openssl") or "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_starttls_and_login(tmp_path: Path, sqlite_store: SqlStore) -> None:
    """security = 'starttls' upgrades before AUTH; the password comes from the secrets."""
    cert, key = _self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))
    async with smtp_server(
        tls_context=server_tls, require_starttls=True, auth=("mailer", "s3cret")
    ) as server:
        settings = email_settings(server, email={"security": "starttls", "smtp_username": "mailer"})
        pool = SmtpPool(
            hostname="127.0.0.1",
            port=server.port,
            security="starttls",
            username="mailer",
            password="s3cret",
            tls_context=client_tls,
        )
        channel = EmailChannel(
            settings=settings,
            store=sqlite_store,
            links=EmailLinks.from_settings(settings),
            pool=pool,
        )
        outcomes = await send_all(channel, batch_for(ALICE, [(1, "k", paper())]))
        bad = SmtpPool(
            hostname="127.0.0.1",
            port=server.port,
            security="starttls",
            username="mailer",
            password="wrong",
            tls_context=client_tls,
        )
        refused = await bad.send(
            "papers@lab.example.org", ALICE, b"Subject: x\r\n\r\nx\r\n", utf8=False
        )
        await channel.close()
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT]
    assert len(server.messages) == 1
    assert refused.status.value == "retry"
    assert "login" in refused.detail


async def test_internationalised_addresses(smtp: FakeSmtpServer, sqlite_store: SqlStore) -> None:
    """A Unicode domain goes out in IDNA form; a Unicode local part uses SMTPUTF8."""
    channel = make_channel(email_settings(smtp), sqlite_store)
    await send_all(channel, batch_for("bob@universität.example", [(1, "k", paper())]))
    await send_all(channel, batch_for("zoë@lab.example.org", [(2, "k", paper())]))
    await channel.close()
    assert [m.rcpt_tos for m in smtp.messages] == [
        ["bob@xn--universitt-y5a.example"],
        ["zoë@lab.example.org"],
    ]
    assert smtp.messages[0].message["To"] == "bob@xn--universitt-y5a.example"
    assert smtp.messages[1].message["To"] == "zoë@lab.example.org"
