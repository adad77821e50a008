"""Relevance order of broad keywords in email digests and chat posts (`[digest] relevance_from`).

A keyword with at least `relevance_from` papers in one target's batch lists them most relevant
first, so an email's "and N more" cut drops the least relevant rather than the oldest; shorter
lists, the README snapshot and the Markdown digest stay newest first. The scoring is
`digest.similar.rank_by_relevance`; this module only chooses what it is given:

- papers: the union of the keyword's papers over every batch of the cycle in which it is broad,
  ranked once per keyword per cycle (every target sees the same order);
- positives: the keyword's `max_positives` (200) newest matches first stored before the cycle's
  day began (or by a backfill), so the day's own papers are never their own positives;
- background: the `max_background` (10,000) most recently updated stored papers, read and
  tokenised once per cycle, and only when some keyword (other than a `like:` one) is broad;
- a `like:` keyword is ordered by its own cached model's score (digest.likes.like_model): the
  seeds say what relevant means better than the keyword's earlier picks would.

Deterministic: the order is a function of stored data (ties newest first, then by id), so a
batch re-sent after a crash is packed in the same order as long as the store did not change.
It never blocks delivery: the caller falls back to newest first if the store cannot be read.
Cost: one read of the background plus tokenising it (about 2.5 s for 10,000 papers on a 2-core
machine) and about 1 s more per broad keyword (its positives, one fit, scoring): 3.4 s for one
500-paper keyword over 50,000 stored papers; `python -m bench.relevance` measures it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from digest.domain import Batch, Paper
from digest.errors import SimilarityError
from digest.like_query import is_like_query
from digest.likes import like_model
from digest.similar import (
    DEFAULT_PARAMS,
    SimilarityParams,
    prepare_papers,
    rank_by_model,
    rank_by_relevance,
)
from digest.store import PaperStore

logger = logging.getLogger(__name__)

Orders = dict[str, dict[str, int]]  # keyword -> arxiv_id -> place (0 = most relevant)


@dataclass(frozen=True, slots=True)
class RankedKeywords:
    """What ranking one cycle's broad keywords did (for the log and the bench)."""

    orders: Orders
    papers: int  # papers ranked, over all keywords
    background: int  # stored papers read as background (0: none was needed)
    seconds: float


def broad_keywords(batches: Iterable[Batch], threshold: int) -> dict[str, list[Paper]]:
    """Each keyword that has at least `threshold` papers in some batch, with the union of its
    papers over those batches (sorted by id); nothing when `threshold` is 0 (off)."""
    if threshold <= 0:
        return {}
    found: dict[str, dict[str, Paper]] = {}
    for batch in batches:
        for keyword, papers in batch.by_keyword():
            if len(papers) >= threshold:
                found.setdefault(keyword, {}).update((p.arxiv_id, p) for p in papers)
    return {keyword: [papers[i] for i in sorted(papers)] for keyword, papers in found.items()}


def rank_keywords(
    store: PaperStore,
    wanted: Mapping[str, Sequence[Paper]],
    *,
    before: datetime,
    now: datetime | None = None,
    params: SimilarityParams = DEFAULT_PARAMS,
) -> RankedKeywords:
    """The relevance order of each keyword's papers (blocking: store reads and model fits).

    Positives are read per keyword, bounded by `params.max_positives`; the background once,
    bounded by `params.max_background`, and tokenised once for every keyword. A `like:` keyword
    is ordered by its model (trained at `now` if its cache is stale; `before` when not given).
    """
    started = time.perf_counter()
    if not wanted:
        return RankedKeywords(orders={}, papers=0, background=0, seconds=0.0)
    orders: Orders = {}
    for keyword in [k for k in wanted if is_like_query(k)]:
        try:
            model = like_model(store, keyword, now=now or before, params=params)
        except SimilarityError as exc:  # no usable model: its papers stay newest first
            logger.warning("relevance.like_unranked keyword=%r error=%s", keyword, exc)
            continue
        ranked = rank_by_model(model, wanted[keyword])
        orders[keyword] = {paper.arxiv_id: place for place, paper in enumerate(ranked)}
    others = {k: papers for k, papers in wanted.items() if not is_like_query(k)}
    background = prepare_papers(
        store.recent_papers(params.max_background) if others else [], params=params
    )
    for keyword, papers in others.items():
        ranked_ids = {p.arxiv_id for p in papers}
        positives = [
            p
            for p in store.latest_matches(keyword, params.max_positives, stored_before=before)
            if p.arxiv_id not in ranked_ids
        ]
        ranked = rank_by_relevance(
            papers, positives=positives, query_text=keyword, background=background, params=params
        )
        orders[keyword] = {paper.arxiv_id: place for place, paper in enumerate(ranked)}
    return RankedKeywords(
        orders=orders,
        papers=sum(len(papers) for papers in wanted.values()),
        background=len(background.papers),
        seconds=time.perf_counter() - started,
    )


def with_relevance(batch: Batch, orders: Mapping[str, dict[str, int]], threshold: int) -> Batch:
    """The batch carrying the relevance order of each of its keywords that is broad in it."""
    if threshold <= 0 or not orders:
        return batch
    ranks = {
        keyword: orders[keyword]
        for keyword, papers in batch.by_keyword()
        if len(papers) >= threshold and keyword in orders
    }
    return replace(batch, ranks=ranks) if ranks else batch
