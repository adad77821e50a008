"""Discord delivery: the daily post as rich embeds, to a channel (bot) or a webhook (bot-less).

`DiscordChannel` posts with discord.py's REST layer (`discord.http.HTTPClient`, so its per-route
rate-limit buckets and 429 retries apply) to `discord:<channel id>` targets;
`DiscordWebhookChannel` posts through `discord.Webhook` to `discord_webhook:<url>` targets.
Both render the same messages (`render_messages`): one embed per paper (title linked to the abs
page, authors, date, categories, shortened abstract, comment), packed into messages of at most
10 embeds and 6000 characters, as many messages as needed, never dropping a paper.

discord.py builds every REST URL from the class attribute `discord.http.Route.BASE`, so the
`discord.api_url` setting is applied process-wide with `use_api_url` (both channels and the bot
share it: there is one Discord API per process).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import discord
from discord.http import HTTPClient, Route
from discord.utils import escape_markdown, escape_mentions

from digest.channels import (
    ChannelSpec,
    MessageLimits,
    pack_items,
    parse_configured_targets,
    subscribe_configured,
)
from digest.config import Settings
from digest.domain import Batch, Delivery, Outcome, OutcomeKind, Paper, Target, for_deliveries
from digest.pacing import TokenBucket
from digest.render import short_authors
from digest.store import PaperStore

log = logging.getLogger(__name__)

# Discord's documented limits (https://discord.com/developers/docs/resources/message#embed-object-embed-limits).
MAX_EMBEDS = 10  # embeds per message
MAX_EMBED_TOTAL = 6000  # characters of all embeds of one message together
LIMITS = MessageLimits(max_chars=MAX_EMBED_TOTAL, max_items=MAX_EMBEDS)
MAX_TITLE = 256
MAX_DESCRIPTION = 4096
MAX_FIELD_VALUE = 1024
MAX_FOOTER = 2048
MAX_AUTHOR_NAME = 256
MAX_CONTENT = 2000  # plain message content
MAX_NONCE = 25  # characters of a message nonce
# Our own choices.
MAX_SUMMARY = 400  # a TL;DR is one sentence (digest.summary keeps it under 300 characters)
ABSTRACT_CHARS = 600  # enough to judge a paper; keeps 5-8 papers per message instead of 3
EMBED_COLOUR = 0xB31B1B  # arXiv's red
MAX_RATELIMIT_WAIT = 60.0  # seconds; a longer 429 wait fails the batch, retried next cycle
REQUEST_TIMEOUT = 30.0  # seconds for one message, including discord.py's own retries
# Discord allows a bot 50 requests per second over all routes. discord.py paces each route's
# bucket from the response headers but learns of the global limit only from a 429; when many
# channels are posted to at once, their first messages alone can exceed it. 40 per second in
# bursts of at most 5 stays under 50 in any second, with room for arrivals bunched in transit.
GLOBAL_REQUESTS_PER_SECOND = 40
GLOBAL_BURST = 5

# discord.py's own pattern for webhook URLs (Webhook.from_url); canary/ptb hosts work too.
WEBHOOK_URL = re.compile(
    r"^https://(?:(?:ptb|canary)\.)?discord(?:app)?\.com/api/webhooks/"
    r"(?P<id>[0-9]{17,20})/(?P<token>[A-Za-z0-9.\-_]{60,})/?$"
)

# What a refused bot token means for delivery and for the live connection (bot.discord_app).
LOGIN_REFUSED = "Discord refused the bot token (401 Unauthorized): check DISCORD_BOT_TOKEN"

# Discord JSON error codes that mean the target is gone or refuses us for good.
PERMANENT_CODES = {
    10003: "Unknown Channel",
    10015: "Unknown Webhook",
    50001: "Missing Access",
    50013: "Missing Permissions",
    50027: "Invalid Webhook Token",
}


def use_api_url(api_url: str) -> None:
    """Point every discord.py REST call of this process (bot, channels, webhooks) at `api_url`."""
    Route.BASE = api_url.rstrip("/")


# -- rendering (pure) ---------------------------------------------------------------------------


# Discord's tags: mentions of users, roles and channels, slash-command mentions, custom emoji and
# timestamps (<@1>, <@&1>, <#1>, </papers:1>, <:name:1>, <t:1:R>). A zero-width space after `<`
# leaves them as text; escape_markdown does not touch `<`, and escape_mentions only @everyone,
# @here and 17-20 digit ids.
_DISCORD_TAG = re.compile(r"<(?=[@#:/]|a:|t:)")


def escape_text(text: str) -> str:
    """Paper or model text made inert for Discord: one line, no formatting, no mentions or
    other tags."""
    escaped = escape_mentions(escape_markdown(" ".join(text.split())))
    return _DISCORD_TAG.sub("<\u200b", escaped)


def fit(text: str, limit: int, *, escape: bool = True) -> str:
    """`text` escaped (when asked) and shortened with an ellipsis to at most `limit` characters."""
    shown = escape_text(text) if escape else " ".join(text.split())
    if len(shown) <= limit:
        return shown
    raw = " ".join(text.split())
    cut = min(len(raw), limit)
    while cut > 0:
        # Cut the raw text, then escape, so an escape sequence is never split in half.
        head = raw[:cut].rstrip()
        if " " in head[-40:]:
            head = head[: head.rfind(" ")].rstrip()  # prefer a word boundary nearby
        candidate = (escape_text(head) if escape else head) + "…"
        if len(candidate) <= limit:
            return candidate
        cut -= max(1, len(candidate) - limit)
    return "…"


def render_embed(
    paper: Paper,
    keyword: str,
    *,
    translated_title: str | None = None,
    summary: str | None = None,
    abstract_chars: int = ABSTRACT_CHARS,
) -> discord.Embed:
    """One paper as an embed, every part within Discord's per-field limits; a translated title
    and a TL;DR (a model's text) are escaped like the paper's own (`fit`)."""
    description = ""
    if translated_title:
        # Under the original title, as the translation issue asks; italic marks it as a rendering.
        description = "*" + fit(translated_title, MAX_TITLE) + "*\n\n"
    if summary:
        description += "**TL;DR:** " + fit(summary, MAX_SUMMARY) + "\n\n"
    description += fit(paper.abstract, min(abstract_chars, MAX_DESCRIPTION - len(description)))
    embed = discord.Embed(
        title=fit(paper.title, MAX_TITLE),
        url=paper.abs_url,
        description=description,
        colour=EMBED_COLOUR,
    )
    # The author line and footer are plain text in Discord (no Markdown, no mentions).
    embed.set_author(
        name=fit(
            short_authors(paper.authors, none="Unknown authors"), MAX_AUTHOR_NAME, escape=False
        )
    )
    embed.add_field(name="Date", value=paper.updated.date().isoformat(), inline=True)
    categories = ", ".join(paper.categories or (paper.primary_category,))
    embed.add_field(name="Categories", value=fit(categories, MAX_FIELD_VALUE), inline=True)
    if paper.comment:
        embed.add_field(name="Comment", value=fit(paper.comment, MAX_FIELD_VALUE), inline=False)
    embed.set_footer(text=fit(f"{keyword} · arXiv:{paper.versioned_id}", MAX_FOOTER, escape=False))
    return embed


@dataclass(frozen=True, slots=True)
class DiscordMessage:
    """One message of the daily post and the deliveries it carries."""

    content: str
    embeds: tuple[discord.Embed, ...]
    deliveries: tuple[Delivery, ...]

    def payload(self, target: Target | None = None) -> dict[str, Any]:
        """The JSON body of POST /channels/{id}/messages (with its nonce when `target` is given).

        The nonce makes a re-send after a lost answer harmless: with `enforce_nonce`, Discord
        returns the message it already created from the same nonce (in the last few minutes)
        instead of posting it again.
        """
        body: dict[str, Any] = {
            "content": self.content,
            "embeds": [e.to_dict() for e in self.embeds],
            "allowed_mentions": {"parse": []},  # nobody is ever pinged by a paper post
        }
        if target is not None:
            body["nonce"] = self.nonce(target)
            body["enforce_nonce"] = True
        return body

    def nonce(self, target: Target) -> str:
        """A nonce fixed by the target and the deliveries this message carries."""
        keys = sorted(f"{d.subscription_id}:{d.paper.arxiv_id}" for d in self.deliveries)
        digest = hashlib.sha256("\n".join([str(target), *keys]).encode()).hexdigest()
        return digest[:MAX_NONCE]


def render_messages(batch: Batch, *, abstract_chars: int = ABSTRACT_CHARS) -> list[DiscordMessage]:
    """The daily post of `batch`: embeds grouped by keyword, packed within Discord's limits."""
    items: list[tuple[discord.Embed, tuple[Delivery, ...]]] = []
    for keyword, papers in batch.by_keyword():
        for paper in papers:
            translated = batch.translations.get(paper.arxiv_id)
            embed = render_embed(
                paper,
                keyword,
                translated_title=translated[0] if translated else None,
                summary=batch.summaries.get(paper.arxiv_id),
                abstract_chars=abstract_chars,
            )
            owed = tuple(
                d
                for d in batch.deliveries
                if d.keyword == keyword and d.paper.arxiv_id == paper.arxiv_id
            )
            items.append((embed, owed))

    groups = pack_items(
        items,
        size=lambda item: len(item[0]),
        max_items=LIMITS.max_items,
        max_size=LIMITS.max_chars,
    )

    count = len({d.paper.arxiv_id for d in batch.deliveries})
    noun = "paper" if count == 1 else "papers"
    messages = []
    for index, group in enumerate(groups, start=1):
        content = f"**{count} new arXiv {noun}**"
        if len(groups) > 1:
            content += f" ({index}/{len(groups)})"
        messages.append(
            DiscordMessage(
                content=content,
                embeds=tuple(e for e, _ in group),
                deliveries=tuple(d for _, owed in group for d in owed),
            )
        )
    return messages


def split_text(text: str, limit: int = MAX_CONTENT) -> list[str]:
    """Plain text in pieces of at most `limit` characters, cut at line breaks where possible."""
    pieces: list[str] = []
    current = ""
    for line in text.splitlines():
        while len(line) > limit:
            if current:
                pieces.append(current)
                current = ""
            pieces.append(line[:limit])
            line = line[limit:]
        candidate = f"{current}\n{line}" if current else line
        if len(candidate) > limit:
            pieces.append(current)
            current = line
        else:
            current = candidate
    if current or not pieces:
        pieces.append(current)
    return pieces


# -- failures -----------------------------------------------------------------------------------


def classify_error(exc: BaseException, *, webhook: bool = False) -> tuple[OutcomeKind, str]:
    """Whether a failed send is worth retrying, and a reason a person can act on.

    A 401 on the bot channel (at login, or on a post once the token was reset) is our token
    refused: UNAUTHORIZED, which pauses the subscription like Slack's `invalid_auth`. On a
    webhook it is that webhook's own token: PERMANENT.
    """
    if isinstance(exc, discord.LoginFailure):
        return OutcomeKind.UNAUTHORIZED, LOGIN_REFUSED
    if isinstance(exc, discord.HTTPException):
        code = exc.code
        known = PERMANENT_CODES.get(code)
        what = known or (exc.text or exc.response.reason or "error")
        reason = f"Discord {exc.status} {what}" + (f" (code {code})" if code else "")
        if known or exc.status in {403, 404}:
            return OutcomeKind.PERMANENT, reason
        if exc.status == 401:
            if webhook:
                return OutcomeKind.PERMANENT, reason  # the webhook's token was reset
            return OutcomeKind.UNAUTHORIZED, LOGIN_REFUSED
        return OutcomeKind.RETRY, reason
    if isinstance(exc, discord.RateLimited):
        return OutcomeKind.RETRY, f"Discord rate limit: retry after {exc.retry_after:.0f} s"
    if isinstance(exc, TimeoutError):
        return OutcomeKind.RETRY, "Discord did not answer in time"
    if isinstance(exc, aiohttp.ClientError | OSError):
        return OutcomeKind.RETRY, f"cannot reach Discord: {type(exc).__name__}"
    return OutcomeKind.RETRY, f"unexpected error: {type(exc).__name__}"


async def post_messages(
    messages: Sequence[DiscordMessage],
    post: Callable[[DiscordMessage], Awaitable[None]],
    *,
    webhook: bool,
    shown: str,
    papers: int,
) -> AsyncIterator[Sequence[Outcome]]:
    """Post messages in order, yielding each one's SENT outcomes once Discord confirmed it.

    The first failure yields RETRY or PERMANENT for its message and every later one (which are
    never posted this cycle) and ends the post.
    """
    name = "discord_webhook" if webhook else "discord"
    for index, message in enumerate(messages):
        try:
            await post(message)
        except Exception as exc:
            kind, reason = classify_error(exc, webhook=webhook)
            log.warning(
                "%s.send_failed target=%s message=%d/%d outcome=%s reason=%r",
                name,
                shown,
                index + 1,
                len(messages),
                kind,
                reason,
            )
            yield [o for m in messages[index:] for o in for_deliveries(m.deliveries, kind, reason)]
            return
        yield for_deliveries(message.deliveries, OutcomeKind.SENT)
    log.info("%s.sent target=%s papers=%d messages=%d", name, shown, papers, len(messages))


def describe_target(target: Target) -> str:
    """A target for logs: a webhook's token is a secret, so only its id is shown."""
    if target.kind == "discord_webhook":
        match = WEBHOOK_URL.match(target.address)
        return f"discord_webhook:{match.group('id') if match else 'invalid'}"
    return str(target)


# -- the bot channel ----------------------------------------------------------------------------


class DiscordChannel:
    """Posts the daily digest to Discord channels as the bot (`discord:<channel id>` targets)."""

    kind = "discord"

    def __init__(
        self,
        *,
        token: str,
        http: HTTPClient | None = None,
        timeout: float = REQUEST_TIMEOUT,
        max_ratelimit_wait: float = MAX_RATELIMIT_WAIT,
        abstract_chars: int = ABSTRACT_CHARS,
    ) -> None:
        self._token = token
        self._http = http
        self._owns_http = http is None
        self._logged_in = http is not None
        self._timeout = timeout
        self._max_ratelimit_wait = max_ratelimit_wait
        self._abstract_chars = abstract_chars
        self._login_lock = asyncio.Lock()
        self._global_limit = TokenBucket(GLOBAL_REQUESTS_PER_SECOND, GLOBAL_BURST)

    @classmethod
    def from_settings(cls, settings: Settings) -> DiscordChannel | None:
        """The channel for these settings, or None when no bot token is configured."""
        if not settings.secrets.discord_bot_token:
            return None
        use_api_url(settings.discord.api_url)
        return cls(token=settings.secrets.discord_bot_token)

    async def __aenter__(self) -> DiscordChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session this channel opened (an injected client stays open)."""
        if self._owns_http and self._http is not None:
            await self._http.close()
            self._http = None
            self._logged_in = False

    async def _client(self) -> HTTPClient:
        async with self._login_lock:
            if self._http is None:
                self._http = HTTPClient(
                    asyncio.get_running_loop(),
                    max_ratelimit_timeout=self._max_ratelimit_wait,
                    http_trace=self._paced_requests(),
                )
            if not self._logged_in:
                await self._http.static_login(self._token)
                self._logged_in = True
            return self._http

    def _paced_requests(self) -> aiohttp.TraceConfig:
        """aiohttp's hook right before each request goes out: the global limit is taken there.

        Not in `_post`: discord.py may still hold a request back afterwards for its channel's
        bucket, and a slot taken then would be counted seconds before the request is made.
        """

        async def on_request_start(*_: Any) -> None:
            await self._global_limit.acquire()

        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(on_request_start)
        return trace

    async def _post(self, channel_id: str, payload: dict[str, Any]) -> None:
        http = await self._client()
        route = Route("POST", "/channels/{channel_id}/messages", channel_id=channel_id)
        async with asyncio.timeout(self._timeout):
            await http.request(route, json=payload)

    async def send(self, batch: Batch) -> AsyncIterator[Sequence[Outcome]]:
        """Post `batch` as embed messages, yielding each message's outcomes as Discord answers."""
        messages = render_messages(batch, abstract_chars=self._abstract_chars)
        if not batch.target.address.isdigit():
            reason = f"not a Discord channel id: {batch.target.address!r}"
            yield for_deliveries(batch.deliveries, OutcomeKind.PERMANENT, reason)
            return

        async def post(message: DiscordMessage) -> None:
            await self._post(batch.target.address, message.payload(batch.target))

        async for outcomes in post_messages(
            messages, post, webhook=False, shown=str(batch.target), papers=len(batch.papers)
        ):
            yield outcomes

    async def notify(self, target: Target, text: str) -> bool:
        """Post an operator alert as plain text (mentions disabled); True when delivered."""
        try:
            for piece in split_text(escape_mentions(text)):
                await self._post(
                    target.address, {"content": piece, "allowed_mentions": {"parse": []}}
                )
        except Exception as exc:
            log.warning("discord.notify_failed target=%s reason=%r", target, classify_error(exc)[1])
            return False
        return True


# -- the webhook channel ------------------------------------------------------------------------


def validate_webhook_url(url: str) -> str:
    """The URL stripped, when it is a Discord channel webhook URL; ValueError otherwise."""
    cleaned = url.strip()
    if not WEBHOOK_URL.match(cleaned):
        raise ValueError(
            "not a Discord webhook URL: expected https://discord.com/api/webhooks/<id>/<token> "
            "(Channel settings > Integrations > Webhooks > Copy Webhook URL)"
        )
    return cleaned


def validate_target(target: Target) -> Target:
    """A `discord:` / `discord_webhook:` target checked (and cleaned); ValueError when malformed.

    Other kinds pass through unchanged, so the CLI can call this for every target.
    """
    if target.kind == "discord" and not target.address.isdigit():
        raise ValueError(
            f"discord:{target.address} is not a channel id: expected digits, e.g. "
            "discord:123456789012345678 (Developer Mode > right-click the channel > Copy ID)"
        )
    if target.kind == "discord_webhook":
        return Target(kind=target.kind, address=validate_webhook_url(target.address))
    return target


def webhook_subscriptions(settings: Settings) -> list[tuple[Target, str]]:
    """The `discord.webhooks` entries ("URL query") as (target, query) pairs; ConfigError if bad."""
    # The entry holds the webhook's token: errors name its position, never echo it.
    return parse_configured_targets(
        settings.discord.webhooks,
        setting="discord.webhooks",
        target=lambda url: Target(kind="discord_webhook", address=validate_webhook_url(url)),
        expected=(
            "'WEBHOOK_URL query', e.g. 'https://discord.com/api/webhooks/123/abc diffusion models'"
        ),
    )


class DiscordWebhookChannel:
    """Posts the daily digest through channel webhooks (`discord_webhook:<url>`), no bot needed."""

    kind = "discord_webhook"

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = REQUEST_TIMEOUT,
        abstract_chars: int = ABSTRACT_CHARS,
        username: str = "daily-papers",
    ) -> None:
        self._session = session
        self._owns_session = session is None
        self._timeout = timeout
        self._abstract_chars = abstract_chars
        self._username = username

    @classmethod
    def from_settings(cls, settings: Settings) -> DiscordWebhookChannel:
        """The webhook channel; always available, since a webhook URL carries its own token."""
        use_api_url(settings.discord.api_url)
        return cls()

    async def __aenter__(self) -> DiscordWebhookChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the aiohttp session this channel opened (an injected one stays open)."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _webhook(self, url: str) -> discord.Webhook:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return discord.Webhook.from_url(validate_webhook_url(url), session=self._session)

    async def _post(self, webhook: discord.Webhook, message: DiscordMessage | str) -> None:
        async with asyncio.timeout(self._timeout):
            if isinstance(message, str):
                await webhook.send(
                    content=message,
                    username=self._username,
                    allowed_mentions=discord.AllowedMentions.none(),
                    wait=True,
                )
            else:
                await webhook.send(
                    content=message.content,
                    embeds=list(message.embeds),
                    username=self._username,
                    allowed_mentions=discord.AllowedMentions.none(),
                    wait=True,  # makes Discord confirm the message (and report errors) before SENT
                )

    async def send(self, batch: Batch) -> AsyncIterator[Sequence[Outcome]]:
        """Post `batch` through the webhook, yielding each message's outcomes as Discord answers.

        Webhook execution takes no nonce: a message whose answer was lost is posted again by
        the next cycle (docs/delivery.md).
        """
        messages = render_messages(batch, abstract_chars=self._abstract_chars)
        shown = describe_target(batch.target)
        try:
            webhook = self._webhook(batch.target.address)
        except ValueError as exc:
            yield for_deliveries(batch.deliveries, OutcomeKind.PERMANENT, str(exc))
            return

        async def post(message: DiscordMessage) -> None:
            await self._post(webhook, message)

        async for outcomes in post_messages(
            messages, post, webhook=True, shown=shown, papers=len(batch.papers)
        ):
            yield outcomes

    async def notify(self, target: Target, text: str) -> bool:
        """Post an operator alert through the webhook as plain text; True when delivered."""
        try:
            webhook = self._webhook(target.address)
            for piece in split_text(escape_mentions(text)):
                await self._post(webhook, piece)
        except Exception as exc:
            reason = classify_error(exc, webhook=True)[1]
            log.warning(
                "discord_webhook.notify_failed target=%s reason=%r", describe_target(target), reason
            )
            return False
        return True


__all__ = [
    "LOGIN_REFUSED",
    "MAX_EMBEDS",
    "MAX_EMBED_TOTAL",
    "DiscordChannel",
    "DiscordMessage",
    "DiscordWebhookChannel",
    "channel_factory",
    "classify_error",
    "describe_target",
    "escape_text",
    "fit",
    "post_messages",
    "render_embed",
    "render_messages",
    "split_text",
    "subscribe_configured_webhooks",
    "use_api_url",
    "validate_target",
    "validate_webhook_url",
    "webhook_channel_factory",
    "webhook_subscriptions",
]


# -- composition-root entry points (digest.app) -------------------------------------------------


def subscribe_configured_webhooks(settings: Settings, store: PaperStore, *, now: datetime) -> int:
    """Subscribe each `discord.webhooks` entry that has no subscription yet; how many."""
    return subscribe_configured(
        store, webhook_subscriptions(settings), now=now, kind="discord_webhook"
    )


async def channel_factory(
    settings: Settings, store: PaperStore, stack: AsyncExitStack
) -> DiscordChannel | None:
    """`digest.app` channel factory: the bot channel when DISCORD_BOT_TOKEN is set."""
    channel = DiscordChannel.from_settings(settings)
    if channel is not None:
        await stack.enter_async_context(channel)
    return channel


async def webhook_channel_factory(
    settings: Settings, store: PaperStore, stack: AsyncExitStack
) -> DiscordWebhookChannel:
    """`digest.app` channel factory: webhook targets (always on); subscribes `discord.webhooks`."""
    await asyncio.to_thread(subscribe_configured_webhooks, settings, store, now=datetime.now(UTC))
    channel = DiscordWebhookChannel.from_settings(settings)
    await stack.enter_async_context(channel)
    return channel


SPECS = (
    ChannelSpec(
        kind="discord",
        summary="a Discord channel, by its id, posted to by the bot",
        example="discord:123456789012345678",
        factory=channel_factory,
        validate=validate_target,
        secrets=("DISCORD_BOT_TOKEN",),
        settings_section="discord",
        limits=LIMITS,
    ),
    ChannelSpec(
        kind="discord_webhook",
        summary="a Discord channel's webhook URL (no bot needed; the URL is a secret)",
        example="discord_webhook:https://discord.com/api/webhooks/ID/TOKEN",
        factory=webhook_channel_factory,
        validate=validate_target,
        settings_section="discord",
        limits=LIMITS,
    ),
)
