"""The dispatcher's loop: demand → plan → act, one cycle at a time per lane; never crash.

    Schedule          which queues are due (polls, rechecks, webhooks, backoff)
      -> demand       DemandReader: Buildkite's counts or job lists; our Jobs
      -> plan         planner.plan_queue, pure, per queue
      -> act          Actor: create/delete Jobs, token Secrets, notes, give-ups
      -> cancels      exact queues: delete unstarted Jobs of canceled Buildkite jobs

Queues that wait for the same Buildkite answer form a lane (:mod:`.lanes`): every
dispatch queue shares the metrics call, each exact queue has its own list.  The loop
starts each due lane's cycle on its own thread and never waits for one, so a slow
answer for one lane never delays another lane's cycle.  One cycle has one dispatch ID
(8 hex characters), which goes into every Job name and label it creates and every log
line it writes.  A failure of Buildkite or Kubernetes ends the cycle for the queues it
touched, which are retried with backoff.
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
from stackgen.dispatcher import pods
from stackgen.dispatcher.act import Actor, QueueReport, TemplateMissing
from stackgen.dispatcher.clients import Clients
from stackgen.dispatcher.config import DispatcherConfig
from stackgen.dispatcher.demand import DemandReader
from stackgen.dispatcher.explain import decision_fields
from stackgen.dispatcher.informer import JobInformer
from stackgen.dispatcher.keep import keep_failed
from stackgen.dispatcher.kube import Kube, KubeError
from stackgen.dispatcher.lanes import Raised, concurrently, lanes_of, start
from stackgen.dispatcher.metrics import Metrics
from stackgen.dispatcher.planner import (
    CreateJob,
    Demand,
    JobView,
    Plan,
    QueueMemory,
    cancelled_jobs,
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


def _trigger_of(ready: dict[str, str]) -> str:
    """The trigger a cycle is counted under: a webhook if any of its queues had one."""
    return "webhook" if "webhook" in ready.values() else next(iter(ready.values()), "poll")


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
        pod_informer: JobInformer | None = None,
    ) -> None:
        if log is None:
            from stackgen.common.logs import get_logger

            log = get_logger()
        self.config = config
        self.api = buildkite
        self.metrics = metrics or Metrics()
        self.metrics.initialise(config.queues)
        self.clock = clock
        self.new_id = new_id
        self.is_leader = is_leader
        self.log = log
        self.queues = {q.name: q for q in config.queues}
        self.lanes = lanes_of(config.queues)
        self.schedule = Schedule(self.queues)
        self.stacks = Stacks(buildkite, config.stack_key, config.namespace)
        clients = Clients(buildkite, kube, self.stacks, self.metrics, clock, informer, pod_informer)
        self.demand = DemandReader(clients, self.schedule)
        self.actor = Actor(clients, config.mirrors)
        self.memory: dict[str, QueueMemory] = {q: QueueMemory() for q in self.queues}
        #: Queues whose memory was rebuilt from their Jobs (after a start or a lost lead).
        self._recovered: set[str] = set()
        #: Queues whose template CronJob was found missing (logged once per change).
        self._missing: set[str] = set()
        self._busy: set[str] = set()  # lanes whose cycle is under way
        self._busy_lock = threading.Lock()
        self._wake = threading.Event()
        self._last_prune = 0.0
        self._last_keep = 0.0
        self._clients = clients
        self.last_loop = clock()
        self.last_success: float | None = None

    @property
    def next_due(self) -> dict[str, float]:
        """When each queue is next due (the schedule's)."""
        return self.schedule.next_due

    def trigger(self, queues: tuple[str, ...] = (), source: str = "webhook") -> None:
        """Run a cycle soon for these queues (all queues when none is named or known)."""
        self.schedule.trigger(queues, source)
        self._wake.set()

    def on_leadership(self, leader: bool) -> None:
        """React to a leadership change.

        A new leader looks at once (counted as ``trigger="leadership"``) and does its
        housekeeping at its next turn (finished agent pods are collected by nobody while no
        dispatcher leads); one that lost the lead forgets what it knew (its successor
        rebuilds it from the Jobs).
        """
        if leader:
            self._last_keep = 0.0
            self.trigger(source="leadership")
        else:
            self.forget_state()

    def forget_state(self) -> None:
        """Drop in-memory state (on losing leadership): a new leader rebuilds it from Jobs."""
        self.memory = {q: QueueMemory() for q in self.queues}
        self._recovered = set()

    # ------------------------------------------------------------------ the loop

    def run(self, stop: threading.Event) -> None:
        """Dispatch until ``stop`` is set: start each lane's cycle when it is due."""
        while not stop.is_set():
            self.last_loop = self.clock()
            self._wake.clear()
            # A follower's queues stay due (it serves none): it waits for a trigger (a
            # leadership change) or a second, instead of spinning on them.
            idle = self._idle_queues() if self.is_leader() else []
            wake_at = self.schedule.wake_at(self.clock(), idle) if idle else self.clock() + 1
            self._wake.wait(max(0.0, min(wake_at - self.clock(), 1.0)))
            if stop.is_set():
                break
            leader = self.is_leader()
            for lane, names in self.lanes.items():
                if lane in self._busy:
                    continue
                ready = self.schedule.ready_triggers(self.clock(), names)
                if not leader:
                    continue  # followers forward webhooks; the leader dispatches
                if ready:
                    self._start(lane, _trigger_of(ready), [n for n in names if n in ready])
                elif self.schedule.any_due(self.clock(), names):
                    self._start(lane, "poll", self.schedule.due(self.clock(), names))
            prune_due = self.clock() - self._last_prune > MIRROR_PRUNE_EVERY
            if leader and self.config.mirrors and prune_due:
                self._last_prune = self.clock()
                self.actor.prune_mirrors(self.log)
            if leader and self.clock() - self._last_keep > KEEP_EVERY:
                self._last_keep = self.clock()
                self.housekeeping()

    def housekeeping(self) -> None:
        """Keep failed pods asked for; collect finished agent pods (``workload: pod``)."""
        keep_failed(self._clients, self.queues, self.log)
        if any(q.dispatch.workload == "pod" for q in self.queues.values()):
            pods.keep_pods(self._clients, self.queues, self.log)
            pods.collect(self._clients, self.log)

    def _idle_queues(self) -> list[str]:
        with self._busy_lock:
            return [
                n for lane, names in self.lanes.items() if lane not in self._busy for n in names
            ]

    def _start(self, lane: str, trigger: str, names: list[str]) -> None:
        with self._busy_lock:
            self._busy.add(lane)
        start(self._lane, lane, trigger, names, name=f"cycle-{lane}")

    def _lane(self, lane: str, trigger: str, names: list[str]) -> None:
        """One lane's cycle on its own thread; a bug is logged, never fatal."""
        started = time.perf_counter()
        report = CycleReport(dispatch_id=self.new_id(), trigger=trigger)
        try:
            report.queues = self._cycle(trigger, names, report.dispatch_id)
            self._finish(report, started)
        except Exception:
            self.log.exception("dispatch cycle crashed", lane=lane, dispatch_id=report.dispatch_id)
            for name in names:
                self.schedule.failed(name, self.clock())
        finally:
            with self._busy_lock:
                self._busy.discard(lane)
            self._wake.set()

    def run_cycle(self, trigger: str, only: set[str] | None = None) -> CycleReport:
        """One cycle for the due queues (or ``only`` those), every lane at once.

        Waits for all of them; never raises on API faults (tests and benchmarks drive this).
        """
        started = time.perf_counter()
        report = CycleReport(dispatch_id=self.new_id(), trigger=trigger)
        names = self.schedule.due(self.clock()) if only is None else list(only)
        groups = [[n for n in lane if n in names] for lane in self.lanes.values()]
        calls = [(trigger, group, report.dispatch_id) for group in groups if group]
        if not calls:
            return report
        for result in concurrently(self._cycle, calls, len(calls)):
            if isinstance(result, Raised):
                raise result.error
            report.queues.extend(result)
        order = list(self.queues)
        report.queues.sort(key=lambda q: order.index(q.queue))
        self._finish(report, started)
        return report

    def _finish(self, report: CycleReport, started: float) -> None:
        result = "error" if any(q.error for q in report.queues) else "ok"
        report.duration = time.perf_counter() - started
        self.metrics.cycle_duration.observe(report.duration)
        self.metrics.cycles.labels(report.trigger, result).inc()
        if result == "ok":
            self.last_success = self.clock()

    # ------------------------------------------------------------- one lane's cycle

    def _cycle(self, trigger: str, names: list[str], dispatch_id: str) -> list[QueueReport]:
        """Demand, supply, then each queue planned and acted on (one lane's queues)."""
        now = self.clock()
        log = self.log.bind(dispatch_id=dispatch_id, trigger=trigger)
        due = [self.queues[name] for name in names]
        try:
            demands, failed = self.demand.demand(due, log, now, fresh=trigger == "webhook")
            views = self.demand.supply({q.name: q for q in due})
        except KubeError as exc:
            self.metrics.kube_error(exc, log, "cycle failed: kubernetes")
            for queue in due:
                self.schedule.failed(queue.name, self.clock(), exc.retry_after)
            return [QueueReport(q.name, error=str(exc)) for q in due]
        reports = []
        for queue in due:
            if queue.name in failed:
                reports.append(QueueReport(queue.name, error=failed[queue.name]))
                continue
            views_of = views.get(queue.name, [])
            if queue.name not in self._recovered:
                remember_from_jobs(self.memory[queue.name], views_of)
                self._recovered.add(queue.name)
            demand = demands[queue.name]
            reports.append(self._serve(queue, demand, views_of, dispatch_id, log, trigger))
        return reports

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
        memory = self.memory[queue.name]
        qlog = log.bind(queue=queue.name, mode=queue.mode)
        if self.actor.pending:
            self.actor.settle(queue, memory, qlog)
        now = self.clock()
        announced = trigger == "webhook"
        plan = plan_queue(queue, demand, views, memory, now, dispatch_id, announced=announced)
        self.schedule.planned(queue, demand, plan, now)
        report = QueueReport(queue.name, plan=plan)
        self.metrics.supply.labels(queue.name).set(plan.supply)
        self.metrics.unmet.labels(queue.name).set(max(0, plan.unmet))
        self.metrics.cooldown.labels(queue.name).set(1 if plan.cooldown else 0)
        qlog.debug(
            "decision", **decision_fields(queue, demand, views, plan, now, announced=announced)
        )
        try:
            self.actor.act(queue, plan, demand, memory, report, qlog)
            if queue.mode == "exact":
                self._cancel(queue, views, qlog)
        except BuildkiteError as exc:
            if isinstance(exc, NotFound):
                self.stacks.forget(queue.name)  # deregistered elsewhere: register again
            self.metrics.buildkite_error(exc, qlog, "act")
            report.error = str(exc)
            self.schedule.failed(queue.name, self.clock(), exc.retry_after)
        except TemplateMissing as exc:
            self.metrics.kube_error(exc, qlog, "template missing", quiet=True)
            self._template(queue, qlog, missing=True)
            report.error = str(exc)
            self.schedule.failed(queue.name, self.clock(), within_poll=True)
        except KubeError as exc:
            self.metrics.kube_error(exc, qlog, "kubernetes call failed")
            report.error = str(exc)
            self.schedule.failed(queue.name, self.clock(), exc.retry_after)
        else:
            self.schedule.succeeded(queue.name)
            if queue.name in self._missing:
                read = any(isinstance(a, CreateJob) for a in plan.actions)
                if read or self.actor.has_template(queue) is True:
                    self._template(queue, qlog, missing=False)
        _log_cycle(qlog, demand, plan, report)
        return report

    def _cancel(self, queue: DispatchedQueue, views: list[JobView], log: Any) -> None:
        """Delete the unstarted Jobs of Buildkite jobs canceled (or ended) meanwhile."""
        states = self.demand.states(queue, views, log, self.clock())
        for action in cancelled_jobs(queue, views, states):
            self.actor.delete(queue, action, log)

    def _template(self, queue: DispatchedQueue, log: Any, *, missing: bool) -> None:
        """Log a missing template once, when it goes missing, and once when it is back."""
        if missing == (queue.name in self._missing):
            return
        self.metrics.template_missing.labels(queue.name).set(1 if missing else 0)
        if missing:
            self._missing.add(queue.name)
            log.error(
                "template CronJob missing: dispatching nothing for this queue until it is back",
                template=queue.template,
            )
        else:
            self._missing.discard(queue.name)
            log.info("template CronJob is back: dispatching again", template=queue.template)

    def deregister(self) -> None:
        """Tell Buildkite this stack stopped (on shutdown)."""
        self.stacks.deregister_all()


def _log_cycle(log: Any, demand: Demand, plan: Plan, report: QueueReport) -> None:
    """The one line per queue and cycle."""
    log.info(
        "cycle",
        scheduled=demand.scheduled,
        running=demand.running,
        supply=plan.supply,
        unmet=plan.unmet,
        agents_dispatched=sum(
            a.parallelism
            for a in plan.actions
            if isinstance(a, CreateJob) and a.name in report.done
        ),
        jobs_created=report.created,
        cooldown=plan.cooldown,
        notes=plan.notes,
        error=report.error,
    )
