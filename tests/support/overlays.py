"""Overlays for tests: files written from indented text, and the smallest valid stack."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.support.paths import EXAMPLE

__all__ = ["EXAMPLE", "MINIMAL", "write"]


def write(path: Path, text: str, mode: int | None = None) -> Path:
    """Write dedented ``text`` to ``path`` (folders made), optionally with ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    if mode is not None:
        path.chmod(mode)
    return path


#: One dispatch queue and a token file: the smallest valid stack.yaml.
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
