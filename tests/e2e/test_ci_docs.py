"""docs/ci.md's GitHub Actions workflow passes actionlint (the pinned one bin/setup builds).

In the e2e tier because it needs a tool of the full toolchain (bin/setup's ``actionlint``
step), which ``bin/test --no-e2e`` does not build.  Like every e2e test it fails, never
skips, under ``STACKGEN_E2E_REQUIRED=1``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.paths import ROOT

pytestmark = pytest.mark.e2e

WORKFLOW = ROOT / "docs" / "ci" / "github-actions.yml"


def _actionlint() -> Path:
    local = ROOT / ".tools" / "bin" / "actionlint"
    found = local if local.is_file() else shutil.which("actionlint")
    if found is None:
        message = "actionlint is missing: run bin/setup actionlint"
        if os.environ.get("STACKGEN_E2E_REQUIRED") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return Path(found)


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(_actionlint()), "-no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_documented_workflow_passes_actionlint() -> None:
    proc = _lint(WORKFLOW)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_would_catch_a_broken_workflow(tmp_path: Path) -> None:
    # The lint above can fail: the same workflow with one mistake is refused.
    broken = tmp_path / "broken.yml"
    broken.write_text(
        WORKFLOW.read_text().replace("${{ env.STACKGEN_REF }}", "${{ env.STACKGEN_REF.tag }}")
    )
    proc = _lint(broken)
    assert proc.returncode == 1
    assert "STACKGEN_REF" in proc.stdout
