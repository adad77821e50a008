"""When the schedule (`schedule.cron` in `schedule.timezone`) last fired: the one reading of the
cron expression that `serve`'s catch-up, the scheduled job and `/healthz` share."""

from __future__ import annotations

from datetime import datetime, timedelta

_TICK = timedelta(microseconds=1)


def latest_fire_time(*, cron: str, timezone: str, now: datetime) -> datetime | None:
    """The last time at or before `now` the schedule fired (None within two years)."""
    from apscheduler.triggers.cron import CronTrigger

    trigger = CronTrigger.from_crontab(cron, timezone=timezone)
    window = timedelta(hours=1)
    while window <= timedelta(days=800):
        fire = trigger.get_next_fire_time(None, now - window)
        if fire is not None and fire <= now:
            # Walk forward: the window is the smallest (doubling) one holding a fire time.
            while (following := trigger.get_next_fire_time(fire, fire + _TICK)) is not None:
                if following > now:
                    break
                fire = following
            return fire  # type: ignore[no-any-return]  # APScheduler is untyped
        window *= 2
    return None
