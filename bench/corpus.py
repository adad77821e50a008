"""A synthetic arXiv corpus for the benchmark: seeded, realistic in shape, fast to generate.

Papers look like cs.* / stat.* submissions: a title built from one or two research phrases, a
170-230 word abstract of scientific sentences, 1-15 authors, a primary category with a few
cross-lists, comments such as `Accepted at CVPR 2026; 12 pages, 5 figures`, and some revised
(v2+) versions. The research phrases are also the keyword vocabulary: each paper draws its
topics from a Zipf-Mandelbrot distribution over the phrases (rank r has weight 1/(r+10)^1.1),
so a few keywords ("language models") match hundreds of papers a week and most match a
handful or none - the long tail a real lab's keyword list sees. Matching is stemmed, so
"graph neural network" in a title also counts for the keyword "Graph Neural Networks", and a
keyword nested in a longer phrase ("anomaly detection" in "video anomaly detection") matches
there too, as on arXiv.

Everything is a pure function of the seed: the world process (serving the corpus) and the
service process (tracking the keywords) generate the same lists independently.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from digest.domain import Paper

# -- word lists --------------------------------------------------------------------------------
# Research "heads": the nouns keywords are made of (most popular first, roughly).
HEADS: tuple[str, ...] = (
    "language models",
    "diffusion models",
    "reinforcement learning",
    "graph neural networks",
    "object detection",
    "anomaly detection",
    "semantic segmentation",
    "federated learning",
    "knowledge distillation",
    "vision transformers",
    "contrastive learning",
    "causal inference",
    "image generation",
    "question answering",
    "machine translation",
    "speech recognition",
    "pose estimation",
    "depth estimation",
    "domain adaptation",
    "continual learning",
    "meta learning",
    "neural architecture search",
    "representation learning",
    "recommender systems",
    "time series forecasting",
    "point cloud registration",
    "visual odometry",
    "motion planning",
    "program synthesis",
    "code generation",
    "text classification",
    "named entity recognition",
    "information retrieval",
    "dialogue systems",
    "image captioning",
    "visual question answering",
    "action recognition",
    "video understanding",
    "scene graph generation",
    "instance segmentation",
    "image restoration",
    "super resolution",
    "style transfer",
    "neural rendering",
    "radiance fields",
    "gaussian splatting",
    "optical flow",
    "trajectory prediction",
    "autonomous driving",
    "robot manipulation",
    "imitation learning",
    "policy optimization",
    "bandit algorithms",
    "bayesian optimization",
    "variational inference",
    "gaussian processes",
    "uncertainty quantification",
    "conformal prediction",
    "adversarial attacks",
    "adversarial robustness",
    "differential privacy",
    "membership inference",
    "model compression",
    "quantization",
    "pruning",
    "mixture of experts",
    "attention mechanisms",
    "state space models",
    "prompt tuning",
    "instruction tuning",
    "in-context learning",
    "chain-of-thought reasoning",
    "retrieval-augmented generation",
    "hallucination detection",
    "preference optimization",
    "reward modeling",
    "alignment",
    "interpretability",
    "explainable AI",
    "fairness",
    "active learning",
    "self-supervised learning",
    "semi-supervised learning",
    "few-shot learning",
    "zero-shot classification",
    "out-of-distribution detection",
    "data augmentation",
    "optimization",
    "stochastic gradient descent",
    "generalization bounds",
    "kernel methods",
    "matrix completion",
    "sparse regression",
    "hypothesis testing",
    "survival analysis",
    "clustering",
    "dimensionality reduction",
    "topic models",
    "link prediction",
    "community detection",
    "knowledge graphs",
    "entity linking",
    "sentiment analysis",
    "summarization",
    "medical image segmentation",
    "protein structure prediction",
    "molecule generation",
    "weather forecasting",
    "edge computing",
    "compilers",
    "formal verification",
    "smart contracts",
    "intrusion detection",
    "malware detection",
)

# Modifiers that combine with the heads ("video anomaly detection", "efficient pruning").
MODIFIERS: tuple[str, ...] = (
    "large",
    "multimodal",
    "video",
    "efficient",
    "robust",
    "scalable",
    "federated",
    "hierarchical",
    "contrastive",
    "sparse",
    "bayesian",
    "causal",
    "temporal",
    "3D",
    "medical",
    "multilingual",
    "open-vocabulary",
    "unsupervised",
    "weakly supervised",
    "online",
    "offline",
    "distributed",
    "decentralized",
    "privacy-preserving",
    "energy-efficient",
    "lightweight",
    "real-time",
    "interpretable",
    "certified",
    "probabilistic",
    "generative",
    "discriminative",
    "neural",
    "physics-informed",
    "equivariant",
    "geometric",
    "spectral",
    "dynamic",
    "long-context",
    "cross-lingual",
    "cross-modal",
    "audio-visual",
    "vision-language",
    "egocentric",
    "satellite",
    "clinical",
    "financial",
    "legal",
    "scientific",
    "mobile",
    "embodied",
    "open-world",
    "incremental",
    "test-time",
    "parameter-efficient",
    "low-resource",
    "zero-shot",
    "few-shot",
    "self-supervised",
    "diffusion-based",
)

# Words for the sentences around the phrases.
METHODS = (
    "a transformer-based encoder",
    "a lightweight adapter",
    "a two-stage pipeline",
    "a novel loss function",
    "a memory-augmented decoder",
    "a hierarchical attention module",
    "a graph-based reasoning module",
    "a plug-and-play regularizer",
    "a curriculum schedule",
    "a teacher-student framework",
    "an iterative refinement scheme",
    "a learned sampling strategy",
    "a differentiable relaxation",
    "a mixture of local experts",
    "a contrastive pre-training objective",
    "a simple linear probe",
)
CLAIMS = (
    "state-of-the-art accuracy",
    "consistent improvements",
    "competitive results at a fraction of the cost",
    "a 2x speed-up",
    "strong zero-shot transfer",
    "better calibration",
    "substantially lower memory use",
    "robustness to distribution shift",
    "gains of up to 7.3 points",
    "near-optimal regret",
)
BENCHMARKS = (
    "ImageNet",
    "COCO",
    "KITTI",
    "nuScenes",
    "GLUE",
    "SuperGLUE",
    "MMLU",
    "GSM8K",
    "HumanEval",
    "LibriSpeech",
    "Kinetics-400",
    "ScanNet",
    "Cityscapes",
    "ADE20K",
    "OGB",
    "MIMIC-IV",
    "UCF-Crime",
    "ShanghaiTech",
    "WMT",
    "SQuAD",
)
PROBLEMS = (
    "suffer from high computational cost",
    "fail to generalize beyond their training distribution",
    "require large amounts of labelled data",
    "ignore long-range dependencies",
    "are sensitive to hyperparameters",
    "lack theoretical guarantees",
    "scale poorly with the input size",
    "are brittle under noise",
)
TITLE_TEMPLATES = (
    "{A}: Towards {B}",
    "Rethinking {A} for {B}",
    "{A} with {M}",
    "Scaling {A} via {B}",
    "On the Limits of {A}",
    "{A} Meets {B}: A Unified Framework",
    "Efficient {A} for {B}",
    "Learning {A} from Noisy Data",
    "A Survey of {A}",
    "{A} Is All You Need for {B}",
    "Benchmarking {A} in the Wild",
    "When Does {A} Help {B}?",
    "Provable Guarantees for {A}",
    "{A}: Revisiting {B}",
)
SENTENCES = (
    "{A} has attracted growing attention in recent years.",
    "Existing approaches to {A} {P}.",
    "In this paper we study {A} and its connection to {B}.",
    "We propose {M} for {A}, which builds on recent advances in {B}.",
    "Our method combines {A} with {B} in a single end-to-end model.",
    "Unlike prior work on {B}, our approach does not require task-specific supervision.",
    "We provide a theoretical analysis showing that {A} converges under mild assumptions.",
    "Extensive experiments on {D1} and {D2} demonstrate {C}.",
    "We further show that {A} benefits from {M}.",
    "Ablation studies confirm the contribution of each component.",
    "Compared with strong baselines for {B}, our model achieves {C}.",
    "We release code and pretrained models to facilitate future research on {A}.",
    "The results suggest that {B} remains an open challenge.",
    "Finally, we discuss limitations and directions for {A}.",
    "We evaluate on {D1}, where it achieves {C}.",
    "Our analysis reveals a trade-off between accuracy and efficiency in {B}.",
)
VENUES = (
    "CVPR",
    "ICCV",
    "ECCV",
    "NeurIPS",
    "ICML",
    "ICLR",
    "ACL",
    "EMNLP",
    "NAACL",
    "AAAI",
    "IJCAI",
    "KDD",
    "WWW",
    "SIGIR",
    "ICRA",
    "IROS",
    "MICCAI",
    "AISTATS",
)
FIRST_NAMES = [
    "Wei",
    "Jie",
    "Yan",
    "Xin",
    "Hao",
    "Yu",
    "Jun",
    "Lei",
    "Ming",
    "Tao",
    "Lin",
    "Chen",
    "Hui",
    "Jing",
    "Ying",
    "Rui",
    "Kai",
    "Zhen",
    "Qi",
    "Bo",
    "Anna",
    "Maria",
    "Elena",
    "Sofia",
    "Laura",
    "Julia",
    "Sara",
    "Eva",
    "Clara",
    "Nina",
    "Lena",
    "Marta",
    "James",
    "John",
    "Robert",
    "Michael",
    "David",
    "Daniel",
    "Thomas",
    "Mark",
    "Paul",
    "Andrew",
    "Peter",
    "Kevin",
    "Brian",
    "Emily",
    "Sarah",
    "Jessica",
    "Hannah",
    "Rachel",
    "Olivia",
    "Emma",
    "Grace",
    "Hiroshi",
    "Takeshi",
    "Yuki",
    "Kenji",
    "Haruto",
    "Sakura",
    "Aiko",
    "Ren",
    "Ji-ho",
    "Min-jun",
    "Seo-yeon",
    "Ha-eun",
    "Jae",
    "Arjun",
    "Priya",
    "Rahul",
    "Ananya",
    "Vikram",
    "Deepak",
    "Sneha",
    "Rohan",
    "Aditya",
    "Kavya",
    "Mohamed",
    "Ahmed",
    "Fatima",
    "Omar",
    "Layla",
    "Yusuf",
    "Lucas",
    "Mateo",
    "Santiago",
    "Camila",
    "Valentina",
    "Diego",
    "Gabriel",
    "Pierre",
    "Louis",
    "Camille",
    "Chloe",
    "Hugo",
    "Lea",
    "Jonas",
    "Felix",
    "Lukas",
    "Leon",
    "Mia",
    "Paula",
    "Ivan",
    "Dmitry",
    "Olga",
    "Natalia",
    "Sergei",
    "Alexei",
    "Kwame",
    "Amara",
    "Chidi",
    "Ngozi",
    "Tunde",
]
LAST_NAMES = [
    "Wang",
    "Li",
    "Zhang",
    "Liu",
    "Chen",
    "Yang",
    "Huang",
    "Zhao",
    "Wu",
    "Zhou",
    "Xu",
    "Sun",
    "Ma",
    "Zhu",
    "Hu",
    "Guo",
    "He",
    "Lin",
    "Luo",
    "Gao",
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Miller",
    "Davis",
    "Wilson",
    "Anderson",
    "Taylor",
    "Thomas",
    "Moore",
    "Martin",
    "Jackson",
    "White",
    "Harris",
    "Clark",
    "Lewis",
    "Walker",
    "Hall",
    "Young",
    "King",
    "Garcia",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Perez",
    "Sanchez",
    "Ramirez",
    "Torres",
    "Muller",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "Meyer",
    "Wagner",
    "Becker",
    "Hoffmann",
    "Rossi",
    "Russo",
    "Ferrari",
    "Esposito",
    "Bianchi",
    "Romano",
    "Colombo",
    "Dubois",
    "Moreau",
    "Laurent",
    "Simon",
    "Michel",
    "Lefebvre",
    "Leroy",
    "Tanaka",
    "Suzuki",
    "Takahashi",
    "Watanabe",
    "Ito",
    "Yamamoto",
    "Nakamura",
    "Kobayashi",
    "Kim",
    "Lee",
    "Park",
    "Choi",
    "Jung",
    "Kang",
    "Cho",
    "Yoon",
    "Sharma",
    "Patel",
    "Singh",
    "Kumar",
    "Gupta",
    "Reddy",
    "Iyer",
    "Nair",
    "Rao",
    "Das",
    "Ivanov",
    "Petrov",
    "Smirnov",
    "Kuznetsov",
    "Popov",
    "Hassan",
    "Ali",
    "Khan",
    "Ibrahim",
    "Mahmoud",
    "Silva",
    "Santos",
    "Oliveira",
    "Souza",
    "Costa",
    "Pereira",
    "Okafor",
    "Mensah",
    "Adeyemi",
    "Nkosi",
    "Nguyen",
    "Tran",
    "Pham",
    "Le",
    "Hoang",
    "Cohen",
    "Levi",
    "Friedman",
    "Katz",
    "Andersen",
    "Nielsen",
    "Hansen",
    "Larsen",
    "Johansson",
    "Karlsson",
    "Virtanen",
]
# Primary categories with rough weights of their weekly volume (cs.CV, cs.LG, cs.CL lead).
CATEGORY_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("cs.CV", 22),
    ("cs.LG", 20),
    ("cs.CL", 14),
    ("cs.AI", 8),
    ("cs.RO", 5),
    ("stat.ML", 5),
    ("cs.CR", 4),
    ("cs.IR", 3),
    ("cs.SE", 3),
    ("cs.HC", 2),
    ("cs.DC", 2),
    ("cs.NE", 1),
    ("cs.SD", 1),
    ("cs.SI", 1),
    ("cs.DB", 1),
    ("cs.DS", 1),
    ("cs.GT", 1),
    ("cs.IT", 1),
    ("cs.MA", 1),
    ("cs.CY", 1),
    ("cs.NI", 1),
    ("cs.PL", 1),
    ("cs.LO", 1),
    ("cs.GR", 1),
    ("stat.ME", 2),
    ("stat.TH", 1),
    ("stat.AP", 1),
    ("stat.CO", 1),
)

ZIPF_EXPONENT = 1.1
ZIPF_OFFSET = 10.0  # flattens the head: the top phrase is in ~6 % of papers, not ~40 %
TOPICS_PER_PAPER = (2, 5)
KEYWORD_BIAS = 0.7  # keyword picks favour popular phrases: weight 1/(rank + 30)^0.7
KEYWORD_BIAS_OFFSET = 30.0  # phrases drawn per paper (inclusive range)


# -- the vocabulary ----------------------------------------------------------------------------
def _title_case(phrase: str) -> str:
    return " ".join(w if w[:1].isupper() or w.isupper() else w.capitalize() for w in phrase.split())


def phrase_vocabulary(size: int = 6000, *, seed: int = 7) -> list[str]:
    """Research phrases by popularity rank: the heads first, then modifier+head pairs.

    Ranks interleave a little (a popular pair such as "large language models" outranks a niche
    head) by shuffling the pairs in blocks after the heads' first third.
    """
    rng = random.Random(seed)
    heads = list(HEADS)
    pairs = [f"{m} {h}" for m in MODIFIERS for h in HEADS if m.lower() not in h.lower()]
    rng.shuffle(pairs)
    cut = len(heads) // 3
    ranked = heads[:cut] + pairs[:40] + heads[cut:] + pairs[40:]
    return ranked[:size]


def keyword_queries(count: int, *, seed: int = 11, advanced_share: float = 0.05) -> list[str]:
    """`count` tracked keywords: phrases of the vocabulary, popular ones likelier, no repeats.

    Nested: the first 50 of `keyword_queries(500)` are `keyword_queries(50)`, so growing K
    keeps what smaller K tracked. About 5 % are written in arXiv's advanced syntax (a phrase
    restricted to the title, or a phrase within a category), as power users do.
    """
    vocabulary = phrase_vocabulary()
    if count > len(vocabulary):
        raise ValueError(f"at most {len(vocabulary)} keywords, not {count}")
    # A lab tracks what its field talks about: popular phrases are likelier picks than niche
    # ones, but the niche is well represented (Efraimidis-Spirakis weighted shuffle).
    pick = random.Random(seed)
    order = sorted(
        range(len(vocabulary)),
        key=lambda rank: pick.random() ** ((rank + KEYWORD_BIAS_OFFSET) ** KEYWORD_BIAS),
        reverse=True,
    )
    rng = random.Random(seed + 1)
    queries: list[str] = []
    for rank in order[:count]:
        phrase = vocabulary[rank]
        roll = rng.random()
        if roll < advanced_share / 2:
            queries.append(f'ti:"{phrase}"')
        elif roll < advanced_share:
            category = rng.choice(("cs.CV", "cs.LG", "cs.CL", "cs.AI"))
            queries.append(f'abs:"{phrase}" AND cat:{category}')
        else:
            queries.append(_title_case(phrase))
    return queries


# -- papers ------------------------------------------------------------------------------------
class _Zipf:
    """Draws vocabulary ranks with weight 1/(rank + offset)^exponent (bisect on the CDF)."""

    def __init__(self, size: int, rng: random.Random) -> None:
        weights = [1.0 / (r + ZIPF_OFFSET) ** ZIPF_EXPONENT for r in range(1, size + 1)]
        self._cdf = list(itertools.accumulate(weights))
        self._rng = rng

    def draw(self) -> int:
        return bisect.bisect_left(self._cdf, self._rng.random() * self._cdf[-1])


def _author(rng: random.Random) -> str:
    first = rng.choice(FIRST_NAMES)
    if rng.random() < 0.15:
        first = f"{first} {rng.choice('ABCDEFGHJKLMNPRSTW')}."
    return f"{first} {rng.choice(LAST_NAMES)}"


def _comment(rng: random.Random) -> str | None:
    roll = rng.random()
    pages = f"{rng.randint(6, 40)} pages, {rng.randint(2, 14)} figures"
    if roll < 0.35:
        return None
    if roll < 0.65:
        return pages
    venue = rng.choice(VENUES)
    if roll < 0.9:
        return f"Accepted at {venue} 2026; {pages}"
    return f"{venue} 2026 camera-ready. Code: https://github.com/lab{rng.randint(1, 999)}/repo"


def _abstract(rng: random.Random, topics: Sequence[str]) -> str:
    words = 0
    sentences: list[str] = []
    target = rng.randint(170, 230)
    templates = list(SENTENCES)
    rng.shuffle(templates)
    for template in itertools.cycle(templates):
        a, b = rng.sample(list(topics), 2) if len(topics) > 1 else (topics[0], topics[0])
        d1, d2 = rng.sample(BENCHMARKS, 2)
        sentence = template.format(
            A=a,
            B=b,
            M=rng.choice(METHODS),
            C=rng.choice(CLAIMS),
            P=rng.choice(PROBLEMS),
            D1=d1,
            D2=d2,
        )
        sentences.append(sentence[0].upper() + sentence[1:])
        words += sentence.count(" ") + 1
        if words >= target:
            break
    return " ".join(sentences)


def _title(rng: random.Random, topics: Sequence[str]) -> str:
    template = rng.choice(TITLE_TEMPLATES)
    a = topics[0]
    b = topics[1] if len(topics) > 1 else rng.choice(HEADS)
    return template.format(A=_title_case(a), B=_title_case(b), M=rng.choice(METHODS))


@dataclass(frozen=True, slots=True)
class LabelledPaper:
    """A generated paper and the phrases it was generated from (first: its title's)."""

    paper: Paper
    topics: tuple[str, ...]


def generate_labelled(
    count: int,
    *,
    start: datetime,
    end: datetime,
    seed: int = 1,
    first_number: int = 1,
    id_prefix: str = "2603",
) -> list[LabelledPaper]:
    """`count` papers first submitted in [start, end), oldest first, each with its topics.

    Ids are `<prefix>.<5 digits>`; about 8 % are revised (v2/v3, updated later than published,
    still before `end`). The topics label the corpus for the relevance benchmark (bench.similar).
    """
    rng = random.Random(seed)
    vocabulary = phrase_vocabulary()
    zipf = _Zipf(len(vocabulary), rng)
    categories = [c for c, _ in CATEGORY_WEIGHTS]
    weights = [w for _, w in CATEGORY_WEIGHTS]
    span = (end - start).total_seconds()
    moments = sorted(rng.uniform(0, span) for _ in range(count))
    labelled: list[LabelledPaper] = []
    for index, offset in enumerate(moments):
        wanted = rng.randint(*TOPICS_PER_PAPER)
        topics = list(dict.fromkeys(vocabulary[zipf.draw()] for _ in range(wanted)))
        primary = rng.choices(categories, weights)[0]
        cross = rng.sample(categories, rng.choice((0, 0, 1, 1, 2, 3)))
        published = start + timedelta(seconds=offset)
        version = 1
        updated = published
        if rng.random() < 0.08:
            version = rng.choice((2, 2, 3))
            updated = published + timedelta(
                seconds=rng.uniform(0, (end - published).total_seconds())
            )
        authors = tuple(_author(rng) for _ in range(min(15, 1 + int(rng.expovariate(1 / 4)))))
        paper = Paper(
            arxiv_id=f"{id_prefix}.{first_number + index:05d}",
            version=version,
            title=_title(rng, topics),
            authors=tuple(dict.fromkeys(authors)),
            abstract=_abstract(rng, topics),
            published=published,
            updated=updated,
            primary_category=primary,
            categories=tuple(dict.fromkeys([primary, *cross])),
            comment=_comment(rng),
            journal_ref=None,
            doi=None,
        )
        labelled.append(LabelledPaper(paper=paper, topics=tuple(topics)))
    return labelled


def generate_papers(
    count: int,
    *,
    start: datetime,
    end: datetime,
    seed: int = 1,
    first_number: int = 1,
    id_prefix: str = "2603",
) -> list[Paper]:
    """`generate_labelled`'s papers without their topics (what every other benchmark stores)."""
    labelled = generate_labelled(
        count, start=start, end=end, seed=seed, first_number=first_number, id_prefix=id_prefix
    )
    return [lp.paper for lp in labelled]


def with_phrase(papers: Sequence[Paper], phrase: str, *, every: int, offset: int) -> list[Paper]:
    """The papers with `phrase` woven into the abstract of every `every`-th one (from `offset`).

    Used by the README scenario to guarantee 100 keywords with at least 100 papers each.
    """
    out = list(papers)
    for index in range(offset % every, len(out), every):
        paper = out[index]
        sentence = f" We also relate our findings to {phrase}."
        out[index] = Paper(
            arxiv_id=paper.arxiv_id,
            version=paper.version,
            title=paper.title,
            authors=paper.authors,
            abstract=paper.abstract + sentence,
            published=paper.published,
            updated=paper.updated,
            primary_category=paper.primary_category,
            categories=paper.categories,
            comment=paper.comment,
        )
    return out
