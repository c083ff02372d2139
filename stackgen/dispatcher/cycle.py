"""The dispatcher's loop: demand → plan → act, one cycle at a time; never crash on a fault.

    Schedule          which queues are due (polls, rechecks, webhooks, backoff)
      -> demand       DemandReader: Buildkite's counts or job lists; our Jobs
      -> plan         planner.plan_queue, pure, per queue
      -> act          Actor: create/delete Jobs, token Secrets, notes, give-ups

One cycle has one dispatch ID (8 hex characters), which goes into every Job name and
label it creates and every log line it writes.  A cycle runs for the queues that are
due; a failure of Buildkite or Kubernetes ends the cycle for the queues it touched,
which are retried with backoff.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stackgen.buildkite import AgentAPI, BuildkiteError, NotFound
from stackgen.common.models import DispatchedQueue
from stackgen.dispatcher.act import Actor, QueueReport
from stackgen.dispatcher.clients import Clients
from stackgen.dispatcher.config import DispatcherConfig
from stackgen.dispatcher.demand import DemandReader
from stackgen.dispatcher.explain import decision_fields
from stackgen.dispatcher.informer import JobInformer
from stackgen.dispatcher.keep import keep_failed
from stackgen.dispatcher.kube import Kube, KubeError
from stackgen.dispatcher.metrics import Metrics
from stackgen.dispatcher.planner import (
    CreateJob,
    Demand,
    JobView,
    QueueMemory,
    plan_queue,
    remember_from_jobs,
)
from stackgen.dispatcher.schedule import Schedule
from stackgen.dispatcher.stacks import Stacks

MIRROR_PRUNE_EVERY = 60.0
#: How often Jobs with failed agents are looked at for keeping (dispatcher/keep.py).
KEEP_EVERY = 10.0

__all__ = ["CycleReport", "Dispatcher", "QueueReport", "new_dispatch_id"]


def new_dispatch_id() -> str:
    """A short hex ID for one cycle."""
    return uuid.uuid4().hex[:8]


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
        if log is None:
            from stackgen.common.logs import get_logger

            log = get_logger()
        self.config = config
        self.api = buildkite
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.new_id = new_id
        self.is_leader = is_leader
        self.log = log
        self.queues = {q.name: q for q in config.queues}
        self.schedule = Schedule(self.queues)
        self.stacks = Stacks(buildkite, config.stack_key, config.namespace)
        clients = Clients(buildkite, kube, self.stacks, self.metrics, clock, informer)
        self.demand = DemandReader(clients, self.schedule)
        self.actor = Actor(clients, config.mirrors)
        self.memory: dict[str, QueueMemory] = {q: QueueMemory() for q in self.queues}
        self._recovered = False
        self._wake = threading.Event()
        self._lock = threading.Lock()  # the schedule's triggers come from HTTP threads
        self._last_prune = 0.0
        self._last_keep = 0.0
        self._clients = clients
        self.last_loop = clock()
        self.last_success: float | None = None

    @property
    def next_due(self) -> dict[str, float]:
        """When each queue is next due (the schedule's)."""
        return self.schedule.next_due

    def trigger(self, queues: tuple[str, ...] = ()) -> None:
        """Run a cycle soon for these queues (all queues when none is named or known)."""
        with self._lock:
            self.schedule.trigger(queues)
        self._wake.set()

    def forget_state(self) -> None:
        """Drop in-memory state (on losing leadership): a new leader rebuilds it from Jobs."""
        self.memory = {q: QueueMemory() for q in self.queues}
        self._recovered = False

    def run(self, stop: threading.Event) -> None:
        """Dispatch until ``stop`` is set."""
        while not stop.is_set():
            self.last_loop = self.clock()
            with self._lock:
                wake_at = self.schedule.wake_at(self.clock())
            self._wake.wait(max(0.0, min(wake_at - self.clock(), 1.0)))
            if stop.is_set():
                break
            with self._lock:
                ready = self.schedule.ready_triggers(self.clock())
                if not self.schedule.has_triggers:
                    self._wake.clear()
            if not self.is_leader():
                continue  # followers forward webhooks; the leader dispatches
            if ready:
                self.run_cycle("webhook", ready)
            elif self.schedule.any_due(self.clock()):
                self.run_cycle("poll")
            if self.config.mirrors and self.clock() - self._last_prune > MIRROR_PRUNE_EVERY:
                self._last_prune = self.clock()
                self.actor.prune_mirrors(self.log)
            if self.clock() - self._last_keep > KEEP_EVERY:
                self._last_keep = self.clock()
                keep_failed(self._clients, self.queues, self.log)

    def run_cycle(self, trigger: str, only: set[str] | None = None) -> CycleReport:
        """One cycle for the due queues (or ``only`` those); never raises on API faults."""
        started = time.perf_counter()
        now = self.clock()
        report = CycleReport(dispatch_id=self.new_id(), trigger=trigger)
        log = self.log.bind(dispatch_id=report.dispatch_id, trigger=trigger)
        names = self.schedule.due(now) if only is None else [q for q in self.queues if q in only]
        due = [self.queues[name] for name in names]
        if not due:
            return report
        cycle_failed = False
        try:
            demands, failed = self.demand.demand(due, log, now)
            views = self.demand.supply(self.queues)
            self._recover(views)
            for queue in due:
                if queue.name in failed:
                    report.queues.append(QueueReport(queue.name, error=failed[queue.name]))
                    continue
                demand = demands[queue.name]
                views_of = views.get(queue.name, [])
                report.queues.append(
                    self._serve(queue, demand, views_of, report.dispatch_id, log, trigger)
                )
        except KubeError as exc:
            cycle_failed = True
            self.metrics.kube_error(exc, log, "cycle failed: kubernetes")
            for queue in due:
                self.schedule.failed(queue.name, self.clock())
        self._finish(report, started, failed=cycle_failed)
        return report

    def _recover(self, views: dict[str, list[JobView]]) -> None:
        """After a start (or a lost leadership): each queue's last dispatch, from its Jobs."""
        if not self._recovered:
            for name, memory in self.memory.items():
                remember_from_jobs(memory, views.get(name, []))
            self._recovered = True

    def _finish(self, report: CycleReport, started: float, *, failed: bool) -> None:
        result = "error" if failed or any(q.error for q in report.queues) else "ok"
        report.duration = time.perf_counter() - started
        self.metrics.cycle_duration.observe(report.duration)
        self.metrics.cycles.labels(report.trigger, result).inc()
        if result == "ok":
            self.last_success = self.clock()

    def _serve(
        self,
        queue: DispatchedQueue,
        demand: Demand,
        views: list[JobView],
        dispatch_id: str,
        log: Any,
        trigger: str,
    ) -> QueueReport:
        """Plan one queue, then act on the plan."""
        now = self.clock()
        memory = self.memory[queue.name]
        announced = trigger == "webhook"
        plan = plan_queue(queue, demand, views, memory, now, dispatch_id, announced=announced)
        self.schedule.planned(queue, demand, plan, now)
        report = QueueReport(queue.name, plan=plan)
        self.metrics.supply.labels(queue.name).set(plan.supply)
        self.metrics.unmet.labels(queue.name).set(max(0, plan.unmet))
        self.metrics.cooldown.labels(queue.name).set(1 if plan.cooldown else 0)
        qlog = log.bind(queue=queue.name, mode=queue.mode)
        qlog.debug(
            "decision", **decision_fields(queue, demand, views, plan, now, announced=announced)
        )
        try:
            self.actor.act(queue, plan, demand, memory, report, qlog)
        except BuildkiteError as exc:
            if isinstance(exc, NotFound):
                self.stacks.forget(queue.name)  # deregistered elsewhere: register again
            self.metrics.buildkite_error(exc, qlog, "act")
            report.error = str(exc)
            self.schedule.failed(queue.name, self.clock(), exc.retry_after)
        except KubeError as exc:
            self.metrics.kube_error(exc, qlog, "kubernetes call failed")
            report.error = str(exc)
            self.schedule.failed(queue.name, self.clock())
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

    def deregister(self) -> None:
        """Tell Buildkite this stack stopped (on shutdown)."""
        self.stacks.deregister_all()
