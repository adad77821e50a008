"""The composition root: builds the store, the arXiv source and the channels from Settings, runs
one cycle (`daily-papers run`) or the long-running service (`daily-papers serve`).

This is the one place that knows every adapter. Adding a delivery channel = one module that
implements `digest.channels.Channel` and declares its `SPECS`, plus one line in
`CHANNEL_MODULES` below.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from digest import __version__
from digest.arxiv_source import ArxivSource
from digest.channels import Channel, ChannelSpec
from digest.config import Settings
from digest.cycle import (
    Progress,
    _no_progress,
    backfill_keywords,
    run_cycle,
    utcnow,
)
from digest.domain import LeaseHolder, RunReport
from digest.errors import ConfigError, CycleStopped
from digest.lease import Lease, hold_lease
from digest.monitoring import STATE_LAST_STARTED, STATE_LAST_SUCCESS
from digest.schedule import latest_fire_time
from digest.store import PaperStore
from digest.summary import OpenAISummarizer, build_summarizer
from digest.translate import Translator, build_translator
from storage.sql_store import SqlStore

if TYPE_CHECKING:  # imported by `serve` itself: other commands need no web server
    from digest.metrics import Metrics
    from digest.web import ServerClock

logger = logging.getLogger(__name__)

JOB_ID = "daily-cycle"
LEASE_POLL = 2.0  # seconds between looks at a lease another process holds
LEASE_POLL_TEST = 0.05  # service.test_mode


def open_store(settings: Settings) -> SqlStore:
    """Open (and migrate) the database named by the settings."""
    store = SqlStore.from_settings(settings)
    store.migrate()
    return store


def build_source(settings: Settings) -> ArxivSource:
    """The arXiv client, polite per the settings."""
    return ArxivSource.from_settings(settings)


# The delivery channels, one line each: a channel module declares what it is (its `SPECS`:
# kind, settings, secrets, target validation, factory; see digest.channels.ChannelSpec), and
# nothing else in the service names it by hand. Imported on first use, so a command that
# needs no channel pays nothing for the platforms' libraries.
CHANNEL_MODULES: tuple[str, ...] = (
    "bot.slack_channel",
    "bot.discord_channel",
    "digest.mail.channel",
    "bot.apprise_channel",
)


@functools.cache
def channel_specs() -> dict[str, ChannelSpec]:
    """Every registered delivery channel's spec, by target kind, in registration order."""
    specs: dict[str, ChannelSpec] = {}
    for name in CHANNEL_MODULES:
        for spec in importlib.import_module(name).SPECS:
            specs[spec.kind] = spec
    return specs


def channel_settings() -> dict[str, type]:
    """The settings sections of registered channels outside the core config, by name."""
    return {
        spec.settings_section: spec.settings
        for spec in channel_specs().values()
        if spec.settings_section is not None and spec.settings is not None
    }


def unconfigured_channels(settings: Settings) -> dict[str, str]:
    """Channel kinds that cannot deliver until a secret is set: kind -> the variable to set."""
    missing: dict[str, str] = {}
    for spec in channel_specs().values():
        for variable in spec.secrets:
            if not settings.secrets.is_set(variable):
                missing[spec.kind] = variable
                break
    return missing


async def build_channels(
    settings: Settings, *, store: PaperStore, stack: AsyncExitStack
) -> dict[str, Channel]:
    """Every configured delivery channel, by target kind; unconfigured ones are left out.

    Channels that hold connections are entered on `stack` and closed with it. An
    `alerts.target` of a kind no channel serves is a ConfigError here, at start.
    """
    if settings.alerts.target:
        kind = settings.alerts.target.partition(":")[0].strip().lower()
        if kind not in channel_specs():
            raise ConfigError(
                f"alerts.target = {settings.alerts.target!r}: no channel delivers to {kind!r}; "
                "the kinds are " + ", ".join(f"{k}:" for k in channel_specs())
            )
    channels: dict[str, Channel] = {}
    for spec in channel_specs().values():
        channel = await spec.factory(settings, store, stack)
        if channel is not None:
            channels[channel.kind] = channel
    logger.info("channels.ready kinds=%s", ",".join(sorted(channels)) or "none")
    return channels


@dataclass
class CycleRunner:
    """Runs cycles one at a time: in this process (a lock shared by the scheduler, the start-up
    catch-up, manual triggers and backfills) and across processes and machines (the cycle
    lease in the database, `digest.lease`)."""

    settings: Settings
    store: PaperStore
    source: ArxivSource
    channels: dict[str, Channel]
    progress: Progress = _no_progress
    now: Callable[[], datetime] = utcnow
    translator: Translator | None = None  # None: translation is not configured
    summarizer: OpenAISummarizer | None = None  # None: [summary] is off
    on_busy: Callable[[LeaseHolder], None] | None = None  # hears who holds the lease we wait for
    on_report: Callable[[RunReport], None] | None = None  # hears each cycle run here (metrics)

    def __post_init__(self) -> None:
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._backfills: set[asyncio.Task[int]] = set()

    def request_stop(self) -> None:
        """Stop the cycle in flight at its next safe point; start no other."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._stopping.is_set()

    async def idle(self) -> None:
        """Wait until no cycle or backfill of this process runs."""
        async with self._lock:
            pass

    @contextlib.asynccontextmanager
    async def _lease(self, *, wait: bool) -> AsyncIterator[Lease]:
        """The cycle lease, waiting for another holder unless `wait` is False."""
        async with hold_lease(
            self.store,
            ttl=self.settings.service.lease_seconds,
            wait=wait,
            poll=LEASE_POLL_TEST if self.settings.service.test_mode else LEASE_POLL,
            on_busy=self.on_busy,
            stop=self._stopping,
        ) as lease:
            yield lease

    def _stop_reason(self, lease: Lease) -> Callable[[], str | None]:
        def reason() -> str | None:
            if self._stopping.is_set():
                return "stop requested"
            if not lease.held():
                return "the cycle lease could not be renewed; another process may take over"
            return None

        return reason

    async def run(
        self, *, wait: bool = True, unless_started_since: datetime | None = None
    ) -> RunReport | None:
        """Run one full cycle holding the cycle lease; None when it did not run.

        With `wait` (the default) a cycle running elsewhere is waited for; without, LeaseBusy.
        `unless_started_since`: a scheduled slot; once the lease is ours, the cycle is skipped
        when one started at or after it (another replica ran this slot). A stop requested
        before the cycle started also returns None.
        """
        async with self._lock:
            if self.stopping:
                return None
            try:
                async with self._lease(wait=wait) as lease:
                    if unless_started_since is not None:
                        last = await asyncio.to_thread(self.store.get_state, STATE_LAST_STARTED)
                        if last and datetime.fromisoformat(last) >= unless_started_since:
                            logger.info(
                                "cycle.skipped reason=already-started slot=%s last_started=%s",
                                unless_started_since.isoformat(),
                                last,
                            )
                            return None
                    report = await run_cycle(
                        settings=self.settings,
                        store=self.store,
                        source=self.source,
                        channels=self.channels,
                        now=self.now,
                        progress=self.progress,
                        translator=self.translator,
                        summarizer=self.summarizer,
                        stop_reason=self._stop_reason(lease),
                    )
                    if self.on_report is not None:
                        self.on_report(report)
                    # email.send_empty: a "nothing new" note to confirmed addresses that got
                    # no digest.
                    send_empty = getattr(self.channels.get("email"), "send_empty", None)
                    if send_empty is not None and report.ok:
                        await send_empty(now=self.now())
                    return report
            except CycleStopped:
                return None  # stopped while waiting for the lease: nothing ran

    def request_backfill(self, query: str) -> None:
        """Backfill a newly subscribed keyword in the background (slash commands never wait)."""

        async def job() -> int:
            async with self._lock:
                if self.stopping:
                    return 0
                try:
                    async with self._lease(wait=True):
                        return await backfill_keywords(
                            settings=self.settings,
                            store=self.store,
                            source=self.source,
                            now=self.now,
                            only=[query],
                        )
                except CycleStopped:
                    return 0

        task = asyncio.get_running_loop().create_task(job())
        self._backfills.add(task)  # keep a reference so the task is not garbage-collected
        task.add_done_callback(self._backfills.discard)


@contextlib.asynccontextmanager
async def open_runner(
    settings: Settings, *, progress: Progress = _no_progress, now: Callable[[], datetime] = utcnow
) -> AsyncIterator[CycleRunner]:
    """Everything one cycle needs, opened and closed together; `now` is the cycles' clock."""
    async with AsyncExitStack() as stack:
        store = open_store(settings)
        stack.callback(store.close)
        source = build_source(settings)
        stack.callback(source.close)
        channels = await build_channels(settings, store=store, stack=stack)
        translator = build_translator(settings)
        if translator is not None:
            await stack.enter_async_context(translator)  # closes its HTTP session
        summarizer = build_summarizer(settings)
        if summarizer is not None:
            await stack.enter_async_context(summarizer)
        yield CycleRunner(
            settings=settings,
            store=store,
            source=source,
            channels=channels,
            progress=progress,
            translator=translator,
            summarizer=summarizer,
            now=now,
        )


async def run_once(
    settings: Settings,
    *,
    progress: Progress = _no_progress,
    wait: bool = True,
    on_busy: Callable[[LeaseHolder], None] | None = None,
    on_runner: Callable[[CycleRunner], None] | None = None,
) -> RunReport | None:
    """`daily-papers run`: one full cycle now, after any cycle running elsewhere (LeaseBusy
    without `wait`); None when a stop was requested before it started.

    `on_runner` receives the runner before it runs (the CLI's signal handlers stop it).
    """
    async with open_runner(settings, progress=progress) as runner:
        runner.on_busy = on_busy
        if on_runner is not None:
            on_runner(runner)
        return await runner.run(wait=wait)


# APScheduler calls the job by a textual reference to a module-level function, so the running
# service is reached through this one slot, set by `serve` for its lifetime.
_ACTIVE_RUNNER: CycleRunner | None = None


async def scheduled_cycle() -> None:
    """The scheduler's job: this slot's cycle, unless another replica already ran it."""
    runner = _ACTIVE_RUNNER
    if runner is None:
        logger.error("scheduler.no_runner")
        return
    schedule = runner.settings.schedule
    slot = latest_fire_time(cron=schedule.cron, timezone=schedule.timezone, now=runner.now())
    await runner.run(unless_started_since=slot)


def _build_scheduler(settings: Settings) -> Any:
    """AsyncIOScheduler with the cycle job, kept in memory.

    Not in the database: replicas would share one APScheduler job store, which APScheduler 3
    does not support (each scheduler runs and reschedules the shared job). Restarts are
    covered by the catch-up on start (`catch_up_slot`), replicas by the cycle lease.
    """
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from apscheduler.triggers.cron import CronTrigger

    scheduler = AsyncIOScheduler(
        job_defaults={
            "coalesce": True,  # a loop too busy to fire on time runs the job once, not twice
            "max_instances": 1,
            "misfire_grace_time": int(settings.schedule.misfire_grace_hours * 3600),
        },
        timezone=settings.schedule.timezone,
    )
    trigger = CronTrigger.from_crontab(settings.schedule.cron, timezone=settings.schedule.timezone)
    scheduler.add_job(scheduled_cycle, trigger=trigger, id=JOB_ID, replace_existing=True)
    return scheduler


def cycle_is_overdue(
    *,
    cron: str,
    timezone: str,
    last_success: datetime | None,
    now: datetime,
    grace: timedelta | None = None,
) -> bool:
    """True when the schedule fired since the last successful cycle (or there never was one).

    With `grace`, a fire time longer ago than that no longer counts: the service waits for
    the next one (`schedule.misfire_grace_hours`).
    """
    if last_success is None:
        return True
    fired = latest_fire_time(cron=cron, timezone=timezone, now=now)
    if fired is None or fired <= last_success:
        return False
    return grace is None or now - fired <= grace


def catch_up_slot(
    settings: Settings, *, last_success: datetime | None, now: datetime
) -> datetime | None:
    """The slot a start-up catch-up cycle stands for, or None when none is due.

    The first start ever catches up at once (slot: the epoch, so one replica of several runs
    it); later starts only when a scheduled run was missed within `misfire_grace_hours`.
    """
    schedule = settings.schedule
    if last_success is None:
        return datetime.fromtimestamp(0, UTC)
    if not cycle_is_overdue(
        cron=schedule.cron,
        timezone=schedule.timezone,
        last_success=last_success,
        now=now,
        grace=timedelta(hours=schedule.misfire_grace_hours),
    ):
        return None
    return latest_fire_time(cron=schedule.cron, timezone=schedule.timezone, now=now)


async def serve(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    now: Callable[[], datetime] = utcnow,
) -> None:
    """`daily-papers serve`: the scheduler, chat bots and web server until stopped.

    Stopping (the event is set: SIGINT or SIGTERM) is orderly: no new cycle starts, a cycle in
    flight ends after each target's message in flight is sent and recorded, then the services
    close. Several replicas may serve one PostgreSQL database: all serve the web pages and
    chat commands, and the cycle lease lets exactly one run each scheduled cycle.

    `now` is the clock of the catch-up decision, the scheduled slots, the cycles and /healthz
    (tests move it across a scheduled time; APScheduler's own timer keeps the real one).
    """
    from digest.metrics import Metrics
    from digest.web import ServerClock

    global _ACTIVE_RUNNER
    stop = stop or asyncio.Event()
    logger.info("serve.starting version=%s config=%s", __version__, settings.source)
    async with open_runner(settings, now=now) as runner, AsyncExitStack() as services:
        _ACTIVE_RUNNER = runner
        try:
            metrics = Metrics(
                settings=settings,
                store=runner.store,
                kinds=list(channel_specs()),
                unconfigured=unconfigured_channels(settings),
            )
            runner.on_report = metrics.observe_cycle
            clock = ServerClock(now=now, started=now())
            await _start_services(settings, runner, services, metrics=metrics, clock=clock)
            scheduler = _build_scheduler(settings)
            scheduler.start()
            services.callback(scheduler.shutdown, wait=False)
            last = await asyncio.to_thread(runner.store.get_state, STATE_LAST_SUCCESS)
            slot = catch_up_slot(
                settings, last_success=datetime.fromisoformat(last) if last else None, now=now()
            )
            if slot is not None:
                logger.info("serve.catch_up reason=missed-schedule slot=%s", slot.isoformat())
                catch_up = asyncio.get_running_loop().create_task(
                    runner.run(unless_started_since=slot)
                )
                services.push_async_callback(_finish, catch_up)
            logger.info(
                "serve.ready schedule=%r tz=%s", settings.schedule.cron, settings.schedule.timezone
            )
            await stop.wait()
            logger.info("serve.stopping")
            runner.request_stop()
            scheduler.pause()
            await runner.idle()  # the cycle in flight ends after its messages in flight
        finally:
            _ACTIVE_RUNNER = None
    logger.info("serve.stopped")


async def _finish(task: asyncio.Task[Any]) -> None:
    """Wait for a background cycle at shutdown (it was asked to stop); never raise."""
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await task


async def _start_services(
    settings: Settings,
    runner: CycleRunner,
    services: AsyncExitStack,
    *,
    metrics: Metrics,
    clock: ServerClock,
) -> None:
    """Start the long-running adapters (chat bots, web server) that are configured."""
    from bot.commands import LANGUAGE_COMMAND, email_command
    from bot.slack_app import start_slack
    from digest.mail.signup import build_subscriptions
    from digest.web import start_web

    # Email sign-up (web form and `/papers email`) sends through the registered email channel.
    signup = build_subscriptions(
        settings,
        store=runner.store,
        channels=runner.channels,
        request_backfill=runner.request_backfill,
    )
    extra = (email_command(signup),) if signup is not None else ()
    extra = (*extra, LANGUAGE_COMMAND)  # /papers language: a channel's translation language
    # HTTP mode: the web server mounts slack_app.routes() (POST /slack/events).
    slack = await start_slack(
        settings,
        store=runner.store,
        request_backfill=runner.request_backfill,
        stack=services,
        extra_commands=extra,
        seed_source=runner.source,  # like: seeds, paced with the cycle's requests
    )
    from bot.discord_app import start_discord

    await start_discord(
        settings,
        store=runner.store,
        request_backfill=runner.request_backfill,
        stack=services,
        extra_commands=extra,
        seed_source=runner.source,  # like: seeds, paced with the cycle's requests
    )
    await start_web(
        settings,
        store=runner.store,
        stack=services,
        subscriptions=signup,
        routes=slack.routes() if slack is not None else (),  # none in Socket Mode
        metrics=metrics,
        clock=clock,
    )
