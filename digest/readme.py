"""The README snapshot: DailyArXiv's Markdown table of the latest papers per keyword.

Rendering is pure (`render_readme`, `layout_readme`, `build_readme`); the cycle fetches each
keyword's latest papers from the store, calls `build_readme`, then `write_readme` and, when
`readme.git_commit` is on, `commit_readme` (blocking: run it through `asyncio.to_thread`).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, tzinfo
from functools import partial
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from digest.domain import Paper
from digest.errors import DailyPapersError
from digest.query import query_key
from digest.render import collapse_ws, get_environment

logger = logging.getLogger(__name__)

LinkKind = Literal["abs", "pdf"]
Layout = Literal["full", "even", "index"]
GitOutcome = Literal["skipped", "unchanged", "committed", "pushed"]

TEMPLATE = "README.md.j2"
PAGES_DIR = "papers"  # next to the README: one page per keyword in the index layout
FEEDS_DIR = "feeds"  # next to the README: an Atom feed per keyword (digest/feeds.py)
OPML_NAME = "index.opml"  # in FEEDS_DIR: the list of every keyword's feed
DEFAULT_MAX_PAPERS = 100  # DailyArXiv keeps the latest 100 per keyword
DEFAULT_MAX_BYTES = 500_000  # GitHub stops rendering a README at 512 KB; leave some headroom
FOLD_COMMENT_OVER = 20  # DailyArXiv folds comments longer than this into <details>
GIT_TIMEOUT = 60.0  # seconds; a push over a slow link is seconds, a hung credential prompt forever


class ReadmeError(DailyPapersError):
    """The README snapshot could not be written or committed; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class ReadmeRow:
    """One table row: raw text (the template escapes it) and the values DailyArXiv shows."""

    title: str
    url: str
    date: str  # YYYY-MM-DD of the paper's last update, in the README's timezone
    abstract: str
    comment: str
    updated_key: tuple[float, str]  # (updated timestamp, arxiv_id): oldest rows trim first


@dataclass(frozen=True, slots=True)
class ReadmeSection:
    """One `## keyword` section with its rows, newest first."""

    keyword: str
    rows: tuple[ReadmeRow, ...]


@dataclass(frozen=True, slots=True)
class ReadmePage:
    """A page of its own next to the README (index layout), rendered when it is written."""

    path: str  # relative to the README's folder: "papers/<slug>.md"
    render: Callable[[], str] = field(compare=False)
    keyword: str | None = None  # None: a continuation of the index


@dataclass(frozen=True, slots=True)
class ReadmeResult:
    """The rendered snapshot, how many rows the size cap left out, and its pages.

    Layouts: "full" is DailyArXiv's README byte for byte; "even" lowers the rows of every
    keyword alike until it fits (a cut section says how many it shows of how many); "index"
    lists one line per keyword and moves each keyword's table to a page of its own.
    """

    text: str
    trimmed: int = 0
    layout: Layout = "full"
    pages: tuple[ReadmePage, ...] = ()

    @property
    def size(self) -> int:
        """The snapshot's size in bytes (UTF-8), the unit GitHub's limit is in."""
        return len(self.text.encode("utf-8"))

    @property
    def warning(self) -> str | None:
        """The event line for the run report when the size cap changed the layout, else None."""
        if self.layout == "index":
            pages = sum(1 for page in self.pages if page.keyword is not None)
            return f"readme.index keywords_on_pages={pages} bytes={self.size}"
        if not self.trimmed:
            return None
        return f"readme.trimmed rows={self.trimmed} bytes={self.size}"


def _zone(tz: str | tzinfo) -> tzinfo:
    return ZoneInfo(tz) if isinstance(tz, str) else tz


def _row(paper: Paper, *, link: LinkKind, tz: tzinfo) -> ReadmeRow:
    return ReadmeRow(
        title=collapse_ws(paper.title),
        url=paper.pdf_url if link == "pdf" else paper.abs_url,
        date=paper.updated.astimezone(tz).date().isoformat(),
        abstract=collapse_ws(paper.abstract),
        comment=collapse_ws(paper.comment),
        updated_key=(paper.updated.timestamp(), paper.arxiv_id),
    )


def latest_papers(papers: Sequence[Paper], max_papers: int) -> list[Paper]:
    """The newest `max_papers` distinct papers, newest first (ties: higher arXiv id first)."""
    unique: dict[str, Paper] = {}
    for paper in papers:
        known = unique.get(paper.arxiv_id)
        if known is None or (paper.version, paper.updated) > (known.version, known.updated):
            unique[paper.arxiv_id] = paper
    ordered = sorted(unique.values(), key=lambda p: (p.updated, p.arxiv_id), reverse=True)
    return ordered[: max(max_papers, 0)]


def readme_sections(
    sections: Sequence[tuple[str, Sequence[Paper]]],
    *,
    link: LinkKind = "abs",
    max_papers: int = DEFAULT_MAX_PAPERS,
    tz: str | tzinfo = UTC,
) -> list[ReadmeSection]:
    """Turn (keyword, papers) pairs into table sections: newest first, latest N per keyword."""
    zone = _zone(tz)
    return [
        ReadmeSection(
            keyword=keyword,
            rows=tuple(_row(p, link=link, tz=zone) for p in latest_papers(papers, max_papers)),
        )
        for keyword, papers in sections
    ]


def page_slug(keyword: str) -> str:
    """A keyword's page name: readable ASCII, plus a short hash so that two keywords that
    read alike ("C++", "C#") never share a page."""
    readable = re.sub(r"[^a-z0-9]+", "-", keyword.casefold()).strip("-")[:60].strip("-")
    digest = hashlib.sha1(query_key(keyword).encode()).hexdigest()[:6]  # noqa: S324 -- a name
    return f"{readable or 'keyword'}-{digest}"


def feed_name(keyword: str) -> str:
    """A keyword's Atom feed file in FEEDS_DIR: its page slug, so that README sections, pages
    and feeds share one name."""
    return f"{page_slug(keyword)}.atom"


class _Parts:
    """The README's pieces, rendered once each: a paper's row is shared by every keyword."""

    def __init__(self, *, link: LinkKind, tz: tzinfo, feeds: bool = False) -> None:
        self._macros = get_environment().get_template(TEMPLATE).module
        self._link = link
        self._tz = tz
        self._feeds = feeds
        self._rows: dict[tuple[str, int], str] = {}

    def header(self, today: date) -> str:
        opml = f"{FEEDS_DIR}/{OPML_NAME}" if self._feeds else None
        return str(self._macros.header(today.isoformat(), opml))  # type: ignore[attr-defined]

    def head(self, keyword: str, up: str = "") -> str:
        """A section's heading; `up` leads from the page it is on to the README's folder."""
        feed = f"{up}{FEEDS_DIR}/{feed_name(keyword)}" if self._feeds else None
        return str(self._macros.section_head(keyword, feed))  # type: ignore[attr-defined]

    def row(self, paper: Paper) -> str:
        key = (paper.arxiv_id, paper.version)
        text = self._rows.get(key)
        if text is None:
            row = _row(paper, link=self._link, tz=self._tz)
            text = str(self._macros.row(row, FOLD_COMMENT_OVER))  # type: ignore[attr-defined]
            self._rows[key] = text
        return text

    def shown(self, count: int, total: int) -> str:
        return str(self._macros.shown(count, total))  # type: ignore[attr-defined]

    def index_head(self, keywords: int) -> str:
        return str(self._macros.index_head(keywords))  # type: ignore[attr-defined]

    def index_row(self, keyword: str, page: str | None, papers: int, newest: str) -> str:
        return str(self._macros.index_row(keyword, page, papers, newest))  # type: ignore[attr-defined]

    def index_more(self, page: str) -> str:
        return str(self._macros.index_more(page))  # type: ignore[attr-defined]

    def page_head(self, home: str) -> str:
        return str(self._macros.page_head(None, home))  # type: ignore[attr-defined]

    def date(self, paper: Paper) -> str:
        return paper.updated.astimezone(self._tz).date().isoformat()


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class _Section:
    """A keyword's heading, rows (newest first) and total known papers, with byte sizes."""

    keyword: str
    head: str
    rows: tuple[str, ...]
    total: int
    sizes: tuple[int, ...]  # prefix sums: sizes[n] = bytes of the first n rows

    def text(self, parts: _Parts, count: int) -> str:
        """The section with its first `count` rows (and, when cut, how many it shows)."""
        shown = min(count, len(self.rows))
        body = self.head + "".join(self.rows[:shown]) + "\n"
        if shown < len(self.rows):
            body += parts.shown(shown, self.total)
        return body

    def size(self, parts: _Parts, count: int) -> int:
        shown = min(count, len(self.rows))
        size = _size(self.head) + self.sizes[shown] + 1
        if shown < len(self.rows):
            size += _size(parts.shown(shown, self.total))
        return size


def _section(parts: _Parts, keyword: str, papers: Sequence[Paper], total: int) -> _Section:
    rows = tuple(parts.row(p) for p in papers)
    sizes = (0, *itertools.accumulate(_size(r) for r in rows))
    return _Section(keyword, parts.head(keyword), rows, max(total, len(rows)), sizes)


def _fit_even(parts: _Parts, lead: str, sections: Sequence[_Section], max_bytes: int) -> int | None:
    """The most rows per section (at least 1) whose text fits `max_bytes`, or None."""
    longest = max((len(s.rows) for s in sections), default=0)

    def size(count: int) -> int:
        return _size(lead) + sum(s.size(parts, count) for s in sections)

    if size(longest) <= max_bytes:
        return longest
    if longest == 0 or size(1) > max_bytes:
        return None
    low, high = 1, longest - 1  # size(1) fits, size(longest) does not
    while low < high:  # sizes grow with the count (a "showing" line is shorter than a row)
        middle = (low + high + 1) // 2
        if size(middle) <= max_bytes:
            low = middle
        else:
            high = middle - 1
    return low


def layout_readme(
    sections: Sequence[tuple[str, Sequence[Paper]]],
    *,
    today: date,
    link: LinkKind = "abs",
    max_papers: int = DEFAULT_MAX_PAPERS,
    tz: str | tzinfo = UTC,
    max_bytes: int = DEFAULT_MAX_BYTES,
    totals: Mapping[str, int] | None = None,
    feeds: bool = False,
) -> ReadmeResult:
    """The README for (keyword, papers) pairs within `max_bytes`, in the first layout that fits.

    1. full: DailyArXiv's README, byte for byte, when everything fits;
    2. even: every keyword shows the same number of rows (its newest), the most that fit,
       and a cut section says "Showing the latest n of N papers";
    3. index: when even one row per keyword is too much, one line per keyword (papers, newest
       date, a link) and each keyword's table on its own page, `papers/<slug>.md`, each page
       within `max_bytes` too (a long index continues on `papers/index-2.md`, ...).
    `totals` gives each keyword's number of stored papers (default: the rows it has). With
    `feeds` (feeds.enabled) each keyword's heading links to its Atom feed in `feeds/` and the
    header says so; without it nothing differs from DailyArXiv's README.
    """
    parts = _Parts(link=link, tz=_zone(tz), feeds=feeds)
    totals = totals or {}
    built = [
        _section(parts, keyword, latest, totals.get(keyword, len(latest)))
        for keyword, papers in sections
        for latest in [latest_papers(papers, max_papers)]
    ]
    header = parts.header(today)
    rows = sum(len(s.rows) for s in built)
    count = _fit_even(parts, header, built, max_bytes)
    if count is not None:
        text = header + "".join(s.text(parts, count) for s in built)
        shown = sum(min(count, len(s.rows)) for s in built)
        return ReadmeResult(
            text=text, trimmed=rows - shown, layout="full" if shown == rows else "even"
        )
    return _index_layout(parts, header, built, max_bytes)


def _index_layout(
    parts: _Parts, header: str, sections: Sequence[_Section], max_bytes: int
) -> ReadmeResult:
    """README as an index of keywords; each keyword with papers gets its own page."""
    pages: list[ReadmePage] = []
    lines: list[tuple[str, str]] = []  # (line from the README, line from an index page)
    for section in sections:
        if not section.rows:
            line = parts.index_row(section.keyword, None, 0, "-")
            lines.append((line, line))
            continue
        name = f"{page_slug(section.keyword)}.md"
        newest = section.rows[0].split(" | ")[1]  # the row's date cell
        lines.append(
            (
                parts.index_row(section.keyword, f"{PAGES_DIR}/{name}", section.total, newest),
                parts.index_row(section.keyword, name, section.total, newest),
            )
        )
        pages.append(
            ReadmePage(
                f"{PAGES_DIR}/{name}", _page_renderer(parts, section, max_bytes), section.keyword
            )
        )
    lead = header + parts.index_head(len(sections))
    chunks = _index_chunks(parts, lead, lines, max_bytes)
    for number, chunk in enumerate(chunks[1:], start=2):
        text = parts.page_head("../README.md") + parts.index_head(len(sections)) + "".join(chunk)
        if number < len(chunks):
            text += parts.index_more(f"index-{number + 1}.md")
        pages.append(ReadmePage(f"{PAGES_DIR}/index-{number}.md", partial(str, text)))
    text = lead + "".join(chunks[0])
    if len(chunks) > 1:
        text += parts.index_more(f"{PAGES_DIR}/index-2.md")
    return ReadmeResult(text=text, layout="index", pages=tuple(pages))


def _index_chunks(
    parts: _Parts, lead: str, lines: Sequence[tuple[str, str]], max_bytes: int
) -> list[list[str]]:
    """Index lines split so that the README and each index page stay within `max_bytes`.

    The README holds the first chunk (its lines link into `papers/`), the pages the others
    (their lines link to siblings); room is kept for the "more keywords" link.
    """
    more = _size(parts.index_more(f"{PAGES_DIR}/index-99999.md"))
    page_lead = _size(parts.page_head("../README.md") + parts.index_head(len(lines)))
    chunks: list[list[str]] = [[]]
    used = _size(lead) + more
    for readme_line, page_line in lines:
        line = readme_line if len(chunks) == 1 else page_line
        if used + _size(line) > max_bytes and chunks[-1]:
            chunks.append([])
            used = page_lead + more
            line = page_line
        chunks[-1].append(line)
        used += _size(line)
    return chunks


def _page_renderer(parts: _Parts, section: _Section, max_bytes: int) -> Callable[[], str]:
    """A keyword's own page: a link home, then its DailyArXiv section, within `max_bytes`."""

    def render() -> str:
        lead = parts.page_head("../README.md")
        on_page = replace(section, head=parts.head(section.keyword, up="../"))
        count = _fit_even(parts, lead, [on_page], max_bytes) or 1
        return lead + on_page.text(parts, count)

    return render


def render_readme(
    sections: Sequence[tuple[str, Sequence[Paper]]],
    *,
    today: date,
    link: LinkKind = "abs",
    max_papers: int = DEFAULT_MAX_PAPERS,
    tz: str | tzinfo = UTC,
) -> str:
    """Render the DailyArXiv README for (keyword, papers) pairs, in the order given."""
    return layout_readme(
        sections, today=today, link=link, max_papers=max_papers, tz=tz, max_bytes=sys.maxsize
    ).text


def build_readme(
    keywords: Sequence[str],
    papers_for: Callable[[str], Sequence[Paper]] | Mapping[str, Sequence[Paper]],
    *,
    today: date,
    link: LinkKind = "abs",
    max_papers: int = DEFAULT_MAX_PAPERS,
    tz: str | tzinfo = UTC,
    max_bytes: int = DEFAULT_MAX_BYTES,
    totals: Mapping[str, int] | None = None,
    feeds: bool = False,
) -> ReadmeResult:
    """The README for the tracked keywords (display text, config/DB order), within the cap.

    `papers_for` gives a keyword's latest papers: a mapping (a missing keyword has none) or a
    callable such as `lambda q: store.latest_matches(q, limit)`. Logs `readme.trimmed` or
    `readme.index` when the size cap changed the layout.
    """
    if isinstance(papers_for, Mapping):
        mapping = papers_for
        sections = [(keyword, mapping.get(keyword, ())) for keyword in keywords]
    else:
        sections = [(keyword, papers_for(keyword)) for keyword in keywords]
    result = layout_readme(
        sections,
        today=today,
        link=link,
        max_papers=max_papers,
        tz=tz,
        max_bytes=max_bytes,
        totals=totals,
        feeds=feeds,
    )
    if result.warning:
        logger.warning("%s max_bytes=%d", result.warning, max_bytes)
    return result


def write_text_atomic(path: Path, text: str) -> bool:
    """Write UTF-8 text atomically, only if it differs; returns whether the file changed.

    A temporary file in the same folder is written, fsynced and renamed over the target, so a
    reader (or a crash) sees the old file or the new one, never half of one. The folder is
    created when missing. An unchanged file is not touched (its mtime stays).
    """
    data = text.encode("utf-8")
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ReadmeError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644  # mkstemp's 0600 would hide a README meant to be served or published
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp_name, mode)
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
    except OSError as exc:
        raise ReadmeError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return True


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (POSIX); platforms that cannot open folders skip it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)


def write_readme(path: Path, text: str) -> bool:
    """Write the README snapshot atomically when it changed; returns whether it was written."""
    return write_text_atomic(path, text)


PAGES_MANIFEST = ".daily-papers-pages"  # in the pages folder: the pages this service wrote


def write_snapshot(path: Path, result: ReadmeResult) -> bool:
    """Write the README and its pages (index layout) where they changed; True when any did.

    Pages are rendered and written one at a time (thousands of keywords never sit in memory
    together). Pages this service wrote earlier that the new layout does not have are removed;
    the manifest in the pages folder says which files are ours, so nothing else there is
    touched.
    """
    changed = write_text_atomic(path, result.text)
    folder = path.parent / PAGES_DIR
    manifest = folder / PAGES_MANIFEST
    try:
        before = set(manifest.read_text(encoding="utf-8").split())
    except FileNotFoundError:
        before = set()
    except OSError as exc:
        raise ReadmeError(f"cannot read {manifest}: {exc.strerror}") from exc
    written = []
    for page in result.pages:
        changed |= write_text_atomic(path.parent / page.path, page.render())
        written.append(Path(page.path).name)
    for name in sorted(before - set(written)):
        try:
            (folder / name).unlink(missing_ok=True)
        except OSError as exc:
            raise ReadmeError(
                f"cannot remove the old page {folder / name}: {exc.strerror}"
            ) from exc
        changed = True
    if written:
        write_text_atomic(manifest, "".join(f"{name}\n" for name in sorted(written)))
    elif before:
        manifest.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty: other files there are not ours
    return changed


# `https://user:token@host/...` in git's messages: the credentials must not reach logs.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")


def _redact(text: str) -> str:
    return _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)


def _git(
    folder: Path, *args: str, timeout: float, check: bool = True
) -> subprocess.CompletedProcess[str]:
    command = ["git", "-C", str(folder), *args]
    # Never wait for a username/password prompt: the scheduler has no terminal.
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    try:
        done = subprocess.run(  # noqa: S603 - fixed git arguments, no shell
            command, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except FileNotFoundError as exc:
        raise ReadmeError(
            "readme.git_commit is on but the git program is not installed or not on PATH"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise ReadmeError(
            f"git {args[0]} in {folder} did not finish within {timeout:.0f} s "
            "(a hung network or credential prompt?)"
        ) from exc
    if check and done.returncode != 0:
        raise ReadmeError(_git_failure(folder, args, done))
    return done


def _git_failure(folder: Path, args: Sequence[str], done: subprocess.CompletedProcess[str]) -> str:
    detail = _redact((done.stderr or done.stdout).strip()) or f"exit status {done.returncode}"
    lines = [line for line in detail.splitlines() if line.strip()]
    summary = " / ".join(lines[-3:])
    hint = ""
    if "tell me who you are" in detail.lower() or "user.email" in detail:
        hint = f"; set user.name and user.email with `git -C {folder} config user.email ...`"
    elif args[0] == "push":
        hint = "; check the remote's URL and that this machine may push to it (deploy key/token)"
    return f"git {args[0]} failed in {folder}: {summary}{hint}"


def commit_readme(
    path: Path,
    *,
    push: bool = True,
    today: date | None = None,
    timeout: float = GIT_TIMEOUT,
) -> GitOutcome:
    """Commit the README, its pages folder and its feeds folder (nothing else) if in a git
    work tree; push if a remote.

    Returns "skipped" (not in a work tree), "unchanged" (nothing to commit), "committed" or
    "pushed". Failures raise `ReadmeError` with git's own reason and a hint.
    """
    path = path.resolve()
    folder = path.parent
    inside = _git(folder, "rev-parse", "--is-inside-work-tree", timeout=timeout, check=False)
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        logger.warning("readme.git_skipped reason=not_a_work_tree path=%s", path)
        return "skipped"
    paths = [str(path)]
    for sub in (PAGES_DIR, FEEDS_DIR):  # the index layout's pages; feeds (GitHub Pages)
        written = folder / sub
        tracked = _git(folder, "ls-files", "--", str(written), timeout=timeout).stdout.strip()
        if written.exists() or tracked:
            paths.append(str(written))  # new, changed and removed files
    _git(folder, "add", "-A", "--", *paths, timeout=timeout)
    staged = _git(folder, "diff", "--cached", "--quiet", "--", *paths, timeout=timeout, check=False)
    if staged.returncode == 0:
        logger.info("readme.git_unchanged path=%s", path)
        return "unchanged"
    day = (today or date.today()).isoformat()
    # `-- paths` commits these alone, leaving anything else someone staged untouched.
    _git(folder, "commit", "-m", f"Update daily papers {day}", "--", *paths, timeout=timeout)
    logger.info("readme.git_committed path=%s", path)
    if not push:
        return "committed"
    remotes = _git(folder, "remote", timeout=timeout).stdout.split()
    if not remotes:
        return "committed"
    upstream = _git(
        folder,
        "rev-parse",
        "--abbrev-ref",
        "--symbolic-full-name",
        "@{upstream}",
        timeout=timeout,
        check=False,
    )
    if upstream.returncode == 0:
        _git(folder, "push", timeout=timeout)
    else:
        # No tracking branch: push the current branch to the same name on the main remote.
        remote = "origin" if "origin" in remotes else remotes[0]
        _git(folder, "push", remote, "HEAD", timeout=timeout)
    logger.info("readme.git_pushed path=%s", path)
    return "pushed"
