"""YAML in and out: the C loader when PyYAML has it, duplicate keys refused, stable dumps.

Every document a user wrote is parsed in two steps: the parser composes its node graph
(linear in the file's size: an alias is one more reference to a node, not a copy), then
:func:`_check_bounds` measures what the aliases would expand to, and only a document
within :data:`MAX_ALIAS_EXPANSION` and :data:`MAX_DEPTH` is turned into Python objects.
So an alias bomb (a "billion laughs") is refused in milliseconds, before anything (the
schema check, compose, kustomize) walks its expansion.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

try:  # the C implementation is ~10x faster on large stacks
    _BaseLoader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
    _BaseDumper: type[yaml.SafeDumper] = yaml.CSafeDumper  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _BaseLoader = yaml.SafeLoader
    _BaseDumper = yaml.SafeDumper

#: What aliases may add to a document, in nodes plus characters of text: a merge key or
#: a shared block is far below it, an alias bomb far above.
MAX_ALIAS_EXPANSION = 1_000_000
#: How deeply collections may nest (a Kubernetes object, CRD schemas included, is far
#: shallower; Python's recursion limit is far deeper).
MAX_DEPTH = 100

_MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.YAMLError):
    """A mapping holds the same key twice (PyYAML would silently keep the last)."""

    def __init__(self, key: object, mark: yaml.Mark | None) -> None:
        self.key = key
        self.mark = mark
        where = f" (line {mark.line + 1})" if mark is not None else ""
        super().__init__(f"duplicate key {key!r}{where}")


class UnboundedYamlError(yaml.MarkedYAMLError):
    """A document refused before it is turned into objects.

    Its aliases expand beyond the bounds, refer to themselves, or it nests too deeply.
    """

    def __init__(self, problem: str, mark: yaml.Mark | None) -> None:
        super().__init__(problem=problem, problem_mark=mark)


class _StrictLoader(_BaseLoader):  # type: ignore[valid-type,misc]
    """SafeLoader that refuses duplicate mapping keys (merge keys may be overridden)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    own = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
    loader.flatten_mapping(node)
    # flatten_mapping puts the merged pairs first, the mapping's own pairs last: the own
    # keys override merged ones (YAML's merge key), but may not repeat each other.
    merged = len(node.value) - own
    result: dict[Any, Any] = {}
    own_keys: set[Any] = set()
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        if index >= merged:
            if key in own_keys:
                raise DuplicateKeyError(key, key_node.start_mark)
            own_keys.add(key)
        result[key] = loader.construct_object(value_node, deep=True)
    return result


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


class _Bounds:
    """One walk over a composed node graph, each node measured once."""

    def __init__(self) -> None:
        #: id(node) -> (expanded size in nodes and characters, height)
        self.measured: dict[int, tuple[int, int]] = {}
        self.open: set[int] = set()
        self.added = 0

    def measure(self, node: yaml.Node, depth: int, parent: yaml.Node) -> tuple[int, int]:
        key = id(node)
        known = self.measured.get(key)
        if known is not None:  # a second reference: an alias (or a merge key) expands it
            size, height = known
            self.added += size
            if self.added > MAX_ALIAS_EXPANSION:
                raise UnboundedYamlError(
                    f"aliases expand the document by more than {MAX_ALIAS_EXPANSION:,} nodes "
                    "and characters (an alias bomb?)",
                    parent.start_mark,
                )
            self._depth(depth + height, parent)
            return known
        if key in self.open:
            raise UnboundedYamlError(
                "an alias refers to a node that contains it", parent.start_mark
            )
        self._depth(depth, node)
        if isinstance(node, yaml.ScalarNode):
            result = (1 + len(node.value), 0)
        else:
            self.open.add(key)
            children: list[yaml.Node] = (
                [n for pair in node.value for n in pair]
                if isinstance(node, yaml.MappingNode)
                else list(node.value)
            )
            size, height = 1, 0
            for child in children:
                child_size, child_height = self.measure(child, depth + 1, node)
                size += child_size
                height = max(height, child_height + 1)
            self.open.discard(key)
            result = (size, height)
        self.measured[key] = result
        return result

    @staticmethod
    def _depth(depth: int, node: yaml.Node) -> None:
        if depth > MAX_DEPTH:
            raise UnboundedYamlError(
                f"collections nest more than {MAX_DEPTH} levels deep", node.start_mark
            )


def _check_bounds(root: yaml.Node) -> None:
    """Refuse a composed document whose construction would not be bounded work."""
    _Bounds().measure(root, 0, root)


def load(text: str | bytes) -> Any:
    """Parse one YAML document, refusing duplicate keys and unbounded alias expansion."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_bounds(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_all(text: str | bytes) -> Iterator[Any]:
    """Parse a multi-document YAML stream, with the checks of :func:`load` per document."""
    loader = _StrictLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            _check_bounds(node)
            yield loader.construct_document(node)
    finally:
        loader.dispose()


def load_fast_all(text: str | bytes) -> list[Any]:
    """Parse trusted multi-document YAML (kustomize output) as fast as PyYAML can."""
    return [doc for doc in yaml.load_all(text, Loader=_BaseLoader) if doc is not None]


def dump(data: Any) -> str:
    """Dump one document with stable, readable formatting (block style, keys as given)."""
    return yaml.dump(
        data,
        Dumper=_BaseDumper,
        default_flow_style=False,
        sort_keys=False,
        width=100,
        allow_unicode=True,
    )
