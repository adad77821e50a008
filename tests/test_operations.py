"""The operator's loop at the command line (docs/operations.md): run summaries and `status` that
tell sent, deferred, failed for good and disabled apart; dead letters listed and retried; alerts
for a disabled subscription, a refused token and an unwritten README; `status --json`; masked
webhook targets; input that is not UTF-8. Real CLI runs against the arXiv, Slack and Discord
stand-ins on 127.0.0.1 and a real SQLite file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import discord.http
import pytest

from digest.cli import main
from digest.domain import Paper
from tests.fakes.arxiv_server import ArxivStandIn
from tests.fakes.discord_api import FakeDiscord, webhook_url
from tests.fakes.slack_api import BOT_TOKEN, FakeSlackApi, error, server_error
from tests.local import in_background
from tests.reference_papers import load_reference_papers

KEYWORD = "Diffusion Models"  # a starter keyword several reference papers match
CHANNEL = "C0OPS0001"
DISCORD_CHANNEL = "123456789012345678"
TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d UTC"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def recent_reference_papers() -> list[Paper]:
    """The reference papers as if submitted in the last hours: what a real run harvests (and
    delivers) rather than backfills."""
    start = datetime.now(UTC) - timedelta(hours=3)
    return [
        replace(p, published=start + timedelta(seconds=i), updated=start + timedelta(seconds=i))
        for i, p in enumerate(load_reference_papers())
    ]


@pytest.fixture
def server() -> Iterator[ArxivStandIn]:
    """The arXiv stand-in serving the reference papers, submitted in the last hours."""
    with ArxivStandIn(recent_reference_papers()) as stand_in:
        yield stand_in


@pytest.fixture(autouse=True)
def restore_route_base() -> Iterator[None]:
    """`run` points discord.py's process-wide Route.BASE at discord.api_url: put it back."""
    before = discord.http.Route.BASE
    yield
    discord.http.Route.BASE = before


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: ArxivStandIn) -> Path:
    """A project folder (starter config, test mode, the stand-in) as the working directory."""
    monkeypatch.chdir(tmp_path)
    for variable in ("DAILY_PAPERS_CONFIG", "SLACK_BOT_TOKEN", "DISCORD_BOT_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    assert main(["init"]) == 0
    config = tmp_path / "daily-papers.toml"
    text = config.read_text(encoding="utf-8")
    text = text.replace("[service]\n", "[service]\ntest_mode = true\n", 1).replace(
        "[arxiv]\n", f'[arxiv]\napi_url = "{server.url}"\ncategories = ["cs.CV"]\n', 1
    )
    config.write_text(text, encoding="utf-8")
    return tmp_path


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`daily-papers ARGS...` in this process: exit status, stdout, stderr."""
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def alerts(out: str) -> list[str]:
    """The ALERT lines of `status`."""
    return [line for line in out.splitlines() if line.startswith("ALERT: ")]


def status_json(capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    """`status --json`: exit status and the parsed document."""
    code, out, _ = cli(capsys, "status", "--json")
    return code, json.loads(out)


def use_slack(monkeypatch: pytest.MonkeyPatch, slack: FakeSlackApi) -> None:
    """Point the CLI at the fake Slack with the token it accepts."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("DAILY_PAPERS_SLACK_API_URL", slack.api_url)


# -- dead letters: a disabled subscription ------------------------------------------------------


def test_a_disabled_subscription_alerts_and_its_dead_letters_are_retried(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A channel that is gone: `run` says failed for good and disabled, `status` alerts (exit
    1), `deliveries list` shows the dead letters, re-subscribing says how many stay failed,
    `deliveries retry` re-opens them and the next `run` sends them; then status is clear."""
    with in_background(FakeSlackApi()) as slack:
        use_slack(monkeypatch, slack)
        assert cli(capsys, "subscriptions", "add", f"slack:{CHANNEL}", KEYWORD)[0] == 0
        slack.script("chat.postMessage", error("channel_not_found"))

        code, out, err = cli(capsys, "run")
        assert code == 0, err  # the cycle itself worked
        owed = int(re.search(r"; deliveries: 0 sent, 0 deferred, (\d+) failed for good", out)[1])
        assert owed > 0
        assert f"{owed} failed for good, 1 subscriptions disabled" in out
        assert "warning: 1 subscription(s) disabled by this cycle" in err

        code, out, _ = cli(capsys, "status")
        assert code == 1
        assert alerts(out) == [
            "ALERT: 1 subscription(s) disabled since the last ok cycle ("
            + re.search(TIME, alerts(out)[0])[0]
            + "): see failing subscriptions below; `daily-papers deliveries retry TARGET` "
            "resumes one once it is fixed"
        ]
        assert f"sent=0 deferred=0 failed={owed} disabled=1" in out
        assert (
            f"deliveries: 0 sent, 0 due at the next cycle, 0 deferred, {owed} failed for good"
            in out
        )
        assert re.search(
            rf"slack:{CHANNEL}  '{KEYWORD}': channel_not_found: .* \(disabled {TIME}\)", out
        )

        code, out, err = cli(capsys, "deliveries", "list")
        lines = out.splitlines()
        assert code == 0
        assert len(lines) == owed
        for line in lines:
            state, target, keyword, arxiv_id, detail = line.split("\t")
            assert (state, target, keyword) == ("failed", f"slack:{CHANNEL}", KEYWORD)
            assert re.fullmatch(r"\d{4}\.\d{4,5}", arxiv_id)
            assert detail.startswith("failed for good: channel_not_found: ")
        assert "`daily-papers deliveries retry TARGET`" in err
        assert cli(capsys, "deliveries", "list", "--status", "sent")[1] == "no sent deliveries\n"

        code, out, _ = cli(capsys, "subscriptions", "add", f"slack:{CHANNEL}", KEYWORD)
        assert code == 0
        first, second = out.splitlines()
        assert first.startswith(
            f"slack:{CHANNEL} subscribed to '{KEYWORD}' again (it was disabled: channel_not_found: "
        )
        assert second == (
            f"{owed} deliveries it left failed stay failed: `daily-papers deliveries retry "
            f"slack:{CHANNEL}` re-opens them for the next cycle"
        )

        code, out, _ = cli(capsys, "deliveries", "retry", f"slack:{CHANNEL}")
        assert code == 0
        assert out.startswith(
            f"slack:{CHANNEL}: {owed} failed deliveries re-opened, 0 deferred ones due now, "
            "0 subscriptions resumed; the next cycle (or `daily-papers run`) sends them"
        )
        assert cli(capsys, "deliveries", "list", "--status", "pending")[1].count("\t") == owed * 4

        code, out, _ = cli(capsys, "run")
        assert code == 0
        assert f"; deliveries: {owed} sent, 0 deferred, 0 failed for good" in out
        code, out, _ = cli(capsys, "status")
        assert code == 0, out
        assert alerts(out) == []
        assert len(cli(capsys, "deliveries", "list", "--status", "sent")[1].splitlines()) == owed
        assert cli(capsys, "deliveries", "retry", "--all")[1].startswith("all targets: nothing")


# -- deferred is not failed -----------------------------------------------------------------


def test_deferred_deliveries_are_told_apart_from_failed_ones(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slack answering 500: the first run defers (with the next try), status stays ok; once
    delivery.max_attempts is used up they are failed for good; `retry --all` sends them."""
    monkeypatch.setenv("DAILY_PAPERS_DELIVERY_MAX_ATTEMPTS", "2")
    with in_background(FakeSlackApi()) as slack:
        use_slack(monkeypatch, slack)
        assert cli(capsys, "subscriptions", "add", f"slack:{CHANNEL}", KEYWORD)[0] == 0
        slack.script("chat.postMessage", server_error(500), server_error(500))

        code, out, _ = cli(capsys, "run")
        assert code == 0
        found = re.search(rf"deliveries: 0 sent, (\d+) deferred \(next try {TIME}\), 0 failed", out)
        assert found, out
        owed = int(found[1])
        code, out, _ = cli(capsys, "status")
        assert code == 0, out  # deferred is not a failure: they will be tried again
        assert f"sent=0 deferred={owed} failed=0 disabled=0" in out
        assert re.search(
            rf"deliveries: 0 sent, 0 due at the next cycle, {owed} deferred "
            rf"\(next try {TIME}\), 0 failed for good",
            out,
        )
        _, listed, _ = cli(capsys, "deliveries", "list", "--status", "deferred")
        assert len(listed.splitlines()) == owed
        assert all(
            re.search(rf"^deferred\t.*\tnext try {TIME} after 1 attempt: http_500$", line)
            for line in listed.splitlines()
        )

        code, out, _ = cli(capsys, "run")
        assert f"deliveries: 0 sent, 0 deferred, {owed} failed for good, 0 subscriptions" in out
        _, out, _ = cli(capsys, "status", "--runs", "1")
        assert f"sent=0 deferred=0 failed={owed} disabled=0" in out
        assert "`daily-papers deliveries retry TARGET` (or --all)" in out
        _, listed, _ = cli(capsys, "deliveries", "list", "--status", "failed")
        assert all(
            line.endswith("failed for good after 2 attempts: http_500")
            for line in listed.splitlines()
        )

        code, out, _ = cli(capsys, "deliveries", "retry", "--all")
        assert out.startswith(f"all targets: {owed} failed deliveries re-opened")
        code, out, _ = cli(capsys, "run")
        assert f"deliveries: {owed} sent, 0 deferred, 0 failed for good" in out


# -- a refused Discord token ------------------------------------------------------------------


def test_a_refused_discord_token_pauses_subscriptions_until_fixed_and_retried(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bot token Discord answers 401 during `run` pauses the Discord subscription like Slack's
    invalid_auth, and status alerts on the token (exit 1, also in --json); with the token
    fixed, `deliveries retry --all` resumes it and the next run delivers and clears the alert."""
    with in_background(FakeDiscord()) as fake:
        fake.accepted_token = "the-right-token"
        monkeypatch.setenv("DISCORD_BOT_TOKEN", "a-reset-token")
        monkeypatch.setenv("DAILY_PAPERS_DISCORD_API_URL", fake.api_base)
        target = f"discord:{DISCORD_CHANNEL}"
        assert cli(capsys, "subscriptions", "add", target, KEYWORD)[0] == 0

        code, out, err = cli(capsys, "run")
        assert code == 0
        assert "0 sent, 0 deferred" in out
        assert "1 subscriptions disabled" in out
        refused = "Discord refused the bot token (401 Unauthorized): check DISCORD_BOT_TOKEN"
        assert f"warning: discord refused our token while delivering ({refused})" in err
        assert fake.channel_messages[DISCORD_CHANNEL] == []

        code, out, _ = cli(capsys, "status")
        assert code == 1
        token_alert, disabled_alert = alerts(out)
        assert re.fullmatch(
            rf"ALERT: discord refused our token while delivering, since {TIME}: "
            + re.escape(refused)
            + r"; 1 subscription\(s\) paused: fix the token, then "
            r"`daily-papers deliveries retry --all`",
            token_alert,
        )
        assert disabled_alert.startswith("ALERT: 1 subscription(s) disabled since the last ok")
        code, document = status_json(capsys)
        assert code == 1
        assert document["ok"] is False
        assert [a["kind"] for a in document["alerts"]] == [
            "token_refused",
            "subscriptions_disabled",
        ]
        (platform,) = document["platforms"]
        assert platform | {"since": None} == {
            "kind": "discord",
            "source": "delivery",
            "state": "token_refused",
            "since": None,
            "reason": refused,
        }

        monkeypatch.setenv("DISCORD_BOT_TOKEN", "the-right-token")
        code, out, _ = cli(capsys, "deliveries", "retry", "--all")
        owed = int(re.search(r"all targets: (\d+) failed deliveries re-opened", out)[1])
        assert "1 subscriptions resumed" in out
        code, out, _ = cli(capsys, "run")
        assert f"deliveries: {owed} sent" in out
        assert fake.channel_messages[DISCORD_CHANNEL]
        code, document = status_json(capsys)
        assert (code, document["ok"], document["alerts"], document["platforms"]) == (
            0,
            True,
            [],
            [],
        )


# -- the README -------------------------------------------------------------------------------


def test_a_readme_that_cannot_be_written_fails_run_and_alerts_until_written(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run` no longer claims a snapshot it could not write: exit 1 with the reason; status
    alerts until `daily-papers readme` writes it."""
    blocker = workdir / "blocker"
    blocker.write_text("a file where the README's folder should be", encoding="utf-8")
    readme = blocker / "README.md"
    monkeypatch.setenv("DAILY_PAPERS_README_PATH", str(readme))

    code, out, err = cli(capsys, "run")
    assert code == 1
    assert out.startswith("ok: ")  # harvest and delivery worked
    assert f"README snapshot: not written ({readme})" in out
    assert f"README snapshot: {readme}\n" not in out
    shown = re.escape(str(readme))
    assert re.search(
        rf"^error: the README snapshot was not written: cannot \w+ {shown}", err, re.MULTILINE
    )

    code, out, _ = cli(capsys, "status")
    assert code == 1
    (alert,) = alerts(out)
    assert re.fullmatch(rf"ALERT: README snapshot not written since {TIME}: cannot \w+ .+", alert)
    code, document = status_json(capsys)
    assert str(readme) in document["readme"]["error"]
    assert [a["kind"] for a in document["alerts"]] == ["readme"]

    code, _, err = cli(capsys, "readme")
    assert code == 1
    assert err.startswith(f"error: cannot read {readme}")
    blocker.unlink()
    assert cli(capsys, "readme")[0] == 0
    assert readme.exists()
    code, out, _ = cli(capsys, "status")
    assert (code, alerts(out)) == (0, [])


# -- status --json ----------------------------------------------------------------------------


def documented_json() -> dict[str, Any]:
    """The `status --json` example in docs/operations.md."""
    text = DOCS.read_text(encoding="utf-8")
    block = re.search(r"<!-- status-json -->\n```json\n(.*?)\n```", text, re.DOTALL)
    assert block, "docs/operations.md lost its status --json example"
    return dict(json.loads(block[1]))


def test_status_json_has_the_documented_shape(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status --json` after a run: exactly the keys docs/operations.md documents, at every
    level, and the exit status of the text form."""
    code, document = status_json(capsys)
    assert (code, document["runs"], document["last_success"]) == (0, [], None)
    assert cli(capsys, "run")[0] == 0
    code, document = status_json(capsys)
    assert code == 0
    documented = documented_json()
    assert set(document) == set(documented)
    assert set(document["runs"][0]) == set(documented["runs"][0])
    for key in ("subscriptions", "deliveries", "readme", "cycle_running"):
        assert set(document[key] or documented[key]) == set(documented[key]), key
    assert set(documented["platforms"][0]) == {"kind", "source", "state", "since", "reason"}
    assert set(documented["alerts"][0]) == {"kind", "message"}
    assert set(documented["failing_subscriptions"][0]) == {
        "target",
        "keyword",
        "reason",
        "disabled_at",
    }
    assert document["schema"] == documented["schema"] == 1
    assert (document["ok"], document["keywords"], document["backfills_waiting"]) == (True, 4, 0)
    (run,) = document["runs"]
    assert run["ok"] is True
    assert run["harvested"] > 0
    assert document["last_success"] == run["started_at"]


# -- webhook targets as listed ------------------------------------------------------------------


def test_webhook_targets_are_accepted_masked_as_listed_when_unambiguous(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The token-masked form `subscriptions list` prints is accepted by `deliveries`, `list` and
    `remove` while exactly one stored webhook shows that way; two are refused by name."""
    first = webhook_url("123456789012345678", "a" * 68)
    other = webhook_url("223456789012345678", "b" * 68)
    twin = webhook_url("123456789012345678", "c" * 68)  # the same webhook after a token reset
    for url in (first, other):
        assert cli(capsys, "subscriptions", "add", f"discord_webhook:{url}", KEYWORD)[0] == 0
    _, listed, _ = cli(capsys, "subscriptions", "list")
    assert "a" * 68 not in listed
    shown = listed.splitlines()[0].split("\t")[0]
    assert shown == "discord_webhook:https://discord.com/api/webhooks/123456789012345678/********"

    code, out, _ = cli(capsys, "subscriptions", "list", shown)
    assert (code, out) == (0, f"{shown}\t{KEYWORD}\tactive\n")
    code, out, _ = cli(capsys, "deliveries", "retry", shown)
    assert (code, out.split(":")[:2]) == (0, ["discord_webhook", "https"])
    assert "nothing to retry" in out

    assert cli(capsys, "subscriptions", "add", f"discord_webhook:{twin}", KEYWORD)[0] == 0
    code, _, err = cli(capsys, "deliveries", "list", shown)
    assert code == 2
    assert f"error: 2 targets show as {shown}" in err
    assert "give the full webhook URL" in err
    assert cli(capsys, "subscriptions", "remove", f"discord_webhook:{twin}", KEYWORD)[0] == 0
    code, out, _ = cli(capsys, "subscriptions", "remove", shown, KEYWORD)
    assert (code, out) == (0, f"{shown} unsubscribed from '{KEYWORD}'\n")
    unknown = "discord_webhook:https://discord.com/api/webhooks/999999999999999999/********"
    code, _, err = cli(capsys, "deliveries", "retry", unknown)
    assert code == 2
    assert f"no subscription shows as {unknown}" in err


# -- input that is not UTF-8 --------------------------------------------------------------------


def test_arguments_that_are_not_utf8_are_refused_by_position(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Undecodable bytes in an argument: one `error:` line naming it, exit 2, nothing stored."""
    latin1 = os.fsdecode(b"caf\xe9 models")  # what Python makes of Latin-1 bytes in argv
    code, _, err = cli(capsys, "keywords", "add", latin1)
    assert code == 2
    assert err == (
        "error: argument 3 ('caf\\xe9 models') is not UTF-8 text (byte 0xe9 at position 4): "
        "type it in UTF-8, or check your terminal's or script's encoding (LANG/LC_ALL)\n"
    )
    assert cli(capsys, "keywords", "add", "graph models")[0] == 0
    assert (
        cli(capsys, "keywords", "list")[1] == "graph models\t(database, 0 matching papers stored)\n"
    )


def test_a_config_file_that_is_not_utf8_is_named_with_where(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Latin-1 config file: the error names the file, the byte, the line and column; exit 2."""
    config = workdir / "latin1.toml"
    config.write_bytes(b'[keywords]\nqueries = ["caf\xe9"]\n')
    code, _, err = cli(capsys, "status", "--config", str(config))
    assert code == 2
    assert err == (
        f"error: {config} is not UTF-8 text: byte 0xe9 at line 2, column 16; save it as UTF-8 "
        "(the encoding TOML requires)\n"
    )


def test_an_environment_variable_that_is_not_utf8_is_named(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DAILY_PAPERS_ variable holding undecodable bytes is named, exit 2."""
    monkeypatch.setenv("DAILY_PAPERS_ARXIV_CONTACT", os.fsdecode(b"me@lab\xff.org"))
    code, _, err = cli(capsys, "status")
    assert code == 2
    assert err == (
        "error: environment variable DAILY_PAPERS_ARXIV_CONTACT is not UTF-8 text (at "
        "position 7); set it in UTF-8\n"
    )


def test_the_installed_command_refuses_bytes_without_a_traceback(workdir: Path) -> None:
    """A real process given Latin-1 bytes on its command line and in its config file: exit 2
    and one `error:` line each, never a UnicodeDecodeError traceback."""
    env = {k: v for k, v in os.environ.items() if k != "DAILY_PAPERS_CONFIG"}
    command = [sys.executable, "-m", "digest.cli"]
    bad_argument = subprocess.run(  # noqa: S603 -- our own CLI, fixed arguments
        [*command, "keywords", "add", b"caf\xe9"], cwd=workdir, env=env, capture_output=True
    )
    (workdir / "latin1.toml").write_bytes(b"# r\xe9glages\n")
    bad_file = subprocess.run(  # noqa: S603 -- our own CLI, fixed arguments
        [*command, "--config", "latin1.toml", "status"], cwd=workdir, env=env, capture_output=True
    )
    for done in (bad_argument, bad_file):
        assert done.returncode == 2
        assert done.stderr.startswith(b"error: ")
        assert done.stderr.count(b"\n") == 1
        assert b"Traceback" not in done.stderr
    assert b"latin1.toml is not UTF-8 text: byte 0xe9 at line 1, column 4" in bad_file.stderr
