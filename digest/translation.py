"""The cycle's translation step: translate stored new papers before delivery, within a deadline.

Each matched paper is translated once per language and stored (`PaperStore.save_translation`);
channels then find it in `Batch.translations`. The step is bounded in time: at the deadline it
stops, keeps what it has stored and returns, so delivery is never late because a provider is
slow or down. Whatever is still missing is picked up again by the next cycle
(`PaperStore.papers_missing_translation`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from digest.config import Settings
from digest.domain import Paper
from digest.store import PaperStore
from digest.translate import TranslationResult, Translator

logger = logging.getLogger(__name__)

LANGUAGE_OPTION = "language"  # the per-target option `/papers language` sets
OFF = "off"
MAX_PER_RUN = 500  # papers asked of the store per language and cycle; the rest wait a cycle


@dataclass(frozen=True, slots=True)
class TranslationReport:
    """What one translation step did for one language."""

    language: str
    missing: int = 0  # papers without a translation when the step started
    translated: int = 0
    skipped: int = 0  # the provider failed or answered badly even after the retries
    timed_out: bool = False  # the deadline came first; the rest is left for the next cycle
    error: str | None = None  # why the step stopped early (the provider refuses us)
    seconds: float = 0.0

    @property
    def left(self) -> int:
        """Papers still untranslated after this step (they are tried again next cycle)."""
        return self.missing - self.translated

    def summary(self) -> str:
        """The event-style log line for this step."""
        line = (
            f"translation.finished language={self.language} missing={self.missing} "
            f"translated={self.translated} skipped={self.skipped} left={self.left} "
            f"timed_out={self.timed_out} seconds={self.seconds:.1f}"
        )
        if self.error:
            line += f" error={self.error!r}"
        return line


async def translate_new_papers(
    *,
    store: PaperStore,
    translator: Translator,
    language: str,
    since: datetime,
    deadline: float,
    concurrency: int = 4,
    limit: int = MAX_PER_RUN,
) -> TranslationReport:
    """Translate and store the matched papers first stored after `since` that lack `language`.

    `deadline` is the number of seconds the step may take; at most `concurrency` papers are in
    flight. Never raises: a broken store or translator ends the step with `error` set.
    """
    started = time.perf_counter()
    try:
        papers = await asyncio.to_thread(
            store.papers_missing_translation, language, since=since, limit=limit
        )
    except Exception as exc:  # translation is optional: a failure here must not stop delivery
        logger.exception("translation.failed language=%s", language)
        return TranslationReport(language=language, error=f"{type(exc).__name__}: {exc}")
    if not papers:
        return TranslationReport(language=language, seconds=time.perf_counter() - started)

    translated = skipped = 0
    error: str | None = None
    timed_out = False
    queue = list(reversed(_distinct(papers)))  # pop() from the end: newest paper first

    async def worker() -> None:
        nonlocal translated, skipped, error
        while queue and error is None:
            paper = queue.pop()
            try:
                result = await translator.translate(paper, language)
            except Exception as exc:  # a translator that breaks its promise: skip this paper
                logger.exception("translation.crashed arxiv_id=%s", paper.arxiv_id)
                result = TranslationResult(paper.arxiv_id, None, f"{type(exc).__name__}: {exc}")
            if result.translation is None:
                if result.fatal:
                    error = result.error or "the translation provider refuses requests"
                else:
                    skipped += 1
                continue
            try:
                await asyncio.to_thread(
                    store.save_translation,
                    paper.arxiv_id,
                    language,
                    result.translation.title,
                    result.translation.abstract,
                )
            except Exception as exc:  # the database is gone: no point translating more
                logger.exception("translation.save_failed arxiv_id=%s", paper.arxiv_id)
                error = f"{type(exc).__name__}: {exc}"
                return
            translated += 1

    try:
        async with asyncio.timeout(max(deadline, 0.0)), asyncio.TaskGroup() as group:
            for _ in range(max(1, min(concurrency, len(queue)))):
                group.create_task(worker())
    except TimeoutError:
        timed_out = True
    except Exception as exc:  # the guard: nothing in this optional step may stop delivery
        logger.exception("translation.crashed language=%s", language)
        error = error or f"{type(exc).__name__}: {exc}"
    report = TranslationReport(
        language=language,
        missing=len(papers),
        translated=translated,
        skipped=skipped,
        timed_out=timed_out,
        error=error,
        seconds=time.perf_counter() - started,
    )
    (logger.warning if report.timed_out or report.error else logger.info)(report.summary())
    return report


def _distinct(papers: Sequence[Paper]) -> list[Paper]:
    """Each paper once (a store may list a paper per matching keyword), order kept."""
    unique: dict[str, Paper] = {}
    for paper in papers:
        unique.setdefault(paper.arxiv_id, paper)
    return list(unique.values())


async def wanted_languages(*, settings: Settings, store: PaperStore) -> list[str]:
    """Languages someone reads: `[translation] language`, then each target's own choice."""
    languages: list[str] = []
    if settings.translation.language:
        languages.append(settings.translation.language)

    def per_target() -> list[str]:
        found = []
        targets = {s.target for s in store.list_subscriptions(active_only=True)}
        for target in sorted(targets, key=str):
            value = store.get_target_option(target, LANGUAGE_OPTION)
            if value and value != OFF:
                found.append(value)
        return found

    for language in await asyncio.to_thread(per_target):
        if language not in languages:
            languages.append(language)
    return languages


async def translate_for_readers(
    *,
    settings: Settings,
    store: PaperStore,
    translator: Translator,
    now: datetime,
) -> list[TranslationReport]:
    """The cycle's step: every wanted language, all within `[translation] deadline_seconds`."""
    section = settings.translation
    try:
        languages = await wanted_languages(settings=settings, store=store)
    except Exception:  # never let translation bookkeeping stop the cycle
        logger.exception("translation.languages_failed")
        return []
    since = now - timedelta(days=section.max_age_days)
    ends = time.perf_counter() + section.deadline_seconds
    reports = []
    for language in languages:
        remaining = ends - time.perf_counter()
        if remaining <= 0:
            logger.warning("translation.deferred language=%s reason=deadline", language)
            continue
        reports.append(
            await translate_new_papers(
                store=store,
                translator=translator,
                language=language,
                since=since,
                deadline=remaining,
                concurrency=section.concurrency,
            )
        )
    return reports
