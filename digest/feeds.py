"""Atom feeds per keyword and the OPML list of them, written next to the README snapshot.

Building is pure (`build_feed`, `build_opml`, `build_feeds`: papers and settings in, bytes out);
`write_feeds` writes them into `feeds/` next to the README with the README's atomic write, only
where the bytes changed, and removes the feeds of keywords no longer published. The web server
serves the same files under `/feeds/` (`read_feed`), so the files are the one source of truth.

Every value in a feed derives from the papers (a feed's <updated> is its newest paper's, never
the clock), so an unchanged keyword gives identical bytes and nothing is rewritten.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from feedgen.ext.base import BaseEntryExtension, BaseExtension
from feedgen.feed import FeedGenerator
from lxml import etree  # type: ignore[import-untyped]  # lxml ships no type information

from digest.domain import Paper
from digest.query import query_key
from digest.readme import (
    OPML_NAME,
    ReadmeError,
    feed_name,
    latest_papers,
    write_text_atomic,
)
from digest.render import collapse_ws

logger = logging.getLogger(__name__)

ATOM_SUFFIX = ".atom"  # what digest.readme.feed_name ends with
ATOM_TYPE = "application/atom+xml"
OPML_TYPE = "text/x-opml"
DEFAULT_ENTRIES = 100  # like the README's rows per keyword (readme.max_papers)
ARXIV_SCHEME = "http://arxiv.org/schemas/atom"  # the scheme of categories in arXiv's own Atom
# RFC 4287 requires an <updated>; a keyword without papers has no time of its own, and the
# clock would change the bytes on every run. The epoch says "never" and stays put.
EMPTY_FEED_UPDATED = datetime(1970, 1, 1, tzinfo=UTC)
# A stable namespace for feed ids (uuid5 of the keyword's normalised query).
FEED_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/daily-papers/feeds")

# What feed_name (page_slug: readable part, "-", six hex digits) and OPML_NAME make: only
# such files are served, and only such *.atom files are ever removed from the folder.
_FEED_NAME = re.compile(r"[a-z0-9-]+-[0-9a-f]{6}\.atom|index\.opml")
# XML 1.0 cannot carry these code points at all (lxml refuses them): arXiv text rarely has one.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class FeedFile:
    """One file of the feeds folder: its name there, its keyword (None for the OPML), text."""

    name: str
    keyword: str | None
    text: str


class _EntryLinks(BaseEntryExtension):  # type: ignore[misc]  # feedgen is untyped
    """An entry's further links, with their rel and type: feedgen 1.0.0's own entry links lose
    both (its loop variable shadows the link it reads them from), so a second link would be a
    second untyped alternate, against RFC 4287. Written through feedgen's extension hook; the
    one alternate link stays feedgen's (a link without rel is the alternate, RFC 4287 4.2.7.2)."""

    def __init__(self) -> None:
        self.links: list[dict[str, str]] = []

    def extend_atom(self, entry: Any) -> Any:
        """Append the links to the entry's element."""
        for attributes in self.links:
            etree.SubElement(entry, "link", **attributes)
        return entry


LINKS_EXTENSION = "daily_papers_links"


def feed_id(keyword: str) -> str:
    """A keyword's feed id (RFC 4287 atom:id): stable across runs, renames of the base URL and
    spellings of the same query ("A AND b" and "a and B" are one keyword)."""
    return f"urn:uuid:{uuid.uuid5(FEED_ID_NAMESPACE, query_key(keyword))}"


def entry_id(paper: Paper) -> str:
    """A paper's entry id: its arXiv abstract URL without the version, so a new version
    updates the same entry instead of adding one."""
    return f"https://arxiv.org/abs/{paper.arxiv_id}"


def feed_url(name: str, base_url: str) -> str:
    """Where a file of the feeds folder is read: under `base_url` when one is known, else
    relative to the other files of the folder."""
    return f"{base_url.rstrip('/')}/{name}" if base_url else name


def _xml_text(text: str | None) -> str:
    """Collapsed to one line, without the code points XML 1.0 cannot carry."""
    return collapse_ws(_NOT_XML.sub("", text or ""))


@dataclass(frozen=True, slots=True)
class PaperText:
    """A paper's text as its entries carry it, cleaned once however many feeds show it."""

    title: str
    authors: tuple[str, ...]
    abstract: str


TextCache = MutableMapping[tuple[str, int], PaperText]  # by (arxiv_id, version)


def _paper_text(paper: Paper, cache: TextCache) -> PaperText:
    key = (paper.arxiv_id, paper.version)
    text = cache.get(key)
    if text is None:
        authors = tuple(a for a in map(_xml_text, paper.authors) if a)
        text = PaperText(_xml_text(paper.title), authors, _xml_text(paper.abstract))
        cache[key] = text
    return text


def build_feed(
    keyword: str,
    papers: Sequence[Paper],
    *,
    entries: int = DEFAULT_ENTRIES,
    base_url: str = "",
    home_url: str = "",
    texts: TextCache | None = None,
) -> str:
    """The Atom feed of a keyword: its newest `entries` papers, newest first.

    Each entry: the paper's title, every author (structured data: a reader or Zotero makes a
    creator of each, as from arXiv's own Atom API), the abstract as plain-text summary, the
    abstract page (alternate) and the PDF (related), its categories, published and updated
    times. `base_url` (the public folder of the feeds) makes the self link absolute;
    `home_url` (the README's public page) becomes the feed's alternate link. `texts` keeps
    the papers' cleaned text across the feeds of one run (a paper is in many feeds).
    """
    texts = {} if texts is None else texts
    shown = latest_papers(papers, entries)
    name = _xml_text(keyword)
    fg = FeedGenerator()
    fg.register_extension(LINKS_EXTENSION, BaseExtension, _EntryLinks, atom=True, rss=False)
    fg.id(feed_id(keyword))
    fg.title(f"arXiv papers: {name}")
    fg.subtitle(f"The latest arXiv papers matching {name}, newest first.")
    fg.updated(max((p.updated for p in shown), default=EMPTY_FEED_UPDATED).astimezone(UTC))
    fg.author({"name": "daily-papers"})  # RFC 4287: a feed needs one when an entry has none
    fg.generator("daily-papers")  # no version: an upgrade alone must not rewrite every feed
    fg.link(href=feed_url(feed_name(keyword), base_url), rel="self", type=ATOM_TYPE)
    if home_url:
        fg.link(href=home_url, rel="alternate", type="text/html")
    for paper in shown:
        text = _paper_text(paper, texts)
        entry = fg.add_entry(order="append")
        entry.id(entry_id(paper))
        entry.title(text.title)
        entry.updated(paper.updated.astimezone(UTC))
        entry.published(paper.published.astimezone(UTC))
        if text.authors:
            entry.author([{"name": author} for author in text.authors])
        entry.summary(text.abstract, type="text")
        entry.link(href=paper.abs_url, rel="alternate")
        getattr(entry, LINKS_EXTENSION).links = [
            {"href": paper.pdf_url, "rel": "related", "type": "application/pdf", "title": "PDF"},
        ]
        categories = dict.fromkeys((paper.primary_category, *paper.categories))
        entry.category([{"term": c, "scheme": ARXIV_SCHEME} for c in categories if c])
    data: bytes = fg.atom_str(pretty=True, encoding="UTF-8", xml_declaration=True)
    return data.decode("utf-8")


def build_opml(keywords: Sequence[str], *, base_url: str = "", home_url: str = "") -> str:
    """The OPML 2.0 list of every keyword's feed, in the README's order: a feed reader
    subscribes to all of them in one import."""
    root = ET.Element("opml", version="2.0")
    head = ET.SubElement(root, "head")
    ET.SubElement(head, "title").text = "daily-papers: arXiv feeds per keyword"
    body = ET.SubElement(root, "body")
    for keyword in keywords:
        text = _xml_text(keyword)
        outline = ET.SubElement(body, "outline", type="rss", text=text, title=text)
        outline.set("xmlUrl", feed_url(feed_name(keyword), base_url))
        if home_url:
            outline.set("htmlUrl", home_url)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def build_feeds(
    sections: Sequence[tuple[str, Sequence[Paper]]],
    *,
    entries: int = DEFAULT_ENTRIES,
    base_url: str = "",
    home_url: str = "",
) -> Iterator[FeedFile]:
    """Every keyword's feed, then the OPML that lists them, for (keyword, papers) pairs.

    One at a time, as they are written: a feed of 100 papers is ~200 kB, and thousands of
    keywords' feeds must never sit in memory together.
    """
    texts: TextCache = {}
    for keyword, papers in sections:
        text = build_feed(
            keyword, papers, entries=entries, base_url=base_url, home_url=home_url, texts=texts
        )
        yield FeedFile(feed_name(keyword), keyword, text)
    keywords = [keyword for keyword, _ in sections]
    yield FeedFile(OPML_NAME, None, build_opml(keywords, base_url=base_url, home_url=home_url))


def write_feeds(folder: Path, files: Iterable[FeedFile]) -> bool:
    """Write the feeds into `folder` where they changed; remove the `*.atom` files of keywords
    no longer there (nothing else in the folder is touched). True when any file changed."""
    changed = False
    keep: set[str] = set()
    for file in files:
        changed |= write_text_atomic(folder / file.name, file.text)
        keep.add(file.name)
    for old in sorted(folder.glob(f"*{ATOM_SUFFIX}")):
        if old.name in keep or not _FEED_NAME.fullmatch(old.name):
            continue  # not a name this service gives a feed: someone else's file
        try:
            old.unlink(missing_ok=True)
        except OSError as exc:
            raise ReadmeError(f"cannot remove the old feed {old}: {exc.strerror}") from exc
        logger.info("feeds.removed name=%s", old.name)
        changed = True
    return changed


def is_feed_name(name: str) -> bool:
    """Whether `name` can be a file of the feeds folder (no path, no traversal)."""
    return _FEED_NAME.fullmatch(name) is not None


def content_type(name: str) -> str:
    """The media type a file of the feeds folder is served as."""
    return f"{OPML_TYPE if name == OPML_NAME else ATOM_TYPE}; charset=utf-8"


@dataclass(frozen=True, slots=True)
class WrittenFeed:
    """A file of the feeds folder as written: its bytes and when they last changed."""

    data: bytes
    modified: datetime  # the file's mtime (UTC): write_feeds only touches a file that changed


def read_feed(folder: Path, name: str) -> WrittenFeed | None:
    """A written file of the feeds folder, or None when the name is not one or it is missing."""
    if not is_feed_name(name):
        return None
    path = folder / name
    try:
        with path.open("rb") as handle:  # bytes and mtime of the same file, even mid-replace
            data = handle.read()
            mtime = os.fstat(handle.fileno()).st_mtime
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except OSError as exc:
        raise ReadmeError(f"cannot read {path}: {exc.strerror}") from exc
    return WrittenFeed(data, datetime.fromtimestamp(mtime, UTC))
