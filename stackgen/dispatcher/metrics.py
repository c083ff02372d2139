"""Prometheus metrics of the dispatcher (served on /metrics)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stackgen.buildkite import BuildkiteError
from stackgen.dispatcher.kube import KubeError

_LATENCY_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 300, 600)


class Metrics:
    """Every metric of one dispatcher, in its own registry (tests run several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.scheduled = Gauge(
            "stackgen_queue_scheduled_jobs",
            "Scheduled Buildkite jobs per queue.",
            ["queue"],
            registry=r,
        )
        self.running = Gauge(
            "stackgen_queue_running_jobs",
            "Running Buildkite jobs per queue.",
            ["queue"],
            registry=r,
        )
        self.supply = Gauge(
            "stackgen_queue_agent_supply",
            "Agents dispatched and not yet done (pending, starting, idle or busy).",
            ["queue"],
            registry=r,
        )
        self.unmet = Gauge(
            "stackgen_queue_unmet_demand",
            "Runnable jobs minus agent supply.",
            ["queue"],
            registry=r,
        )
        self.cooldown = Gauge(
            "stackgen_queue_cooldown",
            "1 while the queue waits for its last dispatch.",
            ["queue"],
            registry=r,
        )
        self.agents_dispatched = Counter(
            "stackgen_agents_dispatched_total", "Agents dispatched.", ["queue", "mode"], registry=r
        )
        self.jobs_created = Counter(
            "stackgen_jobs_created_total", "Kubernetes Jobs created.", ["queue"], registry=r
        )
        self.jobs_deleted = Counter(
            "stackgen_jobs_deleted_total",
            "Kubernetes Jobs deleted because their pods never started.",
            ["queue"],
            registry=r,
        )
        self.jobs_failed = Counter(
            "stackgen_buildkite_jobs_failed_total",
            "Buildkite jobs finished as failed because no pod could start for them.",
            ["queue"],
            registry=r,
        )
        self.job_reads = Counter(
            "stackgen_job_reads_total",
            "Reads of our Kubernetes Jobs by a cycle: from the watch cache or a full list.",
            ["source"],
            registry=r,
        )
        self.cycle_duration = Histogram(
            "stackgen_cycle_duration_seconds", "Duration of a dispatch cycle.", registry=r
        )
        self.cycles = Counter(
            "stackgen_cycles_total", "Dispatch cycles.", ["trigger", "result"], registry=r
        )
        self.api_errors = Counter(
            "stackgen_api_errors_total", "Failed API calls.", ["api", "kind"], registry=r
        )
        self.latency = Histogram(
            "stackgen_dispatch_latency_seconds",
            "Time from a Buildkite job being scheduled to its agent's Kubernetes Job created.",
            ["queue"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.leader = Gauge("stackgen_leader", "1 while this replica holds the lease.", registry=r)
        self.webhooks = Counter(
            "stackgen_webhooks_total", "Webhook deliveries by result.", ["result"], registry=r
        )
        self.mirrors_pruned = Counter(
            "stackgen_git_mirrors_pruned_total", "Unused git mirror volumes deleted.", registry=r
        )

    def buildkite_error(self, exc: BuildkiteError, log: Any, call: str, **ctx: Any) -> None:
        """Count a failed Buildkite call and log it (never with the token)."""
        self.api_errors.labels("buildkite", type(exc).__name__).inc()
        log.warning(
            "buildkite call failed",
            call=call,
            error=str(exc),
            status=exc.status,
            retry_after=exc.retry_after,
            **ctx,
        )

    def kube_error(self, exc: KubeError, log: Any, message: str) -> None:
        """Count a failed Kubernetes call and log it."""
        self.api_errors.labels("kubernetes", str(exc.status or "transport")).inc()
        log.warning(message, error=str(exc), status=exc.status)
