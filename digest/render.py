"""The one Jinja2 environment of the project, and the text filters its templates share.

Every text a person reads that is longer than a line lives in `templates/` and is rendered
through `get_environment()`. Templates load from the installed `templates` package, so the same
code works from a checkout and from a wheel. HTML templates (`*.html`, `*.html.j2`) are
autoescaped; Markdown and plain text (`*.md.j2`, `*.txt.j2`) are not, and use the explicit
filters below where user text meets markup.

Filters registered on the environment:
- `md_cell`: text for a GitHub-flavoured Markdown table cell (one line, no `|`, HTML escaped).
- `md_link_text`: `md_cell` plus brackets, for the text of a `[text](url)` link.
- `md_inline`: text inside one Markdown paragraph (one line; HTML, code spans, links inert).
- `md_line`: `md_inline` for text at the start of a line, where it cannot open a block either.
- `md_escape`: `md_cell` without the whitespace clean-up (for text already cut, such as
  `first_chars`, whose trailing space DailyArXiv keeps).
- `first_chars(n)`: the first n characters of text, cut before escaping so no entity is split.
- `collapse_ws`: newlines and runs of whitespace become one space.
- `md_url`: an http(s) URL safe as the `(url)` of a Markdown link.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from urllib.parse import quote, urlsplit

import jinja2

_WHITESPACE = re.compile(r"\s+")

# Characters that could end or corrupt the Markdown table or the HTML around a cell, encoded as
# numeric character references: GitHub decodes them for display, but neither the table splitter
# (`|`), the link parser (`[`, `]`), nor the HTML parser (`<`, `>`) sees them as syntax. Entities
# rather than backslash escapes because a backslash already in the text (`\|`) would escape our
# backslash instead and let the character through.
_CELL_ENTITIES = {
    "|": "&#124;",
    "<": "&lt;",
    ">": "&gt;",
    "`": "&#96;",  # a lone backtick could open a code span that swallows the markup after it
}
_LINK_ENTITIES = {**_CELL_ENTITIES, "[": "&#91;", "]": "&#93;"}
# A backslash right before an encoded character or at the end of the cell would escape our
# markup (`\</p>`, `\&#124;`) instead of being shown; only those backslashes are encoded, so
# TeX in abstracts (`$\infty$`, `12.5\%`) stays as DailyArXiv prints it.
_BACKSLASH = "&#92;"


@functools.cache
def _pattern(specials: str) -> re.Pattern[str]:
    chars = re.escape(specials)
    return re.compile(
        rf"\\(?=$|[{chars}&]|\]\()"  # a backslash that would escape what follows
        # `&` starts a character reference only when something other than a space follows, so
        # a bare `vision & video` (as DailyArXiv prints it) already renders as `&` and is kept
        # byte for byte, while `&lt;` or `R&D` in paper text is escaped to show literally.
        r"|&(?=\S)"
        r"|\]\("  # `](` outside a link: never a link target such as `](javascript:...)`
        rf"|[{chars}]"
    )


MAX_AUTHORS = 3  # a paper's first three authors are shown, then "et al." (everywhere)


def short_authors(
    authors: Sequence[str], *, more: Callable[[int], str] | None = None, none: str = ""
) -> str:
    """The first MAX_AUTHORS authors, then "et al." (or `more(n)` for the n left out);
    `none` when there are no authors. The one rule every output follows."""
    shown = ", ".join(authors[:MAX_AUTHORS])
    if not shown:
        return none
    left = len(authors) - MAX_AUTHORS
    if left <= 0:
        return shown
    return f"{shown} {more(left) if more is not None else 'et al.'}"


def collapse_ws(text: str | None) -> str:
    """Newlines and runs of whitespace become one space; ends are stripped; None becomes ''."""
    if not text:
        return ""
    return _WHITESPACE.sub(" ", text).strip()


def _escape(text: str, entities: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        found = match.group(0)
        if found == "\\":
            return _BACKSLASH
        if found == "&":
            return "&amp;"
        if found == "](":
            return "&#93;("
        return entities[found]

    return _pattern("".join(entities)).sub(replace, text)


def md_cell(text: str | None) -> str:
    """Text safe inside a Markdown table cell (and inside the HTML DailyArXiv puts there)."""
    return _escape(collapse_ws(text), _CELL_ENTITIES)


def md_escape(text: str | None) -> str:
    """Escape text for a table cell as `md_cell` does, keeping its whitespace as it is."""
    return _escape(text or "", _CELL_ENTITIES)


# Text inside a Markdown paragraph (the daily digest archive): one paragraph, never markup. A
# line break is the only way to start a block (heading, `---`/`===` rule or underline, code
# fence, list, quote, HTML block) that could swallow what follows, so whitespace is collapsed;
# inline HTML, autolinks, code spans and link targets are encoded as in table cells. Other
# punctuation (`*`, `_`, `$`, `[`) is kept: it cannot leave the paragraph, and the reference
# digest prints it as it is.
_INLINE_ENTITIES = {"<": "&lt;", ">": "&gt;", "`": "&#96;"}


def md_inline(text: str | None) -> str:
    """Text safe as (part of) one Markdown paragraph: one line, no HTML, code or link syntax."""
    return _escape(collapse_ws(text), _INLINE_ENTITIES)


# What opens a block at the start of a line: a heading, a rule or setext underline, a quote, a
# list item, a fence, a table row or a link reference definition. Its last character is
# written as a character reference, which CommonMark shows as the character but never reads as
# syntax.
_BLOCK_START = re.compile(r"^(?:[#>+\-*_=~|\[]|\d{1,9}[.)])")


def md_line(text: str | None) -> str:
    """`md_inline` text that may start a line: it cannot open a block there either."""
    escaped = md_inline(text)
    start = _BLOCK_START.match(escaped)
    if start is None:
        return escaped
    end = start.end()
    return f"{escaped[: end - 1]}&#{ord(escaped[end - 1])};{escaped[end:]}"


def md_link_text(text: str | None) -> str:
    """Text safe as the `[text]` of a Markdown link inside a table cell."""
    return _escape(collapse_ws(text), _LINK_ENTITIES)


def first_chars(text: str | None, count: int) -> str:
    """The first `count` characters of the whitespace-collapsed text (escape afterwards).

    A trailing space is kept: DailyArXiv folds "ICLR 2025..." as `<summary>ICLR ...</summary>`.
    """
    return collapse_ws(text)[:count]


# Kept as they are in a URL: the reserved characters that give it structure, and `%` so existing
# escapes are not escaped twice. Everything else (space, parentheses, `|`, `<`, quotes,
# backslash, non-ASCII) is percent-encoded so it cannot end the link or the table cell.
_URL_SAFE = ":/?#[]@!$&'*+,;=%~"


def md_url(url: str | None) -> str:
    """An http(s) URL safe inside `[text](url)` in a table cell; anything else becomes `#`."""
    text = (url or "").strip()
    if urlsplit(text).scheme.lower() not in {"http", "https"}:
        return "#"  # never a javascript: or data: link, whatever the data says
    return quote(text, safe=_URL_SAFE)


def build_environment() -> jinja2.Environment:
    """A new Jinja2 environment over the `templates` package, with the shared filters."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("templates", ""),
        # Only HTML is escaped automatically; Markdown and plain text templates escape with
        # md_cell & co. where user text meets markup.
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html", "htm", "xml", "html.j2", "htm.j2", "xml.j2"),
            disabled_extensions=("md.j2", "txt.j2", "md", "txt"),
            default_for_string=False,
            default=False,
        ),
        # Byte-exact outputs (the README golden test) need the file's final newline kept.
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        # A misspelt variable is a bug to see in tests, not an empty string in a user's inbox.
        undefined=jinja2.StrictUndefined,
    )
    env.filters["md_cell"] = md_cell
    env.filters["md_escape"] = md_escape
    env.filters["md_link_text"] = md_link_text
    env.filters["md_inline"] = md_inline
    env.filters["md_line"] = md_line
    env.filters["first_chars"] = first_chars
    env.filters["collapse_ws"] = collapse_ws
    env.filters["md_url"] = md_url
    return env


@functools.cache
def get_environment() -> jinja2.Environment:
    """The shared environment (built once per process; templates are cached by Jinja2)."""
    return build_environment()
