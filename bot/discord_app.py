"""The Discord bot: a `/papers` app-command group on a discord.py `Client`.

The commands are thin: each turns the interaction into a platform-free `Invocation`, hands it to
the shared `bot.commands.CommandService` (the one implementation of the grammar, shared with
Slack) and posts the `Reply`. Discord wants an answer within 3 seconds: the reply is sent at
once when the service finishes within `ack_seconds`, otherwise the interaction is deferred
("thinking") and the reply follows. Errors and private answers are ephemeral.

Dependencies (the command service, the settings) are handed to the client when it is built.
In `daily-papers serve`, `DiscordApp` is the bot's connection, kept up in the background by the
platform supervisor (`digest.platforms`): a Discord outage or a refused token never stops serve.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import discord
from discord import app_commands

from bot.commands import (
    BUILTIN_COMMANDS,
    LATEST_MAX,
    Command,
    CommandService,
    Invocation,
    MarkdownMarkup,
    Reply,
    invocation_text,
)
from bot.discord_channel import LOGIN_REFUSED, split_text, use_api_url
from digest.config import Settings
from digest.domain import Target, TargetKind
from digest.errors import PlatformUnreachable
from digest.likes import SeedSource
from digest.platforms import NETWORK_ERRORS, describe_error, start_supervisor
from digest.store import PaperStore

log = logging.getLogger(__name__)

ACK_SECONDS = 2.0  # Discord drops an interaction not answered within 3 s; leave 1 s for the POST
GROUP_DESCRIPTION = "Follow new arXiv papers in this channel."
NO_MENTIONS = discord.AllowedMentions.none()  # a confirmation names its user without pinging
CONNECT_SECONDS = 60.0  # discord.py's own limit for opening the gateway; READY comes right after
REFUSED_TOKEN_CLOSE_CODES = frozenset({4004})  # the gateway's "Authentication failed"

_BUILTIN = {c.name: c for c in BUILTIN_COMMANDS}


class _NoIntentsWarning(logging.Filter):
    """The bot runs without gateway intents on purpose (app commands need none); discord.py warns
    about the missing guilds intent for every client it builds, i.e. every connection attempt."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop that one warning."""
        return not record.getMessage().startswith("Guilds intent seems to be disabled")


logging.getLogger("discord.state").addFilter(_NoIntentsWarning())


def _argument_help(command: str) -> dict[str, str]:
    """Option descriptions of a built-in command, from the shared command table."""
    return {a.name: a.description[:100] for a in _BUILTIN[command].arguments}


class PapersGroup(app_commands.Group):
    """The `/papers` group; each command's docstring is its Discord description and help."""

    def __init__(self, *, name: str, bot: PapersBot) -> None:
        # Server channels only: that is where the daily posts go (dm_permission and contexts).
        super().__init__(
            name=name,
            description=GROUP_DESCRIPTION,
            guild_only=True,
            allowed_contexts=app_commands.AppCommandContext(guild=True),
        )
        self.bot = bot
        builtin = {"subscribe", "unsubscribe", "list", "latest", "help"}
        for command in bot.service.commands.values():
            if command.name not in builtin:
                self.add_command(_extra_command(command, bot))

    @app_commands.command()
    @app_commands.describe(**_argument_help("subscribe"))
    async def subscribe(self, interaction: discord.Interaction, query: str) -> None:
        """Post new arXiv papers matching a query (or like:ID,ID,ID papers) here daily."""
        await self.bot.run_command(interaction, invocation_text("subscribe", query))

    @app_commands.command()
    @app_commands.describe(**_argument_help("unsubscribe"))
    async def unsubscribe(self, interaction: discord.Interaction, query: str) -> None:
        """Stop posting a query's papers to this channel."""
        await self.bot.run_command(interaction, invocation_text("unsubscribe", query))

    @app_commands.command(name="list")
    async def list_(self, interaction: discord.Interaction) -> None:
        """Show this channel's subscriptions, numbered."""
        await self.bot.run_command(interaction, "list")

    @app_commands.command()
    @app_commands.describe(**_argument_help("latest"))
    async def latest(
        self,
        interaction: discord.Interaction,
        query: str,
        n: app_commands.Range[int, 1, LATEST_MAX] | None = None,
    ) -> None:
        """Show the newest papers for a query, or this week's for like: (n up to 20)."""
        await self.bot.run_command(interaction, invocation_text("latest", query, n))

    @app_commands.command(name="help")
    async def help_(self, interaction: discord.Interaction) -> None:
        """Show what the commands do."""
        await self.bot.run_command(interaction, "help")


def _extra_command(command: Command, bot: PapersBot) -> app_commands.Command[Any, ..., None]:
    """A command another module added to the service (e.g. `language`), with one text option."""

    async def callback(interaction: discord.Interaction, arguments: str | None = None) -> None:
        await bot.run_command(interaction, invocation_text(command.name, arguments))

    callback.__doc__ = command.summary
    extra: app_commands.Command[Any, ..., None] = app_commands.Command(
        name=command.name, description=command.summary[:100], callback=callback
    )
    return extra


class PapersBot(discord.Client):
    """A discord.py client whose only job is the `/papers` app-command group."""

    def __init__(
        self,
        *,
        service: CommandService,
        group_name: str = "papers",
        guild_ids: Sequence[str] = (),
        require_manage_channels: bool = True,
        ack_seconds: float = ACK_SECONDS,
        **options: Any,
    ) -> None:
        # App commands arrive without any privileged (or unprivileged) gateway intent.
        super().__init__(intents=discord.Intents.none(), **options)
        self.service = service
        self.guild_ids = [int(g) for g in guild_ids]
        self.require_manage_channels = require_manage_channels
        self.ack_seconds = ack_seconds
        self.tree = app_commands.CommandTree(self)
        self.group = PapersGroup(name=group_name, bot=self)
        self.tree.add_command(self.group)
        self.tree.error(self._on_tree_error)
        self.sync_on_login = True  # DiscordApp turns it off once a previous client has synced
        self.synced = False

    async def setup_hook(self) -> None:
        """Sync `/papers` after login: to the configured guilds (instant) or globally."""
        if not self.sync_on_login:
            return
        if self.guild_ids:
            for guild_id in self.guild_ids:
                guild = discord.Object(id=guild_id)
                self.tree.copy_global_to(guild=guild)
                synced = await self.tree.sync(guild=guild)
                log.info("discord.synced scope=guild guild=%s commands=%d", guild_id, len(synced))
        else:
            synced = await self.tree.sync()
            log.info("discord.synced scope=global commands=%d", len(synced))
        self.synced = True

    # -- running one command --------------------------------------------------------------
    def may_manage(self, interaction: discord.Interaction) -> bool:
        """Whether this member may change the channel's subscriptions."""
        if not self.require_manage_channels:
            return True
        return interaction.permissions.manage_channels

    async def run_command(self, interaction: discord.Interaction, text: str) -> None:
        """Answer within Discord's 3 s: reply at once if quick, else defer and follow up."""
        invocation = Invocation(
            target=Target(kind="discord", address=str(interaction.channel_id)),
            user_id=str(interaction.user.id),
            may_manage=self.may_manage(interaction),
            text=text,
        )
        task = asyncio.create_task(self.service.handle(invocation))
        # ack_seconds <= 0 means "always defer" (explicit, for tests of the deferred path).
        done = (
            (await asyncio.wait({task}, timeout=self.ack_seconds))[0]
            if self.ack_seconds > 0
            else ()
        )
        deferred_public: bool | None = None
        if not done:
            # Commands that change the channel confirm publicly; the rest answer privately.
            name = text.partition(" ")[0]
            command = self.service.commands.get(name)
            deferred_public = bool(command and command.changes_target)
            try:
                await interaction.response.defer(ephemeral=not deferred_public, thinking=True)
            except discord.HTTPException as exc:
                log.warning("discord.defer_failed status=%s code=%s", exc.status, exc.code)
        reply = await task
        try:
            await self._answer(interaction, reply, deferred_public)
        except discord.HTTPException as exc:
            # The interaction expired (10062) or the channel is gone: nothing left to tell.
            log.warning("discord.reply_failed status=%s code=%s", exc.status, exc.code)

    async def _answer(
        self, interaction: discord.Interaction, reply: Reply, deferred_public: bool | None
    ) -> None:
        """Post `reply`: as the response, or into / instead of the deferred "thinking" message."""
        pieces = split_text(reply.text)
        ephemeral = not reply.public
        first, rest = pieces[0], pieces[1:]
        if deferred_public is None:
            await interaction.response.send_message(
                first, ephemeral=ephemeral, allowed_mentions=NO_MENTIONS
            )
        elif deferred_public == reply.public:
            await interaction.edit_original_response(content=first, allowed_mentions=NO_MENTIONS)
        else:
            # A refusal must not be shown in the public "thinking" message: replace it.
            await interaction.delete_original_response()
            rest = pieces
        for piece in rest:
            await interaction.followup.send(
                piece, ephemeral=ephemeral, allowed_mentions=NO_MENTIONS
            )

    async def _on_tree_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        """Checks and option conversion failures: a one-line ephemeral reason, no traceback."""
        if isinstance(error, app_commands.NoPrivateMessage):
            text = "This command works in server channels, where the papers are posted."
        else:
            log.error("discord.command_failed error=%r", error, exc_info=error)
            text = "Sorry, that failed on our side. Please try again in a minute."
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except discord.HTTPException as exc:
            log.warning("discord.reply_failed status=%s code=%s", exc.status, exc.code)


def build_bot(
    settings: Settings,
    *,
    store: PaperStore,
    request_backfill: Callable[[str], None],
    extra_commands: Sequence[Command] = (),
    ack_seconds: float = ACK_SECONDS,
    seed_source: SeedSource | None = None,
) -> PapersBot:
    """The bot with its command service, configured from the settings (REST at discord.api_url)."""
    use_api_url(settings.discord.api_url)
    service = CommandService(
        store=store,
        settings=settings,
        request_backfill=request_backfill,
        markup=MarkdownMarkup(),
        command_name="/" + settings.discord.command,
        extra_commands=extra_commands,
        ask_admin="ask a server admin, or anyone with the Manage Channels permission",
        seed_source=seed_source,
    )
    return PapersBot(
        service=service,
        group_name=settings.discord.command,
        guild_ids=settings.discord.guild_ids,
        require_manage_channels=settings.discord.require_manage_channels,
        ack_seconds=ack_seconds,
    )


class DiscordApp:
    """The bot inside `daily-papers serve`, as a `PlatformConnection` that digest.platforms'
    supervisor keeps up (also usable as `async with`: one attempt, then close).

    Each attempt builds a fresh client (a closed discord.py client cannot log in again), logs it
    in (which syncs the commands, on the first attempt only) and opens the gateway, connected
    once Discord has sent READY. The gateway runs with `reconnect=False`: when it ends, for
    whatever reason, the supervisor logs it on one line and connects again with its backoff,
    rather than discord.py retrying on its own with a traceback each time, or its connection
    task dying silently on an event it cannot parse while the bot looked online.
    """

    kind = TargetKind.DISCORD.value

    def __init__(
        self,
        *,
        make_bot: Callable[[], PapersBot],
        token: str,
        connect_seconds: float = CONNECT_SECONDS,
    ) -> None:
        self._make_bot = make_bot
        self._token = token
        self._connect_seconds = connect_seconds
        self._synced = False
        self.bot: PapersBot | None = None  # the current attempt's client
        self._gateway: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        store: PaperStore,
        request_backfill: Callable[[str], None],
        extra_commands: Sequence[Command] = (),
        seed_source: SeedSource | None = None,
    ) -> DiscordApp | None:
        """The app for these settings, or None when DISCORD_BOT_TOKEN is not set."""
        token = settings.secrets.discord_bot_token
        if not token:
            return None

        def make_bot() -> PapersBot:
            return build_bot(
                settings,
                store=store,
                request_backfill=request_backfill,
                extra_commands=extra_commands,
                seed_source=seed_source,
            )

        return cls(make_bot=make_bot, token=token)

    async def connect(self) -> None:
        """One attempt: log in, sync the commands once, open the gateway and wait for READY.

        Raises PlatformUnreachable when Discord is down or refuses the token.
        """
        await self.close()
        bot = self.bot = self._make_bot()
        bot.sync_on_login = not self._synced
        await bot.__aenter__()
        try:
            await bot.login(self._token)
        except discord.LoginFailure as exc:
            raise PlatformUnreachable(LOGIN_REFUSED) from exc
        except (discord.HTTPException, discord.GatewayNotFound, *NETWORK_ERRORS) as exc:
            raise PlatformUnreachable(f"cannot log in to Discord: {_describe(exc)}") from exc
        self._synced = self._synced or bot.synced
        ready = asyncio.ensure_future(bot.wait_for("connect"))  # dispatched on READY
        self._gateway = asyncio.create_task(bot.connect(reconnect=False), name="discord-gateway")
        try:
            done, _ = await asyncio.wait(
                {ready, self._gateway},
                timeout=self._connect_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            ready.cancel()
        if ready not in done:
            if self._gateway in done:
                raise PlatformUnreachable(
                    f"cannot open the Discord gateway: {self._gateway_end(self._gateway)}"
                )
            raise PlatformUnreachable(
                f"the Discord gateway sent no READY within {self._connect_seconds:g} s"
            )
        log.info("discord.started command=/%s", bot.group.name)

    async def wait_closed(self) -> str:
        """Wait until the gateway connection ends; return why."""
        if self._gateway is None:
            return "not connected"
        await asyncio.wait({self._gateway})
        return self._gateway_end(self._gateway)

    async def close(self) -> None:
        """Close the client (and its gateway connection); safe to call twice."""
        bot, gateway, self._gateway = self.bot, self._gateway, None
        if bot is not None and not bot.is_closed():
            await bot.close()
        if gateway is not None:  # the gateway had been opened: say it is gone
            gateway.cancel()
            await asyncio.gather(gateway, return_exceptions=True)
            log.info("discord.stopped")

    @staticmethod
    def _gateway_end(task: asyncio.Task[None]) -> str:
        """Why the gateway task ended, in a few words (with a traceback when unexpected)."""
        if task.cancelled():
            return "the gateway task was cancelled"
        exc = task.exception()
        if exc is None:
            return "Discord closed the gateway connection"
        if isinstance(exc, discord.ConnectionClosed) and exc.code in REFUSED_TOKEN_CLOSE_CODES:
            return f"Discord refused the bot token (gateway close code {exc.code})"
        if not isinstance(exc, (discord.ConnectionClosed, *NETWORK_ERRORS)):
            # Not the network: discord.py failed on something Discord sent (an event it cannot
            # parse ends its connection task). Worth its traceback; the supervisor reconnects.
            log.warning("discord.gateway_failed error=%r", exc, exc_info=exc)
        return _describe(exc)

    async def __aenter__(self) -> DiscordApp:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def start_discord(
    settings: Settings,
    *,
    store: PaperStore,
    request_backfill: Callable[[str], None],
    stack: AsyncExitStack,
    extra_commands: Sequence[Command] = (),
    seed_source: SeedSource | None = None,
) -> DiscordApp | None:
    """`serve`'s entry point: keep the bot connected in the background (digest.platforms'
    supervisor, stopped with `stack`); returns at once, Discord up or not. None when
    DISCORD_BOT_TOKEN is not set."""
    app = DiscordApp.from_settings(
        settings,
        store=store,
        request_backfill=request_backfill,
        extra_commands=extra_commands,
        seed_source=seed_source,
    )
    if app is None:
        return None
    start_supervisor(app, settings=settings, store=store, stack=stack)
    return app


def _describe(exc: BaseException) -> str:
    """A discord.py or network failure in a few words."""
    if isinstance(exc, discord.HTTPException):
        return f"HTTP {exc.status} {exc.text or exc.response.reason}".strip()
    if isinstance(exc, discord.ConnectionClosed):
        return f"gateway closed with code {exc.code}"
    if isinstance(exc, aiohttp.ClientResponseError):  # e.g. the gateway's handshake refused
        return f"HTTP {exc.status} {exc.message}".strip()
    return describe_error(exc)


__all__ = ["ACK_SECONDS", "DiscordApp", "PapersBot", "PapersGroup", "build_bot", "start_discord"]
