"""Helpers every benchmark shares: paths, the venv, statistics, tables, JSON and charts."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench" / "out"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def out_dir() -> Path:
    """``bench/out`` (git-ignored), created on demand."""
    OUT.mkdir(parents=True, exist_ok=True)
    return OUT


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    data = sorted(values)
    if len(data) == 1:
        return float(data[0])
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return float(data[lo] + (data[hi] - data[lo]) * (pos - lo))


def median(values: Sequence[float]) -> float:
    """The median; NaN for no values."""
    return percentile(values, 50)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table with right-aligned numbers (also valid Markdown)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        parts = []
        for i, value in enumerate(row):
            numeric = i > 0 and _looks_numeric(value)
            parts.append(value.rjust(widths[i]) if numeric else value.ljust(widths[i]))
        return "| " + " | ".join(parts) + " |"

    sep = (
        "|" + "|".join("-" * (w + 1) + (":" if i > 0 else "-") for i, w in enumerate(widths)) + "|"
    )
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3f}"
    return str(value)


def _looks_numeric(text: str) -> bool:
    stripped = text.rstrip("%x ").replace(",", "").lstrip("+-≤")
    try:
        float(stripped)
    except ValueError:
        return text == "n/a"
    return True


def environment() -> dict[str, Any]:
    """What the figures were measured on."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(ROOT), "status", "--porcelain", "--", "stackgen"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
        )
    except OSError:
        commit, dirty = "", False
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": commit + ("+dirty" if dirty else ""),
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "loadavg": [round(x, 2) for x in load],
    }


def write_json(name: str, data: Any) -> Path:
    """Write ``bench/out/<name>`` as indented JSON."""
    path = out_dir() / name
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    return path


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "note: matplotlib is missing (pip install -e '.[bench]'); no chart written",
            file=sys.stderr,
        )
        return None
    return plt
