"""Demand: what Buildkite says each due queue needs, and what we already run for it.

``dispatch`` queues: one metrics call for all of them (scheduled and running counts).
``exact`` queues: the Stacks API's list of scheduled jobs, one call per queue.  Supply:
our Jobs, from the informer's cache when it is synced, else one list.  A failed call
fails only the queues it was for; they are retried after a backoff (:mod:`.schedule`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stackgen.buildkite import AgentAPI, BuildkiteError, NotFound
from stackgen.buildkite.models import MetricsSnapshot
from stackgen.common.models import DispatchedQueue
from stackgen.dispatcher.informer import JobInformer
from stackgen.dispatcher.jobs import list_views
from stackgen.dispatcher.kube import Kube
from stackgen.dispatcher.metrics import Metrics
from stackgen.dispatcher.planner import Demand, JobView, WaitingJob
from stackgen.dispatcher.schedule import Schedule
from stackgen.dispatcher.stacks import Stacks


class DemandReader:
    """Reads demand (Buildkite) and supply (our Jobs) for a cycle."""

    def __init__(
        self,
        api: AgentAPI,
        kube: Kube,
        stacks: Stacks,
        schedule: Schedule,
        metrics: Metrics,
        clock: Callable[[], float],
        informer: JobInformer | None = None,
    ) -> None:
        self.api = api
        self.kube = kube
        self.stacks = stacks
        self.schedule = schedule
        self.metrics = metrics
        self.clock = clock
        self.informer = informer

    def demand(
        self, due: list[DispatchedQueue], log: Any, started: float
    ) -> tuple[dict[str, Demand], dict[str, str]]:
        """Each due queue's demand, and the queues whose call failed (with why)."""
        demands: dict[str, Demand] = {}
        failed: dict[str, str] = {}
        dispatch = [q for q in due if q.mode == "dispatch"]
        if dispatch:
            self._counts(dispatch, log, started, demands, failed)
        for queue in due:
            if queue.mode == "exact":
                self._scheduled_jobs(queue, log, started, demands, failed)
        return demands, failed

    def _counts(
        self,
        queues: list[DispatchedQueue],
        log: Any,
        started: float,
        demands: dict[str, Demand],
        failed: dict[str, str],
    ) -> None:
        try:
            snapshot: MetricsSnapshot = self.api.metrics()
        except BuildkiteError as exc:
            self.metrics.buildkite_error(exc, log, "metrics")
            for queue in queues:
                failed[queue.name] = str(exc)
                self.schedule.failed(queue.name, self.clock(), exc.retry_after)
            return
        for queue in queues:
            counts = snapshot.queue(queue.name)
            demands[queue.name] = Demand(scheduled=counts.scheduled, running=counts.running)
            self.metrics.scheduled.labels(queue.name).set(counts.scheduled)
            self.metrics.running.labels(queue.name).set(counts.running)
            # From the cycle's start, not from when this queue's call returned: queues
            # polled together stay together, instead of drifting into one cycle each.
            self.schedule.polled(queue.name, started, snapshot.poll_after)

    def _scheduled_jobs(
        self,
        queue: DispatchedQueue,
        log: Any,
        started: float,
        demands: dict[str, Demand],
        failed: dict[str, str],
    ) -> None:
        try:
            key, queue_key = self.stacks.key(queue)
            jobs = self.api.all_scheduled_jobs(key, queue_key)
        except BuildkiteError as exc:
            if isinstance(exc, NotFound):
                self.stacks.forget(queue.name)  # deregistered elsewhere: register again
            self.metrics.buildkite_error(exc, log, "scheduled-jobs", queue=queue.name)
            failed[queue.name] = str(exc)
            self.schedule.failed(queue.name, self.clock(), exc.retry_after)
            return
        demands[queue.name] = Demand(
            scheduled=len(jobs),
            jobs=tuple(WaitingJob(j.uuid, j.scheduled_at, j.priority) for j in jobs),
        )
        self.metrics.scheduled.labels(queue.name).set(len(jobs))
        self.schedule.polled(queue.name, started)

    def supply(self, queues: dict[str, DispatchedQueue]) -> dict[str, list[JobView]]:
        """Our Jobs as the planner sees them, grouped by queue (each planned from its own)."""
        cached = None
        if self.informer is not None and self.informer.synced:
            cached = self.informer.snapshot()
        self.metrics.job_reads.labels("list" if cached is None else "cache").inc()
        views: dict[str, list[JobView]] = {}
        for view in list_views(self.kube, queues, self.clock(), jobs=cached):
            views.setdefault(view.queue, []).append(view)
        return views
