"""arXiv ids from a reference manager's export (BibTeX or RIS): `like:` seeds from a library.

Pure (text in, ids out). A reader who keeps the topic's papers in Zotero, Mendeley, JabRef or
Google Scholar exports them and runs `daily-papers subscriptions add TARGET --like-from FILE`.
Where exporters put an arXiv preprint's id, as seen in their output:

- BibTeX: `eprint = {2501.09733}` with `archivePrefix = {arXiv}` (or `eprinttype = {arxiv}`;
  Better BibTeX, JabRef, arXiv's own "Export BibTeX citation"), `doi = {10.48550/arXiv.ID}`
  (Zotero, DataCite DOIs arXiv mints since 2022), `url = {http://arxiv.org/abs/ID}` (Zotero),
  `journal = {arXiv preprint arXiv:ID}` (Google Scholar), `note = {arXiv:ID [cs]}` (Zotero),
  `howpublished`;
- RIS: `UR  - http://arxiv.org/abs/ID`, `DO  - 10.48550/arXiv.ID`, `N1  - arXiv:ID [cs]`,
  `JO`/`T2  - arXiv preprint arXiv:ID`, links (`L1`, `L2`), `M1`, `AN`...

Titles, abstracts, keywords and authors are never read: an abstract that cites another arXiv
paper does not make that paper a seed. An entry with no arXiv id (a journal article, a book)
is counted and left out; versions are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from digest.domain import split_arxiv_id

# An arXiv identifier with an optional version: 2501.09733, 0704.0001v2, hep-th/9901001,
# math.GT/0309136.
_ID = r"(\d{4}\.\d{4,5}(?:v\d+)?|[a-z][a-z\-]*(?:\.[A-Za-z\-]{2,})?/\d{7}(?:v\d+)?)"
_IN_TEXT = (
    re.compile(r"arxiv\.org/(?:abs|pdf)/" + _ID, re.IGNORECASE),  # abs and pdf links
    re.compile(r"10\.48550/arxiv\." + _ID, re.IGNORECASE),  # arXiv's DataCite DOI
    re.compile(r"\barxiv(?:\s+preprint)?\s*:?\s*(?:arxiv\s*:\s*)?" + _ID, re.IGNORECASE),
)
_EXACT = re.compile(_ID + r"\Z")

# BibTeX fields that may carry the id (eprint is handled apart: it needs its prefix).
_BIBTEX_FIELDS = ("doi", "url", "journal", "journaltitle", "note", "howpublished", "pages")
# RIS tags never read: the text of the paper and its people, not where it lives.
_RIS_SKIPPED = {"TY", "ER", "TI", "T1", "ST", "AB", "N2", "KW", "AU", "A1", "A2", "A3", "A4"}

_RIS_LINE = re.compile(r"^([A-Z][A-Z0-9])  -(?: (.*))?$")
_BIBTEX_ENTRY = re.compile(r"@\s*([A-Za-z]+)\s*[{(]")
_BIBTEX_FIELD = re.compile(r"([A-Za-z][\w\-]*)\s*=\s*")


@dataclass(frozen=True, slots=True)
class ExportedIds:
    """What an export holds: the arXiv ids of its entries, and how many entries had none."""

    ids: tuple[str, ...]  # distinct, without versions, in the file's order
    entries: int  # references in the file
    without_id: int  # references with no arXiv id (journal articles, books...), left out


def _normalise(raw: str) -> str | None:
    """The id without its version, or None when it is not an arXiv id."""
    try:
        return split_arxiv_id(raw)[0]
    except ValueError:
        return None


def _find_id(text: str) -> str | None:
    """The first arXiv id a field's text names as one (link, DOI, `arXiv:` mention)."""
    for pattern in _IN_TEXT:
        found = pattern.search(text)
        if found is not None:
            normal = _normalise(found.group(1))
            if normal is not None:
                return normal
    return None


def _bibtex_value(text: str, start: int) -> tuple[str, int]:
    """A field value at `start` (`{...}` nested, `"..."`, or a bare word) and where it ends."""
    if start < len(text) and text[start] in "{":
        depth, index = 0, start
        while index < len(text):
            if text[index] == "{":
                depth += 1
            elif text[index] == "}":
                depth -= 1
                if depth == 0:
                    return text[start + 1 : index], index + 1
            index += 1
        return text[start + 1 :], len(text)
    if start < len(text) and text[start] == '"':
        end = text.find('"', start + 1)
        end = len(text) if end == -1 else end
        return text[start + 1 : end], end + 1
    match = re.compile(r"[^,}\s]*").match(text, start)
    end = match.end() if match else start
    return text[start:end], end


def _bibtex_entries(text: str) -> Iterator[dict[str, str]]:
    """Each reference's fields (names lower-cased, braces kept), skipping @comment,
    @string and @preamble."""
    for entry in _BIBTEX_ENTRY.finditer(text):
        if entry.group(1).lower() in {"comment", "string", "preamble"}:
            continue
        body_start = entry.end()
        following = _BIBTEX_ENTRY.search(text, body_start)
        body = text[body_start : following.start() if following else len(text)]
        fields: dict[str, str] = {}
        index = body.find(",")  # after the citation key
        while index != -1:
            field = _BIBTEX_FIELD.search(body, index)
            if field is None:
                break
            value, index = _bibtex_value(body, field.end())
            fields[field.group(1).lower()] = value.replace("{", "").replace("}", "")
        yield fields


def _bibtex_id(fields: dict[str, str]) -> str | None:
    """The entry's arXiv id: eprint (of an arXiv entry) first, then the other fields."""
    eprint = fields.get("eprint", "").strip()
    prefix = (fields.get("archiveprefix") or fields.get("eprinttype") or "arxiv").strip()
    if eprint and prefix.lower() == "arxiv":
        found = _EXACT.match(re.sub(r"^arxiv:\s*", "", eprint, flags=re.IGNORECASE))
        normal = _normalise(found.group(1)) if found else None
        if normal is not None:
            return normal
    for name in _BIBTEX_FIELDS:
        if name in fields:
            normal = _find_id(fields[name])
            if normal is not None:
                return normal
    return None


def _ris_records(text: str) -> Iterator[list[tuple[str, str]]]:
    """Each RIS record's (tag, value) lines, from `TY  -` to `ER  -`."""
    record: list[tuple[str, str]] = []
    for line in text.splitlines():
        match = _RIS_LINE.match(line.strip("\ufeff").rstrip())
        if match is None:
            continue
        tag, value = match.group(1), match.group(2) or ""
        if tag == "TY":
            record = []
        record.append((tag, value))
        if tag == "ER":
            yield record
            record = []
    if record:
        yield record


def _ris_id(record: list[tuple[str, str]]) -> str | None:
    """The record's arXiv id from its links, DOI and notes (never its title or abstract)."""
    for tag, value in record:
        if tag not in _RIS_SKIPPED:
            normal = _find_id(value)
            if normal is not None:
                return normal
    return None


def is_ris(text: str) -> bool:
    """Whether the export is RIS (it opens a record with `TY  -`) rather than BibTeX."""
    return any(
        _RIS_LINE.match(line.strip("\ufeff").rstrip()) and line.lstrip("\ufeff").startswith("TY")
        for line in text.splitlines()
    )


def arxiv_ids_from_export(text: str) -> ExportedIds:
    """The arXiv ids of a BibTeX or RIS export's references (see the module docstring)."""
    if is_ris(text):
        found = [_ris_id(record) for record in _ris_records(text)]
    else:
        found = [_bibtex_id(fields) for fields in _bibtex_entries(text)]
    ids = tuple(dict.fromkeys(arxiv_id for arxiv_id in found if arxiv_id is not None))
    return ExportedIds(
        ids=ids, entries=len(found), without_id=sum(1 for item in found if item is None)
    )


__all__ = ["ExportedIds", "arxiv_ids_from_export", "is_ris"]
