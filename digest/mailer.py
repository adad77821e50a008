"""The email channel: daily digests, confirmation mails and alerts over SMTP (aiosmtplib).

Rendering is pure (`render_digest`, `render_confirmation`, `render_empty`, `compose_message`):
Jinja2 templates under `templates/email/`, HTML autoescaped and its CSS inlined with css-inline
(dark-mode and narrow-screen rules stay in a <style> element), sent as multipart/alternative
with a plain-text part folded at 76 columns (`fold_text`). A digest's HTML part stays under
MAX_HTML_BYTES, where Gmail would clip it and hide the footer: `fit_sections` keeps the
best-ranked papers that fit (a `Ranking`; the digest's own order by default) and the rest are
counted per keyword and linked to the reader's day (`EmailLinks.day_url`). Digests carry
Message-ID, Date, List-Id, List-Unsubscribe (HTTPS and mailto) and `List-Unsubscribe-Post:
List-Unsubscribe=One-Click` (RFC 8058).

Sending (`EmailChannel`): a small pool of SMTP connections (at most `email.concurrency`) reused
across messages and cycles; a connection idle for longer than `IDLE_SECONDS` is closed instead
of reused, and a reused one that turns out dead before the message is handed over is replaced
once. Opening a session gets CONNECT_TIMEOUT per step; when one cannot be opened, the relay
counts as down for RELAY_DOWN_SECONDS and messages meanwhile are RETRY without a try.
Outcomes per digest:

- accepted (2xx): every delivery SENT; the address's refusal counter is reset.
- 4xx, connection refused, timeout, disconnect: RETRY (the outbox backs off and retries next
  cycle).
- 5xx for the recipient (at RCPT or DATA): recorded in the target option `email_failures`;
  the deliveries are retried next cycle, and the third refusal in a row makes them PERMANENT,
  which disables the address's subscriptions with the server's answer as the reason.

A digest is one message per address per call, each paper shown in full once. Its Message-ID is
derived from the address and the exact deliveries it carries, so when a send fails ambiguously
(the connection drops after the data went out) the retry carries the same Message-ID and
receiving systems can discard the duplicate. Addresses that never confirmed are never mailed
(see `digest.email_subscriptions`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import logging
import re
import secrets
import ssl
import time
import unicodedata
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.policy import SMTPUTF8 as SMTPUTF8_POLICY
from email.utils import format_datetime, formataddr, make_msgid
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

import aiosmtplib
import css_inline

from digest.archive import day_bounds
from digest.channels import ChannelSpec
from digest.config import Settings
from digest.domain import Batch, Outcome, OutcomeKind, Paper, Target, for_deliveries
from digest.email_subscriptions import (
    CONFIRM_TTL,
    EMAIL,
    OPTION_CONFIRMED,
    OPTION_FAILURES,
    OPTION_LAST_MAIL_DAY,
    UNCONFIRMED,
    EmailLinks,
)
from digest.render import collapse_ws, get_environment
from digest.store import PaperStore

log = logging.getLogger(__name__)

FAILURE_LIMIT = 3  # consecutive 5xx refusals of an address before its subscriptions are disabled
IDLE_SECONDS = 30.0  # relays drop idle sessions after ~60 s (Postfix smtpd_timeout 300 s at most)
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
SMTP_TIMEOUT = 60.0  # seconds per SMTP command: a stuck relay must not hold the cycle
# Seconds for each step of opening a session (TCP connect and greeting, EHLO, STARTTLS, login):
# a working relay answers within milliseconds, and one that accepts connections but never
# speaks must not hold each message (and each sign-up) for a whole SMTP_TIMEOUT.
CONNECT_TIMEOUT = 5.0
TEST_CONNECT_TIMEOUT = 0.3  # service.test_mode: the stand-ins answer at once or never
# After a session could not be opened, every message fails at once for this long (about the
# rest of a cycle's delivery): one unreachable relay costs one timeout, not one per message.
RELAY_DOWN_SECONDS = 300.0


# -- rendering ---------------------------------------------------------------------------------


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
# keeps the first ones that fit; the default keeps the digest's own order (a relevance ranking
# plugs in here).
Ranking = Callable[[Sequence[Entry]], Sequence[Entry]]


def in_digest_order(entries: Sequence[Entry]) -> Sequence[Entry]:
    """The default ranking: the papers in the order the digest lists them."""
    return entries


def keep_papers(
    sections: Sequence[Section], keep: int, *, rank: Ranking = in_digest_order
) -> list[Section]:
    """The sections showing only the `keep` best-ranked papers; each counts what it leaves out.

    A paper left out disappears from every keyword it matches (also from "Also matches"
    lines, whose link would point at nothing) and is counted in each of them.
    """
    ranked = rank([entry for section in sections for entry in section.entries])
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
    rank: Ranking = in_digest_order,
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
    rank: Ranking = in_digest_order,
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


def _domain(sender: str) -> str:
    return sender.rpartition("@")[2] or "localhost"


def digest_message_id(batch: Batch, sender: str) -> str:
    """A Message-ID fixed by the address and the deliveries: a re-send is recognisably the same."""
    keys = sorted(f"{d.subscription_id}:{d.paper.arxiv_id}" for d in batch.deliveries)
    digest = hashlib.sha256("\n".join([batch.target.address, *keys]).encode()).hexdigest()
    return f"<digest.{digest[:32]}@{_domain(sender)}>"


def compose_message(
    rendered: RenderedEmail,
    *,
    sender: str,
    recipient: str,
    now: datetime,
    message_id: str | None = None,
    list_id: str | None = None,
    unsubscribe: tuple[str, str] | None = None,
) -> EmailMessage:
    """A multipart/alternative message (text, then HTML) with the list headers when given."""
    msg = EmailMessage()
    msg["From"] = formataddr(("daily-papers", sender))
    msg["To"] = recipient
    msg["Subject"] = rendered.subject
    msg["Date"] = format_datetime(now.astimezone(UTC))
    msg["Message-ID"] = message_id or make_msgid(domain=_domain(sender))
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation auto-replies to us
    if list_id:
        msg["List-Id"] = f"daily-papers <{list_id}>"
    if unsubscribe:
        https, mailto = unsubscribe
        msg["List-Unsubscribe"] = f"<{https}>, <{mailto}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    # The parts are encoded here with the C encoders of binascii: the email package's own
    # quoted-printable and base64 line loops are pure Python and were, with flattening, the
    # largest cost of a digest in the 10,000-digest benchmark. The text part is
    # quoted-printable (readable in the raw message); the HTML is base64, since its
    # inlined-CSS lines exceed 998 characters.
    msg["MIME-Version"] = "1.0"
    msg["Content-Type"] = f'multipart/alternative; boundary="{_boundary()}"'
    msg.set_payload(
        [
            _encoded_part(rendered.text, "plain", "quoted-printable"),
            _encoded_part(rendered.html, "html", "base64"),
        ]
    )
    return msg


def _boundary() -> str:
    """A multipart boundary that cannot occur in quoted-printable or base64 text.

    `=_` is neither a quoted-printable escape (`=` is followed by two hex digits or a line
    end) nor base64 (no `=` followed by `_`), so no scan of the parts is needed.
    """
    return "=_dp_" + secrets.token_hex(12)


def _encoded_part(text: str, subtype: str, cte: str) -> EmailMessage:
    """A text/<subtype> UTF-8 leaf whose payload is already in its transfer encoding."""
    data = text.encode("utf-8")
    if cte == "base64":
        flat = base64.b64encode(data).decode("ascii")
        encoded = "".join(flat[i : i + 76] + "\n" for i in range(0, len(flat), 76))
    else:
        encoded = binascii.b2a_qp(data, istext=True).decode("ascii")
        if not encoded.endswith("\n"):
            encoded += "\n"
    part = EmailMessage()
    part["Content-Type"] = f'text/{subtype}; charset="utf-8"'
    part["Content-Transfer-Encoding"] = cte
    part.set_payload(encoded)
    return part


def smtp_address(address: str) -> str:
    """The address as SMTP wants it: an internationalised domain in its ASCII (IDNA) form.

    Only a non-ASCII local part then needs SMTPUTF8, which not every relay offers.
    """
    local, _, domain = address.rpartition("@")
    if domain.isascii():
        return address
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        return address  # let the relay judge it; SMTPUTF8 is still tried


def message_bytes(msg: EmailMessage, *, utf8: bool = False) -> bytes:
    """The message as SMTP wants it: CRLF line ends, headers folded without mangling URLs."""
    # Header lines may be 998 characters (RFC 5322); folding a long token-bearing URL at 78
    # would make the email package encode it, and readers could no longer click it.
    policy = (SMTPUTF8_POLICY if utf8 else SMTP_POLICY).clone(max_line_length=998)
    boundary = msg.get_boundary()
    payload = msg.get_payload()
    parts = [p for p in payload if isinstance(p, EmailMessage)] if isinstance(payload, list) else []
    if (
        boundary is None
        or not boundary.startswith("=_dp_")
        or not parts
        or len(parts) != len(payload)
        or any(part.is_multipart() for part in parts)
    ):
        return msg.as_bytes(policy=policy)
    # compose_message's own shape: headers, then leaf parts whose payloads are already
    # encoded ASCII. Written directly; the email package's Generator walks every line in Python.
    # As the Generator does: the CRLF before each delimiter belongs to the delimiter (RFC 2046
    # 5.1.1), so it is written in addition to the payload's own final line end.
    delimiter = b"--" + boundary.encode("ascii")
    out = [_header_bytes(msg, policy), b"\r\n", delimiter]
    for part in parts:
        out += [b"\r\n", _header_bytes(part, policy), b"\r\n"]
        out.append(str(part.get_payload()).replace("\n", "\r\n").encode("ascii"))
        out += [b"\r\n", delimiter]
    out.append(b"--\r\n")
    return b"".join(out)


def _header_bytes(msg: EmailMessage, policy: Any) -> bytes:
    """The header block as BytesGenerator writes it (each header folded by the policy)."""
    return b"".join(policy.fold_binary(name, value) for name, value in msg.raw_items())


# -- SMTP ---------------------------------------------------------------------------------------


class SendStatus(StrEnum):
    """How the relay answered one message."""

    SENT = "sent"
    RETRY = "retry"  # 4xx or a transport failure: try again later
    REFUSED = "refused"  # 5xx for this recipient or this message


@dataclass(frozen=True, slots=True)
class SendResult:
    """One message's fate and the relay's words (never contains credentials)."""

    status: SendStatus
    detail: str = ""
    attempted: bool = True  # False: not tried, the relay was found down moments ago


def _response_error(exc: aiosmtplib.SMTPResponseException) -> str:
    return f"{exc.code} {collapse_ws(exc.message)}"[:300]


class SmtpPool:
    """At most `size` SMTP sessions, reused for many messages; idle ones are closed, not reused."""

    def __init__(
        self,
        *,
        hostname: str,
        port: int,
        security: str,
        username: str = "",
        password: str = "",
        size: int = 4,
        timeout: float = SMTP_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        down_seconds: float = RELAY_DOWN_SECONDS,
        tls_context: ssl.SSLContext | None = None,
        idle_seconds: float = IDLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hostname = hostname
        self.port = port
        self.security = security
        self._username = username
        self._password = password
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._down_seconds = down_seconds
        self._tls_context = tls_context
        self._idle_seconds = idle_seconds
        self._clock = clock
        self._slots = asyncio.Semaphore(size)
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []
        self._down_until = float("-inf")
        self._down_reason = ""
        self.connections_opened = 0  # for the log line and tests: reuse is observable

    async def _connect(self) -> aiosmtplib.SMTP:
        """A new session, opened within `connect_timeout` per step; on failure the relay is
        taken to be down for `down_seconds` and the error is raised."""
        smtp = aiosmtplib.SMTP(
            hostname=self.hostname,
            port=self.port,
            # Every step of the opening (connect and greeting, EHLO, STARTTLS, login) gets the
            # short timeout; the messages themselves then get the command timeout.
            timeout=self._connect_timeout,
            use_tls=self.security == "tls",
            # None would mean "if offered"; an explicit setting must not be silently skipped.
            start_tls=self.security == "starttls",
            tls_context=self._tls_context,
        )
        try:
            await smtp.connect()
            if self._username:
                await smtp.login(self._username, self._password)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            smtp.close()
            self._down_until = self._clock() + self._down_seconds
            self._down_reason = f"{type(exc).__name__}: {exc}"[:200]
            log.warning(
                "smtp.relay_down host=%s port=%d for_seconds=%.0f error=%r",
                self.hostname,
                self.port,
                self._down_seconds,
                self._down_reason,
            )
            raise
        smtp.timeout = self._timeout
        self.connections_opened += 1
        log.debug("smtp.connected host=%s port=%d", self.hostname, self.port)
        return smtp

    @property
    def down(self) -> bool:
        """Whether a session failed to open less than `down_seconds` ago (sends fail at once)."""
        return self._clock() < self._down_until

    def _take_idle(self) -> aiosmtplib.SMTP | None:
        while self._idle:
            smtp, since = self._idle.pop()
            if smtp.is_connected and self._clock() - since < self._idle_seconds:
                return smtp
            smtp.close()
        return None

    async def send(self, sender: str, recipient: str, data: bytes, *, utf8: bool) -> SendResult:
        """Hand one message to the relay over a pooled session; never raises."""
        async with self._slots:
            if self.down:
                # Not tried: the relay could not be reached moments ago (RETRY, as any
                # transport failure); the next cycle tries again.
                return SendResult(
                    SendStatus.RETRY,
                    f"the mail server is unreachable ({self._down_reason})",
                    attempted=False,
                )
            reused = self._take_idle()
            smtp = reused
            try:
                if smtp is None:
                    smtp = await self._connect()
                result = await self._transaction(smtp, sender, recipient, data, utf8=utf8)
                if result is None and reused is not None:
                    # The idle session died before the message was handed over: no risk of a
                    # duplicate, so try once on a fresh session.
                    reused.close()
                    smtp = await self._connect()
                    result = await self._transaction(smtp, sender, recipient, data, utf8=utf8)
                if result is None:
                    result = SendResult(SendStatus.RETRY, "the mail server closed the connection")
            except aiosmtplib.SMTPAuthenticationError as exc:
                log.error("smtp.auth_failed host=%s code=%d", self.hostname, exc.code)
                result = SendResult(SendStatus.RETRY, f"SMTP login refused: {exc.code}")
            except aiosmtplib.SMTPResponseException as exc:
                result = SendResult(SendStatus.RETRY, _response_error(exc))
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                result = SendResult(SendStatus.RETRY, f"{type(exc).__name__}: {exc}"[:300])
            if smtp is not None and smtp.is_connected and result.status is not SendStatus.RETRY:
                self._idle.append((smtp, self._clock()))
            elif smtp is not None:
                smtp.close()
            return result

    @staticmethod
    async def _transaction(
        smtp: aiosmtplib.SMTP, sender: str, recipient: str, data: bytes, *, utf8: bool
    ) -> SendResult | None:
        """MAIL, RCPT, DATA on one session; None when it died before DATA (safe to redo)."""
        options = ["SMTPUTF8"] if utf8 else []
        try:
            await smtp.mail(sender, options=options, encoding="utf-8" if utf8 else "ascii")
            await smtp.rcpt(recipient, encoding="utf-8" if utf8 else "ascii")
        except aiosmtplib.SMTPServerDisconnected:
            return None
        except aiosmtplib.SMTPRecipientRefused as exc:
            await _reset(smtp)
            status = SendStatus.REFUSED if exc.code >= 500 else SendStatus.RETRY
            return SendResult(status, _response_error(exc))
        except aiosmtplib.SMTPSenderRefused as exc:
            # Our own From is refused: an operator problem, never the subscriber's fault.
            await _reset(smtp)
            log.error("smtp.sender_refused code=%d", exc.code)
            return SendResult(SendStatus.RETRY, _response_error(exc))
        try:
            await smtp.data(data)
        except aiosmtplib.SMTPDataError as exc:
            await _reset(smtp)
            status = SendStatus.REFUSED if exc.code >= 500 else SendStatus.RETRY
            return SendResult(status, _response_error(exc))
        return SendResult(SendStatus.SENT)

    async def close(self) -> None:
        """Say QUIT to every idle session."""
        idle, self._idle = self._idle, []
        for smtp, _ in idle:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await smtp.quit()
            smtp.close()


async def _reset(smtp: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
        await smtp.rset()


# -- the channel -------------------------------------------------------------------------------


class EmailChannel:
    """Channel for `email:` targets: one digest per address per cycle, plus confirmation mails."""

    kind = EMAIL

    def __init__(
        self,
        *,
        settings: Settings,
        store: PaperStore,
        links: EmailLinks,
        pool: SmtpPool | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.links = links
        self.sender = settings.email.sender
        self.list_id = settings.email.list_id
        self.pool = pool or SmtpPool(
            hostname=settings.email.smtp_host,
            port=settings.email.smtp_port,
            security=settings.email.security,
            username=settings.email.smtp_username,
            password=settings.secrets.smtp_password,
            size=settings.email.concurrency,
            connect_timeout=(
                TEST_CONNECT_TIMEOUT if settings.service.test_mode else CONNECT_TIMEOUT
            ),
        )
        self._clock = clock if clock is not None else (lambda: datetime.now(UTC))

    @classmethod
    def from_settings(
        cls, settings: Settings, *, store: PaperStore, pool: SmtpPool | None = None
    ) -> EmailChannel | None:
        """The channel when `email.enabled`, else None; ConfigError without key or base URL."""
        if not settings.email.enabled:
            return None
        return cls(
            settings=settings, store=store, links=EmailLinks.from_settings(settings), pool=pool
        )

    async def __aenter__(self) -> EmailChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the pooled SMTP sessions (on shutdown)."""
        await self.pool.close()

    def _today(self, now: datetime) -> str:
        return now.astimezone(ZoneInfo(self.settings.service.timezone)).date().isoformat()

    async def _option(self, target: Target, name: str) -> str | None:
        return await asyncio.to_thread(self.store.get_target_option, target, name)

    async def _set_option(self, target: Target, name: str, value: str | None) -> None:
        await asyncio.to_thread(self.store.set_target_option, target, name, value)

    async def _deliver(self, recipient: str, msg: EmailMessage) -> SendResult:
        recipient = smtp_address(recipient)
        if recipient != msg["To"]:
            msg.replace_header("To", recipient)
        utf8 = not recipient.isascii()
        return await self.pool.send(
            self.sender, recipient, message_bytes(msg, utf8=utf8), utf8=utf8
        )

    async def _count_refusal(self, target: Target, result: SendResult, failures: int) -> int:
        """Record one more 5xx refusal in a row; the new count."""
        failures += 1
        await self._set_option(target, OPTION_FAILURES, str(failures))
        log.warning(
            "email.refused failures=%d limit=%d detail=%r", failures, FAILURE_LIMIT, result.detail
        )
        return failures

    async def send(self, batch: Batch) -> AsyncIterator[Sequence[Outcome]]:
        """Mail one digest with every paper of `batch`: one message, so one yield of outcomes."""
        if batch.deliveries:
            yield await self._send_digest(batch)

    async def _send_digest(self, batch: Batch) -> Sequence[Outcome]:
        """The outcome of mailing `batch` as one digest, one per delivery; never raises."""
        target = batch.target
        deliveries = batch.deliveries
        now = self._clock()
        try:
            confirmed = batch.options.get(OPTION_CONFIRMED) or await self._option(
                target, OPTION_CONFIRMED
            )
            if not confirmed:
                # Never mail an address that did not click its confirmation link; parking the
                # subscriptions as unconfirmed lets that link activate them later.
                log.info("email.unconfirmed_target deliveries=%d", len(deliveries))
                return for_deliveries(deliveries, OutcomeKind.PERMANENT, UNCONFIRMED)
            today = self._today(now)
            if self.settings.email.send_empty and batch.options.get(OPTION_LAST_MAIL_DAY) != today:
                # Only the "nothing new" note reads this mark (set before sending, so a crash
                # mid-send cannot add a note the same day); without the note it would cost
                # every digest a database write.
                await self._set_option(target, OPTION_LAST_MAIL_DAY, today)
            rendered = render_digest(
                batch,
                links=self.links,
                now=now,
                timezone=self.settings.service.timezone,
                list_name=self.list_id,
            )
            msg = compose_message(
                rendered,
                sender=self.sender,
                recipient=target.address,
                now=now,
                message_id=digest_message_id(batch, self.sender),
                list_id=self.list_id,
                unsubscribe=(
                    self.links.unsubscribe_url(target.address, now=now),
                    self.links.unsubscribe_mailto(target.address),
                ),
            )
            result = await self._deliver(target.address, msg)
            failures = int(batch.options.get(OPTION_FAILURES) or 0)
            if result.status is SendStatus.SENT:
                if failures:
                    await self._set_option(target, OPTION_FAILURES, None)
                log.info("email.digest_sent papers=%d", len(batch.papers))
                return for_deliveries(deliveries, OutcomeKind.SENT)
            if result.status is SendStatus.RETRY:
                # One line per digest the relay answered; while it is down, smtp.relay_down
                # said so once and the digests it never saw are only worth a debug line.
                level = logging.WARNING if result.attempted else logging.DEBUG
                log.log(level, "email.digest_deferred detail=%r", result.detail)
                return for_deliveries(deliveries, OutcomeKind.RETRY, result.detail)
            failures = await self._count_refusal(target, result, failures)
            if failures >= FAILURE_LIMIT:
                reason = f"mail refused {failures} times in a row: {result.detail}"
                return for_deliveries(deliveries, OutcomeKind.PERMANENT, reason)
            reason = f"mail refused ({failures}/{FAILURE_LIMIT}): {result.detail}"
            return for_deliveries(deliveries, OutcomeKind.RETRY, reason)
        except Exception as exc:  # never raise into the cycle: a bug here is a transient failure
            log.exception("email.send_crashed")
            return for_deliveries(deliveries, OutcomeKind.RETRY, f"{type(exc).__name__}: {exc}")

    async def send_confirmation(
        self, address: str, *, pending: Sequence[str], active: Sequence[str], now: datetime
    ) -> bool:
        """Mail the double opt-in link (implements ConfirmationSender); True when accepted."""
        rendered = render_confirmation(
            address,
            pending=pending,
            active=active,
            links=self.links,
            now=now,
            list_name=self.list_id,
        )
        msg = compose_message(rendered, sender=self.sender, recipient=address, now=now)
        result = await self._deliver(address, msg)
        if result.status is not SendStatus.SENT:
            log.warning("email.confirm_failed status=%s detail=%r", result.status, result.detail)
        return result.status is SendStatus.SENT

    async def notify(self, target: Target, text: str) -> bool:
        """Mail an operator alert as plain text; True when the relay accepted it."""
        now = self._clock()
        msg = EmailMessage()
        msg["From"] = formataddr(("daily-papers", self.sender))
        msg["To"] = target.address
        msg["Subject"] = "daily-papers alert"
        msg["Date"] = format_datetime(now.astimezone(UTC))
        msg["Message-ID"] = make_msgid(domain=_domain(self.sender))
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(text, charset="utf-8")
        try:
            result = await self._deliver(target.address, msg)
        except Exception:  # alerts never raise
            log.exception("email.notify_crashed")
            return False
        return result.status is SendStatus.SENT

    async def send_empty(self, *, now: datetime | None = None) -> int:
        """The 'nothing new' note for confirmed addresses that got no mail today.

        Call once after the cycle's deliveries. Does nothing unless `email.send_empty`. An
        address counts as served when it was sent papers today or is still owed some (the
        outbox says so, also for digests sent before `send_empty` was switched on), when `send`
        handled a digest for it today (whatever the relay said), or when it already got the
        note, so a second cycle on the same day sends none. Returns how many notes were
        accepted.
        """
        if not self.settings.email.send_empty:
            return 0
        now = now or self._clock()
        today = self._today(now)
        start_of_day, _ = day_bounds(date.fromisoformat(today), self.settings.service.timezone)
        served = await asyncio.to_thread(self.store.targets_served_since, EMAIL, start_of_day)
        subs = await asyncio.to_thread(self.store.list_subscriptions, None, active_only=True)
        keywords: dict[str, list[str]] = {}
        for sub in subs:
            if sub.target.kind == EMAIL and sub.target.address not in served:
                keywords.setdefault(sub.target.address, []).append(sub.keyword)
        sent = 0
        for address, queries in keywords.items():
            try:
                sent += await self._send_empty_one(address, queries, now=now, today=today)
            except Exception:  # one broken address must not stop the others
                log.exception("email.empty_crashed")
        if sent:
            log.info("email.empty_sent count=%d", sent)
        return sent

    async def _send_empty_one(
        self, address: str, queries: Collection[str], *, now: datetime, today: str
    ) -> int:
        target = Target(kind=EMAIL, address=address)
        if not await self._option(target, OPTION_CONFIRMED):
            return 0
        if await self._option(target, OPTION_LAST_MAIL_DAY) == today:
            return 0
        await self._set_option(target, OPTION_LAST_MAIL_DAY, today)
        rendered = render_empty(
            address,
            keywords=list(queries),
            links=self.links,
            now=now,
            timezone=self.settings.service.timezone,
        )
        msg = compose_message(
            rendered,
            sender=self.sender,
            recipient=address,
            now=now,
            list_id=self.list_id,
            unsubscribe=(
                self.links.unsubscribe_url(address, now=now),
                self.links.unsubscribe_mailto(address),
            ),
        )
        result = await self._deliver(address, msg)
        if result.status is SendStatus.REFUSED:
            failures = int(await self._option(target, OPTION_FAILURES) or 0)
            failures = await self._count_refusal(target, result, failures)
            if failures >= FAILURE_LIMIT:
                reason = f"mail refused {failures} times in a row: {result.detail}"
                for sub in await asyncio.to_thread(self.store.list_subscriptions, target):
                    await asyncio.to_thread(self.store.disable_subscription, sub.id, reason)
            return 0
        if result.status is SendStatus.SENT:
            await self._set_option(target, OPTION_FAILURES, None)
            return 1
        return 0


async def channel_factory(
    settings: Settings, store: PaperStore, stack: contextlib.AsyncExitStack
) -> EmailChannel | None:
    """The composition root's factory: the channel when email is on, closed with `stack`."""
    channel = EmailChannel.from_settings(settings, store=store)
    if channel is not None:
        await stack.enter_async_context(channel)
    return channel


__all__ = [
    "FAILURE_LIMIT",
    "EmailChannel",
    "Entry",
    "RenderedEmail",
    "Section",
    "SendResult",
    "SendStatus",
    "SmtpPool",
    "channel_factory",
    "compose_message",
    "digest_message_id",
    "digest_sections",
    "inline_css",
    "message_bytes",
    "render_confirmation",
    "render_digest",
    "render_empty",
    "smtp_address",
]


SPECS = (
    ChannelSpec(
        kind=EMAIL,
        summary="an email address that confirmed its subscription (double opt-in)",
        example="email:reader@lab.org",
        factory=channel_factory,
        settings_section="email",
        subscribe_instead=(
            "email addresses need their owner's confirmation: use "
            "`daily-papers email subscribe ADDRESS QUERY` to mail them the link"
        ),
    ),
)
