"""The domain model: papers, keywords, subscriptions and deliveries.

Frozen dataclasses with no I/O. Everything that crosses a module boundary in the core is one of
these; ORM rows never leave `storage/` and HTTP payloads never leave their adapter.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

# An arXiv identifier with an optional version: new style (2501.09733v1) or old style
# (astro-ph/0601001v2, math.GT/0309136). The id never carries the version; `version` does.
_VERSIONED_ID = re.compile(
    r"^(?P<id>(?:\d{4}\.\d{4,5})|(?:[a-z][a-z\-]*(?:\.[A-Z]{2})?/\d{7}))(?:v(?P<version>\d+))?$"
)


def when(moment: datetime) -> str:
    """A moment as people are shown it in status lines and messages: `2026-12-06 21:00 UTC`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def split_arxiv_id(raw: str) -> tuple[str, int]:
    """Split `2501.09733v2` or `http://arxiv.org/abs/2501.09733v2` into ("2501.09733", 2).

    A missing version means version 1. Raises ValueError for text that is not an arXiv id.
    """
    text = raw.strip()
    for prefix in ("/abs/", "/pdf/"):
        if prefix in text:
            text = text.split(prefix, 1)[1]
    text = text.removesuffix(".pdf")
    match = _VERSIONED_ID.match(text)
    if match is None:
        raise ValueError(f"not an arXiv identifier: {raw!r}")
    version = match.group("version")
    return match.group("id"), int(version) if version else 1


@dataclass(frozen=True, slots=True)
class Paper:
    """One arXiv paper at its latest known version."""

    arxiv_id: str  # without version: "2501.09733"
    version: int
    title: str
    authors: tuple[str, ...]
    abstract: str
    published: datetime  # first version's submission time (UTC, aware)
    updated: datetime  # this version's time (UTC, aware)
    primary_category: str
    categories: tuple[str, ...] = ()
    comment: str | None = None
    journal_ref: str | None = None
    doi: str | None = None

    @property
    def versioned_id(self) -> str:
        """The id with its version, as arXiv prints it: `2501.09733v2`."""
        return f"{self.arxiv_id}v{self.version}"

    @property
    def abs_url(self) -> str:
        """The abstract page of this version (the form DailyArXiv links to)."""
        return f"http://arxiv.org/abs/{self.versioned_id}"

    @property
    def pdf_url(self) -> str:
        """The PDF of this version."""
        return f"http://arxiv.org/pdf/{self.versioned_id}"


class KeywordOrigin(StrEnum):
    """Who first asked for a keyword to be tracked; it decides where the keyword is shown.

    A keyword only ever moves up this list (an email reader's query that a chat channel or the
    operator adds later becomes theirs); it never moves down.
    """

    EMAIL = "email"  # an email reader's own query (sign-up form, /papers email, the email CLI)
    CHAT = "chat"  # a chat channel's query (/papers subscribe, `daily-papers subscriptions add`)
    OPERATOR = "operator"  # the config file or `daily-papers keywords add`


_ORIGIN_RANK = {KeywordOrigin.EMAIL: 0, KeywordOrigin.CHAT: 1, KeywordOrigin.OPERATOR: 2}


def keyword_origin(target_kind: str) -> KeywordOrigin:
    """The origin of a keyword first asked for by a subscription of this kind of target."""
    return KeywordOrigin.EMAIL if target_kind == TargetKind.EMAIL.value else KeywordOrigin.CHAT


def outranks(origin: str, than: str) -> bool:
    """Whether a keyword of origin `than` becomes `origin` when `origin` asks for it too."""
    return _ORIGIN_RANK.get(KeywordOrigin(origin), 0) > _ORIGIN_RANK.get(KeywordOrigin(than), 0)


@dataclass(frozen=True, slots=True)
class PaperText:
    """The searchable text of a stored paper, without the rest (cheap to read in bulk)."""

    arxiv_id: str
    title: str
    abstract: str
    authors: tuple[str, ...]
    comment: str | None
    primary_category: str
    categories: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Keyword:
    """A tracked query. `query` is the user's text exactly as it appears in headings."""

    query: str
    from_config: bool = False
    origin: str = KeywordOrigin.OPERATOR  # a KeywordOrigin value

    def is_public(self, *, chat_queries: bool = True) -> bool:
        """Whether the README snapshot and the public sign-up page may list this keyword.

        The operator's keywords always are; a chat channel's query unless `chat_queries` is
        off (keywords.publish_chat_queries); an email reader's own query never: a stranger's
        sign-up must not publish what they read.
        """
        if self.from_config or self.origin == KeywordOrigin.OPERATOR:
            return True
        return chat_queries and self.origin == KeywordOrigin.CHAT


def public_keywords(keywords: Iterable[Keyword], *, chat_queries: bool) -> list[Keyword]:
    """The keywords that may be listed publicly (README, sign-up page), in the order given."""
    return [k for k in keywords if k.is_public(chat_queries=chat_queries)]


class TargetKind(StrEnum):
    """Where a subscription delivers. One Channel adapter serves each kind."""

    SLACK = "slack"
    DISCORD = "discord"
    DISCORD_WEBHOOK = "discord_webhook"
    EMAIL = "email"


_MASK = "********"  # what stands for a secret in a shown target


@dataclass(frozen=True, slots=True)
class Target:
    """One delivery destination: a Slack channel id, a Discord channel id, a webhook, an address."""

    kind: str  # a TargetKind value; kept as str so a new channel module needs no core change
    address: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.address}"

    @property
    def display(self) -> str:
        """The target as shown to people and logs, never a secret a URL address carries.

        A Discord webhook keeps its id (its token is the last path segment, masked); any other
        URL (an Apprise URL holds tokens or passwords anywhere in it) shows its scheme and a
        short fingerprint that tells two targets apart.
        """
        if "://" not in self.address:
            return str(self)
        if self.kind == TargetKind.DISCORD_WEBHOOK:
            head, _, secret = self.address.rstrip("/").rpartition("/")
            return f"{self.kind}:{head}/{'*' * min(len(secret), 8)}"
        scheme, _, rest = self.address.partition("://")
        if rest.startswith(_MASK + "#"):
            return str(self)  # already the shown form (typed back by a person)
        fingerprint = hashlib.sha256(self.address.encode()).hexdigest()[:8]
        return f"{self.kind}:{scheme}://{_MASK}#{fingerprint}"

    @property
    def masked(self) -> bool:
        """True when this is a `display` form, which names the stored target it was shown for
        but not its secret."""
        if "://" not in self.address:
            return False
        rest = self.address.partition("://")[2]
        if rest.startswith(_MASK + "#"):
            return True
        secret = self.address.rstrip("/").rpartition("/")[2]
        return bool(secret) and set(secret) == {"*"}

    @classmethod
    def parse(cls, text: str) -> Target:
        """Parse `slack:C0123` / `discord:1234` / `email:a@b.org` / `discord_webhook:https://...`."""
        kind, sep, address = text.partition(":")
        if not sep or not kind or not address:
            raise ValueError(
                f"target {text!r} is not KIND:ADDRESS (for example slack:C0123ABCD, discord:1234, "
                "discord_webhook:https://discord.com/api/webhooks/..., email:me@example.org)"
            )
        return cls(kind=kind.strip().lower(), address=address.strip())


@dataclass(frozen=True, slots=True)
class Subscription:
    """A target's standing order for one keyword."""

    id: int
    target: Target
    keyword: str  # the keyword's query text
    active: bool = True
    disabled_reason: str | None = None
    created_at: datetime | None = None
    disabled_at: datetime | None = None  # when it was last disabled (None: never, or legacy)


class DeliveryStatus(StrEnum):
    """The outbox states of one (subscription, paper) delivery.

    A pending delivery that failed before (attempts > 0) is *deferred*: it waits for its next
    try (`next_attempt_at`). FAILED is for good: `daily-papers deliveries retry` re-opens it.
    """

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"  # permanent for this delivery, or the subscription was disabled


@dataclass(frozen=True, slots=True)
class Delivery:
    """One paper owed to one subscription: a row of the outbox."""

    subscription_id: int
    keyword: str
    paper: Paper
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One outbox row as the operator sees it (`daily-papers deliveries list`)."""

    target: Target
    keyword: str
    arxiv_id: str
    title: str
    status: DeliveryStatus
    attempts: int
    last_error: str | None
    next_attempt_at: datetime
    sent_at: datetime | None

    @property
    def deferred(self) -> bool:
        """Pending after a failed try: waits for `next_attempt_at`."""
        return self.status is DeliveryStatus.PENDING and self.attempts > 0


@dataclass(frozen=True, slots=True)
class OutboxCount:
    """How many outbox rows of one target kind are in one state (`status`, metrics)."""

    kind: str  # the target kind ("slack", "email", ...)
    status: str  # a DeliveryStatus value, or "deferred" (pending after a failed try)
    count: int
    next_attempt_at: datetime | None = None  # deferred: the earliest next try


@dataclass(frozen=True, slots=True)
class Batch:
    """Everything one target is owed this cycle: the unit a Channel sends."""

    target: Target
    deliveries: tuple[Delivery, ...]
    # Per-target settings from the store (e.g. {"language": "zh"}).
    options: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    # Translations available for this batch's papers: arxiv_id -> (title, abstract) in
    # `language`. Filled by the cycle when the target (or email globally) wants one; a paper
    # missing here is shown untranslated (translation never blocks delivery).
    language: str | None = None
    translations: dict[str, tuple[str, str]] = field(
        default_factory=dict, compare=False, hash=False
    )
    # One-sentence TL;DRs of this batch's papers, by arxiv_id (`[summary]`); a paper missing
    # here is shown without one (a summary never blocks delivery).
    summaries: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    # A broad keyword's relevance order: keyword -> arxiv_id -> place (0 = most relevant).
    # Filled by the cycle (digest.relevance) for the keywords that need it; every channel
    # reads it through `by_keyword`, so none of them knows about ranking.
    ranks: dict[str, dict[str, int]] = field(default_factory=dict, compare=False, hash=False)

    def by_keyword(self) -> list[tuple[str, list[Paper]]]:
        """Group the papers by keyword (keywords in first-seen order; papers in the keyword's
        relevance order when `ranks` has one, else newest first).

        A paper that matches two keywords of the same target appears under both: the reader
        subscribed to both and each heading should be complete.
        """
        groups: dict[str, list[Paper]] = {}
        seen: dict[str, set[str]] = {}
        for delivery in self.deliveries:
            ids = seen.setdefault(delivery.keyword, set())
            if delivery.paper.arxiv_id in ids:
                continue
            ids.add(delivery.paper.arxiv_id)
            groups.setdefault(delivery.keyword, []).append(delivery.paper)
        return [(keyword, self._ordered(keyword, papers)) for keyword, papers in groups.items()]

    def _ordered(self, keyword: str, papers: list[Paper]) -> list[Paper]:
        """Newest first, then (stable sort) by the keyword's relevance order when it has one;
        a paper the order does not know goes after the ranked ones."""
        newest = sorted(papers, key=lambda p: (p.updated, p.arxiv_id), reverse=True)
        order = self.ranks.get(keyword)
        if not order:
            return newest
        return sorted(newest, key=lambda p: order.get(p.arxiv_id, len(order)))

    @property
    def papers(self) -> list[Paper]:
        """Distinct papers in this batch, newest first."""
        unique = {d.paper.arxiv_id: d.paper for d in self.deliveries}
        return sorted(unique.values(), key=lambda p: (p.updated, p.arxiv_id), reverse=True)


class OutcomeKind(StrEnum):
    """What happened to one delivery when its batch was sent."""

    SENT = "sent"
    RETRY = "retry"  # transient: rate limit exhausted, 5xx, timeout; try again next cycle
    PERMANENT = "permanent"  # the target is gone or refuses us: disable the subscription
    # The platform refused our own token (Slack invalid_auth, a Discord bot 401): every target
    # of the kind would fail alike. Recorded like PERMANENT (the subscription is paused with the
    # reason, until the token is fixed and `deliveries retry` resumes it); the cycle also
    # records the refusal for `status`.
    UNAUTHORIZED = "unauthorized"

    @property
    def disables(self) -> bool:
        """True when this outcome disables (pauses) its subscription."""
        return self in {OutcomeKind.PERMANENT, OutcomeKind.UNAUTHORIZED}


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of sending one delivery."""

    subscription_id: int
    arxiv_id: str
    kind: OutcomeKind
    error: str | None = None

    @classmethod
    def for_batch(cls, batch: Batch, kind: OutcomeKind, error: str | None = None) -> list[Outcome]:
        """The same outcome for every delivery of a batch (one HTTP call carried them all)."""
        return for_deliveries(batch.deliveries, kind, error)


def for_deliveries(
    deliveries: Iterable[Delivery], kind: OutcomeKind, error: str | None = None
) -> list[Outcome]:
    """The same outcome for each of these deliveries."""
    return [Outcome(d.subscription_id, d.paper.arxiv_id, kind, error) for d in deliveries]


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    """Who holds a named lease (the daily cycle's), and until when unless it is renewed."""

    name: str
    owner: str  # a random token per holder: two holders never share it
    host: str
    pid: int
    acquired_at: datetime
    expires_at: datetime

    def describe(self) -> str:
        """`host pid 1234 since 2026-12-06 18:00:05 UTC` for messages to people."""
        return f"{self.host} pid {self.pid} since {self.acquired_at:%Y-%m-%d %H:%M:%S} UTC"


@dataclass(frozen=True, slots=True)
class RunReport:
    """What one daily cycle did: logged as one line, stored in the runs table, shown by status."""

    started_at: datetime
    finished_at: datetime
    ok: bool
    requests: int = 0
    throttled: int = 0  # 429 / Retry-After answers from arXiv
    harvested: int = 0  # entries received from arXiv (harvest + backfill)
    new_papers: int = 0  # papers never stored before
    new_matches: int = 0
    sent: int = 0  # deliveries the platforms acknowledged
    failed: int = 0  # deliveries given up for good (attempts used up, or subscription disabled)
    disabled: int = 0  # subscriptions disabled (or paused: a refused token) by this cycle
    error: str | None = None
    warnings: Sequence[str] = ()
    retries: int = 0  # arXiv requests that repeated a failed one
    deferred: int = 0  # deliveries that failed this time and wait for their next try
    next_retry_at: datetime | None = None  # the earliest next try of those
    # Why the README snapshot could not be written or committed (this run only: `status`
    # reads the lasting state from the store).
    readme_error: str | None = None

    @property
    def seconds(self) -> float:
        """Wall time of the cycle."""
        return (self.finished_at - self.started_at).total_seconds()

    def summary(self) -> str:
        """The one event-style log line for this cycle."""
        status = "cycle.finished" if self.ok else "cycle.failed"
        line = (
            f"{status} requests={self.requests} retries={self.retries} "
            f"throttled={self.throttled} harvested={self.harvested} "
            f"new_papers={self.new_papers} new_matches={self.new_matches} sent={self.sent} "
            f"deferred={self.deferred} failed={self.failed} disabled={self.disabled} "
            f"seconds={self.seconds:.1f}"
        )
        if self.next_retry_at is not None:
            line += f" next_retry={self.next_retry_at.isoformat(timespec='seconds')}"
        if self.readme_error:
            line += f" readme_error={self.readme_error!r}"
        if self.error:
            line += f" error={self.error!r}"
        return line
