"""The composition root: builds the store, the arXiv source and the channels from Settings, runs
one cycle (`daily-papers run`) or the long-running service (`daily-papers serve`).

This is the one place that knows every adapter. Adding a delivery channel = one module that
implements `digest.channels.Channel`, plus one line in `build_channels` below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from digest import __version__
from digest.arxiv_source import ArxivSource
from digest.channels import Channel
from digest.config import Settings
from digest.cycle import Progress, _no_progress, backfill_keywords, run_cycle, utcnow
from digest.domain import RunReport
from digest.store import PaperStore
from digest.translate import Translator, build_translator
from storage.sql_store import SqlStore

logger = logging.getLogger(__name__)

JOB_ID = "daily-cycle"


def open_store(settings: Settings) -> SqlStore:
    """Open (and migrate) the database named by the settings."""
    store = SqlStore.from_settings(settings)
    store.migrate()
    return store


def build_source(settings: Settings) -> ArxivSource:
    """The arXiv client, polite per the settings."""
    return ArxivSource.from_settings(settings)


async def build_channels(
    settings: Settings, *, store: PaperStore, stack: AsyncExitStack
) -> dict[str, Channel]:
    """Every configured delivery channel, by target kind; unconfigured ones are left out.

    Channels that hold connections are entered on `stack` and closed with it.
    """
    channels: dict[str, Channel] = {}
    for factory in _channel_factories():
        channel = await factory(settings, store, stack)
        if channel is not None:
            channels[channel.kind] = channel
    logger.info("channels.ready kinds=%s", ",".join(sorted(channels)) or "none")
    return channels


ChannelFactory = Callable[[Settings, PaperStore, AsyncExitStack], Any]


def _channel_factories() -> list[ChannelFactory]:
    """The channel modules, imported lazily so an unused platform costs nothing at start-up."""
    factories: list[ChannelFactory] = []
    from bot.slack_channel import channel_factory as slack_channel

    factories.append(slack_channel)
    from bot.discord_channel import channel_factory as discord_channel
    from bot.discord_channel import webhook_channel_factory as discord_webhook_channel

    factories += [discord_channel, discord_webhook_channel]
    from digest.mailer import channel_factory as email_channel

    factories.append(email_channel)
    return factories


@dataclass
class CycleRunner:
    """Runs cycles one at a time (scheduler, start-up catch-up and manual triggers share it)."""

    settings: Settings
    store: PaperStore
    source: ArxivSource
    channels: dict[str, Channel]
    progress: Progress = _no_progress
    now: Callable[[], datetime] = utcnow
    translator: Translator | None = None  # None: translation is not configured

    def __post_init__(self) -> None:
        self._lock = asyncio.Lock()
        self._backfills: set[asyncio.Task[int]] = set()

    async def run(self) -> RunReport:
        """Run one full cycle unless one is already running (then wait for it and run after)."""
        async with self._lock:
            report = await run_cycle(
                settings=self.settings,
                store=self.store,
                source=self.source,
                channels=self.channels,
                now=self.now,
                progress=self.progress,
                translator=self.translator,
            )
            # email.send_empty: a "nothing new" note to confirmed addresses that got no digest.
            send_empty = getattr(self.channels.get("email"), "send_empty", None)
            if send_empty is not None:
                await send_empty(now=self.now())
            return report

    def request_backfill(self, query: str) -> None:
        """Backfill a newly subscribed keyword in the background (slash commands never wait)."""

        async def job() -> int:
            async with self._lock:
                return await backfill_keywords(
                    settings=self.settings,
                    store=self.store,
                    source=self.source,
                    now=self.now,
                    only=[query],
                )

        task = asyncio.get_running_loop().create_task(job())
        self._backfills.add(task)  # keep a reference so the task is not garbage-collected
        task.add_done_callback(self._backfills.discard)


@contextlib.asynccontextmanager
async def open_runner(
    settings: Settings, *, progress: Progress = _no_progress
) -> AsyncIterator[CycleRunner]:
    """Everything one cycle needs, opened and closed together."""
    async with AsyncExitStack() as stack:
        store = open_store(settings)
        stack.callback(store.close)
        source = build_source(settings)
        stack.callback(source.close)
        channels = await build_channels(settings, store=store, stack=stack)
        translator = build_translator(settings)
        if translator is not None:
            await stack.enter_async_context(translator)  # closes its HTTP session
        yield CycleRunner(
            settings=settings,
            store=store,
            source=source,
            channels=channels,
            progress=progress,
            translator=translator,
        )


async def run_once(settings: Settings, *, progress: Progress = _no_progress) -> RunReport:
    """`daily-papers run`: one full cycle now."""
    async with open_runner(settings, progress=progress) as runner:
        return await runner.run()


# APScheduler persists jobs in the database by a textual reference to a module-level function,
# so the running service is reached through this one slot, set by `serve` for its lifetime.
_ACTIVE_RUNNER: CycleRunner | None = None


async def scheduled_cycle() -> None:
    """The scheduler's job: one cycle on the running service."""
    if _ACTIVE_RUNNER is None:
        logger.error("scheduler.no_runner")
        return
    await _ACTIVE_RUNNER.run()


def _build_scheduler(settings: Settings) -> Any:
    """AsyncIOScheduler with the cycle job persisted in the same database."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from apscheduler.triggers.cron import CronTrigger

    scheduler = AsyncIOScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=settings.database_url)},
        job_defaults={
            "coalesce": True,  # after downtime, one catch-up run, not one per missed day
            "max_instances": 1,
            "misfire_grace_time": int(settings.schedule.misfire_grace_hours * 3600),
        },
        timezone=settings.schedule.timezone,
    )
    trigger = CronTrigger.from_crontab(settings.schedule.cron, timezone=settings.schedule.timezone)
    scheduler.add_job(
        "digest.app:scheduled_cycle", trigger=trigger, id=JOB_ID, replace_existing=True
    )
    return scheduler


def cycle_is_overdue(
    *, cron: str, timezone: str, last_success: datetime | None, now: datetime
) -> bool:
    """True when the schedule fired since the last successful cycle (or there never was one)."""
    from apscheduler.triggers.cron import CronTrigger

    if last_success is None:
        return True
    trigger = CronTrigger.from_crontab(cron, timezone=timezone)
    next_after_success = trigger.get_next_fire_time(None, last_success)
    return next_after_success is not None and next_after_success <= now


async def serve(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """`daily-papers serve`: the scheduler, chat bots and web server until stopped."""
    global _ACTIVE_RUNNER
    stop = stop or asyncio.Event()
    logger.info("serve.starting version=%s config=%s", __version__, settings.source)
    async with open_runner(settings) as runner, AsyncExitStack() as services:
        _ACTIVE_RUNNER = runner
        try:
            await _start_services(settings, runner, services)
            scheduler = _build_scheduler(settings)
            scheduler.start()
            services.callback(scheduler.shutdown, wait=False)
            last = await asyncio.to_thread(runner.store.get_state, "cycle.last_success")
            if cycle_is_overdue(
                cron=settings.schedule.cron,
                timezone=settings.schedule.timezone,
                last_success=datetime.fromisoformat(last) if last else None,
                now=utcnow(),
            ):
                logger.info("serve.catch_up reason=last-success-older-than-schedule")
                catch_up = asyncio.get_running_loop().create_task(runner.run())
                services.push_async_callback(_cancel, catch_up)
            logger.info(
                "serve.ready schedule=%r tz=%s", settings.schedule.cron, settings.schedule.timezone
            )
            await stop.wait()
        finally:
            _ACTIVE_RUNNER = None
    logger.info("serve.stopped")


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel a background task at shutdown and wait for it to finish unwinding."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _start_services(
    settings: Settings, runner: CycleRunner, services: AsyncExitStack
) -> None:
    """Start the long-running adapters (chat bots, web server) that are configured."""
    from bot.commands import LANGUAGE_COMMAND, email_command
    from bot.slack_app import start_slack
    from digest.email_subscriptions import build_subscriptions
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
    )
    from bot.discord_app import start_discord

    await start_discord(
        settings,
        store=runner.store,
        request_backfill=runner.request_backfill,
        stack=services,
        extra_commands=extra,
    )
    await start_web(
        settings,
        store=runner.store,
        stack=services,
        subscriptions=signup,
        routes=slack.routes() if slack is not None else (),  # none in Socket Mode
    )
