"""digest/similar.py: like: queries, seed checks, the similarity model and relevance order.

The model tests run on a small labelled synthetic corpus (bench/similar.py's generator: the
benchmark's papers with their generated topics), 2,000 stored papers and a week of 400; the
50,000-paper acceptance run is `python -m bench.similar`, not a test.
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from bench.corpus import LabelledPaper, generate_labelled
from bench.similar import NOW, mentions, of_topic, pick_seeds
from digest.domain import Paper
from digest.errors import DailyPapersError, SimilarityError
from digest.like_query import (
    MAX_SEEDS,
    LikeQuery,
    canonical_like,
    check_seeds,
    is_like_query,
    is_withdrawn,
    parse_like,
    resolve_seeds,
)
from digest.similar import (
    DEFAULT_PARAMS,
    MIN_BACKGROUND,
    SimilarityModel,
    bm25_scores,
    model_fingerprint,
    needs_training,
    prepare_papers,
    rank_by_relevance,
    score,
    seed_key,
    select,
    select_background,
    train_similarity,
)

TOPIC = "anomaly detection"


def _paper(
    arxiv_id: str, *, title: str = "A title", abstract: str = "An abstract.", **kw: object
) -> Paper:
    moment = datetime(2026, 3, 1, tzinfo=UTC)
    fields: dict[str, object] = {
        "arxiv_id": arxiv_id,
        "version": 1,
        "title": title,
        "authors": ("A. Author",),
        "abstract": abstract,
        "published": moment,
        "updated": moment,
        "primary_category": "cs.LG",
    }
    fields.update(kw)
    return Paper(**fields)  # type: ignore[arg-type]


# --- the like: query ------------------------------------------------------------------------------


def test_parse_like_strips_versions_and_sorts() -> None:
    """Versions, arXiv: prefixes, abs/pdf URLs, spaces and old-style ids reduce to sorted ids."""
    query = parse_like(
        " LIKE:2501.09733v2, arXiv:2412.20455 http://arxiv.org/abs/2410.01234v3;"
        "https://arxiv.org/pdf/2409.00001v1.pdf,hep-th/9901001v2 "
    )
    assert query.seeds == ("2409.00001", "2410.01234", "2412.20455", "2501.09733", "hep-th/9901001")
    assert query.text == "like:2409.00001,2410.01234,2412.20455,2501.09733,hep-th/9901001"


def test_canonical_form_is_the_same_for_the_same_seed_set() -> None:
    """Order, versions and duplicates do not change the keyword's identity; other seeds do."""
    first = canonical_like("like:2501.09733,2412.20455,2410.01234")
    assert canonical_like("like:2410.01234v2 2501.09733 2412.20455,2501.09733v1") == first
    assert canonical_like(first) == first
    assert canonical_like("like:2501.09733,2412.20455,2410.01235") != first


def test_is_like_query() -> None:
    """Only text starting with like: (any case, outer spaces allowed) is a like: query."""
    assert is_like_query("like:1")
    assert is_like_query("  Like:2501.09733")
    assert not is_like_query("likelihood estimation")
    assert not is_like_query("ti:like")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("anomaly detection", "is not a like: query"),
        ("like:", "needs 3 to 50 arXiv ids"),
        ("like: , ,", "needs 3 to 50 arXiv ids"),
        ("like:2501.09733,2412.20455", "needs at least 3 seed papers, got 2"),
        ("like:2501.09733", "needs at least 3 seed papers, got 1 (2501.09733)"),
        ("like:2501.09733,banana,2412.20455,12345", "'banana' and '12345' are not arXiv ids"),
        ("like:2501.09733,2412.20455,2501.9", "'2501.9' is not an arXiv id"),
        ("like:2501.09733,2501.09733v2,2501.09733", "needs 3 different papers, but the 3 ids"),
        ("like:2501.09733,2501.09733,2412.20455,2412.20455v3", "name only 2"),
        (
            "like:" + ",".join(f"2501.{n:05d}" for n in range(MAX_SEEDS + 1)),
            "takes at most 50 seed papers, got 51",
        ),
    ],
)
def test_parse_like_refuses_with_one_line_reason(text: str, expected: str) -> None:
    """Each refusal says what is wrong, on one line, as a DailyPapersError the CLI prints."""
    with pytest.raises(SimilarityError) as caught:
        parse_like(text)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message
    assert isinstance(caught.value, DailyPapersError)


def test_fifty_seeds_are_allowed() -> None:
    """Exactly MAX_SEEDS distinct ids parse."""
    ids = [f"2501.{n:05d}" for n in range(MAX_SEEDS)]
    assert len(parse_like("like:" + ",".join(ids)).seeds) == MAX_SEEDS


# --- seeds as fetched -----------------------------------------------------------------------------

# Openings of real withdrawn arXiv records (abstract, comment or title) and, below, text that
# mentions withdrawal without announcing one.
WITHDRAWAL_NOTICES = [
    "This paper has been withdrawn as we discovered a bug in our tensorflow implementation.",
    "this paper has been withdrawn",
    "[This paper has been withdrawn by the author due to updated research available on arXiv]",
    "The following paper has been withdrawn from consideration for publication because there "
    "are mistakes.",
    "arXiv admin note: This paper has been withdrawn by arXiv due to disputed and unverifiable "
    "authorship and affiliation",
    "arXiv admin note: This submission has been withdrawn by arXiv administrators due to "
    "inflammatory content",
    "This submissions has been withdrawn by arXiv administrators because the submitter did not "
    "have the right to post it.",
    "This paper is withdrawn since we found a flaw in the proof of Theorem 4.",
    "Paper withdrawn by the author",
    "- Paper withdrawn by the author - CMOS Monolithic Active Pixel Sensors",
    "Withdrawn. Work never submitted.",
    "This paper\n  has been withdrawn\n  by the authors.",
]
NOT_WITHDRAWN = [
    "Many drugs have been withdrawn from the market worldwide, at a cost of billions.",
    "We consider the withdrawal of a ball from a fluid reservoir.",
    "Papers are withdrawn from journals for many reasons, which we survey here.",
    "arXiv admin note: substantial text overlap with arXiv:1234.5678",
    "The dip-coating geometry, where a solid plate is withdrawn from a bath, is classic.",
]


@pytest.mark.parametrize("text", WITHDRAWAL_NOTICES)
def test_withdrawal_notice_in_abstract_is_detected(text: str) -> None:
    """A withdrawal notice opening the abstract marks the paper withdrawn."""
    assert is_withdrawn(_paper("2501.00001", abstract=text))


@pytest.mark.parametrize("text", NOT_WITHDRAWN)
def test_mentioning_withdrawal_is_not_a_withdrawal(text: str) -> None:
    """An abstract or comment about withdrawal is not a notice."""
    assert not is_withdrawn(_paper("2501.00001", abstract=text, comment=text))


def test_withdrawal_in_comment_or_title_is_detected() -> None:
    """The notice may sit in a comment's later sentence, or replace the title."""
    assert is_withdrawn(
        _paper("2501.00001", comment="12 pages; withdrawn due to an error in Eq. 3")
    )
    assert is_withdrawn(
        _paper("2501.00001", comment="arXiv admin note: This paper has been withdrawn")
    )
    assert is_withdrawn(_paper("2501.00001", title="This paper has been withdrawn"))
    assert not is_withdrawn(_paper("2501.00001", comment="Accepted at CVPR 2026; 12 pages"))


def test_check_seeds_reports_missing_and_withdrawn() -> None:
    """Ids arXiv did not return and withdrawn ones are named; the rest are usable, in order."""
    query = parse_like("like:2501.00001,2501.00002,2501.00003,2501.00004")
    fetched = [
        _paper("2501.00003"),
        _paper("2501.00001"),
        _paper("2501.00004", abstract="This paper has been withdrawn by the authors."),
        _paper("2501.09999"),  # not asked for: ignored
    ]
    check = check_seeds(query, fetched)
    assert not check.ok
    assert check.missing == ("2501.00002",)
    assert check.withdrawn == ("2501.00004",)
    assert [p.arxiv_id for p in check.papers] == ["2501.00001", "2501.00003"]
    assert check.reason() == (
        "like: 2501.00002 is not on arXiv; 2501.00004 has been withdrawn; check the ids or pick "
        "other papers on the topic"
    )
    with pytest.raises(SimilarityError, match=r"2501\.00002 is not on arXiv"):
        resolve_seeds(query, fetched)


def test_check_seeds_plural_reason_and_ok() -> None:
    """Several bad ids are listed together; a complete fetch resolves to the seed papers."""
    query = parse_like("like:2501.00001,2501.00002,2501.00003")
    reason = check_seeds(query, [_paper("2501.00002")]).reason()
    assert reason is not None
    assert "2501.00001 and 2501.00003 are not on arXiv" in reason
    good = [_paper("2501.00003"), _paper("2501.00001"), _paper("2501.00002")]
    assert check_seeds(query, good).ok
    assert check_seeds(query, good).reason() is None
    assert [p.arxiv_id for p in resolve_seeds(query, good)] == list(query.seeds)


def test_check_seeds_uses_the_latest_version() -> None:
    """When arXiv returns two versions, the latest decides (v2 may be the withdrawal)."""
    query = LikeQuery(seeds=("2501.00001", "2501.00002", "2501.00003"))
    fetched = [
        _paper("2501.00001"),
        _paper("2501.00001", version=2, abstract="This paper has been withdrawn."),
        _paper("2501.00002"),
        _paper("2501.00003"),
    ]
    assert check_seeds(query, fetched).withdrawn == ("2501.00001",)


# --- the model on a labelled corpus ---------------------------------------------------------------


@pytest.fixture(scope="module")
def stored() -> list[LabelledPaper]:
    """Four weeks of stored papers (2,000), labelled with their generated topics."""
    return generate_labelled(
        2_000, start=NOW - timedelta(days=28), end=NOW, seed=7, id_prefix="2602"
    )


@pytest.fixture(scope="module")
def week() -> list[LabelledPaper]:
    """The next week's 400 papers, labelled."""
    return generate_labelled(400, start=NOW, end=NOW + timedelta(days=7), seed=8, id_prefix="2603")


@pytest.fixture(scope="module")
def model(stored: list[LabelledPaper]) -> SimilarityModel:
    """A model seeded with the 10 most recent stored anomaly detection papers."""
    return train_similarity(pick_seeds(stored, TOPIC), [lp.paper for lp in stored])


def test_labelled_papers_carry_their_topics() -> None:
    """Every labelled paper has topics, and a topic is mentioned only as whole words."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    labelled = generate_labelled(200, start=start, end=start + timedelta(days=7), seed=3)
    assert all(lp.topics and lp.paper.title for lp in labelled)
    assert mentions("video anomaly detection", TOPIC)
    assert not mentions("anomaly detector", TOPIC)


def test_threshold_selects_the_seeds_topic(
    model: SimilarityModel, week: list[LabelledPaper]
) -> None:
    """Next week's papers above the threshold are of the topic, and most of the topic is found."""
    papers = [lp.paper for lp in week]
    relevant = {lp.paper.arxiv_id for lp in week if of_topic(lp, TOPIC)}
    chosen = [p.arxiv_id for p in select(model, papers)]
    hits = len(relevant.intersection(chosen))
    assert len(relevant) >= 10
    assert hits / len(chosen) >= 0.9
    assert hits / len(relevant) >= 0.8
    unrelated = {lp.paper.arxiv_id for lp in week if not any("anomal" in t for t in lp.topics)}
    assert not unrelated.intersection(chosen)


def test_select_is_best_first_and_matches_score(
    model: SimilarityModel, week: list[LabelledPaper]
) -> None:
    """select returns exactly the papers scoring at or above the threshold, highest first."""
    papers = [lp.paper for lp in week]
    values = dict(zip((p.arxiv_id for p in papers), score(model, papers), strict=True))
    chosen = select(model, papers)
    assert {p.arxiv_id for p in chosen} == {i for i, v in values.items() if v >= model.threshold}
    ordered = [values[p.arxiv_id] for p in chosen]
    assert ordered == sorted(ordered, reverse=True)
    assert score(model, []) == []


def test_threshold_keeps_most_held_out_seeds(model: SimilarityModel) -> None:
    """The threshold is the quantile of the seeds' held-out scores that keeps 90 % of them."""
    assert len(model.seed_scores) == 10
    kept = sum(value >= model.threshold for value in model.seed_scores)
    assert kept == 9
    assert model.top_terms(3)[0] in {"anomaly", "detection", "anomaly detection"}


def test_training_is_deterministic(stored: list[LabelledPaper], week: list[LabelledPaper]) -> None:
    """Same papers in another order: the same model, byte for byte, and the same scores."""
    seeds = pick_seeds(stored, TOPIC)
    background = [lp.paper for lp in stored]
    shuffled = list(background)
    random.Random(5).shuffle(shuffled)
    first = train_similarity(seeds, background)
    second = train_similarity(list(reversed(seeds)), shuffled)
    assert first.dumps() == second.dumps()
    papers = [lp.paper for lp in week]
    assert score(first, papers) == score(second, papers)


def test_prepared_papers_score_as_raw_papers(
    model: SimilarityModel, stored: list[LabelledPaper], week: list[LabelledPaper]
) -> None:
    """Tokenising once (prepare_papers) changes nothing: same model, same scores, same choice."""
    papers = [lp.paper for lp in week]
    prepared = prepare_papers(papers)
    assert score(model, prepared) == score(model, papers)
    assert select(model, prepared) == select(model, papers)
    background = prepare_papers(lp.paper for lp in stored)
    again = train_similarity(pick_seeds(stored, TOPIC), background)
    assert again.dumps() == model.dumps()


def test_background_is_capped_to_the_most_recent(stored: list[LabelledPaper]) -> None:
    """Only the max_background newest non-seed papers are trained on; the model says how many."""
    seeds = pick_seeds(stored, TOPIC)
    background = [lp.paper for lp in stored]
    params = replace(DEFAULT_PARAMS, max_background=300)
    chosen = select_background(background, seeds, limit=300)
    assert len(chosen) == 300
    seed_ids = {p.arxiv_id for p in seeds}
    assert not seed_ids.intersection(p.arxiv_id for p in chosen)
    newest = sorted((p for p in background if p.arxiv_id not in seed_ids), key=lambda p: p.updated)
    assert min(p.updated for p in chosen) >= newest[-300].updated
    capped = train_similarity(seeds, background, params=params)
    assert capped.background_size == 300
    assert capped.fingerprint == model_fingerprint(seeds, background, params)


def test_seed_key_changes_exactly_when_seeds_or_versions_change(
    stored: list[LabelledPaper],
) -> None:
    """Retraining is due when a seed or its version changes, not for order or background."""
    seeds = pick_seeds(stored, TOPIC)
    background = [lp.paper for lp in stored]
    key = seed_key(seeds)
    assert seed_key(list(reversed(seeds))) == key
    assert seed_key([*seeds, seeds[0]]) == key
    revised = [replace(seeds[0], version=seeds[0].version + 1), *seeds[1:]]
    assert seed_key(revised) != key
    other = next(lp.paper for lp in stored if lp.paper not in seeds)
    assert seed_key([other, *seeds[1:]]) != key
    assert seed_key(seeds, replace(DEFAULT_PARAMS, c=0.1)) != key
    # The fingerprint also names the background.
    fingerprint = model_fingerprint(seeds, background)
    assert model_fingerprint(list(reversed(seeds)), list(reversed(background))) == fingerprint
    assert model_fingerprint(seeds, background[:-1]) != fingerprint
    assert model_fingerprint(revised, background) != fingerprint


def test_needs_training(model: SimilarityModel, stored: list[LabelledPaper]) -> None:
    """A cached model is reused for its own seeds and retrained for new ones or versions."""
    seeds = pick_seeds(stored, TOPIC)
    assert model.seed_key == seed_key(seeds)
    assert needs_training(None, seeds)
    assert not needs_training(model, list(reversed(seeds)))
    assert needs_training(model, [replace(seeds[0], version=9), *seeds[1:]])
    assert needs_training(model, seeds[1:])


def test_model_round_trips_through_dumps(model: SimilarityModel, week: list[LabelledPaper]) -> None:
    """loads(dumps()) is the same model, scoring the same; other formats are refused."""
    data = model.dumps()
    again = SimilarityModel.loads(data)
    assert again == model
    papers = [lp.paper for lp in week]
    assert score(again, papers) == score(model, papers)
    with pytest.raises(SimilarityError, match="format 0"):
        SimilarityModel.loads(data.replace(b'"format":1', b'"format":0'))
    with pytest.raises(SimilarityError, match="unreadable"):
        SimilarityModel.loads(b"not json")


def test_training_refuses_what_it_cannot_learn_from(stored: list[LabelledPaper]) -> None:
    """Too few seeds, too few background papers, or seeds with nothing in common."""
    seeds = pick_seeds(stored, TOPIC)
    background = [lp.paper for lp in stored]
    with pytest.raises(SimilarityError, match="at least 3 seed papers"):
        train_similarity(seeds[:2], background)
    with pytest.raises(SimilarityError, match="too few to compare"):
        train_similarity(seeds, background[: MIN_BACKGROUND - 1])
    strangers = [
        _paper("2501.00001", title="Quasars", abstract="Spectra of distant quasars."),
        _paper("2501.00002", title="Proteins", abstract="Folding kinetics of enzymes."),
        _paper("2501.00003", title="Auctions", abstract="Bidding equilibria in markets."),
    ]
    with pytest.raises(SimilarityError, match="share too few words"):
        train_similarity(strangers, background)


# --- relevance order ------------------------------------------------------------------------------


def _digest_papers(week: list[LabelledPaper]) -> tuple[list[Paper], set[str]]:
    """A broad keyword's day: 15 papers of the topic mixed with 45 others."""
    on = [lp.paper for lp in week if of_topic(lp, TOPIC)][:15]
    off = [lp.paper for lp in week if not of_topic(lp, TOPIC)][:45]
    mixed = on + off
    random.Random(3).shuffle(mixed)
    return mixed, {p.arxiv_id for p in on}


def test_rank_by_bm25_puts_on_topic_papers_first(week: list[LabelledPaper]) -> None:
    """Without positives, BM25 of the keyword's words orders the papers."""
    papers, on_topic = _digest_papers(week)
    ranked = rank_by_relevance(papers, query_text="Anomaly Detection")
    assert {p.arxiv_id for p in ranked[: len(on_topic)]} == on_topic
    scores = bm25_scores('abs:"anomaly detection" ANDNOT cat:cs.CV', papers)
    assert max(scores) > 0
    assert bm25_scores("au:smith", papers) == [0.0] * len(papers)


@pytest.mark.parametrize("with_background", [True, False])
def test_rank_by_positives_puts_on_topic_papers_first(
    stored: list[LabelledPaper], week: list[LabelledPaper], with_background: bool
) -> None:
    """The keyword's past matches as positives (classifier with a background, else centroid)."""
    papers, on_topic = _digest_papers(week)
    positives = [lp.paper for lp in stored if of_topic(lp, TOPIC)][:40]
    background = [lp.paper for lp in stored] if with_background else []
    ranked = rank_by_relevance(papers, positives=positives, background=background)
    top = {p.arxiv_id for p in ranked[: len(on_topic)]}
    assert len(top & on_topic) >= len(on_topic) - 1


def test_rank_ties_are_newest_first_and_input_order_free() -> None:
    """Equal scores (no signal at all, or the same text) keep the digest's newest-first order."""
    base = datetime(2026, 3, 1, tzinfo=UTC)
    papers = [
        _paper(f"2503.0000{n}", abstract="Same words.", updated=base + timedelta(hours=n))
        for n in range(1, 6)
    ]
    newest_first = sorted(papers, key=lambda p: p.updated, reverse=True)
    assert rank_by_relevance(papers) == newest_first
    assert rank_by_relevance(list(reversed(papers)), query_text="same words") == newest_first
    odd = _paper("2503.00009", abstract="Graph neural networks.", updated=base)
    ranked = rank_by_relevance([*papers, odd], query_text="graph neural networks")
    assert ranked == [odd, *newest_first]


def test_rank_falls_back_when_positives_share_nothing(week: list[LabelledPaper]) -> None:
    """Positives with no common terms do not raise: BM25 of the query text decides."""
    papers, on_topic = _digest_papers(week)
    strangers = [
        _paper("2501.00001", title="Quasars", abstract="Spectra of distant quasars."),
        _paper("2501.00002", title="Proteins", abstract="Folding kinetics of enzymes."),
        _paper("2501.00003", title="Auctions", abstract="Bidding equilibria in markets."),
    ]
    ranked = rank_by_relevance(papers, positives=strangers, query_text="anomaly detection")
    assert {p.arxiv_id for p in ranked[: len(on_topic)]} == on_topic
