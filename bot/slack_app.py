"""The Slack side of `/papers`: a slack-bolt AsyncApp that acknowledges, then delegates.

Every slash command is acknowledged at once (Slack shows an error after 3 seconds), then run
through the platform-free `bot.commands.CommandService` with Slack's mrkdwn markup, and the
reply goes back through the command's `response_url`: in the channel for confirmations that
change it, ephemeral otherwise.

Two ways to receive commands, chosen by the secrets:
- Socket Mode when `SLACK_APP_TOKEN` is set: the app dials out to Slack over a WebSocket, so no
  public URL is needed (the default for self-hosting). `start()` / `stop()` or `async with`.
- HTTP mode otherwise: Slack POSTs to `/slack/events` on the shared web server, every request
  checked against `SLACK_SIGNING_SECRET` (bad or older than five minutes: 401). `routes()` gives
  the aiohttp routes for the composition root to mount.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.commands import Command, CommandService, Invocation
from bot.slack_channel import SlackMarkup, client_from_settings
from digest.config import Settings
from digest.domain import Target, TargetKind
from digest.errors import ConfigError, PlatformUnreachable
from digest.likes import SeedSource
from digest.platforms import NETWORK_ERRORS, describe_error, start_supervisor
from digest.store import PaperStore

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"  # the Request URL to enter in the Slack app config (HTTP mode)
PING_SECONDS = 10.0  # slack-bolt's default ping interval (slack_sdk's stale check is 4 of them)
CHECK_SECONDS = PING_SECONDS  # how often the supervisor's watch looks at the connection
LOST_CHECKS = 3  # checks in a row without a connection before it counts as lost (not a refresh)
CONNECT_SECONDS = 30.0  # for the WebSocket to open once apps.connections.open has answered
# service.test_mode: a lost connection is noticed within 0.15 s, a dead URL within 1 s.
TEST_CHECK_SECONDS, TEST_CONNECT_SECONDS = 0.05, 1.0
# apps.connections.open's errors that mean the app-level token itself is not accepted.
REFUSED_TOKEN_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "token_revoked",
        "token_expired",
        "account_inactive",
        "not_allowed_token_type",  # a bot token (xoxb-) where the app token (xapp-) belongs
    }
)


# Slack sends a slash command's text the way it stores messages: `&`, `<` and `>` as entities,
# and what it recognised while the person typed (links, e-mail addresses, channels, users,
# groups, dates) as <target|label> forms. https://api.slack.com/reference/surfaces/formatting
_SLACK_FORM = re.compile(r"<([^<>]*)>")
_SLACK_ENTITY = re.compile(r"&(amp|lt|gt);")
_ENTITIES = {"amp": "&", "lt": "<", "gt": ">"}


def _resolve_form(inner: str) -> str:
    """What the person typed for one <...> form: its label, or a readable form of its target."""
    target, _, label = inner.partition("|")
    if target.startswith("#"):  # a channel: <#C123|general>
        return "#" + (label or target[1:])
    if target.startswith("@"):  # a user: <@U123|bob> (older clients) or <@U123>
        return "@" + label if label else target
    if target.startswith("!"):  # <!here>, <!channel>, <!subteam^S1|@team>, <!date^...|text>
        return label or "@" + target[1:].split("^", 1)[0]
    if label:  # a link as the person typed it: <http://r-d.org|r-d.org>, <mailto:a@b|a@b>
        return label
    return target.removeprefix("mailto:")


def command_text(text: str) -> str:
    """A slash command's text as the person typed it: Slack's <...> forms resolved, then its
    `&amp;`, `&lt;` and `&gt;` decoded (in one pass, so `&amp;lt;` stays `&lt;`).

    `/papers subscribe R&D robotics` arrives as `subscribe R&amp;D robotics` and must store the
    same query as the CLI's `R&D robotics`.
    """
    resolved = _SLACK_FORM.sub(lambda m: _resolve_form(m.group(1)), text)
    return _SLACK_ENTITY.sub(lambda m: _ENTITIES[m.group(1)], resolved)


class _NetworkTracebacks(logging.Filter):
    """slack_sdk logs a failed connection attempt with its traceback; the supervisor reports the
    failure on one line already, so keep slack_sdk's message and drop the traceback of expected
    network errors (a bug's traceback stays)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Strip the traceback of a network error; let every record through."""
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, (*NETWORK_ERRORS, SlackApiError)):
            record.exc_info = None
            record.exc_text = None
        return True


# slack_sdk's Socket Mode client logs here (configure_logging quiets `slack_sdk` below WARNING).
SOCKET_MODE_LOG = logging.getLogger("slack_sdk.socket_mode.daily_papers")
SOCKET_MODE_LOG.addFilter(_NetworkTracebacks())


class SlackCommandApp:
    """The `/papers` slash command for one Slack workspace."""

    def __init__(
        self,
        *,
        service: CommandService,
        settings: Settings,
        client: AsyncWebClient,
        signing_secret: str = "",
        app_token: str = "",
        check_seconds: float = CHECK_SECONDS,
        connect_seconds: float = CONNECT_SECONDS,
    ) -> None:
        self.service = service
        self._settings = settings.slack
        self._client = client
        self._app_token = app_token
        self._check_seconds = check_seconds
        self._connect_seconds = connect_seconds
        self._socket: AsyncSocketModeHandler | None = None
        self.bolt = AsyncApp(
            client=client,
            signing_secret=signing_secret,
            # Socket Mode payloads are not signed; HTTP ones always are.
            request_verification_enabled=not app_token,
            # Only the slash command is handled; any other event is answered 404 quietly.
            raise_error_for_unhandled_request=False,
            name="daily-papers",
        )
        self.bolt.command(self._settings.command)(self._on_command)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        store: PaperStore,
        request_backfill: Callable[[str], None],
        extra_commands: Sequence[Command] = (),
        client: AsyncWebClient | None = None,
        seed_source: SeedSource | None = None,
    ) -> SlackCommandApp | None:
        """The app for these settings, or None when SLACK_BOT_TOKEN is not set.

        Raises ConfigError when neither Socket Mode nor HTTP mode can work.
        """
        client = client if client is not None else client_from_settings(settings)
        if client is None:
            return None
        secrets = settings.secrets
        if not secrets.slack_app_token and not secrets.slack_signing_secret:
            raise ConfigError(
                "SLACK_BOT_TOKEN is set but neither SLACK_APP_TOKEN (Socket Mode) nor "
                "SLACK_SIGNING_SECRET (HTTP mode at /slack/events) is; set one of them"
            )
        service = CommandService(
            store=store,
            settings=settings,
            request_backfill=request_backfill,
            markup=SlackMarkup(),
            command_name=settings.slack.command,
            extra_commands=extra_commands,
            seed_source=seed_source,
        )
        return cls(
            service=service,
            settings=settings,
            client=client,
            signing_secret=secrets.slack_signing_secret,
            app_token=secrets.slack_app_token,
            check_seconds=TEST_CHECK_SECONDS if settings.service.test_mode else CHECK_SECONDS,
            connect_seconds=(
                TEST_CONNECT_SECONDS if settings.service.test_mode else CONNECT_SECONDS
            ),
        )

    @property
    def socket_mode(self) -> bool:
        """True when commands arrive over Socket Mode rather than HTTP."""
        return bool(self._app_token)

    # -- the command ----------------------------------------------------------------------
    async def _on_command(self, ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        """Acknowledge first (Slack's 3-second limit), then run the command and respond."""
        await ack()
        text = command_text(str(body.get("text") or ""))
        user_id = str(body.get("user_id") or "")
        channel_id = str(body.get("channel_id") or "")
        may_manage = await self._may_manage(user_id, text)
        invocation = Invocation(
            target=Target(kind=TargetKind.SLACK.value, address=channel_id),
            user_id=user_id,
            may_manage=may_manage,
            text=text,
        )
        reply = await self.service.handle(invocation)
        try:
            await respond(
                text=reply.text,
                response_type="in_channel" if reply.public else "ephemeral",
                unfurl_links=False,
                unfurl_media=False,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("slack.respond_failed channel=%s error=%r", channel_id, str(exc))

    async def _may_manage(self, user_id: str, text: str) -> bool:
        """Whether this user may change the channel's subscriptions (asks Slack only if needed)."""
        if not self._settings.admins_only or not self.service.needs_permission(text):
            return True
        if user_id in self._settings.admin_user_ids:
            return True
        try:
            response = await self._client.users_info(user=user_id)
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
            # Unknown means no: an outage must not open the channel to everyone.
            log.warning("slack.users_info_failed user=%s error=%r", user_id, str(exc))
            return False
        user = response.get("user") or {}
        return bool(user.get("is_admin") or user.get("is_owner") or user.get("is_primary_owner"))

    # -- HTTP mode ------------------------------------------------------------------------
    async def handle_http(self, request: web.Request) -> web.Response:
        """The aiohttp handler for Slack's POSTs (signature checked by bolt)."""
        bolt_response = await self.bolt.async_dispatch(await to_bolt_request(request))
        return await to_aiohttp_response(bolt_response)

    def routes(self, path: str = EVENTS_PATH) -> list[web.RouteDef]:
        """Routes to mount on the shared web server (none in Socket Mode)."""
        if self.socket_mode:
            return []
        return [web.post(path, self.handle_http)]

    # -- Socket Mode (a PlatformConnection, kept up by digest.platforms' supervisor) ----------
    kind = TargetKind.SLACK.value

    async def connect(self) -> None:
        """One Socket Mode connection attempt: ask Slack for a WebSocket URL with the app token,
        then open it. Raises PlatformUnreachable when Slack is down or refuses the token.

        The supervisor owns the retries: slack_sdk's client is told not to reconnect on its own
        (its loop would retry every ping interval forever, a traceback each time); it still
        follows Slack's routine "disconnect" requests, which are not failures.
        """
        if not self.socket_mode:
            return
        await self.close()
        try:
            # Asked here rather than by slack_sdk, which would retry it forever by itself.
            opened = await self._client.apps_connections_open(app_token=self._app_token)
        except SlackApiError as exc:
            error = str(exc.response.get("error") or "")
            if error in REFUSED_TOKEN_ERRORS:
                raise PlatformUnreachable(
                    f"Slack refused the app token ({error}): check SLACK_APP_TOKEN"
                ) from exc
            raise PlatformUnreachable(f"Slack answered {error or exc}") from exc
        except NETWORK_ERRORS as exc:
            raise PlatformUnreachable(f"cannot reach Slack: {describe_error(exc)}") from exc
        handler = AsyncSocketModeHandler(
            self.bolt,
            app_token=self._app_token,
            logger=SOCKET_MODE_LOG,
            web_client=self._client,
            ping_interval=PING_SECONDS,
        )
        handler.client.default_auto_reconnect_enabled = False
        handler.client.wss_uri = str(opened["url"])
        self._socket = handler
        seconds = self._connect_seconds
        try:
            async with asyncio.timeout(seconds):
                await handler.connect_async()  # type: ignore[no-untyped-call]  # bolt leaves it unannotated
        except TimeoutError as exc:
            raise PlatformUnreachable(
                f"Slack's Socket Mode WebSocket did not open within {seconds:g} s"
            ) from exc
        log.info("slack.started mode=socket command=%s", self._settings.command)

    async def wait_closed(self) -> str:
        """Watch the Socket Mode connection; return once it has been down (closed, or its pings
        unanswered) for LOST_CHECKS checks in a row."""
        down = 0
        while down < LOST_CHECKS:
            await asyncio.sleep(self._check_seconds)
            socket = self._socket
            connected = socket is not None and await socket.client.is_connected()
            down = 0 if connected else down + 1
        return "the Socket Mode connection closed or stopped answering pings"

    async def close(self) -> None:
        """Disconnect Socket Mode and release what the attempt opened (if anything)."""
        if self._socket is not None:
            socket, self._socket = self._socket, None
            await socket.close_async()  # type: ignore[no-untyped-call]  # bolt leaves it unannotated
            log.info("slack.stopped mode=socket")

    async def __aenter__(self) -> SlackCommandApp:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def start_slack(
    settings: Settings,
    *,
    store: PaperStore,
    request_backfill: Callable[[str], None],
    stack: AsyncExitStack,
    extra_commands: Sequence[Command] = (),
    seed_source: SeedSource | None = None,
) -> SlackCommandApp | None:
    """`serve`'s entry point: build the app; in Socket Mode keep it connected in the background
    (digest.platforms' supervisor, stopped with `stack`). Returns at once, Slack up or not.

    Returns None when Slack is not configured. In HTTP mode the caller mounts `app.routes()` on
    the shared web server.
    """
    app = SlackCommandApp.from_settings(
        settings,
        store=store,
        request_backfill=request_backfill,
        extra_commands=extra_commands,
        seed_source=seed_source,
    )
    if app is None:
        return None
    if app.socket_mode:
        start_supervisor(app, settings=settings, store=store, stack=stack)
    else:
        log.info("slack.started mode=http path=%s command=%s", EVENTS_PATH, settings.slack.command)
    return app
