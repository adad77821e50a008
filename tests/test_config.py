"""Settings: the TOML file, environment overrides, validation messages, the docs that list them."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from digest.app import channel_settings
from digest.config import (
    ARXIV_MIN_DELAY,
    load_settings,
    settings_for_tests,
    settings_reference,
    starter_file,
)
from digest.errors import ConfigError

README = Path(__file__).resolve().parent.parent / "README.md"


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No file and no environment: the defaults, SQLite in ./data, the real arXiv API."""
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={})
    assert settings.source == "defaults"
    assert settings.database_url == "sqlite:///data/daily-papers.sqlite3"
    assert settings.readme_path == Path("data/README.md")
    assert settings.arxiv_is_real
    assert settings.arxiv_delay == ARXIV_MIN_DELAY


def test_file_then_environment_override(tmp_path: Path) -> None:
    """Environment variables win over the file, key by key, with typed conversion."""
    path = tmp_path / "daily-papers.toml"
    path.write_text(
        '[keywords]\nqueries = ["a b"]\n[readme]\nmax_papers = 5\nlink = "pdf"\n', encoding="utf-8"
    )
    env = {
        "DAILY_PAPERS_README_MAX_PAPERS": "7",
        "DAILY_PAPERS_KEYWORDS_QUERIES": '["x y", "ti:z"]',
        "DAILY_PAPERS_ARXIV_CATEGORIES": "cs.CV, cs.LG",
        "DAILY_PAPERS_EMAIL_ENABLED": "yes",
        "SLACK_BOT_TOKEN": "xoxb-secret",
    }
    settings = load_settings(path, env=env)
    assert settings.readme.max_papers == 7
    assert settings.readme.link == "pdf"
    assert settings.keywords.queries == ["x y", "ti:z"]
    assert settings.arxiv.categories == ["cs.CV", "cs.LG"]
    assert settings.email.enabled is True
    assert settings.secrets.slack_bot_token == "xoxb-secret"
    assert "xoxb-secret" not in repr(settings)


@pytest.mark.parametrize(
    ("toml", "env", "expected"),
    [
        ('[readme]\nlink = "html"\n', {}, "readme.link = 'html' is not valid: expected one of"),
        ("[readme]\nmax_papers = 0\n", {}, "readme.max_papers = 0 is not valid"),
        ('[readme]\nmax_papers = "ten"\n', {}, "expected a whole number"),
        ('[readme]\npth = "x"\n', {}, "unknown key readme.pth"),
        ("[reedme]\n", {}, "unknown section [reedme]"),
        ("", {"DAILY_PAPERS_ARXIV_RETRIES": "many"}, "DAILY_PAPERS_ARXIV_RETRIES"),
        ('[schedule]\ntimezone = "Mars/Base"\n', {}, "an IANA timezone name"),
        ('[schedule]\ncron = "daily"\n', {}, "five-field cron expression"),
        ("[readme\n", {}, "is not valid TOML"),
        ("[email]\nsmtp_port = 70000\n", {}, "expected a TCP port from 1 to 65535"),
        ("", {"DAILY_PAPERS_WEB_PORT": "0"}, "web.port = 0 is not valid"),
        ('[schedule]\ncron = "0 25 * * *"\n', {}, "higher than the maximum value (23)"),
        (
            '[keywords]\nqueries = ["fine", "ti:(open"]\n',
            {},
            "entry 2 ('ti:(open') is not: this '(' is never closed",
        ),
        ('[keywords]\nqueries = ["x\\u0007y"]\n', {}, "entry 1"),
        ('[arxiv]\ncategories = ["cs.CV", "computer vision"]\n', {}, "'computer vision' is not"),
        ("[arxiv]\ncategories = []\n", {}, "at least one arXiv category"),
        ('[alerts]\ntarget = "Slack channel:C1"\n', {}, "KIND:ADDRESS"),
        ('[alerts]\ntarget = "C0123"\n', {}, "KIND:ADDRESS"),
        (
            "",
            {"DAILY_PAPERS_ARXIV_CONTCT": "me@lab.org"},
            "DAILY_PAPERS_ARXIV_CONTCT names no setting; did you mean DAILY_PAPERS_ARXIV_CONTACT?",
        ),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(
    tmp_path: Path, toml: str, env: dict[str, str], expected: str
) -> None:
    """Each bad setting is refused with a message a person can act on."""
    path = tmp_path / "daily-papers.toml"
    path.write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env=env)
    assert expected in str(caught.value)


def test_good_values_of_the_checked_keys_load(tmp_path: Path) -> None:
    """The new checks accept what is valid: every category form, targets, crontab ranges."""
    path = tmp_path / "daily-papers.toml"
    path.write_text(
        '[arxiv]\ncategories = ["all", "hep-th", "math.AG", "q-bio.NC", "cs.CV"]\n'
        '[alerts]\ntarget = "discord_webhook:https://discord.com/api/webhooks/1/abc"\n'
        '[schedule]\ncron = "30 21 * * mon-fri"\n'
        '[keywords]\nqueries = ["ti:\\"diffusion\\" ANDNOT cat:cs.CR", "Video Understanding"]\n',
        encoding="utf-8",
    )
    env = {"DAILY_PAPERS_TEST_SKIP_POSTGRES": "1", "DAILY_PAPERS_CONFIG": str(path)}
    settings = load_settings(env=env)
    assert settings.arxiv.categories[1] == "hep-th"
    assert settings.alerts.target.startswith("discord_webhook:")
    assert len(settings.keywords.queries) == 2


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    """`--config` naming a file that does not exist says so and how to make one."""
    with pytest.raises(ConfigError, match="daily-papers init"):
        load_settings(tmp_path / "nope.toml", env={})


def test_test_mode_is_refused_against_the_real_api() -> None:
    """The explicit test switch cannot remove arXiv's politeness delay."""
    with pytest.raises(ConfigError, match="test_mode"):
        load_settings(env={"DAILY_PAPERS_SERVICE_TEST_MODE": "true"})


def test_delay_never_below_three_seconds_against_arxiv(tmp_path: Path) -> None:
    """A configured 0.5 s delay is raised to 3 s for export.arxiv.org, kept for a mirror."""
    real = load_settings(env={"DAILY_PAPERS_ARXIV_DELAY_SECONDS": "0.5"})
    assert real.arxiv_delay == ARXIV_MIN_DELAY
    mirror = settings_for_tests(
        service={"test_mode": False},
        arxiv={"api_url": "http://127.0.0.1:1/api/query", "delay_seconds": 0.5},
    )
    assert mirror.arxiv_delay == 0.5


def test_starter_file_is_valid_and_loads(tmp_path: Path) -> None:
    """`daily-papers init`'s file parses, loads, and tracks the example keywords."""
    text = starter_file()
    tomllib.loads(text)
    path = tmp_path / "daily-papers.toml"
    path.write_text(text, encoding="utf-8")
    settings = load_settings(path, env={})
    assert settings.keywords.queries
    assert settings.readme.max_papers == 100


def test_readme_documents_every_setting() -> None:
    """README.md's configuration reference is the one generated from the settings."""
    assert settings_reference(channel_settings) in README.read_text(encoding="utf-8"), (
        "README.md is out of date: run ./scripts/update-docs"
    )


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """[demo]: a channel's own section, outside the core config."""

    targets: list[str] = dataclasses.field(
        default_factory=list, metadata={"help": "Demo targets.", "check": None}
    )
    level: int = dataclasses.field(default=1, metadata={"help": "How loud.", "check": None})


def test_a_channels_own_section_loads_only_through_its_registration(tmp_path: Path) -> None:
    """A section a registered channel declares is read from the file and the environment,
    documented, and unknown without the registration; absent, it has its defaults."""
    from digest.config import channel_section

    path = tmp_path / "daily-papers.toml"
    path.write_text('[demo]\ntargets = ["a", "b"]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"unknown section \[demo\]"):
        load_settings(path, env={})
    calls: list[int] = []

    def registered() -> dict[str, type]:
        calls.append(1)
        return {"demo": DemoSettings}

    loaded = load_settings(path, env={"DAILY_PAPERS_DEMO_LEVEL": "3"}, extensions=registered)
    assert channel_section(loaded, "demo", DemoSettings) == DemoSettings(["a", "b"], 3)
    plain = tmp_path / "plain.toml"
    plain.write_text("[service]\n", encoding="utf-8")
    calls.clear()
    default = load_settings(plain, env={}, extensions=registered)
    assert calls == []  # nothing named a channel's section: the registry was not even loaded
    assert channel_section(default, "demo", DemoSettings) == DemoSettings()
    assert "| `demo.level` | `1` | How loud. |" in settings_reference(registered)
