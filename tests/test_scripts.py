"""README's test command prepares the machine (scripts/prepare-test-machine): its decisions, run
with stand-in commands on PATH (pg_isready, pg_ctlcluster, apt-get, id, sleep) that record what
they were asked and do what each case says, so nothing is installed, started or uninstalled; and
the skip variables it prints reach pytest, except under CI."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PREPARE = ROOT / "scripts" / "prepare-test-machine"
BASH = "/bin/bash"

# Each stand-in appends its name and arguments to $STUB_LOG, then acts on flag files in
# $STUB_STATE: `pg-ready` (pg_isready answers), `pg-starts` (pg_ctlcluster start makes it
# ready), `apt-works` (apt-get install creates the chromium executable), `root` (id -u is 0).
STUBS = {
    "pg_isready": '[ -e "$STUB_STATE/pg-ready" ]',
    "pg_ctlcluster": '[ -e "$STUB_STATE/pg-starts" ] && touch "$STUB_STATE/pg-ready"; exit 0',
    "apt-get": (
        'case "$*" in *install*) [ -e "$STUB_STATE/apt-works" ] || exit 100;'
        ' printf "#!/bin/sh\\n" > "$STUB_CHROMIUM"; chmod +x "$STUB_CHROMIUM";; esac'
    ),
    "id": '[ -e "$STUB_STATE/root" ] && echo 0 || echo 1000',
    "sleep": "exit 0",
    "touch": ': > "$1"',  # used by the pg_ctlcluster stand-in (PATH holds nothing else)
    "chmod": '/bin/chmod "$@"',
}


@dataclass
class Machine:
    """A pretend machine: stand-in commands, a PostgreSQL config folder, a chromium path."""

    root: Path

    def __post_init__(self) -> None:
        self.bin = self.root / "bin"
        self.state = self.root / "state"
        self.pg_etc = self.root / "etc-postgresql"
        self.chromium = self.root / "chromium"
        self.log = self.root / "calls.log"
        for folder in (self.bin, self.state, self.pg_etc):
            folder.mkdir()
        for name, body in STUBS.items():
            stub = self.bin / name
            stub.write_text(
                f'#!{BASH}\necho "{name} $*" >> "$STUB_LOG"\n{body}\n', encoding="utf-8"
            )
            stub.chmod(0o755)

    def has(self, *flags: str) -> Machine:
        """Set flag files: pg-ready, pg-starts, apt-works, root."""
        for flag in flags:
            (self.state / flag).touch()
        return self

    def postgres_installed(self, version: str = "15") -> Machine:
        """A cluster folder, as Debian's postgresql package leaves it."""
        (self.pg_etc / version / "main").mkdir(parents=True)
        return self

    def without(self, command: str) -> Machine:
        """Remove a stand-in command (the package that has it is not installed)."""
        (self.bin / command).unlink()
        return self

    def with_chromium(self) -> Machine:
        """chromium already installed."""
        self.chromium.write_text("#!/bin/sh\n", encoding="utf-8")
        self.chromium.chmod(0o755)
        return self

    def prepare(self, *, ci: bool = False) -> subprocess.CompletedProcess[str]:
        """Run the script on this machine."""
        env = {
            "PATH": str(self.bin),
            "STUB_LOG": str(self.log),
            "STUB_STATE": str(self.state),
            "STUB_CHROMIUM": str(self.chromium),
            "DAILY_PAPERS_TEST_CHROMIUM": str(self.chromium),
            "DAILY_PAPERS_TEST_PG_ETC": str(self.pg_etc),
        }
        if ci:
            env["CI"] = "true"
        return subprocess.run(  # noqa: S603 -- our own script, fixed arguments
            [BASH, str(PREPARE)], env=env, capture_output=True, text=True, timeout=30
        )

    def calls(self, command: str) -> list[str]:
        """The recorded invocations of one stand-in."""
        if not self.log.exists():
            return []
        lines = self.log.read_text(encoding="utf-8").splitlines()
        return [line for line in lines if line.split()[0] == command]


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    """A pretend machine with nothing running and nothing extra installed."""
    return Machine(tmp_path)


def test_a_ready_machine_is_left_alone(machine: Machine) -> None:
    """PostgreSQL answering and chromium installed: nothing started, installed or skipped."""
    done = machine.has("pg-ready", "root").with_chromium().prepare(ci=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert machine.calls("pg_ctlcluster") == machine.calls("apt-get") == []


def test_a_stopped_postgres_is_started_and_chromium_installed_as_root(machine: Machine) -> None:
    """Installed but stopped: pg_ctlcluster starts the cluster (skipping systemd's redirect)
    and the script waits for pg_isready; chromium missing, as root: apt-get installs it."""
    machine.postgres_installed("15").has("pg-starts", "apt-works", "root")
    done = machine.prepare(ci=True)
    assert (done.returncode, done.stdout) == (0, ""), done.stderr
    assert machine.calls("pg_ctlcluster") == [
        "pg_ctlcluster --skip-systemctl-redirect 15 main start"
    ]
    assert len(machine.calls("pg_isready")) >= 2  # before, then until it answers
    assert machine.calls("apt-get") == [
        "apt-get update -qq",
        "apt-get install -y -qq chromium",
    ]
    assert os.access(machine.chromium, os.X_OK)


@pytest.mark.parametrize("ci", [False, True])
def test_no_postgres_skips_its_tests_or_fails_under_ci(machine: Machine, ci: bool) -> None:
    """PostgreSQL not installed: one line saying so, and its tests skipped; under CI an error."""
    done = machine.without("pg_ctlcluster").has("root").with_chromium().prepare(ci=ci)
    [line] = done.stderr.splitlines()
    assert "PostgreSQL is not installed here" in line
    if ci:
        assert (done.returncode, done.stdout) == (1, "")
        assert line.startswith("error: ")
        assert line.endswith("the PostgreSQL tests cannot be skipped under CI")
    else:
        assert (done.returncode, done.stdout) == (0, "DAILY_PAPERS_TEST_SKIP_POSTGRES=1\n")
        assert line.startswith("note: ")
        assert line.endswith("skipping the PostgreSQL tests")


def test_a_postgres_that_does_not_start_is_waited_for_then_skipped(machine: Machine) -> None:
    """A cluster that does not come up (no root): 30 one-second waits, then a skip."""
    done = machine.postgres_installed("16").has("root").with_chromium().prepare()
    assert (done.returncode, done.stdout) == (0, "DAILY_PAPERS_TEST_SKIP_POSTGRES=1\n")
    assert len(machine.calls("sleep")) == 30
    assert "the local PostgreSQL 16 did not start" in done.stderr.splitlines()[-1]


@pytest.mark.parametrize("ci", [False, True])
def test_chromium_without_root_skips_the_browser_tests_or_fails_under_ci(
    machine: Machine, ci: bool
) -> None:
    """chromium missing and not root: apt-get is not tried; one line; skip (CI: exit 1)."""
    done = machine.has("pg-ready").prepare(ci=ci)
    assert machine.calls("apt-get") == []
    [line] = done.stderr.splitlines()
    assert "Debian's chromium is missing and installing it needs root" in line
    if ci:
        assert (done.returncode, done.stdout) == (1, "")
    else:
        assert (done.returncode, done.stdout) == (0, "DAILY_PAPERS_TEST_SKIP_BROWSER=1\n")


def test_a_failed_apt_install_skips_the_browser_tests(machine: Machine) -> None:
    """As root, but apt-get cannot install chromium (no network, no package): a skip."""
    done = machine.has("pg-ready", "root").prepare()
    assert done.stdout == "DAILY_PAPERS_TEST_SKIP_BROWSER=1\n"
    assert "apt-get install chromium did not install" in done.stderr.splitlines()[-1]


def test_the_skip_variables_skip_only_their_tests_and_never_under_ci(tmp_path: Path) -> None:
    """pytest itself, as ./scripts/test runs it: the two variables skip the PostgreSQL and the
    browser tests; with CI=true the same variables skip nothing (those tests run, or fail)."""
    selected = [
        "tests/test_email_browser.py",
        "tests/test_migrations.py::test_migrated_postgres_matches_the_models",
        "tests/test_migrations.py::test_one_head_and_the_store_is_at_it",
    ]
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env |= {"DAILY_PAPERS_TEST_SKIP_POSTGRES": "1", "DAILY_PAPERS_TEST_SKIP_BROWSER": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *selected]
    done = subprocess.run(  # noqa: S603 -- pytest on our own tests
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    summary = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 0, done.stdout
    browser = (ROOT / "tests" / "test_email_browser.py").read_text(encoding="utf-8")
    skipped = browser.count("\nasync def test_") + browser.count("\ndef test_") + 1  # + PostgreSQL
    assert summary.startswith(f"1 passed, {skipped} skipped"), summary
    assert "DAILY_PAPERS_TEST_SKIP_POSTGRES=1 is set" in done.stdout
    assert "DAILY_PAPERS_TEST_SKIP_BROWSER=1 is set" in done.stdout
    collect = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", selected[1]]
    in_ci = subprocess.run(  # noqa: S603 -- pytest on our own tests
        collect, cwd=ROOT, env=env | {"CI": "true"}, capture_output=True, text=True, timeout=120
    )
    assert "skipped" not in in_ci.stdout.strip().splitlines()[-1]
