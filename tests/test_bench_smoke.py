"""The benchmark's small scenario, run as CI does: the suite keeps working (no timing asserted).

`python -m bench --scenario small` in miniature: the real stand-ins, the real cycle phases, a
service process per row. What is checked is what the tables report, not how fast: the same
number of arXiv requests for every K, papers delivered to every channel kind, 429s absent
from the rate-limited fakes, DailyArXiv's baseline making one request per keyword.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.__main__ import main as bench_main
from bench.scenarios import PLANS, Row, run_plan


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Row]:
    """Every row of the small plan, by name."""
    keep = tmp_path_factory.mktemp("bench")
    return {row.result.name: row for _, row in run_plan(PLANS["small"], keep=keep)}


def test_requests_do_not_grow_with_keywords(rows: dict[str, Row]) -> None:
    """K=1 and K=20 first cycles make the same arXiv requests; the store got the window."""
    first = [r for r in rows.values() if r.spec.mode == "cycle" and r.spec.seed_store]
    counts = {r.spec.keywords: r.result.world["arxiv_requests"] for r in first}
    assert set(counts) == {1, 20}
    assert len(set(counts.values())) == 1
    assert all(r.result.new_papers == PLANS["small"].papers for r in first)


def test_every_channel_kind_delivers_without_429s(rows: dict[str, Row]) -> None:
    """The subscribed row sends to Slack, Discord and email through the rate-limited fakes."""
    limited = [r for r in rows.values() if r.spec.layouts and r.spec.seed_store]
    assert [r.spec.rate_limits for r in limited] == [False, True]
    result = limited[1].result
    assert all(result.sent[kind] > 0 for kind in ("slack", "discord", "email")), result.sent
    assert result.world["slack_429"] == 0
    assert result.world["discord_429"] == 0
    assert result.world["smtp_messages"] == result.batches["email"]
    second = rows["K=20 second cycle (nothing new)"].result
    assert second.new_papers == 0
    assert sum(second.sent.values()) == 0


def test_email_digests_and_readme_rows(rows: dict[str, Row]) -> None:
    """The mail-out sends one message per reader over a few connections; the README renders."""
    plan = PLANS["small"]
    email = rows[f"{plan.email_digests:,} email digests"].result
    assert email.world["smtp_messages"] == plan.email_digests
    assert 1 <= email.world["smtp_connections"] <= 8
    readme = rows[f"README {plan.readme_keywords} kw x {plan.readme_papers} papers"].result
    assert readme.readme_bytes > 0
    assert not readme.notes


def test_baseline_makes_one_request_per_keyword(rows: dict[str, Row]) -> None:
    """DailyArXiv's strategy against the same stand-in: K requests; ours: the same few."""
    for k in PLANS["small"].baseline_counts:
        assert rows[f"baseline K={k:,}"].result.world["arxiv_requests"] == k
        ours = rows[f"ours-fetch K={k:,}"].result.world["arxiv_requests"]
        assert ours == rows["ours-fetch K=1"].result.world["arxiv_requests"]


def test_command_line_prints_the_tables(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`python -m bench --scenario small --only baseline` prints its table and the targets."""
    assert bench_main(["--scenario", "small", "--only", "baseline", "--keep", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "## Baseline: DailyArXiv's one query per keyword vs one harvest" in out
    assert "## Targets" in out
