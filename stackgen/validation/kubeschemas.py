"""Offline Kubernetes JSON schemas for kubeconform, pinned to one Kubernetes version.

The source is the PyPI package ``kubernetes-validate``, which ships strict JSON schemas
for Kubernetes 1.25-1.37.  Its per-kind files ``$ref`` one shared ``_definitions.json``
through an absolute ``/api/...`` URL that kubeconform's file loader cannot follow, so
each kind file is rewritten to be standalone: every reference is inlined, except
recursive ones (``JSONSchemaProps``), which become file-local ``#/$defs/...`` references.
The result is laid out the way kubeconform's ``-schema-location DIR`` expects:
``DIR/v1.33.0-standalone-strict/deployment-apps-v1.json``.

Run ``python -m stackgen.validation.kubeschemas --kubernetes-version 1.33.0 --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from stackgen.common.names import DEFAULT_KUBERNETES_VERSION

_DEFS_PREFIXES = ("/api/_definitions.json#/$defs/", "#/$defs/")
#: Marker file: a schema folder without it is incomplete and never used.
COMPLETE_MARKER = ".complete"


class SchemaSourceError(RuntimeError):
    """kubernetes-validate is missing or lacks the requested version."""


def schema_release(kubernetes_version: str) -> str:
    """The release whose schemas serve a version: its minor's ``.0`` (``1.33.5`` -> ``1.33.0``).

    A patch release never changes the API, and kubernetes-validate ships one schema set
    per minor release.
    """
    major, minor = kubernetes_version.split(".")[:2]
    return f"{major}.{minor}.0"


def version_dir_name(kubernetes_version: str) -> str:
    """Folder kubeconform looks in for one version (strict schemas)."""
    return f"v{schema_release(kubernetes_version)}-standalone-strict"


def is_complete(root: Path, kubernetes_version: str) -> bool:
    """Whether ``root`` holds a finished conversion for the version."""
    return (root / version_dir_name(kubernetes_version) / COMPLETE_MARKER).is_file()


def _source_dir(kubernetes_version: str) -> Path:
    try:
        package = resources.files("kubernetes_validate")
    except ModuleNotFoundError as exc:
        raise SchemaSourceError(
            "the Python package kubernetes-validate is not installed "
            "(pip install 'stackgen[schemas]', or run bin/setup)"
        ) from exc
    release = schema_release(kubernetes_version)
    src = Path(str(package)) / "kubernetes-json-schema" / f"v{release}-local-strict"
    if not src.is_dir():
        raise SchemaSourceError(
            f"kubernetes-validate has no schemas for Kubernetes {kubernetes_version}"
        )
    return src


class _Inliner:
    """Inline ``$ref``s into one kind's schema; recursive definitions stay local."""

    def __init__(self, definitions: dict[str, Any]) -> None:
        self.definitions = definitions

    def expand_file(self, schema: dict[str, Any]) -> dict[str, Any]:
        self.local: dict[str, Any] = {}
        self.pending: list[str] = []
        out: dict[str, Any] = self._walk(schema, ())
        # Definitions referenced recursively are emitted once, inside the file.
        while self.pending:
            name = self.pending.pop()
            if name in self.local:
                continue
            self.local[name] = None  # reserve: a cycle back to it stays a reference
            self.local[name] = self._walk(self.definitions[name], (name,))
        if self.local:
            out["$defs"] = {k: self.local[k] for k in sorted(self.local)}
        return out

    def _walk(self, node: Any, stack: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [self._walk(item, stack) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str):  # JSONSchemaProps has a *property* named $ref: a dict
            name = next((ref[len(p) :] for p in _DEFS_PREFIXES if ref.startswith(p)), None)
            if name is None or name not in self.definitions:
                raise ValueError(f"unresolvable $ref {ref!r}")
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            if name in stack:
                self.pending.append(name)
                target: dict[str, Any] = {"$ref": f"#/$defs/{name}"}
            else:
                target = self._walk(self.definitions[name], (*stack, name))
            if not siblings:
                return target
            # Keep sibling keywords (descriptions) next to the inlined schema.
            merged = dict(target) if "$ref" not in target else {"allOf": [target]}
            for key, value in siblings.items():
                merged.setdefault(key, self._walk(value, stack))
            return merged
        return {key: self._walk(value, stack) for key, value in node.items() if key != "$id"}


def convert(kubernetes_version: str, out_root: Path) -> tuple[Path, int]:
    """Write standalone strict schemas for one version under ``out_root``.

    Returns the version folder and the number of schema files written.  The folder is
    built next to its final place and renamed into it, so a crash leaves no half folder.
    """
    src = _source_dir(kubernetes_version)
    with (src / "_definitions.json").open(encoding="utf-8") as fh:
        definitions = json.load(fh)["$defs"]
    inliner = _Inliner(definitions)
    out_root.mkdir(parents=True, exist_ok=True)
    final = out_root / version_dir_name(kubernetes_version)
    work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out_root))
    count = 0
    try:
        for path in sorted(src.glob("*.json")):
            if path.name in ("_definitions.json", "all.json"):
                continue
            with path.open(encoding="utf-8") as fh:
                schema = json.load(fh)
            standalone = inliner.expand_file(schema)
            with (work / path.name).open("w", encoding="utf-8") as fh:
                json.dump(standalone, fh, separators=(",", ":"))
            count += 1
        (work / COMPLETE_MARKER).write_text(
            f"kubernetes-validate strict schemas for {kubernetes_version}, {count} files\n",
            encoding="utf-8",
        )
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final, count


def main(argv: list[str] | None = None) -> int:
    """Command line: convert the schemas of one Kubernetes version."""
    parser = argparse.ArgumentParser(
        prog="python -m stackgen.validation.kubeschemas", description=__doc__
    )
    parser.add_argument("--kubernetes-version", default=DEFAULT_KUBERNETES_VERSION)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--force", action="store_true", help="convert even if present")
    args = parser.parse_args(argv)
    if not args.force and is_complete(args.out, args.kubernetes_version):
        print(f"schemas for {args.kubernetes_version} already in {args.out}")
        return 0
    started = time.monotonic()
    try:
        folder, count = convert(args.kubernetes_version, args.out)
    except SchemaSourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {count} schemas to {folder} in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
