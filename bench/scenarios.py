"""Benchmark scenarios: what each run sets up, how the service is measured, and the results.

Two processes per measurement, as in production:

- the *world* (this process): the synthetic corpus behind the arXiv stand-in and the
  rate-limited Slack, Discord and SMTP fakes (`bench.fakes.World`);
- the *service* (a fresh `python -m bench --worker SPEC` process per row): a real SQLite file,
  the real `ArxivSource`, the channels built by the composition root
  (`digest.app.build_channels`), and the daily cycle's own phase functions
  (`digest.cycle.harvest`, `deliver`, `render_snapshot`) called in `run_cycle`'s order, each
  timed from outside. Its peak RSS is the service's alone, not the fakes'.

Phase timing: `harvest` is split with timing wrappers around the two ports it calls: *fetch*
is `PaperSource.harvest`, *store* is `PaperStore.known_versions` + `commit_harvest`, and
*match* is what remains of the harvest phase (the local matching of every keyword against
every harvested paper, plus a few set operations). Delivery runs `deliver` once per channel
kind, so each kind has its own wall time (the real cycle sends all kinds in one call, with
at most `DELIVERY_CONCURRENCY` targets at once; its wall time is at most the sum).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.corpus import generate_papers, keyword_queries, phrase_vocabulary, with_phrase

NOW = datetime(2026, 3, 10, 21, 0, tzinfo=UTC)  # a Tuesday evening, after the announcement
WINDOW_DAYS = 7  # arxiv.lookback_days' default: the harvest re-reads a week
ARXIV_FLOOR = 3.0  # arXiv's terms: one request every three seconds
BOT_TOKEN_SLACK = "xoxb-fake-bot-token"  # tests.fakes.slack_api.BOT_TOKEN
BOT_TOKEN_DISCORD = "bench.discord.token"
SECRET_KEY = "bench-secret-key-0123456789abcdef"
WORKER_TIMEOUT = 900.0  # seconds one service process may take before the bench gives up


# -- what a row asks the service to do ---------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """Subscription targets: `count` targets of a kind, each subscribed to `per` keywords."""

    kind: str
    count: int
    per: int


@dataclass(frozen=True)
class Spec:
    """One service process: a cycle (or a baseline fetch, a README render, a mail-out)."""

    name: str
    mode: str  # "cycle" | "baseline" | "ours-fetch" | "readme" | "email"
    keywords: int
    data_dir: str
    urls: dict[str, Any]
    now: str = NOW.isoformat()
    delay: float = 0.0  # arXiv delay; 0 runs in test mode
    layouts: tuple[Layout, ...] = ()
    seed_store: bool = True  # a fresh database (False: continue the previous row's)
    full_cycle: bool = False  # run `run_cycle` itself rather than its phases one by one
    readme_keywords: int = 100
    readme_papers: int = 100
    email_digests: int = 0
    email_papers: int = 0  # the day's new papers the mail-out draws from
    rate_limits: bool = True  # the Slack and Discord fakes enforce the platforms' limits

    def to_json(self) -> str:
        """The spec as JSON for the worker's command line."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Spec:
        """The spec back from JSON."""
        data = json.loads(text)
        data["layouts"] = tuple(Layout(**layout) for layout in data["layouts"])
        return cls(**data)


@dataclass
class Result:
    """What one service process measured (seconds, counts, megabytes)."""

    name: str
    keywords: int = 0
    subscriptions: int = 0
    harvested: int = 0
    new_papers: int = 0
    new_matches: int = 0
    requests: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    peak_after: dict[str, float] = field(default_factory=dict)  # peak RSS (MB) after a phase
    sent: dict[str, int] = field(default_factory=dict)  # deliveries recorded sent, per kind
    batches: dict[str, int] = field(default_factory=dict)  # targets served, per kind
    failed: int = 0
    readme_bytes: int = 0
    readme_trimmed: int = 0
    readme_changed: bool | None = None
    rss_mb: float = 0.0
    cpu_seconds: float = 0.0  # the service process's user + system time
    db_mb: float = 0.0
    seed_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    # Filled in by the world after the process ended:
    world: dict[str, Any] = field(default_factory=dict)


# -- timing wrappers around the ports -----------------------------------------------------------
class _Timed:
    """Wraps a port object; sums the wall time of each method called (thread-safe)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = defaultdict(float)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                with self._lock:
                    self.seconds[name] += elapsed

        return timed

    def take(self, *names: str) -> float:
        """The time spent in these methods since the last take (and reset them)."""
        with self._lock:
            return sum(self.seconds.pop(name, 0.0) for name in names)


# -- the service side (runs in the worker process) ---------------------------------------------
def _settings(spec: Spec) -> Any:
    from digest.config import Secrets, settings_for_tests

    # Production behaviour (test mode off): only the arXiv delay is chosen per row. Against a
    # stand-in (not arXiv's host) a delay of 0 is allowed; the politeness rows use 3 s.
    email = {
        "enabled": True,
        "smtp_host": spec.urls.get("smtp_host", "127.0.0.1"),
        "smtp_port": spec.urls.get("smtp_port", 9),
        "security": "none",
        "sender": "papers@bench.example.org",
        "list_id": "papers.bench.example.org",
    }
    settings = settings_for_tests(
        service={"data_dir": spec.data_dir, "test_mode": False},
        arxiv={
            "api_url": spec.urls.get("arxiv", "http://127.0.0.1:9/api/query"),
            "delay_seconds": spec.delay,
            "contact": "bench@example.org",
            "retries": 2,
        },
        slack={"api_url": spec.urls.get("slack", "http://127.0.0.1:9/api/")},
        discord={"api_url": spec.urls.get("discord", "http://127.0.0.1:9/api/v10")},
        email=email,
        web={"base_url": "https://papers.bench.example.org"},
        delivery={"retry_base_minutes": 0},
    )
    secrets = Secrets(
        slack_bot_token=BOT_TOKEN_SLACK,
        discord_bot_token=BOT_TOKEN_DISCORD,
        secret_key=SECRET_KEY,
    )
    return dataclasses.replace(settings, secrets=secrets)


def _targets(layout: Layout) -> list[Any]:
    from digest.domain import Target

    if layout.kind == "slack":
        return [Target("slack", f"CBENCH{i:05d}") for i in range(layout.count)]
    if layout.kind == "discord":
        return [Target("discord", str(910_000_000_000_000_000 + i)) for i in range(layout.count)]
    return [Target("email", f"reader{i:05d}@bench.example.org") for i in range(layout.count)]


def _seed(spec: Spec, store: Any, now: datetime) -> tuple[list[str], int]:
    """Track the keywords (already backfilled: a steady-state day) and add the subscriptions."""
    from digest.mail import OPTION_CONFIRMED
    from digest.query import parse_query

    texts = [parse_query(q).text for q in keyword_queries(spec.keywords)]
    before = now - timedelta(days=30)
    for text in texts:
        store.add_keyword(text)
        store.mark_backfilled(text, before)
    rng = random.Random(5)
    subscriptions = 0
    for layout in spec.layouts:
        for target in _targets(layout):
            for text in rng.sample(texts, min(layout.per, len(texts))):
                store.add_subscription(target, text, now=before)
                subscriptions += 1
            if target.kind == "email":
                store.set_target_option(target, OPTION_CONFIRMED, before.isoformat())
    return texts, subscriptions


class _Phases(dict[str, float]):
    """`Result.phases`, noting the peak RSS so far each time a phase's time is recorded."""

    def __init__(self, result: Result) -> None:
        super().__init__()
        self._result = result
        result.phases = self

    def __setitem__(self, name: str, seconds: float) -> None:
        super().__setitem__(name, seconds)
        self._result.peak_after[name] = _rss_megabytes()


def _db_megabytes(data_dir: Path) -> float:
    files = list(data_dir.glob("*.sqlite3*"))
    return sum(f.stat().st_size for f in files) / 1e6


def _rss_megabytes() -> float:
    """The peak resident set of this process so far (VmHWM).

    Not `getrusage().ru_maxrss`: Linux carries that across fork+exec, so a service process
    started by the bench would report the bench's own (corpus-holding) peak.
    """
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _run_service(spec: Spec) -> Result:
    from digest.app import build_channels
    from digest.arxiv_source import ArxivSource
    from digest.cycle import (
        _Tally,
        backfill_keywords,
        deliver,
        harvest,
        parse_keywords,
        render_snapshot,
        run_cycle,
        sync_config_keywords,
    )
    from storage.sql_store import SqlStore

    settings = _settings(spec)
    now = datetime.fromisoformat(spec.now)
    result = Result(name=spec.name, keywords=spec.keywords)
    data_dir = Path(spec.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 -- before anything runs
    store = SqlStore.from_settings(settings)
    store.migrate()
    started = time.perf_counter()
    if spec.mode == "readme":
        _seed_readme(spec, store, now, result)
    elif spec.mode == "email":
        _seed_email(spec, store, now, result)
    elif spec.seed_store:
        _, result.subscriptions = _seed(spec, store, now)
    else:
        result.subscriptions = len(store.list_subscriptions(active_only=True))
    result.seed_seconds = time.perf_counter() - started

    result.peak_after["seed"] = _rss_megabytes()
    timed_store = _Timed(store)
    source = ArxivSource.from_settings(settings)
    timed_source = _Timed(source)
    phases = _Phases(result)
    try:
        async with AsyncExitStack() as stack:
            if spec.mode in {"baseline", "ours-fetch"}:
                await _fetch_only(spec, settings, timed_source, result)
                return result
            channels = dict(await build_channels(settings, store=store, stack=stack))
            tally = _Tally()
            if spec.mode == "readme":
                started = time.perf_counter()
                result.readme_changed = await render_snapshot(
                    settings=settings, store=store, now=now
                )
                phases["readme"] = time.perf_counter() - started
                started = time.perf_counter()
                again = await render_snapshot(settings=settings, store=store, now=now)
                phases["readme (unchanged)"] = time.perf_counter() - started
                if again:
                    result.notes.append("README rewritten although nothing changed")
                _readme_size(settings, result)
                return result
            if spec.full_cycle:
                started = time.perf_counter()
                report = await run_cycle(
                    settings=settings,
                    store=timed_store,
                    source=timed_source,
                    channels=channels,
                    now=lambda: now,
                )
                phases["cycle"] = time.perf_counter() - started
                phases["fetch"] = timed_source.take("harvest")
                result.requests = report.requests
                result.harvested, result.new_papers = report.harvested, report.new_papers
                result.new_matches = report.new_matches
                if not report.ok:
                    result.notes.append(f"cycle failed: {report.error}")
                return result
            if spec.mode == "cycle":
                await sync_config_keywords(timed_store, settings.keywords.queries)
                keywords = await asyncio.to_thread(timed_store.list_keywords)
                queries = parse_keywords([k.query for k in keywords])
                timed_store.take("list_keywords", "add_keyword")
                started = time.perf_counter()
                await harvest(
                    settings=settings,
                    store=timed_store,
                    source=timed_source,
                    queries=queries,
                    now=now,
                    tally=tally,
                    progress=lambda *_: None,
                )
                whole = time.perf_counter() - started
                phases["fetch"] = timed_source.take("harvest")
                phases["store"] = timed_store.take("known_versions", "commit_harvest")
                other = timed_store.take("get_watermark")
                phases["match"] = max(0.0, whole - phases["fetch"] - phases["store"] - other)
                started = time.perf_counter()
                await backfill_keywords(settings=settings, store=store, source=source, tally=tally)
                phases["backfill"] = time.perf_counter() - started
                result.requests = tally.requests
                result.harvested, result.new_papers = tally.harvested, tally.new_papers
                result.new_matches = tally.new_matches
            for kind in ("slack", "discord", "email"):
                if kind not in channels:
                    continue
                # not delivered this time: deferred to a later try, or failed for good
                sent_before, failed_before = tally.sent, tally.failed + tally.deferred
                batches: list[int] = []

                def note_total(
                    _phase: str, _done: int, total: int, seen: list[int] = batches
                ) -> None:
                    seen.append(total)

                started = time.perf_counter()
                await deliver(
                    settings=settings,
                    store=store,
                    channels={kind: channels[kind]},
                    now=now,
                    tally=tally,
                    progress=note_total,
                )
                phases[f"deliver {kind}"] = time.perf_counter() - started
                result.sent[kind] = tally.sent - sent_before
                result.batches[kind] = batches[-1] if batches else 0
                result.failed += tally.failed + tally.deferred - failed_before
            if spec.mode == "cycle":
                started = time.perf_counter()
                result.readme_changed = await render_snapshot(
                    settings=settings, store=store, now=now
                )
                phases["readme"] = time.perf_counter() - started
                _readme_size(settings, result)
    finally:
        source.close()
        store.close()
        result.phases = dict(phases)
        result.rss_mb = _rss_megabytes()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        result.cpu_seconds = usage.ru_utime + usage.ru_stime
        result.db_mb = _db_megabytes(data_dir)
    return result


def _readme_size(settings: Any, result: Result) -> None:
    path = settings.readme_path
    if path.exists():
        result.readme_bytes = path.stat().st_size


async def _fetch_only(spec: Spec, settings: Any, source: _Timed, result: Result) -> None:
    """The fetch alone: DailyArXiv's one query per keyword, or our one harvest, same delay."""
    from digest.config import DEFAULT_CATEGORIES

    now = datetime.fromisoformat(spec.now)
    started = time.perf_counter()
    if spec.mode == "baseline":
        # DailyArXiv's loop: for each keyword, `ti:"k" OR abs:"k"` by lastUpdatedDate, max 100.
        phrases = _plain_phrases(spec.keywords)
        for phrase in phrases:
            fetch = await asyncio.to_thread(
                source.search, f'ti:"{phrase}" OR abs:"{phrase}"', limit=100
            )
            result.requests += fetch.requests
            result.harvested += len(fetch.papers)
    else:
        fetch = await asyncio.to_thread(
            source.harvest,
            start=now - timedelta(days=WINDOW_DAYS),
            end=now,
            categories=DEFAULT_CATEGORIES,
        )
        result.requests, result.harvested = fetch.requests, len(fetch.papers)
    result.phases["fetch"] = time.perf_counter() - started
    result.peak_after["fetch"] = _rss_megabytes()


def _plain_phrases(count: int) -> list[str]:
    """The phrases behind `keyword_queries(count)` (DailyArXiv only knows plain phrases)."""
    from digest.query import iter_terms, parse_query

    phrases = []
    for text in keyword_queries(count):
        term = next(t for t in iter_terms(parse_query(text).root) if t.field.value != "cat")
        phrases.append(" ".join(term.words))
    return phrases


def _seed_readme(spec: Spec, store: Any, now: datetime, result: Result) -> None:
    """A store with `readme_keywords` keywords, each matching at least `readme_papers` papers."""
    from digest.query import match_papers, parse_query

    phrases = phrase_vocabulary()[: spec.readme_keywords]
    count = spec.readme_papers * 40
    papers = generate_papers(
        count, start=now - timedelta(days=120), end=now, seed=3, id_prefix="2511"
    )
    # Weave each keyword into every 30th paper: 40*N/30 > N papers per keyword, whatever the
    # Zipf draw gave it.
    for index, phrase in enumerate(phrases):
        papers = with_phrase(papers, phrase, every=30, offset=index)
    texts = [parse_query(p.title()).text for p in phrases]
    for text in texts:
        store.add_keyword(text)
        store.mark_backfilled(text, now)
    queries = [parse_query(t) for t in texts]
    matches = match_papers(queries, papers)
    store.commit_harvest(papers=papers, matches=matches, deliverable=(), now=now)
    result.keywords = len(texts)
    short = [t for t in texts if len(matches.get(t, ())) < spec.readme_papers]
    if short:
        result.notes.append(f"{len(short)} README keywords have fewer than {spec.readme_papers}")


def _seed_email(spec: Spec, store: Any, now: datetime, result: Result) -> None:
    """`email_digests` confirmed readers, each owed the day's papers of two keywords."""
    from digest.domain import Target
    from digest.mail import OPTION_CONFIRMED
    from digest.query import match_papers, parse_query

    papers = generate_papers(
        spec.email_papers, start=now - timedelta(days=1), end=now, seed=9, id_prefix="2603"
    )
    candidates = [parse_query(q) for q in keyword_queries(500)]
    matches = match_papers(candidates, papers)
    # Readers subscribe to keywords that have news today; a reader with nothing new gets no mail.
    live = [q.text for q in candidates if 1 <= len(matches[q.text]) <= 40]
    before = now - timedelta(days=30)
    for text in live:
        store.add_keyword(text)
        store.mark_backfilled(text, before)
    rng = random.Random(13)
    for i in range(spec.email_digests):
        target = Target("email", f"reader{i:05d}@bench.example.org")
        for text in rng.sample(live, 2):
            store.add_subscription(target, text, now=before)
            result.subscriptions += 1
        store.set_target_option(target, OPTION_CONFIRMED, before.isoformat())
    store.commit_harvest(
        papers=papers,
        matches={t: matches[t] for t in live},
        deliverable=[p.arxiv_id for p in papers],
        now=now,
    )
    result.keywords = len(live)


def worker_main(spec_path: str) -> int:
    """`python -m bench --worker SPEC.json`: run one service process, write SPEC.json.out."""
    spec = Spec.from_json(Path(spec_path).read_text(encoding="utf-8"))
    logging.basicConfig(
        filename=str(Path(spec.data_dir) / f"{_slug(spec.name)}.log"),
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    result = asyncio.run(_run_service(spec))
    Path(spec_path + ".out").write_text(json.dumps(dataclasses.asdict(result)), encoding="utf-8")
    return 0


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()


# -- the orchestrator side (the world) -----------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """The sizes of a benchmark run."""

    name: str
    papers: int  # new papers in the window
    keyword_counts: tuple[int, ...]  # K for the scaling rows
    target_k: int  # the row with subscriptions, a second cycle and the politeness check
    layouts: tuple[Layout, ...]
    readme_keywords: int
    readme_papers: int
    email_digests: int
    email_papers: int
    polite_delay: float  # arXiv delay of the politeness rows (0: skip them)
    baseline_counts: tuple[int, ...]
    baseline_delay: float  # the same per-request delay for both strategies


PLANS: dict[str, Plan] = {
    "small": Plan(
        name="small",
        papers=300,
        keyword_counts=(1, 20),
        target_k=20,
        layouts=(Layout("slack", 2, 3), Layout("discord", 2, 3), Layout("email", 4, 2)),
        readme_keywords=10,
        readme_papers=10,
        email_digests=40,
        email_papers=300,
        polite_delay=0.0,
        baseline_counts=(1, 20),
        baseline_delay=0.0,
    ),
    "full": Plan(
        name="full",
        papers=5000,
        keyword_counts=(1, 50, 500, 5000),
        target_k=500,
        # 1,000 subscriptions: 40 Slack channels and 30 Discord channels following 10 keywords
        # each, 150 readers following 2 each.
        layouts=(Layout("slack", 40, 10), Layout("discord", 30, 10), Layout("email", 150, 2)),
        readme_keywords=100,
        readme_papers=100,
        email_digests=10_000,
        email_papers=720,
        polite_delay=ARXIV_FLOOR,
        baseline_counts=(1, 50, 500),
        baseline_delay=0.1,
    ),
}


@dataclass
class Row:
    """One line of the results: the spec's name, what the service and the world measured."""

    spec: Spec
    result: Result


def _run(spec: Spec, world: Any, *, inline: bool, profile: bool = False) -> Result:
    """Run one service (a process, or `inline` in this one) and attach what the world saw."""
    world.reset_counters()
    world.set_rate_limits(spec.rate_limits)
    if inline:
        Path(spec.data_dir).mkdir(parents=True, exist_ok=True)
        result = asyncio.run(_run_service(spec))
        result.notes.append("service ran inline: peak RSS includes the stand-ins")
        result.world = dataclasses.asdict(world.stats())
        return result
    path = Path(spec.data_dir) / f"{_slug(spec.name)}.spec.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(spec.to_json(), encoding="utf-8")
    command = [sys.executable, "-m", "bench", "--worker", str(path)]
    if profile:
        # py-spy samples every thread (the cycle's blocking work runs in to_thread workers,
        # which pyinstrument cannot see); collapsed stacks, one line per distinct stack.
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        out_file = Path(spec.data_dir) / f"{_slug(spec.name)}.py-spy.txt"
        command = [
            py_spy,
            "record",
            "--format",
            "raw",
            "--rate",
            "200",
            "--threads",
            *os.environ.get("BENCH_PY_SPY_ARGS", "").split(),
            "--output",
            str(out_file),
            "--",
            *command,
        ]
    done = subprocess.run(  # noqa: S603 -- our own interpreter running our own module
        command,
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT,
        check=False,
    )
    out = Path(str(path) + ".out")
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"service process for {spec.name!r} failed:\n{done.stderr[-4000:]}")
    data = json.loads(out.read_text(encoding="utf-8"))
    result = Result(**data)
    result.world = dataclasses.asdict(world.stats())
    return result


def specs(plan: Plan, urls: dict[str, Any], root: Path) -> Iterator[tuple[str, Spec]]:
    """Every row of a plan, in order, as (group, spec)."""

    def spec(name: str, mode: str, k: int, folder: str, **extra: Any) -> Spec:
        return Spec(
            name=name, mode=mode, keywords=k, data_dir=str(root / folder), urls=urls, **extra
        )

    for k in plan.keyword_counts:
        if k != plan.target_k:
            yield "cycles", spec(f"K={k:,}", "cycle", k, f"k{k}")
            continue
        # The service's own cost (the 60 s target) is measured with the platforms' pacing off;
        # the same day with it on shows what Slack's and Discord's limits add, and the 429s.
        subs = f"K={k:,}, {_subs(plan):,} subs"
        off = spec(f"{subs}, platform limits off", "cycle", k, f"k{k}", layouts=plan.layouts)
        yield "cycles", dataclasses.replace(off, rate_limits=False)
        yield (
            "cycles",
            spec(
                f"K={k:,} second cycle (nothing new)",
                "cycle",
                k,
                f"k{k}",
                layouts=plan.layouts,
                seed_store=False,
                now=(NOW + timedelta(days=1)).isoformat(),
            ),
        )
        yield (
            "cycles",
            spec(f"{subs}, platform limits on", "cycle", k, f"k{k}-limited", layouts=plan.layouts),
        )
    yield (
        "cycles",
        spec(
            f"README {plan.readme_keywords} kw x {plan.readme_papers} papers",
            "readme",
            plan.readme_keywords,
            "readme",
            readme_keywords=plan.readme_keywords,
            readme_papers=plan.readme_papers,
        ),
    )
    yield (
        "cycles",
        spec(
            f"{plan.email_digests:,} email digests",
            "email",
            0,
            "email",
            email_digests=plan.email_digests,
            email_papers=plan.email_papers,
        ),
    )
    if plan.polite_delay:
        for k in (plan.target_k,):
            yield (
                "polite",
                spec(
                    f"K={k:,} run_cycle at {plan.polite_delay:g} s",
                    "cycle",
                    k,
                    f"polite{k}",
                    delay=plan.polite_delay,
                    full_cycle=True,
                ),
            )
    for k in plan.baseline_counts:
        for mode in ("ours-fetch", "baseline"):
            yield (
                "baseline",
                spec(f"{mode} K={k:,}", mode, k, f"{mode}{k}", delay=plan.baseline_delay),
            )


def _subs(plan: Plan) -> int:
    return sum(layout.count * layout.per for layout in plan.layouts)


def run_plan(
    plan: Plan,
    *,
    only: Sequence[str] = (),
    keep: Path | None = None,
    on_row: Callable[[str, Row], None] | None = None,
    inline: bool = False,
    profile: bool = False,
) -> list[tuple[str, Row]]:
    """Start the world, run every row of `plan` (or those whose group or name is in `only`).

    `inline` runs the service in this process instead of a fresh one per row (fast, for the
    CI smoke test; peak RSS then includes the world and is not the service's own).
    `profile` runs each service process under py-spy (collapsed stacks next to its log).
    """
    from bench.fakes import World

    window_end = NOW
    papers = generate_papers(
        plan.papers, start=window_end - timedelta(days=WINDOW_DAYS), end=window_end
    )
    root = keep or Path(tempfile.mkdtemp(prefix="daily-papers-bench-"))
    rows: list[tuple[str, Row]] = []
    try:
        with World(papers) as world:
            for group, spec in specs(plan, world.urls, root):
                if only and group not in only and not any(o in spec.name for o in only):
                    continue
                if not spec.seed_store and not any(
                    r.spec.data_dir == spec.data_dir for _, r in rows
                ):
                    continue  # a second cycle needs its first
                if spec.seed_store and spec.mode not in {"baseline", "ours-fetch"}:
                    shutil.rmtree(spec.data_dir, ignore_errors=True)
                row = Row(spec=spec, result=_run(spec, world, inline=inline, profile=profile))
                rows.append((group, row))
                if on_row is not None:
                    on_row(group, row)
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return rows


def machine() -> dict[str, str]:
    """The machine the numbers come from."""
    cpu = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with open("/proc/meminfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "memory": memory,
        "python": sys.version.split()[0],
        "load": load,
    }
