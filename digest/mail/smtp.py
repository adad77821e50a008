"""Sending over SMTP (aiosmtplib): a small pool of sessions, and how the relay answered.

`SmtpPool` keeps at most `email.concurrency` connections, reused across messages and cycles; a
connection idle for longer than IDLE_SECONDS is closed instead of reused, and a reused one that
turns out dead before the message is handed over is replaced once. Opening a session gets
CONNECT_TIMEOUT per step; when one cannot be opened, the relay counts as down for
RELAY_DOWN_SECONDS and messages meanwhile are RETRY without a try. `SmtpPool.send` never
raises: it returns a `SendResult` (SENT, RETRY or REFUSED, with the relay's words).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import aiosmtplib

from digest.render import collapse_ws

log = logging.getLogger(__name__)

IDLE_SECONDS = 30.0  # relays drop idle sessions after ~60 s (Postfix smtpd_timeout 300 s at most)
SMTP_TIMEOUT = 60.0  # seconds per SMTP command: a stuck relay must not hold the cycle
# Seconds for each step of opening a session (TCP connect and greeting, EHLO, STARTTLS, login):
# a working relay answers within milliseconds, and one that accepts connections but never
# speaks must not hold each message (and each sign-up) for a whole SMTP_TIMEOUT.
CONNECT_TIMEOUT = 5.0
TEST_CONNECT_TIMEOUT = 0.3  # service.test_mode: the stand-ins answer at once or never
# After a session could not be opened, every message fails at once for this long (about the
# rest of a cycle's delivery): one unreachable relay costs one timeout, not one per message.
RELAY_DOWN_SECONDS = 300.0


def smtp_address(address: str) -> str:
    """The address as SMTP wants it: an internationalised domain in its ASCII (IDNA) form.

    Only a non-ASCII local part then needs SMTPUTF8, which not every relay offers.
    """
    local, _, domain = address.rpartition("@")
    if domain.isascii():
        return address
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        return address  # let the relay judge it; SMTPUTF8 is still tried


class SendStatus(StrEnum):
    """How the relay answered one message."""

    SENT = "sent"
    RETRY = "retry"  # 4xx or a transport failure: try again later
    REFUSED = "refused"  # 5xx for this recipient or this message


@dataclass(frozen=True, slots=True)
class SendResult:
    """One message's fate and the relay's words (never contains credentials)."""

    status: SendStatus
    detail: str = ""
    attempted: bool = True  # False: not tried, the relay was found down moments ago


def _response_error(exc: aiosmtplib.SMTPResponseException) -> str:
    return f"{exc.code} {collapse_ws(exc.message)}"[:300]


class SmtpPool:
    """At most `size` SMTP sessions, reused for many messages; idle ones are closed, not reused."""

    def __init__(
        self,
        *,
        hostname: str,
        port: int,
        security: str,
        username: str = "",
        password: str = "",
        size: int = 4,
        timeout: float = SMTP_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        down_seconds: float = RELAY_DOWN_SECONDS,
        tls_context: ssl.SSLContext | None = None,
        idle_seconds: float = IDLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hostname = hostname
        self.port = port
        self.security = security
        self._username = username
        self._password = password
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._down_seconds = down_seconds
        self._tls_context = tls_context
        self._idle_seconds = idle_seconds
        self._clock = clock
        self._slots = asyncio.Semaphore(size)
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []
        self._down_until = float("-inf")
        self._down_reason = ""
        self.connections_opened = 0  # for the log line and tests: reuse is observable

    async def _connect(self) -> aiosmtplib.SMTP:
        """A new session, opened within `connect_timeout` per step; on failure the relay is
        taken to be down for `down_seconds` and the error is raised."""
        smtp = aiosmtplib.SMTP(
            hostname=self.hostname,
            port=self.port,
            # Every step of the opening (connect and greeting, EHLO, STARTTLS, login) gets the
            # short timeout; the messages themselves then get the command timeout.
            timeout=self._connect_timeout,
            use_tls=self.security == "tls",
            # None would mean "if offered"; an explicit setting must not be silently skipped.
            start_tls=self.security == "starttls",
            tls_context=self._tls_context,
        )
        try:
            await smtp.connect()
            if self._username:
                await smtp.login(self._username, self._password)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            smtp.close()
            self._down_until = self._clock() + self._down_seconds
            self._down_reason = f"{type(exc).__name__}: {exc}"[:200]
            log.warning(
                "smtp.relay_down host=%s port=%d for_seconds=%.0f error=%r",
                self.hostname,
                self.port,
                self._down_seconds,
                self._down_reason,
            )
            raise
        smtp.timeout = self._timeout
        self.connections_opened += 1
        log.debug("smtp.connected host=%s port=%d", self.hostname, self.port)
        return smtp

    @property
    def down(self) -> bool:
        """Whether a session failed to open less than `down_seconds` ago (sends fail at once)."""
        return self._clock() < self._down_until

    def _take_idle(self) -> aiosmtplib.SMTP | None:
        while self._idle:
            smtp, since = self._idle.pop()
            if smtp.is_connected and self._clock() - since < self._idle_seconds:
                return smtp
            smtp.close()
        return None

    async def send(self, sender: str, recipient: str, data: bytes, *, utf8: bool) -> SendResult:
        """Hand one message to the relay over a pooled session; never raises."""
        async with self._slots:
            if self.down:
                # Not tried: the relay could not be reached moments ago (RETRY, as any
                # transport failure); the next cycle tries again.
                return SendResult(
                    SendStatus.RETRY,
                    f"the mail server is unreachable ({self._down_reason})",
                    attempted=False,
                )
            reused = self._take_idle()
            smtp = reused
            try:
                if smtp is None:
                    smtp = await self._connect()
                result = await self._transaction(smtp, sender, recipient, data, utf8=utf8)
                if result is None and reused is not None:
                    # The idle session died before the message was handed over: no risk of a
                    # duplicate, so try once on a fresh session.
                    reused.close()
                    smtp = await self._connect()
                    result = await self._transaction(smtp, sender, recipient, data, utf8=utf8)
                if result is None:
                    result = SendResult(SendStatus.RETRY, "the mail server closed the connection")
            except aiosmtplib.SMTPAuthenticationError as exc:
                log.error("smtp.auth_failed host=%s code=%d", self.hostname, exc.code)
                result = SendResult(SendStatus.RETRY, f"SMTP login refused: {exc.code}")
            except aiosmtplib.SMTPResponseException as exc:
                result = SendResult(SendStatus.RETRY, _response_error(exc))
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                result = SendResult(SendStatus.RETRY, f"{type(exc).__name__}: {exc}"[:300])
            if smtp is not None and smtp.is_connected and result.status is not SendStatus.RETRY:
                self._idle.append((smtp, self._clock()))
            elif smtp is not None:
                smtp.close()
            return result

    @staticmethod
    async def _transaction(
        smtp: aiosmtplib.SMTP, sender: str, recipient: str, data: bytes, *, utf8: bool
    ) -> SendResult | None:
        """MAIL, RCPT, DATA on one session; None when it died before DATA (safe to redo)."""
        options = ["SMTPUTF8"] if utf8 else []
        try:
            await smtp.mail(sender, options=options, encoding="utf-8" if utf8 else "ascii")
            await smtp.rcpt(recipient, encoding="utf-8" if utf8 else "ascii")
        except aiosmtplib.SMTPServerDisconnected:
            return None
        except aiosmtplib.SMTPRecipientRefused as exc:
            await _reset(smtp)
            status = SendStatus.REFUSED if exc.code >= 500 else SendStatus.RETRY
            return SendResult(status, _response_error(exc))
        except aiosmtplib.SMTPSenderRefused as exc:
            # Our own From is refused: an operator problem, never the subscriber's fault.
            await _reset(smtp)
            log.error("smtp.sender_refused code=%d", exc.code)
            return SendResult(SendStatus.RETRY, _response_error(exc))
        try:
            await smtp.data(data)
        except aiosmtplib.SMTPDataError as exc:
            await _reset(smtp)
            status = SendStatus.REFUSED if exc.code >= 500 else SendStatus.RETRY
            return SendResult(status, _response_error(exc))
        return SendResult(SendStatus.SENT)

    async def close(self) -> None:
        """Say QUIT to every idle session."""
        idle, self._idle = self._idle, []
        for smtp, _ in idle:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await smtp.quit()
            smtp.close()


async def _reset(smtp: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
        await smtp.rset()


__all__ = [
    "SendResult",
    "SendStatus",
    "SmtpPool",
    "smtp_address",
]
