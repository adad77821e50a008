"""Email messages, pure: a rendered email as multipart/alternative MIME, and as SMTP's bytes.

`compose_message` puts the plain-text part first and the HTML last. Digests carry Message-ID,
Date, List-Id, List-Unsubscribe (HTTPS and mailto) and `List-Unsubscribe-Post:
List-Unsubscribe=One-Click` (RFC 8058). A digest's Message-ID (`digest_message_id`) is derived
from the address and the exact deliveries it carries, so when a send fails ambiguously (the
connection drops after the data went out) the retry carries the same Message-ID and receiving
systems can discard the duplicate. `message_bytes` writes a message as SMTP wants it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.policy import SMTPUTF8 as SMTPUTF8_POLICY
from email.utils import format_datetime, formataddr, make_msgid
from typing import Any

from digest.domain import Batch
from digest.mail.render import RenderedEmail


def sender_domain(sender: str) -> str:
    """The domain of the From address, for Message-IDs (`localhost` when it has none)."""
    return sender.rpartition("@")[2] or "localhost"


def digest_message_id(batch: Batch, sender: str) -> str:
    """A Message-ID fixed by the address and the deliveries: a re-send is recognisably the same."""
    keys = sorted(f"{d.subscription_id}:{d.paper.arxiv_id}" for d in batch.deliveries)
    digest = hashlib.sha256("\n".join([batch.target.address, *keys]).encode()).hexdigest()
    return f"<digest.{digest[:32]}@{sender_domain(sender)}>"


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
    msg["Message-ID"] = message_id or make_msgid(domain=sender_domain(sender))
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


__all__ = [
    "compose_message",
    "digest_message_id",
    "message_bytes",
    "sender_domain",
]
