"""stackgen: compose, validate and run Buildkite agent stacks on Kubernetes.

The library surface is small::

    import stackgen

    stack = stackgen.load_stack("overlays/example")      # checked stack.yaml
    result = stackgen.build("overlays/example")           # built and validated
    print(result.manifest.decode())

Every error is a :class:`StackgenError` carrying one-line :class:`Problem` records.
Names are imported lazily so ``stackgen --help`` starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "BuildError",
    "BuildOptions",
    "BuildResult",
    "ConfigError",
    "Problem",
    "Stack",
    "StackgenError",
    "ToolError",
    "ValidationError",
    "__version__",
    "build",
    "load_stack",
    "validate",
]

_LAZY = {
    "BuildError": "stackgen.errors",
    "ConfigError": "stackgen.errors",
    "Problem": "stackgen.errors",
    "StackgenError": "stackgen.errors",
    "ToolError": "stackgen.errors",
    "ValidationError": "stackgen.errors",
    "BuildOptions": "stackgen.pipeline",
    "BuildResult": "stackgen.pipeline",
    "build": "stackgen.pipeline",
    "Stack": "stackgen.config",
    "load_stack": "stackgen.config",
}

if TYPE_CHECKING:
    from stackgen.config import Stack, load_stack
    from stackgen.errors import (
        BuildError,
        ConfigError,
        Problem,
        StackgenError,
        ToolError,
        ValidationError,
    )
    from stackgen.pipeline import BuildOptions, BuildResult, build


def validate(overlay: str, *, kubernetes_version: str | None = None) -> BuildResult:
    """Build and fully validate an overlay; raise StackgenError on any problem."""
    from stackgen.pipeline import BuildOptions, build

    return build(overlay, BuildOptions(kubernetes_version=kubernetes_version, validate=True))


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'stackgen' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
