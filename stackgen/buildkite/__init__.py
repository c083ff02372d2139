"""Buildkite's agent API as the dispatcher and the metrics adapter use it."""

from stackgen.buildkite.api import (
    AgentAPI,
    AuthError,
    Backoff,
    BadResponse,
    BuildkiteError,
    NotFound,
    RateLimited,
    Rejected,
    Unavailable,
    redact,
)
from stackgen.buildkite.models import MetricsSnapshot, QueueMetrics, ScheduledJob

__all__ = [
    "AgentAPI",
    "AuthError",
    "Backoff",
    "BadResponse",
    "BuildkiteError",
    "MetricsSnapshot",
    "NotFound",
    "QueueMetrics",
    "RateLimited",
    "Rejected",
    "ScheduledJob",
    "Unavailable",
    "redact",
]
