"""A fake Slack Web API (and response_url endpoint) on 127.0.0.1, for the real slack_sdk client.

It answers like Slack: `{"ok": true, "ts": ...}` for a post, `{"ok": false, "error": ...}` with
HTTP 200 for an API error, HTTP 429 with `Retry-After` for a rate limit. Every request is
recorded. Answers can be scripted per method, one per call, in order; unscripted calls get
Slack's normal success answer. `apps.connections.open` (Socket Mode) answers invalid_auth to any
other token than `app_token`, else its script, else the URL of the fake's Socket Mode WebSocket.

    async with FakeSlackApi() as slack:
        slack.script("chat.postMessage", rate_limited(retry_after=0), error("is_archived"))
        client = AsyncWebClient(token="xoxb-test", base_url=slack.api_url)
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import defaultdict, deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web

BOT_TOKEN = "xoxb-fake-bot-token"
APP_TOKEN = "xapp-fake-app-token"  # Socket Mode's app-level token (apps.connections.open only)
BOT_USER_ID = "UBOT0000"
TEAM_ID = "T0000TEST"


@dataclass(frozen=True)
class FakeAnswer:
    """One scripted answer: HTTP status, JSON body, headers, and an optional delay."""

    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def ok(**fields: Any) -> FakeAnswer:
    """A success with extra fields (the default answer is filled in for unscripted fields)."""
    return FakeAnswer(body={"ok": True, **fields})


def error(code: str, status: int = 200) -> FakeAnswer:
    """A Slack API error: HTTP 200 with ok=false, as Slack sends them."""
    return FakeAnswer(status=status, body={"ok": False, "error": code})


def rate_limited(retry_after: int = 0) -> FakeAnswer:
    """HTTP 429 with Retry-After, as Slack rate-limits a method."""
    return FakeAnswer(
        status=429,
        body={"ok": False, "error": "ratelimited"},
        headers={"Retry-After": str(retry_after)},
    )


def server_error(status: int = 500) -> FakeAnswer:
    """An HTTP 5xx with an HTML body, as a proxy in front of Slack would send."""
    return FakeAnswer(status=status, body=None)


@dataclass(frozen=True)
class Call:
    """One request the fake received."""

    method: str  # "chat.postMessage", or "response:<name>" for a response_url post
    params: dict[str, Any]
    token: str | None
    status: int  # what the fake answered
    body: dict[str, Any] | None


class FakeSlackApi:
    """The fake server. Use as an async context manager; it binds an ephemeral port."""

    def __init__(self, *, token: str = BOT_TOKEN, app_token: str = APP_TOKEN) -> None:
        self.token = token
        self.app_token = app_token
        # Socket Mode: what the app sent over the WebSocket (acks carry the envelope_id).
        self.socket_messages: list[dict[str, Any]] = []
        self.socket_connected = asyncio.Event()
        self.socket_message_received = asyncio.Event()
        self._sockets: list[web.WebSocketResponse] = []
        self.calls: list[Call] = []
        self.users: dict[str, dict[str, Any]] = {}
        self._scripts: dict[str, deque[FakeAnswer]] = defaultdict(deque)
        self._ts = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.response_received = asyncio.Event()

    # -- scripting -------------------------------------------------------------------------
    def script(self, method: str, *answers: FakeAnswer) -> None:
        """Queue answers for the next calls of `method` (then back to normal answers)."""
        self._scripts[method].extend(answers)

    def add_user(self, user_id: str, *, is_admin: bool = False, is_owner: bool = False) -> None:
        """Make `users.info` know a user and their workspace role."""
        self.users[user_id] = {
            "id": user_id,
            "team_id": TEAM_ID,
            "name": user_id.lower(),
            "is_admin": is_admin,
            "is_owner": is_owner,
            "is_primary_owner": False,
            "is_bot": False,
        }

    # -- what was received -----------------------------------------------------------------
    @property
    def api_url(self) -> str:
        """The base URL to give AsyncWebClient (ends with a slash, as slack_sdk expects)."""
        return f"http://127.0.0.1:{self.port}/api/"

    def response_url(self, name: str = "cmd") -> str:
        """A response_url for a slash command payload; posts to it are recorded."""
        return f"http://127.0.0.1:{self.port}/response/{name}"

    def calls_to(self, method: str) -> list[Call]:
        """The calls of one method, in order."""
        return [c for c in self.calls if c.method == method]

    def posted(self) -> list[Call]:
        """chat.postMessage calls Slack accepted (what a channel actually shows)."""
        return [c for c in self.calls_to("chat.postMessage") if c.body and c.body.get("ok")]

    def responses(self, name: str = "cmd") -> list[dict[str, Any]]:
        """Bodies posted to `response_url(name)`."""
        return [c.params for c in self.calls if c.method == f"response:{name}"]

    # -- the server ------------------------------------------------------------------------
    async def __aenter__(self) -> FakeSlackApi:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/response/{name}", self._response)
        app.router.add_get("/socket", self._socket)
        # A short shutdown: a scripted hang must not hold up the test's end.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for socket in self._sockets:
            await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @staticmethod
    async def _params(request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        raw = await request.text()
        if not raw:
            return params
        if request.content_type == "application/json":
            params.update(json.loads(raw))
        else:
            params.update(dict(parse_qsl(raw, keep_blank_values=True)))
        # slack_sdk form-encodes nested values (blocks) as JSON strings.
        for key in ("blocks", "attachments"):
            if isinstance(params.get(key), str):
                params[key] = json.loads(params[key])
        return params

    def _default(self, method: str, params: dict[str, Any]) -> FakeAnswer:
        if method == "auth.test":
            return ok(
                url="https://fake.slack.test/",
                team="Fake",
                user="daily-papers",
                team_id=TEAM_ID,
                user_id=BOT_USER_ID,
                bot_id="BFAKE",
            )
        if method == "chat.postMessage":
            ts = f"1700000000.{next(self._ts):06d}"
            return ok(channel=params.get("channel"), ts=ts, message={"ts": ts})
        if method == "users.info":
            user = self.users.get(str(params.get("user")))
            return ok(user=user) if user else error("user_not_found")
        return ok()

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await self._params(request)
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        token = token or params.get("token")
        if method == "apps.connections.open":
            if token != self.app_token:
                answer = error("invalid_auth")
            elif self._scripts[method]:
                answer = self._scripts[method].popleft()
            else:
                answer = ok(url=f"ws://127.0.0.1:{self.port}/socket")
        elif token != self.token:
            answer = error("not_authed" if token is None else "invalid_auth")
        elif self._scripts[method]:
            answer = self._scripts[method].popleft()
        else:
            answer = self._default(method, params)
        if answer.body is not None and answer.body.get("ok") and method == "chat.postMessage":
            # Scripted successes still need a ts, as threads hang off it.
            default = self._default(method, params)
            assert default.body is not None
            answer = FakeAnswer(body={**default.body, **answer.body}, delay=answer.delay)
        if answer.delay:
            await asyncio.sleep(answer.delay)
        self.calls.append(Call(method, params, token, answer.status, answer.body))
        if answer.body is None:
            return web.Response(
                status=answer.status, text="<html>upstream error</html>", content_type="text/html"
            )
        return web.json_response(answer.body, status=answer.status, headers=answer.headers)

    async def close_sockets(self) -> None:
        """Close every Socket Mode connection (as Slack going away would)."""
        for socket in list(self._sockets):
            await socket.close()

    async def push(self, envelope: dict[str, Any]) -> None:
        """Send a Socket Mode envelope (e.g. a slash command) to every connected app."""
        for socket in self._sockets:
            await socket.send_json(envelope)

    async def push_raw(self, text: str) -> None:
        """Send a text frame as is (e.g. one that is not JSON) to every connected app."""
        for socket in self._sockets:
            await socket.send_str(text)

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._sockets.append(socket)
        await socket.send_json({"type": "hello", "num_connections": 1})
        self.socket_connected.set()
        async for message in socket:
            if message.type == aiohttp.WSMsgType.TEXT:
                self.socket_messages.append(json.loads(message.data))
                self.socket_message_received.set()
        self._sockets.remove(socket)
        return socket

    async def _response(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        params = await self._params(request)
        self.calls.append(Call(f"response:{name}", params, None, 200, {"ok": True}))
        self.response_received.set()
        return web.Response(text="ok")
