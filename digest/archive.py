"""The daily Markdown digest archive: one file per day in the reference digest's format.

`render_digest_markdown` is pure: papers (and their stored translations) in, Markdown out, each
paper as `# Title`, `**Title (ZH)**`, `**Authors**`, `**Link**: [PDF](...)`, `**Abstract**`,
`**Abstract (ZH)**` and `---`, without the translated lines when translation is off or a paper
has none yet. `write_daily_archive` reads one day's new matched papers from the store and
writes `digest.archive_dir/YYYY-MM-DD.md` atomically, only when it changed; it is the history the
README snapshot (latest N per keyword) no longer holds.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import partial
from pathlib import Path
from typing import TextIO
from zoneinfo import ZoneInfo

from digest.config import Settings
from digest.domain import Paper
from digest.errors import ConfigError
from digest.readme import write_text_atomic
from digest.render import collapse_ws, get_environment
from digest.store import PaperStore
from digest.summary import stored_summaries

logger = logging.getLogger(__name__)

TEMPLATE = "digest.md.j2"
PDF_URL = "https://arxiv.org/pdf/{arxiv_id}"  # unversioned: the reader gets the latest version


@dataclass(frozen=True, slots=True)
class DigestEntry:
    """One paper as the digest template shows it."""

    title: str
    authors: str
    pdf_url: str
    abstract: tuple[str, ...]  # lines, shown as one paragraph (arXiv's own line breaks)
    translated_title: str = ""
    translated_abstract: tuple[str, ...] = ()  # paragraphs
    summary: str = ""  # the one-sentence TL;DR ([summary]), one line; '' when there is none

    @property
    def translated(self) -> bool:
        """Whether this paper shows its translated lines."""
        return bool(self.translated_title or self.translated_abstract)


@dataclass(frozen=True, slots=True)
class ArchiveResult:
    """What writing one day's digest did."""

    day: date
    path: Path
    papers: int
    translated: int
    changed: bool  # False: the file already said exactly this (or there was nothing to write)


def text_lines(text: str) -> tuple[str, ...]:
    """The non-empty lines of a text, each with its whitespace collapsed."""
    return tuple(line for line in (collapse_ws(part) for part in text.splitlines()) if line)


def translated_paragraphs(source: str, translation: str) -> tuple[str, ...]:
    """A model's translation as at most as many paragraphs as its source has lines.

    A translation keeps the paragraphs of what it translates (the prompt asks for that); any
    other structure in the answer is the model's own and is flattened into one paragraph.
    arXiv's abstracts are one line, so in practice so is their translation.
    """
    parts = text_lines(translation)
    if len(parts) > max(1, len(text_lines(source))):
        return (" ".join(parts),)
    return parts


def _entry(paper: Paper, translation: tuple[str, str] | None, summary: str) -> DigestEntry:
    title, abstract = translation if translation else ("", "")
    return DigestEntry(
        summary=collapse_ws(summary),
        # A title or author list is one Markdown line; a line break in it would end the heading.
        title=collapse_ws(paper.title),
        authors=collapse_ws(", ".join(paper.authors)),
        pdf_url=PDF_URL.format(arxiv_id=paper.arxiv_id),
        abstract=text_lines(paper.abstract),
        translated_title=collapse_ws(title),
        translated_abstract=translated_paragraphs(paper.abstract, abstract),
    )


def render_digest_markdown(
    papers: Sequence[Paper],
    translations: Mapping[str, tuple[str, str]],
    language: str | None,
    summaries: Mapping[str, str] | None = None,
) -> str:
    """The Markdown digest of `papers` in the order given, with `language` lines when known.

    `translations` maps arxiv id -> (title, abstract) in `language`; `language` None or ''
    (translation off) leaves every translated line out. `summaries` (arxiv id -> TL;DR) adds a
    `**TL;DR**` line to the papers that have one.
    """
    summaries = summaries or {}
    unique: dict[str, Paper] = {}
    for paper in papers:
        unique.setdefault(paper.arxiv_id, paper)
    entries = [
        _entry(
            paper,
            translations.get(paper.arxiv_id) if language else None,
            summaries.get(paper.arxiv_id, ""),
        )
        for paper in unique.values()
    ]
    template = get_environment().get_template(TEMPLATE)
    return template.render(entries=entries, tag=(language or "").upper())


def day_bounds(day: date, timezone: str) -> tuple[datetime, datetime]:
    """The [start, end) instants of a calendar day in `timezone`."""
    zone = ZoneInfo(timezone)
    start = datetime.combine(day, time(0), tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
    return start, end


def render_day(settings: Settings, store: PaperStore, day: date) -> tuple[str, int, int]:
    """(Markdown, papers, translated papers) of one day's new matched papers (blocking)."""
    start, end = day_bounds(day, settings.service.timezone)
    pairs = store.matches_first_seen_between(start, end)
    papers = list({paper.arxiv_id: paper for _, paper in reversed(pairs)}.values())[::-1]
    language = settings.translation.language or None
    translations = (
        store.get_translations([p.arxiv_id for p in papers], language)
        if language and papers
        else {}
    )
    summaries = (
        stored_summaries(store, [p.arxiv_id for p in papers])
        if settings.summary.enabled and papers
        else {}
    )
    text = render_digest_markdown(papers, translations, language, summaries)
    return text, len(papers), len(translations)


def archive_path(folder: str | Path, day: date) -> Path:
    """Where one day's digest lives: `<folder>/YYYY-MM-DD.md`."""
    return Path(folder) / f"{day.isoformat()}.md"


def write_daily_archive(
    *, settings: Settings, store: PaperStore, day: date, folder: str | Path | None = None
) -> ArchiveResult:
    """Write one day's digest to `folder` (default `digest.archive_dir`), atomically.

    A day without new papers writes nothing; an unchanged file is left alone. Blocking: async
    callers run it through `asyncio.to_thread`.
    """
    target = folder if folder is not None else settings.digest.archive_dir
    if not target:
        raise ConfigError(
            "digest.archive_dir is not set: set it to a folder for the daily digests "
            "(or print the digest instead)"
        )
    path = archive_path(target, day)
    text, count, translated = render_day(settings, store, day)
    changed = bool(count) and write_text_atomic(path, text)
    logger.info(
        "archive.written day=%s path=%s papers=%d translated=%d changed=%s",
        day.isoformat(),
        path,
        count,
        translated,
        changed,
    )
    return ArchiveResult(day=day, path=path, papers=count, translated=translated, changed=changed)


def archive_days(moment: datetime, timezone: str) -> list[date]:
    """The days a cycle at `moment` refreshes: today, and yesterday for late translations."""
    today = moment.astimezone(ZoneInfo(timezone)).date()
    return [today - timedelta(days=1), today]


def write_or_print_digest(
    settings: Settings,
    store: PaperStore,
    day: date,
    to_stdout: bool,
    *,
    out: TextIO | None = None,
) -> ArchiveResult | None:
    """`daily-papers digest --date DAY [--print]`: write the day's file, or print it to `out`.

    Printing returns None; writing returns what was written (ConfigError without an archive
    folder, naming the setting and the `--print` alternative).
    """
    if to_stdout:
        text, count, translated = render_day(settings, store, day)
        (out or sys.stdout).write(text)
        logger.info(
            "archive.printed day=%s papers=%d translated=%d", day.isoformat(), count, translated
        )
        if count == 0:
            # An empty stdout would look like a failure: say what the day holds and why.
            sys.stderr.write(
                f"no matched paper was first stored on {day.isoformat()} "
                f"({settings.service.timezone}): a day's digest lists the papers that the daily "
                "cycle stored that day. `daily-papers status` shows when cycles ran.\n"
            )
        return None
    if not settings.digest.archive_dir:
        raise ConfigError(
            "digest.archive_dir is not set: set it (or DAILY_PAPERS_DIGEST_ARCHIVE_DIR) to the "
            "folder for daily digests, or use --print to show the digest instead"
        )
    return write_daily_archive(settings=settings, store=store, day=day)


async def refresh_archive(
    *, settings: Settings, store: PaperStore, now: datetime
) -> list[ArchiveResult]:
    """The cycle's step: (re)write today's and yesterday's digest when `digest.archive_dir` is set.

    Yesterday's file is written again so translations filled in by this cycle reach it; an
    unchanged file is left alone. Raises DailyPapersError when the folder cannot be written.
    """
    if not settings.digest.archive_dir:
        return []
    return [
        await asyncio.to_thread(
            partial(write_daily_archive, settings=settings, store=store, day=day)
        )
        for day in archive_days(now, settings.service.timezone)
    ]
