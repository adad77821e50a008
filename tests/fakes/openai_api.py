"""A local OpenAI-compatible chat-completions server (`/v1/chat/completions`) on 127.0.0.1.

It runs on the test's own event loop (aiohttp.web) and translates the user message: a text it
was taught (`server.teach(source, translation)`, e.g. the reference digest's Chinese) comes back
as taught; any other text comes back "translated" by `pseudo_translate`, which turns English
words into Han characters and keeps LaTeX, URLs and capitalised names, as a model obeying the
prompt would.

Tests script failures with answers consumed in the order they were added, optionally only for
requests whose text contains `when`:

    server.script(ServerError(500), Throttle(retry_after="0"))   # the next two requests
    server.script(English(), when="Video")                       # next request about "Video"
    server.always(Slow(30.0))                                     # every request from now on

Every request is recorded (JSON body and headers) so tests can check the prompt, the text sent
and the Authorization header.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

COMPLETIONS_PATH = "/v1/chat/completions"


# -- scripted answers -------------------------------------------------------------------------
@dataclass(frozen=True)
class Translate:
    """A normal answer: the taught or pseudo translation, finish_reason "stop"."""


@dataclass(frozen=True)
class ServerError:
    """An HTTP error status (500 by default; 401, 404, 400 for refusals)."""

    status: int = 500


@dataclass(frozen=True)
class Throttle:
    """HTTP 429 with an optional Retry-After (seconds)."""

    retry_after: str | None = "0"


@dataclass(frozen=True)
class Empty:
    """A completion whose content is empty."""


@dataclass(frozen=True)
class Truncated:
    """The first tenth of the translation with finish_reason "length"."""


@dataclass(frozen=True)
class Shortened:
    """The first twentieth of the translation, claiming finish_reason "stop"."""


@dataclass(frozen=True)
class English:
    """The source text sent back untranslated."""


@dataclass(frozen=True)
class Garbage:
    """A 200 answer that is not a chat completion."""

    body: str = "<html><body>Bad gateway, try later</body></html>"
    content_type: str = "text/html"


@dataclass(frozen=True)
class Slow:
    """Wait `seconds` (or until the server closes), then answer normally."""

    seconds: float


Answer = (
    Translate | ServerError | Throttle | Empty | Truncated | Shortened | English | Garbage | Slow
)


@dataclass
class _Rule:
    answer: Answer
    when: str | None
    once: bool


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it."""

    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def system(self) -> str:
        """The system prompt."""
        return str(self.body["messages"][0]["content"])

    @property
    def text(self) -> str:
        """The text to translate (the user message), exactly as sent."""
        return str(self.body["messages"][-1]["content"])


# Kept as they are by `pseudo_translate`: TeX math, TeX commands, URLs, and acronyms or model
# names (two capitals or a digit: GPT-4o, ImageNet, RAG); every other word is "translated".
_KEEP = re.compile(
    r"\$\$.*?\$\$|\$[^$]*\$|\\[A-Za-z]+(?:\{[^}]*\})*|https?://\S+"
    r"|\b(?:[A-Za-z]*[A-Z][a-z]*[A-Z][\w-]*|[A-Za-z-]*\d[\w-]*)\b"
)
_WORD = re.compile(r"[A-Za-z]+")


def pseudo_translate(text: str) -> str:
    """A stand-in Chinese translation: English words become Han characters, the rest stays."""
    out: list[str] = []
    position = 0
    for kept in _KEEP.finditer(text):
        out.append(
            _WORD.sub(lambda m: "译" * max(1, len(m.group(0)) // 3), text[position : kept.start()])
        )
        out.append(kept.group(0))
        position = kept.end()
    out.append(_WORD.sub(lambda m: "译" * max(1, len(m.group(0)) // 3), text[position:]))
    return "".join(out)


@dataclass
class FakeOpenAI:
    """The server's state: taught translations, scripted answers, recorded requests."""

    translations: dict[str, str] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    url: str = ""  # base URL for the client, e.g. http://127.0.0.1:PORT/v1
    _rules: list[_Rule] = field(default_factory=list)
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0
    max_in_flight: int = 0

    def teach(self, source: str, translation: str) -> None:
        """Answer `source` with `translation` (a normal answer to a request for it)."""
        self.translations[source] = translation

    def script(self, *answers: Answer, when: str | None = None) -> None:
        """Use these answers once each, in order, for the next matching requests."""
        self._rules.extend(_Rule(a, when, once=True) for a in answers)

    def always(self, answer: Answer, *, when: str | None = None) -> None:
        """Use this answer for every matching request (after the one-off ones)."""
        self._rules.append(_Rule(answer, when, once=False))

    def texts(self) -> list[str]:
        """The texts sent for translation, in order."""
        return [r.text for r in self.requests]

    def translation_of(self, text: str) -> str:
        """What a normal answer for `text` says."""
        return self.translations.get(text) or pseudo_translate(text)

    def _next_answer(self, text: str) -> Answer:
        for rule in self._rules:
            if rule.when is None or rule.when in text:
                if rule.once:
                    self._rules.remove(rule)
                return rule.answer
        return Translate()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The chat-completions endpoint."""
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return web.json_response({"error": {"message": "invalid JSON"}}, status=400)
        recorded = RecordedRequest(body=body, headers=dict(request.headers))
        self.requests.append(recorded)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(recorded)
        finally:
            self.in_flight -= 1

    async def _answer(self, recorded: RecordedRequest) -> web.StreamResponse:
        text = recorded.text
        answer = self._next_answer(text)
        if isinstance(answer, Slow):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), answer.seconds)
            answer = Translate()
        if isinstance(answer, ServerError):
            return web.json_response(
                {"error": {"message": f"status {answer.status}"}}, status=answer.status
            )
        if isinstance(answer, Throttle):
            headers = {"Retry-After": answer.retry_after} if answer.retry_after else {}
            return web.json_response(
                {"error": {"message": "rate limited"}}, status=429, headers=headers
            )
        if isinstance(answer, Garbage):
            return web.Response(text=answer.body, content_type=answer.content_type)
        translated = self.translation_of(text)
        finish = "stop"
        if isinstance(answer, Empty):
            translated = ""
        elif isinstance(answer, Truncated):
            translated, finish = translated[: max(1, len(translated) // 10)], "length"
        elif isinstance(answer, Shortened):
            translated = translated[: max(1, len(translated) // 20)]
        elif isinstance(answer, English):
            translated = text
        return web.json_response(_completion(recorded.body.get("model", ""), translated, finish))


def _completion(model: str, content: str, finish: str) -> dict[str, Any]:
    """A chat completion in OpenAI's shape."""
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1736000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


@contextlib.asynccontextmanager
async def serve_openai() -> AsyncIterator[FakeOpenAI]:
    """Run the fake on 127.0.0.1 (ephemeral port) for the duration of the block."""
    fake = FakeOpenAI()
    app = web.Application()
    app.router.add_post(COMPLETIONS_PATH, fake.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}/v1"
    try:
        yield fake
    finally:
        fake._closing.set()  # release slow answers so shutdown does not wait for them
        await runner.cleanup()
