"""Papers, batches and readers of emails, shared by the tests of `digest.mail`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from html.parser import HTMLParser

from digest.domain import Batch, Delivery, Paper, Target
from digest.mail import OPTION_CONFIRMED
from digest.mail.render import text_columns

NOW = datetime(2025, 1, 11, 2, 0, tzinfo=UTC)
ALICE = "alice@lab.example.org"


def paper(arxiv_id: str = "2501.00001", **fields: object) -> Paper:
    """A plausible paper; `fields` override any attribute."""
    base: dict[str, object] = {
        "arxiv_id": arxiv_id,
        "version": 1,
        "title": f"A study of things {arxiv_id}",
        "authors": ("Ada Lovelace", "Alan Turing"),
        "abstract": "We study things and find results.",
        "published": datetime(2025, 1, 10, 18, 0, tzinfo=UTC),
        "updated": datetime(2025, 1, 10, 18, 0, tzinfo=UTC),
        "primary_category": "cs.LG",
        "categories": ("cs.LG", "stat.ML"),
        "comment": "10 pages, 3 figures",
    }
    base.update(fields)
    return Paper(**base)  # type: ignore[arg-type]


def batch_for(
    address: str, items: list[tuple[int, str, Paper]], *, confirmed: bool = True, **extra: object
) -> Batch:
    """A batch for `email:address` of (subscription id, keyword, paper) deliveries."""
    options = {OPTION_CONFIRMED: NOW.isoformat()} if confirmed else {}
    return Batch(
        target=Target("email", address),
        deliveries=tuple(Delivery(s, k, p) for s, k, p in items),
        options=options,
        **extra,  # type: ignore[arg-type]
    )


class TextOf(HTMLParser):
    """The visible text of an HTML document (entities decoded), plus its links and tags."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[str] = []
        self.links: list[str] = []
        self.tags: set[str] = set()
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Collect tags and hrefs; skip head content."""
        self.tags.add(tag)
        if tag in {"style", "title"}:
            self._skip += 1
        if tag == "a":
            self.links.extend(v for k, v in attrs if k == "href" and v)

    def handle_endtag(self, tag: str) -> None:
        """Leave skipped elements."""
        if tag in {"style", "title"}:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        """Visible text only."""
        if not self._skip:
            self.chunks.append(data)

    @property
    def text(self) -> str:
        """Whitespace-collapsed visible text."""
        return " ".join(" ".join(self.chunks).split())


def parse_html(html: str) -> TextOf:
    """Parse an HTML part."""
    parser = TextOf()
    parser.feed(html)
    return parser


def parts(msg: EmailMessage) -> tuple[str, str]:
    """(text, html) of a multipart/alternative message, checking its structure."""
    assert msg.get_content_type() == "multipart/alternative"
    kinds = [p.get_content_type() for p in msg.iter_parts()]
    assert kinds == ["text/plain", "text/html"]  # the preferred (richer) part last, per RFC 2046
    text_part = msg.get_body(("plain",))
    html_part = msg.get_body(("html",))
    assert text_part is not None
    assert html_part is not None
    return str(text_part.get_content()), str(html_part.get_content())


def flat(text: str) -> str:
    """Whitespace collapsed, so wrapped plain text compares with the original."""
    return " ".join(text.split())


def squeeze(text: str) -> str:
    """Whitespace removed, so text folded between Chinese characters compares too."""
    return "".join(text.split())


def assert_folded(text: str) -> None:
    """Every line fits 76 columns, unless it is one word or URL that cannot be broken."""
    for line in text.splitlines():
        assert text_columns(line) <= 76 or len(line.split()) == 1, line


def many_papers(count: int, *, abstract_words: int = 160) -> list[Paper]:
    """`count` distinct papers with full-length abstracts, newest first."""
    return [
        paper(
            f"2501.{n:05d}",
            title=f"Paper {n:03d} on vision language models and their evaluation",
            authors=tuple(f"Author {n}-{i}" for i in range(6)),
            abstract=" ".join(["word"] * abstract_words) + f" END {n:03d}.",
            updated=NOW - timedelta(minutes=n),
        )
        for n in range(count)
    ]
