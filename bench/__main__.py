"""`python -m bench [--scenario small|full] [--only GROUP_OR_NAME ...]`: the benchmark suite.

Starts the local stand-ins (arXiv API over a synthetic corpus, rate-limited Slack and Discord
fakes, a real aiosmtpd server), runs each scenario in a fresh service process through the real
code paths, and prints Markdown tables: arXiv requests and the smallest gap between them, wall
time per phase, peak RSS, database size, deliveries and 429s per channel kind, the politeness
check, and DailyArXiv's one-request-per-keyword strategy side by side with ours.

Groups for `--only`: `cycles`, `polite`, `baseline`, or any part of a row's name (`K=500`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.scenarios import ARXIV_FLOOR, PLANS, Plan, Row, machine, run_plan, worker_main

KINDS = ("slack", "discord", "email")


def _s(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def cycles_table(rows: Sequence[Row]) -> list[str]:
    """Per scenario: requests, gap, phase seconds, RSS and database size."""
    lines = [
        "| scenario | arXiv req | min gap s | fetch s | match s | store s | slack s | discord s "
        "| email s | README s | new papers | sent | peak RSS MB | DB MB |",
        "|---|" + "---:|" * 13,
    ]
    for row in rows:
        r, w, p = row.result, row.result.world, row.result.phases
        readme = p.get("readme")
        lines.append(
            f"| {r.name} | {w.get('arxiv_requests', 0)} | {_s(w.get('arxiv_min_gap'), 2)} "
            f"| {_s(p.get('fetch'))} | {_s(p.get('match'))} | {_s(p.get('store'))} "
            + "".join(f"| {_s(p.get(f'deliver {k}'))} " for k in KINDS)
            + f"| {_s(readme, 2)} | {r.new_papers:,} | {sum(r.sent.values()):,} "
            f"| {r.rss_mb:.0f} | {r.db_mb:.1f} |"
        )
    return lines


def delivery_table(rows: Sequence[Row]) -> list[str]:
    """Per scenario and channel kind: targets, deliveries, messages, 429s, connections."""
    lines = [
        "| scenario | channel | targets | deliveries sent | messages | 429s | SMTP connections "
        "| seconds |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        r, w = row.result, row.result.world
        for kind in KINDS:
            if not r.batches.get(kind):
                continue
            messages = {
                "slack": w.get("slack_posts"),
                "discord": w.get("discord_posts"),
                "email": w.get("smtp_messages"),
            }[kind]
            throttled = {"slack": w.get("slack_429"), "discord": w.get("discord_429")}.get(kind)
            connections = w.get("smtp_connections") if kind == "email" else None
            lines.append(
                f"| {r.name} | {kind} | {r.batches[kind]:,} | {r.sent.get(kind, 0):,} "
                f"| {messages:,} | {'—' if throttled is None else throttled} "
                f"| {'—' if connections is None else connections} "
                f"| {_s(r.phases.get(f'deliver {kind}'))} |"
            )
    return lines


def _floor(row: Row) -> float:
    """The least a fetch of N requests can take at this delay: N - 1 waits between them."""
    return max(0, row.result.world.get("arxiv_requests", 0) - 1) * row.spec.delay


def polite_table(rows: Sequence[Row]) -> list[str]:
    """Our fetch against the per-request floor, at the real delay."""
    lines = [
        "| scenario | arXiv req | min gap s | fetch s | floor s ((req - 1) x delay) "
        "| fetch / floor | whole cycle s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        r, w = row.result, row.result.world
        floor = _floor(row)
        fetch = r.phases.get("fetch", 0.0)
        lines.append(
            f"| {r.name} | {w.get('arxiv_requests', 0)} | {_s(w.get('arxiv_min_gap'), 3)} "
            f"| {fetch:.1f} | {floor:.1f} | {fetch / floor if floor else 0:.3f} "
            f"| {_s(r.phases.get('cycle'))} |"
        )
    return lines


def baseline_table(rows: Sequence[Row]) -> list[str]:
    """DailyArXiv's per-keyword queries against our one harvest, same stand-in, same delay."""
    by_k: dict[int, dict[str, Row]] = {}
    for row in rows:
        by_k.setdefault(row.spec.keywords, {})[row.spec.mode] = row
    lines = [
        "| K | delay s | our requests | baseline requests | request ratio | our fetch s "
        "| baseline fetch s | fetch ratio | floor at 3 s: ours / baseline |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, pair in sorted(by_k.items()):
        ours, base = pair.get("ours-fetch"), pair.get("baseline")
        if ours is None or base is None:
            continue
        oq = ours.result.world.get("arxiv_requests", 0)
        bq = base.result.world.get("arxiv_requests", 0)
        of, bf = ours.result.phases.get("fetch", 0.0), base.result.phases.get("fetch", 0.0)
        lines.append(
            f"| {k:,} | {ours.spec.delay:g} | {oq} | {bq:,} | {bq / oq if oq else 0:.1f}x "
            f"| {of:.1f} | {bf:.1f} | {bf / of if of else 0:.1f}x "
            f"| {oq * ARXIV_FLOOR:.0f} s / {bq * ARXIV_FLOOR:,.0f} s |"
        )
    return lines


def target_lines(groups: dict[str, list[Row]], plan: Plan) -> list[str]:
    """The issue's targets, each with the measured value and met / missed."""
    out: list[str] = []

    def check(label: str, ok: bool, measured: str) -> None:
        out.append(f"- {'met' if ok else 'MISSED'}: {label} — {measured}")

    cycles = [r for r in groups.get("cycles", []) if r.spec.mode == "cycle"]
    # First cycles only: they read the same window (a second cycle's differs by a day).
    requests = {
        r.spec.keywords: r.result.world.get("arxiv_requests", 0)
        for r in cycles
        if r.spec.seed_store
    }
    if len(set(requests.values())) >= 1 and requests:
        shown = ", ".join(f"K={k:,}: {n}" for k, n in sorted(requests.items()))
        check(
            "arXiv requests per cycle do not grow with K", len(set(requests.values())) == 1, shown
        )
    if plan.name != "full":
        out.append("- (the size targets are checked by the full scenario)")
        return out
    for row in groups.get("polite", []):
        floor = _floor(row)
        fetch = row.result.phases.get("fetch", 0.0)
        gap = row.result.world.get("arxiv_min_gap") or 0.0
        check(
            f"fetch within 10% of the {row.spec.delay:g} s-per-request floor ({row.result.name})",
            floor > 0 and fetch <= 1.1 * floor and gap >= row.spec.delay,
            f"fetch {fetch:.1f} s vs floor {floor:.1f} s, smallest gap {gap:.3f} s",
        )
    for row in cycles:
        r = row.result
        if not r.subscriptions:
            continue
        if row.spec.seed_store and not row.spec.rate_limits:
            busy = sum(r.phases.values())
            check(
                f"{r.name}, {plan.papers:,} new papers: every phase (arXiv delay 0) under 60 s",
                busy < 60,
                f"{busy:.1f} s",
            )
        check(f"{r.name}: peak RSS under 250 MB", r.rss_mb < 250, f"{r.rss_mb:.0f} MB")
        if row.spec.rate_limits:
            throttled = r.world.get("slack_429", 0) + r.world.get("discord_429", 0)
            check(
                f"{r.name}: zero 429s from the rate-limited Slack and Discord fakes",
                throttled == 0,
                f"{throttled}",
            )
    big = [r for r in cycles if r.spec.keywords == max(plan.keyword_counts) and r.spec.seed_store]
    for row in big:
        match = row.result.phases.get("match", 0.0)
        check(
            f"matching {row.spec.keywords:,} keywords against {plan.papers:,} papers under 5 s",
            match < 5,
            f"{match:.2f} s",
        )
    for row in groups.get("cycles", []):
        if row.spec.mode != "email":
            continue
        w, seconds = row.result.world, row.result.phases.get("deliver email", 0.0)
        messages, connections = w.get("smtp_messages", 0), w.get("smtp_connections", 0)
        check(
            f"{row.spec.email_digests:,} email digests under 2 minutes",
            seconds < 120 and messages >= row.spec.email_digests,
            f"{messages:,} messages in {seconds:.1f} s",
        )
        check(
            "at most one SMTP connection per 100 messages",
            connections * 100 <= max(messages, 1),
            f"{connections} connections",
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=sorted(PLANS), default="full")
    parser.add_argument("--only", nargs="*", default=[], help="groups or parts of row names")
    parser.add_argument(
        "--email-digests", type=int, help="override the email scenario's size (for profiling)"
    )
    parser.add_argument("--keep", type=Path, help="keep databases, READMEs and logs here")
    parser.add_argument(
        "--inline", action="store_true", help="run the service in this process (no RSS per row)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample each service process with py-spy (stacks saved next to --keep's logs)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    plan = PLANS[args.scenario]
    if args.email_digests:
        plan = dataclasses.replace(plan, email_digests=args.email_digests)
    info = machine()
    print(f"# daily-papers benchmark: {plan.name} scenario")
    print()
    print(
        f"machine: {info['cpus']} CPUs ({info['cpu']}), {info['memory']} RAM, "
        f"Python {info['python']}; load average at start: {info['load']}"
    )

    def progress(group: str, row: Row) -> None:
        print(f"  done: {row.result.name} ({group})", file=sys.stderr, flush=True)

    rows = run_plan(
        plan,
        only=args.only,
        keep=args.keep,
        on_row=progress,
        inline=args.inline,
        profile=args.profile,
    )
    groups: dict[str, list[Row]] = {}
    for group, row in rows:
        groups.setdefault(group, []).append(row)
    sections = [
        (
            "Daily cycles (arXiv delay 0: fetch is the stand-in's answer time)",
            "cycles",
            cycles_table,
        ),
        ("Deliveries", "cycles", delivery_table),
        ("Politeness: full run_cycle at the real per-request delay", "polite", polite_table),
        ("Baseline: DailyArXiv's one query per keyword vs one harvest", "baseline", baseline_table),
    ]
    for title, group, table in sections:
        if groups.get(group):
            print()
            print(f"## {title}")
            print()
            print("\n".join(table(groups[group])))
    print()
    print("## Targets")
    print()
    print("\n".join(target_lines(groups, plan)))
    by_note: dict[str, list[str]] = {}
    for row in (r for g in groups.values() for r in g):
        for note in row.result.notes:
            by_note.setdefault(note, []).append(row.result.name)
    notes = [f"- {note} ({', '.join(names)})" for note, names in by_note.items()]
    if notes:
        print()
        print("## Notes")
        print()
        print("\n".join(notes))
    print()
    print(f"load average at end: {machine()['load']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
