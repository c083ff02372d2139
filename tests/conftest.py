"""Shared test set-up: where the repo and its tools are."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Tests use the toolchain bin/setup installed, never a user's cache.
os.environ.setdefault("STACKGEN_SCHEMA_DIR", str(ROOT / ".tools" / "schemas"))
