"""New keywords at scale: a backfill costs what it fetches, respects the categories, waits for
the day's deliveries within a time budget, and stores history, not the day's news."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from digest.arxiv_source import ArxivSource, backfill_queries, in_categories
from digest.config import Settings, settings_for_tests
from digest.cycle import _Tally, backfill_keywords, run_cycle
from digest.domain import Paper, Target
from storage.sql_store import SqlStore
from tests.fakes.arxiv_server import ArxivStandIn
from tests.fakes.recording_channel import RecordingChannel

DAY = datetime(2025, 2, 11, 12, 0, tzinfo=UTC)
PHRASE = "graph diffusion"


def paper(
    number: int, *, age: timedelta, categories: tuple[str, ...], about: str = PHRASE
) -> Paper:
    """A paper submitted `age` before DAY, about `about`."""
    submitted = DAY - age
    return Paper(
        arxiv_id=f"2501.{number:05d}",
        version=1,
        title=f"On {about} number {number}",
        authors=("A. Author",),
        abstract=f"We study {about} in setting {number}.",
        published=submitted,
        updated=submitted,
        primary_category=categories[0],
        categories=categories,
    )


WINDOW = [paper(n, age=timedelta(days=2, hours=n), categories=("cs.LG",)) for n in range(1, 4)]
OLD_IN = [paper(n, age=timedelta(days=40 + n), categories=("cs.CV",)) for n in range(10, 13)]
OLD_CROSS = [paper(20, age=timedelta(days=45), categories=("eess.IV", "cs.CV"))]  # cross-listed
OLD_OUT = [
    paper(30, age=timedelta(days=41), categories=("eess.SP",)),
    paper(31, age=timedelta(days=42), categories=("astro-ph.IM",)),
]
OTHER = [
    paper(40 + n, age=timedelta(days=1), categories=("cs.CV",), about="video") for n in range(3)
]


def make_settings(tmp_path: Path, server: ArxivStandIn, **tables: Any) -> Settings:
    """cs.CV and cs.LG, no config keywords, a SQLite file under tmp_path."""
    arxiv = {"api_url": server.url, "categories": ["cs.CV", "cs.LG"], "retries": 0}
    arxiv.update(tables.pop("arxiv", {}))
    return settings_for_tests(
        service={"data_dir": str(tmp_path)},
        arxiv=arxiv,
        readme={"max_papers": 20},
        **tables,
    )


@pytest.fixture
def server() -> Iterator[ArxivStandIn]:
    """The stand-in with window papers, old in-category papers and off-category ones."""
    with ArxivStandIn([*WINDOW, *OLD_IN, *OLD_CROSS, *OLD_OUT, *OTHER]) as stand_in:
        yield stand_in


async def cycle(settings: Settings, now: datetime, channels: dict[str, Any] | None = None) -> Any:
    """One cycle as `daily-papers run` does it, at `now`."""
    with SqlStore.from_settings(settings) as store, ArxivSource.from_settings(settings) as source:
        store.migrate()
        return await run_cycle(
            settings=settings, store=store, source=source, channels=channels or {}, now=lambda: now
        )


def test_backfill_queries_carry_the_harvests_categories() -> None:
    """`(query) AND (cat:...)` per category group; ['all'] needs no filter."""
    query = 'ti:"graph diffusion" OR abs:"graph diffusion"'
    assert backfill_queries(query, categories=["cs.CV", "cs.LG"], per_request=25) == [
        f"({query}) AND (cat:cs.CV OR cat:cs.LG)"
    ]
    groups = backfill_queries(query, categories=["cs.CV", "cs.LG", "math.*"], per_request=2)
    assert groups == [f"({query}) AND (cat:cs.CV OR cat:cs.LG)", f"({query}) AND (cat:math.*)"]
    assert backfill_queries(query, categories=["all"], per_request=25) == [query]


def test_in_categories_answers_as_arxivs_cat_search() -> None:
    """Any listed category counts (cross-lists too); wildcards cover an archive."""
    assert in_categories(OLD_CROSS[0], ["cs.CV"])
    assert not in_categories(OLD_OUT[0], ["cs.CV", "cs.LG"])
    assert in_categories(OLD_OUT[1], ["astro-ph*"])
    assert in_categories(OLD_OUT[0], ["eess.*"])


async def test_a_new_keywords_rows_come_from_its_backfill_and_the_window_only(
    tmp_path: Path, server: ArxivStandIn
) -> None:
    """A keyword added to a database holding old matching papers: it is matched against its
    backfill (in the harvest's categories) and the harvest window, nothing else."""
    settings = make_settings(tmp_path, server)
    db_only = paper(90, age=timedelta(days=300), categories=("cs.LG",))  # stored long ago
    with SqlStore.from_settings(settings) as store:
        store.migrate()
        store.commit_harvest(
            papers=[db_only], matches={}, deliverable=(), now=DAY - timedelta(days=300)
        )
    first = await cycle(settings, DAY)  # harvests the window; no keyword yet
    assert first.ok
    with SqlStore.from_settings(settings) as store:
        store.add_keyword(PHRASE)
    server.clear_requests()
    second = await cycle(settings, DAY + timedelta(hours=1))
    assert second.ok, second.error
    backfill = [r.search_query for r in server.requests if "submittedDate" not in r.search_query]
    assert len(backfill) == 1
    assert backfill[0].endswith("AND (cat:cs.CV OR cat:cs.LG)")
    with SqlStore.from_settings(settings) as store:
        rows = {p.arxiv_id for p in store.latest_matches(PHRASE, 100)}
        assert store.keywords_to_backfill() == []
    expected = {p.arxiv_id for p in [*WINDOW, *OLD_IN, *OLD_CROSS]}
    assert rows == expected  # not the off-category papers, not the old paper arXiv did not return
    readme = settings.readme_path.read_text(encoding="utf-8")
    for off in [*OLD_OUT, db_only]:
        assert off.arxiv_id not in readme


async def test_backfilled_papers_are_history_not_the_days_news(
    tmp_path: Path, server: ArxivStandIn
) -> None:
    """Old papers a backfill stored are neither delivered nor listed as the day's new papers."""
    settings = make_settings(tmp_path, server, keywords={"queries": [PHRASE]})
    slack = RecordingChannel(kind="slack")
    with SqlStore.from_settings(settings) as store:
        store.migrate()
        store.add_subscription(Target("slack", "C1"), PHRASE, now=DAY - timedelta(days=1))
    report = await cycle(settings, DAY, {"slack": slack})
    assert report.ok
    assert sorted(slack.sent_ids()) == sorted(p.arxiv_id for p in WINDOW)  # only the window's
    with SqlStore.from_settings(settings) as store:
        day = store.matches_first_seen_between(DAY - timedelta(hours=1), DAY + timedelta(hours=1))
        missing = store.papers_missing_translation("zh", since=DAY - timedelta(days=1))
    listed = {p.arxiv_id for _, p in day}
    assert listed == {p.arxiv_id for p in WINDOW}  # the only harvested papers it matches
    assert not listed & {p.arxiv_id for p in [*OLD_IN, *OLD_CROSS]}
    assert {p.arxiv_id for p in missing} == {p.arxiv_id for p in WINDOW}


async def test_the_days_deliveries_come_before_backfills(
    tmp_path: Path, server: ArxivStandIn
) -> None:
    """A cycle delivers what is owed, then spends its backfill budget."""
    settings = make_settings(tmp_path, server)
    seen_at_send: list[int] = []
    slack = RecordingChannel(
        kind="slack", after_send=lambda _b: seen_at_send.append(len(server.requests))
    )
    with SqlStore.from_settings(settings) as store:
        store.migrate()
        store.add_subscription(Target("slack", "C1"), "video", now=DAY - timedelta(days=1))
        store.mark_backfilled("video", DAY - timedelta(days=1))
        store.add_keyword(PHRASE)  # waits for its backfill
    report = await cycle(settings, DAY, {"slack": slack})
    assert report.ok
    assert seen_at_send
    kinds = [
        "harvest" if "submittedDate" in r.search_query else "backfill" for r in server.requests
    ]
    assert kinds[: seen_at_send[0]] == ["harvest"] * seen_at_send[0]
    assert "backfill" in kinds[seen_at_send[0] :]


async def test_backfills_stop_at_the_budget_oldest_request_first(
    tmp_path: Path, server: ArxivStandIn
) -> None:
    """Past the per-cycle budget the remaining keywords wait, oldest request first."""
    settings = make_settings(tmp_path, server)
    keywords = ["video", PHRASE, "setting 2", "setting 3"]
    ticks = iter(range(0, 1000, 4))  # every look at the clock: 4 s later
    with SqlStore.from_settings(settings) as store, ArxivSource.from_settings(settings) as source:
        store.migrate()
        for keyword in keywords:
            store.add_keyword(keyword)
        tally = _Tally()
        done = await backfill_keywords(
            settings=settings,
            store=store,
            source=source,
            now=lambda: DAY,
            tally=tally,
            budget_seconds=10,
            clock=lambda: float(next(ticks)),
        )
        assert done == 2
        assert store.keywords_to_backfill() == keywords[2:]
        assert any("2 keyword backfill(s) wait for the next cycle" in w for w in tally.warnings)
    zero = make_settings(tmp_path, server, arxiv={"backfill_budget_seconds": 0})
    report = await cycle(zero, DAY)
    assert report.ok
    assert any("2 keyword backfill(s) wait" in w for w in report.warnings)


async def test_status_counts_the_backfills_waiting(
    tmp_path: Path, server: ArxivStandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status` says how many new keywords wait for their backfill."""
    import argparse

    from digest.cli import cmd_status

    settings = make_settings(tmp_path, server)
    with SqlStore.from_settings(settings) as store:
        store.migrate()
        store.add_keyword("video")
        store.add_keyword(PHRASE)
    cmd_status(argparse.Namespace(runs=5, json=False), lambda: settings)
    assert "keywords: 2 (2 waiting for a backfill)" in capsys.readouterr().out


async def test_a_steady_cycle_matches_and_writes_only_what_is_new(
    tmp_path: Path, server: ArxivStandIn
) -> None:
    """A second cycle over the same window hands no match to the store: nothing is re-written."""
    settings = make_settings(tmp_path, server, keywords={"queries": [PHRASE, "video"]})
    assert (await cycle(settings, DAY)).ok
    handed: list[int] = []
    original = SqlStore.commit_harvest

    def spy(self: SqlStore, **kwargs: Any) -> Any:
        handed.append(sum(len(ids) for ids in kwargs["matches"].values()))
        return original(self, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SqlStore, "commit_harvest", spy)
        again = await cycle(settings, DAY + timedelta(hours=2))
        assert again.ok
        fresh = paper(70, age=timedelta(hours=1), categories=("cs.LG",))
        server.set_papers([*WINDOW, *OLD_IN, *OLD_CROSS, *OLD_OUT, *OTHER, fresh])
        third = await cycle(settings, DAY + timedelta(hours=3))
    assert handed == [0, 1]  # the second cycle matched nothing old; the third only its new paper
    assert third.new_matches == 1


async def test_a_revised_paper_is_matched_again(tmp_path: Path, server: ArxivStandIn) -> None:
    """A new version whose abstract now names a keyword gains that match."""
    settings = make_settings(tmp_path, server, keywords={"queries": [PHRASE]})
    assert (await cycle(settings, DAY)).ok
    before = OTHER[0]
    revised = replace(
        before,
        version=2,
        abstract="Now about graph diffusion too.",
        updated=DAY - timedelta(hours=1),
    )
    server.set_papers([*WINDOW, *OLD_IN, *OLD_CROSS, *OLD_OUT, revised, *OTHER[1:]])
    report = await cycle(settings, DAY + timedelta(hours=2))
    assert report.ok
    with SqlStore.from_settings(settings) as store:
        assert before.arxiv_id in {p.arxiv_id for p in store.latest_matches(PHRASE, 100)}
