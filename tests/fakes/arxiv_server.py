"""A local stand-in for the arXiv API (`/api/query`), on 127.0.0.1, in a background thread.

It serves a corpus of `Paper`s in the new-backend Atom format (the structure of the recorded
files in tests/fixtures/arxiv/), evaluating `search_query` itself: `ti: abs: au: co: jr: cat:
id: all:` terms, quoted phrases, `AND OR ANDNOT`, parentheses, `submittedDate:[A TO B]` and
`lastUpdatedDate:[A TO B]`, `*` wildcards. Text matching is case-insensitive and stemmed
(English Snowball); a phrase is a run of consecutive stemmed tokens. `sortBy` / `sortOrder`,
`start` / `max_results` and `id_list` behave like arXiv's. `relevance` has no real scoring here:
it orders by last update, newest first, which is deterministic.

Tests script the outside world with rules, consumed in the order they were added:

    server.script(Throttle(retry_after="7"), ServerError(503))   # the next two requests
    server.always(Partial(missing=2), when={"start": "0"})      # every matching request
    server.replay(recorded("q_testing_s0_m10_bc5a6c384fe9.json"), when={"start": "0"})
    server.script(Mangled(cut_inside(b"<published>", keep=9)))  # the real page, cut in a date

Every request is recorded (path, query parameters, headers, time on the server's clock, client
port) so tests can count requests, check the User-Agent and the gap between requests.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import functools
import hashlib
import itertools
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit
from xml.sax.saxutils import escape, quoteattr

import pytest
import snowballstemmer

from digest.domain import Paper, split_arxiv_id

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "arxiv"
QUERY_PATH = "/api/query"


# -- scripted answers -------------------------------------------------------------------------
@dataclass(frozen=True)
class Throttle:
    """HTTP 429, optionally with `Retry-After` (seconds or an HTTP date)."""

    retry_after: str | None = "1"


@dataclass(frozen=True)
class ServerError:
    """A 5xx answer with a short HTML body, as a proxy would send."""

    status: int = 503
    retry_after: str | None = None


@dataclass(frozen=True)
class ErrorFeed:
    """arXiv's error feed: one entry whose id contains `/api/errors#` (HTTP 400 or 200)."""

    message: str = "incorrect id format for abc"
    status: int = 400


@dataclass(frozen=True)
class Partial:
    """The normal page with its last `missing` entries dropped; totalResults unchanged."""

    missing: int = 1


@dataclass(frozen=True)
class EmptyPage:
    """The normal totals but no entries (arXiv's sporadic empty page)."""


@dataclass(frozen=True)
class Shifted:
    """The page as if `by` papers had been inserted before it (entries repeat across pages)."""

    by: int = 1


@dataclass(frozen=True)
class Slow:
    """Wait `seconds` before answering normally (to trip the client's timeout)."""

    seconds: float = 0.5


@dataclass(frozen=True)
class Reset:
    """Close the connection with a TCP reset instead of answering."""


@dataclass(frozen=True)
class Mangled:
    """The normal page with its body passed through `edit` (cut short, corrupted bytes...).

    Sent with a Content-Length that matches the edited body (a proxy re-framed it); with
    `in_transit=True` the Content-Length announces the whole page and the connection closes
    after the edited bytes, as when a connection drops in the middle of an answer.
    """

    edit: Callable[[bytes], bytes]
    in_transit: bool = False


def cut_inside(marker: bytes, *, keep: int = 0, occurrence: int = 1) -> Callable[[bytes], bytes]:
    """An edit that cuts the body `keep` bytes after the `occurrence`-th `marker`.

    The marker must be in the page: otherwise the stand-in drops the connection unanswered.
    """

    def edit(body: bytes) -> bytes:
        at = -1
        for _ in range(occurrence):
            at = body.index(marker, at + 1)
        return body[: at + len(marker) + keep]

    return edit


@dataclass(frozen=True)
class Replay:
    """A fixed answer: status, body bytes, headers (a recorded response)."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/atom+xml"),)


Fault = (
    Throttle
    | ServerError
    | ErrorFeed
    | Partial
    | EmptyPage
    | Shifted
    | Slow
    | Reset
    | Replay
    | Mangled
)
Matcher = Mapping[str, str] | Callable[["RecordedRequest"], bool] | None


def recorded(name: str) -> Replay:
    """A recorded response from tests/fixtures/arxiv/ (JSON golden file or raw classic XML)."""
    path = FIXTURES / name
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        # arxiv.py stored the body bytes decoded as latin-1; encoding back gives the UTF-8 bytes.
        return Replay(status=int(data["status_code"]), body=data["body"].encode("latin-1"))
    return Replay(status=200, body=path.read_bytes())


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the stand-in saw it."""

    path: str
    params: dict[str, str]
    headers: dict[str, str]
    at: float  # the stand-in's clock when the request arrived
    client_port: int

    @property
    def user_agent(self) -> str:
        """The User-Agent header ('' when absent)."""
        return self.headers.get("user-agent", "")

    @property
    def search_query(self) -> str:
        """The decoded `search_query` parameter."""
        return self.params.get("search_query", "")


@dataclass
class _Rule:
    when: Matcher
    answer: Fault
    remaining: int | None  # None: forever

    def matches(self, request: RecordedRequest) -> bool:
        if self.remaining == 0:
            return False
        if self.when is None:
            return True
        if callable(self.when):
            return bool(self.when(request))
        return all(request.params.get(k) == v for k, v in self.when.items())


# -- the query language -----------------------------------------------------------------------
class QuerySyntaxError(ValueError):
    """The stand-in could not parse a search_query."""


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<lp>\()|(?P<rp>\))|
        (?P<term>(?:(?P<field>[A-Za-z_]+):)?
            (?:"(?P<phrase>[^"]*)"|\[(?P<range>[^\]]*)\]|(?P<word>[^\s()"]+)))
    )""",
    re.VERBOSE,
)
_TEXT_FIELDS = ("ti", "abs", "au", "co", "jr")
_FIELDS = {*_TEXT_FIELDS, "cat", "id", "all", "submitteddate", "lastupdateddate", "rn"}
_WORD = re.compile(r"[a-z0-9]+")


_LOCAL = threading.local()  # snowball stemmers keep state: one per thread


def _stemmer() -> Any:
    stemmer = getattr(_LOCAL, "stemmer", None)
    if stemmer is None:
        stemmer = _LOCAL.stemmer = snowballstemmer.stemmer("english")
    return stemmer


@functools.lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    # The pure-Python stemmer is slow (~1 s for the reference corpus); words repeat a lot.
    return str(_stemmer().stemWord(word))


def stem_tokens(text: str) -> tuple[str, ...]:
    """Lower-case, split on non-alphanumerics, stem (the matching rule of the issue)."""
    return tuple(_stem(word) for word in _WORD.findall(text.lower()))


@dataclass(frozen=True)
class _Indexed:
    paper: Paper
    tokens: dict[str, tuple[tuple[str, ...], ...]]  # field -> token runs (one per author, etc.)
    raw: dict[str, tuple[tuple[str, ...], ...]]  # same, unstemmed, for prefix wildcards


def _index(paper: Paper) -> _Indexed:
    texts = {
        "ti": (paper.title,),
        "abs": (paper.abstract,),
        "au": paper.authors,
        "co": (paper.comment or "",),
        "jr": (paper.journal_ref or "",),
    }
    return _Indexed(
        paper=paper,
        tokens={k: tuple(stem_tokens(t) for t in v) for k, v in texts.items()},
        raw={k: tuple(tuple(_WORD.findall(t.lower())) for t in v) for k, v in texts.items()},
    )


Predicate = Callable[[_Indexed], bool]


def _contains_run(runs: tuple[tuple[str, ...], ...], needle: tuple[str, ...]) -> bool:
    n = len(needle)
    return any(tuple(run[i : i + n]) == needle for run in runs for i in range(len(run) - n + 1))


def _date(text: str, *, end: bool) -> datetime:
    digits = text.strip()
    if not digits.isdigit() or len(digits) not in (8, 12, 14):
        raise QuerySyntaxError(f"bad date {text!r} (expected YYYYMMDD[HHMM[SS]])")
    # arXiv's ranges are inclusive: an end given to the day or minute covers all of it.
    padding = {8: ("000000", "235959"), 12: ("00", "59"), 14: ("", "")}[len(digits)]
    full = digits + padding[1 if end else 0]
    return datetime.strptime(full, "%Y%m%d%H%M%S").replace(tzinfo=UTC)


class _Parser:
    """Recursive descent: or := and (OR and)*; and := unary ((AND|ANDNOT)? unary)*."""

    def __init__(self, text: str) -> None:
        self.tokens = self._lex(text)
        self.pos = 0

    @staticmethod
    def _lex(text: str) -> list[tuple[str, re.Match[str]]]:
        out: list[tuple[str, re.Match[str]]] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            match = _TOKEN.match(text, pos)
            if match is None or match.end() == pos:
                raise QuerySyntaxError(f"cannot parse {text[pos:]!r}")
            kind = "lp" if match.group("lp") else "rp" if match.group("rp") else "term"
            if (
                kind == "term"
                and match.group("field") is None
                and match.group("word")
                in {
                    "AND",
                    "OR",
                    "ANDNOT",
                }
            ):
                kind = match.group("word")
            out.append((kind, match))
            pos = match.end()
        return out

    def parse(self) -> Predicate:
        if not self.tokens:
            raise QuerySyntaxError("empty query")
        node = self._or()
        if self.pos != len(self.tokens):
            raise QuerySyntaxError(f"unexpected {self.tokens[self.pos][1].group(0).strip()!r}")
        return node

    def _peek(self) -> str | None:
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def _or(self) -> Predicate:
        parts = [self._and()]
        while self._peek() == "OR":
            self.pos += 1
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else lambda p: any(f(p) for f in parts)

    def _and(self) -> Predicate:
        node = self._unary()
        while self._peek() in {"AND", "ANDNOT", "lp", "term"}:
            op = self._peek()
            if op in {"AND", "ANDNOT"}:
                self.pos += 1
            right = self._unary()
            left = node
            if op == "ANDNOT":
                node = lambda p, a=left, b=right: a(p) and not b(p)  # noqa: E731
            else:
                node = lambda p, a=left, b=right: a(p) and b(p)  # noqa: E731
        return node

    def _unary(self) -> Predicate:
        kind = self._peek()
        if kind == "lp":
            self.pos += 1
            node = self._or()
            if self._peek() != "rp":
                raise QuerySyntaxError("unbalanced parenthesis")
            self.pos += 1
            return node
        if kind != "term":
            raise QuerySyntaxError(f"expected a term, got {kind}")
        match = self.tokens[self.pos][1]
        self.pos += 1
        return self._term(match)

    def _term(self, match: re.Match[str]) -> Predicate:
        name = (match.group("field") or "all").lower()
        if name not in _FIELDS:
            raise QuerySyntaxError(f"unknown field {name!r}")
        if match.group("range") is not None:
            return self._range(name, match.group("range"))
        value = match.group("phrase") if match.group("phrase") is not None else match.group("word")
        value = value or ""
        if name == "cat":
            return lambda p: any(
                fnmatch.fnmatchcase(c.lower(), value.lower()) for c in p.paper.categories
            )
        if name == "id":
            wanted = value.lower()
            return lambda p: p.paper.arxiv_id.lower() == split_arxiv_id(wanted)[0].lower()
        if name == "rn":
            return lambda p: False
        fields = _TEXT_FIELDS if name == "all" else (name,)
        if name == "au":
            value = value.replace("_", " ")  # arXiv writes au:del_maestro for "Del Maestro"
        if value.endswith("*") and " " not in value.strip():
            prefix = value[:-1].lower()

            def prefixed(p: _Indexed) -> bool:
                return any(
                    token.startswith(prefix) for f in fields for run in p.raw[f] for token in run
                )

            if name == "all":
                return lambda p: (
                    prefixed(p) or any(c.lower().startswith(prefix) for c in p.paper.categories)
                )
            return prefixed
        needle = stem_tokens(value)
        if not needle:
            return lambda p: False

        def text(p: _Indexed) -> bool:
            return any(_contains_run(p.tokens[f], needle) for f in fields)

        if name == "all":
            return lambda p: text(p) or any(c.lower() == value.lower() for c in p.paper.categories)
        return text

    @staticmethod
    def _range(name: str, text: str) -> Predicate:
        parts = text.split(" TO ")
        if len(parts) != 2:
            raise QuerySyntaxError(f"bad range [{text}] (expected [A TO B])")
        low, high = _date(parts[0], end=False), _date(parts[1], end=True)
        if name == "submitteddate":
            # The stand-in's submission time is the first version's time, `Paper.published`.
            return lambda p: low <= p.paper.published.replace(microsecond=0) <= high
        if name == "lastupdateddate":
            return lambda p: low <= p.paper.updated.replace(microsecond=0) <= high
        raise QuerySyntaxError(f"field {name!r} does not take a range")


def compile_query(text: str) -> Callable[[Paper], bool]:
    """A predicate over papers for an arXiv `search_query` (exposed for tests of the stand-in)."""
    predicate = _Parser(text).parse()
    return lambda paper: predicate(_index(paper))


# -- Atom rendering ---------------------------------------------------------------------------
_INVALID_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _x(text: str) -> str:
    return escape(_INVALID_XML.sub("", text))


def _a(text: str) -> str:
    return quoteattr(_INVALID_XML.sub("", text))


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render_entry(paper: Paper) -> str:
    """One `<entry>` in the new backend's element order."""
    vid = paper.versioned_id
    lines = [
        "  <entry>",
        f"    <id>http://arxiv.org/abs/{_x(vid)}</id>",
        f"    <title>{_x(paper.title)}</title>",
        f"    <updated>{_stamp(paper.updated)}</updated>",
        f'    <link href={_a(f"https://arxiv.org/abs/{vid}")} rel="alternate" type="text/html"/>',
        f'    <link href={_a(f"https://arxiv.org/pdf/{vid}")} rel="related" '
        'type="application/pdf" title="pdf"/>',
        f"    <summary>{_x(paper.abstract)}</summary>",
    ]
    lines += [
        f'    <category term={_a(c)} scheme="http://arxiv.org/schemas/atom"/>'
        for c in paper.categories
    ]
    lines.append(f"    <published>{_stamp(paper.published)}</published>")
    if paper.comment:
        lines.append(f"    <arxiv:comment>{_x(paper.comment)}</arxiv:comment>")
    lines.append(f"    <arxiv:primary_category term={_a(paper.primary_category)}/>")
    if paper.journal_ref:
        lines.append(f"    <arxiv:journal_ref>{_x(paper.journal_ref)}</arxiv:journal_ref>")
    for author in paper.authors:
        lines += ["    <author>", f"      <name>{_x(author)}</name>", "    </author>"]
    if paper.doi:
        lines.append(f"    <arxiv:doi>{_x(paper.doi)}</arxiv:doi>")
        lines.append(
            f'    <link rel="related" href={_a(f"https://doi.org/{paper.doi}")} title="doi"/>'
        )
    lines.append("  </entry>")
    return "\n".join(lines)


def render_feed(
    papers: Iterable[Paper], *, query: str, id_list: str, start: int, max_results: int, total: int
) -> bytes:
    """A whole result page, as the new backend writes it."""
    shown = f"search_query={query}&id_list={id_list}&start={start}&max_results={max_results}"
    digest = hashlib.sha1(shown.encode(), usedforsecurity=False).digest()
    link_query = urlencode(
        {"search_query": query, "start": start, "max_results": max_results, "id_list": id_list},
        safe=":/",
    )
    head = [
        "<?xml version='1.0' encoding='UTF-8'?>",
        '<feed xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/" '
        'xmlns:arxiv="http://arxiv.org/schemas/atom" xmlns="http://www.w3.org/2005/Atom">',
        f"  <id>https://arxiv.org/api/{base64.b64encode(digest).decode().rstrip('=')}</id>",
        f"  <title>arXiv Query: {_x(shown)}</title>",
        f"  <updated>{_stamp(datetime.now(UTC))}</updated>",
        f"  <link href={_a('https://arxiv.org/api/query?' + link_query)} "
        'type="application/atom+xml"/>',
        f"  <opensearch:itemsPerPage>{max_results}</opensearch:itemsPerPage>",
        f"  <opensearch:totalResults>{total}</opensearch:totalResults>",
        f"  <opensearch:startIndex>{start}</opensearch:startIndex>",
    ]
    body = head + [render_entry(p) for p in papers] + ["</feed>", ""]
    return "\n".join(body).encode("utf-8")


def render_error_feed(message: str) -> bytes:
    """arXiv's error feed for `message` (the shape of id_abc_...json)."""
    slug = re.sub(r"\s+", "_", message.strip())
    now = _stamp(datetime.now(UTC))
    error_id = f"https://arxiv.org/api/errors#{slug}"
    return "\n".join(
        [
            "<?xml version='1.0' encoding='UTF-8'?>",
            '<feed xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/" '
            'xmlns:arxiv="http://arxiv.org/schemas/atom" xmlns="http://www.w3.org/2005/Atom">',
            "  <id>https://arxiv.org/</id>",
            "  <title>arXiv Search Results</title>",
            f"  <updated>{now}</updated>",
            "  <opensearch:itemsPerPage>1</opensearch:itemsPerPage>",
            "  <opensearch:totalResults>1</opensearch:totalResults>",
            "  <opensearch:startIndex>0</opensearch:startIndex>",
            "  <entry>",
            f"    <id>{_x(error_id)}</id>",
            "    <title>Error</title>",
            f"    <updated>{now}</updated>",
            f'    <link href={_a(error_id)} rel="alternate" type="text/html"/>',
            f"    <summary>{_x(message)}</summary>",
            "    <author>",
            "      <name>arXiv api core</name>",
            "    </author>",
            "  </entry>",
            "</feed>",
            "",
        ]
    ).encode("utf-8")


# -- the server -------------------------------------------------------------------------------
class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung client never keeps the test process alive
    block_on_close = False

    def __init__(self, address: tuple[str, int], owner: ArxivStandIn) -> None:
        super().__init__(address, _Handler)
        self.owner = owner
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client is meant to reuse one connection
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without NODELAY, Nagle + delayed ACK add
        # ~40 ms to every keep-alive answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the stand-in records requests instead of printing them."""

    def do_GET(self) -> None:
        owner = self.server.owner
        parts = urlsplit(self.path)
        params = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        request = RecordedRequest(
            path=parts.path,
            params=params,
            headers={k.lower(): v for k, v in self.headers.items()},
            at=owner.clock(),
            client_port=self.client_address[1],
        )
        answer = owner._record_and_pick(request)
        try:
            self._answer(request, answer)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. its timeout fired)

    def _answer(self, request: RecordedRequest, answer: Fault | None) -> None:
        owner = self.server.owner
        if isinstance(answer, Reset):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.close()
            return
        if isinstance(answer, Slow):
            owner._stopping.wait(answer.seconds)
            answer = None
        if isinstance(answer, Replay):
            self._send(answer.status, answer.body, answer.headers)
        elif isinstance(answer, Throttle):
            headers = [("Content-Type", "text/plain")]
            if answer.retry_after is not None:
                headers.append(("Retry-After", answer.retry_after))
            self._send(429, b"Rate exceeded.\n", headers)
        elif isinstance(answer, ServerError):
            headers = [("Content-Type", "text/html")]
            if answer.retry_after is not None:
                headers.append(("Retry-After", answer.retry_after))
            body = f"<html><body><h1>{answer.status} Server Error</h1></body></html>\n".encode()
            self._send(answer.status, body, headers)
        elif isinstance(answer, ErrorFeed):
            self._send(answer.status, render_error_feed(answer.message))
        elif request.path != QUERY_PATH:
            self._send(404, b"not found\n", [("Content-Type", "text/plain")])
        else:
            status, body = owner._evaluate(request.params, answer)
            if isinstance(answer, Mangled):
                self._send_mangled(status, body, answer)
            else:
                self._send(status, body)

    def _send_mangled(self, status: int, body: bytes, answer: Mangled) -> None:
        edited = answer.edit(body)
        if not answer.in_transit:
            self._send(status, edited)
            return
        self.send_response(status)
        self.send_header("Content-Type", "application/atom+xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(edited)
        self.close_connection = True  # the rest never comes: the client reads a short body

    def _send(
        self,
        status: int,
        body: bytes,
        headers: Iterable[tuple[str, str]] = (("Content-Type", "application/atom+xml"),),
    ) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class ArxivStandIn:
    """The arXiv API stand-in: `with ArxivStandIn(papers) as server: ... server.url ...`."""

    papers: Iterable[Paper] = ()
    clock: Callable[[], float] = time.monotonic
    host: str = "127.0.0.1"
    _corpus: dict[str, _Indexed] = field(default_factory=dict, init=False)
    _rules: list[_Rule] = field(default_factory=list, init=False)
    _requests: list[RecordedRequest] = field(default_factory=list, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False)
    _server: _Server | None = field(default=None, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.set_papers(self.papers)

    # -- lifetime ---------------------------------------------------------------------
    def start(self) -> ArxivStandIn:
        """Bind an ephemeral port on 127.0.0.1 and serve in a daemon thread."""
        self._stopping.clear()
        self._server = _Server((self.host, 0), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open keep-alive connections."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        with server.sockets_lock:
            for sock in list(server.open_sockets):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ArxivStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The API endpoint to put in `arxiv.api_url`."""
        if self._server is None:
            raise RuntimeError("the arXiv stand-in is not running")
        port = self._server.server_address[1]
        return f"http://{self.host}:{port}{QUERY_PATH}"

    # -- corpus -----------------------------------------------------------------------
    def set_papers(self, papers: Iterable[Paper]) -> None:
        """Replace the corpus (safe while serving)."""
        corpus = {p.arxiv_id: _index(p) for p in papers}
        with self._lock:
            self._corpus = corpus

    def add_papers(self, papers: Iterable[Paper]) -> None:
        """Announce papers: add them, or replace the stored version of the same arxiv_id."""
        indexed = {p.arxiv_id: _index(p) for p in papers}
        with self._lock:
            self._corpus = {**self._corpus, **indexed}

    @property
    def corpus(self) -> tuple[Paper, ...]:
        """The papers currently served."""
        with self._lock:
            return tuple(i.paper for i in self._corpus.values())

    # -- scripting --------------------------------------------------------------------
    def script(self, *answers: Fault, when: Matcher = None) -> None:
        """Answer the next matching requests with these, one each, in order."""
        with self._lock:
            self._rules.extend(_Rule(when, a, 1) for a in answers)

    def always(self, answer: Fault, *, when: Matcher = None, times: int | None = None) -> None:
        """Answer every matching request (or the next `times` ones) with this."""
        with self._lock:
            self._rules.append(_Rule(when, answer, times))

    def replay(self, answer: Replay | str, *, when: Matcher = None) -> None:
        """Answer matching requests with a recorded response (a `Replay` or a fixture name)."""
        self.always(recorded(answer) if isinstance(answer, str) else answer, when=when)

    def clear_rules(self) -> None:
        """Forget every scripted answer; the corpus answers again."""
        with self._lock:
            self._rules.clear()

    # -- what happened ----------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        """Forget the recorded requests (e.g. between two cycles)."""
        with self._lock:
            self._requests.clear()

    def min_gap(self) -> float | None:
        """The shortest time between two consecutive requests (None with fewer than two)."""
        times = [r.at for r in self.requests]
        if len(times) < 2:
            return None
        return min(b - a for a, b in itertools.pairwise(times))

    # -- internals --------------------------------------------------------------------
    def _record_and_pick(self, request: RecordedRequest) -> Fault | None:
        with self._lock:
            self._requests.append(request)
            for rule in self._rules:
                if rule.matches(request):
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    return rule.answer
        return None

    def _evaluate(self, params: Mapping[str, str], fault: Fault | None) -> tuple[int, bytes]:
        query = params.get("search_query", "")
        id_list = params.get("id_list", "")
        try:
            start = int(params.get("start", "0") or 0)
            max_results = int(params.get("max_results", "10") or 10)
        except ValueError:
            return 400, render_error_feed("start and max_results must be integers")
        if max_results > 30000:
            return 400, render_error_feed("max_results must be less than or equal to 30000")
        with self._lock:
            corpus = list(self._corpus.values())
        selected = corpus
        if id_list:
            wanted: list[str] = []
            for raw in id_list.split(","):
                try:
                    wanted.append(split_arxiv_id(raw)[0])
                except ValueError:
                    return 400, render_error_feed(f"incorrect id format for {raw}")
            by_id = {i.paper.arxiv_id: i for i in corpus}
            selected = [by_id[w] for w in wanted if w in by_id]
        if query:
            try:
                predicate = _Parser(query).parse()
            except QuerySyntaxError as exc:
                return 400, render_error_feed(f"malformed query: {exc}")
            selected = [i for i in selected if predicate(i)]
        elif not id_list:
            selected = []
        papers = _sort([i.paper for i in selected], params, keep_order=bool(id_list and not query))
        total = len(papers)
        first = start
        if isinstance(fault, Shifted):
            first = max(0, start - fault.by)
        page = papers[first : first + max_results]
        if isinstance(fault, Partial):
            page = page[: max(0, len(page) - fault.missing)]
        if isinstance(fault, EmptyPage):
            page = []
        body = render_feed(
            page, query=query, id_list=id_list, start=start, max_results=max_results, total=total
        )
        return 200, body


def _sort(papers: list[Paper], params: Mapping[str, str], *, keep_order: bool) -> list[Paper]:
    if keep_order:
        return papers  # id_list alone: arXiv answers in the order asked
    by = params.get("sortBy", "relevance")
    descending = params.get("sortOrder", "descending") != "ascending"

    def key(p: Paper) -> tuple[datetime, str]:
        if by == "submittedDate":
            return (p.published, p.arxiv_id)
        return (p.updated, p.arxiv_id)  # lastUpdatedDate; also the stand-in's "relevance"

    return sorted(papers, key=key, reverse=descending)


@pytest.fixture
def arxiv_server() -> Iterator[ArxivStandIn]:
    """An arXiv stand-in serving the 80 reference papers; stopped after the test."""
    from tests.reference_papers import load_reference_papers

    with ArxivStandIn(load_reference_papers()) as server:
        yield server
