"""Settings, read once: a TOML file, overridden key by key by `DAILY_PAPERS_<SECTION>_<KEY>`.

Secrets (tokens, passwords, signing keys) never come from the file, only from the environment,
and are held in `Secrets`. Every section is a frozen dataclass; a field's `metadata["help"]`
documents it (the starter file written by `daily-papers init` and README's reference come from
the same text) and `metadata["check"]` validates it. A bad value raises `ConfigError` naming the
key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar, get_origin, get_type_hints
from urllib.parse import urlparse
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from digest.errors import ConfigError

ENV_PREFIX = "DAILY_PAPERS_"
DEFAULT_CONFIG_FILE = "daily-papers.toml"
REAL_ARXIV_HOSTS = frozenset({"export.arxiv.org", "arxiv.org", "www.arxiv.org"})
ARXIV_MIN_DELAY = 3.0  # arXiv's API terms: no more than one request every three seconds

Check = Callable[[Any], str | None]  # returns what is allowed when the value is bad


def _opt(default: Any, help: str, check: Check | None = None) -> Any:
    """A documented, optionally validated config field."""
    metadata = {"help": help, "check": check}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _positive(value: Any) -> str | None:
    return None if value > 0 else "a number greater than 0"


def _at_least(minimum: float) -> Check:
    def check(value: Any) -> str | None:
        return None if value >= minimum else f"a number of at least {minimum:g}"

    return check


def _port(value: Any) -> str | None:
    return None if 1 <= value <= 65535 else "a TCP port from 1 to 65535"


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else "a number of 0 or more"


def _one_of(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else "one of " + ", ".join(repr(c) for c in choices)

    return check


def _one_of_pattern(pattern: str, allowed: str) -> Check:
    def check(value: Any) -> str | None:
        return None if re.fullmatch(pattern, str(value)) else allowed

    return check


def _timezone(value: Any) -> str | None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        return "an IANA timezone name such as 'UTC' or 'America/New_York'"
    return None


def _http_url(value: Any) -> str | None:
    parsed = urlparse(value)
    if parsed.scheme in {"http", "https"} and parsed.netloc:
        return None
    return "an http:// or https:// URL"


def _optional_http_url(value: Any) -> str | None:
    return None if value == "" else _http_url(value)


def _cron(value: Any) -> str | None:
    allowed = "a five-field cron expression 'minute hour day month day_of_week', e.g. '0 21 * * *'"
    if len(str(value).split()) != 5:
        return allowed
    from apscheduler.triggers.cron import CronTrigger  # the scheduler that will run it

    try:
        CronTrigger.from_crontab(str(value), timezone="UTC")
    except ValueError as exc:
        return f"{allowed} ({exc})"
    return None


def _queries(value: Any) -> str | None:
    """Each tracked keyword must parse (a query, or a `like:` seed list); the error names the
    entry and what is wrong with it."""
    from digest.errors import DailyPapersError
    from digest.like_query import canonical_keyword

    for index, text in enumerate(value):
        try:
            canonical_keyword(str(text))
        except DailyPapersError as exc:  # QueryError or SimilarityError, one line each
            return f"valid queries, but entry {index + 1} ({text!r}) is not: {exc}"
    return None


_CATEGORY = re.compile(r"[a-z][a-z-]*(\.[A-Za-z][A-Za-z-]*)?")


def _categories(value: Any) -> str | None:
    if not value:
        return "at least one arXiv category such as 'cs.CV', or ['all']"
    for text in value:
        if str(text).strip().lower() != "all" and not _CATEGORY.fullmatch(str(text)):
            return (
                f"arXiv category names such as 'cs.CV', 'stat.ML', 'hep-th' or 'all' "
                f"({text!r} is not one)"
            )
    return None


_KIND = re.compile(r"[a-z][a-z0-9_]*")


def _optional_target(value: Any) -> str | None:
    # The form only: which kinds exist is the channel registry's to say (digest.app checks
    # the kind when a run or serve starts).
    if value == "":
        return None
    kind, sep, address = str(value).partition(":")
    if sep and _KIND.fullmatch(kind.strip().lower()) and address.strip():
        return None
    return "'' (none) or KIND:ADDRESS, e.g. 'slack:C0123ABCD' or 'email:admin@lab.org'"


def _language(value: Any) -> str | None:
    if value == "" or (2 <= len(value) <= 8 and value.replace("-", "").isalpha()):
        return None
    return "'' (off) or a language code such as 'zh', 'ja', 'de', 'pt-BR'"


# arXiv's computer science and statistics archives: the set DailyArXiv follows.
DEFAULT_CATEGORIES: list[str] = [
    "cs.AI",
    "cs.AR",
    "cs.CC",
    "cs.CE",
    "cs.CG",
    "cs.CL",
    "cs.CR",
    "cs.CV",
    "cs.CY",
    "cs.DB",
    "cs.DC",
    "cs.DL",
    "cs.DM",
    "cs.DS",
    "cs.ET",
    "cs.FL",
    "cs.GL",
    "cs.GR",
    "cs.GT",
    "cs.HC",
    "cs.IR",
    "cs.IT",
    "cs.LG",
    "cs.LO",
    "cs.MA",
    "cs.MM",
    "cs.MS",
    "cs.NA",
    "cs.NE",
    "cs.NI",
    "cs.OH",
    "cs.OS",
    "cs.PF",
    "cs.PL",
    "cs.RO",
    "cs.SC",
    "cs.SD",
    "cs.SE",
    "cs.SI",
    "cs.SY",
    "stat.AP",
    "stat.CO",
    "stat.ME",
    "stat.ML",
    "stat.OT",
    "stat.TH",
]


@dataclass(frozen=True)
class ServiceSettings:
    """[service]"""

    data_dir: str = _opt("data", "Folder for the SQLite database, README snapshot and archive.")
    timezone: str = _opt("UTC", "Timezone for dates shown to people.", _timezone)
    log_level: str = _opt(
        "INFO", "DEBUG, INFO, WARNING or ERROR.", _one_of("DEBUG", "INFO", "WARNING", "ERROR")
    )
    test_mode: bool = _opt(
        False,
        "Explicit test switch: zero delays and backoff. Refused against the real arXiv API.",
    )
    lease_seconds: float = _opt(
        60.0,
        "One cycle at a time: a running cycle renews its database lease every third of this; "
        "a killed one's lease is taken over this long after its last renewal.",
        _at_least(3),
    )


@dataclass(frozen=True)
class DatabaseSettings:
    """[database]"""

    url: str = _opt(
        "",
        "SQLAlchemy URL. Empty: sqlite in data_dir. "
        "PostgreSQL: 'postgresql+psycopg://user@host/db'.",
    )


@dataclass(frozen=True)
class KeywordSettings:
    """[keywords]"""

    queries: list[str] = _opt(
        [],
        "Tracked keyword queries. A plain phrase works like DailyArXiv; arXiv syntax "
        "(ti: abs: au: cat: all:, quotes, AND OR ANDNOT, parentheses) is accepted too, and "
        "'like:ID,ID,ID' follows papers like 3 to 50 seed papers (docs/like.md).",
        _queries,
    )
    publish_chat_queries: bool = _opt(
        True,
        "List the queries chat channels follow in the README and on the sign-up page. Email "
        "readers' own queries are never listed, unless you add them to the config or with "
        "`daily-papers keywords add`.",
    )


@dataclass(frozen=True)
class ArxivSettings:
    """[arxiv]"""

    api_url: str = _opt(
        "https://export.arxiv.org/api/query",
        "The arXiv API endpoint (a mirror, or a local stand-in in tests).",
        _http_url,
    )
    contact: str = _opt(
        "", "Your email or URL, sent in the User-Agent so arXiv can reach the operator."
    )
    categories: list[str] = _opt(
        DEFAULT_CATEGORIES,
        "Categories harvested daily. ['all'] means every arXiv category. Default: all cs.* "
        "and stat.*.",
        _categories,
    )
    lookback_days: int = _opt(
        7, "Days of submissions re-read each day (arXiv announces late).", _positive
    )
    page_size: int = _opt(
        2000,
        "Entries per request (arXiv's maximum is 2000).",
        lambda v: None if 1 <= v <= 2000 else "a whole number from 1 to 2000",
    )
    categories_per_request: int = _opt(
        25, "At most this many categories OR-ed in one query (long lists are split).", _positive
    )
    delay_seconds: float = _opt(
        3.0,
        "Seconds between requests; never below 3 against the real arXiv API.",
        _non_negative,
    )
    timeout_seconds: float = _opt(60.0, "Timeout of one request.", _positive)
    retries: int = _opt(
        4,
        "Retries of a failed request (429, 5xx, timeout, empty or malformed page).",
        _non_negative,
    )
    backoff_max_seconds: float = _opt(120.0, "Longest wait between retries.", _positive)
    backfill_limit: int = _opt(100, "Papers fetched once for a newly added keyword.", _non_negative)
    backfill_budget_seconds: float = _opt(
        300.0,
        "Time each cycle may spend on new keywords' backfills, after the day's deliveries; "
        "the rest wait for the next cycle, oldest request first.",
        _non_negative,
    )
    announce_revisions: bool = _opt(
        False, "Deliver a paper again when a new version (v2, v3...) appears."
    )


@dataclass(frozen=True)
class ReadmeSettings:
    """[readme]"""

    enabled: bool = _opt(True, "Render the README snapshot after each cycle.")
    path: str = _opt("", "Where the snapshot is written. Empty: README.md in data_dir.")
    max_papers: int = _opt(100, "Latest N papers per keyword.", _positive)
    link: str = _opt("abs", "Titles link to the 'abs' page or the 'pdf'.", _one_of("abs", "pdf"))
    timezone: str = _opt("UTC", "Timezone of the 'Last update' date.", _timezone)
    max_bytes: int = _opt(
        500_000,
        "Size limit (GitHub stops rendering at 512 KB): past it, fewer rows per keyword, then "
        "an index with a page per keyword under papers/.",
        _positive,
    )
    git_commit: bool = _opt(False, "Commit the snapshot when it changed (and push if a remote).")
    public_url: str = _opt(
        "",
        "Where readers can see the snapshot (e.g. its GitHub page). Email digests too long for "
        "a mail app link there for the rest when there is no web server (web.base_url).",
        _optional_http_url,
    )


@dataclass(frozen=True)
class FeedsSettings:
    """[feeds]"""

    enabled: bool = _opt(
        False,
        "Write an Atom feed per keyword and feeds/index.opml next to the README (needs "
        "readme.enabled); the web server serves them under /feeds/.",
    )
    entries: int = _opt(100, "Latest N papers in each keyword's feed.", _positive)
    base_url: str = _opt(
        "",
        "Public URL of the feeds folder (e.g. https://lab.github.io/papers/feeds), for the "
        "feeds' self links and the OPML. Empty: web.base_url + /feeds when set, else relative.",
        _optional_http_url,
    )


@dataclass(frozen=True)
class ScheduleSettings:
    """[schedule]"""

    cron: str = _opt(
        "0 21 * * *",
        "When `serve` runs the cycle. Default: daily after arXiv's 20:00 ET announcement.",
        _cron,
    )
    timezone: str = _opt("America/New_York", "Timezone of the cron expression.", _timezone)
    misfire_grace_hours: float = _opt(
        6.0, "A run missed by less than this (the service was down) still happens.", _positive
    )


@dataclass(frozen=True)
class DeliverySettings:
    """[delivery]"""

    max_attempts: int = _opt(
        8, "Give up on a delivery after this many transient failures.", _positive
    )
    retry_base_minutes: float = _opt(
        30.0,
        "First retry delay of a transiently failed delivery (doubles each time).",
        _non_negative,
    )


@dataclass(frozen=True)
class LimitSettings:
    """[limits]"""

    subscriptions_per_target: int = _opt(
        50, "Most subscriptions one channel or address may have.", _positive
    )


@dataclass(frozen=True)
class AlertSettings:
    """[alerts]"""

    target: str = _opt(
        "",
        "Optional admin target for loud alerts, e.g. 'slack:C0123' or 'email:admin@lab.org'.",
        _optional_target,
    )
    zero_paper_days: int = _opt(
        2, "Alert after this many announcement days in a row with zero new papers.", _positive
    )
    failed_cycles: int = _opt(3, "Alert after this many failed cycles in a row.", _positive)


@dataclass(frozen=True)
class SlackSettings:
    """[slack]"""

    api_url: str = _opt("https://slack.com/api/", "Slack Web API base URL.", _http_url)
    command: str = _opt("/papers", "Slash command name.")
    admins_only: bool = _opt(
        False, "Only workspace admins/owners (or admin_user_ids) may change subscriptions."
    )
    admin_user_ids: list[str] = _opt([], "User ids allowed to change subscriptions.")


@dataclass(frozen=True)
class DiscordSettings:
    """[discord]"""

    api_url: str = _opt("https://discord.com/api/v10", "Discord REST base URL.", _http_url)
    guild_ids: list[str] = _opt([], "Sync /papers to these guilds only (fast, for testing).")
    require_manage_channels: bool = _opt(
        True, "Only members with Manage Channels may change a channel's subscriptions."
    )
    webhooks: list[str] = _opt(
        [], "Bot-less targets: 'WEBHOOK_URL query' strings subscribed at start-up."
    )
    command: str = _opt(
        "papers",
        "Name of the slash command group (/papers): 1-32 lowercase letters, digits, - or _.",
        _one_of_pattern(r"^[-_a-z0-9]{1,32}$", "1-32 lowercase letters, digits, '-' or '_'"),
    )


@dataclass(frozen=True)
class EmailSettings:
    """[email]"""

    enabled: bool = _opt(False, "Send email digests.")
    smtp_host: str = _opt("localhost", "SMTP relay host.")
    smtp_port: int = _opt(587, "SMTP relay port.", _port)
    smtp_username: str = _opt("", "SMTP user (password: env SMTP_PASSWORD).")
    security: str = _opt(
        "starttls", "'starttls', 'tls' (implicit) or 'none'.", _one_of("starttls", "tls", "none")
    )
    sender: str = _opt("daily-papers@localhost", "From address of digests.")
    list_id: str = _opt("daily-papers.localhost", "List-Id of the digests.")
    send_empty: bool = _opt(False, "Send a short 'nothing new' note instead of silence.")
    allow_custom_queries: bool = _opt(False, "The web form accepts free-form queries.")
    concurrency: int = _opt(4, "Messages in flight at once.", _positive)


@dataclass(frozen=True)
class WebSettings:
    """[web]"""

    host: str = _opt("127.0.0.1", "Address the web server listens on.")
    port: int = _opt(8080, "Port of the web server.", _port)
    base_url: str = _opt(
        "", "Public URL for links in emails (e.g. https://papers.lab.org).", _optional_http_url
    )


@dataclass(frozen=True)
class TranslationSettings:
    """[translation]"""

    language: str = _opt(
        "", "Translate titles and abstracts into this language ('' = off).", _language
    )
    provider: str = _opt("openai", "Any OpenAI-compatible chat-completions API.", _one_of("openai"))
    base_url: str = _opt("https://api.openai.com/v1", "The provider's base URL.", _http_url)
    model: str = _opt("gpt-4o-mini", "Model name.")
    concurrency: int = _opt(4, "Translations in flight at once.", _positive)
    timeout_seconds: float = _opt(60.0, "Timeout of one translation request.", _positive)
    retries: int = _opt(
        2,
        "Retries of a failed, empty, truncated or still-English answer; then the paper is "
        "left untranslated until the next cycle (a title that still fails is left in English "
        "and its abstract's translation kept).",
        _non_negative,
    )
    backoff_max_seconds: float = _opt(30.0, "Longest wait between retries.", _non_negative)
    deadline_seconds: float = _opt(
        120.0,
        "Longest time a cycle spends translating before it delivers (the rest waits for the "
        "next cycle, so digests are never late).",
        _positive,
    )
    max_age_days: int = _opt(
        7,
        "Translate matched papers first stored (or revised with a new title or abstract) "
        "within this many days.",
        _positive,
    )


@dataclass(frozen=True)
class SummarySettings:
    """[summary]"""

    enabled: bool = _opt(
        False,
        "Show a one-sentence TL;DR of each paper in email digests, chat posts and the Markdown "
        "digest, written by [translation]'s provider (its base_url, TRANSLATION_API_KEY, "
        "timeout, retries, concurrency and max_age_days). A paper whose TL;DR is not ready by "
        "the deadline is delivered without one.",
    )
    model: str = _opt("", "Model name ('' = translation.model).")
    prompt: str = _opt(
        "",
        "System prompt ('' = the built-in one: one plain English sentence of at most 30 words "
        "saying what the paper does and finds).",
    )
    deadline_seconds: float = _opt(
        60.0,
        "Longest time a cycle spends writing TL;DRs before it delivers (after translation's "
        "own deadline; the rest waits for the next cycle).",
        _positive,
    )


@dataclass(frozen=True)
class DigestSettings:
    """[digest]"""

    archive_dir: str = _opt("", "One Markdown digest per day is written here ('' = off).")
    relevance_from: int = _opt(
        10,
        "A keyword with at least this many papers in one email digest or chat post lists them "
        "most relevant first (learned from its earlier matches), so the email's 'and N more' "
        "cut drops the least relevant; shorter lists stay newest first (0 = always newest "
        "first). The README and the Markdown digest keep newest first.",
        _non_negative,
    )


@dataclass(frozen=True)
class Secrets:
    """Secrets, only ever from the environment; repr never shows them."""

    slack_bot_token: str = field(default="", repr=False)
    slack_app_token: str = field(default="", repr=False)
    slack_signing_secret: str = field(default="", repr=False)
    discord_bot_token: str = field(default="", repr=False)
    smtp_password: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    translation_api_key: str = field(default="", repr=False)

    ENV_NAMES: ClassVar[dict[str, str]] = {
        "slack_bot_token": "SLACK_BOT_TOKEN",
        "slack_app_token": "SLACK_APP_TOKEN",
        "slack_signing_secret": "SLACK_SIGNING_SECRET",
        "discord_bot_token": "DISCORD_BOT_TOKEN",
        "smtp_password": "SMTP_PASSWORD",
        "secret_key": "DAILY_PAPERS_SECRET_KEY",
        "translation_api_key": "TRANSLATION_API_KEY",
    }

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Secrets:
        """Collect the secrets from an environment mapping."""
        return cls(**{attr: env.get(name, "") for attr, name in cls.ENV_NAMES.items()})

    def is_set(self, variable: str) -> bool:
        """Whether the secret read from environment variable `variable` has a value."""
        for attr, name in self.ENV_NAMES.items():
            if name == variable:
                return bool(getattr(self, attr))
        raise KeyError(f"{variable} is not one of the secrets daily-papers reads")


@dataclass(frozen=True)
class Settings:
    """All settings. Construct with `load_settings`; pass it down, never re-read."""

    service: ServiceSettings = field(default_factory=ServiceSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    keywords: KeywordSettings = field(default_factory=KeywordSettings)
    arxiv: ArxivSettings = field(default_factory=ArxivSettings)
    readme: ReadmeSettings = field(default_factory=ReadmeSettings)
    feeds: FeedsSettings = field(default_factory=FeedsSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    slack: SlackSettings = field(default_factory=SlackSettings)
    discord: DiscordSettings = field(default_factory=DiscordSettings)
    email: EmailSettings = field(default_factory=EmailSettings)
    web: WebSettings = field(default_factory=WebSettings)
    translation: TranslationSettings = field(default_factory=TranslationSettings)
    summary: SummarySettings = field(default_factory=SummarySettings)
    digest: DigestSettings = field(default_factory=DigestSettings)
    secrets: Secrets = field(default_factory=Secrets, repr=False)
    source: str = "defaults"  # where the settings came from, for messages
    # The sections of channels outside the core (a ChannelSpec's `settings`), by name; a
    # channel reads its own with `channel_section`.
    channels: Mapping[str, Any] = field(default_factory=dict)

    # -- derived values ---------------------------------------------------------------
    @property
    def data_path(self) -> Path:
        """The data folder."""
        return Path(self.service.data_dir)

    @property
    def database_url(self) -> str:
        """The database URL, defaulting to SQLite in the data folder."""
        if self.database.url:
            return self.database.url
        return f"sqlite:///{self.data_path / 'daily-papers.sqlite3'}"

    @property
    def readme_path(self) -> Path:
        """Where the README snapshot goes."""
        return Path(self.readme.path) if self.readme.path else self.data_path / "README.md"

    @property
    def feeds_path(self) -> Path:
        """The feeds folder: `feeds/` next to the README, so whatever publishes the README
        (a GitHub Pages site of its repository) publishes the feeds too."""
        from digest.readme import FEEDS_DIR  # the README links into it by the same name

        return self.readme_path.parent / FEEDS_DIR

    @property
    def feeds_base_url(self) -> str:
        """Where the feeds are read publicly ('' when unknown: links stay relative)."""
        if self.feeds.base_url:
            return self.feeds.base_url.rstrip("/")
        if self.web.base_url:
            return self.web.base_url.rstrip("/") + "/feeds"
        return ""

    @property
    def arxiv_is_real(self) -> bool:
        """True when api_url points at arXiv itself (politeness floors apply)."""
        return (urlparse(self.arxiv.api_url).hostname or "") in REAL_ARXIV_HOSTS

    @property
    def arxiv_delay(self) -> float:
        """Seconds between arXiv requests: configured, never below 3 against the real API."""
        if self.arxiv_is_real:
            return max(ARXIV_MIN_DELAY, self.arxiv.delay_seconds)
        return 0.0 if self.service.test_mode else self.arxiv.delay_seconds


SECTIONS: dict[str, type] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in dataclasses.fields(Settings)
    if f.name not in {"secrets", "source", "channels"}
}

Extensions = Mapping[str, type] | Callable[[], Mapping[str, type]]
"""The settings sections of registered channels outside the core, by section name; a callable
is called only when the file or the environment names a section the core does not know."""

_T = TypeVar("_T")


def channel_section(settings: Settings, name: str, cls: type[_T]) -> _T:
    """A channel's own settings section: as configured, or its defaults when absent."""
    found = settings.channels.get(name)
    return found if isinstance(found, cls) else cls()


def _resolve(extensions: Extensions | None) -> dict[str, type]:
    if extensions is None:
        return {}
    found = extensions() if callable(extensions) else extensions
    return {name: cls for name, cls in found.items() if name not in SECTIONS}


def _type_name(tp: Any) -> str:
    if tp is bool:
        return "true or false"
    if tp is int:
        return "a whole number"
    if tp is float:
        return "a number"
    if get_origin(tp) is list:
        return "a list of strings"
    return "a string"


def _coerce(key: str, raw: Any, tp: Any, *, from_env: bool) -> Any:
    """Convert a TOML or environment value to the field's type, or raise ConfigError."""
    shown = repr(raw)

    def bad(allowed: str) -> ConfigError:
        source = f"environment variable {env_name(key)}" if from_env else key
        return ConfigError(f"{source} = {shown} is not valid: expected {allowed}")

    if tp is bool:
        if isinstance(raw, bool):
            return raw
        if from_env and isinstance(raw, str):
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off", ""}:
                return False
        raise bad(_type_name(tp))
    if tp is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if from_env and isinstance(raw, str):
            try:
                return int(raw.strip())
            except ValueError:
                pass
        raise bad(_type_name(tp))
    if tp is float:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        if from_env and isinstance(raw, str):
            try:
                return float(raw.strip())
            except ValueError:
                pass
        raise bad(_type_name(tp))
    if get_origin(tp) is list:
        if from_env and isinstance(raw, str):
            text = raw.strip()
            if text.startswith("["):
                try:
                    raw = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise bad("a JSON array of strings or a comma-separated list") from exc
            else:
                raw = [part.strip() for part in text.split(",") if part.strip()]
        if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
            return list(raw)
        raise bad(_type_name(tp))
    if isinstance(raw, str):
        return raw
    raise bad(_type_name(tp))


def env_name(key: str) -> str:
    """`arxiv.api_url` -> `DAILY_PAPERS_ARXIV_API_URL`."""
    return ENV_PREFIX + key.replace(".", "_").upper()


def _build_section(name: str, cls: type, table: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    hints = get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown key {name}.{unknown[0]} in the config file; [{name}] accepts: "
            + ", ".join(sorted(known))
        )
    values: dict[str, Any] = {}
    for attr, fld in known.items():
        key = f"{name}.{attr}"
        tp = hints[attr]
        if env_name(key) in env:
            value = _coerce(key, env[env_name(key)], tp, from_env=True)
        elif attr in table:
            value = _coerce(key, table[attr], tp, from_env=False)
        else:
            continue
        check: Check | None = fld.metadata.get("check")
        if check is not None:
            allowed = check(value)
            if allowed is not None:
                raise ConfigError(f"{key} = {value!r} is not valid: expected {allowed}")
        values[attr] = value
    return cls(**values)


def _check_env_names(env: Mapping[str, str], sections: Mapping[str, type]) -> None:
    """A `DAILY_PAPERS_<SECTION>_<KEY>` variable naming no key is a typo, not something to skip."""
    known = {
        env_name(f"{name}.{fld.name}")
        for name, cls in sections.items()
        for fld in dataclasses.fields(cls)
    }
    known |= {ENV_PREFIX + "CONFIG", *Secrets.ENV_NAMES.values()}
    prefixes = tuple(ENV_PREFIX + name.upper() + "_" for name in sections)
    for variable in sorted(env):
        if variable.startswith(prefixes) and variable not in known:
            close = difflib.get_close_matches(variable, sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(
                f"environment variable {variable} names no setting{hint} "
                "(`daily-papers init` writes every key; "
                "the variable for [section] key is DAILY_PAPERS_SECTION_KEY)"
            )


def _utf8_text(path: Path, data: bytes) -> str:
    """The file's bytes as text; ConfigError naming the file and where when it is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", "replace")) + 1
        raise ConfigError(
            f"{path} is not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line}, column "
            f"{column}; save it as UTF-8 (the encoding TOML requires)"
        ) from None


def _check_env_encoding(env: Mapping[str, str]) -> None:
    """Our variables must be UTF-8 text: Python passes undecodable bytes on as lone surrogates,
    which would fail later, far from their cause."""
    ours = {ENV_PREFIX + "CONFIG", *Secrets.ENV_NAMES.values()}
    for variable in sorted(env):
        if not (variable.startswith(ENV_PREFIX) or variable in ours):
            continue
        try:
            env[variable].encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ConfigError(
                f"environment variable {variable} is not UTF-8 text (at position "
                f"{exc.start + 1}); set it in UTF-8"
            ) from None


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    require_file: bool = False,
    extensions: Extensions | None = None,
) -> Settings:
    """Read the config file (if any) and the environment into `Settings`.

    `path` None means `daily-papers.toml` in the working directory when it exists, else the
    defaults. A path given explicitly must exist. `extensions`: the sections of channels
    outside the core (`digest.app.channel_settings`).
    """
    env = dict(os.environ) if env is None else dict(env)
    _check_env_encoding(env)
    if path is None and env.get(ENV_PREFIX + "CONFIG"):
        path, require_file = env[ENV_PREFIX + "CONFIG"], True
    file_path = Path(path) if path is not None else Path(DEFAULT_CONFIG_FILE)
    data: dict[str, Any] = {}
    source = "defaults"
    if file_path.exists():
        try:
            data = tomllib.loads(_utf8_text(file_path, file_path.read_bytes()))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file_path} is not valid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read {file_path}: {exc.strerror}") from exc
        source = str(file_path)
    elif path is not None or require_file:
        raise ConfigError(
            f"config file {file_path} does not exist (create one with `daily-papers init`)"
        )

    core_prefixes = tuple(ENV_PREFIX + name.upper() + "_" for name in SECTIONS)
    foreign_env = [v for v in env if v.startswith(ENV_PREFIX) and not v.startswith(core_prefixes)]
    extra = _resolve(extensions) if set(data) - set(SECTIONS) or foreign_env else {}
    every = {**SECTIONS, **extra}
    unknown = sorted(set(data) - set(every))
    if unknown:
        raise ConfigError(
            f"unknown section [{unknown[0]}] in {source}; known sections: " + ", ".join(every)
        )
    _check_env_names(env, every)
    sections: dict[str, Any] = {}
    for name, cls in every.items():
        table = data.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{name} in {source} must be a [{name}] table")
        sections[name] = _build_section(name, cls, table, env)
    core = {name: sections.pop(name) for name in SECTIONS}
    settings = Settings(**core, secrets=Secrets.from_env(env), source=source, channels=sections)
    if settings.service.test_mode and settings.arxiv_is_real:
        raise ConfigError(
            "service.test_mode = true is not allowed while arxiv.api_url points at arXiv "
            f"({settings.arxiv.api_url}): it removes the delay arXiv's terms require"
        )
    _check_together(settings)
    return settings


def _check_together(settings: Settings) -> None:
    """Checks across sections: what one setting needs from another."""
    if settings.feeds.enabled and not settings.readme.enabled:
        raise ConfigError(
            "feeds.enabled = true needs readme.enabled = true: the feeds are written next to "
            "the README, when it is rendered"
        )


def settings_for_tests(
    *, extensions: Mapping[str, type] | None = None, **sections: Mapping[str, Any]
) -> Settings:
    """Settings built from in-memory tables (no file, no environment) with test mode on;
    `extensions` are channel sections outside the core (tables for them go in `sections`)."""
    tables: dict[str, Any] = {name: dict(table) for name, table in sections.items()}
    tables.setdefault("service", {}).setdefault("test_mode", True)
    tables.setdefault("arxiv", {}).setdefault("api_url", "http://127.0.0.1:9/api/query")
    extra = _resolve(extensions)
    unknown = sorted(set(tables) - set(SECTIONS) - set(extra))
    if unknown:
        raise ConfigError(f"unknown section [{unknown[0]}] (pass its class in extensions)")
    built = {
        name: _build_section(name, cls, tables.get(name, {}), {}) for name, cls in SECTIONS.items()
    }
    channels = {
        name: _build_section(name, cls, tables.get(name, {}), {}) for name, cls in extra.items()
    }
    settings = Settings(**built, secrets=Secrets(), source="tests", channels=channels)
    _check_together(settings)
    return settings


def starter_file(extensions: Extensions | None = None) -> str:
    """The commented starter config that `daily-papers init` writes."""
    lines = [
        "# daily-papers configuration.",
        "# Every key can be overridden by an environment variable DAILY_PAPERS_<SECTION>_<KEY>,",
        "# e.g. DAILY_PAPERS_ARXIV_CONTACT=me@lab.org. Secrets are read from the environment",
        "# only: " + ", ".join(Secrets.ENV_NAMES.values()) + ".",
        "",
    ]
    for name, cls in {**SECTIONS, **_resolve(extensions)}.items():
        lines.append(f"[{name}]")
        for fld in dataclasses.fields(cls):
            default = (
                fld.default_factory()
                if fld.default_factory is not dataclasses.MISSING
                else fld.default
            )
            if name == "keywords" and fld.name == "queries":
                default = [
                    "Video Anomaly Detection",
                    "Anomaly Detection",
                    "Large Language Models",
                    "Diffusion Models",
                ]
            lines.append(f"# {fld.metadata.get('help', '')}")
            rendered = _toml_value(default)
            commented = name != "keywords" and not (name == "arxiv" and fld.name == "contact")
            entry = f"{fld.name} = {rendered}"
            if commented:
                entry = "\n".join("# " + line for line in entry.splitlines())
            lines.append(entry)
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        if len(value) > 6:
            inner = ",\n  ".join(json.dumps(v) for v in value)
            return "[\n  " + inner + ",\n]"
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def settings_reference(extensions: Extensions | None = None) -> str:
    """The Markdown configuration reference in README.md, generated from the field help (the
    channels' own sections included when given)."""
    lines: list[str] = []
    for name, cls in {**SECTIONS, **_resolve(extensions)}.items():
        lines += [
            "",
            f"**[{name}]**",
            "",
            "| key | default | what it does |",
            "| --- | --- | --- |",
        ]
        for fld in dataclasses.fields(cls):
            if fld.default_factory is not dataclasses.MISSING:
                default = fld.default_factory()
            else:
                default = fld.default
            if isinstance(default, list) and len(default) > 4:
                shown = f"{len(default)} entries (see `daily-papers init`)"
            else:
                shown = f"`{_toml_value(default)}`"
            help_text = str(fld.metadata.get("help", "")).replace("|", "\\|")
            lines.append(f"| `{name}.{fld.name}` | {shown} | {help_text} |")
    lines += ["", "| secret | environment variable |", "| --- | --- |"]
    lines += [f"| {attr} | `{env}` |" for attr, env in Secrets.ENV_NAMES.items()]
    return "\n".join(lines).strip() + "\n"
