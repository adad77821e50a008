"""The `/papers` command grammar, shared by every chat platform (and the email sign-up command).

Platform adapters (`bot.slack_app`, `bot.discord_app`) turn a slash command into an
`Invocation` (which channel, who, whether that person may change the channel, the text after
the command name), call `CommandService.handle`, and post the `Reply` the way their platform
wants (ephemeral or in channel). Nothing here knows about Slack or Discord: the only
platform-specific part is the `ChatMarkup` an adapter hands in, because Slack's mrkdwn and
Discord's Markdown escape differently and spell bold and links differently.

The `Command` table below is the single source of the help text: `/papers help`, the README's
command reference (`render_reference`) and Discord's app command descriptions all read it.
Other modules add commands (`email`, `language`) by passing more `Command`s to the service.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

from digest.config import Settings
from digest.domain import Subscription, Target
from digest.errors import DailyPapersError, QueryError, SimilarityError
from digest.like_query import canonical_like, is_like_query
from digest.likes import SeedSource, latest_like, resolve_like
from digest.query import parse_query, query_key
from digest.render import get_environment, short_authors
from digest.store import PaperStore
from digest.translate import language_name, translation_configured

if TYPE_CHECKING:
    from digest.mail.signup import EmailSubscriptions

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

LATEST_DEFAULT = 5  # enough to judge a query at a glance without flooding the reply
LATEST_MAX = 20  # the cap: a reply longer than this is better read in the README
SUBSCRIBE_PREVIEW = 3  # newest matches shown when subscribing


class ChatMarkup(Protocol):
    """How a platform spells formatting; every method takes raw text and escapes it itself."""

    def escape(self, text: str) -> str:
        """User or paper text made inert (no mentions, links or formatting)."""
        ...

    def bold(self, text: str) -> str:
        """Bold text."""
        ...

    def link(self, url: str, text: str) -> str:
        """A link with visible text."""
        ...

    def code(self, text: str) -> str:
        """Inline code (queries, commands)."""
        ...

    def mention(self, user_id: str) -> str:
        """A reference to a user by id."""
        ...


class PlainMarkup:
    """No markup at all: for logs, the CLI and tests that read the words."""

    def escape(self, text: str) -> str:
        """The text unchanged."""
        return text

    def bold(self, text: str) -> str:
        """The text unchanged."""
        return text

    def link(self, url: str, text: str) -> str:
        """`text (url)`."""
        return f"{text} ({url})"

    def code(self, text: str) -> str:
        """The text in quotes-like backticks so a query stands out."""
        return f"`{text}`"

    def mention(self, user_id: str) -> str:
        """The bare user id."""
        return user_id


# CommonMark / Discord: a backslash before ASCII punctuation shows it literally. Only the
# characters that open formatting, links, quotes, spoilers or mentions are escaped, so titles
# stay readable in the raw text. `@` is broken with a zero-width space so `@everyone` in a title
# cannot mention anyone even where allowed_mentions is not set.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_~|>#\[\]<])")


class MarkdownMarkup:
    """Discord-flavoured Markdown (also fine for CommonMark)."""

    def escape(self, text: str) -> str:
        """Backslash-escape Markdown punctuation and defuse @mentions."""
        escaped = _MARKDOWN_SPECIAL.sub(r"\\\1", text)
        return escaped.replace("@", "@\u200b")

    def bold(self, text: str) -> str:
        """`**text**`."""
        return f"**{self.escape(text)}**"

    def link(self, url: str, text: str) -> str:
        """`[text](<url>)`: angle brackets stop Discord from embedding a preview."""
        return f"[{self.escape(text)}](<{url}>)"

    def code(self, text: str) -> str:
        """Inline code; backticks inside would end the span, so they become quotes."""
        return "`" + text.replace("`", "'") + "`"

    def mention(self, user_id: str) -> str:
        """`<@id>`."""
        return f"<@{user_id}>"


@dataclass(frozen=True, slots=True)
class Invocation:
    """One use of the slash command, as every platform can describe it."""

    target: Target  # the channel the command was used in (and that it manages)
    user_id: str  # platform user id, for mentions in public confirmations
    may_manage: bool  # the adapter's permission verdict for changing this target
    text: str  # everything after the command name: "subscribe diffusion models"


@dataclass(frozen=True, slots=True)
class Reply:
    """What to answer. `public` replies go to the channel; the others only to the user."""

    text: str
    public: bool = False
    ok: bool = True  # False when the command was refused or malformed


@dataclass(frozen=True, slots=True)
class Argument:
    """One argument of a command, described for platforms with typed options (Discord)."""

    name: str
    description: str
    required: bool = True
    kind: str = "str"  # "str" or "int"


Handler = Callable[["CommandService", Invocation, str], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class Command:
    """A subcommand of `/papers`: its grammar, help and handler."""

    name: str
    usage: str  # "subscribe <query>"
    summary: str  # one line, at most 100 characters (Discord's description limit)
    handler: Handler = field(compare=False)
    arguments: tuple[Argument, ...] = ()
    changes_target: bool = False  # needs Invocation.may_manage


class CommandService:
    """Runs `/papers` commands against the store; one instance per platform (its markup)."""

    def __init__(
        self,
        *,
        store: PaperStore,
        settings: Settings,
        request_backfill: Callable[[str], None],
        markup: ChatMarkup | None = None,
        clock: Callable[[], datetime] | None = None,
        command_name: str = "/papers",
        extra_commands: Sequence[Command] = (),
        ask_admin: str = "ask a workspace admin",
        seed_source: SeedSource | None = None,
    ) -> None:
        self.store = store
        # Fetches `like:` seed papers from arXiv (the cycle's ArxivSource, paced with it);
        # without one, only seeds already stored can be used.
        self.seed_source = seed_source
        self.settings = settings
        self.markup: ChatMarkup = markup if markup is not None else PlainMarkup()
        self.command_name = command_name
        # Who to turn to when refused, in the platform's own words (Slack has workspaces,
        # Discord servers).
        self.ask_admin = ask_admin
        self._request_backfill = request_backfill
        self._clock = clock if clock is not None else (lambda: datetime.now(UTC))
        commands = {c.name: c for c in BUILTIN_COMMANDS}
        for extra in extra_commands:
            commands[extra.name] = extra  # a module may replace a built-in on purpose
        self.commands: Mapping[str, Command] = commands

    # -- helpers for handlers (built-in and added ones) ---------------------------------
    def now(self) -> datetime:
        """The injected clock's time."""
        return self._clock()

    async def call_store(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a (synchronous) store method off the event loop."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    def render(self, template: str, **context: Any) -> str:
        """Render `templates/chat/<template>` with this platform's markup as `m`."""
        tpl = get_environment().get_template(f"chat/{template}")
        context.setdefault("m", self.markup)
        context.setdefault("cmd", self.command_name)
        context.setdefault("first_authors", lambda paper: short_authors(paper.authors))
        return tpl.render(**context).strip()

    def usage(self, command: Command) -> str:
        """The usage line of a command, as code: `/papers subscribe <query>`."""
        return "Usage: " + self.markup.code(f"{self.command_name} {command.usage}")

    def refuse(self, command: Command, reason: str) -> Reply:
        """A one-line reason and the usage line, only to the user."""
        return Reply(text=f"{self.markup.escape(reason)}\n{self.usage(command)}", ok=False)

    def request_backfill(self, query: str) -> None:
        """Ask for a background backfill of `query`; never waits and never raises."""
        try:
            self._request_backfill(query)
        except Exception:
            log.exception("commands.backfill_request_failed query=%r", query)

    # -- dispatch -------------------------------------------------------------------------
    async def handle(self, inv: Invocation) -> Reply:
        """Run one invocation; bad input and internal errors become replies, never exceptions."""
        name, _, args = inv.text.strip().partition(" ")
        name = name.lower()
        args = args.strip()
        if not name:
            name = "help"
        command = self.commands.get(name)
        if command is None:
            known = ", ".join(self.commands)
            return Reply(
                text=(
                    f"Unknown command {self.markup.code(name)}. Try one of: {known}.\n"
                    + self.usage(self.commands["help"])
                ),
                ok=False,
            )
        if command.changes_target and not inv.may_manage:
            return Reply(
                text=(
                    f"You are not allowed to change this channel's subscriptions; {self.ask_admin}."
                ),
                ok=False,
            )
        try:
            reply = await command.handler(self, inv, args)
        except DailyPapersError as exc:
            log.warning("commands.failed command=%s target=%s error=%r", name, inv.target, str(exc))
            return self.refuse(command, str(exc))
        except Exception:
            log.exception("commands.crashed command=%s target=%s", name, inv.target)
            return Reply(
                text="Sorry, that failed on our side. Please try again in a minute.", ok=False
            )
        log.info(
            "commands.handled command=%s target=%s user=%s ok=%s",
            name,
            inv.target,
            inv.user_id,
            reply.ok,
        )
        return reply

    def needs_permission(self, text: str) -> bool:
        """Whether this command text would change the target (so the adapter must check)."""
        name = text.strip().partition(" ")[0].lower()
        command = self.commands.get(name)
        return command is not None and command.changes_target

    def help_text(self) -> str:
        """The `/papers help` reply."""
        return self.render("help.txt.j2", commands=list(self.commands.values()))


# -- the built-in commands ------------------------------------------------------------------


def _find(subs: Sequence[Subscription], text: str) -> Subscription | None:
    """The subscription named by its number in `list` or by its query (case-insensitive)."""
    if text.isdigit():
        index = int(text) - 1
        return subs[index] if 0 <= index < len(subs) else None
    if is_like_query(text):
        try:
            text = canonical_like(text)  # the same seeds in any order, with or without versions
        except SimilarityError:
            return None
    key = query_key(text)
    return next((s for s in subs if query_key(s.keyword) == key), None)


async def _tracked_spelling(service: CommandService, query: str) -> str | None:
    """The stored spelling of a tracked keyword equal to `query`, if it is tracked."""
    key = query_key(query)
    keywords = await service.call_store(service.store.list_keywords)
    return next((k.query for k in keywords if query_key(k.query) == key), None)


async def _resolve_like(service: CommandService, text: str) -> str:
    """The canonical text of a `like:` query whose seeds exist and are not withdrawn (they are
    fetched from arXiv once and stored); SimilarityError with a one-line reason otherwise."""
    query, _ = await service.call_store(
        resolve_like, service.store, service.seed_source, text, now=service.now()
    )
    return query.text


def _refuse_like(service: CommandService, exc: SimilarityError) -> Reply:
    """A bad `like:` query's one-line reason, only to the user."""
    return Reply(text=service.markup.escape(str(exc)), ok=False)


async def _subscribe(service: CommandService, inv: Invocation, args: str) -> Reply:
    command = service.commands["subscribe"]
    if not args:
        return service.refuse(command, "Say which papers to follow.")
    if is_like_query(args):
        try:
            query = await _resolve_like(service, args)
        except SimilarityError as exc:
            return _refuse_like(service, exc)
    else:
        try:
            query = parse_query(args).text
        except QueryError as exc:
            return service.refuse(command, f"That query does not work: {exc}")
    store = service.store
    subs = await service.call_store(store.list_subscriptions, inv.target)
    existing = _find(subs, query) if not query.isdigit() else None
    if existing is not None and existing.active:
        return Reply(
            text=(
                f"This channel already follows {service.markup.code(existing.keyword)}. "
                f"See {service.markup.code(service.command_name + ' list')}."
            ),
            ok=False,
        )
    limit = service.settings.limits.subscriptions_per_target
    if existing is None and len(subs) >= limit:
        return service.refuse(
            command,
            f"This channel already has {len(subs)} subscriptions (the limit is {limit}); "
            "unsubscribe from one first.",
        )
    # The store keeps a tracked keyword's first spelling, so headings stay stable; show that.
    subscription = await service.call_store(
        store.add_subscription, inv.target, query, now=service.now()
    )
    query = subscription.keyword
    pending = await service.call_store(store.keywords_to_backfill)
    backfilling = any(query_key(k) == query_key(query) for k in pending)
    if backfilling:
        service.request_backfill(query)
    count = await service.call_store(store.count_matches, query)
    newest = await service.call_store(store.latest_matches, query, SUBSCRIBE_PREVIEW)
    return Reply(
        text=service.render(
            "subscribed.txt.j2",
            user_id=inv.user_id,
            query=query,
            count=count,
            papers=newest,
            backfilling=backfilling,
            like=is_like_query(query),
        ),
        public=True,
    )


async def _unsubscribe(service: CommandService, inv: Invocation, args: str) -> Reply:
    command = service.commands["unsubscribe"]
    if not args:
        return service.refuse(command, "Say which subscription to drop (its query or number).")
    subs = await service.call_store(service.store.list_subscriptions, inv.target)
    found = _find(subs, args)
    if found is None:
        what = f"number {args}" if args.isdigit() else service.markup.code(args)
        listing = service.markup.code(service.command_name + " list")
        return Reply(
            text=(
                f"This channel has no subscription {what}. {listing} shows them.\n"
                + service.usage(command)
            ),
            ok=False,
        )
    await service.call_store(service.store.remove_subscription, inv.target, found.keyword)
    return Reply(
        text=(
            f"{service.markup.mention(inv.user_id)} unsubscribed this channel from "
            f"{service.markup.code(found.keyword)}."
        ),
        public=True,
    )


async def _list(service: CommandService, inv: Invocation, args: str) -> Reply:
    subs = await service.call_store(service.store.list_subscriptions, inv.target)
    return Reply(
        text=service.render(
            "list.txt.j2",
            subscriptions=subs,
            limit=service.settings.limits.subscriptions_per_target,
        )
    )


def _split_count(args: str) -> tuple[str, int | None]:
    """`diffusion models 10` -> ("diffusion models", 10); a lone number stays the query."""
    head, _, tail = args.rpartition(" ")
    if head.strip() and tail.isdigit():
        return head.strip(), int(tail)
    return args, None


async def _latest(service: CommandService, inv: Invocation, args: str) -> Reply:
    command = service.commands["latest"]
    query, count = _split_count(args)
    if not query:
        return service.refuse(command, "Say which papers to show.")
    if count is not None and not 1 <= count <= LATEST_MAX:
        return service.refuse(command, f"n must be a number from 1 to {LATEST_MAX}.")
    if is_like_query(query):
        return await _latest_like(service, query, count or LATEST_DEFAULT)
    try:
        query = parse_query(query).text
    except QueryError as exc:
        return service.refuse(command, f"That query does not work: {exc}")
    query = await _tracked_spelling(service, query) or query
    papers = await service.call_store(service.store.latest_matches, query, count or LATEST_DEFAULT)
    return Reply(text=service.render("latest.txt.j2", query=query, papers=papers))


async def _latest_like(service: CommandService, text: str, count: int) -> Reply:
    """`latest like:...`: what the query would have sent this week, and what drives it."""
    try:
        query = await _resolve_like(service, text)
        preview = await service.call_store(latest_like, service.store, query, now=service.now())
    except SimilarityError as exc:
        return _refuse_like(service, exc)
    return Reply(
        text=service.render(
            "latest_like.txt.j2",
            query=query,
            papers=preview.papers[:count],
            total=len(preview.papers),
            week=preview.considered,
            terms=preview.model.top_terms(8),
        )
    )


async def _help(service: CommandService, inv: Invocation, args: str) -> Reply:
    return Reply(text=service.help_text())


BUILTIN_COMMANDS: tuple[Command, ...] = (
    Command(
        name="subscribe",
        usage="subscribe <query>",
        summary="Post new arXiv papers matching a query (or like:ID,ID,ID papers) here daily.",
        handler=_subscribe,
        arguments=(
            Argument("query", "Words, arXiv syntax (ti:diffusion AND cat:cs.CV) or like:ID,ID,ID"),
        ),
        changes_target=True,
    ),
    Command(
        name="unsubscribe",
        usage="unsubscribe <query or number from list>",
        summary="Stop posting a query's papers to this channel.",
        handler=_unsubscribe,
        arguments=(Argument("query", "The query, or its number in the list"),),
        changes_target=True,
    ),
    Command(
        name="list",
        usage="list",
        summary="Show this channel's subscriptions, numbered.",
        handler=_list,
    ),
    Command(
        name="latest",
        usage="latest <query> [n]",
        summary=(
            f"Show the newest papers for a query, or this week's for like: (n up to {LATEST_MAX})."
        ),
        handler=_latest,
        arguments=(
            Argument("query", "Words, arXiv syntax or like:ID,ID,ID"),
            Argument("n", f"How many papers (1-{LATEST_MAX})", required=False, kind="int"),
        ),
    ),
    Command(
        name="help",
        usage="help",
        summary="Show what the commands do.",
        handler=_help,
    ),
)


# -- /papers language: added to a service with `extra_commands=(LANGUAGE_COMMAND,)` -------------
LANGUAGE_OPTION = "language"  # the per-target option the cycle reads (digest.cycle)
_LANGUAGE_CODE = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]{2,8})?")  # zh, ja, de, pt-br, zh-tw
_LANGUAGE_OFF = {"off", "none", "en", "english"}  # the originals are already English


async def _language(service: CommandService, inv: Invocation, args: str) -> Reply:
    command = service.commands["language"]
    store = service.store
    code = args.strip().lower()
    if not code:
        current = await service.call_store(store.get_target_option, inv.target, LANGUAGE_OPTION)
        if not current or current == "off":
            return Reply(text="Papers in this channel are shown in English only.")
        return Reply(
            text=(
                "Papers in this channel show their title translated into "
                f"{service.markup.escape(language_name(current))} ({service.markup.code(current)})."
            )
        )
    if code in _LANGUAGE_OFF:
        await service.call_store(store.set_target_option, inv.target, LANGUAGE_OPTION, None)
        return Reply(
            text=(
                f"{service.markup.mention(inv.user_id)} turned translations off: papers in this "
                "channel are shown in English only."
            ),
            public=True,
        )
    if not _LANGUAGE_CODE.fullmatch(code):
        return service.refuse(
            command, f"{args.strip()!r} is not a language code; try zh, ja, de or off."
        )
    await service.call_store(store.set_target_option, inv.target, LANGUAGE_OPTION, code)
    text = (
        f"{service.markup.mention(inv.user_id)} set this channel's language to "
        f"{service.markup.escape(language_name(code))} ({service.markup.code(code)}): new papers "
        "show their translated title under the original, from the next daily run."
    )
    if not translation_configured(service.settings):
        text += (
            "\nTranslation is not set up on this server yet; it starts once the operator "
            "configures [translation] (provider and API key)."
        )
    return Reply(text=text, public=True)


LANGUAGE_COMMAND = Command(
    name="language",
    usage="language <code|off>",
    summary="Show new papers' titles translated (zh, ja, de...) under the original, or off.",
    handler=_language,
    arguments=(Argument("code", "A language code such as zh, ja or de; off for English only"),),
    changes_target=True,
)


# -- /papers email: added with `extra_commands=(email_command(signup),)` when email is on -------
def email_command(signup: EmailSubscriptions) -> Command:
    """`/papers email <address> [query]`: mail a confirmation link for daily email digests.

    Without a query the address follows this channel's keywords. The reply is private, and
    nothing but the confirmation is mailed until its link is clicked.
    """

    async def _email(service: CommandService, inv: Invocation, args: str) -> Reply:
        command = service.commands["email"]
        address, _, query = args.strip().partition(" ")
        if not address:
            return service.refuse(command, "Say which address should get the daily email.")
        queries = [query.strip()] if query.strip() else []
        if not queries:
            subs = await service.call_store(
                service.store.list_subscriptions, inv.target, active_only=True
            )
            queries = [s.keyword for s in subs]
        if not queries:
            return service.refuse(
                command, "This channel follows nothing yet; add a query after the address."
            )
        result = await signup.request(address, queries, custom_allowed=True)
        wanted = ", ".join(service.markup.code(q) for q in (*result.active, *result.pending))
        return Reply(
            text=(
                f"A confirmation link is on its way to {service.markup.escape(result.address)} "
                f"(at most one per hour). Daily emails with new papers for {wanted} start "
                "once it is clicked."
            )
        )

    return Command(
        name="email",
        usage="email <address> [query]",
        summary="Get new papers by email (this channel's queries, or one query) after confirming.",
        handler=_email,
        arguments=(
            Argument("address", "Your email address"),
            Argument("query", "A query; leave out for this channel's", required=False),
        ),
    )


def render_reference(
    commands: Sequence[Command] = BUILTIN_COMMANDS, *, command_name: str = "/papers"
) -> str:
    """The command reference as Markdown, for README.md (same text as `/papers help`)."""
    return (
        get_environment()
        .get_template("chat/reference.md.j2")
        .render(commands=list(commands), cmd=command_name)
        .strip()
    )


def invocation_text(command: str, *values: str | int | None) -> str:
    """Rebuild the text of a command from typed options (Discord), quoting as needed."""
    parts = [command, *(str(v) for v in values if v is not None and str(v) != "")]
    return " ".join(parts)


__all__ = [
    "BUILTIN_COMMANDS",
    "LANGUAGE_COMMAND",
    "LATEST_MAX",
    "Argument",
    "ChatMarkup",
    "Command",
    "CommandService",
    "Handler",
    "Invocation",
    "MarkdownMarkup",
    "PlainMarkup",
    "Reply",
    "email_command",
    "invocation_text",
    "render_reference",
]
