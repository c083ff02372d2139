"""Where stackgen's own data lives: bases, components, schemas and templates.

In a checkout these are the top-level ``bases/``, ``components/`` and ``schemas/``
folders (linked into the package as ``stackgen/_data``); in a wheel they are copied
into ``stackgen/_data``.  Either way they are read through :func:`data_dir`.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any


def _package_root() -> Path:
    # stackgen is always installed as plain files (never zipped): setuptools does so.  Not
    # importlib.resources: importing it costs `stackgen --help` ~10 ms.
    return Path(__file__).resolve().parent.parent


def data_dir(name: str) -> Path:
    """Return the folder of one kind of packaged data (``bases``, ``components``, ``schemas``)."""
    path = (_package_root() / "_data" / name).resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"stackgen package data {name!r} is missing at {path}")
    return path


def templates_dir() -> Path:
    """Return the folder of jinja2 templates."""
    return _package_root() / "templates"


@cache
def load_schema(name: str) -> dict[str, Any]:
    """Load one of stackgen's JSON schemas (``stack``, ``dispatcher``)."""
    path = data_dir("schemas") / f"{name}.schema.json"
    with path.open(encoding="utf-8") as fh:
        schema: dict[str, Any] = json.load(fh)
    return schema


def repo_root() -> Path | None:
    """Return the checkout this stackgen runs from, if it runs from one (for .tools/)."""
    candidate = _package_root().parent
    if (candidate / "pyproject.toml").is_file() and (candidate / "bases").is_dir():
        return candidate
    return None
