"""The dispatcher's loop: fetch demand and state, plan, act; never crash on a fault.

One cycle has one dispatch ID (8 hex characters), which goes into every Job name and
label it creates and every log line it writes.  A cycle runs for the queues that are
due (their poll interval passed, or a webhook named them); a failure of Buildkite or
Kubernetes ends the cycle for the queues it touched, which are retried with backoff.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from stackgen.buildkite import AgentAPI, Backoff, BuildkiteError, NotFound
from stackgen.buildkite.models import MetricsSnapshot
from stackgen.common.models import DispatchedQueue
from stackgen.common.names import queue_slug
from stackgen.dispatcher import mirrors
from stackgen.dispatcher.config import DispatcherConfig
from stackgen.dispatcher.informer import JobInformer
from stackgen.dispatcher.jobs import (
    acquisition_secret,
    build_job,
    list_views,
)
from stackgen.dispatcher.kube import JSON, Kube, KubeError
from stackgen.dispatcher.metrics import Metrics
from stackgen.dispatcher.planner import (
    CreateJob,
    DeleteJob,
    Demand,
    FailJob,
    JobView,
    Plan,
    QueueMemory,
    WaitingJob,
    WarnQueue,
    plan_queue,
    remember_from_jobs,
)

#: Webhook-triggered cycles run at most this often per queue (a burst of deliveries for
#: one queue is one cycle; other queues do not wait for it).
TRIGGER_GAP = 0.5
#: Queues due within this much of a poll cycle are served in it (one Job list for all).
ALIGN_WINDOW = 0.25
#: A queue held by its cooldown is looked at again this soon, not at its next poll.
COOLDOWN_RECHECK = 1.0
#: A queue whose scheduled jobs were left to agents we already have (idle, or still
#: starting) is looked at again this soon: if they do not take them (an agent just exited
#: and Kubernetes had not caught up), agents are dispatched then, not at the next poll.
PICKUP_RECHECK = 2.0
#: Exact-mode Jobs (and their token Secrets) created at once: a fan-out of hundreds of
#: jobs then takes a fraction of a second, not one round trip per object in turn.
CREATE_CONCURRENCY = 16
MIRROR_PRUNE_EVERY = 60.0


def expects_pickup(queue: DispatchedQueue, demand: Demand, plan: Plan) -> bool:
    """Scheduled jobs were left to agents that are not busy (idle, or still starting)."""
    return (
        queue.mode == "dispatch"
        and demand.scheduled > 0
        and plan.agents_dispatched == 0
        and plan.supply > demand.running
    )


def new_dispatch_id() -> str:
    """A short hex ID for one cycle."""
    return uuid.uuid4().hex[:8]


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class QueueReport:
    """What one cycle did for one queue."""

    queue: str
    plan: Plan | None = None
    error: str | None = None
    created: list[str] = field(default_factory=list)


@dataclass
class CycleReport:
    """What one cycle did."""

    dispatch_id: str
    trigger: str
    queues: list[QueueReport] = field(default_factory=list)
    duration: float = 0.0


class Dispatcher:
    """Serves the queues of one stack."""

    def __init__(
        self,
        config: DispatcherConfig,
        buildkite: AgentAPI,
        kube: Kube,
        *,
        metrics: Metrics | None = None,
        log: Any = None,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = new_dispatch_id,
        is_leader: Callable[[], bool] = lambda: True,
        informer: JobInformer | None = None,
    ) -> None:
        self.config = config
        self.informer = informer
        self.api = buildkite
        self.kube = kube
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.new_id = new_id
        self.is_leader = is_leader
        if log is None:
            from stackgen.common.logs import get_logger

            log = get_logger()
        self.log = log
        self.queues = {q.name: q for q in config.queues}
        self.memory: dict[str, QueueMemory] = {q: QueueMemory() for q in self.queues}
        self.next_due: dict[str, float] = {q: 0.0 for q in self.queues}
        self.backoff: dict[str, Backoff] = {q: Backoff(base=1.0, cap=60.0) for q in self.queues}
        self.registered: dict[str, tuple[str, str]] = {}
        self._recovered = False
        self._triggered: set[str] = set()
        self._trigger_all = False
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._last_triggered: dict[str, float] = {}
        self._last_prune = 0.0
        self.last_loop = clock()
        self.last_success: float | None = None

    # ------------------------------------------------------------------ triggers

    def trigger(self, queues: tuple[str, ...] = ()) -> None:
        """Run a cycle soon for these queues (all queues when none is named or known)."""
        with self._lock:
            known = [q for q in queues if q in self.queues]
            if known:
                self._triggered.update(known)
            else:
                self._trigger_all = True
        self._wake.set()

    def _ready_triggers(self, now: float) -> set[str]:
        """Queues a webhook named whose last webhook cycle is at least TRIGGER_GAP ago.

        A burst of deliveries for one queue becomes one cycle per TRIGGER_GAP; a delivery
        for another queue does not wait for it.  The rest stay pending.
        """
        with self._lock:
            pending = set(self.queues) if self._trigger_all else set(self._triggered)
            ready = {q for q in pending if now - self._last_triggered.get(q, -1e18) >= TRIGGER_GAP}
            self._triggered = pending - ready
            self._trigger_all = False
            if not self._triggered:
                self._wake.clear()
        for queue in ready:
            self._last_triggered[queue] = now
        return ready

    def _pending_trigger_at(self) -> float | None:
        with self._lock:
            pending = set(self._triggered)
        times = [self._last_triggered.get(q, -1e18) + TRIGGER_GAP for q in pending]
        return min(times) if times else None

    def forget_state(self) -> None:
        """Drop in-memory state (on losing leadership): a new leader rebuilds it from Jobs."""
        self.memory = {q: QueueMemory() for q in self.queues}
        self._recovered = False

    # ---------------------------------------------------------------------- loop

    def run(self, stop: threading.Event) -> None:
        """Dispatch until ``stop`` is set."""
        while not stop.is_set():
            self.last_loop = self.clock()
            wake_at = min(self.next_due.values(), default=self.clock() + 1.0)
            pending = self._pending_trigger_at()
            if pending is not None:
                wake_at = min(wake_at, pending)
            self._wake.wait(max(0.0, min(wake_at - self.clock(), 1.0)))
            if stop.is_set():
                break
            now = self.clock()
            ready = self._ready_triggers(now)
            if not self.is_leader():
                continue  # followers forward webhooks; the leader dispatches
            if ready:
                self.run_cycle("webhook", ready)
            elif any(self.clock() >= due for due in self.next_due.values()):
                self.run_cycle("poll")
            if self.config.mirrors and self.clock() - self._last_prune > MIRROR_PRUNE_EVERY:
                self._last_prune = self.clock()
                self._prune_mirrors()

    def run_cycle(self, trigger: str, only: set[str] | None = None) -> CycleReport:
        """One cycle for the due queues (or ``only`` those); never raises on API faults."""
        started = time.perf_counter()
        now = self.clock()
        dispatch_id = self.new_id()
        log = self.log.bind(dispatch_id=dispatch_id, trigger=trigger)
        report = CycleReport(dispatch_id=dispatch_id, trigger=trigger)
        due = [
            q
            for name, q in self.queues.items()
            if (only is not None and name in only)
            or (only is None and now >= self.next_due[name] - ALIGN_WINDOW)
        ]
        if not due:
            return report
        result = "ok"
        try:
            demands, failed = self._demand(due, log, now)
            # Grouped once: each queue is planned from its own Jobs, not a scan of all.
            views: dict[str, list[JobView]] = {}
            for view in self._views():
                views.setdefault(view.queue, []).append(view)
            if not self._recovered:
                for name, memory in self.memory.items():
                    remember_from_jobs(memory, views.get(name, []))
                self._recovered = True
            for queue in due:
                if queue.name in failed:
                    report.queues.append(QueueReport(queue.name, error=failed[queue.name]))
                    continue
                report.queues.append(
                    self._serve(
                        queue,
                        demands[queue.name],
                        views.get(queue.name, []),
                        dispatch_id,
                        log,
                        announced=trigger == "webhook",
                    )
                )
        except KubeError as exc:
            result = "error"
            self.metrics.api_errors.labels("kubernetes", str(exc.status or "transport")).inc()
            log.warning("cycle failed: kubernetes", error=str(exc), status=exc.status)
            for queue in due:
                self._retry_later(queue.name, None)
        if any(q.error for q in report.queues):
            result = "error"
        report.duration = time.perf_counter() - started
        self.metrics.cycle_duration.observe(report.duration)
        self.metrics.cycles.labels(trigger, result).inc()
        if result == "ok":
            self.last_success = self.clock()
        return report

    # -------------------------------------------------------------------- demand

    def _demand(
        self, due: list[DispatchedQueue], log: Any, started: float
    ) -> tuple[dict[str, Demand], dict[str, str]]:
        demands: dict[str, Demand] = {}
        failed: dict[str, str] = {}
        if any(q.mode == "dispatch" for q in due):
            try:
                snapshot: MetricsSnapshot | None = self.api.metrics()
            except BuildkiteError as exc:
                snapshot = None
                self._buildkite_error(exc, log, "metrics")
                for q in due:
                    if q.mode == "dispatch":
                        failed[q.name] = str(exc)
                        self._retry_later(q.name, exc.retry_after)
            if snapshot is not None:
                hint = snapshot.poll_after or 0.0
                for q in due:
                    if q.mode != "dispatch":
                        continue
                    counts = snapshot.queue(q.name)
                    demands[q.name] = Demand(scheduled=counts.scheduled, running=counts.running)
                    self.metrics.scheduled.labels(q.name).set(counts.scheduled)
                    self.metrics.running.labels(q.name).set(counts.running)
                    self._due_after(q, started + max(q.dispatch.poll_interval_seconds, hint))
        for q in due:
            if q.mode != "exact":
                continue
            try:
                key, queue_key = self._registration(q)
                page_jobs = self.api.all_scheduled_jobs(key, queue_key)
            except BuildkiteError as exc:
                if isinstance(exc, NotFound):
                    self.registered.pop(q.name, None)  # deregistered elsewhere: register again
                self._buildkite_error(exc, log, "scheduled-jobs", queue=q.name)
                failed[q.name] = str(exc)
                self._retry_later(q.name, exc.retry_after)
                continue
            demands[q.name] = Demand(
                scheduled=len(page_jobs),
                jobs=tuple(WaitingJob(j.uuid, j.scheduled_at, j.priority) for j in page_jobs),
            )
            self.metrics.scheduled.labels(q.name).set(len(page_jobs))
            self._due_after(q, started + q.dispatch.poll_interval_seconds)
        return demands, failed

    def _registration(self, queue: DispatchedQueue) -> tuple[str, str]:
        if queue.name not in self.registered:
            key = f"{self.config.stack_key}-{queue_slug(queue.name)}"[:128]
            stack = self.api.register_stack(
                key,
                queue_key=queue.name,
                metadata={
                    "stackgen.io/namespace": self.config.namespace,
                    "stackgen.io/queue": queue.name,
                },
            )
            self.registered[queue.name] = (stack.key, stack.queue_key)
        return self.registered[queue.name]

    def _views(self) -> list[JobView]:
        cached = None
        if self.informer is not None and self.informer.synced:
            cached = self.informer.snapshot()
        self.metrics.job_reads.labels("list" if cached is None else "cache").inc()
        return list_views(self.kube, self.queues, self.clock(), jobs=cached)

    def _due_after(self, queue: DispatchedQueue, at: float) -> None:
        # From the cycle's start, not from when this queue's call returned: queues polled
        # together stay together, instead of drifting into one cycle (and Job list) each.
        self.next_due[queue.name] = at
        self.backoff[queue.name].reset()

    def _retry_later(self, name: str, retry_after: float | None) -> None:
        delay = self.backoff[name].next_delay(retry_after)
        self.next_due[name] = self.clock() + max(delay, 0.2)

    def _buildkite_error(self, exc: BuildkiteError, log: Any, call: str, **ctx: Any) -> None:
        kind = type(exc).__name__
        self.metrics.api_errors.labels("buildkite", kind).inc()
        log.warning(
            "buildkite call failed",
            call=call,
            error=str(exc),
            status=exc.status,
            retry_after=exc.retry_after,
            **ctx,
        )

    # -------------------------------------------------------------------- acting

    def _serve(
        self,
        queue: DispatchedQueue,
        demand: Demand,
        views: list[JobView],
        dispatch_id: str,
        log: Any,
        *,
        announced: bool = False,
    ) -> QueueReport:
        now = self.clock()
        memory = self.memory[queue.name]
        plan = plan_queue(queue, demand, views, memory, now, dispatch_id, announced=announced)
        if plan.cooldown:
            self.next_due[queue.name] = min(self.next_due[queue.name], now + COOLDOWN_RECHECK)
        elif expects_pickup(queue, demand, plan):
            self.next_due[queue.name] = min(self.next_due[queue.name], now + PICKUP_RECHECK)
        report = QueueReport(queue.name, plan=plan)
        self.metrics.supply.labels(queue.name).set(plan.supply)
        self.metrics.unmet.labels(queue.name).set(max(0, plan.unmet))
        self.metrics.cooldown.labels(queue.name).set(1 if plan.cooldown else 0)
        qlog = log.bind(queue=queue.name, mode=queue.mode)
        try:
            self._act(queue, plan, demand, report, qlog)
        except BuildkiteError as exc:
            if isinstance(exc, NotFound):
                self.registered.pop(queue.name, None)  # deregistered elsewhere: register again
            self._buildkite_error(exc, qlog, "act")
            report.error = str(exc)
            self._retry_later(queue.name, exc.retry_after)
        except KubeError as exc:
            self.metrics.api_errors.labels("kubernetes", str(exc.status or "transport")).inc()
            qlog.warning("kubernetes call failed", error=str(exc), status=exc.status)
            report.error = str(exc)
            self._retry_later(queue.name, None)
        qlog.info(
            "cycle",
            scheduled=demand.scheduled,
            running=demand.running,
            supply=plan.supply,
            unmet=plan.unmet,
            agents_dispatched=sum(
                a.parallelism
                for a in plan.actions
                if isinstance(a, CreateJob) and a.name in report.created
            ),
            jobs_created=report.created,
            cooldown=plan.cooldown,
            notes=plan.notes,
            error=report.error,
        )
        return report

    def _act(
        self, queue: DispatchedQueue, plan: Plan, demand: Demand, report: QueueReport, log: Any
    ) -> None:
        for action in plan.actions:
            if isinstance(action, DeleteJob):
                log.warning(
                    "deleting Job whose pods never started", job=action.name, reason=action.reason
                )
                try:
                    self.kube.delete_job(action.name)
                except KubeError as exc:
                    if not exc.not_found:
                        raise
                if self.informer is not None:
                    self.informer.remove(action.name)
                self.metrics.jobs_deleted.labels(queue.name).inc()
            elif isinstance(action, FailJob):
                self._fail(queue, action, log)
            elif isinstance(action, WarnQueue):
                log.error("agents for this queue do not start", reason=action.detail)
        creates = [a for a in plan.actions if isinstance(a, CreateJob)]
        if not creates:
            return
        cronjob = self.kube.get_cronjob(queue.template)  # fresh: an applied change takes effect now
        claim = None
        mirror = next((m for m in self.config.mirrors if m.name == queue.git_mirror), None)
        if mirror is not None:
            claim = mirrors.newest_ready_claim(self.kube, mirror.name)
        make = functools.partial(
            build_job,
            cronjob,
            queue=queue,
            mirror_claim=claim,
            mirror_path=mirror.mount_path if mirror else None,
        )
        if queue.mode == "exact":
            self._create_exact(queue, creates, make, demand, report, log)
            return
        for action in creates:
            self._create(make(action), report)
            self.metrics.agents_dispatched.labels(queue.name, queue.mode).inc(action.parallelism)

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
        report: QueueReport,
        log: Any,
    ) -> None:
        memory = self.memory[queue.name]
        key, _ = self._registration(queue)
        wanted = [a.buildkite_job for a in creates if a.buildkite_job]
        # Reservation: another replica or a restarted us will not list these jobs again
        # until it expires; it outlives the pod start timeout.
        reserved, not_reserved = self.api.batch_reserve(
            key,
            wanted,
            expiry_seconds=int(min(3600, queue.dispatch.pod_start_timeout_seconds + 120)),
        )
        for uuid_ in not_reserved:
            memory.just_dispatched.pop(uuid_, None)
        if not_reserved:
            log.info("jobs reserved elsewhere, skipped", jobs=not_reserved)
        if not reserved:
            return
        tokens, not_issued = self.api.acquisition_tokens(
            key, reserved, lifetime_seconds=int(queue.dispatch.pod_start_timeout_seconds + 600)
        )
        for uuid_ in not_issued:
            memory.just_dispatched.pop(uuid_, None)
        if not_issued:
            log.warning("no job-acquisition token issued, not starting", jobs=not_issued)
        by_job = {t.job_uuid: t for t in tokens}
        scheduled_at = {w.uuid: w.scheduled_at for w in demand.jobs}
        notes: list[tuple[str, str, str]] = []
        started = [(a, by_job[a.buildkite_job]) for a in creates if a.buildkite_job in by_job]

        def start(action: CreateJob, token: Any) -> CreateJob:
            body = make(action)
            created = self._create(body, report)
            body["metadata"]["uid"] = (created.get("metadata") or {}).get("uid", "")
            try:
                self.kube.create_secret(acquisition_secret(body, token.token))
            except KubeError as exc:
                if not exc.conflict:
                    raise
            return action

        with ThreadPoolExecutor(max_workers=min(CREATE_CONCURRENCY, max(1, len(started)))) as pool:
            futures = [pool.submit(start, action, token) for action, token in started]
            done: list[CreateJob] = []
            first_error: BaseException | None = None
            for future in futures:
                try:
                    done.append(future.result())
                except (KubeError, BuildkiteError) as exc:
                    first_error = first_error or exc
        for action in done:
            self.metrics.agents_dispatched.labels(queue.name, queue.mode).inc()
            at = scheduled_at.get(action.buildkite_job or "")
            if at:
                self.metrics.latency.labels(queue.name).observe(max(0.0, self.clock() - at))
            notes.append(
                (
                    action.buildkite_job or "",
                    f"stackgen: Kubernetes Job {action.name} created",
                    _iso(self.clock()),
                )
            )
        if notes:
            try:
                self.api.notify(key, notes)
            except BuildkiteError as exc:  # a timeline note is not worth failing the cycle
                self._buildkite_error(exc, log, "notifications")
        if first_error is not None:
            raise first_error  # the Jobs that were created stay; the rest are retried

    def _fail(self, queue: DispatchedQueue, action: FailJob, log: Any) -> None:
        key, _ = self._registration(queue)
        log.error(
            "giving up on Buildkite job", buildkite_job=action.buildkite_job, reason=action.detail
        )
        try:
            self.api.notify(key, [(action.buildkite_job, action.detail[:256], _iso(self.clock()))])
        except BuildkiteError as exc:
            self._buildkite_error(exc, log, "notifications")
        self.api.finish_job(key, action.buildkite_job, exit_status=-1, detail=action.detail)
        self.metrics.jobs_failed.labels(queue.name).inc()

    def _prune_mirrors(self) -> None:
        try:
            for mirror in self.config.mirrors:
                deleted = mirrors.prune(self.kube, mirror.name, keep=mirror.keep)
                if deleted:
                    self.metrics.mirrors_pruned.inc(len(deleted))
                    self.log.info(
                        "pruned unused git mirror volumes", mirror=mirror.name, volumes=deleted
                    )
        except KubeError as exc:
            self.metrics.api_errors.labels("kubernetes", str(exc.status or "transport")).inc()
            self.log.warning("git mirror prune failed", error=str(exc))

    def deregister(self) -> None:
        """Tell Buildkite this stack stopped (on shutdown)."""
        for key, _ in self.registered.values():
            with contextlib.suppress(BuildkiteError):
                self.api.deregister_stack(key)
