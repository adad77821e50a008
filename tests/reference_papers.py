"""The 80 papers of the reference DailyArXiv README, parsed back into domain objects.

Shared by the query, README, arXiv stand-in and end-to-end tests. The README holds the title,
versioned abs link, last-updated date, abstract and comment of each paper; the fields it does
not show (authors, categories, published time) are filled with fixed, plausible values.
"""

from __future__ import annotations

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


def load_reference_sections(path: Path = REFERENCE_README) -> list[ReferenceSection]:
    """Parse the reference README into its keyword sections."""
    sections: list[tuple[str, list[Paper]]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            sections.append((line[3:], []))
            continue
        row = _ROW.match(line)
        if row is None:
            continue
        arxiv_id, version = split_arxiv_id(row.group("url"))
        # The README shows dates only; arXiv sorted by the full timestamp. Later rows of a
        # section get earlier times on the same day so "newest first" reproduces the order.
        day = datetime.fromisoformat(row.group("date")).replace(tzinfo=UTC)
        updated = day + timedelta(hours=23, minutes=59) - timedelta(minutes=len(sections[-1][1]))
        sections[-1][1].append(
            Paper(
                arxiv_id=arxiv_id,
                version=version,
                title=row.group("title"),
                authors=("A. Author", "B. Author"),
                abstract=row.group("abstract"),
                published=updated - timedelta(days=30 * (version - 1)),
                updated=updated,
                primary_category="cs.CV",
                categories=("cs.CV", "cs.LG"),
                comment=_comment(row.group("comment")),
            )
        )
    return [ReferenceSection(keyword, tuple(papers)) for keyword, papers in sections]


def load_reference_papers() -> list[Paper]:
    """The distinct papers of the reference README (a paper listed twice appears once)."""
    unique: dict[str, Paper] = {}
    for section in load_reference_sections():
        for paper in section.papers:
            unique.setdefault(paper.arxiv_id, paper)
    return list(unique.values())
