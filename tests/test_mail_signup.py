"""Sign-up logic: addresses, double opt-in, manage and unsubscribe, the chat command, the CLI.

The service runs against a real SQLite store and mails through the real EmailChannel to an
aiosmtpd server in the test's loop; the clock is injected.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from bot.commands import CommandService, Invocation, email_command
from digest.domain import Paper, Target
from digest.errors import ConfigError, QueryError
from digest.mail import OPTION_CONFIRMED, UNCONFIRMED
from digest.mail.channel import EmailChannel
from digest.mail.links import EmailLinks, SubscriptionError, TokenError
from digest.mail.signup import (
    EmailSubscriptions,
    RateLimiter,
    format_subscribers,
    normalise_address,
    run_admin,
)
from storage.sql_store import SqlStore
from tests.fakes.smtp import FakeSmtpServer, email_settings, smtp_server

NOW = datetime(2025, 1, 11, 2, 0, tzinfo=UTC)
ALICE = "alice@lab.example.org"
KEY = "k" * 32


# -- addresses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("alice@lab.example.org", "alice@lab.example.org"),
        ("  Alice.Smith@LAB.Example.ORG ", "alice.smith@lab.example.org"),
        ("zoë@universität.example", "zoë@universität.example"),
    ],
)
def test_addresses_are_normalised(raw: str, normalised: str) -> None:
    """Trimmed, lower-cased, internationalised domains kept in Unicode form."""
    assert normalise_address(raw) == normalised


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "alice",
        "alice@",
        "@lab.org",
        "a b@lab.org",
        "alice@localhost",
        "alice@lab..org",
        "x" * 250 + "@lab.org",
        "alice@lab.org\nBcc: eve@evil.org",
    ],
)
def test_bad_addresses_are_refused_with_a_reason(raw: str) -> None:
    """Anything that is not one deliverable-looking address is refused, header injection too."""
    with pytest.raises(SubscriptionError):
        normalise_address(raw)


def test_rate_limiter_is_a_sliding_window_per_key() -> None:
    """`limit` hits per window per key; the wait until the oldest leaves the window."""
    now = [0.0]
    limiter = RateLimiter(limit=2, window=60, clock=lambda: now[0])
    assert limiter.hit("a") == 0
    assert limiter.hit("a") == 0
    assert limiter.hit("a") == pytest.approx(60)
    assert limiter.hit("b") == 0  # another client is not affected
    now[0] = 30
    assert limiter.hit("a") == pytest.approx(30)
    now[0] = 60.5
    assert limiter.hit("a") == 0


# -- the service -------------------------------------------------------------------------------


@dataclass
class Clock:
    """A settable clock."""

    moment: datetime = NOW

    def __call__(self) -> datetime:
        return self.moment


@dataclass
class Env:
    """Service, channel, store, SMTP server, clock and backfill requests of one test."""

    service: EmailSubscriptions
    channel: EmailChannel
    store: SqlStore
    smtp: FakeSmtpServer
    clock: Clock
    backfills: list[str] = field(default_factory=list)

    def confirm_token(self, address: str = ALICE, index: int = -1) -> str:
        """The token of the confirmation link in the index-th mail to `address`."""
        text = self.smtp.handler.to(address)[index].message.get_body(("plain",))
        assert text is not None
        url = re.search(r"https?://\S+/confirm\?token=\S+", text.get_content())
        assert url is not None
        return parse_qs(urlsplit(url.group(0)).query)["token"][0]


@pytest.fixture
async def env(sqlite_store: SqlStore) -> AsyncIterator[Env]:
    """The sign-up service wired to a real channel and SMTP server; two tracked keywords."""
    sqlite_store.add_keyword("diffusion models", from_config=True)
    sqlite_store.add_keyword("anomaly detection", from_config=True)
    for query in ("diffusion models", "anomaly detection"):  # as after their first cycle
        sqlite_store.mark_backfilled(query, NOW - timedelta(days=1))
    clock = Clock()
    async with smtp_server() as smtp:
        settings = email_settings(smtp, base_url="https://papers.lab.example.org")
        channel = EmailChannel(
            settings=settings,
            store=sqlite_store,
            links=EmailLinks.from_settings(settings),
            clock=clock,
        )
        backfills: list[str] = []
        service = EmailSubscriptions(
            store=sqlite_store,
            settings=settings,
            sender=channel,
            request_backfill=backfills.append,
            clock=clock,
        )
        yield Env(service, channel, sqlite_store, smtp, clock, backfills)
        await channel.close()


async def test_request_stores_unconfirmed_and_mails_only_the_confirmation(env: Env) -> None:
    """Sign-up: disabled 'unconfirmed' subscriptions, one confirmation email, no digest."""
    result = await env.service.request(" Alice@LAB.example.org ", ["Diffusion Models"])
    assert result.address == ALICE
    assert result.pending == ("diffusion models",)  # the tracked spelling
    assert result.mailed
    [sub] = env.store.list_subscriptions(Target("email", ALICE))
    assert (sub.active, sub.disabled_reason) == (False, UNCONFIRMED)
    [mail] = env.smtp.handler.to(ALICE)
    msg = mail.message
    assert msg["Subject"] == "Confirm your arXiv digest subscription"
    assert msg["List-Unsubscribe"] is None  # not a list message yet
    assert "diffusion models" in str(msg.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    # A harvest now owes the unconfirmed address nothing.
    paper = Paper(
        "2501.00001", 1, "Diffusion models", ("A",), "Diffusion models.", NOW, NOW, "cs.LG"
    )
    env.store.commit_harvest(
        papers=[paper],
        matches={"diffusion models": ["2501.00001"]},
        deliverable=["2501.00001"],
        now=NOW + timedelta(minutes=1),
    )
    assert env.store.pending_batches(now=NOW + timedelta(days=1)) == []


async def test_a_normal_sign_up_logs_at_info_only(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """Asking for a digest and confirming it are everyday events: nothing at WARNING or above."""
    caplog.set_level(logging.DEBUG)
    await env.service.request(ALICE, ["diffusion models", "anomaly detection"])
    await env.service.confirm(env.confirm_token())
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any(r.getMessage().startswith("email.confirm_sent") for r in caplog.records)


async def test_at_most_one_confirmation_per_address_per_hour(env: Env) -> None:
    """Repeated requests within the hour add keywords but mail nothing; after it, one more."""
    await env.service.request(ALICE, ["diffusion models"])
    env.clock.moment = NOW + timedelta(minutes=59)
    again = await env.service.request(ALICE, ["anomaly detection"])
    assert (again.mailed, again.throttled) == (False, True)
    assert set(again.pending) == {"diffusion models", "anomaly detection"}
    assert len(env.smtp.handler.to(ALICE)) == 1
    await env.service.request("bob@lab.example.org", ["diffusion models"])  # others unaffected
    assert len(env.smtp.handler.to("bob@lab.example.org")) == 1
    env.clock.moment = NOW + timedelta(minutes=61)
    later = await env.service.request(ALICE, ["anomaly detection"])
    assert later.mailed
    assert len(env.smtp.handler.to(ALICE)) == 2


async def test_confirm_activates_once_and_requests_backfill(env: Env) -> None:
    """The link activates pending keywords and marks the address confirmed; re-clicks do nothing."""
    env.service.settings = email_settings(
        env.smtp, email={"allow_custom_queries": True}, base_url="https://p.lab.example.org"
    )
    await env.service.request(ALICE, ["diffusion models", 'ti:"graph neural"'])
    view, activated = await env.service.confirm(env.confirm_token())
    assert set(activated) == {"diffusion models", 'ti:"graph neural"'}
    assert set(view.active) == {"diffusion models", 'ti:"graph neural"'}
    assert view.pending == ()
    assert env.store.get_target_option(Target("email", ALICE), OPTION_CONFIRMED)
    assert env.backfills == ['ti:"graph neural"']  # the tracked keywords were backfilled
    view2, activated2 = await env.service.confirm(env.confirm_token())
    assert activated2 == ()
    assert set(view2.active) == set(view.active)


async def test_confirm_link_expires_and_cannot_be_forged(env: Env) -> None:
    """An old or altered confirmation link activates nothing."""
    await env.service.request(ALICE, ["diffusion models"])
    token = env.confirm_token()
    with pytest.raises(TokenError):
        await env.service.confirm(token[:-2] + ("AA" if not token.endswith("AA") else "BB"))
    env.clock.moment = NOW + timedelta(hours=49)
    with pytest.raises(TokenError, match="expired"):
        await env.service.confirm(token)
    [sub] = env.store.list_subscriptions(Target("email", ALICE))
    assert not sub.active


async def test_only_tracked_keywords_unless_custom_queries_are_allowed(env: Env) -> None:
    """The web form may only tick tracked keywords; chat and CLI pass custom_allowed=True."""
    with pytest.raises(SubscriptionError, match="not one of the tracked keywords"):
        await env.service.request(ALICE, ["quantum gravity"])
    with pytest.raises(QueryError):
        await env.service.request(ALICE, ['ti:"unclosed'], custom_allowed=True)
    with pytest.raises(SubscriptionError, match="at least one"):
        await env.service.request(ALICE, ["  "])
    result = await env.service.request(ALICE, ["quantum gravity"], custom_allowed=True)
    assert result.pending == ("quantum gravity",)
    assert env.smtp.handler.to(ALICE)  # only now was anything mailed


async def test_a_tracked_like_keyword_can_be_chosen(env: Env) -> None:
    """A like: keyword a chat channel follows is a tracked keyword like any other (it is no
    query for the parser); an untracked one is refused by the query parser."""
    like = "like:2501.00001,2501.00002,2501.00003"
    env.store.add_keyword(like)
    result = await env.service.request(ALICE, [like])
    assert result.pending == (like,)
    with pytest.raises(QueryError):
        await env.service.request("bob@lab.example.org", ["like:2501.00003,2501.00002,2501.00001"])


async def test_subscription_limit_per_address(env: Env) -> None:
    """limits.subscriptions_per_target caps an address's keywords."""
    env.service.settings = email_settings(env.smtp, limits={"subscriptions_per_target": 2})
    with pytest.raises(SubscriptionError, match="at most 2"):
        await env.service.request(ALICE, ["a", "b", "c"], custom_allowed=True)
    assert env.store.list_subscriptions(Target("email", ALICE)) == []


async def test_relay_failure_releases_the_hourly_slot(env: Env) -> None:
    """A confirmation the relay refused can be asked for again at once."""
    env.smtp.handler.refuse[ALICE] = "451 4.7.1 greylisted"
    with pytest.raises(SubscriptionError, match="could not be sent"):
        await env.service.request(ALICE, ["diffusion models"])
    del env.smtp.handler.refuse[ALICE]
    assert (await env.service.request(ALICE, ["diffusion models"])).mailed


async def test_manage_update_and_unsubscribe(env: Env) -> None:
    """The manage token changes keywords at once; none ticked or unsubscribe removes all."""
    await env.service.request(ALICE, ["diffusion models"])
    await env.service.confirm(env.confirm_token())
    manage = env.service.manage_token(ALICE)
    view = await env.service.update(manage, ["anomaly detection"])
    assert view.active == ("anomaly detection",)
    with pytest.raises(SubscriptionError):
        await env.service.update(manage, ["not tracked"])
    with pytest.raises(TokenError):
        await env.service.update(env.service.unsubscribe_token(ALICE), ["diffusion models"])
    address = await env.service.unsubscribe(env.service.unsubscribe_token(ALICE))
    assert address == ALICE
    assert env.store.list_subscriptions(Target("email", ALICE)) == []
    assert env.store.get_target_option(Target("email", ALICE), OPTION_CONFIRMED) is None
    assert await env.service.unsubscribe(env.service.unsubscribe_token(ALICE)) == ALICE  # again


async def test_admin_list_and_remove(env: Env) -> None:
    """`daily-papers email list|remove`: states shown; one keyword or the whole address removed."""
    await env.service.request(ALICE, ["diffusion models", "anomaly detection"])
    await env.service.confirm(env.confirm_token())
    await env.service.request("bob@lab.example.org", ["diffusion models"])
    lines = format_subscribers(await env.service.list_subscribers())
    assert lines == [
        ALICE,
        "  diffusion models",
        "  anomaly detection",
        "bob@lab.example.org",
        "  diffusion models (waiting for confirmation)",
    ]
    assert await env.service.remove("ALICE@lab.example.org", "Anomaly Detection") == 1
    assert await env.service.remove(ALICE, "nothing") == 0
    assert await env.service.remove("bob@lab.example.org") == 1
    assert format_subscribers(await env.service.list_subscribers()) == [
        ALICE,
        "  diffusion models",
    ]
    assert format_subscribers([]) == ["No email subscribers."]


# -- the chat command and the admin CLI --------------------------------------------------------


async def test_chat_email_command_mails_a_confirmation(env: Env) -> None:
    """`/papers email <address> [query]`: private reply, confirmation mailed, nothing active."""
    chat = CommandService(
        store=env.store,
        settings=env.service.settings,
        request_backfill=env.backfills.append,
        extra_commands=(email_command(env.service),),
    )
    channel = Target("slack", "C0123")
    env.store.add_subscription(channel, "anomaly detection", now=NOW)

    def said(text: str) -> Invocation:
        return Invocation(target=channel, user_id="U1", may_manage=False, text=text)

    reply = await chat.handle(said("email Alice@lab.example.org ti:transformer"))
    assert reply.ok
    assert not reply.public  # an address is nobody else's business
    assert "alice@lab.example.org" in reply.text
    assert "`ti:transformer`" in reply.text
    assert (await env.service.view(ALICE)).pending == ("ti:transformer",)
    assert len(env.smtp.handler.to(ALICE)) == 1

    reply = await chat.handle(said("email bob@lab.example.org"))  # this channel's keywords
    assert (await env.service.view("bob@lab.example.org")).pending == ("anomaly detection",)

    refused = await chat.handle(said("email"))
    assert not refused.ok
    assert "Usage: `/papers email <address> [query]`" in refused.text
    bad = await chat.handle(said("email not-an-address diffusion"))
    assert not bad.ok
    assert "not a usable email address" in bad.text
    empty = Invocation(
        target=Target("slack", "C9"), user_id="U1", may_manage=False, text="email a@lab.example.org"
    )
    assert "follows nothing yet" in (await chat.handle(empty)).text
    assert "email <address> [query]" in chat.help_text()


async def test_admin_cli_functions(env: Env) -> None:
    """run_admin: subscribe mails a confirmation, list shows states, remove drops."""
    settings = env.service.settings
    lines = await run_admin(settings, env.store, "subscribe", ALICE, ["diffusion models"])
    assert (
        lines[0] == f"A confirmation link was mailed to {ALICE}; digests start once it is clicked."
    )
    assert lines[1:] == ["  waiting: diffusion models"]
    lines = await run_admin(settings, env.store, "subscribe", ALICE, ["anomaly detection"])
    assert lines[0].startswith("A confirmation link was already mailed within the hour")
    assert await run_admin(settings, env.store, "list") == [
        ALICE,
        "  diffusion models (waiting for confirmation)",
        "  anomaly detection (waiting for confirmation)",
    ]
    assert await run_admin(settings, env.store, "remove", ALICE) == [
        f"Removed 2 subscriptions of {ALICE}."
    ]
    with pytest.raises(SubscriptionError, match="needs an email address"):
        await run_admin(settings, env.store, "remove")
    with pytest.raises(ConfigError, match=r"email\.enabled"):
        await run_admin(
            email_settings(None, email={"enabled": False}), env.store, "subscribe", ALICE, ["x"]
        )
