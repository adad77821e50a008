"""The README snapshot: DailyArXiv's Markdown table of the latest papers per keyword.

Rendering is pure (`render_readme`, `fit_readme`, `build_readme`); the cycle fetches each
keyword's latest papers from the store, calls `build_readme`, then `write_readme` and, when
`readme.git_commit` is on, `commit_readme` (blocking: run it through `asyncio.to_thread`).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, tzinfo
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from digest.domain import Paper
from digest.errors import DailyPapersError
from digest.render import collapse_ws, get_environment

logger = logging.getLogger(__name__)

LinkKind = Literal["abs", "pdf"]
GitOutcome = Literal["skipped", "unchanged", "committed", "pushed"]

TEMPLATE = "README.md.j2"
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
class ReadmeResult:
    """The rendered snapshot and how many rows the size cap removed."""

    text: str
    trimmed: int = 0

    @property
    def size(self) -> int:
        """The snapshot's size in bytes (UTF-8), the unit GitHub's limit is in."""
        return len(self.text.encode("utf-8"))

    @property
    def warning(self) -> str | None:
        """The event line for the run report when rows were trimmed, else None."""
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


def _render(sections: Sequence[ReadmeSection], *, today: date, max_papers: int) -> str:
    template = get_environment().get_template(TEMPLATE)
    return template.render(
        sections=sections,
        today=today.isoformat(),
        max_papers=max_papers,
        fold_over=FOLD_COMMENT_OVER,
    )


def render_readme(
    sections: Sequence[tuple[str, Sequence[Paper]]],
    *,
    today: date,
    link: LinkKind = "abs",
    max_papers: int = DEFAULT_MAX_PAPERS,
    tz: str | tzinfo = UTC,
) -> str:
    """Render the DailyArXiv README for (keyword, papers) pairs, in the order given."""
    built = readme_sections(sections, link=link, max_papers=max_papers, tz=tz)
    return _render(built, today=today, max_papers=max_papers)


def _trim_order(sections: Sequence[ReadmeSection]) -> list[tuple[int, int]]:
    """(section, row) positions in the order they are dropped: oldest first.

    Every section's newest row is dropped only after all other rows are gone, so each keyword
    keeps one row for as long as possible.
    """
    spare: list[tuple[tuple[float, str], int, int]] = []
    newest: list[tuple[tuple[float, str], int, int]] = []
    for s_index, section in enumerate(sections):
        for r_index, row in enumerate(section.rows):
            (newest if r_index == 0 else spare).append((row.updated_key, s_index, r_index))
    return [(s, r) for _, s, r in sorted(spare)] + [(s, r) for _, s, r in sorted(newest)]


def _without(sections: Sequence[ReadmeSection], drop: set[tuple[int, int]]) -> list[ReadmeSection]:
    return [
        ReadmeSection(
            keyword=section.keyword,
            rows=tuple(row for r, row in enumerate(section.rows) if (s, r) not in drop),
        )
        for s, section in enumerate(sections)
    ]


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


def fit_readme(
    sections: Sequence[tuple[str, Sequence[Paper]]],
    *,
    today: date,
    link: LinkKind = "abs",
    max_papers: int = DEFAULT_MAX_PAPERS,
    tz: str | tzinfo = UTC,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[str, int]:
    """Render the README within `max_bytes`, dropping the oldest rows; returns (text, dropped).

    If even one row per keyword is too much, rows keep being dropped (oldest first) until it
    fits or no rows are left.
    """
    built = readme_sections(sections, link=link, max_papers=max_papers, tz=tz)
    order = _trim_order(built)
    total = len(order)

    def keeping(count: int) -> str:
        """The README with only the last `count` rows of the drop order kept."""
        return _render(
            _without(built, set(order[: total - count])), today=today, max_papers=max_papers
        )

    # Keeping more rows never makes the text shorter, so the most rows that fit are found by
    # galloping up from a single row (1, 2, 4, ... rows) and then bisecting: no render is much
    # larger than max_bytes. (Rendering everything first and bisecting down from there made
    # 500 keywords x 100 papers render ~100 MB of text to keep 500 KB.)
    kept, text = 0, keeping(0)
    if _size(text) > max_bytes or total == 0:
        return text, total  # not even the headings fit (or there are no rows to drop)
    too_many = total + 1  # the fewest rows known not to fit
    count = 1
    while count <= total:
        candidate = keeping(count)
        if _size(candidate) > max_bytes:
            too_many = count
            break
        kept, text = count, candidate
        if count == total:
            return text, 0
        count = min(2 * count, total)
    low, high = kept + 1, too_many - 1
    while low <= high:
        middle = (low + high) // 2
        candidate = keeping(middle)
        if _size(candidate) <= max_bytes:
            kept, text, low = middle, candidate, middle + 1
        else:
            high = middle - 1
    return text, total - kept


def build_readme(
    keywords: Sequence[str],
    papers_for: Callable[[str], Sequence[Paper]] | Mapping[str, Sequence[Paper]],
    *,
    today: date,
    link: LinkKind = "abs",
    max_papers: int = DEFAULT_MAX_PAPERS,
    tz: str | tzinfo = UTC,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ReadmeResult:
    """The README for the tracked keywords (display text, config/DB order), within the cap.

    `papers_for` gives a keyword's latest papers: a mapping (a missing keyword has none) or a
    callable such as `lambda q: store.latest_matches(q, limit)`. Logs `readme.trimmed` when the
    size cap removed rows.
    """
    if isinstance(papers_for, Mapping):
        mapping = papers_for
        sections = [(keyword, mapping.get(keyword, ())) for keyword in keywords]
    else:
        sections = [(keyword, papers_for(keyword)) for keyword in keywords]
    text, trimmed = fit_readme(
        sections, today=today, link=link, max_papers=max_papers, tz=tz, max_bytes=max_bytes
    )
    result = ReadmeResult(text=text, trimmed=trimmed)
    if result.warning:
        logger.warning(
            "readme.trimmed rows=%d bytes=%d max_bytes=%d", trimmed, result.size, max_bytes
        )
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
    """Commit the README (that one file only) if it is in a git work tree; push if a remote.

    Returns "skipped" (not in a work tree), "unchanged" (nothing to commit), "committed" or
    "pushed". Failures raise `ReadmeError` with git's own reason and a hint.
    """
    path = path.resolve()
    folder = path.parent
    inside = _git(folder, "rev-parse", "--is-inside-work-tree", timeout=timeout, check=False)
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        logger.warning("readme.git_skipped reason=not_a_work_tree path=%s", path)
        return "skipped"
    _git(folder, "add", "--", str(path), timeout=timeout)
    staged = _git(
        folder, "diff", "--cached", "--quiet", "--", str(path), timeout=timeout, check=False
    )
    if staged.returncode == 0:
        logger.info("readme.git_unchanged path=%s", path)
        return "unchanged"
    day = (today or date.today()).isoformat()
    # `-- path` commits this file alone, leaving anything else someone staged untouched.
    _git(folder, "commit", "-m", f"Update daily papers {day}", "--", str(path), timeout=timeout)
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
