"""`python -m bench.similar`: issue 16's acceptance run for `like:` subscriptions.

The corpus is bench/corpus.py's synthetic arXiv, with each paper's generated topics recorded
(`bench.corpus.generate_labelled`, the papers `generate_papers` makes, plus their topics): 50,000
stored papers submitted over the 10 weeks before "today", and the next week's 5,000 papers.

Topics are the research heads of bench/corpus.py (`HEADS`: "anomaly detection", "language
models", ...), the things a reader follows; the generator also combines them with modifiers
("video anomaly detection"), and such a paper is about its head too. So:

- a paper is *of topic T* when one of its generated phrases contains T as whole words
  ("video anomaly detection" is of "anomaly detection"; "anomaly detector" would not be). All
  of a paper's phrases are equally present in its abstract (each sentence draws from all of
  them), so the first one is not more "its topic" than the others except in the title;
- the *seeds* are the 10 most recent stored papers whose first phrase (the one their title is
  built on) contains T: the papers a reader would pick as typical;
- *precision* and *recall* are measured on the next week's 5,000 papers (all generated after
  the seeds' week): precision = selected papers of topic T / selected papers, recall = selected
  papers of topic T / papers of topic T that week.

The default topics are `HEADS[i]` for i in `DEFAULT_HEADS`, from the most popular phrase
(about 8 % of a week's papers) down the popularity ranks; `--topics` takes other phrases,
`--all-heads` runs every head, and `--pairs` runs sub-topics (modifier + head phrases, 4 to 80
papers a week: a reader following a niche). Per topic: papers of the topic that week, selected,
precision, recall, the threshold, training seconds (`train_similarity` over the 50,000 stored
papers: it keeps the `--max-background` most recent), scoring seconds for the week's 5,000
papers (tokenising them included; and without it: what each further like: model costs when
the day's papers are tokenised once with `prepare_papers`), and the peak memory of training +
scoring above the loaded corpus (each topic runs in a
forked child whose peak RSS, VmHWM, is compared with its RSS at the fork). Exits 1 if a topic
misses the targets (precision >= 0.8 and recall >= 0.7).
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.corpus import HEADS, LabelledPaper, generate_labelled, phrase_vocabulary
from bench.scenarios import machine
from digest.domain import Paper
from digest.similar import (
    DEFAULT_PARAMS,
    SimilarityParams,
    prepare_papers,
    score,
    train_similarity,
)

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)  # the corpus's "today"
STORED = 50_000  # papers in the database: 10 weeks of 5,000
WEEK = 5_000  # the next week's papers, scored
SEEDS = 10
DEFAULT_HEADS = (0, 5, 15, 30, 50, 75, 100, 113)  # ranks of the topics run (113: the last head)
PRECISION_TARGET = 0.8
RECALL_TARGET = 0.7


def mentions(phrase: str, topic: str) -> bool:
    """Whether a generated phrase is about `topic`: contains it as whole words."""
    return re.search(rf"\b{re.escape(topic)}\b", phrase) is not None


def of_topic(labelled: LabelledPaper, topic: str) -> bool:
    """A paper is of a topic when one of its generated phrases is about it."""
    return any(mentions(phrase, topic) for phrase in labelled.topics)


def pick_seeds(stored: Sequence[LabelledPaper], topic: str, count: int = SEEDS) -> list[Paper]:
    """The `count` most recent stored papers whose title phrase is about the topic."""
    newest = sorted(stored, key=lambda lp: (lp.paper.published, lp.paper.arxiv_id), reverse=True)
    return [lp.paper for lp in newest if mentions(lp.topics[0], topic)][:count]


@dataclass(frozen=True, slots=True)
class Corpus:
    """The stored papers and the next week's, labelled."""

    stored: list[LabelledPaper]
    week: list[LabelledPaper]


def build_corpus(stored: int = STORED, week: int = WEEK) -> Corpus:
    """The 10 weeks before NOW (ids 2602.xxxxx) and the week after (ids 2603.xxxxx)."""
    return Corpus(
        stored=generate_labelled(
            stored, start=NOW - timedelta(days=70), end=NOW, seed=101, id_prefix="2602"
        ),
        week=generate_labelled(
            week, start=NOW, end=NOW + timedelta(days=7), seed=102, id_prefix="2603"
        ),
    )


@dataclass(frozen=True, slots=True)
class Result:
    """One topic's row."""

    topic: str
    relevant: int
    selected: int
    hits: int
    threshold: float
    terms: int
    train_s: float
    score_s: float
    prepared_s: float  # scoring the same papers once tokenised (`prepare_papers`)
    peak_mb: float

    @property
    def precision(self) -> float:
        return self.hits / self.selected if self.selected else 0.0

    @property
    def recall(self) -> float:
        return self.hits / self.relevant if self.relevant else 0.0

    @property
    def met(self) -> bool:
        return self.precision >= PRECISION_TARGET and self.recall >= RECALL_TARGET


def _status(key: str) -> float:
    """A /proc/self/status memory line (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_topic(corpus: Corpus, topic: str, params: SimilarityParams) -> Result:
    """Train on 10 seeds of the topic against the stored papers; select from the next week."""
    seeds = pick_seeds(corpus.stored, topic)
    if len(seeds) < SEEDS:
        raise SystemExit(f"topic {topic!r}: only {len(seeds)} stored papers to seed with")
    background = [lp.paper for lp in corpus.stored]
    week = [lp.paper for lp in corpus.week]
    started = time.perf_counter()
    model = train_similarity(seeds, background, params=params)
    trained = time.perf_counter()
    values = score(model, week)
    scored = time.perf_counter()
    prepared = prepare_papers(week, params=params)
    ready = time.perf_counter()
    if score(model, prepared) != values:
        raise SystemExit(f"topic {topic!r}: prepared papers scored differently")
    chosen = [value >= model.threshold for value in values]
    relevant = [of_topic(lp, topic) for lp in corpus.week]
    return Result(
        topic=topic,
        relevant=sum(relevant),
        selected=sum(chosen),
        hits=sum(c and r for c, r in zip(chosen, relevant, strict=True)),
        threshold=model.threshold,
        terms=len(model.terms),
        train_s=trained - started,
        score_s=scored - trained,
        prepared_s=time.perf_counter() - ready,
        peak_mb=0.0,
    )


_CORPUS: Corpus | None = None  # the forked children read the parent's corpus


def _child(topic: str, params: SimilarityParams, queue: Any) -> None:
    assert _CORPUS is not None  # noqa: S101 - set before forking
    at_fork = _status("VmRSS")
    result = run_topic(_CORPUS, topic, params)
    queue.put(replace(result, peak_mb=_status("VmHWM") - at_fork))


def measure(corpus: Corpus, topic: str, params: SimilarityParams) -> Result:
    """`run_topic` in a forked child, so its peak memory is its own."""
    global _CORPUS  # handed to the child by fork, not pickled
    _CORPUS = corpus
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child, args=(topic, params, queue))
    child.start()
    result: Result = queue.get()
    child.join()
    return result


def table(results: Sequence[Result], params: SimilarityParams) -> list[str]:
    """The Markdown table of the rows."""
    lines = [
        f"| topic | papers of topic in the week | selected | precision | recall | threshold "
        f"| terms | train s ({STORED:,} stored, {params.max_background:,} used) "
        f"| score s per {WEEK:,} | of which scoring once tokenised | train+score peak MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.topic} | {r.relevant} | {r.selected} | {r.precision:.2f} | {r.recall:.2f} "
            f"| {r.threshold:.3f} | {r.terms} | {r.train_s:.2f} | {r.score_s:.2f} "
            f"| {r.prepared_s:.3f} | {r.peak_mb:.0f} |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Build the corpus, run the topics, print the table and whether the targets were met."""
    parser = argparse.ArgumentParser(prog="python -m bench.similar", description=__doc__)
    parser.add_argument("--topics", help="comma-separated phrases instead of the default heads")
    parser.add_argument("--all-heads", action="store_true", help="every head of bench/corpus.py")
    parser.add_argument(
        "--pairs",
        action="store_true",
        help="sub-topics instead: every 20th of the 400 most popular modifier + head phrases",
    )
    parser.add_argument("--max-background", type=int, default=DEFAULT_PARAMS.max_background)
    args = parser.parse_args(argv)
    if args.topics:
        topics = [t.strip() for t in args.topics.split(",") if t.strip()]
    elif args.all_heads:
        topics = list(HEADS)
    elif args.pairs:
        topics = [phrase for phrase in phrase_vocabulary() if phrase not in HEADS][0:400:20]
    else:
        topics = [HEADS[i] for i in DEFAULT_HEADS]
    params = replace(DEFAULT_PARAMS, max_background=args.max_background)
    info = machine()
    print(
        f"machine: {info['cpus']} CPUs ({info['cpu']}), {info['memory']} RAM, "
        f"Python {info['python']}; load average at start: {info['load']}"
    )
    started = time.perf_counter()
    corpus = build_corpus()
    print(
        f"corpus: {len(corpus.stored):,} stored + {len(corpus.week):,} next week, generated in "
        f"{time.perf_counter() - started:.1f} s; RSS {_status('VmRSS'):.0f} MB"
    )
    results: list[Result] = []
    for topic in topics:
        results.append(measure(corpus, topic, params))
        print(table(results[-1:], params)[-1], file=sys.stderr)
    print()
    print("\n".join(table(results, params)))
    print()
    met = [r for r in results if r.met]
    print(
        f"targets (precision >= {PRECISION_TARGET}, recall >= {RECALL_TARGET}): "
        f"met by {len(met)} of {len(results)} topics"
    )
    for r in results:
        if not r.met:
            print(f"- NOT met: {r.topic}: precision {r.precision:.2f}, recall {r.recall:.2f}")
    print(f"bench process peak RSS (corpus + parent): {_status('VmHWM'):.0f} MB")
    return 0 if len(met) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
