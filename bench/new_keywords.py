"""`python -m bench.new_keywords`: what adding keywords costs as the database grows.

Issue 12's question: does a keyword added to a year-old database cost the same as one added
on day one? For each database size (default 2,000, 50,000 and 500,000 stored papers, written
straight into a SQLite file) and each batch (10 and 100 new plain-phrase keywords), a fresh service
process adds the keywords and runs their backfills (`digest.cycle.backfill_keywords`, no time
budget) against the arXiv stand-in, and reports the CPU seconds, wall seconds, arXiv requests
and peak memory of that phase, per new keyword. arXiv is the same for every size: a world of
500,000 harvestable papers (a year of cs.* and stat.*, 5,000 in the last week) plus 125,000
outside the harvested categories; a database of N papers holds the newest N it could have
harvested.

A fifth of the older papers arXiv serves are outside the harvested categories (eess, math,
astro-ph, quant-ph, hep-th), as in the real API: the column "rows off categories" counts those
that reach the README rows of the new keywords.

`--readme K` instead builds a database with K keywords matched against the window and
renders the README snapshot (`digest.cycle.render_snapshot`, readme.max_bytes 500,000): its
layout, size, pages, the largest page, whether every keyword with matches is reachable from
it, and the time and memory it took.

The stand-in is given only the papers a backfill could return (those whose title or abstract
holds one of the phrases; its own evaluator then answers each query exactly), so a 500,000-paper
corpus does not have to live in the bench process. Databases are cached under `--keep`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.corpus import generate_papers, keyword_queries
from bench.fakes import IndexedArxivStandIn

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)  # the corpus's "today"
WINDOW_PAPERS = 5_000  # a week of cs.* + stat.* submissions, as in the benchmark suite
CHUNK = 50_000  # papers generated and stored at a time (ids: 5 digits per prefix)
WORLD = 500_000  # in-category papers arXiv holds for this bench: the largest database size
EXISTING_KEYWORDS = 50  # tracked before the new ones arrive (matched against the window)


@dataclass
class Measure:
    """One row: a database size, a batch of new keywords, and what their backfills cost."""

    papers: int
    added: int
    cpu_s: float = 0.0
    wall_s: float = 0.0
    requests: int = 0
    peak_rss_mb: float = 0.0
    rss_before_mb: float = 0.0
    matched: int = 0
    readme_rows: int = 0
    off_category_rows: int = 0

    @property
    def cpu_per_keyword(self) -> float:
        return self.cpu_s / self.added

    @property
    def wall_per_keyword(self) -> float:
        return self.wall_s / self.added


def _phrases(count: int) -> list[str]:
    """`count` new plain keywords, not among the existing ones."""
    plain = [q for q in keyword_queries(EXISTING_KEYWORDS + count + 40) if ":" not in q]
    return plain[EXISTING_KEYWORDS : EXISTING_KEYWORDS + count]


def _existing() -> list[str]:
    return [q for q in keyword_queries(EXISTING_KEYWORDS + 40) if ":" not in q][:EXISTING_KEYWORDS]


# arXiv also holds papers outside the harvested categories: every fifth older paper is moved
# to one of these. arXiv's search returns them; the database (filled by harvests) never had them.
OFF_CATEGORIES = ("eess.IV", "math.OC", "astro-ph.IM", "quant-ph", "hep-th")
OFF_EVERY = 5


def _chunks() -> Iterator[tuple[int, int, datetime, datetime, str]]:
    """(count, first number, start, end, id prefix) of each slice of the world, newest first:
    the 7-day window, then the year before it, 50,000 papers at a time."""
    yield WINDOW_PAPERS, 1, NOW - timedelta(days=7), NOW, "2603"
    old = (WORLD - WINDOW_PAPERS) * OFF_EVERY // (OFF_EVERY - 1)  # plus the off-category ones
    slices = -(-old // CHUNK)
    span = timedelta(days=358) / slices
    for index in reversed(range(slices)):
        count = min(CHUNK, old - index * CHUNK)
        start = NOW - timedelta(days=365) + index * span
        yield count, 1, start, start + span, f"25{index + 1:02d}"


def _settings(data_dir: Path, arxiv_url: str) -> Any:
    from digest.config import settings_for_tests

    return settings_for_tests(
        service={"data_dir": str(data_dir), "test_mode": False},
        arxiv={"api_url": arxiv_url, "delay_seconds": 0.0, "contact": "bench@example.org"},
    )


def seed_database(folder: Path, total: int, wanted: Sequence[str]) -> list[Any]:
    """Store the newest `total` papers of the world in folder/daily-papers.sqlite3 (once;
    cached), as a database that has harvested for a while would hold them, and return what the
    stand-in serves: the window and every paper of the world a backfill of `wanted` could
    find. The world is the same for every database size: arXiv does not shrink with us."""
    from digest.query import match_papers, parse_query
    from storage.sql_store import SqlStore

    database = folder / "daily-papers.sqlite3"
    served_file = folder.parent / "served.pickle"
    if database.exists() and served_file.exists():
        with served_file.open("rb") as handle:
            cached: list[Any] = pickle.load(handle)  # noqa: S301 -- this bench's own cache file
        return cached
    lowered = [w.casefold() for w in wanted]
    folder.mkdir(parents=True, exist_ok=True)
    served: list[Any] = []
    store = SqlStore(url=f"sqlite:///{database}")
    store.migrate()
    existing = [parse_query(q) for q in _existing()]
    for keyword in existing:
        store.add_keyword(keyword.text)
        store.mark_backfilled(keyword.text, NOW - timedelta(days=400))
    started = time.monotonic()
    room = total
    for number, papers in enumerate(_slices()):
        stored = [p for p in papers if p.primary_category not in OFF_CATEGORIES]
        stored = stored[len(stored) - room :] if room > 0 else []  # the newest that fit
        room -= len(stored)
        # The existing keywords were matched when their papers arrived: give the window its
        # matches (older papers' matches change nothing the backfill of a new keyword reads).
        matches = match_papers(existing, stored) if number == 0 else {}
        for at in range(0, len(stored), 10_000):
            part = stored[at : at + 10_000]
            store.commit_harvest(
                papers=part,
                matches={k: v & {p.arxiv_id for p in part} for k, v in matches.items()},
                deliverable=(),
                now=part[0].published,
            )
        for paper in papers:
            text = f"{paper.title} {paper.abstract}".casefold()
            if number == 0 or any(w in text for w in lowered):
                served.append(paper)
        seconds = time.monotonic() - started
        print(f"  world slice {number}: stored {len(stored):,} ({seconds:.0f} s)", file=sys.stderr)
    store.close()
    with served_file.open("wb") as handle:
        pickle.dump(served, handle)
    return served


def _slices() -> Iterator[list[Any]]:
    """The world slice by slice, newest first; older slices hold off-category papers."""
    for number, (count, first, start, end, prefix) in enumerate(_chunks()):
        papers = generate_papers(
            count, start=start, end=end, seed=int(prefix), first_number=first, id_prefix=prefix
        )
        if number:
            papers = [
                replace(p, primary_category=off, categories=(off,))
                if i % OFF_EVERY == 0 and (off := OFF_CATEGORIES[i // OFF_EVERY % 5])
                else p
                for i, p in enumerate(papers)
            ]
        yield papers


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb() -> float:
    """This process's own peak RSS (VmHWM): ru_maxrss would include the bench process's
    peak, which Linux carries across the fork and exec that started this one."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: add the keywords and run their backfills; what it cost."""
    import asyncio

    from digest.arxiv_source import ArxivSource, expand_categories
    from digest.cycle import _Tally, backfill_keywords
    from storage.sql_store import SqlStore

    settings = _settings(Path(spec["data_dir"]), spec["arxiv_url"])
    store = SqlStore.from_settings(settings)
    store.migrate()
    source = ArxivSource.from_settings(settings)
    for phrase in spec["keywords"]:
        store.add_keyword(phrase)
    tally = _Tally()
    options: dict[str, Any] = {}
    if "budget_seconds" in inspect.signature(backfill_keywords).parameters:
        options["budget_seconds"] = float("inf")  # measure every backfill
    before = _rss_mb()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    wall = time.perf_counter()
    done = asyncio.run(
        backfill_keywords(
            settings=settings, store=store, source=source, now=lambda: NOW, tally=tally, **options
        )
    )
    wall = time.perf_counter() - wall
    usage = resource.getrusage(resource.RUSAGE_SELF)
    matched = sum(store.count_matches(phrase) for phrase in spec["keywords"])
    # What the README shows of the new keywords: rows outside arxiv.categories should be none.
    terms = expand_categories(settings.arxiv.categories)
    shown = [
        paper
        for phrase in spec["keywords"]
        for paper in store.latest_matches(phrase, settings.readme.max_papers)
    ]
    off_category = sum(1 for paper in shown if not _in_categories(paper, terms))
    store.close()
    source.close()
    return {
        "done": done,
        "cpu_s": usage.ru_utime + usage.ru_stime - cpu,
        "wall_s": wall,
        "requests": tally.requests,
        "peak_rss_mb": _peak_mb(),
        "rss_before_mb": before,
        "matched": matched,
        "readme_rows": len(shown),
        "off_category_rows": off_category,
    }


def _in_categories(paper: Any, terms: Sequence[str]) -> bool:
    """As `digest.arxiv_source.in_categories` (written out: the old code has no such function)."""
    for category in paper.categories or (paper.primary_category,):
        for term in terms:
            if category == term or (term.endswith("*") and category.startswith(term[:-1])):
                return True
    return False


def measure(papers: int, added: int, keep: Path) -> Measure:
    """Seed (or reuse) a database of `papers` papers and time adding `added` keywords."""
    wanted = _phrases(100)
    folder = keep / f"papers-{papers}"
    served = seed_database(folder, papers, wanted)
    with IndexedArxivStandIn(served) as arxiv, tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        shutil.copy(folder / "daily-papers.sqlite3", work / "daily-papers.sqlite3")
        spec = {"data_dir": str(work), "arxiv_url": arxiv.url, "keywords": wanted[:added]}
        result = _in_a_fresh_process("--worker", spec, work)
    row = Measure(papers=papers, added=added)
    for name in (
        "cpu_s",
        "wall_s",
        "requests",
        "peak_rss_mb",
        "rss_before_mb",
        "matched",
        "readme_rows",
        "off_category_rows",
    ):
        setattr(row, name, result[name])
    return row


def readme_check(keywords: int, keep: Path, *, feeds: bool = False) -> dict[str, Any]:
    """K keywords matched against the window, then the README snapshot: layout, size, pages,
    reachability, seconds and peak memory (in a fresh process); with `feeds`, the Atom feeds
    too, and a second rendering of the same database (which should write nothing)."""
    folder = keep / f"readme-{keywords}{'-feeds' if feeds else ''}"
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return _in_a_fresh_process(
        "--readme-worker", {"data_dir": str(folder), "keywords": keywords, "feeds": feeds}, folder
    )


def _in_a_fresh_process(flag: str, spec: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Run this module's `flag` worker on `spec` in a process of its own; its JSON result."""
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(spec))
    done = subprocess.run(  # noqa: S603 -- our own interpreter running our own module
        [sys.executable, "-m", "bench.new_keywords", flag, str(spec_path)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def readme_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the K-keyword database and render the README; what came out."""
    import asyncio

    from digest.cycle import render_snapshot
    from digest.query import match_papers, parse_query
    from storage.sql_store import SqlStore

    folder = Path(spec["data_dir"])
    settings = _settings(folder, "http://127.0.0.1:9/api/query")
    if spec.get("feeds"):
        settings = dataclasses.replace(
            settings, feeds=dataclasses.replace(settings.feeds, enabled=True)
        )
    store = SqlStore.from_settings(settings)
    store.migrate()
    window = next(_slices())
    queries = [parse_query(q) for q in keyword_queries(spec["keywords"])]
    for query in queries:
        store.add_keyword(query.text)
        store.mark_backfilled(query.text, NOW)
    store.commit_harvest(
        papers=window, matches=match_papers(queries, window), deliverable=(), now=NOW
    )
    del window
    before = _rss_mb()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    wall = time.perf_counter()
    asyncio.run(render_snapshot(settings=settings, store=store, now=NOW))
    wall = time.perf_counter() - wall
    usage = resource.getrusage(resource.RUSAGE_SELF)
    feeds = sorted(settings.feeds_path.glob("*.atom")) if spec.get("feeds") else []
    feed_sizes = [p.stat().st_size for p in feeds]
    again_cpu = 0.0
    again_changed = None
    if spec.get("feeds"):  # the same database again: nothing may be rewritten
        again_cpu = usage.ru_utime + usage.ru_stime
        again_changed = asyncio.run(render_snapshot(settings=settings, store=store, now=NOW))
        again = resource.getrusage(resource.RUSAGE_SELF)
        again_cpu = again.ru_utime + again.ru_stime - again_cpu
    readme = settings.readme_path
    text = readme.read_text(encoding="utf-8")
    pages = sorted((readme.parent / "papers").glob("*.md"))
    reachable_text = text + "".join(
        p.read_text(encoding="utf-8") for p in pages if "index-" in p.name
    )
    with_matches = [q.text for q in queries if store.count_matches(q.text)]
    unreachable = 0
    from digest.readme import page_slug

    for keyword in with_matches:
        slug = page_slug(keyword)
        in_readme = f"## {keyword}" in text  # its rows are in the README itself
        linked = (
            f"{slug}.md)" in reachable_text and (readme.parent / "papers" / f"{slug}.md").exists()
        )
        if not (in_readme or linked):
            unreachable += 1
    store.close()
    sizes = [p.stat().st_size for p in pages]
    rows_on_pages = sum(p.read_text(encoding="utf-8").count("\n| **[") for p in pages)
    return {
        "keywords": spec["keywords"],
        "with_matches": len(with_matches),
        "readme_bytes": len(text.encode()),
        "layout": "index" if pages else ("even" if "Showing the latest" in text else "full"),
        "pages": len(pages),
        "largest_page_bytes": max(sizes, default=0),
        "rows": text.count("\n| **[") + rows_on_pages,
        "unreachable": unreachable,
        "cpu_s": usage.ru_utime + usage.ru_stime - cpu,
        "wall_s": wall,
        "peak_rss_mb": _peak_mb(),
        "rss_before_mb": before,
        "feeds": len(feeds),
        "feeds_bytes": sum(feed_sizes),
        "largest_feed_bytes": max(feed_sizes, default=0),
        "second_render_changed": again_changed,
        "second_render_cpu_s": again_cpu,
    }


def table(rows: Sequence[Measure]) -> str:
    """Markdown results."""
    lines = [
        "| stored papers | new keywords | CPU s | wall s | CPU s per keyword | arXiv requests "
        "| peak RSS MB | RSS before MB | papers matched | README rows | rows off categories |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.papers:,} | {r.added} | {r.cpu_s:.2f} | {r.wall_s:.2f} "
            f"| {r.cpu_per_keyword:.3f} | {r.requests} | {r.peak_rss_mb:.0f} "
            f"| {r.rss_before_mb:.0f} | {r.matched:,} | {r.readme_rows:,} "
            f"| {r.off_category_rows} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rows and print the tables."""
    parser = argparse.ArgumentParser(prog="python -m bench.new_keywords", description=__doc__)
    parser.add_argument(
        "--sizes", default="2000,50000,500000", help="stored papers, comma-separated"
    )
    parser.add_argument("--adds", default="10,100", help="new keywords per row, comma-separated")
    parser.add_argument("--skip", default="", help="rows to leave out, e.g. 500000x100")
    parser.add_argument("--readme", type=int, default=0, help="instead: README check at K keywords")
    parser.add_argument("--feeds", action="store_true", help="with --readme: feeds on too")
    parser.add_argument("--keep", default=str(Path(tempfile.gettempdir()) / "bench-new-keywords"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--readme-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(Path(args.worker).read_text()))))
        return 0
    if args.readme_worker:
        print(json.dumps(readme_worker(json.loads(Path(args.readme_worker).read_text()))))
        return 0
    keep = Path(args.keep)
    if args.readme:
        print(json.dumps(readme_check(args.readme, keep, feeds=args.feeds), indent=2))
        return 0
    skip = set(filter(None, args.skip.split(",")))
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for added in (int(a) for a in args.adds.split(",")):
            if f"{size}x{added}" in skip:
                continue
            rows.append(measure(size, added, keep))
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
