"""The only code that talks to arXiv: fetch one page, parse one page, page through a query.

arXiv's API is one GET that answers one page of Atom; this module owns both ends of that wire
(STYLE habit 15), in three small pieces:

- `build_query_url`: a page's URL from arXiv's documented parameters (`search_query`, `sortBy`,
  `sortOrder`, `start`, `max_results`), urlencoded;
- `ArxivSource._fetch_once`: one polite request. One `requests.Session` (one kept-alive
  connection) with a User-Agent naming the project and the operator's contact and a request
  timeout; a monotonic-clock gap of at least `delay_seconds` between any two requests, retries
  included; arXiv's error entry (`<id>` containing `/api/errors#`, sent with HTTP 400 or 200)
  raised as `ArxivError` with arXiv's own text, never retried; 429, 5xx, timeouts, connection
  errors, malformed and unexpectedly empty pages retried with exponential backoff and jitter,
  `Retry-After` obeyed;
- `parse_page`: one answer into `Paper`s and opensearch's numbers, with lxml (no network, no
  entities) and strictly: a cut body, invalid UTF-8, broken markup, HTML instead of Atom, a bad
  date or an entry without an id or dates is a `MalformedPage` (asked for again), never a
  shorter page.

`ArxivSource._collect` pages over `start`/`max_results` itself: it stops at totalResults (or the
limit), asks for the rest from where a short page stopped, and treats an empty page in the
middle as a transient failure; `harvest` checks that every promised entry arrived.

Why not the `arxiv` package (arxiv.py), which this module used to build on: its public API is
`Search` (five query parameters), the `SortCriterion`/`SortOrder` enums, `Result`, and
`Client.results()`, the only public way to get a page. `Client.results()` does its own HTTP and
none of it is acceptable here: a hard-coded `arxiv.py/<version>` User-Agent (arXiv asks callers
to say who they are; there is no parameter for it), no request timeout (a stalled connection
hangs the cycle), no `Retry-After`, retries of every non-200 answer alike (a rejected query
included) spaced only by its own wall-clock `time.sleep` delay, with no backoff (neither the
sleep nor the clock injectable, so not testable without real waiting), and XML read in lxml's
recover mode, so a body cut mid-entry silently becomes a shorter page. Using it meant
overriding its private `Client._parse_feed` and calling its private `arxiv._feed.parse`, which
is why the package was pinned to one version. What is left of the public API once fetching and
parsing are ours (`Search` holding five values, enum members that are arXiv's parameter strings,
a `Result` we would only convert) is not worth a dependency, so the project no longer has one.

Retries use tenacity, the maintained engine under stamina, directly: stamina's synchronous retry
loop always sleeps through `time.sleep` and its only test knob is a process-global switch
(`stamina.set_testing`), whereas `tenacity.Retrying(sleep=...)` takes the injected sleep, so
tests run on a fake clock with zero real waiting and production never depends on a test global.

Sleep and clock are injected; with `service.test_mode` `from_settings` skips every wait (delays
and backoff are zero; timeouts still apply).
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from types import TracebackType
from typing import Literal, Protocol
from urllib.parse import urlencode

import requests
import tenacity
from lxml import etree  # type: ignore[import-untyped]  # lxml ships no type information

from digest import __version__
from digest.config import Settings
from digest.domain import Paper, split_arxiv_id
from digest.errors import ArxivError, ConfigError, HarvestIncomplete
from digest.pacing import Gap, parse_retry_after

log = logging.getLogger(__name__)

PROJECT_NAME = "daily-papers"
MAX_PAGE_SIZE = 2000  # arXiv's documented maximum of max_results per request
# Ids per `id_list` request: 50 is a whole `like:` seed set (digest.similar.MAX_SEEDS) in one
# request, and keeps the URL short (about 800 characters).
ID_LIST_CHUNK = 50

# `["all"]` harvests every arXiv category. Rather than OR-ing ~155 categories (7 requests per
# window), each archive is one term: a wildcard where the archive has subcategories (arXiv's
# search accepts Lucene-style `*`), the bare name where it has none. `astro-ph*` and `cond-mat*`
# also cover the pre-2009 papers filed under the bare archive name. 20 terms: one request.
ALL_CATEGORIES: tuple[str, ...] = (
    "astro-ph*",
    "cond-mat*",
    "gr-qc",
    "hep-ex",
    "hep-lat",
    "hep-ph",
    "hep-th",
    "math-ph",
    "nlin.*",
    "nucl-ex",
    "nucl-th",
    "physics.*",
    "quant-ph",
    "math.*",
    "cs.*",
    "q-bio.*",
    "q-fin.*",
    "stat.*",
    "eess.*",
    "econ.*",
)

# A category as it may appear in `arxiv.categories`: `cs.CV`, `hep-th`, `math.*`, `astro-ph*`.
# Anything else (spaces, quotes, parentheses) could change the meaning of the query.
_CATEGORY = re.compile(r"^[a-z][a-z\-]*(?:\.[A-Za-z\-]+|\.\*|\*)?$")
_ERROR_ID = "/api/errors#"
_ATOM_NS = b"http://www.w3.org/2005/Atom"
# The namespaces of arXiv's Atom (API user manual, "Details of Atom Results Returned"), in
# lxml's `{namespace}tag` form: matched by namespace, whatever prefix a page declares.
_ATOM = "{http://www.w3.org/2005/Atom}"
_ARXIV = "{http://arxiv.org/schemas/atom}"
_OPENSEARCH = "{http://a9.com/-/spec/opensearch/1.1/}"
_REASON_CHARS = 160  # a reason quoted from a parser or urllib3 is cut here: error lines stay short
_WHITESPACE = re.compile(r"\s+")
_BACKOFF_INITIAL = 1.0  # seconds before the first retry; doubles each time up to the maximum


@dataclass(frozen=True, slots=True)
class Fetch:
    """What one harvest or search brought back, with the request counts for the run report."""

    papers: tuple[Paper, ...]  # deduplicated by arxiv_id (highest version kept)
    requests: int  # HTTP requests made, retries included
    throttled: int  # 429 answers
    promised: int  # totalResults arXiv announced (summed over queries)
    retries: int = 0  # requests that repeated a failed one


# arXiv's sortBy and sortOrder values (API user manual, "Sort order for return results").
SortBy = Literal["relevance", "lastUpdatedDate", "submittedDate"]
SortOrder = Literal["ascending", "descending"]


@dataclass(frozen=True, slots=True)
class Page:
    """One API answer, parsed: its papers in page order and the page's opensearch numbers."""

    papers: tuple[Paper, ...]
    total_results: int  # opensearch:totalResults: entries matching the query over all pages
    start_index: int  # opensearch:startIndex (0 when absent)
    items_per_page: int  # opensearch:itemsPerPage (0 when absent)
    skipped: tuple[str, ...] = ()  # ids of entries whose id is not an arXiv identifier

    @property
    def entries(self) -> int:
        """How many entries arXiv sent on this page, usable or not."""
        return len(self.papers) + len(self.skipped)


class PaperSource(Protocol):
    """Where papers come from: arXiv, a mirror, or the test stand-in."""

    def harvest(
        self,
        *,
        start: datetime,
        end: datetime,
        categories: Sequence[str],
        progress: Callable[[int, int], None] | None = None,
    ) -> Fetch:
        """Everything submitted in [start, end) in these categories."""
        ...

    def search(
        self, query: str, *, limit: int, progress: Callable[[int, int], None] | None = None
    ) -> Fetch:
        """The latest `limit` papers (by last update) for an arXiv query."""
        ...

    def fetch_ids(self, arxiv_ids: Sequence[str]) -> Fetch:
        """The latest version of each of these papers (unknown ids are left out)."""
        ...


def build_user_agent(contact: str, *, version: str = __version__) -> str:
    """`daily-papers/0.1.0 (+<project url>; mailto:me@lab.org)`: who calls, how to reach them."""
    details = []
    url = _project_url()
    if url:
        details.append(f"+{url}")
    contact = contact.strip()
    if contact:
        details.append(f"mailto:{contact}" if "@" in contact and ":" not in contact else contact)
    suffix = f" ({'; '.join(details)})" if details else ""
    return f"{PROJECT_NAME}/{version}{suffix}"


def _project_url() -> str:
    """The project's home page from the installed distribution's metadata, if it declares one."""
    try:
        meta = metadata.metadata(PROJECT_NAME)
    except metadata.PackageNotFoundError:
        return ""
    for entry in meta.get_all("Project-URL") or ():
        _, _, url = str(entry).partition(",")
        if url.strip():
            return url.strip()
    return str(meta["Home-page"] or "") if "Home-page" in meta else ""


def expand_categories(categories: Sequence[str]) -> list[str]:
    """The category terms to OR together: `["all"]` becomes one wildcard term per archive."""
    if any(c.strip().lower() == "all" for c in categories):
        return list(ALL_CATEGORIES)
    terms: list[str] = []
    for raw in categories:
        category = raw.strip()
        if not _CATEGORY.match(category):
            raise ConfigError(
                f"arxiv.categories = {raw!r} is not valid: expected an arXiv category such as "
                "'cs.CV', 'hep-th' or 'math.*', or ['all']"
            )
        if category not in terms:
            terms.append(category)
    if not terms:
        raise ConfigError("arxiv.categories is empty: expected categories such as ['cs.CV']")
    return terms


def harvest_queries(
    *, start: datetime, end: datetime, categories: Sequence[str], per_request: int
) -> list[str]:
    """The arXiv queries covering submissions in [start, end), one per group of categories."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("harvest window needs timezone-aware datetimes")
    if end <= start:
        raise ValueError(f"harvest window is empty: start {start} is not before end {end}")
    # arXiv's date range is inclusive at minute precision (in GMT), so [start, end) becomes
    # [start's minute TO the last minute before end].
    first = start.astimezone(UTC)
    last = (end.astimezone(UTC) - timedelta(microseconds=1)).replace(second=0, microsecond=0)
    window = f"submittedDate:[{first:%Y%m%d%H%M} TO {last:%Y%m%d%H%M}]"
    terms = expand_categories(categories)
    size = max(1, per_request)
    return [
        "(" + " OR ".join(f"cat:{c}" for c in terms[i : i + size]) + f") AND {window}"
        for i in range(0, len(terms), size)
    ]


def backfill_queries(query: str, *, categories: Sequence[str], per_request: int) -> list[str]:
    """A keyword's backfill queries: `(query) AND (cat:A OR ...)`, one per category group.

    The groups are the harvest's (`harvest_queries`), so a backfill finds the papers the daily
    harvest would have found; `["all"]` needs no category filter at all.
    """
    if any(c.strip().lower() == "all" for c in categories):
        return [query]
    terms = expand_categories(categories)
    size = max(1, per_request)
    return [
        f"({query}) AND (" + " OR ".join(f"cat:{c}" for c in terms[i : i + size]) + ")"
        for i in range(0, len(terms), size)
    ]


def in_categories(paper: Paper, terms: Sequence[str]) -> bool:
    """Whether any of the paper's categories is one of these category terms (`expand_categories`
    output: `cs.CV`, `math.*`, `astro-ph*`), as arXiv's `cat:` search answers it."""
    for category in paper.categories or (paper.primary_category,):
        for term in terms:
            if term.endswith("*"):
                if category.startswith(term[:-1]):
                    return True
            elif category == term:
                return True
    return False


def build_query_url(
    api_url: str,
    *,
    query: str,
    sort_by: SortBy,
    sort_order: SortOrder,
    start: int,
    max_results: int,
    id_list: Sequence[str] = (),
) -> str:
    """The URL of one page of a query, in arXiv's documented parameters (urlencoded); with
    `id_list` (and an empty query) the page of those papers."""
    fields: dict[str, str | int] = {
        "search_query": query,
        "sortBy": sort_by,
        "sortOrder": sort_order,
        "start": start,
        "max_results": max_results,
    }
    if id_list:
        fields["id_list"] = ",".join(id_list)
    params = urlencode(fields)
    joiner = "&" if "?" in api_url else "?"
    return f"{api_url}{joiner}{params}"


def _collapse(text: str | None) -> str:
    """One line: the classic feed hard-wraps titles and abstracts with indented continuations."""
    return _WHITESPACE.sub(" ", text or "").strip()


def _xml_parser(*, recover: bool) -> etree.XMLParser:
    """lxml's parser for API answers: no entities, no network access."""
    # The body comes from whatever answers at the configured API URL: trust nothing in it.
    return etree.XMLParser(resolve_entities=False, no_network=True, recover=recover)


def arxiv_error_message(body: bytes) -> str | None:
    """arXiv's error text when the body is its error feed (entry id with `/api/errors#`)."""
    if _ERROR_ID.encode() not in body:
        return None
    try:
        root = etree.fromstring(body, parser=_xml_parser(recover=True))
    except etree.XMLSyntaxError:
        return None
    if root is None:
        return None
    for entry in root.iter(f"{_ATOM}entry"):
        entry_id = entry.findtext(f"{_ATOM}id") or ""
        if _ERROR_ID in entry_id:
            summary = _collapse(entry.findtext(f"{_ATOM}summary"))
            return summary or entry_id.split("#", 1)[1].replace("_", " ")
    return None


class MalformedPage(Exception):
    """An answer that is not a complete arXiv Atom page; the message is a short reason.

    Never leaves `ArxivSource`: the page is asked for again, and after the retries the failure
    becomes an `ArxivError`.
    """


def parse_page(body: bytes) -> Page:
    """One API answer as `Paper`s; `MalformedPage` unless it is a complete, readable Atom page.

    Strict: well-formed XML (a cut body, invalid UTF-8 or broken markup is refused, never
    "recovered" into fewer entries), an Atom `<feed>` root with a numeric totalResults, and
    every `<entry>` with an id and readable dates (an entry without them would pass as a short
    page). An entry whose id is not an arXiv identifier is listed in `Page.skipped`.
    """
    if not body.strip():
        raise MalformedPage("empty body")
    if _ATOM_NS not in body:
        # A proxy's or captive portal's HTML page would otherwise parse as "0 results".
        raise MalformedPage("not an Atom feed")
    try:
        root = etree.fromstring(body, parser=_xml_parser(recover=False))
    except etree.XMLSyntaxError as exc:
        raise MalformedPage(f"not well-formed XML ({_shorten(exc.msg)})") from exc
    if root.tag != f"{_ATOM}feed":
        raise MalformedPage(f"not an Atom feed (root element {_shorten(str(root.tag))})")
    try:
        total_results = int((_text(root, f"{_OPENSEARCH}totalResults") or "").strip())
    except ValueError:
        raise MalformedPage("no numeric opensearch:totalResults") from None
    papers: list[Paper] = []
    skipped: list[str] = []
    entries = incomplete = 0
    for entry in root.iterfind(f"{_ATOM}entry"):
        entries += 1
        entry_id = _text(entry, f"{_ATOM}id")
        if not entry_id:
            incomplete += 1
            continue
        try:
            updated = _parse_datetime(_text(entry, f"{_ATOM}updated"))
            published = _parse_datetime(_text(entry, f"{_ATOM}published"))
        except (ValueError, OverflowError) as exc:
            raise MalformedPage(
                f"unreadable entry ({type(exc).__name__}: {_shorten(str(exc))})"
            ) from exc
        if updated is None or published is None:
            incomplete += 1
            continue
        try:
            arxiv_id, version = split_arxiv_id(entry_id)
        except ValueError:
            skipped.append(entry_id)  # arXiv did send it: the caller counts it as received
            continue
        papers.append(_paper_from_entry(entry, arxiv_id, version, published, updated))
    if incomplete:
        raise MalformedPage(f"{incomplete} of {entries} entries lack an id or a date")
    return Page(
        papers=tuple(papers),
        total_results=total_results,
        # Informational only (nothing is decided on them), so as lenient as arXiv's own
        # clients: absent or not a number reads as 0.
        start_index=_header_number(root, "startIndex"),
        items_per_page=_header_number(root, "itemsPerPage"),
        skipped=tuple(skipped),
    )


# `etree._Element` below is the element class lxml documents as public, underscore and all
# (https://lxml.de/api/lxml.etree._Element-class.html); lxml ships no types, so mypy sees Any.
def _paper_from_entry(
    entry: etree._Element, arxiv_id: str, version: int, published: datetime, updated: datetime
) -> Paper:
    """An `<entry>`'s fields as a `Paper`: whitespace collapsed, categories deduplicated,
    empty optional fields None, the first category standing in for a missing primary one."""
    categories = tuple(
        dict.fromkeys(term for c in entry.iterfind(f"{_ATOM}category") if (term := c.get("term")))
    )
    primary = entry.find(f"{_ARXIV}primary_category")
    primary_category = primary.get("term") if primary is not None else None
    return Paper(
        arxiv_id=arxiv_id,
        version=version,
        title=_collapse(_text(entry, f"{_ATOM}title")),
        authors=tuple(
            _collapse(_text(author, f"{_ATOM}name")) for author in entry.iterfind(f"{_ATOM}author")
        ),
        abstract=_collapse(_text(entry, f"{_ATOM}summary")),
        published=published,
        updated=updated,
        primary_category=primary_category or (categories[0] if categories else ""),
        categories=categories,
        comment=_collapse(_text(entry, f"{_ARXIV}comment")) or None,
        journal_ref=_collapse(_text(entry, f"{_ARXIV}journal_ref")) or None,
        doi=_collapse(_text(entry, f"{_ARXIV}doi")) or None,
    )


def _text(element: etree._Element, tag: str) -> str | None:
    """The text of `element`'s first `tag` child (None when there is no such child or no text).

    Only the text before a first nested element, as arXiv's plain-text fields never nest any.
    """
    child = element.find(tag)
    return None if child is None else child.text


def _parse_datetime(text: str | None) -> datetime | None:
    """An Atom date (RFC 3339: `2016-05-26T17:59:46Z`) as an aware UTC datetime; naive is UTC."""
    if text is None:
        return None
    when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def _header_number(root: etree._Element, name: str) -> int:
    """An opensearch number of the feed, 0 when absent or not a number."""
    try:
        return int((_text(root, f"{_OPENSEARCH}{name}") or "").strip())
    except ValueError:
        return 0


def _shorten(text: str) -> str:
    """One line of at most `_REASON_CHARS` characters."""
    line = _collapse(text)
    return line if len(line) <= _REASON_CHARS else line[: _REASON_CHARS - 1] + "…"


def _cut_reason(exc: requests.RequestException) -> str:
    """Why a body stopped short ("Connection broken: IncompleteRead(26 bytes read, ...)")."""
    inner = exc.args[0] if exc.args else None
    if isinstance(inner, BaseException) and inner.args:
        inner = inner.args[0]  # urllib3's ProtocolError(message, cause)
    return _shorten(str(inner)) if inner is not None else type(exc).__name__


# urllib3 prefixes its reasons with the connection object: "HTTPSConnection(host=..., port=443): "
_CONNECTION_PREFIX = re.compile(r"^\w*Connection\(host=[^)]*\):\s*")


def _connection_reason(exc: requests.ConnectionError) -> str:
    """Why the connection failed, as a person can act on it ("Failed to resolve 'host'...")."""
    inner = exc.args[0] if exc.args else None
    reason = getattr(inner, "reason", None) or inner  # urllib3's MaxRetryError wraps the cause
    text = _CONNECTION_PREFIX.sub("", _collapse(str(reason))) if reason is not None else ""
    return text[:200] or type(exc).__name__


_GAP_KEY = "arxiv"  # the key of the source's one politeness gap


class _Transient(Exception):
    """A failure worth retrying; `retry_after` is the server's requested wait, if any."""

    def __init__(self, reason: str, *, retry_after: float | None = None, empty: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.empty = empty


@dataclass
class _Run:
    """Counters and progress of one harvest/search call."""

    progress: Callable[[int, int], None] | None
    requests: int = 0
    throttled: int = 0
    received: int = 0  # entries received over all pages
    promised: int = 0  # totalResults over all queries so far
    query_promised: int = 0  # totalResults of the current query's first page
    retries: int = 0  # requests that repeated a failed one (each page's attempts but its first)

    def fetch(self, papers: dict[str, Paper]) -> Fetch:
        """What this run brought back, with its counts."""
        return Fetch(
            tuple(papers.values()), self.requests, self.throttled, self.promised, self.retries
        )

    @contextlib.contextmanager
    def counted_on_failure(self) -> Iterator[None]:
        """An ArxivError leaving this block carries the requests and retries made so far."""
        try:
            yield
        except ArxivError as exc:
            exc.requests = self.requests
            exc.retries = self.retries
            raise


class ArxivSource:
    """`PaperSource` backed by the arXiv API (or any server speaking its Atom format)."""

    def __init__(
        self,
        *,
        api_url: str,
        user_agent: str,
        delay_seconds: float,
        timeout_seconds: float,
        retries: int,
        backoff_max_seconds: float,
        page_size: int = MAX_PAGE_SIZE,
        categories_per_request: int = 25,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        jitter: bool = True,
    ) -> None:
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}, not {page_size}")
        self._api_url = api_url
        self._delay = max(0.0, delay_seconds)
        self._timeout = timeout_seconds
        self._retries = max(0, retries)
        self._backoff_max = backoff_max_seconds
        self._page_size = page_size
        self._per_request = max(1, categories_per_request)
        self._owns_session = session is None
        self._session = session if session is not None else requests.Session()
        self._session.headers["User-Agent"] = user_agent
        self._sleep = sleep
        self._clock = clock
        self._jitter = jitter
        # delay_seconds between the end of one answer and the next request, and none before a
        # Retry-After: one gap for the whole source (arXiv counts requests, not queries).
        self._gap = Gap(self._delay)
        self._lock = threading.Lock()  # one request at a time, whatever thread calls us

    @classmethod
    def from_settings(cls, settings: Settings) -> ArxivSource:
        """Build from `[arxiv]`; test mode skips every wait (delay and backoff are zero)."""
        cfg = settings.arxiv
        test_mode = settings.service.test_mode
        return cls(
            api_url=cfg.api_url,
            user_agent=build_user_agent(cfg.contact),
            delay_seconds=settings.arxiv_delay,
            timeout_seconds=cfg.timeout_seconds,
            retries=cfg.retries,
            backoff_max_seconds=cfg.backoff_max_seconds,
            page_size=cfg.page_size,
            categories_per_request=cfg.categories_per_request,
            sleep=_no_wait if test_mode else time.sleep,
            jitter=not test_mode,
        )

    # -- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        """Close the HTTP session (when this source created it)."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> ArxivSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- PaperSource ----------------------------------------------------------------------
    def harvest(
        self,
        *,
        start: datetime,
        end: datetime,
        categories: Sequence[str],
        progress: Callable[[int, int], None] | None = None,
    ) -> Fetch:
        """Everything submitted in [start, end) in these categories, oldest first.

        Raises `HarvestIncomplete` when a query brought back fewer distinct entries than arXiv
        promised: the caller must not advance its watermark.
        """
        queries = harvest_queries(
            start=start, end=end, categories=categories, per_request=self._per_request
        )
        run = _Run(progress=progress)
        papers: dict[str, Paper] = {}
        began = self._clock()
        for query in queries:
            with run.counted_on_failure():
                distinct = self._collect(
                    query,
                    sort_by="submittedDate",
                    sort_order="ascending",
                    limit=None,
                    run=run,
                    into=papers,
                )
                if distinct < run.query_promised:
                    raise HarvestIncomplete(
                        f"arXiv promised {run.query_promised} entries for {query!r} but "
                        f"{distinct} distinct entries arrived; the same window will be read again"
                    )
        log.info(
            "arxiv.harvest queries=%d papers=%d promised=%d requests=%d throttled=%d seconds=%.1f",
            len(queries),
            len(papers),
            run.promised,
            run.requests,
            run.throttled,
            self._clock() - began,
        )
        return run.fetch(papers)

    def search(
        self, query: str, *, limit: int, progress: Callable[[int, int], None] | None = None
    ) -> Fetch:
        """The latest `limit` papers by last update for an (already serialised) arXiv query."""
        run = _Run(progress=progress)
        papers: dict[str, Paper] = {}
        if limit <= 0:
            return Fetch((), 0, 0, 0)
        with run.counted_on_failure():
            distinct = self._collect(
                query,
                sort_by="lastUpdatedDate",
                sort_order="descending",
                limit=limit,
                run=run,
                into=papers,
            )
        expected = min(run.query_promised, limit)
        if distinct < expected:
            # A backfill is "the latest N": a short answer is logged, not fatal.
            log.warning(
                "arxiv.search_short query=%r expected=%d received=%d", query, expected, distinct
            )
        return run.fetch(papers)

    def fetch_ids(self, arxiv_ids: Sequence[str]) -> Fetch:
        """The latest version of each paper named (ids without versions), by arXiv's
        `id_list`, `ID_LIST_CHUNK` ids a request, paced like every other request.

        An id arXiv does not know is simply absent from the answer (arXiv sends an empty
        page for it); a malformed one is refused by arXiv (ArxivError with its message).
        """
        wanted = list(dict.fromkeys(arxiv_ids))
        run = _Run(progress=None)
        papers: dict[str, Paper] = {}
        for first in range(0, len(wanted), ID_LIST_CHUNK):
            chunk = wanted[first : first + ID_LIST_CHUNK]
            with run.counted_on_failure():
                self._collect(
                    "",
                    sort_by="relevance",
                    sort_order="descending",
                    limit=len(chunk),
                    run=run,
                    into=papers,
                    id_list=chunk,
                )
        log.info(
            "arxiv.fetch_ids asked=%d found=%d requests=%d", len(wanted), len(papers), run.requests
        )
        return run.fetch(papers)

    # -- internals ------------------------------------------------------------------------
    def _collect(
        self,
        query: str,
        *,
        sort_by: SortBy,
        sort_order: SortOrder,
        limit: int | None,
        run: _Run,
        into: dict[str, Paper],
        id_list: Sequence[str] = (),
    ) -> int:
        """Page through one query (at most `limit` entries); add its papers to `into` (highest
        version kept); return how many distinct entries arrived."""
        run.query_promised = 0
        distinct: set[str] = set()
        start = 0
        while limit is None or start < limit:
            # Never more than what is left to read: the last page of a search asks for the rest.
            wanted = self._page_size if limit is None else min(self._page_size, limit - start)
            url = build_query_url(
                self._api_url,
                query=query,
                sort_by=sort_by,
                sort_order=sort_order,
                start=start,
                max_results=wanted,
                id_list=id_list,
            )
            page = self._fetch_page(url, start=start, run=run)
            if page.entries == 0:
                break  # nothing was promised (`_fetch_once` retries any other empty page)
            for entry_id in page.skipped:
                # Counted as received (arXiv did deliver it) but unusable: skip, say so.
                log.warning("arxiv.skip entry_id=%s reason=unparseable-id", entry_id)
                distinct.add(entry_id)
            # A server sending more than it was asked for does not stretch a search's limit.
            kept = page.papers if limit is None else page.papers[: limit - start]
            for paper in kept:
                distinct.add(paper.arxiv_id)
                known = into.get(paper.arxiv_id)
                if known is None or paper.version > known.version:
                    into[paper.arxiv_id] = paper
            # From where this page stopped: a short page is completed by the next request.
            start += page.entries
            if start >= run.query_promised:
                break
        return len(distinct)

    def _fetch_page(self, url: str, *, start: int, run: _Run) -> Page:
        """One page, politely, with retries; raises ArxivError when it cannot be had."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self._retries + 1),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(_Transient),
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        before = run.requests
        try:
            page: Page = retrying(self._fetch_once, url, start, run)
        except _Transient as exc:
            attempts = self._retries + 1
            if exc.empty:
                raise HarvestIncomplete(
                    f"arXiv kept answering an empty page after {attempts} attempts while "
                    f"{run.query_promised} entries were promised ({self._describe(start)})"
                ) from exc
            raise ArxivError(
                f"arXiv request failed after {attempts} attempts: {exc.reason} "
                f"({self._describe(start)})"
            ) from exc
        finally:
            run.retries += max(0, run.requests - before - 1)
        if start == 0:  # a query's first page: what arXiv promises for the whole query
            run.query_promised = page.total_results
            run.promised += page.total_results
        run.received += page.entries
        if run.progress is not None:
            run.progress(run.received, run.promised)
        return page

    def _fetch_once(self, url: str, start: int, run: _Run) -> Page:
        """One HTTP request, classified: a page, a transient failure, or an error."""
        with self._lock:
            self._await_turn()
            run.requests += 1
            started = self._clock()
            try:
                response = self._session.get(url, timeout=self._timeout)
            except requests.Timeout as exc:
                self._log_request(url, "timeout", started)
                raise _Transient(f"timeout after {self._timeout:g} s") from exc
            except requests.ConnectionError as exc:
                self._log_request(url, "connection-error", started)
                raise _Transient(f"connection error: {_connection_reason(exc)}") from exc
            except (
                requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError,
            ) as exc:
                # The answer started but its body broke off (fewer bytes than Content-Length)
                # or does not decode: the same as a page cut short.
                self._log_request(url, "cut-off", started)
                raise _Transient(f"malformed answer: cut off ({_cut_reason(exc)})") from exc
            finally:
                self._gap.after(_GAP_KEY, self._clock())
        status = response.status_code
        self._log_request(url, str(status), started)
        body = response.content
        message = arxiv_error_message(body)
        if message is not None:
            # A bad query: asking again gives the same answer.
            raise ArxivError(
                f"arXiv rejected the request: {message} (HTTP {status}, {self._describe(start)})"
            )
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if retry_after is not None and retry_after > self._backoff_max:
            if status == 429:
                run.throttled += 1
            raise ArxivError(
                f"arXiv asked us to wait {retry_after:g} s (HTTP {status}, Retry-After), longer "
                f"than arxiv.backoff_max_seconds = {self._backoff_max:g}; try again later"
            )
        if status == 429:
            run.throttled += 1
            raise _Transient("HTTP 429 (rate limited)", retry_after=retry_after)
        if status >= 500:
            raise _Transient(f"HTTP {status}", retry_after=retry_after)
        if status != 200:
            raise ArxivError(f"arXiv answered HTTP {status} for {self._describe(start)}")
        try:
            page = parse_page(body)
        except MalformedPage as exc:
            raise _Transient(f"malformed answer: {exc}") from exc
        if page.entries == 0 and (start > 0 or page.total_results > 0):
            # arXiv sporadically answers an empty page in the middle of a result set.
            raise _Transient("empty page", empty=True)
        return page

    def _await_turn(self) -> None:
        """Sleep until `delay_seconds` after the previous answer and past any Retry-After."""
        pause = self._gap.reserve(_GAP_KEY, self._clock())
        if pause > 0:
            self._sleep(pause)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """Seconds before the next attempt: Retry-After when given, else exponential + jitter."""
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            # Also a floor for the politeness gate, whatever else sleeps in between.
            self._gap.defer(_GAP_KEY, self._clock(), exc.retry_after)
            return float(exc.retry_after)
        backoff: float = _BACKOFF_INITIAL * 2.0 ** (state.attempt_number - 1)
        if self._jitter:
            backoff += random.uniform(0, _BACKOFF_INITIAL)  # noqa: S311 -- jitter, not crypto
        return min(self._backoff_max, backoff)

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        reason = exc.reason if isinstance(exc, _Transient) else repr(exc)
        log.warning(
            "arxiv.retry attempt=%d wait=%.2f reason=%s", state.attempt_number, wait, reason
        )

    def _describe(self, start: int) -> str:
        """A page short enough for an error line: the endpoint and the page's offset.

        The full URL (hundreds of characters of categories and dates) is in the request log.
        """
        endpoint = self._api_url.split("?", 1)[0]
        return f"{endpoint}, results from {start}"

    def _log_request(self, url: str, status: str, started: float) -> None:
        log.info(
            "arxiv.request url=%s status=%s seconds=%.2f", url, status, self._clock() - started
        )


def _no_wait(seconds: float) -> None:
    """Test mode's sleep: every delay and backoff is zero."""


__all__ = [
    "ALL_CATEGORIES",
    "ID_LIST_CHUNK",
    "ArxivSource",
    "Fetch",
    "MalformedPage",
    "Page",
    "PaperSource",
    "SortBy",
    "SortOrder",
    "arxiv_error_message",
    "backfill_queries",
    "build_query_url",
    "build_user_agent",
    "expand_categories",
    "harvest_queries",
    "in_categories",
    "parse_page",
]
