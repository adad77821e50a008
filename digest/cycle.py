"""One daily cycle: harvest -> match -> store -> deliver -> backfill -> README, and its report.

The cycle is the only place that sequences the pieces; each piece is a pure function or a port
(`PaperSource`, `PaperStore`, `Channel`). Blocking work (the `arxiv` client, SQLAlchemy) runs in
threads so the event loop stays free for the chat adapters and the web server.

Guarantees:
- A failed or partial harvest does not move the watermark: the next run re-reads the window.
- Papers, matches, outbox rows and the watermark are written in one transaction
  (`PaperStore.commit_harvest`), so a crash before it loses nothing and a crash after it leaves
  the deliveries pending for the next run.
- A delivery is recorded only after its channel answered; a crash between sending and
  recording re-sends at most the batch that was in flight.
- Each channel call is guarded: one broken target never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Protocol
from zoneinfo import ZoneInfo

from digest.archive import refresh_archive
from digest.arxiv_source import (
    Fetch,
    PaperSource,
    backfill_queries,
    expand_categories,
    in_categories,
)
from digest.channels import Channel, ChannelRegistry
from digest.config import Settings
from digest.domain import (
    Batch,
    Outcome,
    OutcomeKind,
    Paper,
    RunReport,
    Target,
    for_deliveries,
    public_keywords,
)
from digest.errors import (
    ArxivError,
    CycleStopped,
    DailyPapersError,
    QueryError,
    SimilarityError,
    StoreError,
    crash_reason,
)
from digest.feeds import build_feeds, write_feeds
from digest.like_query import canonical_keyword, is_like_query, parse_like
from digest.likes import (
    WEEK,
    like_keywords,
    like_model,
    like_models,
    select_like,
    usable_likes,
)
from digest.monitoring import (
    STATE_FAILED_CYCLES,
    STATE_LAST_STARTED,
    STATE_LAST_SUCCESS,
    STATE_ZERO_DAYS,
    STATE_ZERO_LAST_DAY,
    record_readme_failure,
)
from digest.platforms import record_delivery_refusal
from digest.query import (
    PaperIndex,
    Query,
    fold_paper,
    match_papers,
    narrow_papers,
    parse_query,
    to_arxiv,
)
from digest.readme import build_readme, commit_readme, write_snapshot
from digest.relevance import broad_keywords, rank_keywords, with_relevance
from digest.store import OutcomeCounts, PaperStore
from digest.summary import OpenAISummarizer, summarize_new_papers, with_stored_texts
from digest.translate import Translator
from digest.translation import translate_for_readers

logger = logging.getLogger(__name__)

# Seconds one message may take, the platform's rate-limit waits included, before its target
# counts as failed for this cycle.
MESSAGE_TIMEOUT = 600.0
# Targets of one channel kind sent to at once. Per kind, so a platform that makes us wait
# (Discord allows 5 messages per 5 s per channel) never holds up another kind's targets; each
# channel still obeys its platform's limits, and email has its own SMTP connection pool.
DELIVERY_CONCURRENCY = 16


class Progress(Protocol):
    """Receives progress of long phases (the CLI draws it on a terminal)."""

    def __call__(self, phase: str, done: int, total: int) -> None:
        """`done` of `total` units of `phase` are finished."""
        ...


def _no_progress(phase: str, done: int, total: int) -> None:
    """Progress sink that ignores everything."""


def utcnow() -> datetime:
    """The current time, UTC, aware."""
    return datetime.now(UTC)


@dataclass
class _Tally:
    """Mutable counters while a cycle runs; frozen into a RunReport at the end."""

    requests: int = 0
    retries: int = 0
    throttled: int = 0
    harvested: int = 0
    new_papers: int = 0
    new_matches: int = 0
    sent: int = 0
    deferred: int = 0  # failed this time, pending for a later try
    failed: int = 0  # given up for good
    disabled: int = 0
    next_retry: datetime | None = None
    readme_error: str | None = None
    refused: dict[str, str] = field(default_factory=dict)  # kind -> why it refused our token
    acknowledged: set[str] = field(default_factory=set)  # kinds that accepted a message
    warnings: list[str] = field(default_factory=list)

    def add_fetch(self, fetch: Fetch) -> None:
        """Count one arXiv fetch."""
        self.requests += fetch.requests
        self.retries += fetch.retries
        self.throttled += fetch.throttled
        self.harvested += len(fetch.papers)

    def add_counts(self, counts: OutcomeCounts) -> None:
        """Count what recording one target's outcomes did to the outbox."""
        self.sent += counts.sent
        self.deferred += counts.retried
        self.failed += counts.failed
        self.disabled += counts.disabled
        tries = [t for t in (self.next_retry, counts.next_retry) if t is not None]
        self.next_retry = min(tries) if tries else None

    def note_outcomes(self, kind: str, outcomes: Sequence[Outcome]) -> None:
        """Remember whether this kind's platform took a message or refused our token."""
        for outcome in outcomes:
            if outcome.kind is OutcomeKind.SENT:
                self.acknowledged.add(kind)
            elif outcome.kind is OutcomeKind.UNAUTHORIZED:
                self.refused[kind] = outcome.error or "the platform refused the token"


def parse_keywords(queries: Sequence[str]) -> list[Query]:
    """Parse tracked keywords; a keyword that no longer parses is skipped with a warning.

    `like:` keywords are not queries (digest.likes selects their papers): they are left out.
    """
    parsed = []
    for text in queries:
        if is_like_query(text):
            continue
        try:
            parsed.append(parse_query(text))
        except QueryError as exc:
            logger.warning("keyword.invalid query=%r error=%s", text, exc)
    return parsed


def harvest_window(
    *, now: datetime, watermark: datetime | None, lookback_days: int
) -> tuple[datetime, datetime]:
    """The submission window to read: the look-back, reaching further back to the watermark.

    arXiv announces a paper a day or more after its submission and holds some for days, so
    every run re-reads `lookback_days`; after downtime, the window reaches back to the end of
    the last complete harvest so nothing submitted meanwhile is missed.
    """
    start = now - timedelta(days=lookback_days)
    if watermark is not None and watermark < start:
        start = watermark
    return start, now


async def sync_config_keywords(store: PaperStore, queries: Sequence[str]) -> list[str]:
    """Make sure every keyword of the config file is tracked; returns those newly added."""
    added = []
    for text in queries:
        # Config keywords were validated at load; re-checked anyway. A `like:` seed list's seeds
        # are fetched by the harvest (`usable_likes`).
        canonical = canonical_keyword(text)
        if await asyncio.to_thread(store.add_keyword, canonical, from_config=True):
            added.append(canonical)
    return added


async def harvest(
    *,
    settings: Settings,
    store: PaperStore,
    source: PaperSource,
    queries: Sequence[Query],
    now: datetime,
    tally: _Tally,
    progress: Progress,
    likes: Sequence[str] = (),
) -> None:
    """Read the daily window from arXiv, match every keyword locally and commit it all at once.

    `like:` keywords (`likes`) select from the same new and revised papers with their models
    (trained first if their seeds changed), and their papers become matches and deliveries
    exactly like a keyword's.

    Raises ArxivError (watermark untouched) when arXiv failed or returned less than promised.
    """
    watermark = await asyncio.to_thread(store.get_watermark)
    start, end = harvest_window(
        now=now, watermark=watermark, lookback_days=settings.arxiv.lookback_days
    )
    logger.info(
        "harvest.started start=%s end=%s categories=%d",
        start.isoformat(timespec="minutes"),
        end.isoformat(timespec="minutes"),
        len(settings.arxiv.categories),
    )
    try:
        fetch = await asyncio.to_thread(
            source.harvest,
            start=start,
            end=end,
            categories=settings.arxiv.categories,
            progress=lambda done, total: progress("harvest", done, total),
        )
    except ArxivError as exc:
        tally.requests += exc.requests
        tally.retries += exc.retries
        raise
    tally.add_fetch(fetch)
    known = await asyncio.to_thread(store.known_versions, [p.arxiv_id for p in fetch.papers])
    fresh = [p for p in fetch.papers if p.arxiv_id not in known]
    revised = [p for p in fetch.papers if p.arxiv_id in known and p.version > known[p.arxiv_id]]
    deliverable = {p.arxiv_id for p in fresh}
    if settings.arxiv.announce_revisions:
        deliverable |= {p.arxiv_id for p in revised}
    # Only new and revised papers are matched: a paper stored before was matched then, against
    # every keyword tracked at the time, and a keyword added since is matched by its backfill.
    # (Re-matching the whole window re-wrote every stored match each day.)
    started = time.perf_counter()
    matches = await asyncio.to_thread(match_papers, queries, [*fresh, *revised])
    logger.debug(
        "match.finished keywords=%d papers=%d seconds=%.2f",
        len(queries),
        len(fresh) + len(revised),
        time.perf_counter() - started,
    )
    if likes:
        started = time.perf_counter()
        likes = await asyncio.to_thread(
            partial(usable_likes, store, source, likes, now=now, warnings=tally.warnings)
        )
        models = await asyncio.to_thread(
            partial(
                like_models,
                store,
                likes,
                now=now,
                warnings=tally.warnings,
                incoming=fetch.papers,  # a first cycle's background: not stored yet
            )
        )
        selected = await asyncio.to_thread(select_like, models, [*fresh, *revised])
        for text, ids in selected.items():
            matches.setdefault(text, set()).update(ids)
        logger.info(
            "like.matched keywords=%d papers=%d selected=%d seconds=%.2f",
            len(models),
            len(fresh) + len(revised),
            sum(len(ids) for ids in selected.values()),
            time.perf_counter() - started,
        )
    committed = await asyncio.to_thread(
        partial(
            store.commit_harvest,
            papers=fetch.papers,
            matches=matches,
            deliverable=deliverable,
            now=now,
            watermark=end,
        )
    )
    tally.new_papers += committed.new_papers
    tally.new_matches += committed.new_matches


async def fetch_backfill(
    *, settings: Settings, source: PaperSource, query: Query
) -> tuple[list[Paper], int, int]:
    """A keyword's backfill from arXiv: (papers, requests, throttled).

    DailyArXiv's query (the phrase in title or abstract, latest by last update) restricted to
    the harvest's categories, one request per category group as the harvest splits them; the
    groups' answers are merged and the latest `backfill_limit` kept, each re-checked locally
    (query and categories) so a row never shows what the daily harvest would not have found.
    """
    terms = expand_categories(settings.arxiv.categories)
    limit = settings.arxiv.backfill_limit
    found: dict[str, Paper] = {}
    requests = throttled = 0
    for text in backfill_queries(
        to_arxiv(query),
        categories=settings.arxiv.categories,
        per_request=settings.arxiv.categories_per_request,
    ):
        try:
            fetch = await asyncio.to_thread(source.search, text, limit=limit)
        except ArxivError as exc:
            exc.requests += requests
            raise
        requests += fetch.requests
        throttled += fetch.throttled
        for paper in fetch.papers:
            held = found.get(paper.arxiv_id)
            if held is None or paper.version > held.version:
                found[paper.arxiv_id] = paper
    kept = [p for p in found.values() if query.matches(p) and in_categories(p, terms)]
    kept.sort(key=lambda p: (p.updated, p.arxiv_id), reverse=True)
    return kept[:limit], requests, throttled


def _window_index(store: PaperStore, start: datetime, queries: Sequence[Query]) -> PaperIndex:
    """An index, for `queries`, of the stored papers submitted since `start` that hold any of
    their words (the others cannot match them)."""
    folded = [fold_paper(text) for text in store.texts_submitted_since(start)]
    kept = {arxiv_id for query in queries for arxiv_id in narrow_papers(query, folded)}
    return PaperIndex(store.papers_by_id(kept), queries=queries)


async def backfill_keywords(
    *,
    settings: Settings,
    store: PaperStore,
    source: PaperSource,
    now: Callable[[], datetime] = utcnow,
    only: Collection[str] | None = None,
    progress: Progress = _no_progress,
    tally: _Tally | None = None,
    budget_seconds: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Give keywords that never had one their one-off backfill, oldest request first, for at
    most `budget_seconds` (default: arxiv.backfill_budget_seconds); returns how many got one.

    A backfill costs what it fetches, not the size of the database: the keyword is matched
    against the papers its backfill returned and the stored papers of the harvest window, so
    the README and `latest` show its history at once. The backfill's papers new to the store
    are matched against every keyword, like a harvest's, and stored as history: never
    delivered (subscribers get what is new from now on), never a day's new papers in the digest
    archive. A keyword whose backfill fails, or that the budget did not reach, stays due for
    the next cycle.
    """
    tally = tally if tally is not None else _Tally()
    budget = settings.arxiv.backfill_budget_seconds if budget_seconds is None else budget_seconds
    began = clock()
    due = await asyncio.to_thread(store.keywords_to_backfill)
    if only is not None:
        wanted = {text.casefold() for text in only}
        due = [text for text in due if text.casefold() in wanted]
    if not due:
        return 0
    done = 0
    for text in like_keywords(due):
        if await _backfill_like(settings=settings, store=store, text=text, now=now(), tally=tally):
            done += 1
    due = [text for text in due if not is_like_query(text)]
    if not due:
        return done
    all_queries = parse_keywords([k.query for k in await asyncio.to_thread(store.list_keywords)])
    due_queries: list[Query] = []
    for text in due:
        try:
            due_queries.append(parse_query(text))
        except QueryError as exc:
            tally.warnings.append(f"keyword {text!r} is invalid: {exc}")
    window_start = now() - timedelta(days=settings.arxiv.lookback_days)
    # One index for every due keyword over the window papers that hold any of their words:
    # tokenising is most of the cost, so each such paper is tokenised once, and the others not
    # at all (narrowing by folded substrings costs microseconds a paper).
    index = await asyncio.to_thread(_window_index, store, window_start, due_queries)
    failures = 0
    for position, query in enumerate(due_queries):
        if clock() - began >= budget:
            waiting = len(due_queries) - position
            logger.info("backfill.budget_spent seconds=%.0f waiting=%d", budget, waiting)
            tally.warnings.append(
                f"{waiting} keyword backfill(s) wait for the next cycle "
                f"(arxiv.backfill_budget_seconds = {budget:g} was spent)"
            )
            break
        try:
            papers, requests, throttled = await fetch_backfill(
                settings=settings, source=source, query=query
            )
        except ArxivError as exc:
            tally.requests += exc.requests
            logger.warning("backfill.failed keyword=%r error=%s", query.text, exc)
            tally.warnings.append(f"backfill of {query.text!r} failed: {exc}")
            failures += 1
            if failures >= 2:  # arXiv is failing, not this keyword: the rest wait
                tally.warnings.append(
                    f"{len(due_queries) - position - 1} keyword backfill(s) postponed to the "
                    "next cycle (arXiv failed)"
                )
                break
            continue
        failures = 0
        tally.requests += requests
        tally.throttled += throttled
        tally.harvested += len(papers)
        known = await asyncio.to_thread(store.known_versions, [p.arxiv_id for p in papers])
        fresh = [p for p in papers if p.arxiv_id not in known]
        matches = await asyncio.to_thread(match_papers, all_queries, fresh)
        mine = matches.setdefault(query.text, set())
        mine |= index.match(query) | {p.arxiv_id for p in papers}
        committed = await asyncio.to_thread(
            partial(
                store.commit_harvest,
                papers=papers,
                matches=matches,
                deliverable=(),
                now=now(),
                backfilled=True,
            )
        )
        tally.new_papers += committed.new_papers
        tally.new_matches += committed.new_matches
        await asyncio.to_thread(store.mark_backfilled, query.text, now())
        done += 1
        progress("backfill", position + 1, len(due_queries))
        logger.info(
            "backfill.finished keyword=%r requests=%d fetched=%d window_matches=%d",
            query.text,
            requests,
            len(papers),
            len(mine) - len(papers),
        )
    return done


async def _backfill_like(
    *, settings: Settings, store: PaperStore, text: str, now: datetime, tally: _Tally
) -> bool:
    """A new `like:` keyword's backfill: its model (trained now) selects among the stored
    papers of the harvest window (at least the last 7 days), recorded as matches but never
    delivered, so `latest`, the README and the subscription's first day start from them. No
    arXiv request: its seeds were fetched when it was subscribed. True when it was done."""
    days = max(WEEK, timedelta(days=settings.arxiv.lookback_days))

    def run() -> int | None:
        seeds = parse_like(text).seeds
        if len(store.papers_by_id(seeds)) < len(seeds):
            return None  # the harvest fetches them (and said why it could not): wait for it
        week = store.papers_submitted_since(now - days)
        selected = select_like({text: like_model(store, text, now=now)}, week)
        store.commit_harvest(papers=(), matches=selected, deliverable=(), now=now, backfilled=True)
        store.mark_backfilled(text, now)
        return len(selected.get(text, ()))

    try:
        found = await asyncio.to_thread(run)
    except SimilarityError as exc:  # too few stored papers yet: tried again next cycle
        logger.warning("backfill.failed keyword=%r error=%s", text, exc)
        tally.warnings.append(f"backfill of {text!r} waits: {exc}")
        return False
    if found is None:
        logger.info("backfill.waiting keyword=%r reason=seeds-not-stored", text)
        return False
    logger.info("backfill.finished keyword=%r window_matches=%d", text, found)
    return True


async def _with_relevance_order(
    settings: Settings, store: PaperStore, batches: Sequence[Batch], *, now: datetime
) -> list[Batch]:
    """The batches with their broad keywords in relevance order, ranked once per keyword for
    every target (digest.relevance). Never stops delivery: on any failure the papers stay
    newest first."""
    threshold = settings.digest.relevance_from
    wanted = broad_keywords(batches, threshold)
    if not wanted:
        return list(batches)
    zone = ZoneInfo(settings.service.timezone)
    day_start = datetime.combine(now.astimezone(zone).date(), datetime.min.time(), tzinfo=zone)
    try:
        ranked = await asyncio.to_thread(
            partial(rank_keywords, store, wanted, before=day_start, now=now)
        )
    except Exception as exc:  # ordering is a nicety: a failure must never hold up delivery
        logger.exception("relevance.failed error=%s", crash_reason(exc))
        return list(batches)
    logger.info(
        "relevance.ranked keywords=%d papers=%d background=%d seconds=%.2f",
        len(ranked.orders),
        ranked.papers,
        ranked.background,
        ranked.seconds,
    )
    return [with_relevance(batch, ranked.orders, threshold) for batch in batches]


class DeliveryHalted(StoreError):
    """Delivery stopped because an outcome could not be recorded; nothing more was sent."""


StopReason = Callable[[], str | None]  # why delivery must stop now (None: go on)


def _never_stop() -> str | None:
    """The default: delivery goes on until everything owed was sent."""
    return None


async def _send_recorded(
    channel: Channel,
    batch: Batch,
    *,
    record: Callable[[Sequence[Outcome]], Awaitable[None]],
    stop_reason: StopReason,
) -> None:
    """Deliver one target's batch, recording each message's outcomes before the next message.

    A channel that raises, hangs past MESSAGE_TIMEOUT or forgets a delivery gets RETRY for
    what it did not answer (one broken adapter never stops the others). When `stop_reason`
    gives a reason, the post ends after the message in flight: the generator is closed, so
    nothing more is sent, and the deliveries not yet sent stay pending with no attempt
    counted. A failure to record (DeliveryHalted) propagates: nothing more may be sent.
    """
    remaining = {(d.subscription_id, d.paper.arxiv_id): d for d in batch.deliveries}
    messages = channel.send(batch)
    try:
        while True:  # to the generator's end, so the channel finishes (and logs) its post
            try:
                async with asyncio.timeout(MESSAGE_TIMEOUT):
                    answered = await anext(messages)
            except StopAsyncIteration:
                break
            except Exception as exc:  # the guard: an adapter bug or hang fails this target only
                logger.exception("deliver.crashed target=%s", batch.target.kind)
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                await record(for_deliveries(remaining.values(), OutcomeKind.RETRY, reason))
                return
            outcomes = [o for o in answered if remaining.pop((o.subscription_id, o.arxiv_id), None)]
            await record(outcomes)  # right after the platform answered this message
            if stop_reason() is not None:
                return
    finally:
        if isinstance(messages, AsyncGenerator):
            await messages.aclose()  # a generator stopped early sends nothing more
    if remaining:  # a channel that forgets a paper must not lose it: try again next cycle
        await record(
            for_deliveries(remaining.values(), OutcomeKind.RETRY, "channel gave no outcome")
        )


async def deliver(
    *,
    settings: Settings,
    store: PaperStore,
    channels: ChannelRegistry,
    now: datetime,
    tally: _Tally,
    progress: Progress = _no_progress,
    stop_reason: StopReason = _never_stop,
) -> str | None:
    """Send every due outbox batch, recording each message's outcomes as the platform answers.

    Nothing is sent that cannot be recorded: the database must take a write before the first
    send (StoreError otherwise), and the first outcome that cannot be recorded stops every
    target after its message in flight (DeliveryHalted). `stop_reason` is asked before each
    message; once it gives a reason (a stop was requested, the cycle lease may be lost), each
    target stops after its message in flight and that reason is returned. What was not sent
    stays pending for the next cycle.
    """
    batches = await asyncio.to_thread(lambda: store.pending_batches(now=now, kinds=set(channels)))
    if not batches:
        return None
    await asyncio.to_thread(store.check_writable)
    batches = await _with_relevance_order(settings, store, batches, now=now)
    limits = {kind: asyncio.Semaphore(DELIVERY_CONCURRENCY) for kind in channels}
    finished = 0
    halted: str | None = None

    def must_stop() -> str | None:
        return halted or stop_reason()

    async def one(batch: Batch) -> None:
        nonlocal finished, halted
        async with limits[batch.target.kind]:
            if must_stop() is not None:
                return  # not started: its deliveries stay pending, no attempt counted
            batch = await asyncio.to_thread(with_stored_texts, store, settings, batch)
            started = time.perf_counter()
            counts = OutcomeCounts()

            async def record(outcomes: Sequence[Outcome]) -> None:
                nonlocal counts, halted
                if not outcomes:
                    return
                try:
                    done = await asyncio.to_thread(store.record_outcomes, outcomes, now=now)
                except DailyPapersError as exc:
                    halted = halted or f"cannot record deliveries, stopped sending: {exc}"
                    raise DeliveryHalted(halted) from exc
                counts = counts + done
                tally.note_outcomes(batch.target.kind, outcomes)

            try:
                await _send_recorded(
                    channels[batch.target.kind], batch, record=record, stop_reason=must_stop
                )
            except DeliveryHalted:
                logger.error("deliver.halted target=%s error=%s", batch.target.kind, halted)
            finally:
                tally.add_counts(counts)
        finished += 1
        progress("deliver", finished, len(batches))
        logger.info(
            "deliver.target kind=%s papers=%d sent=%d retry=%d failed=%d disabled=%d seconds=%.1f",
            batch.target.kind,
            len(batch.deliveries),
            counts.sent,
            counts.retried,
            counts.failed,
            counts.disabled,
            time.perf_counter() - started,
        )

    await asyncio.gather(*(one(batch) for batch in batches))
    if halted is not None:
        raise DeliveryHalted(halted)
    return stop_reason()


async def render_snapshot(*, settings: Settings, store: PaperStore, now: datetime) -> bool:
    """Re-render the README snapshot (and its pages, when it is an index) and, with
    feeds.enabled, the keywords' Atom feeds; True when a file changed (and it was committed if
    asked).

    Only public keywords get a section (and a feed): an email reader's own query is never
    published, and chat channels' queries only while keywords.publish_chat_queries is on.
    """
    tracked = await asyncio.to_thread(store.list_keywords)
    chat = settings.keywords.publish_chat_queries
    keywords = [k.query for k in public_keywords(tracked, chat_queries=chat)]
    limit = settings.readme.max_papers
    feeds = settings.feeds.enabled
    today = now.astimezone(ZoneInfo(settings.readme.timezone)).date()
    latest = await asyncio.to_thread(
        store.latest_matches_by_keyword, max(limit, settings.feeds.entries) if feeds else limit
    )
    result = await asyncio.to_thread(
        partial(
            build_readme,
            keywords,
            {keyword: papers for keyword, (papers, _) in latest.items()},
            today=today,
            link="pdf" if settings.readme.link == "pdf" else "abs",
            max_papers=limit,
            tz=settings.readme.timezone,
            max_bytes=settings.readme.max_bytes,
            totals={keyword: total for keyword, (_, total) in latest.items()},
            feeds=feeds,
        )
    )
    path = settings.readme_path
    changed = await asyncio.to_thread(write_snapshot, path, result)
    if feeds:
        sections = [(keyword, latest.get(keyword, ([], 0))[0]) for keyword in keywords]
        changed |= await asyncio.to_thread(partial(write_keyword_feeds, settings, sections))
    logger.info(
        "readme.rendered path=%s changed=%s layout=%s bytes=%d pages=%d",
        path,
        changed,
        result.layout,
        result.size,
        len(result.pages),
    )
    if changed and settings.readme.git_commit:
        outcome = await asyncio.to_thread(partial(commit_readme, path, today=today))
        logger.info("readme.git outcome=%s", outcome)
    return changed


def write_keyword_feeds(
    settings: Settings, sections: Sequence[tuple[str, Sequence[Paper]]]
) -> bool:
    """Build and write every published keyword's feed and the OPML, one at a time (blocking:
    run it in a thread); True when a file changed."""
    files = build_feeds(
        sections,
        entries=settings.feeds.entries,
        base_url=settings.feeds_base_url,
        home_url=settings.readme.public_url,
    )
    changed = write_feeds(settings.feeds_path, files)
    logger.info(
        "feeds.rendered path=%s changed=%s feeds=%d", settings.feeds_path, changed, len(sections)
    )
    return changed


def _announcement_date(moment: datetime) -> date:
    """The day in New York, where arXiv's announcement schedule is kept."""
    return moment.astimezone(ZoneInfo("America/New_York")).date()


def _is_announcement_day(moment: datetime) -> bool:
    """arXiv mails new submissions Monday to Friday (announced the evening before, ET)."""
    return _announcement_date(moment).weekday() < 5


async def _record_for_status(
    *, settings: Settings, store: PaperStore, tally: _Tally, now: datetime
) -> None:
    """Keep what `status` alerts on after this process is gone: a platform that refused our
    token while delivering (cleared once it takes a message again), and a README that could not
    be written (cleared once it is)."""
    for kind in sorted(tally.refused.keys() | tally.acknowledged):
        await asyncio.to_thread(
            partial(record_delivery_refusal, store, kind, tally.refused.get(kind), now=now)
        )
    if settings.readme.enabled:
        await asyncio.to_thread(
            partial(record_readme_failure, store, settings.readme_path, tally.readme_error, now=now)
        )


async def _check_alerts(
    *,
    settings: Settings,
    store: PaperStore,
    channels: ChannelRegistry,
    report: RunReport,
    refused: Mapping[str, str],
) -> list[str]:
    """Count failed cycles and empty announcement days in a row; alert loudly past the limits,
    and at once on what needs the operator: subscriptions disabled, a platform refusing our
    token, a README that could not be written."""
    alerts: list[str] = []
    failed = int(await asyncio.to_thread(store.get_state, STATE_FAILED_CYCLES) or 0)
    failed = 0 if report.ok else failed + 1
    await asyncio.to_thread(store.set_state, STATE_FAILED_CYCLES, str(failed))
    if failed >= settings.alerts.failed_cycles:
        alerts.append(f"{failed} daily cycles in a row have failed; last error: {report.error}")
    if report.ok and _is_announcement_day(report.started_at):
        # Counted per announcement day, not per run: several runs on one empty day are one day.
        day = _announcement_date(report.started_at).isoformat()
        zero = int(await asyncio.to_thread(store.get_state, STATE_ZERO_DAYS) or 0)
        last_day = await asyncio.to_thread(store.get_state, STATE_ZERO_LAST_DAY)
        counted = report.new_papers == 0 and day != last_day
        if report.new_papers:
            zero = 0
        elif counted:
            zero += 1
        await asyncio.to_thread(store.set_state, STATE_ZERO_DAYS, str(zero))
        await asyncio.to_thread(store.set_state, STATE_ZERO_LAST_DAY, day)
        if counted and zero >= settings.alerts.zero_paper_days:
            alerts.append(
                f"arXiv returned zero new papers on {zero} announcement days in a row: "
                "check arxiv.categories, arxiv.api_url and the arXiv status page"
            )
    for kind, reason in sorted(refused.items()):
        alerts.append(
            f"{kind} refused our token while delivering ({reason}); its subscriptions are "
            "paused: fix the token, then `daily-papers deliveries retry --all`"
        )
    if report.disabled:
        alerts.append(
            f"{report.disabled} subscription(s) disabled by this cycle; `daily-papers status` "
            "names them, `daily-papers deliveries retry TARGET` resumes one once it is fixed"
        )
    loud = list(alerts)
    if report.readme_error:  # told to the admin; not a run warning, `run` reports it as its error
        loud.append(f"README snapshot not written: {report.readme_error}")
    for text in loud:
        logger.error("alert %s", text)
        await _notify_admin(settings=settings, channels=channels, text=text)
    return alerts


async def _notify_admin(*, settings: Settings, channels: ChannelRegistry, text: str) -> None:
    """Send an alert to the optional admin target; failures are logged, never raised."""
    if not settings.alerts.target:
        return
    try:
        target = Target.parse(settings.alerts.target)
        channel = channels.get(target.kind)
        if channel is None:
            logger.error("alert.undeliverable target_kind=%s reason=no-channel", target.kind)
            return
        delivered = await channel.notify(target, f"daily-papers: {text}")
    except Exception:  # an alert must never take the cycle down
        logger.exception("alert.failed")
        return
    if not delivered:
        logger.error("alert.undeliverable target_kind=%s", target.kind)


async def run_cycle(
    *,
    settings: Settings,
    store: PaperStore,
    source: PaperSource,
    channels: ChannelRegistry,
    now: Callable[[], datetime] = utcnow,
    progress: Progress = _no_progress,
    translator: Translator | None = None,
    summarizer: OpenAISummarizer | None = None,
    stop_reason: StopReason = _never_stop,
) -> RunReport:
    """Run one full daily cycle and return (and record) its report; never raises for arXiv.

    A harvest failure marks the cycle failed but still delivers what is owed from earlier
    cycles and re-renders the README, so one bad night at arXiv does not silence the channels.
    Any exception from the harvest, a bug included, is such a failure (logged with its
    traceback), so the cycle is recorded and counted by the failed-cycles alert.
    Once `stop_reason` gives a reason (SIGTERM, `serve` stopping, a lost cycle lease), the
    cycle ends at the next safe point (between arXiv pages, between keyword backfills, after
    each target's message in flight) and is recorded as stopped; the next cycle goes on.
    Callers hold the cycle lease (`digest.lease`): one cycle at a time per database.
    """
    started_at = now()
    tally = _Tally()
    error: str | None = None
    arxiv_failed = False
    await asyncio.to_thread(store.set_state, STATE_LAST_STARTED, started_at.isoformat())

    def stoppable(phase: str, done: int, total: int) -> None:
        """Progress that also ends a blocking phase (run in a thread) once a stop is due."""
        reason = stop_reason()
        if reason is not None:
            raise CycleStopped(reason)
        progress(phase, done, total)

    try:
        await sync_config_keywords(store, settings.keywords.queries)
        keywords = await asyncio.to_thread(store.list_keywords)
        queries = parse_keywords([k.query for k in keywords])
        await harvest(
            settings=settings,
            store=store,
            source=source,
            queries=queries,
            now=started_at,
            tally=tally,
            progress=stoppable,
            likes=like_keywords([k.query for k in keywords]),
        )
    except CycleStopped:
        pass  # recorded below as stopped
    except DailyPapersError as exc:
        error = str(exc)
        arxiv_failed = isinstance(exc, ArxivError)
        logger.error("harvest.failed error=%s", exc)
    except Exception as exc:  # a bug or an unforeseen answer still makes a recorded, failed cycle
        error = f"harvest crashed ({crash_reason(exc)}); the traceback is in the log"
        arxiv_failed = True  # the backfills would run the same code against the same source
        logger.exception("harvest.crashed error=%s", crash_reason(exc))
    stopped = stop_reason()
    if translator is not None and stopped is None:
        # Bounded by translation.deadline_seconds and never raising: a slow or broken provider
        # delays delivery by at most that; what is missing is translated next cycle.
        for step in await translate_for_readers(
            settings=settings, store=store, translator=translator, now=started_at
        ):
            if step.error:
                tally.warnings.append(f"translation ({step.language}): {step.error}")
    stopped = stop_reason()
    if summarizer is not None and stopped is None:
        # Bounded by summary.deadline_seconds and never raising, as translation is.
        step = await summarize_new_papers(
            settings=settings, store=store, summarizer=summarizer, now=started_at
        )
        if step.error:
            tally.warnings.append(f"summary: {step.error}")
    stopped = stop_reason()
    if stopped is None:
        try:
            stopped = await deliver(
                settings=settings,
                store=store,
                channels=channels,
                now=now(),
                tally=tally,
                progress=progress,
                stop_reason=stop_reason,
            )
        except DailyPapersError as exc:
            # The database cannot record outcomes: nothing (more) was sent.
            logger.error("deliver.failed error=%s", exc)
            if error is None:
                error = str(exc)
            else:
                tally.warnings.append(f"delivery: {exc}")
    # New keywords' backfills come after the day's deliveries, within a time budget.
    if stopped is None and arxiv_failed:
        # arXiv is down or refusing us: every backfill would wait out its own retries against
        # the same failure. New keywords stay due and are backfilled by the next cycle.
        due = await asyncio.to_thread(store.keywords_to_backfill)
        if due:
            tally.warnings.append(
                f"{len(due)} keyword backfill(s) postponed to the next cycle (arXiv failed)"
            )
    elif stopped is None:
        try:
            await backfill_keywords(
                settings=settings,
                store=store,
                source=source,
                now=now,
                progress=stoppable,
                tally=tally,
            )
        except CycleStopped:
            pass
        except DailyPapersError as exc:
            tally.warnings.append(f"backfill: {exc}")
    stopped = stopped or stop_reason()
    if settings.readme.enabled and stopped is None:
        try:
            await render_snapshot(settings=settings, store=store, now=started_at)
        except DailyPapersError as exc:
            tally.readme_error = str(exc)  # an alert: reported by _check_alerts and `status`
            logger.error("readme.failed error=%s", exc)
    if stopped is None:
        try:
            await refresh_archive(settings=settings, store=store, now=started_at)
        except DailyPapersError as exc:
            tally.warnings.append(f"archive: {exc}")
            logger.error("archive.failed error=%s", exc)
    if stopped is not None and error is None:
        error = f"stopped before it finished ({stopped}); what was not sent stays pending"
    report = RunReport(
        started_at=started_at,
        finished_at=now(),
        ok=error is None,
        requests=tally.requests,
        throttled=tally.throttled,
        harvested=tally.harvested,
        new_papers=tally.new_papers,
        new_matches=tally.new_matches,
        sent=tally.sent,
        failed=tally.failed,
        disabled=tally.disabled,
        error=error,
        warnings=tuple(tally.warnings),
        retries=tally.retries,
        deferred=tally.deferred,
        next_retry_at=tally.next_retry,
        readme_error=tally.readme_error,
    )
    if stopped is None:
        # A stopped cycle says nothing about arXiv or the channels: it counts toward no alert.
        alerts = await _check_alerts(
            settings=settings, store=store, channels=channels, report=report, refused=tally.refused
        )
        if alerts:
            report = replace(report, warnings=(*report.warnings, *alerts))
        await _record_for_status(settings=settings, store=store, tally=tally, now=started_at)
    await asyncio.to_thread(store.record_run, report)
    if report.ok:
        await asyncio.to_thread(store.set_state, STATE_LAST_SUCCESS, report.started_at.isoformat())
    (logger.info if report.ok else logger.error)(report.summary())
    return report
