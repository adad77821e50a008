"""A Channel that records what it was asked to send: the test double of the Channel port.

The cycle's own tests use it to observe the outbox; the real adapters (Slack, Discord, email)
are tested against fakes of their wire protocols instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from digest.domain import Batch, Outcome, OutcomeKind, Target


@dataclass
class RecordingChannel:
    """Answers every delivery with `answer` (SENT by default) and remembers each batch."""

    kind: str = "slack"
    answer: OutcomeKind = OutcomeKind.SENT
    error: str | None = None
    after_send: Callable[[Batch], None] | None = None  # e.g. raise to simulate a crash
    batches: list[Batch] = field(default_factory=list)
    notices: list[tuple[Target, str]] = field(default_factory=list)

    async def send(self, batch: Batch) -> AsyncIterator[Sequence[Outcome]]:
        """Record the batch and answer each delivery (the whole batch as one message)."""
        self.batches.append(batch)
        if self.after_send is not None:
            self.after_send(batch)
        yield Outcome.for_batch(batch, self.answer, self.error)

    async def notify(self, target: Target, text: str) -> bool:
        """Record an operator alert."""
        self.notices.append((target, text))
        return True

    def sent_ids(self, target: Target | None = None) -> list[str]:
        """Every arxiv id this channel was handed, in order, repeats included."""
        return [
            d.paper.arxiv_id
            for b in self.batches
            if target is None or b.target == target
            for d in b.deliveries
        ]
