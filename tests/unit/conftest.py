"""Fixtures for unit tests: overlays written into tmp_path, and a real CLI process."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.cli import Run, run_stackgen
from tests.support.overlays import EXAMPLE, MINIMAL, write


@pytest.fixture
def stackgen() -> Callable[..., Run]:
    return run_stackgen


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A private copy of overlays/example that a test may break."""
    dest = tmp_path / "example"
    shutil.copytree(EXAMPLE, dest)
    return dest


@pytest.fixture
def minimal(tmp_path: Path) -> Path:
    """The smallest valid overlay: one dispatch queue and a token file."""
    overlay = tmp_path / "mini"
    write(overlay / "stack.yaml", MINIMAL)
    write(overlay / "secrets" / "token", "tok-123-abc\n", mode=0o600)
    return overlay
