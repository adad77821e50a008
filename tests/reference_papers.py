"""The 80 papers of the reference DailyArXiv README, parsed back into domain objects.

Shared by the query, README, arXiv stand-in and end-to-end tests. The README holds the title,
versioned abs link, last-updated date, abstract and comment of each paper; the fields it does
not show (authors, categories, published time) are filled with fixed, plausible values.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from digest.domain import Paper, split_arxiv_id

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE_README = FIXTURES / "reference" / "dailyarxiv-readme-2025-02.md"
REFERENCE_DIGEST = FIXTURES / "reference" / "translated-digest-2025-01.md"

_ROW = re.compile(
    r"^\| \*\*\[(?P<title>.*)\]\((?P<url>http://arxiv\.org/abs/[^)]+)\)\*\* "
    r"\| (?P<date>\d{4}-\d{2}-\d{2}) "
    r"\| <details><summary>Show</summary><p>(?P<abstract>.*)</p></details> "
    r"\| (?P<comment>.*) \|$"
)
_FOLDED = re.compile(r"^<details><summary>.{5}\.\.\.</summary><p>(?P<text>.*)</p></details>$")


@dataclass(frozen=True)
class ReferenceSection:
    """One `## keyword` section of the reference README, papers in the order shown."""

    keyword: str
    papers: tuple[Paper, ...]


def _comment(cell: str) -> str | None:
    if not cell:
        return None
    folded = _FOLDED.match(cell)
    return folded.group("text") if folded else cell


def _rows(path: Path) -> list[tuple[str, list[dict[str, str]]]]:
    sections: list[tuple[str, list[dict[str, str]]]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            sections.append((line[3:], []))
        elif (row := _ROW.match(line)) is not None:
            sections[-1][1].append(row.groupdict())
    return sections


def _same_day_order(sections: list[tuple[str, list[dict[str, str]]]]) -> dict[str, int]:
    """A rank per paper consistent with every section's order (a topological sort).

    The README shows dates only; arXiv sorted by the full timestamp. Papers listed in two
    sections constrain each other, so the ranks are derived from all sections at once.
    """
    after: dict[str, set[str]] = {}
    for _, rows in sections:
        ids = [row["url"] for row in rows]
        for earlier, later in itertools.pairwise(ids):
            after.setdefault(earlier, set()).add(later)
            after.setdefault(later, set())
    indegree = dict.fromkeys(after, 0)
    for targets in after.values():
        for node in targets:
            indegree[node] += 1
    ready = sorted(node for node, degree in indegree.items() if degree == 0)
    rank: dict[str, int] = {}
    while ready:
        node = ready.pop(0)
        rank[node] = len(rank)
        for nxt in sorted(after[node]):
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                ready.append(nxt)
    return rank


def load_reference_sections(path: Path = REFERENCE_README) -> list[ReferenceSection]:
    """Parse the reference README into its keyword sections."""
    sections = _rows(path)
    rank = _same_day_order(sections)
    result = []
    for keyword, rows in sections:
        papers = []
        for row in rows:
            arxiv_id, version = split_arxiv_id(row["url"])
            day = datetime.fromisoformat(row["date"]).replace(tzinfo=UTC)
            # Earlier-ranked rows of the same day get later times, so newest-first sorting
            # reproduces the README's order.
            updated = day + timedelta(hours=23, minutes=59) - timedelta(minutes=rank[row["url"]])
            papers.append(
                Paper(
                    arxiv_id=arxiv_id,
                    version=version,
                    title=row["title"],
                    authors=("A. Author", "B. Author"),
                    abstract=row["abstract"],
                    published=updated - timedelta(days=30 * (version - 1)),
                    updated=updated,
                    primary_category="cs.CV",
                    categories=("cs.CV", "cs.LG"),
                    comment=_comment(row["comment"]),
                )
            )
        result.append(ReferenceSection(keyword, tuple(papers)))
    return result


def load_reference_papers() -> list[Paper]:
    """The distinct papers of the reference README (a paper listed twice appears once)."""
    unique: dict[str, Paper] = {}
    for section in load_reference_sections():
        for paper in section.papers:
            unique.setdefault(paper.arxiv_id, paper)
    return list(unique.values())
