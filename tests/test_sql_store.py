"""SqlStore against real SQLite files and the local PostgreSQL (the `store` fixture runs both)."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from digest.domain import DeliveryStatus, Outcome, OutcomeKind, Paper, RunReport, Target
from digest.errors import StoreError
from digest.store import HarvestCommit, OutcomeCounts, PaperStore, Reopened, RunTotals
from storage.sql_store import SqlStore, redact_url
from tests.reference_papers import load_reference_papers, load_reference_sections

T0 = datetime(2025, 2, 3, 21, 0, tzinfo=UTC)
SLACK = Target("slack", "C0123")
EMAIL = Target("email", "group@example.org")
LLM = "LLM Agents"


def paper(arxiv_id: str, version: int = 1, *, day: int = 1, title: str = "") -> Paper:
    """A small paper whose `updated` time grows with `day` (and version)."""
    when = datetime(2025, 1, day, 12, tzinfo=UTC)
    return Paper(
        arxiv_id=arxiv_id,
        version=version,
        title=title or f"Paper {arxiv_id} v{version}",
        authors=("Ada Lovelace", "Alan Turing"),
        abstract=f"Abstract of {arxiv_id} v{version}.",
        published=when,
        updated=when + timedelta(hours=version),
        primary_category="cs.LG",
        categories=("cs.LG", "cs.AI"),
        comment="12 pages" if version > 1 else None,
        journal_ref=None,
        doi=None,
    )


def harvest(
    store: SqlStore,
    papers: list[Paper],
    keyword: str = LLM,
    *,
    now: datetime = T0,
    deliverable: list[str] | None = None,
    watermark: datetime | None = None,
) -> HarvestCommit:
    """Commit `papers`, all matching `keyword`, all deliverable unless told otherwise."""
    ids = [p.arxiv_id for p in papers]
    return store.commit_harvest(
        papers=papers,
        matches={keyword: ids},
        deliverable=ids if deliverable is None else deliverable,
        now=now,
        watermark=watermark,
    )


def test_sql_store_satisfies_the_paper_store_protocol(sqlite_store: SqlStore) -> None:
    """SqlStore is a PaperStore (mypy checks the assignment; this checks every method exists)."""
    port: PaperStore = sqlite_store
    for name in PaperStore.__dict__:
        if not name.startswith("_"):
            assert callable(getattr(port, name)), name


# -- keywords -------------------------------------------------------------------------------


def test_keywords_are_case_insensitive_and_config_ones_list_first(store: SqlStore) -> None:
    """Lookups ignore case and spacing; config keywords come first, each group in added order."""
    assert store.add_keyword("zeta user keyword") is True
    assert store.add_keyword(LLM, from_config=True) is True
    assert store.add_keyword("llm   agents") is False
    assert store.add_keyword("Diffusion", from_config=True) is True
    assert store.add_keyword("alpha user keyword") is True
    assert [(k.query, k.from_config) for k in store.list_keywords()] == [
        (LLM, True),
        ("Diffusion", True),
        ("zeta user keyword", False),
        ("alpha user keyword", False),
    ]
    # a user keyword that later appears in the config file joins the config group
    assert store.add_keyword("ALPHA user keyword", from_config=True) is False
    assert [k.query for k in store.list_keywords() if k.from_config] == [
        LLM,
        "Diffusion",
        "alpha user keyword",
    ]


def test_backfill_bookkeeping(store: SqlStore) -> None:
    """A keyword needs its backfill until marked, whatever the case of the marking text."""
    store.add_keyword(LLM)
    store.add_keyword("Diffusion")
    assert store.keywords_to_backfill() == [LLM, "Diffusion"]
    store.mark_backfilled("llm agents", T0)
    assert store.keywords_to_backfill() == ["Diffusion"]


def test_remove_keyword_refuses_while_an_active_subscription_uses_it(store: SqlStore) -> None:
    """remove_keyword raises StoreError naming the subscriber, then works once it is gone."""
    store.add_subscription(SLACK, LLM, now=T0)
    harvest(store, [paper("2501.00001")])
    with pytest.raises(StoreError, match=r"slack:C0123"):
        store.remove_keyword(LLM)
    assert store.count_matches(LLM) == 1
    assert store.remove_subscription(SLACK, "llm agents") is True
    assert store.remove_keyword("LLM agents") is True
    assert store.list_keywords() == []
    assert store.count_matches(LLM) == 0
    assert store.remove_keyword(LLM) is False
    assert store.known_versions(["2501.00001"]) == {"2501.00001": 1}  # papers stay


def test_remove_keyword_refusal_masks_a_webhook_token(store: SqlStore) -> None:
    """The subscriber named in the refusal is shown as Target.display: no webhook token."""
    webhook = Target("discord_webhook", "https://discord.com/api/webhooks/123/s3cr3t")
    store.add_subscription(webhook, LLM, now=T0)
    with pytest.raises(StoreError, match=r"webhooks/123/\*+") as info:
        store.remove_keyword(LLM)
    assert "s3cr3t" not in str(info.value)


def test_remove_keyword_drops_its_disabled_subscriptions(store: SqlStore) -> None:
    """A keyword whose only subscription is disabled can be removed, taking the subscription."""
    sub = store.add_subscription(SLACK, LLM, now=T0)
    store.disable_subscription(sub.id, "channel_not_found")
    assert store.remove_keyword(LLM) is True
    assert store.list_subscriptions() == []


# -- papers and the harvest -----------------------------------------------------------------


def test_upsert_bumps_version_never_downgrades_and_keeps_first_seen(store: SqlStore) -> None:
    """v2 replaces v1, v1 seen again changes nothing, first_seen stays the first day."""
    store.add_keyword(LLM)
    day2, day3 = T0 + timedelta(days=1), T0 + timedelta(days=2)
    first = harvest(store, [paper("2501.00001"), paper("2501.00002")])
    assert first == HarvestCommit(new_papers=2, revised_papers=0, new_matches=2, new_deliveries=0)

    second = harvest(store, [paper("2501.00001", 2), paper("2501.00002")], now=day2)
    assert (second.new_papers, second.revised_papers, second.new_matches) == (0, 1, 0)
    assert store.known_versions(["2501.00001", "2501.00002", "9999.99999"]) == {
        "2501.00001": 2,
        "2501.00002": 1,
    }

    third = harvest(store, [paper("2501.00001", 1)], now=day3)
    assert third.revised_papers == 0
    stored = {p.arxiv_id: p for p in store.iter_papers()}
    assert stored["2501.00001"] == paper("2501.00001", 2)
    # first stored on T0: found in T0's window, not in day 2's
    assert {p.arxiv_id for _, p in store.matches_first_seen_between(T0, day2)} == {
        "2501.00001",
        "2501.00002",
    }
    assert store.matches_first_seen_between(day2, day3 + timedelta(days=1)) == []


def test_reference_papers_round_trip_unchanged(store: SqlStore) -> None:
    """The reference README's papers come back field for field, each section in its order."""
    sections = load_reference_sections()
    for section in sections:
        store.add_keyword(section.keyword, from_config=True)
    store.commit_harvest(
        papers=load_reference_papers(),
        matches={s.keyword: [p.arxiv_id for p in s.papers] for s in sections},
        deliverable=[],
        now=T0,
    )
    assert {p.arxiv_id: p for p in store.iter_papers(batch_size=7)} == {
        p.arxiv_id: p for p in load_reference_papers()
    }
    assert all(p.updated.tzinfo is UTC for p in store.iter_papers())
    for section in sections:
        assert tuple(store.latest_matches(section.keyword, 100)) == section.papers


def test_commit_harvest_is_atomic(store: SqlStore) -> None:
    """A failure mid-way (a match for a paper never stored) leaves no paper, match or watermark."""
    store.add_subscription(SLACK, LLM, now=T0)
    with pytest.raises(StoreError):
        store.commit_harvest(
            papers=[paper("2501.00001")],
            matches={LLM: ["2501.00001", "2501.99999"]},  # the second paper does not exist
            deliverable=["2501.00001", "2501.99999"],
            now=T0,
            watermark=T0,
        )
    assert store.known_versions(["2501.00001"]) == {}
    assert store.count_matches(LLM) == 0
    assert store.pending_batches(now=T0) == []
    assert store.get_watermark() is None


def test_same_harvest_committed_twice_owes_each_paper_once(store: SqlStore) -> None:
    """Re-running a crashed cycle's harvest creates no second delivery (exactly-once outbox)."""
    sub = store.add_subscription(SLACK, LLM, now=T0)
    papers = [paper("2501.00001"), paper("2501.00002")]
    assert harvest(store, papers).new_deliveries == 2
    assert harvest(store, papers).new_deliveries == 0
    (batch,) = store.pending_batches(now=T0)
    assert [d.paper.arxiv_id for d in batch.deliveries] == ["2501.00002", "2501.00001"]
    store.record_outcomes(Outcome.for_batch(batch, OutcomeKind.SENT), now=T0)
    # even once sent, the row remembers the delivery: the same harvest owes nothing
    assert harvest(store, papers).new_deliveries == 0
    assert store.pending_batches(now=T0 + timedelta(days=1)) == []
    assert sub.keyword == LLM


def test_a_deliverable_revision_is_owed_once_more_per_version(store: SqlStore) -> None:
    """With revisions announced, a sent paper's v2 re-opens its delivery, once per version."""
    store.add_subscription(SLACK, LLM, now=T0)
    harvest(store, [paper("2501.00001")])
    (batch,) = store.pending_batches(now=T0)
    store.record_outcomes(Outcome.for_batch(batch, OutcomeKind.SENT), now=T0)
    assert harvest(store, [paper("2501.00001", 2)]).new_deliveries == 1
    (again,) = store.pending_batches(now=T0)
    assert [(d.paper.arxiv_id, d.paper.version) for d in again.deliveries] == [("2501.00001", 2)]
    store.record_outcomes(Outcome.for_batch(again, OutcomeKind.SENT), now=T0)
    assert harvest(store, [paper("2501.00001", 2)]).new_deliveries == 0  # same version: done
    not_announced = harvest(store, [paper("2501.00001", 3)], deliverable=[])
    assert not_announced.new_deliveries == 0


def test_only_deliverable_papers_are_owed(store: SqlStore) -> None:
    """Matches outside `deliverable` (revisions, backfill) are stored but not delivered."""
    store.add_subscription(SLACK, LLM, now=T0)
    result = harvest(store, [paper("2501.00001"), paper("2501.00002")], deliverable=["2501.00002"])
    assert (result.new_matches, result.new_deliveries) == (2, 1)
    (batch,) = store.pending_batches(now=T0)
    assert [d.paper.arxiv_id for d in batch.deliveries] == ["2501.00002"]


def test_new_subscription_is_not_owed_old_papers(store: SqlStore) -> None:
    """Subscribing after a paper was harvested does not deliver it; the next new paper is."""
    store.add_subscription(SLACK, LLM, now=T0)
    harvest(store, [paper("2501.00001")])
    late = store.add_subscription(EMAIL, LLM, now=T0 + timedelta(hours=1))
    # the next day's harvest re-reads the old paper (look-back window) and finds a new one
    day2 = T0 + timedelta(days=1)
    harvest(store, [paper("2501.00001"), paper("2501.00002", day=2)], now=day2, deliverable=[])
    harvest(store, [paper("2501.00003", day=3)], now=day2)
    batches = {b.target: b for b in store.pending_batches(now=day2)}
    assert [d.paper.arxiv_id for d in batches[EMAIL].deliveries] == ["2501.00003"]
    assert {d.subscription_id for d in batches[EMAIL].deliveries} == {late.id}
    assert [d.paper.arxiv_id for d in batches[SLACK].deliveries] == ["2501.00003", "2501.00001"]


def test_untracked_keyword_in_matches_is_skipped(store: SqlStore) -> None:
    """A keyword removed while the cycle ran does not fail the harvest; its matches are dropped."""
    store.add_keyword(LLM)
    result = store.commit_harvest(
        papers=[paper("2501.00001")],
        matches={LLM: ["2501.00001"], "gone keyword": ["2501.00001"]},
        deliverable=["2501.00001"],
        now=T0,
    )
    assert result.new_matches == 1


def test_watermark_is_set_only_when_given(store: SqlStore) -> None:
    """The watermark moves with a complete harvest and stays put otherwise."""
    store.add_keyword(LLM)
    assert store.get_watermark() is None
    harvest(store, [paper("2501.00001")], watermark=T0)
    assert store.get_watermark() == T0
    harvest(store, [paper("2501.00002")], now=T0 + timedelta(days=1))
    assert store.get_watermark() == T0
    eastern = T0.astimezone(datetime.now().astimezone().tzinfo) + timedelta(days=1)
    harvest(store, [], watermark=eastern)
    assert store.get_watermark() == T0 + timedelta(days=1)
    assert store.get_watermark().tzinfo is UTC  # type: ignore[union-attr]


def test_latest_and_count_matches(store: SqlStore) -> None:
    """latest_matches is newest updated first, ties broken by arxiv id descending."""
    store.add_keyword(LLM)
    store.add_keyword("Other")
    papers = [paper("2501.00001", day=1), paper("2501.00003", day=2), paper("2501.00002", day=2)]
    harvest(store, papers)
    harvest(store, [paper("2501.00009", day=9)], "Other")
    assert [p.arxiv_id for p in store.latest_matches("llm agents", 10)] == [
        "2501.00003",
        "2501.00002",
        "2501.00001",
    ]
    assert [p.arxiv_id for p in store.latest_matches(LLM, 2)] == ["2501.00003", "2501.00002"]
    assert store.count_matches(LLM) == 3
    assert store.latest_matches("untracked", 10) == []
    assert store.count_matches("untracked") == 0


def test_matches_first_seen_between_lists_each_keyword_newest_first(store: SqlStore) -> None:
    """The day's (keyword, paper) pairs, newest first; a paper under two keywords shows twice."""
    store.add_keyword(LLM, from_config=True)
    store.add_keyword("Agents")
    shared = paper("2501.00005", day=5)
    harvest(store, [paper("2501.00001", day=1), shared])
    harvest(store, [shared], "Agents")
    harvest(store, [paper("2501.00007", day=7)], now=T0 + timedelta(days=1))
    pairs = store.matches_first_seen_between(T0, T0 + timedelta(days=1))
    assert [(k, p.arxiv_id) for k, p in pairs] == [
        (LLM, "2501.00005"),
        ("Agents", "2501.00005"),
        (LLM, "2501.00001"),
    ]


def test_iter_papers_reads_in_batches_in_id_order(store: SqlStore) -> None:
    """iter_papers yields every paper once, in id order, whatever the batch size."""
    store.add_keyword(LLM)
    ids = [f"2501.{n:05d}" for n in range(1, 24)]
    harvest(store, [paper(i) for i in reversed(ids)])
    for size in (1, 5, 23, 1000):
        assert [p.arxiv_id for p in store.iter_papers(batch_size=size)] == ids


def test_five_thousand_papers_in_one_harvest(store: SqlStore) -> None:
    """A large harvest commits all papers, matches and deliveries (exercising the chunking)."""
    store.add_subscription(SLACK, LLM, now=T0)
    papers = [paper(f"2501.{n:05d}", day=1 + n % 28) for n in range(5000)]
    result = harvest(store, papers)
    assert result == HarvestCommit(
        new_papers=5000, revised_papers=0, new_matches=5000, new_deliveries=5000
    )
    assert len(store.known_versions([p.arxiv_id for p in papers])) == 5000
    (batch,) = store.pending_batches(now=T0)
    assert len(batch.deliveries) == 5000
    counts = store.record_outcomes(Outcome.for_batch(batch, OutcomeKind.SENT), now=T0)
    assert counts == OutcomeCounts(sent=5000)


# -- subscriptions and target options -------------------------------------------------------


def test_subscriptions_add_list_remove_and_reactivate(store: SqlStore) -> None:
    """add tracks the keyword; a disabled subscription comes back active with no reason."""
    sub = store.add_subscription(SLACK, "llm agents", now=T0)
    assert [k.query for k in store.list_keywords()] == ["llm agents"]
    again = store.add_subscription(SLACK, "LLM AGENTS", now=T0 + timedelta(days=1))
    assert again == sub
    assert sub.created_at == T0
    store.add_subscription(EMAIL, "Diffusion", now=T0)
    store.disable_subscription(sub.id, "channel_not_found")
    assert [s.keyword for s in store.list_subscriptions(active_only=True)] == ["Diffusion"]
    (disabled,) = store.list_subscriptions(SLACK)
    assert (disabled.active, disabled.disabled_reason) == (False, "channel_not_found")

    back = store.add_subscription(SLACK, LLM, now=T0 + timedelta(days=2))
    assert (back.id, back.active, back.disabled_reason) == (sub.id, True, None)
    assert [(s.target, s.active) for s in store.list_subscriptions()] == [
        (SLACK, True),
        (EMAIL, True),
    ]
    assert store.remove_subscription(SLACK, LLM) is True
    assert store.remove_subscription(SLACK, LLM) is False
    assert store.remove_subscription(SLACK, "never tracked") is False
    assert store.list_subscriptions(SLACK) == []


def test_target_options(store: SqlStore) -> None:
    """Options are per target, replaced on set and removed with None; batches carry them."""
    assert store.get_target_option(SLACK, "language") is None
    store.set_target_option(SLACK, "language", "zh")
    store.set_target_option(SLACK, "language", "ja")
    store.set_target_option(EMAIL, "language", "de")
    assert store.get_target_option(SLACK, "language") == "ja"
    store.add_subscription(SLACK, LLM, now=T0)
    harvest(store, [paper("2501.00001")])
    (batch,) = store.pending_batches(now=T0)
    assert batch.options == {"language": "ja"}
    store.set_target_option(SLACK, "language", None)
    assert store.get_target_option(SLACK, "language") is None
    assert store.get_target_option(EMAIL, "language") == "de"


# -- the outbox -----------------------------------------------------------------------------


def test_pending_batches_group_by_target_and_filter_kinds(store: SqlStore) -> None:
    """One batch per target with all its keywords' papers; `kinds` filters; not-due rows wait."""
    store.add_subscription(SLACK, LLM, now=T0)
    store.add_subscription(SLACK, "Diffusion", now=T0)
    store.add_subscription(EMAIL, LLM, now=T0)
    harvest(store, [paper("2501.00001"), paper("2501.00002", day=2)])
    harvest(store, [paper("2501.00002", day=2), paper("2501.00003", day=3)], "Diffusion")

    batches = store.pending_batches(now=T0)
    assert [b.target for b in batches] == [SLACK, EMAIL]
    slack = batches[0]
    assert [(d.keyword, d.paper.arxiv_id, d.attempts) for d in slack.deliveries] == [
        (LLM, "2501.00002", 0),
        (LLM, "2501.00001", 0),
        ("Diffusion", "2501.00003", 0),
        ("Diffusion", "2501.00002", 0),
    ]
    assert [p.arxiv_id for p in slack.papers] == ["2501.00003", "2501.00002", "2501.00001"]
    assert [b.target for b in store.pending_batches(now=T0, kinds=["email"])] == [EMAIL]
    assert store.pending_batches(now=T0, kinds=[]) == []
    assert store.pending_batches(now=T0 - timedelta(seconds=1)) == []


def test_sent_outcomes_close_deliveries(store: SqlStore) -> None:
    """SENT deliveries leave the outbox; recording the same outcomes twice changes nothing."""
    store.add_subscription(SLACK, LLM, now=T0)
    harvest(store, [paper("2501.00001"), paper("2501.00002")])
    (batch,) = store.pending_batches(now=T0)
    outcomes = Outcome.for_batch(batch, OutcomeKind.SENT)
    assert store.record_outcomes(outcomes, now=T0) == OutcomeCounts(sent=2)
    assert store.record_outcomes(outcomes, now=T0) == OutcomeCounts()
    assert store.pending_batches(now=T0 + timedelta(days=30)) == []


def test_retry_backoff_doubles_and_gives_up(sqlite_store: SqlStore, tmp_path: Path) -> None:
    """RETRY reschedules at base * 2**(n-1), capped, and fails the delivery at max_attempts."""
    url = f"sqlite:///{tmp_path / 'daily-papers.sqlite3'}"
    store = SqlStore(
        url=url, max_attempts=4, retry_base=timedelta(minutes=30), retry_max=timedelta(hours=1)
    )
    with store:
        sub = store.add_subscription(SLACK, LLM, now=T0)
        harvest(store, [paper("2501.00001")])
        now = T0
        for attempt, delay in enumerate(
            [timedelta(minutes=30), timedelta(hours=1), timedelta(hours=1)], start=1
        ):
            (batch,) = store.pending_batches(now=now)
            assert batch.deliveries[0].attempts == attempt - 1
            counts = store.record_outcomes(
                [Outcome(sub.id, "2501.00001", OutcomeKind.RETRY, "HTTP 503")], now=now
            )
            assert counts == OutcomeCounts(retried=1)
            assert store.pending_batches(now=now + delay - timedelta(seconds=1)) == []
            now += delay
        (batch,) = store.pending_batches(now=now)
        assert batch.deliveries[0].attempts == 3
        counts = store.record_outcomes(
            [Outcome(sub.id, "2501.00001", OutcomeKind.RETRY, "HTTP 503")], now=now
        )
        assert counts == OutcomeCounts(failed=1)
        assert store.pending_batches(now=now + timedelta(days=365)) == []
        assert store.list_subscriptions()[0].active  # giving up on one paper keeps the sub


def test_zero_backoff_retries_are_due_at_once(tmp_path: Path) -> None:
    """With retry_base 0 (test mode) a retried delivery is due again immediately."""
    url = f"sqlite:///{tmp_path / 'daily-papers.sqlite3'}"
    with SqlStore(url=url, retry_base=timedelta(0)) as store:
        store.migrate()
        sub = store.add_subscription(SLACK, LLM, now=T0)
        harvest(store, [paper("2501.00001")])
        store.record_outcomes([Outcome(sub.id, "2501.00001", OutcomeKind.RETRY, "x")], now=T0)
        (batch,) = store.pending_batches(now=T0)
        assert batch.deliveries[0].attempts == 1


def test_permanent_error_disables_the_subscription(store: SqlStore) -> None:
    """PERMANENT disables the subscription with its reason and fails all its pending rows."""
    sub = store.add_subscription(SLACK, LLM, now=T0)
    other = store.add_subscription(EMAIL, LLM, now=T0)
    harvest(store, [paper("2501.00001"), paper("2501.00002")])
    batches = {b.target: b for b in store.pending_batches(now=T0)}
    first = batches[SLACK].deliveries[0]
    counts = store.record_outcomes(
        [
            Outcome(sub.id, first.paper.arxiv_id, OutcomeKind.PERMANENT, "channel_not_found"),
            *Outcome.for_batch(batches[EMAIL], OutcomeKind.SENT),
        ],
        now=T0,
    )
    assert counts == OutcomeCounts(sent=2, failed=2, disabled=1)
    assert [b.target for b in store.pending_batches(now=T0)] == []
    slack_sub, email_sub = store.list_subscriptions()
    assert (slack_sub.active, slack_sub.disabled_reason) == (False, "channel_not_found")
    assert email_sub.active
    assert email_sub.id == other.id

    # re-activated, it is owed new papers only, not the backlog that failed
    store.add_subscription(SLACK, LLM, now=T0 + timedelta(days=1))
    harvest(store, [paper("2501.00003", day=3)], now=T0 + timedelta(days=1))
    (batch, _) = store.pending_batches(now=T0 + timedelta(days=1))
    assert [d.paper.arxiv_id for d in batch.deliveries] == ["2501.00003"]


# -- translations, runs, state --------------------------------------------------------------


def test_translations_and_papers_missing_them(store: SqlStore) -> None:
    """Saved translations are found (replaced on save); missing ones are matched recent papers."""
    store.add_keyword(LLM)
    harvest(store, [paper("2501.00001", day=1), paper("2501.00002", day=2)])
    store.commit_harvest(
        papers=[paper("2501.00009")], matches={}, deliverable=[], now=T0
    )  # stored but matches no keyword: never translated
    harvest(store, [paper("2501.00003", day=3)], now=T0 + timedelta(days=2))

    missing = store.papers_missing_translation("zh", since=T0)
    assert [p.arxiv_id for p in missing] == ["2501.00003", "2501.00002", "2501.00001"]
    store.save_translation("2501.00002", "zh", "标题", "摘要")
    store.save_translation("2501.00002", "zh", "新标题", "新摘要")
    store.save_translation("2501.00001", "ja", "タイトル", "要旨")
    assert store.get_translations(["2501.00001", "2501.00002", "2501.00003"], "zh") == {
        "2501.00002": ("新标题", "新摘要")
    }
    missing = store.papers_missing_translation("zh", since=T0 + timedelta(days=1))
    assert [p.arxiv_id for p in missing] == ["2501.00003"]
    assert [p.arxiv_id for p in store.papers_missing_translation("zh", since=T0, limit=1)] == [
        "2501.00003"
    ]


def test_runs_round_trip_newest_first(store: SqlStore) -> None:
    """record_run stores every field; recent_runs returns the newest first."""
    old = RunReport(started_at=T0, finished_at=T0 + timedelta(seconds=7), ok=True, requests=3)
    new = RunReport(
        started_at=T0 + timedelta(days=1),
        finished_at=T0 + timedelta(days=1, seconds=9),
        ok=False,
        requests=4,
        throttled=1,
        harvested=1200,
        new_papers=42,
        new_matches=7,
        sent=5,
        failed=2,
        disabled=1,
        error="arXiv answered 503 four times",
        warnings=("no new papers on two announcement days",),
        retries=3,
        deferred=4,
        next_retry_at=T0 + timedelta(days=1, hours=1),
    )
    store.record_run(old)
    store.record_run(new)
    assert store.recent_runs() == [new, old]
    assert store.recent_runs(limit=1) == [new]


def test_run_totals_and_the_last_ok_run(store: SqlStore) -> None:
    """run_totals sums every cycle (counting ok and failed ones); last_ok_run skips failures."""
    assert store.run_totals() == RunTotals()
    assert store.last_ok_run() is None
    ok = RunReport(T0, T0, ok=True, requests=3, retries=1, harvested=10, sent=5, deferred=2)
    failed = RunReport(T0 + timedelta(days=1), T0 + timedelta(days=1), ok=False, requests=5)
    store.record_run(ok)
    store.record_run(failed)
    assert store.run_totals() == RunTotals(
        cycles_ok=1, cycles_failed=1, requests=8, retries=1, harvested=10, sent=5, deferred=2
    )
    assert store.last_ok_run() == ok


# -- the operator's view of the outbox --------------------------------------------------------


def test_outbox_listed_counted_and_reopened(store: SqlStore) -> None:
    """Deliveries are listed failed first, counted by kind and state (deferred apart, with its
    next try), and reopen_deliveries resumes the subscription, re-opens the failed ones with
    attempts starting over and brings the deferred ones forward."""
    slack = store.add_subscription(SLACK, LLM, now=T0)
    email = store.add_subscription(EMAIL, LLM, now=T0)
    harvest(store, [paper("2501.00001", day=1), paper("2501.00002", day=2)])
    later = T0 + timedelta(minutes=30)
    store.record_outcomes(
        [
            Outcome(email.id, "2501.00001", OutcomeKind.SENT),
            Outcome(email.id, "2501.00002", OutcomeKind.RETRY, "451 greylisted"),
            Outcome(slack.id, "2501.00001", OutcomeKind.UNAUTHORIZED, "invalid_auth: check it"),
        ],
        now=T0,
    )
    (slack_now,) = store.list_subscriptions(SLACK)
    assert (slack_now.active, slack_now.disabled_reason) == (False, "invalid_auth: check it")
    assert slack_now.disabled_at == T0

    records = store.list_deliveries()
    assert [(r.target, r.arxiv_id, r.status.value, r.deferred) for r in records] == [
        (SLACK, "2501.00001", "failed", False),
        (SLACK, "2501.00002", "failed", False),
        (EMAIL, "2501.00002", "pending", True),
        (EMAIL, "2501.00001", "sent", False),
    ]
    assert records[0].last_error == "invalid_auth: check it"
    assert records[3].sent_at == T0
    assert store.list_deliveries(target=EMAIL, statuses=[DeliveryStatus.SENT]) == records[3:]
    assert len(store.list_deliveries(subscription_ids=[slack.id], limit=1)) == 1

    counts = {(c.kind, c.status): c for c in store.count_outbox()}
    assert {key: c.count for key, c in counts.items()} == {
        ("email", "deferred"): 1,
        ("email", "sent"): 1,
        ("slack", "failed"): 2,
    }
    assert counts[("email", "deferred")].next_attempt_at == later  # the store's 30 min base
    assert counts[("slack", "failed")].next_attempt_at is None

    done = store.reopen_deliveries([slack.id, email.id], now=T0 + timedelta(minutes=1))
    assert done == Reopened(failed=2, deferred=1, resumed=1)
    (slack_now,) = store.list_subscriptions(SLACK)
    assert (slack_now.active, slack_now.disabled_reason, slack_now.disabled_at) == (
        True,
        None,
        None,
    )
    due = store.pending_batches(now=T0 + timedelta(minutes=1))
    assert {(b.target, d.paper.arxiv_id, d.attempts) for b in due for d in b.deliveries} == {
        (SLACK, "2501.00001", 0),
        (SLACK, "2501.00002", 0),
        (EMAIL, "2501.00002", 1),
    }
    assert store.reopen_deliveries([slack.id], now=T0 + timedelta(minutes=1)) == Reopened()


def test_subscriptions_counted_by_kind_state_and_reason(store: SqlStore) -> None:
    """count_subscriptions groups by kind, active or not, and the reason of disabled ones."""
    store.add_subscription(SLACK, LLM, now=T0)
    gone = store.add_subscription(SLACK, "Diffusion", now=T0)
    store.disable_subscription(gone.id, "channel_not_found")
    store.add_subscription(EMAIL, LLM, now=T0)
    rows = {(c.kind, c.active, c.reason): c.count for c in store.count_subscriptions()}
    assert rows == {
        ("email", True, None): 1,
        ("slack", True, None): 1,
        ("slack", False, "channel_not_found"): 1,
    }


def test_state_set_get_delete(store: SqlStore) -> None:
    """Named values are set, replaced and deleted with None."""
    assert store.get_state("alerts.last") is None
    store.set_state("alerts.last", "a")
    store.set_state("alerts.last", "b")
    assert store.get_state("alerts.last") == "b"
    store.set_state("alerts.last", None)
    assert store.get_state("alerts.last") is None


# -- errors and concurrency -----------------------------------------------------------------


def test_bad_url_is_a_store_error_without_the_password() -> None:
    """An unsupported or malformed URL raises StoreError naming the redacted URL."""
    with pytest.raises(StoreError, match=r"mysql\+nodriver://u:\*\*\*@db/x") as info:
        SqlStore(url="mysql+nodriver://u:hunter2@db/x")
    assert "hunter2" not in str(info.value)
    with pytest.raises(StoreError, match="not usable"):
        SqlStore(url="not a url")
    with pytest.raises(StoreError, match=r"needs the driver 'MySQLdb'"):  # not ImportError
        SqlStore(url="mysql://u:hunter2@db/x")
    assert redact_url("postgresql+psycopg://u:s3cret@h/db") == "postgresql+psycopg://u:***@h/db"


def test_unreachable_postgres_is_a_store_error() -> None:
    """A refused connection becomes a StoreError naming the URL (password hidden) and a fix."""
    # port 1 on localhost: nothing listens there, so the connection is refused at once
    with SqlStore(url="postgresql+psycopg://u:hunter2@127.0.0.1:1/db") as store:
        with pytest.raises(StoreError, match=r"127\.0\.0\.1:1/db.*server is running") as info:
            store.list_keywords()
        assert "hunter2" not in str(info.value)
        with pytest.raises(StoreError):
            store.migrate()


def test_unwritable_data_folder_is_a_store_error(tmp_path: Path) -> None:
    """A data folder that cannot be created is reported with what to change."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = SqlStore(url=f"sqlite:///{blocker / 'data' / 'db.sqlite3'}")
    with store, pytest.raises(StoreError, match=r"data_dir"):
        store.migrate()


def test_migrate_logs_at_info_only_when_the_schema_changed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first migrate is an INFO event; re-opening an up-to-date database is DEBUG only."""
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    caplog.set_level(logging.DEBUG, logger="storage.sql_store")
    for expected in (logging.INFO, logging.DEBUG):
        caplog.clear()
        with SqlStore(url=url) as store:
            store.migrate()
        levels = [r.levelno for r in caplog.records if "store.migrated" in r.getMessage()]
        assert levels == [expected]


def test_unmigrated_database_says_to_migrate(tmp_path: Path) -> None:
    """Using a store before migrate() explains that the schema is missing."""
    store = SqlStore(url=f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    with store, pytest.raises(StoreError, match="migrate"):
        store.list_keywords()


def test_sqlite_reader_during_a_write_does_not_error(tmp_path: Path) -> None:
    """WAL: a second store reads the last committed state while the first is mid-transaction."""
    url = f"sqlite:///{tmp_path / 'daily-papers.sqlite3'}"
    with SqlStore(url=url) as writer, SqlStore(url=url) as reader:
        writer.migrate()
        writer.add_keyword(LLM)
        harvest(writer, [paper("2501.00001")])
        inside = threading.Event()
        release = threading.Event()
        errors: list[BaseException] = []

        def slow_harvest() -> None:
            """Hold a write transaction open until the reader has looked."""
            try:
                with writer._transaction(write=True) as conn:
                    writer._upsert_papers(conn, [paper("2501.00002")], T0)
                    inside.set()
                    assert release.wait(10)
            except BaseException as exc:  # reported to the main thread below
                errors.append(exc)

        thread = threading.Thread(target=slow_harvest)
        thread.start()
        try:
            assert inside.wait(10)
            assert reader.known_versions(["2501.00001", "2501.00002"]) == {"2501.00001": 1}
            assert reader.list_keywords()[0].query == LLM
        finally:
            release.set()
            thread.join(10)
        assert errors == []
        assert reader.known_versions(["2501.00002"]) == {"2501.00002": 1}
        # and a second writer simply waits for the first (busy timeout), then succeeds
        assert reader.add_keyword("Diffusion") is True


def test_a_keywords_origin_only_ever_rises(store: SqlStore) -> None:
    """email < chat < operator: who first asked for a keyword, raised by later askers only."""
    store.add_subscription(Target("email", "a@lab.org"), "Private Topic", now=T0)
    store.add_subscription(Target("email", "b@lab.org"), "shared topic", now=T0)
    store.add_subscription(Target("slack", "C1"), "Shared Topic", now=T0)
    store.add_subscription(Target("slack", "C1"), "chat topic", now=T0)
    store.add_keyword("operator topic")
    store.add_subscription(Target("email", "a@lab.org"), "Operator Topic", now=T0)
    origins = {k.query: k.origin for k in store.list_keywords()}
    assert origins == {
        "Private Topic": "email",
        "shared topic": "chat",
        "chat topic": "chat",
        "operator topic": "operator",
    }
    public = {k.query for k in store.list_keywords() if k.is_public(chat_queries=True)}
    assert public == {"shared topic", "chat topic", "operator topic"}
    assert {k.query for k in store.list_keywords() if k.is_public(chat_queries=False)} == {
        "operator topic"
    }
    store.add_keyword("private topic")  # the operator adds the reader's query: now public
    assert {k.query: k.origin for k in store.list_keywords()}["Private Topic"] == "operator"


def test_a_pending_subscription_is_stored_inactive_in_one_step(store: SqlStore) -> None:
    """pending_reason: stored inactive with the reason; an active subscription stays active."""
    email = Target("email", "a@lab.org")
    waiting = store.add_subscription(email, "LLM Agents", now=T0, pending_reason="unconfirmed")
    assert (waiting.active, waiting.disabled_reason) == (False, "unconfirmed")
    [stored] = store.list_subscriptions(email)
    assert (stored.active, stored.disabled_reason) == (False, "unconfirmed")
    active = store.add_subscription(email, "LLM Agents", now=T0)
    assert active.active
    again = store.add_subscription(email, "LLM Agents", now=T0, pending_reason="unconfirmed")
    assert (again.active, again.disabled_reason) == (True, None)


def test_targets_served_since_counts_sent_today_and_still_owed(store: SqlStore) -> None:
    """Sent at or after the moment, or pending (due or waiting for a retry): served."""
    a, b, c = (Target("email", f"{n}@lab.org") for n in "abc")
    subs = [store.add_subscription(t, LLM, now=T0 - timedelta(days=2)) for t in (a, b, c)]
    store.add_subscription(Target("slack", "C1"), LLM, now=T0 - timedelta(days=2))
    harvest(store, [paper("2501.00001")], now=T0 - timedelta(days=1))
    store.record_outcomes([Outcome(subs[0].id, "2501.00001", OutcomeKind.SENT)], now=T0)
    store.record_outcomes(
        [Outcome(subs[1].id, "2501.00001", OutcomeKind.SENT)], now=T0 - timedelta(days=1)
    )
    store.record_outcomes(
        [Outcome(subs[2].id, "2501.00001", OutcomeKind.RETRY, "451")], now=T0 - timedelta(days=1)
    )
    assert store.targets_served_since("email", T0 - timedelta(hours=1)) == {
        "a@lab.org",
        "c@lab.org",
    }
    assert store.targets_served_since("slack", T0) == {"C1"}  # still owed its paper
