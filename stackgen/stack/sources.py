"""The user's own kustomize files: no literal secret in them (they go into git).

A ``secretGenerator`` with ``literals`` or a ``Secret`` with ``data``/``stringData`` in
a kustomization, resource or patch the overlay adds is refused before anything is built:
secrets belong in git-ignored files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from stackgen.common import yamlio
from stackgen.common.errors import ConfigError, Problem
from stackgen.common.files import UnsafeFile, display_path, read_regular, unbounded_problem
from stackgen.stack.model import Stack


def user_sources(stack: Stack) -> list[Path]:
    """The user's own kustomize files that go into a stack."""
    paths: list[Path] = []
    for rel in [*stack.kustomize.resources, *stack.kustomize.components]:
        path = stack.overlay / rel
        paths += kustomize_files(path)
    for patch in stack.kustomize.patches:
        if "path" in patch:
            paths.append(stack.overlay / patch["path"])
    return paths


def kustomize_files(path: Path, first: Path | None = None) -> list[Path]:
    """A resource file, or a kustomization folder's files (recursively, inside it)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    out = [first] if first else []
    for candidate in sorted(path.rglob("*")):
        if (
            candidate.suffix in (".yaml", ".yml", ".json")
            and candidate.is_file()
            and candidate != first
        ):
            out.append(candidate)
    return out


def literal_secrets(paths: list[Path]) -> list[Problem]:
    """Literal secrets in these files (files that do not parse are kustomize's to report).

    Raises:
        ConfigError: a file whose YAML aliases expand beyond bounds (or nest too deeply),
            at once: kustomize, which runs next, would expand it.

    """
    problems: list[Problem] = []
    for path in paths:
        try:
            docs = list(yamlio.load_all(read_regular(path.resolve())))
        except yamlio.UnboundedYamlError as exc:
            raise ConfigError(unbounded_problem(display_path(path), "", exc)) from exc
        except (OSError, RuntimeError, UnsafeFile, yaml.YAMLError):
            continue  # kustomize reports unreadable files with its own words
        if path.name == "stack.yaml":
            continue
        problems += literal_secret_problems(path, docs, display_path(path))
    return problems


def literal_secret_problems(path: Path, docs: list[Any], shown: str) -> Iterator[Problem]:
    """Literal secrets in a user's kustomization or resource file."""
    for doc_index, doc in enumerate(docs):
        if not isinstance(doc, dict):
            continue
        prefix = f"[{doc_index}]." if len(docs) > 1 else ""
        kind = doc.get("kind")
        if kind in (None, "Kustomization", "Component") and "secretGenerator" in doc:
            for gen_index, gen in enumerate(doc.get("secretGenerator") or []):
                if not isinstance(gen, dict):
                    continue
                for lit_index, _ in enumerate(gen.get("literals") or []):
                    yield Problem(
                        shown,
                        f"{prefix}secretGenerator[{gen_index}].literals[{lit_index}]",
                        "literal secret value in git; use files: or envs: with a git-ignored file",
                    )
        if kind == "Secret":
            for field in ("data", "stringData"):
                if doc.get(field):
                    name = (doc.get("metadata") or {}).get("name", "?")
                    yield Problem(
                        shown,
                        f"{prefix}{field}",
                        f"Secret {name!r} holds literal values in git; "
                        "generate it from a git-ignored file (secretGenerator files:)",
                    )
