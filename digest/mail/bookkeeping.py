"""What email keeps in the store: its target kind, the reason that parks a subscription until
its confirmation link is clicked, and the target options kept per address.

Per-target bookkeeping lives in store target options (names below), so it survives restarts
and needs no schema of its own. Every module of `digest.mail` reads and writes these names, and
the operator's views (`digest.monitoring`, `digest.metrics`, the CLI) read UNCONFIRMED: they
import it from here (through `digest.mail`), never from the modules that send or sign up.
"""

from __future__ import annotations

from digest.domain import TargetKind

EMAIL = TargetKind.EMAIL.value
UNCONFIRMED = "unconfirmed"  # disabled_reason of a subscription waiting for its link

# Target options (store.get/set_target_option) kept per address.
OPTION_CONFIRMED = "email_confirmed"  # ISO time the address confirmed; absent = never mail it
OPTION_CONFIRM_SENT = "email_confirm_sent_at"  # ISO time of the last confirmation email
OPTION_FAILURES = "email_failures"  # consecutive permanent (5xx) refusals, reset on success
OPTION_LAST_MAIL_DAY = "email_last_mail_day"  # day (service timezone) of the last digest/note


__all__ = [
    "EMAIL",
    "OPTION_CONFIRMED",
    "OPTION_CONFIRM_SENT",
    "OPTION_FAILURES",
    "OPTION_LAST_MAIL_DAY",
    "UNCONFIRMED",
]
