"""The `like:` query and its seed papers: the grammar and the checks, pure and light.

`like:2501.09733,2412.20455,2410.01234` names 3 to 50 seed papers (commas or spaces between
them; `arXiv:` prefixes, versions and abs/pdf URLs are accepted and reduced to the id).
`parse_like` refuses anything else with a one-line `SimilarityError`; `LikeQuery.text` is the
canonical form (ids sorted, versions dropped), the keyword's identity, so the same seed set
written in another order or with versions is one keyword. Whether the ids exist and are not
withdrawn is known only once they are fetched: `check_seeds` / `resolve_seeds`.
`canonical_keyword` is the one rule for any tracked keyword's text (a `like:` list or a query).

No scikit-learn here (digest.similar holds the model): the CLI, the config and the chat
commands check a seed list without loading it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from digest.domain import Paper, split_arxiv_id
from digest.errors import SimilarityError
from digest.query import parse_query

LIKE_PREFIX = "like:"
MIN_SEEDS = 3  # fewer seeds share too little to tell the topic from a coincidence
MAX_SEEDS = 50  # a longer list is a library, not a topic; it also bounds the seeds' id fetch

_SEPARATORS = re.compile(r"[\s,;]+")
_ARXIV_PREFIX = re.compile(r"^arxiv:", re.IGNORECASE)
_EXAMPLE = "like:2501.09733,2412.20455,2410.01234"


# --- the like: query ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LikeQuery:
    """A parsed `like:` query: its distinct seed ids (no versions), sorted."""

    seeds: tuple[str, ...]

    @property
    def text(self) -> str:
        """The canonical form, `like:` + the sorted ids: the keyword's identity."""
        return LIKE_PREFIX + ",".join(self.seeds)


def is_like_query(text: str) -> bool:
    """Whether a keyword's text is a `like:` query (rather than a keyword for digest.query)."""
    return text.strip()[: len(LIKE_PREFIX)].casefold() == LIKE_PREFIX


def _plural(count: int, one: str, many: str) -> str:
    return one if count == 1 else many


def _listed(items: Sequence[str], limit: int = 5) -> str:
    """`a, b and c`, or `a, b, c, d, e and 3 more`."""
    shown = list(items[:limit])
    rest = len(items) - len(shown)
    if rest:
        return f"{', '.join(shown)} and {rest} more"
    if len(shown) == 1:
        return shown[0]
    return f"{', '.join(shown[:-1])} and {shown[-1]}"


def parse_like(text: str) -> LikeQuery:
    """Parse `like:ID,ID,...`; raise SimilarityError with a one-line reason when unusable."""
    stripped = text.strip()
    if not is_like_query(stripped):
        raise SimilarityError(
            f"{text!r} is not a like: query; write {LIKE_PREFIX} and 3 to 50 arXiv ids, "
            f"for example {_EXAMPLE}"
        )
    tokens = [token for token in _SEPARATORS.split(stripped[len(LIKE_PREFIX) :]) if token]
    if not tokens:
        raise SimilarityError(
            f"like: needs {MIN_SEEDS} to {MAX_SEEDS} arXiv ids separated by commas, "
            f"for example {_EXAMPLE}"
        )
    ids: list[str] = []
    malformed: list[str] = []
    for token in tokens:
        try:
            ids.append(split_arxiv_id(_ARXIV_PREFIX.sub("", token))[0])
        except ValueError:
            malformed.append(repr(token))
    if malformed:
        verb = _plural(len(malformed), "is not an arXiv id", "are not arXiv ids")
        raise SimilarityError(
            f"like: {_listed(malformed)} {verb}; write ids such as 2501.09733 or hep-th/9901001"
        )
    distinct = tuple(sorted(set(ids)))
    if len(distinct) < MIN_SEEDS:
        if len(ids) >= MIN_SEEDS:
            raise SimilarityError(
                f"like: needs {MIN_SEEDS} different papers, but the {len(ids)} ids name only "
                f"{len(distinct)} ({_listed(distinct)}); a paper listed twice, or in two "
                "versions, counts once"
            )
        raise SimilarityError(
            f"like: needs at least {MIN_SEEDS} seed papers, got {len(distinct)} "
            f"({_listed(distinct)}); add papers on the same topic"
        )
    if len(distinct) > MAX_SEEDS:
        raise SimilarityError(
            f"like: takes at most {MAX_SEEDS} seed papers, got {len(distinct)}; keep the "
            f"{MAX_SEEDS} most typical of the topic"
        )
    return LikeQuery(seeds=distinct)


def canonical_like(text: str) -> str:
    """The canonical text of a `like:` query (raises SimilarityError as `parse_like` does)."""
    return parse_like(text).text


# --- seeds as fetched -----------------------------------------------------------------------------

# A withdrawal notice as arXiv and authors write it, at the start of the abstract, the title or
# a comment sentence: "This paper has been withdrawn by the author(s) ...", "arXiv admin note:
# This submission has been withdrawn by arXiv administrators ...", "[This paper has been
# withdrawn ...]", "The following paper has been withdrawn ...", "Paper withdrawn by the
# author", "This paper is withdrawn ...", "Withdrawn." (verbatim openings of real withdrawn
# papers, e.g. 1806.06446, 1904.09773, 1811.03758, 2212.05167, 1301.4231). Anchored at the
# start, so an abstract that *mentions* withdrawal ("drugs withdrawn from the market", "a
# plate withdrawn from a bath") is not taken for one.
_WITHDRAWAL = re.compile(
    r"""^\W*(?:arxiv\s+admin\s+note\s*:\s*)?\W*
    (?:(?:this|the\s+following|the)\s+)?
    (?:(?:paper|submissions?|article|manuscript|preprint|work|version)\s+)?
    (?:(?:has|have)\s+been\s+|is\s+|was\s+)?
    (?:hereby\s+)?
    withdrawn\b""",
    re.IGNORECASE | re.VERBOSE,
)
_COMMENT_SENTENCES = re.compile(r"[;\n]|\.\s")


def is_withdrawn(paper: Paper) -> bool:
    """Whether arXiv's record of this version announces a withdrawal (abstract, title, comment)."""
    texts = [paper.abstract, paper.title]
    if paper.comment:
        texts.extend(_COMMENT_SENTENCES.split(paper.comment))
    return any(_WITHDRAWAL.match(text) for text in texts)


@dataclass(frozen=True, slots=True)
class SeedCheck:
    """What fetching a `like:` query's seeds found: the usable papers and the bad ids."""

    papers: tuple[Paper, ...]  # usable seeds, in the query's (sorted) order
    missing: tuple[str, ...]  # ids arXiv did not return: unknown, or mistyped
    withdrawn: tuple[str, ...]  # ids whose latest version is a withdrawal notice

    @property
    def ok(self) -> bool:
        """True when every requested seed was found and none is withdrawn."""
        return not self.missing and not self.withdrawn

    def reason(self) -> str | None:
        """The one-line refusal for a person, or None when the seeds are all usable."""
        parts: list[str] = []
        if self.missing:
            verb = _plural(len(self.missing), "is not on arXiv", "are not on arXiv")
            parts.append(f"{_listed(self.missing)} {verb}")
        if self.withdrawn:
            verb = _plural(len(self.withdrawn), "has been withdrawn", "have been withdrawn")
            parts.append(f"{_listed(self.withdrawn)} {verb}")
        if not parts:
            return None
        return f"like: {'; '.join(parts)}; check the ids or pick other papers on the topic"


def check_seeds(query: LikeQuery, fetched: Iterable[Paper]) -> SeedCheck:
    """Compare the requested seeds with what arXiv returned for them (extra papers ignored)."""
    found: dict[str, Paper] = {}
    for paper in fetched:
        known = found.get(paper.arxiv_id)
        if known is None or paper.version > known.version:
            found[paper.arxiv_id] = paper
    missing = tuple(arxiv_id for arxiv_id in query.seeds if arxiv_id not in found)
    present = [found[arxiv_id] for arxiv_id in query.seeds if arxiv_id in found]
    withdrawn = tuple(paper.arxiv_id for paper in present if is_withdrawn(paper))
    papers = tuple(paper for paper in present if paper.arxiv_id not in withdrawn)
    return SeedCheck(papers=papers, missing=missing, withdrawn=withdrawn)


def resolve_seeds(query: LikeQuery, fetched: Iterable[Paper]) -> tuple[Paper, ...]:
    """The seed papers, or SimilarityError naming every unknown or withdrawn id."""
    check = check_seeds(query, fetched)
    reason = check.reason()
    if reason is not None:
        raise SimilarityError(reason)
    return check.papers


def canonical_keyword(text: str) -> str:
    """A tracked keyword's canonical text: a `like:` list's sorted ids, else the parsed
    query's text. QueryError or SimilarityError, in one line, when it is neither."""
    return canonical_like(text) if is_like_query(text) else parse_query(text).text
