"""The chat platforms' live connections (Slack Socket Mode, the Discord gateway), each kept up in
the background by a `PlatformSupervisor`, so that a platform that is down never holds up `serve`.

A platform adapter implements `PlatformConnection`: one attempt to connect (`connect`), a wait
until an established connection has ended (`wait_closed`), and `close`. The supervisor:

- logs a failed attempt on one line (`platform.unreachable kind=slack error=... retry_in=5s`; a
  traceback only for an unexpected error, the first time), records it for `daily-papers status`,
  and tries again after 5 s, doubling up to 5 minutes (fractions of a second in
  `service.test_mode`). A refused token is retried the same way: the operator may fix it on the
  platform's side without restarting anything;
- logs and records a connection (`platform.connected`), then waits for it to end and connects
  again, after the same backoff unless the connection had lasted a minute (a connection that
  drops at once, say on an event the library cannot parse, must not log in again and again);
- stops at once when cancelled (`serve` stopping), whatever it is doing, closing the connection
  and clearing its record.

The backoff is a hand loop rather than tenacity or stamina: it never gives up, and a connection
that lasted resets it, which neither library's attempt-counted retry expresses.

The record is one small JSON value per platform in the store's key/value state
(`platform.<kind>`), so `status`, in another process, reads what the running `serve` sees.
Delivery keeps a second record of the same form beside it (`platform.<kind>.delivery`): the
cycle, in `serve` or in a lone `run`, records that the platform refused our token while
delivering (`token_refused`, the reason, since when) and clears it once the platform takes a
message again; `status` alerts on both records alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import aiohttp

from digest.config import Settings
from digest.errors import PlatformUnreachable
from digest.store import PaperStore

log = logging.getLogger(__name__)

CONNECTED, UNREACHABLE = "connected", "unreachable"
TOKEN_REFUSED = "token_refused"  # noqa: S105 -- a state's name, not a secret
STATE_PREFIX = "platform."  # + kind: the store's state key of a platform's record
DELIVERY_SUFFIX = ".delivery"  # + after the kind: what delivery last heard from the platform
CLOSE_SECONDS = 5.0  # a close that hangs (a peer that never answers) must not hold up shutdown
# What a platform being down or unreachable raises in the adapters' HTTP and WebSocket clients
# (both aiohttp): an expected failure, one log line without a traceback.
NETWORK_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


class PlatformConnection(Protocol):
    """One chat platform's live connection, as the supervisor drives it."""

    kind: str  # the target kind ("slack", "discord"): in log lines and the status record

    async def connect(self) -> None:
        """One attempt: return once connected; raise PlatformUnreachable when the platform is
        down or refuses the token (any other exception is treated as a bug, and retried too)."""
        ...

    async def wait_closed(self) -> str:
        """Wait until the established connection has ended; return why, in a few words."""
        ...

    async def close(self) -> None:
        """Let go of the connection and whatever a failed attempt opened; safe to call twice."""
        ...


@dataclass(frozen=True)
class RetryPolicy:
    """How long the supervisor waits between attempts."""

    first_seconds: float = 5.0  # the wait after the first failure; it doubles from there
    max_seconds: float = 300.0  # a platform that is back is found within 5 minutes
    stable_seconds: float = 60.0  # a connection that lasted this long starts the doubling over

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """The production policy, or near-zero waits with `service.test_mode`."""
        if settings.service.test_mode:
            # Not zero: a refused port fails at once, and zero would spin the loop and the log.
            return cls(first_seconds=0.02, max_seconds=0.2, stable_seconds=0.0)
        return cls()

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` failures in a row (1 or more)."""
        return float(min(self.max_seconds, self.first_seconds * 2.0 ** max(0, failures - 1)))


@dataclass(frozen=True)
class PlatformStatus:
    """What `status` shows for one platform: connected or unreachable, since when, and why."""

    kind: str
    state: str  # CONNECTED or UNREACHABLE
    since: datetime
    reason: str = ""

    @property
    def connected(self) -> bool:
        """True when the platform's connection is up."""
        return self.state == CONNECTED

    def to_json(self) -> str:
        """The stored form."""
        return json.dumps(
            {"state": self.state, "since": self.since.isoformat(), "reason": self.reason}
        )

    @classmethod
    def from_json(cls, kind: str, text: str) -> PlatformStatus | None:
        """The stored form read back; None when it is not one (a newer or broken value)."""
        try:
            data = json.loads(text)
            return cls(
                kind=kind,
                state=str(data["state"]),
                since=datetime.fromisoformat(str(data["since"])),
                reason=str(data.get("reason") or ""),
            )
        except (ValueError, TypeError, KeyError):
            return None


def read_platform_status(
    store: PaperStore, kind: str, *, delivery: bool = False
) -> PlatformStatus | None:
    """The last record the running `serve` left for `kind` (with `delivery`: the record of a
    token refused while delivering); None when there is none."""
    text = store.get_state(STATE_PREFIX + kind + (DELIVERY_SUFFIX if delivery else ""))
    return None if text is None else PlatformStatus.from_json(kind, text)


def record_delivery_refusal(
    store: PaperStore, kind: str, reason: str | None, *, now: datetime
) -> None:
    """Record that `kind` refused our token while delivering (`reason`), keeping the moment it
    began; with None, that it took a message, which clears the record. Writes only changes."""
    before = read_platform_status(store, kind, delivery=True)
    key = STATE_PREFIX + kind + DELIVERY_SUFFIX
    if reason is None:
        if before is not None:
            store.set_state(key, None)
            log.info("platform.token_accepted kind=%s", kind)
        return
    if before is not None and before.reason == reason:
        return
    since = before.since if before is not None else now
    store.set_state(key, PlatformStatus(kind, TOKEN_REFUSED, since, reason).to_json())
    log.error("platform.token_refused kind=%s reason=%r", kind, reason)


def describe_error(exc: BaseException) -> str:
    """A failure in a few words for a log line and the status record: the message when the
    exception has one, else its type."""
    text = " ".join(str(exc).split())
    if isinstance(exc, PlatformUnreachable) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _utcnow() -> datetime:
    return datetime.now(UTC)


class PlatformSupervisor:
    """Keeps one platform connected in the background; see the module docstring."""

    def __init__(
        self,
        connection: PlatformConnection,
        *,
        store: PaperStore,
        policy: RetryPolicy,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.connection = connection
        self.kind = connection.kind
        self._store = store
        self._policy = policy
        self._now = now
        self._recorded: PlatformStatus | None = None

    async def run(self) -> None:
        """Connect, keep connected, until cancelled."""
        loop = asyncio.get_running_loop()
        failures = 0
        try:
            while True:
                try:
                    await self.connection.connect()
                # Every failure is retried; an unexpected one is logged with its traceback.
                except Exception as exc:
                    failures += 1
                    await self._close()
                    await self._failed(exc, failures)
                    continue
                connected_at = loop.time()
                log.info("platform.connected kind=%s", self.kind)
                await self._record(CONNECTED, "")
                reason = await self.connection.wait_closed()
                await self._close()
                if loop.time() - connected_at >= self._policy.stable_seconds:
                    failures = 0
                failures += 1
                delay = self._policy.delay(failures)
                log.warning(
                    "platform.disconnected kind=%s reason=%r retry_in=%s",
                    self.kind,
                    reason,
                    _seconds(delay),
                )
                await self._record(UNREACHABLE, f"connection lost: {reason}")
                await asyncio.sleep(delay)
        finally:
            await self._close()
            await self._forget()

    async def _failed(self, exc: Exception, failures: int) -> None:
        """One line for a failed attempt (plus the traceback of a first unexpected error), the
        record updated, then the backoff."""
        delay = self._policy.delay(failures)
        reason = describe_error(exc)
        expected = isinstance(exc, PlatformUnreachable)
        log.log(
            logging.WARNING if expected else logging.ERROR,
            "platform.unreachable kind=%s error=%r retry_in=%s",
            self.kind,
            reason,
            _seconds(delay),
            exc_info=None if expected or failures > 1 else exc,
        )
        await self._record(UNREACHABLE, reason)
        await asyncio.sleep(delay)

    async def _close(self) -> None:
        """Close the connection, bounded in time, whatever state the attempt left it in."""
        try:
            async with asyncio.timeout(CLOSE_SECONDS):
                await self.connection.close()
        except Exception as exc:  # closing is best effort; the next attempt starts afresh
            log.warning("platform.close_failed kind=%s error=%r", self.kind, describe_error(exc))

    async def _record(self, state: str, reason: str) -> None:
        """Store the platform's status for `status`, when it changed; `since` is when the
        platform entered this state (a streak of failures keeps its first moment)."""
        before = self._recorded
        if before is not None and before.state == state and before.reason == reason:
            return
        since = before.since if before is not None and before.state == state else self._now()
        status = PlatformStatus(kind=self.kind, state=state, since=since, reason=reason)
        try:
            await asyncio.to_thread(
                self._store.set_state, STATE_PREFIX + self.kind, status.to_json()
            )
        except Exception as exc:  # a database hiccup must not stop the reconnecting
            log.warning("platform.record_failed kind=%s error=%r", self.kind, describe_error(exc))
            return
        self._recorded = status

    async def _forget(self) -> None:
        """Clear the record when serve stops: no running serve, nothing to report."""
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._store.set_state, STATE_PREFIX + self.kind, None)


def start_supervisor(
    connection: PlatformConnection,
    *,
    settings: Settings,
    store: PaperStore,
    stack: AsyncExitStack,
) -> asyncio.Task[None]:
    """Keep `connection` up in a background task, cancelled (and awaited) when `stack` closes.

    Returns at once: nothing that starts after it waits for the platform.
    """
    supervisor = PlatformSupervisor(
        connection, store=store, policy=RetryPolicy.from_settings(settings)
    )
    task = asyncio.get_running_loop().create_task(
        supervisor.run(), name=f"platform-{connection.kind}"
    )
    task.add_done_callback(_log_end)
    stack.push_async_callback(_stop, task)
    return task


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel a supervisor and wait for it to close its connection."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _log_end(task: asyncio.Task[None]) -> None:
    """A supervisor only ends by cancellation; anything else is a bug worth its traceback."""
    if not task.cancelled() and task.exception() is not None:
        log.error("platform.supervisor_crashed task=%s", task.get_name(), exc_info=task.exception())


def _seconds(value: float) -> str:
    """`5s`, `0.02s`: a wait as a log field."""
    return f"{value:.3g}s"
