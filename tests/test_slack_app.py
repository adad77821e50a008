"""The /papers slash command in HTTP mode: real signed requests to a real aiohttp server."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from slack_sdk.signature import SignatureVerifier

from bot.slack_app import EVENTS_PATH, SlackCommandApp, command_text, start_slack
from bot.slack_channel import SlackChannel, build_web_client
from digest.cli import main
from digest.config import Secrets, Settings, SlackSettings, settings_for_tests
from digest.domain import Target
from digest.errors import ConfigError
from digest.platforms import PlatformStatus, read_platform_status
from storage.sql_store import SqlStore
from tests.fakes.slack_api import APP_TOKEN, BOT_TOKEN, FakeAnswer, FakeSlackApi, error, ok
from tests.local import free_port, wait_until

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CHANNEL_ID = "C0123TEST"
TARGET = Target("slack", CHANNEL_ID)


def slack_settings(api_url: str, limits: dict[str, Any] | None = None, **slack: Any) -> Settings:
    """Test settings with the Slack secrets of HTTP mode and the given [slack] keys."""
    settings = settings_for_tests(slack={"api_url": api_url, **slack}, limits=limits or {})
    return dataclasses.replace(
        settings,
        secrets=Secrets(slack_bot_token=BOT_TOKEN, slack_signing_secret=SIGNING_SECRET),
    )


def signed_command(
    text: str,
    *,
    response_url: str,
    user_id: str = "U0MEMBER",
    channel_id: str = CHANNEL_ID,
    command: str = "/papers",
    secret: str = SIGNING_SECRET,
    timestamp: int | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A slash-command POST body and headers signed the way Slack signs them."""
    body = urlencode(
        {
            "token": "legacy-verification-token",
            "team_id": "T0000TEST",
            "team_domain": "fake",
            "channel_id": channel_id,
            "channel_name": "papers",
            "user_id": user_id,
            "user_name": user_id.lower(),
            "command": command,
            "text": text,
            "api_app_id": "A0000TEST",
            "response_url": response_url,
            "trigger_id": "1.2.3",
        }
    )
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature,
    }
    return body.encode(), headers


@dataclasses.dataclass
class Running:
    """A Slack app mounted on a live aiohttp server, and what it talks to."""

    url: str
    slack: FakeSlackApi
    app: SlackCommandApp
    store: SqlStore
    backfills: list[str]
    session: aiohttp.ClientSession

    async def post(self, text: str, **kwargs: Any) -> aiohttp.ClientResponse:
        """POST a signed slash command; returns the (read) HTTP response."""
        body, headers = signed_command(text, response_url=self.slack.response_url(), **kwargs)
        async with self.session.post(self.url + EVENTS_PATH, data=body, headers=headers) as r:
            await r.read()
            return r

    async def command(self, text: str, **kwargs: Any) -> dict[str, Any]:
        """Run a command end to end and return what the app posted to its response_url."""
        before = len(self.slack.responses())
        response = await self.post(text, **kwargs)
        assert response.status == 200
        return await self.next_response(before)

    async def next_response(self, before: int) -> dict[str, Any]:
        """Wait (briefly) for response number `before` + 1 at the fake response_url."""
        async with asyncio.timeout(5):
            while len(self.slack.responses()) <= before:
                self.slack.response_received.clear()
                await self.slack.response_received.wait()
        return self.slack.responses()[before]


async def _serve(app: SlackCommandApp) -> tuple[web.AppRunner, str]:
    web_app = web.Application()
    web_app.add_routes(app.routes())
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def make_running(
    sqlite_store: SqlStore,
) -> AsyncIterator[Callable[..., Any]]:
    """A factory: start the app (with these [slack] settings) behind a real HTTP server."""
    runners: list[web.AppRunner] = []
    stack: list[Any] = []

    async def make(limits: dict[str, Any] | None = None, **slack_keys: Any) -> Running:
        slack = await FakeSlackApi().__aenter__()
        stack.append(slack)
        settings = slack_settings(slack.api_url, limits, **slack_keys)
        backfills: list[str] = []
        app = SlackCommandApp.from_settings(
            settings, store=sqlite_store, request_backfill=backfills.append
        )
        assert app is not None
        runner, url = await _serve(app)
        runners.append(runner)
        session = aiohttp.ClientSession()
        stack.append(session)
        return Running(url, slack, app, sqlite_store, backfills, session)

    yield make
    for runner in runners:
        await runner.cleanup()
    for item in reversed(stack):
        if isinstance(item, aiohttp.ClientSession):
            await item.close()
        else:
            await item.__aexit__(None, None, None)


async def test_subscribe_confirms_in_channel_and_stores(make_running: Callable[..., Any]) -> None:
    """Signed /papers subscribe: 200 at once, stored, public confirmation via response_url."""
    running: Running = await make_running()
    # Slack escapes `&`, `<` and `>` in the text it sends: what was typed is stored.
    reply = await running.command("subscribe Diffusion Models &amp; &lt;Friends&gt;")
    assert reply["response_type"] == "in_channel"
    assert reply["unfurl_links"] is False
    assert reply["text"].startswith(
        "<@U0MEMBER> subscribed this channel to `Diffusion Models &amp; &lt;Friends&gt;`"
    )
    [sub] = running.store.list_subscriptions(TARGET)
    assert sub.keyword == "Diffusion Models & <Friends>"
    assert running.backfills == ["Diffusion Models & <Friends>"]
    # Bolt verified who the bot is once, against the configured API URL.
    assert len(running.slack.calls_to("auth.test")) == 1


async def test_slack_escaping_is_undone_so_a_query_is_the_same_as_from_the_cli(
    make_running: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`subscribe R&D robotics` arrives as `R&amp;D`: stored as typed, the same as the CLI's."""
    running: Running = await make_running()
    reply = await running.command("subscribe R&amp;D robotics")
    assert reply["text"].startswith("<@U0MEMBER> subscribed this channel to `R&amp;D robotics`")
    [sub] = running.store.list_subscriptions(TARGET)
    assert sub.keyword == "R&D robotics"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DAILY_PAPERS_CONFIG", raising=False)
    monkeypatch.setenv(
        "DAILY_PAPERS_DATABASE_URL", f"sqlite:///{tmp_path / 'daily-papers.sqlite3'}"
    )
    assert main(["subscriptions", "add", f"slack:{CHANNEL_ID}", "R&D robotics"]) == 0
    assert len(running.store.list_subscriptions(TARGET)) == 1
    assert [k.query for k in running.store.list_keywords()] == ["R&D robotics"]
    # A link Slack made of what was typed, and an address: the text as typed.
    reply = await running.command("latest <http://r-d.org|r-d.org> &lt;robots&gt; 3")
    assert "r-d.org &lt;robots&gt;" in reply["text"]


@pytest.mark.parametrize(
    ("sent", "typed"),
    [
        ("subscribe R&amp;D robotics", "subscribe R&D robotics"),
        ("subscribe ti:&quot;x&quot; &amp;amp;", "subscribe ti:&quot;x&quot; &amp;"),
        ("latest a &lt;b&gt; 3", "latest a <b> 3"),
        ("subscribe <http://r-d.org|r-d.org> robotics", "subscribe r-d.org robotics"),
        ("subscribe <https://arxiv.org/abs/1>", "subscribe https://arxiv.org/abs/1"),
        ("email <mailto:ann@lab.org|ann@lab.org> x", "email ann@lab.org x"),
        ("email <mailto:ann@lab.org>", "email ann@lab.org"),
        ("subscribe <#C0123|general> news", "subscribe #general news"),
        ("subscribe <#C0123> news", "subscribe #C0123 news"),
        ("subscribe <@U0BOB|bob> <@U0ANN>", "subscribe @bob @U0ANN"),
        ("subscribe <!here> <!subteam^S1|@ml-team>", "subscribe @here @ml-team"),
        ("subscribe <!date^1392734382^{date}|Feb 18, 2014>", "subscribe Feb 18, 2014"),
    ],
)
def test_command_text_resolves_slacks_forms(sent: str, typed: str) -> None:
    """Slack's entities and <...|...> forms become the text the person typed."""
    assert command_text(sent) == typed


async def test_list_latest_help_and_errors_are_ephemeral(make_running: Callable[..., Any]) -> None:
    """Read-only answers and refusals go to the user only."""
    running: Running = await make_running()
    await running.command("subscribe alpha")
    listing = await running.command("list")
    assert listing["response_type"] == "ephemeral"
    assert "1. `alpha`" in listing["text"]
    helped = await running.command("help")
    assert helped["response_type"] == "ephemeral"
    assert "`/papers subscribe &lt;query&gt;`" in helped["text"]
    bad = await running.command("subscribe ti:(")
    assert bad["response_type"] == "ephemeral"
    assert bad["text"].splitlines()[1] == "Usage: `/papers subscribe &lt;query&gt;`"
    assert "Traceback" not in bad["text"]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"secret": "some-other-secret"}, "wrong secret"),
        ({"timestamp": int(time.time()) - 600}, "ten minutes old"),
    ],
)
async def test_bad_or_stale_signature_is_rejected(
    make_running: Callable[..., Any], change: dict[str, Any], why: str
) -> None:
    """A request not signed with our secret, or replayed later than 5 minutes, gets 401."""
    running: Running = await make_running()
    response = await running.post("subscribe alpha", **change)
    assert response.status == 401, why
    await asyncio.sleep(0)  # let any (wrongly) started listener run
    assert running.store.list_subscriptions(TARGET) == []
    assert running.slack.responses() == []


async def test_unsigned_request_is_rejected(make_running: Callable[..., Any]) -> None:
    """No signature headers at all: 401."""
    running: Running = await make_running()
    async with running.session.post(
        running.url + EVENTS_PATH,
        data="command=%2Fpapers&text=subscribe+x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ) as response:
        assert response.status == 401


async def test_ack_is_immediate_even_when_the_store_is_slow(
    make_running: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The HTTP answer (the ack) comes back while the store is still blocked; the reply follows."""
    running: Running = await make_running()
    gate = threading.Event()
    original = running.store.list_subscriptions

    def slow(*args: Any, **kwargs: Any) -> Any:
        gate.wait(timeout=10)  # released by the test once the ack has arrived
        return original(*args, **kwargs)

    monkeypatch.setattr(running.store, "list_subscriptions", slow)
    started = time.monotonic()
    response = await running.post("list")
    acked_after = time.monotonic() - started
    assert response.status == 200
    assert acked_after < 3.0
    assert running.slack.responses() == []  # the store has not answered yet
    gate.set()
    reply = await running.next_response(0)
    assert "no subscriptions yet" in reply["text"]


async def test_admins_only_checks_workspace_role(make_running: Callable[..., Any]) -> None:
    """admins_only: members are refused, admins and owners allowed (users.info at the fake)."""
    running: Running = await make_running(admins_only=True)
    running.slack.add_user("U0MEMBER")
    running.slack.add_user("U0ADMIN", is_admin=True)
    running.slack.add_user("U0OWNER", is_owner=True)
    refused = await running.command("subscribe alpha", user_id="U0MEMBER")
    assert refused["response_type"] == "ephemeral"
    assert "not allowed" in refused["text"]
    assert "ask a workspace admin" in refused["text"]  # Slack's word
    assert running.store.list_subscriptions(TARGET) == []
    assert (await running.command("subscribe alpha", user_id="U0ADMIN"))[
        "response_type"
    ] == "in_channel"
    assert (await running.command("unsubscribe alpha", user_id="U0OWNER"))[
        "response_type"
    ] == "in_channel"
    assert [c.params["user"] for c in running.slack.calls_to("users.info")] == [
        "U0MEMBER",
        "U0ADMIN",
        "U0OWNER",
    ]
    # Reading needs no permission, and does not ask Slack.
    listing = await running.command("list", user_id="U0MEMBER")
    assert "no subscriptions yet" in listing["text"]
    assert len(running.slack.calls_to("users.info")) == 3


async def test_admins_only_with_listed_user_ids(make_running: Callable[..., Any]) -> None:
    """A user in slack.admin_user_ids may manage without being a workspace admin."""
    running: Running = await make_running(admins_only=True, admin_user_ids=["U0CURATOR"])
    reply = await running.command("subscribe alpha", user_id="U0CURATOR")
    assert reply["response_type"] == "in_channel"
    assert running.slack.calls_to("users.info") == []


async def test_admins_only_denies_when_slack_cannot_say(make_running: Callable[..., Any]) -> None:
    """users.info failing (unknown user, outage) means no, not everyone."""
    running: Running = await make_running(admins_only=True)
    reply = await running.command("subscribe alpha", user_id="U0GHOST")
    assert "not allowed" in reply["text"]
    assert running.store.list_subscriptions(TARGET) == []


async def test_per_channel_limit_through_slack(make_running: Callable[..., Any]) -> None:
    """limits.subscriptions_per_target is enforced on the slash command."""
    running: Running = await make_running(limits={"subscriptions_per_target": 1})
    await running.command("subscribe alpha")
    refused = await running.command("subscribe beta")
    assert refused["response_type"] == "ephemeral"
    assert "the limit is 1" in refused["text"]
    assert [s.keyword for s in running.store.list_subscriptions(TARGET)] == ["alpha"]


async def test_configured_command_name(make_running: Callable[..., Any]) -> None:
    """slack.command renames the slash command; help shows the configured name."""
    running: Running = await make_running(command="/arxiv")
    reply = await running.command("help", command="/arxiv")
    assert "`/arxiv subscribe &lt;query&gt;`" in reply["text"]


def test_from_settings_without_token_is_none(sqlite_store: SqlStore) -> None:
    """No SLACK_BOT_TOKEN: no Slack app."""
    assert (
        SlackCommandApp.from_settings(
            settings_for_tests(), store=sqlite_store, request_backfill=lambda q: None
        )
        is None
    )


def test_from_settings_needs_app_token_or_signing_secret(sqlite_store: SqlStore) -> None:
    """A bot token alone cannot receive commands: a ConfigError naming both options."""
    settings = dataclasses.replace(settings_for_tests(), secrets=Secrets(slack_bot_token="xoxb-1"))
    with pytest.raises(ConfigError, match=r"SLACK_APP_TOKEN.*SLACK_SIGNING_SECRET"):
        SlackCommandApp.from_settings(settings, store=sqlite_store, request_backfill=lambda q: None)


def test_socket_mode_mounts_no_http_route(sqlite_store: SqlStore) -> None:
    """With SLACK_APP_TOKEN the app uses Socket Mode and exposes no unsigned HTTP endpoint."""
    settings = dataclasses.replace(
        settings_for_tests(),
        secrets=Secrets(slack_bot_token="xoxb-1", slack_app_token="xapp-1"),
    )
    app = SlackCommandApp.from_settings(
        settings,
        store=sqlite_store,
        request_backfill=lambda q: None,
        client=build_web_client(token="xoxb-1", api_url="http://127.0.0.1:9/api/"),
    )
    assert app is not None
    assert app.socket_mode
    assert app.routes() == []


def test_shipped_manifest_matches_the_app() -> None:
    """The manifest declares the default slash command, Socket Mode and every scope we call."""
    manifest = (Path(__file__).parent.parent / "bot" / "slack-app-manifest.yml").read_text(
        encoding="utf-8"
    )
    assert f"- command: {SlackSettings().command}\n" in manifest
    assert "socket_mode_enabled: true" in manifest
    scopes = re.findall(r"^\s+- ([a-z.:]+)\s*$", manifest, flags=re.M)
    # chat.postMessage, the slash command, users.info, and posting without an invite.
    assert {"chat:write", "commands", "users:read", "chat:write.public"} <= set(scopes)


async def test_start_slack_in_http_mode_serves_routes(sqlite_store: SqlStore) -> None:
    """serve's entry point: HTTP mode gives the /slack/events route to mount; no token: None."""
    assert (
        await start_slack(
            settings_for_tests(),
            store=sqlite_store,
            request_backfill=lambda q: None,
            stack=AsyncExitStack(),
        )
        is None
    )
    async with FakeSlackApi() as slack, AsyncExitStack() as stack:
        app = await start_slack(
            slack_settings(slack.api_url),
            store=sqlite_store,
            request_backfill=lambda q: None,
            stack=stack,
        )
        assert app is not None
        assert not app.socket_mode
        assert [(r.method, r.path) for r in app.routes()] == [("POST", EVENTS_PATH)]


async def test_composition_root_registers_the_slack_channel(sqlite_store: SqlStore) -> None:
    """build_channels includes Slack exactly when SLACK_BOT_TOKEN is set."""
    from digest.app import build_channels

    async with AsyncExitStack() as stack:
        without = await build_channels(settings_for_tests(), store=sqlite_store, stack=stack)
        assert "slack" not in without
        configured = await build_channels(
            slack_settings("http://127.0.0.1:9/api/"), store=sqlite_store, stack=stack
        )
        assert isinstance(configured["slack"], SlackChannel)


def slash_envelope(envelope_id: str, text: str, slack: FakeSlackApi) -> dict[str, Any]:
    """A slash command as Socket Mode delivers it."""
    return {
        "envelope_id": envelope_id,
        "type": "slash_commands",
        "accepts_response_payload": True,
        "payload": {
            "team_id": "T0000TEST",
            "channel_id": CHANNEL_ID,
            "user_id": "U0MEMBER",
            "command": "/papers",
            "text": text,
            "api_app_id": "A0000TEST",
            "response_url": slack.response_url(),
            "trigger_id": "1.2.3",
        },
    }


async def test_socket_mode_receives_acks_and_answers_a_command(sqlite_store: SqlStore) -> None:
    """Socket Mode: connects with the app token, acks the envelope, replies via response_url."""
    async with FakeSlackApi() as slack:
        settings = dataclasses.replace(
            settings_for_tests(slack={"api_url": slack.api_url}),
            secrets=Secrets(slack_bot_token=BOT_TOKEN, slack_app_token=APP_TOKEN),
        )
        app = SlackCommandApp.from_settings(
            settings, store=sqlite_store, request_backfill=lambda q: None
        )
        assert app is not None
        async with app:
            async with asyncio.timeout(5):
                await slack.socket_connected.wait()
            await slack.push(slash_envelope("env-1", "subscribe socket topic", slack))
            async with asyncio.timeout(5):
                while not any(m.get("envelope_id") == "env-1" for m in slack.socket_messages):
                    slack.socket_message_received.clear()
                    await slack.socket_message_received.wait()
                while not slack.responses():
                    slack.response_received.clear()
                    await slack.response_received.wait()
        assert slack.responses()[0]["response_type"] == "in_channel"
        assert [s.keyword for s in sqlite_store.list_subscriptions(TARGET)] == ["socket topic"]
        [opened] = slack.calls_to("apps.connections.open")
        assert opened.token == APP_TOKEN


async def test_socket_mode_survives_a_frame_it_cannot_parse(sqlite_store: SqlStore) -> None:
    """A Socket Mode frame that is not JSON is logged and skipped; the next command is answered
    on the same connection (unlike discord.py's gateway, slack_sdk does not go silent)."""
    async with FakeSlackApi() as slack:
        app = SlackCommandApp.from_settings(
            socket_settings(slack), store=sqlite_store, request_backfill=lambda q: None
        )
        assert app is not None
        async with app:
            await slack.push_raw("{not json")
            await slack.push(slash_envelope("env-2", "help", slack))
            await wait_until(slack.responses, 5)
        assert "/papers subscribe" in slack.responses()[0]["text"]
        assert len(slack.calls_to("apps.connections.open")) == 1


# -- Socket Mode kept up by the platform supervisor --------------------------------------------


def socket_settings(slack: FakeSlackApi) -> Settings:
    """Test settings for Socket Mode against the fake."""
    return dataclasses.replace(
        settings_for_tests(slack={"api_url": slack.api_url}),
        secrets=Secrets(slack_bot_token=BOT_TOKEN, slack_app_token=APP_TOKEN),
    )


def slack_status(store: SqlStore) -> PlatformStatus | None:
    """What `status` reads about Slack."""
    return read_platform_status(store, "slack")


async def test_socket_mode_lost_later_is_reported_then_reconnected(
    sqlite_store: SqlStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Slack going away after connecting (socket closed, new ones refused): status says
    unreachable, one line per failed attempt without traceback, then connected again."""
    caplog.set_level(logging.INFO, logger="digest.platforms")
    async with FakeSlackApi() as slack, AsyncExitStack() as stack:
        await start_slack(
            socket_settings(slack), store=sqlite_store, request_backfill=lambda q: None, stack=stack
        )
        await wait_until(lambda: (s := slack_status(sqlite_store)) and s.connected)
        slack.script("apps.connections.open", error("service_unavailable"), error("fatal_error"))
        await slack.close_sockets()
        await wait_until(lambda: (s := slack_status(sqlite_store)) and not s.connected)
        await wait_until(lambda: len(slack.calls_to("apps.connections.open")) == 4)
        await wait_until(lambda: (s := slack_status(sqlite_store)) and s.connected)
        assert len(slack._sockets) == 1
    assert slack_status(sqlite_store) is None  # cleared when the supervisor stops
    lines = [m for m in caplog.messages if m.startswith("platform.")]
    assert [m.split()[0] for m in lines] == [
        "platform.connected",
        "platform.disconnected",
        "platform.unreachable",
        "platform.unreachable",
        "platform.connected",
    ]
    assert "Slack answered service_unavailable" in lines[2]
    assert not [r for r in caplog.records if r.exc_info]


async def test_socket_mode_websocket_that_never_opens_is_one_failure(
    sqlite_store: SqlStore, caplog: pytest.LogCaptureFixture
) -> None:
    """apps.connections.open answers a URL nobody listens on: the attempt fails after its
    timeout with a reason, and slack_sdk's own retries log no traceback."""
    async with FakeSlackApi() as slack, AsyncExitStack() as stack:
        slack.script("apps.connections.open", ok(url=f"ws://127.0.0.1:{free_port()}/socket"))
        await start_slack(
            socket_settings(slack), store=sqlite_store, request_backfill=lambda q: None, stack=stack
        )
        await wait_until(lambda: (s := slack_status(sqlite_store)) and s.connected)
    failed = [m for m in caplog.messages if m.startswith("platform.unreachable kind=slack")]
    assert len(failed) == 1
    assert "Socket Mode WebSocket did not open within 1 s" in failed[0]
    assert not [r for r in caplog.records if r.exc_info]


async def test_stopping_interrupts_a_hanging_attempt_at_once(sqlite_store: SqlStore) -> None:
    """serve stopping while apps.connections.open hangs: the supervisor stops at once."""
    async with FakeSlackApi() as slack:
        slack.script("apps.connections.open", FakeAnswer(body={"ok": True}, delay=30))
        async with AsyncExitStack() as stack:
            await start_slack(
                socket_settings(slack),
                store=sqlite_store,
                request_backfill=lambda q: None,
                stack=stack,
            )
            await asyncio.sleep(0.1)  # the request is on its way, waiting for the answer
            started = time.monotonic()
        assert time.monotonic() - started < 1
        assert slack_status(sqlite_store) is None


# -- like: subscriptions --------------------------------------------------------------------------


async def test_like_subscribe_refusals_and_latest_through_signed_requests(
    sqlite_store: SqlStore,
) -> None:
    """`/papers subscribe like:...` fetches the seeds from the arXiv stand-in and confirms in
    the channel; bad seeds get one ephemeral line and store nothing; `latest like:...` shows
    this week's picks and the terms behind them."""
    from bot.commands import CommandService
    from bot.slack_channel import SlackMarkup, client_from_settings
    from digest.arxiv_source import ArxivSource
    from tests.fakes.arxiv_server import ArxivStandIn
    from tests.like_helpers import NOW, UNKNOWN_ID, WITHDRAWN_ID, like_corpus, store_history

    corpus = like_corpus()
    store_history(sqlite_store, (*corpus.stored, *corpus.week))
    async with AsyncExitStack() as stack:
        arxiv = stack.enter_context(ArxivStandIn(corpus.served()))
        slack = await stack.enter_async_context(FakeSlackApi())
        settings = slack_settings(slack.api_url)
        settings = dataclasses.replace(
            settings, arxiv=dataclasses.replace(settings.arxiv, api_url=arxiv.url)
        )
        source = stack.enter_context(ArxivSource.from_settings(settings))
        backfills: list[str] = []
        service = CommandService(
            store=sqlite_store,
            settings=settings,
            request_backfill=backfills.append,
            markup=SlackMarkup(),
            clock=lambda: NOW,
            seed_source=source,
        )
        client = client_from_settings(settings)
        assert client is not None
        app = SlackCommandApp(
            service=service, settings=settings, client=client, signing_secret=SIGNING_SECRET
        )
        runner, url = await _serve(app)
        stack.push_async_callback(runner.cleanup)
        session = await stack.enter_async_context(aiohttp.ClientSession())
        running = Running(url, slack, app, sqlite_store, backfills, session)

        seeds = [p.arxiv_id for p in corpus.seeds[:3]]
        for bad, reason in (
            (UNKNOWN_ID, f"like: {UNKNOWN_ID} is not on arXiv;"),
            (WITHDRAWN_ID, f"like: {WITHDRAWN_ID} has been withdrawn;"),
        ):
            refused = await running.command("subscribe like:" + ",".join([*seeds, bad]))
            assert refused["response_type"] == "ephemeral"
            assert refused["text"].startswith(reason)
            assert "\n" not in refused["text"]
        too_few = await running.command("subscribe like:" + ",".join(seeds[:2]))
        assert too_few["text"].startswith("like: needs at least 3 seed papers, got 2")
        assert sqlite_store.list_subscriptions() == []
        assert sqlite_store.papers_by_id([*seeds, UNKNOWN_ID, WITHDRAWN_ID]) == []

        reply = await running.command("subscribe " + corpus.like)
        assert reply["response_type"] == "in_channel"
        assert reply["text"].startswith(
            f"<@U0MEMBER> subscribed this channel to `{corpus.canonical}`"
        )
        [sub] = sqlite_store.list_subscriptions(TARGET)
        assert sub.keyword == corpus.canonical
        assert backfills == [corpus.canonical]
        assert [r.params["id_list"].count(",") + 1 for r in arxiv.requests][-1] == 10

        latest = await running.command(f"latest {corpus.like} 5")
        assert latest["response_type"] == "ephemeral"
        lines = latest["text"].splitlines()
        assert lines[0].startswith(f"*This week, *`{corpus.canonical}` *would have sent ")
        assert [line[:3] for line in lines[1:6]] == ["1. ", "2. ", "3. ", "4. ", "5. "]
        assert lines[6].startswith("What makes a paper look like the seeds: ")
        assert "anomaly" in lines[6]
        # The subscription's model was cached: the cycle will not train it again.
        assert sqlite_store.load_similarity_model(corpus.canonical) is not None
