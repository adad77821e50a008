"""The shared Jinja2 environment and its Markdown filters."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest

import digest
import templates
from digest.render import (
    build_environment,
    collapse_ws,
    first_chars,
    get_environment,
    md_cell,
    md_escape,
    md_link_text,
    md_url,
)


def test_get_environment_is_shared_and_build_environment_is_fresh() -> None:
    """Everyone gets the one cached environment; build_environment makes a new one."""
    assert get_environment() is get_environment()
    assert build_environment() is not get_environment()


def test_templates_come_from_the_templates_package() -> None:
    """The loader reads the installed `templates` package, wherever it is."""
    env = get_environment()
    assert "README.md.j2" in env.list_templates()
    source, filename, _ = env.loader.get_source(env, "README.md.j2")  # type: ignore[union-attr]
    assert Path(filename).parent == Path(templates.__file__).parent
    assert "{{ keyword|md_cell }}{% endif %}" in source  # the section heading macro


@pytest.mark.parametrize(
    ("name", "escaped"),
    [
        ("digest/email.html.j2", True),
        ("page.html", True),
        ("feed.xml.j2", True),
        ("README.md.j2", False),
        ("chat/latest.txt.j2", False),
        ("notes.md", False),
        ("unknown.j2", False),
    ],
)
def test_autoescape_by_template_name(name: str, escaped: bool) -> None:
    """HTML templates escape automatically; Markdown and text templates do not."""
    env = build_environment().overlay(loader=jinja2.DictLoader({name: "{{ value }}"}))
    assert env.get_template(name).render(value="<b>&") == ("&lt;b&gt;&amp;" if escaped else "<b>&")


def test_undefined_variables_fail_loudly() -> None:
    """A template that uses a missing variable raises instead of printing nothing."""
    template = get_environment().from_string("{{ section.keyword }} on {{ today }}")
    with pytest.raises(jinja2.UndefinedError):
        template.render(today="2025-01-01")


def test_filters_are_registered() -> None:
    """The Markdown filters are available to every template."""
    env = get_environment()
    for name in ("md_cell", "md_escape", "md_link_text", "md_url", "first_chars", "collapse_ws"):
        assert name in env.filters


def test_templates_load_from_an_installed_copy(tmp_path: Path) -> None:
    """Copied out of the checkout (as a wheel installs them), the templates still load."""
    site = tmp_path / "site"
    for package in (digest, templates):
        source = Path(package.__file__).parent
        shutil.copytree(source, site / source.name, ignore=shutil.ignore_patterns("__pycache__"))
    script = (
        "import templates, digest.render as r; "
        "print(templates.__file__); "
        "print(r.get_environment().get_template('README.md.j2').module.header('2025-01-01'))"
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter with a fixed script
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    first, rest = done.stdout.split("\n", 1)
    assert Path(first).is_relative_to(site)
    assert "Last update: 2025-01-01" in rest
    assert rest.endswith("Last update: 2025-01-01\n\n\n")


@pytest.mark.parametrize(
    ("text", "cell"),
    [
        (None, ""),
        ("", ""),
        ("  plain  text\n\twith\r\nbreaks ", "plain text with breaks"),
        ("a | b", "a &#124; b"),
        ("<script>x</script>", "&lt;script&gt;x&lt;/script&gt;"),
        ("</details>", "&lt;/details&gt;"),
        ("<!-- x", "&lt;!-- x"),
        ("vision & video", "vision & video"),  # as DailyArXiv prints it; renders as "&"
        ("R&D &amp; &#124;", "R&amp;D &amp;amp; &amp;#124;"),
        ("$\\infty$ and 12.5\\%", "$\\infty$ and 12.5\\%"),  # TeX stays as DailyArXiv has it
        ("ends in \\", "ends in &#92;"),
        ("\\| and \\<", "&#92;&#124; and &#92;&lt;"),
        ("[1] and [x](javascript:alert(1))", "[1] and [x&#93;(javascript:alert(1))"),
        ("`code`", "&#96;code&#96;"),
    ],
)
def test_md_cell(text: str | None, cell: str) -> None:
    """Cell text is one line that cannot end the cell, the table, the HTML or start a link."""
    assert md_cell(text) == cell


def test_md_link_text_encodes_brackets() -> None:
    """Brackets in a title cannot end the link text early."""
    assert md_link_text("A [B] (C)") == "A &#91;B&#93; (C)"
    assert md_link_text("x](javascript:1)") == "x&#93;(javascript:1)"
    assert md_link_text("a\\]") == "a&#92;&#93;"


def test_md_escape_keeps_whitespace() -> None:
    """md_escape escapes like md_cell but keeps a trailing space (DailyArXiv's `ICLR ...`)."""
    assert md_escape("ICLR ") == "ICLR "
    assert md_escape("a|b ") == "a&#124;b "


def test_first_chars_and_collapse_ws() -> None:
    """first_chars cuts the collapsed text before escaping, so no entity is split."""
    assert first_chars("<<<<<<", 5) == "<<<<<"
    assert md_escape(first_chars("<<<<<<", 5)) == "&lt;" * 5
    assert first_chars("ICLR\n 2025", 5) == "ICLR "
    assert collapse_ws(None) == ""
    assert collapse_ws(" a \n\n b ") == "a b"


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("http://arxiv.org/abs/2501.09733v1", "http://arxiv.org/abs/2501.09733v1"),
        ("https://x.org/a b(c)|d", "https://x.org/a%20b%28c%29%7Cd"),
        ("https://x.org/q?a=1&b=%20", "https://x.org/q?a=1&b=%20"),
        ("javascript:alert(1)", "#"),
        ("data:text/html,x", "#"),
        ("", "#"),
        (None, "#"),
    ],
)
def test_md_url(url: str | None, safe: str) -> None:
    """Only http(s) URLs pass, with anything that could end the link percent-encoded."""
    assert md_url(url) == safe
