"""Atom feeds per keyword: what feed readers parse, stable bytes and ids, the files on disk, the
OPML, the /feeds/ route of the real web server, and a cycle end to end."""

from __future__ import annotations

import os
import re
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import aiohttp
import feedparser
import pytest
from lxml import etree

from digest.config import Settings, settings_for_tests
from digest.cycle import render_snapshot
from digest.domain import Paper, Target
from digest.errors import ConfigError
from digest.feeds import (
    EMPTY_FEED_UPDATED,
    OPML_NAME,
    TextCache,
    build_feed,
    build_feeds,
    build_opml,
    entry_id,
    feed_id,
    write_feeds,
)
from digest.readme import feed_name, page_slug
from digest.render import collapse_ws
from digest.web import FEED_CACHE_CONTROL, WebServer, build_web_app
from storage.sql_store import SqlStore
from tests.fakes.arxiv_server import ArxivStandIn
from tests.reference_papers import load_reference_papers, load_reference_sections
from tests.test_cycle import REFERENCE_DAY, Clock, cycle, make_settings

ATOM = "{http://www.w3.org/2005/Atom}"


def _sections() -> list[tuple[str, tuple[Paper, ...]]]:
    return [(s.keyword, s.papers) for s in load_reference_sections()]


def _paper(number: int, **changes: object) -> Paper:
    when = datetime(2025, 1, 1, 12, tzinfo=UTC) + timedelta(days=number)
    paper = Paper(
        arxiv_id=f"2501.{number:05d}",
        version=1,
        title=f"Paper {number}",
        authors=("Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra"),
        abstract="An abstract\nover two lines.",
        published=when,
        updated=when,
        primary_category="cs.CV",
        categories=("cs.CV", "cs.LG"),
    )
    return replace(paper, **changes)


def _xml(text: str) -> etree._Element:
    """Strict XML parsing (lxml), as a feed validator would."""
    return etree.fromstring(text.encode("utf-8"))


def _parse(text: str) -> feedparser.FeedParserDict:
    parsed = feedparser.parse(text.encode("utf-8"))
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    return parsed


# --- the feed's content ------------------------------------------------------------------------


def test_every_reference_feed_parses_without_warnings_and_round_trips() -> None:
    """feedparser reads each keyword's feed with bozo 0; entries are the newest papers, newest
    first, with title, all authors, abstract, arXiv links, categories and times intact."""
    for keyword, papers in _sections():
        parsed = _parse(build_feed(keyword, papers, entries=7))
        assert parsed.version == "atom10"
        newest = sorted(papers, key=lambda p: (p.updated, p.arxiv_id), reverse=True)[:7]
        assert [e.id for e in parsed.entries] == [entry_id(p) for p in newest]
        assert parsed.feed.id == feed_id(keyword)
        assert parsed.feed.title == f"arXiv papers: {keyword}"
        assert parsed.feed.updated_parsed == newest[0].updated.utctimetuple()
        for entry, paper in zip(parsed.entries, newest, strict=True):
            assert entry.title == collapse_ws(paper.title)
            assert [a.name for a in entry.authors] == list(paper.authors)
            assert entry.summary == collapse_ws(paper.abstract)
            assert entry.summary_detail.type == "text/plain"
            links = {(link.rel, link.get("type", "")): link.href for link in entry.links}
            assert links[("alternate", "text/html")] == paper.abs_url
            assert links[("related", "application/pdf")] == paper.pdf_url
            assert entry.updated_parsed == paper.updated.utctimetuple()
            assert entry.published_parsed == paper.published.utctimetuple()
            assert [t.term for t in entry.tags] == list(
                dict.fromkeys((paper.primary_category, *paper.categories))
            )


def test_the_xml_follows_rfc_4287() -> None:
    """Feed: id, title, updated, author, one self link; entry: one alternate link, id, updated,
    a summary of type text (the checks a feed validator makes that feedparser forgives)."""
    papers = [_paper(n) for n in range(3)]
    root = _xml(build_feed("diffusion models", papers, base_url="https://x.org/feeds"))
    assert root.tag == f"{ATOM}feed"
    for name in ("id", "title", "updated", "author"):
        assert len(root.findall(f"{ATOM}{name}")) == 1, name
    selfs = [link for link in root.findall(f"{ATOM}link") if link.get("rel") == "self"]
    assert [link.get("href") for link in selfs] == [
        f"https://x.org/feeds/{feed_name('diffusion models')}"
    ]
    entries = root.findall(f"{ATOM}entry")
    assert len(entries) == 3
    for entry in entries:
        alternates = [
            link
            for link in entry.findall(f"{ATOM}link")
            if link.get("rel", "alternate") == "alternate"
        ]
        assert len(alternates) == 1
        assert entry.find(f"{ATOM}summary").get("type") == "text"  # type: ignore[union-attr]
        assert entry.findtext(f"{ATOM}updated", "").endswith("+00:00")


def test_the_same_papers_give_the_same_bytes_and_ids_whatever_the_order_or_time() -> None:
    """Nothing comes from the clock: building twice (input shuffled) gives identical bytes."""
    papers = [_paper(n) for n in range(5)]
    first = build_feed("diffusion models", papers)
    assert build_feed("diffusion models", list(reversed(papers))) == first
    assert feed_id("diffusion models") == feed_id("Diffusion  Models")
    assert feed_name("diffusion models") == feed_name("Diffusion  Models")
    assert feed_name("C++") != feed_name("C#")
    assert feed_id("diffusion models") != feed_id("diffusion")


def test_a_new_version_updates_the_same_entry() -> None:
    """v2 of a paper keeps its entry id (the abs URL without version) with the new time."""
    v1 = _paper(1)
    v2 = replace(v1, version=2, updated=v1.updated + timedelta(days=3))
    first = _parse(build_feed("k", [v1])).entries[0]
    second = _parse(build_feed("k", [v2])).entries[0]
    assert first.id == second.id == "https://arxiv.org/abs/2501.00001"
    assert second.updated_parsed > first.updated_parsed
    assert second.link == "http://arxiv.org/abs/2501.00001v2"
    duplicates = _parse(build_feed("k", [v1, v2, _paper(2)])).entries
    assert len({e.id for e in duplicates}) == len(duplicates) == 2


def test_hostile_text_is_escaped_and_unusable_code_points_dropped() -> None:
    """Markup, entities and control characters in paper text never break the XML."""
    nasty = 'A <b>bold</b> & "quoted" ]]> title\x0b\x01 with \ufffe'
    paper = _paper(1, title=nasty, abstract=nasty, authors=("O'Brien <ob@x>", "\x02"))
    parsed = _parse(build_feed(nasty, [paper]))
    expected = 'A <b>bold</b> & "quoted" ]]> title with'
    assert parsed.entries[0].summary == expected
    assert parsed.entries[0].title == expected
    assert [a.name for a in parsed.entries[0].authors] == ["O'Brien <ob@x>"]
    assert _xml(build_opml([nasty])).find("./body/outline").get("text") == expected


def test_a_keyword_without_papers_is_a_valid_empty_feed() -> None:
    """No papers: no entries, and an <updated> that is not the clock."""
    parsed = _parse(build_feed("nothing yet", []))
    assert parsed.entries == []
    assert parsed.feed.updated_parsed == EMPTY_FEED_UPDATED.utctimetuple()


def test_links_are_relative_without_a_base_url_and_absolute_with_one() -> None:
    """Self links and OPML entries follow feeds.base_url (or web.base_url + /feeds)."""
    name = feed_name("k")
    relative = _parse(build_feed("k", [_paper(1)]))
    assert [link.href for link in relative.feed.links if link.rel == "self"] == [name]
    absolute = _parse(build_feed("k", [_paper(1)], base_url="https://lab.github.io/papers/feeds/"))
    assert [link.href for link in absolute.feed.links if link.rel == "self"] == [
        f"https://lab.github.io/papers/feeds/{name}"
    ]
    home = _parse(build_feed("k", [], home_url="https://github.com/lab/papers"))
    assert home.feed.link == "https://github.com/lab/papers"
    settings = settings_for_tests(web={"base_url": "https://papers.lab.org/"})
    assert settings.feeds_base_url == "https://papers.lab.org/feeds"
    settings = settings_for_tests(
        web={"base_url": "https://papers.lab.org"}, feeds={"base_url": "https://lab.github.io/f/"}
    )
    assert settings.feeds_base_url == "https://lab.github.io/f"


def test_the_opml_lists_every_feed_in_readme_order() -> None:
    """index.opml parses as XML and has one rss outline per keyword, pointing at its feed."""
    keywords = [keyword for keyword, _ in _sections()]
    files = list(build_feeds(_sections(), base_url="https://x.org/feeds"))
    assert [f.name for f in files] == [*(feed_name(k) for k in keywords), OPML_NAME]
    root = _xml(files[-1].text)
    assert root.tag == "opml"
    assert root.get("version") == "2.0"
    outlines = root.findall("./body/outline")
    assert [o.get("text") for o in outlines] == keywords
    assert [o.get("xmlUrl") for o in outlines] == [
        f"https://x.org/feeds/{feed_name(k)}" for k in keywords
    ]
    assert {o.get("type") for o in outlines} == {"rss"}
    assert all(feed_name(k).startswith(page_slug(k)) for k in keywords)


# --- files ---------------------------------------------------------------------------------------


def test_write_feeds_writes_once_and_an_unchanged_run_touches_nothing(tmp_path: Path) -> None:
    """The first write creates the folder and files; the same input again changes no mtime."""
    folder = tmp_path / "feeds"
    files = list(build_feeds(_sections()))
    assert write_feeds(folder, files) is True
    assert {p.name for p in folder.iterdir()} == {f.name for f in files}
    assert all((folder / f.name).read_text(encoding="utf-8") == f.text for f in files)
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert write_feeds(folder, build_feeds(_sections())) is False
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes
    assert oct((folder / OPML_NAME).stat().st_mode & 0o777) == "0o644"  # servable by Pages


def test_a_keyword_no_longer_published_loses_its_feed_and_others_files_stay(
    tmp_path: Path,
) -> None:
    """Stale feeds are removed; files this service would never have named are left alone."""
    folder = tmp_path / "feeds"
    sections = _sections()
    write_feeds(folder, build_feeds(sections))
    (folder / "notes.atom").write_text("mine")
    (folder / "README.txt").write_text("mine")
    gone = feed_name(sections[0][0])
    assert write_feeds(folder, build_feeds(sections[1:])) is True
    names = {p.name for p in folder.iterdir()}
    assert gone not in names
    assert {"notes.atom", "README.txt", OPML_NAME} <= names
    opml = (folder / OPML_NAME).read_text(encoding="utf-8")
    assert gone not in opml


# --- the web server ------------------------------------------------------------------------------


@pytest.fixture
async def feeds_server(sqlite_store: SqlStore, tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """The real web server over written feeds; yields its URL and the feeds folder."""
    settings = settings_for_tests(
        service={"data_dir": str(tmp_path)}, feeds={"enabled": True}, email={"enabled": False}
    )
    write_feeds(settings.feeds_path, build_feeds(_sections()))
    app = build_web_app(settings=settings, store=sqlite_store)
    async with WebServer(app=app, host="127.0.0.1", port=0) as server:
        yield server.url, settings.feeds_path


async def test_the_web_server_serves_the_written_bytes_with_validators(
    feeds_server: tuple[str, Path],
) -> None:
    """GET /feeds/<slug>.atom: the file's bytes, the Atom type, a strong ETag, Last-Modified."""
    url, folder = feeds_server
    name = feed_name(_sections()[0][0])
    async with aiohttp.ClientSession() as http, http.get(f"{url}/feeds/{name}") as response:
        assert response.status == 200
        assert response.content_type == "application/atom+xml"
        assert response.charset == "utf-8"
        assert await response.read() == (folder / name).read_bytes()
        etag = response.headers["ETag"]
        assert etag.startswith('"')  # strong: no W/
        assert response.headers["Last-Modified"] == format_datetime(
            datetime.fromtimestamp(int((folder / name).stat().st_mtime), UTC), usegmt=True
        )
        assert response.headers["Cache-Control"] == FEED_CACHE_CONTROL
    async with aiohttp.ClientSession() as http, http.get(f"{url}/feeds/{OPML_NAME}") as response:
        assert response.status == 200
        assert response.content_type == "text/x-opml"
        assert await response.read() == (folder / OPML_NAME).read_bytes()


async def test_conditional_requests_get_304_until_the_feed_changes(
    feeds_server: tuple[str, Path],
) -> None:
    """If-None-Match and If-Modified-Since answer 304; a rewritten feed answers 200 again."""
    url, folder = feeds_server
    name = feed_name(_sections()[0][0])
    feed = f"{url}/feeds/{name}"
    async with aiohttp.ClientSession() as http:
        async with http.get(feed) as response:
            etag = response.headers["ETag"]
            modified = response.headers["Last-Modified"]
        async with http.get(feed, headers={"If-None-Match": etag}) as response:
            assert response.status == 304
            assert await response.read() == b""
            assert response.headers["ETag"] == etag
        async with http.get(feed, headers={"If-None-Match": f'"other", W/{etag}'}) as response:
            assert response.status == 304  # If-None-Match compares weakly (RFC 9110)
        async with http.get(feed, headers={"If-Modified-Since": modified}) as response:
            assert response.status == 304
        async with http.get(feed, headers={"If-None-Match": "*"}) as response:
            assert response.status == 304
        async with http.get(
            feed, headers={"If-None-Match": '"other"', "If-Modified-Since": modified}
        ) as response:
            assert response.status == 200  # If-None-Match decides when both are sent
        # The next cycle rewrites the feed: new bytes, new tag, a later time.
        sections = _sections()
        newer = replace(
            sections[0][1][0], title="Revised", updated=datetime(2030, 1, 1, tzinfo=UTC)
        )
        write_feeds(folder, build_feeds([(sections[0][0], (newer, *sections[0][1]))]))
        later = time.time() + 5
        os.utime(folder / name, (later, later))
        async with http.get(
            feed, headers={"If-None-Match": etag, "If-Modified-Since": modified}
        ) as response:
            assert response.status == 200
            assert response.headers["ETag"] != etag
            assert b"Revised" in await response.read()
        async with http.get(feed, headers={"If-Modified-Since": modified}) as response:
            assert response.status == 200


@pytest.mark.parametrize(
    "path",
    [
        "/feeds/unknown-abcdef.atom",
        "/feeds/README.md",
        "/feeds/..%2FREADME.md",
        "/feeds/%2e%2e%2fdaily-papers.sqlite3",
        "/feeds/../README.md",
        "/feeds/",
        "/feeds/index.OPML",
    ],
)
async def test_unknown_names_and_traversal_are_404(
    feeds_server: tuple[str, Path], path: str
) -> None:
    """Only names the feeds folder can hold are served; nothing outside it ever is."""
    url, folder = feeds_server
    (folder.parent / "README.md").write_text("secret\n")
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}{path}", allow_redirects=False) as response,
    ):
        assert response.status == 404
        assert b"secret" not in await response.read()


async def test_feeds_off_serves_nothing(sqlite_store: SqlStore, tmp_path: Path) -> None:
    """With feeds.enabled off the route answers 404 even if files were left behind."""
    settings = settings_for_tests(service={"data_dir": str(tmp_path)}, email={"enabled": False})
    write_feeds(settings.feeds_path, build_feeds(_sections()))
    app = build_web_app(settings=settings, store=sqlite_store)
    async with (
        WebServer(app=app, host="127.0.0.1", port=0) as server,
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/feeds/{OPML_NAME}") as response,
    ):
        assert response.status == 404


# --- settings and the cycle ----------------------------------------------------------------------


def test_feeds_need_the_readme_and_a_valid_base_url() -> None:
    """feeds.enabled without readme.enabled, or a bad base_url, is a one-line ConfigError."""
    with pytest.raises(ConfigError, match=r"feeds.enabled = true needs readme.enabled") as caught:
        settings_for_tests(feeds={"enabled": True}, readme={"enabled": False})
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match=r"feeds.base_url"):
        settings_for_tests(feeds={"base_url": "ftp://x"})
    with pytest.raises(ConfigError, match=r"feeds.entries"):
        settings_for_tests(feeds={"entries": 0})


def _feed_settings(tmp_path: Path, server: ArxivStandIn, **feeds: object) -> Settings:
    return make_settings(tmp_path, server, feeds={"enabled": True, "entries": 5, **feeds})


@pytest.fixture
def server() -> Iterator[ArxivStandIn]:
    """The arXiv stand-in serving the reference README's papers."""
    with ArxivStandIn(load_reference_papers()) as stand_in:
        yield stand_in


async def test_a_cycle_with_feeds_on_writes_them_and_a_rerun_writes_nothing(
    tmp_path: Path, server: ArxivStandIn
) -> None:
    """run_cycle against the stand-in writes a feed per keyword and the OPML next to the
    README, whose headings link to them; the next cycle leaves every file untouched."""
    settings = _feed_settings(tmp_path, server)
    report = await cycle(settings, Clock(REFERENCE_DAY))
    assert report.ok, report.error
    folder = settings.readme_path.parent / "feeds"
    keywords = [s.keyword for s in load_reference_sections()]
    assert {p.name for p in folder.iterdir()} == {*(feed_name(k) for k in keywords), OPML_NAME}
    readme = settings.readme_path.read_text(encoding="utf-8")
    for keyword in keywords:
        assert f"## [{keyword}](feeds/{feed_name(keyword)})\n" in readme
        parsed = _parse((folder / feed_name(keyword)).read_text(encoding="utf-8"))
        assert len(parsed.entries) == 5  # feeds.entries, while the README keeps 20
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = await cycle(settings, Clock(REFERENCE_DAY + timedelta(hours=1)))
    assert again.ok, again.error
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes


async def test_a_keyword_removed_from_the_config_loses_its_feed(
    tmp_path: Path, server: ArxivStandIn
) -> None:
    """A keyword that stops being tracked has no feed after the next rendering."""
    settings = _feed_settings(tmp_path, server)
    assert (await cycle(settings, Clock(REFERENCE_DAY))).ok
    store = SqlStore.from_settings(settings)
    try:
        gone = settings.keywords.queries[0]
        store.remove_keyword(gone)
        assert await render_snapshot(settings=settings, store=store, now=REFERENCE_DAY) is True
    finally:
        store.close()
    names = {p.name for p in settings.feeds_path.iterdir()}
    assert feed_name(gone) not in names
    assert len(names) == 4  # three feeds and the OPML


async def test_head_answers_like_get_without_a_body(feeds_server: tuple[str, Path]) -> None:
    """HEAD gives the same validators as GET, so a reader can check for news for free."""
    url, _folder = feeds_server
    feed = f"{url}/feeds/{feed_name(_sections()[1][0])}"
    async with aiohttp.ClientSession() as http:
        async with http.get(feed) as got:
            etag = got.headers["ETag"]
        async with http.head(feed) as response:
            assert response.status == 200
            assert response.headers["ETag"] == etag
            assert await response.read() == b""


DOCS = Path(__file__).parent.parent / "docs" / "feeds-and-apprise.md"


def test_the_docs_config_example_loads_and_the_documented_headers_are_the_served_ones() -> None:
    """The feeds section's TOML is a valid config with feeds on, and its caching table names
    the Cache-Control value the route sends."""
    section = DOCS.read_text(encoding="utf-8").split("## Atom feeds", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```toml\n(.*?)```", section, flags=re.DOTALL)
    assert block is not None
    settings = settings_for_tests(**tomllib.loads(block.group(1)))
    assert settings.feeds.enabled
    assert settings.feeds_base_url == "https://lab.github.io/papers/feeds"
    assert f"`{FEED_CACHE_CONTROL}`" in section
    assert "`application/atom+xml; charset=utf-8`" in section
    assert "`text/x-opml; charset=utf-8`" in section


def test_a_paper_in_many_feeds_is_cleaned_once_and_feeds_are_built_one_at_a_time() -> None:
    """build_feeds yields each feed as it is built (memory stays one feed), sharing the
    papers' cleaned text between keywords."""
    shared = _paper(1)
    sections = [("a", [shared]), ("b", [shared, _paper(2)])]
    files = build_feeds(sections)
    first = next(files)
    assert (first.name, first.keyword) == (feed_name("a"), "a")
    rest = list(files)
    assert [f.keyword for f in rest] == ["b", None]
    texts: TextCache = {}
    build_feed("a", [shared], texts=texts)
    assert list(texts) == [("2501.00001", 1)]
    assert build_feed("b", [shared], texts=texts) == build_feed("b", [shared])


async def test_an_email_readers_own_query_never_gets_a_public_feed(
    tmp_path: Path, server: ArxivStandIn
) -> None:
    """Feeds follow the README's publishing rule: the operator's keyword and a channel's query
    get one; an email reader's own query does not, not even in the OPML."""
    settings = _feed_settings(tmp_path, server, base_url="https://x.org/feeds")
    settings = replace(settings, keywords=replace(settings.keywords, queries=[]))
    store = SqlStore.from_settings(settings)
    store.migrate()
    try:
        store.add_keyword("operator topic")
        store.add_subscription(Target("slack", "C1"), "channel topic", now=REFERENCE_DAY)
        store.add_subscription(Target("email", "a@lab.org"), "reader topic", now=REFERENCE_DAY)
        assert await render_snapshot(settings=settings, store=store, now=REFERENCE_DAY)
    finally:
        store.close()
    names = {p.name for p in settings.feeds_path.iterdir()}
    assert names == {feed_name("operator topic"), feed_name("channel topic"), OPML_NAME}
    opml = (settings.feeds_path / OPML_NAME).read_text(encoding="utf-8")
    assert "reader topic" not in opml
    assert f'xmlUrl="https://x.org/feeds/{feed_name("operator topic")}"' in opml
