"""A real SMTP server (aiosmtpd) in the test's own event loop, recording what it receives.

`email_stack()` runs the whole email feature around it for end-to-end tests: the real
EmailChannel, EmailSubscriptions and the aiohttp web server on 127.0.0.1, with web.base_url
naming the server's real port so links in received emails can be followed.


`smtp_server()` listens on 127.0.0.1 on an ephemeral port. Each accepted message is kept as
`Received` (envelope plus the parsed message). Tests choose answers per recipient
(`refuse["x@y.org"] = "550 5.1.1 no such user"`, or a 4xx; `refuse_next` for the next RCPTs only)
or for DATA, see every RCPT attempt (`rcpts`), and can count the
sessions opened (`connections`) to prove that one connection carries many messages.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

from digest.config import Secrets, Settings, settings_for_tests
from digest.mail.channel import EmailChannel
from digest.mail.links import EmailLinks
from digest.mail.signup import EmailSubscriptions, RateLimiter
from digest.store import PaperStore
from digest.web import WebServer, build_web_app


@dataclass
class Received:
    """One message the server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        """The message parsed with the modern email API."""
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class RecordingHandler:
    """aiosmtpd handler: answers as told, records accepted messages."""

    messages: list[Received] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)  # recipient -> "550 ..." / "451 ..."
    # recipient -> answers for its next RCPTs, used once each in order, then `refuse` or 250
    # (a greylisting relay: "451 ..." once, then accepted).
    refuse_next: dict[str, list[str]] = field(default_factory=dict)
    rcpts: list[str] = field(default_factory=list)  # every RCPT address, accepted or not
    data_reply: str | None = None  # answer DATA with this instead of 250
    delay: float = 0.0  # seconds to stall before answering DATA (timeouts)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Refuse chosen recipients, accept the rest."""
        self.rcpts.append(address)
        if self.refuse_next.get(address):
            return self.refuse_next[address].pop(0)
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Record the message (or answer as told)."""
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.data_reply is not None:
            return self.data_reply
        content = envelope.original_content or envelope.content or b""
        assert isinstance(content, bytes)
        self.messages.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos), content))
        self.arrived.set()
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[Received]:
        """Messages addressed to `address`, oldest first."""
        return [m for m in self.messages if address in m.rcpt_tos]


@dataclass
class FakeSmtpServer:
    """The running server: where it listens, what it got."""

    host: str
    port: int
    handler: RecordingHandler
    sessions: list[SMTP] = field(default_factory=list)

    @property
    def messages(self) -> list[Received]:
        """Everything accepted so far."""
        return self.handler.messages

    @property
    def connections(self) -> int:
        """SMTP sessions opened so far."""
        return len(self.sessions)

    def drop_connections(self) -> None:
        """Close every open session from the server side (as an idle timeout would)."""
        for session in self.sessions:
            if session.transport is not None:
                session.transport.close()


@asynccontextmanager
async def smtp_server(
    *,
    tls_context: ssl.SSLContext | None = None,
    require_starttls: bool = False,
    auth: tuple[str, str] | None = None,
) -> AsyncIterator[FakeSmtpServer]:
    """Serve SMTP on 127.0.0.1:<ephemeral> in the running loop until the block ends."""
    handler = RecordingHandler()
    server_state = FakeSmtpServer(host="127.0.0.1", port=0, handler=handler)
    kwargs: dict[str, Any] = {
        "hostname": "smtp.test",
        "enable_SMTPUTF8": True,
        "tls_context": tls_context,
        "require_starttls": require_starttls,
        "timeout": 30,
    }
    if auth is not None:
        user, password = auth

        def check(mechanism: str, login: bytes, secret: bytes) -> bool:
            return login.decode() == user and secret.decode() == password

        kwargs.update(
            auth_required=True, auth_require_tls=tls_context is not None, auth_callback=check
        )

    def factory() -> SMTP:
        session = SMTP(handler, **kwargs)
        server_state.sessions.append(session)
        return session

    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, host="127.0.0.1", port=0)
    server_state.port = server.sockets[0].getsockname()[1]
    try:
        yield server_state
    finally:
        server_state.drop_connections()
        server.close()
        await server.wait_closed()


TEST_SECRET_KEY = "test-secret-key-0123456789abcdef"  # long enough for require_secret_key


def email_settings(
    server: FakeSmtpServer | None,
    *,
    base_url: str = "http://127.0.0.1:9",
    secret_key: str = TEST_SECRET_KEY,
    **sections: Mapping[str, Any],
) -> Settings:
    """Test settings with email on, pointing at `server` (plain SMTP) and signing with a key."""
    tables: dict[str, dict[str, Any]] = {
        "email": {
            "enabled": True,
            "smtp_host": "127.0.0.1",
            "smtp_port": server.port if server is not None else 9,
            "security": "none",
            "sender": "papers@lab.example.org",
            "list_id": "papers.lab.example.org",
        },
        "web": {"base_url": base_url},
    }
    for name, table in sections.items():
        tables[name] = {**tables.get(name, {}), **table}
    settings = settings_for_tests(**tables)
    return replace(settings, secrets=Secrets(secret_key=secret_key))


@dataclass
class EmailStack:
    """Everything of the email feature running for one test: SMTP, web server, service."""

    smtp: FakeSmtpServer
    settings: Settings
    store: PaperStore
    channel: EmailChannel
    service: EmailSubscriptions
    server: WebServer
    clock: Callable[[], datetime]
    backfills: list[str]

    @property
    def url(self) -> str:
        """The web server's base URL (also web.base_url, so email links point at it)."""
        return self.server.url


@asynccontextmanager
async def email_stack(
    store: PaperStore,
    *,
    clock: Callable[[], datetime] | None = None,
    form_limiter: RateLimiter | None = None,
    routes: Sequence[web.AbstractRouteDef] = (),
    **sections: Mapping[str, Any],
) -> AsyncIterator[EmailStack]:
    """SMTP server, EmailChannel, EmailSubscriptions and the web app on 127.0.0.1 ports."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # bound first so web.base_url can name the real port
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    backfills: list[str] = []
    async with smtp_server() as smtp:
        settings = email_settings(smtp, base_url=base_url, **sections)
        channel = EmailChannel(
            settings=settings, store=store, links=EmailLinks.from_settings(settings), clock=clock
        )
        service = EmailSubscriptions(
            store=store,
            settings=settings,
            sender=channel,
            request_backfill=backfills.append,
            clock=clock,
        )
        app = build_web_app(
            settings=settings,
            store=store,
            subscriptions=service,
            routes=routes,
            form_limiter=form_limiter,
        )
        async with WebServer(app=app, host="127.0.0.1", sock=sock) as server:
            yield EmailStack(
                smtp, settings, store, channel, service, server, clock or _utcnow, backfills
            )
        await channel.close()


def _utcnow() -> datetime:
    return datetime.now(UTC)
