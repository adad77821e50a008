"""Signed tokens and the links in emails: what verifies, what is refused, what they need."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from digest.errors import ConfigError
from digest.mail.links import EmailLinks, TokenError, TokenSigner, require_secret_key
from tests.fakes.smtp import email_settings

NOW = datetime(2025, 1, 11, 2, 0, tzinfo=UTC)
ALICE = "alice@lab.example.org"
KEY = "k" * 32


def test_token_round_trip_names_purpose_address_and_list() -> None:
    """A signed token verifies to its purpose, address, list and expiry."""
    signer = TokenSigner(secret_key=KEY, list_id="papers.lab.example.org")
    token = signer.sign("manage", ALICE, now=NOW, ttl=timedelta(days=1))
    claims = signer.verify(token, "manage", now=NOW + timedelta(hours=23))
    assert (claims.purpose, claims.address, claims.list_id) == (
        "manage",
        ALICE,
        "papers.lab.example.org",
    )
    assert claims.expires == int((NOW + timedelta(days=1)).timestamp())
    assert re.fullmatch(r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+", token)  # URL-safe as it is


def test_tokens_refuse_tampering_expiry_and_misuse() -> None:
    """Forged, altered, expired, cross-purpose and cross-list tokens all fail."""
    signer = TokenSigner(secret_key=KEY, list_id="list-a")
    token = signer.sign("confirm", ALICE, now=NOW, ttl=timedelta(hours=1))
    body, mac = token.split(".")
    forged = TokenSigner(secret_key="another-key-" + KEY, list_id="list-a")
    other_list = TokenSigner(secret_key=KEY, list_id="list-b")
    evil_body = signer.sign("confirm", "eve@evil.example.org", now=NOW, ttl=None).split(".")[0]
    cases = {
        "expired": lambda: signer.verify(token, "confirm", now=NOW + timedelta(hours=2)),
        "purpose": lambda: signer.verify(token, "unsubscribe", now=NOW),
        "key": lambda: forged.verify(token, "confirm", now=NOW),
        "list": lambda: other_list.verify(token, "confirm", now=NOW),
        "swapped body": lambda: signer.verify(f"{evil_body}.{mac}", "confirm", now=NOW),
        "cut": lambda: signer.verify(token[:-3], "confirm", now=NOW),
        "empty": lambda: signer.verify("", "confirm", now=NOW),
        "dot": lambda: signer.verify(".", "confirm", now=NOW),
        "unicode": lambda: signer.verify("é." + mac, "confirm", now=NOW),
        "no mac": lambda: signer.verify(body, "confirm", now=NOW),
    }
    for name, attempt in cases.items():
        with pytest.raises(TokenError):
            attempt()
        assert name  # each case named for the failure report
    assert signer.verify(token, "confirm", now=NOW).address == ALICE


def test_unsubscribe_tokens_never_expire() -> None:
    """One-click links keep working from years-old emails."""
    signer = TokenSigner(secret_key=KEY, list_id="l")
    token = signer.sign("unsubscribe", ALICE, now=NOW, ttl=None)
    assert signer.verify(token, "unsubscribe", now=NOW + timedelta(days=3650)).address == ALICE


def test_email_features_refuse_to_start_without_a_secret_key() -> None:
    """A missing or short DAILY_PAPERS_SECRET_KEY is a ConfigError saying how to make one."""
    with pytest.raises(ConfigError, match=r"DAILY_PAPERS_SECRET_KEY.*is not set.*token_urlsafe"):
        require_secret_key(email_settings(None, secret_key=""))
    with pytest.raises(ConfigError, match="shorter than 16"):
        require_secret_key(email_settings(None, secret_key="short"))
    assert require_secret_key(email_settings(None, secret_key=KEY)) == KEY


def test_links_are_absolute_and_mailto_names_the_address() -> None:
    """Links use web.base_url; the mailto alternative goes to the sender."""
    links = EmailLinks.from_settings(email_settings(None, base_url="https://p.lab.org/"))
    url = links.unsubscribe_url(ALICE, now=NOW)
    assert url.startswith("https://p.lab.org/unsubscribe?token=")
    token = parse_qs(urlsplit(url).query)["token"][0]
    assert links.signer.verify(token, "unsubscribe", now=NOW).address == ALICE
    assert links.unsubscribe_mailto(ALICE) == (
        "mailto:papers@lab.example.org?subject=unsubscribe%20alice%40lab.example.org"
    )
