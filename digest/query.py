"""The keyword query language: parse -> syntax tree -> local match / arXiv query string.

A tracked keyword is a query, written in one of two modes:

Plain mode
    Text with no field prefix (`ti:`), no double quote, no parenthesis and no upper-case
    `AND` / `OR` / `ANDNOT` word is a *plain phrase* and behaves exactly like DailyArXiv: a
    keyword of several whitespace-separated words must appear as a phrase in the title OR in the
    abstract (`ti:"a b" OR abs:"a b"`); a single word must appear in the title AND in the abstract
    (`ti:"w" AND abs:"w"`). "Single word" is counted on whitespace, as DailyArXiv does, so `GPT-4`
    is one word whose phrase is `gpt 4`.

Advanced mode (arXiv's own syntax)
    * fields `ti:` (title), `abs:` (abstract), `au:` (one author's name), `cat:` (category) and
      `all:` (title, abstract, authors, comment and categories); a bare term means `all:`. arXiv
      also knows `co:` `jr:` `rn:` `id:`; those are refused because we do not store or match them.
    * a field applies to one word (`ti:graph`), a quoted phrase (`ti:"graph neural"`) or a group
      (`ti:(graph OR neural)`, where it becomes the field of the bare terms inside).
    * `au:del_maestro`: underscores in an author term mean spaces, as on arXiv.
    * `cat:cs.LG` matches that category on any of the paper's categories (primary or cross-list);
      `cat:cs` and `cat:cs.*` match every category of the archive (`cs.AI`, `cs.LG`, ...), and are
      sent to arXiv as `(cat:cs OR cat:cs.*)` (the wildcard, plus the bare archive that old
      papers such as `astro-ph` ones carry).
    * operators `AND`, `OR` and `ANDNOT` (arXiv's binary and-not: `a ANDNOT b` is a and not b),
      upper case only: a lower-case `and` is a word. Precedence: `AND` and `ANDNOT` bind tighter
      than `OR` and all three are left-associative, so `a OR b AND c` is `a OR (b AND c)` and
      `a ANDNOT b AND c` is `(a ANDNOT b) AND c`. arXiv does not document its precedence, which is
      why `to_arxiv` always emits explicit parentheses: arXiv evaluates exactly our tree.
    * in advanced mode, terms written next to each other with no operator are joined with `AND`
      (`ti:graph au:smith` is `ti:graph AND au:smith`, as in arXiv's search form); the arXiv
      string always carries the explicit `AND`, so the API cannot read the gap differently.
    * field names are case-insensitive (`TI:` is `ti:`) and the value follows the colon
      directly. Any other `word:` is an unknown field, so text containing a colon is written in
      quotes (`"Mamba: a survey"`).

Every query is at most 200 characters once whitespace is collapsed, and may not contain control
or invisible characters; `parse_query` raises `QueryError` with the column of the problem.

Matching (`Query.matches`, `match_papers`) is local and case-insensitive: text is NFKC-normalised
and case-folded, split into tokens on every non-alphanumeric character, and each token is stemmed
with the English Snowball stemmer; a phrase matches a run of consecutive stemmed tokens within one
field (within one author for `au:`). Stemming is what makes `Vision Language Model` find "vision-
language models": on the reference README 33 of 80 listed papers are missed without it.

Queries are never pasted into arXiv: `to_arxiv` re-derives every token from the tree, keeping only
word characters (letters and digits; for `cat:` also the dot and hyphen of category names), so no
user text can close a parenthesis, add an operator or reach another field.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
import threading
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import NoReturn, Protocol, TypeAlias

import snowballstemmer

from digest.domain import Paper
from digest.errors import QueryError

MAX_QUERY_LENGTH = 200  # long enough for a real boolean query, short enough for a heading
OPERATORS = frozenset({"AND", "OR", "ANDNOT"})
# arXiv fields we store and can match locally; the order is the one error messages list.
ALLOWED_FIELDS = ("ti", "abs", "au", "cat", "all")
# arXiv fields we deliberately refuse: comment, journal ref, report number and id are not
# matched locally, and a subscription must mean the same thing here and on arXiv.
UNSUPPORTED_FIELDS = frozenset({"co", "jr", "rn", "id"})

# A word is a run of letters or digits (any script); everything else separates words. The same
# rule serves the user's query and the paper's text, so both sides split identically.
_WORD = re.compile(r"[^\W_]+")
# A category as arXiv writes it (cs.LG, math.GT, astro-ph, cond-mat.mes-hall, q-bio.NC), or an
# archive with an optional `.*` wildcard.
_CATEGORY = re.compile(r"^[A-Za-z][A-Za-z\-]*(?:\.[A-Za-z][A-Za-z\-]*)?(?:\.\*)?$")
_FIELD_NAME = re.compile(r"^[A-Za-z]+$")
_PLAIN_BREAKERS = frozenset('"():')
# Unicode categories refused in a query: control (Cc), invisible format characters (Cf: zero
# width spaces, bidi overrides that would disguise a heading) and line/paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


class SearchField(StrEnum):
    """A field a term searches; the values are arXiv's field prefixes."""

    TI = "ti"
    ABS = "abs"
    AU = "au"
    CAT = "cat"
    ALL = "all"


# --- tokens and stemming ------------------------------------------------------------------------

_local = threading.local()


class _Stemmer(Protocol):
    def stemWords(self, words: list[str]) -> list[str]: ...  # snowballstemmer's own name


def _stemmer() -> _Stemmer:
    """This thread's English stemmer (snowballstemmer objects keep state while stemming)."""
    stemmer: _Stemmer | None = getattr(_local, "stemmer", None)
    if stemmer is None:
        stemmer = snowballstemmer.stemmer("english")
        _local.stemmer = stemmer
    return stemmer


# word -> stem. Big enough for the vocabulary of many thousands of abstracts, so a cycle stems
# each distinct word once; past the limit it starts afresh (rebinding, not clearing, so a
# thread still using the old dict is unaffected).
_STEM_CACHE_LIMIT = 1 << 18
_stem_cache: dict[str, str] = {}


def stem_words(words: list[str]) -> list[str]:
    """The English Snowball stems of case-folded words, in order."""
    global _stem_cache  # the memo is process-wide on purpose
    cache = _stem_cache
    missing = list(set(words).difference(cache))
    if missing:
        if len(cache) + len(missing) > _STEM_CACHE_LIMIT:
            cache = _stem_cache = {}
        cache.update(zip(missing, _stemmer().stemWords(missing), strict=True))
    # map() over dict lookups keeps the per-token cost in C.
    return list(map(cache.__getitem__, words))


def stem(word: str) -> str:
    """The English Snowball stem of one case-folded word."""
    return stem_words([word])[0]


def split_words(text: str) -> list[str]:
    """The words of `text` as written (case kept): runs of letters and digits."""
    return _WORD.findall(unicodedata.normalize("NFKC", text))


def _fold(text: str) -> str:
    """Compatibility-normalised (ligatures, full-width forms) and case-folded text."""
    return unicodedata.normalize("NFKC", text).casefold()


def tokenize(text: str) -> tuple[str, ...]:
    """The stemmed, case-folded tokens of `text`, in order: what phrases are matched against."""
    return tuple(stem_words(_WORD.findall(_fold(text))))


def _padded(tokens: Sequence[str]) -> str:
    """Tokens as ` a b c `: a phrase ` b c ` is then a substring exactly when it is a run."""
    return f" {' '.join(tokens)} " if tokens else ""


# --- the syntax tree -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Term:
    """One field search: a word or a phrase (`words`), or a category for `cat:`.

    `words` are the user's words reduced to word characters with their case kept (they are what
    is sent to arXiv); `stems` are what is matched locally. For `cat:` `words` holds one value,
    the category or archive without any `.*`.
    """

    field: SearchField
    words: tuple[str, ...]
    quoted: bool = False
    stems: tuple[str, ...] = dataclasses.field(init=False, repr=False, compare=False)
    # The stems as ` a b `, searched for in a field's padded token string (see PaperTokens).
    needle: str = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.field is SearchField.CAT:
            if len(self.words) != 1:
                raise ValueError(f"a cat: term holds exactly one category: {self.words!r}")
            stems = tuple(word.casefold() for word in self.words)
        else:
            # Re-split so a Term built by hand with "graph-neural" means what the parser's does.
            words = [w for word in self.words for w in _WORD.findall(_fold(word))]
            stems = tuple(stem_words(words))
        if not stems:
            # An empty needle would be found in every paper.
            raise ValueError(f"a {self.field.value}: term needs at least one word: {self.words!r}")
        object.__setattr__(self, "stems", stems)
        object.__setattr__(self, "needle", _padded(stems))

    @property
    def is_archive(self) -> bool:
        """True for `cat:cs` / `cat:cs.*`: the term matches every category of an archive."""
        return self.field is SearchField.CAT and "." not in self.words[0]


@dataclass(frozen=True, slots=True)
class And:
    """Both sides match."""

    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Or:
    """Either side matches."""

    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class AndNot:
    """The left side matches and the right side does not (arXiv's binary ANDNOT)."""

    left: Node
    right: Node


Node: TypeAlias = Term | And | Or | AndNot


def iter_terms(node: Node) -> Iterator[Term]:
    """Every term of a tree, left to right."""
    if isinstance(node, Term):
        yield node
    else:
        yield from iter_terms(node.left)
        yield from iter_terms(node.right)


# --- papers, tokenised once ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PaperTokens:
    """A paper's stemmed tokens per field, each field one string: computed once, then matched.

    A field is its tokens joined by spaces and padded (` vision languag model `), so a phrase
    is a run of consecutive tokens exactly when its padded form is a substring: one C-speed
    `in`. Fields with several runs (one per author; comment and categories) put a newline
    between runs, so a phrase never spans two authors.
    """

    title: str
    abstract: str
    authors: str
    extra: str  # the comment and each category's words: searched by all: only
    categories: tuple[str, ...]  # case-folded category names, for cat:

    def runs(self, search: SearchField) -> tuple[str, ...]:
        """The strings a phrase of this (non-category) field is searched in."""
        if search is SearchField.TI:
            return (self.title,)
        if search is SearchField.ABS:
            return (self.abstract,)
        if search is SearchField.AU:
            return (self.authors,)
        return (self.title, self.abstract, self.authors, self.extra)


_Run: TypeAlias = tuple[str, ...]


def _categories(paper: Paper) -> list[str]:
    """The paper's categories, primary first, without duplicates."""
    return [c for c in dict.fromkeys((paper.primary_category, *paper.categories)) if c]


def _paper_runs(paper: Paper) -> tuple[tuple[_Run, ...], ...]:
    """A paper's token runs per slot (title, abstract, authors, extra), one run per text."""
    return (
        (tokenize(paper.title),),
        (tokenize(paper.abstract),),
        tuple(tokenize(author) for author in paper.authors),
        tuple(tokenize(text) for text in (paper.comment or "", *_categories(paper))),
    )


def tokenize_paper(paper: Paper) -> PaperTokens:
    """Tokenise every searchable field of a paper (uncached; see `paper_tokens`)."""
    title, abstract, authors, extra = ("\n".join(map(_padded, runs)) for runs in _paper_runs(paper))
    return PaperTokens(
        title=title,
        abstract=abstract,
        authors=authors,
        extra=extra,
        categories=tuple(category.casefold() for category in _categories(paper)),
    )


# Papers are frozen and hashable, so a paper checked against many queries is tokenised once;
# the bound keeps a long-running service's memory flat (a few KB per paper).
@lru_cache(maxsize=4096)
def paper_tokens(paper: Paper) -> PaperTokens:
    """A paper's tokens, cached per paper."""
    return tokenize_paper(paper)


def _category_matches(term: Term, categories: tuple[str, ...]) -> bool:
    value = term.stems[0]
    if term.is_archive:
        prefix = value + "."
        return any(category == value or category.startswith(prefix) for category in categories)
    return value in categories


def term_matches(term: Term, tokens: PaperTokens) -> bool:
    """Whether one term matches a tokenised paper."""
    if term.field is SearchField.CAT:
        return _category_matches(term, tokens.categories)
    needle = term.needle
    return any(needle in run for run in tokens.runs(term.field))


def node_matches(node: Node, tokens: PaperTokens) -> bool:
    """Evaluate a syntax tree against a tokenised paper (the plain reading of the tree)."""
    if isinstance(node, Term):
        return term_matches(node, tokens)
    if isinstance(node, And):
        return node_matches(node.left, tokens) and node_matches(node.right, tokens)
    if isinstance(node, Or):
        return node_matches(node.left, tokens) or node_matches(node.right, tokens)
    return node_matches(node.left, tokens) and not node_matches(node.right, tokens)


Predicate: TypeAlias = Callable[[PaperTokens], bool]


def compile_node(node: Node) -> Predicate:
    """A tree turned into nested closures: the same answers as `node_matches`, a few times faster.

    Checking one keyword against thousands of papers (a backfill, `naive_match_papers`) pays the
    tree walk once instead of once per paper.
    """
    if isinstance(node, Term):
        needle = node.needle
        if node.field is SearchField.CAT:
            return functools.partial(_category_term, node)
        if node.field is SearchField.TI:
            return lambda t: needle in t.title
        if node.field is SearchField.ABS:
            return lambda t: needle in t.abstract
        if node.field is SearchField.AU:
            return lambda t: needle in t.authors
        return lambda t: (
            needle in t.title or needle in t.abstract or needle in t.authors or needle in t.extra
        )
    left, right = compile_node(node.left), compile_node(node.right)
    if isinstance(node, And):
        return lambda t: left(t) and right(t)
    if isinstance(node, Or):
        return lambda t: left(t) or right(t)
    return lambda t: left(t) and not right(t)


def _category_term(term: Term, tokens: PaperTokens) -> bool:
    return _category_matches(term, tokens.categories)


# --- the query -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed keyword: its normalised text (the keyword's identity), its tree and its mode."""

    text: str
    root: Node
    plain: bool
    _predicate: Predicate = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_predicate", compile_node(self.root))

    @property
    def key(self) -> str:
        """The case-insensitive identity used to compare keywords."""
        return self.text.casefold()

    def matches(self, paper: Paper) -> bool:
        """Whether the paper matches this query (locally, with stemming)."""
        return self._predicate(paper_tokens(paper))

    def to_arxiv(self) -> str:
        """This query as an arXiv `search_query` string."""
        return to_arxiv(self)


def normalise_query(text: str) -> str:
    """A keyword's identity: outer whitespace removed, inner whitespace runs made one space."""
    return " ".join(text.split())


def query_key(text: str) -> str:
    """The case-insensitive identity of a keyword: normalised, then case-folded."""
    return normalise_query(text).casefold()


def is_plain(text: str) -> bool:
    """Whether `text` is a plain DailyArXiv phrase rather than arXiv syntax."""
    if any(char in _PLAIN_BREAKERS for char in text):
        return False
    return not any(word in OPERATORS for word in text.split())


def parse_query(text: str) -> Query:
    """Parse a keyword into a `Query`; raise `QueryError` saying what is wrong and where."""
    for position, char in enumerate(text):
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise QueryError(
                f"control or invisible character U+{ord(char):04X} is not allowed in a keyword",
                query=text,
                position=position,
            )
    normal = normalise_query(text)
    if not normal:
        raise QueryError("the keyword is empty; write a word, a phrase or an arXiv query")
    if len(normal) > MAX_QUERY_LENGTH:
        raise QueryError(
            f"the keyword is {len(normal)} characters long; the limit is {MAX_QUERY_LENGTH}",
            query=normal,
            position=MAX_QUERY_LENGTH,
        )
    if is_plain(normal):
        return Query(text=normal, root=_plain_tree(normal), plain=True)
    return Query(text=normal, root=_Parser(normal).parse(), plain=False)


def _plain_tree(text: str) -> Node:
    """DailyArXiv's rule as a tree: phrase in title OR abstract; one word in title AND abstract."""
    words = tuple(split_words(text))
    if not words:
        raise QueryError(
            "the keyword has no letters or digits to search for", query=text, position=0
        )
    title = Term(SearchField.TI, words, quoted=True)
    abstract = Term(SearchField.ABS, words, quoted=True)
    if len(text.split()) == 1:
        return And(title, abstract)
    return Or(title, abstract)


# --- the advanced-mode parser --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "(" ")" "op" "field" "word" "phrase"
    value: str
    position: int


def _lex(text: str) -> list[_Token]:
    """Split arXiv syntax into tokens, rejecting what cannot be part of a valid query."""
    tokens: list[_Token] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char.isspace():
            index += 1
        elif char in "()":
            tokens.append(_Token(char, char, index))
            index += 1
        elif char == '"':
            end = text.find('"', index + 1)
            if end == -1:
                raise QueryError("this double quote is never closed", query=text, position=index)
            tokens.append(_Token("phrase", text[index + 1 : end], index))
            index = end + 1
        else:
            end = index
            while end < len(text) and not text[end].isspace() and text[end] not in '()"':
                end += 1
            tokens.extend(_lex_chunk(text, text[index:end], index))
            index = end
    return tokens


def _lex_chunk(text: str, chunk: str, start: int) -> list[_Token]:
    """One run of non-space characters: an operator, a `field:` prefix and/or a word."""
    if chunk in OPERATORS:
        return [_Token("op", chunk, start)]
    name, colon, rest = chunk.partition(":")
    if not colon:
        return [_Token("word", chunk, start)]
    allowed = ", ".join(f"{f}:" for f in ALLOWED_FIELDS)
    if not name:
        raise QueryError(f"':' must follow a field name ({allowed})", query=text, position=start)
    field_name = name.lower()
    if not _FIELD_NAME.match(name) or field_name not in ALLOWED_FIELDS:
        why = (
            f"the arXiv field '{name}:' is not supported here"
            if field_name in UNSUPPORTED_FIELDS
            else f"unknown field '{name}:'"
        )
        raise QueryError(
            f"{why}; use one of {allowed} (to search for text containing ':', put it in quotes)",
            query=text,
            position=start,
        )
    tokens = [_Token("field", field_name, start)]
    value_start = start + len(name) + 1
    if ":" in rest:
        raise QueryError(
            "a second ':' in one term; put text containing ':' in quotes",
            query=text,
            position=value_start + rest.index(":"),
        )
    if rest:
        tokens.append(_Token("word", rest, value_start))
    elif value_start >= len(text) or text[value_start] not in '"(':
        raise QueryError(
            f"'{field_name}:' needs a value right after the colon, e.g. {field_name}:word or "
            f'{field_name}:"a phrase"',
            query=text,
            position=start,
        )
    return tokens


class _Parser:
    """Recursive descent over the tokens: or_expr := and_expr (OR and_expr)*, and so on."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _lex(text)
        self.index = 0

    def error(self, message: str, position: int) -> QueryError:
        return QueryError(message, query=self.text, position=position)

    def peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def parse(self) -> Node:
        node = self.or_expr(SearchField.ALL)
        token = self.peek()
        if token is not None:
            # or_expr stops only at ')' or the end, so this is a ')' without its '('.
            raise self.error("this ')' has no matching '('", token.position)
        return node

    def or_expr(self, default: SearchField) -> Node:
        node = self.and_expr(default)
        while (token := self.peek()) is not None and token.kind == "op" and token.value == "OR":
            self.index += 1
            node = Or(node, self.and_expr(default, after=token))
        return node

    def and_expr(self, default: SearchField, after: _Token | None = None) -> Node:
        node = self.primary(default, after)
        while (token := self.peek()) is not None:
            if token.kind == "op" and token.value in {"AND", "ANDNOT"}:
                self.index += 1
                right = self.primary(default, after=token)
                node = And(node, right) if token.value == "AND" else AndNot(node, right)
            elif token.kind in {"(", "field", "word", "phrase"}:
                # Adjacent terms without an operator: an implicit AND (see the module docstring).
                node = And(node, self.primary(default, after=None))
            else:
                break
        return node

    def primary(self, default: SearchField, after: _Token | None) -> Node:
        token = self.peek()
        if token is None or token.kind == ")" or token.kind == "op":
            self.missing_operand(token, after)
        self.index += 1
        if token.kind == "(":
            return self.group(token, default)
        if token.kind == "field":
            search = SearchField(token.value)
            value = self.peek()
            # The lexer guarantees a value token follows a field prefix directly.
            assert value is not None  # noqa: S101  # for mypy, see above
            self.index += 1
            if value.kind == "(":
                return self.group(value, search)
            return self.term(search, value)
        return self.term(default, token)

    def missing_operand(self, token: _Token | None, after: _Token | None) -> NoReturn:
        if after is not None:
            raise self.error(f"'{after.value}' has nothing on its right", after.position)
        if token is None:
            raise self.error("the query ends where a term was expected", len(self.text))
        if token.kind == "op":
            raise self.error(f"'{token.value}' has nothing on its left", token.position)
        raise self.error("this ')' has no matching '('", token.position)

    def group(self, opening: _Token, default: SearchField) -> Node:
        inner = self.peek()
        if inner is None:
            raise self.error("this '(' is never closed", opening.position)
        if inner.kind == ")":
            raise self.error("empty parentheses", opening.position)
        node = self.or_expr(default)
        closing = self.peek()
        if closing is None or closing.kind != ")":
            raise self.error("this '(' is never closed", opening.position)
        self.index += 1
        return node

    def term(self, search: SearchField, token: _Token) -> Term:
        value = token.value
        if search is SearchField.CAT:
            return self.category(value, token)
        if search is SearchField.AU:
            value = value.replace("_", " ")  # arXiv's au:del_maestro spelling
        words = tuple(split_words(value))
        if not words:
            what = "empty phrase" if token.kind == "phrase" else "a term without letters or digits"
            raise self.error(f"{what}; nothing to search for", token.position)
        # Several words are a phrase whether or not they were quoted (ti:graph-neural), and
        # are marked so: the tree then reads back identically from its arXiv string.
        return Term(search, words, quoted=token.kind == "phrase" or len(words) > 1)

    def category(self, value: str, token: _Token) -> Term:
        value = value.strip()
        if not _CATEGORY.match(value):
            raise self.error(
                f"'{value}' is not an arXiv category; write it like cat:cs.LG, cat:math.GT, "
                "cat:astro-ph or cat:cs.* for a whole archive",
                token.position,
            )
        return Term(SearchField.CAT, (value.removesuffix(".*"),), quoted=token.kind == "phrase")


# --- serialising for arXiv -----------------------------------------------------------------------


def _term_to_arxiv(term: Term) -> str:
    if term.field is SearchField.CAT:
        # The value passed _CATEGORY at parse time; re-checked so no other tree can smuggle text.
        value = term.words[0]
        if not _CATEGORY.match(value) or value.endswith(".*"):
            raise ValueError(f"not a category: {value!r}")
        if term.is_archive:
            # `cat:astro-ph` also names old papers filed before the archive had subjects.
            return f"(cat:{value} OR cat:{value}.*)"
        return f"cat:{value}"
    words = [word for raw in term.words for word in _WORD.findall(raw)]
    if not words:
        raise ValueError(f"term without words: {term!r}")
    # An operator spelled as a word (ti:OR) is quoted so arXiv reads it as text.
    if term.quoted or len(words) > 1 or words[0] in OPERATORS:
        return f'{term.field.value}:"{" ".join(words)}"'
    return f"{term.field.value}:{words[0]}"


def _operands(node: And | Or) -> list[Node]:
    """The operands of a chain of one associative operator: `a AND b AND c` -> [a, b, c]."""
    kind = type(node)
    operands: list[Node] = []
    for child in (node.left, node.right):
        if isinstance(child, kind):
            operands.extend(_operands(child))
        else:
            operands.append(child)
    return operands


def _node_to_arxiv(node: Node, *, top: bool) -> str:
    if isinstance(node, Term):
        return _term_to_arxiv(node)
    if isinstance(node, AndNot):
        operator, operands = "ANDNOT", [node.left, node.right]
    else:
        # AND and OR are associative, so a chain of one of them needs no inner parentheses.
        operator, operands = ("AND" if isinstance(node, And) else "OR"), _operands(node)
    # Every nested operation is parenthesised, so arXiv's undocumented precedence never matters.
    text = f" {operator} ".join(_node_to_arxiv(child, top=False) for child in operands)
    return text if top else f"({text})"


def to_arxiv(query: Query | Node) -> str:
    """Serialise a query's tree into an arXiv `search_query` string, never pasting user text."""
    root = query.root if isinstance(query, Query) else query
    return _node_to_arxiv(root, top=True)


# --- matching many queries against many papers ---------------------------------------------------


_EMPTY: frozenset[int] = frozenset()


_Positions: TypeAlias = set[int] | frozenset[int]
_Pair: TypeAlias = tuple[str, str]
# Posting slots: the searchable fields, plus "extra" for the comment and category words, which
# only all: searches.
_SLOTS = ("ti", "abs", "au", "extra")


class PaperIndex:
    """An inverted index over a list of papers, built for the terms of a set of queries.

    Only what the given queries ask for is posted, so memory grows with the keywords, not with
    the papers' vocabulary: the stems of one-word terms, and the adjacent stem pairs of phrases.
    For each paper and field the index intersects, in C, the field's tokens with the wanted
    stems and its token pairs with the wanted pairs. A one-word term is then one posting set,
    a two-word phrase one pair posting set (exact: a pair is a run of two); a longer phrase
    intersects its pairs' sets, smallest first, and verifies the order on the few papers left
    with one substring search each. A query thus only touches the papers that hold its rarest
    pair, never the whole list. Results are cached per (field, stems), since keywords share
    terms (`ti:"x"` and `abs:"x"`). A term outside the given queries is answered by a scan.
    """

    def __init__(self, papers: Sequence[Paper], *, queries: Sequence[Query] = ()) -> None:
        self.papers = list(papers)
        terms = [
            term
            for query in queries
            for term in iter_terms(query.root)
            if term.field is not SearchField.CAT
        ]
        self._wanted_stems = frozenset(t.stems[0] for t in terms if len(t.stems) == 1)
        self._wanted_pairs = frozenset(pair for t in terms for pair in itertools.pairwise(t.stems))
        self._stems: dict[str, dict[str, set[int]]] = {slot: {} for slot in _SLOTS}
        self._pairs: dict[str, dict[_Pair, set[int]]] = {slot: {} for slot in _SLOTS}
        self._categories: dict[str, set[int]] = {}
        self._all_stems: dict[str, _Positions] = {}
        self._all_pairs: dict[_Pair, _Positions] = {}
        self._terms: dict[tuple[SearchField, tuple[str, ...]], _Positions] = {}
        self._tokens: list[PaperTokens] = []
        for position, paper in enumerate(self.papers):
            slots = _paper_runs(paper)
            for slot, runs in zip(_SLOTS, slots, strict=True):
                self._post(slot, runs, position)
            categories = tuple(category.casefold() for category in _categories(paper))
            for category in categories:
                self._categories.setdefault(category, set()).add(position)
            # The padded strings, for verifying long phrases and for scans.
            title, abstract, authors, extra = ("\n".join(map(_padded, runs)) for runs in slots)
            self._tokens.append(PaperTokens(title, abstract, authors, extra, categories))

    def _post(self, slot: str, runs: tuple[_Run, ...], position: int) -> None:
        stems, pairs = self._stems[slot], self._pairs[slot]
        for run in runs:
            # Both intersections iterate the paper's tokens in C.
            for stem in self._wanted_stems.intersection(run):
                stems.setdefault(stem, set()).add(position)
            if self._wanted_pairs:
                for pair in self._wanted_pairs.intersection(itertools.pairwise(run)):
                    pairs.setdefault(pair, set()).add(position)

    def _stem(self, search: SearchField, stem: str) -> _Positions:
        if search is not SearchField.ALL:
            return self._stems[search.value].get(stem, _EMPTY)
        cached = self._all_stems.get(stem)
        if cached is None:
            found = [postings[stem] for postings in self._stems.values() if stem in postings]
            cached = self._all_stems[stem] = set().union(*found) if found else _EMPTY
        return cached

    def _pair(self, search: SearchField, pair: _Pair) -> _Positions:
        if search is not SearchField.ALL:
            return self._pairs[search.value].get(pair, _EMPTY)
        cached = self._all_pairs.get(pair)
        if cached is None:
            found = [postings[pair] for postings in self._pairs.values() if pair in postings]
            cached = self._all_pairs[pair] = set().union(*found) if found else _EMPTY
        return cached

    def _phrase(self, term: Term) -> _Positions:
        postings = sorted(
            (self._pair(term.field, pair) for pair in set(itertools.pairwise(term.stems))),
            key=len,
        )
        candidates = postings[0].intersection(*postings[1:]) if postings[0] else _EMPTY
        if len(term.stems) == 2:
            return candidates
        tokens = self._tokens
        return {position for position in candidates if term_matches(term, tokens[position])}

    def _category(self, term: Term) -> _Positions:
        value = term.stems[0]
        if not term.is_archive:
            return self._categories.get(value, _EMPTY)
        prefix = value + "."
        found: set[int] = set()
        for category, positions in self._categories.items():
            if category == value or category.startswith(prefix):
                found |= positions
        return found

    def _indexed(self, term: Term) -> bool:
        if len(term.stems) == 1:
            return term.stems[0] in self._wanted_stems
        return self._wanted_pairs.issuperset(itertools.pairwise(term.stems))

    def term(self, term: Term) -> _Positions:
        """The positions of the papers a term matches (do not mutate the result)."""
        key = (term.field, term.stems)
        cached = self._terms.get(key)
        if cached is not None:
            return cached
        if term.field is SearchField.CAT:
            found = self._category(term)
        elif not self._indexed(term):
            found = {i for i, tokens in enumerate(self._tokens) if term_matches(term, tokens)}
        elif len(term.stems) == 1:
            found = self._stem(term.field, term.stems[0])
        else:
            found = self._phrase(term)
        self._terms[key] = found
        return found

    def evaluate(self, node: Node) -> _Positions:
        """The positions of the papers a tree matches (do not mutate the result)."""
        if isinstance(node, Term):
            return self.term(node)
        left = self.evaluate(node.left)
        if isinstance(node, And):
            return left & self.evaluate(node.right) if left else _EMPTY
        if isinstance(node, Or):
            return left | self.evaluate(node.right)
        return left - self.evaluate(node.right) if left else _EMPTY

    def match(self, query: Query) -> set[str]:
        """The arXiv ids of the indexed papers that match a query."""
        return set(map(self._ids.__getitem__, self.evaluate(query.root)))

    @functools.cached_property
    def _ids(self) -> list[str]:
        return [paper.arxiv_id for paper in self.papers]


# --- narrowing a list of papers before matching --------------------------------------------------

# Stems that are not prefixes of every word they come from (Porter2's exceptional forms: "dying"
# stems to "die", "skies" to "sky"); a term stemming to one of them narrows nothing.
_IRREGULAR_STEMS = frozenset({"die", "lie", "tie", "sky"})
_MIN_PROBE = 3  # shorter probes would keep most papers anyway


@dataclass(frozen=True, slots=True)
class FoldedPaper:
    """A paper's searchable text, folded as the tokenizer folds it: cheap to search for
    substrings (tens of microseconds a paper against the milliseconds of tokenising it).

    `texts` holds, by slot: title, abstract, authors, comment and categories, all of them.
    """

    arxiv_id: str
    texts: tuple[str, str, str, str]
    categories: tuple[str, ...]


class Searchable(Protocol):
    """What narrowing reads of a paper (a `Paper` or a stored paper's `PaperText`)."""

    @property
    def arxiv_id(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def abstract(self) -> str: ...
    @property
    def authors(self) -> tuple[str, ...]: ...
    @property
    def comment(self) -> str | None: ...
    @property
    def primary_category(self) -> str: ...
    @property
    def categories(self) -> tuple[str, ...]: ...


_SLOTS_OF = {
    SearchField.TI: (0,),
    SearchField.ABS: (1,),
    SearchField.AU: (2,),
    SearchField.ALL: (0, 1, 2, 3),
}


def fold_paper(paper: Searchable) -> FoldedPaper:
    """A paper's folded text, for `narrow_papers`."""
    categories = tuple(
        c.casefold() for c in dict.fromkeys((paper.primary_category, *paper.categories)) if c
    )
    return FoldedPaper(
        paper.arxiv_id,
        (
            _fold(paper.title),
            _fold(paper.abstract),
            _fold("\n".join(paper.authors)),
            _fold("\n".join((paper.comment or "", *categories))),
        ),
        categories,
    )


def _probe(stem: str) -> str | None:
    """A substring every word stemming to `stem` contains, or None.

    Porter2 keeps a word's beginning and rewrites only its end: a final `y` becomes `i`, and
    suffix rules leave `...ate`, `...ence`, `...able`, `...ize` where the word had `...ational`,
    `...enci`, `...abli`, `...izer`, and `...bl` where it had `...bility`. Without a final `i`
    or `e`, or a final `bl`, the stem is a prefix of the word in every case but the few
    irregular forms (tests/test_narrow.py checks it over a vocabulary).
    """
    if stem in _IRREGULAR_STEMS:
        return None
    if stem.endswith("bl"):
        probe = stem[:-2]
    elif stem.endswith(("i", "e")):
        probe = stem[:-1]
    else:
        probe = stem
    return probe if len(probe) >= _MIN_PROBE else None


# A necessary condition in disjunctive form: a paper the node matches satisfies at least one
# alternative, i.e. holds every (field, probe) of it. None: no condition (keep every paper).
_Alternative: TypeAlias = tuple[tuple[SearchField, str], ...]
_Probes: TypeAlias = list[_Alternative] | None
_MAX_ALTERNATIVES = 16  # past this an OR of ANDs is not worth expanding


def _probes(node: Node) -> _Probes:
    """A necessary condition of `node` (see `_Probes`)."""
    if isinstance(node, Term):
        if node.field is SearchField.CAT:
            return [((node.field, node.stems[0]),)]
        found = tuple(
            (node.field, probe) for stem in node.stems if (probe := _probe(stem)) is not None
        )
        return [found] if found else None  # a phrase holds every one of its words
    left = _probes(node.left)
    if isinstance(node, AndNot):
        return left
    right = _probes(node.right)
    if isinstance(node, Or):
        return None if left is None or right is None else left + right
    if left is None or right is None:  # And: either side's condition is necessary
        return left if right is None else right
    combined = [a + b for a in left for b in right]  # both sides' conditions
    return combined if len(combined) <= _MAX_ALTERNATIVES else min(left, right, key=len)


def _holding(papers: Sequence[FoldedPaper], field: SearchField, probe: str) -> list[FoldedPaper]:
    """The papers that hold `probe` in `field` (one C-level `in` a paper)."""
    if field is SearchField.CAT:
        prefix = probe + "."
        return [f for f in papers if any(c == probe or c.startswith(prefix) for c in f.categories)]
    slots = _SLOTS_OF[field]
    if len(slots) == 1:
        slot = slots[0]
        return [f for f in papers if probe in f.texts[slot]]
    return [f for f in papers if any(probe in f.texts[slot] for slot in slots)]


def narrow_papers(query: Query, papers: Sequence[FoldedPaper]) -> list[str]:
    """The ids of the papers `query` may match: a superset of its matches, found by substring
    search on folded text, so that only those few need tokenising (a new keyword against a
    window).

    Each alternative filters the list probe by probe, so after the first (and rarest-looking,
    the longest) probe only a few papers are left to check.
    """
    probes = _probes(query.root)
    if probes is None:
        return [folded.arxiv_id for folded in papers]
    kept: dict[str, None] = {}
    for alternative in probes:
        left: Sequence[FoldedPaper] = papers
        for field, probe in sorted(alternative, key=lambda fp: -len(fp[1])):
            left = _holding(left, field, probe)
            if not left:
                break
        for folded in left:
            kept[folded.arxiv_id] = None
    return list(kept)


def match_papers(queries: Sequence[Query], papers: Sequence[Paper]) -> dict[str, set[str]]:
    """Map each query's normalised text to the arXiv ids of the papers it matches."""
    if not queries:
        return {}
    index = PaperIndex(papers, queries=queries)
    results: dict[str, set[str]] = {}
    for query in queries:
        if query.text not in results:  # the same keyword listed twice is matched once
            results[query.text] = index.match(query)
    return results


def naive_match_papers(queries: Sequence[Query], papers: Sequence[Paper]) -> dict[str, set[str]]:
    """The same as `match_papers`, by checking every query on every paper (the reference)."""
    tokens = [tokenize_paper(paper) for paper in papers]
    results: dict[str, set[str]] = {}
    for query in queries:
        check = compile_node(query.root)
        results[query.text] = {
            paper.arxiv_id for paper, toks in zip(papers, tokens, strict=True) if check(toks)
        }
    return results
