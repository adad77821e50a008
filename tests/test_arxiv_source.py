"""ArxivSource through `requests` against the local stand-in; parse_page on recorded pages."""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from digest.arxiv_source import (
    ALL_CATEGORIES,
    ArxivSource,
    MalformedPage,
    build_query_url,
    build_user_agent,
    harvest_queries,
    parse_page,
)
from digest.config import DEFAULT_CATEGORIES, settings_for_tests
from digest.domain import Paper
from digest.errors import ArxivError, ConfigError, HarvestIncomplete
from tests.fakes.arxiv_server import (
    FIXTURES,
    ArxivStandIn,
    EmptyPage,
    Fault,
    Mangled,
    Partial,
    Replay,
    Reset,
    ServerError,
    Shifted,
    Slow,
    Throttle,
    cut_inside,
    recorded,
    render_feed,
)

WINDOW_START = datetime(2025, 2, 1, tzinfo=UTC)
WINDOW_END = datetime(2025, 2, 8, tzinfo=UTC)


class FakeClock:
    """A monotonic clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_paper(n: int, *, categories: tuple[str, ...] = ("cs.CV",), version: int = 1) -> Paper:
    """A synthetic paper submitted inside the test window, n minutes after its start."""
    when = WINDOW_START + timedelta(minutes=n)
    return Paper(
        arxiv_id=f"2502.{n:05d}",
        version=version,
        title=f"Synthetic paper {n}",
        authors=("A. Author",),
        abstract=f"Abstract of paper number {n}.",
        published=when,
        updated=when,
        primary_category=categories[0],
        categories=categories,
    )


@pytest.fixture
def clock() -> FakeClock:
    """A fresh fake clock per test."""
    return FakeClock()


@pytest.fixture
def server(clock: FakeClock) -> Iterator[ArxivStandIn]:
    """A stand-in with five synthetic cs.CV papers, stamping requests with the fake clock."""
    with ArxivStandIn([make_paper(n) for n in range(5)], clock=clock) as stand_in:
        yield stand_in


def make_source(server: ArxivStandIn, clock: FakeClock, **overrides: object) -> ArxivSource:
    """A source pointed at the stand-in with zero delays, a fake clock and no jitter."""
    options: dict[str, object] = {
        "api_url": server.url,
        "user_agent": build_user_agent("lab@example.org"),
        "delay_seconds": 0.0,
        "timeout_seconds": 2.0,
        "retries": 3,
        "backoff_max_seconds": 60.0,
        "page_size": 2000,
        "sleep": clock.sleep,
        "clock": clock,
        "jitter": False,
    }
    options.update(overrides)
    return ArxivSource(**options)  # type: ignore[arg-type]


def harvest(source: ArxivSource, categories: list[str] | None = None) -> object:
    """Harvest the test window."""
    return source.harvest(start=WINDOW_START, end=WINDOW_END, categories=categories or ["cs.CV"])


# -- recorded responses through the real client ---------------------------------------------


def test_recorded_testing_pages_are_paged_and_parsed(server: ArxivStandIn, clock: FakeClock):
    """Three recorded pages of `testing`: 30 papers, `&` and LaTeX + non-ASCII titles intact."""
    for start in ("0", "10", "20"):
        name = {
            "0": "q_testing_s0_m10_bc5a6c384fe9.json",
            "10": "q_testing_s10_m10_34e56e15aaac.json",
            "20": "q_testing_s20_m10_348a237fecab.json",
        }[start]
        server.replay(name, when={"start": start})
    with make_source(server, clock, page_size=10) as source:
        fetch = source.search("all:testing", limit=30)

    assert [r.params["start"] for r in server.requests] == ["0", "10", "20"]
    assert fetch.requests == 3
    assert fetch.promised == 214881
    assert len(fetch.papers) == 30
    titles = {p.title for p in fetch.papers}
    assert "ChatGPT and Software Testing Education: Promises & Perils" in titles
    assert "$ω$Test: WebView-Oriented Testing for Android Applications" in titles
    first = fetch.papers[0]
    assert (first.arxiv_id, first.version) == ("2202.12139", 1)
    assert first.doi == "10.1109/ICSTW55395.2022.00035"
    assert first.primary_category == "cs.SE"
    assert first.categories == ("cs.SE", "cs.LG")
    assert first.comment == "Artificial Intelligence in Software Testing 2022 workshop @ ICST 2022"
    assert first.journal_ref is not None
    assert first.journal_ref.startswith("Artificial Intel")
    assert first.published == datetime(2022, 2, 24, 15, 5, 19, tzinfo=UTC)


def test_recorded_old_style_id_is_split(server: ArxivStandIn, clock: FakeClock):
    """`astro-ph/0601001v1` becomes arxiv_id `astro-ph/0601001`, version 1."""
    server.replay("id_astro-ph_0601001_s0_m100_3150dca9dc76.json")
    with make_source(server, clock) as source:
        (paper,) = source.search("id:astro-ph/0601001", limit=10).papers
    assert (paper.arxiv_id, paper.version) == ("astro-ph/0601001", 1)
    assert paper.title.startswith("Frequency of Hot Jupiters")
    assert not paper.abstract.startswith(" ")
    assert paper.journal_ref


def test_recorded_paper_titled_zero(server: ArxivStandIn, clock: FakeClock):
    """A paper literally titled `0` keeps its title."""
    server.replay("id_2104.12255v1_s0_m100_6ae69987ffe1.json")
    with make_source(server, clock) as source:
        (paper,) = source.search("id:2104.12255", limit=10).papers
    assert paper.title == "0"
    assert (paper.arxiv_id, paper.version) == ("2104.12255", 1)


def test_recorded_34_authors_non_ascii(server: ArxivStandIn, clock: FakeClock):
    """34 authors in order, `Dirk Wübben` decoded from UTF-8."""
    server.replay("id_1707.08567_s0_m100_6a1afebfc6a3.json")
    with make_source(server, clock) as source:
        (paper,) = source.search("id:1707.08567", limit=10).papers
    assert len(paper.authors) == 34
    assert paper.authors[0] == "Kees A. Schouhamer Immink"
    assert "Dirk Wübben" in paper.authors


def test_recorded_empty_page_is_no_error(server: ArxivStandIn, clock: FakeClock):
    """totalResults 0 and no entry: an empty result, one request, no retry."""
    server.replay("id_0000.0000_s0_m100_8b51d9633a68.json")
    with make_source(server, clock) as source:
        fetch = source.search("id:0000.0000", limit=10)
    assert fetch.papers == ()
    assert (fetch.requests, fetch.promised) == (1, 0)


@pytest.mark.parametrize("status", [400, 200])
def test_recorded_error_feed_raises_with_arxiv_text(
    server: ArxivStandIn, clock: FakeClock, status: int
):
    """arXiv's error entry is an ArxivError carrying its summary, with HTTP 400 or 200, no retry."""
    body = recorded("id_abc_s0_m100_b79c8dcf6bc3.json")
    assert body.status == 400
    server.replay(replace(body, status=status))
    with make_source(server, clock) as source, pytest.raises(ArxivError) as caught:
        source.search("id:abc", limit=10)
    assert "incorrect id format for abc" in str(caught.value)
    assert not isinstance(caught.value, HarvestIncomplete)
    assert len(server.requests) == 1
    assert clock.sleeps == []


def test_recorded_classic_2016_feed(server: ArxivStandIn, clock: FakeClock):
    """The classic backend's wrapped titles and abstracts collapse to one line; dois parsed."""
    server.replay("classic_2016_au_del_maestro_AND_ti_quantum_criticality.xml")
    with make_source(server, clock) as source:
        fetch = source.search('au:del_maestro AND ti:"quantum criticality"', limit=10)
    by_id = {p.arxiv_id: p for p in fetch.papers}
    assert fetch.promised == 2
    paper = by_id["1111.2011"]
    assert paper.version == 2
    assert paper.title == (
        "Quantum Criticality for Extended Nodes on a Bethe Lattice in the Large Connectivity Limit"
    )
    assert "\n" not in paper.abstract
    assert "  " not in paper.abstract
    assert paper.abstract.startswith("Theoretical description of anisotropic systems")
    assert paper.doi == "10.1103/PhysRevB.85.115117"
    assert all("\n" not in p.title for p in fetch.papers)


# -- the harvest query ------------------------------------------------------------------------


def test_harvest_query_shape(server: ArxivStandIn, clock: FakeClock):
    """Categories OR-ed, the window as submittedDate minutes [start, end), oldest first."""
    with make_source(server, clock) as source:
        fetch = source.harvest(
            start=datetime(2025, 1, 31, 6, 30, tzinfo=UTC),
            end=datetime(2025, 2, 7, 6, 30, tzinfo=UTC),
            categories=["cs.CV", "cs.LG", "stat.ML"],
        )
    (request,) = server.requests
    assert request.search_query == (
        "(cat:cs.CV OR cat:cs.LG OR cat:stat.ML) AND submittedDate:[202501310630 TO 202502070629]"
    )
    assert request.params["sortBy"] == "submittedDate"
    assert request.params["sortOrder"] == "ascending"
    assert request.params["max_results"] == "2000"
    assert [p.arxiv_id for p in fetch.papers] == [f"2502.{n:05d}" for n in range(5)]
    assert (fetch.requests, fetch.throttled, fetch.promised) == (1, 0, 5)


def test_harvest_window_is_half_open_and_in_utc():
    """A non-UTC end with seconds still excludes the end instant; naive datetimes are refused."""
    paris = datetime(2025, 2, 8, 7, 30, 45, tzinfo=UTC).astimezone()
    (query,) = harvest_queries(
        start=datetime(2025, 2, 1, tzinfo=UTC), end=paris, categories=["cs.AI"], per_request=25
    )
    assert query.endswith("submittedDate:[202502010000 TO 202502080730]")
    with pytest.raises(ValueError, match="timezone-aware"):
        harvest_queries(
            start=datetime(2025, 2, 1),
            end=datetime(2025, 2, 2),
            categories=["cs.AI"],
            per_request=5,
        )


def test_harvest_splits_a_long_category_list(server: ArxivStandIn, clock: FakeClock):
    """The 46 default categories become two requests of at most 25 categories each."""
    with make_source(server, clock, categories_per_request=25) as source:
        fetch = harvest(source, list(DEFAULT_CATEGORIES))
    queries = [r.search_query for r in server.requests]
    assert len(queries) == 2
    counts = [q.count("cat:") for q in queries]
    assert counts == [25, len(DEFAULT_CATEGORIES) - 25]
    for query in queries:
        assert re.fullmatch(
            r"\((cat:[\w.\-]+)( OR cat:[\w.\-]+)*\) AND submittedDate:\[.*\]", query
        )
    assert len(fetch.papers) == 5
    assert fetch.promised == 5


def test_request_count_depends_only_on_categories_and_volume(clock: FakeClock):
    """Same categories, different window contents below one page: the same number of requests."""
    counts = []
    for size in (1, 40):
        with ArxivStandIn([make_paper(n) for n in range(size)], clock=clock) as stand_in:
            with make_source(stand_in, clock, categories_per_request=10) as source:
                fetch = harvest(source, list(DEFAULT_CATEGORIES))
            counts.append(fetch.requests)
            assert len(fetch.papers) == size
    assert counts == [5, 5]  # ceil(46 / 10)


def test_all_means_every_archive_in_one_request(clock: FakeClock):
    """`["all"]` is one wildcard term per archive, so a physics paper is harvested too."""
    papers = [make_paper(1, categories=("physics.optics",)), make_paper(2, categories=("hep-th",))]
    with ArxivStandIn(papers, clock=clock) as stand_in, make_source(stand_in, clock) as source:
        fetch = harvest(source, ["all"])
        (request,) = stand_in.requests
    assert {p.arxiv_id for p in fetch.papers} == {"2502.00001", "2502.00002"}
    assert request.search_query.count("cat:") == len(ALL_CATEGORIES)
    assert "cat:cs.*" in request.search_query


def test_bad_category_is_a_config_error(server: ArxivStandIn, clock: FakeClock):
    """A category that could change the query's meaning is refused before any request."""
    with make_source(server, clock) as source, pytest.raises(ConfigError, match=r"cs\.CV\) OR"):
        harvest(source, ["cs.CV) OR all:x"])
    assert server.requests == []


def test_paging_with_page_size_two(server: ArxivStandIn, clock: FakeClock):
    """Five papers in pages of two: three requests, progress after each page."""
    seen: list[tuple[int, int]] = []
    with make_source(server, clock, page_size=2) as source:
        fetch = source.harvest(
            start=WINDOW_START,
            end=WINDOW_END,
            categories=["cs.CV"],
            progress=lambda *a: seen.append(a),
        )
    assert [r.params["start"] for r in server.requests] == ["0", "2", "4"]
    assert len(fetch.papers) == 5
    assert fetch.requests == 3
    assert seen == [(2, 5), (4, 5), (5, 5)]


def test_search_backfill_sorts_by_last_update_and_limits(clock: FakeClock):
    """search(): lastUpdatedDate descending, at most `limit` papers, pages no larger than limit."""
    papers = [make_paper(n) for n in range(6)]
    with ArxivStandIn(papers, clock=clock) as stand_in, make_source(stand_in, clock) as source:
        fetch = source.search('ti:"synthetic paper"', limit=4)
        (request,) = stand_in.requests
    assert request.params["sortBy"] == "lastUpdatedDate"
    assert request.params["sortOrder"] == "descending"
    assert request.params["max_results"] == "4"
    assert [p.arxiv_id for p in fetch.papers] == [f"2502.{n:05d}" for n in (5, 4, 3, 2)]
    assert fetch.promised == 6


# -- faults -----------------------------------------------------------------------------------


def test_429_retry_after_is_honoured(server: ArxivStandIn, clock: FakeClock, caplog):
    """A 429 with Retry-After: 7 waits exactly 7 s on the injected sleep, then succeeds."""
    server.script(Throttle(retry_after="7"))
    caplog.set_level(logging.INFO, logger="digest.arxiv_source")
    with make_source(server, clock) as source:
        fetch = harvest(source)
    assert clock.sleeps == [7.0]
    assert (fetch.requests, fetch.throttled, len(fetch.papers)) == (2, 1, 5)
    times = [r.at for r in server.requests]
    assert times[1] - times[0] >= 7.0
    assert any("arxiv.retry attempt=1 wait=7.00 reason=HTTP 429" in m for m in caplog.messages)
    assert any(m.startswith("arxiv.request url=http://127.0.0.1") for m in caplog.messages)


def test_retry_after_longer_than_the_backoff_limit_gives_up(server: ArxivStandIn, clock: FakeClock):
    """arXiv asking for an hour is not waited for inside a cycle: a clear error, no early retry."""
    server.script(Throttle(retry_after="3600"))
    with make_source(server, clock) as source, pytest.raises(ArxivError, match="3600"):
        harvest(source)
    assert len(server.requests) == 1
    assert clock.sleeps == []


def test_503_is_retried_with_exponential_backoff(server: ArxivStandIn, clock: FakeClock):
    """Two 503s then success: waits of 1 s and 2 s (no jitter), three requests."""
    server.script(ServerError(503), ServerError(500))
    with make_source(server, clock) as source:
        fetch = harvest(source)
    assert clock.sleeps == [1.0, 2.0]
    assert fetch.requests == 3
    assert len(fetch.papers) == 5


def test_jitter_adds_up_to_one_second(server: ArxivStandIn, clock: FakeClock):
    """With jitter on, each backoff lies in [base, base + 1)."""
    server.script(ServerError(503), ServerError(503))
    with make_source(server, clock, jitter=True) as source:
        harvest(source)
    first, second = clock.sleeps
    assert 1.0 <= first < 2.0
    assert 2.0 <= second < 3.0


def test_retries_exhausted_raise_arxiv_error(server: ArxivStandIn, clock: FakeClock):
    """Persistent 503: retries+1 requests, then an ArxivError naming the failure."""
    server.always(ServerError(503))
    with make_source(server, clock, retries=2) as source, pytest.raises(ArxivError) as caught:
        harvest(source)
    assert "after 3 attempts" in str(caught.value)
    assert "HTTP 503" in str(caught.value)
    assert len(server.requests) == 3
    assert clock.sleeps == [1.0, 2.0]


def test_backoff_is_capped(server: ArxivStandIn, clock: FakeClock):
    """Exponential waits never exceed backoff_max_seconds."""
    server.always(ServerError(502))
    with (
        make_source(server, clock, retries=5, backoff_max_seconds=3.0) as source,
        pytest.raises(ArxivError),
    ):
        harvest(source)
    assert clock.sleeps == [1.0, 2.0, 3.0, 3.0, 3.0]


def test_timeout_is_retried(server: ArxivStandIn, clock: FakeClock):
    """A slow answer trips the client timeout; the retry succeeds."""
    server.script(Slow(seconds=1.0))
    with make_source(server, clock, timeout_seconds=0.2) as source:
        fetch = harvest(source)
    assert fetch.requests == 2
    assert len(fetch.papers) == 5


def test_html_with_status_200_is_not_taken_for_an_empty_result(
    server: ArxivStandIn, clock: FakeClock
):
    """A proxy's HTML page is retried and finally reported, never read as zero papers."""
    server.always(Replay(200, b"<html><body>Please log in</body></html>", ()))
    with make_source(server, clock, retries=1) as source, pytest.raises(ArxivError) as caught:
        harvest(source)
    assert "not an Atom feed" in str(caught.value)
    assert len(server.requests) == 2


def test_connection_reset_is_retried(server: ArxivStandIn, clock: FakeClock):
    """A TCP reset is a transient failure: the retry succeeds."""
    server.script(Reset())
    with make_source(server, clock) as source:
        fetch = harvest(source)
    assert fetch.requests == 2
    assert len(fetch.papers) == 5


def test_connection_refused_says_why(server: ArxivStandIn, clock: FakeClock):
    """A refused connection is reported with its cause, not just 'ConnectionError'."""
    with make_source(server, clock, retries=0) as source:
        server.stop()  # nothing listens on the port any more
        with pytest.raises(ArxivError) as caught:
            harvest(source)
    assert "connection error: Failed to establish a new connection" in str(caught.value)
    assert "Connection refused" in str(caught.value)


def test_empty_page_in_the_middle_is_retried(server: ArxivStandIn, clock: FakeClock):
    """An empty second page is fetched again rather than ending the result set early."""
    server.script(EmptyPage(), when={"start": "2"})
    with make_source(server, clock, page_size=2) as source:
        fetch = harvest(source)
    assert [r.params["start"] for r in server.requests] == ["0", "2", "2", "4"]
    assert len(fetch.papers) == 5


def test_short_page_is_completed_by_the_next_page(server: ArxivStandIn, clock: FakeClock):
    """One page missing its last entry: the client asks from where it stopped and gets all."""
    server.script(Partial(missing=1))
    with make_source(server, clock) as source:
        fetch = harvest(source)
    assert [r.params["start"] for r in server.requests] == ["0", "4"]
    assert len(fetch.papers) == 5


def test_partial_harvest_raises_harvest_incomplete(server: ArxivStandIn, clock: FakeClock):
    """arXiv keeps returning fewer entries than totalResults: HarvestIncomplete with numbers."""
    server.always(Partial(missing=2))
    with (
        make_source(server, clock, retries=1) as source,
        pytest.raises(HarvestIncomplete) as caught,
    ):
        harvest(source)
    assert "5 entries were promised" in str(caught.value)


def test_duplicates_across_pages_mean_incomplete(server: ArxivStandIn, clock: FakeClock):
    """A shifted page repeats one entry and loses another: dedupe, then HarvestIncomplete."""
    server.script(Shifted(by=1), when={"start": "2"})
    with (
        make_source(server, clock, page_size=2) as source,
        pytest.raises(HarvestIncomplete) as caught,
    ):
        harvest(source)
    assert "promised 5" in str(caught.value)
    assert "4 distinct" in str(caught.value)


def test_cross_listed_paper_appears_once(clock: FakeClock):
    """A paper in two category groups is fetched twice and kept once."""
    papers = [make_paper(1, categories=("cs.CV", "cs.LG")), make_paper(2, categories=("cs.LG",))]
    with (
        ArxivStandIn(papers, clock=clock) as stand_in,
        make_source(stand_in, clock, categories_per_request=1) as source,
    ):
        fetch = harvest(source, ["cs.CV", "cs.LG"])
    assert [p.arxiv_id for p in fetch.papers] == ["2502.00001", "2502.00002"]
    assert (fetch.requests, fetch.promised) == (2, 3)


def test_highest_version_is_kept(server: ArxivStandIn, clock: FakeClock):
    """The same paper in v1 and v2 across pages: the v2 metadata wins."""
    v1, v2, other = make_paper(1), make_paper(1, version=2), make_paper(2)
    pages = {"0": [v1, other], "2": [replace(v2, title="Revised title")]}
    for start, entries in pages.items():
        body = render_feed(entries, query="q", id_list="", start=int(start), max_results=2, total=3)
        server.replay(Replay(200, body), when={"start": start})
    with make_source(server, clock, page_size=2) as source:
        fetch = source.search("all:synthetic", limit=3)
    by_id = {p.arxiv_id: p for p in fetch.papers}
    assert by_id["2502.00001"].version == 2
    assert by_id["2502.00001"].title == "Revised title"
    assert len(fetch.papers) == 2


# -- malformed answers -----------------------------------------------------------------------


def _replace(old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    """An edit replacing the first `old` of the body by `new`."""
    return lambda body: body.replace(old, new, 1)


def _drop(pattern: bytes) -> Callable[[bytes], bytes]:
    """An edit deleting the first match of a regular expression."""
    return lambda body: re.sub(pattern, b"", body, count=1)


HTML = (("Content-Type", "text/html"),)
# Each body is the stand-in's second page (papers 2 and 3 of five, pages of two) spoiled one way;
# the reason is what the retry log line says about it.
MALFORMED: dict[str, tuple[Fault, str]] = {
    "cut inside a date": (
        Mangled(cut_inside(b"<published>", keep=9, occurrence=2)),
        "not well-formed XML (Premature end of data in tag published",
    ),
    "cut inside an entry": (
        Mangled(cut_inside(b"<summary>", occurrence=2)),
        "not well-formed XML",
    ),
    "cut mid-tag": (
        Mangled(cut_inside(b"<arxiv:primary_cat", occurrence=1)),
        "not well-formed XML",
    ),
    "cut after an entry": (
        Mangled(cut_inside(b"</entry>", occurrence=1)),
        "not well-formed XML",
    ),
    "cut in transit": (
        Mangled(cut_inside(b"<entry>", occurrence=2), in_transit=True),
        "cut off (Connection broken: IncompleteRead(",
    ),
    "bad date value": (
        Mangled(_replace(b"<published>2025-02-01T00:02:00Z", b"<published>2025-02-1")),
        "unreadable entry (ValueError: Invalid isoformat string: '2025-02-1')",
    ),
    "entry without <published>": (
        Mangled(_drop(rb"<published>[^<]*</published>")),
        "1 of 2 entries lack an id or a date",
    ),
    "entry without <id>": (
        Mangled(_drop(rb"<id>http://arxiv[^<]*</id>")),
        "1 of 2 entries lack an id or a date",
    ),
    "invalid XML": (
        Mangled(_replace(b"Synthetic paper 2</title>", b"Synthetic <paper 2</title>")),
        "not well-formed XML",
    ),
    "bare ampersand": (
        Mangled(_replace(b"Synthetic paper 3</title>", b"Synthetic & paper 3</title>")),
        "not well-formed XML",
    ),
    "non-UTF-8 bytes": (
        Mangled(_replace(b"Abstract of paper number 2", b"Abstract of paper n\xfcmber 2")),
        "not well-formed XML (Invalid bytes in character encoding",
    ),
    "no totalResults": (
        Mangled(_drop(rb"<opensearch:totalResults>[^<]*</opensearch:totalResults>")),
        "no numeric opensearch:totalResults",
    ),
    "empty body with HTTP 200": (Replay(200, b""), "empty body"),
    "HTML instead of Atom": (
        Replay(200, b"<html><body><h1>Service Unavailable</h1></body></html>", HTML),
        "not an Atom feed",
    ),
    "XHTML naming the Atom namespace": (
        Replay(200, b'<html xmlns:a="http://www.w3.org/2005/Atom"><body/></html>', HTML),
        "not an Atom feed (root element html)",
    ),
}


@pytest.mark.parametrize(("fault", "reason"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_page_is_retried_and_nothing_is_lost(
    server: ArxivStandIn,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    fault: Fault,
    reason: str,
):
    """A spoiled middle page is asked for again like an empty one; the harvest is complete."""
    server.script(fault, when={"start": "2"})
    caplog.set_level(logging.WARNING, logger="digest.arxiv_source")
    with make_source(server, clock, page_size=2) as source:
        fetch = harvest(source)
    assert [r.params["start"] for r in server.requests] == ["0", "2", "2", "4"]
    assert [p.arxiv_id for p in fetch.papers] == [f"2502.{n:05d}" for n in range(5)]
    assert (fetch.requests, fetch.promised) == (4, 5)
    assert clock.sleeps == [1.0]
    (retry,) = [m for m in caplog.messages if m.startswith("arxiv.retry")]
    assert f"reason=malformed answer: {reason}" in retry


@pytest.mark.parametrize(
    "name", ["cut inside a date", "bad date value", "cut in transit", "empty body with HTTP 200"]
)
def test_always_malformed_answer_is_an_arxiv_error(
    server: ArxivStandIn, clock: FakeClock, name: str
):
    """The same spoiled page every time: ArxivError after retries + 1 attempts, one short line."""
    fault, reason = MALFORMED[name]
    server.always(fault)
    with make_source(server, clock, retries=2) as source, pytest.raises(ArxivError) as caught:
        harvest(source)
    message = str(caught.value)
    assert not isinstance(caught.value, HarvestIncomplete)
    assert len(server.requests) == 3
    assert caught.value.requests == 3
    assert message.startswith("arXiv request failed after 3 attempts: malformed answer: ")
    assert reason in message
    assert message.endswith(f"({server.url}, results from 0)")
    assert "\n" not in message
    assert len(message) < 250, message
    assert "search_query" not in message


def test_cut_last_page_of_a_search_is_retried(server: ArxivStandIn, clock: FakeClock):
    """A backfill's last page cut mid-entry is fetched again, not taken as the end of the list."""
    server.script(Mangled(cut_inside(b"<summary>")), when={"start": "4"})
    with make_source(server, clock, page_size=2) as source:
        fetch = source.search('ti:"synthetic paper"', limit=5)
    assert [r.params["start"] for r in server.requests] == ["0", "2", "4", "4"]
    assert len(fetch.papers) == 5


def test_cut_first_page_is_retried_not_taken_for_no_results(server: ArxivStandIn, clock: FakeClock):
    """A first page cut before its first entry would read as zero papers: it is asked again."""
    server.script(Mangled(cut_inside(b"<opensearch:startIndex>")))
    with make_source(server, clock) as source:
        fetch = harvest(source)
    assert fetch.requests == 2
    assert len(fetch.papers) == 5


@pytest.mark.parametrize(
    "name", sorted(p.name for p in FIXTURES.iterdir() if p.suffix in {".json", ".xml"})
)
def test_every_recorded_answer_passes_the_strict_check(name: str):
    """Real arXiv answers (both backends) are well-formed enough for `parse_page`."""
    answer = recorded(name)
    if answer.status != 200:
        with pytest.raises(MalformedPage, match="lack an id or a date"):
            parse_page(answer.body)  # the error feed's entry has no dates; caught before this
        return
    page = parse_page(answer.body)
    assert page.entries == answer.body.count(b"<entry")


# -- our own URL and parser (no `arxiv` package) ---------------------------------------------

PARSED = Path(__file__).resolve().parent / "fixtures" / "arxiv_parsed"
EXPECTED: dict[str, dict[str, object]] = json.loads(
    (PARSED / "expected.json").read_text(encoding="utf-8")
)


def page_body(key: str) -> bytes:
    """The bytes of a page named in expected.json (`arxiv/<recorded>` or `arxiv_parsed/<file>`)."""
    folder, name = key.split("/", 1)
    return recorded(name).body if folder == "arxiv" else (PARSED / name).read_bytes()


def as_expected(paper: Paper) -> dict[str, object]:
    """A paper in expected.json's form: the abstract as SHA-256 and start, dates in ISO 8601."""
    fields = asdict(paper)
    abstract = fields.pop("abstract")
    fields.update(
        authors=list(paper.authors),
        categories=list(paper.categories),
        abstract_sha256=hashlib.sha256(abstract.encode()).hexdigest(),
        abstract_start=abstract[:60],
        published=paper.published.isoformat(),
        updated=paper.updated.isoformat(),
    )
    return fields


def test_expected_papers_cover_every_recorded_page():
    """A recorded page added later needs its expected Papers too (tests/fixtures/arxiv_parsed)."""
    pages = {f"arxiv/{p.name}" for p in FIXTURES.iterdir() if p.suffix in {".json", ".xml"}}
    assert len(pages) == 9
    assert pages | {"arxiv_parsed/edge_cases.xml"} == EXPECTED.keys()


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_recorded_pages_parse_into_the_same_papers(key: str):
    """Each page gives the Papers, skipped ids and numbers the arxiv-package parser gave."""
    expected = EXPECTED[key]
    if "malformed" in expected:
        with pytest.raises(MalformedPage) as caught:
            parse_page(page_body(key))
        assert str(caught.value) == expected["malformed"]
        return
    page = parse_page(page_body(key))
    assert [as_expected(p) for p in page.papers] == expected["papers"]
    assert list(page.skipped) == expected["skipped"]
    numbers = (page.total_results, page.start_index, page.items_per_page)
    assert numbers == (
        expected["total_results"],
        expected["start_index"],
        expected["items_per_page"],
    )
    assert all(p.published.tzinfo is UTC and p.updated.tzinfo is UTC for p in page.papers)


def test_entities_are_neither_read_nor_expanded(tmp_path: Path):
    """A page declaring a file entity and a text entity gets neither into a paper."""
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-FILE-CONTENT", encoding="utf-8")
    entry = make_paper(1)
    body = render_feed([entry], query="q", id_list="", start=0, max_results=1, total=1)
    doctype = (
        f'<!DOCTYPE feed [<!ENTITY file SYSTEM "{secret.as_uri()}">'
        '<!ENTITY word "EXPANDED-TEXT">]>\n'
    ).encode()
    body = body.replace(b"<feed ", doctype + b"<feed ", 1)
    body = body.replace(b"Synthetic paper 1</title>", b"Synthetic paper 1 &file; &word;</title>")
    body = body.replace(b"Abstract of", b"&word; Abstract of")
    (paper,) = parse_page(body).papers
    for text in (paper.title, paper.abstract):
        assert "SECRET" not in text
        assert "EXPANDED" not in text
    assert paper.title.startswith("Synthetic paper 1")


def test_query_url_carries_arxiv_parameters_urlencoded():
    """search_query, sortBy, sortOrder, start and max_results, encoded; the endpoint's own
    query string (braces included) is kept."""
    url = build_query_url(
        "http://127.0.0.1:9/api/query",
        query='ti:"video anomaly" AND cat:cs.*',
        sort_by="submittedDate",
        sort_order="ascending",
        start=4000,
        max_results=2000,
    )
    parts = urlsplit(url)
    assert (parts.path, " " in url, '"' in url) == ("/api/query", False, False)
    assert parse_qsl(parts.query) == [
        ("search_query", 'ti:"video anomaly" AND cat:cs.*'),
        ("sortBy", "submittedDate"),
        ("sortOrder", "ascending"),
        ("start", "4000"),
        ("max_results", "2000"),
    ]
    mirror = build_query_url(
        "https://mirror.example/q?key={k}",
        query="all:x",
        sort_by="lastUpdatedDate",
        sort_order="descending",
        start=0,
        max_results=10,
    )
    assert mirror.startswith("https://mirror.example/q?key={k}&search_query=all%3Ax&")


def test_search_pages_ask_for_no_more_than_the_limit(server: ArxivStandIn, clock: FakeClock):
    """limit 5 in pages of 2: the last request asks only for the one entry still wanted."""
    with make_source(server, clock, page_size=2) as source:
        fetch = source.search('ti:"synthetic paper"', limit=5)
    pages = [(r.params["start"], r.params["max_results"]) for r in server.requests]
    assert pages == [("0", "2"), ("2", "2"), ("4", "1")]
    assert len(fetch.papers) == 5


def test_a_page_longer_than_asked_does_not_stretch_the_limit(
    server: ArxivStandIn, clock: FakeClock
):
    """A server ignoring max_results: a search still keeps at most `limit` papers, in order."""
    body = render_feed(
        [make_paper(n) for n in range(3)], query="q", id_list="", start=0, max_results=3, total=3
    )
    server.replay(Replay(200, body))
    with make_source(server, clock) as source:
        fetch = source.search("all:synthetic", limit=2)
    assert [p.arxiv_id for p in fetch.papers] == ["2502.00000", "2502.00001"]
    assert len(server.requests) == 1


def test_entry_with_a_foreign_id_is_skipped_and_said(
    server: ArxivStandIn, clock: FakeClock, caplog: pytest.LogCaptureFixture
):
    """An entry whose id is not an arXiv id is logged and skipped; the page's others are kept."""
    server.replay(Replay(200, (PARSED / "edge_cases.xml").read_bytes()))
    caplog.set_level(logging.WARNING, logger="digest.arxiv_source")
    with make_source(server, clock) as source:
        fetch = source.search("all:edge", limit=10)
    by_id = {p.arxiv_id: p for p in fetch.papers}
    assert sorted(by_id) == [
        "2402.00001",
        "2403.00002",
        "2501.09733",
        "hep-th/9901001",
        "math.GT/0309136",
    ]
    assert by_id["2403.00002"].version == 2  # the page's two versions: the higher one kept
    assert (fetch.requests, fetch.promised) == (1, 7)
    skip = "arxiv.skip entry_id=http://example.org/not-an-arxiv-id reason=unparseable-id"
    assert skip in caplog.messages


def private_arxiv_names(source: str) -> list[str]:
    """What Python source takes from the `arxiv` package that is not its public API: `_` names
    it imports or reads, and `_` methods it overrides in a subclass of an arxiv class."""
    tree = ast.parse(source)

    def private(name: str) -> bool:
        return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))

    found: list[str] = []
    modules: set[str] = set()  # local names bound to the arxiv package
    members: set[str] = set()  # local names bound to something imported from it
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] != "arxiv":
                    continue
                if any(private(p) for p in parts[1:]):
                    found.append(f"import {alias.name}")
                modules.add(alias.asname or "arxiv")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] != "arxiv":
                continue
            if any(private(p) for p in parts[1:]):
                found.append(f"from {node.module} import ...")
            for alias in node.names:
                if private(alias.name):
                    found.append(f"from {node.module} import {alias.name}")
                members.add(alias.asname or alias.name)

    def from_arxiv(base: ast.expr) -> bool:
        if isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name):
            return base.value.id in modules
        return isinstance(base, ast.Name) and base.id in members

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in modules and private(node.attr):
                found.append(f"{node.value.id}.{node.attr}")
        elif isinstance(node, ast.ClassDef) and any(from_arxiv(b) for b in node.bases):
            found += [
                f"{node.name}.{f.name}"
                for f in node.body
                if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef) and private(f.name)
            ]
    return sorted(found)


def test_private_arxiv_names_are_found():
    """The check below sees each way the old module used arxiv's internals, and nothing public."""
    old_ways = """
import arxiv
import arxiv._feed as feed_module
from arxiv import _feed, Client, Search
from arxiv._feed import parse

class PoliteClient(arxiv.Client):
    def _parse_feed(self, url, first_page=True, _try_index=0): ...
    def results(self, search): ...

class Other(Client):
    def _format_url(self, search, start, page_size): ...

agent = arxiv._USER_AGENT
"""
    assert private_arxiv_names(old_ways) == [
        "Other._format_url",
        "PoliteClient._parse_feed",
        "arxiv._USER_AGENT",
        "from arxiv import _feed",
        "from arxiv._feed import ...",
        "import arxiv._feed",
    ]
    public = "import arxiv\nfrom arxiv import Search\narxiv.Client().results(Search())\n"
    assert private_arxiv_names(public + "print(arxiv.__version__)\n") == []


def test_no_module_uses_private_arxiv_names():
    """Nothing in digest/, bot/ or storage/ reaches into the `arxiv` package's internals."""
    root = Path(__file__).resolve().parent.parent
    modules = [
        path for package in ("digest", "bot", "storage") for path in (root / package).rglob("*.py")
    ]
    assert len(modules) > 20
    offenders = {
        str(path.relative_to(root)): names
        for path in modules
        if (names := private_arxiv_names(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}


# -- politeness -------------------------------------------------------------------------------


def test_minimum_gap_between_requests_on_a_fake_clock(server: ArxivStandIn, clock: FakeClock):
    """delay 3 s: every request, retries included, starts at least 3 s after the previous."""
    server.script(ServerError(503), when={"start": "2"})
    with make_source(server, clock, page_size=2, delay_seconds=3.0) as source:
        harvest(source)
    assert len(server.requests) == 4
    gap = server.min_gap()
    assert gap is not None
    assert gap >= 3.0
    # The retry's 1 s backoff is topped up to the 3 s delay, not added on top of it.
    assert clock.sleeps == [3.0, 1.0, 2.0, 3.0]


def test_minimum_gap_in_real_time():
    """With a real clock and a 50 ms delay, the stand-in sees requests at least 50 ms apart."""
    with ArxivStandIn([make_paper(n) for n in range(5)]) as stand_in:
        source = ArxivSource(
            api_url=stand_in.url,
            user_agent="daily-papers/test",
            delay_seconds=0.05,
            timeout_seconds=2.0,
            retries=0,
            backoff_max_seconds=1.0,
            page_size=2,
        )
        with source:
            harvest(source)
        gap = stand_in.min_gap()
    assert gap is not None
    assert gap >= 0.05


def test_user_agent_names_project_and_contact(server: ArxivStandIn, clock: FakeClock):
    """Every request carries `daily-papers/<version> (...; mailto:<contact>)` on one connection."""
    with make_source(server, clock, page_size=2) as source:
        harvest(source)
    agents = {r.user_agent for r in server.requests}
    assert len(agents) == 1
    (agent,) = agents
    assert re.match(r"^daily-papers/\d+\.\d+\S* \(.*mailto:lab@example\.org\)$", agent)
    assert len({r.client_port for r in server.requests}) == 1  # one kept-alive connection


def test_from_settings_goes_to_the_configured_url_in_test_mode(server: ArxivStandIn):
    """Settings point the client at the stand-in; test mode waits for nothing, even Retry-After."""
    settings = settings_for_tests(arxiv={"api_url": server.url, "contact": "ops@lab.org"})
    server.script(Throttle(retry_after="30"), ServerError(503))
    with ArxivSource.from_settings(settings) as source:
        fetch = harvest(source)
    assert fetch.requests == 3
    assert len(fetch.papers) == 5
    assert all(r.path == "/api/query" for r in server.requests)
    assert "mailto:ops@lab.org" in server.requests[0].user_agent
    assert "arxiv.org" not in server.requests[0].headers.get("host", "")


def test_real_arxiv_settings_keep_the_three_second_floor():
    """Against export.arxiv.org the delay is never below 3 s, whatever is configured."""
    settings = settings_for_tests(
        service={"test_mode": False},
        arxiv={"api_url": "https://export.arxiv.org/api/query", "delay_seconds": 0.5},
    )
    source = ArxivSource.from_settings(settings)
    try:
        assert source._delay == 3.0
    finally:
        source.close()


def test_user_agent_without_contact_still_names_the_project():
    """No contact configured: the User-Agent still says who we are."""
    assert build_user_agent("").startswith("daily-papers/")
    assert "https://lab.example/ops" in build_user_agent("https://lab.example/ops")
