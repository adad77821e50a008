"""The web server of `daily-papers serve`: the email pages, health, metrics, mounted routes.

`build_web_app` returns one aiohttp `web.Application`:

- the email pages (`/subscribe`, `/confirm`, `/manage`, `/unsubscribe` with RFC 8058's
  one-click, `/day`), from `digest.mail.pages`;
- `GET /healthz`: JSON, 200 when the last cycle is recent by the schedule and the database
  answers, 503 with the reason otherwise (`digest.monitoring.assess_health`);
- `GET /metrics`: Prometheus metrics (`digest.metrics`);
- `GET /feeds/<slug>.atom` and `/feeds/index.opml` (feeds.enabled): the files the cycle wrote
  next to the README (`digest.feeds`), with a strong ETag and Last-Modified, answering 304.

Pages are server-rendered from `templates/web/*.html.j2` (autoescaped, `digest.web_pages`) with
a strict Content-Security-Policy (no scripts at all) and `Referrer-Policy: no-referrer`, because
the URLs carry tokens. Other modules add routes (the Slack HTTP endpoint) with `routes=` or
`app.router` before the server starts; `WebServer` runs the app (`async with` or start/stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

from aiohttp import web

from digest.config import Settings
from digest.errors import ConfigError, DailyPapersError
from digest.feeds import content_type, is_feed_name, read_feed
from digest.mail.pages import MAX_FORM_BYTES, SUBSCRIPTIONS_KEY, add_email_pages
from digest.mail.signup import EmailSubscriptions, RateLimiter
from digest.metrics import CONTENT_TYPE, Metrics
from digest.monitoring import check_health, health_json
from digest.store import PaperStore
from digest.web_pages import SETTINGS_KEY, STORE_KEY, message_page

log = logging.getLogger(__name__)


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


METRICS_KEY = web.AppKey("metrics", Metrics)
CLOCK_KEY = web.AppKey("clock", ServerClock)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


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


# -- /feeds/ ---------------------------------------------------------------------------------

# Feed readers poll: let them (and proxies) keep a copy but ask every time; a 304 costs nothing.
FEED_CACHE_CONTROL = "public, no-cache"


def _not_modified(request: web.Request, etag: str, modified: datetime) -> bool:
    """RFC 9110 13.2.2: If-None-Match decides when sent (weak comparison); else
    If-Modified-Since (`modified` in whole seconds, as the header carries it)."""
    if_none_match = request.if_none_match
    if if_none_match is not None:
        return any(tag.value in (etag, "*") for tag in if_none_match)
    since = request.if_modified_since
    return since is not None and modified <= since


async def feed_file(request: web.Request) -> web.StreamResponse:
    """A keyword's Atom feed or the OPML of them all: the bytes the last cycle wrote."""
    settings = request.app[SETTINGS_KEY]
    name = request.match_info["name"]
    if not settings.feeds.enabled or not is_feed_name(name):
        raise web.HTTPNotFound()
    try:
        written = await asyncio.to_thread(read_feed, settings.feeds_path, name)
    except DailyPapersError as exc:
        log.error("web.feed_failed name=%s error=%s", name, exc)
        raise web.HTTPServiceUnavailable() from exc
    if written is None:
        raise web.HTTPNotFound()
    etag = hashlib.sha256(written.data).hexdigest()[:32]  # strong: the same bytes, the same tag
    modified = written.modified.replace(microsecond=0)  # HTTP dates have whole seconds
    headers = {"Cache-Control": FEED_CACHE_CONTROL}
    if _not_modified(request, etag, modified):
        response = web.Response(status=304, headers=headers)
    else:
        response = web.Response(
            body=written.data, headers={**headers, "Content-Type": content_type(name)}
        )
    response.etag = etag
    response.last_modified = modified
    return response


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
    app[METRICS_KEY] = metrics or Metrics(settings=settings, store=store)
    app[CLOCK_KEY] = clock or ServerClock()
    app.add_routes(
        [
            web.get("/", index),
            web.get("/healthz", healthz),
            web.get("/metrics", metrics_page),
            web.get("/feeds/{name}", feed_file),
        ]
    )
    add_email_pages(app, subscriptions=subscriptions, form_limiter=form_limiter)
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
    "start_web",
]
