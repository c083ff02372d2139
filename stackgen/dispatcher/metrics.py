"""Prometheus metrics of the dispatcher (served on /metrics).

Every labelled series whose labels the dispatcher knows up front (its queues, its APIs
and their error kinds, its cycle triggers, its webhook results) exists from the start at
0, so a rate or an alert works before the first increment.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stackgen.buildkite import (
    AuthError,
    BadResponse,
    BuildkiteError,
    NotFound,
    RateLimited,
    Rejected,
    Unavailable,
)
from stackgen.common.models import DispatchedQueue
from stackgen.dispatcher.kube import KUBE_ERROR_KINDS, KubeError

_LATENCY_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 300, 600)
BUILDKITE_ERROR_KINDS = tuple(
    c.__name__ for c in (AuthError, NotFound, Rejected, RateLimited, Unavailable, BadResponse)
)
#: What starts a cycle: its poll (or a recheck, or a retry), a webhook, gaining leadership.
TRIGGERS = ("poll", "webhook", "leadership")
WEBHOOK_RESULTS = (
    "accepted",
    "rejected",
    "replayed",
    "malformed",
    "ignored",
    "disabled",
    "forwarded",
    "forward-failed",
    "no-leader",
)
#: Why the dispatcher deleted a Job.
DELETE_REASONS = ("not-started", "canceled")
#: How the API server refused a create (refusals.refusal).
REFUSALS = ("transient", "final")


class Metrics:
    """Every metric of one dispatcher, in its own registry (tests run several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._queue_gauges(self.registry)
        self._queue_counters(self.registry)
        self._process_metrics(self.registry)

    def _queue_gauges(self, r: CollectorRegistry) -> None:
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
        self.template_missing = Gauge(
            "stackgen_queue_template_missing",
            "1 while the queue's template CronJob is missing (nothing is dispatched).",
            ["queue"],
            registry=r,
        )
        self.reserved = Gauge(
            "stackgen_queue_reserved_jobs",
            "Buildkite jobs this dispatcher reserved and has not yet made a Job for.",
            ["queue"],
            registry=r,
        )

    def _queue_counters(self, r: CollectorRegistry) -> None:
        self.agents_dispatched = Counter(
            "stackgen_agents_dispatched_total", "Agents dispatched.", ["queue", "mode"], registry=r
        )
        self.jobs_created = Counter(
            "stackgen_jobs_created_total", "Kubernetes Jobs created.", ["queue"], registry=r
        )
        self.pods_created = Counter(
            "stackgen_agent_pods_created_total",
            "Agent pods the dispatcher created itself (dispatch.workload: pod).",
            ["queue"],
            registry=r,
        )
        self.pods_collected = Counter(
            "stackgen_agent_pods_collected_total",
            "Agent pods (workload: pod) deleted by the dispatcher: finished longer ago than "
            "their ttlSecondsAfterFinished (ttl), or never running within their "
            "activeDeadlineSeconds (deadline).",
            ["reason"],
            registry=r,
        )
        self.jobs_deleted = Counter(
            "stackgen_jobs_deleted_total",
            "Kubernetes Jobs deleted: their pods never started, or their Buildkite job was "
            "canceled before they did.",
            ["queue", "reason"],
            registry=r,
        )
        self.not_started = Counter(
            "stackgen_pods_not_started_total",
            "Jobs whose pods did not start in time, by the Kubernetes reason (FailedCreate, "
            "Unschedulable, ErrImagePull, ...).",
            ["queue", "reason"],
            registry=r,
        )
        self.creates_refused = Counter(
            "stackgen_creates_refused_total",
            "Creates of an agent pod or Job the API server refused (403/422: a ResourceQuota, "
            "an admission webhook, PodSecurity, an invalid pod): transient ones are retried, "
            "final ones fail their Buildkite job at once (exact mode).",
            ["queue", "refusal"],
            registry=r,
        )
        self.jobs_failed = Counter(
            "stackgen_buildkite_jobs_failed_total",
            "Buildkite jobs finished as failed because no pod could start for them.",
            ["queue"],
            registry=r,
        )
        self.latency = Histogram(
            "stackgen_dispatch_latency_seconds",
            "Time from a Buildkite job being scheduled to its agent's Kubernetes Job created.",
            ["queue"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def _process_metrics(self, r: CollectorRegistry) -> None:
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
        self.leader = Gauge("stackgen_leader", "1 while this replica holds the lease.", registry=r)
        self.webhooks = Counter(
            "stackgen_webhooks_total", "Webhook deliveries by result.", ["result"], registry=r
        )
        self.mirrors_pruned = Counter(
            "stackgen_git_mirrors_pruned_total", "Unused git mirror volumes deleted.", registry=r
        )

    def initialise(self, queues: Iterable[DispatchedQueue]) -> None:
        """Create every series the dispatcher knows the labels of, at 0."""
        for queue in queues:
            for gauge in (
                self.scheduled,
                self.running,
                self.supply,
                self.unmet,
                self.cooldown,
                self.template_missing,
                self.reserved,
            ):
                gauge.labels(queue.name)
            self.agents_dispatched.labels(queue.name, queue.mode)
            for counter in (self.jobs_created, self.jobs_failed, self.pods_created):
                counter.labels(queue.name)
            for reason in DELETE_REASONS:
                self.jobs_deleted.labels(queue.name, reason)
            for kind in REFUSALS:
                self.creates_refused.labels(queue.name, kind)
            if queue.mode == "exact":
                self.latency.labels(queue.name)
        for kind in BUILDKITE_ERROR_KINDS:
            self.api_errors.labels("buildkite", kind)
        for kind in KUBE_ERROR_KINDS:
            self.api_errors.labels("kubernetes", kind)
        for trigger in TRIGGERS:
            for result in ("ok", "error"):
                self.cycles.labels(trigger, result)
        for result in WEBHOOK_RESULTS:
            self.webhooks.labels(result)
        for source in ("cache", "list"):
            self.job_reads.labels(source)
        for reason in ("ttl", "deadline"):
            self.pods_collected.labels(reason)

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

    def kube_error(self, exc: KubeError, log: Any, message: str, *, quiet: bool = False) -> None:
        """Count a failed Kubernetes call and log it (``quiet``: counted, not logged)."""
        self.api_errors.labels("kubernetes", exc.kind).inc()
        if not quiet:
            log.warning(message, error=str(exc), status=exc.status, retry_after=exc.retry_after)
