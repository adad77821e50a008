"""The Channel protocol: what every delivery target (Slack, Discord, email, ...) implements.

The cycle hands a channel one `Batch` per target (all the papers that target is owed) and gets
back one `Outcome` per delivery. Channels never raise into the cycle: a transport failure is an
outcome (`RETRY` or `PERMANENT`), and the cycle guards each call anyway so that one broken
adapter cannot stop the others. Adding a channel = one module implementing this protocol plus
its registration in `digest.app.build_channels`; the cycle does not change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from digest.domain import Batch, Outcome, Target


@runtime_checkable
class Channel(Protocol):
    """A delivery target kind."""

    kind: str  # the Target.kind this channel serves: "slack", "discord", "email", ...

    async def send(self, batch: Batch) -> Sequence[Outcome]:
        """Deliver every paper of `batch` to its target; one outcome per delivery, never raise."""
        ...

    async def notify(self, target: Target, text: str) -> bool:
        """Send an operator alert (plain text) to `target`; True when it was delivered."""
        ...


ChannelRegistry = Mapping[str, Channel]
"""Channels by the target kind they serve, as built by the composition root."""
