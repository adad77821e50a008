"""AppriseChannel through Apprise itself, against a recording HTTP server on 127.0.0.1: its
`json://` and `form://` schemes, and Mattermost's real `mmost://` scheme pointed at the same
stand-in. The failures at the wire are in tests/test_channel_failures.py."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from apprise import AppriseResultStatus
from markdown_it import MarkdownIt

from bot.apprise_channel import (
    KIND,
    AppriseChannel,
    AppriseSettings,
    channel_factory,
    classify_result,
    configured_subscriptions,
    notification_title,
    render_notification,
    subscribe_configured_targets,
    validate_target,
)
from bot.commands import CommandService, Invocation, PlainMarkup
from digest.app import channel_settings, channel_specs
from digest.arxiv_source import ArxivSource
from digest.channels import send_all
from digest.cli import main as cli_main
from digest.config import Settings, load_settings, settings_for_tests
from digest.cycle import run_cycle
from digest.domain import Batch, Delivery, OutcomeKind, Paper, RunReport, Target
from digest.errors import ConfigError
from storage.sql_store import SqlStore
from tests.fakes.arxiv_server import ArxivStandIn
from tests.fakes.recording_http import Answer, RecordingHttpServer
from tests.reference_papers import load_reference_papers, load_reference_sections

SENT, RETRY, PERMANENT = OutcomeKind.SENT, OutcomeKind.RETRY, OutcomeKind.PERMANENT
SECRET = "s3cretT0kenXYZ"  # what a URL's credential looks like in these tests
PASSWORD = "hunter2pw"
NOW = datetime(2025, 2, 5, 12, 0, tzinfo=UTC)
EXTENSIONS = {"apprise": AppriseSettings}


def make_paper(n: int, **changes: object) -> Paper:
    """A small synthetic paper numbered `n` (newer for smaller n)."""
    when = NOW - timedelta(hours=n)
    paper = Paper(
        arxiv_id=f"2502.{n:05d}",
        version=1,
        title=f"Paper number {n}",
        authors=("Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra"),
        abstract=f"Abstract of paper {n}. " + "We study things carefully. " * 20,
        published=when,
        updated=when,
        primary_category="cs.LG",
        categories=("cs.LG",),
        comment="12 pages",
    )
    return dataclasses.replace(paper, **changes)  # type: ignore[arg-type]


def make_batch(url: str, papers: list[Paper], keyword: str = "diffusion models") -> Batch:
    """One target's batch: every paper under `keyword` for subscription 1."""
    return Batch(Target(KIND, url), tuple(Delivery(1, keyword, p) for p in papers))


@pytest.fixture
async def server() -> AsyncIterator[RecordingHttpServer]:
    """The recording HTTP server standing in for the service."""
    async with RecordingHttpServer() as recording:
        yield recording


@pytest.fixture
def channel() -> AppriseChannel:
    """The channel with its production settings."""
    return AppriseChannel()


def json_url(server: RecordingHttpServer) -> str:
    """A json:// URL at the stand-in whose path and password are secrets."""
    return f"json://bot:{PASSWORD}@127.0.0.1:{server.port}/hook/{SECRET}"


# -- what arrives -------------------------------------------------------------------------------


async def test_json_target_gets_one_markdown_notification(
    server: RecordingHttpServer, channel: AppriseChannel
) -> None:
    """One POST per target per cycle: titled with the count and keyword, the papers in Markdown
    (bold linked titles, authors, date, category, comment, shortened abstract), all SENT."""
    papers = [make_paper(1), make_paper(2), make_paper(3)]
    batch = make_batch(json_url(server), papers)
    outcomes = await send_all(channel, batch)
    assert [o.kind for o in outcomes] == [SENT] * 3
    (request,) = server.received
    assert request.method == "POST"
    assert request.path == f"/hook/{SECRET}"
    assert request.headers["User-Agent"] == "daily-papers"
    payload = request.json()
    assert payload["title"] == "3 new arXiv papers: diffusion models"
    assert payload["type"] == "info"
    body = payload["message"]
    assert body.startswith("**diffusion models** · 3 new\n\n")
    for paper in papers:
        assert f"\n[{paper.title}]({paper.abs_url})  \n" in body
    assert "Ada Lovelace, Alan Turing, Grace Hopper et al. · 2025-02-05 · cs.LG  \n" in body
    assert "Comment: 12 pages  \n" in body
    assert "Abstract of paper 1. We study things carefully." in body
    assert body.count("…") == 3  # each abstract cut at a word, within abstract_chars


async def test_form_target_gets_the_same_fields(
    server: RecordingHttpServer, channel: AppriseChannel
) -> None:
    """form:// posts an urlencoded form with the same title and Markdown body."""
    url = f"form://127.0.0.1:{server.port}/notify/{SECRET}"
    outcomes = await send_all(channel, make_batch(url, [make_paper(1)], keyword="graphs"))
    assert [o.kind for o in outcomes] == [SENT]
    (request,) = server.received
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    form = request.form()
    assert form["title"] == "1 new arXiv paper: graphs"
    assert form["message"].startswith("**graphs** · 1 new\n\n[Paper number 1](")


def test_titles_name_the_keywords_while_they_fit() -> None:
    """One keyword is named; several are listed while short, else counted; papers under two
    keywords are counted once."""
    url = "json://127.0.0.1/x"
    one = make_batch(url, [make_paper(1)], keyword="ti:llm")
    assert notification_title(one) == "1 new arXiv paper: ti:llm"
    two = Batch(
        Target(KIND, url),
        (
            Delivery(1, "diffusion models", make_paper(1)),
            Delivery(2, "graph neural networks", make_paper(1)),
            Delivery(2, "graph neural networks", make_paper(2)),
        ),
    )
    assert notification_title(two) == "2 new arXiv papers: diffusion models, graph neural networks"
    many = Batch(
        Target(KIND, url),
        tuple(Delivery(i, f"a rather long keyword number {i}", make_paper(i)) for i in range(5)),
    )
    assert notification_title(many) == "5 new arXiv papers for 5 keywords"


def test_paper_text_cannot_format_link_or_mention() -> None:
    """Hostile paper text stays text: CommonMark sees no HTML, no heading, list, quote or
    code, no link but each paper's arXiv page, and `@channel` / `@room` mention nobody."""
    nasty = make_paper(
        1,
        title="# Heading <script>alert(1)</script> `code` [x](javascript:alert(1)) @channel",
        authors=("- List Item", "@room"),
        abstract="> quote\n\n```\nfence <img src=x onerror=alert(1)>",
        comment="<!-- hidden --> [click](http://evil.example.org)",
    )
    translated = Batch(
        Target(KIND, "json://127.0.0.1/x"),
        (Delivery(1, "<b>kw</b> @all", nasty),),
        translations={nasty.arxiv_id: ("`译` <i>标题</i>", "摘要")},
    )
    body = render_notification(translated).body
    tokens = MarkdownIt("commonmark").parse(body)
    inline = [child for token in tokens for child in (token.children or [])]
    kinds = {token.type for token in [*tokens, *inline]}
    assert not kinds & {"html_block", "html_inline", "heading_open", "bullet_list_open"}
    assert not kinds & {"blockquote_open", "fence", "code_block", "code_inline"}
    links = [t.attrGet("href") for t in inline if t.type == "link_open"]
    assert links == [nasty.abs_url]
    for mention in ("@channel", "@room", "@all"):
        assert mention not in body
        assert mention.replace("@", "@\u200b") in body


async def test_a_long_day_is_split_by_apprise_and_answered_once(
    server: RecordingHttpServer,
) -> None:
    """A body past json://'s 32768 characters arrives as numbered parts that together hold
    every paper exactly once; the deliveries are answered in one yield, after the last part."""
    channel = AppriseChannel(abstract_chars=600)
    papers = [make_paper(n, abstract="Long abstract. " * 60) for n in range(1, 61)]
    batch = make_batch(json_url(server), papers)
    answers = [list(outcomes) async for outcomes in channel.send(batch)]
    assert len(answers) == 1
    assert sorted(o.arxiv_id for o in answers[0]) == sorted(p.arxiv_id for p in papers)
    assert {o.kind for o in answers[0]} == {SENT}
    parts = [r.json() for r in server.received]
    assert len(parts) >= 2
    assert [p["title"] for p in parts] == [
        f"60 new arXiv papers: diffusion models [{i}/{len(parts)}]"
        for i in range(1, len(parts) + 1)
    ]
    assert all(len(p["message"]) <= 32768 for p in parts)
    joined = "\n".join(p["message"] for p in parts)
    for paper in papers:
        assert joined.count(f"]({paper.abs_url})") == 1


async def test_mattermost_stand_in_gets_text_or_markdown_split_at_its_limit(
    server: RecordingHttpServer, channel: AppriseChannel
) -> None:
    """Mattermost's own scheme at the stand-in: its webhook route, the title folded into the
    text; plain text by default (Apprise declares Mattermost text-only), Markdown with
    `format=markdown`, split under Mattermost's 4000 characters, every paper once."""
    papers = [make_paper(n) for n in range(1, 31)]
    base = f"mmost://127.0.0.1:{server.port}/{SECRET}"
    assert {o.kind for o in await send_all(channel, make_batch(base, papers[:2]))} == {SENT}
    (plain,) = server.received
    assert plain.path == f"/hooks/{SECRET}"
    text = plain.json()["text"]
    assert text.startswith("2 new arXiv papers: diffusion models\r\ndiffusion models · 2 new")
    assert f"\n{papers[0].title}\n" in text
    assert f"\n{papers[0].abs_url}\n" in text
    assert "**" not in text
    server.received.clear()

    outcomes = await send_all(channel, make_batch(f"{base}?format=markdown", papers))
    assert {o.kind for o in outcomes} == {SENT}
    texts = [r.json()["text"] for r in server.received]
    assert len(texts) >= 2
    assert all(r.path == f"/hooks/{SECRET}" for r in server.received)
    assert all(len(t) <= 4000 for t in texts)
    assert texts[0].startswith("# 30 new arXiv papers: diffusion models\n**diffusion models**")
    joined = "\n".join(texts)
    for paper in papers:
        assert joined.count(f"[{paper.title}]({paper.abs_url})  \n") == 1


async def test_a_text_only_service_gets_the_plain_body(
    server: RecordingHttpServer, channel: AppriseChannel
) -> None:
    """A URL that asks Apprise for text (`format=text`) gets the plain-text template."""
    url = f"json://127.0.0.1:{server.port}/hook?format=text"
    await send_all(channel, make_batch(url, [make_paper(1)]))
    body = server.received[0].json()["message"]
    assert body.startswith("diffusion models · 1 new\n\nPaper number 1\n")
    assert "[" not in body


# -- failures ---------------------------------------------------------------------------------


def test_failures_are_classified_from_apprise_s_own_lines() -> None:
    """401/403/404/410 are PERMANENT; 429, 5xx, timeouts and connection errors RETRY; each
    with a reason that names no part of the URL."""
    failure = AppriseResultStatus.FAILURE
    kind, reason = classify_result(
        failure, ["Failed to send JSON POST notification: Verification Failed., error=401."]
    )
    assert kind is PERMANENT
    assert "HTTP 401 Unauthorized" in reason
    for code in (403, 404, 410):
        assert classify_result(failure, [f"Failed: x, error={code}."])[0] is PERMANENT
    assert classify_result(failure, ["Failed: Too many, error=429."]) == (
        RETRY,
        "the service answered HTTP 429 Too Many Requests",
    )
    assert classify_result(failure, ["error 503"])[1].startswith("the service answered HTTP 503")
    timed_out = [
        "A Connection error occurred sending JSON notification to 127.0.0.1.",
        "Socket Exception: HTTPConnectionPool(host='h', port=1): Read timed out.",
    ]
    assert classify_result(failure, timed_out) == (RETRY, "the service did not answer in time")
    assert classify_result(AppriseResultStatus.TIMEOUT, []) == (
        RETRY,
        "the service did not answer in time",
    )
    assert classify_result(failure, timed_out[:1]) == (
        RETRY,
        "cannot reach the service (connection error)",
    )
    assert classify_result(AppriseResultStatus.SUCCESS, []) == (SENT, "")


async def test_a_stored_url_apprise_cannot_load_is_permanent(channel: AppriseChannel) -> None:
    """A stored address Apprise cannot load (no bot token) disables, without a request."""
    outcomes = await send_all(channel, make_batch("tgram://not-a-token", [make_paper(1)]))
    assert [o.kind for o in outcomes] == [PERMANENT]
    assert "Apprise cannot load this URL" in (outcomes[0].error or "")


class Recorded(logging.Handler):
    """Keeps every record it is handed, as the service's stderr handler would print them."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[tuple[str, str]] = []  # (logger name, message)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.name, record.getMessage()))


@pytest.fixture
def root_handler() -> Iterator[Recorded]:
    """A handler on the root logger at DEBUG, where `configure_logging` puts the service's
    (caplog cannot stand in: pytest also attaches it to loggers that do not propagate)."""
    root = logging.getLogger()
    handler, level = Recorded(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


async def test_no_secret_reaches_the_logs(
    server: RecordingHttpServer,
    channel: AppriseChannel,
    root_handler: Recorded,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With every logger at DEBUG, a sent, a refused and an unloadable notification and an
    alert log event lines with the masked target only: Apprise's own lines and the HTTP
    library's request lines (both name the URL's path) reach no handler of the service, nor
    Python's last-resort handler."""
    url = json_url(server)
    await send_all(channel, make_batch(url, [make_paper(1)]))
    server.script(Answer(status=401))
    refused = await send_all(channel, make_batch(url, [make_paper(2)]))
    assert refused[0].kind is PERMANENT
    assert await channel.notify(Target(KIND, url), "an alert")
    await send_all(channel, make_batch(f"tgram://{SECRET}", [make_paper(3)]))
    assert len(server.received) == 3  # the requests were made: there was something to log
    shown = Target(KIND, url).display
    # The stand-in's own access log names the path it was asked for: it is the test's, not
    # the service's (and proves DEBUG and INFO records did reach this handler).
    assert any(name == "aiohttp.access" for name, _ in root_handler.records)
    text = "\n".join(line for name, line in root_handler.records if name != "aiohttp.access")
    assert f"apprise.sent target={shown} papers=1" in text
    assert f"apprise.send_failed target={shown} outcome=permanent" in text
    captured = capsys.readouterr()
    for seen in (text, captured.out, captured.err, refused[0].error or ""):
        assert SECRET not in seen
        assert PASSWORD not in seen
    assert not [n for n, _ in root_handler.records if n.startswith(("apprise", "urllib3"))]


# -- targets: the CLI, the config, chat -------------------------------------------------------


def test_validate_target_uses_apprise_s_parser_and_never_echoes_secrets() -> None:
    """Apprise URLs Apprise can load pass (stripped); the rest are refused with one line that
    names at most the scheme; other kinds pass through."""
    for url in (
        "json://127.0.0.1:8080/hook",
        "mmosts://mattermost.example.org/abcdefghijklmnopqrstuvwxyz",
        "ntfys://ntfy.sh/lab-papers",
        "tgram://123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/-1001234567890",
        "matrixs://bot:secret@matrix.example.org/#papers:example.org",
    ):
        assert validate_target(Target(KIND, f" {url} ")) == Target(KIND, url)
    refused = {
        f"nosuch://user:{SECRET}@host/x": "no Apprise service uses nosuch://",
        f"tgram://{SECRET}": "Apprise's Telegram service cannot use this URL",
        f"{SECRET}": "not an Apprise URL",
        f"json://host/{SECRET} x": "one word",
        "json://********#0123abcd": "masked form",
    }
    for url, why in refused.items():
        with pytest.raises(ValueError, match=re.escape(why)) as info:
            validate_target(Target(KIND, url))
        assert SECRET not in str(info.value)
        assert "\n" not in str(info.value)
    assert validate_target(Target("slack", "C0123")) == Target("slack", "C0123")


DOCS = Path(__file__).parent.parent / "docs" / "feeds-and-apprise.md"


def test_every_example_url_in_the_docs_is_one_apprise_loads() -> None:
    """The Apprise section's example targets (Teams, Mattermost, Matrix, Telegram, ntfy) and
    config entries pass `subscriptions add`'s check, and say what the section says they do."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Apprise targets", 1)[1].split("\n## ", 1)[0]
    examples = re.findall(r"apprise:([a-z][a-z0-9+.-]*://[^\s\"`]+)", section)
    examples = [url for url in examples if "********" not in url]
    examples += re.findall(r'^  "([a-z]+://\S+) ', section, flags=re.MULTILINE)  # [apprise]
    schemes = {url.split("://", 1)[0] for url in examples}
    assert {"https", "workflows", "mmosts", "matrixs", "tgram", "ntfys"} <= schemes
    for url in examples:
        assert validate_target(Target(KIND, url)) == Target(KIND, url), url
    shown = re.search(r"# (apprise:mmosts://\S+)", section)
    assert shown is not None
    listed = Target(KIND, "mmosts://mattermost.example.org/HOOK_TOKEN?format=markdown")
    assert shown.group(1) == listed.display


def test_cli_subscriptions_add_list_and_remove_an_apprise_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`subscriptions add apprise:URL QUERY` goes through the registry; a URL Apprise cannot
    load is refused without echoing it; `list` shows the URL masked, and the masked form
    names it again for `remove`."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DAILY_PAPERS_CONFIG", raising=False)
    monkeypatch.setenv("DAILY_PAPERS_SERVICE_DATA_DIR", str(tmp_path))
    url = f"json://bot:{PASSWORD}@127.0.0.1:9/hook/{SECRET}"
    assert cli_main(["subscriptions", "add", f"apprise:{url}", "diffusion models"]) == 0
    added = capsys.readouterr().out
    shown = Target(KIND, url).display
    assert added == f"{shown} subscribed to 'diffusion models'\n"
    assert cli_main(["subscriptions", "add", f"apprise:tgram://{SECRET}", "q"]) == 2
    error = capsys.readouterr().err
    assert "Apprise's Telegram service cannot use this URL" in error
    assert cli_main(["subscriptions", "add", f"apprise:nosuch://{SECRET}", "q"]) == 2
    assert "no Apprise service uses nosuch://" in capsys.readouterr().err
    assert cli_main(["subscriptions", "list"]) == 0
    listed = capsys.readouterr().out
    assert listed == f"{shown}\tdiffusion models\tactive\n"
    assert cli_main(["subscriptions", "remove", shown, "diffusion models"]) == 0
    assert "unsubscribed from 'diffusion models'" in capsys.readouterr().out
    everything = error + added + listed
    assert SECRET not in everything
    assert PASSWORD not in everything


def test_config_targets_are_subscribed_once_and_bad_entries_named_by_position(
    tmp_path: Path, sqlite_store: SqlStore
) -> None:
    """`[apprise] targets` (file or environment) subscribes each entry once; one disabled
    since stays disabled; a bad entry is named by its position, never its URL."""
    first = f"json://127.0.0.1:9/hook/{SECRET}"
    config = tmp_path / "daily-papers.toml"
    config.write_text(
        f'[apprise]\ntargets = ["{first} diffusion models", "ntfys://ntfy.sh/lab ti:llm"]\n',
        encoding="utf-8",
    )
    settings = load_settings(config, env={}, extensions=channel_settings)
    assert configured_subscriptions(settings) == [
        (Target(KIND, first), "diffusion models"),
        (Target(KIND, "ntfys://ntfy.sh/lab"), "ti:llm"),
    ]
    assert subscribe_configured_targets(settings, sqlite_store, now=NOW) == 2
    assert subscribe_configured_targets(settings, sqlite_store, now=NOW) == 0
    (sub,) = sqlite_store.list_subscriptions(Target(KIND, first))
    sqlite_store.disable_subscription(sub.id, "the service answered HTTP 404 Not Found")
    assert subscribe_configured_targets(settings, sqlite_store, now=NOW) == 0
    assert not sqlite_store.list_subscriptions(Target(KIND, first))[0].active

    from_env = load_settings(
        config,
        env={"DAILY_PAPERS_APPRISE_TARGETS": json.dumps([f"{first} graphs"])},
        extensions=channel_settings,
    )
    assert configured_subscriptions(from_env) == [(Target(KIND, first), "graphs")]
    bad = {
        f"tgram://{SECRET} llm": r"apprise.targets\[1\] is not valid: apprise: Apprise's Telegram",
        first: r"apprise.targets\[1\] has no query",
        f'{first} "unclosed': r"apprise.targets\[1\] has an invalid query",
    }
    for entry, message in bad.items():
        settings = settings_for_tests(
            extensions=EXTENSIONS, apprise={"targets": [f"{first} ok", entry]}
        )
        with pytest.raises(ConfigError, match=message) as info:
            configured_subscriptions(settings)
        assert SECRET not in str(info.value)


async def test_the_factory_subscribes_the_config_and_builds_the_channel(
    sqlite_store: SqlStore,
) -> None:
    """The registry's factory: always a channel (URLs carry their own credentials), and the
    config's entries subscribed; the registry knows the kind and its settings section."""
    url = "json://127.0.0.1:9/hook"
    settings = settings_for_tests(extensions=EXTENSIONS, apprise={"targets": [f"{url} llm"]})
    async with AsyncExitStack() as stack:
        built = await channel_factory(settings, sqlite_store, stack)
    assert built.kind == KIND
    assert [(s.target, s.keyword) for s in sqlite_store.list_subscriptions()] == [
        (Target(KIND, url), "llm")
    ]
    spec = channel_specs()[KIND]
    assert spec.validate is validate_target
    assert channel_settings()["apprise"] is AppriseSettings
    assert spec.secrets == ()


async def test_chat_commands_cannot_name_an_apprise_target(sqlite_store: SqlStore) -> None:
    """`/papers subscribe apprise:URL` only ever subscribes the channel it runs in: no
    apprise: target comes from a chat command."""
    slack = Target("slack", "C0123TEST")
    service = CommandService(
        store=sqlite_store,
        settings=settings_for_tests(),
        request_backfill=lambda query: None,
        markup=PlainMarkup(),
        clock=lambda: NOW,
    )
    for text in (
        f"subscribe apprise:json://127.0.0.1:9/{SECRET}",
        f"subscribe apprise:json://127.0.0.1:9/{SECRET} diffusion",
    ):
        await service.handle(Invocation(slack, "U1", True, text))
    assert {s.target for s in sqlite_store.list_subscriptions()} <= {slack}
    assert not [s for s in sqlite_store.list_subscriptions() if s.target.kind == KIND]


# -- end to end -----------------------------------------------------------------------------

REFERENCE_DAY = datetime(2025, 2, 11, 12, 0, tzinfo=UTC)
KEYWORD = "Video Understanding"


@pytest.fixture
def arxiv() -> Iterator[ArxivStandIn]:
    """The arXiv stand-in serving the reference README's papers."""
    with ArxivStandIn(load_reference_papers()) as stand_in:
        yield stand_in


def cycle_settings(tmp_path: Path, arxiv: ArxivStandIn, *targets: str) -> Settings:
    """Test settings: the stand-in, no README, immediate retries, these Apprise targets."""
    return settings_for_tests(
        extensions=EXTENSIONS,
        service={"data_dir": str(tmp_path)},
        arxiv={"api_url": arxiv.url, "categories": ["cs.CV", "cs.LG"], "retries": 1},
        readme={"enabled": False},
        delivery={"retry_base_minutes": 0},
        apprise={"targets": list(targets)},
    )


async def cycle(settings: Settings, store: SqlStore, moment: datetime) -> RunReport:
    """One daily cycle at `moment`, with the Apprise channel as the registry builds it."""
    async with AsyncExitStack() as stack:
        channel = await channel_factory(settings, store, stack)
        with ArxivSource.from_settings(settings) as source:
            return await run_cycle(
                settings=settings,
                store=store,
                source=source,
                channels={channel.kind: channel},
                now=lambda: moment,
            )


async def test_a_cycle_sends_each_configured_target_one_notification_once(
    tmp_path: Path, arxiv: ArxivStandIn, server: RecordingHttpServer
) -> None:
    """run_cycle -> exactly one notification per target holding the window's papers; the next
    cycle sends nothing; a target whose service answers 404 is disabled with the reason."""
    good = f"json://127.0.0.1:{server.port}/good/{SECRET}"
    gone = f"form://127.0.0.1:{server.port}/gone/{SECRET}"
    settings = cycle_settings(tmp_path, arxiv, f"{good} {KEYWORD}", f"{gone} {KEYWORD}")
    with SqlStore.from_settings(settings) as store:
        store.migrate()
        server.refuse("/gone/", 404)  # the two targets are sent to concurrently
        first = await cycle(settings, store, REFERENCE_DAY)
        assert first.ok, first.error
        by_path = {r.path.rsplit("/", 1)[0]: r for r in server.received}
        assert sorted(by_path) == ["/gone", "/good"]
        window_start = REFERENCE_DAY - timedelta(days=settings.arxiv.lookback_days)
        section = next(s for s in load_reference_sections() if s.keyword == KEYWORD)
        expected = [p for p in section.papers if window_start <= p.published < REFERENCE_DAY]
        assert expected
        payload = by_path["/good"].json()
        assert payload["title"] == f"{len(expected)} new arXiv papers: {KEYWORD}"
        for paper in expected:
            assert f"]({paper.abs_url})" in payload["message"]
        assert first.sent == len(expected)
        assert first.disabled == 1
        (gone_sub,) = store.list_subscriptions(Target(KIND, gone))
        assert not gone_sub.active
        assert "HTTP 404 Not Found" in (gone_sub.disabled_reason or "")
        assert SECRET not in (gone_sub.disabled_reason or "")

        second = await cycle(settings, store, REFERENCE_DAY + timedelta(hours=1))
        assert second.ok
        assert second.sent == 0
        assert len(server.received) == 2
