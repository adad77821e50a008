"""Narrowing papers by folded substrings before matching: never loses a match."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bench.corpus import generate_papers, keyword_queries
from digest.query import fold_paper, naive_match_papers, narrow_papers, parse_query
from tests.reference_papers import load_reference_papers

START = datetime(2025, 1, 1, tzinfo=UTC)

# Words whose Porter2 stems are not plain prefixes of every form (y -> i, suffix rewrites,
# irregular forms), in queries and in papers.
TRICKY = [
    "study",
    "studies",
    "policy",
    "policies",
    "relational",
    "relation",
    "possibly",
    "possible",
    "organization",
    "organizer",
    "valency",
    "dying",
    "skies",
    "early",
    "generalization",
    "traceability",
    "ability",
    "capability",
    "flexibility",
    "hopping",
    "hoping",
    "cries",
    "generously",
    "happily",
]


def _papers() -> list:
    """Synthetic papers, the reference papers, and papers made of the tricky words."""
    papers = generate_papers(1500, start=START, end=START + timedelta(days=7), seed=3)
    tricky = [
        replace(
            papers[i],
            arxiv_id=f"2599.{i:05d}",
            title=f"On {TRICKY[i % len(TRICKY)]} and {TRICKY[(i * 7) % len(TRICKY)]}",
            abstract=" ".join(TRICKY[(i + j) % len(TRICKY)] for j in range(5)),
        )
        for i in range(200)
    ]
    return [*papers, *load_reference_papers(), *tricky]


QUERIES = [
    *keyword_queries(300),
    *TRICKY,
    "studying policies",
    'ti:"relational learning" OR abs:policy',
    "au:Smith AND abs:diffusion",
    "cat:cs.CV ANDNOT ti:survey",
    "(diffusion OR flow) AND cat:cs.LG",
    'all:"possibly early"',
    "cat:cs AND abs:organizer",
]


@pytest.mark.parametrize("chunk", range(4))
def test_narrowing_keeps_every_match(chunk: int) -> None:
    """For every query, the narrowed papers include all the papers it matches."""
    papers = _papers()
    folded = [fold_paper(p) for p in papers]
    queries = [parse_query(q) for q in QUERIES[chunk::4]]
    expected = naive_match_papers(queries, papers)
    narrowed_any = 0
    for query in queries:
        kept = set(narrow_papers(query, folded))
        assert expected[query.text] <= kept, query.text
        narrowed_any += len(kept) < len(papers)
    assert narrowed_any > len(queries) // 2  # it does narrow, for most queries


def test_narrowing_drops_papers_without_the_words() -> None:
    """A phrase keeps only papers holding its words (here: none of them do)."""
    papers = _papers()
    folded = [fold_paper(p) for p in papers]
    assert narrow_papers(parse_query("zyxwvut quantum"), folded) == []


def test_a_stems_probe_is_in_every_word_of_a_vocabulary() -> None:
    """Over thousands of words (the reference abstracts, the corpus, hard cases), the probe of
    each word's stem is a substring of the word, unless it has no probe."""
    from digest.query import _fold, _probe, split_words, stem_words

    fixtures = Path(__file__).parent / "fixtures"
    recorded = [f.read_text(encoding="utf-8") for f in sorted(fixtures.rglob("*.xml"))]
    recorded += [f.read_text(encoding="utf-8") for f in sorted(fixtures.rglob("*.json"))]
    texts = [f"{p.title} {p.abstract}" for p in _papers()] + TRICKY + recorded
    words = sorted({w for text in texts for w in split_words(_fold(text)) if w.isalpha()})
    assert len(words) > 3000
    stems = stem_words(words)
    missed = [
        (w, s, _probe(s))
        for w, s in zip(words, stems, strict=True)
        if _probe(s) and _probe(s) not in w
    ]
    assert missed == []
