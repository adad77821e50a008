"""The platform-free /papers command layer, against a real SQLite store."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from datetime import UTC, datetime, timedelta

import pytest

from bot.commands import (
    BUILTIN_COMMANDS,
    LATEST_MAX,
    Command,
    CommandService,
    Invocation,
    MarkdownMarkup,
    PlainMarkup,
    Reply,
    render_reference,
)
from bot.slack_channel import SlackMarkup
from digest.config import settings_for_tests
from digest.domain import Paper, Target
from storage.sql_store import SqlStore
from tests.reference_papers import load_reference_sections

NOW = datetime(2025, 2, 6, 12, 0, tzinfo=UTC)
CHANNEL = Target("slack", "C0123TEST")
OTHER = Target("slack", "C0999OTHER")


@dataclasses.dataclass
class Harness:
    """A command service over a real store, with the backfill requests it made."""

    store: SqlStore
    service: CommandService
    backfills: list[str]

    async def run(self, text: str, *, may_manage: bool = True, target: Target = CHANNEL) -> Reply:
        """Run one command as user U1 in `target`."""
        return await self.service.handle(Invocation(target, "U1", may_manage, text))


def _service(
    store: SqlStore, backfills: list[str], **settings: dict[str, object]
) -> CommandService:
    return CommandService(
        store=store,
        settings=settings_for_tests(**settings),
        request_backfill=backfills.append,
        markup=PlainMarkup(),
        clock=lambda: NOW,
    )


@pytest.fixture
def harness(sqlite_store: SqlStore) -> Harness:
    """A service with plain markup and the default limits."""
    backfills: list[str] = []
    return Harness(sqlite_store, _service(sqlite_store, backfills), backfills)


def _seed(store: SqlStore, keyword: str) -> list[Paper]:
    """Store the reference README's papers of `keyword` as its backfilled matches."""
    section = next(s for s in load_reference_sections() if s.keyword == keyword)
    store.add_keyword(keyword)
    store.commit_harvest(
        papers=section.papers,
        matches={keyword: [p.arxiv_id for p in section.papers]},
        deliverable=(),
        now=NOW - timedelta(days=1),
    )
    store.mark_backfilled(keyword, NOW - timedelta(days=1))
    return sorted(section.papers, key=lambda p: (p.updated, p.arxiv_id), reverse=True)


async def test_empty_text_and_help_list_every_command(harness: Harness) -> None:
    """`/papers` alone and `/papers help` show every command's usage and summary, privately."""
    for text in ("", "help", "HELP"):
        reply = await harness.run(text)
        assert reply.ok
        assert not reply.public
        for command in BUILTIN_COMMANDS:
            assert f"/papers {command.usage}" in reply.text
            assert command.summary in reply.text


async def test_subscribe_stores_and_reports_count_and_newest_three(harness: Harness) -> None:
    """subscribe to a tracked keyword: public confirmation, match count, newest three papers."""
    papers = _seed(harness.store, "Video Anomaly Detection")
    reply = await harness.run("subscribe   video anomaly detection ")
    assert reply.ok
    assert reply.public
    assert reply.text.startswith("U1 subscribed this channel to `Video Anomaly Detection`")
    assert f"{len(papers)} stored papers match" in reply.text
    for paper in papers[:3]:
        assert paper.abs_url in reply.text
    assert papers[3].abs_url not in reply.text
    [sub] = harness.store.list_subscriptions(CHANNEL)
    assert sub.keyword == "Video Anomaly Detection"
    assert sub.active
    # Already backfilled: nothing is asked of arXiv.
    assert harness.backfills == []


async def test_subscribe_new_keyword_requests_backfill_without_waiting(harness: Harness) -> None:
    """A keyword new to the service is handed to the backfill; the reply says so at once."""
    reply = await harness.run('subscribe ti:"graph neural" AND cat:cs.LG')
    assert reply.ok
    assert "No stored papers match yet" in reply.text
    assert "in the background" in reply.text
    assert harness.backfills == ['ti:"graph neural" AND cat:cs.LG']
    assert [s.keyword for s in harness.store.list_subscriptions(CHANNEL)] == [
        'ti:"graph neural" AND cat:cs.LG'
    ]


async def test_backfill_failure_does_not_break_the_reply(sqlite_store: SqlStore) -> None:
    """A request_backfill that raises is logged; the subscription and its reply still happen."""

    def broken(query: str) -> None:
        raise RuntimeError("scheduler is down")

    service = CommandService(
        store=sqlite_store,
        settings=settings_for_tests(),
        request_backfill=broken,
        clock=lambda: NOW,
    )
    reply = await service.handle(Invocation(CHANNEL, "U1", True, "subscribe fresh topic"))
    assert reply.ok
    assert reply.public
    assert len(sqlite_store.list_subscriptions(CHANNEL)) == 1


async def test_subscribe_twice_case_insensitively_is_refused(harness: Harness) -> None:
    """The same query in other case or spacing is recognised; no second subscription."""
    await harness.run("subscribe Diffusion Models")
    reply = await harness.run("subscribe diffusion   MODELS")
    assert not reply.ok
    assert not reply.public
    assert "already follows `Diffusion Models`" in reply.text
    assert len(harness.store.list_subscriptions(CHANNEL)) == 1


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("subscribe", "Say which papers to follow."),
        ("subscribe ti:(", "That query does not work: "),
        ('subscribe "unclosed phrase', "That query does not work: "),
        ("subscribe cat:", "That query does not work: "),
    ],
)
async def test_bad_subscribe_gets_one_line_reason_and_usage(
    harness: Harness, text: str, reason: str
) -> None:
    """Malformed input: a one-line reason, then the usage line; nothing stored, no traceback."""
    reply = await harness.run(text)
    assert not reply.ok
    assert not reply.public
    first, second = reply.text.split("\n")
    assert first.startswith(reason)
    assert second == "Usage: `/papers subscribe <query>`"
    assert "Traceback" not in reply.text
    assert harness.store.list_subscriptions(CHANNEL) == []


async def test_limit_per_channel_is_enforced(sqlite_store: SqlStore) -> None:
    """At most limits.subscriptions_per_target per channel; other channels are unaffected."""
    backfills: list[str] = []
    harness = Harness(
        sqlite_store,
        _service(sqlite_store, backfills, limits={"subscriptions_per_target": 2}),
        backfills,
    )
    assert (await harness.run("subscribe one")).ok
    assert (await harness.run("subscribe two")).ok
    refused = await harness.run("subscribe three")
    assert not refused.ok
    assert "already has 2 subscriptions (the limit is 2)" in refused.text
    assert [s.keyword for s in sqlite_store.list_subscriptions(CHANNEL)] == ["one", "two"]
    assert (await harness.run("subscribe three", target=OTHER)).ok
    # Freeing a slot makes room again.
    assert (await harness.run("unsubscribe one")).ok
    assert (await harness.run("subscribe three")).ok


async def test_disabled_subscription_is_listed_with_reason_and_can_resume(
    harness: Harness,
) -> None:
    """list shows why a subscription stopped; subscribing again re-activates it (no new slot)."""
    await harness.run("subscribe quantum error correction")
    [sub] = harness.store.list_subscriptions(CHANNEL)
    harness.store.disable_subscription(sub.id, "is_archived: the channel is archived")
    listing = await harness.run("list")
    assert "1. `quantum error correction` (paused: is_archived: the channel is archived" in (
        listing.text
    )
    again = await harness.run("subscribe Quantum Error Correction")
    assert again.ok
    [resumed] = harness.store.list_subscriptions(CHANNEL)
    assert resumed.id == sub.id
    assert resumed.active


async def test_managing_needs_permission_but_reading_does_not(harness: Harness) -> None:
    """Without may_manage: subscribe/unsubscribe refused; list, latest and help still answer."""
    _seed(harness.store, "Video Anomaly Detection")
    for text in ("subscribe Anomaly Detection", "unsubscribe 1"):
        reply = await harness.run(text, may_manage=False)
        assert not reply.ok
        assert "not allowed to change this channel's subscriptions" in reply.text
    assert harness.store.list_subscriptions(CHANNEL) == []
    for text in ("list", "latest video anomaly detection", "help"):
        assert (await harness.run(text, may_manage=False)).ok


async def test_unsubscribe_by_number_and_by_query(harness: Harness) -> None:
    """unsubscribe takes the number from list or the query in any case; public confirmation."""
    for query in ("alpha", "beta", "gamma"):
        await harness.run(f"subscribe {query}")
    listing = await harness.run("list")
    assert "1. `alpha`\n2. `beta`\n3. `gamma`" in listing.text
    by_number = await harness.run("unsubscribe 2")
    assert by_number.public
    assert by_number.text == "U1 unsubscribed this channel from `beta`."
    by_query = await harness.run("unsubscribe GAMMA")
    assert by_query.text == "U1 unsubscribed this channel from `gamma`."
    assert [s.keyword for s in harness.store.list_subscriptions(CHANNEL)] == ["alpha"]


@pytest.mark.parametrize("text", ["unsubscribe 9", "unsubscribe not followed", "unsubscribe"])
async def test_unsubscribe_unknown_is_refused_with_usage(harness: Harness, text: str) -> None:
    """An unknown number or query changes nothing and says how to find the right one."""
    await harness.run("subscribe alpha")
    reply = await harness.run(text)
    assert not reply.ok
    assert reply.text.endswith("Usage: `/papers unsubscribe <query or number from list>`")
    assert len(harness.store.list_subscriptions(CHANNEL)) == 1


async def test_list_empty_and_numbered(harness: Harness) -> None:
    """list on a new channel explains how to start; later it counts against the limit."""
    empty = await harness.run("list")
    assert "no subscriptions yet" in empty.text
    await harness.run("subscribe alpha")
    listing = await harness.run("list")
    assert "follows 1 of at most 50 queries" in listing.text
    assert not listing.public


async def test_latest_default_count_and_explicit_n(harness: Harness) -> None:
    """latest shows 5 newest by default, n when given, newest first, privately."""
    papers = _seed(harness.store, "Video Anomaly Detection")
    default = await harness.run("latest video anomaly detection")
    assert not default.public
    assert [p.abs_url in default.text for p in papers[:6]] == [True] * 5 + [False]
    two = await harness.run("latest Video Anomaly Detection 2")
    lines = [line for line in two.text.splitlines() if line[:2] in {"1.", "2.", "3."}]
    assert len(lines) == 2
    assert papers[0].abs_url in lines[0]
    assert papers[1].abs_url in lines[1]


@pytest.mark.parametrize("n", [0, LATEST_MAX + 1, 1000])
async def test_latest_n_out_of_range(harness: Harness, n: int) -> None:
    """n outside 1..20 is refused with the usage line."""
    reply = await harness.run(f"latest video anomaly detection {n}")
    assert not reply.ok
    assert reply.text == (
        f"n must be a number from 1 to {LATEST_MAX}.\nUsage: `/papers latest <query> [n]`"
    )


async def test_latest_of_untracked_query_suggests_subscribing(harness: Harness) -> None:
    """A query nobody tracks has no stored matches; the reply says how to start collecting."""
    reply = await harness.run("latest protein folding")
    assert reply.ok
    assert "No stored papers match `protein folding` yet" in reply.text
    assert "/papers subscribe protein folding" in reply.text


async def test_unknown_command_names_the_known_ones(harness: Harness) -> None:
    """A typo gets the list of commands, not an exception."""
    reply = await harness.run("subscirbe diffusion")
    assert not reply.ok
    assert "Unknown command `subscirbe`" in reply.text
    assert "subscribe, unsubscribe, list, latest, help" in reply.text


async def test_store_failure_becomes_a_polite_reply(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crashing store gives a short apology, never the exception text."""

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("database is locked at /secret/path")

    monkeypatch.setattr(harness.store, "list_subscriptions", broken)
    reply = await harness.run("list")
    assert not reply.ok
    assert reply.text == "Sorry, that failed on our side. Please try again in a minute."


async def test_store_calls_run_off_the_event_loop(harness: Harness) -> None:
    """Store methods run in a worker thread, so a slow database never blocks the loop."""
    threads: list[threading.Thread] = []
    original = harness.store.list_subscriptions

    def spy(*args: object, **kwargs: object) -> object:
        threads.append(threading.current_thread())
        return original(*args, **kwargs)  # type: ignore[arg-type]

    harness.store.list_subscriptions = spy  # type: ignore[method-assign]
    await harness.run("list")
    assert threads
    assert threading.main_thread() not in threads


@pytest.mark.parametrize(
    ("markup", "forbidden"),
    [
        (SlackMarkup(), ["<!channel>", "<https://evil.example|"]),
        (MarkdownMarkup(), ["@everyone", "[click](", "**bold**"]),
    ],
)
async def test_hostile_titles_are_escaped_in_replies(
    sqlite_store: SqlStore, markup: object, forbidden: list[str]
) -> None:
    """Paper text reaching a reply cannot ping the channel, forge a link or inject formatting."""
    hostile = Paper(
        arxiv_id="2502.00001",
        version=1,
        title="<!channel> @everyone [click](https://evil.example) **bold** "
        "<https://evil.example|login>",
        authors=("<@U999>", "B & C"),
        abstract="x",
        published=NOW,
        updated=NOW,
        primary_category="cs.CV",
    )
    sqlite_store.add_keyword("hostile")
    sqlite_store.commit_harvest(
        papers=[hostile], matches={"hostile": ["2502.00001"]}, deliverable=(), now=NOW
    )
    service = CommandService(
        store=sqlite_store,
        settings=settings_for_tests(),
        request_backfill=lambda q: None,
        markup=markup,  # type: ignore[arg-type]
        clock=lambda: NOW,
    )
    reply = await service.handle(Invocation(CHANNEL, "U1", True, "latest hostile"))
    assert "2502.00001" in reply.text
    for text in forbidden:
        assert text not in reply.text


async def test_extra_command_is_dispatched_permission_checked_and_in_help(
    sqlite_store: SqlStore,
) -> None:
    """A command added by another module (email, language) joins dispatch, permissions and help."""
    seen: list[str] = []

    async def shout(service: CommandService, inv: Invocation, args: str) -> Reply:
        seen.append(args)
        return Reply(text=service.markup.escape(args.upper()), public=True)

    extra = Command(
        name="shout",
        usage="shout <words>",
        summary="Say it louder.",
        handler=shout,
        changes_target=True,
    )
    service = CommandService(
        store=sqlite_store,
        settings=settings_for_tests(),
        request_backfill=lambda q: None,
        clock=lambda: NOW,
        extra_commands=[extra],
    )
    reply = await service.handle(Invocation(CHANNEL, "U1", True, "shout hello there"))
    assert reply == Reply(text="HELLO THERE", public=True)
    refused = await service.handle(Invocation(CHANNEL, "U1", False, "shout no"))
    assert not refused.ok
    assert seen == ["hello there"]
    assert "`/papers shout <words>`: Say it louder." in service.help_text()


def test_reference_table_lists_every_command() -> None:
    """README's command table comes from the same Command table as /papers help."""
    table = render_reference()
    for command in BUILTIN_COMMANDS:
        assert f"| `/papers {command.usage}` | {command.summary} |" in table


def test_summaries_fit_discord_descriptions() -> None:
    """Discord limits app command and option descriptions to 100 characters."""
    for command in BUILTIN_COMMANDS:
        assert 0 < len(command.summary) <= 100
        for argument in command.arguments:
            assert 0 < len(argument.description) <= 100


async def test_concurrent_commands_do_not_interfere(harness: Harness) -> None:
    """Two channels subscribing at once each get their own subscription."""
    replies = await asyncio.gather(
        harness.run("subscribe alpha"), harness.run("subscribe beta", target=OTHER)
    )
    assert all(r.ok for r in replies)
    assert [s.keyword for s in harness.store.list_subscriptions(CHANNEL)] == ["alpha"]
    assert [s.keyword for s in harness.store.list_subscriptions(OTHER)] == ["beta"]


async def test_like_subscription_with_stored_seeds_and_unsubscribe_in_another_order(
    harness: Harness,
) -> None:
    """Seeds already stored need no arXiv (the service has no source); the confirmation says
    what happens next; unsubscribing names the same seeds in any order, with versions."""
    from tests.like_helpers import like_corpus, store_history

    corpus = like_corpus()
    store_history(harness.store, corpus.seeds)
    reply = await harness.run("subscribe " + corpus.like)
    assert reply.ok, reply.text
    assert "this week's stored papers are being scored" in reply.text
    assert harness.backfills == [corpus.canonical]
    shuffled = "like:" + " ".join(f"{p.arxiv_id}v1" for p in corpus.seeds)
    dropped = await harness.run("unsubscribe " + shuffled)
    assert dropped.ok, dropped.text
    assert harness.store.list_subscriptions(CHANNEL) == []


async def test_like_seeds_not_stored_without_a_source_are_refused(harness: Harness) -> None:
    """Without a seed source, seeds not stored cannot be checked: one line, nothing stored."""
    reply = await harness.run("subscribe like:2501.00001,2501.00002,2501.00003")
    assert not reply.ok
    assert reply.text.startswith("like: 3 seed papers are not stored")
    assert "\n" not in reply.text
    assert harness.store.list_subscriptions(CHANNEL) == []
