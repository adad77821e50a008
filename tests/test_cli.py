"""The command line as a new user meets it: init, run, status, keywords, subscriptions, errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from digest.cli import main
from tests.fakes.arxiv_server import ArxivStandIn, Mangled, ServerError, cut_inside
from tests.reference_papers import REFERENCE_README, load_reference_papers


@pytest.fixture
def server() -> Iterator[ArxivStandIn]:
    """The arXiv stand-in serving the reference papers."""
    with ArxivStandIn(load_reference_papers()) as stand_in:
        yield stand_in


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: ArxivStandIn) -> Path:
    """A project folder whose config points at the stand-in, as the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DAILY_PAPERS_CONFIG", raising=False)
    assert main(["init"]) == 0
    config = tmp_path / "daily-papers.toml"
    text = config.read_text(encoding="utf-8")
    text = text.replace("[service]\n", "[service]\ntest_mode = true\n", 1).replace(
        "[arxiv]\n", f'[arxiv]\napi_url = "{server.url}"\ncategories = ["cs.CV"]\n', 1
    )
    config.write_text(text, encoding="utf-8")
    return tmp_path


def test_init_refuses_to_overwrite(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second `init` keeps the user's file unless --force."""
    assert main(["init"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["init", "--force"]) == 0


def test_run_writes_the_readme_and_status_reports_it(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run` completes a cycle, writes data/README.md, and `status` shows the cycle."""
    assert main(["run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: ")
    readme = (workdir / "data" / "README.md").read_text(encoding="utf-8")
    assert readme.startswith(REFERENCE_README.read_text(encoding="utf-8").split("Last")[0])
    assert "## Diffusion Models" in readme
    assert main(["status"]) == 0
    status = capsys.readouterr().out
    assert "ok     requests=" in status


def test_run_exits_1_when_arxiv_fails(
    workdir: Path, server: ArxivStandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed harvest is a failed run: exit 1, the reason on stderr, no traceback."""
    server.always(ServerError(503))
    assert main(["run"]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("FAILED")
    assert "error:" in captured.err
    assert "Traceback" not in captured.err


def test_run_exits_1_when_arxiv_answers_stay_malformed(
    workdir: Path, server: ArxivStandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    """A feed cut inside a date every time: exit 1, one `error:` line, status shows FAILED."""
    # The feed's own <updated> date: present even when the window holds no paper.
    server.always(Mangled(cut_inside(b"<updated>", keep=9)))
    assert main(["run"]) == 1
    captured = capsys.readouterr()
    attempts = len(server.requests)
    assert attempts == 5  # the default arxiv.retries (4) + 1, then no backfill against it
    assert captured.out.startswith(f"FAILED: 0 papers fetched in {attempts} arXiv requests")
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, captured.err
    assert f"after {attempts} attempts: malformed answer: not well-formed XML" in errors[0]
    assert errors[0].endswith(f"({server.url}, results from 0)")
    assert "Traceback" not in captured.err
    assert main(["status"]) == 1
    status = capsys.readouterr().out
    (cycle_line,) = [line for line in status.splitlines() if "requests=" in line]
    assert f"FAILED requests={attempts}" in cycle_line
    assert f"error: arXiv request failed after {attempts} attempts: malformed answer" in cycle_line


def test_a_value_error_inside_the_cycle_is_a_failed_run_not_bad_usage(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug raising ValueError deep in `run` exits 1 with an `error:` line, not 2 (usage)."""

    async def broken_archive(**_: object) -> None:
        raise ValueError("Invalid isoformat string: '2025-02-0'")

    monkeypatch.setattr("digest.cycle.refresh_archive", broken_archive)
    assert main(["run"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "error: the cycle crashed (ValueError: Invalid isoformat string: '2025-02-0'); "
        "the traceback is in the log"
    )


def test_keywords_add_list_remove(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Keywords are validated, stored, listed with their origin, and removed."""
    assert main(["keywords", "add", "graph neural networks", 'ti:"protein folding"']) == 0
    assert "backfilled on the next run" in capsys.readouterr().out
    assert main(["keywords", "list"]) == 0
    listed = capsys.readouterr().out
    assert "graph neural networks\t(database" in listed
    assert "Video Anomaly Detection" not in listed or "(config" in listed
    assert main(["keywords", "remove", "graph neural networks"]) == 0
    assert "removed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "query", ['ti:"unclosed', "(a OR b", "xx:foo", "", "a" * 201, "bad\x07char"]
)
def test_invalid_query_is_refused_without_storing(
    workdir: Path, capsys: pytest.CaptureFixture[str], query: str
) -> None:
    """A bad query exits 2 with the reason; nothing is stored."""
    assert main(["keywords", "add", "good phrase", query]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid query")
    assert "Traceback" not in err
    assert main(["keywords", "list"]) == 0
    assert "good phrase" not in capsys.readouterr().out


def test_removing_a_config_keyword_says_where_it_is(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A keyword from [keywords] queries would return on the next run: refused, with where."""
    monkeypatch.setenv("DAILY_PAPERS_KEYWORDS_QUERIES", '["Diffusion Models"]')
    assert main(["keywords", "add", "graph neural networks"]) == 0
    capsys.readouterr()
    assert main(["keywords", "remove", "diffusion  models", "graph neural networks"]) == 2
    captured = capsys.readouterr()
    assert "[keywords] queries" in captured.err
    assert "graph neural networks: removed" in captured.out


def test_subscriptions_for_any_target(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An operator subscribes a Slack channel without the slash command, lists and removes it."""
    assert main(["subscriptions", "add", "slack:C0123", "diffusion models"]) == 0
    assert main(["subscriptions", "list"]) == 0
    assert "slack:C0123\tdiffusion models\tactive" in capsys.readouterr().out
    assert main(["subscriptions", "remove", "slack:C0123", "diffusion models"]) == 0
    assert "unsubscribed" in capsys.readouterr().out
    assert main(["subscriptions", "add", "C0123", "x"]) == 2
    assert "KIND:ADDRESS" in capsys.readouterr().err


def test_subscriptions_add_checks_slack_ids_and_says_when_nothing_will_post(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A channel name instead of an id is refused; a platform without a token is pointed out."""
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    assert main(["subscriptions", "add", "slack:#general", "llm"]) == 2
    assert "is not a channel id" in capsys.readouterr().err
    assert main(["subscriptions", "add", "slack:C0123ABCD", "llm"]) == 0
    assert "SLACK_BOT_TOKEN is not set" in capsys.readouterr().err
    main(["status"])
    assert "slack subscriptions waiting for SLACK_BOT_TOKEN to be set: 1" in capsys.readouterr().out
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-set")
    assert main(["subscriptions", "add", "slack:C0123ABCD", "diffusion"]) == 0
    assert capsys.readouterr().err == ""
    main(["status"])
    assert "waiting for SLACK_BOT_TOKEN" not in capsys.readouterr().out


def test_status_counts_email_sign_ups_apart_from_failing_subscriptions(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unconfirmed sign-up is pending, not failing; a disabled Slack channel is failing and,
    disabled with no ok cycle since, an alert (exit 1)."""
    from datetime import UTC, datetime

    from digest.app import channel_settings, open_store
    from digest.config import load_settings
    from digest.domain import Target

    now = datetime.now(UTC)
    with open_store(load_settings(extensions=channel_settings)) as store:
        pending = store.add_subscription(Target("email", "me@example.org"), "llm", now=now)
        store.disable_subscription(pending.id, "unconfirmed")
        gone = store.add_subscription(Target("slack", "C0123"), "llm", now=now)
        store.disable_subscription(gone.id, "channel_not_found")
    assert main(["status"]) == 1
    out = capsys.readouterr().out
    assert "email sign-ups waiting for confirmation: 1 address(es)" in out
    assert "slack:C0123  'llm': channel_not_found (disabled " in out
    assert "ALERT: 1 subscription(s) disabled and no cycle has succeeded yet" in out
    assert "unconfirmed" not in out


def test_global_options_may_follow_the_command(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`daily-papers status -q --config FILE` works like the options before the command."""
    assert main(["keywords", "list", "-q", "--config", "missing.toml"]) == 2
    assert "missing.toml does not exist" in capsys.readouterr().err
    assert main(["status", "-v", "--runs", "1"]) == 0


def test_subscriptions_add_refuses_email_and_unknown_kinds(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Email needs the double opt-in (`email subscribe`); an unknown kind is named; no row."""
    assert main(["subscriptions", "add", "email:me@example.org", "llm"]) == 2
    assert "daily-papers email subscribe me@example.org" in capsys.readouterr().err
    assert main(["subscriptions", "add", "teams:abc", "llm"]) == 2
    assert "unknown target kind 'teams'" in capsys.readouterr().err
    assert main(["subscriptions", "list"]) == 0
    assert capsys.readouterr().out == "no subscriptions\n"


def test_bad_setting_is_one_line_with_exit_2(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad environment override names the variable; no traceback."""
    monkeypatch.setenv("DAILY_PAPERS_README_MAX_PAPERS", "lots")
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert "DAILY_PAPERS_README_MAX_PAPERS" in err
    assert "Traceback" not in err


def test_console_script_help_explains_commands() -> None:
    """The installed entry point answers --help with every command."""
    done = subprocess.run(
        [sys.executable, "-m", "digest.cli", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("init", "run", "serve", "status", "readme", "keywords", "subscriptions"):
        assert command in done.stdout


def test_webhook_token_is_never_printed(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A webhook URL carries its token: listings show the webhook id, not the secret."""
    url = "https://discord.com/api/webhooks/123456789012345678/s3cr3t" + "x" * 64
    assert main(["subscriptions", "add", f"discord_webhook:{url}", "diffusion models"]) == 0
    assert main(["subscriptions", "list"]) == 0
    out = capsys.readouterr().out
    assert "s3cr3t" not in out
    assert "discord_webhook:https://discord.com/api/webhooks/123456789012345678/" in out


def test_digest_prints_the_days_new_papers(
    workdir: Path, server: ArxivStandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a run, `digest --print` shows the papers its harvest found today, in the digest
    format, and not the weeks-old ones of the keywords' backfills."""
    from dataclasses import replace
    from datetime import UTC, datetime, timedelta

    papers = load_reference_papers()
    recent = datetime.now(UTC) - timedelta(days=1)  # inside the harvest window of a real clock
    fresh = [replace(p, published=recent, updated=recent) for p in papers[:5]]
    server.set_papers([*fresh, *papers[5:]])
    assert main(["run"]) == 0
    capsys.readouterr()
    assert main(["digest", "--print"]) == 0
    out = capsys.readouterr().out
    shown = set(re.findall(r"arxiv\.org/pdf/(\d{4}\.\d{5})", out))
    assert shown  # the harvested papers that match a keyword...
    assert shown <= {p.arxiv_id for p in fresh}  # ...and none of the backfills' old ones
    assert "**Authors**: " in out
    assert "**Link**: [PDF](https://arxiv.org/pdf/" in out
    assert main(["digest", "--date", "2025-13-01", "--print"]) == 2
    assert "YYYY-MM-DD" in capsys.readouterr().err
    assert main(["digest"]) == 2  # no archive folder configured: say how
    assert "digest.archive_dir" in capsys.readouterr().err


def test_email_commands_explain_what_is_missing(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`email subscribe` names the setting to change: email off, no signing key, no base URL."""
    monkeypatch.delenv("DAILY_PAPERS_SECRET_KEY", raising=False)
    assert main(["email", "subscribe", "me@example.org", "llm"]) == 2
    assert "email.enabled" in capsys.readouterr().err
    monkeypatch.setenv("DAILY_PAPERS_EMAIL_ENABLED", "true")
    assert main(["email", "subscribe", "me@example.org", "llm"]) == 2
    assert "web.base_url" in capsys.readouterr().err
    monkeypatch.setenv("DAILY_PAPERS_WEB_BASE_URL", "https://papers.example.org")
    assert main(["email", "subscribe", "me@example.org", "llm"]) == 2
    assert "DAILY_PAPERS_SECRET_KEY" in capsys.readouterr().err


def test_email_list_and_remove_need_no_signing_key(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """list and remove sign no links: they work without DAILY_PAPERS_SECRET_KEY; bad address: 2."""
    monkeypatch.delenv("DAILY_PAPERS_SECRET_KEY", raising=False)
    assert main(["email", "list"]) == 0
    assert "No email subscribers." in capsys.readouterr().out
    assert main(["email", "remove", "me@example.org"]) == 0
    assert "Removed 0 subscriptions of me@example.org." in capsys.readouterr().out
    assert main(["email", "remove", "not-an-address"]) == 2
    assert "is not a usable email address" in capsys.readouterr().err


def test_digest_print_into_a_closed_pipe_stops_quietly(workdir: Path, server: ArxivStandIn) -> None:
    """`daily-papers digest --print | head` ends without a BrokenPipeError traceback."""
    from dataclasses import replace
    from datetime import UTC, datetime, timedelta

    papers = load_reference_papers()
    recent = datetime.now(UTC) - timedelta(days=1)  # harvested today: the day's digest has them
    server.set_papers([replace(p, published=recent, updated=recent) for p in papers])
    assert main(["run"]) == 0
    script = Path(sys.executable).with_name("daily-papers")
    # A pipe whose reader has already gone, as `head` has once it printed its lines (closed
    # up front, so the write meets it every time rather than when timing allows).
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(  # noqa: S603 -- our own CLI, fixed arguments
            [str(script), "digest", "--print"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            cwd=workdir,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr
    assert "BrokenPipeError" not in done.stderr
    assert done.returncode == 141  # as a Unix tool stopped by SIGPIPE


def test_subscriptions_kinds_lists_every_registered_channel(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`subscriptions kinds` comes from the channel registry: each kind, an example, and what
    it still needs (a token, or another way in)."""
    from digest.app import channel_specs

    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    assert main(["subscriptions", "kinds"]) == 0
    out = capsys.readouterr().out
    for spec in channel_specs().values():
        assert f"{spec.kind}: {spec.summary}" in out
        assert f"e.g. {spec.example}" in out
    assert "(waits for SLACK_BOT_TOKEN to be set)" in out
    assert "daily-papers email subscribe ADDRESS QUERY" in out


def test_a_url_target_never_shows_its_secrets() -> None:
    """A webhook shows its id and masks its token; any other URL (Apprise's carry tokens and
    passwords anywhere) shows only its scheme and a fingerprint, and reads back as masked."""
    from digest.domain import Target

    hook = Target("discord_webhook", "https://discord.com/api/webhooks/123/s3cr3tT0ken")
    assert hook.display == "discord_webhook:https://discord.com/api/webhooks/123/********"
    other = Target("apprise", "tgram://123456:AAbotTOKEN/987654")
    shown = other.display
    assert shown.startswith("apprise:tgram://********#")
    assert "AAbotTOKEN" not in shown
    assert "987654" not in shown
    assert Target.parse(shown).masked
    assert Target.parse(shown).display == shown  # the fingerprint of the mask is not reused
    assert Target("apprise", "mailto://u:pw@mail.example.org").display != shown


# -- like: subscriptions --------------------------------------------------------------------------


@pytest.fixture
def like_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project folder on an arXiv stand-in holding the like: corpus, its history stored."""
    from storage.sql_store import SqlStore
    from tests.like_helpers import like_corpus, store_history

    corpus = like_corpus()
    bib_ids = ["1706.03762", "1810.04805", "2005.14165", "2106.09685", "hep-th/9711200"]
    # The export's arXiv ids, served as papers of the seeds' topic.
    exported = [replace(p, arxiv_id=i) for p, i in zip(corpus.seeds, bib_ids, strict=False)]
    with ArxivStandIn([*corpus.served(), *exported]) as stand_in:
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("DAILY_PAPERS_CONFIG", raising=False)
        monkeypatch.setenv("DAILY_PAPERS_SERVICE_TEST_MODE", "true")
        monkeypatch.setenv("DAILY_PAPERS_ARXIV_API_URL", stand_in.url)
        monkeypatch.setenv("DAILY_PAPERS_SERVICE_DATA_DIR", str(tmp_path / "data"))
        assert main(["status"]) in (0, 1)  # creates and migrates the database
        store = SqlStore(url=f"sqlite:///{tmp_path / 'data' / 'daily-papers.sqlite3'}")
        store_history(store, corpus.stored)
        store.close()
        yield tmp_path


def _like_store(workdir: Path) -> Any:
    from storage.sql_store import SqlStore

    return SqlStore(url=f"sqlite:///{workdir / 'data' / 'daily-papers.sqlite3'}")


def test_subscriptions_add_like_fetches_seeds_and_stores_the_canonical_keyword(
    like_workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`subscriptions add TARGET like:...`: exit 0, the keyword stored with its ids sorted."""
    from tests.like_helpers import like_corpus

    corpus = like_corpus()
    assert main(["subscriptions", "add", "slack:C0123ABCD", corpus.like]) == 0
    assert capsys.readouterr().out.strip() == f"slack:C0123ABCD subscribed to {corpus.canonical!r}"
    store = _like_store(like_workdir)
    try:
        [sub] = store.list_subscriptions()
        assert sub.keyword == corpus.canonical
        assert len(store.papers_by_id([p.arxiv_id for p in corpus.seeds])) == len(corpus.seeds)
    finally:
        store.close()
    # The same seeds in another order name the same subscription.
    reordered = "like:" + " ".join(sorted(p.arxiv_id for p in corpus.seeds))
    assert main(["subscriptions", "remove", "slack:C0123ABCD", reordered]) == 0
    assert "unsubscribed from" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (["2601.99999"], "error: like: 2601.99999 is not on arXiv;"),
        (["2601.88888"], "error: like: 2601.88888 has been withdrawn;"),
        (None, "error: like: needs at least 3 seed papers, got 2"),
    ],
)
def test_subscriptions_add_refuses_bad_seeds_in_one_line(
    like_workdir: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str] | None,
    reason: str,
) -> None:
    """Unknown, withdrawn or too few seeds: exit 1, one `error:` line, nothing stored."""
    from tests.like_helpers import like_corpus

    seeds = [p.arxiv_id for p in like_corpus().seeds[: 3 if extra else 2]]
    text = "like:" + ",".join([*seeds, *(extra or [])])
    assert main(["subscriptions", "add", "slack:C0123ABCD", text]) == 1
    err = capsys.readouterr().err
    assert err.startswith(reason)
    assert err.count("\n") == 1
    store = _like_store(like_workdir)
    try:
        assert store.list_subscriptions() == []
        assert store.papers_by_id([*seeds, *(extra or [])]) == []
    finally:
        store.close()


def test_subscriptions_add_like_from_a_bibtex_export(
    like_workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--like-from library.bib`: its 5 arXiv ids become the seeds; 3 references left out."""
    fixture = Path(__file__).parent / "fixtures" / "bibliography" / "library.bib"
    assert main(["subscriptions", "add", "slack:C0123ABCD", "--like-from", str(fixture)]) == 0
    captured = capsys.readouterr()
    assert "3 of the 8 references" in captured.err
    like = "like:1706.03762,1810.04805,2005.14165,2106.09685,hep-th/9711200"
    assert captured.out.strip() == f"slack:C0123ABCD subscribed to {like!r}"


def test_like_from_an_export_with_too_few_arxiv_papers_is_refused(
    like_workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An RIS export with two arXiv records: exit 1, the count and the rule, nothing stored."""
    ris = (Path(__file__).parent / "fixtures" / "bibliography" / "library.ris").read_text()
    short = tmp_path / "two.ris"
    short.write_text("ER  - \n".join(ris.split("ER  - \n")[:3]), encoding="utf-8")
    assert main(["subscriptions", "add", "slack:C0123ABCD", "--like-from", str(short)]) == 1
    err = capsys.readouterr().err
    assert "holds 2 arXiv paper(s) among 3 references; at least 3 are needed" in err
    assert err.splitlines()[-1].startswith("error: like:")
    store = _like_store(like_workdir)
    try:
        assert store.list_subscriptions() == []
    finally:
        store.close()


def test_keywords_add_and_remove_like(
    like_workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`keywords add like:...` checks the seeds on arXiv and tracks the canonical text;
    `keywords remove` takes the seeds in any order."""
    from tests.like_helpers import like_corpus

    corpus = like_corpus()
    assert main(["keywords", "add", corpus.like]) == 0
    assert (
        capsys.readouterr().out.strip() == f"{corpus.canonical}: added; backfilled on the next run"
    )
    reordered = "like:" + ",".join(sorted(p.arxiv_id for p in corpus.seeds))
    assert main(["keywords", "remove", reordered.replace(",", " ")]) == 0
    assert capsys.readouterr().out.strip() == f"{corpus.canonical}: removed"
