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

from stackgen.common.version import __version__

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
    "BuildError": "stackgen.common.errors",
    "ConfigError": "stackgen.common.errors",
    "Problem": "stackgen.common.errors",
    "StackgenError": "stackgen.common.errors",
    "ToolError": "stackgen.common.errors",
    "ValidationError": "stackgen.common.errors",
    "BuildOptions": "stackgen.pipeline",
    "BuildResult": "stackgen.pipeline",
    "build": "stackgen.pipeline",
    "Stack": "stackgen.stack.model",
    "load_stack": "stackgen.stack.load",
}

if TYPE_CHECKING:
    from stackgen.common.errors import (
        BuildError,
        ConfigError,
        Problem,
        StackgenError,
        ToolError,
        ValidationError,
    )
    from stackgen.pipeline import BuildOptions, BuildResult, build
    from stackgen.stack.load import load_stack
    from stackgen.stack.model import Stack


def validate(overlay: str, *, kubernetes_version: str | None = None) -> BuildResult:
    """Build and fully validate an overlay; raise StackgenError on any problem."""
    from stackgen.pipeline import BuildOptions, build

    return build(overlay, BuildOptions(kubernetes_version=kubernetes_version, validate=True))


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'stackgen' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
