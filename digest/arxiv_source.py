"""The only code that talks to arXiv: a polite, robust page fetcher under the `arxiv` package.

Design: `arxiv.Client` keeps doing what it is good at (building query URLs, paging through
`results()`, parsing the Atom feed into `arxiv.Result`). One of its hooks, `_parse_feed(url)`,
fetches a single page; `_PoliteClient` overrides it and hands the page to `ArxivSource`, which
adds what the package lacks:

- one `requests.Session` (one kept-alive connection) with a User-Agent naming the project and
  the operator's contact, and a request timeout;
- a monotonic-clock gap of at least `delay_seconds` between any two requests, retries included;
- arXiv's error entry (`<id>` containing `/api/errors#`, sent with HTTP 400 or 200) detected in
  the raw bytes and raised as `ArxivError` with arXiv's own text (the package silently drops
  that entry because it has no `<published>`); a bad query is not retried;
- retries with exponential backoff and jitter on 429, 5xx, timeouts, connection errors,
  malformed and unexpectedly empty pages, with `Retry-After` obeyed. A page is checked strictly
  before the package parses it (`parse_page`): the package reads XML in lxml's recover mode, so
  a body cut mid-entry would pass as a shorter page, and a cut date raises a bare ValueError.

Retries use tenacity, the maintained engine under stamina, directly: stamina's synchronous retry
loop always sleeps through `time.sleep` and its only test knob is a process-global switch
(`stamina.set_testing`), whereas `tenacity.Retrying(sleep=...)` takes the injected sleep, so
tests run on a fake clock with zero real waiting and production never depends on a test global.

Sleep and clock are injected; with `service.test_mode` `from_settings` skips every wait (delays
and backoff are zero; timeouts still apply).
"""

from __future__ import annotations

import contextlib
import email.utils
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
from typing import Protocol

import arxiv
import requests
import tenacity
from arxiv import _feed
from lxml import etree  # type: ignore[import-untyped]  # arxiv's own parser; no stubs shipped

from digest import __version__
from digest.config import Settings
from digest.domain import Paper, split_arxiv_id
from digest.errors import ArxivError, ConfigError, HarvestIncomplete

log = logging.getLogger(__name__)

PROJECT_NAME = "daily-papers"
MAX_PAGE_SIZE = 2000  # arXiv's documented maximum of max_results per request

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
_ATOM = "{http://www.w3.org/2005/Atom}"
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


def paper_from_result(result: arxiv.Result) -> Paper:
    """Convert a parsed feed entry to a `Paper` (id and version split, whitespace collapsed)."""
    arxiv_id, version = split_arxiv_id(result.entry_id)
    categories = tuple(dict.fromkeys(c for c in result.categories if c))
    return Paper(
        arxiv_id=arxiv_id,
        version=version,
        title=_collapse(result.title),
        authors=tuple(_collapse(a.name) for a in result.authors),
        abstract=_collapse(result.summary),
        published=result.published,
        updated=result.updated,
        primary_category=result.primary_category or (categories[0] if categories else ""),
        categories=categories,
        comment=_collapse(result.comment) or None,
        journal_ref=_collapse(result.journal_ref) or None,
        doi=_collapse(result.doi) or None,
    )


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


def parse_page(body: bytes) -> _feed.ParsedFeed:
    """Parse one API answer; `MalformedPage` unless it is a complete, readable Atom page.

    Strict where the package is lenient: well-formed XML (a cut body, invalid UTF-8 or broken
    markup is refused, never "recovered" into fewer entries), an Atom `<feed>` root with a
    numeric totalResults, and every `<entry>` readable (the package raises on a bad date and
    silently drops an entry without an id or dates, which would pass as a short page).
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
        int((root.findtext(f"{_OPENSEARCH}totalResults") or "").strip())
    except ValueError:
        raise MalformedPage("no numeric opensearch:totalResults") from None
    entries = len(root.findall(f"{_ATOM}entry"))
    del root  # a 2,000-entry tree: never hold it while the package builds its own
    try:
        feed = _feed.parse(body)
    except Exception as exc:  # the package's parser on foreign bytes: any failure is the page's
        raise MalformedPage(
            f"unreadable entry ({type(exc).__name__}: {_shorten(str(exc))})"
        ) from exc
    if feed.malformed:
        raise MalformedPage(f"unreadable feed ({_shorten(str(feed.error))})")
    if len(feed.results) != entries:
        raise MalformedPage(
            f"{entries - len(feed.results)} of {entries} entries lack an id or a date"
        )
    return feed


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


def _retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds: either a number or an HTTP date."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


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


class _PoliteClient(arxiv.Client):  # type: ignore[misc]  # arxiv ships no type information
    """`arxiv.Client` whose page fetch goes through `ArxivSource` (delay, retries, errors)."""

    def __init__(self, *, source: ArxivSource, run: _Run, api_url: str, page_size: int) -> None:
        # The package's own delay and retries are off: ArxivSource enforces both.
        super().__init__(page_size=page_size, delay_seconds=0.0, num_retries=0)
        self._session.close()  # never used; ArxivSource owns the one session
        self._source = source
        self._run = run
        joiner = "&" if "?" in api_url else "?"
        # query_url_format is a str.format template: braces in the URL must be doubled.
        self.query_url_format = api_url.replace("{", "{{").replace("}", "}}") + joiner + "{}"

    def _parse_feed(
        self, url: str, first_page: bool = True, _try_index: int = 0
    ) -> _feed.ParsedFeed:
        return self._source._fetch_page(url, first_page=first_page, run=self._run)


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
        self._last_request: float | None = None  # clock() when the previous answer ended
        self._not_before: float = float("-inf")
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
            search = arxiv.Search(
                query=query,
                max_results=None,
                sort_by=arxiv.SortCriterion.SubmittedDate,
                sort_order=arxiv.SortOrder.Ascending,
            )
            with run.counted_on_failure():
                distinct = self._collect(search, run=run, page_size=self._page_size, into=papers)
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
        search = arxiv.Search(
            query=query,
            max_results=limit,
            sort_by=arxiv.SortCriterion.LastUpdatedDate,
            sort_order=arxiv.SortOrder.Descending,
        )
        with run.counted_on_failure():
            distinct = self._collect(
                search, run=run, page_size=min(self._page_size, limit), into=papers
            )
        expected = min(run.query_promised, limit)
        if distinct < expected:
            # A backfill is "the latest N": a short answer is logged, not fatal.
            log.warning(
                "arxiv.search_short query=%r expected=%d received=%d", query, expected, distinct
            )
        return run.fetch(papers)

    # -- internals ------------------------------------------------------------------------
    def _collect(
        self, search: arxiv.Search, *, run: _Run, page_size: int, into: dict[str, Paper]
    ) -> int:
        """Page through one query; add its papers to `into`; return its distinct entry count."""
        client = _PoliteClient(source=self, run=run, api_url=self._api_url, page_size=page_size)
        run.query_promised = 0
        distinct: set[str] = set()
        results: Iterator[arxiv.Result] = client.results(search)
        for result in results:
            try:
                paper = paper_from_result(result)
            except ValueError:
                # Counted as received (arXiv did deliver it) but unusable: skip, say so.
                log.warning("arxiv.skip entry_id=%s reason=unparseable-id", result.entry_id)
                distinct.add(result.entry_id)
                continue
            distinct.add(paper.arxiv_id)
            known = into.get(paper.arxiv_id)
            if known is None or paper.version > known.version:
                into[paper.arxiv_id] = paper
        return len(distinct)

    def _fetch_page(self, url: str, *, first_page: bool, run: _Run) -> _feed.ParsedFeed:
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
            feed: _feed.ParsedFeed = retrying(self._fetch_once, url, first_page, run)
        except _Transient as exc:
            attempts = self._retries + 1
            if exc.empty:
                raise HarvestIncomplete(
                    f"arXiv kept answering an empty page after {attempts} attempts while "
                    f"{run.query_promised} entries were promised ({_describe(url)})"
                ) from exc
            raise ArxivError(
                f"arXiv request failed after {attempts} attempts: {exc.reason} ({_describe(url)})"
            ) from exc
        finally:
            run.retries += max(0, run.requests - before - 1)
        if first_page:
            run.query_promised = feed.header.total_results
            run.promised += feed.header.total_results
        run.received += len(feed.results)
        if run.progress is not None:
            run.progress(run.received, run.promised)
        return feed

    def _fetch_once(self, url: str, first_page: bool, run: _Run) -> _feed.ParsedFeed:
        """A single HTTP request and its classification: feed, transient failure, or error."""
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
                self._last_request = self._clock()
        status = response.status_code
        self._log_request(url, str(status), started)
        body = response.content
        message = arxiv_error_message(body)
        if message is not None:
            # A bad query: asking again gives the same answer.
            raise ArxivError(
                f"arXiv rejected the request: {message} (HTTP {status}, {_describe(url)})"
            )
        retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
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
            raise ArxivError(f"arXiv answered HTTP {status} for {_describe(url)}")
        try:
            feed = parse_page(body)
        except MalformedPage as exc:
            raise _Transient(f"malformed answer: {exc}") from exc
        start = _start_of(url)
        if not feed.results and (not first_page or feed.header.total_results > start):
            # arXiv sporadically answers an empty page in the middle of a result set.
            raise _Transient("empty page", empty=True)
        return feed

    def _await_turn(self) -> None:
        """Sleep until `delay_seconds` after the previous answer and past any Retry-After."""
        now = self._clock()
        due = self._not_before
        if self._last_request is not None:
            due = max(due, self._last_request + self._delay)
        if due > now:
            self._sleep(due - now)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """Seconds before the next attempt: Retry-After when given, else exponential + jitter."""
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            # Also a floor for the politeness gate, whatever else sleeps in between.
            self._not_before = self._clock() + exc.retry_after
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

    def _log_request(self, url: str, status: str, started: float) -> None:
        log.info(
            "arxiv.request url=%s status=%s seconds=%.2f", url, status, self._clock() - started
        )


def _describe(url: str) -> str:
    """A query URL short enough for an error line: the endpoint and the page's offset.

    The full URL (hundreds of characters of categories and dates) is in the request log.
    """
    endpoint = url.split("?", 1)[0]
    return f"{endpoint}, results from {_start_of(url)}"


def _start_of(url: str) -> int:
    """The `start=` parameter of a query URL (0 when absent)."""
    match = re.search(r"[?&]start=(\d+)", url)
    return int(match.group(1)) if match else 0


def _no_wait(seconds: float) -> None:
    """Test mode's sleep: every delay and backoff is zero."""


__all__ = [
    "ALL_CATEGORIES",
    "ArxivSource",
    "Fetch",
    "MalformedPage",
    "PaperSource",
    "backfill_queries",
    "build_user_agent",
    "expand_categories",
    "harvest_queries",
    "in_categories",
    "paper_from_result",
    "parse_page",
]
