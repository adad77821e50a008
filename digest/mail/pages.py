"""The email pages of the web server: sign-up, confirm, manage, unsubscribe and a reader's day.

`add_email_pages` mounts them on the one aiohttp application (`digest.web.build_web_app`):

- `GET /subscribe` (form: address, tracked keywords to tick, free-form queries when
  `email.allow_custom_queries`), `POST /subscribe` (rate-limited per client address);
- `GET /confirm?token=` shows what will be confirmed, `POST /confirm` confirms (a POST so
  mail scanners that open links cannot confirm for the reader);
- `GET /manage?token=` / `POST /manage`: change keywords or leave, no password;
- `GET /unsubscribe?token=` shows one button; `POST /unsubscribe?token=` is RFC 8058's
  one-click unsubscribe: no cookies, no login, idempotent, always 200 for a valid token;
- `GET /day?token=`: every paper mailed to one address on one day (a digest too long for one
  email links here for what it left out).

Without a sign-up service (email off) every one of them answers 404.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable
from datetime import date
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiDictProxy

from digest.archive import day_bounds
from digest.domain import Batch, Target
from digest.errors import DailyPapersError
from digest.mail.bookkeeping import EMAIL
from digest.mail.links import CONFIRM_TTL, MANAGE_TTL, TokenError
from digest.mail.render import digest_sections
from digest.mail.signup import EmailSubscriptions, RateLimiter, SubscriberView
from digest.summary import with_stored_texts
from digest.web_pages import SETTINGS_KEY, STORE_KEY, message_page, render_page

log = logging.getLogger(__name__)

FORM_LIMIT = 5  # sign-ups per client per window: enough for typos, too few to mail-bomb anyone
FORM_WINDOW = 600.0  # seconds
MAX_FORM_BYTES = 64 * 1024  # a sign-up form is a few hundred bytes; refuse anything silly

SUBSCRIPTIONS_KEY = web.AppKey("subscriptions", EmailSubscriptions)
LIMITER_KEY = web.AppKey("form_limiter", RateLimiter)


def _signup(request: web.Request) -> EmailSubscriptions:
    service = request.app.get(SUBSCRIPTIONS_KEY)
    if service is None:
        raise web.HTTPNotFound(
            text="Email digests are not enabled on this server.", content_type="text/plain"
        )
    return service


def _client(request: web.Request) -> str:
    """The client's address for rate limiting (the peer: forwarded headers can be forged)."""
    return request.remote or "unknown"


# What to do with a link that does not work, by the link's purpose: each kind of link lives
# for a different time, and a reader trying to leave must never be offered to subscribe.
_BAD_LINK_ADVICE: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "confirm": (
        f"Confirmation links work for {int(CONFIRM_TTL.total_seconds() // 3600)} hours. "
        "Sign up again to get a new one.",
        [("/subscribe", "Sign up again")],
    ),
    "manage": (
        f"Links to change your keywords work for {MANAGE_TTL.days} days, and every digest "
        "carries a fresh one: use the Change keywords link of your newest digest.",
        [],
    ),
    "unsubscribe": (
        "Unsubscribe links never expire, so this one was changed or cut short on its way here. "
        "Use the Unsubscribe link at the bottom of any digest (the whole link), or the "
        "Unsubscribe button your mail app shows next to the sender.",
        [],
    ),
    "day": (
        f"Links to a day's papers work for {MANAGE_TTL.days} days; every digest that leaves "
        "papers out carries a fresh one.",
        [],
    ),
}


def _token_page(exc: TokenError, purpose: str) -> web.Response:
    advice, links = _BAD_LINK_ADVICE[purpose]
    return message_page(
        "This link does not work", str(exc), advice, status=400, error=True, links=links
    )


async def _form(request: web.Request) -> MultiDictProxy[Any]:
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise web.HTTPRequestEntityTooLarge(
            max_size=MAX_FORM_BYTES, actual_size=request.content_length
        )
    return await request.post()


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


# -- /subscribe ------------------------------------------------------------------------------


async def _subscribe_form(
    request: web.Request,
    *,
    status: int = 200,
    error: str = "",
    address: str = "",
    chosen: Iterable[str] = (),
    queries: str = "",
) -> web.Response:
    service = _signup(request)
    keywords = await service.tracked_keywords()
    return render_page(
        "subscribe.html.j2",
        status=status,
        title="Subscribe",
        keywords=keywords,
        allow_custom=service.settings.email.allow_custom_queries,
        error=error,
        address=address,
        chosen=set(chosen),
        queries=queries,
    )


async def subscribe_get(request: web.Request) -> web.StreamResponse:
    """The sign-up form (keywords in `?keyword=` come pre-ticked)."""
    return await _subscribe_form(request, chosen=request.query.getall("keyword", []))


async def subscribe_post(request: web.Request) -> web.StreamResponse:
    """Record the sign-up and mail the confirmation link."""
    service = _signup(request)
    wait = request.app[LIMITER_KEY].hit(_client(request))
    if wait:
        log.warning("web.subscribe_throttled")
        return message_page(
            "Too many requests",
            "Too many sign-ups from your network just now. Please wait a few minutes and "
            "try again.",
            status=429,
            error=True,
            headers={"Retry-After": str(math.ceil(wait))},
        )
    form = await _form(request)
    address = str(form.get("address", ""))
    chosen = [str(v) for v in form.getall("keyword", [])]
    queries = str(form.get("queries", "")) if service.settings.email.allow_custom_queries else ""
    try:
        result = await service.request(address, [*chosen, *_lines(queries)])
    except DailyPapersError as exc:
        return await _subscribe_form(
            request, status=400, error=str(exc), address=address, chosen=chosen, queries=queries
        )
    # The same words whether or not a mail went out now: the page must not tell a stranger
    # whether an address is already subscribed or asked recently.
    return message_page(
        "Check your inbox",
        f"We sent a confirmation link to {result.address}. Click it to start your daily "
        "email. Only one link is sent per hour, so if you asked a moment ago, use the first "
        "one.",
        "Nothing is sent to this address until the link is clicked.",
    )


# -- /confirm --------------------------------------------------------------------------------


async def confirm_get(request: web.Request) -> web.StreamResponse:
    """Show what the confirmation will start, with the confirm button."""
    service = _signup(request)
    token = request.query.get("token", "")
    try:
        claims = service.verify(token, "confirm")
    except TokenError as exc:
        return _token_page(exc, "confirm")
    view = await service.view(claims.address)
    return render_page("confirm.html.j2", title="Confirm", view=view, token=token)


async def confirm_post(request: web.Request) -> web.StreamResponse:
    """Activate the unconfirmed keywords of the token's address (idempotent)."""
    service = _signup(request)
    form = await _form(request)
    token = str(form.get("token", "")) or request.query.get("token", "")
    try:
        view, activated = await service.confirm(token)
    except TokenError as exc:
        return _token_page(exc, "confirm")
    if not view.active:  # unsubscribed since the link was sent, or removed by the operator
        return message_page(
            "Nothing to confirm",
            f"{view.address} has no subscription waiting for confirmation.",
            links=[("/subscribe", "Subscribe")],
        )
    manage = service.manage_token(view.address)
    what = "You are subscribed" if activated else "Already confirmed"
    return message_page(
        what,
        f"{view.address} gets a daily email with new arXiv papers for:",
        items=view.active,
        links=[(f"/manage?token={manage}", "Change keywords or unsubscribe")],
    )


# -- /manage ---------------------------------------------------------------------------------


async def _manage_page(
    request: web.Request,
    service: EmailSubscriptions,
    token: str,
    view: SubscriberView,
    *,
    notice: str = "",
    error: str = "",
    status: int = 200,
) -> web.Response:
    tracked = await service.tracked_keywords()
    keywords = list(dict.fromkeys([*view.keywords, *tracked]))
    unsubscribe = service.unsubscribe_token(view.address)
    return render_page(
        "manage.html.j2",
        status=status,
        title="Your subscription",
        view=view,
        token=token,
        keywords=keywords,
        chosen=set(view.active),
        disabled=dict(view.disabled),
        allow_custom=service.settings.email.allow_custom_queries,
        unsubscribe_action=f"/unsubscribe?token={unsubscribe}",
        notice=notice,
        error=error,
    )


async def manage_get(request: web.Request) -> web.StreamResponse:
    """The address's keywords as ticked boxes, and an unsubscribe button."""
    service = _signup(request)
    token = request.query.get("token", "")
    try:
        claims = service.verify(token, "manage")
    except TokenError as exc:
        return _token_page(exc, "manage")
    return await _manage_page(request, service, token, await service.view(claims.address))


async def manage_post(request: web.Request) -> web.StreamResponse:
    """Save the ticked keywords (none ticked = unsubscribe)."""
    service = _signup(request)
    form = await _form(request)
    token = str(form.get("token", "")) or request.query.get("token", "")
    chosen = [str(v) for v in form.getall("keyword", [])]
    queries = str(form.get("queries", "")) if service.settings.email.allow_custom_queries else ""
    try:
        claims = service.verify(token, "manage")
        view = await service.update(token, [*chosen, *_lines(queries)])
    except TokenError as exc:
        return _token_page(exc, "manage")
    except DailyPapersError as exc:
        view = await service.view(claims.address)
        return await _manage_page(request, service, token, view, error=str(exc), status=400)
    if not view.active and not view.pending:
        return message_page(
            "You are unsubscribed",
            f"No more daily emails go to {view.address}.",
            links=[("/subscribe", "Subscribe again")],
        )
    if not view.confirmed:
        # Unsubscribed since this link was mailed (or never confirmed): starting again takes
        # the same double opt-in as any sign-up.
        return message_page(
            "Check your inbox",
            f"{view.address} is not confirmed, so nothing was started. We sent a confirmation "
            "link there (at most one per hour, so if one came a moment ago, use that one); "
            "your keywords start once it is clicked.",
            items=view.pending,
        )
    return await _manage_page(request, service, token, view, notice="Your keywords are saved.")


# -- /unsubscribe ----------------------------------------------------------------------------


async def unsubscribe_get(request: web.Request) -> web.StreamResponse:
    """One button; GET itself changes nothing (link scanners open every link)."""
    service = _signup(request)
    token = request.query.get("token", "")
    try:
        claims = service.verify(token, "unsubscribe")
    except TokenError as exc:
        return _token_page(exc, "unsubscribe")
    return render_page(
        "unsubscribe.html.j2",
        title="Unsubscribe",
        address=claims.address,
        action=f"/unsubscribe?token={token}",
    )


async def unsubscribe_post(request: web.Request) -> web.StreamResponse:
    """RFC 8058 one-click unsubscribe: token in the URL, no cookies, idempotent."""
    service = _signup(request)
    token = request.query.get("token", "")
    if not token:
        form = await _form(request)
        token = str(form.get("token", ""))
    try:
        address = await service.unsubscribe(token)
    except TokenError as exc:
        return _token_page(exc, "unsubscribe")
    return message_page(
        "You are unsubscribed",
        f"No more daily emails go to {address}.",
        links=[("/subscribe", "Subscribe again")],
    )


# -- /day ------------------------------------------------------------------------------------


async def day_get(request: web.Request) -> web.StreamResponse:
    """Every paper mailed to the token's address on the token's day: where a digest too long
    for one email sends its reader for the papers it left out."""
    service = _signup(request)
    token = request.query.get("token", "")
    try:
        claims = service.verify(token, "day")
        day = date.fromisoformat(claims.day)
    except TokenError as exc:
        return _token_page(exc, "day")
    except ValueError:
        return _token_page(TokenError("This link is damaged. Copy the whole link."), "day")
    settings = request.app[SETTINGS_KEY]
    store = request.app[STORE_KEY]
    target = Target(kind=EMAIL, address=claims.address)
    start, end = day_bounds(day, settings.service.timezone)
    deliveries = await asyncio.to_thread(store.sent_between, target, start, end)
    batch = Batch(target=target, deliveries=tuple(deliveries))
    batch = await asyncio.to_thread(with_stored_texts, store, settings, batch)
    language = batch.language or ""
    return render_page(
        "day.html.j2",
        title=f"Papers of {day.isoformat()}",
        day=day.isoformat(),
        address=claims.address,
        count=len(batch.papers),
        sections=digest_sections(batch),
        language=language,
        language_label=language.upper(),
        manage_url=f"/manage?{urlencode({'token': service.manage_token(claims.address)})}",
    )


def add_email_pages(
    app: web.Application,
    *,
    subscriptions: EmailSubscriptions | None,
    form_limiter: RateLimiter | None = None,
) -> None:
    """Mount the email pages on `app`; they answer 404 while `subscriptions` is None."""
    app[LIMITER_KEY] = form_limiter or RateLimiter(limit=FORM_LIMIT, window=FORM_WINDOW)
    if subscriptions is not None:
        app[SUBSCRIPTIONS_KEY] = subscriptions
    app.add_routes(
        [
            web.get("/subscribe", subscribe_get),
            web.post("/subscribe", subscribe_post),
            web.get("/confirm", confirm_get),
            web.post("/confirm", confirm_post),
            web.get("/manage", manage_get),
            web.post("/manage", manage_post),
            web.get("/unsubscribe", unsubscribe_get),
            web.post("/unsubscribe", unsubscribe_post),
            web.get("/day", day_get),
        ]
    )


__all__ = [
    "FORM_LIMIT",
    "FORM_WINDOW",
    "MAX_FORM_BYTES",
    "SUBSCRIPTIONS_KEY",
    "add_email_pages",
]
