"""The one error hierarchy stackgen raises.

Every error carries one or more :class:`Problem` lines of the form
``FILE: path.to.field: what is wrong``.  The CLI prints one line per problem and
never a traceback (unless ``--debug``).  Messages must never contain secret values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with the input, located as precisely as we can."""

    file: str
    path: str
    message: str
    #: What kind of check found it, shown after the file (``policy`` for stackgen's own
    #: rules, so they read apart from what Kubernetes or kustomize would refuse).
    tag: str = ""

    def __str__(self) -> str:
        head = f"{self.file}: {self.tag}" if self.tag else self.file
        if self.path:
            return f"{head}: {self.path}: {self.message}"
        return f"{head}: {self.message}"


class StackgenError(Exception):
    """Root of every error stackgen raises on purpose."""

    def __init__(self, problems: Problem | Iterable[Problem] | str) -> None:
        if isinstance(problems, str):
            problems = [Problem("stackgen", "", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ConfigError(StackgenError):
    """The overlay or its stack.yaml (or a file it names) is invalid."""


class BuildError(StackgenError):
    """kustomize could not build the composed stack."""


class ValidationError(StackgenError):
    """The built stack failed kubeconform, a policy check or a server dry-run."""


class ToolError(StackgenError):
    """A required external tool (kustomize, kubeconform, kubectl) is missing or broken."""


class ClusterError(StackgenError):
    """The cluster refused part of an apply or delete (a conflict, a rejected object)."""
