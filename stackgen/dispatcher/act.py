"""Act: carry out a plan in Kubernetes and on Buildkite.

Create the agent Jobs (made from the queue's CronJob template, read fresh so an applied
change takes effect at once); in exact mode reserve the jobs, give each pod a
job-acquisition token in its own Secret and note the Job on the build's timeline; delete
Jobs whose pods never start (or whose Buildkite job was canceled first); finish on
Buildkite the jobs given up on; prune unused git mirror volumes.  A failed call raises:
the cycle driver reports it and retries the queue.

Exact mode reserves in two steps.  A short reservation (:data:`RESERVE_SECONDS`) covers
reserve → token → create: if the process dies in between (kill -9, a lost leader), a
successor sees the jobs again within seconds, not after the pod start timeout.  Once a
job's Job exists, its reservation is extended to cover the pod start (the Job is the
record from then on).  Jobs reserved but not started (a call failed in between) are
remembered and retried from memory, since Buildkite does not list them while reserved.

A create whose answer is lost (timeout, broken connection, 5xx) may still have landed:
the Job is looked up, and if it exists its token Secret is created all the same.  When
even the lookup fails, the Job's Secret waits in :attr:`Actor.pending` until a later
cycle finds out (meanwhile its job counts as dispatched, so no second Job is made).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stackgen.buildkite import BuildkiteError
from stackgen.buildkite.models import AcquisitionToken
from stackgen.common.models import DispatchedQueue, GitMirror
from stackgen.dispatcher import mirrors
from stackgen.dispatcher.clients import Clients
from stackgen.dispatcher.jobs import acquisition_secret, build_job
from stackgen.dispatcher.kube import JSON, KubeError
from stackgen.dispatcher.lanes import Raised, concurrently
from stackgen.dispatcher.planner import (
    CreateJob,
    DeleteJob,
    Demand,
    FailJob,
    NoteJob,
    Plan,
    QueueMemory,
    Reservation,
    WaitingJob,
    WarnQueue,
)
from stackgen.dispatcher.pods import exact_pod_name, group_of, job_to_pods, our_pods
from stackgen.dispatcher.refusals import decide, dispatch_refused, refusal_window
from stackgen.dispatcher.steps import StepRefused, step_job_maker

#: Exact-mode Jobs (and their token Secrets) created at once: a fan-out of hundreds of
#: jobs then takes a fraction of a second, not one round trip per object in turn.
CREATE_CONCURRENCY = 16
#: How long a reservation lasts until its Job exists (then: the pod start timeout + 120 s).
RESERVE_SECONDS = 30


def iso(ts: float) -> str:
    """A timestamp as Buildkite's API writes one (milliseconds, UTC)."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class TemplateMissing(KubeError):
    """The queue's template CronJob does not exist (removed, renamed, not applied yet)."""


class Unconfirmed(KubeError):
    """A create failed without an answer, and looking the object up failed too."""


@dataclass
class QueueReport:
    """What one cycle did for one queue."""

    queue: str
    plan: Plan | None = None
    error: str | None = None
    created: list[str] = field(default_factory=list)
    #: The plan's creates carried out (their names: a Job's, or a pod group's).
    done: list[str] = field(default_factory=list)


@dataclass
class PendingSecret:
    """A Job whose create had no answer: its token Secret, once the Job turns up."""

    queue: str
    buildkite_job: str
    job: JSON
    token: AcquisitionToken


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
        #: Job name -> the token Secret it still needs (see the module docstring).
        self.pending: dict[str, PendingSecret] = {}

    def act(
        self,
        queue: DispatchedQueue,
        plan: Plan,
        demand: Demand,
        memory: QueueMemory,
        report: QueueReport,
        log: Any,
    ) -> None:
        """Carry out ``plan``: deletes, give-ups, notes and warnings first, then creates."""
        notes: list[NoteJob] = []
        for action in plan.actions:
            if isinstance(action, DeleteJob):
                self.delete(queue, action, log)
            elif isinstance(action, FailJob):
                self._fail(queue, action, log)
            elif isinstance(action, NoteJob):
                notes.append(action)
            elif isinstance(action, WarnQueue):
                log.error("agents for this queue do not start", reason=action.detail)
        if notes:
            key, _ = self.stacks.key(queue)
            self._notify(key, [(n.buildkite_job, n.detail) for n in notes], log)
        creates = [a for a in plan.actions if isinstance(a, CreateJob)]
        if not creates:
            return
        make = self._job_maker(queue, log)
        if queue.mode == "exact":
            self._create_exact(queue, creates, make, demand, memory, report, log)
            return
        for action in creates:
            bodies = make(action)
            for result in concurrently(
                self._create, [(b, report) for b in bodies], CREATE_CONCURRENCY
            ):
                if isinstance(result, Raised):
                    dispatch_refused(self.metrics, queue.name, result.error, log)
                    raise result.error  # the pods that were created count as supply
            report.done.append(action.name)
            self.metrics.agents_dispatched.labels(queue.name, queue.mode).inc(action.parallelism)

    def _job_maker(self, queue: DispatchedQueue, log: Any) -> Callable[[CreateJob], list[JSON]]:
        """Jobs from the queue's template, read now: an applied change takes effect at once.

        In exact mode each Job is then made as its step asks (:mod:`.steps`).  What one
        action becomes: its Job, or (``workload: pod``) the Job's pods.
        """
        try:
            cronjob = self.kube.get_cronjob(queue.template)
        except KubeError as exc:
            if exc.not_found:
                raise TemplateMissing(
                    f"template CronJob {queue.template} not found", status=404
                ) from exc
            raise
        mirror = next((m for m in self.mirrors if m.name == queue.git_mirror), None)
        claim = mirrors.newest_ready_claim(self.kube, mirror.name) if mirror else None
        make: Callable[[CreateJob], JSON] = functools.partial(
            build_job,
            cronjob,
            queue=queue,
            mirror_claim=claim,
            mirror_path=mirror.mount_path if mirror else None,
        )
        if queue.mode == "exact":
            make = step_job_maker(self.clients, queue, make, log)
        if queue.dispatch.workload == "pod":
            return lambda action: job_to_pods(make(action), cronjob, action)
        return lambda action: [make(action)]

    def has_template(self, queue: DispatchedQueue) -> bool | None:
        """Whether the queue's template CronJob exists (None: could not tell)."""
        try:
            self.kube.get_cronjob(queue.template)
        except KubeError as exc:
            return False if exc.not_found else None
        return True

    def delete(self, queue: DispatchedQueue, action: DeleteJob, log: Any) -> None:
        """Delete a Job (its pods and token Secret go with it: the garbage collector)."""
        if action.cause == "canceled":
            log.info(
                "deleting Job of a canceled Buildkite job", job=action.name, reason=action.reason
            )
        else:
            log.warning(
                "deleting Job whose pods never started",
                job=action.name,
                reason=action.reason,
                kubernetes_reason=action.code,
            )
            self.metrics.not_started.labels(queue.name, action.code or "unknown").inc()
        if queue.dispatch.workload == "pod":
            self._delete_pods(action.name)
        else:
            try:
                self.kube.delete_job(action.name)
            except KubeError as exc:
                if not exc.not_found:
                    raise
            if self.informer is not None:
                self.informer.remove(action.name)
        self.metrics.jobs_deleted.labels(queue.name, action.cause).inc()

    def _delete_pods(self, group: str) -> None:
        """Delete the agent pods of one group (their token Secrets go with them)."""
        for pod in our_pods(self.clients):
            name = (pod.get("metadata") or {}).get("name", "")
            if group_of(pod) != group:
                continue
            try:
                self.kube.delete_pod(name)
            except KubeError as exc:
                if not exc.not_found:
                    raise
            if self.clients.pod_informer is not None:
                self.clients.pod_informer.remove(name)

    def _create(self, body: JSON, report: QueueReport) -> JSON:
        """Create a Job or a pod; one that exists already (409: a retry landed) is success."""
        name = body["metadata"]["name"]
        pod = body.get("kind") == "Pod"
        get = self.kube.get_pod if pod else self.kube.get_job
        try:
            created = self.kube.create_pod(body) if pod else self.kube.create_job(body)
        except KubeError as exc:
            if exc.conflict:
                created = get(name)  # a retried create landed
            elif exc.maybe_landed:
                created = self._landed(name, exc, get)
            else:
                raise
        informer = self.clients.pod_informer if pod else self.informer
        if informer is not None:
            informer.upsert(created)
        report.created.append(name)
        (self.metrics.pods_created if pod else self.metrics.jobs_created).labels(report.queue).inc()
        return created

    def _landed(self, name: str, failure: KubeError, get: Callable[[str], JSON]) -> JSON:
        """A create failed without saying whether it was carried out: look it up."""
        try:
            return get(name)
        except KubeError as exc:
            if exc.not_found:
                raise failure from None  # it was not: the create is retried
            raise Unconfirmed(
                f"{failure}; and whether Job {name} exists is unknown: {exc}",
                status=failure.status,
                retry_after=failure.retry_after,
            ) from exc

    def _create_exact(
        self,
        queue: DispatchedQueue,
        creates: list[CreateJob],
        make: Callable[[CreateJob], list[JSON]],
        demand: Demand,
        memory: QueueMemory,
        report: QueueReport,
        log: Any,
    ) -> None:
        """Reserve the jobs, get their tokens, create Jobs and Secrets concurrently."""
        key, _ = self.stacks.key(queue)
        try:
            tokens = self._reserve_and_issue(queue, key, creates, demand, memory, log)
            started = [(a, tokens[a.buildkite_job]) for a in creates if a.buildkite_job in tokens]
            done, first_error = self._create_all(queue, started, make, memory, report, log)
        finally:
            self.metrics.reserved.labels(queue.name).set(len(memory.reserved))
        scheduled_at = {w.uuid: w.scheduled_at for w in demand.jobs}
        scheduled_at |= {u: r.job.scheduled_at for u, r in memory.reserved.items()}
        notes: list[tuple[str, str]] = []
        for action in done:
            uuid = action.buildkite_job or ""
            memory.just_dispatched[uuid] = self.clock()
            memory.refused.pop(uuid, None)
            memory.reserved.pop(uuid, None)
            report.done.append(action.name)
            self.metrics.agents_dispatched.labels(queue.name, queue.mode).inc()
            at = scheduled_at.get(uuid)
            if at:
                self.metrics.latency.labels(queue.name).observe(max(0.0, self.clock() - at))
            if queue.dispatch.workload == "pod":
                pod = exact_pod_name(queue.template, uuid, action.attempt)
                notes.append((uuid, f"stackgen: agent pod {pod} created"))
            else:
                notes.append((uuid, f"stackgen: Kubernetes Job {action.name} created"))
        self.metrics.reserved.labels(queue.name).set(len(memory.reserved))
        self._hold(queue, key, [n[0] for n in notes], log)
        if notes:
            self._notify(key, notes, log)
        if first_error is not None:
            raise first_error  # the Jobs that were created stay; the rest are retried

    def _reserve_and_issue(
        self,
        queue: DispatchedQueue,
        key: str,
        creates: list[CreateJob],
        demand: Demand,
        memory: QueueMemory,
        log: Any,
    ) -> dict[str, AcquisitionToken]:
        """Reserve the jobs (briefly), then issue each a job-acquisition token; by job UUID.

        Reserving a job we hold already extends it; what Buildkite reserved stays in
        ``memory.reserved`` until its Job exists, so a failure after this point loses
        nothing: the next retry plans it again although Buildkite no longer lists it.
        """
        wanted = [a.buildkite_job for a in creates if a.buildkite_job]
        reserved, not_reserved = self.api.batch_reserve(key, wanted, expiry_seconds=RESERVE_SECONDS)
        for uuid in not_reserved:
            memory.reserved.pop(uuid, None)
        if not_reserved:
            log.info("jobs reserved elsewhere, skipped", jobs=not_reserved)
        known = {w.uuid: w for w in demand.jobs} | {u: r.job for u, r in memory.reserved.items()}
        until = self.clock() + RESERVE_SECONDS
        for uuid in reserved:
            memory.reserved[uuid] = Reservation(known.get(uuid, WaitingJob(uuid)), until)
        if not reserved:
            return {}
        timeout = queue.dispatch.pod_start_timeout_seconds
        tokens, not_issued = self.api.acquisition_tokens(
            key, reserved, lifetime_seconds=int(timeout + 600)
        )
        for uuid in not_issued:
            memory.reserved.pop(uuid, None)
        if not_issued:
            log.warning("no job-acquisition token issued, not starting", jobs=not_issued)
        return {t.job_uuid: t for t in tokens}

    def _hold(self, queue: DispatchedQueue, key: str, uuids: list[str], log: Any) -> None:
        """Extend the reservations of jobs that have their Jobs now, over the pod start.

        Best effort: should it fail, the short reservation lapses and Buildkite lists the
        job again, which this dispatcher skips (its Job is the record).
        """
        if not uuids:
            return
        expiry = int(min(3600, queue.dispatch.pod_start_timeout_seconds + 120))
        try:
            self.api.batch_reserve(key, uuids, expiry_seconds=expiry)
        except BuildkiteError as exc:
            self.metrics.buildkite_error(exc, log, "batch-reserve (extend)")

    def _create_all(
        self,
        queue: DispatchedQueue,
        started: list[tuple[CreateJob, AcquisitionToken]],
        make: Callable[[CreateJob], list[JSON]],
        memory: QueueMemory,
        report: QueueReport,
        log: Any,
    ) -> tuple[list[CreateJob], KubeError | BuildkiteError | None]:
        """Each Job and its token Secret, CREATE_CONCURRENCY at a time."""

        def start(action: CreateJob, token: AcquisitionToken) -> CreateJob | None:
            try:
                (body,) = make(action)
            except StepRefused:
                # Failed on Buildkite with the reason: nothing to create, nothing to retry.
                memory.reserved.pop(action.buildkite_job or "", None)
                return None
            try:
                created = self._create(body, report)
            except Unconfirmed:
                uuid = action.buildkite_job or ""
                self.pending[action.name] = PendingSecret(queue.name, uuid, body, token)
                memory.just_dispatched[uuid] = self.clock()  # it may exist: no second Job
                raise
            except KubeError as exc:
                if self._refused(queue, action, body, exc, memory, log):
                    return None  # failed on Buildkite with the reason
                raise
            self._secure(body, created, token)
            return action

        done: list[CreateJob] = []
        first_error: KubeError | BuildkiteError | None = None
        for result in concurrently(start, started, CREATE_CONCURRENCY):
            if isinstance(result, Raised):
                if not isinstance(result.error, KubeError | BuildkiteError):
                    raise result.error
                first_error = first_error or result.error
            elif result is not None:
                done.append(result)
        return done, first_error

    def _refused(
        self,
        queue: DispatchedQueue,
        action: CreateJob,
        body: JSON,
        exc: KubeError,
        memory: QueueMemory,
        log: Any,
    ) -> bool:
        """An exact-mode create the API server refused: whether its job was failed for it."""
        uuid, now = action.buildkite_job, self.clock()
        what = "agent pod" if body.get("kind") == "Pod" else "Job"
        first = memory.refused.get(uuid or "", now)
        decision = decide(exc, what, first, now, refusal_window(queue)) if uuid else None
        if decision is None or not uuid:
            return False
        self.metrics.creates_refused.labels(queue.name, decision.kind).inc()
        memory.refused[uuid] = first
        if not decision.fail:
            log.warning(
                "Kubernetes refused a create; retrying",
                buildkite_job=uuid,
                name=body["metadata"]["name"],
                reason=str(exc),
            )
            if first == now:  # noted once, not at every retry
                self._notify(self.stacks.key(queue)[0], [(uuid, decision.detail)], log)
            return False
        self._fail(queue, FailJob(queue.name, uuid, decision.detail), log)
        memory.given_up.add(uuid)
        memory.reserved.pop(uuid, None)
        memory.refused.pop(uuid, None)
        return True

    def _secure(self, body: JSON, created: JSON, token: AcquisitionToken) -> None:
        """The Job's token Secret, owned by the Job (its uid from what the API returned)."""
        job = {**body, "metadata": {**body["metadata"]}}
        job["metadata"]["uid"] = (created.get("metadata") or {}).get("uid", "")
        try:
            self.kube.create_secret(acquisition_secret(job, token.token))
        except KubeError as exc:
            if not exc.conflict:
                raise

    def settle(self, queue: DispatchedQueue, memory: QueueMemory, log: Any) -> None:
        """Jobs whose create had no answer: give those that exist their token Secret.

        A Job that does not exist is forgotten (its job is planned again); one that cannot
        be looked up yet waits for the next cycle.  Runs before the queue is planned.
        """
        for name, pending in list(self.pending.items()):
            if pending.queue != queue.name:
                continue
            try:
                pod = pending.job.get("kind") == "Pod"
                created = self.kube.get_pod(name) if pod else self.kube.get_job(name)
                self._secure(pending.job, created, pending.token)
            except KubeError as exc:
                if not exc.not_found:
                    continue
                memory.just_dispatched.pop(pending.buildkite_job, None)
                log.info("a Job whose create had no answer does not exist", job=name)
            else:
                log.info("token Secret created for a Job whose create had no answer", job=name)
            del self.pending[name]

    def _notify(self, key: str, notes: list[tuple[str, str]], log: Any) -> None:
        """Timeline notes; a note is not worth failing the cycle for."""
        stamp = iso(self.clock())
        try:
            self.api.notify(key, [(uuid, detail[:256], stamp) for uuid, detail in notes])
        except BuildkiteError as exc:
            self.metrics.buildkite_error(exc, log, "notifications")

    def _fail(self, queue: DispatchedQueue, action: FailJob, log: Any) -> None:
        key, _ = self.stacks.key(queue)
        log.error(
            "giving up on Buildkite job", buildkite_job=action.buildkite_job, reason=action.detail
        )
        self._notify(key, [(action.buildkite_job, action.detail)], log)
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
