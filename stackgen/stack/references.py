"""What the user's kustomizations point at: never the network, never outside the overlay.

kustomize fetches a ``resources:`` entry that is a URL (``https://…``, ``git@…``,
``github.com/org/repo?ref=…``) over HTTP or with ``git fetch``, and loads a folder it
names wherever it lies.  Every kustomization in the overlay is read before kustomize
runs: a remote entry is refused, and so is a local path that leaves the overlay (in a
plain overlay, a folder beside it, kustomize's base/overlay layout, is allowed and then
checked the same way).  The files secretGenerators read are collected on the way, so
tool messages can be scrubbed of their content (:mod:`stackgen.common.redact`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stackgen.common import overlayfs, yamlio
from stackgen.common.errors import Problem
from stackgen.common.files import UnsafeFile, display_path, is_inside, read_regular
from stackgen.stack.model import Stack

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
#: Fields whose entries kustomize may fetch from a URL or a git repository.
_FETCHABLE = ("resources", "bases", "components", "generators", "transformers", "validators")
#: Fields that name local files (or, for the fetchable ones, folders).
_LOCAL = (*_FETCHABLE, "crds", "configurations", "patchesStrategicMerge")
_SCHEME = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|[a-z][a-z0-9+.-]*::|git@|[^/\s]+@[^/\s]+:)", re.I)
_QUERY = re.compile(r"\?(?:ref|version|submodules|timeout)=")
REMOTE_MESSAGE = (
    "is a remote reference (URL or git repository): stackgen never fetches over the "
    "network; copy what it names into the overlay"
)
OUTSIDE_MESSAGE = "leads outside the overlay folder: stackgen reads nothing outside it"


def looks_remote(entry: str, base: Path) -> bool:
    """Whether kustomize would fetch ``entry`` (relative to ``base``) from the network."""
    if _SCHEME.match(entry) or _QUERY.search(entry):
        return True
    first = entry.split("/", 1)[0]
    # github.com/org/repo, example.org/x//path: a host name, unless such a folder exists.
    return (
        "/" in entry
        and "." in first.strip(".")
        and not first.startswith(".")
        and not (base / entry).exists()
    )


@dataclass
class References:
    """What the kustomizations of an overlay name."""

    problems: list[Problem] = field(default_factory=list)
    #: Files secretGenerators read (resolved): their content must never be printed.
    secret_files: list[Path] = field(default_factory=list)


def check_overlay(overlay: Path, listing: overlayfs.Listing, *, plain: bool) -> References:
    """Check every kustomization of ``overlay`` (and, when ``plain``, the folders it adds)."""
    found = References()
    roots = [(overlay, listing)]
    seen = {overlay.resolve()}
    while roots:
        root, scanned = roots.pop(0)
        real_root = root.resolve()
        for rel in scanned.files:
            if rel.name not in KUSTOMIZATION_NAMES:
                continue
            kfile = root / rel
            for folder in _check_file(kfile, real_root, plain, found):
                if folder in seen:
                    continue
                seen.add(folder)
                extra = overlayfs.scan(folder)
                found.problems += extra.problems
                roots.append((folder, extra))
    return found


def _check_file(kfile: Path, real_root: Path, plain: bool, found: References) -> Iterator[Path]:
    """Problems of one kustomization into ``found``; yields the outside folders it adds."""
    try:
        data = yamlio.load(read_regular(kfile.resolve()))
    except (OSError, RuntimeError, UnsafeFile, yaml.YAMLError, UnicodeDecodeError):
        return  # kustomize reports unreadable kustomizations in its own words
    if not isinstance(data, dict):
        return
    shown = display_path(kfile)
    base = kfile.resolve().parent
    for where, entry, fetchable in _entries(data):
        if fetchable and looks_remote(entry, base):
            found.problems.append(Problem(shown, where, REMOTE_MESSAGE))
            continue
        target = (base / entry).resolve()
        if is_inside(real_root, target):
            continue
        if plain and fetchable and target.is_dir():
            yield target  # a base beside a plain overlay: checked the same way
            continue
        found.problems.append(Problem(shown, where, OUTSIDE_MESSAGE))
    for generator in _list(data.get("secretGenerator")):
        if isinstance(generator, dict):
            for entry in _generator_files(generator):
                target = (base / entry).resolve()
                if is_inside(real_root, target):
                    found.secret_files.append(target)


def _entries(data: dict[str, Any]) -> Iterator[tuple[str, str, bool]]:
    """Every path-like entry: (field path, entry, whether kustomize may fetch it)."""
    for key in _LOCAL:
        for index, entry in enumerate(_list(data.get(key))):
            if isinstance(entry, str) and entry and "\n" not in entry:
                yield f"{key}[{index}]", entry, key in _FETCHABLE
    for key in ("patches", "patchesJson6902", "replacements"):
        for index, patch in enumerate(_list(data.get(key))):
            if isinstance(patch, dict) and isinstance(patch.get("path"), str):
                yield f"{key}[{index}].path", patch["path"], False
    openapi = data.get("openapi")
    if isinstance(openapi, dict) and isinstance(openapi.get("path"), str):
        yield "openapi.path", openapi["path"], False
    for key in ("configMapGenerator", "secretGenerator"):
        for index, generator in enumerate(_list(data.get(key))):
            if isinstance(generator, dict):
                for entry in _generator_files(generator):
                    yield f"{key}[{index}]", entry, False


def _generator_files(generator: dict[str, Any]) -> Iterator[str]:
    for entry in _list(generator.get("files")):
        if isinstance(entry, str):
            yield entry.split("=", 1)[-1]
    for entry in [*_list(generator.get("envs")), generator.get("env")]:
        if isinstance(entry, str):
            yield entry


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def remote_extras(stack: Stack) -> list[Problem]:
    """Remote entries in stack.yaml's own ``kustomize.resources`` and ``components``."""
    return [
        Problem(stack.file, f"kustomize.{key}[{index}]", REMOTE_MESSAGE)
        for key, entries in (
            ("resources", stack.kustomize.resources),
            ("components", stack.kustomize.components),
        )
        for index, entry in enumerate(entries)
        if isinstance(entry, str) and looks_remote(entry, stack.overlay)
    ]
