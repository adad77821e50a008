"""One failure table for every delivery channel, each failure made at the wire (STYLE habit 5).

Rows are failure modes, columns the five channel kinds. Each cell runs the real channel and its
real client library (slack_sdk, discord.py's HTTP client and webhook adapter, aiosmtplib, Apprise)
against the fake service on 127.0.0.1 (tests/fakes), scripts the failure there, sends a small
batch for one or more cycles and checks every delivery's outcome: `send` never raises and returns
exactly one outcome per delivery. Timeouts are configured short and retry delays are zero.

| mode \\ kind          | slack | discord | discord_webhook | email              | apprise         |
|-----------------------|-------|---------|-----------------|--------------------|-----------------|
| connection refused    | R     | R       | R               | R                  | R               |
| timeout               | R     | R       | R               | R                  | R               |
| 429 once (SMTP 451)   | S     | S       | S               | R, next cycle S    | R, next cycle S |
| 500 (SMTP 451) always | R     | R       | R               | R x4, not disabled | R               |
| permanent             | P     | P       | P               | R, R, P            | P               |

S: SENT, R: RETRY, P: PERMANENT. `EXPECTED` below is this table; every cell's reasons and
request counts are in it too.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import discord.http
import pytest

from bot.apprise_channel import AppriseChannel
from bot.discord_channel import DiscordChannel, DiscordWebhookChannel, use_api_url
from bot.slack_channel import SlackChannel, build_web_client
from digest.channels import Channel, send_all
from digest.domain import Batch, Delivery, Outcome, OutcomeKind, Paper, Target
from digest.mail import OPTION_CONFIRMED, OPTION_FAILURES
from digest.mail.channel import EmailChannel
from digest.mail.links import EmailLinks
from digest.mail.smtp import SmtpPool
from storage.sql_store import SqlStore
from tests.fakes.discord_api import FakeDiscord, webhook_url
from tests.fakes.recording_http import Answer, RecordingHttpServer
from tests.fakes.slack_api import (
    BOT_TOKEN,
    FakeAnswer,
    FakeSlackApi,
    error,
    rate_limited,
    server_error,
)
from tests.fakes.smtp import FakeSmtpServer, email_settings, smtp_server

SENT, RETRY, PERMANENT = OutcomeKind.SENT, OutcomeKind.RETRY, OutcomeKind.PERMANENT

SLACK, DISCORD, WEBHOOK, EMAIL = "slack", "discord", "discord_webhook", "email"
APPRISE = "apprise"
KINDS = (SLACK, DISCORD, WEBHOOK, EMAIL, APPRISE)

REFUSED = "connection_refused"
TIMEOUT = "timeout"
RATE_LIMITED_ONCE = "rate_limited_once"
SERVER_ERROR = "server_error"
PERMANENT_ERROR = "permanent"
MODES = (REFUSED, TIMEOUT, RATE_LIMITED_ONCE, SERVER_ERROR, PERMANENT_ERROR)

RETRY_AFTER = 1  # seconds a 429 asks for: long enough to tell a wait from an instant retry
# Short client timeouts so a hang costs a second or two per cell; each fake hangs HANG_MARGIN
# longer than the timeout, so the client always gives up first.
SLACK_TIMEOUT = 1  # seconds; slack_sdk takes whole seconds
DISCORD_TIMEOUT = RETRY_AFTER + 0.5  # the channel's timeout also bounds discord.py's 429 waits
SMTP_TIMEOUT = 0.3
APPRISE_TIMEOUT = 0.5  # the URL's own `rto`/`cto` (Apprise's read and connect timeouts)
HANG_MARGIN = 0.5

SLACK_CHANNEL = "C0FAILTEST"
DISCORD_CHANNEL = "123456789012345678"
DISCORD_ROUTE = f"POST /channels/{DISCORD_CHANNEL}/messages"
HOOK_ID = "223456789012345678"
HOOK_URL = webhook_url(HOOK_ID)
HOOK_ROUTE = f"POST /webhooks/{HOOK_ID}/{HOOK_URL.rsplit('/', 1)[1]}"
ADDRESS = "reader@lab.example.org"
APPRISE_PATH = "/hook/s3cret-token"

NOW = datetime(2025, 2, 5, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Cell:
    """What one (failure mode, channel kind) cell expects.

    `cycles`: the outcome kind of every delivery on each consecutive `send` of the same batch
    (answers scripted at the fake carry over between them). `reason`: text every non-SENT
    outcome's error contains. `attempts`: requests (RCPTs for email) the fake saw in total.
    `delivered`: messages the target finally shows; None where a timed-out request may still
    land late.
    `min_seconds`: the sends took at least this long (a Retry-After was waited for).
    `refusals`: consecutive 5xx refusals the channel has recorded for the target afterwards
    (only the mailer keeps such a count; the chat channels always report 0).
    """

    cycles: tuple[OutcomeKind, ...]
    reason: str | None = None
    attempts: int | None = None
    delivered: int | None = 0
    min_seconds: float = 0.0
    refusals: int = 0


EXPECTED: dict[str, dict[str, Cell]] = {
    REFUSED: {
        SLACK: Cell((RETRY,), "ClientConnectorError"),
        DISCORD: Cell((RETRY,), "cannot reach Discord"),
        WEBHOOK: Cell((RETRY,), "cannot reach Discord"),
        EMAIL: Cell((RETRY,), "SMTPConnectError"),
        APPRISE: Cell((RETRY,), "cannot reach the service"),
    },
    TIMEOUT: {
        SLACK: Cell((RETRY,), "did not answer in time", delivered=None),
        DISCORD: Cell((RETRY,), "did not answer in time", delivered=None),
        WEBHOOK: Cell((RETRY,), "did not answer in time", delivered=None),
        EMAIL: Cell((RETRY,), "Timed out", delivered=None),
        APPRISE: Cell((RETRY,), "did not answer in time", delivered=None),
    },
    RATE_LIMITED_ONCE: {
        # 429 with Retry-After: 1, then success: the client library waits the second and retries
        # within the same send, and the target shows the post once.
        SLACK: Cell((SENT,), attempts=2, delivered=1, min_seconds=RETRY_AFTER),
        DISCORD: Cell((SENT,), attempts=2, delivered=1, min_seconds=RETRY_AFTER),
        WEBHOOK: Cell((SENT,), attempts=2, delivered=1, min_seconds=RETRY_AFTER),
        # SMTP has no Retry-After: the analogue is a greylisting "451" once. The mailer does not
        # retry within a cycle (documented: 4xx is RETRY, the outbox backs off); the next
        # cycle's send goes through, and the 451 was not counted as a refusal.
        EMAIL: Cell((RETRY, SENT), "451", attempts=2, delivered=1),
        # Apprise does not pass a 429's Retry-After on (its plugins only log the status), and
        # its own retries are off: RETRY, and the outbox's backoff is the wait.
        APPRISE: Cell((RETRY, SENT), "HTTP 429 Too Many Requests", attempts=2, delivered=1),
    },
    SERVER_ERROR: {
        SLACK: Cell((RETRY,), "http_500", attempts=1),
        # discord.py itself retries a 500 after sleeping 1 s, then 3 s, ... (the bot's HTTP
        # client and the webhook adapter alike), so here the channel's own timeout ends the send
        # after the second 500: RETRY, with the timeout as the reason. (With the production
        # timeout of 30 s, discord.py gives up first and the reason names the 500.)
        DISCORD: Cell((RETRY,), "did not answer in time", attempts=2),
        WEBHOOK: Cell((RETRY,), "did not answer in time", attempts=2),
        # A persistent 4xx is never counted towards the 5xx limit: still RETRY past the third.
        EMAIL: Cell((RETRY, RETRY, RETRY, RETRY), "451", attempts=4),
        APPRISE: Cell((RETRY,), "HTTP 500 Internal Server Error", attempts=1),
    },
    PERMANENT_ERROR: {
        SLACK: Cell((PERMANENT,), "channel_not_found", attempts=1),
        DISCORD: Cell((PERMANENT,), "Unknown Channel", attempts=1),
        WEBHOOK: Cell((PERMANENT,), "Unknown Webhook", attempts=1),
        # Issue 5 and digest/mail/channel.py: a 5xx for the recipient is counted, and only the third
        # refusal in a row (FAILURE_LIMIT) makes the deliveries PERMANENT.
        EMAIL: Cell((RETRY, RETRY, PERMANENT), "550", attempts=3, refusals=3),
        APPRISE: Cell((PERMANENT,), "HTTP 404 Not Found", attempts=1),
    },
}


def _paper(n: int) -> Paper:
    """A small synthetic paper numbered `n`."""
    when = NOW - timedelta(hours=n)
    return Paper(
        arxiv_id=f"2502.{n:05d}",
        version=1,
        title=f"Failure table paper {n}",
        authors=("Ada Lovelace", "Alan Turing"),
        abstract=f"Abstract of paper {n}.",
        published=when,
        updated=when,
        primary_category="cs.LG",
        categories=("cs.LG",),
    )


def _deliveries() -> tuple[Delivery, ...]:
    """Three deliveries for two subscriptions of one target, one paper under both keywords."""
    return (
        Delivery(1, "diffusion", _paper(1)),
        Delivery(1, "diffusion", _paper(2)),
        Delivery(2, "graphs", _paper(2)),
    )


def _closed_port() -> int:
    """A 127.0.0.1 port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- one rig per channel kind: the channel, its fake, and the failures scripted there ----------


class Rig(Protocol):
    """A channel wired to its fake service, with each failure mode scriptable at the wire."""

    channel: Channel
    target: Target

    def batch(self) -> Batch:
        """This cycle's batch for the target (with the target options the outbox would add)."""
        ...

    def hang(self) -> None:
        """Make the service answer only after the channel's timeout."""
        ...

    def rate_limit_once(self) -> None:
        """429 with Retry-After 1 once (SMTP: a temporary 451 once), then normal answers."""
        ...

    def server_error(self) -> None:
        """Fail every request with a server error (SMTP: 451 for the recipient)."""
        ...

    def refuse_permanently(self) -> None:
        """The target is gone (channel_not_found, Unknown Channel/Webhook, SMTP 550)."""
        ...

    def attempts(self) -> int:
        """Requests for this target the service received (SMTP: RCPTs of the address)."""
        ...

    def delivered(self) -> int:
        """Messages the target now shows."""
        ...

    def refusals(self) -> int:
        """Consecutive permanent refusals the channel recorded for the target."""
        ...


class SlackRig:
    """SlackChannel with slack_sdk's AsyncWebClient at FakeSlackApi."""

    def __init__(self, fake: FakeSlackApi | None, api_url: str) -> None:
        self.fake = fake
        self.target = Target(SLACK, SLACK_CHANNEL)
        client = build_web_client(
            token=BOT_TOKEN, api_url=api_url, connection_retry_delay=0.0, timeout=SLACK_TIMEOUT
        )
        self.channel: Channel = SlackChannel(client=client)

    def _script(self, *answers: FakeAnswer) -> None:
        assert self.fake is not None
        self.fake.script("chat.postMessage", *answers)

    def batch(self) -> Batch:
        """This cycle's batch."""
        return Batch(self.target, _deliveries())

    def hang(self) -> None:
        """A success that comes too late."""
        self._script(FakeAnswer(body={"ok": True}, delay=SLACK_TIMEOUT + HANG_MARGIN))

    def rate_limit_once(self) -> None:
        """HTTP 429 with Retry-After."""
        self._script(rate_limited(retry_after=RETRY_AFTER))

    def server_error(self) -> None:
        """HTTP 500 with an HTML body, as a proxy in front of Slack sends it."""
        self._script(*[server_error(500)] * 5)

    def refuse_permanently(self) -> None:
        """ok=false, error=channel_not_found."""
        self._script(error("channel_not_found"))

    def attempts(self) -> int:
        """chat.postMessage calls received."""
        return len(self.fake.calls_to("chat.postMessage")) if self.fake else 0

    def delivered(self) -> int:
        """Posts Slack accepted."""
        return len(self.fake.posted()) if self.fake else 0

    def refusals(self) -> int:
        """Slack keeps no count: a permanent error is final at once."""
        return 0


class DiscordRig:
    """DiscordChannel (discord.py's HTTPClient) or DiscordWebhookChannel at FakeDiscord."""

    def __init__(self, fake: FakeDiscord | None, channel: Channel, *, webhook: bool) -> None:
        self.fake = fake
        self.channel = channel
        self.webhook = webhook
        self.target = Target(WEBHOOK, HOOK_URL) if webhook else Target(DISCORD, DISCORD_CHANNEL)
        self.route = HOOK_ROUTE if webhook else DISCORD_ROUTE

    def _fake(self) -> FakeDiscord:
        assert self.fake is not None
        return self.fake

    def batch(self) -> Batch:
        """This cycle's batch."""
        return Batch(self.target, _deliveries())

    def hang(self) -> None:
        """A 200 that comes too late."""
        self._fake().script(self.route, FakeDiscord.hang(DISCORD_TIMEOUT + HANG_MARGIN))

    def rate_limit_once(self) -> None:
        """HTTP 429 with the headers and JSON body (retry_after) discord.py reads."""
        self._fake().script(self.route, FakeDiscord.rate_limited(retry_after=RETRY_AFTER))

    def server_error(self) -> None:
        """HTTP 500 with a Discord JSON error body."""
        self._fake().script(self.route, *[FakeDiscord.error(500, 0, "Internal Server Error")] * 5)

    def refuse_permanently(self) -> None:
        """404 Unknown Channel (the channel was deleted) / Unknown Webhook (webhook deleted)."""
        if self.webhook:
            self._fake().deleted_webhooks.add(HOOK_ID)
        else:
            self._fake().unknown_channels.add(DISCORD_CHANNEL)

    def attempts(self) -> int:
        """Posts to the channel's or webhook's message route received."""
        return len(self.fake.calls_to(self.route)) if self.fake else 0

    def delivered(self) -> int:
        """Messages created in the channel / through the webhook."""
        if self.fake is None:
            return 0
        if self.webhook:
            return len(self.fake.webhook_messages[HOOK_ID])
        return len(self.fake.channel_messages[DISCORD_CHANNEL])

    def refusals(self) -> int:
        """Discord keeps no count: a permanent error is final at once."""
        return 0


class EmailRig:
    """EmailChannel (aiosmtplib, pooled) at a real aiosmtpd server, on a real SQLite store."""

    def __init__(self, smtp: FakeSmtpServer | None, port: int, store: SqlStore) -> None:
        self.smtp = smtp
        self.store = store
        self.target = Target(EMAIL, ADDRESS)
        store.set_target_option(self.target, OPTION_CONFIRMED, NOW.isoformat())
        settings = email_settings(smtp, email={"smtp_port": port})
        pool = SmtpPool(
            hostname=settings.email.smtp_host,
            port=port,
            security=settings.email.security,
            timeout=SMTP_TIMEOUT,
        )
        self.email = EmailChannel(
            settings=settings,
            store=store,
            links=EmailLinks.from_settings(settings),
            pool=pool,
            clock=lambda: NOW,
        )
        self.channel: Channel = self.email

    def _smtp(self) -> FakeSmtpServer:
        assert self.smtp is not None
        return self.smtp

    def batch(self) -> Batch:
        """This cycle's batch, with the target options as `pending_batches` reads them."""
        options = {
            name: value
            for name in (OPTION_CONFIRMED, OPTION_FAILURES)
            if (value := self.store.get_target_option(self.target, name)) is not None
        }
        return Batch(self.target, _deliveries(), options=options)

    def hang(self) -> None:
        """The relay stalls before answering DATA."""
        self._smtp().handler.delay = SMTP_TIMEOUT + HANG_MARGIN

    def rate_limit_once(self) -> None:
        """451 for the recipient once (greylisting), then accepted."""
        self._smtp().handler.refuse_next[ADDRESS] = ["451 4.7.1 greylisted, try again later"]

    def server_error(self) -> None:
        """451 for the recipient on every attempt (the relay's local problem persists)."""
        self._smtp().handler.refuse[ADDRESS] = "451 4.3.0 local error in processing"

    def refuse_permanently(self) -> None:
        """550 for the recipient: the mailbox does not exist."""
        self._smtp().handler.refuse[ADDRESS] = "550 5.1.1 mailbox unavailable"

    def attempts(self) -> int:
        """RCPT commands naming the address."""
        return self.smtp.handler.rcpts.count(ADDRESS) if self.smtp else 0

    def delivered(self) -> int:
        """Messages the relay accepted for the address."""
        return len(self.smtp.handler.to(ADDRESS)) if self.smtp else 0

    def refusals(self) -> int:
        """The `email_failures` target option the mailer keeps in the store."""
        return int(self.store.get_target_option(self.target, OPTION_FAILURES) or 0)


class AppriseRig:
    """AppriseChannel (Apprise's json:// service, over requests) at a recording HTTP server."""

    def __init__(self, server: RecordingHttpServer | None, port: int) -> None:
        self.server = server
        timeouts = f"rto={APPRISE_TIMEOUT}&cto={APPRISE_TIMEOUT}"
        self.target = Target(APPRISE, f"json://127.0.0.1:{port}{APPRISE_PATH}?{timeouts}")
        self.channel: Channel = AppriseChannel()

    def _server(self) -> RecordingHttpServer:
        assert self.server is not None
        return self.server

    def batch(self) -> Batch:
        """This cycle's batch."""
        return Batch(self.target, _deliveries())

    def hang(self) -> None:
        """A 200 that comes after the URL's read timeout."""
        self._server().script(Answer(delay=APPRISE_TIMEOUT + HANG_MARGIN))

    def rate_limit_once(self) -> None:
        """HTTP 429 with Retry-After, once."""
        self._server().script(Answer(status=429, headers={"Retry-After": str(RETRY_AFTER)}))

    def server_error(self) -> None:
        """HTTP 500 on every request."""
        self._server().refuse(APPRISE_PATH, 500)

    def refuse_permanently(self) -> None:
        """HTTP 404: the webhook behind the URL was deleted."""
        self._server().refuse(APPRISE_PATH, 404)

    def attempts(self) -> int:
        """Requests to the URL's path."""
        return (
            len([r for r in self.server.received if r.path == APPRISE_PATH]) if self.server else 0
        )

    def delivered(self) -> int:
        """Requests answered with a 2xx."""
        return len(self.server.accepted) if self.server else 0

    def refusals(self) -> int:
        """Apprise keeps no count: a permanent error is final at once."""
        return 0


@asynccontextmanager
async def rig_for(kind: str, store: SqlStore, *, refused: bool = False) -> AsyncIterator[Rig]:
    """The rig of `kind`, its fake running; with `refused`, pointed at a closed port instead."""
    async with AsyncExitStack() as stack:
        if kind == SLACK:
            slack = None if refused else await stack.enter_async_context(FakeSlackApi())
            api_url = f"http://127.0.0.1:{_closed_port()}/api/" if slack is None else slack.api_url
            yield SlackRig(slack, api_url)
        elif kind in (DISCORD, WEBHOOK):
            fake = None if refused else await stack.enter_async_context(FakeDiscord())
            use_api_url(
                f"http://127.0.0.1:{_closed_port()}/api/v10" if fake is None else fake.api_base
            )
            channel: Channel
            if kind == WEBHOOK:
                channel = await stack.enter_async_context(
                    DiscordWebhookChannel(timeout=DISCORD_TIMEOUT)
                )
            else:
                channel = await stack.enter_async_context(
                    DiscordChannel(token="bot-token", timeout=DISCORD_TIMEOUT)
                )
            yield DiscordRig(fake, channel, webhook=kind == WEBHOOK)
        elif kind == APPRISE:
            server = None if refused else await stack.enter_async_context(RecordingHttpServer())
            yield AppriseRig(server, _closed_port() if server is None else server.port)
        else:
            smtp = None if refused else await stack.enter_async_context(smtp_server())
            email = EmailRig(smtp, _closed_port() if smtp is None else smtp.port, store)
            stack.push_async_callback(email.email.close)
            yield email


SCRIPTS: dict[str, Callable[[Rig], None]] = {
    TIMEOUT: lambda rig: rig.hang(),
    RATE_LIMITED_ONCE: lambda rig: rig.rate_limit_once(),
    SERVER_ERROR: lambda rig: rig.server_error(),
    PERMANENT_ERROR: lambda rig: rig.refuse_permanently(),
}


@pytest.fixture(autouse=True)
def restore_route_base() -> Iterator[None]:
    """discord.py's Route.BASE is process-wide: put it back after each test."""
    before = discord.http.Route.BASE
    yield
    discord.http.Route.BASE = before


def _check_outcomes(
    batch: Batch, outcomes: Sequence[Outcome], kind: OutcomeKind, reason: str | None
) -> None:
    """Exactly one outcome per delivery, all of `kind`, errors naming `reason` unless SENT."""
    got = list(outcomes)
    assert sorted((o.subscription_id, o.arxiv_id) for o in got) == sorted(
        (d.subscription_id, d.paper.arxiv_id) for d in batch.deliveries
    )
    assert [o.kind for o in got] == [kind] * len(batch.deliveries), [o.error for o in got]
    for outcome in got:
        if kind is SENT:
            assert outcome.error is None
        else:
            assert outcome.error
            if reason is not None:
                assert reason in outcome.error


def test_the_table_covers_every_mode_and_kind() -> None:
    """Every failure mode has an expectation for every channel kind, and nothing else."""
    assert list(EXPECTED) == list(MODES)
    for mode in MODES:
        assert sorted(EXPECTED[mode]) == sorted(KINDS), mode


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
async def test_failure_table(mode: str, kind: str, sqlite_store: SqlStore) -> None:
    """A failure made at the wire gives each delivery the table's outcome; send never raises."""
    cell = EXPECTED[mode][kind]
    async with rig_for(kind, sqlite_store, refused=mode == REFUSED) as rig:
        if mode in SCRIPTS:
            SCRIPTS[mode](rig)
        started = time.monotonic()
        for cycle, expected in enumerate(cell.cycles, start=1):
            batch = rig.batch()
            outcomes = await send_all(rig.channel, batch)
            try:
                _check_outcomes(batch, outcomes, expected, cell.reason)
            except AssertionError as exc:
                raise AssertionError(f"cycle {cycle}/{len(cell.cycles)}: {exc}") from exc
        assert time.monotonic() - started >= cell.min_seconds
        if cell.attempts is not None:
            assert rig.attempts() == cell.attempts
        if cell.delivered is not None:
            assert rig.delivered() == cell.delivered
        assert rig.refusals() == cell.refusals


@pytest.mark.parametrize("kind", KINDS)
async def test_notify_returns_false_when_the_service_is_unreachable(
    kind: str, sqlite_store: SqlStore
) -> None:
    """An operator alert to an unreachable service is False, not an exception."""
    async with rig_for(kind, sqlite_store, refused=True) as rig:
        assert (
            await rig.channel.notify(rig.target, "arXiv harvest failed 3 cycles in a row") is False
        )


@pytest.mark.parametrize("kind", KINDS)
async def test_notify_returns_true_when_the_service_answers(
    kind: str, sqlite_store: SqlStore
) -> None:
    """The same alert through a working fake is True and arrives, so the False above is earned."""
    async with rig_for(kind, sqlite_store) as rig:
        assert (
            await rig.channel.notify(rig.target, "arXiv harvest failed 3 cycles in a row") is True
        )
        assert rig.delivered() == 1
