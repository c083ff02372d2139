"""The real ``stackgen`` command line in a fresh process, as a user's shell runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.paths import ROOT


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
