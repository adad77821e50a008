"""`python -m bench.likes`: what `like:` subscriptions cost the product at 50,000 stored papers.

bench.similar measures the pure model (train, score); this measures the product's path through
digest/likes.py on a real SQLite file holding bench.similar's 50,000 stored papers (10 weeks):

- reading the background: the 10,000 most recent stored papers (and the seeds) from SQLite;
- `like_model` the first time: reading the 10,000 most recent stored papers and the seeds from
  SQLite, training, and caching the model in `similarity_models` (what a new or changed
  `like:` subscription costs once);
- `like_model` again: the cached model read back and checked (what every later cycle pays);
- `select_like` on the next week's 5,000 papers with 1 and with N models (the cycle's scoring:
  one tokenising for all models, then each model);
- `latest_like`: `/papers latest like:...` (the week's stored papers read and scored).

Each `like:` subscription is a topic of the corpus with its 10 most recent stored papers as
seeds (bench.similar's seeds). Prints a Markdown table; times are wall-clock seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import ParamSpec, TypeVar

from bench.similar import NOW, build_corpus, pick_seeds
from digest.likes import latest_like, like_model, select_like
from digest.similar import DEFAULT_PARAMS
from storage.sql_store import SqlStore

P = ParamSpec("P")
T = TypeVar("T")

TOPICS = (
    "language models",
    "anomaly detection",
    "speech recognition",
    "text classification",
    "imitation learning",
    "reward modeling",
    "knowledge graphs",
    "malware detection",
    "question answering",
    "contrastive learning",
)


def _timed(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> tuple[T, float]:
    """`fn`'s result and the wall-clock seconds it took."""
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    """Build the store, run the measurements, print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.likes", description=__doc__)
    parser.add_argument("--models", type=int, default=len(TOPICS), help="like: subscriptions")
    args = parser.parse_args(argv)
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    corpus, seconds = _timed(build_corpus)
    print(f"corpus: {len(corpus.stored)} stored + {len(corpus.week)} new papers ({seconds:.1f} s)")
    with tempfile.TemporaryDirectory() as folder:
        store = SqlStore(url=f"sqlite:///{Path(folder) / 'bench.sqlite3'}")
        store.migrate()
        _, seconds = _timed(
            store.commit_harvest,
            papers=[lp.paper for lp in corpus.stored],
            matches={},
            deliverable=(),
            now=NOW - timedelta(days=1),
            backfilled=True,
        )
        print(f"stored in SQLite: {seconds:.1f} s")
        likes: list[str] = []
        for topic in TOPICS[: args.models]:
            seeds = pick_seeds(corpus.stored, topic)
            text = "like:" + ",".join(sorted(p.arxiv_id for p in seeds))
            store.add_keyword(text)
            likes.append(text)
        rows = ["| step | seconds |", "|---|---:|"]
        _, seconds = _timed(store.recent_papers, DEFAULT_PARAMS.max_background + 10)
        rows.append(f"| reading the 10,010 most recent stored papers from SQLite | {seconds:.2f} |")
        first = []
        for text in likes:
            _, seconds = _timed(like_model, store, text, now=NOW)
            first.append(seconds)
        rows.append(
            f"| `like_model`, first (read 10,000 + train + cache), per subscription, "
            f"min / median / max of {len(first)} | {min(first):.2f} / "
            f"{sorted(first)[len(first) // 2]:.2f} / {max(first):.2f} |"
        )
        cached = []
        models = {}
        for text in likes:
            models[text], seconds = _timed(like_model, store, text, now=NOW)
            cached.append(seconds)
        rows.append(f"| `like_model`, cached, per subscription (max) | {max(cached):.3f} |")
        week = [lp.paper for lp in corpus.week]
        one = dict(list(models.items())[:1])
        _, seconds = _timed(select_like, one, week)
        rows.append(f"| `select_like`, {len(week)} new papers, 1 model | {seconds:.2f} |")
        _, seconds = _timed(select_like, models, week)
        rows.append(
            f"| `select_like`, {len(week)} new papers, {len(models)} models | {seconds:.2f} |"
        )
        store.commit_harvest(papers=week, matches={}, deliverable=(), now=NOW)
        preview, seconds = _timed(latest_like, store, likes[0], now=NOW + timedelta(days=7))
        rows.append(
            f"| `latest_like` (week's {preview.considered} stored papers read and scored) "
            f"| {seconds:.2f} |"
        )
        store.close()
    print("\n".join(rows))
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
