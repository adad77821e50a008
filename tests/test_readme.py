"""The README snapshot: the DailyArXiv golden file, hostile text, the size cap, writing, git."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import lxml.html
import pytest
from lxml import etree
from markdown_it import MarkdownIt

from digest.domain import Paper
from digest.readme import render_readme
from tests.reference_papers import REFERENCE_README, load_reference_sections

REFERENCE_DAY = date(2025, 2, 11)


def _reference_sections() -> list[tuple[str, tuple]]:
    return [(s.keyword, s.papers) for s in load_reference_sections()]


def test_golden_reference_byte_for_byte() -> None:
    """The reference's 80 papers under its 4 keywords render exactly as DailyArXiv did."""
    expected = REFERENCE_README.read_bytes()
    rendered = render_readme(_reference_sections(), today=REFERENCE_DAY).encode("utf-8")
    assert rendered == expected


def test_golden_differs_only_in_the_date_line() -> None:
    """On another day only the `Last update` line changes."""
    expected = REFERENCE_README.read_text(encoding="utf-8").splitlines(keepends=True)
    rendered = render_readme(_reference_sections(), today=date(2025, 3, 1)).splitlines(
        keepends=True
    )
    differing = [(a, b) for a, b in zip(expected, rendered, strict=True) if a != b]
    assert differing == [("Last update: 2025-02-11\n", "Last update: 2025-03-01\n")]


# --- rows, ordering, links, dates, comments -------------------------------------------------


def _paper(
    number: int,
    *,
    title: str = "A Title",
    abstract: str = "An abstract.",
    comment: str | None = None,
    updated: datetime | None = None,
    version: int = 1,
) -> Paper:
    when = updated or datetime(2025, 1, 1, 12, tzinfo=UTC) + timedelta(days=number)
    return Paper(
        arxiv_id=f"2501.{number:05d}",
        version=version,
        title=title,
        authors=("A. Author",),
        abstract=abstract,
        published=when,
        updated=when,
        primary_category="cs.CV",
        comment=comment,
    )


def _rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| **[")]


def test_latest_n_newest_first_and_the_header_shows_n() -> None:
    """Only the newest max_papers rows are kept, newest first, and the header names the cap."""
    papers = [_paper(n) for n in (3, 1, 5, 2, 4)]
    text = render_readme([("Topic", papers)], today=REFERENCE_DAY, max_papers=3)
    assert "up to a maximum of 3 papers." in text
    assert [row.split("abs/")[1].split(")")[0] for row in _rows(text)] == [
        "2501.00005v1",
        "2501.00004v1",
        "2501.00003v1",
    ]


def test_shuffled_input_still_reproduces_the_reference() -> None:
    """Rows are sorted by the renderer, not trusted to arrive in order."""
    shuffled = [(kw, tuple(reversed(papers))) for kw, papers in _reference_sections()]
    assert render_readme(shuffled, today=REFERENCE_DAY) == REFERENCE_README.read_text("utf-8")


def test_pdf_links_and_versioned_abs_links() -> None:
    """`link="pdf"` links the versioned PDF; the default links the versioned abs page."""
    paper = _paper(7, version=3)
    abs_text = render_readme([("k", [paper])], today=REFERENCE_DAY)
    pdf_text = render_readme([("k", [paper])], today=REFERENCE_DAY, link="pdf")
    assert "(http://arxiv.org/abs/2501.00007v3)" in abs_text
    assert "(http://arxiv.org/pdf/2501.00007v3)" in pdf_text
    assert "arxiv.org/abs/" not in pdf_text


def test_dates_are_shown_in_the_configured_timezone() -> None:
    """The row date is the updated time's date in the README's timezone."""
    late = _paper(1, updated=datetime(2025, 2, 10, 23, 30, tzinfo=UTC))
    utc_row = _rows(render_readme([("k", [late])], today=REFERENCE_DAY))[0]
    tokyo_row = _rows(render_readme([("k", [late])], today=REFERENCE_DAY, tz="Asia/Tokyo"))[0]
    assert "| 2025-02-10 |" in utc_row
    assert "| 2025-02-11 |" in tokyo_row


@pytest.mark.parametrize(
    ("comment", "cell"),
    [
        (None, "|  |"),
        ("", "|  |"),
        ("20 characters long!!", "| 20 characters long!! |"),
        (
            "21 characters long!!!",
            "| <details><summary>21 ch...</summary><p>21 characters long!!!</p></details> |",
        ),
        (
            "ICLR 2025\n  camera ready",
            "| <details><summary>ICLR ...</summary><p>ICLR 2025 camera ready</p></details> |",
        ),
        ("short\ncomment", "| short comment |"),
    ],
)
def test_comment_cell(comment: str | None, cell: str) -> None:
    """Comments over 20 characters fold behind their first 5; empty ones leave an empty cell."""
    row = _rows(render_readme([("k", [_paper(1, comment=comment)])], today=REFERENCE_DAY))[0]
    assert row.endswith(cell)


# --- hostile text: checked through a real CommonMark + GFM table parser ----------------------

_MARKDOWN = MarkdownIt("commonmark", {"html": True}).enable("table")

HOSTILE = [
    "a | b || c",
    "line one\nline two\r\n\n\t  indented",
    "<script>alert('x')</script>",
    "</p></details> | injected | cell |",
    "[click](javascript:alert(1))",
    "text ](javascript:alert(1)) more",
    "<!-- an unclosed comment",
    "<!-- a hidden comment --> after",
    "[click](https://evil.example/x) and <https://evil.example/auto>",
    "`code | span` and a lone ` backtick",
    "an escaped \\| pipe and a trailing backslash \\",
    "entities &lt; &amp; &#124; R&D & done",
    "Title ] with ) and ( brackets [",
    "<img src=x onerror=alert(1)>",
]


def _table(text: str) -> etree._Element:
    html = _MARKDOWN.render(text)
    root = lxml.html.fragment_fromstring(html, create_parent="div")
    tables = root.findall(".//table")
    assert len(tables) == 1
    return tables[0]


def _expected(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_text_cannot_break_the_table(hostile: str) -> None:
    """Title, abstract, comment and keyword show exactly their text, in their own cells."""
    comment = hostile + " (and a comment over 20 characters)"
    paper = _paper(1, title=hostile, abstract=hostile, comment=comment)
    text = render_readme([(f"kw {hostile}".replace("\n", " "), [paper])], today=REFERENCE_DAY)
    assert len(_rows(text)) == 1
    root = lxml.html.fragment_fromstring(_MARKDOWN.render(text), create_parent="div")
    assert [h.text_content() for h in root.findall(".//h2")] == [_expected(f"kw {hostile}")]
    table = _table(text)
    body_rows = table.findall("./tbody/tr")
    assert len(body_rows) == 1
    cells = body_rows[0].findall("./td")
    assert len(cells) == 4
    title_cell, date_cell, abstract_cell, comment_cell = cells
    links = title_cell.findall(".//a")
    assert len(links) == 1
    assert links[0].get("href") == "http://arxiv.org/abs/2501.00001v1"
    assert links[0].text_content() == _expected(hostile)
    assert date_cell.text_content() == "2025-01-02"
    assert abstract_cell.findall(".//a") == []
    assert abstract_cell.find(".//summary").text_content() == "Show"
    assert abstract_cell.find(".//p").text_content() == _expected(hostile)
    assert comment_cell.find(".//summary").text_content() == _expected(comment)[:5] + "..."
    assert comment_cell.find(".//p").text_content() == _expected(comment)
    assert comment_cell.findall(".//a") == []
    # No element or comment node came from paper text: only the markup the template writes.
    tags = {el.tag for el in root.iter() if isinstance(el.tag, str)}
    assert tags <= {"div", "h1", "h2", "p", "table", "thead", "tbody", "tr", "th", "td"} | {
        "strong",
        "a",
        "details",
        "summary",
    }
    assert not [el for el in root.iter() if el.tag is etree.Comment]


def test_very_long_abstract_stays_one_row() -> None:
    """A 200 kB abstract with newlines is one line of one cell."""
    abstract = ("A sentence with | pipes and <b>tags</b>.\n" * 5000).strip()
    text = render_readme([("k", [_paper(1, abstract=abstract)])], today=REFERENCE_DAY)
    assert len(_rows(text)) == 1
    cell = _table(text).find("./tbody/tr/td[3]/details/p")
    assert cell is not None
    assert cell.text_content() == _expected(abstract)


def test_reference_renders_as_a_real_table() -> None:
    """Each reference section parses as a 4-column table with its 20 rows."""
    tables = lxml.html.fragment_fromstring(
        _MARKDOWN.render(REFERENCE_README.read_text("utf-8")), create_parent="div"
    ).findall(".//table")
    assert [len(t.findall("./tbody/tr")) for t in tables] == [20, 20, 20, 20]
    assert {len(tr.findall("./td")) for t in tables for tr in t.findall("./tbody/tr")} == {4}
