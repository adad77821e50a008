"""The keyword query language: parsing, errors, arXiv serialisation and local matching."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from digest.domain import Paper
from digest.errors import DailyPapersError, QueryError
from digest.query import (
    And,
    AndNot,
    Or,
    Query,
    SearchField,
    Term,
    is_plain,
    match_papers,
    normalise_query,
    parse_query,
    query_key,
    to_arxiv,
    tokenize,
)
from tests.reference_papers import load_reference_papers, load_reference_sections

TI, ABS, AU, CAT, ALL = (
    SearchField.TI,
    SearchField.ABS,
    SearchField.AU,
    SearchField.CAT,
    SearchField.ALL,
)
WHEN = datetime(2025, 2, 1, 12, 0, tzinfo=UTC)


def make_paper(
    *,
    arxiv_id: str = "2502.00001",
    title: str = "A title",
    abstract: str = "An abstract.",
    authors: tuple[str, ...] = ("Ada Lovelace",),
    categories: tuple[str, ...] = ("cs.LG",),
    comment: str | None = None,
) -> Paper:
    """A paper with only the fields under test set."""
    return Paper(
        arxiv_id=arxiv_id,
        version=1,
        title=title,
        authors=authors,
        abstract=abstract,
        published=WHEN,
        updated=WHEN,
        primary_category=categories[0],
        categories=categories,
        comment=comment,
    )


def t(search: SearchField, *words: str, quoted: bool = False) -> Term:
    """Shorthand for a Term in expected trees."""
    return Term(search, words, quoted=quoted)


# --- plain mode and normalisation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("Vision Language Model", True),
        ("GPT-4", True),
        ("large language models and agents", True),  # lower-case and/or are words
        ("C++ & Rust", True),
        ("ti:graph", False),
        ('"graph neural"', False),
        ("(graph)", False),
        ("graph AND neural", False),
        ("graph OR neural", False),
        ("graph ANDNOT neural", False),
        ("Mamba: a survey", False),  # a colon means a field prefix
    ],
)
def test_plain_mode_detection(text: str, plain: bool) -> None:
    """Text without fields, quotes, parentheses or upper-case operators is a plain phrase."""
    assert is_plain(text) is plain


def test_plain_multi_word_is_phrase_in_title_or_abstract() -> None:
    """A multi-word plain keyword is DailyArXiv's ti:"..." OR abs:"..."."""
    query = parse_query("Vision  Language Model ")
    assert query.plain
    assert query.text == "Vision Language Model"
    words = ("Vision", "Language", "Model")
    assert query.root == Or(t(TI, *words, quoted=True), t(ABS, *words, quoted=True))


def test_plain_single_word_must_be_in_title_and_abstract() -> None:
    """A single plain word is DailyArXiv's ti:"w" AND abs:"w"; words are counted on whitespace."""
    assert parse_query("transformers").root == And(
        t(TI, "transformers", quoted=True), t(ABS, "transformers", quoted=True)
    )
    # GPT-4 is one whitespace word (DailyArXiv's rule) whose phrase is "gpt 4".
    assert parse_query("GPT-4").root == And(
        t(TI, "GPT", "4", quoted=True), t(ABS, "GPT", "4", quoted=True)
    )


def test_normalise_and_key() -> None:
    """The identity of a keyword collapses whitespace and keeps case; the key also folds case."""
    assert normalise_query("  Video\t Anomaly \n Detection ") == "Video Anomaly Detection"
    assert query_key("  Video  ANOMALY detection") == "video anomaly detection"
    assert parse_query("Video   Anomaly Detection").key == query_key("video anomaly DETECTION")


# --- advanced mode: the tree --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("ti:graph", t(TI, "graph")),
        ('ti:"graph neural"', t(TI, "graph", "neural", quoted=True)),
        ("ti:graph-neural", t(TI, "graph", "neural", quoted=True)),
        ('"graph neural"', t(ALL, "graph", "neural", quoted=True)),
        ("TI:graph", t(TI, "graph")),  # field names are case-insensitive
        ("au:del_maestro", t(AU, "del", "maestro", quoted=True)),
        ('au:"Del Maestro"', t(AU, "Del", "Maestro", quoted=True)),
        ("cat:cs.LG", t(CAT, "cs.LG")),
        ("cat:cs.*", t(CAT, "cs")),
        ("abs:x AND ti:y", And(t(ABS, "x"), t(TI, "y"))),
        # AND binds tighter than OR.
        ("a OR b AND c", Or(t(ALL, "a"), And(t(ALL, "b"), t(ALL, "c")))),
        ("a AND b OR c", Or(And(t(ALL, "a"), t(ALL, "b")), t(ALL, "c"))),
        # ANDNOT is at AND's level, and everything is left-associative.
        ("a ANDNOT b AND c", And(AndNot(t(ALL, "a"), t(ALL, "b")), t(ALL, "c"))),
        ("a ANDNOT b ANDNOT c", AndNot(AndNot(t(ALL, "a"), t(ALL, "b")), t(ALL, "c"))),
        ("a OR b OR c", Or(Or(t(ALL, "a"), t(ALL, "b")), t(ALL, "c"))),
        ("a OR b ANDNOT c", Or(t(ALL, "a"), AndNot(t(ALL, "b"), t(ALL, "c")))),
        # Parentheses override precedence.
        ("(a OR b) AND c", And(Or(t(ALL, "a"), t(ALL, "b")), t(ALL, "c"))),
        ("a ANDNOT (b OR c)", AndNot(t(ALL, "a"), Or(t(ALL, "b"), t(ALL, "c")))),
        # Adjacent terms are an implicit AND.
        ("ti:graph au:smith", And(t(TI, "graph"), t(AU, "smith"))),
        ('ti:x "y z" OR w', Or(And(t(TI, "x"), t(ALL, "y", "z", quoted=True)), t(ALL, "w"))),
        # A field before a group becomes the field of the bare terms inside.
        ("ti:(graph OR abs:neural)", Or(t(TI, "graph"), t(ABS, "neural"))),
        ('ti:(graph "neural net")', And(t(TI, "graph"), t(TI, "neural", "net", quoted=True))),
        # Lower-case and/or are words, and the operator spelled in a field is a word too.
        ("ti:x and", And(t(TI, "x"), t(ALL, "and"))),
        ("ti:OR", t(TI, "OR")),
    ],
)
def test_advanced_trees(text: str, tree: object) -> None:
    """arXiv syntax parses into the documented tree (fields, phrases, precedence, groups)."""
    query = parse_query(text)
    assert not query.plain
    assert query.root == tree


def test_query_and_tree_are_frozen_and_hashable() -> None:
    """Queries are immutable values: usable as dict keys and safe to share."""
    query = parse_query("ti:graph OR au:smith")
    with pytest.raises(AttributeError):
        query.text = "other"  # type: ignore[misc]
    assert {query: 1}[parse_query("ti:graph  OR au:smith")] == 1


def test_term_refuses_empty_words() -> None:
    """A hand-built term with no words would match everything, so it is refused."""
    with pytest.raises(ValueError, match="at least one word"):
        Term(TI, ("+++",))


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ("", "empty", None),
        ("   \t  ", "U+0009", 3),
        ("   ", "empty", None),
        ("a" * 201, "201 characters long; the limit is 200", 200),
        ("graph\x00neural", "U+0000", 5),
        ("graph\nneural", "U+000A", 5),
        ("graph\u200bneural", "U+200B", 5),
        ("bidi \u202e trick", "U+202E", 5),
        ('ti:"graph neural', "double quote is never closed", 3),
        ('"graph', "double quote is never closed", 0),
        ('ti:"a" OR "b', "double quote is never closed", 10),
        ("(graph OR neural", "'(' is never closed", 0),
        ("(a OR (b)", "'(' is never closed", 0),
        ("graph) OR all:x", "')' has no matching '('", 5),
        ("x) OR all:a", "')' has no matching '('", 1),
        (") graph", "')' has no matching '('", 0),
        ("graph (", "'(' is never closed", 6),
        ("graph OR (", "'(' is never closed", 9),
        ("ti:(graph", "'(' is never closed", 3),
        ("graph AND (ti:x OR", "'OR' has nothing on its right", 16),
        ("foo:bar", "unknown field 'foo:'; use one of ti:, abs:, au:, cat:, all:", 0),
        ("ti:x OR jr:nature", "'jr:' is not supported here; use one of ti:, abs:", 8),
        ("co:x", "'co:' is not supported", 0),
        ("rn:x", "'rn:' is not supported", 0),
        ("id:2501.00001", "'id:' is not supported", 0),
        ("submittedDate:[20240101 TO 20250101]", "unknown field 'submittedDate:'", 0),
        ("Mamba: a survey", "put it in quotes", 0),
        (":x", "':' must follow a field name", 0),
        ("ti:a:b", "a second ':'", 4),
        ("ti:a+OR+all:b", "a second ':'", 11),
        ("AND graph", "'AND' has nothing on its left", 0),
        ("OR graph", "'OR' has nothing on its left", 0),
        ("graph AND", "'AND' has nothing on its right", 6),
        ("graph OR", "'OR' has nothing on its right", 6),
        ("graph ANDNOT", "'ANDNOT' has nothing on its right", 6),
        ("graph AND OR neural", "'AND' has nothing on its right", 6),
        ("(graph AND) OR x", "'AND' has nothing on its right", 7),
        ("()", "empty parentheses", 0),
        ("ti:()", "empty parentheses", 3),
        ('ti:""', "empty phrase", 3),
        ('""', "empty phrase", 0),
        ('ti:" + & "', "empty phrase", 3),
        ("ti:+++", "without letters or digits", 3),
        ("+++ &&", "no letters or digits", 0),
        ("ti:", "'ti:' needs a value right after the colon", 0),
        ("ti: graph", "'ti:' needs a value right after the colon", 0),
        ("cat:cs.LG;DROP", "is not an arXiv category", 4),
        ('cat:"cs LG"', "is not an arXiv category", 4),
    ],
)
def test_invalid_queries_say_what_and_where(text: str, message: str, position: int | None) -> None:
    """Every invalid query raises QueryError naming the problem and its column."""
    with pytest.raises(QueryError) as caught:
        parse_query(text)
    error = caught.value
    assert isinstance(error, DailyPapersError)
    assert message in str(error)
    assert error.position == position
    if position is not None:
        assert f"at column {position + 1}" in str(error)


def test_two_hundred_characters_is_allowed() -> None:
    """The length limit is inclusive and counts the normalised text."""
    text = " ".join(["abcdefghi"] * 20) + "x"
    assert len(text) == 200
    assert parse_query(f"  {text}  ").text == text


# --- serialising for arXiv -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Plain keywords produce DailyArXiv's own queries.
        ("Video Understanding", 'ti:"Video Understanding" OR abs:"Video Understanding"'),
        ("Vision-Language Model", 'ti:"Vision Language Model" OR abs:"Vision Language Model"'),
        ("transformers", 'ti:"transformers" AND abs:"transformers"'),
        ("GPT-4", 'ti:"GPT 4" AND abs:"GPT 4"'),
        ("ti:graph", "ti:graph"),
        ('ti:"graph  neural"', 'ti:"graph neural"'),
        ("ti:graph-neural", 'ti:"graph neural"'),
        ("au:del_maestro AND ti:quantum", 'au:"del maestro" AND ti:quantum'),
        ("cat:cs.LG", "cat:cs.LG"),
        ("cat:cs.*", "(cat:cs OR cat:cs.*)"),
        ("cat:astro-ph", "(cat:astro-ph OR cat:astro-ph.*)"),
        ("cat:cond-mat.mes-hall", "cat:cond-mat.mes-hall"),
        ("a b c", 'ti:"a b c" OR abs:"a b c"'),  # plain: a phrase
        ("ti:a b c", "ti:a AND all:b AND all:c"),  # advanced: implicit AND, made explicit
        ("a OR b AND c", "all:a OR (all:b AND all:c)"),
        ("(a OR b) AND c", "(all:a OR all:b) AND all:c"),
        ("a ANDNOT b ANDNOT c", "(all:a ANDNOT all:b) ANDNOT all:c"),
        ("a ANDNOT (b ANDNOT c)", "all:a ANDNOT (all:b ANDNOT all:c)"),
        ("a OR b OR (c AND d AND e)", "all:a OR all:b OR (all:c AND all:d AND all:e)"),
        ("ti:OR", 'ti:"OR"'),
    ],
)
def test_to_arxiv(text: str, expected: str) -> None:
    """Each query serialises to the expected arXiv search_query string."""
    query = parse_query(text)
    assert to_arxiv(query) == expected
    assert query.to_arxiv() == expected


# Characters a serialised query may contain: word characters, spaces, the quote and parentheses
# we emit ourselves, field colons, and the dot, hyphen and star of categories.
_SAFE_ARXIV = re.compile(r'^[\w "():.*\-]+$')
_FIELD_PREFIX = re.compile(r"\b(ti|abs|au|cat|all):")


@pytest.mark.parametrize(
    "text",
    [
        "x) OR all:a",
        "x ) OR ( all:a",
        'ti:"x") OR all:"a',
        'ti:"x) OR all:a"',
        'ti:"x\\" OR all:a"',
        "ti:x+OR+all:a",
        "ti:a&max_results=10000",
        "ti:a&start=0",
        "ti:%22a%22+OR+all:b",
        "ti:a%29+OR+all:b",
        "ti:x&search_query=all:a",
        "submittedDate:[20240101 TO 20250101]",
        "ti:x AND submittedDate:[20240101 TO 20250101]",
        "ti:x OR",
        "cat:cs.LG)OR(all:x",
        "cat:cs.LG+OR+all:x",
        "cat:*",
        'au:"a" OR au:b" OR all:c',
        "ti:[x TO y]",
        "ti:x* OR ti:?",
        "ti:x\\ OR all:a",
        "ti:x^10",
        "ti:x~2",
        "ti:x#frag",
    ],
)
def test_injection_cannot_widen_the_query(text: str) -> None:
    """Hostile text is either refused or serialised to terms derived from the tree alone."""
    try:
        query = parse_query(text)
    except QueryError:
        return
    serialised = to_arxiv(query)
    assert _SAFE_ARXIV.match(serialised), serialised
    for forbidden in ("+", "&", "%", "=", "[", "]", "\\", "#", "^", "~", "?", "submittedDate"):
        assert forbidden not in serialised
    # Exactly one field prefix per term of the tree: nothing the user typed became a field.
    terms = serialised.count('"') // 2 + len(re.findall(r":[^\"(]", serialised))
    assert len(_FIELD_PREFIX.findall(serialised)) == terms
    # And the arXiv string reads back as the very same tree.
    assert parse_query(serialised).root == query.root


@pytest.mark.parametrize(
    "text",
    [
        "Video Anomaly Detection",
        "Multimodal Large Language Model",
        "transformers",
        "ti:video AND abs:anomaly",
        'ti:"video anomaly" OR abs:"anomaly detection"',
        "video ANDNOT anomaly",
        "(vision OR video) AND (language ANDNOT anomaly)",
        "abs:(model OR models) ti:video",
        "all:understanding",
        "cat:cs.CV AND all:video",
        "cat:cs ANDNOT ti:video",
        "au:author",
    ],
)
def test_arxiv_string_means_the_same_locally(text: str) -> None:
    """Re-parsing the arXiv string selects exactly the same reference papers as the original."""
    papers = load_reference_papers()
    query = parse_query(text)
    again = parse_query(to_arxiv(query))
    assert [p.arxiv_id for p in papers if query.matches(p)] == [
        p.arxiv_id for p in papers if again.matches(p)
    ]


# --- local matching ------------------------------------------------------------------------------


def test_reference_readme_matches_with_stemming_and_not_without() -> None:
    """All 80 reference papers match their section's keyword; without stemming 33 do not."""
    sections = load_reference_sections()
    assert [len(s.papers) for s in sections] == [20, 20, 20, 20]

    def unstemmed(text: str) -> str:
        # The same split and case folding, but no stemmer: the rule the issue contrasts with.
        return " " + " ".join(re.findall(r"[^\W_]+", text.casefold())) + " "

    stemmed_hits = unstemmed_hits = 0
    for section in sections:
        query = parse_query(section.keyword)
        assert query.plain
        needle = unstemmed(section.keyword)
        for paper in section.papers:
            stemmed_hits += query.matches(paper)
            unstemmed_hits += needle in unstemmed(paper.title) or needle in unstemmed(
                paper.abstract
            )
    assert stemmed_hits == 80
    assert 80 - unstemmed_hits == 33


def test_reference_sections_through_match_papers() -> None:
    """match_papers finds every paper listed under each reference keyword."""
    sections = load_reference_sections()
    papers = load_reference_papers()
    found = match_papers([parse_query(s.keyword) for s in sections], papers)
    assert list(found) == [s.keyword for s in sections]
    for section in sections:
        assert {p.arxiv_id for p in section.papers} <= found[section.keyword]


def test_tokenize_splits_folds_and_stems() -> None:
    """Tokens split on non-alphanumerics, fold case and compatibility forms, and are stemmed."""
    assert tokenize("Vision-Language Models") == ("vision", "languag", "model")
    assert tokenize("MODELING, modelled; model's") == ("model", "model", "model", "s")
    assert tokenize("ﬁne-tuning") == tokenize("fine tuning")  # the ligature is two letters
    assert tokenize("snake_case") == ("snake", "case")
    assert tokenize("") == ()


@pytest.mark.parametrize(
    ("keyword", "title", "abstract", "expected"),
    [
        # A single word must be in the title AND the abstract.
        ("transformers", "Transformers for vision", "We use a transformer.", True),
        ("transformers", "Transformers for vision", "We use attention.", False),
        ("transformers", "Attention for vision", "We use a transformer.", False),
        # A phrase in the title OR the abstract, as consecutive stemmed tokens.
        ("graph neural network", "Graph neural networks at scale", "Nothing.", True),
        ("graph neural network", "Nothing", "We train graph-neural-networks.", True),
        ("graph neural network", "Graph of neural networks", "Nothing.", False),
        ("graph neural network", "About graph", "neural network", False),  # not across fields
        ("graph neural network", "Networks neural graph", "Nothing.", False),  # order matters
        ("Vision Language Model", "VISION-LANGUAGE MODELS", "", True),
        ("multimodal large language model", "Multi-modal LLMs", "multimodal LLMs", False),
        ("naïve bayes", "A naïve Bayes classifier", "", True),
    ],
)
def test_plain_keyword_matching(keyword: str, title: str, abstract: str, expected: bool) -> None:
    """Plain keywords follow DailyArXiv's rule, with stemming and case folding."""
    paper = make_paper(title=title, abstract=abstract)
    assert parse_query(keyword).matches(paper) is expected


AUTHORED = make_paper(
    title="Quantum criticality in helium films",
    abstract="We study superfluid helium on graphene with quantum Monte Carlo.",
    authors=("Adrian Del Maestro", "Bob Smith", "Chloé Martin"),
    categories=("cond-mat.stat-mech", "cond-mat.other", "physics.comp-ph"),
    comment="Accepted at PRB; 12 pages",
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("au:del_maestro", True),
        ('au:"Del Maestro"', True),
        ("au:smith", True),
        ("au:chloe", False),  # accents are kept: Chloé is not Chloe
        ("au:chloé", True),
        ('au:"maestro bob"', False),  # a phrase never spans two authors
        ("au:del_maestro AND ti:quantum", True),
        ("au:del_maestro ANDNOT ti:quantum", False),
        ("ti:criticality", True),
        ("abs:criticality", False),
        ('abs:"quantum monte carlo"', True),
        ('abs:"monte quantum"', False),
        ("cat:cond-mat.stat-mech", True),
        ("cat:COND-MAT.STAT-MECH", True),
        ("cat:cond-mat", True),  # archive prefix
        ("cat:cond-mat.*", True),
        ("cat:physics", True),
        ("cat:cs", False),
        ("cat:cond", False),  # a prefix must be a whole archive
        ("cat:physics.optics", False),
        ("all:prb", True),  # the comment
        ('all:"12 pages"', True),
        ("all:comp", True),  # the words of a category
        ("all:smith", True),  # an author
        ('all:"films we"', False),  # no phrase across title and abstract
        ("all:graphene OR ti:nothing", True),
        ("ti:nothing OR abs:nothing", False),
        ("(ti:nothing OR abs:graphene) AND au:smith", True),
        ("abs:helium ANDNOT (ti:nothing OR cat:cs)", True),
        ("superfluid graphene", False),  # plain phrase: not consecutive
        ("superfluid helium", True),
    ],
)
def test_advanced_matching(text: str, expected: bool) -> None:
    """Fields, phrases, categories and operators match as documented."""
    assert parse_query(text).matches(AUTHORED) is expected


def test_match_papers_keys_and_duplicates() -> None:
    """Results are keyed by the normalised text; repeats are harmless and no query means {}."""
    papers = [
        make_paper(arxiv_id="2502.00001", title="Graph networks", abstract="graph stuff"),
        make_paper(arxiv_id="2502.00002", title="Vision models", abstract="vision stuff"),
    ]
    queries = [parse_query("  graph "), parse_query("graph"), parse_query("ti:vision OR au:x")]
    assert match_papers(queries, papers) == {
        "graph": {"2502.00001"},
        "ti:vision OR au:x": {"2502.00002"},
    }
    assert match_papers([], papers) == {}
    assert match_papers(queries, []) == {"graph": set(), "ti:vision OR au:x": set()}


def test_query_built_by_hand_matches_like_a_parsed_one() -> None:
    """Query's constructor compiles its own matcher, so hand-built trees work too."""
    tree = Or(t(TI, "graph"), t(CAT, "cs"))
    query = Query(text="hand", root=tree, plain=False)
    assert query.matches(make_paper(title="Graphs", categories=("math.CO",)))
    assert query.matches(make_paper(title="Other", categories=("cs.AI",)))
    assert not query.matches(make_paper(title="Other", categories=("math.CO",)))
