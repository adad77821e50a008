"""`python -m bench.exactly_once`: each paper exactly once, under concurrency, kills and stops.

Runs real `daily-papers` processes against the recording stand-ins of tests/deployment.py
(Slack, Discord bot and webhooks, a real SMTP relay; about 1,070 deliveries to 10 targets per
stage) and counts what arrived, never what the service reports:

- concurrent `run`s (2 and 4) on SQLite and on PostgreSQL: papers lost and duplicated;
- kill -9 at a random moment of delivery, N trials (default 20): lost, duplicated, and the
  most messages per target that carried a repeat (the promise: at most the one in flight);
- a read-only database: messages sent (the promise: none);
- with `--replicas`, two `serve` replicas on one PostgreSQL for three scheduled cycles
  (cron every minute, about 3 minutes): how many cycles each scheduled minute ran.

PostgreSQL rows use the local server (DAILY_PAPERS_TEST_POSTGRES_DSN, default
host=127.0.0.1 user=postgres dbname=test) and a throw-away database. The results table is
Markdown; docs/performance.md keeps the last one.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from digest.domain import Target
from tests.deployment import Stage, Targets, Unit

POST_DELAY = 0.05  # seconds each stand-in takes to answer a post: kills land mid-delivery


@dataclass
class Trial:
    """One row of the results table."""

    name: str
    trials: int = 0
    owed: int = 0
    lost: int = 0
    duplicated: int = 0
    repeat_messages_per_target: int = 0  # most messages one target got that repeated a paper
    messages: int = 0
    failed_exits: int = 0
    seconds: float = 0.0
    note: str = ""
    duplicated_by_kind: Counter[str] = field(default_factory=Counter)


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database on the local server, dropped afterwards."""
    import os

    import psycopg

    dsn = os.environ.get(
        "DAILY_PAPERS_TEST_POSTGRES_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test"
    )
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    name = f"daily_papers_bench_{secrets.token_hex(4)}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        user, host, port = params.get("user", "postgres"), params.get("host"), params.get("port")
        yield f"postgresql+psycopg://{user}@{host}:{port or 5432}/{name}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def database(backend: str) -> Iterator[str]:
    """An empty database of `backend`: "" means a SQLite file of the stage's own."""
    if backend == "sqlite":
        yield ""
    else:
        with postgres_database() as url:
            yield url


def repeat_messages(stage: Stage) -> int:
    """The most messages any one target received that carried a paper it already had."""
    seen: set[Unit] = set()
    per_target: Counter[Target] = Counter()
    for units in stage._messages():
        if any(unit in seen for unit in units):
            per_target[units[0][0]] += 1
        seen.update(units)
    return max(per_target.values(), default=0)


def concurrent(backend: str, processes: int) -> Trial:
    """`processes` runs started at once on one database."""
    trial = Trial(name=f"{processes} concurrent runs, {backend}", trials=1)
    began = time.monotonic()
    with (
        database(backend) as url,
        tempfile.TemporaryDirectory() as root,
        Stage(Path(root), database_url=url, post_delay=0.02) as stage,
    ):
        stage.subscribe()
        started = [stage.start() for _ in range(processes)]
        for process in started:
            process.communicate(timeout=300)
        trial.failed_exits = sum(1 for p in started if p.returncode != 0)
        _count(stage, trial)
    trial.seconds = time.monotonic() - began
    return trial


def kills(backend: str, trials: int, rng: random.Random) -> Trial:
    """kill -9 at a random moment of delivery, then a run to the end; `trials` times."""
    trial = Trial(name=f"kill -9 during delivery, {backend}", trials=trials)
    began = time.monotonic()
    total_messages: int | None = None
    for _ in range(trials):
        with (
            database(backend) as url,
            tempfile.TemporaryDirectory() as root,
            Stage(Path(root), database_url=url, post_delay=POST_DELAY) as stage,
        ):
            stage.subscribe()
            if total_messages is None:
                total_messages = _reference_messages(url)
            process = stage.start()
            stage.wait_for_messages(rng.randint(1, max(1, total_messages - 1)))
            time.sleep(rng.uniform(0, POST_DELAY))  # anywhere within a message, too
            process.kill()
            process.wait(timeout=30)
            final = stage.run(timeout=300)
            trial.failed_exits += final.returncode != 0
            _count(stage, trial)
            trial.repeat_messages_per_target = max(
                trial.repeat_messages_per_target, repeat_messages(stage)
            )
    trial.seconds = time.monotonic() - began
    trial.note = f"{total_messages} messages per complete delivery"
    return trial


def _reference_messages(url: str) -> int:
    """How many messages one undisturbed delivery of a stage takes."""
    with contextlib.ExitStack() as stack:
        if url:
            url = stack.enter_context(postgres_database())
        root = stack.enter_context(tempfile.TemporaryDirectory())
        stage = stack.enter_context(Stage(Path(root), database_url=url))
        stage.subscribe()
        stage.run(timeout=300)
        return stage.messages()


def read_only(backend: str) -> Trial:
    """A run against the stage's database opened read-only."""
    trial = Trial(name=f"read-only database, {backend}", trials=1)
    began = time.monotonic()
    with (
        database(backend) as url,
        tempfile.TemporaryDirectory() as root,
        Stage(Path(root), database_url=url) as stage,
    ):
        stage.subscribe()
        if url:
            locked = url + "?options=-c%20default_transaction_read_only%3Don"
        else:
            locked = f"sqlite:///file:{stage.root / 'data' / 'daily-papers.sqlite3'}"
            locked += "?mode=ro&uri=true"
        done = subprocess.run(  # noqa: S603 -- our own interpreter running our own CLI
            stage.command("run"),
            env=stage.env() | {"DAILY_PAPERS_DATABASE_URL": locked},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        trial.failed_exits = int(done.returncode != 1)  # it must fail, with status 1
        trial.messages = stage.messages()
        trial.owed = len(stage.owed())
        last = done.stderr.strip().splitlines()[-1] if done.stderr else ""
        trial.note = "exit 1: " + last.split("': ", 1)[-1][:70]
    trial.seconds = time.monotonic() - began
    return trial


def replicas() -> Trial:
    """Two `serve` replicas on one PostgreSQL, cron every minute, until 4 cycles ran."""
    import socket

    trial = Trial(name="2 serve replicas, postgres, cron every minute", trials=1)
    began = time.monotonic()
    with (
        postgres_database() as url,
        tempfile.TemporaryDirectory() as root,
        Stage(
            Path(root),
            database_url=url,
            targets=Targets(discord=()),
            extra_config='\n[schedule]\ncron = "* * * * *"\ntimezone = "UTC"\n',
        ) as stage,
    ):
        stage.subscribe()
        processes = []
        for _ in range(2):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            processes.append(
                subprocess.Popen(  # noqa: S603 -- our own interpreter, our own CLI
                    stage.command("serve"),
                    env=stage.env()
                    | {
                        "DAILY_PAPERS_WEB_PORT": str(port),
                        "DISCORD_BOT_TOKEN": "",
                        "SLACK_SIGNING_SECRET": "bench-signing-secret",
                    },
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        runs: list[datetime] = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(runs) < 4:
            time.sleep(1)
            with stage.open_store() as store:
                runs = sorted(r.started_at for r in store.recent_runs(50))
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.communicate(timeout=60)
        trial.failed_exits = sum(1 for p in processes if p.returncode != 0)
        minutes = Counter(r.astimezone(UTC).strftime("%H:%M") for r in runs)
        trial.note = (
            f"{len(runs)} cycles in {len(minutes)} minutes; most in one minute: "
            f"{max(minutes.values(), default=0)}"
        )
        _count(stage, trial)
    trial.seconds = time.monotonic() - began
    return trial


def _count(stage: Stage, trial: Trial) -> None:
    tally = stage.tally()
    trial.owed += tally.owed
    trial.lost += len(tally.lost) + tally.pending
    trial.duplicated += tally.duplicated
    trial.messages += tally.messages
    for target, extra in tally.duplicated_per_target.items():
        trial.duplicated_by_kind[target.kind] += extra


def table(rows: Sequence[Trial]) -> str:
    """The results as Markdown."""
    lines = [
        "| trial | runs | deliveries owed | lost | duplicated | most repeat messages "
        "per target | messages | bad exits | seconds | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        note = r.note
        if r.duplicated_by_kind:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(r.duplicated_by_kind.items()))
            note = f"{note}; duplicated: {kinds}" if note else f"duplicated: {kinds}"
        lines.append(
            f"| {r.name} | {r.trials} | {r.owed:,} | {r.lost} | {r.duplicated} "
            f"| {r.repeat_messages_per_target} | {r.messages:,} | {r.failed_exits} "
            f"| {r.seconds:.0f} | {note} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the trials and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.exactly_once", description=__doc__)
    parser.add_argument("--trials", type=int, default=20, help="kill -9 trials per backend")
    parser.add_argument(
        "--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres"
    )
    parser.add_argument(
        "--replicas", action="store_true", help="also two serve replicas (about 3 minutes)"
    )
    parser.add_argument("--seed", type=int, default=2026, help="seed of the kill moments")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    # A killed client leaves its request half-read: the stand-ins' server would log each.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    rows: list[Trial] = []
    for backend in args.backends.split(","):
        for processes in (2, 4):
            rows.append(concurrent(backend, processes))
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr)
        rows.append(kills(backend, args.trials, rng))
        print(table(rows[-1:]).splitlines()[-1], file=sys.stderr)
        rows.append(read_only(backend))
    if args.replicas:
        rows.append(replicas())
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
