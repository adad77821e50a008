"""The `daily-papers` command line.

Every command reads the settings once (`--config`, else ./daily-papers.toml, else defaults, each
key overridable by DAILY_PAPERS_<SECTION>_<KEY>) and reports problems as one `error:` line with
what to do, never a traceback. Exit status: 0 ok, 1 the work failed, 2 bad usage or settings,
3 `run --no-wait` found a cycle running elsewhere, 128+N stopped by signal N (130 Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from zoneinfo import ZoneInfo

from digest import __version__
from digest.config import DEFAULT_CONFIG_FILE, Settings, load_settings, starter_file
from digest.domain import (
    DeliveryRecord,
    DeliveryStatus,
    RunReport,
    Subscription,
    Target,
    when,
)
from digest.errors import ConfigError, DailyPapersError, QueryError, SimilarityError, crash_reason
from digest.lease import LeaseBusy
from digest.like_query import (
    LIKE_PREFIX,
    MIN_SEEDS,
    canonical_keyword,
    canonical_like,
    is_like_query,
    parse_like,
)
from digest.query import parse_query, query_key

if TYPE_CHECKING:
    from digest.store import PaperStore

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY = 0, 1, 2, 3
# The reader of our output went away (`daily-papers digest --print | head`): the status of a
# Unix tool that SIGPIPE stopped.
EXIT_PIPE_CLOSED = 128 + signal.SIGPIPE

DESCRIPTION = """\
Watch arXiv for your keywords and deliver what is new: a DailyArXiv-style README
snapshot, Slack and Discord channel posts, and email digests.

Quick start:
  daily-papers init            write a commented daily-papers.toml with example keywords
  daily-papers run             one full cycle now (fetch, match, deliver, README)
  daily-papers serve           run every day on the schedule, with the chat bots
"""


class TerminalProgress:
    """Draws `phase: done/total` on one line of a terminal; silent when not a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._active = stream.isatty()
        self._last = ""

    def __call__(self, phase: str, done: int, total: int) -> None:
        """Show progress of `phase`."""
        if not self._active:
            return
        line = f"{phase}: {done}/{total}" if total else f"{phase}: {done}"
        self._stream.write("\r" + line.ljust(len(self._last)))
        self._stream.flush()
        self._last = line
        if total and done >= total:
            self.finish()

    def finish(self) -> None:
        """End the progress line."""
        if self._active and self._last:
            self._stream.write("\n")
            self._stream.flush()
            self._last = ""


# -- commands ----------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace, _settings: Callable[[], Settings]) -> int:
    """Write a commented starter config file."""
    path = Path(args.path)
    if path.exists() and not args.force:
        print(f"error: {path} already exists (use --force to overwrite)", file=sys.stderr)
        return EXIT_USAGE
    from digest.app import channel_settings

    path.write_text(starter_file(channel_settings), encoding="utf-8")
    print(
        f"wrote {path}: edit [keywords] queries and [arxiv] contact (your email, sent to arXiv), "
        "then run `daily-papers run`"
    )
    return EXIT_OK


def _stop_on_signals(loop: asyncio.AbstractEventLoop, stop: Callable[[int], None]) -> None:
    """First SIGINT/SIGTERM: `stop(signum)`, an orderly stop. A second one: the system's
    default action, which ends the process at once."""

    def first(signum: int) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_DFL)  # SIGINT too: no KeyboardInterrupt unwinding
        stop(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, first, int(sig))


def cmd_run(args: argparse.Namespace, settings: Callable[[], Settings]) -> int:
    """One full cycle now."""
    from digest.app import CycleRunner, run_once
    from digest.domain import LeaseHolder

    loaded = settings()
    progress = TerminalProgress(sys.stderr)
    received: list[int] = []

    def waiting(holder: LeaseHolder) -> None:
        progress.finish()
        print(
            f"waiting: a cycle is already running on {holder.describe()}; this run starts "
            "when it has finished (Ctrl-C to give up, --no-wait to exit instead)",
            file=sys.stderr,
        )

    async def main() -> RunReport | None:
        loop = asyncio.get_running_loop()

        def stop_runner(runner: CycleRunner) -> None:
            def stop(signum: int) -> None:
                received.append(signum)
                progress.finish()
                print(
                    f"{signal.Signals(signum).name}: stopping after the messages in flight "
                    "(send it again to stop at once)",
                    file=sys.stderr,
                )
                runner.request_stop()

            _stop_on_signals(loop, stop)

        return await run_once(
            loaded,
            progress=progress,
            wait=not args.no_wait,
            on_busy=waiting,
            on_runner=stop_runner,
        )

    try:
        report = asyncio.run(main())
    except LeaseBusy as exc:
        progress.finish()
        print(f"busy: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except DailyPapersError:
        raise
    except Exception as exc:  # a bug inside the cycle is a failed run (1), never bad usage (2)
        progress.finish()
        logging.getLogger(__name__).exception("run.crashed")
        print(
            f"error: the cycle crashed ({crash_reason(exc)}); the traceback is in the log",
            file=sys.stderr,
        )
        return EXIT_FAILED
    progress.finish()
    if report is None:  # a signal arrived while it waited for the lease
        print("stopped before the cycle started", file=sys.stderr)
        return 128 + (received[0] if received else signal.SIGINT)
    print(f"{'ok' if report.ok else 'FAILED'}: {describe_run(report)}")
    readme_failed = loaded.readme.enabled and not received and report.readme_error is not None
    if readme_failed:
        print(f"README snapshot: not written ({loaded.readme_path})")
    elif loaded.readme.enabled and not received:
        print(f"README snapshot: {loaded.readme_path}")
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if report.error:
        print(f"error: {report.error}", file=sys.stderr)
    if readme_failed:
        print(
            f"error: the README snapshot was not written: {report.readme_error}; once that is "
            "fixed, `daily-papers readme` writes it from the database (`status` alerts until then)",
            file=sys.stderr,
        )
    if received:
        return 128 + received[0]  # the shell's convention for "ended by this signal"
    return EXIT_OK if report.ok and not readme_failed else EXIT_FAILED


def describe_run(report: RunReport) -> str:
    """A cycle's numbers in words: what arXiv gave, and each delivery outcome by its name
    (deferred deliveries will be tried again; failed ones will not)."""
    retried = f" ({report.retries} retried)" if report.retries else ""
    deferred = f"{report.deferred} deferred"
    if report.next_retry_at is not None and report.deferred:
        deferred += f" (next try {when(report.next_retry_at)})"
    return (
        f"{report.harvested} papers fetched in {report.requests} arXiv requests{retried}, "
        f"{report.new_papers} new, {report.new_matches} new matches; deliveries: "
        f"{report.sent} sent, {deferred}, {report.failed} failed for good, "
        f"{report.disabled} subscriptions disabled ({report.seconds:.1f} s)"
    )


def cmd_serve(args: argparse.Namespace, settings: Callable[[], Settings]) -> int:
    """The long-running service."""
    from digest.app import serve

    loaded = settings()

    async def main() -> None:
        stop = asyncio.Event()
        _stop_on_signals(asyncio.get_running_loop(), lambda _signum: stop.set())
        await serve(loaded, stop=stop)

    asyncio.run(main())
    return EXIT_OK


def cmd_readme(args: argparse.Namespace, settings: Callable[[], Settings]) -> int:
    """Render the README snapshot from the database only."""
    from digest.app import open_store
    from digest.cycle import render_snapshot, utcnow
    from digest.monitoring import record_readme_failure

    loaded = settings()
    store = open_store(loaded)
    now = utcnow()
    try:
        try:
            changed = asyncio.run(render_snapshot(settings=loaded, store=store, now=now))
        except DailyPapersError as exc:
            record_readme_failure(store, loaded.readme_path, str(exc), now=now)  # status alerts
            raise
        record_readme_failure(store, loaded.readme_path, None, now=now)
    finally:
        store.close()
    print(f"{loaded.readme_path}: {'updated' if changed else 'unchanged'}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace, settings: Callable[[], Settings]) -> int:
    """Last cycles, their numbers, the outbox, alerts and failing subscriptions; exit 1 when an
    alert is on or the last cycle failed."""
    from digest.app import channel_specs, open_store, unconfigured_channels
    from digest.monitoring import find_alerts, overview_json, read_overview, status_ok

    loaded = settings()
    store = open_store(loaded)
    try:
        overview = read_overview(
            loaded,
            store,
            runs=args.runs,
            kinds=list(channel_specs()),
            unconfigured=unconfigured_channels(loaded),
        )
    finally:
        store.close()
    alerts = find_alerts(overview, loaded)
    code = EXIT_OK if status_ok(overview, alerts) else EXIT_FAILED
    if args.json:
        print(json.dumps(overview_json(overview, alerts), indent=2, ensure_ascii=False))
        return code
    subscriptions = len(overview.subscriptions)
    waiting = f" ({overview.backfills_waiting} waiting for a backfill)"
    print(f"config: {overview.source}")
    print(f"database: {overview.database}")
    print(
        f"keywords: {overview.keywords}{waiting if overview.backfills_waiting else ''}   "
        f"subscriptions: {subscriptions}"
    )
    if overview.running is not None:
        print(f"cycle running: {overview.running.describe()}")
    if not overview.runs:
        print("no cycle has run yet: try `daily-papers run`")
    for run in overview.runs:
        state = "ok    " if run.ok else "FAILED"
        print(
            f"{when(run.started_at)}  {state} requests={run.requests} retries={run.retries} "
            f"throttled={run.throttled} harvested={run.harvested} new={run.new_papers} "
            f"matches={run.new_matches} sent={run.sent} deferred={run.deferred} "
            f"failed={run.failed} disabled={run.disabled} seconds={run.seconds:.1f}"
            + (f"  error: {run.error}" if run.error else "")
        )
    outbox = overview.outbox
    if outbox.counts:
        parts = [
            f"{outbox.total('sent')} sent",
            f"{outbox.total('pending')} due at the next cycle",
        ]
        deferred = f"{outbox.total('deferred')} deferred"
        if outbox.next_retry_at is not None:
            deferred += f" (next try {when(outbox.next_retry_at)})"
        parts += [deferred, f"{outbox.total('failed')} failed for good"]
        print("deliveries: " + ", ".join(parts))
    for alert in alerts:
        print(f"ALERT: {alert.text}")
    for platform in overview.platforms:
        if platform.connected:
            print(f"{platform.kind}: connected since {when(platform.since)}")
    if overview.sign_ups_waiting:
        addresses = len({s.target.address for s in overview.sign_ups_waiting})
        print(f"email sign-ups waiting for confirmation: {addresses} address(es)")
    variables = overview.unconfigured
    for kind, idle in overview.waiting_for_token().items():
        print(f"{kind} subscriptions waiting for {variables[kind]} to be set: {idle}")
    if overview.failing:
        print("failing subscriptions:")
        for sub in overview.failing:
            since = f" (disabled {when(sub.disabled_at)})" if sub.disabled_at else ""
            print(f"  {sub.target.display}  {sub.keyword!r}: {sub.disabled_reason}{since}")
    if overview.failing or outbox.total("failed"):
        print(
            "to retry: `daily-papers deliveries list --status failed` shows what failed; "
            "`daily-papers deliveries retry TARGET` (or --all) resumes and re-opens it"
        )
    return code


# How `keywords list` names who asked for a keyword (digest.domain.KeywordOrigin values).
_ORIGIN_WORDS = {"operator": "database", "chat": "chat channel", "email": "email reader"}


def cmd_keywords(args: argparse.Namespace, settings: Callable[[], Settings]) -> int:
    """Add, list or remove tracked keywords stored in the database."""
    from digest.app import open_store

    loaded = settings()
    status = EXIT_OK
    if args.action == "add":
        for text in args.queries:  # validate all before storing (like: seeds: below)
            canonical_keyword(text)
    store = open_store(loaded)
    try:
        if args.action == "list":
            chat = loaded.keywords.publish_chat_queries
            for keyword in store.list_keywords():
                origin = "config" if keyword.from_config else _ORIGIN_WORDS[keyword.origin]
                listed = "" if keyword.is_public(chat_queries=chat) else ", private"
                count = store.count_matches(keyword.query)
                print(f"{keyword.query}\t({origin}{listed}, {count} matching papers stored)")
        elif args.action == "add":
            for raw in args.queries:
                if is_like_query(raw):
                    text = _resolve_like(loaded, store, raw)
                else:
                    text = parse_query(raw).text
                added = store.add_keyword(text)
                state = "added; backfilled on the next run" if added else "already tracked"
                print(f"{text}: {state}")
        else:
            # The config file's keywords come back on the next run: say where to remove them.
            in_config = {query_key(q) for q in loaded.keywords.queries}
            for text in args.queries:
                if query_key(text) in in_config:
                    print(
                        f"error: {text!r} comes from [keywords] queries (config: "
                        f"{loaded.source}) or DAILY_PAPERS_KEYWORDS_QUERIES; remove it there",
                        file=sys.stderr,
                    )
                    status = EXIT_USAGE
                    continue
                if is_like_query(text):
                    text = canonical_like(text)
                removed = store.remove_keyword(text)
                print(f"{text}: {'removed' if removed else 'not tracked'}")
    finally:
        store.close()
    return status


def cmd_subscriptions(args: argparse.Namespace, settings: Callable[[], Settings]) -> int:
    """Add, list or remove a target's subscriptions without a chat command."""
    from digest.app import open_store
    from digest.cycle import utcnow

    loaded = settings()
    if args.action == "kinds":
        return _list_kinds(loaded)
    if getattr(args, "target", None):
        Target.parse(args.target)  # a malformed target is refused before the database opens
    store = open_store(loaded)
    try:
        if args.action == "list":
            target = resolve_target(store, args.target) if args.target else None
            subs = store.list_subscriptions(target)
            if not subs:
                print("no subscriptions")
            for sub in subs:
                state = "active" if sub.active else f"disabled: {sub.disabled_reason}"
                print(f"{sub.target.display}\t{sub.keyword}\t{state}")
        elif args.action == "add":
            target = _subscribable(resolve_target(store, args.target))  # the channel checks it
            text = _subscribed_query(args)
            if is_like_query(text):
                text = _resolve_like(loaded, store, text)
            else:
                text = parse_query(text).text
            _warn_if_undeliverable(target, loaded)
            existing = store.list_subscriptions(target)
            limit = loaded.limits.subscriptions_per_target
            if len(existing) >= limit and all(
                s.keyword.casefold() != text.casefold() for s in existing
            ):
                raise ConfigError(
                    f"{target.display} already has {len(existing)} subscriptions, the limit "
                    f"(limits.subscriptions_per_target = {limit})"
                )
            before = next((s for s in existing if query_key(s.keyword) == query_key(text)), None)
            sub = store.add_subscription(target, text, now=utcnow())
            if before is None or before.active:
                print(f"{sub.target.display} subscribed to {sub.keyword!r}")
            else:
                _say_resubscribed(store, before)
        else:
            target = resolve_target(store, args.target)
            text = canonical_keyword(args.query)
            removed = store.remove_subscription(target, text)
            print(
                f"{target.display} {'unsubscribed from' if removed else 'was not subscribed to'} "
                f"{text!r}"
            )
    finally:
        store.close()
    return EXIT_OK


def _subscribed_query(args: argparse.Namespace) -> str:
    """`subscriptions add`'s query: the argument, or a `like:` query of the arXiv papers in a
    BibTeX or RIS export (`--like-from FILE`)."""
    from digest.bibliography import arxiv_ids_from_export

    if args.like_from is None:
        if args.query is None:
            raise ConfigError("say what to subscribe to: a QUERY, or --like-from FILE")
        return str(args.query)
    if args.query is not None:
        raise ConfigError("give a QUERY or --like-from FILE, not both")
    path = Path(args.like_from)
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise ConfigError(f"--like-from {path}: cannot read it ({exc.strerror})") from None
    found = arxiv_ids_from_export(text)
    if found.without_id:
        print(
            f"note: {found.without_id} of the {found.entries} references in {path} have no "
            "arXiv id and are left out",
            file=sys.stderr,
        )
    if len(found.ids) < MIN_SEEDS:
        raise SimilarityError(
            f"like: {path} holds {len(found.ids)} arXiv paper(s) among {found.entries} "
            f"references; at least {MIN_SEEDS} are needed (BibTeX or RIS export)"
        )
    return LIKE_PREFIX + ",".join(found.ids)


def _resolve_like(settings: Settings, store: PaperStore, text: str) -> str:
    """A `like:` query checked against arXiv (seeds fetched once and stored): its canonical
    text, or SimilarityError naming the unknown or withdrawn ids (nothing stored)."""
    from digest.app import build_source
    from digest.cycle import utcnow
    from digest.likes import resolve_like

    parse_like(text)  # a malformed query is refused before arXiv is asked
    with build_source(settings) as source:
        query, seeds = resolve_like(store, source, text, now=utcnow())
    print(f"{len(seeds)} seed papers checked on arXiv", file=sys.stderr)
    return query.text


def _say_resubscribed(store: PaperStore, before: Subscription) -> None:
    """A disabled subscription is active again: say what disabled it and what it left failed
    (re-activating does not re-send the backlog; `deliveries retry` does, on purpose)."""
    shown = before.target.display
    print(
        f"{shown} subscribed to {before.keyword!r} again (it was disabled: "
        f"{before.disabled_reason})"
    )
    failed = len(
        store.list_deliveries(subscription_ids=[before.id], statuses=[DeliveryStatus.FAILED])
    )
    if failed:
        print(
            f"{failed} deliveries it left failed stay failed: `daily-papers deliveries retry "
            f"{shown}` re-opens them for the next cycle"
        )


def resolve_target(store: PaperStore, text: str) -> Target:
    """The target a person typed: KIND:ADDRESS, or the masked form `subscriptions list` shows
    for a webhook (its token as `********`) when exactly one stored target shows that way."""
    target = Target.parse(text)
    if not target.masked:
        return target
    shown = target.display
    matches = sorted(
        {s.target for s in store.list_subscriptions() if s.target.display == shown}, key=str
    )
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ConfigError(
            f"no subscription shows as {shown}: `daily-papers subscriptions list` shows the targets"
        )
    raise ConfigError(
        f"{len(matches)} targets show as {shown} (the same webhook id with different tokens): "
        "give the full webhook URL"
    )


def _warn_if_undeliverable(target: Target, settings: Settings) -> None:
    """Say so when a subscription cannot be delivered until a token is set (it is still kept)."""
    from digest.app import unconfigured_channels

    variable = unconfigured_channels(settings).get(target.kind)
    if variable is not None:
        print(
            f"note: {variable} is not set, so nothing is posted to {target.kind} channels; "
            "the papers wait in the outbox until it is",
            file=sys.stderr,
        )


def _list_kinds(settings: Settings) -> int:
    """`subscriptions kinds`: each registered channel, an example, and what it still needs."""
    from digest.app import channel_specs, unconfigured_channels

    missing = unconfigured_channels(settings)
    for spec in channel_specs().values():
        if spec.subscribe_instead is not None:
            state = "added another way (see below)"
        elif spec.kind in missing:
            state = f"waits for {missing[spec.kind]} to be set"
        else:
            state = "ready"
        print(f"{spec.kind}: {spec.summary}")
        print(f"    e.g. {spec.example}   ({state})")
        if spec.subscribe_instead is not None:
            print(f"    {spec.subscribe_instead}")
    return EXIT_OK


def _subscribable(target: Target) -> Target:
    """The target checked (and cleaned) by its channel; ConfigError unless `subscriptions add`
    may subscribe it directly."""
    from digest.app import channel_specs

    specs = channel_specs()
    spec = specs.get(target.kind)
    if spec is None:
        kinds = ", ".join(f"{kind}:" for kind, s in specs.items() if s.subscribe_instead is None)
        raise ConfigError(
            f"unknown target kind {target.kind!r}: use {kinds} "
            "(`daily-papers subscriptions kinds` shows an example of each)"
        )
    if spec.subscribe_instead is not None:
        raise ConfigError(spec.subscribe_instead.replace("ADDRESS", target.address))
    return spec.validate(target)


def cmd_deliveries(args: argparse.Namespace, settings: Callable[[], Settings]) -> int:
    """List the outbox (what failed, what waits, what was sent) or retry what failed."""
    from digest.app import open_store

    loaded = settings()
    if getattr(args, "target", None):
        Target.parse(args.target)  # a malformed target is refused before the database opens
    store = open_store(loaded)
    try:
        target = resolve_target(store, args.target) if args.target else None
        if args.action == "list":
            return _list_deliveries(store, target, args.status, args.limit)
        return _retry_deliveries(store, target, loaded)
    finally:
        store.close()


def _list_deliveries(
    store: PaperStore, target: Target | None, status: str | None, limit: int
) -> int:
    """`deliveries list`: one line per delivery, failed first (the dead letters)."""
    from digest.monitoring import DEFERRED

    if status is None:  # what needs attention: failed and not yet sent
        statuses = [DeliveryStatus.FAILED, DeliveryStatus.PENDING]
    elif status == DEFERRED:
        statuses = [DeliveryStatus.PENDING]
    else:
        statuses = [DeliveryStatus(status)]
    records = store.list_deliveries(target=target, statuses=statuses)
    if status == DEFERRED:
        records = [r for r in records if r.deferred]
    elif status == DeliveryStatus.PENDING.value:
        records = [r for r in records if not r.deferred]
    what = status or "failed or pending"
    if not records:
        print(f"no {what} deliveries" + (f" for {target.display}" if target else ""))
        return EXIT_OK
    for record in records[:limit]:
        print(
            f"{_delivery_state(record)}\t{record.target.display}\t{record.keyword}\t"
            f"{record.arxiv_id}\t{_delivery_detail(record)}"
        )
    if len(records) > limit:
        print(f"... and {len(records) - limit} more (--limit)", file=sys.stderr)
    if any(r.status is DeliveryStatus.FAILED for r in records):
        print(
            "failed deliveries are not tried again: `daily-papers deliveries retry TARGET` "
            "(or --all) re-opens them for the next cycle",
            file=sys.stderr,
        )
    return EXIT_OK


def _delivery_state(record: DeliveryRecord) -> str:
    """`failed`, `deferred`, `pending` or `sent`."""
    return "deferred" if record.deferred else record.status.value


def _delivery_detail(record: DeliveryRecord) -> str:
    """The last column of `deliveries list`: what happened and what happens next."""
    tries = f" after {record.attempts} attempt{'s' if record.attempts != 1 else ''}"
    if record.status is DeliveryStatus.SENT:
        return f"sent {when(record.sent_at)}" if record.sent_at else "sent"
    if record.status is DeliveryStatus.FAILED:  # attempts 0: its subscription was disabled
        reason = record.last_error or "no reason recorded"
        return f"failed for good{tries if record.attempts else ''}: {reason}"
    if record.deferred:
        return f"next try {when(record.next_attempt_at)}{tries}: {record.last_error}"
    return "due at the next cycle"


def _retry_deliveries(store: PaperStore, target: Target | None, loaded: Settings) -> int:
    """`deliveries retry`: resume disabled subscriptions and re-open what they left failed."""
    from digest.cycle import utcnow
    from digest.mail import UNCONFIRMED

    subs = store.list_subscriptions(target)
    if target is not None and not subs:
        raise ConfigError(
            f"{target.display} has no subscriptions (`daily-papers subscriptions list` shows them)"
        )
    # A sign-up waiting for its confirmation link is not a failure: it stays waiting.
    chosen = [s.id for s in subs if s.active or s.disabled_reason != UNCONFIRMED]
    done = store.reopen_deliveries(chosen, now=utcnow())
    label = target.display if target is not None else "all targets"
    if not (done.failed or done.deferred or done.resumed):
        print(
            f"{label}: nothing to retry (no failed or deferred delivery, no disabled subscription)"
        )
        return EXIT_OK
    print(
        f"{label}: {done.failed} failed deliveries re-opened, {done.deferred} deferred ones due "
        f"now, {done.resumed} subscriptions resumed; the next cycle (or `daily-papers run`) "
        "sends them"
    )
    for kind in sorted({s.target.kind for s in subs if s.id in set(chosen)}):
        _warn_if_undeliverable(Target(kind, ""), loaded)
    return EXIT_OK


def cmd_email(args: argparse.Namespace, settings: Callable[[], Settings]) -> int:
    """Subscribe (with a confirmation email), list or remove email digest readers."""
    from digest.app import open_store
    from digest.mail.links import SubscriptionError
    from digest.mail.signup import normalise_address, run_admin

    loaded = settings()
    if getattr(args, "address", None):
        try:
            normalise_address(args.address)  # bad input: exit 2 like any other bad argument
        except SubscriptionError as exc:
            raise ConfigError(str(exc)) from None
    store = open_store(loaded)
    try:
        lines = asyncio.run(
            run_admin(
                loaded,
                store,
                args.action,
                getattr(args, "address", None),
                getattr(args, "queries", ()),
            )
        )
    finally:
        store.close()
    for line in lines:
        print(line)
    return EXIT_OK


def cmd_digest(args: argparse.Namespace, settings: Callable[[], Settings]) -> int:
    """Write (or print) one day's Markdown digest from the database."""
    from digest.app import open_store
    from digest.archive import write_or_print_digest
    from digest.cycle import utcnow

    loaded = settings()
    try:
        today = utcnow().astimezone(ZoneInfo(loaded.service.timezone)).date()
        day = date.fromisoformat(args.date) if args.date else today
    except ValueError as exc:
        raise ConfigError(f"--date {args.date!r} is not a date: expected YYYY-MM-DD") from exc
    store = open_store(loaded)
    try:
        result = write_or_print_digest(loaded, store, day, args.print)
    finally:
        store.close()
    if result is not None:
        state = "written" if result.changed else "unchanged"
        print(f"{result.path}: {state} ({result.papers} papers, {result.translated} translated)")
    return EXIT_OK


# -- parser ------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand and its help."""
    parser = argparse.ArgumentParser(
        prog="daily-papers",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"daily-papers {__version__}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"settings file (default: ./{DEFAULT_CONFIG_FILE} if present, else built-in "
        "defaults; also DAILY_PAPERS_CONFIG)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    init = sub.add_parser(
        "init",
        help="write a commented starter config file",
        description="Write a config file listing every setting with its default and what it "
        "does, with four example keywords. Edit [keywords] queries and [arxiv] contact.",
    )
    init.add_argument(
        "--path",
        default=DEFAULT_CONFIG_FILE,
        help=f"where to write it (default: {DEFAULT_CONFIG_FILE})",
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=cmd_init)

    run = sub.add_parser(
        "run",
        help="run one full cycle now (exit status 1 when it failed)",
        description="Fetch the look-back window from arXiv, match every keyword, deliver new "
        "papers to every subscribed channel, and re-render the README snapshot. One cycle runs "
        "at a time per database: when another process (a `serve` replica, another `run`) is "
        "running one, this run waits for it and says who holds it. Ctrl-C or SIGTERM stops "
        "after the messages in flight are sent and recorded (exit 130/143); a second one stops "
        "at once.",
    )
    run.add_argument(
        "--no-wait",
        action="store_true",
        help="exit with status 3 instead of waiting when a cycle is already running elsewhere",
    )
    run.set_defaults(func=cmd_run)

    serve = sub.add_parser(
        "serve",
        help="run the daily schedule, chat bots and web server until stopped",
        description="Runs the cycle on [schedule] cron (at once on a first start, and on start "
        "when a scheduled run was missed less than schedule.misfire_grace_hours ago), the Slack "
        "and Discord bots when their tokens are set, and the web server on web.host:web.port "
        "(/healthz, /metrics for Prometheus; the email sign-up pages when email is enabled). "
        "Stops cleanly on SIGINT or SIGTERM. See docs/operations.md.",
    )
    serve.set_defaults(func=cmd_serve)

    status = sub.add_parser(
        "status",
        help="last cycles, deliveries, alerts and failing subscriptions (exit 1 on problems)",
        description="Show the config in use, the last cycles with their numbers (sent, "
        "deferred for a later try, failed for good, subscriptions disabled), the outbox, "
        "alerts (failed cycles, a chat platform unreachable or refusing our token, a "
        "subscription disabled since the last ok cycle, a README that could not be written) "
        "and failing subscriptions. Exit status 1 when the last cycle failed or an alert is "
        "on. docs/operations.md explains every line and the --json shape.",
    )
    status.add_argument(
        "--runs", type=_positive_int, default=5, help="how many cycles to show (default: 5)"
    )
    status.add_argument(
        "--json",
        action="store_true",
        help="one JSON document for scripts (shape in docs/operations.md); same exit status",
    )
    status.set_defaults(func=cmd_status)

    readme = sub.add_parser(
        "readme",
        help="re-render the README snapshot from the database",
        description="Write the README snapshot (readme.path) from the stored papers, without "
        "contacting arXiv; the file is only rewritten when it changed.",
    )
    readme.set_defaults(func=cmd_readme)

    keywords = sub.add_parser("keywords", help="manage tracked keywords stored in the database")
    kw = keywords.add_subparsers(dest="action", metavar="ACTION", required=True)
    kw_add = kw.add_parser("add", help="track keyword queries (backfilled on the next run)")
    kw_add.add_argument(
        "queries",
        nargs="+",
        metavar="QUERY",
        help='a phrase like "diffusion models", arXiv syntax like '
        "'ti:\"graph neural\" AND cat:cs.LG', or like:ID,ID,ID (3 to 50 seed papers, "
        "fetched from arXiv once)",
    )
    kw.add_parser("list", help="list tracked keywords, where each comes from and its papers")
    kw_rm = kw.add_parser("remove", help="stop tracking keywords added here or from chat")
    kw_rm.add_argument(
        "queries",
        nargs="+",
        metavar="QUERY",
        help="a tracked keyword as `keywords list` shows it (case does not matter); those "
        "from [keywords] queries are removed in the config file instead",
    )
    keywords.set_defaults(func=cmd_keywords)

    subs = sub.add_parser(
        "subscriptions",
        help="manage the subscriptions of delivery targets (chat channels, webhooks, ...)",
        description="Subscribe a delivery target (a chat channel, a webhook, ...) without a chat "
        "command. `subscriptions kinds` lists the kinds of target this installation delivers "
        "to, with an example of each. Email readers confirm their address first: see "
        "`daily-papers email`.",
    )
    sa = subs.add_subparsers(dest="action", metavar="ACTION", required=True)
    sa_add = sa.add_parser(
        "add",
        help='subscribe a target: add slack:C0123 "diffusion models"',
        description="Subscribe a target to a keyword query, or to papers like 3 to 50 seed "
        'papers: add slack:C0123 "like:2501.09733,2412.20455,2410.01234" (the seeds are '
        "fetched from arXiv once; unknown or withdrawn ids are refused), or --like-from "
        "FILE to take the seeds from a BibTeX or RIS export (Zotero, JabRef, Google "
        "Scholar...): its references' arXiv ids (eprint, arXiv DOI, arxiv.org URL, "
        "'arXiv:ID' notes); references without one are left out.",
    )
    sa_add.add_argument(
        "target",
        help="KIND:ADDRESS, e.g. slack:C0123ABCD; `daily-papers subscriptions kinds` lists the "
        "kinds with an example of each",
    )
    sa_add.add_argument(
        "query",
        nargs="?",
        help='the keyword query, quoted if it has spaces, or "like:ID,ID,ID" (3 to 50 arXiv ids)',
    )
    sa_add.add_argument(
        "--like-from",
        metavar="FILE",
        help="follow papers like the arXiv papers of this BibTeX (.bib) or RIS (.ris) export",
    )
    sa_list = sa.add_parser("list", help="list subscriptions, of one target or all")
    sa_list.add_argument(
        "target", nargs="?", help="only this KIND:ADDRESS, as this list shows it (default: all)"
    )
    sa_rm = sa.add_parser("remove", help="remove one subscription")
    sa_rm.add_argument("target", help="KIND:ADDRESS as `subscriptions list` shows it")
    sa_rm.add_argument(
        "query", help="the subscribed query, quoted if it has spaces (like: ids in any order)"
    )
    sa.add_parser(
        "kinds",
        help="the kinds of target this installation delivers to: an example of each, and what "
        "each still needs",
    )
    subs.set_defaults(func=cmd_subscriptions)

    deliveries = sub.add_parser(
        "deliveries",
        help="see what failed or waits in the outbox, and retry it",
        description="Every (subscription, paper) delivery is a row of the outbox: pending "
        "(due at the next cycle), deferred (failed, tried again later with backoff), sent, or "
        "failed for good (delivery.max_attempts used up, or its subscription was disabled). "
        "`list` shows them; `retry` re-opens the failed ones and resumes disabled "
        "subscriptions, and the next cycle (or `daily-papers run`) sends them.",
    )
    da = deliveries.add_subparsers(dest="action", metavar="ACTION", required=True)
    da_list = da.add_parser(
        "list", help="list deliveries: failed and pending ones unless --status says otherwise"
    )
    da_list.add_argument(
        "--status",
        choices=["pending", "deferred", "failed", "sent"],
        help="only these (deferred: pending after a failed try; default: failed and pending)",
    )
    da_list.add_argument(
        "--limit", type=_positive_int, default=100, help="show at most N (default: 100)"
    )
    da_list.add_argument(
        "target", nargs="?", help="only this KIND:ADDRESS, as `subscriptions list` shows it"
    )
    da_retry = da.add_parser(
        "retry",
        help="re-open failed deliveries of a target (or all) for the next cycle",
        description="Resume the target's disabled subscriptions (email sign-ups waiting for "
        "their confirmation stay waiting), make its failed deliveries pending again with "
        "their attempts starting over, and its deferred ones due now. Fix the cause first "
        "(a token, the bot's access to the channel): what fails again is disabled again.",
    )
    which = da_retry.add_mutually_exclusive_group(required=True)
    which.add_argument("target", nargs="?", help="KIND:ADDRESS, as `subscriptions list` shows it")
    which.add_argument("--all", action="store_true", help="every target")
    deliveries.set_defaults(func=cmd_deliveries)

    email = sub.add_parser(
        "email",
        help="manage email digest readers (double opt-in: a confirmation email is sent first)",
        description="Email readers get digests only after clicking the link in a confirmation "
        "email. `subscribe` needs email.enabled, web.base_url and DAILY_PAPERS_SECRET_KEY; "
        "`list` and `remove` work on the database only. See docs/email.md.",
    )
    ea = email.add_subparsers(dest="action", metavar="ACTION", required=True)
    ea_sub = ea.add_parser("subscribe", help="mail ADDRESS a confirmation link for these queries")
    ea_sub.add_argument("address", help="the reader's email address")
    ea_sub.add_argument(
        "queries",
        nargs="+",
        metavar="QUERY",
        help="one or more queries, each quoted if it has spaces",
    )
    ea.add_parser("list", help="list readers, their keywords and whether they confirmed")
    ea_rm = ea.add_parser("remove", help="remove a reader (or one of their queries)")
    ea_rm.add_argument("address", help="the reader's email address")
    ea_rm.add_argument(
        "queries",
        nargs="*",
        default=[],  # without a default argparse would call this optional QUERY "required"
        metavar="QUERY",
        help="the one query to drop (its words may be unquoted); none: remove the reader",
    )
    email.set_defaults(func=cmd_email)

    digest = sub.add_parser(
        "digest",
        help="write or print one day's Markdown digest (titles, authors, PDF links, abstracts)",
        description="The day's new matching papers in the translated-digest Markdown format, "
        "written to digest.archive_dir/YYYY-MM-DD.md (or printed with --print). Translated "
        "lines appear when [translation] language is set and translations are stored.",
    )
    digest.add_argument(
        "--date",
        metavar="YYYY-MM-DD",
        help="the day the papers were first stored by a cycle, in service.timezone "
        "(default: today)",
    )
    digest.add_argument("--print", action="store_true", help="print to stdout instead of writing")
    digest.set_defaults(func=cmd_digest)
    _accept_global_options(parser)
    return parser


def _accept_global_options(parser: argparse.ArgumentParser) -> None:
    """Let --config, -v and -q also follow the command (`daily-papers run -q`), as people type.

    SUPPRESS keeps a value given before the command when the option is not repeated after it.
    """
    for action in parser._actions:  # argparse has no public way to list subparsers
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for child in dict.fromkeys(action.choices.values()):  # aliases share a parser
            child.add_argument(
                "--config", metavar="PATH", default=argparse.SUPPRESS, help="settings file"
            )
            child.add_argument(
                "-v",
                "--verbose",
                action="store_true",
                default=argparse.SUPPRESS,
                help="log debug details",
            )
            child.add_argument(
                "-q",
                "--quiet",
                action="store_true",
                default=argparse.SUPPRESS,
                help="log warnings and errors only",
            )
            _accept_global_options(child)


def configure_logging(*, verbose: bool, quiet: bool, level: str) -> None:
    """Event-style log lines on stderr."""
    chosen = logging.DEBUG if verbose else logging.WARNING if quiet else getattr(logging, level)
    logging.basicConfig(
        level=chosen,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        # Libraries narrate at INFO what our own event lines already say: alembic's schema
        # check on every start, arxiv's "Requesting page"/"Got first page", APScheduler's
        # "Adding job tentatively", discord.py's gateway chatter. Their warnings still show.
        for noisy in (
            "alembic",
            "arxiv",
            "apscheduler",
            "discord",
            "slack_bolt",
            "slack_sdk",
            "aiosmtpd",
        ):
            logging.getLogger(noisy).setLevel(max(chosen, logging.WARNING))


def undecodable_argument(argv: Sequence[str]) -> str | None:
    """The error for the first argument that is not UTF-8 text, or None.

    Python hands undecodable bytes of the command line over as lone surrogates; stored in the
    database or printed they would fail later with an encoding traceback.
    """
    for index, arg in enumerate(argv, start=1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as exc:
            raw = os.fsencode(arg)
            shown = raw.decode("utf-8", "backslashreplace")
            byte = raw[len(arg[: exc.start].encode("utf-8", "surrogateescape"))]
            return (
                f"argument {index} ('{shown}') is not UTF-8 text (byte 0x{byte:02x} at "
                f"position {exc.start + 1}): type it in UTF-8, or check your terminal's or "
                "script's encoding (LANG/LC_ALL)"
            )
    return None


def _stdout_closed() -> int:
    """Stop quietly when stdout's reader has gone (`| head`), as Unix tools do."""
    # Python flushes stdout once more at exit, which would fail again and print a traceback:
    # point it at /dev/null first.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_PIPE_CLOSED


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `daily-papers` console script."""
    parser = build_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    problem = undecodable_argument(arguments)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(arguments)
    cached: list[Settings] = []

    def settings() -> Settings:
        if not cached:
            from digest.app import channel_settings  # read only when a channel's section is used

            cached.append(load_settings(args.config, extensions=channel_settings))
            configure_logging(
                verbose=args.verbose, quiet=args.quiet, level=cached[0].service.log_level
            )
        return cached[0]

    try:
        code: int = args.func(args, settings)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handler below
    except BrokenPipeError:
        return _stdout_closed()
    except QueryError as exc:
        print(f"error: invalid query: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DailyPapersError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
