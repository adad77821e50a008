"""A recording HTTP server on 127.0.0.1: the stand-in for whatever an Apprise URL points at
(`json://`, `form://`, a Mattermost incoming webhook, ...).

Every request is recorded as it arrived (method, path, query, headers, body); answers are 200
"ok" unless scripted: one scripted answer per request, in order (a status with headers, 429
with Retry-After, 500, 404, or a delay: a hang, for timeout tests), or a lasting status for
every request under a path (`refuse`: a target that is gone, while others are answered).

    async with RecordingHttpServer() as server:
        server.script(Answer(status=429, headers={"Retry-After": "1"}))
        url = f"json://127.0.0.1:{server.port}/hook"
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web


@dataclass(frozen=True)
class Answer:
    """One scripted answer."""

    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering


@dataclass(frozen=True)
class Received:
    """One request as it arrived, and the status it was answered with."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    status: int

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        """The body parsed as an urlencoded form."""
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))

    def refuse(self, path_prefix: str, status: int) -> None:
        """Answer every request whose path starts with `path_prefix` with `status`."""
        self._refused[path_prefix] = status

    @property
    def accepted(self) -> bool:
        """Answered with a 2xx status."""
        return 200 <= self.status < 300


class RecordingHttpServer:
    """`async with RecordingHttpServer() as server`: records requests to any path."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._answers: deque[Answer] = deque()
        self._refused: dict[str, int] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def __aenter__(self) -> RecordingHttpServer:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def script(self, *answers: Answer) -> None:
        """Answer the next requests with these, in order (then 200 "ok" again)."""
        self._answers.extend(answers)

    def refuse(self, path_prefix: str, status: int) -> None:
        """Answer every request whose path starts with `path_prefix` with `status`."""
        self._refused[path_prefix] = status

    @property
    def accepted(self) -> list[Received]:
        """The requests answered with a 2xx status."""
        return [r for r in self.received if r.accepted]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        refused = [s for prefix, s in self._refused.items() if request.path.startswith(prefix)]
        if refused:
            answer = Answer(status=refused[0], body="refused")
        else:
            answer = self._answers.popleft() if self._answers else Answer()
        self.received.append(
            Received(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=dict(request.headers),
                body=body,
                status=answer.status,
            )
        )
        if answer.delay:
            await asyncio.sleep(answer.delay)
        return web.Response(status=answer.status, text=answer.body, headers=answer.headers)
