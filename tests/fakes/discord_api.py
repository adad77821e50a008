"""A fake Discord REST API and gateway on 127.0.0.1, for discord.py pointed at it via
`Route.BASE` (REST) and `DiscordWebSocket.DEFAULT_GATEWAY` (the gateway).

It records every call, creates messages in channels and webhooks, serves what discord.py needs
to log in, sync app commands and answer interactions, and can be scripted per route to answer
429 (with the headers discord.py's rate-limit handling reads), 403 Missing Access, 404 Unknown
Channel / Unknown Webhook, 5xx, or to hang (a timeout).

The gateway is the minimal part of Discord's protocol a bot needs to be online: HELLO (op 10) on
connect, READY (op 0) after IDENTIFY (op 2), RESUMED after RESUME (op 6), a HEARTBEAT_ACK
(op 11) for each HEARTBEAT (op 1). Frames are uncompressed JSON text (discord.py asks for
zlib-stream and accepts text frames too). Tests push events with `dispatch` or `send_raw`.

    async with FakeDiscord() as fake:
        discord.http.Route.BASE = fake.api_base
        fake.script("POST /channels/42/messages", fake.rate_limited(retry_after=0))
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

API_PREFIX = "/api/v10"
GATEWAY_PATH = "/gateway"  # the WebSocket (REST lives under API_PREFIX)
HEARTBEAT_MS = 41250  # what Discord announces in HELLO
APPLICATION_ID = "900000000000000001"  # snowflakes: 17-20 digits, as discord.py checks
BOT_USER_ID = "900000000000000002"
OWNER_ID = "900000000000000003"
VALID_WEBHOOK_TOKEN_LENGTH = 68  # discord.py's from_url wants a token of 60+ characters

PASS = 0  # a Scripted status meaning "answer this call as usual"

# Discord's JSON error codes used by the scripted failures.
MISSING_ACCESS = 50001
UNKNOWN_CHANNEL = 10003
UNKNOWN_WEBHOOK = 10015


@dataclass(frozen=True)
class Call:
    """One request the fake received."""

    method: str
    path: str  # without the /api/v10 prefix
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # parsed JSON, or None
    at: float  # loop time it arrived

    @property
    def key(self) -> str:
        """`METHOD /path`, the form `FakeDiscord.script` takes."""
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class Scripted:
    """One scripted answer (used once, in order, for its route)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (a hang, for timeout tests)


class FakeDiscord:
    """The fake server: `async with FakeDiscord() as fake`, then point discord.py at `api_base`."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.channel_messages: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.webhook_messages: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.interaction_callbacks: list[dict[str, Any]] = []
        self.synced_commands: dict[str, list[dict[str, Any]]] = {}  # "global" or guild id
        self.deleted_webhooks: set[str] = set()
        self.unknown_channels: set[str] = set()
        self.accepted_token: str | None = None  # set: another bot token is answered 401
        self._scripts: dict[str, deque[Scripted]] = defaultdict(deque)
        self._ids = itertools.count(1_000_000_000_000_000_000)
        self._runner: web.AppRunner | None = None
        self.url = ""
        # The gateway: what clients sent, and the open connections.
        self.gateway_received: list[dict[str, Any]] = []
        self.identifies: list[dict[str, Any]] = []
        self.resumes: list[dict[str, Any]] = []
        self._gateway_sockets: list[web.WebSocketResponse] = []
        self.gateway_down = False  # True: new gateway connections are refused with HTTP 503
        self._gateway_changed = asyncio.Event()
        self._sequence = itertools.count(1)
        self._sessions = itertools.count(1)

    # -- lifetime ---------------------------------------------------------------------------
    async def __aenter__(self) -> FakeDiscord:
        app = web.Application()
        app.router.add_get(GATEWAY_PATH, self._gateway)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close_gateway()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base(self) -> str:
        """What `discord.http.Route.BASE` (and `discord.api_url`) should be."""
        return self.url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        """The gateway's ws:// URL (what GET /gateway/bot answers, and READY's resume URL)."""
        return self.url.replace("http://", "ws://", 1) + GATEWAY_PATH

    # -- the gateway ------------------------------------------------------------------------
    @property
    def gateway_connections(self) -> int:
        """How many gateway connections are open."""
        return len(self._gateway_sockets)

    async def dispatch(self, event: str, data: Any) -> None:
        """Send a DISPATCH (op 0) event to every connected client."""
        for socket in list(self._gateway_sockets):
            await socket.send_json({"op": 0, "t": event, "s": next(self._sequence), "d": data})

    async def send_raw(self, text: str) -> None:
        """Send a text frame as is (e.g. one that is not JSON) to every connected client."""
        for socket in list(self._gateway_sockets):
            await socket.send_str(text)

    async def close_gateway(self) -> None:
        """Close every gateway connection (with `gateway_down`, as an outage would)."""
        for socket in list(self._gateway_sockets):
            await socket.close()

    async def wait_identified(self, count: int) -> None:
        """Wait until `count` IDENTIFY payloads have arrived in all."""
        while True:
            self._gateway_changed.clear()
            if len(self.identifies) >= count:
                return
            await self._gateway_changed.wait()

    def _ready(self) -> dict[str, Any]:
        """READY's payload, with what discord.py reads of it."""
        return {
            "v": 10,
            "user": _user(BOT_USER_ID, "daily-papers", bot=True),
            "guilds": [],
            "session_id": f"fake-session-{next(self._sessions)}",
            "resume_gateway_url": self.gateway_url,
            "application": {"id": APPLICATION_ID, "flags": 0},
            "private_channels": [],
            "relationships": [],
        }

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        if self.gateway_down:
            return web.Response(status=503, text="gateway unavailable")
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._gateway_sockets.append(socket)
        try:
            await socket.send_json({"op": 10, "d": {"heartbeat_interval": HEARTBEAT_MS}})
            async for message in socket:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                payload = json.loads(message.data)
                self.gateway_received.append(payload)
                op, data = payload.get("op"), payload.get("d")
                if op == 1:
                    await socket.send_json({"op": 11})
                elif op == 2:
                    self.identifies.append(data)
                    ready = {"op": 0, "t": "READY", "s": next(self._sequence), "d": self._ready()}
                    await socket.send_json(ready)
                elif op == 6:
                    self.resumes.append(data)
                    resumed = {"op": 0, "t": "RESUMED", "s": next(self._sequence), "d": {}}
                    await socket.send_json(resumed)
                self._gateway_changed.set()
        finally:
            self._gateway_sockets.remove(socket)
            self._gateway_changed.set()
        return socket

    # -- scripting --------------------------------------------------------------------------
    def script(self, key: str, *answers: Scripted) -> None:
        """Answer the next calls of `METHOD /path` with `answers`, in order, then normally."""
        self._scripts[key].extend(answers)

    @staticmethod
    def rate_limited(
        *, retry_after: float = 0.0, is_global: bool = False, bucket: str = "fakebucket"
    ) -> Scripted:
        """A 429 as Discord sends it: JSON retry_after/global, Retry-After and X-RateLimit-*."""
        headers = {
            "Retry-After": str(int(retry_after)) if retry_after == int(retry_after) else "1",
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset-After": str(retry_after),
            "X-RateLimit-Bucket": bucket,
            "X-RateLimit-Scope": "global" if is_global else "user",
            # discord.py treats a 429 without Via as a Cloudflare ban and gives up.
            "Via": "1.1 google",
        }
        if is_global:
            headers["X-RateLimit-Global"] = "true"
        body = {
            "message": "You are being rate limited.",
            "retry_after": retry_after,
            "global": is_global,
        }
        return Scripted(429, body, headers)

    @staticmethod
    def error(status: int, code: int, message: str) -> Scripted:
        """A Discord JSON error (e.g. 403 / 50001 Missing Access)."""
        return Scripted(status, {"code": code, "message": message})

    @staticmethod
    def normal() -> Scripted:
        """Answer this call as usual (to script the second call of a route)."""
        return Scripted(PASS)

    @staticmethod
    def hang(seconds: float) -> Scripted:
        """Answer 200 only after `seconds` (longer than the client's timeout)."""
        return Scripted(200, {}, delay=seconds)

    def calls_to(self, key: str) -> list[Call]:
        """The recorded calls of `METHOD /path`."""
        return [c for c in self.calls if c.key == key]

    # -- the handler ------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.removeprefix(API_PREFIX)
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        call = Call(
            method=request.method,
            path=path,
            query=dict(request.query),
            headers=dict(request.headers),
            body=body,
            at=asyncio.get_running_loop().time(),
        )
        self.calls.append(call)
        auth = call.headers.get("Authorization", "")
        refused = auth.startswith("Bot ") and auth.removeprefix("Bot ") != self.accepted_token
        if self.accepted_token is not None and refused:
            return self._json(401, {"code": 0, "message": "401: Unauthorized"})
        queue = self._scripts.get(call.key)
        if queue:
            answer = queue.popleft()
            if answer.delay:
                await asyncio.sleep(answer.delay)
            if answer.status != PASS:
                return self._json(answer.status, answer.body, answer.headers)
        return self._route(call)

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
        all_headers = {
            # A roomy bucket by default so discord.py never waits unless a test scripts it.
            "X-RateLimit-Limit": "50",
            "X-RateLimit-Remaining": "49",
            "X-RateLimit-Reset-After": "0.001",
            "X-RateLimit-Bucket": "defaultbucket",
        }
        all_headers.update(headers or {})
        if status == 204:
            return web.Response(status=204, headers=all_headers)
        # Exactly "application/json" (no charset): discord.py compares the header verbatim.
        all_headers["Content-Type"] = "application/json"
        return web.Response(body=json.dumps(body).encode(), status=status, headers=all_headers)

    def _snowflake(self) -> str:
        return str(next(self._ids))

    def _message(
        self, channel_id: str, body: dict[str, Any], *, webhook_id: str | None = None
    ) -> dict[str, Any]:
        message = {
            "id": self._snowflake(),
            "channel_id": channel_id,
            "type": 0,
            "content": body.get("content") or "",
            "embeds": body.get("embeds") or [],
            "allowed_mentions": body.get("allowed_mentions"),
            "flags": body.get("flags", 0),
            "author": {
                "id": webhook_id or BOT_USER_ID,
                "username": "daily-papers",
                "discriminator": "0000",
                "avatar": None,
                "bot": True,
            },
            "attachments": [],
            "mentions": [],
            "mention_roles": [],
            "mention_everyone": False,
            "pinned": False,
            "tts": False,
            "timestamp": "2025-02-01T00:00:00+00:00",
            "edited_timestamp": None,
        }
        if body.get("nonce") is not None:
            message["nonce"] = body["nonce"]
        if webhook_id is not None:
            message["webhook_id"] = webhook_id
        return message

    def _route(self, call: Call) -> web.Response:
        parts = call.path.strip("/").split("/")
        method = call.method
        body = call.body if isinstance(call.body, dict) else {}
        if method == "GET" and call.path == "/users/@me":
            return self._json(200, _user(BOT_USER_ID, "daily-papers", bot=True))
        if method == "GET" and call.path == "/oauth2/applications/@me":
            return self._json(200, _application())
        if method == "GET" and call.path in {"/gateway", "/gateway/bot"}:
            limits = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
            return self._json(
                200, {"url": self.gateway_url, "shards": 1, "session_start_limit": limits}
            )
        if parts[:1] == ["applications"] and method == "PUT" and parts[-1] == "commands":
            scope = parts[3] if len(parts) == 5 and parts[2] == "guilds" else "global"
            commands = [
                {**cmd, "id": self._snowflake(), "application_id": APPLICATION_ID, "version": "1"}
                for cmd in (call.body or [])
            ]
            if scope != "global":
                for cmd in commands:
                    cmd["guild_id"] = scope
            self.synced_commands[scope] = commands
            return self._json(200, commands)
        if parts[:1] == ["channels"] and len(parts) == 3 and parts[2] == "messages":
            channel_id = parts[1]
            if channel_id in self.unknown_channels:
                return self._json(404, {"code": UNKNOWN_CHANNEL, "message": "Unknown Channel"})
            nonce = body.get("nonce")
            if body.get("enforce_nonce") and nonce is not None:
                # Discord: a nonce the same author used in the last few minutes returns the
                # message it created then; nothing new appears in the channel.
                for earlier in self.channel_messages[channel_id]:
                    if earlier.get("nonce") == nonce:
                        return self._json(200, earlier)
            message = self._message(channel_id, body)
            self.channel_messages[channel_id].append(message)
            return self._json(200, message)
        if parts[:1] == ["interactions"] and parts[-1] == "callback":
            self.interaction_callbacks.append({"interaction_id": parts[1], **body})
            return self._json(
                200,
                {"interaction": {"id": parts[1], "type": 2}},
            )
        if parts[:1] == ["webhooks"] and len(parts) >= 3:
            webhook_id, token = parts[1], parts[2]
            if webhook_id in self.deleted_webhooks:
                return self._json(404, {"code": UNKNOWN_WEBHOOK, "message": "Unknown Webhook"})
            if len(parts) == 3 and method == "POST":
                message = self._message(_webhook_channel(webhook_id), body, webhook_id=webhook_id)
                self.webhook_messages[webhook_id].append(message)
                if call.query.get("wait") in {"1", "true"}:
                    return self._json(200, message)
                return self._json(204, None)
            if len(parts) == 5 and parts[3] == "messages":
                # Interaction follow-ups: PATCH/DELETE @original or a follow-up message.
                target = f"{token}:{parts[4]}"
                if method == "DELETE":
                    self.webhook_messages[webhook_id].append({"deleted": target})
                    return self._json(204, None)
                message = self._message(_webhook_channel(webhook_id), body, webhook_id=webhook_id)
                message["edited"] = target
                self.webhook_messages[webhook_id].append(message)
                return self._json(200, message)
        return self._json(404, {"code": 0, "message": f"404: Not Found ({call.key})"})


def _user(user_id: str, name: str, *, bot: bool = False) -> dict[str, Any]:
    """A user object as Discord sends it."""
    return {
        "id": user_id,
        "username": name,
        "global_name": name,
        "discriminator": "0",
        "avatar": None,
        "bot": bot,
        "flags": 0,
        "public_flags": 0,
    }


def _application() -> dict[str, Any]:
    """GET /oauth2/applications/@me, what discord.py's login reads."""
    return {
        "id": APPLICATION_ID,
        "name": "daily-papers",
        "description": "",
        "icon": None,
        "bot_public": True,
        "bot_require_code_grant": False,
        "owner": _user(OWNER_ID, "owner"),
        "verify_key": "0" * 64,
        "flags": 0,
        "team": None,
    }


def webhook_url(webhook_id: str, token: str = "t" * VALID_WEBHOOK_TOKEN_LENGTH) -> str:
    """A webhook URL in Discord's own form (requests go to Route.BASE, i.e. this fake)."""
    return f"https://discord.com/api/webhooks/{webhook_id}/{token}"


def _webhook_channel(webhook_id: str) -> str:
    """The (made-up, numeric as discord.py parses it) channel a webhook posts into."""
    return str(int(webhook_id) + 1) if webhook_id.isdigit() else "1"
