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
registration in `digest.app.build_channels`; the cycle does not change.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

from digest.domain import Batch, Outcome, Target


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


async def send_all(channel: Channel, batch: Batch) -> list[Outcome]:
    """Every outcome of sending `batch`, message after message (tools and tests; the cycle
    records each message's outcomes as they come instead)."""
    outcomes: list[Outcome] = []
    async for message_outcomes in channel.send(batch):
        outcomes.extend(message_outcomes)
    return outcomes
