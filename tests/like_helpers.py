"""A small labelled corpus for `like:` tests at the wire: stored papers, seeds, a new week.

bench.similar's generator (the benchmark's synthetic papers with their topics): 1,500 papers
stored over the five weeks before the last three days, 10 seeds of one topic that only the
arXiv stand-in holds (so subscribing must fetch them), and 300 papers of the last two days
that the next harvest brings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from functools import lru_cache

from bench.similar import NOW, generate_labelled, of_topic, pick_seeds
from digest.domain import Paper
from digest.store import PaperStore

TOPIC = "anomaly detection"
UNKNOWN_ID = "2601.99999"  # no paper has it
WITHDRAWN_ID = "2601.88888"  # its latest version is a withdrawal notice


@dataclass(frozen=True)
class LikeCorpus:
    """The papers of a `like:` test, with the week's papers of the topic."""

    stored: tuple[Paper, ...]  # in the database before the test (seeds not among them)
    seeds: tuple[Paper, ...]  # on the arXiv stand-in only
    week: tuple[Paper, ...]  # submitted in the two days before NOW, on the stand-in
    week_of_topic: frozenset[str]  # ids of the week's papers that are of TOPIC
    withdrawn: Paper  # on the stand-in

    @property
    def like(self) -> str:
        """The `like:` query of the seeds, in the order a person might type them."""
        return "like:" + ",".join(reversed([p.arxiv_id for p in self.seeds]))

    @property
    def canonical(self) -> str:
        """Its canonical text: the stored keyword."""
        return "like:" + ",".join(sorted(p.arxiv_id for p in self.seeds))

    def served(self) -> list[Paper]:
        """What the arXiv stand-in holds before the week's papers are announced."""
        return [*self.stored, *self.seeds, self.withdrawn]


@lru_cache(maxsize=1)
def like_corpus() -> LikeCorpus:
    """The corpus (generated once per test session)."""
    old = generate_labelled(1_500, start=NOW - timedelta(days=38), end=NOW - timedelta(days=3))
    seeds = pick_seeds(old, TOPIC, 10)
    seed_ids = {p.arxiv_id for p in seeds}
    new = generate_labelled(
        300, start=NOW - timedelta(days=2), end=NOW - timedelta(hours=1), first_number=5_001
    )
    withdrawn = replace(
        old[0].paper,
        arxiv_id=WITHDRAWN_ID,
        version=2,
        abstract="This paper has been withdrawn by the author due to an error in Lemma 2.",
    )
    return LikeCorpus(
        stored=tuple(lp.paper for lp in old if lp.paper.arxiv_id not in seed_ids),
        seeds=tuple(seeds),
        week=tuple(lp.paper for lp in new),
        week_of_topic=frozenset(lp.paper.arxiv_id for lp in new if of_topic(lp, TOPIC)),
        withdrawn=withdrawn,
    )


def store_history(store: PaperStore, papers: tuple[Paper, ...]) -> None:
    """Put papers in the store as earlier harvests would have (history, nothing owed)."""
    store.commit_harvest(
        papers=papers, matches={}, deliverable=(), now=NOW - timedelta(days=3), backfilled=True
    )


__all__ = [
    "NOW",
    "TOPIC",
    "UNKNOWN_ID",
    "WITHDRAWN_ID",
    "LikeCorpus",
    "like_corpus",
    "store_history",
]
