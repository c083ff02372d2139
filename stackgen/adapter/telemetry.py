"""The adapter's own Prometheus metrics on ``/metrics`` (no client certificate needed).

Only facts about the adapter itself: whether another metrics adapter owns the APIService,
and how forwarded requests (to other stacks' adapters) fared.  Never Buildkite's numbers.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE", "Telemetry"]

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Telemetry:
    """On the adapter's registry, or a private one (several adapters in one test process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.apiservice_foreign = Gauge(
            "stackgen_metrics_adapter_apiservice_foreign",
            "1 when the external-metrics APIService belongs to another metrics adapter "
            "(KEDA, prometheus-adapter): no HPA reaches this adapter then",
            registry=self.registry,
        )
        self.forwarded = Counter(
            "stackgen_metrics_adapter_forwarded_requests",
            "Requests forwarded to the adapter of another stack's namespace, by answer code",
            ["namespace", "code"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
