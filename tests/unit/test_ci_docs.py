"""docs/ci.md: its CI files are real files, included verbatim, and their validate command
passes on a fresh clone of a scaffolded repository (secrets git-ignored, so absent).

actionlint's check of the workflow is in tests/e2e/test_ci_docs.py (it needs the full
toolchain).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.paths import ROOT

CI_DOC = ROOT / "docs" / "ci.md"
WORKFLOW = ROOT / "docs" / "ci" / "github-actions.yml"
PIPELINE = ROOT / "docs" / "ci" / "buildkite-pipeline.yml"
COMMAND = "stackgen validate --skip-missing-secrets overlays/*"


def _validate_commands(text: str) -> list[str]:
    return [m.group(0).strip() for m in re.finditer(r"stackgen validate[^\n]*", text)]


def test_ci_doc_includes_both_files_verbatim() -> None:
    doc = CI_DOC.read_text()
    for path in (WORKFLOW, PIPELINE):
        assert path.read_text() in doc, f"docs/ci.md does not include {path.name} as it is"


def test_both_files_run_the_same_validate_command() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    runs = [s.get("run", "") for s in workflow["jobs"]["validate"]["steps"]]
    assert [c for r in runs for c in _validate_commands(r)] == [COMMAND]
    pipeline = yaml.safe_load(PIPELINE.read_text())
    (step,) = pipeline["steps"]
    assert [c for line in step["command"] for c in _validate_commands(line)] == [COMMAND]


def _git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "ci",
        "GIT_AUTHOR_EMAIL": "ci@example.com",
        "GIT_COMMITTER_NAME": "ci",
        "GIT_COMMITTER_EMAIL": "ci@example.com",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_documented_command_passes_on_a_fresh_clone(tmp_path: Path) -> None:
    repo = tmp_path / "stacks"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    stackgen = [sys.executable, "-m", "stackgen"]
    for overlay, queues in (
        ("overlays/prod", ["--queue", "default:hpa", "--queue", "deploy:dispatch"]),
        ("overlays/staging", ["--queue", "builds:exact"]),
    ):
        subprocess.run([*stackgen, "init", overlay, *queues], cwd=repo, check=True, timeout=120)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "stacks")
    committed = _git(repo, "ls-files")
    assert "secrets/" not in committed  # init git-ignores them
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(repo), str(clone))
    assert not list(clone.glob("overlays/*/secrets"))
    # The command exactly as the docs have it, in a shell (the glob is the shell's).
    bindir = Path(sys.executable).parent
    proc = subprocess.run(
        ["bash", "-c", COMMAND],
        cwd=clone,
        env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 overlays: 2 valid, 0 invalid" in proc.stdout
    assert "agent-token is missing: built with a placeholder" in proc.stderr
