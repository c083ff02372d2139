"""stackgen: compose, validate and run Buildkite agent stacks on Kubernetes."""

from __future__ import annotations

__version__ = "0.1.0"
