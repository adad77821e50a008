"""Pacing, in one place: Retry-After, minimum gaps between requests, and token buckets.

Every adapter that talks to a rate-limited service (arXiv, Slack, Discord, the translation
provider, Apprise targets) paces itself with these, so each rule is written once:

- `parse_retry_after`: the `Retry-After` header, seconds or an HTTP date (RFC 9110 10.2.3).
- `Gap`: at least `interval` seconds between two uses of the same key (arXiv's 3 s, a Slack
  channel's one message per second), pushed back further by a server's Retry-After.
- `TokenBucket`: at most `rate` per second in bursts of `burst` (Discord's global limit).

The arithmetic is pure and takes the clock as an argument, so the synchronous arXiv source
(which sleeps in its thread) and the async channels (which `await asyncio.sleep`) share it, and
tests drive it with a fake clock.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable, Hashable
from datetime import UTC, datetime


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds to wait (never negative): a number or an HTTP date; None
    when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class Gap:
    """At least `interval` seconds between two uses of a key, and none before a Retry-After.

    `reserve(key, now)` books the next slot and returns how long to wait for it; the slot is
    booked before waiting, so concurrent callers queue one after another.
    """

    def __init__(self, interval: float) -> None:
        self.interval = max(0.0, interval)
        self._next: dict[Hashable, float] = {}

    def reserve(self, key: Hashable, now: float) -> float:
        """Book `key`'s next slot; the seconds to wait until it (0: go now)."""
        slot = max(now, self._next.get(key, now))
        self._next[key] = slot + self.interval
        return slot - now

    def defer(self, key: Hashable, now: float, seconds: float) -> None:
        """The server asked for `seconds` of quiet (Retry-After): no slot before that."""
        self._next[key] = max(self._next.get(key, now), now + max(0.0, seconds))

    def after(self, key: Hashable, moment: float) -> None:
        """The previous use ended at `moment`: the next slot is `interval` after it."""
        self._next[key] = max(self._next.get(key, moment), moment + self.interval)

    async def wait(
        self,
        key: Hashable,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Wait (asynchronously) for `key`'s next slot."""
        pause = self.reserve(key, clock())
        if pause > 0:
            await sleep(pause)


class TokenBucket:
    """Requests paced to `rate` per second with bursts of at most `burst`; `acquire` waits.

    In any one second at most `rate + burst` requests start, spread out rather than in one
    burst, so arrivals bunched by the network or a busy server still stay under the limit.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._updated: float | None = None
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait for a token and take it."""
        async with self._lock:  # one waiter at a time, so tokens are handed out in order
            now = self._clock()
            if self._updated is not None:
                elapsed = max(0.0, now - self._updated)
                self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
            self._updated = now
            if self._tokens >= 1:
                self._tokens -= 1
                return
            # Wait exactly until the next token is due and take it. (Not a loop that re-reads
            # the clock: rounding could leave 0.99999 of a token and a wait too small to move
            # the clock.) Refilling resumes from the moment the token became due.
            wait = (1 - self._tokens) / self._rate
            await self._sleep(wait)
            self._tokens = 0.0
            self._updated = now + wait


__all__ = ["Gap", "TokenBucket", "parse_retry_after"]
