"""Fixtures for unit tests: overlays written into tmp_path, and a real CLI process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

EXAMPLE = ROOT / "overlays" / "example"


@dataclass
class Run:
    """A finished ``stackgen`` process."""

    code: int
    stdout: bytes
    stderr: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def run_stackgen(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Run:
    """Run the real CLI in a fresh process (what a user's shell does)."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "stackgen", *args],
        capture_output=True,
        env=full_env,
        cwd=cwd or ROOT,
        timeout=120,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace"))


@pytest.fixture
def stackgen() -> Callable[..., Run]:
    return run_stackgen


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A private copy of overlays/example that a test may break."""
    dest = tmp_path / "example"
    shutil.copytree(EXAMPLE, dest)
    return dest


def write(path: Path, text: str, mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    if mode is not None:
        path.chmod(mode)
    return path


MINIMAL = """
apiVersion: stackgen.io/v1alpha1
kind: Stack
metadata:
  name: mini
queues:
  - name: default
    mode: dispatch
secrets:
  agentToken:
    file: secrets/token
"""


@pytest.fixture
def minimal(tmp_path: Path) -> Path:
    """The smallest valid overlay: one dispatch queue and a token file."""
    overlay = tmp_path / "mini"
    write(overlay / "stack.yaml", MINIMAL)
    write(overlay / "secrets" / "token", "tok-123-abc\n", mode=0o600)
    return overlay
