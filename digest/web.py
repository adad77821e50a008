"""The web server of `daily-papers serve`: email sign-up pages, one-click unsubscribe, health.

`build_web_app` returns one aiohttp `web.Application`:

- `GET /subscribe` (form: address, tracked keywords to tick, free-form queries when
  `email.allow_custom_queries`), `POST /subscribe` (rate-limited per client address);
- `GET /confirm?token=` shows what will be confirmed, `POST /confirm` confirms (a POST so
  mail scanners that open links cannot confirm for the reader);
- `GET /manage?token=` / `POST /manage`: change keywords or leave, no password;
- `GET /unsubscribe?token=` shows one button; `POST /unsubscribe?token=` is RFC 8058's
  one-click unsubscribe: no cookies, no login, idempotent, always 200 for a valid token;
- `GET /day?token=`: every paper mailed to one address on one day (a digest too long for one
  email links here for what it left out);
- `GET /healthz`: JSON, 200 when the last cycle is recent by the schedule and the database
  answers, 503 with the reason otherwise (`digest.monitoring.assess_health`);
- `GET /metrics`: Prometheus metrics (`digest.metrics`).

Pages are server-rendered from `templates/web/*.html.j2` (autoescaped) with a strict
Content-Security-Policy (no scripts at all) and `Referrer-Policy: no-referrer`, because the
URLs carry tokens. Other modules add routes (the Slack HTTP endpoint) with `routes=` or
`app.router` before the server starts; `WebServer` runs the app (`async with` or start/stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from functools import partial
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiDictProxy

from digest.archive import day_bounds
from digest.config import Settings
from digest.domain import Batch, Target
from digest.errors import ConfigError, DailyPapersError
from digest.mail import EMAIL
from digest.mail.links import CONFIRM_TTL, MANAGE_TTL, TokenError
from digest.mail.render import digest_sections
from digest.mail.signup import EmailSubscriptions, RateLimiter, SubscriberView
from digest.metrics import CONTENT_TYPE, Metrics
from digest.monitoring import check_health, health_json
from digest.render import get_environment
from digest.store import PaperStore

log = logging.getLogger(__name__)

FORM_LIMIT = 5  # sign-ups per client per window: enough for typos, too few to mail-bomb anyone
FORM_WINDOW = 600.0  # seconds
MAX_FORM_BYTES = 64 * 1024  # a sign-up form is a few hundred bytes; refuse anything silly

SECURITY_HEADERS = {
    # No scripts, no remote anything; inline <style> only; forms post back here only.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",  # links carry tokens; never leak them to other sites
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",  # pages show an address and tokens: keep them out of caches
}


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ServerClock:
    """The clock /healthz judges by, and when this server started (a fresh install is healthy
    for a while after it: `serve` runs its first cycle at once)."""

    now: Callable[[], datetime] = _utcnow
    started: datetime = field(default_factory=_utcnow)


SUBSCRIPTIONS_KEY = web.AppKey("subscriptions", EmailSubscriptions)
METRICS_KEY = web.AppKey("metrics", Metrics)
CLOCK_KEY = web.AppKey("clock", ServerClock)
STORE_KEY = web.AppKey("store", PaperStore)
SETTINGS_KEY = web.AppKey("settings", Settings)
LIMITER_KEY = web.AppKey("form_limiter", RateLimiter)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def render_page(template: str, *, status: int = 200, **context: Any) -> web.Response:
    """A page from `templates/web/<template>` as an HTML response."""
    html = get_environment().get_template(f"web/{template}").render(**context)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def message_page(
    title: str,
    *paragraphs: str,
    status: int = 200,
    error: bool = False,
    items: Iterable[str] = (),
    links: Iterable[tuple[str, str]] = (),
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """A short result or error page."""
    response = render_page(
        "message.html.j2",
        status=status,
        title=title,
        paragraphs=list(paragraphs),
        error=error,
        items=list(items),
        links=list(links),
    )
    if headers:
        response.headers.update(headers)
    return response


@web.middleware
async def _security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


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
    language = settings.translation.language
    if language and deliveries:
        ids = [p.arxiv_id for p in batch.papers]
        found = await asyncio.to_thread(store.get_translations, ids, language)
        batch = replace(batch, language=language, translations=found)
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


# -- /healthz --------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.StreamResponse:
    """200 when the last cycle is recent (by the schedule) and the database answers; else 503.
    The JSON says why either way."""
    clock = request.app[CLOCK_KEY]
    check = partial(
        check_health,
        request.app[SETTINGS_KEY],
        request.app[STORE_KEY],
        server_started=clock.started,
        now=clock.now(),
    )
    try:
        health = await asyncio.to_thread(check)
    except DailyPapersError as exc:
        log.error("web.healthz_failed error=%s", exc)
        body = {
            "status": "error",
            "reason": "database unavailable",
            "error": "database unavailable",
        }
        return web.json_response(body, status=503)
    if not health.ok:
        log.warning("web.healthz_unhealthy reason=%r", health.reason)
    return web.json_response(health_json(health), status=200 if health.ok else 503)


async def metrics_page(request: web.Request) -> web.StreamResponse:
    """Prometheus metrics: the deployment's, read from the database now, and this process's."""
    body = await asyncio.to_thread(request.app[METRICS_KEY].render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def index(request: web.Request) -> web.StreamResponse:
    """The root sends people to the sign-up form."""
    if request.app.get(SUBSCRIPTIONS_KEY) is None:
        return message_page("daily-papers", "This server delivers daily arXiv papers.")
    raise web.HTTPFound("/subscribe")


def build_web_app(
    *,
    settings: Settings,
    store: PaperStore,
    subscriptions: EmailSubscriptions | None = None,
    routes: Iterable[web.AbstractRouteDef] = (),
    form_limiter: RateLimiter | None = None,
    metrics: Metrics | None = None,
    clock: ServerClock | None = None,
) -> web.Application:
    """The one aiohttp application; sign-up pages only when `subscriptions` is given.

    `routes` are mounted as they are (e.g. `web.post("/slack/events", handler)`); more can be
    added through `app.router` until the server starts. `metrics` holds this process's counters
    (`serve` shares it with its cycles); `clock` is what /healthz judges by.
    """
    app = web.Application(middlewares=[_security_headers], client_max_size=MAX_FORM_BYTES * 4)
    app[SETTINGS_KEY] = settings
    app[STORE_KEY] = store
    app[LIMITER_KEY] = form_limiter or RateLimiter(limit=FORM_LIMIT, window=FORM_WINDOW)
    app[METRICS_KEY] = metrics or Metrics(settings=settings, store=store)
    app[CLOCK_KEY] = clock or ServerClock()
    if subscriptions is not None:
        app[SUBSCRIPTIONS_KEY] = subscriptions
    app.add_routes(
        [
            web.get("/", index),
            web.get("/healthz", healthz),
            web.get("/metrics", metrics_page),
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
    app.add_routes(list(routes))
    return app


class WebServer:
    """Runs an app on host:port (or a bound socket); `async with` or start()/stop()."""

    def __init__(
        self,
        *,
        app: web.Application,
        host: str = "127.0.0.1",
        port: int = 8080,
        sock: socket.socket | None = None,
        shutdown_timeout: float = 5.0,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._sock = sock
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)

    @property
    def url(self) -> str:
        """Where the server listens (the real port, also when 0 was asked for)."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind and serve."""
        await self._runner.setup()
        site: web.BaseSite
        if self._sock is not None:
            site = web.SockSite(self._runner, self._sock)
        else:
            site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server  # aiohttp exposes the bound sockets only here
        if server is not None and hasattr(server, "sockets") and server.sockets:
            self.host, self.port = server.sockets[0].getsockname()[:2]
        log.info("web.started url=%s", self.url)

    async def stop(self) -> None:
        """Stop serving and close connections."""
        await self._runner.cleanup()
        log.info("web.stopped")

    async def __aenter__(self) -> WebServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def start_web(
    settings: Settings,
    *,
    store: PaperStore,
    stack: contextlib.AsyncExitStack,
    subscriptions: EmailSubscriptions | None = None,
    routes: Iterable[web.AbstractRouteDef] = (),
    metrics: Metrics | None = None,
    clock: ServerClock | None = None,
) -> WebServer:
    """`serve`'s entry point: the web app on web.host:web.port, stopped with `stack`."""
    app = build_web_app(
        settings=settings,
        store=store,
        subscriptions=subscriptions,
        routes=routes,
        metrics=metrics,
        clock=clock,
    )
    server = WebServer(app=app, host=settings.web.host, port=settings.web.port)
    try:
        await stack.enter_async_context(server)
    except OSError as exc:  # port taken, address not on this host, no permission
        raise ConfigError(
            f"the web server cannot listen on {settings.web.host}:{settings.web.port} "
            f"({exc.strerror or exc}): set web.port (or DAILY_PAPERS_WEB_PORT) to a free port"
        ) from exc
    return server


__all__ = [
    "SECURITY_HEADERS",
    "ServerClock",
    "WebServer",
    "build_web_app",
    "message_page",
    "render_page",
    "start_web",
]
