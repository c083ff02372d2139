"""bin/setup's progress and ordering, with stand-ins for `go` and Python (no real build).

The stand-ins sleep like a slow `go install` or `pip install` and leave binaries that report
the pinned versions, so bin/setup's own logic runs for real: heartbeat lines while a command
runs, pip in the background while Go builds, stamps and the summary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.paths import ROOT

FAKE_GO = r"""#!/usr/bin/env bash
# A stand-in for the go command: `go env`, and a slow `go install` of kubeconform.
case "$1 $2" in
"env GOVERSION") echo go1.26.8 ;;
"env GOTOOLCHAIN") echo local ;;
install\ *)
    sleep "${FAKE_GO_SECONDS:-3}"
    printf '#!/bin/sh\necho v0.7.0\n' >"$GOBIN/kubeconform"
    chmod +x "$GOBIN/kubeconform"
    ;;
*) echo "fake go: unexpected $*" >&2; exit 2 ;;
esac
"""

# A stand-in for python3 and the venv's python: version checks, `-m venv`, a slow pip.
FAKE_PYTHON = r"""#!/usr/bin/env bash
case "$1" in
-c)
    case "$2" in
    *version.split*) echo 3.11.7 ;;
    esac
    exit 0
    ;;
-m)
    case "$2" in
    venv)
        dir=${!#}
        mkdir -p "$dir/bin"
        cp "$0" "$dir/bin/python"
        ;;
    pip)
        sleep "${FAKE_PIP_SECONDS:-3}"
        bin=$(dirname "$0")
        printf '#!/bin/sh\necho "stackgen, version 0.1.0"\n' >"$bin/stackgen"
        chmod +x "$bin/stackgen"
        echo "fake pip: $*"
        ;;
    esac
    ;;
esac
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of bin/ and pyproject.toml: enough for bin/setup's venv and kubeconform steps."""
    root = tmp_path / "checkout"
    root.mkdir()
    shutil.copytree(ROOT / "bin", root / "bin")
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    for name, text in (("go", FAKE_GO), ("python3", FAKE_PYTHON)):
        (fakes / name).write_text(text)
        (fakes / name).chmod(0o755)
    return root


def setup(checkout: Path, *args: str, **env: str) -> tuple[int, str, float]:
    fakes = checkout.parent / "fakes"
    started = time.monotonic()
    proc = subprocess.run(
        [str(checkout / "bin" / "setup"), *args],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PATH": f"{fakes}:{os.environ['PATH']}",
            "PYTHON": str(fakes / "python3"),
            "STACKGEN_HEARTBEAT_SECONDS": "1",
            **env,
        },
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


def test_long_go_install_shows_a_heartbeat(checkout: Path) -> None:
    code, output, _ = setup(checkout, "kubeconform", FAKE_GO_SECONDS="3.5")
    assert code == 0, output
    beats = [line for line in output.splitlines() if "still running" in line]
    assert len(beats) >= 2, output
    assert beats[0] == "    ... [kubeconform] go install: still running after 1s"
    assert "    kubeconform: v0.7.0" in output
    assert (checkout / ".tools" / "stamps" / "kubeconform").is_file()
    # No ticker outlives the step (its lines would come after the summary).
    assert not output.rstrip().splitlines()[-1].startswith("    ... "), output


def test_quick_command_prints_no_heartbeat(checkout: Path) -> None:
    code, output, _ = setup(checkout, "kubeconform", FAKE_GO_SECONDS="0")
    assert code == 0, output
    assert "still running" not in output


def test_pip_runs_while_go_builds(checkout: Path) -> None:
    code, output, took = setup(
        checkout, "venv", "kubeconform", FAKE_GO_SECONDS="3", FAKE_PIP_SECONDS="3"
    )
    assert code == 0, output
    assert "pip runs in the background while the Go steps build" in output
    assert took < 5.5, f"the steps ran one after the other ({took:.1f}s)\n{output}"
    # The background step's output is shown in full, once.
    assert output.count("==> [1/2] venv:") == 1
    assert "stackgen, version 0.1.0" in output
    summary = output[output.index("bin/setup finished") :]
    assert "venv" in summary and "kubeconform" in summary
    assert (checkout / ".tools" / "stamps" / "venv").is_file()


def test_failed_background_step_fails_setup(checkout: Path) -> None:
    # A venv whose pip leaves no stackgen behind: the venv step fails, and so does bin/setup.
    fakes = checkout.parent / "fakes"
    (fakes / "python3").write_text(FAKE_PYTHON.replace("printf '#!/bin/sh", "exit 1; printf '"))
    code, output, _ = setup(checkout, "venv", "kubeconform", FAKE_GO_SECONDS="1")
    assert code != 0, output
    assert "step 'venv'" in output and "FAILED" in output
    assert not (checkout / ".tools" / "stamps" / "venv").exists()


def test_failed_go_step_still_waits_for_pip(checkout: Path) -> None:
    """A Go step that fails ends bin/setup, but not before pip finished (never half a venv)."""
    fakes = checkout.parent / "fakes"
    (fakes / "go").write_text(FAKE_GO.replace('sleep "${FAKE_GO_SECONDS:-3}"', "exit 1"))
    code, output, _ = setup(checkout, "venv", "kubeconform", FAKE_PIP_SECONDS="2")
    assert code != 0, output
    assert "step 'kubeconform'" in output and "FAILED" in output
    assert "stackgen, version 0.1.0" in output  # the venv step's output, after it finished
    assert (checkout / ".tools" / "stamps" / "venv").is_file()
    assert not (checkout / ".tools" / "stamps" / "kubeconform").exists()


def test_heartbeat_stops_cleanly_whenever_the_command_ends() -> None:
    """The ticker may be stopped at any moment: never a shell warning, never a stray line."""
    script = (
        "set -euo pipefail; PROG=t; source bin/lib/common.sh; "
        "for i in $(seq 40); do STACKGEN_HEARTBEAT_SECONDS=0.03 heartbeat tick sleep 0.1; done; "
        "heartbeat fails false || echo rc=$?; jobs -p | wc -l"
    )
    proc = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[-2:] == ["rc=1", "0"]  # the status kept; no ticker left behind
    assert all(line.startswith("    ... tick: still running after ") for line in lines[:-2])
