"""The 12 papers of the reference translated digest, parsed back into Papers and translations.

The digest shows title, authors, PDF link, abstract and the Chinese title and abstract of each
paper; the fields it does not show (dates, categories) get fixed, plausible values, newest
first in the file's order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from digest.domain import Paper
from tests.reference_papers import REFERENCE_DIGEST

REFERENCE_LANGUAGE = "zh"
_ENTRY = re.compile(
    r"# (?P<title>.*) \n\n"
    r"\*\*Title \(ZH\)\*\*: (?P<title_zh>.*) \n\n"
    r"\*\*Authors\*\*: (?P<authors>.*)  \n\n"
    r"\*\*Link\*\*: \[PDF\]\(https://arxiv\.org/pdf/(?P<arxiv_id>[^)]+)\)  \n\n"
    r"\*\*Abstract\*\*: (?P<abstract>.*?) \n\n"
    r"\*\*Abstract \(ZH\)\*\*: (?P<abstract_zh>.*?) \n\n",
    re.DOTALL,
)


@dataclass(frozen=True)
class DigestEntry:
    """One paper of the reference digest with its Chinese title and abstract."""

    paper: Paper
    title_zh: str
    abstract_zh: str


def load_reference_digest() -> list[DigestEntry]:
    """Parse the reference digest into its entries, in the file's order."""
    text = REFERENCE_DIGEST.read_text(encoding="utf-8")
    blocks = [b for b in re.split(r"^---\n", text, flags=re.MULTILINE) if b]
    base = datetime(2025, 1, 10, 18, 0, tzinfo=UTC)
    entries = []
    for index, block in enumerate(blocks):
        match = _ENTRY.fullmatch(block)
        if match is None:
            raise ValueError(f"entry {index + 1} of {REFERENCE_DIGEST.name} is not in the format")
        moment = base - timedelta(minutes=index)
        paper = Paper(
            arxiv_id=match["arxiv_id"],
            version=1,
            title=match["title"],
            authors=tuple(match["authors"].split(", ")),
            abstract=match["abstract"],
            published=moment,
            updated=moment,
            primary_category="cs.CV",
            categories=("cs.CV",),
        )
        entries.append(DigestEntry(paper, match["title_zh"], match["abstract_zh"]))
    return entries
