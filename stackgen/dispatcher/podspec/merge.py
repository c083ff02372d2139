"""Strategic merge patch of a PodSpec, with Kubernetes' semantics.

This follows the algorithm of ``k8s.io/apimachinery/pkg/util/strategicpatch`` (what
``kubectl patch --type=strategic`` and the API server apply), driven by the per-field
metadata of Kubernetes' OpenAPI (:mod:`.patchmeta`):

- maps merge key by key; ``null`` deletes a key; ``$patch: replace`` replaces the map,
  ``$patch: delete`` empties it; ``$retainKeys`` drops the keys it does not list;
- lists whose strategy is ``merge`` merge by their merge key (``containers``,
  ``initContainers``, ``volumes``, ``env`` by ``name``, ``volumeMounts`` by
  ``mountPath``, …); an item ``{"<key>": v, "$patch": "delete"}`` removes that item, an
  item ``{"$patch": "replace"}`` makes the rest of the patch list the whole list;
  ``$deleteFromPrimitiveList/<field>`` removes scalars; the result keeps the patch's
  order for patched items and the original's for the rest, interleaved as the Go code
  does;
- every other list (``command``, ``args``, ``tolerations``, …) is replaced whole;
- a value whose type differs from the original's replaces it.

``$setElementOrder/<field>`` (which ``kubectl apply`` generates, never a person) is not
supported: a patch using it is refused with a clear error instead of merged differently.
The unit tests compare every case with ``kubectl patch --local --type=strategic``.
"""

from __future__ import annotations

import copy
from typing import Any

from stackgen.dispatcher.podspec import patchmeta

DIRECTIVE = "$patch"
RETAIN_KEYS = "$retainKeys"
DELETE_FROM_PRIMITIVE_LIST = "$deleteFromPrimitiveList/"
SET_ELEMENT_ORDER = "$setElementOrder/"


class MergeError(ValueError):
    """The patch cannot be applied (a bad directive, an unknown field, a missing key)."""


class _Schema:
    """The merge facts of one object type (or of an unknown one: no facts)."""

    def __init__(self, type_name: str | None, types: dict[str, Any]) -> None:
        self.name = (type_name or "object").rsplit(".", 1)[-1]
        self._types = types
        self._node: dict[str, Any] = types.get(type_name or "", {}) if type_name else {}

    def field(self, key: str) -> dict[str, Any]:
        """The facts of field ``key`` (raises for a field the type does not have)."""
        if "fields" in self._node:
            fields: dict[str, Any] = self._node["fields"]
            if key not in fields:
                raise MergeError(f"{self.name} has no field {key!r}")
            return dict(fields[key])
        if "values" in self._node:
            return dict(self._node["values"])
        return {}

    def sub(self, facts: dict[str, Any]) -> _Schema:
        """The schema of a field's objects (a list's items, or the object itself)."""
        item = facts.get("list", facts)
        if "values" in item:
            return _MapSchema(item["values"], self._types)
        return _Schema(item.get("type"), self._types)


class _MapSchema(_Schema):
    """A ``map[string]X`` field: every key has X's facts."""

    def __init__(self, value_facts: dict[str, Any], types: dict[str, Any]) -> None:
        super().__init__(None, types)
        self._value = value_facts

    def field(self, key: str) -> dict[str, Any]:
        return dict(self._value)


def _strategy(facts: dict[str, Any]) -> str:
    """The strategy besides ``retainKeys`` (Go's extractRetainKeysPatchStrategy)."""
    strategies = [s for s in facts.get("strategy", []) if s != "retainKeys"]
    if len(strategies) > 1:
        raise MergeError(f"unexpected patch strategy {facts.get('strategy')}")
    return strategies[0] if strategies else ""


def strategic_merge(original: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``patch`` applied to the PodSpec ``original`` (neither is changed)."""
    if not isinstance(patch, dict):
        raise MergeError("a pod spec patch must be a mapping")
    meta = patchmeta.load()
    schema = _Schema(meta["root"], meta["types"])
    return _merge_map(copy.deepcopy(original), copy.deepcopy(patch), schema)


def _kind(value: Any) -> str:
    """A JSON value's type as Go's reflect sees decoded JSON (numbers are one type)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _merge_map(original: dict[str, Any], patch: dict[str, Any], schema: _Schema) -> dict[str, Any]:
    if DIRECTIVE in patch:
        directive = patch.pop(DIRECTIVE)
        if directive == "replace":
            return patch
        if directive == "delete":
            return {}
        raise MergeError(f"unknown $patch directive {directive!r} in a map")
    _retain_keys(original, patch)
    for key in patch:
        if key.startswith(SET_ELEMENT_ORDER):
            raise MergeError(f"{key}: $setElementOrder directives are not supported")
    for key, value in patch.items():
        is_delete_list = key.startswith(DELETE_FROM_PRIMITIVE_LIST)
        if is_delete_list:
            key = key[len(DELETE_FROM_PRIMITIVE_LIST) :]
            if not key:
                raise MergeError("$deleteFromPrimitiveList needs a field name")
        if value is None:
            original.pop(key, None)
            continue
        if key not in original or _kind(original[key]) != _kind(value):
            if not is_delete_list:
                _set_without_directives(original, key, value)
            continue
        if isinstance(value, dict):
            facts = schema.field(key)
            if _strategy(facts) == "replace":
                original[key] = value
            else:
                original[key] = _merge_map(original[key], value, schema.sub(facts))
        elif isinstance(value, list):
            facts = schema.field(key)
            if _strategy(facts) == "merge" or is_delete_list:
                original[key] = _merge_list(
                    original[key], value, schema.sub(facts), facts.get("key", ""), is_delete_list
                )
            else:
                original[key] = value
        else:
            _set_without_directives(original, key, value)
    return original


def _set_without_directives(target: dict[str, Any], key: str, value: Any) -> None:
    """A patch value taken as is: nulls dropped, directive-bearing maps removed."""
    _discard_nulls(value)
    kept, keep = _remove_directives(value)
    if keep:
        target[key] = kept
    else:
        target.pop(key, None)


def _retain_keys(original: dict[str, Any], patch: dict[str, Any]) -> None:
    if RETAIN_KEYS not in patch:
        return
    keys = patch.pop(RETAIN_KEYS)
    if not isinstance(keys, list):
        raise MergeError("$retainKeys must be a list")
    for key, value in patch.items():
        if value is None or key.startswith((DELETE_FROM_PRIMITIVE_LIST, SET_ELEMENT_ORDER)):
            continue
        if key not in keys:
            raise MergeError(f"$retainKeys does not list {key!r}, which the patch sets")
    for key in list(original):
        if key not in keys:
            del original[key]


def _discard_nulls(value: Any) -> None:
    if isinstance(value, dict):
        for key in [k for k, v in value.items() if v is None]:
            del value[key]
        for item in value.values():
            _discard_nulls(item)
    elif isinstance(value, list):
        for item in value:
            _discard_nulls(item)


def _remove_directives(value: Any) -> tuple[Any, bool]:
    if isinstance(value, dict):
        if DIRECTIVE in value:
            return None, False
        for key in list(value):
            kept, keep = _remove_directives(value[key])
            if keep:
                value[key] = kept
            else:
                del value[key]
        return value, True
    if isinstance(value, list):
        out = []
        for item in value:
            kept, keep = _remove_directives(item)
            if keep:
                out.append(kept)
        return out, True
    return value, True


def _element_kind(*lists: list[Any]) -> str:
    kind = ""
    for items in lists:
        for item in items:
            this = _kind(item)
            if this == "list":
                raise MergeError("lists of lists cannot be merged")
            if kind and this != kind:
                raise MergeError("list element types are not identical")
            kind = this
    return kind


def _merge_list(
    original: list[Any],
    patch: list[Any],
    schema: _Schema,
    merge_key: str,
    is_delete_list: bool,
) -> list[Any]:
    if not original and not patch:
        return original
    kind = _element_kind(original, patch)
    if kind != "dict":
        if is_delete_list:
            return [item for item in original if item not in patch]
        merged = _deduplicate_scalars(original + patch)
        merge_key = ""
    else:
        if not merge_key:
            raise MergeError(f"cannot merge lists of {schema.name} without a merge key")
        original, patch = _special_elements(original, patch, merge_key)
        merged = _merge_items(list(original), patch, merge_key, schema)
    patch_items = [i for i in merged if _index(patch, i, merge_key) >= 0]
    server_only = [i for i in merged if _index(patch, i, merge_key) < 0]
    return _normalize_order(patch_items, server_only, patch, original, merge_key)


def _deduplicate_scalars(items: list[Any]) -> list[Any]:
    """Go's deduplicateScalars, order effects included (a duplicate takes the last item)."""
    items = list(items)
    length = len(items) - 1
    i = 0
    while i < length:
        j = i + 1
        while j <= length:
            if items[i] == items[j] and _kind(items[i]) == _kind(items[j]):
                items[j] = items[length]
                items = items[:length]
                length -= 1
                j -= 1
            j += 1
        i += 1
    return items


def _special_elements(
    original: list[Any], patch: list[Any], merge_key: str
) -> tuple[list[Any], list[Any]]:
    """Apply ``$patch: delete`` items; ``$patch: replace`` makes the patch the list."""
    plain: list[Any] = []
    replace = False
    for item in patch:
        if DIRECTIVE not in item:
            plain.append(item)
            continue
        directive = item[DIRECTIVE]
        if directive == "delete":
            if merge_key not in item:
                raise MergeError(f"a $patch: delete item needs its merge key {merge_key!r}")
            original = [o for o in original if o.get(merge_key) != item[merge_key]]
        elif directive == "replace":
            replace = True
        elif directive == "merge":
            raise MergeError("merging lists cannot yet be specified in the patch")
        else:
            raise MergeError(f"unknown $patch directive {directive!r} in a list")
    if replace:
        return plain, []
    return original, plain


def _merge_items(
    original: list[Any], patch: list[Any], merge_key: str, schema: _Schema
) -> list[Any]:
    for item in patch:
        if merge_key not in item:
            raise MergeError(f"a list item of {schema.name} lacks its merge key {merge_key!r}")
        for index, current in enumerate(original):
            if current.get(merge_key) == item[merge_key] and merge_key in current:
                original[index] = _merge_map(current, item, schema)
                break
        else:
            original.append(item)
    return original


def _value(item: Any, merge_key: str) -> tuple[str, Any]:
    value = item.get(merge_key) if merge_key and isinstance(item, dict) else item
    return _kind(value), value


def _index(items: list[Any], wanted: Any, merge_key: str) -> int:
    value = _value(wanted, merge_key)
    for index, item in enumerate(items):
        if _value(item, merge_key) == value:
            return index
    return -1


def _normalize_order(
    patch_items: list[Any],
    server_only: list[Any],
    patch_order: list[Any],
    server_order: list[Any],
    merge_key: str,
) -> list[Any]:
    """Go's normalizeElementOrder: each part sorted by its order, then interleaved."""
    patch_items = sorted(patch_items, key=lambda i: _index(patch_order, i, merge_key))
    server_only = sorted(server_only, key=lambda i: _index(server_order, i, merge_key))
    out: list[Any] = []
    i = j = 0
    while i < len(server_only) or j < len(patch_items):
        if i >= len(server_only):
            out.append(patch_items[j])
            j += 1
        elif j >= len(patch_items):
            out.append(server_only[i])
            i += 1
        else:
            left = _index(server_order, server_only[i], merge_key)
            right = _index(server_order, patch_items[j], merge_key)
            if left >= 0 and right >= 0 and left < right:
                out.append(server_only[i])
                i += 1
            else:
                out.append(patch_items[j])
                j += 1
    return out
