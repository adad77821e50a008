"""The Slack delivery channel: one Block Kit message per channel per cycle, threads past the limits.

Every Web API call goes through slack_sdk's `AsyncWebClient` at `slack.api_url`. A 429 is
retried inside the client after exactly the `Retry-After` the server gave (bounded: a few
retries, and never a wait longer than `max_retry_after`). What still fails becomes per-paper
outcomes: the errors that mean "this channel will never work again" are PERMANENT (the cycle
disables the subscription with the reason), those that mean Slack refuses the bot token itself
are UNAUTHORIZED (the subscription is paused the same way, and `status` alerts on the token),
everything else is RETRY (next cycle).

The post never loses a paper to Slack's limits: papers are packed into sections of at most
3000 characters and messages of at most 50 blocks, and whatever does not fit in the first
message continues as replies in its thread. Each message's papers are reported SENT (and recorded by
the cycle) as soon as Slack accepted it; when a later message fails only the rest are retried.

Slack has no idempotency key for chat.postMessage: when Slack accepted a post but its answer
was lost (a timeout), the next cycle posts that one message again. Everything sent before it
was recorded already (see docs/delivery.md).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import AsyncConnectionErrorRetryHandler
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient

from digest.channels import ChannelSpec, MessageLimits
from digest.config import Settings
from digest.domain import Batch, Delivery, Outcome, OutcomeKind, Paper, Target, for_deliveries
from digest.pacing import Gap, parse_retry_after
from digest.render import short_authors

log = logging.getLogger(__name__)

MAX_BLOCKS = 50  # Slack's limit of blocks per message
MAX_SECTION_CHARS = 3000  # Slack's limit of a section block's text
MAX_HEADER_CHARS = 150  # Slack's limit of a header block's plain text
MAX_FALLBACK_CHARS = 3000  # the notification text; Slack truncates past 40k, phones far sooner
MAX_COMMENT_CHARS = 500  # a comment is context, not the paper; longer ones are shortened
# Slack's chat.postMessage allows about one message per second per channel; a batch that
# continues in a thread posts its replies this far apart instead of collecting 429s.
POST_INTERVAL = 1.0

# The Slack errors after which posting to this channel can never succeed without a person
# acting (re-inviting the bot, unarchiving, reinstalling the app): disable, with a hint.
PERMANENT_ERRORS: dict[str, str] = {
    "channel_not_found": "the channel was deleted, or it is private and the bot is not in it",
    "not_in_channel": "the bot is not a member of this channel; /invite it and subscribe again",
    "is_archived": "the channel is archived",
    "account_inactive": "the bot's account or workspace is inactive",
    "token_revoked": "the bot token was revoked; reinstall the Slack app",
    "invalid_auth": "the bot token is invalid; check SLACK_BOT_TOKEN",
}
# Of those, the ones about our token rather than the channel: every channel fails alike.
TOKEN_ERRORS = frozenset({"account_inactive", "token_revoked", "invalid_auth"})


_CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{2,}")


def validate_target(target: Target) -> Target:
    """A `slack:` target checked to name a channel id; ValueError when it does not.

    Other kinds pass through unchanged. Names (`#general`) are refused: Slack's API wants ids,
    and a renamed channel keeps its id.
    """
    if target.kind == "slack" and not _CHANNEL_ID.fullmatch(target.address):
        raise ValueError(
            f"slack:{target.address} is not a channel id: expected an id such as "
            "slack:C0123ABCD (open the channel's details; the id is at the bottom of 'About')"
        )
    return target


def escape_mrkdwn(text: str) -> str:
    """Make text inert in mrkdwn: `&`, `<`, `>` as entities, so no mention, link or command forms.

    These three are the only characters Slack gives control meaning to (`<!channel>`,
    `<@U123>`, `<https://x|y>`); escaping them is what Slack's own docs ask for.
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def escape_model_text(text: str) -> str:
    """A model's answer (a translated title) made inert in mrkdwn: one line, `&`, `<`, `>`
    escaped, and no backtick, because ``` opens a preformatted block that Slack lets run across
    lines, over the papers after it. Slack has no escape for backticks: they become `ˋ`."""
    return escape_mrkdwn(_one_line(text).replace("`", "\u02cb"))


class SlackMarkup:
    """Slack mrkdwn spelling of the command replies (see `bot.commands.ChatMarkup`)."""

    def escape(self, text: str) -> str:
        """Escape `&`, `<`, `>`."""
        return escape_mrkdwn(text)

    def bold(self, text: str) -> str:
        """`*text*`."""
        return f"*{escape_mrkdwn(text)}*"

    def link(self, url: str, text: str) -> str:
        """`<url|text>`; a `|` in the text is fine because Slack splits at the first one."""
        return f"<{escape_mrkdwn(url)}|{escape_mrkdwn(text)}>"

    def code(self, text: str) -> str:
        """Inline code; a backtick inside would end it, so it becomes a quote."""
        return "`" + escape_mrkdwn(text.replace("`", "'")) + "`"

    def mention(self, user_id: str) -> str:
        """`<@U123>`."""
        return f"<@{escape_mrkdwn(user_id)}>"


def authors_line(paper: Paper) -> str:
    """The first three authors, then "et al." (`digest.render.short_authors`)."""
    return short_authors(paper.authors)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def render_paper(
    paper: Paper, translated_title: str | None = None, summary: str | None = None
) -> str:
    """One paper as mrkdwn: bold linked title, translation, TL;DR, authors · date · category,
    comment. The translation and the TL;DR are a model's text: inert (`escape_model_text`)."""
    title = _shorten(_one_line(paper.title), 1000)
    lines = [f"*<{paper.abs_url}|{escape_mrkdwn(title)}>*"]
    if translated_title:
        lines.append(f"_{escape_model_text(_shorten(_one_line(translated_title), 500))}_")
    if summary:
        lines.append("TL;DR: " + escape_model_text(_shorten(_one_line(summary), 500)))
    meta = [
        authors_line(paper),
        paper.updated.date().isoformat(),
        paper.primary_category,
    ]
    lines.append(escape_mrkdwn(" · ".join(part for part in meta if part)))
    if paper.comment:
        lines.append(escape_mrkdwn("Comment: " + _shorten(_one_line(paper.comment), 500)))
    text = "\n".join(lines)
    # Escaping can lengthen text; a paper must always fit one section, so the title (the only
    # long field left) gives way. Never reached by real arXiv metadata.
    return _shorten(text, MAX_SECTION_CHARS)


@dataclass
class _Message:
    """Blocks of one message and the (keyword, arxiv id) pairs they carry."""

    blocks: list[dict[str, Any]] = field(default_factory=list)
    papers: list[tuple[str, str]] = field(default_factory=list)


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def build_messages(batch: Batch) -> tuple[str, list[_Message]]:
    """Lay a batch out as messages within Slack's limits; returns (fallback text, messages)."""
    groups = batch.by_keyword()
    total = len(batch.papers)
    noun = "paper" if total == 1 else "papers"
    summary = ", ".join(f"{keyword} ({len(papers)})" for keyword, papers in groups)
    fallback = _shorten(escape_mrkdwn(f"{total} new arXiv {noun}: {summary}"), MAX_FALLBACK_CHARS)

    messages = [_Message()]
    messages[0].blocks.append(
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": _shorten(f"{total} new arXiv {noun}", MAX_HEADER_CHARS),
            },
        }
    )

    def add_block(block: dict[str, Any], carried: list[tuple[str, str]]) -> None:
        if len(messages[-1].blocks) >= MAX_BLOCKS:
            messages.append(_Message())
        messages[-1].blocks.append(block)
        messages[-1].papers.extend(carried)

    for keyword, papers in groups:
        heading = _shorten(f"*{escape_mrkdwn(keyword)}* · {len(papers)} new", MAX_SECTION_CHARS)
        # A heading alone at the end of a message would be separated from its papers.
        if len(messages[-1].blocks) >= MAX_BLOCKS - 1:
            messages.append(_Message())
        add_block({"type": "divider"}, [])
        add_block(_section(heading), [])
        chunk: list[str] = []
        carried: list[tuple[str, str]] = []
        for paper in papers:
            translated = batch.translations.get(paper.arxiv_id)
            text = render_paper(
                paper, translated[0] if translated else None, batch.summaries.get(paper.arxiv_id)
            )
            if chunk and len("\n\n".join([*chunk, text])) > MAX_SECTION_CHARS:
                add_block(_section("\n\n".join(chunk)), carried)
                chunk, carried = [], []
            chunk.append(text)
            carried.append((keyword, paper.arxiv_id))
        if chunk:
            add_block(_section("\n\n".join(chunk)), carried)
    # A message that is only dividers/headings carries nothing: drop it (never the first).
    messages = [m for i, m in enumerate(messages) if i == 0 or m.papers]
    return fallback, messages


class _RetryAfterHandler(AsyncRetryHandler):
    """Retry a 429 after exactly the server's Retry-After, if that is short enough.

    slack_sdk's own handler adds up to a second of random jitter to every wait; Slack asks for
    Retry-After, and tests answer `Retry-After: 0`, so this one waits exactly what was asked.
    """

    def __init__(self, *, max_retry_count: int, max_wait: float) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait = max_wait

    @staticmethod
    def _retry_after(response: HttpResponse) -> float | None:
        for name, values in response.headers.items():
            if name.lower() == "retry-after" and values:
                return parse_retry_after(values[0])
        return None

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if response is None or response.status_code != 429:
            return False
        wait = self._retry_after(response)
        return wait is not None and wait <= self.max_wait

    async def prepare_for_next_attempt_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        wait = self._retry_after(response) if response is not None else None
        state.next_attempt_requested = True
        log.info("slack.rate_limited retry_after=%s", wait)
        await asyncio.sleep(wait or 0.0)
        state.increment_current_attempt()


def build_web_client(
    *,
    token: str,
    api_url: str,
    rate_limit_retries: int = 3,
    max_retry_after: float = 60.0,
    connection_retry_delay: float = 1.0,
    timeout: int = 30,
) -> AsyncWebClient:
    """An AsyncWebClient for `api_url` that obeys Retry-After and retries a dropped connection."""
    base_url = api_url if api_url.endswith("/") else api_url + "/"
    handlers: list[AsyncRetryHandler] = [
        AsyncConnectionErrorRetryHandler(
            max_retry_count=1,
            interval_calculator=FixedValueRetryIntervalCalculator(connection_retry_delay),
        ),
        _RetryAfterHandler(max_retry_count=rate_limit_retries, max_wait=max_retry_after),
    ]
    return AsyncWebClient(token=token, base_url=base_url, timeout=timeout, retry_handlers=handlers)


def client_from_settings(settings: Settings) -> AsyncWebClient | None:
    """The bot's Web API client, or None when SLACK_BOT_TOKEN is not set."""
    token = settings.secrets.slack_bot_token
    if not token:
        return None
    return build_web_client(
        token=token,
        api_url=settings.slack.api_url,
        # Test mode: no pause before retrying a dropped connection (Retry-After is still obeyed).
        connection_retry_delay=0.0 if settings.service.test_mode else 1.0,
    )


def _error_code(exc: SlackApiError) -> str:
    data = exc.response.data if isinstance(exc.response.data, dict) else {}
    code = data.get("error")
    if isinstance(code, str) and code:
        return code
    return f"http_{exc.response.status_code}"


class SlackChannel:
    """Delivers batches to Slack channels (`Target.kind == "slack"`, address = channel id)."""

    kind = "slack"

    def __init__(self, *, client: AsyncWebClient, post_interval: float = POST_INTERVAL) -> None:
        self._client = client
        self._post_interval = post_interval
        self._gap = Gap(post_interval)  # per channel: Slack's one message per second

    @classmethod
    def from_settings(cls, settings: Settings) -> SlackChannel | None:
        """The channel for these settings, or None when Slack is not configured."""
        client = client_from_settings(settings)
        if client is None:
            return None
        return cls(
            client=client, post_interval=0.0 if settings.service.test_mode else POST_INTERVAL
        )

    async def _await_turn(self, channel: str) -> None:
        """Keep posts to one channel `post_interval` apart (a thread continues its channel)."""
        if self._post_interval > 0:
            await self._gap.wait(channel, clock=asyncio.get_running_loop().time)

    async def _post(
        self, channel: str, **payload: Any
    ) -> tuple[str | None, str | None, OutcomeKind]:
        """Post one message: (ts, error, what the error means). Never raises."""
        await self._await_turn(channel)
        try:
            response = await self._client.chat_postMessage(
                channel=channel,
                unfurl_links=False,
                unfurl_media=False,
                **payload,
            )
        except SlackApiError as exc:
            code = _error_code(exc)
            if code in PERMANENT_ERRORS:
                kind = OutcomeKind.UNAUTHORIZED if code in TOKEN_ERRORS else OutcomeKind.PERMANENT
                return None, f"{code}: {PERMANENT_ERRORS[code]}", kind
            if exc.response.status_code == 429:
                return None, "rate_limited: Slack kept answering 429", OutcomeKind.RETRY
            return None, code, OutcomeKind.RETRY
        except (aiohttp.ClientError, TimeoutError) as exc:
            # aiohttp's total timeout is a bare TimeoutError: name what happened instead.
            detail = str(exc) or "Slack did not answer in time"
            return None, f"{type(exc).__name__}: {detail}", OutcomeKind.RETRY
        ts = response.get("ts")
        return (str(ts) if ts else ""), None, OutcomeKind.SENT

    async def send(self, batch: Batch) -> AsyncIterator[Sequence[Outcome]]:
        """Post the batch as one message (plus thread replies), yielding each message's outcomes."""
        if not batch.deliveries:
            return
        channel = batch.target.address
        by_pair: dict[tuple[str, str], list[Delivery]] = {}
        for delivery in batch.deliveries:
            by_pair.setdefault((delivery.keyword, delivery.paper.arxiv_id), []).append(delivery)
        try:
            fallback, messages = build_messages(batch)
        except Exception as exc:  # a rendering bug must not stop the cycle's other targets
            log.exception("slack.render_failed target=%s", batch.target)
            yield Outcome.for_batch(batch, OutcomeKind.RETRY, f"render failed: {exc}")
            return

        thread_ts: str | None = None
        for index, message in enumerate(messages):
            payload: dict[str, Any] = {"blocks": message.blocks}
            if index == 0:
                payload["text"] = fallback
            else:
                payload["text"] = f"More new arXiv papers ({index + 1}/{len(messages)})"
                payload["thread_ts"] = thread_ts
            ts, error, kind = await self._post(channel, **payload)
            carried = [d for pair in message.papers for d in by_pair.pop(pair, [])]
            if error is None:
                thread_ts = thread_ts or ts
                yield for_deliveries(carried, OutcomeKind.SENT)
                continue
            rest = carried + [d for group in by_pair.values() for d in group]
            log.warning(
                "slack.send_failed target=%s message=%d/%d error=%r outcome=%s held=%d",
                batch.target,
                index + 1,
                len(messages),
                error,
                kind,
                len(rest),
            )
            yield for_deliveries(rest, kind, error)
            return
        # Nothing is left unless the layout lost a paper, which would be a bug: retry it
        # rather than mark it sent.
        leftovers = [d for group in by_pair.values() for d in group]
        if leftovers:
            log.error("slack.layout_lost_papers target=%s count=%d", batch.target, len(leftovers))
            yield for_deliveries(leftovers, OutcomeKind.RETRY, "not laid out")
        log.info(
            "slack.sent target=%s papers=%d messages=%d",
            batch.target,
            len(batch.papers),
            len(messages),
        )

    async def notify(self, target: Target, text: str) -> bool:
        """Post an operator alert as plain text; True when Slack accepted it."""
        _, error, _ = await self._post(target.address, text=escape_mrkdwn(text))
        if error is not None:
            log.warning("slack.notify_failed target=%s error=%r", target, error)
        return error is None


async def channel_factory(settings: Settings, store: object, stack: object) -> SlackChannel | None:
    """`digest.app` channel factory: the Slack channel when SLACK_BOT_TOKEN is set."""
    return SlackChannel.from_settings(settings)


SPECS = (
    ChannelSpec(
        kind="slack",
        summary="a Slack channel, by its id; the bot must be a member (/invite it)",
        example="slack:C0123ABCD",
        factory=channel_factory,
        validate=validate_target,
        secrets=("SLACK_BOT_TOKEN",),
        settings_section="slack",
        limits=MessageLimits(
            max_chars=MAX_SECTION_CHARS, max_items=MAX_BLOCKS, per_second=1 / POST_INTERVAL
        ),
    ),
)
