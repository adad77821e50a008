"""The phrase index behind match_papers gives exactly the answers of checking each pair."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from digest.domain import Paper
from digest.query import (
    PaperIndex,
    Query,
    compile_node,
    match_papers,
    naive_match_papers,
    node_matches,
    parse_query,
    tokenize_paper,
)
from tests.reference_papers import load_reference_papers

WHEN = datetime(2025, 2, 1, tzinfo=UTC)
# A small vocabulary with inflections (stems collide: model/models/modelling) and heavy reuse,
# so phrases of two and three words really occur and the index's phrase postings get exercised.
STEMS = (
    *("graph", "neural", "network", "model", "learn", "vision", "language", "video", "anomaly"),
    *("detect", "diffus", "agent", "robot", "quantum", "spin", "field", "transform", "attent"),
    *("token", "reason", "plan", "memory", "retriev", "align", "segment", "track", "point"),
    *("cloud", "scene", "depth", "flow", "motion", "speech", "audio", "code", "proof"),
)
SUFFIXES = ("", "s", "ing", "ed", "er", "ation")
NAMES = ("Ada Lovelace", "Alan Turing", "Grace Hopper", "Adrian Del Maestro", "Bob Smith", "Li Na")
CATEGORIES = ("cs.LG", "cs.CV", "cs.CL", "cs.AI", "stat.ML", "math.OC", "astro-ph", "astro-ph.CO")


def word(rng: random.Random) -> str:
    """One inflected vocabulary word, sometimes capitalised or hyphen-joined to the next."""
    text = rng.choice(STEMS) + rng.choice(SUFFIXES)
    if rng.random() < 0.1:
        text = text.capitalize()
    if rng.random() < 0.05:
        text += "-" + rng.choice(STEMS)
    return text


def words(rng: random.Random, count: int) -> str:
    """Some vocabulary words separated by spaces and occasional punctuation."""
    return " ".join(word(rng) + rng.choice(("", "", "", ",", ".")) for _ in range(count))


def synthetic_papers(rng: random.Random, count: int) -> list[Paper]:
    """Papers with short titles and abstracts drawn from the small vocabulary."""
    papers = []
    for number in range(count):
        categories = tuple(rng.sample(CATEGORIES, rng.randint(1, 3)))
        papers.append(
            Paper(
                arxiv_id=f"2502.{number:05d}",
                version=1,
                title=words(rng, rng.randint(4, 9)),
                authors=tuple(rng.sample(NAMES, rng.randint(1, 3))),
                abstract=words(rng, rng.randint(20, 45)),
                published=WHEN,
                updated=WHEN,
                primary_category=categories[0],
                categories=categories,
                comment=words(rng, 3) if rng.random() < 0.3 else None,
            )
        )
    return papers


def term(rng: random.Random) -> str:
    """One random advanced-mode term: a field with a word, phrase, author or category."""
    kind = rng.random()
    if kind < 0.15:
        return "cat:" + rng.choice((*CATEGORIES, "cs", "cs.*", "astro-ph", "math"))
    if kind < 0.25:
        return "au:" + rng.choice(NAMES).split()[-1].lower()
    if kind < 0.3:
        return 'au:"' + rng.choice(NAMES) + '"'
    field = rng.choice(("ti:", "abs:", "all:", ""))
    if rng.random() < 0.5:
        return field + '"' + words(rng, rng.randint(2, 3)) + '"'
    return field + word(rng)


def expression(rng: random.Random, depth: int = 0) -> str:
    """A random boolean expression of terms, with parentheses."""
    if depth >= 2 or rng.random() < 0.4:
        return term(rng)
    operator = rng.choice((" AND ", " OR ", " ANDNOT ", " "))
    text = expression(rng, depth + 1) + operator + expression(rng, depth + 1)
    return f"({text})" if rng.random() < 0.5 else text


def synthetic_queries(rng: random.Random, count: int) -> list[Query]:
    """Distinct keywords: plain ones (one to three words) and advanced expressions."""
    queries: dict[str, Query] = {}
    while len(queries) < count:
        mode = rng.random()
        if mode < 0.3:
            text = word(rng)
        elif mode < 0.6:
            text = " ".join(word(rng) for _ in range(rng.randint(2, 3)))
        else:
            text = expression(rng)
        query = parse_query(text)
        queries[query.text] = query
    return list(queries.values())


def test_index_equals_naive_matching_on_2000_by_2000() -> None:
    """2,000 synthetic keywords x 2,000 papers: the index agrees with checking every pair."""
    rng = random.Random(20250211)
    papers = synthetic_papers(rng, 2000)
    queries = synthetic_queries(rng, 2000)

    indexed = match_papers(queries, papers)
    # Every pair checked with Query's own predicate (test_every_matcher_agrees shows it is
    # Query.matches; that one re-hashes each paper for its cache, too slow for 4 million pairs).
    naive = naive_match_papers(queries, papers)

    assert indexed == naive
    # The case is not vacuous: many keywords match something, some match nothing, and
    # advanced queries with each operator and field are among those that match.
    matching = [q for q in queries if naive[q.text]]
    assert len(matching) > 500
    assert len(matching) < len(queries)
    assert any(" OR " in q.text for q in matching)
    assert any(" ANDNOT " in q.text for q in matching)
    assert any(q.text.startswith("cat:") for q in matching)
    assert any(q.plain and len(q.text.split()) == 3 for q in matching)


def test_every_matcher_agrees() -> None:
    """Query.matches, the tree walk, naive_match_papers and the index give one answer."""
    rng = random.Random(7)
    papers = synthetic_papers(rng, 300)
    queries = synthetic_queries(rng, 300)
    tokens = [tokenize_paper(p) for p in papers]
    walked = {
        q.text: {
            p.arxiv_id for p, tok in zip(papers, tokens, strict=True) if node_matches(q.root, tok)
        }
        for q in queries
    }
    compiled = {
        q.text: {
            p.arxiv_id for p, tok in zip(papers, tokens, strict=True) if compile_node(q.root)(tok)
        }
        for q in queries
    }
    via_query = {q.text: {p.arxiv_id for p in papers if q.matches(p)} for q in queries}
    assert walked == compiled == via_query
    assert naive_match_papers(queries, papers) == via_query
    assert match_papers(queries, papers) == via_query


def test_index_answers_queries_it_was_not_built_for() -> None:
    """A term outside the index's queries falls back to a scan and is still right."""
    papers = load_reference_papers()
    index = PaperIndex(papers, queries=[parse_query("Video Anomaly Detection")])
    for text in ("Vision Language Model", 'abs:"weakly supervised"', "ti:video ANDNOT ti:anomaly"):
        query = parse_query(text)
        expected = {p.arxiv_id for p in papers if query.matches(p)}
        assert expected
        assert index.match(query) == expected
    empty = PaperIndex(papers)
    query = parse_query("Video Anomaly Detection")
    assert empty.match(query) == {p.arxiv_id for p in papers if query.matches(p)}


def test_repeated_words_and_long_phrases() -> None:
    """Phrases with a repeated word or of many words match only as consecutive runs."""
    papers = [
        Paper(
            arxiv_id=f"2502.0000{n}",
            version=1,
            title=title,
            authors=("A. Author",),
            abstract="nothing here",
            published=WHEN,
            updated=WHEN,
            primary_category="cs.LG",
        )
        for n, title in enumerate(
            (
                "deep deep learning",
                "deep learning deep",
                "a very long phrase of many words indeed",
                "a very long phrase of many other words",
            )
        )
    ]
    queries = [
        parse_query('ti:"deep deep"'),
        parse_query('ti:"deep deep learning"'),
        parse_query('ti:"learning deep"'),
        parse_query('ti:"very long phrase of many words"'),
    ]
    assert match_papers(queries, papers) == {
        'ti:"deep deep"': {"2502.00000"},
        'ti:"deep deep learning"': {"2502.00000"},
        'ti:"learning deep"': {"2502.00001"},
        'ti:"very long phrase of many words"': {"2502.00002"},
    }
