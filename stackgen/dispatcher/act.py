"""Act: carry out a plan in Kubernetes and on Buildkite.

Create the agent Jobs (made from the queue's CronJob template, read fresh so an applied
change takes effect at once); in exact mode reserve the jobs, give each pod a
job-acquisition token in its own Secret and note the Job on the build's timeline; delete
Jobs whose pods never start; finish on Buildkite the jobs given up on; prune unused git
mirror volumes.  A failed call raises: the cycle driver reports it and retries the queue.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from stackgen.buildkite import BuildkiteError
from stackgen.buildkite.models import AcquisitionToken
from stackgen.common.models import DispatchedQueue, GitMirror
from stackgen.dispatcher import mirrors
from stackgen.dispatcher.clients import Clients
from stackgen.dispatcher.jobs import acquisition_secret, build_job
from stackgen.dispatcher.kube import JSON, KubeError
from stackgen.dispatcher.planner import (
    CreateJob,
    DeleteJob,
    Demand,
    FailJob,
    Plan,
    QueueMemory,
    WarnQueue,
)
from stackgen.dispatcher.steps import StepRefused, step_job_maker

#: Exact-mode Jobs (and their token Secrets) created at once: a fan-out of hundreds of
#: jobs then takes a fraction of a second, not one round trip per object in turn.
CREATE_CONCURRENCY = 16


def iso(ts: float) -> str:
    """A timestamp as Buildkite's API writes one (milliseconds, UTC)."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class QueueReport:
    """What one cycle did for one queue."""

    queue: str
    plan: Plan | None = None
    error: str | None = None
    created: list[str] = field(default_factory=list)


class Actor:
    """Carries out plans (one per queue and cycle)."""

    def __init__(self, clients: Clients, mirrors: tuple[GitMirror, ...]) -> None:
        self.clients = clients
        self.api = clients.api
        self.kube = clients.kube
        self.stacks = clients.stacks
        self.metrics = clients.metrics
        self.clock = clients.clock
        self.informer = clients.informer
        self.mirrors = mirrors

    def act(
        self,
        queue: DispatchedQueue,
        plan: Plan,
        demand: Demand,
        memory: QueueMemory,
        report: QueueReport,
        log: Any,
    ) -> None:
        """Carry out ``plan``: deletes, give-ups and warnings first, then the creates."""
        for action in plan.actions:
            if isinstance(action, DeleteJob):
                self._delete(queue, action, log)
            elif isinstance(action, FailJob):
                self._fail(queue, action, log)
            elif isinstance(action, WarnQueue):
                log.error("agents for this queue do not start", reason=action.detail)
        creates = [a for a in plan.actions if isinstance(a, CreateJob)]
        if not creates:
            return
        make = self._job_maker(queue, log)
        if queue.mode == "exact":
            self._create_exact(queue, creates, make, demand, memory, report, log)
            return
        for action in creates:
            self._create(make(action), report)
            self.metrics.agents_dispatched.labels(queue.name, queue.mode).inc(action.parallelism)

    def _job_maker(self, queue: DispatchedQueue, log: Any) -> Callable[[CreateJob], JSON]:
        """Jobs from the queue's template, read now: an applied change takes effect at once.

        In exact mode each Job is then made as its step asks (:mod:`.steps`).
        """
        cronjob = self.kube.get_cronjob(queue.template)
        mirror = next((m for m in self.mirrors if m.name == queue.git_mirror), None)
        claim = mirrors.newest_ready_claim(self.kube, mirror.name) if mirror else None
        make = functools.partial(
            build_job,
            cronjob,
            queue=queue,
            mirror_claim=claim,
            mirror_path=mirror.mount_path if mirror else None,
        )
        return step_job_maker(self.clients, queue, make, log) if queue.mode == "exact" else make

    def _delete(self, queue: DispatchedQueue, action: DeleteJob, log: Any) -> None:
        log.warning("deleting Job whose pods never started", job=action.name, reason=action.reason)
        try:
            self.kube.delete_job(action.name)
        except KubeError as exc:
            if not exc.not_found:
                raise
        if self.informer is not None:
            self.informer.remove(action.name)
        self.metrics.jobs_deleted.labels(queue.name).inc()

    def _create(self, body: JSON, report: QueueReport) -> JSON:
        try:
            created = self.kube.create_job(body)
        except KubeError as exc:
            if not exc.conflict:
                raise
            created = self.kube.get_job(body["metadata"]["name"])  # a retried create landed
        if self.informer is not None:
            self.informer.upsert(created)
        report.created.append(body["metadata"]["name"])
        self.metrics.jobs_created.labels(report.queue).inc()
        return created

    def _create_exact(
        self,
        queue: DispatchedQueue,
        creates: list[CreateJob],
        make: Callable[[CreateJob], JSON],
        demand: Demand,
        memory: QueueMemory,
        report: QueueReport,
        log: Any,
    ) -> None:
        """Reserve the jobs, get their tokens, create Jobs and Secrets concurrently."""
        key, _ = self.stacks.key(queue)
        tokens = self._reserve_and_issue(queue, key, creates, memory, log)
        started = [(a, tokens[a.buildkite_job]) for a in creates if a.buildkite_job in tokens]
        done, first_error = self._create_all(started, make, report)
        scheduled_at = {w.uuid: w.scheduled_at for w in demand.jobs}
        notes: list[tuple[str, str, str]] = []
        for action in done:
            self.metrics.agents_dispatched.labels(queue.name, queue.mode).inc()
            at = scheduled_at.get(action.buildkite_job or "")
            if at:
                self.metrics.latency.labels(queue.name).observe(max(0.0, self.clock() - at))
            note = f"stackgen: Kubernetes Job {action.name} created"
            notes.append((action.buildkite_job or "", note, iso(self.clock())))
        if notes:
            try:
                self.api.notify(key, notes)
            except BuildkiteError as exc:  # a timeline note is not worth failing the cycle
                self.metrics.buildkite_error(exc, log, "notifications")
        if first_error is not None:
            raise first_error  # the Jobs that were created stay; the rest are retried

    def _reserve_and_issue(
        self,
        queue: DispatchedQueue,
        key: str,
        creates: list[CreateJob],
        memory: QueueMemory,
        log: Any,
    ) -> dict[str, AcquisitionToken]:
        """Reserve the jobs, then issue each a job-acquisition token; by job UUID."""
        timeout = queue.dispatch.pod_start_timeout_seconds
        wanted = [a.buildkite_job for a in creates if a.buildkite_job]
        # Reservation: another replica or a restarted us will not list these jobs again
        # until it expires; it outlives the pod start timeout.
        reserved, not_reserved = self.api.batch_reserve(
            key, wanted, expiry_seconds=int(min(3600, timeout + 120))
        )
        for uuid in not_reserved:
            memory.just_dispatched.pop(uuid, None)
        if not_reserved:
            log.info("jobs reserved elsewhere, skipped", jobs=not_reserved)
        if not reserved:
            return {}
        tokens, not_issued = self.api.acquisition_tokens(
            key, reserved, lifetime_seconds=int(timeout + 600)
        )
        for uuid in not_issued:
            memory.just_dispatched.pop(uuid, None)
        if not_issued:
            log.warning("no job-acquisition token issued, not starting", jobs=not_issued)
        return {t.job_uuid: t for t in tokens}

    def _create_all(
        self,
        started: list[tuple[CreateJob, AcquisitionToken]],
        make: Callable[[CreateJob], JSON],
        report: QueueReport,
    ) -> tuple[list[CreateJob], BaseException | None]:
        """Each Job and its token Secret, CREATE_CONCURRENCY at a time."""

        def start(action: CreateJob, token: AcquisitionToken) -> CreateJob | None:
            try:
                body = make(action)
            except StepRefused:
                return None  # failed on Buildkite with the reason: nothing to create
            created = self._create(body, report)
            body["metadata"]["uid"] = (created.get("metadata") or {}).get("uid", "")
            try:
                self.kube.create_secret(acquisition_secret(body, token.token))
            except KubeError as exc:
                if not exc.conflict:
                    raise
            return action

        done: list[CreateJob] = []
        first_error: BaseException | None = None
        with ThreadPoolExecutor(max_workers=min(CREATE_CONCURRENCY, max(1, len(started)))) as pool:
            futures = [pool.submit(start, action, token) for action, token in started]
            for future in futures:
                try:
                    if (created := future.result()) is not None:
                        done.append(created)
                except (KubeError, BuildkiteError) as exc:
                    first_error = first_error or exc
        return done, first_error

    def _fail(self, queue: DispatchedQueue, action: FailJob, log: Any) -> None:
        key, _ = self.stacks.key(queue)
        log.error(
            "giving up on Buildkite job", buildkite_job=action.buildkite_job, reason=action.detail
        )
        try:
            self.api.notify(key, [(action.buildkite_job, action.detail[:256], iso(self.clock()))])
        except BuildkiteError as exc:
            self.metrics.buildkite_error(exc, log, "notifications")
        self.api.finish_job(key, action.buildkite_job, exit_status=-1, detail=action.detail)
        self.metrics.jobs_failed.labels(queue.name).inc()

    def prune_mirrors(self, log: Any) -> None:
        """Delete git mirror volumes no pod uses (beyond the newest ``keep`` ready ones)."""
        try:
            for mirror in self.mirrors:
                deleted = mirrors.prune(self.kube, mirror.name, keep=mirror.keep)
                if deleted:
                    self.metrics.mirrors_pruned.inc(len(deleted))
                    log.info(
                        "pruned unused git mirror volumes", mirror=mirror.name, volumes=deleted
                    )
        except KubeError as exc:
            self.metrics.kube_error(exc, log, "git mirror prune failed")
