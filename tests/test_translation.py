"""The cycle's translation step: stored once per language, bounded by a deadline, never raising."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.commands import LANGUAGE_COMMAND, CommandService, Invocation, PlainMarkup
from digest.archive import render_day
from digest.arxiv_source import ArxivSource
from digest.config import Settings, settings_for_tests
from digest.cycle import run_cycle
from digest.domain import Paper, RunReport, Target
from digest.store import PaperStore
from digest.translate import OpenAITranslator, TranslationResult, build_translator
from digest.translation import (
    TranslationReport,
    translate_for_readers,
    translate_new_papers,
    wanted_languages,
)
from storage.sql_store import SqlStore
from tests.fakes.arxiv_server import ArxivStandIn
from tests.fakes.openai_api import English, FakeOpenAI, Garbage, ServerError, Slow, serve_openai
from tests.fakes.recording_channel import RecordingChannel
from tests.reference_digest import REFERENCE_LANGUAGE, load_reference_digest
from tests.reference_papers import load_reference_papers

NOW = datetime(2025, 1, 10, 21, 0, tzinfo=UTC)
SINCE = NOW - timedelta(days=7)
KEYWORD = "multimodal"


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAI]:
    """The fake chat-completions server, taught the reference digest's Chinese."""
    async with serve_openai() as fake:
        for entry in load_reference_digest():
            fake.teach(entry.paper.title, entry.title_zh)
            fake.teach(entry.paper.abstract, entry.abstract_zh)
        yield fake


@pytest.fixture
async def translator(openai: FakeOpenAI) -> AsyncIterator[OpenAITranslator]:
    """A translator on the fake with no waits between its 3 attempts."""
    async with OpenAITranslator(
        base_url=openai.url, model="m", attempts=3, wait_initial=0.0, wait_max=0.0, timeout=10.0
    ) as client:
        yield client


def _papers() -> list[Paper]:
    return [entry.paper for entry in load_reference_digest()]


def _store_papers(store: PaperStore, papers: Sequence[Paper], *, now: datetime = NOW) -> None:
    """Store `papers` as today's matches of one keyword, as a harvest would."""
    store.add_keyword(KEYWORD)
    store.commit_harvest(
        papers=papers,
        matches={KEYWORD: [p.arxiv_id for p in papers]},
        deliverable=(),
        now=now,
    )


async def _step(
    store: PaperStore, translator: OpenAITranslator, *, language: str = "zh", deadline: float = 10
) -> TranslationReport:
    return await translate_new_papers(
        store=store,
        translator=translator,
        language=language,
        since=SINCE,
        deadline=deadline,
        concurrency=3,
    )


async def test_translations_are_stored_once_per_language(
    store: PaperStore, translator: OpenAITranslator, openai: FakeOpenAI
) -> None:
    """The first run translates and stores every paper; the next asks the provider nothing."""
    entries = load_reference_digest()
    _store_papers(store, [e.paper for e in entries])
    report = await _step(store, translator)
    assert (report.missing, report.translated, report.skipped, report.left) == (12, 12, 0, 0)
    assert not report.timed_out
    stored = store.get_translations([e.paper.arxiv_id for e in entries], REFERENCE_LANGUAGE)
    assert stored == {e.paper.arxiv_id: (e.title_zh, e.abstract_zh) for e in entries}
    assert len(openai.requests) == 24

    again = await _step(store, translator)
    assert (again.missing, again.translated) == (0, 0)
    assert len(openai.requests) == 24

    japanese = await _step(store, translator, language="ja")
    assert japanese.translated == 12
    assert len(openai.requests) == 48
    assert "Japanese" in openai.requests[-1].system
    assert len(store.get_translations([e.paper.arxiv_id for e in entries], "ja")) == 12


async def test_slow_provider_returns_at_the_deadline_and_next_run_fills_the_rest(
    store: PaperStore, translator: OpenAITranslator, openai: FakeOpenAI
) -> None:
    """A hanging answer stops the step at its deadline; what finished is kept, the rest follows."""
    papers = _papers()
    _store_papers(store, papers)
    slow = papers[3]
    openai.always(Slow(60.0), when=slow.title)
    started = time.perf_counter()
    report = await _step(store, translator, deadline=0.5)
    assert time.perf_counter() - started < 3.0
    assert report.timed_out
    assert report.left >= 1
    stored = store.get_translations([p.arxiv_id for p in papers], "zh")
    assert slow.arxiv_id not in stored
    assert len(stored) == report.translated >= 1

    openai._rules.clear()  # the provider recovered
    later = await _step(store, translator)
    assert later.missing == report.left
    assert later.translated == report.left
    assert not later.timed_out
    assert len(store.get_translations([p.arxiv_id for p in papers], "zh")) == 12


async def test_a_provider_that_is_all_slow_delays_nothing(
    store: PaperStore, translator: OpenAITranslator, openai: FakeOpenAI
) -> None:
    """Every request hangs: the step still returns at its deadline, with nothing stored."""
    _store_papers(store, _papers())
    openai.always(Slow(60.0))
    started = time.perf_counter()
    report = await _step(store, translator, deadline=0.3)
    assert time.perf_counter() - started < 2.0
    assert report.timed_out
    assert (report.translated, report.left) == (0, 12)


async def test_garbage_for_one_paper_is_retried_then_skipped_until_next_cycle(
    store: PaperStore, translator: OpenAITranslator, openai: FakeOpenAI
) -> None:
    """A paper the provider keeps garbling is skipped after 3 tries; the others are stored."""
    papers = _papers()
    _store_papers(store, papers)
    bad = papers[0]
    openai.always(Garbage(), when=bad.abstract[:60])
    report = await _step(store, translator)
    assert (report.translated, report.skipped, report.left) == (11, 1, 1)
    assert openai.texts().count(bad.abstract) == 3
    assert bad.arxiv_id not in store.get_translations([bad.arxiv_id], "zh")

    openai._rules.clear()
    later = await _step(store, translator)
    assert (later.missing, later.translated) == (1, 1)


async def test_refused_key_stops_the_step_early(
    store: PaperStore, translator: OpenAITranslator, openai: FakeOpenAI
) -> None:
    """A 401 is the same for every paper: the step stops instead of sending 24 doomed requests."""
    _store_papers(store, _papers())
    openai.always(ServerError(401))
    report = await _step(store, translator)
    assert report.error is not None
    assert "TRANSLATION_API_KEY" in report.error
    assert report.translated == 0
    assert len(openai.requests) <= 3  # only the papers already in flight (concurrency 3)


async def test_papers_outside_the_window_are_left_alone(
    store: PaperStore, translator: OpenAITranslator, openai: FakeOpenAI
) -> None:
    """Only papers first stored after `since` are translated (old history is not back-filled)."""
    papers = _papers()
    _store_papers(store, papers[:2], now=SINCE - timedelta(days=1))
    _store_papers(store, papers[2:4])
    report = await _step(store, translator)
    assert report.translated == 2
    assert set(store.get_translations([p.arxiv_id for p in papers], "zh")) == {
        p.arxiv_id for p in papers[2:4]
    }


class _BrokenTranslator:
    """A translator that breaks its promise and raises."""

    async def translate(self, paper: Paper, language: str) -> TranslationResult:
        """Raise instead of answering."""
        raise RuntimeError("bug in an adapter")


async def test_a_raising_translator_does_not_escape(store: PaperStore) -> None:
    """Even a translator that raises ends the step with a report, never an exception."""
    _store_papers(store, _papers()[:2])
    report = await _step(store, _BrokenTranslator())  # type: ignore[arg-type]
    assert (report.translated, report.skipped, report.left) == (0, 2, 2)
    assert report.error is None


async def test_wanted_languages_are_the_default_then_each_channels_choice(
    store: PaperStore,
) -> None:
    """`[translation] language` first, then channels' `/papers language` choices; off is none."""
    slack, discord, muted = Target("slack", "C1"), Target("discord", "42"), Target("slack", "C2")
    for target in (slack, discord, muted):
        store.add_subscription(target, KEYWORD, now=NOW)
    store.set_target_option(slack, "language", "ja")
    store.set_target_option(discord, "language", "zh")
    store.set_target_option(muted, "language", "off")
    settings = settings_for_tests(translation={"language": "zh"})
    assert await wanted_languages(settings=settings, store=store) == ["zh", "ja"]
    assert await wanted_languages(settings=settings_for_tests(), store=store) == ["zh", "ja"]
    store.set_target_option(discord, "language", None)
    assert await wanted_languages(settings=settings_for_tests(), store=store) == ["ja"]


async def test_translate_for_readers_covers_every_language_within_one_deadline(
    store: PaperStore, translator: OpenAITranslator, openai: FakeOpenAI
) -> None:
    """Each wanted language gets its step; a slow first language leaves no time for the next."""
    papers = _papers()[:3]
    _store_papers(store, papers)
    store.add_subscription(Target("slack", "C1"), KEYWORD, now=NOW)
    store.set_target_option(Target("slack", "C1"), "language", "ja")
    settings = settings_for_tests(translation={"language": "zh", "deadline_seconds": 10})
    reports = await translate_for_readers(
        settings=settings, store=store, translator=translator, now=NOW
    )
    assert [(r.language, r.translated) for r in reports] == [("zh", 3), ("ja", 3)]

    _store_papers(store, _papers()[3:5])
    openai.always(Slow(60.0))
    hurried = settings_for_tests(translation={"language": "zh", "deadline_seconds": 0.3})
    started = time.perf_counter()
    reports = await translate_for_readers(
        settings=hurried, store=store, translator=translator, now=NOW
    )
    assert time.perf_counter() - started < 2.0
    assert reports[0].timed_out
    assert [r.language for r in reports] == ["zh"]  # ja waits for the next cycle


# -- the step inside the daily cycle ---------------------------------------------------------
REFERENCE_DAY = datetime(2025, 2, 11, 12, 0, tzinfo=UTC)


def _cycle_settings(
    tmp_path: Path, arxiv: ArxivStandIn, openai: FakeOpenAI, **translation: Any
) -> Settings:
    """Settings for a cycle against the arXiv stand-in and the fake provider."""
    return settings_for_tests(
        service={"data_dir": str(tmp_path)},
        arxiv={"api_url": arxiv.url, "categories": ["cs.CV", "cs.LG"], "retries": 0},
        keywords={"queries": ["Video Understanding"]},
        readme={"enabled": False},
        translation={"base_url": openai.url, **translation},
        digest={"archive_dir": str(tmp_path / "digests")},
    )


async def _run(settings: Settings, channel: RecordingChannel) -> RunReport:
    """One cycle as `daily-papers run` does it, with the translator the settings describe."""
    store = SqlStore.from_settings(settings)
    store.migrate()
    translator = build_translator(settings)
    assert translator is not None
    try:
        async with translator:
            with ArxivSource.from_settings(settings) as source:
                return await run_cycle(
                    settings=settings,
                    store=store,
                    source=source,
                    channels={"slack": channel},
                    now=lambda: REFERENCE_DAY,
                    translator=translator,
                )
    finally:
        store.close()


@pytest.fixture
def arxiv() -> Iterator[ArxivStandIn]:
    """The arXiv stand-in serving the reference README's papers."""
    with ArxivStandIn(load_reference_papers()) as stand_in:
        yield stand_in


async def test_cycle_translates_before_delivery_and_archives_the_day(
    tmp_path: Path, arxiv: ArxivStandIn, openai: FakeOpenAI
) -> None:
    """A channel set to Chinese gets its papers with translations; the day's archive has them."""
    settings = _cycle_settings(tmp_path, arxiv, openai, language="zh")
    slack = RecordingChannel(kind="slack")
    target = Target("slack", "C1")
    with SqlStore.from_settings(settings) as store:
        store.migrate()
        store.add_subscription(target, "Video Understanding", now=REFERENCE_DAY)
        store.set_target_option(target, "language", "zh")
    report = await _run(settings, slack)
    assert report.ok, report.error
    assert slack.batches
    batch = slack.batches[0]
    assert batch.language == "zh"
    assert set(batch.translations) == {p.arxiv_id for p in batch.papers}
    paper = batch.papers[0]
    assert batch.translations[paper.arxiv_id][1] == openai.translation_of(paper.abstract)

    archive = tmp_path / "digests" / "2025-02-11.md"
    text = archive.read_text(encoding="utf-8")
    assert text.count("**Title (ZH)**: ") == text.count("\n---\n") >= 1
    assert f"**Abstract (ZH)**: {openai.translation_of(paper.abstract)} \n" in text


async def test_cycle_with_a_hanging_provider_delivers_on_time_untranslated(
    tmp_path: Path, arxiv: ArxivStandIn, openai: FakeOpenAI
) -> None:
    """The provider hangs: delivery happens after the deadline, untranslated; next cycle fills."""
    settings = _cycle_settings(tmp_path, arxiv, openai, language="zh", deadline_seconds=0.3)
    slack = RecordingChannel(kind="slack")
    with SqlStore.from_settings(settings) as store:
        store.migrate()
        store.add_subscription(Target("slack", "C1"), "Video Understanding", now=REFERENCE_DAY)
    openai.always(Slow(60.0))
    started = time.perf_counter()
    report = await _run(settings, slack)
    assert time.perf_counter() - started < 5.0
    assert report.ok
    assert report.sent > 0
    assert slack.batches[0].translations == {}
    assert "(ZH)" not in (tmp_path / "digests" / "2025-02-11.md").read_text(encoding="utf-8")

    openai._rules.clear()
    # The provider answers again; the next cycle has time to translate all (0.3 s is not enough
    # for every paper on a loaded machine, and is not what this checks).
    patient = replace(settings, translation=replace(settings.translation, deadline_seconds=30.0))
    later = await _run(patient, slack)
    assert later.sent == 0  # nothing new to deliver, but the translations are filled in
    with SqlStore.from_settings(settings) as store:
        ids = slack.sent_ids()
        assert set(store.get_translations(ids, "zh")) == set(ids)
    assert "(ZH)" in (tmp_path / "digests" / "2025-02-11.md").read_text(encoding="utf-8")


# -- /papers language -------------------------------------------------------------------------
def _language_service(store: SqlStore, **settings: Any) -> CommandService:
    """A command service with the language command added, as the composition root does."""
    return CommandService(
        store=store,
        settings=settings_for_tests(**settings),
        request_backfill=lambda query: None,
        markup=PlainMarkup(),
        clock=lambda: NOW,
        extra_commands=(LANGUAGE_COMMAND,),
    )


async def test_language_command_sets_shows_and_clears_the_channels_language(
    sqlite_store: SqlStore,
) -> None:
    """`/papers language zh` stores the option the cycle reads; `off` clears it."""
    service = _language_service(sqlite_store, translation={"language": "zh"})
    channel = Target("slack", "C1")

    def run(text: str, may_manage: bool = True) -> Any:
        return service.handle(Invocation(channel, "U1", may_manage, text))

    assert (await run("language")).text == "Papers in this channel are shown in English only."
    reply = await run("language JA")
    assert reply.ok
    assert reply.public
    assert "Japanese (`ja`)" in reply.text
    assert "not set up" not in reply.text
    assert sqlite_store.get_target_option(channel, "language") == "ja"
    assert "Japanese" in (await run("language")).text

    refused = await run("language klingon!")
    assert not refused.ok
    assert "/papers language <code|off>" in refused.text
    assert sqlite_store.get_target_option(channel, "language") == "ja"

    assert not (await run("language off", may_manage=False)).ok
    off = await run("language off")
    assert off.ok
    assert "English only" in off.text
    assert sqlite_store.get_target_option(channel, "language") is None
    assert "/papers language <code|off>" in service.help_text()


async def test_language_command_warns_when_no_provider_is_configured(
    sqlite_store: SqlStore,
) -> None:
    """Choosing a language on a server without `[translation]` says when it will take effect."""
    service = _language_service(sqlite_store)
    reply = await service.handle(Invocation(Target("discord", "42"), "U1", True, "language de"))
    assert reply.ok
    assert "German" in reply.text
    assert "not set up on this server" in reply.text


# -- judged by the share of Chinese; a failed title; revisions (issue 13) ----------------------

IMAGINE = Paper(
    "2501.07542",
    1,
    "Imagine while Reasoning in Space: Multimodal Visualization-of-Thought",
    ("Chengzu Li", "Wenshan Wu"),
    "Chain-of-Thought prompting has proven highly effective for enhancing complex reasoning in "
    "Large Language Models and Multimodal Large Language Models, yet it struggles in complex "
    "spatial reasoning tasks.",
    NOW - timedelta(hours=3),
    NOW - timedelta(hours=3),
    "cs.CL",
)
IMAGINE_TITLE_ZH = "在空间推理中的多模态可视化思维：Imagine while Reasoning in Space"
IMAGINE_ABSTRACT_ZH = (
    "思维链提示已被证明能有效增强大型语言模型和多模态大型语言模型的复杂推理能力，"
    "但它在复杂的空间推理任务中表现不佳。"
)


async def test_a_title_that_keeps_an_english_name_is_accepted_once_and_for_all(
    store: PaperStore, openai: FakeOpenAI, translator: OpenAITranslator
) -> None:
    """The issue's title (an English name kept) is Chinese enough: two requests, then none."""
    openai.teach(IMAGINE.title, IMAGINE_TITLE_ZH)
    openai.teach(IMAGINE.abstract, IMAGINE_ABSTRACT_ZH)
    _store_papers(store, [IMAGINE])
    report = await _step(store, translator)
    assert (report.translated, report.skipped) == (1, 0)
    assert len(openai.requests) == 2  # the abstract and the title, each once
    assert store.get_translations([IMAGINE.arxiv_id], "zh") == {
        IMAGINE.arxiv_id: (IMAGINE_TITLE_ZH, IMAGINE_ABSTRACT_ZH)
    }
    again = await _step(store, translator)
    assert again.missing == 0
    assert len(openai.requests) == 2  # never asked again


async def test_a_failed_title_keeps_the_good_abstract_translation(
    store: PaperStore, openai: FakeOpenAI, translator: OpenAITranslator
) -> None:
    """The title keeps coming back in English: the abstract is stored, the paper not re-asked."""
    openai.teach(IMAGINE.abstract, IMAGINE_ABSTRACT_ZH)
    openai.always(English(), when="Imagine while")
    _store_papers(store, [IMAGINE])
    report = await _step(store, translator)
    assert report.translated == 1
    assert openai.texts().count(IMAGINE.title) == 3  # its retries, then given up
    assert store.get_translations([IMAGINE.arxiv_id], "zh") == {
        IMAGINE.arxiv_id: ("", IMAGINE_ABSTRACT_ZH)
    }
    assert (await _step(store, translator)).missing == 0
    assert len(openai.requests) == 4
    # The archive shows the translated abstract and no empty title line.
    settings = settings_for_tests(translation={"language": "zh"})
    text, _, translated = render_day(settings, store, NOW.date())
    assert translated == 1
    assert "**Title (ZH)**" not in text
    assert f"**Abstract (ZH)**: {IMAGINE_ABSTRACT_ZH} " in text


async def test_a_revision_that_rewords_the_paper_is_translated_again(
    store: PaperStore, openai: FakeOpenAI, translator: OpenAITranslator
) -> None:
    """v2 with a new abstract is translated again, however old; v3 with the same text is not."""
    old = replace(IMAGINE, published=NOW - timedelta(days=40), updated=NOW - timedelta(days=40))
    _store_papers(store, [old], now=NOW - timedelta(days=40))
    store.save_translation(old.arxiv_id, "zh", "旧标题", "旧摘要")
    v2 = replace(old, version=2, abstract=old.abstract + " We add a new benchmark.", updated=NOW)
    store.commit_harvest(papers=[v2], matches={KEYWORD: [v2.arxiv_id]}, deliverable=(), now=NOW)
    assert store.get_translations([v2.arxiv_id], "zh") == {}
    report = await _step(store, translator)
    assert report.translated == 1
    assert openai.texts() == [v2.abstract, v2.title]
    translated = store.get_translations([v2.arxiv_id], "zh")[v2.arxiv_id]
    assert translated == (openai.translation_of(v2.title), openai.translation_of(v2.abstract))
    v3 = replace(v2, version=3, comment="camera-ready", updated=NOW + timedelta(hours=1))
    store.commit_harvest(
        papers=[v3], matches={KEYWORD: [v3.arxiv_id]}, deliverable=(), now=NOW + timedelta(hours=1)
    )
    assert store.get_translations([v3.arxiv_id], "zh") == {v3.arxiv_id: translated}
    assert (await _step(store, translator)).missing == 0
