"""One daily cycle: harvest -> match -> store -> backfill -> deliver -> README, and its report.

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
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Protocol
from zoneinfo import ZoneInfo

from digest.archive import refresh_archive
from digest.arxiv_source import Fetch, PaperSource
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
    StoreError,
    crash_reason,
)
from digest.query import Query, match_papers, parse_query, to_arxiv
from digest.readme import build_readme, commit_readme, write_readme
from digest.store import OutcomeCounts, PaperStore
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
STATE_ZERO_DAYS = "alerts.zero_paper_days"
STATE_ZERO_LAST_DAY = "alerts.zero_paper_days.last_day"
STATE_FAILED_CYCLES = "alerts.failed_cycles"
STATE_LAST_SUCCESS = "cycle.last_success"
STATE_LAST_STARTED = "cycle.last_started"  # a scheduled slot another replica ran is not run again


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
    throttled: int = 0
    harvested: int = 0
    new_papers: int = 0
    new_matches: int = 0
    sent: int = 0
    failed: int = 0
    disabled: int = 0
    warnings: list[str] = field(default_factory=list)

    def add_fetch(self, fetch: Fetch) -> None:
        """Count one arXiv fetch."""
        self.requests += fetch.requests
        self.throttled += fetch.throttled
        self.harvested += len(fetch.papers)


def parse_keywords(queries: Sequence[str]) -> list[Query]:
    """Parse tracked keywords; a keyword that no longer parses is skipped with a warning."""
    parsed = []
    for text in queries:
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
        query = parse_query(text)  # config keywords were validated at load; re-check anyway
        if await asyncio.to_thread(store.add_keyword, query.text, from_config=True):
            added.append(query.text)
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
) -> None:
    """Read the daily window from arXiv, match every keyword locally and commit it all at once.

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
        raise
    tally.add_fetch(fetch)
    await _commit(
        settings=settings,
        store=store,
        papers=fetch.papers,
        queries=queries,
        now=now,
        tally=tally,
        deliver=True,
        watermark=end,
    )


async def _commit(
    *,
    settings: Settings,
    store: PaperStore,
    papers: Sequence[Paper],
    queries: Sequence[Query],
    now: datetime,
    tally: _Tally,
    deliver: bool,
    watermark: datetime | None = None,
) -> None:
    """Diff `papers` against the store, match them, and commit papers+matches+outbox at once."""
    known = await asyncio.to_thread(store.known_versions, [p.arxiv_id for p in papers])
    fresh = [p.arxiv_id for p in papers if p.arxiv_id not in known]
    revised = [p.arxiv_id for p in papers if p.arxiv_id in known and p.version > known[p.arxiv_id]]
    deliverable: Collection[str] = ()
    if deliver:
        deliverable = set(fresh) | (set(revised) if settings.arxiv.announce_revisions else set())
    started = time.perf_counter()
    matches = await asyncio.to_thread(match_papers, queries, papers)
    logger.debug(
        "match.finished keywords=%d papers=%d seconds=%.2f",
        len(queries),
        len(papers),
        time.perf_counter() - started,
    )
    committed = await asyncio.to_thread(
        lambda: store.commit_harvest(
            papers=papers,
            matches=matches,
            deliverable=deliverable,
            now=now,
            watermark=watermark,
        )
    )
    tally.new_papers += committed.new_papers
    tally.new_matches += committed.new_matches


async def backfill_keywords(
    *,
    settings: Settings,
    store: PaperStore,
    source: PaperSource,
    now: Callable[[], datetime] = utcnow,
    only: Collection[str] | None = None,
    progress: Progress = _no_progress,
    tally: _Tally | None = None,
) -> int:
    """Give each keyword that never had one its one-off backfill; returns how many got one.

    DailyArXiv's own query (the phrase in title or abstract, latest by last update, N papers),
    re-checked with the local matcher; then every stored paper is matched against the keyword
    so the README and `latest` show its history at once. Backfilled papers are never delivered:
    subscribers get what is new from now on. A keyword whose backfill fails stays due.
    """
    tally = tally if tally is not None else _Tally()
    due = await asyncio.to_thread(store.keywords_to_backfill)
    if only is not None:
        wanted = {text.casefold() for text in only}
        due = [text for text in due if text.casefold() in wanted]
    all_queries = parse_keywords([k.query for k in await asyncio.to_thread(store.list_keywords)])
    done = 0
    for index, text in enumerate(due):
        try:
            query = parse_query(text)
        except QueryError as exc:
            tally.warnings.append(f"keyword {text!r} is invalid: {exc}")
            continue
        try:
            fetch = await asyncio.to_thread(
                source.search, to_arxiv(query), limit=settings.arxiv.backfill_limit
            )
        except ArxivError as exc:
            tally.requests += exc.requests
            logger.warning("backfill.failed keyword=%r error=%s", text, exc)
            tally.warnings.append(f"backfill of {text!r} failed: {exc}")
            continue
        tally.add_fetch(fetch)
        papers = [p for p in fetch.papers if query.matches(p)]
        await _commit(
            settings=settings,
            store=store,
            papers=papers,
            queries=all_queries or [query],
            now=now(),
            tally=tally,
            deliver=False,
        )
        stored = await asyncio.to_thread(lambda: list(store.iter_papers()))
        local = await asyncio.to_thread(match_papers, [query], stored)
        await asyncio.to_thread(
            partial(store.commit_harvest, papers=(), matches=local, deliverable=(), now=now())
        )
        await asyncio.to_thread(store.mark_backfilled, text, now())
        done += 1
        progress("backfill", index + 1, len(due))
        logger.info(
            "backfill.finished keyword=%r fetched=%d matched=%d",
            text,
            len(fetch.papers),
            len(papers),
        )
    return done


async def _with_translations(store: PaperStore, settings: Settings, batch: Batch) -> Batch:
    """Attach the stored translations the batch's target wants (never waits for a provider)."""
    language = batch.options.get("language") or (
        settings.translation.language if batch.target.kind == "email" else ""
    )
    if not language or language == "off":
        return batch
    ids = [p.arxiv_id for p in batch.papers]
    found = await asyncio.to_thread(store.get_translations, ids, language)
    return replace(batch, language=language, translations=found)


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
            batch = await _with_translations(store, settings, batch)
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

            try:
                await _send_recorded(
                    channels[batch.target.kind], batch, record=record, stop_reason=must_stop
                )
            except DeliveryHalted:
                logger.error("deliver.halted target=%s error=%s", batch.target.kind, halted)
            finally:
                tally.sent += counts.sent
                tally.failed += counts.failed + counts.retried
                tally.disabled += counts.disabled
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
    """Re-render the README snapshot; True when the file changed (and was committed if asked).

    Only public keywords get a section: an email reader's own query is never published, and
    chat channels' queries only while keywords.publish_chat_queries is on.
    """
    tracked = await asyncio.to_thread(store.list_keywords)
    chat = settings.keywords.publish_chat_queries
    keywords = [k.query for k in public_keywords(tracked, chat_queries=chat)]
    limit = settings.readme.max_papers
    today = now.astimezone(ZoneInfo(settings.readme.timezone)).date()
    latest = {text: await asyncio.to_thread(store.latest_matches, text, limit) for text in keywords}
    result = build_readme(
        keywords,
        latest,
        today=today,
        link="pdf" if settings.readme.link == "pdf" else "abs",
        max_papers=limit,
        tz=settings.readme.timezone,
        max_bytes=settings.readme.max_bytes,
    )
    path = settings.readme_path
    changed = await asyncio.to_thread(write_readme, path, result.text)
    logger.info("readme.rendered path=%s changed=%s bytes=%d", path, changed, result.size)
    if changed and settings.readme.git_commit:
        outcome = await asyncio.to_thread(partial(commit_readme, path, today=today))
        logger.info("readme.git outcome=%s", outcome)
    return changed


def _announcement_date(moment: datetime) -> date:
    """The day in New York, where arXiv's announcement schedule is kept."""
    return moment.astimezone(ZoneInfo("America/New_York")).date()


def _is_announcement_day(moment: datetime) -> bool:
    """arXiv mails new submissions Monday to Friday (announced the evening before, ET)."""
    return _announcement_date(moment).weekday() < 5


async def _check_alerts(
    *, settings: Settings, store: PaperStore, channels: ChannelRegistry, report: RunReport
) -> list[str]:
    """Count failed cycles and empty announcement days in a row; alert loudly past the limits."""
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
    for text in alerts:
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
    if settings.readme.enabled and stopped is None:
        try:
            await render_snapshot(settings=settings, store=store, now=started_at)
        except DailyPapersError as exc:
            tally.warnings.append(f"readme: {exc}")
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
    )
    if stopped is None:
        # A stopped cycle says nothing about arXiv or the channels: it counts toward no alert.
        alerts = await _check_alerts(
            settings=settings, store=store, channels=channels, report=report
        )
        if alerts:
            report = replace(report, warnings=(*report.warnings, *alerts))
    await asyncio.to_thread(store.record_run, report)
    if report.ok:
        await asyncio.to_thread(store.set_state, STATE_LAST_SUCCESS, report.started_at.isoformat())
    (logger.info if report.ok else logger.error)(report.summary())
    return report
