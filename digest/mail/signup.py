"""Email sign-up: address checks, double opt-in, manage and unsubscribe, and the admin commands.

Three ways in share one flow (`EmailSubscriptions.request`): the web form, the chat command
`/papers email <address> [query]` and the admin CLI. Every request stores the asked-for keywords
as *disabled* subscriptions with the reason `unconfirmed` and mails one confirmation link (at
most one per address per hour); the link activates them. Nothing but that confirmation is ever
mailed to an address that has not confirmed: `EmailChannel` also refuses targets without the
`email_confirmed` target option, so even a subscription activated by another path stays silent.

The links' tokens are made and checked in `digest.mail.links`; what is kept per address is
named in `digest.mail.bookkeeping`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import ParamSpec, Protocol, TypeVar, cast

from email_validator import EmailNotValidError, validate_email

from digest.config import Settings
from digest.domain import Subscription, Target, public_keywords
from digest.errors import ConfigError
from digest.mail.bookkeeping import (
    EMAIL,
    OPTION_CONFIRM_SENT,
    OPTION_CONFIRMED,
    OPTION_FAILURES,
    UNCONFIRMED,
)
from digest.mail.channel import EmailChannel
from digest.mail.links import (
    MANAGE_TTL,
    UNSUBSCRIBE_TTL,
    SubscriptionError,
    TokenClaims,
    TokenSigner,
    require_secret_key,
)
from digest.query import parse_query, query_key
from digest.store import PaperStore

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

CONFIRM_INTERVAL = timedelta(hours=1)  # at most one confirmation email per address per hour


def normalise_address(text: str) -> str:
    """A syntactically valid address, normalised; SubscriptionError with the reason otherwise.

    No DNS lookups (a sign-up must not wait on, or leak to, a resolver). The whole address is
    lower-cased: local parts are case-sensitive in theory only, and one mailbox must not get
    two subscriptions because someone typed a capital letter.
    """
    candidate = text.strip()
    if not candidate or len(candidate) > 254:  # RFC 5321's path limit
        raise SubscriptionError("Enter an email address such as name@university.edu.")
    try:
        valid = validate_email(candidate, check_deliverability=False)
    except EmailNotValidError as exc:
        raise SubscriptionError(f"{candidate!r} is not a usable email address: {exc}") from exc
    return valid.normalized.lower()


class RateLimiter:
    """At most `limit` events per `window` seconds per key (in memory; a sliding window)."""

    def __init__(
        self,
        *,
        limit: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,  # bounds memory when many clients come and go
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._max_keys = max_keys
        self._events: dict[str, deque[float]] = {}

    def hit(self, key: str) -> float:
        """Count one event for `key`; 0 when allowed, else seconds until it would be."""
        now = self._clock()
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - self.window:
            events.popleft()
        if len(events) >= self.limit:
            return max(events[0] + self.window - now, 0.001)
        events.append(now)
        if len(self._events) > self._max_keys:
            self._forget_idle(now)
        return 0.0

    def _forget_idle(self, now: float) -> None:
        for key in [k for k, v in self._events.items() if not v or v[-1] <= now - self.window]:
            del self._events[key]


class ConfirmationSender(Protocol):
    """What sends the double opt-in email (EmailChannel implements it)."""

    async def send_confirmation(
        self, address: str, *, pending: Sequence[str], active: Sequence[str], now: datetime
    ) -> bool:
        """Mail the confirmation (links built by the sender); True when the server took it."""
        ...


@dataclass(frozen=True, slots=True)
class SignupResult:
    """What a sign-up request did (the web page shows the same text whatever it was)."""

    address: str
    pending: tuple[str, ...]  # keywords waiting for confirmation (including earlier ones)
    active: tuple[str, ...]  # keywords already confirmed
    mailed: bool  # a confirmation email went out now
    throttled: bool  # one was sent within the last hour, so none was sent now


@dataclass(frozen=True, slots=True)
class SubscriberView:
    """One address's subscriptions, as the confirm and manage pages show them."""

    address: str
    active: tuple[str, ...]
    pending: tuple[str, ...]
    disabled: tuple[tuple[str, str], ...]  # (keyword, reason) disabled for other reasons
    # The address clicked a confirmation link and has not unsubscribed since: only then may
    # its manage page start digests without a new confirmation.
    confirmed: bool = True

    @property
    def keywords(self) -> tuple[str, ...]:
        """Every keyword of the address, whatever its state."""
        return (*self.active, *self.pending, *(q for q, _ in self.disabled))


def _view(address: str, subs: Sequence[Subscription], *, confirmed: bool = True) -> SubscriberView:
    return SubscriberView(
        address=address,
        active=tuple(s.keyword for s in subs if s.active),
        pending=tuple(s.keyword for s in subs if not s.active and s.disabled_reason == UNCONFIRMED),
        disabled=tuple(
            (s.keyword, s.disabled_reason or "")
            for s in subs
            if not s.active and s.disabled_reason != UNCONFIRMED
        ),
        confirmed=confirmed,
    )


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class EmailSubscriptions:
    """The sign-up, confirm, manage and unsubscribe logic shared by web, chat and CLI."""

    def __init__(
        self,
        *,
        store: PaperStore,
        settings: Settings,
        sender: ConfirmationSender,
        signer: TokenSigner | None = None,
        request_backfill: Callable[[str], None] = lambda query: None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.signer = signer or TokenSigner(
            secret_key=require_secret_key(settings), list_id=settings.email.list_id
        )
        self._sender = sender
        self._request_backfill = request_backfill
        self._clock = clock if clock is not None else (lambda: datetime.now(UTC))
        # One request at a time: the hourly confirmation limit is check-then-set in the store.
        self._lock = asyncio.Lock()

    def now(self) -> datetime:
        """The injected clock's time."""
        return self._clock()

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    # -- choices ------------------------------------------------------------------------
    async def tracked_keywords(self) -> list[str]:
        """Keywords the web form offers to tick: the public ones (never a reader's own query)."""
        keywords = await self._call(self.store.list_keywords)
        chat = self.settings.keywords.publish_chat_queries
        return [k.query for k in public_keywords(keywords, chat_queries=chat)]

    async def _resolve(
        self, queries: Sequence[str], *, custom_allowed: bool, own: Sequence[str] = ()
    ) -> list[str]:
        """Validated queries in their tracked spelling, deduplicated, in the order given.

        Without `custom_allowed` only the public keywords and the address's `own` ones (on
        its manage page) may be chosen.
        """
        tracked = {query_key(k): k for k in [*await self.tracked_keywords(), *own]}
        chosen: dict[str, str] = {}
        for raw in queries:
            if not raw.strip():
                continue
            key = query_key(raw)
            if key in tracked:  # validated when it was tracked (a like: query is no query)
                chosen.setdefault(key, tracked[key])
                continue
            text = parse_query(raw).text  # QueryError says what is wrong
            key = query_key(text)
            if key not in tracked and not custom_allowed:
                raise SubscriptionError(
                    f"{text!r} is not one of the tracked keywords; choose from the list."
                )
            chosen.setdefault(key, tracked.get(key, text))
        return list(chosen.values())

    # -- sign-up ------------------------------------------------------------------------
    async def request(
        self, address: str, queries: Sequence[str], *, custom_allowed: bool | None = None
    ) -> SignupResult:
        """Record `queries` as unconfirmed for `address` and mail the confirmation link.

        `custom_allowed` None follows `email.allow_custom_queries` (the web form); chat and the
        admin CLI pass True because their users may track any query anyway.
        """
        allowed = (
            self.settings.email.allow_custom_queries if custom_allowed is None else custom_allowed
        )
        address = normalise_address(address)
        wanted = await self._resolve(queries, custom_allowed=allowed)
        if not wanted:
            raise SubscriptionError("Choose at least one keyword to follow.")
        target = Target(kind=EMAIL, address=address)
        async with self._lock:
            now = self.now()
            subs = await self._call(self.store.list_subscriptions, target)
            by_key = {query_key(s.keyword): s for s in subs}
            limit = self.settings.limits.subscriptions_per_target
            new_keys = {query_key(q) for q in wanted} - set(by_key)
            if len(by_key) + len(new_keys) > limit:
                raise SubscriptionError(
                    f"An address can follow at most {limit} keywords; this would make "
                    f"{len(by_key) + len(new_keys)}."
                )
            for query in wanted:
                existing = by_key.get(query_key(query))
                if existing is not None and (
                    existing.active or existing.disabled_reason == UNCONFIRMED
                ):
                    continue
                # Stored inactive until the link is clicked: the outbox ignores it meanwhile.
                await self._call(
                    self.store.add_subscription, target, query, now=now, pending_reason=UNCONFIRMED
                )
            view = _view(address, await self._call(self.store.list_subscriptions, target))
            last = _parse_time(
                await self._call(self.store.get_target_option, target, OPTION_CONFIRM_SENT)
            )
            if last is not None and now - last < CONFIRM_INTERVAL:
                log.info("email.confirm_throttled pending=%d", len(view.pending))
                return SignupResult(address, view.pending, view.active, False, True)
            # Claimed before sending, so a second request racing this one cannot send too.
            await self._call(
                self.store.set_target_option, target, OPTION_CONFIRM_SENT, now.isoformat()
            )
        sent = await self._sender.send_confirmation(
            address, pending=view.pending, active=view.active, now=now
        )
        if not sent:
            await self._call(
                self.store.set_target_option,
                target,
                OPTION_CONFIRM_SENT,
                last.isoformat() if last else None,
            )
            raise SubscriptionError(
                "The confirmation email could not be sent just now; please try again later."
            )
        log.info("email.confirm_sent pending=%d active=%d", len(view.pending), len(view.active))
        return SignupResult(address, view.pending, view.active, True, False)

    # -- links ----------------------------------------------------------------------------
    def verify(self, token: str, purpose: str) -> TokenClaims:
        """The claims of a link's token (TokenError when it is not valid)."""
        return self.signer.verify(token, purpose, now=self.now())

    def manage_token(self, address: str) -> str:
        """A manage-page token for `address` (shown after confirming)."""
        return self.signer.sign("manage", address, now=self.now(), ttl=MANAGE_TTL)

    def unsubscribe_token(self, address: str) -> str:
        """A one-click unsubscribe token for `address` (for the manage page's button)."""
        return self.signer.sign("unsubscribe", address, now=self.now(), ttl=UNSUBSCRIBE_TTL)

    async def view(self, address: str) -> SubscriberView:
        """One address's subscriptions, and whether it is confirmed."""
        target = Target(kind=EMAIL, address=address)
        subs = await self._call(self.store.list_subscriptions, target)
        confirmed = await self._call(self.store.get_target_option, target, OPTION_CONFIRMED)
        return _view(address, subs, confirmed=bool(confirmed))

    async def confirm(self, token: str) -> tuple[SubscriberView, tuple[str, ...]]:
        """Activate the address's unconfirmed keywords; (view after, keywords just activated).

        Idempotent: a second click activates nothing and shows the same subscriptions.
        """
        claims = self.verify(token, "confirm")
        target = Target(kind=EMAIL, address=claims.address)
        now = self.now()
        before = await self.view(claims.address)
        for query in before.pending:
            await self._call(self.store.add_subscription, target, query, now=now)
        if before.pending or before.active:
            await self._call(
                self.store.set_target_option, target, OPTION_CONFIRMED, now.isoformat()
            )
        await self._backfill(before.pending)
        if before.pending:
            log.info("email.confirmed keywords=%d", len(before.pending))
        return await self.view(claims.address), before.pending

    async def _backfill(self, queries: Sequence[str]) -> None:
        if not queries:
            return
        pending = {query_key(k) for k in await self._call(self.store.keywords_to_backfill)}
        for query in queries:
            if query_key(query) in pending:
                try:
                    self._request_backfill(query)
                except Exception:  # fire-and-forget: a failed request must not fail the click
                    log.exception("email.backfill_request_failed")

    async def update(self, token: str, queries: Sequence[str]) -> SubscriberView:
        """Make the address follow exactly `queries` (from the manage page) and return the view.

        For a confirmed address the manage token proves the mailbox owner clicked it, so new
        keywords start at once. An address that is not confirmed (it unsubscribed since the
        link was mailed, or never confirmed) only gets a new confirmation email: the ticked
        keywords wait for that link, as after any sign-up.
        """
        claims = self.verify(token, "manage")
        current = await self.view(claims.address)
        wanted = await self._resolve(
            queries,
            custom_allowed=self.settings.email.allow_custom_queries,
            own=current.keywords,
        )
        limit = self.settings.limits.subscriptions_per_target
        if len(wanted) > limit:
            raise SubscriptionError(f"An address can follow at most {limit} keywords.")
        if not wanted:
            await self.unsubscribe_address(claims.address)
            return await self.view(claims.address)
        target = Target(kind=EMAIL, address=claims.address)
        now = self.now()
        subs = await self._call(self.store.list_subscriptions, target)
        keep = {query_key(q) for q in wanted}
        for sub in subs:
            if query_key(sub.keyword) not in keep:
                await self._call(self.store.remove_subscription, target, sub.keyword)
        if not current.confirmed:
            # Every way in goes through the same double opt-in (and its hourly limit).
            await self.request(claims.address, wanted, custom_allowed=True)
            log.info("email.update_needs_confirmation keywords=%d", len(wanted))
            return await self.view(claims.address)
        by_key = {query_key(s.keyword): s for s in subs}
        added: list[str] = []
        for query in wanted:
            found = by_key.get(query_key(query))
            if found is None or not found.active:
                await self._call(self.store.add_subscription, target, query, now=now)
                added.append(query)
        await self._call(self.store.set_target_option, target, OPTION_CONFIRMED, now.isoformat())
        await self._backfill(added)
        log.info("email.updated keywords=%d added=%d", len(wanted), len(added))
        return await self.view(claims.address)

    async def unsubscribe(self, token: str) -> str:
        """RFC 8058 one-click: drop every subscription of the token's address; idempotent."""
        claims = self.verify(token, "unsubscribe")
        await self.unsubscribe_address(claims.address)
        return claims.address

    async def unsubscribe_address(self, address: str) -> int:
        """Remove all of an address's subscriptions and its confirmation; how many were removed."""
        target = Target(kind=EMAIL, address=address)
        subs = await self._call(self.store.list_subscriptions, target)
        for sub in subs:
            await self._call(self.store.remove_subscription, target, sub.keyword)
        # Forget the confirmation too: coming back means confirming again.
        for name in (OPTION_CONFIRMED, OPTION_FAILURES):
            await self._call(self.store.set_target_option, target, name, None)
        log.info("email.unsubscribed removed=%d", len(subs))
        return len(subs)

    # -- admin ----------------------------------------------------------------------------
    async def list_subscribers(self) -> list[SubscriberView]:
        """Every address with a subscription, in sign-up order (for `daily-papers email list`)."""
        subs = await self._call(self.store.list_subscriptions)
        grouped: dict[str, list[Subscription]] = {}
        for sub in subs:
            if sub.target.kind == EMAIL:
                grouped.setdefault(sub.target.address, []).append(sub)
        return [_view(address, rows) for address, rows in grouped.items()]

    async def remove(self, address: str, query: str | None = None) -> int:
        """Admin removal: one keyword of an address, or all of them; how many were removed."""
        address = normalise_address(address)
        if query is None:
            return await self.unsubscribe_address(address)
        target = Target(kind=EMAIL, address=address)
        subs = await self._call(self.store.list_subscriptions, target)
        key = query_key(query)
        found = next((s for s in subs if query_key(s.keyword) == key), None)
        if found is None:
            return 0
        await self._call(self.store.remove_subscription, target, found.keyword)
        if len(subs) == 1:
            await self.unsubscribe_address(address)
        return 1


def format_subscribers(views: Sequence[SubscriberView]) -> list[str]:
    """Lines for `daily-papers email list`: address, then its keywords and their states."""
    if not views:
        return ["No email subscribers."]
    lines: list[str] = []
    for view in views:
        lines.append(view.address)
        lines.extend(f"  {q}" for q in view.active)
        lines.extend(f"  {q} (waiting for confirmation)" for q in view.pending)
        lines.extend(f"  {q} (disabled: {reason})" for q, reason in view.disabled)
    return lines


def build_subscriptions(
    settings: Settings,
    *,
    store: PaperStore,
    channels: Mapping[str, object],
    request_backfill: Callable[[str], None],
) -> EmailSubscriptions | None:
    """The sign-up service for `serve`, sending through the registered email channel.

    None when email is off (no `email` channel was built).
    """
    sender = channels.get(EMAIL)
    if sender is None or not settings.email.enabled:
        return None
    if not hasattr(sender, "send_confirmation"):
        raise ConfigError("the registered email channel cannot send confirmation emails")
    return EmailSubscriptions(
        store=store,
        settings=settings,
        sender=cast(ConfirmationSender, sender),
        request_backfill=request_backfill,
    )


async def run_admin(
    settings: Settings,
    store: PaperStore,
    action: str,
    address: str | None = None,
    queries: Sequence[str] = (),
) -> list[str]:
    """`daily-papers email subscribe|list|remove`: do it and return the lines to print.

    `subscribe ADDRESS QUERY...` mails a confirmation like every other way in (one flow: the
    address is only mailed digests once its owner clicks); `remove ADDRESS [QUERY]` drops one
    keyword or all; `list` shows every address and its keywords. Raises DailyPapersError with a
    message for the user.
    """
    # list and remove sign no links, so they work without DAILY_PAPERS_SECRET_KEY (an operator
    # cleaning up after turning email off may no longer have it set).
    unsigned = TokenSigner(secret_key="", list_id=settings.email.list_id)
    if action == "list":
        service = EmailSubscriptions(
            store=store, settings=settings, sender=_NoSender(), signer=unsigned
        )
        return format_subscribers(await service.list_subscribers())
    if not address:
        raise SubscriptionError(f"`daily-papers email {action}` needs an email address")
    if action == "remove":
        service = EmailSubscriptions(
            store=store, settings=settings, sender=_NoSender(), signer=unsigned
        )
        removed = await service.remove(address, " ".join(queries) if queries else None)
        what = f"{removed} subscription{'s' if removed != 1 else ''}"
        return [f"Removed {what} of {normalise_address(address)}."]
    if action != "subscribe":
        raise SubscriptionError(f"unknown email action {action!r}: use subscribe, list or remove")
    channel = EmailChannel.from_settings(settings, store=store)
    if channel is None:
        raise ConfigError("email.enabled is false: turn email on before subscribing addresses")
    async with channel:
        service = EmailSubscriptions(store=store, settings=settings, sender=channel)
        result = await service.request(address, list(queries), custom_allowed=True)
    if result.mailed:
        state = "A confirmation link was mailed to"
    elif result.throttled:
        state = "A confirmation link was already mailed within the hour to"
    else:
        state = "Nothing to confirm for"
    lines = [f"{state} {result.address}; digests start once it is clicked."]
    lines += [f"  waiting: {q}" for q in result.pending]
    lines += [f"  active: {q}" for q in result.active]
    return lines


class _NoSender:
    """For admin actions that never mail (list, remove)."""

    async def send_confirmation(
        self, address: str, *, pending: Sequence[str], active: Sequence[str], now: datetime
    ) -> bool:
        """Never called by list/remove."""
        return False


__all__ = [
    "CONFIRM_INTERVAL",
    "ConfirmationSender",
    "EmailSubscriptions",
    "RateLimiter",
    "SignupResult",
    "SubscriberView",
    "build_subscriptions",
    "format_subscribers",
    "normalise_address",
    "run_admin",
]
