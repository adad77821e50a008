"""`like:` keywords wired in: seeds by id_list from the arXiv stand-in, the model cached in a
real SQLite store, the cycle delivering selected papers exactly once, BibTeX/RIS seeds."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from digest.arxiv_source import ID_LIST_CHUNK, ArxivSource
from digest.bibliography import arxiv_ids_from_export
from digest.config import Settings, settings_for_tests
from digest.cycle import run_cycle
from digest.domain import Target
from digest.errors import ConfigError, SimilarityError
from digest.like_query import LikeQuery, canonical_like
from digest.likes import latest_like, like_model, resolve_like
from digest.similar import SimilarityModel, rank_by_model, seed_key
from storage.sql_store import SqlStore
from tests.fakes.arxiv_server import ArxivStandIn
from tests.fakes.recording_channel import RecordingChannel
from tests.like_helpers import NOW, UNKNOWN_ID, WITHDRAWN_ID, like_corpus, store_history

FIXTURES = Path(__file__).parent / "fixtures" / "bibliography"
TARGET = Target("slack", "C1")


@pytest.fixture
def server() -> Iterator[ArxivStandIn]:
    """The stand-in serving the stored papers, the seeds and a withdrawn paper."""
    with ArxivStandIn(like_corpus().served()) as stand_in:
        yield stand_in


@pytest.fixture
def settings(tmp_path: Path, server: ArxivStandIn) -> Settings:
    """Settings on the stand-in and a SQLite file, harvesting cs.*."""
    return settings_for_tests(
        service={"data_dir": str(tmp_path)},
        arxiv={"api_url": server.url, "retries": 1},
        keywords={"queries": []},
        delivery={"retry_base_minutes": 0},
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[SqlStore]:
    """The migrated store holding the corpus's history (seeds not among it)."""
    db = SqlStore.from_settings(settings)
    db.migrate()
    store_history(db, like_corpus().stored)
    yield db
    db.close()


@pytest.fixture
def source(settings: Settings) -> Iterator[ArxivSource]:
    """The arXiv source on the stand-in (test mode: no waits)."""
    with ArxivSource.from_settings(settings) as arxiv:
        yield arxiv


def test_fetch_ids_asks_by_id_list_and_leaves_unknown_ids_out(
    server: ArxivStandIn, source: ArxivSource
) -> None:
    """Known ids come back at their latest version, an unknown one is absent; one request."""
    seeds = like_corpus().seeds
    fetch = source.fetch_ids([seeds[0].arxiv_id, UNKNOWN_ID, seeds[1].arxiv_id])
    assert sorted(p.arxiv_id for p in fetch.papers) == sorted(
        [seeds[0].arxiv_id, seeds[1].arxiv_id]
    )
    [request] = server.requests
    assert request.params["id_list"] == f"{seeds[0].arxiv_id},{UNKNOWN_ID},{seeds[1].arxiv_id}"
    assert request.params["search_query"] == ""


def test_fetch_ids_is_chunked(server: ArxivStandIn, source: ArxivSource) -> None:
    """More ids than one request takes are asked for in chunks of ID_LIST_CHUNK."""
    stored = like_corpus().stored[: ID_LIST_CHUNK + 10]
    fetch = source.fetch_ids([p.arxiv_id for p in stored])
    assert len(fetch.papers) == len(stored)
    assert [len(r.params["id_list"].split(",")) for r in server.requests] == [ID_LIST_CHUNK, 10]


def test_resolve_like_fetches_the_seeds_once_and_stores_them(
    server: ArxivStandIn, store: SqlStore, source: ArxivSource
) -> None:
    """Seeds not stored are fetched by id_list and stored; a second resolve asks arXiv nothing."""
    corpus = like_corpus()
    query, seeds = resolve_like(store, source, corpus.like, now=NOW)
    assert query.text == corpus.canonical
    assert {p.arxiv_id for p in seeds} == {p.arxiv_id for p in corpus.seeds}
    assert len(store.papers_by_id(query.seeds)) == len(corpus.seeds)
    asked = len(server.requests)
    assert asked == 1
    resolve_like(store, source, corpus.like, now=NOW)
    assert len(server.requests) == asked


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ([UNKNOWN_ID], f"like: {UNKNOWN_ID} is not on arXiv;"),
        ([WITHDRAWN_ID], f"like: {WITHDRAWN_ID} has been withdrawn;"),
    ],
)
def test_bad_seeds_are_refused_and_nothing_is_stored(
    store: SqlStore, source: ArxivSource, extra: list[str], reason: str
) -> None:
    """An unknown or withdrawn seed: one line naming it, and no seed is stored."""
    seeds = [p.arxiv_id for p in like_corpus().seeds[:3]]
    with pytest.raises(SimilarityError) as refused:
        resolve_like(store, source, "like:" + ",".join([*seeds, *extra]), now=NOW)
    assert str(refused.value).startswith(reason)
    assert "\n" not in str(refused.value)
    assert store.papers_by_id([*seeds, *extra]) == []


def test_fewer_than_three_seeds_are_refused_before_arxiv_is_asked(
    server: ArxivStandIn, store: SqlStore, source: ArxivSource
) -> None:
    """Two seeds: refused with the rule, no request made."""
    seeds = [p.arxiv_id for p in like_corpus().seeds[:2]]
    with pytest.raises(SimilarityError, match="at least 3 seed papers"):
        resolve_like(store, source, "like:" + ",".join(seeds), now=NOW)
    assert server.requests == []


def test_model_is_cached_until_a_seed_changes(
    store: SqlStore, source: ArxivSource, caplog: pytest.LogCaptureFixture
) -> None:
    """Trained once and kept in the store; a revised seed (new version) trains it again."""
    corpus = like_corpus()
    resolve_like(store, source, corpus.like, now=NOW)
    store.add_keyword(corpus.canonical)
    caplog.set_level(logging.INFO, logger="digest.likes")
    first = like_model(store, corpus.canonical, now=NOW)
    again = like_model(store, corpus.canonical, now=NOW)
    assert again == first
    trained = [r for r in caplog.records if r.getMessage().startswith("like.trained")]
    assert len(trained) == 1
    cached = store.load_similarity_model(corpus.canonical)
    assert cached is not None
    assert cached[0] == first.seed_key
    assert SimilarityModel.loads(cached[1]) == first
    revised = replace(corpus.seeds[0], version=corpus.seeds[0].version + 1)
    store_history(store, (revised,))
    retrained = like_model(store, corpus.canonical, now=NOW)
    assert retrained.seed_key != first.seed_key
    assert retrained.seed_key == seed_key([revised, *corpus.seeds[1:]])
    assert len([r for r in caplog.records if r.getMessage().startswith("like.trained")]) == 2


def test_a_removed_keyword_drops_its_model(store: SqlStore, source: ArxivSource) -> None:
    """Removing the keyword removes its cached model."""
    corpus = like_corpus()
    resolve_like(store, source, corpus.like, now=NOW)
    store.add_keyword(corpus.canonical)
    like_model(store, corpus.canonical, now=NOW)
    assert store.remove_keyword(corpus.canonical)
    assert store.load_similarity_model(corpus.canonical) is None


async def _cycle(settings: Settings, store: SqlStore, channel: RecordingChannel, hours: int) -> Any:
    with ArxivSource.from_settings(settings) as arxiv:
        return await run_cycle(
            settings=settings,
            store=store,
            source=arxiv,
            channels={"slack": channel},
            now=lambda: NOW + timedelta(hours=hours),
        )


async def _deliver_the_week(
    server: ArxivStandIn, settings: Settings, store: SqlStore, source: ArxivSource
) -> tuple[LikeQuery, RecordingChannel]:
    """Subscribe TARGET to the corpus's like: query, announce the week, run one cycle."""
    query, _ = resolve_like(store, source, like_corpus().like, now=NOW)
    store.add_subscription(TARGET, query.text, now=NOW - timedelta(days=3))
    server.add_papers(like_corpus().week)
    slack = RecordingChannel(kind="slack")
    report = await _cycle(settings, store, slack, 0)
    assert report.ok, report.error
    return query, slack


async def test_cycle_delivers_what_the_model_selects_exactly_once(
    server: ArxivStandIn, settings: Settings, store: SqlStore, source: ArxivSource
) -> None:
    """The week's papers the model selects arrive once, mostly of the topic; a rerun adds none."""
    corpus = like_corpus()
    query, slack = await _deliver_the_week(server, settings, store, source)
    arrivals = Counter(slack.sent_ids(TARGET))
    assert arrivals, "the model should select some of the week's papers"
    assert set(arrivals.values()) == {1}
    delivered = set(arrivals)
    assert delivered <= {p.arxiv_id for p in corpus.week}  # nothing stored before, no seed
    precision = len(delivered & corpus.week_of_topic) / len(delivered)
    recall = len(delivered & corpus.week_of_topic) / len(corpus.week_of_topic)
    assert precision >= 0.8, (precision, recall)
    assert recall >= 0.7, (precision, recall)
    assert {d.keyword for b in slack.batches for d in b.deliveries} == {query.text}
    second = await _cycle(settings, store, slack, 1)
    assert second.ok, second.error
    assert Counter(slack.sent_ids(TARGET)) == arrivals
    assert store.count_matches(query.text) >= len(delivered)


async def test_a_broad_like_keyword_is_listed_by_its_models_score(
    server: ArxivStandIn, settings: Settings, store: SqlStore, source: ArxivSource
) -> None:
    """A like: keyword's day of papers arrives most like the seeds first, not newest first."""
    query, slack = await _deliver_the_week(server, settings, store, source)
    [(keyword, listed)] = slack.batches[0].by_keyword()
    assert keyword == query.text
    assert len(listed) >= settings.digest.relevance_from
    assert listed == rank_by_model(like_model(store, query.text, now=NOW), listed)
    assert listed != sorted(listed, key=lambda p: (p.updated, p.arxiv_id), reverse=True)


async def test_new_like_keyword_backfill_scores_the_week_without_delivering(
    server: ArxivStandIn, settings: Settings, store: SqlStore, source: ArxivSource
) -> None:
    """A new like: keyword's backfill matches the week's stored papers; none is delivered."""
    corpus = like_corpus()
    store_history(store, corpus.week)  # the week is stored already
    query, _ = resolve_like(store, source, corpus.like, now=NOW)
    store.add_subscription(TARGET, query.text, now=NOW)
    slack = RecordingChannel(kind="slack")
    report = await _cycle(settings, store, slack, 0)
    assert report.ok, report.error
    assert slack.sent_ids() == []
    assert store.keywords_to_backfill() == []
    matched = {p.arxiv_id for p in store.latest_matches(query.text, 1_000)}
    preview = latest_like(store, query.text, now=NOW)
    assert matched >= {p.arxiv_id for p in preview.papers}
    assert len(matched & corpus.week_of_topic) >= 0.7 * len(corpus.week_of_topic)


def test_bibtex_export_ids() -> None:
    """Zotero, Better BibTeX, Google Scholar and JabRef entries give their arXiv ids, in order;
    a journal article, a book and an SSRN eprint have none; abstracts are not read."""
    found = arxiv_ids_from_export((FIXTURES / "library.bib").read_text(encoding="utf-8"))
    assert found.ids == ("1706.03762", "1810.04805", "2005.14165", "2106.09685", "hep-th/9711200")
    assert (found.entries, found.without_id) == (8, 3)
    assert "1409.0473" not in found.ids  # cited in an abstract


def test_ris_export_ids() -> None:
    """Zotero RIS records give their ids from UR, DO, T2 and L1; a journal record has none."""
    found = arxiv_ids_from_export((FIXTURES / "library.ris").read_text(encoding="utf-8"))
    assert found.ids == ("1706.03762", "1810.04805", "2005.14165", "2106.09685")
    assert (found.entries, found.without_id) == (5, 1)


def test_export_without_references_is_empty() -> None:
    """Text that is neither BibTeX nor RIS holds no reference."""
    found = arxiv_ids_from_export("just some words about arXiv:2501.09733\n")
    assert (found.ids, found.entries, found.without_id) == ((), 0, 0)


async def test_first_cycle_of_a_new_installation_delivers_like_papers(
    server: ArxivStandIn, settings: Settings, source: ArxivSource
) -> None:
    """With no stored papers but the seeds, the harvest's own papers are the background: the
    first cycle already delivers what the model selects."""
    corpus = like_corpus()
    db = SqlStore.from_settings(settings)
    db.migrate()
    try:
        query, _ = resolve_like(db, source, corpus.like, now=NOW)
        db.add_subscription(TARGET, query.text, now=NOW - timedelta(days=3))
        server.add_papers(corpus.week)
        slack = RecordingChannel(kind="slack")
        report = await _cycle(settings, db, slack, 0)
        assert report.ok, report.error
        assert not [w for w in report.warnings if "selects nothing" in w]
        delivered = set(slack.sent_ids(TARGET))
        assert len(delivered & corpus.week_of_topic) >= 0.7 * len(corpus.week_of_topic)
    finally:
        db.close()


async def test_a_like_keyword_in_the_config_file_fetches_its_seeds_in_the_harvest(
    server: ArxivStandIn, settings: Settings, store: SqlStore
) -> None:
    """[keywords] queries may hold a like: seed list: the first harvest fetches its seeds (by
    id_list, once), tracks it in canonical form and its picks reach the README."""
    corpus = like_corpus()
    configured = replace(settings, keywords=replace(settings.keywords, queries=[corpus.like]))
    server.add_papers(corpus.week)
    slack = RecordingChannel(kind="slack")
    report = await _cycle(configured, store, slack, 0)
    assert report.ok, report.error
    assert not [w for w in report.warnings if "selects nothing" in w], report.warnings
    assert [k.query for k in store.list_keywords()] == [corpus.canonical]
    id_lists = [r for r in server.requests if r.params.get("id_list")]
    assert len(id_lists) == 1
    picked = {p.arxiv_id for p in store.latest_matches(corpus.canonical, 1_000)}
    assert len(picked & corpus.week_of_topic) >= 0.7 * len(corpus.week_of_topic)
    readme = configured.readme_path.read_text(encoding="utf-8")
    assert f"## {corpus.canonical}" in readme
    assert any(arxiv_id in readme for arxiv_id in picked)
    again = await _cycle(configured, store, slack, 1)
    assert again.ok, again.error
    assert len([r for r in server.requests if r.params.get("id_list")]) == 1  # seeds stored


async def test_a_config_like_keyword_with_an_unknown_seed_waits_with_a_warning(
    server: ArxivStandIn, settings: Settings, store: SqlStore
) -> None:
    """A seed arXiv does not know: the cycle still succeeds and says once why the keyword
    selected nothing; its backfill waits."""
    corpus = like_corpus()
    seeds = [p.arxiv_id for p in corpus.seeds[:3]]
    text = "like:" + ",".join([*seeds, UNKNOWN_ID])
    configured = replace(settings, keywords=replace(settings.keywords, queries=[text]))
    report = await _cycle(configured, store, RecordingChannel(kind="slack"), 0)
    assert report.ok, report.error
    [warning] = [w for w in report.warnings if text.split(",")[0] in w or UNKNOWN_ID in w]
    assert "selects nothing" in warning
    assert UNKNOWN_ID in warning
    assert store.keywords_to_backfill() == [canonical_like(text)]


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("like:2501.09733,2412.20455", "needs at least 3 seed papers"),
        ("like:foo,bar,baz", "are not arXiv ids"),
        ("likes: cats", "unknown field"),
    ],
)
def test_config_refuses_a_bad_like_entry_in_one_line(entry: str, reason: str) -> None:
    """A bad like: entry in [keywords] queries is refused at load with the like: reason."""
    with pytest.raises(ConfigError) as caught:
        settings_for_tests(keywords={"queries": ["diffusion", entry]})
    message = str(caught.value)
    assert "entry 2" in message
    assert reason in message
    assert "\n" not in message
