"""The external tools stackgen drives: kustomize (or ``kubectl kustomize``), kubeconform, kubectl.

Tools are looked up first in ``$STACKGEN_TOOLS_DIR/bin``, then in the checkout's
``.tools/bin`` (what ``bin/setup`` installs), then on ``PATH``.  Their versions are
checked once per process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from stackgen.errors import ToolError
from stackgen.resources import repo_root

KUSTOMIZE_INSTALL = "go install sigs.k8s.io/kustomize/kustomize/v5@v5.8.1"
KUBECONFORM_INSTALL = "go install github.com/yannh/kubeconform/cmd/kubeconform@v0.7.0"
_MIN_KUSTOMIZE = (5, 0)


@dataclass(frozen=True)
class Tool:
    """A located, version-checked executable."""

    name: str
    argv: tuple[str, ...]
    version: str
    #: Set when a fallback replaced the preferred tool (shown to the user once).
    notice: str | None = None


def tool_dirs() -> list[Path]:
    """Folders searched before PATH: ``$STACKGEN_TOOLS_DIR/bin`` if set, else ``.tools/bin``."""
    env = os.environ.get("STACKGEN_TOOLS_DIR")
    if env:
        return [Path(env) / "bin"]
    dirs = []
    root = repo_root()
    if root is not None:
        dirs.append(root / ".tools" / "bin")
    return dirs


def which(name: str) -> Path | None:
    """Find an executable in stackgen's tool folders, then on PATH."""
    for folder in tool_dirs():
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def _run_version(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        raise ToolError(f"cannot run {argv[0]}: {exc.strerror}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{argv[0]} did not answer `{' '.join(argv[1:])}` within 30 s") from exc
    return proc.stdout.strip() or proc.stderr.strip()


def _parse_version(text: str) -> tuple[int, int] | None:
    match = re.search(r"v?(\d+)\.(\d+)(?:\.\d+)?", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


@cache
def kustomize() -> Tool:
    """The standalone kustomize v5, or ``kubectl kustomize`` as a fallback."""
    path = which("kustomize")
    if path is not None:
        text = _run_version([str(path), "version"])
        parsed = _parse_version(text)
        if parsed is None or parsed < _MIN_KUSTOMIZE:
            raise ToolError(
                f"kustomize at {path} reports version {text!r}; stackgen needs v5 or newer: "
                f"{KUSTOMIZE_INSTALL}"
            )
        found = re.search(r"v?\d+\.\d+\.\d+", text)
        return Tool("kustomize", (str(path), "build"), found.group(0) if found else text)
    kubectl_path = which("kubectl")
    if kubectl_path is not None:
        text = _run_version([str(kubectl_path), "version", "--client", "-o", "json"])
        try:
            version = str(json.loads(text).get("kustomizeVersion", ""))
        except json.JSONDecodeError:
            version = ""
        parsed = _parse_version(version)
        if parsed is None or parsed < _MIN_KUSTOMIZE:
            raise ToolError(
                f"kustomize not found, and kubectl at {kubectl_path} embeds kustomize "
                f"{version or 'of unknown version'} (stackgen needs v5): {KUSTOMIZE_INSTALL}"
            )
        return Tool(
            "kubectl kustomize",
            (str(kubectl_path), "kustomize"),
            version,
            notice=f"kustomize not found; using `kubectl kustomize` ({version})",
        )
    raise ToolError(
        "neither kustomize nor kubectl found: run bin/setup, or install kustomize with: "
        + KUSTOMIZE_INSTALL
    )


@cache
def kubeconform() -> Tool:
    """kubeconform, which validates the built stack against offline schemas."""
    path = which("kubeconform")
    if path is None:
        raise ToolError(
            "kubeconform not found (needed to validate the stack offline): run bin/setup, "
            f"or install it with: {KUBECONFORM_INSTALL} (and put $(go env GOPATH)/bin on PATH)"
        )
    version = _run_version([str(path), "-v"])
    return Tool("kubeconform", (str(path),), version)


@cache
def kubectl() -> Tool:
    """kubectl, for server-side dry runs."""
    path = which("kubectl")
    if path is None:
        raise ToolError("kubectl not found: --server-dry-run needs kubectl and a kube context")
    return Tool("kubectl", (str(path),), "")


def run(
    tool: Tool,
    args: list[str],
    *,
    stdin: bytes | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[bytes]:
    """Run a tool, returning the completed process (never raising on a non-zero exit)."""
    argv = [*tool.argv, *args]
    try:
        return subprocess.run(
            argv, input=stdin, capture_output=True, cwd=cwd, timeout=timeout, check=False
        )
    except OSError as exc:
        raise ToolError(f"cannot run {tool.name}: {exc.strerror}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{tool.name} took longer than {timeout:.0f} s") from exc
