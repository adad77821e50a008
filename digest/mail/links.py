"""Signed links in emails: tokens, the URLs that carry them, and what they need to exist.

Links in emails carry HMAC-SHA256 signed tokens (`TokenSigner`) naming the purpose, the
subscriber's address and the list (`email.list_id`), keyed by `DAILY_PAPERS_SECRET_KEY`. Email
features refuse to start without that key (`require_secret_key`). `EmailLinks` builds the
absolute confirm, manage, unsubscribe and day links that the emails carry (`digest.mail.render`,
`digest.mail.channel`); the sign-up service (`digest.mail.signup`) and the pages
(`digest.mail.pages`) verify them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import quote, urlencode

from digest.config import Settings
from digest.errors import ConfigError, DailyPapersError

CONFIRM_TTL = timedelta(hours=48)  # long enough for a weekend, short enough to go stale
# Every digest carries a fresh manage link, so 60 days covers someone reading an old email.
MANAGE_TTL = timedelta(days=60)
# One-click unsubscribe must keep working from any old message (RFC 8058 readers may act on it
# months later); the token can only ever remove, so it never expires.
UNSUBSCRIBE_TTL: timedelta | None = None
MIN_SECRET_LENGTH = 16  # anything shorter is guessable enough to forge unsubscribe links

TOKEN_VERSION = 1
_KEY_CONTEXT = b"daily-papers email tokens v1"  # derive a key used only for these tokens


# The base of TokenError, so it stands here beside the tokens; `digest.mail.signup` raises it too.
class SubscriptionError(DailyPapersError):
    """A sign-up, confirmation or manage request cannot be done; the message says why."""


class TokenError(SubscriptionError):
    """A link's token is malformed, forged, expired or meant for something else."""


def require_secret_key(settings: Settings) -> str:
    """The signing key for email links; ConfigError with how to set one when missing or weak."""
    key = settings.secrets.secret_key
    if len(key) < MIN_SECRET_LENGTH:
        state = "is not set" if not key else f"is shorter than {MIN_SECRET_LENGTH} characters"
        raise ConfigError(
            f"email features need DAILY_PAPERS_SECRET_KEY, which {state}: it signs the confirm, "
            "manage and unsubscribe links in emails. Generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'` and set it in the "
            "environment (keep it stable: changing it invalidates every link already sent)."
        )
    return key


def require_base_url(settings: Settings) -> str:
    """web.base_url without a trailing slash; ConfigError when email is on without it."""
    if not settings.web.base_url:
        raise ConfigError(
            "email digests need web.base_url (the public address of `daily-papers serve`, "
            "e.g. https://papers.lab.org): confirm and unsubscribe links point there"
        )
    return settings.web.base_url.rstrip("/")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a verified token says."""

    purpose: str  # "confirm", "manage", "unsubscribe" or "day"
    address: str
    list_id: str
    expires: int  # Unix seconds; 0 = never
    day: str = ""  # YYYY-MM-DD: the day a "day" link shows


@dataclass(frozen=True, kw_only=True)
class TokenSigner:
    """Signs and verifies the tokens in email links (HMAC-SHA256, URL-safe, no padding)."""

    secret_key: str = field(repr=False)
    list_id: str

    def _key(self) -> bytes:
        return hmac.new(self.secret_key.encode(), _KEY_CONTEXT, hashlib.sha256).digest()

    def _mac(self, body: str) -> str:
        return _b64encode(hmac.new(self._key(), body.encode("ascii"), hashlib.sha256).digest())

    def sign(
        self, purpose: str, address: str, *, now: datetime, ttl: timedelta | None, day: str = ""
    ) -> str:
        """A token for `purpose` naming `address` and this list, valid for `ttl` (None: ever);
        `day` (YYYY-MM-DD) is signed too when given."""
        expires = 0 if ttl is None else int((now + ttl).timestamp())
        payload: dict[str, str | int] = {
            "v": TOKEN_VERSION,
            "p": purpose,
            "a": address,
            "l": self.list_id,
            "x": expires,
        }
        if day:
            payload["d"] = day
        body = _b64encode(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{self._mac(body)}"

    def verify(self, token: str, purpose: str, *, now: datetime) -> TokenClaims:
        """The claims of a genuine, unexpired token for `purpose` on this list; else TokenError."""
        body, sep, mac = (token or "").strip().partition(".")
        if not sep or not body or not mac:
            raise TokenError("This link is incomplete. Copy the whole link from the email.")
        # Both halves must be ASCII before they meet hmac.compare_digest, which raises
        # TypeError on any other str: a link mangled in transit is a bad link, not a crash.
        if not (body.isascii() and mac.isascii()):
            raise TokenError("This link is damaged. Copy the whole link from the email.")
        if not hmac.compare_digest(self._mac(body), mac):
            raise TokenError("This link is damaged or was not issued by this service.")
        try:
            data = json.loads(_b64decode(body))
            claims = TokenClaims(
                purpose=str(data["p"]),
                address=str(data["a"]),
                list_id=str(data["l"]),
                expires=int(data["x"]),
                day=str(data.get("d", "")),
            )
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise TokenError("This link is damaged. Copy the whole link from the email.") from exc
        if claims.purpose != purpose:
            raise TokenError("This link is meant for something else; use the right link.")
        if claims.list_id != self.list_id:
            raise TokenError("This link belongs to another mailing list.")
        if claims.expires and now.timestamp() > claims.expires:
            raise TokenError("This link has expired. Ask for a new one.")
        return claims


@dataclass(frozen=True, kw_only=True)
class EmailLinks:
    """The absolute URLs put into emails (web.base_url + signed tokens)."""

    base_url: str  # no trailing slash; '' when there is no web server
    signer: TokenSigner
    sender: str  # the From address; List-Unsubscribe's mailto goes there
    readme_url: str = ""  # readme.public_url: where the README snapshot can be read

    @classmethod
    def from_settings(cls, settings: Settings) -> EmailLinks:
        """Links for these settings; ConfigError when the secret key or base URL is missing."""
        return cls(
            base_url=require_base_url(settings),
            signer=TokenSigner(
                secret_key=require_secret_key(settings), list_id=settings.email.list_id
            ),
            sender=settings.email.sender,
            readme_url=settings.readme.public_url,
        )

    def _url(
        self, path: str, purpose: str, address: str, now: datetime, ttl: timedelta | None
    ) -> str:
        token = self.signer.sign(purpose, address, now=now, ttl=ttl)
        return f"{self.base_url}{path}?{urlencode({'token': token})}"

    def confirm_url(self, address: str, *, now: datetime) -> str:
        """The double opt-in link."""
        return self._url("/confirm", "confirm", address, now, CONFIRM_TTL)

    def manage_url(self, address: str, *, now: datetime) -> str:
        """The password-less settings page of one subscriber."""
        return self._url("/manage", "manage", address, now, MANAGE_TTL)

    def unsubscribe_url(self, address: str, *, now: datetime) -> str:
        """The unsubscribe page; a POST to it is RFC 8058's one-click unsubscribe."""
        return self._url("/unsubscribe", "unsubscribe", address, now, UNSUBSCRIBE_TTL)

    def day_url(self, address: str, *, day: str, now: datetime) -> str:
        """Where the reader sees every paper of `day` that an email left out: the signed page
        of the web server (`/day`), else the README snapshot (readme.public_url), else ''."""
        if not self.base_url:
            return self.readme_url
        token = self.signer.sign("day", address, now=now, ttl=MANAGE_TTL, day=day)
        return f"{self.base_url}/day?{urlencode({'token': token})}"

    def unsubscribe_mailto(self, address: str) -> str:
        """List-Unsubscribe's mailto alternative: a message to the sender naming the address.

        Nothing reads that mailbox automatically; the operator removes the address with
        `daily-papers email remove`. Clients that support one-click use the HTTPS link instead.
        """
        subject = quote(f"unsubscribe {address}", safe="")
        return f"mailto:{self.sender}?subject={subject}"


__all__ = [
    "MANAGE_TTL",
    "EmailLinks",
    "SubscriptionError",
    "TokenClaims",
    "TokenError",
    "TokenSigner",
    "require_base_url",
    "require_secret_key",
]
