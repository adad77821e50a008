"""More like these papers: `like:` seed sets, a tf-idf + linear classifier, relevance order.

Pure core (no I/O, no clock, no database): the caller fetches the seeds, reads the recent stored
papers, stores the trained model and decides when to retrain; everything here is a function of
its arguments.

The `like:` query and its seeds' checks live in digest.like_query (no scikit-learn there, so
the CLI, the config and the chat commands can check a seed list without loading the model).

The model (`train_similarity`)
    Features: tf-idf of title + abstract (lower-cased, accents stripped, English stop words out,
    words and word bigrams, sublinear tf, smoothed idf over seeds + background), restricted to
    the *seed vocabulary*: the terms that occur in at least `seed_support` of the seeds (and in
    at least two). A term only one seed uses is that seed's own business (its other topics, a
    data set), not what the seeds have in common; it would otherwise give high scores to
    papers that share a side topic with one seed. The vectors are L2-normalised over the kept
    terms, so a paper that discusses the seeds' topic among several others is not diluted by
    the others' words.
    Classifier: a linear SVM (LinearSVC, C=0.01, balanced class weights for the few seeds
    against thousands of background papers: arxiv-sanity-lite's choice) of seeds against the
    background, the most recent `max_background` stored papers other than the seeds.
    Threshold: cross-validated on the seeds themselves (each seed scored by a model trained
    without it; up to `folds` folds), at the quantile that keeps `recall_target` of them:
    by default a new paper is selected when it scores at least as high as 90 % of held-out
    seeds do. No labels are needed at scoring time, and the threshold adapts to how tight the
    seed set is (a niche topic's seeds score high and keep their near neighbours out; a broad
    topic's seeds spread out and let more in). The background's score distribution was not used:
    the background holds unlabelled papers of the seeds' topic (8 % of it for a popular topic), so
    its upper tail says little about what is off-topic.
    Cost: tokenising seeds + background once (hashed term counts, linear in `max_background`)
    and `folds` + 1 fits on a matrix with only the seed vocabulary's columns (a few hundred):
    about 1.7 s at the default 10,000 background papers on a 2-core machine. Scoring tokenises
    the papers (about 0.6 s per 5,000), or, once a batch is tokenised with `prepare_papers`,
    costs a few hundredths of a second per model: one tokenising serves every `like:` model.
    `python -m bench.similar` measures all three.
    The fitted model is a few hundred terms with their idf and weights: `dumps` / `loads` write
    it as JSON (no pickle: a cache read back cannot run code), and `seed_key` tells the caller
    when it is stale (seeds or versions or parameters changed).

Relevance order (`rank_by_relevance`)
    For a broad keyword's papers in a digest: the same features and classifier with the keyword's
    own recent matches as positives against the background; without a background, Rocchio
    (the positives' centroid against the papers' own); without positives, BM25 of the keyword's
    words; ties (and no signal at all) newest first.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import sparse
from sklearn.feature_extraction import FeatureHasher
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.svm import LinearSVC

from digest.domain import Paper
from digest.errors import QueryError, SimilarityError
from digest.like_query import MIN_SEEDS
from digest.query import And, AndNot, Node, Or, SearchField, Term, parse_query, tokenize

MIN_BACKGROUND = 50  # fewer stored papers cannot show what is *not* like the seeds
MODEL_FORMAT = 1  # bumped when `SimilarityModel`'s JSON changes; older caches are retrained


Floats = npt.NDArray[np.float64]


# --- features -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimilarityParams:
    """The knobs of training; part of the model's identity (changing one retrains)."""

    # The most recent stored papers the seeds are compared against: the cost bound, and a
    # quality trade-off measured with bench.similar. More background holds more unlabelled
    # papers of the seeds' own topic (8 % for a popular one), which outweigh 10 seeds:
    # "language models" kept precision 0.99 at 5,000, 0.94 at 10,000, 0.82 at 20,000 and 0.66
    # at 50,000. Less background holds fewer near misses for a niche topic: "mobile
    # retrieval-augmented generation" fell from precision 1.00 at 10,000 to 0.23 at 5,000.
    max_background: int = 10_000
    max_positives: int = 200  # for relevance order: the most recent matches used as positives
    ngram_max: int = (
        2  # words and word bigrams ("anomaly detection" is not "anomaly" + "detection")
    )
    max_df: float = 0.5  # terms in more than half of all papers carry no topic
    seed_support: float = 0.2  # a term must occur in this share of the seeds (and in two)
    c: float = 0.01  # strong regularisation: arxiv-sanity-lite's C; few seeds, many terms
    recall_target: float = 0.9  # the threshold keeps this share of held-out seeds
    folds: int = 10  # cross-validation folds over the seeds (leave-one-out up to 10 seeds)


DEFAULT_PARAMS = SimilarityParams()


def paper_text(paper: Paper) -> str:
    """The text a paper is judged by: title and abstract."""
    return f"{paper.title}\n{paper.abstract}"


HASH_BUCKETS = 2**20  # term columns; a model's few hundred terms rarely share one (p ~ 2 %),
# and two terms that do only have their counts added. Hashing keeps a tokenised batch free of a
# vocabulary, so one tokenising serves every model (`prepare_papers`).


@lru_cache(maxsize=4)
def _analyzer(ngram_max: int) -> Callable[[str], list[str]]:
    """The one analyser of training and scoring: what a term is never differs between them."""
    analyze: Callable[[str], list[str]] = CountVectorizer(
        lowercase=True,
        strip_accents="unicode",
        stop_words="english",
        ngram_range=(1, ngram_max),
    ).build_analyzer()
    return analyze


@lru_cache(maxsize=1)
def _hasher() -> Any:
    return FeatureHasher(
        n_features=HASH_BUCKETS, input_type="string", alternate_sign=False, dtype=np.float64
    )


@lru_cache(maxsize=256)
def _columns(terms: tuple[str, ...]) -> npt.NDArray[np.int32]:
    """The hashed column of each term, in order."""
    if not terms:
        return np.zeros(0, dtype=np.int32)
    columns: npt.NDArray[np.int32] = _hasher().transform([[term] for term in terms]).tocsr().indices
    return columns


@dataclass(frozen=True, slots=True, eq=False)
class PreparedPapers:
    """Papers tokenised once (hashed term counts): score them with many models, or train many
    models against them, without tokenising again (tokenising is most of the cost)."""

    papers: tuple[Paper, ...]
    ngram_max: int
    counts: Any = field(repr=False)  # sparse: one row per paper, HASH_BUCKETS columns


def prepare_papers(
    papers: Iterable[Paper], *, params: SimilarityParams = DEFAULT_PARAMS
) -> PreparedPapers:
    """Tokenise papers once for `score`, `select`, `train_similarity` and `rank_by_relevance`."""
    batch = tuple(papers)
    analyze = _analyzer(params.ngram_max)
    if not batch:  # the hasher cannot transform nothing
        return PreparedPapers(
            papers=batch,
            ngram_max=params.ngram_max,
            counts=sparse.csr_matrix((0, HASH_BUCKETS), dtype=np.float64),
        )
    counts = _hasher().transform(analyze(paper_text(paper)) for paper in batch).tocsr()
    return PreparedPapers(papers=batch, ngram_max=params.ngram_max, counts=counts)


Papers = Sequence[Paper] | PreparedPapers


def _prepared(papers: Papers, params: SimilarityParams) -> PreparedPapers:
    if isinstance(papers, PreparedPapers):
        if papers.ngram_max != params.ngram_max:
            raise ValueError(f"papers prepared with ngram_max={papers.ngram_max}, not {params}")
        return papers
    return prepare_papers(papers, params=params)


def _weigh(counts: Any, idf: Floats) -> Any:
    """Sublinear tf (1 + ln tf) times idf, each row L2-normalised: the vectors the model sees."""
    matrix = sparse.csr_matrix(counts, dtype=np.float64, copy=True)
    matrix.data = 1.0 + np.log(matrix.data)
    matrix = matrix @ sparse.diags(idf)
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    norms[norms == 0.0] = 1.0
    return sparse.csr_matrix(sparse.diags(1.0 / norms) @ matrix)


@dataclass(frozen=True, slots=True)
class _Features:
    """The seed vocabulary with its idf, and the weighted rows of seeds and others."""

    terms: tuple[str, ...]
    idf: Floats
    seeds: Any  # sparse rows, one per seed
    others: Any  # sparse rows, one per other paper


def _features(
    seeds: Sequence[Paper], others: Any, params: SimilarityParams, *, max_df: float | None = None
) -> _Features:
    """The terms enough seeds share, weighed in seeds and in `others` (hashed counts, one row
    per other paper); SimilarityError when the seeds share no informative term."""
    analyze = _analyzer(params.ngram_max)
    support: Counter[str] = Counter()
    for paper in seeds:
        support.update(set(analyze(paper_text(paper))))
    needed = min(len(seeds), max(2, math.ceil(params.seed_support * len(seeds))))
    shared = tuple(sorted(term for term, count in support.items() if count >= needed))
    columns = _columns(shared)
    seed_rows = prepare_papers(seeds, params=params).counts[:, columns]
    other_rows = others[:, columns]
    df = np.array([support[term] for term in shared], dtype=np.float64)
    df += np.asarray((other_rows > 0).sum(axis=0), dtype=np.float64).ravel()
    total = len(seeds) + others.shape[0]
    limit = params.max_df if max_df is None else max_df
    informative = np.flatnonzero(df <= limit * total)
    if informative.size == 0:
        raise SimilarityError(
            "like: the seed papers share too few words to learn a topic from; pick papers "
            "that are about the same thing"
        )
    idf = np.log((1.0 + total) / (1.0 + df[informative])) + 1.0  # sklearn's smoothed idf
    return _Features(
        terms=tuple(shared[i] for i in informative),
        idf=idf,
        seeds=_weigh(seed_rows[:, informative], idf),
        others=_weigh(other_rows[:, informative], idf),
    )


# --- the model ------------------------------------------------------------------------------------


def _distinct_seeds(seeds: Iterable[Paper]) -> list[Paper]:
    """One paper per id (its latest version), sorted by id."""
    latest: dict[str, Paper] = {}
    for paper in seeds:
        known = latest.get(paper.arxiv_id)
        if known is None or paper.version > known.version:
            latest[paper.arxiv_id] = paper
    return [latest[arxiv_id] for arxiv_id in sorted(latest)]


def _background_rows(papers: Sequence[Paper], seeds: Iterable[Paper], limit: int) -> list[int]:
    """Indices of the `limit` most recent papers (by update, then id; one per id) not seeds."""
    excluded = {paper.arxiv_id for paper in seeds}
    order = sorted(
        range(len(papers)),
        key=lambda i: (papers[i].updated, papers[i].published, papers[i].arxiv_id),
        reverse=True,
    )
    rows: list[int] = []
    for index in order:
        if len(rows) == limit:
            break
        arxiv_id = papers[index].arxiv_id
        if arxiv_id not in excluded:
            excluded.add(arxiv_id)
            rows.append(index)
    return rows


def select_background(background: Papers, seeds: Iterable[Paper], *, limit: int) -> list[Paper]:
    """The background actually trained on: the `limit` most recent papers that are not seeds."""
    papers = background.papers if isinstance(background, PreparedPapers) else list(background)
    return [papers[i] for i in _background_rows(papers, seeds, limit)]


def _digest(payload: object) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seed_key(seeds: Iterable[Paper], params: SimilarityParams = DEFAULT_PARAMS) -> str:
    """What decides retraining: the seeds' ids and versions and the parameters (not the
    background, which changes every day without changing what the seeds are about)."""
    pairs = [[paper.arxiv_id, paper.version] for paper in _distinct_seeds(seeds)]
    return _digest({"format": MODEL_FORMAT, "seeds": pairs, "params": asdict(params)})


def model_fingerprint(
    seeds: Iterable[Paper],
    background: Papers,
    params: SimilarityParams = DEFAULT_PARAMS,
) -> str:
    """The exact identity of a trained model: seeds with versions, background ids, parameters."""
    seed_list = _distinct_seeds(seeds)
    chosen = select_background(background, seed_list, limit=params.max_background)
    return _fingerprint(seed_key(seed_list, params), chosen)


def _fingerprint(key: str, background: Iterable[Paper]) -> str:
    return _digest({"seed_key": key, "background": sorted(p.arxiv_id for p in background)})


@dataclass(frozen=True, slots=True)
class SimilarityModel:
    """A trained `like:` model: the seed vocabulary, its idf and weights, and the threshold."""

    seed_key: str  # `seed_key(seeds, params)`: retrain when it changes
    fingerprint: str  # `model_fingerprint(seeds, background, params)`
    seeds: tuple[tuple[str, int], ...]  # (arxiv_id, version), sorted
    background_size: int
    params: SimilarityParams
    terms: tuple[str, ...]
    idf: tuple[float, ...]
    weights: tuple[float, ...]
    intercept: float
    threshold: float
    seed_scores: tuple[float, ...] = field(default=())  # each seed scored by a model without it

    def top_terms(self, count: int = 10) -> list[str]:
        """The terms that most make a paper look like the seeds (to show a reader)."""
        order = sorted(range(len(self.terms)), key=lambda i: (-self.weights[i], self.terms[i]))
        return [self.terms[i] for i in order[:count] if self.weights[i] > 0]

    def dumps(self) -> bytes:
        """The model as JSON bytes, for the caller's cache (floats round-trip exactly)."""
        payload = {
            "format": MODEL_FORMAT,
            "seed_key": self.seed_key,
            "fingerprint": self.fingerprint,
            "seeds": [list(seed) for seed in self.seeds],
            "background_size": self.background_size,
            "params": asdict(self.params),
            "terms": list(self.terms),
            "idf": list(self.idf),
            "weights": list(self.weights),
            "intercept": self.intercept,
            "threshold": self.threshold,
            "seed_scores": list(self.seed_scores),
        }
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @classmethod
    def loads(cls, data: bytes) -> SimilarityModel:
        """Read `dumps`' bytes back; SimilarityError for another format (the caller retrains)."""
        try:
            payload = json.loads(data.decode("utf-8"))
            if payload.get("format") != MODEL_FORMAT:
                raise SimilarityError(
                    f"cached like: model has format {payload.get('format')!r}, "
                    f"not {MODEL_FORMAT}; retrain it"
                )
            return cls(
                seed_key=str(payload["seed_key"]),
                fingerprint=str(payload["fingerprint"]),
                seeds=tuple((str(i), int(v)) for i, v in payload["seeds"]),
                background_size=int(payload["background_size"]),
                params=SimilarityParams(**payload["params"]),
                terms=tuple(str(term) for term in payload["terms"]),
                idf=tuple(float(x) for x in payload["idf"]),
                weights=tuple(float(x) for x in payload["weights"]),
                intercept=float(payload["intercept"]),
                threshold=float(payload["threshold"]),
                seed_scores=tuple(float(x) for x in payload["seed_scores"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SimilarityError(f"cached like: model is unreadable ({exc}); retrain it") from exc


def needs_training(
    model: SimilarityModel | None,
    seeds: Iterable[Paper],
    params: SimilarityParams = DEFAULT_PARAMS,
) -> bool:
    """Whether a cached model is missing or was trained on other seeds, versions or parameters."""
    return model is None or model.seed_key != seed_key(seeds, params)


def _classifier(params: SimilarityParams) -> Any:
    # Fixed random_state: liblinear's coordinate descent visits samples in a random order.
    return LinearSVC(C=params.c, class_weight="balanced", random_state=0, max_iter=10_000)


def _labels(positives: int, others: Any) -> Floats:
    """1 for each positive row, then 0 for each other row."""
    return np.concatenate([np.ones(positives), np.zeros(others.shape[0])])


def _held_out_scores(seeds: Any, others: Any, params: SimilarityParams) -> Floats:
    """Each seed's score from a model trained without its fold (folds dealt round-robin)."""
    count = seeds.shape[0]
    folds = min(count, params.folds)
    scores = np.zeros(count)
    for fold in range(folds):
        held = np.arange(fold, count, folds)
        kept = np.setdiff1d(np.arange(count), held)
        matrix = sparse.vstack([seeds[kept], others]).tocsr()
        fitted = _classifier(params).fit(matrix, _labels(kept.size, others))
        scores[held] = fitted.decision_function(seeds[held])
    return scores


def train_similarity(
    seeds: Sequence[Paper],
    background: Papers,
    *,
    params: SimilarityParams = DEFAULT_PARAMS,
    calibrate: bool = True,
) -> SimilarityModel:
    """Train a `like:` model of the seeds against the most recent background papers.

    Bounded cost: only the `params.max_background` most recent background papers (by update,
    seeds excluded; 10,000 by default) are tokenised, once (or none, if `background` was
    prepared), and the classifier is fitted `folds` + 1 times (11 by default) on a matrix with
    one column per seed-vocabulary term (a few hundred); at most `params.max_positives` seeds
    (the most recent) are used. About 1.7 s at 10,000 background papers on a 2-core machine.
    Deterministic: the result depends on the papers, not on their order. `calibrate=False`
    skips the threshold (relevance order needs only scores). SimilarityError with fewer than
    3 seeds, fewer than `MIN_BACKGROUND` background papers, or seeds without a shared term.
    """
    distinct = _distinct_seeds(seeds)
    if len(distinct) > params.max_positives:
        newest = sorted(distinct, key=lambda p: (p.updated, p.arxiv_id), reverse=True)
        kept = {paper.arxiv_id for paper in newest[: params.max_positives]}
        distinct = [paper for paper in distinct if paper.arxiv_id in kept]
    if len(distinct) < MIN_SEEDS:
        raise SimilarityError(
            f"like: needs at least {MIN_SEEDS} seed papers to learn from, got {len(distinct)}"
        )
    pool = background.papers if isinstance(background, PreparedPapers) else list(background)
    rows = _background_rows(pool, distinct, params.max_background)
    if len(rows) < MIN_BACKGROUND:
        raise SimilarityError(
            f"like: {len(rows)} stored papers are too few to compare the seeds against "
            f"(at least {MIN_BACKGROUND}); wait for a harvest, then try again"
        )
    chosen = [pool[i] for i in rows]
    if isinstance(background, PreparedPapers):
        others = _prepared(background, params).counts[rows]
    else:
        others = prepare_papers(chosen, params=params).counts
    features = _features(distinct, others, params)
    matrix = sparse.vstack([features.seeds, features.others]).tocsr()
    classifier = _classifier(params).fit(matrix, _labels(len(distinct), features.others))
    held_out: Floats = np.zeros(0)
    threshold = 0.0
    if calibrate:
        held_out = _held_out_scores(features.seeds, features.others, params)
        threshold = float(np.quantile(held_out, 1.0 - params.recall_target))
    key = seed_key(distinct, params)
    return SimilarityModel(
        seed_key=key,
        fingerprint=_fingerprint(key, chosen),
        seeds=tuple((paper.arxiv_id, paper.version) for paper in distinct),
        background_size=len(chosen),
        params=params,
        terms=features.terms,
        idf=tuple(float(x) for x in features.idf),
        weights=tuple(float(x) for x in classifier.coef_.ravel()),
        intercept=float(classifier.intercept_[0]),
        threshold=threshold,
        seed_scores=tuple(float(x) for x in held_out),
    )


def score(model: SimilarityModel, papers: Papers) -> list[float]:
    """Each paper's decision value under the model (higher is more like the seeds), in order."""
    prepared = _prepared(papers, model.params)
    if not prepared.papers:
        return []
    rows = _weigh(prepared.counts[:, _columns(model.terms)], np.asarray(model.idf))
    values = rows @ np.asarray(model.weights) + model.intercept
    return [float(x) for x in np.asarray(values).ravel()]


def _ranked(papers: Sequence[Paper], scores: Sequence[float]) -> list[Paper]:
    """Best first; equal scores newest first, then by id (the digest's usual order)."""
    # Rounded so that ties stay ties whatever the floating-point summation order.
    pairs = sorted(
        zip(papers, scores, strict=True),
        key=lambda pair: (round(pair[1], 9), pair[0].updated, pair[0].arxiv_id),
        reverse=True,
    )
    return [paper for paper, _ in pairs]


def rank_by_model(model: SimilarityModel, papers: Sequence[Paper]) -> list[Paper]:
    """`papers` by a `like:` model's score, best first; ties newest first, then by id."""
    return _ranked(papers, score(model, papers))


def select(model: SimilarityModel, papers: Papers) -> list[Paper]:
    """The papers at or above the model's threshold, best first."""
    batch = papers.papers if isinstance(papers, PreparedPapers) else papers
    values = score(model, papers)
    chosen = [(p, s) for p, s in zip(batch, values, strict=True) if s >= model.threshold]
    return _ranked([p for p, _ in chosen], [s for _, s in chosen])


# --- relevance order ------------------------------------------------------------------------------

BM25_K1 = 1.2  # the usual Okapi constants
BM25_B = 0.75
TITLE_WEIGHT = 2  # a query word in the title counts as two in the abstract


def _text_terms(node: Node) -> Iterator[Term]:
    """The terms that make a paper relevant: not authors or categories, not the ANDNOT side."""
    if isinstance(node, Term):
        if node.field not in (SearchField.AU, SearchField.CAT):
            yield node
    elif isinstance(node, AndNot):
        yield from _text_terms(node.left)
    elif isinstance(node, And | Or):
        yield from _text_terms(node.left)
        yield from _text_terms(node.right)


def _query_stems(query_text: str) -> list[str]:
    """The stemmed words of a keyword, as digest.query matches them."""
    try:
        root = parse_query(query_text).root
    except QueryError:
        return list(dict.fromkeys(tokenize(query_text)))
    return list(dict.fromkeys(stem for term in _text_terms(root) for stem in term.stems))


def bm25_scores(query_text: str, papers: Sequence[Paper]) -> list[float]:
    """Okapi BM25 of the keyword's words in each paper (title words count double), in order."""
    stems = _query_stems(query_text)
    if not stems or not papers:
        return [0.0] * len(papers)
    documents: list[Counter[str]] = []
    for paper in papers:
        words = Counter(tokenize(paper.abstract))
        for stem, count in Counter(tokenize(paper.title)).items():
            words[stem] += TITLE_WEIGHT * count
        documents.append(words)
    lengths = [sum(words.values()) for words in documents]
    average = sum(lengths) / len(lengths) or 1.0
    total = len(documents)
    idf = {}
    for stem in stems:
        df = sum(1 for words in documents if stem in words)
        idf[stem] = math.log(1.0 + (total - df + 0.5) / (df + 0.5))
    scores: list[float] = []
    for words, length in zip(documents, lengths, strict=True):
        value = 0.0
        norm = BM25_K1 * (1.0 - BM25_B + BM25_B * length / average)
        for stem in stems:
            tf = words.get(stem, 0)
            if tf:
                value += idf[stem] * tf * (BM25_K1 + 1.0) / (tf + norm)
        scores.append(value)
    return scores


def _centroid_scores(
    positives: Sequence[Paper], papers: Sequence[Paper], params: SimilarityParams
) -> list[float]:
    """Rocchio without a background: each paper's similarity to the positives' mean vector
    minus its similarity to the papers' own mean, so what every paper says (the sentences all
    abstracts share) cancels out and what the positives say more than the batch counts."""
    # No max_df cut: the positives are a large share of so few papers, and their topic's own
    # terms would be cut as "common".
    features = _features(
        positives, prepare_papers(papers, params=params).counts, params, max_df=1.0
    )
    direction = np.asarray(features.seeds.mean(axis=0)).ravel()
    direction -= np.asarray(features.others.mean(axis=0)).ravel()
    return [float(x) for x in np.asarray(features.others @ direction).ravel()]


def rank_by_relevance(
    papers: Sequence[Paper],
    *,
    positives: Sequence[Paper] | None = None,
    query_text: str | None = None,
    background: Papers = (),
    params: SimilarityParams = DEFAULT_PARAMS,
) -> list[Paper]:
    """A broad keyword's papers, most relevant first; ties newest first. Never raises.

    With `positives` (the keyword's recent matches) and a `background` (recent stored papers,
    possibly prepared): the like: classifier's scores. With positives only: Rocchio (closer to
    the positives' centroid than to the papers' own). Otherwise BM25 of `query_text`; with
    neither, newest first.
    """
    scores: list[float] | None = None
    usable = _distinct_seeds(positives or ())
    if len(usable) >= MIN_SEEDS and papers:
        try:
            if len(select_background(background, usable, limit=MIN_BACKGROUND)) >= MIN_BACKGROUND:
                model = train_similarity(usable, background, params=params, calibrate=False)
                scores = score(model, papers)
            else:
                newest = sorted(usable, key=lambda p: (p.updated, p.arxiv_id), reverse=True)
                scores = _centroid_scores(newest[: params.max_positives], papers, params)
        except SimilarityError:
            scores = None  # positives with nothing in common: fall back to the query's words
    if scores is None:
        scores = bm25_scores(query_text, papers) if query_text else [0.0] * len(papers)
    return _ranked(papers, scores)
