"""Where the repository and its pieces are, for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "overlays" / "example"
#: What bin/setup installs.
TOOLS_BIN = ROOT / ".tools" / "bin"
SCHEMAS = ROOT / ".tools" / "schemas"
