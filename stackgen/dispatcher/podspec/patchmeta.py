"""Strategic-merge metadata of a PodSpec, taken from Kubernetes' own OpenAPI.

Kubernetes states per field how a strategic merge patch treats it
(``x-kubernetes-patch-strategy``: ``merge``, ``retainKeys``, ``replace``;
``x-kubernetes-patch-merge-key``: the key list items are matched by).  stackgen ships
those facts for every type reachable from ``io.k8s.api.core.v1.PodSpec`` as
``schemas/podspec-patch.json``, generated from the OpenAPI definitions that the
``kubernetes-validate`` package ships (the same source the build's offline schemas come
from)::

    python -m stackgen.dispatcher.podspec.patchmeta --kubernetes-version 1.33.0 \
        > schemas/podspec-patch.json

A unit test regenerates it and compares, so the file cannot drift from its source.

The file's shape: ``{"root": TYPE, "types": {TYPE: {"fields": {NAME: FIELD}} |
{"values": FIELD}}}`` where a FIELD is ``{"type": TYPE}`` (an object),
``{"list": FIELD_OR_SCALAR, "strategy": [...], "key": NAME}`` (a list) or ``{}`` (a scalar).
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import cache
from pathlib import Path
from typing import Any

from stackgen.common.resources import data_dir

ROOT_TYPE = "io.k8s.api.core.v1.PodSpec"
FILE_NAME = "podspec-patch.json"
_REF_PREFIXES = ("#/$defs/", "#/definitions/", "/api/_definitions.json#/$defs/")


def _ref_name(ref: str) -> str:
    for prefix in _REF_PREFIXES:
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    raise ValueError(f"unexpected $ref {ref!r}")


def _field(node: dict[str, Any], todo: list[str]) -> dict[str, Any]:
    """The merge facts of one property (following ``$ref``s into the type table)."""
    if "$ref" in node:
        name = _ref_name(node["$ref"])
        todo.append(name)
        out: dict[str, Any] = {"type": name}
    else:
        out = {}
    types = node.get("type")
    kinds = types if isinstance(types, list) else [types]
    if "array" in kinds:
        out = {"list": _field(node.get("items") or {}, todo)}
    elif "object" in kinds and isinstance(node.get("additionalProperties"), dict):
        out = {"values": _field(node["additionalProperties"], todo)}
    strategy = node.get("x-kubernetes-patch-strategy")
    if strategy:
        out["strategy"] = strategy.split(",")
    key = node.get("x-kubernetes-patch-merge-key")
    if key:
        out["key"] = key
    return out


def generate(definitions: dict[str, Any]) -> dict[str, Any]:
    """The metadata of every type reachable from the PodSpec, from OpenAPI definitions."""
    types: dict[str, Any] = {}
    todo = [ROOT_TYPE]
    while todo:
        name = todo.pop()
        if name in types:
            continue
        schema = definitions[name]
        props = schema.get("properties")
        if isinstance(props, dict):
            types[name] = {"fields": {k: _field(v, todo) for k, v in sorted(props.items())}}
        elif isinstance(schema.get("additionalProperties"), dict):
            types[name] = {"values": _field(schema["additionalProperties"], todo)}
        else:
            types[name] = {}  # a scalar in JSON (Quantity, Time, IntOrString)
    return {"root": ROOT_TYPE, "types": dict(sorted(types.items()))}


def definitions_of(kubernetes_version: str) -> dict[str, Any]:
    """The OpenAPI definitions ``kubernetes-validate`` ships for one Kubernetes version."""
    from importlib import resources

    root = Path(str(resources.files("kubernetes_validate"))) / "kubernetes-json-schema"
    path = root / f"v{kubernetes_version}-local-strict" / "_definitions.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    defs: dict[str, Any] = data.get("$defs") or data["definitions"]
    return defs


@cache
def load() -> dict[str, Any]:
    """The shipped metadata (``schemas/podspec-patch.json``)."""
    path = data_dir("schemas") / FILE_NAME
    meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return meta


def dumps(meta: dict[str, Any]) -> str:
    """The file's exact text."""
    return json.dumps(meta, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the metadata for one Kubernetes version."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kubernetes-version", default="1.33.0")
    args = parser.parse_args(argv)
    sys.stdout.write(dumps(generate(definitions_of(args.kubernetes_version))))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
