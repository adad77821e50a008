"""Each paper reaches each subscriber exactly once, under real operations.

Real `daily-papers` processes (tests/deployment.py) against recording stand-ins of Slack,
Discord and a mail relay: concurrent runs on SQLite and PostgreSQL, kill -9 during delivery,
SIGTERM and SIGINT during delivery, a database that cannot be written. Every assertion counts
what arrived at the stand-ins, not what the service reports.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from digest.lease import CYCLE_LEASE
from tests.conftest import _empty_postgres
from tests.deployment import Stage, Tally


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """An empty database URL for a stage: "" (a SQLite file of its own) or the test PostgreSQL."""
    if request.param == "sqlite":
        return ""
    url: str = request.getfixturevalue("postgres_url")
    _empty_postgres(url)
    return url


@pytest.fixture
def stage(tmp_path: Path, database_url: str) -> Iterator[Stage]:
    """A subscribed stage on each backend, its posts answered after 20 ms."""
    with Stage(tmp_path, database_url=database_url, post_delay=0.02) as running:
        running.subscribe()
        yield running


def assert_exactly_once(tally: Tally) -> None:
    """Everything owed arrived, once, and nothing else arrived."""
    assert tally.owed > 500, tally
    assert tally.lost == []
    assert tally.strangers == []
    assert tally.duplicated == 0, tally.duplicated_per_target
    assert tally.pending == 0


def max_units_per_message(stage: Stage) -> int:
    """The most deliveries one arrived message carried (a kill can repeat one such message)."""
    return max(len(units) for units in stage._messages())


@pytest.mark.parametrize("processes", [2, 4])
def test_concurrent_runs_deliver_each_paper_once(stage: Stage, processes: int) -> None:
    """2 or 4 `run`s started together: one cycle at a time, every paper once, none lost."""
    started = [stage.start() for _ in range(processes)]
    results = [p.communicate(timeout=180) for p in started]
    assert [p.returncode for p in started] == [0] * processes, [err for _, err in results]
    waited = [err for _, err in results if "waiting: a cycle is already running on" in err]
    assert waited  # the others saw the first one's lease and waited for it
    assert "since" in waited[0]
    assert_exactly_once(stage.tally())


def test_kill_9_during_delivery_resends_at_most_the_message_in_flight(
    tmp_path: Path, database_url: str
) -> None:
    """Three kill -9s mid-delivery: nothing is lost, and each target gets at most one message
    again per kill (the one that was in flight)."""
    with Stage(tmp_path, database_url=database_url, post_delay=0.05) as stage:
        stage.subscribe()
        kills = 0
        for after in (5, 25, 45):
            process = stage.start()
            stage.wait_for_messages(after)
            process.kill()
            process.wait(timeout=10)
            kills += 1
        final = stage.run()  # waits out the killed holder's lease (3 s), then finishes
        assert final.returncode == 0, final.stderr
        tally = stage.tally()
        assert tally.lost == []
        assert tally.strangers == []
        assert tally.pending == 0
        largest = max_units_per_message(stage)
        for target, extra in tally.duplicated_per_target.items():
            assert extra <= kills * largest, (target, extra)
        # Of the duplicates, no target got more than one message's worth per kill: the 16
        # targets of a kind in flight each had one message unrecorded at most.
        assert tally.duplicated <= kills * len(stage.targets.all()) * largest


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_delivery_finishes_and_records_the_message_in_flight(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGTERM or Ctrl-C mid-delivery: the run ends with 128+N after recording every message
    that arrived; the next run sends only the rest, so nothing arrives twice."""
    with Stage(tmp_path, post_delay=0.1) as stage:
        stage.subscribe()
        process = stage.start()
        stage.wait_for_messages(3)
        process.send_signal(sig)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 128 + sig, err
        assert f"{sig.name}: stopping after the messages in flight" in err
        assert "stopped before it finished" in err
        assert "Traceback" not in err
        arrived = stage.arrivals()
        owed = stage.owed()
        assert arrived
        assert all(owed[unit] == "sent" for unit in arrived), "arrived but not recorded"
        assert any(status == "pending" for status in owed.values()), "nothing was left to send"
        stage.set_delay(0)
        again = stage.run()
        assert again.returncode == 0, again.stderr
        assert_exactly_once(stage.tally())


def test_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    """The second SIGTERM does not wait for the message in flight: the process ends by it."""
    with Stage(tmp_path, post_delay=2.0) as stage:
        stage.subscribe()
        process = stage.start()
        stage.wait_for_messages(1)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # let the first one be handled
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
        assert process.returncode == -signal.SIGTERM  # ended by the signal itself
        assert time.monotonic() - began < 1.5


def _read_only_url(stage: Stage, database_url: str) -> str:
    """The stage's database opened read-only (root ignores file modes, so SQLite's own flag)."""
    if database_url:
        return database_url + "?options=-c%20default_transaction_read_only%3Don"
    path = stage.root / "data" / "daily-papers.sqlite3"
    return f"sqlite:///file:{path}?mode=ro&uri=true"


def test_a_read_only_database_sends_nothing(stage: Stage, database_url: str) -> None:
    """A database that cannot be written: the run fails with a clear error before any send."""
    stage.run("status")  # migrated while writable
    env_url = _read_only_url(stage, database_url)
    process = subprocess.run(  # noqa: S603 -- our own CLI
        stage.command("run"),
        env=stage.env() | {"DAILY_PAPERS_DATABASE_URL": env_url},
        cwd=stage.root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == 1, process.stderr
    assert "read" in process.stderr.lower()  # "readonly database" / "read-only transaction"
    assert "Traceback" not in process.stderr
    assert stage.messages() == 0
    assert stage.run().returncode == 0  # writable again: delivered once
    assert_exactly_once(stage.tally())


def test_a_record_that_fails_mid_delivery_stops_every_target(tmp_path: Path) -> None:
    """When outcomes stop being recordable (here a trigger fails the 20th), no target sends
    more than its message in flight; the next run completes with nothing lost."""
    with Stage(tmp_path, post_delay=0.02) as stage:
        stage.subscribe()
        stage.run("status")
        import sqlite3

        path = stage.root / "data" / "daily-papers.sqlite3"
        with sqlite3.connect(path) as db:
            db.executescript(
                """
                CREATE TABLE broken_after (n INTEGER);
                INSERT INTO broken_after VALUES (0);
                CREATE TRIGGER disk_full BEFORE UPDATE OF status ON deliveries
                WHEN NEW.status = 'sent'
                BEGIN
                    UPDATE broken_after SET n = n + 1;
                    SELECT RAISE(ABORT, 'database or disk is full')
                    WHERE (SELECT n FROM broken_after) > 20;
                END;
                """
            )
        failed = stage.run()
        assert failed.returncode == 1
        assert "cannot record deliveries, stopped sending" in failed.stderr
        assert "disk is full" in failed.stderr
        arrived = stage.arrivals()
        owed = stage.owed()
        unrecorded = [unit for unit in arrived if owed[unit] != "sent"]
        # At most the message in flight of each target that was posting when it failed.
        targets = {unit[0] for unit in unrecorded}
        assert len(targets) <= len(stage.targets.all())
        assert len(unrecorded) <= len(targets) * max_units_per_message(stage)
        with sqlite3.connect(path) as db:
            db.execute("DROP TRIGGER disk_full")
        assert stage.run().returncode == 0
        tally = stage.tally()
        assert tally.lost == []
        assert tally.pending == 0
        assert tally.duplicated <= len(unrecorded)


def test_run_waits_for_the_lease_or_exits_3_with_no_wait(tmp_path: Path) -> None:
    """A lease held elsewhere: `--no-wait` exits 3 naming the holder; plain `run` waits, says
    who it waits for, and runs once the holder is gone."""
    from datetime import timedelta

    with Stage(tmp_path) as stage:
        stage.subscribe()
        with stage.open_store() as store:
            store.acquire_lease(
                CYCLE_LEASE,
                owner="other",
                host="replica-b",
                pid=4242,
                ttl=timedelta(minutes=5),
            )
        busy = stage.run("run", "--no-wait")
        assert busy.returncode == 3
        assert "replica-b pid 4242 since" in busy.stderr
        assert stage.messages() == 0
        waiting = stage.start()
        lines: list[str] = []
        reader = threading.Thread(
            target=lambda: lines.extend(iter(waiting.stderr.readline, "")),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        deadline = time.monotonic() + 60
        while not any(line.startswith("waiting: ") for line in lines):
            assert time.monotonic() < deadline, "".join(lines)
            assert waiting.poll() is None, "".join(lines)
            time.sleep(0.05)
        assert stage.messages() == 0  # nothing is sent while another holds the lease
        with stage.open_store() as store:
            store.release_lease(CYCLE_LEASE, owner="other")
        assert waiting.wait(timeout=120) == 0
        reader.join(timeout=10)
        err = "".join(lines)
        assert "waiting: a cycle is already running on replica-b pid 4242 since" in err
        assert_exactly_once(stage.tally())


def test_a_killed_holders_lease_is_taken_over_after_it_expires(tmp_path: Path) -> None:
    """A holder that died without releasing (kill -9) blocks the next run only until expiry."""
    from datetime import timedelta

    with Stage(tmp_path) as stage:
        stage.subscribe()
        with stage.open_store() as store:
            store.acquire_lease(
                CYCLE_LEASE, owner="dead", host="gone", pid=1, ttl=timedelta(seconds=2)
            )
        began = time.monotonic()
        result = stage.run()
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - began >= 1.0  # it did wait for the expiry
        assert_exactly_once(stage.tally())


def test_status_shows_the_cycle_in_flight(tmp_path: Path) -> None:
    """While a cycle runs, `status` names the process that holds the lease."""
    with Stage(tmp_path, post_delay=0.2) as stage:
        stage.subscribe()
        process = stage.start()
        try:
            stage.wait_for_messages(1)
            status = stage.run("status")
            assert f"cycle running: {os.uname().nodename} pid {process.pid} since" in (
                status.stdout
            )
        finally:
            process.kill()
            process.wait(timeout=10)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> int:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 -- loopback
        return int(response.status)


@pytest.mark.postgres
def test_two_serve_replicas_run_each_scheduled_cycle_once(
    tmp_path: Path, postgres_url: str
) -> None:
    """Two `serve` replicas on one PostgreSQL, cron every minute: one catch-up and three
    scheduled cycles each ran once (the other replica skipped it), both served the web, and
    the papers of every cycle arrived once."""
    from datetime import UTC, datetime, timedelta

    from tests.deployment import Targets, corpus

    _empty_postgres(postgres_url)
    # Channels of the bot-less kinds: the Discord bot would need a gateway stand-in.
    targets = Targets(discord=())
    with Stage(
        tmp_path,
        database_url=postgres_url,
        targets=targets,
        extra_config='\n[schedule]\ncron = "* * * * *"\ntimezone = "UTC"\n',
    ) as stage:
        stage.subscribe()
        ports = [_free_port(), _free_port()]
        replicas = [
            subprocess.Popen(  # noqa: S603 -- our own CLI
                stage.command("serve"),
                env=stage.env()
                | {
                    "DAILY_PAPERS_WEB_PORT": str(port),
                    "DISCORD_BOT_TOKEN": "",
                    "SLACK_SIGNING_SECRET": "signing-secret",  # Slack commands over HTTP
                },
                cwd=stage.root,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for port in ports
        ]
        try:
            runs: list[datetime] = []
            grown = False
            deadline = time.monotonic() + 280
            while time.monotonic() < deadline:
                time.sleep(1)
                assert all(r.poll() is None for r in replicas)
                with stage.open_store() as store:
                    runs = sorted(r.started_at for r in store.recent_runs(20))
                if runs and not grown:
                    # After the first cycle, arXiv announces more: the next cycle owes them.
                    now = datetime.now(UTC)
                    fresh = corpus(120, now=now, seed=77)
                    fresh = [
                        p.__class__(**{**_fields(p), "arxiv_id": "2699." + p.arxiv_id[5:]})
                        for p in fresh
                    ]
                    stage.arxiv.set_papers([*stage.papers, *fresh])
                    grown = True
                if len(runs) >= 4:
                    break
            assert len(runs) >= 4, runs
            assert all(_get(f"http://127.0.0.1:{port}/healthz") == 200 for port in ports)
        finally:
            for replica in replicas:
                replica.send_signal(signal.SIGTERM)
            logs = [r.communicate(timeout=60)[1] for r in replicas]
        assert [r.returncode for r in replicas] == [0, 0], logs
        minutes = [run.replace(second=0, microsecond=0) for run in runs]
        assert len(minutes) == len(set(minutes)), runs  # no slot ran twice
        assert sum(log.count("cycle.skipped reason=already-started") for log in logs) >= 3
        assert runs[-1] - runs[1] > timedelta(minutes=1, seconds=30)  # three scheduled slots
        assert_exactly_once(stage.tally())


def _fields(paper: object) -> dict[str, object]:
    import dataclasses

    return {f.name: getattr(paper, f.name) for f in dataclasses.fields(paper)}  # type: ignore[arg-type]


def test_serve_stops_in_order_during_delivery(tmp_path: Path) -> None:
    """SIGTERM to `serve` during its catch-up delivery: it exits 0 soon, every message that
    arrived is recorded, and a later run sends only the rest."""
    from tests.deployment import Targets

    with Stage(tmp_path, post_delay=0.2, targets=Targets(discord=())) as stage:
        stage.subscribe()
        process = subprocess.Popen(  # noqa: S603 -- our own CLI
            stage.command("serve"),
            env=stage.env()
            | {
                "DAILY_PAPERS_WEB_PORT": str(_free_port()),
                "DISCORD_BOT_TOKEN": "",
                "SLACK_SIGNING_SECRET": "signing-secret",
            },
            cwd=stage.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        stage.wait_for_messages(3)
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert time.monotonic() - began < 5
        assert "serve.stopped" in err
        arrived = stage.arrivals()
        owed = stage.owed()
        assert all(owed[unit] == "sent" for unit in arrived), "arrived but not recorded"
        assert any(status == "pending" for status in owed.values())
        stage.set_delay(0)
        assert stage.run().returncode == 0
        assert_exactly_once(stage.tally())
