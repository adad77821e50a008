"""The exceptions a user can act on: the CLI reports these without a traceback."""

from __future__ import annotations


class DailyPapersError(Exception):
    """Base of every error this project raises on purpose; its message is meant for a person."""


class ConfigError(DailyPapersError):
    """A setting is missing, malformed or out of range.

    The message names the key, the value and what is allowed.
    """


class QueryError(DailyPapersError):
    """A keyword query cannot be parsed; the message says what is wrong and at which column."""

    def __init__(self, message: str, *, query: str = "", position: int | None = None) -> None:
        self.query = query
        self.position = position
        if position is not None and query:
            message = f"{message} (at column {position + 1}: {query!r})"
        super().__init__(message)


class SimilarityError(DailyPapersError):
    """A `like:` query, its seed papers or its model cannot be used; the message says why, in
    one line."""


class ArxivError(DailyPapersError):
    """arXiv answered with an error, refused us, or kept failing after the retries.

    `requests` is how many HTTP requests the failed fetch had made, `retries` how many of them
    repeated a failed one (the run report counts both).
    """

    requests: int = 0
    retries: int = 0


class HarvestIncomplete(ArxivError):
    """arXiv returned fewer entries than it promised; the watermark must not move."""


class StoreError(DailyPapersError):
    """The database cannot be opened, migrated or written."""


class DeliveryError(DailyPapersError):
    """A channel could not deliver; adapters turn these into per-paper outcomes."""


class CycleStopped(DailyPapersError):
    """The cycle was asked to stop (a signal, `serve` stopping, a lost lease) and did."""


def crash_reason(exc: BaseException) -> str:
    """An unexpected exception as one short line for a report or an `error:` line."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


class PlatformUnreachable(DailyPapersError):
    """A chat platform's live connection (Slack Socket Mode, the Discord gateway) cannot be made:
    the platform is down or unreachable, or it refused our token. The message says which."""
