"""Kubernetes label selectors, as the HPA sends them in the ``labelSelector`` query.

The HPA turns a metric's ``selector`` (``matchLabels`` and ``matchExpressions``) into
Kubernetes' string form (``labels.Selector.String()``) and the API server passes it on
unchanged.  That form is a comma-separated list of requirements, all of which must hold::

    queue=default              queue==default            queue!=default
    queue in (a,b)             queue notin (a,b)
    queue                      !queue                    (the label exists / does not)
    replicas>2                 replicas<5                (integer comparison)

An empty selector matches everything.  Parsing is strict: anything else is an error,
never a selector that silently matches more than was asked for.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Requirement", "Selector", "SelectorError", "parse_selector"]

# A label key: optional DNS-subdomain prefix and a name of letters, digits, '-', '_', '.'.
_KEY_RE = re.compile(
    r"(?:[a-z0-9]([-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
)
_VALUE_RE = re.compile(r"(?:[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_TOKEN_RE = re.compile(r"\s*(==|!=|=|!|>|<|\(|\)|,|[^\s=!<>(),]+)")


class SelectorError(ValueError):
    """The selector is not a valid Kubernetes label selector."""


@dataclass(frozen=True)
class Requirement:
    """One requirement: ``key <operator> values``."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` satisfy this requirement (Kubernetes' semantics)."""
        present = self.key in labels
        value = labels.get(self.key)
        op = self.operator
        if op in ("=", "==", "in"):
            return present and value in self.values
        if op in ("!=", "notin"):
            # Kubernetes: a missing label satisfies `!=` and `notin`.
            return not present or value not in self.values
        if op == "exists":
            return present
        if op == "!":
            return not present
        # > and <: the label must exist and be an integer.
        if not present or value is None:
            return False
        try:
            number = int(value)
        except ValueError:
            return False
        bound = int(self.values[0])
        return number > bound if op == ">" else number < bound

    def __str__(self) -> str:
        if self.operator == "exists":
            return self.key
        if self.operator == "!":
            return f"!{self.key}"
        if self.operator in ("in", "notin"):
            return f"{self.key} {self.operator} ({','.join(self.values)})"
        return f"{self.key}{self.operator}{self.values[0]}"


@dataclass(frozen=True)
class Selector:
    """A conjunction of requirements; the empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` satisfy every requirement."""
        return all(r.matches(labels) for r in self.requirements)

    def named_values(self, key: str) -> set[str]:
        """Values the selector names positively for ``key`` (``=``, ``==``, ``in``).

        Used to answer for a queue Buildkite does not list (it has no jobs and no agents):
        the HPA asked for it by name, so it gets a value rather than an empty list.
        """
        named: set[str] = set()
        for r in self.requirements:
            if r.key == key and r.operator in ("=", "==", "in"):
                named.update(r.values)
        return named

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


def _check_key(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    if not _KEY_RE.fullmatch(key) or len(name) > 63 or len(key) > 253 + 1 + 63:
        raise SelectorError(f"invalid label key {key!r}")
    return key


def _check_value(value: str) -> str:
    if len(value) > 63 or not _VALUE_RE.fullmatch(value):
        raise SelectorError(f"invalid label value {value!r}")
    return value


def _tokens(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None:  # pragma: no cover - the pattern matches any non-space run
            raise SelectorError(f"cannot parse selector at {text[pos:]!r}")
        tokens.append(match.group(1))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise SelectorError("selector ends too early")
        self.pos += 1
        return token

    def expect(self, want: str) -> None:
        got = self.take()
        if got != want:
            raise SelectorError(f"expected {want!r}, found {got!r}")

    def requirement(self) -> Requirement:
        token = self.take()
        if token == "!":
            return Requirement(_check_key(self.take()), "!")
        key = _check_key(token)
        op = self.peek()
        if op is None or op == ",":
            return Requirement(key, "exists")
        self.take()
        if op in ("=", "==", "!="):
            value = self.peek()
            if value is None or value == ",":
                return Requirement(key, op, ("",))  # `queue=` means "the empty value"
            return Requirement(key, op, (_check_value(self.take()),))
        if op in (">", "<"):
            bound = self.take()
            if not re.fullmatch(r"-?\d+", bound):
                raise SelectorError(f"{key}{op}{bound}: the bound must be an integer")
            return Requirement(key, op, (bound,))
        if op in ("in", "notin"):
            self.expect("(")
            values: list[str] = []
            while True:
                token = self.take()
                if token == ")" and not values:
                    raise SelectorError(f"{key} {op} (): the set must not be empty")
                if token in (",", ")"):  # an empty element, as in `in (a,,b)`
                    values.append("")
                else:
                    values.append(_check_value(token))
                    token = self.take()
                if token == ")":
                    break
                if token != ",":
                    raise SelectorError(f"expected ',' or ')' in {key} {op} (...), found {token!r}")
            return Requirement(key, op, tuple(sorted(set(values))))
        raise SelectorError(f"unknown operator {op!r} after {key!r}")

    def parse(self) -> Selector:
        requirements: list[Requirement] = []
        if self.peek() is None:
            return Selector()
        while True:
            requirements.append(self.requirement())
            token = self.peek()
            if token is None:
                break
            self.expect(",")
        return Selector(tuple(requirements))


def parse_selector(text: str | None) -> Selector:
    """Parse a label selector string; raise :class:`SelectorError` when it is not valid."""
    if text is None or not text.strip():
        return Selector()
    return _Parser(text).parse()
