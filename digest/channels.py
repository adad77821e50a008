"""The Channel protocol: what every delivery target (Slack, Discord, email, ...) implements.

The cycle hands a channel one `Batch` per target (all the papers that target is owed) and the
channel delivers it one platform message at a time. `send` is an async generator: right after
the platform acknowledged a message, it yields the outcomes of the deliveries that message
carried, and the cycle records them before it asks for the next message. So a crash, a stop
or a lost cycle lease re-sends at most the one message that was in flight per target, and a
channel cannot send a message the cycle did not ask for: a cycle that stops pulling (it was
told to stop, or can no longer record) closes the generator at its `yield`.

Channels never raise into the cycle: a transport failure is an outcome (`RETRY` or
`PERMANENT`) for the deliveries not yet sent, yielded last; the cycle guards each call anyway,
so one broken adapter cannot stop the others, and a delivery a channel never answered for is
retried next cycle. Adding a channel = one module implementing this protocol plus its
registration in `digest.app.CHANNEL_MODULES`; the cycle does not change.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from digest.domain import Batch, Outcome, Target
from digest.errors import ConfigError, DailyPapersError
from digest.like_query import canonical_keyword

if TYPE_CHECKING:
    from digest.config import Settings
    from digest.store import PaperStore

log = logging.getLogger(__name__)


@runtime_checkable
class Channel(Protocol):
    """A delivery target kind."""

    kind: str  # the Target.kind this channel serves: "slack", "discord", "email", ...

    def send(self, batch: Batch) -> AsyncIterator[Sequence[Outcome]]:
        """Deliver `batch` one message at a time, yielding each message's outcomes once the
        platform answered it; every delivery appears in exactly one yield. Never raises."""
        ...

    async def notify(self, target: Target, text: str) -> bool:
        """Send an operator alert (plain text) to `target`; True when it was delivered."""
        ...


ChannelRegistry = Mapping[str, Channel]
"""Channels by the target kind they serve, as built by the composition root."""

ChannelFactory = Callable[["Settings", "PaperStore", AsyncExitStack], Awaitable[Channel | None]]
"""Builds a configured channel (None when it is not configured), entering what must be closed
on the stack."""


def _as_given(target: Target) -> Target:
    return target


@dataclass(frozen=True)
class ChannelSpec:
    """Everything the service needs to know of one kind of delivery target, declared once in
    the channel's own module (`SPECS`), and registered by one line in `digest.app`.

    The CLI, `status` and the configuration read these instead of naming channels by hand.
    """

    kind: str  # the Target.kind: "slack"
    summary: str  # what a target of this kind is, for `daily-papers subscriptions kinds`
    example: str  # a target as a person types it: "slack:C0123ABCD"
    factory: ChannelFactory
    validate: Callable[[Target], Target] = _as_given  # ValueError saying what to do instead
    secrets: tuple[str, ...] = ()  # environment variables that must be set to deliver
    settings_section: str | None = None  # the config section it reads ("slack")
    settings: type[Any] | None = None  # that section's dataclass, when not a core section
    subscribe_instead: str | None = None  # `subscriptions add` refuses it, saying this instead
    limits: MessageLimits | None = None  # what one message may hold


@dataclass(frozen=True)
class MessageLimits:
    """What one message of a platform may hold, and how fast messages may go."""

    max_chars: int  # the text (or the embeds) of one message
    max_items: int  # papers (embeds, blocks) in one message
    per_second: float | None = None  # messages per second to one target


_T = TypeVar("_T")


def parse_configured_targets(
    entries: Sequence[str], *, setting: str, target: Callable[[str], Target], expected: str
) -> list[tuple[Target, str]]:
    """A channel's "ADDRESS query" config entries (`discord.webhooks`, `[apprise] targets`) as
    (target, canonical keyword) pairs, for `subscribe_configured`; the keyword may be a query
    or a `like:` seed list. `target` builds and checks an address (ValueError when it is bad).
    ConfigError names the entry's position, never its address (it may hold a secret)."""
    pairs: list[tuple[Target, str]] = []
    for index, entry in enumerate(entries):
        key = f"{setting}[{index}]"
        address, _, query = entry.strip().partition(" ")
        try:
            built = target(address)
        except ValueError as exc:
            raise ConfigError(f"{key} is not valid: {exc}") from None
        if not query.strip():
            raise ConfigError(f"{key} has no query: expected {expected}")
        try:
            pairs.append((built, canonical_keyword(query.strip())))
        except DailyPapersError as exc:  # QueryError or SimilarityError: one line
            raise ConfigError(f"{key} has an invalid query: {exc}") from None
    return pairs


def subscribe_configured(
    store: PaperStore,
    pairs: Sequence[tuple[Target, str]],
    *,
    now: datetime,
    kind: str,
) -> int:
    """Subscribe each configured (target, query) pair that has no subscription yet (a channel's
    `[section] targets`-style entries); how many were added.

    A subscription disabled since (the service refused the target) stays disabled: re-enabling
    it on every start would send into the void; the operator fixes the config or uses the CLI.
    """
    from digest.query import query_key

    added = 0
    for target, query in pairs:
        key = query_key(query)
        existing = [s for s in store.list_subscriptions(target) if query_key(s.keyword) == key]
        if existing:
            if not existing[0].active:
                log.warning(
                    "%s.config_subscription_disabled target=%s query=%r reason=%r",
                    kind,
                    target.display,
                    query,
                    existing[0].disabled_reason,
                )
            continue
        store.add_subscription(target, query, now=now)
        added += 1
    if added:
        log.info("%s.config_subscribed added=%d", kind, added)
    return added


def pack_items(
    items: Sequence[_T], *, size: Callable[[_T], int], max_items: int, max_size: int
) -> list[list[_T]]:
    """Items in order, packed greedily into groups of at most `max_items` whose sizes add up to
    at most `max_size`; an item bigger than `max_size` alone gets a group of its own (the
    caller shortens items so that it never happens). Never drops an item."""
    groups: list[list[_T]] = []
    used = 0
    for item in items:
        length = size(item)
        if not groups or len(groups[-1]) >= max_items or used + length > max_size:
            groups.append([])
            used = 0
        groups[-1].append(item)
        used += length
    return groups


async def send_all(channel: Channel, batch: Batch) -> list[Outcome]:
    """Every outcome of sending `batch`, message after message (tools and tests; the cycle
    records each message's outcomes as they come instead)."""
    outcomes: list[Outcome] = []
    async for message_outcomes in channel.send(batch):
        outcomes.extend(message_outcomes)
    return outcomes
