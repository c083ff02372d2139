"""Session set-up for every test: the toolchain bin/setup installed, never a user's cache."""

from __future__ import annotations

import os

from tests.support.paths import SCHEMAS

os.environ.setdefault("STACKGEN_SCHEMA_DIR", str(SCHEMAS))
