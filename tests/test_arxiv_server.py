"""The arXiv stand-in itself: query evaluation, paging, the Atom it writes, and its scripting."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import requests

from digest.arxiv_source import parse_page
from digest.domain import Paper
from tests.fakes.arxiv_server import (
    ArxivStandIn,
    ErrorFeed,
    Mangled,
    Throttle,
    arxiv_server,  # noqa: F401 -- the shared fixture, used by name below
    compile_query,
    cut_inside,
    recorded,
)
from tests.reference_papers import load_reference_sections

BASE = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def paper(n: int, title: str, abstract: str = "", **changes: object) -> Paper:
    """A small paper submitted n hours after BASE."""
    when = BASE + timedelta(hours=n)
    made = Paper(
        arxiv_id=f"2503.{n:05d}",
        version=1,
        title=title,
        authors=("Adrian Del Maestro", "Jane Roe"),
        abstract=abstract or title,
        published=when,
        updated=when + timedelta(days=n % 3),
        primary_category="cs.CV",
        categories=("cs.CV",),
    )
    return replace(made, **changes)


CORPUS = [
    paper(0, "Detecting Anomalies in Video", "We detect anomalous events."),
    paper(1, "Video anomaly detection with diffusion", categories=("cs.LG", "stat.ML")),
    paper(2, "Large Language Models for Code", "LLMs write code.", categories=("cs.CL",)),
    paper(
        3,
        'Quantum criticality <revisited> & "more"',
        "Spin chains.",
        categories=("hep-th",),
        primary_category="hep-th",
    ),
    paper(4, "Diffusion Models Beat GANs", "Image synthesis."),
]


@pytest.fixture
def stand_in() -> Iterator[ArxivStandIn]:
    """A stand-in over the small corpus above."""
    with ArxivStandIn(CORPUS) as server:
        yield server


def get(server: ArxivStandIn, **params: str) -> requests.Response:
    """One GET to the stand-in's query endpoint."""
    return requests.get(server.url, params=params, timeout=5)


def ids(response: requests.Response) -> list[str]:
    """The versioned ids of a feed, in order, through the client's own parser."""
    return [p.versioned_id for p in parse_page(response.content).papers]


def matches(query: str) -> set[int]:
    """Which CORPUS papers a query matches, by index."""
    predicate = compile_query(query)
    return {i for i, p in enumerate(CORPUS) if predicate(p)}


def test_phrases_are_stemmed_consecutive_tokens():
    """`detect anomalies` matches `Detecting Anomalies`; word order matters for phrases."""
    assert matches('ti:"detect anomaly"') == {0}
    assert matches('ti:"anomaly detection"') == {1}
    assert matches("ti:diffusion") == {1, 4}
    assert matches('abs:"language models"') == set()
    assert matches('ti:"LARGE language MODEL"') == {2}


def test_boolean_operators_and_parentheses():
    """AND binds tighter than OR; ANDNOT excludes; parentheses group; bare words mean all:."""
    assert matches("ti:video AND ti:diffusion OR ti:code") == {1, 2}
    assert matches("ti:video AND (ti:diffusion OR ti:code)") == {1}
    assert matches("ti:video ANDNOT ti:diffusion") == {0}
    assert matches("spin") == {3}
    assert matches("au:del_maestro AND ti:quantum") == {3}


def test_categories_with_wildcards_and_dates():
    """cat: exact and `*` wildcard; submittedDate ranges are inclusive at minute precision."""
    assert matches("cat:cs.CV") == {0, 4}
    assert matches("cat:cs.*") == {0, 1, 2, 4}
    assert matches("cat:stat.* OR cat:hep-th") == {1, 3}
    assert matches("cat:cs.* AND submittedDate:[202503011300 TO 202503011400]") == {1, 2}
    assert matches("submittedDate:[20250301 TO 20250301]") == {0, 1, 2, 3, 4}


def test_reference_sections_all_match_their_phrase(arxiv_server: ArxivStandIn):  # noqa: F811
    """Every paper of a reference README section is returned for that section's DailyArXiv query."""
    for section in load_reference_sections():
        phrase = section.keyword
        response = get(
            arxiv_server,
            search_query=f'ti:"{phrase}" OR abs:"{phrase}"',
            sortBy="lastUpdatedDate",
            sortOrder="descending",
            max_results="200",
        )
        returned = {i.split("v")[0] for i in ids(response)}
        assert {p.arxiv_id for p in section.papers} <= returned, phrase


def test_paging_totals_and_sorting(stand_in: ArxivStandIn):
    """start/max_results slice a sorted result set; totalResults counts all matches."""
    first = get(
        stand_in,
        search_query="cat:cs.*",
        sortBy="submittedDate",
        sortOrder="ascending",
        start="0",
        max_results="3",
    )
    second = get(
        stand_in,
        search_query="cat:cs.*",
        sortBy="submittedDate",
        sortOrder="ascending",
        start="3",
        max_results="3",
    )
    page = parse_page(first.content)
    assert (page.total_results, page.items_per_page, page.start_index) == (4, 3, 0)
    assert ids(first) + ids(second) == [
        "2503.00000v1",
        "2503.00001v1",
        "2503.00002v1",
        "2503.00004v1",
    ]
    newest = get(stand_in, search_query="cat:cs.*", sortBy="lastUpdatedDate", max_results="1")
    assert ids(newest) == ["2503.00002v1"]  # submitted 2 h after BASE, updated 2 days later


def test_id_list_and_its_errors(stand_in: ArxivStandIn):
    """id_list returns those papers in order; a malformed id gets arXiv's error feed (400)."""
    assert ids(get(stand_in, id_list="2503.00003v1,2503.00000")) == ["2503.00003v1", "2503.00000v1"]
    bad = get(stand_in, id_list="abc")
    assert bad.status_code == 400
    assert b"https://arxiv.org/api/errors#incorrect_id_format_for_abc" in bad.content
    malformed = get(stand_in, search_query='ti:"unclosed')
    assert malformed.status_code == 400
    assert b"/api/errors#" in malformed.content


def test_feed_is_escaped_and_parses_like_a_recorded_one(stand_in: ArxivStandIn):
    """Markup characters survive the round trip; the structure matches the recorded feed."""
    response = get(stand_in, search_query="ti:quantum")
    (parsed,) = parse_page(response.content).papers
    assert parsed.title == 'Quantum criticality <revisited> & "more"'
    assert parsed.authors[0] == "Adrian Del Maestro"
    assert parsed.primary_category == "hep-th"
    assert parsed.published == BASE + timedelta(hours=3)
    recorded_body = recorded("q_testing_s0_m10_bc5a6c384fe9.json").body
    for element in (
        b"<opensearch:totalResults>",
        b"<opensearch:itemsPerPage>",
        b'<link href="https://arxiv.org/pdf/',
        b"<arxiv:primary_category term=",
    ):
        assert element in recorded_body
        assert element in response.content
    assert response.headers["Content-Type"] == "application/atom+xml"


def test_corpus_can_change_while_serving(stand_in: ArxivStandIn):
    """Papers announced between two requests are served by the second."""
    assert ids(get(stand_in, search_query="ti:transformers")) == []
    stand_in.add_papers([paper(9, "Transformers all the way down")])
    assert ids(get(stand_in, search_query="ti:transformers")) == ["2503.00009v1"]
    stand_in.set_papers([])
    assert ids(get(stand_in, search_query="ti:transformers")) == []


def test_scripted_answers_are_consumed_in_order_and_matched(stand_in: ArxivStandIn):
    """script() answers the next matching requests once each; replay() answers every match."""
    stand_in.script(Throttle(retry_after="5"), ErrorFeed(status=200), when={"start": "0"})
    stand_in.replay(
        "id_0000.0000_s0_m100_8b51d9633a68.json", when=lambda r: r.params.get("start") == "7"
    )
    throttled = get(stand_in, search_query="all:video", start="0")
    assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "5")
    untouched = get(stand_in, search_query="all:video", start="1")
    assert untouched.status_code == 200
    error = get(stand_in, search_query="all:video", start="0")
    assert error.status_code == 200
    assert b"/api/errors#" in error.content
    assert get(stand_in, search_query="all:video", start="0").status_code == 200
    for _ in range(2):
        assert parse_page(get(stand_in, start="7").content).total_results == 0
    assert len(stand_in.requests) == 6


def test_mangled_answers_are_cut_as_scripted(stand_in: ArxivStandIn):
    """Mangled edits the real page: re-framed to its new length, or broken off in transit."""
    cut = cut_inside(b"<published>", keep=9)
    stand_in.script(Mangled(cut), Mangled(cut, in_transit=True))
    reframed = get(stand_in, search_query="ti:quantum")
    assert reframed.status_code == 200
    assert reframed.content.endswith(b"<published>2025-03-0")
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match="IncompleteRead"):
        get(stand_in, search_query="ti:quantum")
    whole = get(stand_in, search_query="ti:quantum")
    assert whole.content.endswith(b"</feed>\n")
    assert len(stand_in.requests) == 3


def test_requests_are_recorded_with_headers(stand_in: ArxivStandIn):
    """Each request's parameters and User-Agent are kept; unknown paths get 404."""
    requests.get(
        stand_in.url,
        params={"search_query": "ti:video"},
        headers={"User-Agent": "probe/1"},
        timeout=5,
    )
    assert requests.get(stand_in.url.replace("/api/query", "/nope"), timeout=5).status_code == 404
    first = stand_in.requests[0]
    assert first.user_agent == "probe/1"
    assert first.search_query == "ti:video"
    assert stand_in.requests[1].path == "/nope"
    stand_in.clear_requests()
    assert stand_in.requests == []
