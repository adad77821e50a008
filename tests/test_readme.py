"""The README snapshot: the DailyArXiv golden file, hostile text, the size cap, writing, git."""

from __future__ import annotations

from datetime import date

from digest.readme import render_readme
from tests.reference_papers import REFERENCE_README, load_reference_sections

REFERENCE_DAY = date(2025, 2, 11)


def _reference_sections() -> list[tuple[str, tuple]]:
    return [(s.keyword, s.papers) for s in load_reference_sections()]


def test_golden_reference_byte_for_byte() -> None:
    """The reference's 80 papers under its 4 keywords render exactly as DailyArXiv did."""
    expected = REFERENCE_README.read_bytes()
    rendered = render_readme(_reference_sections(), today=REFERENCE_DAY).encode("utf-8")
    assert rendered == expected


def test_golden_differs_only_in_the_date_line() -> None:
    """On another day only the `Last update` line changes."""
    expected = REFERENCE_README.read_text(encoding="utf-8").splitlines(keepends=True)
    rendered = render_readme(_reference_sections(), today=date(2025, 3, 1)).splitlines(
        keepends=True
    )
    differing = [(a, b) for a, b in zip(expected, rendered, strict=True) if a != b]
    assert differing == [("Last update: 2025-02-11\n", "Last update: 2025-03-01\n")]
