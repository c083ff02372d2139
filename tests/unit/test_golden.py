"""Golden files: each case's rendered stack is checked in; any difference fails.

Regenerate with `bin/update-golden` and review the diff: it is a change of output.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from stackgen.pipeline import build
from tests.support.paths import ROOT

GOLDEN = ROOT / "tests" / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())


def overlay_of(case: str) -> Path:
    case_dir = GOLDEN / case
    source = case_dir / "SOURCE"
    if source.is_file():
        return (case_dir / source.read_text().strip()).resolve()
    return case_dir / "overlay"


def test_there_are_enough_cases() -> None:
    assert "example" in CASES
    assert len(CASES) >= 4


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    expected = (GOLDEN / case / "expected.yaml").read_text()
    actual = build(overlay_of(case)).manifest.decode()
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(True), actual.splitlines(True), "expected", "actual", n=2
            )
        )
        pytest.fail(f"{case}: output differs from golden (run bin/update-golden):\n{diff[:4000]}")
