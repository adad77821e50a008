"""The email channel: daily digests, confirmation emails and alerts (`EmailChannel`).

Each message is rendered (`digest.mail.render`), composed (`digest.mail.mime`) and handed to a
small pool of SMTP sessions (`digest.mail.smtp`). Outcomes per digest:

- accepted (2xx): every delivery SENT; the address's refusal counter is reset.
- 4xx, connection refused, timeout, disconnect: RETRY (the outbox backs off and retries next
  cycle).
- 5xx for the recipient (at RCPT or DATA): recorded in the target option `email_failures`;
  the deliveries are retried next cycle, and the third refusal in a row makes them PERMANENT,
  which disables the address's subscriptions with the server's answer as the reason.

A digest is one message per address per call, each paper shown in full once. Its Message-ID is
derived from the address and the exact deliveries it carries (`digest_message_id`), so a retry
after an ambiguous failure is recognisably the same message. Addresses that never confirmed are
never mailed (see `digest.mail.signup`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from datetime import UTC, date, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid
from zoneinfo import ZoneInfo

from digest.archive import day_bounds
from digest.channels import ChannelSpec
from digest.config import Settings
from digest.domain import Batch, Outcome, OutcomeKind, Target, for_deliveries
from digest.mail.bookkeeping import (
    EMAIL,
    OPTION_CONFIRMED,
    OPTION_FAILURES,
    OPTION_LAST_MAIL_DAY,
    UNCONFIRMED,
)
from digest.mail.links import EmailLinks
from digest.mail.mime import compose_message, digest_message_id, message_bytes, sender_domain
from digest.mail.render import render_confirmation, render_digest, render_empty
from digest.mail.smtp import (
    CONNECT_TIMEOUT,
    TEST_CONNECT_TIMEOUT,
    SendResult,
    SendStatus,
    SmtpPool,
    smtp_address,
)
from digest.store import PaperStore

log = logging.getLogger(__name__)

FAILURE_LIMIT = 3  # consecutive 5xx refusals of an address before its subscriptions are disabled


class EmailChannel:
    """Channel for `email:` targets: one digest per address per cycle, plus confirmation mails."""

    kind = EMAIL

    def __init__(
        self,
        *,
        settings: Settings,
        store: PaperStore,
        links: EmailLinks,
        pool: SmtpPool | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.links = links
        self.sender = settings.email.sender
        self.list_id = settings.email.list_id
        self.pool = pool or SmtpPool(
            hostname=settings.email.smtp_host,
            port=settings.email.smtp_port,
            security=settings.email.security,
            username=settings.email.smtp_username,
            password=settings.secrets.smtp_password,
            size=settings.email.concurrency,
            connect_timeout=(
                TEST_CONNECT_TIMEOUT if settings.service.test_mode else CONNECT_TIMEOUT
            ),
        )
        self._clock = clock if clock is not None else (lambda: datetime.now(UTC))

    @classmethod
    def from_settings(
        cls, settings: Settings, *, store: PaperStore, pool: SmtpPool | None = None
    ) -> EmailChannel | None:
        """The channel when `email.enabled`, else None; ConfigError without key or base URL."""
        if not settings.email.enabled:
            return None
        return cls(
            settings=settings, store=store, links=EmailLinks.from_settings(settings), pool=pool
        )

    async def __aenter__(self) -> EmailChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the pooled SMTP sessions (on shutdown)."""
        await self.pool.close()

    def _today(self, now: datetime) -> str:
        return now.astimezone(ZoneInfo(self.settings.service.timezone)).date().isoformat()

    async def _option(self, target: Target, name: str) -> str | None:
        return await asyncio.to_thread(self.store.get_target_option, target, name)

    async def _set_option(self, target: Target, name: str, value: str | None) -> None:
        await asyncio.to_thread(self.store.set_target_option, target, name, value)

    async def _deliver(self, recipient: str, msg: EmailMessage) -> SendResult:
        recipient = smtp_address(recipient)
        if recipient != msg["To"]:
            msg.replace_header("To", recipient)
        utf8 = not recipient.isascii()
        return await self.pool.send(
            self.sender, recipient, message_bytes(msg, utf8=utf8), utf8=utf8
        )

    async def _count_refusal(self, target: Target, result: SendResult, failures: int) -> int:
        """Record one more 5xx refusal in a row; the new count."""
        failures += 1
        await self._set_option(target, OPTION_FAILURES, str(failures))
        log.warning(
            "email.refused failures=%d limit=%d detail=%r", failures, FAILURE_LIMIT, result.detail
        )
        return failures

    async def send(self, batch: Batch) -> AsyncIterator[Sequence[Outcome]]:
        """Mail one digest with every paper of `batch`: one message, so one yield of outcomes."""
        if batch.deliveries:
            yield await self._send_digest(batch)

    async def _send_digest(self, batch: Batch) -> Sequence[Outcome]:
        """The outcome of mailing `batch` as one digest, one per delivery; never raises."""
        target = batch.target
        deliveries = batch.deliveries
        now = self._clock()
        try:
            confirmed = batch.options.get(OPTION_CONFIRMED) or await self._option(
                target, OPTION_CONFIRMED
            )
            if not confirmed:
                # Never mail an address that did not click its confirmation link; parking the
                # subscriptions as unconfirmed lets that link activate them later.
                log.info("email.unconfirmed_target deliveries=%d", len(deliveries))
                return for_deliveries(deliveries, OutcomeKind.PERMANENT, UNCONFIRMED)
            today = self._today(now)
            if self.settings.email.send_empty and batch.options.get(OPTION_LAST_MAIL_DAY) != today:
                # Only the "nothing new" note reads this mark (set before sending, so a crash
                # mid-send cannot add a note the same day); without the note it would cost
                # every digest a database write.
                await self._set_option(target, OPTION_LAST_MAIL_DAY, today)
            rendered = render_digest(
                batch,
                links=self.links,
                now=now,
                timezone=self.settings.service.timezone,
                list_name=self.list_id,
            )
            msg = compose_message(
                rendered,
                sender=self.sender,
                recipient=target.address,
                now=now,
                message_id=digest_message_id(batch, self.sender),
                list_id=self.list_id,
                unsubscribe=(
                    self.links.unsubscribe_url(target.address, now=now),
                    self.links.unsubscribe_mailto(target.address),
                ),
            )
            result = await self._deliver(target.address, msg)
            failures = int(batch.options.get(OPTION_FAILURES) or 0)
            if result.status is SendStatus.SENT:
                if failures:
                    await self._set_option(target, OPTION_FAILURES, None)
                log.info("email.digest_sent papers=%d", len(batch.papers))
                return for_deliveries(deliveries, OutcomeKind.SENT)
            if result.status is SendStatus.RETRY:
                # One line per digest the relay answered; while it is down, smtp.relay_down
                # said so once and the digests it never saw are only worth a debug line.
                level = logging.WARNING if result.attempted else logging.DEBUG
                log.log(level, "email.digest_deferred detail=%r", result.detail)
                return for_deliveries(deliveries, OutcomeKind.RETRY, result.detail)
            failures = await self._count_refusal(target, result, failures)
            if failures >= FAILURE_LIMIT:
                reason = f"mail refused {failures} times in a row: {result.detail}"
                return for_deliveries(deliveries, OutcomeKind.PERMANENT, reason)
            reason = f"mail refused ({failures}/{FAILURE_LIMIT}): {result.detail}"
            return for_deliveries(deliveries, OutcomeKind.RETRY, reason)
        except Exception as exc:  # never raise into the cycle: a bug here is a transient failure
            log.exception("email.send_crashed")
            return for_deliveries(deliveries, OutcomeKind.RETRY, f"{type(exc).__name__}: {exc}")

    async def send_confirmation(
        self, address: str, *, pending: Sequence[str], active: Sequence[str], now: datetime
    ) -> bool:
        """Mail the double opt-in link (implements ConfirmationSender); True when accepted."""
        rendered = render_confirmation(
            address,
            pending=pending,
            active=active,
            links=self.links,
            now=now,
            list_name=self.list_id,
        )
        msg = compose_message(rendered, sender=self.sender, recipient=address, now=now)
        result = await self._deliver(address, msg)
        if result.status is not SendStatus.SENT:
            log.warning("email.confirm_failed status=%s detail=%r", result.status, result.detail)
        return result.status is SendStatus.SENT

    async def notify(self, target: Target, text: str) -> bool:
        """Mail an operator alert as plain text; True when the relay accepted it."""
        now = self._clock()
        msg = EmailMessage()
        msg["From"] = formataddr(("daily-papers", self.sender))
        msg["To"] = target.address
        msg["Subject"] = "daily-papers alert"
        msg["Date"] = format_datetime(now.astimezone(UTC))
        msg["Message-ID"] = make_msgid(domain=sender_domain(self.sender))
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(text, charset="utf-8")
        try:
            result = await self._deliver(target.address, msg)
        except Exception:  # alerts never raise
            log.exception("email.notify_crashed")
            return False
        return result.status is SendStatus.SENT

    async def send_empty(self, *, now: datetime | None = None) -> int:
        """The 'nothing new' note for confirmed addresses that got no mail today.

        Call once after the cycle's deliveries. Does nothing unless `email.send_empty`. An
        address counts as served when it was sent papers today or is still owed some (the
        outbox says so, also for digests sent before `send_empty` was switched on), when `send`
        handled a digest for it today (whatever the relay said), or when it already got the
        note, so a second cycle on the same day sends none. Returns how many notes were
        accepted.
        """
        if not self.settings.email.send_empty:
            return 0
        now = now or self._clock()
        today = self._today(now)
        start_of_day, _ = day_bounds(date.fromisoformat(today), self.settings.service.timezone)
        served = await asyncio.to_thread(self.store.targets_served_since, EMAIL, start_of_day)
        subs = await asyncio.to_thread(self.store.list_subscriptions, None, active_only=True)
        keywords: dict[str, list[str]] = {}
        for sub in subs:
            if sub.target.kind == EMAIL and sub.target.address not in served:
                keywords.setdefault(sub.target.address, []).append(sub.keyword)
        sent = 0
        for address, queries in keywords.items():
            try:
                sent += await self._send_empty_one(address, queries, now=now, today=today)
            except Exception:  # one broken address must not stop the others
                log.exception("email.empty_crashed")
        if sent:
            log.info("email.empty_sent count=%d", sent)
        return sent

    async def _send_empty_one(
        self, address: str, queries: Collection[str], *, now: datetime, today: str
    ) -> int:
        target = Target(kind=EMAIL, address=address)
        if not await self._option(target, OPTION_CONFIRMED):
            return 0
        if await self._option(target, OPTION_LAST_MAIL_DAY) == today:
            return 0
        await self._set_option(target, OPTION_LAST_MAIL_DAY, today)
        rendered = render_empty(
            address,
            keywords=list(queries),
            links=self.links,
            now=now,
            timezone=self.settings.service.timezone,
        )
        msg = compose_message(
            rendered,
            sender=self.sender,
            recipient=address,
            now=now,
            list_id=self.list_id,
            unsubscribe=(
                self.links.unsubscribe_url(address, now=now),
                self.links.unsubscribe_mailto(address),
            ),
        )
        result = await self._deliver(address, msg)
        if result.status is SendStatus.REFUSED:
            failures = int(await self._option(target, OPTION_FAILURES) or 0)
            failures = await self._count_refusal(target, result, failures)
            if failures >= FAILURE_LIMIT:
                reason = f"mail refused {failures} times in a row: {result.detail}"
                for sub in await asyncio.to_thread(self.store.list_subscriptions, target):
                    await asyncio.to_thread(self.store.disable_subscription, sub.id, reason)
            return 0
        if result.status is SendStatus.SENT:
            await self._set_option(target, OPTION_FAILURES, None)
            return 1
        return 0


async def channel_factory(
    settings: Settings, store: PaperStore, stack: contextlib.AsyncExitStack
) -> EmailChannel | None:
    """The composition root's factory: the channel when email is on, closed with `stack`."""
    channel = EmailChannel.from_settings(settings, store=store)
    if channel is not None:
        await stack.enter_async_context(channel)
    return channel


SPECS = (
    ChannelSpec(
        kind=EMAIL,
        summary="an email address that confirmed its subscription (double opt-in)",
        example="email:reader@lab.org",
        factory=channel_factory,
        settings_section="email",
        subscribe_instead=(
            "email addresses need their owner's confirmation: use "
            "`daily-papers email subscribe ADDRESS QUERY` to mail them the link"
        ),
    ),
)


__all__ = [
    "FAILURE_LIMIT",
    "EmailChannel",
    "channel_factory",
]
