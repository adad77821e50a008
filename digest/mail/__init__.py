"""Email: digests by SMTP, double opt-in sign-up, and the pages that links in emails open.

Each module imports only the ones listed above it:

    bookkeeping  the target kind, UNCONFIRMED and the target options kept per address
    links        signed tokens and the confirm / manage / unsubscribe / day URLs (EmailLinks)
    render       digest, confirmation and "nothing new" emails; the HTML cap; text folding
    mime         multipart/alternative messages, their bytes for SMTP, digest Message-IDs
    smtp         SmtpPool: pooled aiosmtplib sessions; SendResult / SendStatus
    channel      EmailChannel (the Channel for `email:` targets) and its channel_factory
    signup       EmailSubscriptions: sign-up, confirm, manage, unsubscribe; `daily-papers email`
    pages        the aiohttp handlers of those pages, mounted by `digest.web`

Only the bookkeeping names are handed on here: the core's views (`digest.monitoring`,
`digest.metrics`, the CLI) need them, and importing them must not load SMTP, CSS inlining or
Jinja2. Everything else is imported from its module, where it is needed.

(The package is `mail`, not `email`, so that no name here shadows the standard library.)
"""

from __future__ import annotations

from digest.mail.bookkeeping import (
    EMAIL,
    OPTION_CONFIRM_SENT,
    OPTION_CONFIRMED,
    OPTION_FAILURES,
    OPTION_LAST_MAIL_DAY,
    UNCONFIRMED,
)

__all__ = [
    "EMAIL",
    "OPTION_CONFIRMED",
    "OPTION_CONFIRM_SENT",
    "OPTION_FAILURES",
    "OPTION_LAST_MAIL_DAY",
    "UNCONFIRMED",
]
