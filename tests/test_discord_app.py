"""The /papers Discord commands: real INTERACTION_CREATE payloads through discord.py's parser,
replies read back at the fake Discord REST API."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import discord
import discord.http
import pytest
import yarl
from discord.gateway import DiscordWebSocket

from bot.commands import BUILTIN_COMMANDS
from bot.discord_app import DiscordApp, PapersBot, build_bot, start_discord
from digest.config import Secrets, Settings, settings_for_tests
from digest.domain import Target
from digest.platforms import PlatformStatus, read_platform_status
from storage.sql_store import SqlStore
from tests.fakes.discord_api import APPLICATION_ID, FakeDiscord
from tests.local import wait_until
from tests.reference_papers import load_reference_sections

VAD = "Video Anomaly Detection"  # a section of the reference README


def store_reference_matches(store: SqlStore, *, retitle: str = "") -> None:
    """Track the reference keywords and store their papers as matches (as a backfill would)."""
    sections = load_reference_sections()
    papers = {}
    for section in sections:
        store.add_keyword(section.keyword)
        for paper in section.papers:
            papers[paper.arxiv_id] = replace(paper, title=paper.title + retitle)
    store.commit_harvest(
        papers=list(papers.values()),
        matches={s.keyword: [p.arxiv_id for p in s.papers] for s in sections},
        deliverable=[],
        now=datetime(2025, 2, 1, tzinfo=UTC),
    )


GUILD = "300000000000000001"
CHANNEL = "300000000000000002"
USER = "300000000000000003"
MANAGE_CHANNELS = 1 << 4  # Discord's permission bit
EPHEMERAL = 1 << 6  # message flag
_ids = itertools.count(400000000000000000)


def interaction_payload(
    subcommand: str,
    options: dict[str, Any] | None = None,
    *,
    group: str = "papers",
    permissions: int = MANAGE_CHANNELS,
    channel_id: str = CHANNEL,
) -> dict[str, Any]:
    """An INTERACTION_CREATE event as Discord's gateway sends it for `/group subcommand`."""
    sub_options = [
        {"name": name, "type": 4 if isinstance(value, int) else 3, "value": value}
        for name, value in (options or {}).items()
    ]
    return {
        "id": str(next(_ids)),
        "application_id": APPLICATION_ID,
        "type": 2,
        "token": f"interaction-token-{next(_ids)}",
        "version": 1,
        "guild_id": GUILD,
        "channel_id": channel_id,
        "channel": {
            "id": channel_id,
            "type": 0,
            "guild_id": GUILD,
            "name": "papers",
            "position": 0,
            "permission_overwrites": [],
            "flags": 0,
            "last_message_id": None,
            "nsfw": False,
            "parent_id": None,
            "rate_limit_per_user": 0,
            "topic": None,
            "permissions": str(permissions),
        },
        "member": {
            "user": {
                "id": USER,
                "username": "researcher",
                "discriminator": "0",
                "avatar": None,
                "global_name": "Researcher",
            },
            "roles": [],
            "joined_at": "2024-01-01T00:00:00+00:00",
            "deaf": False,
            "mute": False,
            "flags": 0,
            "permissions": str(permissions),
        },
        "app_permissions": str((1 << 11) | (1 << 14)),
        "locale": "en-US",
        "guild_locale": "en-US",
        "entitlements": [],
        "authorizing_integration_owners": {"0": GUILD},
        "context": 0,
        "attachment_size_limit": 10 * 1024 * 1024,
        "data": {
            "id": "500000000000000001",
            "name": group,
            "type": 1,
            "guild_id": GUILD,
            "options": [{"name": subcommand, "type": 1, "options": sub_options}],
        },
    }


async def dispatch(bot: PapersBot, payload: dict[str, Any]) -> None:
    """Feed a gateway event to the client the way its websocket reader does; wait for the
    command (and every reply it posts) to finish."""
    finished = asyncio.ensure_future(bot.wait_for("app_command_completion", timeout=5))
    await asyncio.sleep(0)  # let the waiter register before the event can fire
    bot._connection.parsers["INTERACTION_CREATE"](payload)
    await finished


@pytest.fixture(autouse=True)
def restore_route_base() -> Iterator[None]:
    """Route.BASE is process-wide: put discord.py's default back after each test."""
    before = discord.http.Route.BASE
    yield
    discord.http.Route.BASE = before


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    """The fake Discord REST API."""
    async with FakeDiscord() as server:
        yield server


class Backfills(list[str]):
    """Records backfill requests (the cycle's backfill is tested with the cycle)."""

    def __call__(self, query: str) -> None:
        """Remember `query`."""
        self.append(query)


@pytest.fixture
def backfills() -> Backfills:
    """The injected request_backfill."""
    return Backfills()


async def start_bot(
    fake: FakeDiscord,
    store: SqlStore,
    backfills: Backfills,
    *,
    ack_seconds: float = 2.0,
    **discord_settings: Any,
) -> PapersBot:
    """Build the bot from settings and log it in against the fake (which syncs the commands)."""
    settings = settings_for_tests(discord={"api_url": fake.api_base, **discord_settings})
    bot = build_bot(settings, store=store, request_backfill=backfills, ack_seconds=ack_seconds)
    await bot.__aenter__()
    await bot.login("bot-token")
    return bot


@pytest.fixture
async def bot(
    fake: FakeDiscord, sqlite_store: SqlStore, backfills: Backfills
) -> AsyncIterator[PapersBot]:
    """A logged-in bot with default settings."""
    client = await start_bot(fake, sqlite_store, backfills)
    yield client
    await client.close()


async def run(fake: FakeDiscord, bot: PapersBot, sub: str, **options: Any) -> dict[str, Any]:
    """Dispatch `/papers sub` and return the interaction callback Discord received."""
    before = len(fake.interaction_callbacks)
    payload = interaction_payload(sub, options, **_perm(options))
    await dispatch(bot, payload)
    assert len(fake.interaction_callbacks) == before + 1
    callback = fake.interaction_callbacks[-1]
    assert callback["interaction_id"] == payload["id"]
    return callback


def _perm(options: dict[str, Any]) -> dict[str, Any]:
    return {"permissions": options.pop("_permissions")} if "_permissions" in options else {}


# -- sync -------------------------------------------------------------------------------------


async def test_login_syncs_the_group_globally(fake: FakeDiscord, bot: PapersBot) -> None:
    """Logging in PUTs one `papers` group with the five subcommands and their help texts."""
    (group,) = fake.synced_commands["global"]
    assert group["name"] == "papers"
    summaries = {c.name: c.summary for c in BUILTIN_COMMANDS}
    assert {o["name"]: o["description"] for o in group["options"]} == summaries
    latest = next(o for o in group["options"] if o["name"] == "latest")
    n = next(o for o in latest["options"] if o["name"] == "n")
    assert (n["min_value"], n["max_value"], n["required"]) == (1, 20, False)
    assert group["contexts"] == [0]  # servers only: posts go to server channels


def test_docstrings_are_the_shared_help() -> None:
    """Each command's docstring is the summary of the shared command table (one help text)."""
    from bot.discord_app import PapersGroup

    methods = {"list": "list_", "help": "help_"}
    for command in BUILTIN_COMMANDS:
        callback = getattr(PapersGroup, methods.get(command.name, command.name)).callback
        assert callback.__doc__ == command.summary


async def test_guild_ids_sync_to_each_guild_and_custom_name(
    fake: FakeDiscord, sqlite_store: SqlStore, backfills: Backfills
) -> None:
    """With discord.guild_ids the group is synced to those guilds only, under discord.command."""
    bot = await start_bot(
        fake, sqlite_store, backfills, guild_ids=["111111111111111111"], command="arxiv"
    )
    try:
        assert "global" not in fake.synced_commands
        (group,) = fake.synced_commands["111111111111111111"]
        assert group["name"] == "arxiv"
        assert fake.calls_to(
            f"PUT /applications/{APPLICATION_ID}/guilds/111111111111111111/commands"
        )
    finally:
        await bot.close()


# -- commands ---------------------------------------------------------------------------------


async def test_subscribe_confirms_publicly_and_stores(
    fake: FakeDiscord, bot: PapersBot, sqlite_store: SqlStore, backfills: Backfills
) -> None:
    """`/papers subscribe` stores the subscription, asks for a backfill, confirms in channel."""
    callback = await run(fake, bot, "subscribe", query="Diffusion Models")
    assert callback["type"] == 4  # CHANNEL_MESSAGE_WITH_SOURCE: answered within 3 s
    data = callback["data"]
    assert not data.get("flags", 0) & EPHEMERAL
    assert data["content"].startswith(f"<@{USER}> subscribed this channel to `Diffusion Models`")
    assert data["allowed_mentions"] == {"parse": []}
    subs = sqlite_store.list_subscriptions(Target("discord", CHANNEL))
    assert [s.keyword for s in subs] == ["Diffusion Models"]
    assert backfills == ["Diffusion Models"]


async def test_subscribe_shows_stored_matches_escaped(
    fake: FakeDiscord, bot: PapersBot, sqlite_store: SqlStore
) -> None:
    """With stored papers the confirmation lists the newest three as Markdown links."""
    store_reference_matches(sqlite_store)
    callback = await run(fake, bot, "subscribe", query="video anomaly detection")
    content = callback["data"]["content"]
    assert "stored papers match; the newest:" in content
    assert content.count("• [") == 3
    assert "](<http://arxiv.org/abs/" in content


async def test_invalid_query_is_ephemeral_with_usage(
    fake: FakeDiscord, bot: PapersBot, sqlite_store: SqlStore
) -> None:
    """A broken query gets a one-line reason and the usage, only to the user; nothing stored."""
    callback = await run(fake, bot, "subscribe", query='"unclosed')
    data = callback["data"]
    assert data["flags"] & EPHEMERAL
    assert "That query does not work" in data["content"]
    assert "Usage: `/papers subscribe <query>`" in data["content"]
    assert sqlite_store.list_subscriptions(Target("discord", CHANNEL)) == []


async def test_without_manage_channels_subscribe_is_refused(
    fake: FakeDiscord, bot: PapersBot, sqlite_store: SqlStore
) -> None:
    """A member without Manage Channels cannot change the channel's subscriptions."""
    callback = await run(fake, bot, "subscribe", query="llm", _permissions=0)
    assert callback["data"]["flags"] & EPHEMERAL
    assert "not allowed" in callback["data"]["content"]
    # Discord's words: a server, its admins and the permission that is missing.
    assert "ask a server admin" in callback["data"]["content"]
    assert "Manage Channels" in callback["data"]["content"]
    assert "workspace" not in callback["data"]["content"]
    assert sqlite_store.list_subscriptions(Target("discord", CHANNEL)) == []
    # Reading is open to everyone.
    listed = await run(fake, bot, "list", _permissions=0)
    assert "not allowed" not in listed["data"]["content"]


async def test_require_manage_channels_false_opens_it(
    fake: FakeDiscord, sqlite_store: SqlStore, backfills: Backfills
) -> None:
    """`discord.require_manage_channels = false` lets any member subscribe."""
    bot = await start_bot(fake, sqlite_store, backfills, require_manage_channels=False)
    try:
        callback = await run(fake, bot, "subscribe", query="llm", _permissions=0)
        assert not callback["data"].get("flags", 0) & EPHEMERAL
        assert len(sqlite_store.list_subscriptions(Target("discord", CHANNEL))) == 1
    finally:
        await bot.close()


async def test_list_unsubscribe_by_number(
    fake: FakeDiscord, bot: PapersBot, sqlite_store: SqlStore
) -> None:
    """list numbers the subscriptions (ephemeral); unsubscribe 1 drops the first, publicly."""
    await run(fake, bot, "subscribe", query="llm")
    await run(fake, bot, "subscribe", query="ti:diffusion")
    listed = (await run(fake, bot, "list"))["data"]
    assert listed["flags"] & EPHEMERAL
    assert "`llm`" in listed["content"]
    assert "`ti:diffusion`" in listed["content"]
    dropped = (await run(fake, bot, "unsubscribe", query="1"))["data"]
    assert not dropped.get("flags", 0) & EPHEMERAL
    assert "unsubscribed this channel from `llm`" in dropped["content"]
    subs = sqlite_store.list_subscriptions(Target("discord", CHANNEL))
    assert [s.keyword for s in subs] == ["ti:diffusion"]


async def test_latest_and_help(fake: FakeDiscord, bot: PapersBot, sqlite_store: SqlStore) -> None:
    """latest shows n stored matches privately; help lists every command."""
    store_reference_matches(sqlite_store)
    latest = (await run(fake, bot, "latest", query="video anomaly detection", n=2))["data"]
    assert latest["flags"] & EPHEMERAL
    assert latest["content"].count("](<http://arxiv.org/abs/") == 2
    shown = (await run(fake, bot, "help"))["data"]["content"]
    for command in BUILTIN_COMMANDS:
        assert f"`/papers {command.usage}`" in shown


async def test_slow_command_is_deferred_then_answered(
    fake: FakeDiscord, sqlite_store: SqlStore, backfills: Backfills
) -> None:
    """Past ack_seconds the bot defers (thinking) and then edits in the real answer."""
    bot = await start_bot(fake, sqlite_store, backfills, ack_seconds=0)
    try:
        callback = await run(fake, bot, "subscribe", query="llm")
        assert callback["type"] == 5  # DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
        assert not callback.get("data", {}).get("flags", 0) & EPHEMERAL  # public confirmation
        edit = f"PATCH /webhooks/{APPLICATION_ID}/"
        (call,) = [c for c in fake.calls if c.key.startswith(edit)]
        assert call.path.endswith("/messages/@original")
        assert "subscribed this channel to `llm`" in call.body["content"]
    finally:
        await bot.close()


async def test_slow_refusal_replaces_public_thinking_with_ephemeral(
    fake: FakeDiscord, sqlite_store: SqlStore, backfills: Backfills
) -> None:
    """A deferred public command that ends in an error deletes the thinking message and
    answers privately, so the refusal is not shown to the channel."""
    bot = await start_bot(fake, sqlite_store, backfills, ack_seconds=0)
    try:
        await run(fake, bot, "subscribe", query='"broken', _permissions=MANAGE_CHANNELS)
        follow = f"POST /webhooks/{APPLICATION_ID}/"
        assert any(c.method == "DELETE" and c.path.endswith("/@original") for c in fake.calls)
        (call,) = [c for c in fake.calls if c.key.startswith(follow)]
        assert call.body["flags"] & EPHEMERAL
        assert "That query does not work" in call.body["content"]
    finally:
        await bot.close()


async def test_long_reply_is_split_into_followups(
    fake: FakeDiscord, bot: PapersBot, sqlite_store: SqlStore
) -> None:
    """A reply over Discord's 2000 characters continues in follow-up messages."""
    store_reference_matches(sqlite_store, retitle=" x" * 120)
    callback = await run(fake, bot, "latest", query="video anomaly detection", n=20)
    assert len(callback["data"]["content"]) <= 2000
    follow = f"POST /webhooks/{APPLICATION_ID}/"
    followups = [c for c in fake.calls if c.key.startswith(follow)]
    assert all(len(c.body["content"]) <= 2000 for c in followups)
    assert all(c.body["flags"] & EPHEMERAL for c in followups)


# -- lifetime in `serve` ----------------------------------------------------------------------


async def test_start_discord_needs_a_token(sqlite_store: SqlStore) -> None:
    """Without DISCORD_BOT_TOKEN there is no bot and nothing is started."""
    settings = settings_for_tests()
    async with AsyncExitStack() as stack:
        app = await start_discord(
            settings, store=sqlite_store, request_backfill=lambda q: None, stack=stack
        )
    assert app is None


@pytest.fixture
def gateway(fake: FakeDiscord, monkeypatch: pytest.MonkeyPatch) -> FakeDiscord:
    """discord.py's gateway pointed at the fake's: a single-shard `Client` connects to this
    class constant and never asks GET /gateway/bot (which the fake answers all the same)."""
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))
    return fake


def bot_settings(fake: FakeDiscord) -> Settings:
    """Test settings with the fake's REST URL and a bot token."""
    return replace(
        settings_for_tests(discord={"api_url": fake.api_base}),
        secrets=Secrets(discord_bot_token="bot-token"),
    )


async def test_discord_app_lifetime(
    gateway: FakeDiscord, sqlite_store: SqlStore, backfills: Backfills
) -> None:
    """Entering logs in, syncs at the configured API URL and identifies on the gateway (READY);
    leaving closes the client and its gateway connection."""
    app = DiscordApp.from_settings(
        bot_settings(gateway), store=sqlite_store, request_backfill=backfills
    )
    assert app is not None
    async with app:
        assert gateway.synced_commands["global"][0]["name"] == "papers"
        assert gateway.calls_to("GET /users/@me")[0].headers["Authorization"] == "Bot bot-token"
        [identify] = gateway.identifies
        assert identify["token"] == "bot-token"
        assert gateway.gateway_connections == 1
    assert app.bot is not None
    assert app.bot.is_closed()
    await wait_until(lambda: gateway.gateway_connections == 0, 5)


async def wait_for_status(store: SqlStore, kind: str, *, connected: bool) -> PlatformStatus:
    """Poll what `status` reads until the platform is (or is not) connected."""

    def reached() -> PlatformStatus | None:
        status = read_platform_status(store, kind)
        return status if status is not None and status.connected is connected else None

    await wait_until(reached)
    status = reached()
    assert status is not None
    return status


@pytest.mark.parametrize(
    "poison",
    [
        pytest.param(("INTERACTION_CREATE", {"id": "1"}), id="unparseable-interaction"),
        pytest.param("{not json", id="not-json"),
    ],
)
async def test_gateway_reconnects_after_an_event_it_cannot_parse(
    gateway: FakeDiscord,
    sqlite_store: SqlStore,
    backfills: Backfills,
    caplog: pytest.LogCaptureFixture,
    poison: tuple[str, dict[str, Any]] | str,
) -> None:
    """An event discord.py fails on ends its connection task; the supervisor notices, identifies
    again, and the bot answers the next interaction; status is ok again."""
    async with AsyncExitStack() as stack:
        await start_discord(
            bot_settings(gateway), store=sqlite_store, request_backfill=backfills, stack=stack
        )
        await wait_for_status(sqlite_store, "discord", connected=True)
        assert len(gateway.identifies) == 1
        if isinstance(poison, str):
            await gateway.send_raw(poison)
        else:
            await gateway.dispatch(*poison)
        async with asyncio.timeout(10):
            await gateway.wait_identified(2)
        await wait_for_status(sqlite_store, "discord", connected=True)
        assert len(gateway.calls_to(f"PUT /applications/{APPLICATION_ID}/commands")) == 1

        await gateway.dispatch("INTERACTION_CREATE", interaction_payload("help"))
        await wait_until(lambda: gateway.interaction_callbacks)
        assert "/papers subscribe" in gateway.interaction_callbacks[0]["data"]["content"]
    disconnected = [r for r in caplog.records if r.getMessage().startswith("platform.discon")]
    assert len(disconnected) == 1
    assert "kind=discord" in disconnected[0].getMessage()
    assert read_platform_status(sqlite_store, "discord") is None  # cleared when serve stops


async def test_gateway_outage_is_reported_then_recovered(
    gateway: FakeDiscord,
    sqlite_store: SqlStore,
    backfills: Backfills,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A gateway outage (connection closed, new ones refused) makes status say unreachable,
    with one line per failed attempt and no traceback, until the bot is back."""
    async with AsyncExitStack() as stack:
        await start_discord(
            bot_settings(gateway), store=sqlite_store, request_backfill=backfills, stack=stack
        )
        await wait_for_status(sqlite_store, "discord", connected=True)
        gateway.gateway_down = True
        await gateway.close_gateway()
        down = await wait_for_status(sqlite_store, "discord", connected=False)
        assert down.reason.startswith("connection lost")
        await wait_until(
            lambda: any("cannot open the Discord gateway" in m for m in caplog.messages)
        )
        gateway.gateway_down = False
        async with asyncio.timeout(10):
            await gateway.wait_identified(2)
        await wait_for_status(sqlite_store, "discord", connected=True)
    failed = [m for m in caplog.messages if m.startswith("platform.unreachable kind=discord")]
    assert failed
    assert "503" in failed[0]
    assert not [r for r in caplog.records if r.exc_info]


def test_docs_invite_permissions_match_discord() -> None:
    """docs/discord.md's permission integers are what discord.py computes for those permissions."""
    text = (Path(__file__).parent.parent / "docs" / "discord.md").read_text(encoding="utf-8")
    needed = discord.Permissions(send_messages=True, embed_links=True).value
    assert needed == 18432
    assert f"permissions={needed}" in text
    assert "scope=bot+applications.commands" in text
    with_view = discord.Permissions(send_messages=True, embed_links=True, view_channel=True)
    assert str(with_view.value) in text


# -- like: subscriptions --------------------------------------------------------------------------


async def test_like_subscribe_refusal_and_latest(fake: FakeDiscord, sqlite_store: SqlStore) -> None:
    """`/papers subscribe query: like:...` fetches the seeds from the arXiv stand-in and
    confirms publicly; a withdrawn seed is refused in one ephemeral line with nothing stored;
    `latest query: like:... n: 3` lists this week's picks."""
    from bot.commands import CommandService, MarkdownMarkup
    from bot.discord_channel import use_api_url
    from digest.arxiv_source import ArxivSource
    from tests.fakes.arxiv_server import ArxivStandIn
    from tests.like_helpers import NOW, WITHDRAWN_ID, like_corpus, store_history

    corpus = like_corpus()
    store_history(sqlite_store, (*corpus.stored, *corpus.week))
    backfills = Backfills()
    with ArxivStandIn(corpus.served()) as arxiv:
        settings = settings_for_tests(
            discord={"api_url": fake.api_base}, arxiv={"api_url": arxiv.url}
        )
        use_api_url(settings.discord.api_url)
        with ArxivSource.from_settings(settings) as source:
            service = CommandService(
                store=sqlite_store,
                settings=settings,
                request_backfill=backfills,
                markup=MarkdownMarkup(),
                clock=lambda: NOW,
                seed_source=source,
            )
            # Seeds are fetched and a model trained within the command: answer, do not defer.
            bot = PapersBot(service=service, group_name="papers", ack_seconds=30.0)
            await bot.__aenter__()
            await bot.login("bot-token")
            try:
                seeds = [p.arxiv_id for p in corpus.seeds[:3]]
                refused = await run(
                    fake, bot, "subscribe", query="like:" + ",".join([*seeds, WITHDRAWN_ID])
                )
                assert refused["data"]["flags"] & EPHEMERAL
                assert refused["data"]["content"].startswith(
                    f"like: {WITHDRAWN_ID} has been withdrawn;"
                )
                assert "\n" not in refused["data"]["content"]
                assert sqlite_store.list_subscriptions() == []
                assert sqlite_store.papers_by_id([*seeds, WITHDRAWN_ID]) == []

                callback = await run(fake, bot, "subscribe", query=corpus.like)
                data = callback["data"]
                assert not data.get("flags", 0) & EPHEMERAL
                assert data["content"].startswith(
                    f"<@{USER}> subscribed this channel to `{corpus.canonical}`"
                )
                subs = sqlite_store.list_subscriptions(Target("discord", CHANNEL))
                assert [s.keyword for s in subs] == [corpus.canonical]
                assert backfills == [corpus.canonical]

                latest = (await run(fake, bot, "latest", query=corpus.like, n=3))["data"]
                assert latest["flags"] & EPHEMERAL
                assert "would have sent" in latest["content"]
                assert latest["content"].count("](<http://arxiv.org/abs/") == 3
            finally:
                await bot.close()
