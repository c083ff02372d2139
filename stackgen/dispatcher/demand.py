"""Demand: what Buildkite says each due queue needs, and what we already run for it.

``dispatch`` queues: one metrics call for all of them (scheduled and running counts).
``exact`` queues: the Stacks API's list of scheduled jobs, one call per queue.  Supply:
our Jobs, from the informer's cache when it is synced, else one list.  A failed call
fails only the queues it was for; they are retried after a backoff (:mod:`.schedule`).
A retry before the queue's next poll plans from the demand already read: a failing
Kubernetes never makes the dispatcher call Buildkite faster than its poll period.

Exact queues also ask, once per poll period, what became of the Buildkite jobs whose
Jobs have not started (``get-states``): a canceled job's Job is deleted.
"""

from __future__ import annotations

import threading
from typing import Any

from stackgen.buildkite import BuildkiteError, NotFound
from stackgen.common.models import DispatchedQueue
from stackgen.dispatcher.clients import Clients
from stackgen.dispatcher.jobs import list_views
from stackgen.dispatcher.planner import Demand, JobView, WaitingJob, unstarted_exact_jobs
from stackgen.dispatcher.pods import our_pods, pod_views
from stackgen.dispatcher.schedule import Schedule

#: Job states asked for at most this many jobs per call.
STATES_BATCH = 500

#: Each queue's demand, or why it could not be read.
Read = dict[str, Demand | BuildkiteError]


class DemandReader:
    """Reads demand (Buildkite) and supply (our Jobs) for a cycle."""

    def __init__(self, clients: Clients, schedule: Schedule) -> None:
        self.clients = clients
        self.schedule = schedule
        #: The last demand read per queue (re-used by retries before the next poll).
        self.last: dict[str, Demand] = {}
        self._states_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def demand(
        self, due: list[DispatchedQueue], log: Any, started: float, *, fresh: bool = False
    ) -> tuple[dict[str, Demand], dict[str, str]]:
        """Each due queue's demand, and the queues whose call failed (with why).

        ``fresh``: read it now even for a retry (a webhook announced new jobs).
        """
        read: Read = {}
        for queue in due:
            cached = self.last.get(queue.name)
            if cached and not fresh and self.schedule.reuse_demand(queue.name, started):
                read[queue.name] = cached
        dispatch = [q for q in due if q.mode == "dispatch" and q.name not in read]
        if dispatch:
            read.update(self._counts(dispatch, log, started))
        for queue in due:
            if queue.mode == "exact" and queue.name not in read:
                read[queue.name] = self._scheduled_jobs(queue, log, started)
        demands = {n: r for n, r in read.items() if isinstance(r, Demand)}
        failed = {n: str(r) for n, r in read.items() if isinstance(r, BuildkiteError)}
        with self._lock:
            self.last.update(demands)
        return demands, failed

    def _failed(self, queue: str, exc: BuildkiteError) -> BuildkiteError:
        with self._lock:
            self.last.pop(queue, None)  # its retry reads the demand again
        self.schedule.failed(queue, self.clients.clock(), exc.retry_after)
        return exc

    def _counts(self, queues: list[DispatchedQueue], log: Any, started: float) -> Read:
        """One metrics call for every dispatch queue."""
        metrics = self.clients.metrics
        try:
            snapshot = self.clients.api.metrics()
        except BuildkiteError as exc:
            metrics.buildkite_error(exc, log, "metrics")
            return {q.name: self._failed(q.name, exc) for q in queues}
        read: Read = {}
        for queue in queues:
            counts = snapshot.queue(queue.name)
            read[queue.name] = Demand(scheduled=counts.scheduled, running=counts.running)
            metrics.scheduled.labels(queue.name).set(counts.scheduled)
            metrics.running.labels(queue.name).set(counts.running)
            # From the cycle's start, not from when this queue's call returned: queues
            # polled together stay together, instead of drifting into one cycle each.
            self.schedule.polled(queue.name, started, snapshot.poll_after)
        return read

    def _scheduled_jobs(
        self, queue: DispatchedQueue, log: Any, started: float
    ) -> Demand | BuildkiteError:
        """An exact queue's scheduled jobs, from its Stacks API stack."""
        try:
            key, queue_key = self.clients.stacks.key(queue)
            jobs = self.clients.api.all_scheduled_jobs(key, queue_key)
        except BuildkiteError as exc:
            if isinstance(exc, NotFound):
                self.clients.stacks.forget(queue.name)  # deregistered elsewhere: register again
            self.clients.metrics.buildkite_error(exc, log, "scheduled-jobs", queue=queue.name)
            return self._failed(queue.name, exc)
        self.clients.metrics.scheduled.labels(queue.name).set(len(jobs))
        self.schedule.polled(queue.name, started)
        return Demand(
            scheduled=len(jobs),
            jobs=tuple(WaitingJob(j.uuid, j.scheduled_at, j.priority) for j in jobs),
        )

    def states(
        self, queue: DispatchedQueue, views: list[JobView], log: Any, now: float
    ) -> dict[str, str]:
        """Buildkite's state of each job whose Job has not started (once per poll period).

        A failed call is counted and logged, never fatal: the next period asks again.
        """
        uuids = sorted({j.buildkite_job for j in unstarted_exact_jobs(views) if j.buildkite_job})
        with self._lock:
            if (
                not uuids
                or now - self._states_at.get(queue.name, -1e18)
                < (self.schedule.poll_period[queue.name])
            ):
                return {}
            self._states_at[queue.name] = now
        states: dict[str, str] = {}
        try:
            key, _ = self.clients.stacks.key(queue)
            for start in range(0, len(uuids), STATES_BATCH):
                states.update(self.clients.api.job_states(key, uuids[start : start + STATES_BATCH]))
        except BuildkiteError as exc:
            self.clients.metrics.buildkite_error(exc, log, "get-states", queue=queue.name)
        return states

    def supply(self, queues: dict[str, DispatchedQueue]) -> dict[str, list[JobView]]:
        """Our Jobs as the planner sees them, grouped by queue (each planned from its own)."""
        views: dict[str, list[JobView]] = {}
        now = self.clients.clock()
        by_job = {n: q for n, q in queues.items() if q.dispatch.workload == "job"}
        by_pod = {n: q for n, q in queues.items() if q.dispatch.workload == "pod"}
        found: list[JobView] = []
        if by_job:
            informer = self.clients.informer
            cached = informer.snapshot() if informer is not None and informer.synced else None
            self.clients.metrics.job_reads.labels("list" if cached is None else "cache").inc()
            found += list_views(self.clients.kube, by_job, now, jobs=cached)
        if by_pod:
            pod_informer = self.clients.pod_informer
            synced = pod_informer is not None and pod_informer.synced
            self.clients.metrics.job_reads.labels("cache" if synced else "list").inc()
            found += pod_views(our_pods(self.clients), by_pod)
        for view in found:
            views.setdefault(view.queue, []).append(view)
        return views
