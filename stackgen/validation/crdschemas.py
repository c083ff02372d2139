"""Offline kubeconform schemas for the custom resources a stack may use (cert-manager).

A CRD's ``openAPIV3Schema`` is turned into the standalone JSON schema kubeconform looks
for (``<kind>-<first label of group>-<version>.json``), made strict the way Kubernetes
itself is for CRDs: an object schema with ``properties`` and neither
``additionalProperties`` nor ``x-kubernetes-preserve-unknown-fields`` takes no other keys.
The CRDs come from the projects' own Go modules, fetched through the Go module proxy by
``bin/setup`` (``go mod download``), and the schemas are written next to the Kubernetes
ones for the same version.

Run ``python -m stackgen.validation.crdschemas --kubernetes-version 1.33.0 --out DIR CRD.yaml...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from stackgen.common.names import DEFAULT_KUBERNETES_VERSION
from stackgen.validation.kubeschemas import version_dir_name


def _strict(node: Any) -> Any:
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    keeps_unknown = node.get("x-kubernetes-preserve-unknown-fields")
    if node.get("type") == "object" and "properties" in node and not keeps_unknown:
        out.setdefault("additionalProperties", False)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


def crd_schemas(crd: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """File name -> kubeconform schema, one per served version of a CRD."""
    spec = crd["spec"]
    group = spec["group"]
    kind = spec["names"]["kind"]
    out = {}
    for version in spec.get("versions") or []:
        schema = ((version.get("schema") or {}).get("openAPIV3Schema")) or {}
        if not version.get("served", True) or not schema:
            continue
        strict = _strict(schema)
        properties = strict.setdefault("properties", {})
        properties["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
        properties["kind"] = {"type": "string", "enum": [kind]}
        properties["metadata"] = {"type": "object"}
        strict["$schema"] = "http://json-schema.org/draft-07/schema#"
        name = f"{kind.lower()}-{group.split('.')[0]}-{version['name']}.json"
        out[name] = strict
    return out


def install(paths: list[Path], kubernetes_version: str, out_root: Path) -> list[Path]:
    """Write the schemas of every CRD in ``paths`` into the version's schema folder."""
    folder = out_root / version_dir_name(kubernetes_version)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: convert the Kubernetes schemas first")
    written = []
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            for name, schema in crd_schemas(doc).items():
                target = folder / name
                target.write_text(json.dumps(schema, separators=(",", ":")), encoding="utf-8")
                written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(
        prog="python -m stackgen.validation.crdschemas", description=__doc__
    )
    parser.add_argument("--kubernetes-version", default=DEFAULT_KUBERNETES_VERSION)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("crds", type=Path, nargs="+")
    args = parser.parse_args(argv)
    try:
        written = install(args.crds, args.kubernetes_version, args.out)
    except (OSError, KeyError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
