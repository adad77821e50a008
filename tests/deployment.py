"""A deployment of real `daily-papers` processes against recording stand-ins.

The exactly-once trials (tests/test_exactly_once.py and `python -m bench.exactly_once`) need to
count what reached Slack, Discord and the mail relay, never what the service believes it sent.
`Stage` starts, on a background event loop, the arXiv stand-in (a synthetic corpus submitted in
the last day, so a real clock finds it), the fake Slack Web API, the fake Discord REST API and a
real aiosmtpd relay; writes a config file; subscribes targets of every kind; runs the CLI as
real subprocesses (`python -m digest.cli ... run`); and reads what arrived at each stand-in:
`arrivals()` counts each (target, paper) pair once per message that carried it.

Both fakes can be slowed (`post_delay`) so that a kill or a signal lands during delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from digest.domain import Paper, Target
from digest.query import match_papers, parse_query
from storage.sql_store import SqlStore
from tests.fakes.arxiv_server import ArxivStandIn
from tests.fakes.discord_api import FakeDiscord, webhook_url
from tests.fakes.slack_api import BOT_TOKEN, FakeSlackApi
from tests.fakes.smtp import FakeSmtpServer, smtp_server

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DISCORD_TOKEN = "discord-bot-token"
SECRET_KEY = "exactly-once-secret-key-0123456789abcdef"
_ABS_ID = re.compile(r"arxiv\.org/abs/(\d{4}\.\d{4,5})v\d+")
_FOOTER = re.compile(r"^(.*) · arXiv:(\d{4}\.\d{4,5})v\d+$")
_SLACK_HEADING = re.compile(r"^\*(.+)\* · \d+ new$")

Unit = tuple[Target, str, str]  # (target, keyword, arxiv id): one row of the outbox


def corpus(count: int = 600, *, now: datetime | None = None, seed: int = 5) -> list[Paper]:
    """`count` synthetic papers submitted over the last day (the harvest window of a real run)."""
    from bench.corpus import generate_papers  # the benchmark's corpus generator

    end = (now or datetime.now(UTC)) - timedelta(minutes=5)
    return generate_papers(count, start=end - timedelta(hours=20), end=end, seed=seed)


def busy_keywords(papers: Sequence[Paper], count: int = 3, *, least: int = 30) -> list[str]:
    """`count` plain-phrase keywords that each match at least `least` of `papers`."""
    from bench.corpus import keyword_queries

    candidates = [parse_query(q) for q in keyword_queries(300) if ":" not in q]
    matches = match_papers(candidates, papers)
    ranked = sorted(candidates, key=lambda q: len(matches[q.text]), reverse=True)
    chosen = [q.text for q in ranked if len(matches[q.text]) >= least][:count]
    if len(chosen) < count:
        raise ValueError(f"the corpus has fewer than {count} keywords with {least}+ papers")
    return chosen


class SlowSlack(FakeSlackApi):
    """The fake Slack Web API, answering each chat.postMessage after `delay` seconds."""

    delay = 0.0

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["method"] == "chat.postMessage" and self.delay:
            await asyncio.sleep(self.delay)
        return await super()._api(request)


class SlowDiscord(FakeDiscord):
    """The fake Discord REST API, answering each message POST after `delay` seconds."""

    delay = 0.0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST" and request.path.endswith("/messages") and self.delay:
            await asyncio.sleep(self.delay)
        if request.method == "POST" and "/webhooks/" in request.path and self.delay:
            await asyncio.sleep(self.delay)
        return await super()._handle(request)


@dataclass(frozen=True)
class Targets:
    """The subscribed targets of a stage, each kind a few times."""

    slack: tuple[Target, ...] = tuple(Target("slack", f"C0EXACT{i:02d}") for i in range(3))
    discord: tuple[Target, ...] = tuple(
        Target("discord", str(930_000_000_000_000_000 + i)) for i in range(3)
    )
    webhooks: tuple[Target, ...] = tuple(
        Target("discord_webhook", webhook_url(str(940_000_000_000_000_000 + i))) for i in range(2)
    )
    email: tuple[Target, ...] = tuple(
        Target("email", f"reader{i}@lab.example.org") for i in range(2)
    )

    def all(self) -> tuple[Target, ...]:
        """Every target."""
        return (*self.slack, *self.discord, *self.webhooks, *self.email)


@dataclass
class Stage:
    """The stand-ins, a config file and a database for `daily-papers` processes to share.

    `with Stage(tmp_path) as stage:` then `stage.subscribe()`, `stage.run()` / `stage.start()`,
    and `stage.arrivals()` / `stage.owed()` to count.
    """

    root: Path
    database_url: str = ""  # empty: a SQLite file under root
    papers: list[Paper] = field(default_factory=corpus)
    lease_seconds: float = 3.0
    post_delay: float = 0.0
    targets: Targets = field(default_factory=Targets)
    extra_config: str = ""
    keywords: list[str] = field(init=False)
    arxiv: ArxivStandIn = field(init=False)
    slack: SlowSlack = field(init=False)
    discord: SlowDiscord = field(init=False)
    smtp: FakeSmtpServer = field(init=False)
    _loop: asyncio.AbstractEventLoop = field(init=False)
    _thread: threading.Thread = field(init=False)
    _stop: asyncio.Event = field(init=False)
    _done: Future[None] = field(init=False)

    # -- lifetime ---------------------------------------------------------------------------
    def __enter__(self) -> Stage:
        self.keywords = busy_keywords(self.papers)
        self.arxiv = ArxivStandIn(self.papers).start()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        ready: Future[None] = Future()
        self._done = asyncio.run_coroutine_threadsafe(self._serve(ready), self._loop)
        ready.result(timeout=30)
        self.set_delay(self.post_delay)
        self.config_path.write_text(self._config(), encoding="utf-8")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        with contextlib.suppress(Exception):
            self._done.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self.arxiv.stop()

    async def _serve(self, ready: Future[None]) -> None:
        self._stop = asyncio.Event()
        try:
            self.slack, self.discord = SlowSlack(), SlowDiscord()
            async with self.slack, self.discord, smtp_server() as smtp:
                self.smtp = smtp
                ready.set_result(None)
                await self._stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the stand-ins' loop, where their records live."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)

    def set_delay(self, seconds: float) -> None:
        """Make Slack and Discord answer each post after `seconds`."""

        def switch() -> None:
            self.slack.delay = self.discord.delay = seconds

        self._call(switch)

    # -- configuration ----------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        """The config file every process of this stage reads."""
        return self.root / "daily-papers.toml"

    def _config(self) -> str:
        database = self.database_url or f"sqlite:///{self.root / 'data' / 'daily-papers.sqlite3'}"
        return f"""
[service]
data_dir = {json.dumps(str(self.root / "data"))}
test_mode = true
lease_seconds = {self.lease_seconds}

[database]
url = {json.dumps(database)}

[keywords]
queries = {json.dumps(self.keywords)}

[arxiv]
api_url = {json.dumps(self.arxiv.url)}
retries = 1

[delivery]
retry_base_minutes = 0

[slack]
api_url = {json.dumps(self.slack.api_url)}

[discord]
api_url = {json.dumps(self.discord.api_base)}

[email]
enabled = true
smtp_host = "127.0.0.1"
smtp_port = {self.smtp.port}
security = "none"
sender = "papers@lab.example.org"

[web]
base_url = "https://papers.lab.example.org"
{self.extra_config}
"""

    def env(self) -> dict[str, str]:
        """The environment of a service process: the platforms' secrets, nothing inherited
        that could change its settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DAILY_PAPERS_")}
        # The processes run the code of the checkout this harness comes from (a bench run
        # from a snapshot of the tree must not pick up edits made meanwhile).
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")])
        )
        env.update(
            SLACK_BOT_TOKEN=BOT_TOKEN,
            DISCORD_BOT_TOKEN=DISCORD_TOKEN,
            DAILY_PAPERS_SECRET_KEY=SECRET_KEY,
        )
        for name in ("SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET", "SMTP_PASSWORD"):
            env.pop(name, None)
        return env

    def open_store(self) -> SqlStore:
        """The stage's database, migrated."""
        from digest.config import load_settings

        settings = load_settings(self.config_path, env=self.env())
        store = SqlStore.from_settings(settings)
        store.migrate()
        return store

    def subscribe(self) -> None:
        """Each target follows two of the three keywords (email addresses confirmed), and the
        keywords count as backfilled, so the first run delivers the harvest only."""
        from digest.mail import OPTION_CONFIRMED

        before = datetime.now(UTC) - timedelta(days=2)
        with self.open_store() as store:
            for index, target in enumerate(self.targets.all()):
                for keyword in (self.keywords[index % 3], self.keywords[(index + 1) % 3]):
                    store.add_subscription(target, keyword, now=before)
                if target.kind == "email":
                    store.set_target_option(target, OPTION_CONFIRMED, before.isoformat())
            for keyword in self.keywords:
                store.add_keyword(keyword, from_config=True)
                store.mark_backfilled(keyword, before)

    # -- processes --------------------------------------------------------------------------
    def command(self, *args: str) -> list[str]:
        """A `daily-papers` command line for this stage."""
        return [sys.executable, "-m", "digest.cli", "--config", str(self.config_path), *args]

    def start(self, *args: str) -> subprocess.Popen[str]:
        """Start `daily-papers ARGS` (default: run) as a process of its own."""
        return subprocess.Popen(  # noqa: S603 -- our own interpreter running our own CLI
            self.command(*(args or ("run",))),
            env=self.env(),
            cwd=self.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run `daily-papers ARGS` (default: run) to the end."""
        process = self.start(*args)
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            raise AssertionError(f"{args} did not finish in {timeout} s:\n{err}") from None
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    # -- counting ---------------------------------------------------------------------------
    def messages(self) -> int:
        """Messages the stand-ins accepted so far (posts and mails)."""
        return len(self._messages())

    def _messages(self) -> list[list[Unit]]:
        """The units (target, keyword, paper) each arrived message carried, in arrival order
        per target. A paper a target follows through two keywords is shown under both, so the
        keyword is part of the unit; an email digest shows each paper once (keyword "*")."""

        def read() -> list[list[Unit]]:
            found: list[list[Unit]] = []
            heading: dict[str, str] = {}  # Slack channel -> keyword of the section being read
            for call in self.slack.posted():
                channel = str(call.params["channel"])
                units: list[Unit] = []
                for block in call.params.get("blocks") or []:
                    text = str((block.get("text") or {}).get("text", ""))
                    title = _SLACK_HEADING.match(text)
                    if title:
                        heading[channel] = _keyword(_unescape_mrkdwn(title.group(1)))
                        continue
                    for arxiv_id in _ABS_ID.findall(text):
                        units.append(
                            (Target("slack", channel), heading.get(channel, "?"), arxiv_id)
                        )
                found.append(units)
            hooks = {_webhook_id(t.address): t for t in self.targets.webhooks}
            for channel, messages in self.discord.channel_messages.items():
                found += [_discord_units(Target("discord", channel), m) for m in messages]
            for hook, messages in self.discord.webhook_messages.items():
                found += [_discord_units(hooks[hook], m) for m in messages]
            for received in self.smtp.messages:
                body = received.message.get_body(preferencelist=("plain",))
                text = body.get_content() if body is not None else ""
                for rcpt in received.rcpt_tos:
                    target = Target("email", rcpt)
                    found.append([(target, "*", a) for a in sorted(set(_ABS_ID.findall(text)))])
            return found

        result: list[list[Unit]] = self._call(read)
        return result

    def arrivals(self) -> Counter[Unit]:
        """How many times each (target, keyword, paper) arrived."""
        return Counter(unit for message in self._messages() for unit in message)

    def owed(self) -> dict[Unit, str]:
        """Every (target, keyword, paper) the outbox holds, with its status."""
        from sqlalchemy import text

        with self.open_store() as store, store._engine.connect() as conn:  # a test's look inside
            rows = conn.execute(
                text(
                    "SELECT s.target_kind, s.target_address, k.query, d.arxiv_id, d.status "
                    "FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id "
                    "JOIN keywords k ON k.id = s.keyword_id"
                )
            ).all()
        statuses: dict[Unit, str] = {}
        for kind, address, query, arxiv_id, status in rows:
            key = (Target(kind, address), "*" if kind == "email" else _keyword(query), arxiv_id)
            # An email digest shows a paper owed through two keywords once.
            statuses[key] = status if statuses.get(key, status) == status else "mixed"
        return statuses

    def tally(self) -> Tally:
        """Lost and duplicated deliveries, as the stand-ins saw them."""
        arrived = self.arrivals()
        owed = self.owed()
        lost = sorted((t.display, k, a) for (t, k, a) in owed if arrived[(t, k, a)] == 0)
        extra = {key: n - 1 for key, n in arrived.items() if n > 1}
        strangers = sorted((t.display, k, a) for (t, k, a) in arrived if (t, k, a) not in owed)
        per_target: Counter[Target] = Counter()
        for (target, _, _), n in extra.items():
            per_target[target] += n
        return Tally(
            owed=len(owed),
            arrived=len(arrived),
            lost=lost,
            duplicated=sum(extra.values()),
            duplicated_per_target=dict(per_target),
            strangers=strangers,
            messages=self.messages(),
            pending=sum(1 for s in owed.values() if s == "pending"),
        )

    def wait_for_messages(self, count: int, *, timeout: float = 60) -> None:
        """Block until the stand-ins have accepted at least `count` messages."""
        deadline = time.monotonic() + timeout
        while self.messages() < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {count} messages arrived in {timeout} s")
            time.sleep(0.01)


@dataclass(frozen=True)
class Tally:
    """What the stand-ins saw, against what the outbox owes."""

    owed: int  # (target, keyword, paper) units in the outbox
    arrived: int  # distinct units that reached their target
    lost: list[tuple[str, str, str]]  # owed, never arrived
    duplicated: int  # extra arrivals of a unit
    duplicated_per_target: dict[Target, int]
    strangers: list[tuple[str, str, str]]  # arrived, never owed (must be empty)
    messages: int
    pending: int  # outbox rows still pending


def _keyword(text: str) -> str:
    return " ".join(text.split()).casefold()


def _unescape_mrkdwn(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _discord_units(target: Target, message: dict[str, Any]) -> list[Unit]:
    """(target, keyword, paper) of each embed: its footer reads `keyword · arXiv:ID vN`."""
    units: list[Unit] = []
    for embed in message.get("embeds") or []:
        found = _FOOTER.match(str((embed.get("footer") or {}).get("text", "")))
        if found:
            units.append((target, _keyword(found.group(1)), found.group(2)))
    return units


def _webhook_id(url: str) -> str:
    return url.rstrip("/").split("/")[-2]


def terminate(process: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    """Send `sig` to a stage process."""
    process.send_signal(sig)
