"""The daily Markdown digest: the reference file byte for byte, with and without translations."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

from digest.archive import (
    archive_days,
    day_bounds,
    render_digest_markdown,
    write_daily_archive,
    write_or_print_digest,
)
from digest.config import settings_for_tests
from digest.domain import Paper
from digest.errors import ConfigError
from digest.store import PaperStore
from digest.translate import OpenAITranslator
from digest.translation import translate_new_papers
from tests.fakes.openai_api import serve_openai
from tests.reference_digest import REFERENCE_LANGUAGE, DigestEntry, load_reference_digest
from tests.reference_papers import REFERENCE_DIGEST

DAY = date(2025, 1, 10)
HARVESTED = datetime(2025, 1, 10, 21, 0, tzinfo=UTC)  # first stored on DAY (UTC)


def _translations(entries: Sequence[DigestEntry]) -> dict[str, tuple[str, str]]:
    return {e.paper.arxiv_id: (e.title_zh, e.abstract_zh) for e in entries}


def _store_day(store: PaperStore, papers: Sequence[Paper], *, now: datetime = HARVESTED) -> None:
    store.add_keyword("multimodal")
    store.commit_harvest(
        papers=papers,
        matches={"multimodal": [p.arxiv_id for p in papers]},
        deliverable=(),
        now=now,
    )


def test_golden_reference_digest_byte_for_byte() -> None:
    """The reference's papers and Chinese translations render exactly as the reference file."""
    entries = load_reference_digest()
    assert len(entries) == 12
    rendered = render_digest_markdown(
        [e.paper for e in entries], _translations(entries), REFERENCE_LANGUAGE
    )
    assert rendered.encode("utf-8") == REFERENCE_DIGEST.read_bytes()


def test_without_translation_the_translated_lines_are_left_out() -> None:
    """Translation off: each paper is title, authors, link and abstract, in the same layout."""
    entries = load_reference_digest()
    expected = re.sub(
        r"\*\*(Title|Abstract) \(ZH\)\*\*: .*? \n\n",
        "",
        REFERENCE_DIGEST.read_text(encoding="utf-8"),
        flags=re.DOTALL,
    )
    assert "(ZH)" not in expected
    rendered = render_digest_markdown([e.paper for e in entries], _translations(entries), None)
    assert rendered == expected
    assert rendered == render_digest_markdown([e.paper for e in entries], {}, "")


def test_a_paper_not_yet_translated_shows_english_only() -> None:
    """With a language on, a paper whose translation is missing keeps just its English lines."""
    entries = load_reference_digest()[:3]
    known = _translations(entries)
    del known[entries[1].paper.arxiv_id]
    rendered = render_digest_markdown([e.paper for e in entries], known, "zh")
    blocks = rendered.split("---\n")
    assert blocks[0].count("(ZH)") == 2
    assert "(ZH)" not in blocks[1]
    assert blocks[2].count("(ZH)") == 2
    assert blocks[1].startswith(f"# {entries[1].paper.title} \n\n**Authors**: ")


def test_language_tag_and_one_line_fields() -> None:
    """The tag is the upper-cased code; titles and translated titles never break their line."""
    paper = load_reference_digest()[0].paper
    wrapped = Paper(
        arxiv_id=paper.arxiv_id,
        version=2,
        title="A title\n  wrapped by arXiv",
        authors=paper.authors,
        abstract=paper.abstract,
        published=paper.published,
        updated=paper.updated,
        primary_category=paper.primary_category,
    )
    rendered = render_digest_markdown([wrapped], {paper.arxiv_id: ("Ein\nTitel", "Text")}, "de")
    assert rendered.startswith("# A title wrapped by arXiv \n\n**Title (DE)**: Ein Titel \n\n")
    assert "**Link**: [PDF](https://arxiv.org/pdf/2501.05874)  \n" in rendered
    assert "**Abstract (DE)**: Text \n\n---\n" in rendered
    assert render_digest_markdown([], {}, "de") == ""


def test_day_bounds_follow_the_service_timezone() -> None:
    """A day is midnight to midnight where the readers are."""
    start, end = day_bounds(DAY, "America/New_York")
    assert start.astimezone(UTC) == datetime(2025, 1, 10, 5, 0, tzinfo=UTC)
    assert end - start == timedelta(days=1)
    assert archive_days(datetime(2025, 1, 11, 2, 0, tzinfo=UTC), "America/New_York") == [
        date(2025, 1, 9),
        date(2025, 1, 10),
    ]


async def test_golden_digest_through_store_and_fake_provider(
    store: PaperStore, tmp_path: Path
) -> None:
    """Stored papers, translated by the fake provider and archived, give the reference file."""
    entries = load_reference_digest()
    _store_day(store, [e.paper for e in entries])
    async with serve_openai() as fake:
        for entry in entries:
            fake.teach(entry.paper.title, entry.title_zh)
            fake.teach(entry.paper.abstract, entry.abstract_zh)
        settings = settings_for_tests(
            translation={"language": "zh", "base_url": fake.url},
            digest={"archive_dir": str(tmp_path / "digests")},
        )
        async with OpenAITranslator.from_settings(settings) as translator:
            report = await translate_new_papers(
                store=store,
                translator=translator,
                language="zh",
                since=HARVESTED - timedelta(days=1),
                deadline=10,
            )
    assert report.translated == 12
    result = write_daily_archive(settings=settings, store=store, day=DAY)
    assert result.path == tmp_path / "digests" / "2025-01-10.md"
    assert (result.papers, result.translated, result.changed) == (12, 12, True)
    assert result.path.read_bytes() == REFERENCE_DIGEST.read_bytes()


def test_archive_file_is_written_once_and_only_for_days_with_papers(
    store: PaperStore, tmp_path: Path
) -> None:
    """A day's file is written atomically; unchanged it is not touched; empty days write nothing."""
    entries = load_reference_digest()[:2]
    _store_day(store, [e.paper for e in entries])
    folder = tmp_path / "archive"
    settings = settings_for_tests(digest={"archive_dir": str(folder)})
    first = write_daily_archive(settings=settings, store=store, day=DAY)
    assert first.changed
    text = first.path.read_text(encoding="utf-8")
    assert text == render_digest_markdown([e.paper for e in entries], {}, None)
    os.utime(first.path, (1_000_000, 1_000_000))
    again = write_daily_archive(settings=settings, store=store, day=DAY)
    assert not again.changed
    assert first.path.stat().st_mtime == 1_000_000
    empty = write_daily_archive(settings=settings, store=store, day=DAY - timedelta(days=1))
    assert (empty.papers, empty.changed) == (0, False)
    assert not empty.path.exists()
    assert sorted(p.name for p in folder.iterdir()) == ["2025-01-10.md"]  # no temp files left


def test_translations_arriving_later_update_the_days_file(
    store: PaperStore, tmp_path: Path
) -> None:
    """A translation stored on the next cycle is added when the day's file is written again."""
    entries = load_reference_digest()[:2]
    _store_day(store, [e.paper for e in entries])
    settings = settings_for_tests(
        translation={"language": "zh"}, digest={"archive_dir": str(tmp_path)}
    )
    assert "(ZH)" not in write_daily_archive(
        settings=settings, store=store, day=DAY
    ).path.read_text(encoding="utf-8")
    for entry in entries:
        store.save_translation(entry.paper.arxiv_id, "zh", entry.title_zh, entry.abstract_zh)
    updated = write_daily_archive(settings=settings, store=store, day=DAY)
    assert updated.changed
    assert updated.translated == 2
    assert updated.path.read_text(encoding="utf-8") == render_digest_markdown(
        [e.paper for e in entries], _translations(entries), "zh"
    )


def test_only_the_days_papers_are_listed_each_once(store: PaperStore, tmp_path: Path) -> None:
    """Papers first stored on other days stay out; a paper matching two keywords appears once."""
    entries = load_reference_digest()
    _store_day(store, [e.paper for e in entries[:2]], now=HARVESTED - timedelta(days=1))
    _store_day(store, [e.paper for e in entries[2:5]])
    store.add_keyword("video")
    store.commit_harvest(
        papers=(), matches={"video": [entries[3].paper.arxiv_id]}, deliverable=(), now=HARVESTED
    )
    settings = settings_for_tests(digest={"archive_dir": str(tmp_path)})
    text = write_daily_archive(settings=settings, store=store, day=DAY).path.read_text("utf-8")
    titles = [line[2:-1] for line in text.splitlines() if line.startswith("# ")]
    assert sorted(titles) == sorted(e.paper.title for e in entries[2:5])


def test_digest_command_prints_or_writes_one_day(store: PaperStore, tmp_path: Path) -> None:
    """`daily-papers digest --date D --print` prints the day; without --print it writes the file."""
    entries = load_reference_digest()[:3]
    _store_day(store, [e.paper for e in entries])
    for entry in entries:
        store.save_translation(entry.paper.arxiv_id, "zh", entry.title_zh, entry.abstract_zh)
    settings = settings_for_tests(
        translation={"language": "zh"}, digest={"archive_dir": str(tmp_path / "out")}
    )
    out = io.StringIO()
    assert write_or_print_digest(settings, store, DAY, True, out=out) is None
    expected = render_digest_markdown([e.paper for e in entries], _translations(entries), "zh")
    assert out.getvalue() == expected
    assert not (tmp_path / "out").exists()  # printing writes nothing

    result = write_or_print_digest(settings, store, DAY, False)
    assert result is not None
    assert result.path.read_text(encoding="utf-8") == expected

    unset = settings_for_tests(translation={"language": "zh"})
    with pytest.raises(ConfigError, match=r"digest\.archive_dir.*--print"):
        write_or_print_digest(unset, store, DAY, False)


def test_printing_an_empty_day_says_why_on_stderr(
    store: PaperStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """A day without stored papers prints an empty digest and explains it, not silence."""
    settings = settings_for_tests()
    out = io.StringIO()
    write_or_print_digest(settings, store, DAY, True, out=out)
    assert "no matched paper was first stored on " + DAY.isoformat() in capsys.readouterr().err


# A model answer that tries every way out of its paragraph: a rule, a heading, a setext
# underline, an unclosed code fence, HTML, a quote, a list, an indented code block, a link
# definition and mentions. It is still Chinese, so the provider's checks accept it.
HOSTILE_ABSTRACT = (
    "我们提出了一种新的视频异常检测方法，并在三个公开基准上取得了最好的结果。\n"
    "---\n"
    "# 伪造的标题\n"
    "===\n"
    "```python\n"
    "<script>alert(1)</script> <!--\n"
    "> 引用 [点击](javascript:alert(1)) @everyone <@123>\n"
    "1. 列表项\n"
    "    缩进的代码块\n"
    "[定义]: https://example.org\n"
    "<details><summary>展开</summary>\n"
    "最后一句也是中文，说明这是一个完整的翻译。"
)
HOSTILE_TITLE = "视频异常检测的新方法\n===\n# 标题 ```"


def _commonmark(text: str) -> list[Token]:
    """The block tokens of a CommonMark parse (raw HTML allowed, as GitHub renders it)."""
    return MarkdownIt("commonmark", {"html": True}).parse(text)


async def test_a_hostile_model_answer_stays_inside_its_paper(
    store: PaperStore, tmp_path: Path
) -> None:
    """Exactly one heading, one authors line and one separator per paper, nothing swallowed."""
    papers = [
        Paper(
            f"2501.0000{n}",
            1,
            f"A New Method for Video Anomaly Detection, part {n}",
            ("Ada Lovelace", "Alan Turing"),
            "We propose a new method for video anomaly detection and report the best results "
            "on three public benchmarks, with a careful study of what makes it work.",
            HARVESTED - timedelta(hours=n),
            HARVESTED - timedelta(hours=n),
            "cs.CV",
        )
        for n in range(1, 4)
    ]
    _store_day(store, papers)
    async with serve_openai() as fake:
        for paper in papers:
            fake.teach(paper.title, HOSTILE_TITLE)
            fake.teach(paper.abstract, HOSTILE_ABSTRACT)
        settings = settings_for_tests(
            translation={"language": "zh", "base_url": fake.url},
            digest={"archive_dir": str(tmp_path / "digests")},
        )
        async with OpenAITranslator.from_settings(settings) as translator:
            report = await translate_new_papers(
                store=store,
                translator=translator,
                language="zh",
                since=HARVESTED - timedelta(days=1),
                deadline=10,
            )
    assert report.translated == len(papers)  # the answers were accepted and stored
    result = write_daily_archive(settings=settings, store=store, day=DAY)
    tokens = _commonmark(result.path.read_text(encoding="utf-8"))
    kinds = [t.type for t in tokens]
    assert [t.tag for t in tokens if t.type == "heading_open"] == ["h1"] * len(papers)
    assert kinds.count("hr") == len(papers)
    assert not {"fence", "code_block", "html_block", "blockquote_open", "ordered_list_open"} & set(
        kinds
    )
    paragraphs = [t.content for t in tokens if t.type == "inline"]
    assert sum(p.startswith("**Authors**: ") for p in paragraphs) == len(papers)
    assert sum(p.startswith("**Link**: ") for p in paragraphs) == len(papers)
    translated = [p for p in paragraphs if p.startswith("**Abstract (ZH)**: ")]
    assert len(translated) == len(papers)
    # One paragraph each, first sentence to last, with every tag and mention shown as text.
    for paragraph in translated:
        assert "最后一句也是中文" in paragraph
        assert "\n" not in paragraph
    html = MarkdownIt("commonmark", {"html": True}).render(result.path.read_text("utf-8"))
    for raw in ("<script>", "<details>", "<!--"):
        assert raw not in html
    assert "&lt;script&gt;" in html
    assert 'href="javascript' not in html
