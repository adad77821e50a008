"""The README snapshot: the DailyArXiv golden file, hostile text, the size cap, writing, git."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import lxml.html
import pytest
from lxml import etree
from markdown_it import MarkdownIt

from digest.domain import Paper
from digest.readme import (
    ReadmeError,
    ReadmeResult,
    _redact,
    build_readme,
    commit_readme,
    feed_name,
    layout_readme,
    page_slug,
    render_readme,
    write_readme,
    write_snapshot,
    write_text_atomic,
)
from tests.reference_papers import REFERENCE_README, load_reference_sections

REFERENCE_DAY = date(2025, 2, 11)


def _reference_sections() -> list[tuple[str, tuple[Paper, ...]]]:
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


def test_latest_n_newest_first_under_dailyarxivs_fixed_header() -> None:
    """Only the newest max_papers rows are kept, newest first; the header is DailyArXiv's own."""
    papers = [_paper(n) for n in (3, 1, 5, 2, 4)]
    text = render_readme([("Topic", papers)], today=REFERENCE_DAY, max_papers=3)
    assert "up to a maximum of 100 papers." in text
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


# --- the size cap ----------------------------------------------------------------------------


def _big_sections(keywords: int = 3, per_keyword: int = 12) -> list[tuple[str, list[Paper]]]:
    """Papers with ~1 kB abstracts; keyword k's paper i is updated at hour i*keywords + k."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    return [
        (
            f"Keyword {k}",
            [
                _paper(
                    k * 100 + i,
                    abstract="lorem ipsum " * 90,
                    updated=start + timedelta(hours=i * keywords + k),
                )
                for i in range(per_keyword)
            ],
        )
        for k in range(keywords)
    ]


def _ids(text: str) -> list[str]:
    return [row.split("abs/")[1].split("v1)")[0] for row in _rows(text)]


def _layout(sections: list[tuple[str, list[Paper]]], max_bytes: int, **kw: object) -> ReadmeResult:
    return layout_readme(sections, today=REFERENCE_DAY, max_bytes=max_bytes, **kw)  # type: ignore[arg-type]


def test_a_readme_that_fits_is_dailyarxivs_byte_for_byte() -> None:
    """Under the cap nothing is trimmed and the text is what render_readme gives."""
    sections = _big_sections()
    result = _layout(sections, 10_000_000)
    assert (result.layout, result.trimmed, result.pages) == ("full", 0, ())
    assert result.text == render_readme(sections, today=REFERENCE_DAY)


def test_past_the_cap_every_keyword_keeps_the_same_number_of_its_newest_rows() -> None:
    """Rows are lowered evenly (not the oldest of all first), as many as fit, and each cut
    section says how many of how many it shows."""
    sections = _big_sections(keywords=3, per_keyword=12)
    sections[2] = (sections[2][0], sections[2][1][:3])  # a keyword with few papers keeps them
    full = render_readme(sections, today=REFERENCE_DAY)
    max_bytes = len(full.encode()) // 2
    result = _layout(sections, max_bytes, totals={"Keyword 0": 40})
    assert result.layout == "even"
    assert result.size <= max_bytes
    text = result.text
    blocks = text.split("## ")[1:]
    counts = [len(_rows("## " + block)) for block in blocks]
    assert counts[0] == counts[1] > 3
    assert counts[2] == 3
    newest = sorted(sections[0][1], key=lambda p: p.updated, reverse=True)[: counts[0]]
    assert _ids("## " + blocks[0]) == [p.arxiv_id for p in newest]
    assert f"Showing the latest {counts[0]} of 40 papers" in blocks[0]  # the stored total
    assert f"Showing the latest {counts[1]} of 12 papers" in blocks[1]
    assert "Showing" not in blocks[2]
    assert result.trimmed == 24 - 2 * counts[0]
    # one row more per keyword would not have fitted
    more = [(k, sorted(ps, key=lambda p: p.updated)[-(counts[0] + 1) :]) for k, ps in sections]
    assert len(render_readme(more, today=REFERENCE_DAY).encode()) > max_bytes
    # the cut sections are still real tables, and the notice is a paragraph after each
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    assert sum(1 for t in tokens if t.type == "table_open") == 3
    assert sum(1 for t in tokens if t.type == "tr_open") == sum(counts) + 3


def test_when_one_row_each_is_too_much_the_readme_becomes_an_index_of_pages() -> None:
    """Thousands of keywords: one line each, linked to its own DailyArXiv-format page; every
    page under the cap; keywords without papers listed without a link."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    sections = [
        (
            f"Topic {k}",
            [
                _paper(k * 10 + i, abstract="z " * 300, updated=start + timedelta(hours=i))
                for i in range(3)
            ],
        )
        for k in range(400)
    ]
    sections.append(("Nothing yet", []))
    max_bytes = 12_000  # 400 index lines need three index pages
    result = _layout(sections, max_bytes, totals={"Topic 7": 99})
    assert result.layout == "index"
    assert result.size <= max_bytes
    pages = {page.path: page.render() for page in result.pages}
    keyword_pages = {path: text for path, text in pages.items() if "/index-" not in path}
    assert len(keyword_pages) == 400
    assert all(len(text.encode()) <= max_bytes for text in pages.values())
    reachable = result.text + "".join(t for path, t in pages.items() if "/index-" in path)
    for keyword, _papers in sections[:400]:
        path = f"papers/{page_slug(keyword)}.md"
        page = keyword_pages[path]
        assert f"## {keyword}\n| **Title** |" in page
        assert len(_rows(page)) == 3
        assert f"]({path})" in reachable or f"]({path.split('/')[1]})" in reachable
    assert "| Nothing yet | 0 | - |" in reachable
    assert f"| [Topic 7](papers/{page_slug('Topic 7')}.md) | 99 | 2025-01-01 |" in result.text
    assert "More keywords: [next page](papers/index-2.md)" in result.text
    index_pages = sorted(path for path in pages if "/index-" in path)
    assert index_pages == [f"papers/index-{n}.md" for n in range(2, len(index_pages) + 2)]
    for number, path in enumerate(index_pages, start=2):
        assert "[All keywords](../README.md)" in pages[path]
        has_next = f"More keywords: [next page](index-{number + 1}.md)" in pages[path]
        assert has_next == (path != index_pages[-1])
    assert result.warning == f"readme.index keywords_on_pages=400 bytes={result.size}"


def test_page_names_are_readable_and_never_shared() -> None:
    """Slugs keep letters and digits; keywords that read alike still get their own page."""
    assert page_slug("Diffusion Models").startswith("diffusion-models-")
    assert page_slug("C++") != page_slug("C#")
    assert page_slug("Diffusion models") == page_slug("diffusion  Models")  # one keyword
    assert page_slug("图神经网络").startswith("keyword-")


def test_build_readme_warns_when_trimming(caplog: pytest.LogCaptureFixture) -> None:
    """build_readme reports the trim as an event line and in its result."""
    sections = _big_sections()
    full = render_readme(sections, today=REFERENCE_DAY)
    with caplog.at_level(logging.WARNING, logger="digest.readme"):
        result = build_readme(
            [k for k, _ in sections],
            dict(sections),
            today=REFERENCE_DAY,
            max_bytes=len(full.encode()) - 1,
        )
    assert result.trimmed == 3  # one row less for each of the three keywords
    assert result.warning == f"readme.trimmed rows=3 bytes={result.size}"
    assert [r.getMessage() for r in caplog.records] == [
        f"readme.trimmed rows=3 bytes={result.size} max_bytes={len(full.encode()) - 1}"
    ]


def test_build_readme_from_a_callable_or_a_mapping() -> None:
    """Keywords keep the given order; a mapping may lack a keyword; revisions show once."""
    old = _paper(1, title="Old version", version=1)
    new = _paper(1, title="New version", version=2, updated=old.updated + timedelta(days=3))
    other = _paper(2)
    store = {"Beta": [old, new, other], "Alpha": [other]}
    by_call = build_readme(
        ["Beta", "Alpha", "Gamma"], lambda q: store.get(q, []), today=REFERENCE_DAY
    )
    by_map = build_readme(["Beta", "Alpha", "Gamma"], store, today=REFERENCE_DAY)
    assert by_call == by_map
    assert by_call.trimmed == 0
    headings = [line for line in by_call.text.splitlines() if line.startswith("## ")]
    assert headings == ["## Beta", "## Alpha", "## Gamma"]
    assert "New version](http://arxiv.org/abs/2501.00001v2)" in by_call.text
    assert "Old version" not in by_call.text
    assert len(_rows(by_call.text)) == 3


# --- writing the file ------------------------------------------------------------------------


def test_write_readme_creates_folders_and_writes_exact_bytes(tmp_path: Path) -> None:
    """A new README lands with its exact bytes, readable by others, and no temp file is left."""
    path = tmp_path / "site" / "docs" / "README.md"
    text = "# Daily Papers\nÜnïcode — ok\n\n"
    assert write_readme(path, text) is True
    assert path.read_bytes() == text.encode("utf-8")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["README.md"]


def test_write_readme_unchanged_writes_nothing(tmp_path: Path) -> None:
    """Writing the same text again reports no change and leaves the file untouched."""
    path = tmp_path / "README.md"
    write_readme(path, "same\n")
    os.utime(path, (1_000_000_000, 1_000_000_000))
    inode = path.stat().st_ino
    assert write_readme(path, "same\n") is False
    assert path.stat().st_mtime == 1_000_000_000
    assert path.stat().st_ino == inode
    assert write_readme(path, "changed\n") is True
    assert path.read_text() == "changed\n"
    assert path.stat().st_ino != inode  # replaced by rename, not rewritten in place


def test_write_text_atomic_keeps_the_old_file_when_the_rename_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure before the rename leaves the old content and no temp file, as a ReadmeError."""
    path = tmp_path / "README.md"
    write_text_atomic(path, "old\n")

    def refuse(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(ReadmeError, match="No space left on device"):
        write_text_atomic(path, "new\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]


def test_write_readme_into_an_impossible_place(tmp_path: Path) -> None:
    """A parent that is a file gives an error naming the path, not a traceback from os."""
    (tmp_path / "blocker").write_text("a file, not a folder")
    with pytest.raises(ReadmeError, match="blocker"):
        write_readme(tmp_path / "blocker" / "README.md", "x\n")


# --- committing with git ---------------------------------------------------------------------


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(  # noqa: S603 - test helper, fixed arguments
        ["git", "-C", str(cwd), *args],  # noqa: S607 - git from PATH, as the code under test
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh work tree with a local identity, isolated from the user's git configuration."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in (
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
    ):
        monkeypatch.delenv(name, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    _git(work, "init", "-q", "-b", "main")
    _git(work, "config", "user.name", "Daily Papers Test")
    _git(work, "config", "user.email", "test@example.org")
    _git(work, "config", "commit.gpgsign", "false")
    return work


def test_commit_readme_outside_a_work_tree_is_skipped(tmp_path: Path) -> None:
    """A README outside any repository is left alone."""
    path = tmp_path / "README.md"
    write_readme(path, "x\n")
    assert commit_readme(path, today=REFERENCE_DAY) == "skipped"


def test_commit_readme_commits_only_the_readme(repo: Path) -> None:
    """The README is committed alone with the dated message; others' staged work stays staged."""
    (repo / "other.txt").write_text("someone else's work\n")
    _git(repo, "add", "other.txt")
    path = repo / "out" / "README.md"
    write_readme(path, "v1\n")
    assert commit_readme(path, today=REFERENCE_DAY) == "committed"  # no remote: no push
    assert _git(repo, "log", "--format=%s") == "Update daily papers 2025-02-11"
    assert _git(repo, "show", "--name-only", "--format=", "HEAD") == "out/README.md"
    assert _git(repo, "diff", "--cached", "--name-only") == "other.txt"
    assert commit_readme(path, today=REFERENCE_DAY) == "unchanged"
    assert _git(repo, "rev-list", "--count", "HEAD") == "1"


def test_commit_readme_pushes_to_the_remote(repo: Path, tmp_path: Path) -> None:
    """With a remote configured the commit reaches it, with and without a tracking branch."""
    remote = tmp_path / "remote.git"
    _git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    _git(repo, "remote", "add", "origin", str(remote))
    path = repo / "README.md"
    write_readme(path, "v1\n")
    assert commit_readme(path, today=REFERENCE_DAY) == "pushed"
    assert _git(remote, "log", "--format=%s", "main") == "Update daily papers 2025-02-11"
    _git(repo, "branch", "--set-upstream-to=origin/main")
    write_readme(path, "v2\n")
    assert commit_readme(path, today=date(2025, 2, 12)) == "pushed"
    assert _git(remote, "show", "main:README.md") == "v2"
    write_readme(path, "v3\n")
    assert commit_readme(path, push=False, today=date(2025, 2, 13)) == "committed"
    assert _git(remote, "show", "main:README.md") == "v2"


def test_commit_readme_push_failure_is_an_actionable_error(repo: Path, tmp_path: Path) -> None:
    """A remote that cannot be reached gives a ReadmeError with git's reason and a hint."""
    _git(repo, "remote", "add", "origin", str(tmp_path / "missing.git"))
    path = repo / "README.md"
    write_readme(path, "v1\n")
    with pytest.raises(ReadmeError, match=r"git push failed in .*check the remote") as caught:
        commit_readme(path, today=REFERENCE_DAY)
    assert "Traceback" not in str(caught.value)
    assert _git(repo, "log", "--format=%s") == "Update daily papers 2025-02-11"  # kept locally


def test_commit_readme_without_identity_says_how_to_fix_it(repo: Path) -> None:
    """A repository with no git identity gets an error that names the settings to add."""
    _git(repo, "config", "--unset", "user.name")
    _git(repo, "config", "--unset", "user.email")
    _git(repo, "config", "user.useConfigOnly", "true")  # never guess an identity from the host
    path = repo / "README.md"
    write_readme(path, "v1\n")
    with pytest.raises(ReadmeError, match=r"git commit failed .*user\.email"):
        commit_readme(path, today=REFERENCE_DAY)


def test_commit_readme_timeout_is_reported(repo: Path) -> None:
    """A git that does not answer in time becomes a ReadmeError, not a hang."""
    path = repo / "README.md"
    write_readme(path, "v1\n")
    with pytest.raises(ReadmeError, match="did not finish within"):
        commit_readme(path, today=REFERENCE_DAY, timeout=0.000001)


def test_git_messages_never_carry_credentials() -> None:
    """Tokens embedded in a remote URL are masked before they reach a message or a log."""
    message = "fatal: unable to access 'https://bot:ghp_secret123@github.com/lab/papers.git/'"
    assert _redact(message) == "fatal: unable to access 'https://***@github.com/lab/papers.git/'"


def _index_result(keywords: int, max_bytes: int = 12_000) -> ReadmeResult:
    """An index-layout result: `keywords` keywords of three 600-byte papers each."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    sections = [
        (
            f"Topic {k}",
            [_paper(k * 10 + i, abstract="w " * 300, updated=start) for i in range(3)],
        )
        for k in range(keywords)
    ]
    return _layout(sections, max_bytes)


def test_write_snapshot_writes_pages_once_and_removes_only_its_own_stale_ones(
    tmp_path: Path,
) -> None:
    """The index's pages land next to the README; a rerun writes nothing; a page the new
    layout drops is removed, a file of someone else's is kept; back to a plain README, the
    pages folder is cleaned up."""
    path = tmp_path / "README.md"
    first = _index_result(40)
    assert first.layout == "index"
    assert write_snapshot(path, first)
    pages = tmp_path / "papers"
    names = {p.name for p in pages.glob("*.md")}
    assert len(names) >= 40
    mtimes = {p.name: p.stat().st_mtime_ns for p in pages.glob("*.md")}
    assert not write_snapshot(path, first)  # unchanged: nothing is rewritten
    assert {p.name: p.stat().st_mtime_ns for p in pages.glob("*.md")} == mtimes
    (pages / "notes.md").write_text("mine\n")
    smaller = _index_result(30)
    assert write_snapshot(path, smaller)
    kept = {p.name for p in pages.glob("*.md")}
    assert f"{page_slug('Topic 35')}.md" not in kept
    assert f"{page_slug('Topic 5')}.md" in kept
    assert "notes.md" in kept
    plain = _layout([("Topic 1", [_paper(1)])], 12_000)
    assert write_snapshot(path, plain)
    assert {p.name for p in pages.iterdir()} == {"notes.md"}


def test_commit_readme_commits_the_pages_too(repo: Path) -> None:
    """In the index layout the README and its pages are committed together, and a page that
    went away is committed as removed."""
    path = repo / "README.md"
    write_snapshot(path, _index_result(40))
    assert commit_readme(path, today=REFERENCE_DAY) == "committed"
    committed = _git(repo, "show", "--name-only", "--format=", "HEAD").splitlines()
    assert "README.md" in committed
    assert f"papers/{page_slug('Topic 3')}.md" in committed
    write_snapshot(path, _index_result(30))
    assert commit_readme(path, today=REFERENCE_DAY) == "committed"
    assert f"papers/{page_slug('Topic 35')}.md" not in _git(repo, "ls-files")
    assert _git(repo, "status", "--porcelain") == ""


# --- feeds (feeds.enabled) -------------------------------------------------------------------


def test_feeds_on_link_each_heading_and_say_so_once_and_off_nothing_differs() -> None:
    """With feeds each `## keyword` links to feeds/<slug>.atom and the header names the OPML;
    every other line is the reference's, and without feeds the reference is unchanged."""
    sections = _reference_sections()
    off = layout_readme(sections, today=REFERENCE_DAY, max_bytes=10_000_000, feeds=False).text
    assert off.encode("utf-8") == REFERENCE_README.read_bytes()
    on = layout_readme(sections, today=REFERENCE_DAY, max_bytes=10_000_000, feeds=True).text
    reference = REFERENCE_README.read_text(encoding="utf-8").splitlines()
    lines = on.splitlines()
    added = [
        "Each keyword's heading links to its Atom feed; [feeds/index.opml](feeds/index.opml) "
        "lists them all for a feed reader.",
        "",
    ]
    at = reference.index("Last update: 2025-02-11")
    assert lines[at : at + 2] == added
    del lines[at : at + 2]
    headings = {f"## [{k}](feeds/{feed_name(k)})": f"## {k}" for k, _ in sections}
    assert [line for line in lines if line.startswith("## ")] == list(headings)
    assert [headings.get(line, line) for line in lines] == reference
    tokens = MarkdownIt("commonmark").enable("table").parse(on)
    assert sum(1 for t in tokens if t.type == "table_open") == len(sections)


def test_a_hostile_keyword_heading_link_stays_one_link() -> None:
    """A keyword with brackets and markup still links its heading to its own feed only."""
    keyword = "C++ ](http://evil) <b>x</b>"
    text = layout_readme([(keyword, [_paper(1)])], today=REFERENCE_DAY, feeds=True).text
    heading = next(line for line in text.splitlines() if line.startswith("## "))
    links = [
        t.attrGet("href")
        for token in MarkdownIt("commonmark").parse(heading)
        for t in token.children or []
        if t.type == "link_open"
    ]
    assert links == [f"feeds/{feed_name(keyword)}"]


def test_index_pages_link_their_heading_to_the_feed_one_folder_up() -> None:
    """In the index layout a keyword's page sits in papers/: its heading links ../feeds/."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    sections = [
        (f"Topic {k}", [_paper(k * 10 + i, abstract="w " * 300, updated=start) for i in range(3)])
        for k in range(40)
    ]
    result = _layout(sections, 12_000, feeds=True)
    assert result.layout == "index"
    page = next(p for p in result.pages if p.keyword == "Topic 3").render()
    assert f"## [Topic 3](../feeds/{feed_name('Topic 3')})\n" in page


def test_commit_readme_commits_the_feeds_too(repo: Path) -> None:
    """The feeds folder next to the README is committed with it (a GitHub Pages site serves
    it), and a removed feed is committed as removed."""
    path = repo / "README.md"
    write_readme(path, "x\n")
    feeds = repo / "feeds"
    write_text_atomic(feeds / f"{page_slug('a')}.atom", "<feed/>\n")
    write_text_atomic(feeds / "index.opml", "<opml/>\n")
    assert commit_readme(path, today=REFERENCE_DAY) == "committed"
    committed = set(_git(repo, "show", "--name-only", "--format=", "HEAD").splitlines())
    assert committed == {"README.md", f"feeds/{page_slug('a')}.atom", "feeds/index.opml"}
    (feeds / f"{page_slug('a')}.atom").unlink()
    assert commit_readme(path, today=REFERENCE_DAY) == "committed"
    assert _git(repo, "ls-files") == "README.md\nfeeds/index.opml"
