"""Render the stack.yaml reference (docs/stack-reference.md) from the JSON schema.

The schema is the single source: ``stackgen schema --markdown`` prints this page and a
test fails when the committed page and the schema disagree.
"""

from __future__ import annotations

import json
from typing import Any

from stackgen.common.defaults import resolve_ref
from stackgen.common.resources import load_schema


def _type_of(node: dict[str, Any], root: dict[str, Any]) -> str:
    node = resolve_ref(node, root)
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    kind = node.get("type", "object")
    if isinstance(kind, list):
        return " or ".join(kind)
    if kind == "array":
        items = resolve_ref(node.get("items", {}), root)
        return f"list of {_type_of(items, root)}"
    if kind == "object" and "additionalProperties" in node and not node.get("properties"):
        value = node["additionalProperties"]
        if isinstance(value, dict):
            return f"map of {_type_of(value, root)}"
    return str(kind)


def _default(node: dict[str, Any], root: dict[str, Any]) -> str:
    node = resolve_ref(node, root)
    if "default" not in node:
        return ""
    return f"`{json.dumps(node['default'], separators=(', ', ': '))}`"


def _rows(node: dict[str, Any], root: dict[str, Any], prefix: str, out: list[str]) -> None:
    node = resolve_ref(node, root)
    required = set(node.get("required", []))
    for name, child in node.get("properties", {}).items():
        child_r = resolve_ref(child, root)
        path = f"{prefix}{name}"
        description = " ".join(str(child_r.get("description", "")).split())
        flag = " (required)" if name in required else ""
        cell = description.replace("|", "\\|")
        out.append(
            f"| `{path}`{flag} | {_type_of(child_r, root)} | {_default(child_r, root)} | {cell} |"
        )
        if child_r.get("type") == "array" and isinstance(child_r.get("items"), dict):
            items = resolve_ref(child_r["items"], root)
            if items.get("properties"):
                _rows(items, root, f"{path}[].", out)
        elif child_r.get("properties"):
            _rows(child_r, root, f"{path}.", out)


def render_reference() -> str:
    """Return the Markdown reference of stack.yaml."""
    root = load_schema("stack")
    lines = [
        "# stack.yaml reference",
        "",
        "<!-- Generated from schemas/stack.schema.json by `stackgen schema --markdown`. "
        "Do not edit by hand. -->",
        "",
        " ".join(str(root["description"]).split()),
        "",
        'Unknown keys are errors (with a "did you mean" hint). Paths below use `[]` for '
        "list items.",
        "",
        "| field | type | default | description |",
        "|---|---|---|---|",
    ]
    _rows(root, root, "", lines)
    hooks = root["properties"]["hooks"]["propertyNames"]["enum"]
    lines += [
        "",
        "## Hook names",
        "",
        "`hooks` accepts these Buildkite hook names: " + ", ".join(f"`{h}`" for h in hooks) + ".",
        "",
    ]
    return "\n".join(lines)
