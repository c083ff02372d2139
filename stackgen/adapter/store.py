"""Per-queue metric values and how fresh they are (pure: no I/O; the clock is injected).

Values are keyed by ``(metric, queue)``, so two queues never overwrite each other.  Every
value carries the time of the poll that produced it.  A query for data older than
``stale_intervals`` poll intervals fails with :class:`StaleData`: the HPA then keeps the
current replica count and shows the reason in its ``ScalingActive`` condition, instead of
scaling on a zero that only means "Buildkite did not answer".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from stackgen.adapter.selectors import Selector
from stackgen.buildkite.models import MetricsSnapshot, QueueMetrics
from stackgen.common.defaults import stack_default

#: stack.yaml's metricsAdapter.pollIntervalSeconds when nothing else is said.
POLL_INTERVAL: float = float(stack_default("metricsAdapter.pollIntervalSeconds"))

__all__ = [
    "AGE_METRIC",
    "METRICS",
    "SOURCE_COUNTS",
    "SOURCE_JOBS",
    "MetricError",
    "MetricSpec",
    "MetricStore",
    "MetricUnavailable",
    "NoData",
    "Sample",
    "StaleData",
    "UnknownMetric",
]

#: ``GET /v3/metrics``: counts per queue.
SOURCE_COUNTS = "metrics"
#: The Stacks API's scheduled-jobs list (oldest first): job ages.
SOURCE_JOBS = "scheduled-jobs"

AGE_METRIC = "buildkite_jobs_oldest_scheduled_age_seconds"


@dataclass(frozen=True)
class MetricSpec:
    """One metric the adapter serves, per queue (label ``queue``)."""

    name: str
    source: str
    description: str
    compute: Callable[[QueueMetrics], float] | None = None


def _busy_percentage(q: QueueMetrics) -> float:
    # No connected agent: none is busy. The value only ever lowers the busy-percentage
    # proposal, and the runnable-jobs metric still scales a pool with work up.
    return q.busy_percentage or 0.0


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec(
            "buildkite_jobs_scheduled",
            SOURCE_COUNTS,
            "Jobs waiting for an agent.",
            lambda q: q.scheduled,
        ),
        MetricSpec(
            "buildkite_jobs_running", SOURCE_COUNTS, "Jobs an agent runs.", lambda q: q.running
        ),
        MetricSpec(
            "buildkite_jobs_waiting",
            SOURCE_COUNTS,
            "Jobs waiting on dependencies or concurrency limits (not yet runnable).",
            lambda q: q.waiting,
        ),
        MetricSpec(
            "buildkite_jobs_runnable",
            SOURCE_COUNTS,
            "Scheduled + running jobs: the agents the queue needs now.",
            lambda q: q.runnable,
        ),
        MetricSpec(
            "buildkite_agents_idle",
            SOURCE_COUNTS,
            "Connected idle agents.",
            lambda q: q.idle_agents,
        ),
        MetricSpec(
            "buildkite_agents_busy",
            SOURCE_COUNTS,
            "Connected agents running a job.",
            lambda q: q.busy_agents,
        ),
        MetricSpec(
            "buildkite_agents_total",
            SOURCE_COUNTS,
            "Connected agents.",
            lambda q: q.total_agents,
        ),
        MetricSpec(
            "buildkite_agents_busy_percentage",
            SOURCE_COUNTS,
            "Busy agents as a percentage of connected agents (0 with no agents).",
            _busy_percentage,
        ),
        MetricSpec(
            AGE_METRIC,
            SOURCE_JOBS,
            "Seconds since the oldest scheduled job of the queue was scheduled (0: none).",
        ),
    )
}


class MetricError(Exception):
    """A metric query the adapter cannot answer with a value; maps to a Kubernetes Status."""

    status = 500
    reason = "InternalError"


class UnknownMetric(MetricError):
    """No such metric."""

    status = 404
    reason = "NotFound"


class MetricUnavailable(MetricError):
    """The metric exists but this adapter cannot serve it (configuration or token)."""

    status = 404
    reason = "NotFound"


class NoData(MetricError):
    """No successful poll has produced this value yet."""

    status = 503
    reason = "ServiceUnavailable"


class StaleData(MetricError):
    """The last successful poll is too old to trust."""

    status = 503
    reason = "ServiceUnavailable"


@dataclass(frozen=True)
class Sample:
    """One value of one metric for one queue, and when it was polled."""

    queue: str
    value: float
    at: float


@dataclass
class _SourceState:
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None


class MetricStore:
    """Thread-safe per-queue values: the poller writes, the HTTP handlers read."""

    def __init__(
        self,
        queues: Iterable[str] = (),
        *,
        interval: float = POLL_INTERVAL,
        stale_intervals: int = 3,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Create an empty store.

        Args:
            queues: the queues the adapter is configured for (``--queues``); they are
                always answered, even before Buildkite lists them.
            interval: the poll interval in seconds (updated by :meth:`set_interval`).
            stale_intervals: values older than this many intervals are stale.
            clock: returns the current Unix time.

        """
        if stale_intervals < 1:
            raise ValueError("stale_intervals must be at least 1")
        self.configured = tuple(dict.fromkeys(queues))
        self.stale_intervals = stale_intervals
        self._interval = float(interval)
        self._clock = clock
        self._lock = threading.Lock()
        self._samples: dict[tuple[str, str], Sample] = {}
        self._known: set[str] = set(self.configured)
        self._sources = {SOURCE_COUNTS: _SourceState(), SOURCE_JOBS: _SourceState()}
        self._unavailable: dict[str, str] = {}

    # ---------------------------------------------------------------- writers

    def set_interval(self, seconds: float) -> None:
        """The poller's effective interval (its own, or longer if Buildkite asks)."""
        with self._lock:
            self._interval = max(0.001, float(seconds))

    @property
    def stale_after(self) -> float:
        """Seconds after which a value no longer counts."""
        with self._lock:
            return self._interval * self.stale_intervals

    def record_snapshot(self, snapshot: MetricsSnapshot, *, at: float | None = None) -> None:
        """Store every queue's counts from one ``GET /metrics`` answer (polled at ``at``)."""
        at = snapshot.fetched_at if at is None else at
        with self._lock:
            self._known.update(snapshot.queues)
            # A known queue Buildkite no longer lists has no jobs and no agents: zeros.
            for queue in self._known:
                counts = snapshot.queue(queue)
                for spec in METRICS.values():
                    if spec.compute is not None:
                        value = float(spec.compute(counts))
                        self._samples[(spec.name, queue)] = Sample(queue, value, at)
            state = self._sources[SOURCE_COUNTS]
            state.last_success = at
            state.last_error = state.last_error_at = None

    def record_ages(self, ages: Mapping[str, float], *, at: float | None = None) -> None:
        """Store the oldest scheduled job's age (seconds) for the queues polled."""
        at = self._clock() if at is None else at
        with self._lock:
            for queue, age in ages.items():
                self._samples[(AGE_METRIC, queue)] = Sample(queue, max(0.0, float(age)), at)
            state = self._sources[SOURCE_JOBS]
            state.last_success = at

    def record_failure(self, source: str, message: str, *, at: float | None = None) -> None:
        """Remember why the last poll of ``source`` failed (shown in stale-data errors)."""
        with self._lock:
            state = self._sources[source]
            state.last_error = message
            state.last_error_at = self._clock() if at is None else at

    def set_unavailable(self, metric: str, reason: str | None) -> None:
        """Mark a metric as unservable (``reason``), or servable again (None)."""
        with self._lock:
            if reason is None:
                self._unavailable.pop(metric, None)
            else:
                self._unavailable[metric] = reason

    # ---------------------------------------------------------------- readers

    def query(self, metric: str, selector: Selector) -> list[Sample]:
        """Values of ``metric`` for every queue ``selector`` matches, sorted by queue.

        Raises:
            UnknownMetric: no such metric.
            MetricUnavailable: this adapter cannot serve the metric (or that queue).
            NoData: nothing polled yet.
            StaleData: the values are older than :attr:`stale_after`.

        """
        spec = METRICS.get(metric)
        if spec is None:
            raise UnknownMetric(f"no external metric {metric!r}; known: {', '.join(METRICS)}")
        now = self._clock()
        with self._lock:
            reason = self._unavailable.get(metric)
            if reason is not None:
                raise MetricUnavailable(f"{metric} is not available: {reason}")
            stale_after = self._interval * self.stale_intervals
            state = self._sources[spec.source]
            if spec.source == SOURCE_COUNTS:
                last = state.last_success
                if last is None:
                    raise NoData(self._no_data_message(spec.source, state))
                self._check_fresh(spec, state, last, now, stale_after)
                candidates = self._known | selector.named_values("queue")
                out = []
                for queue in sorted(candidates):
                    if selector.matches({"queue": queue}):
                        # Never seen: Buildkite lists no jobs and no agents for it.
                        out.append(self._samples.get((metric, queue), Sample(queue, 0.0, last)))
                return out
            out = []
            for queue in sorted(set(self.configured) | selector.named_values("queue")):
                if not selector.matches({"queue": queue}):
                    continue
                sample = self._samples.get((metric, queue))
                if sample is None:
                    if queue not in self.configured:
                        raise MetricUnavailable(
                            f"{metric}: queue {queue!r} is not one of the adapter's queues "
                            "(--queues); job ages are polled only for those"
                        )
                    raise NoData(self._no_data_message(spec.source, state))
                self._check_fresh(spec, state, sample.at, now, stale_after)
                out.append(sample)
            return out

    def _no_data_message(self, source: str, state: _SourceState) -> str:
        message = f"no successful poll of Buildkite's {source} yet"
        if state.last_error:
            message += f"; last error: {state.last_error}"
        return message

    def _check_fresh(
        self, spec: MetricSpec, state: _SourceState, at: float, now: float, stale_after: float
    ) -> None:
        age = now - at
        if age <= stale_after:
            return
        message = (
            f"{spec.name}: data from Buildkite's {spec.source} is stale: last successful "
            f"poll {age:.1f}s ago (limit {stale_after:g}s = {self.stale_intervals} poll "
            "intervals)"
        )
        if state.last_error:
            message += f"; last error: {state.last_error}"
        raise StaleData(message)

    def status(self) -> dict[str, dict[str, float | str | None]]:
        """Per source: last success, last error (for logs and ``/readyz`` details)."""
        with self._lock:
            return {
                name: {
                    "last_success": s.last_success,
                    "last_error": s.last_error,
                    "last_error_at": s.last_error_at,
                }
                for name, s in self._sources.items()
            }

    def samples(self) -> dict[tuple[str, str], Sample]:
        """Every current value by (metric, queue), fresh or not (for the adapter's /metrics)."""
        with self._lock:
            return dict(self._samples)

    @property
    def known_queues(self) -> list[str]:
        """Configured queues and every queue Buildkite listed so far."""
        with self._lock:
            return sorted(self._known)
