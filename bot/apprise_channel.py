"""Apprise delivery: the day's papers as one notification per target, to any service Apprise
reaches (Microsoft Teams, Mattermost, Matrix, Telegram, ntfy, ... over 100 of them).

A target is `apprise:<Apprise URL>`, added by the operator only (`daily-papers subscriptions add`
or `[apprise] targets` in the config): the URL carries the service's credentials, so no chat
command can name one, and people and logs only ever see `Target.display` (its scheme and a
fingerprint).

Each cycle sends each target ONE notification, titled with the count and the keywords, its body
Markdown where the service takes Markdown (or HTML, which Apprise converts it to) and plain text
elsewhere, both rendered from templates/chat/apprise.*.j2. Apprise splits a body longer than
the service's limit (`OverflowMode.SPLIT`, never truncating), so one notification may arrive as
several messages; they stand or fall together: the deliveries' outcomes are yielded once, right
after Apprise answered for the whole notification (a notification that failed halfway is sent
again whole next cycle; docs/feeds-and-apprise.md).

Apprise reports a notification as success, failure or timeout, and its plugins log why (each
HTTP failure as `error=<status>`). The channel reads those lines from the result's own log
capture (`AppriseResult.logs()`, a public part of Apprise's API) to tell a permanent failure
(HTTP 401, 403, 404, 410: the URL's credentials or address are no longer good; a URL Apprise
cannot load) from a transient one (connection refused, timeout, 429, 5xx, anything else): the
first disables the subscription with the reason, the second is retried by the outbox with
backoff. Apprise does not pass a 429's Retry-After on, so the outbox's backoff (at least
`delivery.retry_base_minutes`) is the wait.

Apprise's lines name URL parts (hosts, paths, chat ids; at DEBUG the whole URL), and so do the
HTTP library's DEBUG lines while Apprise sends: both are kept out of the service's logs
(`_quiet_logging`); the channel logs its own event lines with `Target.display` instead.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from apprise import (
    Apprise,
    AppriseAsset,
    AppriseResultStatus,
    NotificationManager,
    NotifyBase,
    NotifyFormat,
    NotifyType,
    OverflowMode,
)

from digest.channels import ChannelSpec, parse_configured_targets, subscribe_configured
from digest.config import Settings, channel_section
from digest.domain import Batch, Outcome, OutcomeKind, Paper, Target, for_deliveries
from digest.render import collapse_ws, get_environment, short_authors
from digest.store import PaperStore

log = logging.getLogger(__name__)

KIND = "apprise"
SECTION = "apprise"

ABSTRACT_CHARS = 300  # enough to judge a paper; a Teams message (1000 characters) still holds 2
COMMENT_CHARS = 300  # a comment is context ("12 pages, CVPR 2025"), not the paper
NOTIFY_TIMEOUT = 300.0  # seconds for one notification, all its split parts included
# The keywords a title names before it only counts them: long titles are cut by most services
# (ntfy 200 characters, Apprise's default 250), and a phone shows about 60.
TITLE_KEYWORD_CHARS = 80
APP_ID = "daily-papers"  # the User-Agent Apprise sends, and the sender name some services show

# HTTP answers after which the URL can never work again without a person fixing it.
PERMANENT_STATUSES = frozenset({401, 403, 404, 410})
REFUSED = (
    "the service answered HTTP {status} {phrase}: its URL's credentials or address are no "
    "longer accepted; fix the URL and subscribe it again"
)
UNLOADABLE = "Apprise cannot load this URL (a part is missing or malformed)"

# Apprise's plugins log an HTTP failure as "... error=503." (a few as "error 503").
_HTTP_ERROR = re.compile(r"\berror[= ](\d{3})\b")
# requests' read and connect timeouts, as the plugins' DEBUG "Socket Exception" lines show them.
_TIMED_OUT = re.compile(r"timed out|Timeout", re.IGNORECASE)
_CONNECTION = re.compile(r"connection", re.IGNORECASE)
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]{0,31}")
_MASK = "********#"  # how `Target.display` spells a URL's hidden part


# -- settings -------------------------------------------------------------------------------------


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else "a number of 0 or more"


def _positive(value: Any) -> str | None:
    return None if value > 0 else "a number greater than 0"


@dataclass(frozen=True)
class AppriseSettings:
    """[apprise]: fields documented as digest.config's are (`help` for the starter file and
    README's reference, `check` returning what is allowed for a bad value)."""

    # No `check`: a bad value's error would echo it, and these entries hold secrets. They are
    # checked when channels are built (`configured_subscriptions`), naming the position only.
    targets: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Apprise targets subscribed at start-up: 'URL query' strings (the URL holds "
            "secrets; DAILY_PAPERS_APPRISE_TARGETS takes them as a JSON array). Errors name an "
            "entry's position, never its URL.",
            "check": None,
        },
    )
    abstract_chars: int = field(
        default=ABSTRACT_CHARS,
        metadata={
            "help": "Characters of each paper's abstract in an Apprise notification; 0 leaves "
            "them out.",
            "check": _non_negative,
        },
    )
    timeout_seconds: float = field(
        default=NOTIFY_TIMEOUT,
        metadata={
            "help": "Longest one Apprise notification may take, all its split parts included; "
            "past it the papers are retried next cycle.",
            "check": _positive,
        },
    )


# -- Apprise's logging ------------------------------------------------------------------------

_NOTIFYING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "apprise_channel_notifying", default=False
)
# The HTTP library under Apprise's plugins: at DEBUG it logs each request line, path included
# (a Telegram bot token, a webhook's secret).
TRANSPORT_LOGGERS = (
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.util.retry",
    "urllib3.poolmanager",
    "requests_oauthlib.oauth2_session",
)


class _WhileNotifying(logging.Filter):
    """Drops the HTTP library's records made for an Apprise notification: Apprise runs its
    sends in worker threads with a copy of the caller's context, so `_NOTIFYING` is set there."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False (drop) inside a notification."""
        return not _NOTIFYING.get()


@functools.cache
def _quiet_logging() -> None:
    """Keep Apprise's own log lines (they name URL parts) out of the service's handlers, once.

    The `apprise` logger stops propagating (it already has a NullHandler, so nothing reaches
    Python's last-resort handler either) and lets DEBUG through, for the per-notification
    capture that `notify` reads (the timeouts are told at DEBUG only).
    """
    apprise_logger = logging.getLogger("apprise")
    apprise_logger.propagate = False
    apprise_logger.setLevel(logging.DEBUG)
    if not apprise_logger.handlers:
        apprise_logger.addHandler(logging.NullHandler())
    for name in TRANSPORT_LOGGERS:
        logging.getLogger(name).addFilter(_WhileNotifying())


@contextmanager
def _notifying() -> Iterator[None]:
    token = _NOTIFYING.set(True)
    try:
        yield
    finally:
        _NOTIFYING.reset(token)


# -- URLs -----------------------------------------------------------------------------------------


def url_problem(url: str) -> str | None:
    """Why Apprise cannot use `url`, in words that never repeat the URL's parts; None when it
    can. (The scheme alone is named: it is no secret.)"""
    _quiet_logging()
    if not url or any(c.isspace() for c in url):
        return "an Apprise URL is one word (spaces are written %20)"
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or not _SCHEME.fullmatch(scheme):
        return (
            "not an Apprise URL: expected SCHEME://..., e.g. ntfys://ntfy.sh/TOPIC or "
            "mmosts://mattermost.example.org/HOOK_TOKEN"
        )
    if rest.startswith(_MASK):
        return "this is the masked form `subscriptions list` shows: give the full URL"
    if load_service(url, AppriseAsset()) is not None:
        return None  # also a service's own https:// URL that Apprise recognises (Teams, ntfy)
    # Apprise's plugin registry (a public class) has no annotations on its constructor.
    services: Any = NotificationManager()  # type: ignore[no-untyped-call]
    if scheme in {"http", "https"}:
        return (
            f"Apprise recognises no service in this {scheme}:// URL: write it with the "
            "service's own scheme (e.g. mmosts://HOST/TOKEN; https://appriseit.com/services/)"
        )
    if scheme not in services:
        return f"no Apprise service uses {scheme}:// (https://appriseit.com/services/ lists them)"
    plugin = services[scheme]
    name = getattr(plugin, "service_name", None) or scheme
    where = getattr(plugin, "setup_url", None)
    return f"Apprise's {name} service cannot use this URL: a part is missing or malformed" + (
        f" (see {where})" if where else ""
    )


def load_service(url: str, asset: AppriseAsset) -> NotifyBase | None:
    """The Apprise service for `url` (None when Apprise cannot load it), set to split a long
    body into several messages rather than cut it or leave it to the service."""
    _quiet_logging()
    service = Apprise.instantiate(url, asset=asset)
    if service is None:
        return None
    # A plugin attribute Apprise documents (its URLs set it with `overflow=`): never truncate.
    service.overflow_mode = OverflowMode.SPLIT
    return service


def speaks_markdown(service: NotifyBase) -> bool:
    """Whether a Markdown body reaches this service as Markdown or as HTML (Apprise converts
    it); a service that takes plain text only gets the plain-text body instead."""
    return service.resolve_format(NotifyFormat.MARKDOWN) in {
        NotifyFormat.MARKDOWN,
        NotifyFormat.HTML,
    }


def validate_target(target: Target) -> Target:
    """An `apprise:` target checked with Apprise's own parser (and stripped); ValueError with a
    one-line reason that never repeats the URL's secrets. Other kinds pass through unchanged."""
    if target.kind != KIND:
        return target
    url = target.address.strip()
    problem = url_problem(url)
    if problem is not None:
        raise ValueError(f"apprise: {problem}")
    return Target(kind=KIND, address=url)


# -- rendering (pure) -------------------------------------------------------------------------


def defuse_mentions(text: str | None) -> str:
    """Paper text that cannot mention anyone: `@channel`, `@all`, `@here` (Mattermost) and
    `@room` (Matrix) get a zero-width space after the `@`."""
    return (text or "").replace("@", "@\u200b")


def shorten(text: str | None, limit: int) -> str:
    """One line of at most `limit` characters, cut at a word near the end, with an ellipsis."""
    line = collapse_ws(text)
    if len(line) <= limit:
        return line
    head = line[: max(0, limit - 1)].rstrip()
    if " " in head[-30:]:
        head = head[: head.rfind(" ")].rstrip()
    return head + "…"


@dataclass(frozen=True, slots=True)
class PaperView:
    """What the templates show of one paper (raw text; the templates escape it)."""

    title: str
    url: str
    meta: str  # authors · date · category
    translated_title: str | None
    comment: str | None
    abstract: str
    summary: str | None = None  # the one-sentence TL;DR ([summary])


@dataclass(frozen=True, slots=True)
class Notification:
    """One notification: what Apprise is handed for one target in one cycle."""

    title: str
    body: str
    body_format: NotifyFormat


def notification_title(batch: Batch) -> str:
    """`12 new arXiv papers: diffusion models`; with several keywords, their names while they
    fit, else how many (`12 new arXiv papers for 5 keywords`)."""
    count = len({d.paper.arxiv_id for d in batch.deliveries})
    head = f"{count} new arXiv {'paper' if count == 1 else 'papers'}"
    keywords = [defuse_mentions(collapse_ws(keyword)) for keyword, _ in batch.by_keyword()]
    if len(keywords) == 1:
        return f"{head}: {shorten(keywords[0], TITLE_KEYWORD_CHARS)}"
    joined = ", ".join(keywords)
    if len(joined) <= TITLE_KEYWORD_CHARS:
        return f"{head}: {joined}"
    return f"{head} for {len(keywords)} keywords"


def _view(paper: Paper, batch: Batch, abstract_chars: int) -> PaperView:
    translated = batch.translations.get(paper.arxiv_id)
    summary = batch.summaries.get(paper.arxiv_id)
    meta = " · ".join(
        part
        for part in (
            short_authors(paper.authors, none="Unknown authors"),
            paper.updated.date().isoformat(),
            paper.primary_category,
        )
        if part
    )
    return PaperView(
        title=defuse_mentions(paper.title),
        url=paper.abs_url,
        meta=defuse_mentions(meta),
        translated_title=defuse_mentions(translated[0]) if translated else None,
        comment=defuse_mentions(shorten(paper.comment, COMMENT_CHARS)) if paper.comment else None,
        abstract=defuse_mentions(shorten(paper.abstract, abstract_chars))
        if abstract_chars > 0
        else "",
        summary=defuse_mentions(summary) if summary else None,
    )


def render_notification(
    batch: Batch, *, markdown: bool = True, abstract_chars: int = ABSTRACT_CHARS
) -> Notification:
    """The notification of `batch`: one section per keyword, one paragraph per paper, in
    Markdown (templates/chat/apprise.md.j2) or plain text (apprise.txt.j2)."""
    groups = [
        {
            "keyword": defuse_mentions(keyword),
            "papers": [_view(p, batch, abstract_chars) for p in papers],
        }
        for keyword, papers in batch.by_keyword()
    ]
    name = "chat/apprise.md.j2" if markdown else "chat/apprise.txt.j2"
    body = get_environment().get_template(name).render(groups=groups).strip()
    return Notification(
        title=notification_title(batch),
        body=body,
        body_format=NotifyFormat.MARKDOWN if markdown else NotifyFormat.TEXT,
    )


# -- outcomes (pure) ----------------------------------------------------------------------------


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def classify_result(status: AppriseResultStatus, lines: Sequence[str]) -> tuple[OutcomeKind, str]:
    """What Apprise's answer for one notification means for its deliveries, and why.

    `lines`: the messages Apprise captured while sending it. An HTTP status that says the URL
    is no good (401, 403, 404, 410) anywhere in them makes it PERMANENT; anything else that
    failed is RETRY, with the most telling reason found (HTTP status, timeout, connection).
    """
    if status == AppriseResultStatus.SUCCESS:
        return OutcomeKind.SENT, ""
    codes = [int(m.group(1)) for line in lines for m in _HTTP_ERROR.finditer(line)]
    permanent = [c for c in codes if c in PERMANENT_STATUSES]
    if permanent:
        code = permanent[0]
        return OutcomeKind.PERMANENT, REFUSED.format(status=code, phrase=_phrase(code))
    if codes:
        code = codes[-1]
        return OutcomeKind.RETRY, f"the service answered HTTP {code} {_phrase(code)}".rstrip()
    if status == AppriseResultStatus.TIMEOUT or any(_TIMED_OUT.search(line) for line in lines):
        return OutcomeKind.RETRY, "the service did not answer in time"
    if any(_CONNECTION.search(line) for line in lines):
        return OutcomeKind.RETRY, "cannot reach the service (connection error)"
    return OutcomeKind.RETRY, "the service did not accept the notification"


# -- the channel ----------------------------------------------------------------------------------


class AppriseChannel:
    """Delivers each target's papers as one Apprise notification (`apprise:<URL>` targets)."""

    kind = KIND

    def __init__(
        self,
        *,
        abstract_chars: int = ABSTRACT_CHARS,
        timeout: float = NOTIFY_TIMEOUT,
        asset: AppriseAsset | None = None,
    ) -> None:
        _quiet_logging()
        self._abstract_chars = abstract_chars
        # Apprise's own service retries stay off (its default): the outbox retries with backoff,
        # and a retry inside one send could not tell a lost answer from a refused message.
        self._asset = asset or AppriseAsset(app_id=APP_ID, service_timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings) -> AppriseChannel:
        """The channel; always available, since each URL carries its own credentials."""
        section = channel_section(settings, SECTION, AppriseSettings)
        return cls(abstract_chars=section.abstract_chars, timeout=section.timeout_seconds)

    async def _notify(
        self, service: NotifyBase, notification: Notification, notify_type: NotifyType
    ) -> tuple[OutcomeKind, str]:
        """Send one notification through Apprise's async API; never raises."""
        apprise = Apprise(asset=self._asset)
        apprise.add(service)
        try:
            with _notifying():
                result = await apprise.async_notify(
                    body=notification.body,
                    title=notification.title,
                    body_format=notification.body_format,
                    notify_type=notify_type,
                    log_level=logging.DEBUG,  # the timeouts are told at DEBUG only
                )
        except Exception as exc:  # Apprise answers with a result; this is a bug, not an answer
            return OutcomeKind.RETRY, f"unexpected error: {type(exc).__name__}"
        with result:  # releases what Apprise captured (it may name URL parts)
            return classify_result(result.status, [entry.message for entry in result.logs()])

    async def send(self, batch: Batch) -> AsyncIterator[Sequence[Outcome]]:
        """Send `batch` as one notification and yield every delivery's outcome once Apprise
        answered for all of it (each split part included)."""
        shown = batch.target.display
        started = time.perf_counter()
        service = await asyncio.to_thread(load_service, batch.target.address, self._asset)
        if service is None:
            log.warning(
                "apprise.send_failed target=%s outcome=permanent reason=%r", shown, UNLOADABLE
            )
            yield for_deliveries(batch.deliveries, OutcomeKind.PERMANENT, UNLOADABLE)
            return
        notification = render_notification(
            batch, markdown=speaks_markdown(service), abstract_chars=self._abstract_chars
        )
        kind, reason = await self._notify(service, notification, NotifyType.INFO)
        seconds = time.perf_counter() - started
        if kind is OutcomeKind.SENT:
            log.info(
                "apprise.sent target=%s papers=%d chars=%d seconds=%.1f",
                shown,
                len(batch.papers),
                len(notification.body),
                seconds,
            )
            yield for_deliveries(batch.deliveries, OutcomeKind.SENT)
            return
        log.warning(
            "apprise.send_failed target=%s outcome=%s reason=%r seconds=%.1f",
            shown,
            kind,
            reason,
            seconds,
        )
        yield for_deliveries(batch.deliveries, kind, reason)

    async def notify(self, target: Target, text: str) -> bool:
        """Send an operator alert as a plain-text notification; True when it was delivered."""
        service = await asyncio.to_thread(load_service, target.address, self._asset)
        if service is None:
            log.warning("apprise.notify_failed target=%s reason=%r", target.display, UNLOADABLE)
            return False
        alert = Notification(title=APP_ID, body=text, body_format=NotifyFormat.TEXT)
        kind, reason = await self._notify(service, alert, NotifyType.WARNING)
        if kind is not OutcomeKind.SENT:
            log.warning("apprise.notify_failed target=%s reason=%r", target.display, reason)
            return False
        return True


# -- composition-root entry points (digest.app) -------------------------------------------------


def configured_subscriptions(settings: Settings) -> list[tuple[Target, str]]:
    """The `[apprise] targets` entries ("URL query") as (target, query) pairs; ConfigError
    naming the entry's position (never its URL) when one is bad."""
    section = channel_section(settings, SECTION, AppriseSettings)
    return parse_configured_targets(
        section.targets,
        setting=f"{SECTION}.targets",
        target=lambda url: validate_target(Target(kind=KIND, address=url)),
        expected="'URL query', e.g. 'ntfys://ntfy.sh/TOPIC diffusion models'",
    )


def subscribe_configured_targets(settings: Settings, store: PaperStore, *, now: datetime) -> int:
    """Subscribe each `[apprise] targets` entry that has no subscription yet; how many."""
    return subscribe_configured(
        store, configured_subscriptions(settings), now=now, kind=AppriseChannel.kind
    )


async def channel_factory(
    settings: Settings, store: PaperStore, stack: AsyncExitStack
) -> AppriseChannel:
    """`digest.app` channel factory: Apprise targets (always on); subscribes `[apprise] targets`."""
    await asyncio.to_thread(subscribe_configured_targets, settings, store, now=datetime.now(UTC))
    return AppriseChannel.from_settings(settings)


SPECS = (
    ChannelSpec(
        kind=KIND,
        summary=(
            "any service Apprise reaches (Teams, Mattermost, Matrix, Telegram, ntfy, ...), by "
            "its Apprise URL (a secret: shown masked; never from chat commands)"
        ),
        example="apprise:ntfys://ntfy.sh/TOPIC",
        factory=channel_factory,
        validate=validate_target,
        settings_section=SECTION,
        settings=AppriseSettings,
        limits=None,  # each Apprise service declares its own limits, and Apprise splits to them
    ),
)


__all__ = [
    "KIND",
    "SPECS",
    "AppriseChannel",
    "AppriseSettings",
    "Notification",
    "channel_factory",
    "classify_result",
    "configured_subscriptions",
    "defuse_mentions",
    "load_service",
    "notification_title",
    "render_notification",
    "speaks_markdown",
    "subscribe_configured_targets",
    "url_problem",
    "validate_target",
]
