"""Email rendering, pure: sections, the HTML cap and its ranking, plain-text folding."""

from __future__ import annotations

import re
from collections.abc import Sequence

from digest.mail.links import EmailLinks, TokenSigner
from digest.mail.render import (
    MAX_HTML_BYTES,
    MAX_TEXT_BYTES,
    MIN_ENTRY_BYTES,
    Entry,
    Section,
    digest_sections,
    fit_sections,
    fold_text,
    keep_papers,
    render_digest,
    render_email_html,
)
from tests.fakes.smtp import email_settings
from tests.mail_helpers import (
    ALICE,
    NOW,
    assert_folded,
    batch_for,
    flat,
    many_papers,
    paper,
    parse_html,
    squeeze,
)

# -- rendering ---------------------------------------------------------------------------------


def test_sections_show_each_paper_in_full_once() -> None:
    """A paper matching two keywords is shown under the first and linked from the second."""
    shared, only = paper("2501.00001"), paper("2501.00002")
    batch = batch_for(ALICE, [(1, "diffusion", shared), (2, "video", shared), (2, "video", only)])
    sections = digest_sections(batch)
    assert [s.keyword for s in sections] == ["diffusion", "video"]
    assert [e.versioned_id for e in sections[0].entries] == ["2501.00001v1"]
    assert sections[0].entries[0].other_keywords == ("video",)
    assert [e.versioned_id for e in sections[1].entries] == ["2501.00002v1"]
    assert [e.versioned_id for e in sections[1].also] == ["2501.00001v1"]
    assert sections[1].total == 2


def test_fold_text_breaks_between_chinese_characters_but_never_inside_words_or_urls() -> None:
    """Wide characters count two columns; no line starts with closing punctuation."""
    url = "https://papers.lab.org/manage?token=" + "x" * 120
    text = "检索增强生成（RAG）是一种强大的策略，" * 8 + "\nChange keywords: " + url + "\n"
    folded = fold_text(text)
    assert_folded(folded)
    assert url in folded.splitlines()
    assert squeeze(folded) == squeeze(text)
    assert not any(line.startswith(("，", "）", "。")) for line in folded.splitlines())
    words = "word " * 40
    assert flat(fold_text(words)) == flat(words)
    assert all(len(line) <= 76 for line in fold_text(words).splitlines())


def test_the_plain_text_lists_every_paper_up_to_what_a_relay_takes() -> None:
    """1,500 papers: the text part stays under MAX_TEXT_BYTES, counting and linking the rest."""
    papers = many_papers(1500)
    batch = batch_for(ALICE, [(1, "vision", p) for p in papers])
    links = EmailLinks.from_settings(email_settings(None, base_url="https://papers.lab.org"))
    rendered = render_digest(batch, links=links, now=NOW, timezone="UTC", list_name="l")
    size = len(rendered.text.encode("utf-8"))
    assert MAX_TEXT_BYTES * 0.8 < size < MAX_TEXT_BYTES
    listed = len(re.findall(r"^Abstract: ", rendered.text, re.M))
    assert 300 < listed < 1500
    assert f"This email shows {listed} of the 1500 papers" in flat(rendered.text)
    assert f"and {1500 - listed} more papers for vision: https://papers.lab.org/day?token=" in (
        flat(rendered.text)
    )
    assert_folded(rendered.text)
    assert len(rendered.html.encode("utf-8")) < MAX_HTML_BYTES


def test_the_cut_takes_a_ranking_and_drops_a_left_out_paper_everywhere() -> None:
    """keep_papers keeps the best-ranked papers; a left-out paper leaves its "also" lines too."""
    papers = many_papers(6, abstract_words=5)
    items = [(1, "a", p) for p in papers[:4]] + [(2, "b", p) for p in papers[2:]]
    sections = digest_sections(batch_for(ALICE, items))
    assert [len(s.also) for s in sections] == [0, 2]
    in_turns = keep_papers(sections, 3)
    # Turns: a's first, b's first (its first own entry), a's second; "also" lines follow.
    assert [[e.arxiv_id for e in s.entries] for s in in_turns] == [
        [p.arxiv_id for p in papers[:2]],
        [papers[4].arxiv_id],
    ]
    assert [(s.omitted, s.total) for s in in_turns] == [(2, 4), (3, 4)]
    assert [e.arxiv_id for e in in_turns[1].also] == []

    def last_section_first(sections: Sequence[Section]) -> Sequence[Entry]:
        return [entry for section in reversed(sections) for entry in section.entries]

    ranked = keep_papers(sections, 2, rank=last_section_first)
    assert [[e.arxiv_id for e in s.entries] for s in ranked] == [
        [],
        [p.arxiv_id for p in papers[4:]],
    ]
    assert [(s.omitted, s.total) for s in ranked] == [(4, 4), (2, 4)]


def test_a_cut_keeps_every_keywords_first_papers() -> None:
    """Three keywords, room for half the papers: each keeps its first papers, none is dropped."""
    papers = many_papers(30, abstract_words=5)
    items = [
        (1, keyword, p)
        for keyword, chunk in zip("abc", (papers[:18], papers[18:24], papers[24:]), strict=True)
        for p in chunk
    ]
    sections = digest_sections(batch_for(ALICE, items))
    kept = keep_papers(sections, 15)
    assert [len(s.entries) for s in kept] == [5, 5, 5]
    assert [[e.arxiv_id for e in s.entries] for s in kept] == [
        [e.arxiv_id for e in s.entries[:5]] for s in sections
    ]
    assert [s.omitted for s in kept] == [13, 1, 1]


def test_without_a_web_server_the_rest_is_on_the_readme_or_just_counted() -> None:
    """No web.base_url: the link points at readme.public_url; without one, the count only."""
    papers = many_papers(120)
    batch = batch_for(ALICE, [(1, "vision", p) for p in papers])
    signer = TokenSigner(secret_key="k" * 32, list_id="papers.lab.org")
    readme = "https://github.com/lab/papers#readme"
    for readme_url, expected in ((readme, readme), ("", None)):
        links = EmailLinks(base_url="", signer=signer, sender="p@lab.org", readme_url=readme_url)
        rendered = render_digest(
            batch, links=links, now=NOW, timezone="UTC", list_name="papers.lab.org"
        )
        assert len(rendered.html.encode("utf-8")) < MAX_HTML_BYTES
        page = parse_html(rendered.html)
        assert re.search(r"and \d+ more papers for vision", page.text)
        if expected:
            assert expected in page.links
        else:
            assert not [u for u in page.links if "day" in u or "readme" in u]


def test_a_huge_digest_is_never_rendered_whole() -> None:
    """5,000 papers: a handful of renders, none with more papers than could ever fit."""
    sections = digest_sections(
        batch_for(ALICE, [(1, "k", p) for p in many_papers(5000, abstract_words=100)])
    )
    rendered: list[int] = []

    def render(shown: Sequence[Section]) -> str:
        rendered.append(sum(len(s.entries) for s in shown))
        return render_email_html_for_test(shown)

    shown, html = fit_sections(sections, render)
    assert len(html.encode("utf-8")) < MAX_HTML_BYTES
    assert max(rendered) <= MAX_HTML_BYTES // MIN_ENTRY_BYTES
    assert len(rendered) <= 6
    assert shown[0].omitted == 5000 - rendered[-1]


def render_email_html_for_test(shown: Sequence[Section]) -> str:
    """The digest HTML of these sections, as render_digest builds it."""
    links = EmailLinks(
        base_url="https://papers.lab.org",
        signer=TokenSigner(secret_key="k" * 32, list_id="l"),
        sender="p@lab.org",
    )
    return render_email_html(
        "digest",
        sections=shown,
        shown=sum(len(s.entries) for s in shown),
        subject="s",
        count=5000,
        day="2025-01-11",
        keywords=["k"],
        address=ALICE,
        list_name="l",
        language="",
        language_label="",
        manage_url=links.manage_url(ALICE, now=NOW),
        unsubscribe_url=links.unsubscribe_url(ALICE, now=NOW),
        day_url=links.day_url(ALICE, day="2025-01-11", now=NOW),
    )


def test_a_small_digest_is_rendered_once_and_shows_everything() -> None:
    """Under the limit nothing is cut and no note or link appears."""
    calls: list[int] = []

    def render(shown: Sequence[Section]) -> str:
        calls.append(len(shown))
        return "x" * 10

    sections = digest_sections(batch_for(ALICE, [(1, "k", p) for p in many_papers(3)]))
    shown, html = fit_sections(sections, render)
    assert (shown, html, calls) == (sections, "x" * 10, [1])


def test_render_digest_is_pure_and_repeatable() -> None:
    """Rendering twice with the same inputs gives the same email (tokens and all)."""
    settings = email_settings(None)
    links = EmailLinks.from_settings(settings)
    batch = batch_for(ALICE, [(1, "k", paper())])
    first = render_digest(batch, links=links, now=NOW, timezone="UTC", list_name="l")
    second = render_digest(batch, links=links, now=NOW, timezone="UTC", list_name="l")
    assert first == second
    assert "2025-01-11" in first.text
