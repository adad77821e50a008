"""The outside world for the benchmark: the test fakes, extended where a benchmark needs more.

- `IndexedArxivStandIn`: `tests.fakes.arxiv_server.ArxivStandIn` answering the DailyArXiv
  baseline's phrase queries from a token index. The stand-in evaluates every query against
  every paper in Python (~0.5 s per query over 5,000 papers), which would make the
  one-request-per-keyword baseline measure the stand-in rather than the strategy. Answers are
  identical: the index only narrows the papers the stand-in's own evaluator looks at to those
  holding every stem of the phrase.
- `RateLimitedSlack`: `tests.fakes.slack_api.FakeSlackApi` enforcing Slack's documented
  chat.postMessage limit of one message per second per channel, answering HTTP 429 with
  `Retry-After` as Slack does and counting the 429s.
- `RateLimitedDiscord`: `tests.fakes.discord_api.FakeDiscord` enforcing Discord's per-channel
  message bucket (5 per 5 s) and the global limit (50 requests per second), with the
  `X-RateLimit-*` headers Discord sends on every answer, and 429s when a client ignores them.
- `counting_smtp_server`: the test suite's aiosmtpd server with a sink that counts messages
  and bytes instead of keeping them (10,000 digests would otherwise hold gigabytes).

`World` runs all of them: the arXiv stand-in in its own threads, the others on one asyncio
loop in a background thread, so the service under test (another process) talks to them over
127.0.0.1 exactly as it would to the real services.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import threading
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from digest.domain import Paper
from tests.fakes.arxiv_server import ArxivStandIn, stem_tokens
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.slack_api import FakeSlackApi, rate_limited
from tests.fakes.smtp import FakeSmtpServer, Received, smtp_server

SLACK_CHANNEL_INTERVAL = 1.0  # Slack: chat.postMessage "1 message per second per channel"
SLACK_TOLERANCE = 0.05  # seconds of clock jitter forgiven between client and fake
DISCORD_CHANNEL_LIMIT = 5  # Discord: POST /channels/{id}/messages, 5 per bucket window...
DISCORD_CHANNEL_WINDOW = 5.0  # ...of 5 seconds, per channel
DISCORD_GLOBAL_PER_SECOND = 50  # Discord: 50 requests per second per bot, all routes

# -- arXiv ---------------------------------------------------------------------------------------
# DailyArXiv's query, alone or (a backfill's) restricted to category groups.
_BASELINE_QUERY = re.compile(
    r'^(?:ti:"(?P<a>[^"]+)" OR abs:"(?P<b>[^"]+)"'
    r'|\(ti:"(?P<c>[^"]+)" OR abs:"(?P<d>[^"]+)"\) AND \((?:cat:[\w.*-]+(?: OR )?)+\))$'
)
_NARROWED = threading.local()


class IndexedArxivStandIn(ArxivStandIn):
    """The arXiv stand-in, answering `ti:"p" OR abs:"p"` (also restricted to categories, as a
    backfill asks) from an index of title/abstract stems.

    Every other request is answered exactly as `ArxivStandIn` answers it. For the baseline's
    phrase queries, the stand-in's evaluator runs on the papers holding every stem of the
    phrase (a superset of the matches), so totals, order and pages are unchanged.
    """

    # `_corpus` is read by ArxivStandIn._evaluate; a thread-local view narrows it per request.
    @property  # type: ignore[override]
    def _corpus(self) -> dict[str, Any]:
        narrowed: dict[str, Any] | None = getattr(_NARROWED, "corpus", None)
        return narrowed if narrowed is not None else self._full_corpus

    @_corpus.setter
    def _corpus(self, corpus: dict[str, Any]) -> None:
        postings: dict[str, set[str]] = defaultdict(set)
        for arxiv_id, indexed in corpus.items():
            for name in ("ti", "abs"):
                for run in indexed.tokens[name]:
                    for token in run:
                        postings[token].add(arxiv_id)
        self._full_corpus = corpus
        self._postings = dict(postings)

    def _evaluate(self, params: Mapping[str, str], fault: Any) -> tuple[int, bytes]:
        match = _BASELINE_QUERY.match(params.get("search_query", ""))
        phrase, again = (match["a"], match["b"]) if match and match["a"] else (None, None)
        if match and match["c"]:
            phrase, again = match["c"], match["d"]
        if phrase is None or phrase != again or params.get("id_list"):
            return super()._evaluate(params, fault)
        with self._lock:
            corpus, postings = self._full_corpus, self._postings
        stems = set(stem_tokens(phrase))
        ids: set[str] = (
            set(corpus)
            if not stems
            else set.intersection(*(postings.get(stem, set()) for stem in stems))
        )
        _NARROWED.corpus = {arxiv_id: corpus[arxiv_id] for arxiv_id in ids}
        try:
            return super()._evaluate(params, fault)
        finally:
            _NARROWED.corpus = None


# -- Slack ---------------------------------------------------------------------------------------
class RateLimitedSlack(FakeSlackApi):
    """The fake Slack Web API with chat.postMessage limited to 1 per second per channel."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.throttled = 0  # 429s answered
        self.accepted = 0  # chat.postMessage calls let through
        self._next_allowed: dict[str, float] = {}
        self._max_calls = 0  # keep no call history (memory); counters above are enough
        self.enforce = True  # False: no limit (measures our own cost, not Slack's pacing)

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["method"] == "chat.postMessage" and not self.enforce:
            self.accepted += 1
        elif request.match_info["method"] == "chat.postMessage":
            params = await self._params(request)
            channel = str(params.get("channel"))
            now = time.monotonic()
            due = self._next_allowed.get(channel, 0.0)
            if now < due - SLACK_TOLERANCE:
                self.throttled += 1
                answer = rate_limited(retry_after=math.ceil(due - now))
                return web.json_response(answer.body, status=429, headers=answer.headers)
            self._next_allowed[channel] = now + SLACK_CHANNEL_INTERVAL
            self.accepted += 1
        response = await super()._api(request)
        self.calls.clear()  # the bench counts; it does not need every payload kept
        return response

    @staticmethod
    async def _params(request: web.Request) -> dict[str, Any]:
        # The request body is read twice (here and in FakeSlackApi._api); aiohttp caches it.
        return await FakeSlackApi._params(request)


# -- Discord -------------------------------------------------------------------------------------
_CHANNEL_MESSAGES = re.compile(r"^/channels/(?P<channel>\d+)/messages$")


@dataclass
class _Bucket:
    remaining: int = DISCORD_CHANNEL_LIMIT
    reset_at: float = 0.0


class RateLimitedDiscord(FakeDiscord):
    """The fake Discord REST API with per-channel message buckets and the global limit."""

    def __init__(self) -> None:
        super().__init__()
        self.throttled = 0  # 429s answered
        self.accepted = 0  # channel messages let through
        self._buckets: dict[str, _Bucket] = defaultdict(_Bucket)
        self._recent: deque[float] = deque()  # arrival times within the last second (global)
        self.enforce = True  # False: no limits, and headers that say so

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if not self.enforce:
            return await self._unlimited(request)
        now = time.monotonic()
        while self._recent and self._recent[0] <= now - 1.0:
            self._recent.popleft()
        if len(self._recent) >= DISCORD_GLOBAL_PER_SECOND:
            self.throttled += 1
            wait = self._recent[0] + 1.0 - now
            return self._limited(wait, is_global=True)
        self._recent.append(now)
        path = request.path.removeprefix("/api/v10")
        found = _CHANNEL_MESSAGES.match(path)
        if request.method != "POST" or found is None:
            return await super()._handle(request)
        bucket = self._buckets[found["channel"]]
        if now >= bucket.reset_at:
            bucket.remaining, bucket.reset_at = DISCORD_CHANNEL_LIMIT, now + DISCORD_CHANNEL_WINDOW
        if bucket.remaining == 0:
            self.throttled += 1
            return self._limited(bucket.reset_at - now, is_global=False)
        bucket.remaining -= 1
        self.accepted += 1
        response = await super()._handle(request)
        response.headers.update(
            {
                "X-RateLimit-Limit": str(DISCORD_CHANNEL_LIMIT),
                "X-RateLimit-Remaining": str(bucket.remaining),
                "X-RateLimit-Reset-After": f"{max(0.0, bucket.reset_at - now):.3f}",
                "X-RateLimit-Bucket": "channel-messages",
            }
        )
        self.channel_messages.clear()  # counted above; payloads are not kept
        self.calls.clear()
        return response

    async def _unlimited(self, request: web.Request) -> web.StreamResponse:
        """Answer without limits; message answers carry a bucket that never runs dry."""
        path = request.path.removeprefix("/api/v10")
        if request.method != "POST" or _CHANNEL_MESSAGES.match(path) is None:
            return await super()._handle(request)
        self.accepted += 1
        response = await super()._handle(request)
        response.headers.update(
            {
                "X-RateLimit-Limit": "1000000",
                "X-RateLimit-Remaining": "999999",
                "X-RateLimit-Reset-After": "1.000",
                "X-RateLimit-Bucket": "channel-messages",
            }
        )
        self.channel_messages.clear()
        self.calls.clear()
        return response

    def _limited(self, wait: float, *, is_global: bool) -> web.Response:
        answer = self.rate_limited(retry_after=round(max(wait, 0.001), 3), is_global=is_global)
        headers = dict(answer.headers)
        headers["X-RateLimit-Reset-After"] = f"{max(wait, 0.001):.3f}"
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return self._json(429, answer.body, headers)


# -- SMTP ----------------------------------------------------------------------------------------
class _CountingSink(list[Received]):
    """Stands in for RecordingHandler.messages: counts what arrives, keeps nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.bytes = 0

    def append(self, item: Received) -> None:
        """Count one accepted message (its content is dropped)."""
        self.count += 1
        self.bytes += len(item.data)


@contextlib.asynccontextmanager
async def counting_smtp_server() -> AsyncIterator[tuple[FakeSmtpServer, _CountingSink]]:
    """`tests.fakes.smtp.smtp_server` (a real aiosmtpd) that counts instead of recording."""
    async with smtp_server() as server:
        sink = _CountingSink()
        server.handler.messages = sink
        yield server, sink


# -- the world -----------------------------------------------------------------------------------
@dataclass
class WorldStats:
    """What the fakes saw since the last `World.reset_counters`."""

    arxiv_requests: int
    arxiv_min_gap: float | None
    slack_posts: int
    slack_429: int
    discord_posts: int
    discord_429: int
    smtp_messages: int
    smtp_bytes: int
    smtp_connections: int


@dataclass
class World:
    """All the stand-ins, started together: `with World(papers) as world: world.urls ...`."""

    papers: Iterable[Paper]
    arxiv: IndexedArxivStandIn = field(init=False)
    slack: RateLimitedSlack = field(init=False)
    discord: RateLimitedDiscord = field(init=False)
    smtp: FakeSmtpServer = field(init=False)
    _sink: _CountingSink = field(init=False)
    _loop: asyncio.AbstractEventLoop = field(init=False)
    _thread: threading.Thread = field(init=False)
    _stop: asyncio.Event = field(init=False)
    _done: Future[None] = field(init=False)
    _smtp_base: int = 0

    def __enter__(self) -> World:
        self.arxiv = IndexedArxivStandIn(self.papers).start()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        ready: Future[None] = Future()
        self._done = asyncio.run_coroutine_threadsafe(self._serve(ready), self._loop)
        ready.result(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        with contextlib.suppress(Exception):
            self._done.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self.arxiv.stop()

    async def _serve(self, ready: Future[None]) -> None:
        self._stop = asyncio.Event()
        try:
            async with (
                RateLimitedSlack() as slack,
                RateLimitedDiscord() as discord,
                counting_smtp_server() as (smtp, sink),
            ):
                self.slack, self.discord, self.smtp, self._sink = slack, discord, smtp, sink
                ready.set_result(None)
                await self._stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    def set_papers(self, papers: Iterable[Paper]) -> None:
        """Replace what the arXiv stand-in serves."""
        self.arxiv.set_papers(papers)

    @property
    def urls(self) -> dict[str, Any]:
        """Where each stand-in listens."""
        return {
            "arxiv": self.arxiv.url,
            "slack": self.slack.api_url,
            "discord": self.discord.api_base,
            "smtp_host": self.smtp.host,
            "smtp_port": self.smtp.port,
        }

    def set_rate_limits(self, enforce: bool) -> None:
        """Turn the Slack and Discord fakes' rate limits on (the default) or off."""

        def switch() -> None:
            self.slack.enforce = self.discord.enforce = enforce

        self._call(switch)

    def reset_counters(self) -> None:
        """Start counting afresh (between scenarios)."""

        def reset() -> None:
            self.slack.throttled = self.slack.accepted = 0
            self.discord.throttled = self.discord.accepted = 0
            self._sink.count = self._sink.bytes = 0
            self._smtp_base = self.smtp.connections

        self._call(reset)
        self.arxiv.clear_requests()

    def stats(self) -> WorldStats:
        """The counters now."""

        def read() -> WorldStats:
            return WorldStats(
                arxiv_requests=len(self.arxiv.requests),
                arxiv_min_gap=self.arxiv.min_gap(),
                slack_posts=self.slack.accepted,
                slack_429=self.slack.throttled,
                discord_posts=self.discord.accepted,
                discord_429=self.discord.throttled,
                smtp_messages=self._sink.count,
                smtp_bytes=self._sink.bytes,
                smtp_connections=self.smtp.connections - self._smtp_base,
            )

        return self._call(read)

    def _call(self, fn: Any) -> Any:
        """Run `fn` on the fakes' loop (their counters are only touched there)."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)


@contextlib.contextmanager
def world(papers: Iterable[Paper]) -> Iterator[World]:
    """Start every stand-in; stop them all on exit."""
    with World(papers) as running:
        yield running
