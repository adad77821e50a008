"""A composed email as bytes: what any parser reads back, byte for byte."""

from __future__ import annotations

import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser

import pytest

from digest.mail.mime import compose_message, message_bytes
from digest.mail.render import RenderedEmail
from tests.mail_helpers import parts


@pytest.mark.parametrize("utf8", [False, True])
def test_composed_bytes_parse_back_to_the_exact_parts(utf8: bool) -> None:
    """compose_message + message_bytes (encoded without the email package's Generator) give
    a message any parser reads back exactly: both parts, every header, short lines."""
    text = (
        "Plain line\n"
        "trailing spaces   \n"
        "=3D is not an escape here; tabs\tand a long line " + "word " * 60 + "\n"
        ".a line starting with a dot\n"
        "From the start of a line\n"
        "Ünïcödé, 中文, emoji 🚀, LaTeX $\\alpha_{i}=\\beta$\n"
        "--=_dp_not_the_boundary\n"
    )
    html = "<p>" + "x" * 3000 + "</p><p>&amp; 中文 🚀</p>\n"
    rendered = RenderedEmail(subject="3 new arXiv papers: ünïcode", text=text, html=html)
    msg = compose_message(
        rendered,
        sender="papers@lab.example.org",
        recipient="reader@lab.example.org",
        now=datetime(2026, 3, 10, 21, 0, tzinfo=UTC),
        list_id="papers.lab.example.org",
        unsubscribe=("https://papers.example.org/unsubscribe?token=" + "t" * 300, "mailto:x@y"),
    )
    raw = message_bytes(msg, utf8=utf8)
    policy = (email.policy.SMTPUTF8 if utf8 else email.policy.SMTP).clone(max_line_length=998)
    assert raw == msg.as_bytes(policy=policy)  # byte for byte what the email package writes
    assert raw.isascii() != utf8  # SMTPUTF8 carries the Subject as UTF-8; otherwise RFC 2047
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF line ends only
    parsed = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(parsed, EmailMessage)
    got_text, got_html = parts(parsed)
    # On the wire every line ends in CRLF, and so does the decoded text (as with the
    # email package's own encoder); nothing else may change.
    assert got_text.replace("\r\n", "\n") == text
    assert got_html == html
    assert parsed["Subject"] == rendered.subject
    assert parsed["List-Unsubscribe"] == msg["List-Unsubscribe"]
    assert parsed.defects == []
    body_lines = raw.split(b"\r\n\r\n", 1)[1].split(b"\r\n")
    assert max(len(line) for line in body_lines) <= 78
