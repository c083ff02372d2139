"""Fixtures for unit tests: overlays written into tmp_path, a real CLI process, and the
dispatcher tests' fakes (a virtual clock, a fake Buildkite and a fake Kubernetes with the
``builds`` and ``deploy`` queues' templates; a module needing other queues defines its own)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.cli import Run, run_stackgen
from tests.support.dispatcher_config import TOKEN
from tests.support.fake_buildkite import FakeBuildkite, VirtualClock
from tests.support.fake_kube import FakeKube, cronjob_template
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


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(1_800_000_000.0)


@pytest.fixture
def buildkite(clock: VirtualClock) -> Iterator[FakeBuildkite]:
    with FakeBuildkite(token=TOKEN, queues=("builds", "deploy"), clock=clock) as fake:
        yield fake


@pytest.fixture
def kube(clock: VirtualClock) -> FakeKube:
    fake = FakeKube(clock=clock)
    for name in ("builds", "deploy"):
        fake.add("cronjobs", cronjob_template(f"buildkite-agent-{name}", name))
    return fake
