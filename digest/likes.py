"""`like:` keywords in the product: seeds fetched and checked, models cached, papers selected.

`digest.similar` is the pure core (the query, the seed check, training, scoring); this module
does the I/O around it, through the ports only (`PaperStore`, and the source's `fetch_ids`):

- `resolve_like` (subscribe time: chat command, CLI): parse the query, take the seeds already
  stored, fetch the others once by arXiv `id_list`, refuse unknown or withdrawn ids with one
  line (`SimilarityError`, nothing stored), then store the fetched seeds as history papers
  (never delivered, never a day's new papers), so they are not fetched again.
- `like_model`: the keyword's trained model, read from the store's cache while the seeds'
  `seed_key` is unchanged, otherwise trained on the stored seeds against the
  `max_background` (10,000) most recently updated stored papers and cached. Cost: about 2 s
  (5 s on a loaded 2-core machine) per retraining, whatever the database holds; nothing while
  the seeds are unchanged (docs/performance.md).
- `select_like`: the papers of one batch each model selects (tokenised once for every model,
  a few hundredths of a second per model), the seeds themselves left out: the reader has them.
- `latest_like`: what a `like:` keyword would have sent this week (`/papers latest like:...`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from digest.arxiv_source import Fetch
from digest.domain import Paper
from digest.errors import ArxivError, SimilarityError
from digest.like_query import LikeQuery, check_seeds, is_like_query, parse_like
from digest.similar import (
    DEFAULT_PARAMS,
    SimilarityModel,
    SimilarityParams,
    needs_training,
    prepare_papers,
    select,
    train_similarity,
)
from digest.store import PaperStore

log = logging.getLogger(__name__)

WEEK = timedelta(days=7)  # what `latest like:` shows, and the least a new like: keyword scores


class SeedSource(Protocol):
    """Where seed papers come from: `ArxivSource.fetch_ids` (any `PaperSource`)."""

    def fetch_ids(self, arxiv_ids: Sequence[str]) -> Fetch:
        """The latest version of each of these papers (unknown ids are left out)."""
        ...


def resolve_like(
    store: PaperStore, source: SeedSource | None, text: str, *, now: datetime
) -> tuple[LikeQuery, tuple[Paper, ...]]:
    """The parsed query and its seed papers, fetching (and then storing) the ones not stored.

    SimilarityError, with one line naming every bad id, when the query is malformed, names
    fewer than 3 or more than 50 papers, or names papers arXiv does not know or that were
    withdrawn; nothing is stored then. ArxivError when arXiv cannot be reached.
    """
    query = parse_like(text)
    stored = store.papers_by_id(query.seeds)
    have = {paper.arxiv_id for paper in stored}
    missing = [arxiv_id for arxiv_id in query.seeds if arxiv_id not in have]
    fetched: tuple[Paper, ...] = ()
    if missing:
        if source is None:
            raise SimilarityError(
                f"like: {len(missing)} seed papers are not stored and arXiv cannot be asked "
                "here; subscribe from the CLI or a chat command"
            )
        fetched = tuple(p for p in source.fetch_ids(missing).papers if p.arxiv_id not in have)
    check = check_seeds(query, [*stored, *fetched])
    reason = check.reason()
    if reason is not None:
        raise SimilarityError(reason)
    wanted = set(query.seeds)
    new = [paper for paper in fetched if paper.arxiv_id in wanted]
    if new:
        store.commit_harvest(papers=new, matches={}, deliverable=(), now=now, backfilled=True)
    log.info("like.seeds query=%r stored=%d fetched=%d", query.text, len(stored), len(new))
    return query, check.papers


def like_model(
    store: PaperStore,
    text: str,
    *,
    now: datetime,
    params: SimilarityParams = DEFAULT_PARAMS,
    incoming: Sequence[Paper] = (),
) -> SimilarityModel:
    """The keyword's model: the cached one while its stored seeds are unchanged, otherwise
    trained against the most recent stored papers (and the `incoming` ones a harvest is about
    to store, so the first cycle of a new installation has a background) and cached.
    SimilarityError when a seed is not stored, there are too few papers to compare with, or
    the seeds share no topic."""
    query = parse_like(text)
    seeds = store.papers_by_id(query.seeds)
    if len(seeds) < len(query.seeds):
        stored = {paper.arxiv_id for paper in seeds}
        lost = [arxiv_id for arxiv_id in query.seeds if arxiv_id not in stored]
        raise SimilarityError(
            f"like: seed papers {', '.join(lost)} are not stored; subscribe again to fetch them"
        )
    model: SimilarityModel | None = None
    cached = store.load_similarity_model(query.text)
    if cached is not None:
        try:
            model = SimilarityModel.loads(cached[1])
        except SimilarityError as exc:
            log.warning("like.cache_unreadable query=%r error=%s", query.text, exc)
    if model is not None and not needs_training(model, seeds, params):
        return model
    started = time.perf_counter()
    # The seeds may be among the most recent papers: read enough to keep max_background others.
    background = [*incoming, *store.recent_papers(params.max_background + len(seeds))]
    model = train_similarity(seeds, background, params=params)
    store.save_similarity_model(query.text, seed_key=model.seed_key, model=model.dumps(), now=now)
    log.info(
        "like.trained query=%r seeds=%d background=%d terms=%d threshold=%.3f seconds=%.2f",
        query.text,
        len(seeds),
        model.background_size,
        len(model.terms),
        model.threshold,
        time.perf_counter() - started,
    )
    return model


def like_models(
    store: PaperStore,
    texts: Collection[str],
    *,
    now: datetime,
    warnings: list[str],
    incoming: Sequence[Paper] = (),
) -> dict[str, SimilarityModel]:
    """The model of each `like:` keyword that has one; a keyword without (too few papers yet,
    seeds lost) is skipped with a warning for the run report."""
    models: dict[str, SimilarityModel] = {}
    for text in texts:
        try:
            models[text] = like_model(store, text, now=now, incoming=incoming)
        except SimilarityError as exc:
            log.warning("like.skipped query=%r error=%s", text, exc)
            warnings.append(f"keyword {text!r} selects nothing this cycle: {exc}")
    return models


def usable_likes(
    store: PaperStore,
    source: SeedSource,
    texts: Collection[str],
    *,
    now: datetime,
    warnings: list[str],
) -> list[str]:
    """The `like:` keywords whose seeds are all stored, fetching the missing ones first (a
    keyword from the config file is not fetched when subscribed: its first harvest does it,
    once). A keyword whose seeds arXiv does not have, withdrew, or cannot send now is left
    out of this cycle with a warning for the run report."""
    usable: list[str] = []
    for text in texts:
        try:
            query = parse_like(text)
            if len(store.papers_by_id(query.seeds)) < len(query.seeds):
                resolve_like(store, source, text, now=now)
        except (SimilarityError, ArxivError) as exc:
            log.warning("like.skipped query=%r error=%s", text, exc)
            warnings.append(f"keyword {text!r} selects nothing this cycle: {exc}")
            continue
        usable.append(text)
    return usable


def like_keywords(texts: Collection[str]) -> list[str]:
    """The `like:` keywords among tracked keyword texts, in order."""
    return [text for text in texts if is_like_query(text)]


def select_like(
    models: Mapping[str, SimilarityModel], papers: Sequence[Paper]
) -> dict[str, set[str]]:
    """Each model's selected papers of this batch (keyword -> arxiv ids), its seeds left out.

    The batch is tokenised once for every model (most of the cost).
    """
    if not models or not papers:
        return {}
    prepared = prepare_papers(papers, params=DEFAULT_PARAMS)
    found: dict[str, set[str]] = {}
    for text, model in models.items():
        seeds = {arxiv_id for arxiv_id, _ in model.seeds}
        found[text] = {p.arxiv_id for p in select(model, prepared) if p.arxiv_id not in seeds}
    return found


@dataclass(frozen=True, slots=True)
class LikePreview:
    """What a `like:` keyword would have sent this week."""

    papers: tuple[Paper, ...]  # every selected paper, best first
    considered: int  # stored papers of the week it chose from
    model: SimilarityModel


def latest_like(store: PaperStore, text: str, *, now: datetime) -> LikePreview:
    """What the keyword would have sent this week: the stored papers submitted in the last 7
    days (seeds left out) that its model selects, best first."""
    model = like_model(store, text, now=now)
    seeds = {arxiv_id for arxiv_id, _ in model.seeds}
    week = [p for p in store.papers_submitted_since(now - WEEK) if p.arxiv_id not in seeds]
    return LikePreview(papers=tuple(select(model, week)), considered=len(week), model=model)


__all__ = [
    "WEEK",
    "LikePreview",
    "SeedSource",
    "latest_like",
    "like_keywords",
    "like_model",
    "like_models",
    "resolve_like",
    "select_like",
]
