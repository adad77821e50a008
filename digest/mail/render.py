"""Email rendering, pure: the digest, the confirmation email and the "nothing new" note.

Jinja2 templates under `templates/email/`, HTML autoescaped and its CSS inlined with css-inline
(dark-mode and narrow-screen rules stay in a <style> element), and a plain-text part folded at
76 columns (`fold_text`). A digest's HTML part stays under MAX_HTML_BYTES, where Gmail would
clip it and hide the footer: `fit_sections` keeps the best-ranked papers that fit (a
`Ranking`; by default each keyword's papers take turns, each keyword in its own order, so every
keyword keeps its first papers and loses its last) and the rest are counted per keyword and linked
to the reader's day (`EmailLinks.day_url`). `digest.mail.mime` makes a message of the result.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import css_inline

from digest.domain import Batch, Paper
from digest.mail.links import CONFIRM_TTL, EmailLinks
from digest.render import collapse_ws, get_environment

WRAP_WIDTH = 76  # plain-text lines that fit an 80-column reader with room for quoting
MAX_AUTHORS = 30  # huge collaborations list hundreds; the arXiv page has them all
SUBJECT_MAX = 110  # longer subjects are cut by every mail list view anyway
# Gmail clips a message whose HTML passes about 102 KB: it hides the rest behind "[Message
# clipped]", the footer with Change keywords and Unsubscribe included. A digest's HTML part
# stays under this; the papers that do not fit are counted and linked (see `fit_sections`).
MAX_HTML_BYTES = 100_000
# No paper's HTML is smaller than this (an empty title and abstract take about 950 bytes with
# their inlined styles), so no more than MAX_HTML_BYTES // MIN_ENTRY_BYTES papers can ever fit:
# a digest of thousands of papers is never rendered whole just to be measured.
MIN_ENTRY_BYTES = 800
# No mail client clips a plain-text part, so it lists every paper a reader is owed, up to this
# size: relays refuse whole messages past their limit (Postfix's default is 10 MB), and such a
# refusal would count against the reader's address. 1 MB holds some 600 papers.
MAX_TEXT_BYTES = 1_000_000
MIN_TEXT_ENTRY_BYTES = 120  # a paper's plain text without abstract or comment


@dataclass(frozen=True, slots=True)
class Entry:
    """One paper as the digest templates show it (all text raw; templates escape)."""

    arxiv_id: str
    anchor: str
    title: str
    versioned_id: str
    abs_url: str
    pdf_url: str
    authors: str
    date: str
    categories: str
    comment: str
    abstract: str
    translation: tuple[str, str] | None
    other_keywords: tuple[str, ...]
    summary: str = ""  # the one-sentence TL;DR ([summary]), one line; '' when there is none


@dataclass(frozen=True, slots=True)
class Section:
    """One keyword's heading: papers shown here in full, those already shown above, and how
    many more match it that the email leaves out (they did not fit, see `fit_sections`)."""

    keyword: str
    entries: tuple[Entry, ...]
    also: tuple[Entry, ...]
    omitted: int = 0

    @property
    def total(self) -> int:
        """Papers matching this keyword in the digest, shown or not."""
        return len(self.entries) + len(self.also) + self.omitted


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    """Subject and both bodies of one email."""

    subject: str
    text: str
    html: str


def _https(url: str) -> str:
    """arXiv serves everything over HTTPS; mail clients warn about plain-http links."""
    return "https://" + url.removeprefix("http://") if url.startswith("http://") else url


def _authors(paper: Paper) -> str:
    names = list(paper.authors[:MAX_AUTHORS])
    if len(paper.authors) > MAX_AUTHORS:
        names.append(f"and {len(paper.authors) - MAX_AUTHORS} more")
    return ", ".join(collapse_ws(n) for n in names)


def _date(paper: Paper) -> str:
    first = paper.published.astimezone(UTC).date().isoformat()
    if paper.version > 1:
        return f"{first} (v{paper.version}: {paper.updated.astimezone(UTC).date().isoformat()})"
    return first


# A paper reaches many readers in one cycle (10,000 digests drew on 720 papers in the benchmark):
# its cleaned text is computed once, not once per digest. Papers are frozen and hashable; the
# bound keeps a long-running service's memory flat.
@functools.lru_cache(maxsize=4096)
def _paper_text(paper: Paper) -> tuple[str, str, str, str, str]:
    """(title, authors, date, comment, abstract) of a paper, whitespace collapsed."""
    return (
        collapse_ws(paper.title),
        _authors(paper),
        _date(paper),
        collapse_ws(paper.comment),
        collapse_ws(paper.abstract),
    )


def _entry(paper: Paper, batch: Batch, keywords: Sequence[str]) -> Entry:
    categories = [
        paper.primary_category,
        *(c for c in paper.categories if c != paper.primary_category),
    ]
    translation = batch.translations.get(paper.arxiv_id) if batch.language else None
    title, authors, date, comment, abstract = _paper_text(paper)
    return Entry(
        arxiv_id=paper.arxiv_id,
        anchor="p-" + paper.arxiv_id.replace("/", "-"),
        title=title,
        versioned_id=paper.versioned_id,
        abs_url=_https(paper.abs_url),
        pdf_url=_https(paper.pdf_url),
        authors=authors,
        date=date,
        categories=", ".join(categories),
        comment=comment,
        abstract=abstract,
        translation=(collapse_ws(translation[0]), collapse_ws(translation[1]))
        if translation
        else None,
        other_keywords=tuple(keywords),
        summary=collapse_ws(batch.summaries.get(paper.arxiv_id, "")),
    )


def digest_sections(batch: Batch) -> list[Section]:
    """The batch grouped by keyword, each paper in full once (under its first keyword)."""
    groups = batch.by_keyword()
    keywords_of: dict[str, list[str]] = {}
    for keyword, papers in groups:
        for paper in papers:
            keywords_of.setdefault(paper.arxiv_id, []).append(keyword)
    shown: dict[str, Entry] = {}
    sections: list[Section] = []
    for keyword, papers in groups:
        entries: list[Entry] = []
        also: list[Entry] = []
        for paper in papers:
            if paper.arxiv_id in shown:
                also.append(shown[paper.arxiv_id])
                continue
            others = [k for k in keywords_of[paper.arxiv_id] if k != keyword]
            entry = _entry(paper, batch, others)
            shown[paper.arxiv_id] = entry
            entries.append(entry)
        sections.append(Section(keyword=keyword, entries=tuple(entries), also=tuple(also)))
    return sections


# -- what fits in one email -----------------------------------------------------------------

# Puts a digest's papers in the order they deserve a place in the email, best first. The cut
# keeps the first ones that fit.
Ranking = Callable[[Sequence[Section]], Sequence[Entry]]


def in_turns(sections: Sequence[Section]) -> list[Entry]:
    """The default ranking: each keyword's first paper, then each one's second, and so on.

    A section lists its papers in the order the batch gives them (most relevant first for a
    broad keyword, newest first otherwise: `Batch.by_keyword`), so a cut drops the end of every
    long section, its least relevant papers, instead of whole sections at the end of the email.
    """
    depth = max((len(section.entries) for section in sections), default=0)
    return [
        section.entries[position]
        for position in range(depth)
        for section in sections
        if position < len(section.entries)
    ]


def keep_papers(
    sections: Sequence[Section], keep: int, *, rank: Ranking = in_turns
) -> list[Section]:
    """The sections showing only the `keep` best-ranked papers; each counts what it leaves out.

    A paper left out disappears from every keyword it matches (also from "Also matches"
    lines, whose link would point at nothing) and is counted in each of them.
    """
    ranked = rank(sections)
    chosen = {entry.arxiv_id for entry in list(ranked)[: max(keep, 0)]}
    cut: list[Section] = []
    for section in sections:
        entries = tuple(e for e in section.entries if e.arxiv_id in chosen)
        also = tuple(e for e in section.also if e.arxiv_id in chosen)
        omitted = section.total - len(entries) - len(also)
        cut.append(Section(section.keyword, entries, also, omitted))
    return cut


def fit_sections(
    sections: Sequence[Section],
    render: Callable[[Sequence[Section]], str],
    *,
    max_bytes: int = MAX_HTML_BYTES,
    min_entry_bytes: int = MIN_ENTRY_BYTES,
    rank: Ranking = in_turns,
) -> tuple[list[Section], str]:
    """The sections to show and their rendering (`render`): every paper when it fits in
    `max_bytes`, else as many of the best-ranked as fit (the footer is part of what must fit).

    Papers take about the same room each, so each attempt keeps the share of papers that would
    fit and renders again; a handful of renders at most, and only for the rare huge digest. No
    paper takes less than `min_entry_bytes`, so more than `max_bytes // min_entry_bytes` are
    never rendered just to be measured.
    """
    total = sum(len(section.entries) for section in sections)
    keep = min(total, max_bytes // min_entry_bytes)
    shown = list(sections) if keep == total else keep_papers(sections, keep, rank=rank)
    rendered = render(shown)
    size = len(rendered.encode("utf-8"))
    while size >= max_bytes and keep > 0:
        keep = min(keep - 1, keep * max_bytes // size)
        shown = keep_papers(sections, keep, rank=rank)
        rendered = render(shown)
        size = len(rendered.encode("utf-8"))
    return shown, rendered


# Folding the plain-text part. A line may break at a space, or between two characters of a
# script written without spaces (Chinese, Japanese, Korean), which take two columns each; never
# inside a word or URL, before closing punctuation or after opening punctuation. A word or URL
# longer than a line stays whole on a line of its own (a broken URL cannot be clicked).
_WIDE = (
    "\u1100-\u115f\u2e80-\u303e\u3041-\u33ff\u3400-\u4dbf\u4e00-\u9fff\ua000-\ua4cf"
    "\uac00-\ud7a3\uf900-\ufaff\ufe30-\ufe4f\uff00-\uff60\uffe0-\uffe6"
    "\U00020000-\U0003fffd"
)
_OPENING = "（「『【〔〈《〘〚“‘［｛｟"
_CLOSING = "、。，．：；！？）」』】〕〉》〙〛”’］｝｠％ー々ゝゞ"
_ATOM = re.compile(rf"\s+|[{_OPENING}]*(?:[{_WIDE}]|[^\s{_WIDE}]+)[{_CLOSING}]*")


def text_columns(text: str) -> int:
    """How many columns `text` takes in a fixed-width font (wide East Asian characters: 2)."""
    if text.isascii():
        return len(text)
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


# Lines repeat across readers (the same abstract reaches many digests): fold each once.
@functools.lru_cache(maxsize=8192)
def fold_line(line: str, width: int = WRAP_WIDTH) -> tuple[str, ...]:
    """One line folded into lines of at most `width` columns, keeping its indentation."""
    if text_columns(line) <= width:
        return (line,)
    body = line.lstrip(" ")
    indent = line[: len(line) - len(body)]
    lines: list[str] = []
    current, used, space = "", 0, False
    for atom in _ATOM.findall(body):
        if atom.isspace():
            space = bool(current)
            continue
        columns = text_columns(atom)
        gap = 1 if space else 0
        if current and len(indent) + used + gap + columns > width:
            lines.append(indent + current)
            current, used = atom, columns
        else:
            current, used = current + " " * gap + atom, used + gap + columns
        space = False
    lines.append(indent + current)
    return tuple(lines)


def fold_text(text: str, width: int = WRAP_WIDTH) -> str:
    """Every line of a plain-text part folded at `width` columns (what narrow readers show)."""
    return "\n".join(
        folded for line in text.split("\n") for folded in fold_line(line.rstrip(), width)
    )


# css-inline: no network (remote stylesheets never exist here, and must never be fetched), and
# at-rules kept in <style> because @media cannot be expressed as an inline style.
_INLINER = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)


def inline_css(html: str) -> str:
    """The HTML with its <style> rules moved into style attributes (what mail clients need)."""
    return str(_INLINER.inline(html))


def render_email_text(name: str, **context: Any) -> str:
    """The plain-text part from `templates/email/<name>.txt.j2`, folded at WRAP_WIDTH."""
    return fold_text(get_environment().get_template(f"email/{name}.txt.j2").render(**context))


def render_email_html(name: str, **context: Any) -> str:
    """The HTML part from `templates/email/<name>.html.j2`, its CSS inlined."""
    return inline_css(get_environment().get_template(f"email/{name}.html.j2").render(**context))


def _render(name: str, **context: Any) -> tuple[str, str]:
    return render_email_text(name, **context), render_email_html(name, **context)


def _subject(count: int, keywords: Sequence[str]) -> str:
    head = f"{count} new arXiv paper{'s' if count != 1 else ''}: "
    listed = ""
    for i, keyword in enumerate(keywords):
        candidate = (listed + ", " if listed else "") + collapse_ws(keyword)
        rest = len(keywords) - i - 1
        suffix = f" and {rest} more" if rest else ""
        if len(head + candidate + suffix) > SUBJECT_MAX and listed:
            return f"{head}{listed} and {len(keywords) - i} more"
        listed = candidate
    return head + listed


def render_digest(
    batch: Batch,
    *,
    links: EmailLinks,
    now: datetime,
    timezone: str,
    list_name: str,
    max_html_bytes: int = MAX_HTML_BYTES,
    rank: Ranking = in_turns,
) -> RenderedEmail:
    """The digest email of one batch, its HTML part under `max_html_bytes`.

    An HTML part too long for that shows the best-ranked papers that fit and, for each
    keyword, how many more there are, with a link to the reader's whole day
    (`EmailLinks.day_url`). The plain-text part, which no mail client clips, lists them all
    (up to MAX_TEXT_BYTES, cut the same way past it).
    """
    sections = digest_sections(batch)
    keywords = [s.keyword for s in sections]
    address = batch.target.address
    count = len(batch.papers)
    language = batch.language or ""
    day = now.astimezone(ZoneInfo(timezone)).date().isoformat()
    subject = _subject(count, keywords)
    context: dict[str, Any] = {
        "subject": subject,
        "count": count,
        "day": day,
        "keywords": keywords,
        "address": address,
        "list_name": list_name,
        "language": language,
        "language_label": language.upper(),
        "manage_url": links.manage_url(address, now=now),
        "unsubscribe_url": links.unsubscribe_url(address, now=now),
        "day_url": links.day_url(address, day=day, now=now),
    }

    def html_of(shown: Sequence[Section]) -> str:
        return render_email_html("digest", sections=shown, shown=_shown(shown), **context)

    def text_of(shown: Sequence[Section]) -> str:
        return render_email_text("digest", sections=shown, shown=_shown(shown), **context)

    _, html = fit_sections(sections, html_of, max_bytes=max_html_bytes, rank=rank)
    # No mail client clips the plain-text part: it lists every paper (up to what a relay takes).
    _, text = fit_sections(
        sections,
        text_of,
        max_bytes=MAX_TEXT_BYTES,
        min_entry_bytes=MIN_TEXT_ENTRY_BYTES,
        rank=rank,
    )
    return RenderedEmail(subject=subject, text=text, html=html)


def _shown(sections: Sequence[Section]) -> int:
    """How many papers an email shows in full."""
    return len({e.arxiv_id for section in sections for e in section.entries})


def render_confirmation(
    address: str,
    *,
    pending: Sequence[str],
    active: Sequence[str],
    links: EmailLinks,
    now: datetime,
    list_name: str,
) -> RenderedEmail:
    """The double opt-in email."""
    subject = "Confirm your arXiv digest subscription"
    text, html = _render(
        "confirm",
        subject=subject,
        address=address,
        pending=list(pending),
        active=list(active),
        list_name=list_name,
        confirm_url=links.confirm_url(address, now=now),
        manage_url=links.manage_url(address, now=now),
        confirm_hours=int(CONFIRM_TTL.total_seconds() // 3600),
    )
    return RenderedEmail(subject=subject, text=text, html=html)


def render_empty(
    address: str, *, keywords: Sequence[str], links: EmailLinks, now: datetime, timezone: str
) -> RenderedEmail:
    """The short 'nothing new' note (email.send_empty)."""
    subject = "No new arXiv papers today"
    text, html = _render(
        "empty",
        subject=subject,
        keywords=list(keywords),
        day=now.astimezone(ZoneInfo(timezone)).date().isoformat(),
        manage_url=links.manage_url(address, now=now),
        unsubscribe_url=links.unsubscribe_url(address, now=now),
    )
    return RenderedEmail(subject=subject, text=text, html=html)


__all__ = [
    "Entry",
    "RenderedEmail",
    "Section",
    "digest_sections",
    "inline_css",
    "render_confirmation",
    "render_digest",
    "render_empty",
]
