"""Defaults come from the schemas, and only from them.

``schemas/stack.schema.json`` (and ``dispatcher.schema.json``) state every default once;
the dataclasses, the loaders and the generated dispatcher config read them from there
with :func:`schema_default`, so code and schema cannot disagree (and
``docs/stack-reference.md``, generated from the schema, shows the same values).
"""

from __future__ import annotations

import copy
from typing import Any

from stackgen.common.resources import load_schema


def resolve_ref(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref``; keywords beside it (a ``default``) win over the target's."""
    ref = node.get("$ref")
    if not isinstance(ref, str):
        return node
    target: Any = root
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**resolve_ref(target, root), **{k: v for k, v in node.items() if k != "$ref"}}


def schema_node(schema: str, path: str) -> dict[str, Any]:
    """The schema of the field at a dotted ``path`` (``queues.dispatch.cooldown``).

    A list's items are stepped through without naming them: ``queues.maxAgents``.
    """
    root = load_schema(schema)
    node = resolve_ref(root, root)
    for name in path.split(".") if path else []:
        while node.get("type") == "array" and "items" in node:
            node = resolve_ref(node["items"], root)
        node = resolve_ref(node["properties"][name], root)
    while node.get("type") == "array" and "items" in node and "default" not in node:
        node = resolve_ref(node["items"], root)
    return node


def schema_default(schema: str, path: str) -> Any:
    """The default of one field (a fresh copy: callers may change it).

    Raises:
        KeyError: the schema states no default there (a bug: every caller names one).

    """
    node = schema_node(schema, path)
    if "default" not in node:
        raise KeyError(f"{schema}.schema.json states no default for {path}")
    return copy.deepcopy(node["default"])


def section_defaults(schema: str, path: str) -> dict[str, Any]:
    """The defaults of every field of one object that has one (fresh copies)."""
    props = schema_node(schema, path).get("properties", {})
    root = load_schema(schema)
    out = {}
    for name, child in props.items():
        resolved = resolve_ref(child, root)
        if "default" in resolved:
            out[name] = copy.deepcopy(resolved["default"])
    return out


def stack_default(path: str) -> Any:
    """A default of ``stack.yaml`` (``schemas/stack.schema.json``)."""
    return schema_default("stack", path)


def dispatcher_default(path: str) -> Any:
    """A default of the dispatcher config (``schemas/dispatcher.schema.json``)."""
    return schema_default("dispatcher", path)
