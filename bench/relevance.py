"""`python -m bench.relevance`: the cost of relevance order for one broad keyword (issue 16, 2).

A real SQLite store holds bench.similar's corpus: 50,000 papers over the 10 weeks before
"today", first stored yesterday, with the keyword's matches. Today 500 of the next week's papers
that match the keyword are owed to a subscriber; `digest.relevance.rank_keywords` orders them
as the cycle does: it reads the keyword's 200 newest earlier matches (positives) and the 10,000
most recently updated stored papers (background), tokenises the background once, fits the
classifier and scores the 500. Printed: each step's seconds (median of `--repeat` runs), and a
sanity check of the order: the share of papers whose title is built on the keyword's topic
(bench.similar's labels) among the first 100, ranked versus newest first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from bench.scenarios import machine
from bench.similar import NOW, STORED, LabelledPaper, generate_labelled, mentions
from digest.config import settings_for_tests
from digest.query import parse_query
from digest.relevance import rank_keywords
from digest.similar import DEFAULT_PARAMS, prepare_papers
from storage.sql_store import SqlStore

OWED = 500  # the broad keyword's papers in today's digest
TOP = 100  # the head of the list the sanity check looks at


def main(argv: Sequence[str] | None = None) -> int:
    """Build the store, rank the keyword's 500 papers, print the timings."""
    parser = argparse.ArgumentParser(prog="python -m bench.relevance", description=__doc__)
    parser.add_argument("--keyword", default="language models")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    info = machine()
    print(
        f"machine: {info['cpus']} CPUs ({info['cpu']}), {info['memory']} RAM, "
        f"Python {info['python']}; load average at start: {info['load']}"
    )
    query = parse_query(args.keyword)
    stored = generate_labelled(
        STORED, start=NOW - timedelta(days=70), end=NOW, seed=101, id_prefix="2602"
    )
    week = generate_labelled(
        OWED * 20, start=NOW, end=NOW + timedelta(days=7), seed=102, id_prefix="2603"
    )
    owed = [lp for lp in week if query.matches(lp.paper)][:OWED]
    if len(owed) < OWED:
        print(f"only {len(owed)} papers of the week match {args.keyword!r}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as folder:
        settings = settings_for_tests(service={"data_dir": folder})
        store = SqlStore.from_settings(settings)
        store.migrate()
        started = time.perf_counter()
        store.add_keyword(query.text)
        history = {lp.paper.arxiv_id for lp in stored if query.matches(lp.paper)}
        store.commit_harvest(
            papers=[lp.paper for lp in stored],
            matches={query.text: history},
            deliverable=(),
            now=NOW - timedelta(days=1),
        )
        store.commit_harvest(
            papers=[lp.paper for lp in owed],
            matches={query.text: {lp.paper.arxiv_id for lp in owed}},
            deliverable=(),
            now=NOW,
        )
        print(
            f"store: {STORED + OWED:,} papers, {len(history):,} earlier matches of "
            f"{query.text!r}, loaded in {time.perf_counter() - started:.1f} s ({Path(folder)})"
        )
        papers = [lp.paper for lp in owed]
        day_start = NOW.replace(hour=0, minute=0, second=0, microsecond=0)
        read: list[float] = []
        tokenise: list[float] = []
        total: list[float] = []
        result = rank_keywords(store, {query.text: papers}, before=day_start)  # warm caches
        for _ in range(args.repeat):
            began = time.perf_counter()
            background = store.recent_papers(DEFAULT_PARAMS.max_background)
            read.append(time.perf_counter() - began)
            began = time.perf_counter()
            prepare_papers(background)
            tokenise.append(time.perf_counter() - began)
            result = rank_keywords(store, {query.text: papers}, before=day_start)
            total.append(result.seconds)
        store.close()
    order = result.orders[query.text]
    ranked = sorted(owed, key=lambda lp: order[lp.paper.arxiv_id])
    newest = sorted(owed, key=lambda lp: (lp.paper.updated, lp.paper.arxiv_id), reverse=True)

    def share(papers: Sequence[LabelledPaper]) -> float:
        titled = [lp for lp in papers if mentions(lp.topics[0], args.keyword)]
        return len(titled) / len(papers)

    print(
        f"rank_keywords, {OWED} papers of {query.text!r}, background {result.background:,}: "
        f"{statistics.median(total):.2f} s (median of {args.repeat}); of which reading the "
        f"background {statistics.median(read):.2f} s, tokenising it "
        f"{statistics.median(tokenise):.2f} s"
    )
    print(
        f"title on the topic: {share(ranked[:TOP]):.2f} of the first {TOP} ranked, "
        f"{share(newest[:TOP]):.2f} of the first {TOP} newest, {share(owed):.2f} of all {OWED}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
