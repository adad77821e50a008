"""The daily cycle end to end: the arXiv stand-in, a real SQLite file, the README on disk."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from digest.arxiv_source import ArxivSource, Fetch
from digest.config import DEFAULT_CATEGORIES, Settings, settings_for_tests
from digest.cycle import harvest_window, render_snapshot, run_cycle
from digest.domain import Batch, Outcome, OutcomeKind, Paper, Target
from digest.monitoring import STATE_FAILED_CYCLES
from storage.sql_store import SqlStore
from tests.fakes.arxiv_server import ArxivStandIn, Mangled, ServerError, cut_inside
from tests.fakes.recording_channel import RecordingChannel
from tests.reference_papers import REFERENCE_README, load_reference_papers, load_reference_sections

REFERENCE_DAY = datetime(2025, 2, 11, 12, 0, tzinfo=UTC)
KEYWORDS = [section.keyword for section in load_reference_sections()]


class Clock:
    """A settable clock for the cycle."""

    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment


def make_settings(tmp_path: Path, server: ArxivStandIn, **sections: dict[str, Any]) -> Settings:
    """Test settings pointing at the stand-in and a SQLite file under tmp_path."""
    tables: dict[str, dict[str, Any]] = {
        "service": {"data_dir": str(tmp_path)},
        "arxiv": {"api_url": server.url, "categories": ["cs.CV", "cs.LG"], "retries": 1},
        "keywords": {"queries": KEYWORDS},
        "readme": {"max_papers": 20},
        "delivery": {"retry_base_minutes": 0},
    }
    for name, table in sections.items():
        tables[name] = {**tables.get(name, {}), **table}
    return settings_for_tests(**tables)


@pytest.fixture
def server() -> Iterator[ArxivStandIn]:
    """The stand-in serving the reference README's papers."""
    with ArxivStandIn(load_reference_papers()) as stand_in:
        yield stand_in


async def cycle(settings: Settings, clock: Clock, channels: dict[str, Any] | None = None) -> Any:
    """Run one cycle with a fresh store and source, as `daily-papers run` does."""
    store = SqlStore.from_settings(settings)
    store.migrate()
    try:
        with ArxivSource.from_settings(settings) as source:
            return await run_cycle(
                settings=settings, store=store, source=source, channels=channels or {}, now=clock
            )
    finally:
        store.close()


def without_date(text: str) -> list[str]:
    """The README's lines but the `Last update` one."""
    return [line for line in text.splitlines(keepends=True) if not line.startswith("Last update")]


async def test_reference_keywords_reproduce_the_reference_readme(
    tmp_path: Path, server: ArxivStandIn
) -> None:
    """The four reference keywords against the stand-in write the reference README but the date."""
    settings = make_settings(tmp_path, server)
    report = await cycle(settings, Clock(REFERENCE_DAY))
    assert report.ok, report.error
    written = settings.readme_path.read_text(encoding="utf-8")
    reference = REFERENCE_README.read_text(encoding="utf-8")
    assert without_date(written) == without_date(reference)
    assert "Last update: 2025-02-11\n" in written


async def test_second_run_adds_nothing_and_writes_nothing(
    tmp_path: Path, server: ArxivStandIn
) -> None:
    """A rerun stores no new paper, delivers nothing and leaves the README file untouched."""
    settings = make_settings(tmp_path, server)
    slack = RecordingChannel(kind="slack")
    store = SqlStore.from_settings(settings)
    store.migrate()
    store.add_subscription(Target("slack", "C1"), "Video Understanding", now=REFERENCE_DAY)
    store.close()
    first = await cycle(settings, Clock(REFERENCE_DAY), {"slack": slack})
    assert first.ok
    assert first.new_papers > 0
    assert first.sent > 0
    mtime = settings.readme_path.stat().st_mtime_ns
    delivered = len(slack.sent_ids())
    second = await cycle(settings, Clock(REFERENCE_DAY + timedelta(hours=1)), {"slack": slack})
    assert second.ok
    assert (second.new_papers, second.new_matches, second.sent) == (0, 0, 0)
    assert len(slack.sent_ids()) == delivered
    assert settings.readme_path.stat().st_mtime_ns == mtime


async def test_subscriber_gets_only_new_matching_papers_once(
    tmp_path: Path, server: ArxivStandIn
) -> None:
    """Papers harvested in the window and matching the keyword reach the channel exactly once."""
    settings = make_settings(tmp_path, server)
    slack = RecordingChannel(kind="slack")
    target = Target("slack", "C1")
    store = SqlStore.from_settings(settings)
    store.migrate()
    store.add_subscription(target, "Video Understanding", now=REFERENCE_DAY)
    store.close()
    await cycle(settings, Clock(REFERENCE_DAY), {"slack": slack})
    window_start = REFERENCE_DAY - timedelta(days=settings.arxiv.lookback_days)
    section = next(s for s in load_reference_sections() if s.keyword == "Video Understanding")
    expected = {p.arxiv_id for p in section.papers if window_start <= p.published < REFERENCE_DAY}
    assert expected, "the fixture should have papers submitted inside the window"
    assert sorted(slack.sent_ids(target)) == sorted(expected)


async def test_requests_per_cycle_do_not_depend_on_keyword_count(
    tmp_path: Path, server: ArxivStandIn
) -> None:
    """With 1 keyword and with 500 keywords a daily cycle makes the same number of requests."""
    many = [f"topic number {n} of interest" for n in range(499)] + ["Video Understanding"]
    counts = []
    for name, queries in (("one", ["Video Understanding"]), ("many", many)):
        folder = tmp_path / name
        settings = make_settings(folder, server, keywords={"queries": queries})
        await cycle(settings, Clock(REFERENCE_DAY))  # first cycle also backfills each keyword
        server.clear_requests()
        report = await cycle(settings, Clock(REFERENCE_DAY + timedelta(days=1)))
        assert report.ok
        counts.append((report.requests, len(server.requests)))
    assert counts[0] == counts[1]
    assert counts[0][0] >= 1


async def test_failed_harvest_keeps_the_watermark_and_is_retried(
    tmp_path: Path, server: ArxivStandIn
) -> None:
    """arXiv failing every try fails the cycle, keeps the watermark, and the next run catches up."""
    settings = make_settings(tmp_path, server, keywords={"queries": []})
    server.always(ServerError(503))
    failed = await cycle(settings, Clock(REFERENCE_DAY))
    assert not failed.ok
    assert failed.error
    assert "503" in failed.error
    store = SqlStore.from_settings(settings)
    assert store.get_watermark() is None
    store.close()
    server.clear_rules()
    ok = await cycle(settings, Clock(REFERENCE_DAY + timedelta(hours=2)))
    assert ok.ok
    assert ok.new_papers > 0


async def test_arxiv_down_postpones_backfills_and_counts_the_failed_requests(
    tmp_path: Path, server: ArxivStandIn
) -> None:
    """When the harvest cannot reach arXiv, new keywords are not backfilled against the outage.

    Each backfill would wait out its own retries; they stay due and run on the next cycle.
    The report counts the requests that were made, and its error line stays short.
    """
    settings = make_settings(tmp_path, server, keywords={"queries": KEYWORDS[:2]})
    server.always(ServerError(503))
    failed = await cycle(settings, Clock(REFERENCE_DAY))
    assert not failed.ok
    attempts = settings.arxiv.retries + 1
    assert len(server.requests) == attempts  # the harvest's first page only, no backfill query
    assert failed.requests == attempts
    assert failed.retries == attempts - 1  # every request after the first repeated it
    assert any("2 keyword backfill(s) postponed" in w for w in failed.warnings)
    assert failed.error is not None
    assert len(failed.error) < 250, failed.error
    assert "search_query" not in failed.error
    server.clear_rules()
    server.clear_requests()
    ok = await cycle(settings, Clock(REFERENCE_DAY + timedelta(hours=2)))
    assert ok.ok
    backfills = [r for r in server.requests if "submittedDate" not in r.search_query]
    assert len(backfills) == 2


async def test_a_retried_arxiv_request_is_counted_as_a_retry(
    tmp_path: Path, server: ArxivStandIn
) -> None:
    """A 503 once, then the page: the cycle succeeds with one retry among its requests."""
    settings = make_settings(tmp_path, server, keywords={"queries": []})
    server.script(ServerError(503))
    report = await cycle(settings, Clock(REFERENCE_DAY))
    assert report.ok
    assert (report.requests, report.retries) == (len(server.requests), 1)
    assert report.requests >= 2


async def test_catch_up_after_missed_days_reaches_back_to_the_watermark(
    tmp_path: Path, server: ArxivStandIn
) -> None:
    """After ten days down, the harvest window starts where the last complete one ended."""
    settings = make_settings(tmp_path, server, keywords={"queries": []})
    await cycle(settings, Clock(REFERENCE_DAY))
    late = REFERENCE_DAY + timedelta(days=10)
    missed = Paper(
        arxiv_id="2502.99999",
        version=1,
        title="A paper submitted while the service was down",
        authors=("C. Author",),
        abstract="Submitted eight days before the late run, outside its look-back window.",
        published=REFERENCE_DAY + timedelta(days=2),
        updated=REFERENCE_DAY + timedelta(days=2),
        primary_category="cs.CV",
        categories=("cs.CV",),
    )
    server.add_papers([missed])
    server.clear_requests()
    report = await cycle(settings, Clock(late))
    assert report.ok
    assert report.new_papers == 1
    query = server.requests[0].search_query
    assert "submittedDate:[202502111200 TO " in query  # from the watermark, not late - 7 days


def test_harvest_window_is_lookback_or_watermark_whichever_is_older() -> None:
    """The window always covers the look-back, and reaches further back after downtime."""
    now = REFERENCE_DAY
    assert harvest_window(now=now, watermark=None, lookback_days=7) == (now - timedelta(7), now)
    recent = now - timedelta(days=1)
    assert harvest_window(now=now, watermark=recent, lookback_days=7)[0] == now - timedelta(7)
    old = now - timedelta(days=30)
    assert harvest_window(now=now, watermark=old, lookback_days=7)[0] == old


class Crash(BaseException):
    """Stands for the process dying (not an Exception: the cycle's guard must not catch it)."""


async def test_crash_between_send_and_record_resends_at_most_the_batch_in_flight(
    tmp_path: Path, server: ArxivStandIn
) -> None:
    """Killing the cycle after a send but before recording it re-sends only that batch, once."""
    settings = make_settings(tmp_path, server)
    targets = [Target("slack", "C1"), Target("slack", "C2")]
    store = SqlStore.from_settings(settings)
    store.migrate()
    for target in targets:
        store.add_subscription(target, "Video Understanding", now=REFERENCE_DAY)
    store.close()
    crashed: list[Batch] = []

    def crash_once(batch: Batch) -> None:
        if not crashed:
            crashed.append(batch)
            raise Crash

    flaky = RecordingChannel(kind="slack", after_send=crash_once)
    with pytest.raises(Crash):
        await cycle(settings, Clock(REFERENCE_DAY), {"slack": flaky})
    healthy = RecordingChannel(kind="slack")
    await cycle(settings, Clock(REFERENCE_DAY + timedelta(minutes=5)), {"slack": healthy})
    for target in targets:
        total = flaky.sent_ids(target) + healthy.sent_ids(target)
        assert set(healthy.sent_ids(target)) | set(flaky.sent_ids(target)) == set(total)
        assert len(set(total)) == len(healthy.sent_ids(target)) or target != crashed[0].target
        assert max(total.count(i) for i in set(total)) <= 2
    in_flight = crashed[0].target
    others = [t for t in targets if t != in_flight]
    for target in others:  # a target whose send was recorded is never sent again
        total = flaky.sent_ids(target) + healthy.sent_ids(target)
        assert len(total) == len(set(total))
    third = RecordingChannel(kind="slack")
    await cycle(settings, Clock(REFERENCE_DAY + timedelta(minutes=10)), {"slack": third})
    assert third.batches == []


async def test_permanent_error_disables_and_transient_error_retries(
    tmp_path: Path, server: ArxivStandIn
) -> None:
    """`PERMANENT` disables the subscription with its reason; `RETRY` is sent again next cycle."""
    settings = make_settings(tmp_path, server)
    gone, flaky = Target("slack", "GONE"), Target("discord", "123")
    store = SqlStore.from_settings(settings)
    store.migrate()
    store.add_subscription(gone, "Video Understanding", now=REFERENCE_DAY)
    store.add_subscription(flaky, "Video Understanding", now=REFERENCE_DAY)
    store.close()
    slack = RecordingChannel(kind="slack", answer=OutcomeKind.PERMANENT, error="channel_not_found")
    discord = RecordingChannel(kind="discord", answer=OutcomeKind.RETRY, error="HTTP 503")
    report = await cycle(settings, Clock(REFERENCE_DAY), {"slack": slack, "discord": discord})
    assert report.disabled == 1
    assert report.sent == 0
    store = SqlStore.from_settings(settings)
    [sub] = store.list_subscriptions(gone)
    assert not sub.active
    assert sub.disabled_reason == "channel_not_found"
    store.close()
    discord.answer = OutcomeKind.SENT
    again = await cycle(
        settings, Clock(REFERENCE_DAY + timedelta(hours=1)), {"slack": slack, "discord": discord}
    )
    assert again.sent == len(discord.batches[0].deliveries)
    assert len(slack.batches) == 1  # the disabled subscription is not tried again


async def test_a_crashing_channel_does_not_stop_the_others(
    tmp_path: Path, server: ArxivStandIn
) -> None:
    """An adapter that raises is retried next cycle; the other channels deliver meanwhile."""
    settings = make_settings(tmp_path, server)

    class Broken(RecordingChannel):
        async def send(self, batch: Batch) -> AsyncIterator[Sequence[Outcome]]:
            raise RuntimeError("adapter bug")
            yield []  # an async generator, as the Channel protocol asks

    store = SqlStore.from_settings(settings)
    store.migrate()
    store.add_subscription(Target("slack", "C1"), "Video Understanding", now=REFERENCE_DAY)
    store.add_subscription(Target("discord", "9"), "Video Understanding", now=REFERENCE_DAY)
    store.close()
    discord = RecordingChannel(kind="discord")
    report = await cycle(
        settings, Clock(REFERENCE_DAY), {"slack": Broken(kind="slack"), "discord": discord}
    )
    assert report.sent == len(discord.sent_ids()) > 0
    # the same papers, owed to the broken target: deferred to a later try, not failed for good
    assert report.deferred == report.sent
    assert report.failed == 0


async def test_a_revision_is_not_new_again_unless_configured(
    tmp_path: Path, server: ArxivStandIn
) -> None:
    """A v2 of a delivered paper updates the row but is delivered again only on request."""
    for announce in (False, True):
        folder = tmp_path / str(announce)
        settings = make_settings(folder, server, arxiv={"announce_revisions": announce})
        store = SqlStore.from_settings(settings)
        store.migrate()
        store.add_subscription(Target("slack", "C1"), "Video Understanding", now=REFERENCE_DAY)
        store.close()
        slack = RecordingChannel(kind="slack")
        await cycle(settings, Clock(REFERENCE_DAY), {"slack": slack})
        first = slack.batches[0].deliveries[0].paper
        server.add_papers(
            [replace(first, version=first.version + 1, updated=REFERENCE_DAY + timedelta(hours=3))]
        )
        slack.batches.clear()
        report = await cycle(settings, Clock(REFERENCE_DAY + timedelta(hours=6)), {"slack": slack})
        assert report.new_papers == 0
        assert slack.sent_ids() == ([first.arxiv_id] if announce else [])
        server.add_papers([first])  # restore the corpus for the next round


async def test_failed_cycles_in_a_row_alert_the_admin_target(
    tmp_path: Path, server: ArxivStandIn
) -> None:
    """Three failed cycles in a row are logged, recorded and sent to the admin target."""
    settings = make_settings(
        tmp_path, server, keywords={"queries": []}, alerts={"target": "slack:CADMIN"}
    )
    slack = RecordingChannel(kind="slack")
    server.always(ServerError(500))
    reports = [
        await cycle(settings, Clock(REFERENCE_DAY + timedelta(days=n)), {"slack": slack})
        for n in range(3)
    ]
    assert [r.ok for r in reports] == [False, False, False]
    assert len(slack.notices) == 1
    target, text = slack.notices[0]
    assert target == Target("slack", "CADMIN")
    assert "3 daily cycles in a row have failed" in text


async def test_cut_feed_fails_the_cycle_records_it_and_still_delivers_what_is_owed(
    tmp_path: Path, server: ArxivStandIn
) -> None:
    """arXiv answering a feed cut inside a date, every try: a recorded, counted, failed cycle."""
    settings = make_settings(tmp_path, server)
    target = Target("discord", "123")
    store = SqlStore.from_settings(settings)
    store.migrate()
    store.add_subscription(target, "Video Understanding", now=REFERENCE_DAY)
    store.close()
    discord = RecordingChannel(kind="discord", answer=OutcomeKind.RETRY, error="HTTP 503")
    first = await cycle(settings, Clock(REFERENCE_DAY), {"discord": discord})
    assert first.ok
    owed = sorted(discord.sent_ids(target))
    assert owed, "the first cycle should leave deliveries owed to the target"
    store = SqlStore.from_settings(settings)
    watermark = store.get_watermark()
    store.close()
    server.always(Mangled(cut_inside(b"<published>", keep=9)))
    server.clear_requests()
    discord.answer = OutcomeKind.SENT
    failed = await cycle(settings, Clock(REFERENCE_DAY + timedelta(hours=1)), {"discord": discord})
    assert not failed.ok
    assert failed.error is not None
    assert "malformed answer" in failed.error
    assert "Premature end of data in tag published" in failed.error
    assert len(server.requests) == settings.arxiv.retries + 1 == failed.requests
    assert failed.sent == len(owed)
    assert sorted(discord.sent_ids(target)[len(owed) :]) == owed
    store = SqlStore.from_settings(settings)
    try:
        latest = store.recent_runs(1)[0]
        assert (latest.ok, latest.error) == (False, failed.error)
        assert store.get_state(STATE_FAILED_CYCLES) == "1"
        assert store.get_watermark() == watermark
    finally:
        store.close()


class _CrashingSource:
    """A PaperSource with a bug: its harvest raises what nobody planned for."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.searched = 0

    def harvest(self, **_: object) -> Fetch:
        """Raise the planted error."""
        raise self.error

    def search(
        self, query: str, *, limit: int, progress: Callable[[int, int], None] | None = None
    ) -> Fetch:
        """Count calls: a crashed harvest must postpone the backfills."""
        self.searched += 1
        return Fetch((), 0, 0, 0)


@pytest.mark.parametrize(
    "error", [ValueError("Invalid isoformat string: '2025-02-0'"), KeyError("entry\nid")]
)
async def test_any_exception_from_the_harvest_is_a_recorded_failed_cycle(
    tmp_path: Path, server: ArxivStandIn, caplog: pytest.LogCaptureFixture, error: Exception
) -> None:
    """A harvest bug does not escape run_cycle: one-line error, traceback logged, cycle counted."""
    settings = make_settings(
        tmp_path, server, keywords={"queries": KEYWORDS[:1]}, alerts={"failed_cycles": 1}
    )
    source = _CrashingSource(error)
    store = SqlStore.from_settings(settings)
    store.migrate()
    caplog.set_level(logging.ERROR, logger="digest.cycle")
    try:
        report = await run_cycle(
            settings=settings, store=store, source=source, channels={}, now=Clock(REFERENCE_DAY)
        )
        assert not report.ok
        assert report.error is not None
        assert report.error.startswith(f"harvest crashed ({type(error).__name__}: ")
        assert "\n" not in report.error
        assert store.recent_runs(1)[0].error == report.error
        assert store.get_state(STATE_FAILED_CYCLES) == "1"
    finally:
        store.close()
    assert source.searched == 0
    assert any("1 daily cycles in a row have failed" in w for w in report.warnings)
    (crash,) = [r for r in caplog.records if r.getMessage().startswith("harvest.crashed")]
    assert crash.levelno == logging.ERROR
    assert crash.exc_info is not None
    assert crash.exc_info[1] is error


async def test_zero_new_papers_on_two_announcement_days_alerts(
    tmp_path: Path, server: ArxivStandIn
) -> None:
    """Two weekday cycles in a row with nothing new raise the zero-papers alert."""
    settings = make_settings(
        tmp_path, server, keywords={"queries": []}, alerts={"target": "slack:CADMIN"}
    )
    slack = RecordingChannel(kind="slack")
    server.set_papers([])
    monday = datetime(2025, 2, 10, 22, 0, tzinfo=UTC)  # evening in New York, a weekday there
    await cycle(settings, Clock(monday), {"slack": slack})
    assert slack.notices == []
    await cycle(settings, Clock(monday + timedelta(days=1)), {"slack": slack})
    assert len(slack.notices) == 1
    assert "zero new papers" in slack.notices[0][1]


async def test_zero_paper_alert_counts_days_not_runs(tmp_path: Path, server: ArxivStandIn) -> None:
    """Three empty runs on one announcement day are one empty day: no alert until the next day."""
    settings = make_settings(
        tmp_path, server, keywords={"queries": []}, alerts={"target": "slack:CADMIN"}
    )
    slack = RecordingChannel(kind="slack")
    server.set_papers([])
    monday = datetime(2025, 2, 10, 14, 0, tzinfo=UTC)
    for hours in (0, 3, 6):
        await cycle(settings, Clock(monday + timedelta(hours=hours)), {"slack": slack})
    assert slack.notices == []
    await cycle(settings, Clock(monday + timedelta(days=1)), {"slack": slack})
    assert len(slack.notices) == 1
    await cycle(settings, Clock(monday + timedelta(days=1, hours=2)), {"slack": slack})
    assert len(slack.notices) == 1  # the same day is not reported twice


def test_harvest_queries_group_long_category_lists(tmp_path: Path, server: ArxivStandIn) -> None:
    """Many categories are split into a few OR-groups, each with the submittedDate filter."""
    settings = make_settings(
        tmp_path, server, arxiv={"categories": DEFAULT_CATEGORIES, "categories_per_request": 20}
    )
    with ArxivSource.from_settings(settings) as source:
        source.harvest(
            start=REFERENCE_DAY - timedelta(days=7),
            end=REFERENCE_DAY,
            categories=settings.arxiv.categories,
        )
    assert len(DEFAULT_CATEGORIES) == 46
    assert len(server.requests) == 3  # 46 categories in groups of at most 20
    for request in server.requests:
        assert "submittedDate:[" in request.search_query


class _StalledChannel(RecordingChannel):
    """A platform that makes every send wait (rate limits) until the test lets it go."""

    def __init__(self, kind: str, release: asyncio.Event) -> None:
        super().__init__(kind=kind)
        self.release = release

    async def send(self, batch: Batch) -> AsyncIterator[Sequence[Outcome]]:
        """Wait for the release, then answer as RecordingChannel does."""
        await self.release.wait()
        async for outcomes in super().send(batch):
            yield outcomes


async def test_a_stalled_platform_does_not_hold_up_other_kinds(
    tmp_path: Path, server: ArxivStandIn
) -> None:
    """Forty Discord channels stuck behind rate limits do not keep Slack's posts waiting."""
    settings = make_settings(tmp_path, server)
    store = SqlStore.from_settings(settings)
    store.migrate()
    for n in range(40):
        store.add_subscription(
            Target("discord", str(1000 + n)), "Video Understanding", now=REFERENCE_DAY
        )
    store.add_subscription(Target("slack", "C1"), "Video Understanding", now=REFERENCE_DAY)
    store.close()
    release = asyncio.Event()
    slack_posted = asyncio.Event()
    slack = RecordingChannel(kind="slack", after_send=lambda _batch: slack_posted.set())
    discord = _StalledChannel("discord", release)

    async def let_discord_go_once_slack_posted() -> None:
        try:
            async with asyncio.timeout(20):
                await slack_posted.wait()
        finally:
            release.set()

    watcher = asyncio.create_task(let_discord_go_once_slack_posted())
    report = await cycle(settings, Clock(REFERENCE_DAY), {"slack": slack, "discord": discord})
    await watcher  # raises TimeoutError when Slack only got its turn after Discord's
    assert report.ok
    assert slack.sent_ids()
    assert len(discord.batches) == 40


@pytest.mark.parametrize("publish", [True, False])
async def test_readme_lists_chat_queries_unless_turned_off_and_never_email_readers_own(
    tmp_path: Path, server: ArxivStandIn, publish: bool
) -> None:
    """keywords.publish_chat_queries: a channel's query in the README or not; a reader's never."""
    settings = make_settings(
        tmp_path, server, keywords={"queries": [], "publish_chat_queries": publish}
    )
    store = SqlStore.from_settings(settings)
    store.migrate()
    try:
        store.add_keyword("operator topic")
        store.add_subscription(Target("slack", "C1"), "channel topic", now=REFERENCE_DAY)
        store.add_subscription(Target("email", "a@lab.org"), "reader topic", now=REFERENCE_DAY)
        await render_snapshot(settings=settings, store=store, now=REFERENCE_DAY)
    finally:
        store.close()
    headings = [
        line
        for line in settings.readme_path.read_text(encoding="utf-8").splitlines()
        if line.startswith("## ")
    ]
    assert headings == ["## operator topic", *(["## channel topic"] if publish else [])]
