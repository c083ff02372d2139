"""Replay a trace (bench/lib/trace.py) against an agent-scaling strategy on a virtual clock.

Strategies:

* :class:`HPAStrategy`: long-lived agents in a Deployment per queue, scaled by a model of
  the Kubernetes HorizontalPodAutoscaler as documented (and as its controller code does
  it): a sync every 15 s, 10 % tolerance, External metrics (``AverageValue``: desired =
  ceil(value / target); ``Value``: desired = ceil(value / target x current)), the largest
  proposal of all metrics, scale-up/-down stabilization windows (scale-down takes the
  largest recommendation within its window), behavior policies over their periods, and
  min/max replicas.  Metrics come from an adapter that polls Buildkite every
  ``adapter_poll`` seconds, so the HPA sees values up to one poll old.  Scale-down deletes
  pods the way a ReplicaSet ranks them (not ready first, then the most recently ready,
  then the newest); an agent whose pod is deleted while it runs a job gets SIGTERM,
  finishes the job if it can within ``grace`` seconds, else the job is interrupted
  (killed) and retried as a new job at once.
* :class:`StackgenStrategy`: stackgen's dispatcher in ``dispatch`` or ``exact`` mode, with
  the REAL :func:`stackgen.dispatcher.planner.plan_queue` deciding and the REAL
  :class:`stackgen.dispatcher.schedule.Schedule` timing it (polls every
  ``pollIntervalSeconds``, cooldown and pickup rechecks, and optionally a webhook that
  triggers a cycle when a job is scheduled, coalesced per queue by the same code).  Jobs
  get pods from a simulated Job controller; ``dispatch`` agents run
  ``--disconnect-after-job --disconnect-after-idle-timeout 60``; ``exact`` agents
  ``--acquire-job`` their one job.

The Buildkite side is shared: scheduled jobs wait in a FIFO per queue; an idle connected
agent of the queue takes the oldest after the pickup delay (``exact`` agents take theirs
at once).  Timing assumptions are in :class:`SimParams` and printed by
:func:`describe_params`.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from bench.lib.common import percentile
from bench.lib.trace import Trace
from stackgen.common.models import DispatchedQueue, DispatchSettings
from stackgen.dispatcher.act import CREATE_CONCURRENCY
from stackgen.dispatcher.planner import (
    CreateJob,
    DeleteJob,
    Demand,
    JobView,
    QueueMemory,
    WaitingJob,
    plan_queue,
)
from stackgen.dispatcher.schedule import Schedule
from stackgen.stack.model import HpaSettings, ScalingPolicy


class RateLimiter:
    """client-go's token bucket (QPS, burst) as a virtual scheduling rule (GCRA)."""

    def __init__(self, qps: float, burst: int) -> None:
        self.interval = 1.0 / qps
        self.tolerance = (burst - 1) * self.interval
        self.tat = -math.inf

    def reserve(self, wanted: float, n: int = 1) -> float:
        """When the last of ``n`` writes wanted at ``wanted`` may be sent."""
        sent = wanted
        for _ in range(n):
            tat = max(self.tat, wanted)
            sent = max(wanted, tat - self.tolerance)
            self.tat = max(tat, sent) + self.interval
        return sent


# ----------------------------------------------------------------------------- params


@dataclass(frozen=True)
class SimParams:
    """Timing of the simulated world (seconds).  Stated in the benchmark's output."""

    seed: int = 1
    #: Pod created -> agent connected: shift + lognormal(median, sigma), capped.
    pod_start_shift: float = 2.0
    pod_start_median: float = 6.0
    pod_start_sigma: float = 0.6
    pod_start_cap: float = 120.0
    #: A controller (Job, ReplicaSet) notices a change after U(lo, hi) ...
    controller_delay: tuple[float, float] = (0.05, 0.5)
    #: ... and spends this long per object it syncs, with this many workers (Job controller).
    controller_sync: float = 0.015
    controller_workers: int = 5
    #: Each kube-controller-manager controller (Job, ReplicaSet) writes through its own
    #: client, rate-limited to --kube-api-qps / --kube-api-burst (defaults 20 / 30).
    #: bench/e2e found this limit, not the dispatcher, behind exact mode's latency on a
    #: real control plane.
    kcm_qps: float = 20.0
    kcm_burst: int = 30
    #: An idle connected agent starts an assignable job after U(lo, hi) (its next ping).
    pickup: tuple[float, float] = (0.0, 2.0)
    #: Buildkite delivers the job.scheduled webhook U(lo, hi) after the job is scheduled.
    webhook_delay: tuple[float, float] = (0.2, 1.0)
    #: Round trips: Buildkite API, Kubernetes API (the dispatcher's calls are sequential).
    buildkite_rtt: float = 0.1
    kube_rtt: float = 0.01
    max_agents: int = 300
    sample_every: float = 60.0


def describe_params(p: SimParams) -> str:
    """The stated distributions and assumptions of the simulated world."""
    return "\n".join(
        [
            f"simulation (seed {p.seed}):",
            f"  pod start (pod created -> agent connected): {p.pod_start_shift:g} s + "
            f"lognormal(median {p.pod_start_median:g} s, sigma {p.pod_start_sigma:g}), "
            f"capped at {p.pod_start_cap:g} s",
            f"  controllers (Job, ReplicaSet) act U({p.controller_delay[0]:g}, "
            f"{p.controller_delay[1]:g}) s after a write, {p.controller_sync * 1000:g} ms per "
            f"object synced, {p.controller_workers} Job-controller workers; each controller's "
            f"writes (pod creates, events, status, finalizers) rate-limited to "
            f"{p.kcm_qps:g}/s, burst {p.kcm_burst} (kube-controller-manager's defaults)",
            f"  agent pickup (idle connected agent -> job started): U({p.pickup[0]:g}, "
            f"{p.pickup[1]:g}) s; --acquire-job agents start their job at once",
            f"  webhook delivery: U({p.webhook_delay[0]:g}, {p.webhook_delay[1]:g}) s after the "
            "job is scheduled",
            f"  API round trips: Buildkite {p.buildkite_rtt * 1000:g} ms, Kubernetes "
            f"{p.kube_rtt * 1000:g} ms (the dispatcher's calls in a cycle are sequential)",
            f"  maxAgents / maxReplicas {p.max_agents} per queue; writes counted: the "
            "scaler's own (HPA scale updates; dispatcher Job/Secret creates and deletes) and "
            "with controllers' pod creates/deletes, Deployment->ReplicaSet scale writes and "
            "TTL/GC deletes (status updates by controllers and kubelets are not counted)",
        ]
    )


# -------------------------------------------------------------------------- strategies


@dataclass(frozen=True)
class ScalingRules:
    """One direction of an HPA ``behavior``."""

    window: float
    policies: tuple[tuple[str, int, float], ...]  # (Pods|Percent, value, periodSeconds)
    select: str = "Max"


#: Kubernetes' defaults when an HPA sets no behavior.
K8S_DEFAULT_UP = ScalingRules(0, (("Pods", 4, 15), ("Percent", 100, 15)))
K8S_DEFAULT_DOWN = ScalingRules(300, (("Percent", 100, 15),))


def stackgen_rules(policy: ScalingPolicy) -> ScalingRules:
    """One direction of stackgen's HPA behavior (as compose/queues.py writes it)."""
    policies: list[tuple[str, int, float]] = []
    if policy.pods is not None:
        policies.append(("Pods", policy.pods, policy.period_seconds))
    if policy.percent is not None:
        policies.append(("Percent", policy.percent, policy.period_seconds))
    return ScalingRules(policy.stabilization_window_seconds, tuple(policies))


#: stackgen's defaults (stack.schema.json's queues[].hpa, through the stack model).
STACKGEN_UP = stackgen_rules(HpaSettings().scale_up)
STACKGEN_DOWN = stackgen_rules(HpaSettings().scale_down)


@dataclass(frozen=True)
class HPAStrategy:
    """Long-lived agents scaled by one HPA per queue."""

    name: str
    #: (metric, target type, target): metric is scheduled | runnable | busy_percent.
    metrics: tuple[tuple[str, str, float], ...]
    up: ScalingRules = K8S_DEFAULT_UP
    down: ScalingRules = K8S_DEFAULT_DOWN
    sync: float = 15.0
    tolerance: float = 0.1
    adapter_poll: float = 10.0
    grace: float = 30.0
    min_replicas: int = 1
    kind: str = "hpa"


@dataclass(frozen=True)
class StackgenStrategy:
    """stackgen's dispatcher: ``dispatch`` or ``exact`` mode, polling or webhook-triggered."""

    name: str
    mode: str
    webhook: bool = False
    buffer: int = 0
    poll_interval: float = 10.0
    cooldown_share: float = 0.5
    cooldown_timeout: float = 120.0
    pod_start_timeout: float = 300.0
    ttl_after_finished: float = 300.0
    idle_timeout: float = 60.0
    #: Job (and Secret) creates in flight at once: the loop's CREATE_CONCURRENCY for exact
    #: mode; dispatch mode creates one Job per queue per cycle.
    create_concurrency: int = CREATE_CONCURRENCY
    #: What-if: kube-controller-manager run with a higher --kube-api-qps/--kube-api-burst.
    kcm_qps: float | None = None
    kcm_burst: int | None = None
    what_if: bool = False
    kind: str = "stackgen"

    def queue_config(self, queue: str, max_agents: int) -> DispatchedQueue:
        return DispatchedQueue(
            name=queue,
            mode=self.mode,  # type: ignore[arg-type]
            template=f"buildkite-agent-{queue}",
            min_agents=0,
            max_agents=max_agents,
            buffer=self.buffer if self.mode == "dispatch" else 0,
            dispatch=DispatchSettings(
                poll_interval_seconds=self.poll_interval,
                cooldown_share=self.cooldown_share,
                cooldown_timeout_seconds=self.cooldown_timeout,
                active_deadline_seconds=10800,
                ttl_seconds_after_finished=int(self.ttl_after_finished),
                pod_start_timeout_seconds=self.pod_start_timeout,
            ),
        )


Strategy = HPAStrategy | StackgenStrategy

# ------------------------------------------------------------------------------ world


@dataclass
class Job:
    """A Buildkite job (one attempt)."""

    id: str
    queue: str
    scheduled_at: float
    duration: float
    visible_at: float
    retry_of: str | None = None
    state: str = "pending"  # pending, scheduled, assigned, running, done, interrupted
    agent: Agent | None = None
    started_at: float | None = None
    reserved: bool = False


@dataclass(eq=False)
class Agent:
    """An agent pod."""

    id: int
    queue: str
    created_at: float
    owner: KubeJob | None = None
    acquire: Job | None = None
    ready_at: float | None = None
    state: str = "starting"  # starting, idle, assigned, busy, exited
    jobs_run: int = 0
    idle_since: float | None = None
    job: Job | None = None
    terminating: bool = False
    idle_token: int = 0
    exited_at: float | None = None


@dataclass(eq=False)
class KubeJob:
    """One of the dispatcher's Kubernetes Jobs."""

    name: str
    queue: str
    dispatch_id: str
    created_at: float
    completions: int
    buildkite_job: str | None = None
    succeeded: int = 0
    failed: int = 0
    ready: int = 0
    finished_at: float | None = None
    deleted: bool = False
    pods: list[Agent] = field(default_factory=list)
    _view: JobView | None = None

    def view(self) -> JobView:
        if self._view is None:
            self._view = JobView(
                name=self.name,
                queue=self.queue,
                dispatch_id=self.dispatch_id,
                created_at=self.created_at,
                completions=self.completions,
                succeeded=self.succeeded,
                failed=self.failed,
                ready=self.ready,
                finished=self.finished_at is not None,
                buildkite_job=self.buildkite_job,
            )
        return self._view


@dataclass
class Stats:
    """What a run measured."""

    own_writes: int = 0
    controller_writes: int = 0
    interrupted: int = 0
    idle_seconds: float = 0.0
    cycles: int = 0
    cycle_writes: list[int] = field(default_factory=list)
    plan_calls: int = 0
    samples: list[tuple[float, int, int]] = field(default_factory=list)


class Sim:
    """One replay of a trace against one strategy."""

    def __init__(self, trace: Trace, strategy: Strategy, params: SimParams | None = None):
        self.trace = trace
        self.strategy = strategy
        self.p = params or SimParams()
        # Separate streams, so a strategy's choices do not shift the others' draws.
        self.rng_pod = random.Random(self.p.seed * 1000 + 1)
        self.rng_pick = random.Random(self.p.seed * 1000 + 2)
        self.rng_ctl = random.Random(self.p.seed * 1000 + 3)
        rng_hook = random.Random(self.p.seed * 1000 + 4)
        self.now = trace.params.start
        self.events: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self.seq = itertools.count()
        self.queues = trace.queues
        self.jobs: list[Job] = [
            Job(
                j.id,
                j.queue,
                j.scheduled_at,
                j.duration,
                j.scheduled_at + rng_hook.uniform(*self.p.webhook_delay),
            )
            for j in trace.jobs
        ]
        self.by_id = {j.id: j for j in self.jobs}
        self.waiting: dict[str, deque[Job]] = {q: deque() for q in self.queues}
        self.running: dict[str, int] = dict.fromkeys(self.queues, 0)
        self.idle: dict[str, deque[Agent]] = {q: deque() for q in self.queues}
        self.agents: list[Agent] = []
        self.alive: dict[str, set[Agent]] = {q: set() for q in self.queues}
        self.agent_ids = itertools.count(1)
        self.stats = Stats()
        self.retries = 0
        self.end = trace.params.end

    # ------------------------------------------------------------------ event loop

    def at(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self.events, (when, next(self.seq), fn, args))

    def run(self) -> dict[str, Any]:
        for job in self.jobs:
            self.at(job.scheduled_at, self.on_scheduled, job)
        self.at(self.now, self.sample)
        self.controller = (
            HPAController(self) if isinstance(self.strategy, HPAStrategy) else Dispatcher(self)
        )
        self.controller.start()
        # Run until every job is done (the day's tail drains past the trace's end).
        while self.events:
            when, _, fn, args = heapq.heappop(self.events)
            self.now = when
            fn(*args)
            if self.done():
                break
        self.finish()
        return self.report()

    def done(self) -> bool:
        return self.remaining == 0 and self.now >= self.end

    @property
    def remaining(self) -> int:
        return len(self.jobs) - self.completed

    completed = 0

    def sample(self) -> None:
        runnable = sum(len(self.waiting[q]) + self.running[q] for q in self.queues)
        pods = sum(len(self.alive[q]) for q in self.queues)
        self.stats.samples.append((self.now, runnable, pods))
        self.at(self.now + self.p.sample_every, self.sample)

    # --------------------------------------------------------------- Buildkite side

    def on_scheduled(self, job: Job) -> None:
        job.state = "scheduled"
        self.waiting[job.queue].append(job)
        self.controller.on_job(job)
        self.match(job.queue)

    def match(self, queue: str) -> None:
        """Idle agents (longest idle first) take the oldest scheduled jobs."""
        waiting, idle = self.waiting[queue], self.idle[queue]
        while waiting and idle:
            agent = idle.popleft()
            if agent.state != "idle" or agent.terminating:
                continue
            job = waiting.popleft()
            self.assign(agent, job, self.rng_pick.uniform(*self.p.pickup))

    def assign(self, agent: Agent, job: Job, delay: float) -> None:
        agent.state, agent.job = "assigned", job
        job.state, job.agent = "assigned", agent
        self.running[job.queue] += 1
        self.at(self.now + delay, self.on_start, agent, job)

    def on_start(self, agent: Agent, job: Job) -> None:
        if agent.idle_since is not None:
            self.stats.idle_seconds += self.now - agent.idle_since
            agent.idle_since = None
        agent.state = "busy"
        job.state, job.started_at = "running", self.now
        self.at(self.now + job.duration, self.on_job_end, agent, job)

    def on_job_end(self, agent: Agent, job: Job) -> None:
        if job.state != "running" or agent.job is not job:
            return  # interrupted meanwhile
        job.state = "done"
        self.completed += 1
        self.running[job.queue] -= 1
        agent.jobs_run += 1
        agent.job = None
        self.controller.on_job_done(agent, job)

    def interrupt(self, agent: Agent) -> None:
        """SIGKILL after the grace period: the job dies and is retried as a new job."""
        job = agent.job
        if job is None:
            return
        self.stats.interrupted += 1
        job.state = "interrupted"
        self.completed += 1  # the attempt is over; its retry is a new job
        self.running[job.queue] -= 1
        agent.job = None
        self.retries += 1
        retry = Job(
            f"{job.id}-retry{self.retries}",
            job.queue,
            self.now,
            job.duration,
            self.now,
            retry_of=job.id,
        )
        self.jobs.append(retry)
        self.by_id[retry.id] = retry
        self.on_scheduled(retry)

    # ------------------------------------------------------------------ agent pods

    def new_pod(
        self,
        queue: str,
        owner: KubeJob | None = None,
        acquire: Job | None = None,
        *,
        existing: bool = False,
    ) -> Agent:
        """A pod the controller creates now (``existing``: one running since before)."""
        agent = Agent(next(self.agent_ids), queue, self.now, owner=owner, acquire=acquire)
        self.agents.append(agent)
        self.alive[queue].add(agent)
        if existing:
            agent.created_at = self.now - 3600
            self.on_ready(agent)
            return agent
        self.stats.controller_writes += 1  # the controller's pod create
        p = self.p
        start = p.pod_start_shift + self.rng_pod.lognormvariate(
            math.log(p.pod_start_median), p.pod_start_sigma
        )
        self.at(self.now + min(start, p.pod_start_cap), self.on_ready, agent)
        return agent

    def on_ready(self, agent: Agent) -> None:
        if agent.state != "starting":
            return  # deleted while starting
        agent.ready_at = self.now
        if agent.owner is not None:
            agent.owner.ready += 1
            agent.owner._view = None
        if agent.acquire is not None:
            job = agent.acquire
            if job.state == "scheduled":
                self.waiting[job.queue].remove(job)
                agent.idle_since = None
                self.assign(agent, job, 0.0)
                return
            self.exit(agent)  # exit 27: the job is not there to acquire
            return
        agent.state = "idle"
        agent.idle_since = self.now
        self.idle[agent.queue].append(agent)
        self.controller.on_agent_idle(agent)
        self.match(agent.queue)

    def exit(self, agent: Agent) -> None:
        """The agent process ends (disconnect, SIGTERM when idle, or killed)."""
        if agent.state == "exited":
            return
        if agent.idle_since is not None:
            self.stats.idle_seconds += self.now - agent.idle_since
            agent.idle_since = None
        was_ready = agent.ready_at is not None
        agent.state, agent.exited_at = "exited", self.now
        self.alive[agent.queue].discard(agent)
        owner = agent.owner
        if owner is not None:
            if was_ready:
                owner.ready -= 1
            owner.succeeded += 1
            owner._view = None
            if owner.succeeded + owner.failed >= owner.completions:
                self.controller.on_kube_job_finished(owner)

    # ---------------------------------------------------------------------- report

    def finish(self) -> None:
        for queue in self.queues:
            for agent in list(self.alive[queue]):
                if agent.idle_since is not None:
                    self.stats.idle_seconds += self.now - agent.idle_since
                    agent.idle_since = None

    def report(self) -> dict[str, Any]:
        s = self.strategy
        jobs = [j for j in self.jobs if j.state == "done"]
        pod_wait, start_wait, visible_wait = [], [], []
        kube_job_wait, kube_job_visible = [], []
        for job in jobs:
            agent = job.agent
            assert agent is not None and job.started_at is not None
            pod_wait.append(max(0.0, agent.created_at - job.scheduled_at))
            visible_wait.append(max(0.0, agent.created_at - job.visible_at))
            start_wait.append(job.started_at - job.scheduled_at)
            if agent.owner is not None:  # stackgen's own part: scheduled -> Kubernetes Job
                kube_job_wait.append(max(0.0, agent.owner.created_at - job.scheduled_at))
                kube_job_visible.append(max(0.0, agent.owner.created_at - job.visible_at))
        n = len(self.trace.jobs)
        surplus = sum(1 for a in self.agents if a.jobs_run == 0)
        webhook = isinstance(s, StackgenStrategy) and s.webhook
        cycles = self.stats.cycle_writes
        return {
            "strategy": s.name,
            "kind": s.kind,
            "mode": getattr(s, "mode", "hpa"),
            "webhook": webhook,
            "what_if": getattr(s, "what_if", False),
            "poll_interval": getattr(s, "poll_interval", None),
            "jobs": n,
            "attempts_done": len(jobs),
            "wait_pod_p50": percentile(pod_wait, 50),
            "wait_pod_p95": percentile(pod_wait, 95),
            "wait_pod_max": max(pod_wait, default=math.nan),
            "wait_zero_share": sum(1 for w in pod_wait if w == 0) / max(1, len(pod_wait)),
            "wait_visible_p95": percentile(visible_wait, 95) if webhook else math.nan,
            "wait_visible_max": max(visible_wait, default=math.nan) if webhook else math.nan,
            "wait_job_p50": percentile(kube_job_wait, 50),
            "wait_job_p95": percentile(kube_job_wait, 95),
            "wait_job_visible_p95": percentile(kube_job_visible, 95) if webhook else math.nan,
            "start_p50": percentile(start_wait, 50),
            "start_p95": percentile(start_wait, 95),
            "start_max": max(start_wait, default=math.nan),
            "pods_created": len(self.agents),
            "surplus_pods": surplus,
            "surplus_share": surplus / n,
            "idle_agent_seconds": self.stats.idle_seconds,
            "own_writes": self.stats.own_writes,
            "all_writes": self.stats.own_writes + self.stats.controller_writes,
            "own_writes_per_job": self.stats.own_writes / n,
            "all_writes_per_job": (self.stats.own_writes + self.stats.controller_writes) / n,
            "cycles": self.stats.cycles,
            "max_writes_per_cycle": max(cycles, default=0),
            "mean_writes_per_cycle": sum(cycles) / len(cycles) if cycles else 0.0,
            "plan_calls": self.stats.plan_calls,
            "interrupted": self.stats.interrupted,
            "ended_at": self.now,
            "samples": self.stats.samples,
            "strategy_config": _jsonable(s),
        }


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {k: _jsonable(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if isinstance(obj, tuple | list):
        return [_jsonable(x) for x in obj]
    return obj


# -------------------------------------------------------------------------- the HPA


class HPAController:
    """Deployment + ReplicaSet + HPA + metrics adapter, per queue."""

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.rs_limiter = RateLimiter(sim.p.kcm_qps, sim.p.kcm_burst)
        self.s: HPAStrategy = sim.strategy  # type: ignore[assignment]
        self.replicas: dict[str, int] = {}
        self.snapshot: dict[str, dict[str, float]] = {}
        self.recommendations: dict[str, list[tuple[float, int]]] = {}
        self.up_events: dict[str, list[tuple[float, int]]] = {}
        self.down_events: dict[str, list[tuple[float, int]]] = {}

    def start(self) -> None:
        sim, s = self.sim, self.s
        offsets = random.Random(sim.p.seed * 1000 + 5)
        for queue in sim.queues:
            self.replicas[queue] = s.min_replicas
            self.recommendations[queue] = []
            self.up_events[queue], self.down_events[queue] = [], []
            for _ in range(s.min_replicas):  # the pool exists before the day starts
                sim.new_pod(queue, existing=True)
            self.snapshot[queue] = self.metrics(queue)
            sim.at(sim.now + offsets.uniform(0, s.adapter_poll), self.poll, queue)
            sim.at(sim.now + offsets.uniform(0, s.sync), self.sync, queue)

    # Buildkite-side hooks
    def on_job(self, job: Job) -> None:
        pass

    def on_agent_idle(self, agent: Agent) -> None:
        if agent.terminating:
            self.sim.exit(agent)

    def on_job_done(self, agent: Agent, job: Job) -> None:
        sim = self.sim
        if agent.terminating:
            sim.exit(agent)
            return
        agent.state, agent.idle_since = "idle", sim.now
        sim.idle[agent.queue].append(agent)
        sim.match(agent.queue)

    def on_kube_job_finished(self, job: KubeJob) -> None:
        pass

    # the metrics adapter
    def metrics(self, queue: str) -> dict[str, float]:
        sim = self.sim
        connected = [a for a in sim.alive[queue] if a.ready_at is not None]
        busy = sum(1 for a in connected if a.state in ("assigned", "busy"))
        scheduled = len(sim.waiting[queue])
        running = sim.running[queue]
        return {
            "scheduled": scheduled,
            "runnable": scheduled + running,
            "busy_percent": 100.0 * busy / len(connected) if connected else 0.0,
        }

    def poll(self, queue: str) -> None:
        self.snapshot[queue] = self.metrics(queue)
        if not self.sim.done():
            self.sim.at(self.sim.now + self.s.adapter_poll, self.poll, queue)

    # the HPA controller
    def sync(self, queue: str) -> None:
        sim, s = self.sim, self.s
        current = self.replicas[queue]
        values = self.snapshot[queue]
        proposals = []
        for metric, target_type, target in s.metrics:
            value = values[metric]
            if target_type == "AverageValue":
                ratio = value / (target * current) if current else math.inf
                proposal = current if abs(1 - ratio) <= s.tolerance else math.ceil(value / target)
            else:  # Value
                ratio = value / target
                if current == 0:
                    proposal = math.ceil(ratio)
                elif abs(1 - ratio) <= s.tolerance:
                    proposal = current
                else:
                    proposal = math.ceil(ratio * current)
            proposals.append(proposal)
        desired = max(proposals)
        desired = self.normalize(queue, current, desired)
        if desired != current:
            sim.stats.own_writes += 1  # update the Deployment's scale subresource
            sim.stats.controller_writes += 1  # Deployment controller -> ReplicaSet replicas
            (self.up_events if desired > current else self.down_events)[queue].append(
                (sim.now, abs(desired - current))
            )
            self.replicas[queue] = desired
            delay = sim.rng_ctl.uniform(*sim.p.controller_delay)
            sim.at(sim.now + delay, self.reconcile, queue)
        if not sim.done():
            sim.at(sim.now + s.sync, self.sync, queue)

    def normalize(self, queue: str, current: int, desired: int) -> int:
        """Stabilization windows, then behavior rate limits, then min/max."""
        now, s = self.sim.now, self.s
        recs = self.recommendations[queue]
        up_rec = down_rec = desired
        for at, rec in recs:
            if at > now - s.up.window:
                up_rec = min(up_rec, rec)
            if at > now - s.down.window:
                down_rec = max(down_rec, rec)
        recommendation = current
        if recommendation < up_rec:
            recommendation = up_rec
        if recommendation > down_rec:
            recommendation = down_rec
        horizon = max(s.up.window, s.down.window)
        recs[:] = [(at, r) for at, r in recs if at > now - horizon] + [(now, desired)]

        max_replicas = self.sim.p.max_agents
        if recommendation > current:
            limit = self._up_limit(queue, current)
            limit = max(limit, current)
            result = min(recommendation, limit, max_replicas)
        elif recommendation < current:
            limit = self._down_limit(queue, current)
            limit = min(limit, current)
            result = max(recommendation, limit, s.min_replicas)
        else:
            result = current
        return max(s.min_replicas, min(result, max_replicas))

    def _changes(self, events: list[tuple[float, int]], period: float) -> int:
        now = self.sim.now
        return sum(n for at, n in events if at > now - period)

    def _up_limit(self, queue: str, current: int) -> int:
        rules = self.s.up
        results = []
        for kind, value, period in rules.policies:
            start = (
                current
                - self._changes(self.up_events[queue], period)
                + self._changes(self.down_events[queue], period)
            )
            if kind == "Pods":
                results.append(start + int(value))
            else:
                results.append(math.ceil(start * (1 + value / 100)))
        return max(results) if rules.select == "Max" else min(results)

    def _down_limit(self, queue: str, current: int) -> int:
        rules = self.s.down
        results = []
        for kind, value, period in rules.policies:
            start = (
                current
                + self._changes(self.down_events[queue], period)
                - self._changes(self.up_events[queue], period)
            )
            if kind == "Pods":
                results.append(start - int(value))
            else:
                results.append(int(start * (1 - value / 100)))
        return min(results) if rules.select == "Max" else max(results)

    # the ReplicaSet controller
    def reconcile(self, queue: str) -> None:
        sim = self.sim
        pods = [a for a in sim.alive[queue] if not a.terminating]
        want = self.replicas[queue]
        if len(pods) < want:
            for index in range(want - len(pods)):
                # slow-start batches 1, 2, 4, ...: batch k starts after k API round trips
                batch = int(math.log2(index + 1))
                wanted = sim.now + batch * sim.p.controller_sync
                go = self.rs_limiter.reserve(wanted, 2)  # the pod create and its event
                sim.at(go, self._create, queue)
        elif len(pods) > want:
            for agent in sorted(pods, key=self._deletion_rank)[: len(pods) - want]:
                self._delete(agent)

    def _create(self, queue: str) -> None:
        self.sim.new_pod(queue)

    @staticmethod
    def _deletion_rank(agent: Agent) -> tuple[int, float, float]:
        # ReplicaSet ranking: not ready before ready; then ready for less time (newer
        # ready first); then newer creation first.
        ready = agent.ready_at is not None
        return (1 if ready else 0, -(agent.ready_at or 0.0), -agent.created_at)

    def _delete(self, agent: Agent) -> None:
        sim = self.sim
        sim.stats.controller_writes += 1  # the pod delete
        self.rs_limiter.reserve(sim.now, 2)  # the delete and its event
        agent.terminating = True
        if agent.state in ("starting", "idle"):
            sim.exit(agent)
            return
        # busy (or about to start its job): SIGTERM, finish within the grace period or die
        job = agent.job
        assert job is not None
        started = job.started_at if job.started_at is not None else sim.now
        left = started + job.duration - sim.now
        if left > self.s.grace:
            sim.at(sim.now + self.s.grace, self._kill, agent, job)

    def _kill(self, agent: Agent, job: Job) -> None:
        if agent.job is job and agent.state != "exited":
            self.sim.interrupt(agent)
            self.sim.exit(agent)


# ------------------------------------------------------------------- the dispatcher


class Wakeup:
    """One pending wake-up of a kind: an earlier request replaces a later one."""

    def __init__(self, sim: Sim, fire: Callable[[], None]) -> None:
        self.sim = sim
        self.fire = fire
        self.at: float | None = None

    def request(self, at: float) -> None:
        if self.at is not None and self.at <= at:
            return
        self.at = at
        self.sim.at(at, self._run, at)

    def _run(self, at: float) -> None:
        if self.at != at:
            return  # superseded by an earlier request
        self.at = None
        self.fire()


class Dispatcher:
    """stackgen's dispatcher loop around the real planner and the real timing.

    When a queue is polled, rechecked after a cooldown or a pickup, and when webhook
    deliveries become cycles (coalesced per queue) is decided by the loop's own
    :class:`stackgen.dispatcher.schedule.Schedule`, driven here on the virtual clock.
    """

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.s: StackgenStrategy = sim.strategy  # type: ignore[assignment]
        self.configs = {q: self.s.queue_config(q, sim.p.max_agents) for q in sim.queues}
        self.memory = {q: QueueMemory() for q in sim.queues}
        self.kube_jobs: dict[str, dict[str, KubeJob]] = {q: {} for q in sim.queues}
        self.schedule = Schedule(self.configs, start=sim.now)
        self.ids = itertools.count(1)
        self.poll_wakeup = Wakeup(sim, self._poll)
        self.trigger_wakeup = Wakeup(sim, self._triggered_cycle)
        self.controller_free = [0.0] * sim.p.controller_workers
        self.job_limiter = RateLimiter(
            self.s.kcm_qps or sim.p.kcm_qps, self.s.kcm_burst or sim.p.kcm_burst
        )

    def start(self) -> None:
        self._schedule_poll()

    # Buildkite-side hooks
    def on_job(self, job: Job) -> None:
        if self.s.webhook:
            self.sim.at(job.visible_at, self.on_webhook, job.queue)

    def on_agent_idle(self, agent: Agent) -> None:
        if self.s.mode == "dispatch":
            agent.idle_token += 1
            self.sim.at(
                self.sim.now + self.s.idle_timeout, self._idle_timeout, agent, agent.idle_token
            )

    def on_job_done(self, agent: Agent, job: Job) -> None:
        self.sim.exit(agent)  # --disconnect-after-job (and --acquire-job)

    def on_kube_job_finished(self, job: KubeJob) -> None:
        job.finished_at = self.sim.now
        job._view = None
        # The Job controller's writes as its pods finish: a tracking-finalizer removal per
        # pod, the status update and the Completed event.
        self.job_limiter.reserve(self.sim.now, len(job.pods) + 2)
        self.sim.at(self.sim.now + self.s.ttl_after_finished, self._ttl_delete, job)

    def _idle_timeout(self, agent: Agent, token: int) -> None:
        if agent.state == "idle" and agent.idle_token == token:
            self.sim.exit(agent)

    def _ttl_delete(self, job: KubeJob) -> None:
        if job.deleted:
            return
        job.deleted = True
        self.kube_jobs[job.queue].pop(job.name, None)
        # TTL controller deletes the Job; the garbage collector its pods (and Secret).
        self.sim.stats.controller_writes += 1 + len(job.pods) + (1 if job.buildkite_job else 0)

    # triggers: the loop's coalescing (one webhook cycle per queue per TRIGGER_GAP)
    def on_webhook(self, queue: str) -> None:
        self.schedule.trigger((queue,))
        self._schedule_trigger()

    def _schedule_trigger(self) -> None:
        at = self.schedule.pending_trigger_at()
        if at is not None:
            self.trigger_wakeup.request(max(self.sim.now, at))

    def _triggered_cycle(self) -> None:
        ready = self.schedule.ready_triggers(self.sim.now)
        if ready:
            self.cycle(sorted(ready), announced=True)
        self._schedule_trigger()

    def _schedule_poll(self) -> None:
        self.poll_wakeup.request(min(self.schedule.next_due.values()))

    def _poll(self) -> None:
        if self.schedule.any_due(self.sim.now):
            self.cycle(self.schedule.due(self.sim.now))
        if not self.sim.done():
            self._schedule_poll()

    # one cycle of the loop
    def cycle(self, queues: list[str], *, announced: bool = False) -> None:
        sim, p = self.sim, self.sim.p
        sim.stats.cycles += 1
        dispatch_id = f"{next(self.ids):08x}"
        writes = 0
        # Demand: one metrics call (dispatch) or a scheduled-jobs call per queue (exact),
        # then the Job and Pod lists; the Job template is read before creating.  The loop
        # runs its lanes at once (stackgen.dispatcher.lanes): every dispatch queue waits
        # for the one metrics call and is acted on in turn; each exact queue is a lane of
        # its own, so its list and its creates start when the cycle does.
        lane_start = sim.now + p.buildkite_rtt + 2 * p.kube_rtt
        clock = lane_start
        for queue in queues:
            self.schedule.polled(queue, sim.now)
        for queue in queues:
            if self.s.mode == "exact":
                clock = lane_start
            cfg = self.configs[queue]
            if self.s.mode == "exact":
                jobs = tuple(
                    WaitingJob(j.id, j.scheduled_at) for j in sim.waiting[queue] if not j.reserved
                )
                demand = Demand(scheduled=len(sim.waiting[queue]), jobs=jobs)
            else:
                demand = Demand(scheduled=len(sim.waiting[queue]), running=sim.running[queue])
            views = [j.view() for j in self.kube_jobs[queue].values()]
            sim.stats.plan_calls += 1
            plan = plan_queue(
                cfg, demand, views, self.memory[queue], sim.now, dispatch_id, announced=announced
            )
            self.schedule.planned(cfg, demand, plan, sim.now)  # cooldown, pickup rechecks
            self.schedule.succeeded(queue)  # no faults in the simulated world
            creates = [a for a in plan.actions if isinstance(a, CreateJob)]
            for action in plan.actions:
                if isinstance(action, DeleteJob):
                    clock += p.kube_rtt
                    writes += 1
                    self._delete(queue, action.name)
            if not creates:
                continue
            clock += p.kube_rtt  # get the CronJob template
            if self.s.mode == "exact":
                clock += 2 * p.buildkite_rtt  # batch reserve + job-acquisition tokens
                by_id = {j.id: j for j in sim.waiting[queue]}
                for action in creates:
                    job = by_id.get(action.buildkite_job or "")
                    if job is not None:
                        job.reserved = True
            step = p.kube_rtt / max(1, self.s.create_concurrency)
            for action in creates:
                clock += step
                writes += 1
                kube_job = KubeJob(
                    action.name,
                    queue,
                    action.dispatch_id,
                    clock,
                    action.parallelism,
                    buildkite_job=action.buildkite_job,
                )
                self.kube_jobs[queue][kube_job.name] = kube_job
                if self.s.mode == "exact":
                    clock += step  # the job-acquisition-token Secret
                    writes += 1
                self._job_controller(kube_job, clock)
            # Exact mode then extends the created jobs' reservations (one more Buildkite
            # call, after the Jobs exist: it delays none of them) and, once per poll
            # period while Jobs wait for their pods, asks for canceled jobs (none here).
        sim.stats.own_writes += writes
        sim.stats.cycle_writes.append(writes)
        self._schedule_poll()

    def _delete(self, queue: str, name: str) -> None:
        job = self.kube_jobs[queue].pop(name, None)
        if job is None or job.deleted:
            return
        job.deleted = True
        self.sim.stats.controller_writes += len(job.pods)  # GC deletes the pods
        for agent in job.pods:
            if agent.state == "starting":
                self.sim.exit(agent)

    def _job_controller(self, job: KubeJob, created: float) -> None:
        """Queue the Job for one of the controller's workers; it creates the pods."""
        p = self.sim.p
        noticed = created + self.sim.rng_ctl.uniform(*p.controller_delay)
        worker = min(range(len(self.controller_free)), key=self.controller_free.__getitem__)
        start = max(noticed, self.controller_free[worker])
        batches = math.ceil(math.log2(job.completions + 1))
        self.controller_free[worker] = start + p.controller_sync * max(1, batches)
        self.job_limiter.reserve(start)  # the Job's status update
        for index in range(job.completions):
            batch = int(math.log2(index + 1))
            wanted = start + (batch + 1) * p.controller_sync
            go = self.job_limiter.reserve(wanted, 2)  # the pod create and its event
            self.sim.at(go, self._create_pod, job)

    def _create_pod(self, job: KubeJob) -> None:
        if job.deleted:
            return
        acquire = None
        if job.buildkite_job is not None:
            acquire = self.sim.by_id[job.buildkite_job]
        agent = self.sim.new_pod(job.queue, owner=job, acquire=acquire)
        job.pods.append(agent)


# ----------------------------------------------------------------------- convenience


def run(trace: Trace, strategy: Strategy, params: SimParams | None = None) -> dict[str, Any]:
    """Replay ``trace`` against ``strategy``; return the figures."""
    return Sim(trace, strategy, params).run()


def default_strategies(poll_interval: float = 10.0, buffer: int = 2) -> list[Strategy]:
    """The rows of bench/dispatch."""
    proto = HPAStrategy(
        "HPA: early agent-stack-k8s prototype",
        metrics=(("scheduled", "AverageValue", 1.0), ("busy_percent", "Value", 70.0)),
        up=K8S_DEFAULT_UP,
        down=K8S_DEFAULT_DOWN,
        grace=30.0,
    )
    ours_hpa = HPAStrategy(
        "HPA: stackgen settings",
        metrics=(("runnable", "AverageValue", 1.0), ("busy_percent", "Value", 100.0)),
        up=STACKGEN_UP,
        down=STACKGEN_DOWN,
        grace=3600.0,
    )
    poll = f"poll {poll_interval:g} s"
    base = StackgenStrategy("", "dispatch", poll_interval=poll_interval, buffer=0)
    exact = replace(base, mode="exact")
    return [
        proto,
        ours_hpa,
        replace(base, name=f"stackgen dispatch, {poll}"),
        replace(base, name=f"stackgen dispatch, {poll}, buffer {buffer}", buffer=buffer),
        replace(base, name="stackgen dispatch, webhook", webhook=True),
        replace(
            base, name=f"stackgen dispatch, webhook, buffer {buffer}", webhook=True, buffer=buffer
        ),
        # (Webhook-triggered cycles skip the cooldown already; polled ones keep it.)
        replace(
            base, name=f"what-if: dispatch, {poll}, no cooldown", cooldown_share=0.0, what_if=True
        ),
        replace(exact, name=f"stackgen exact, {poll}"),
        replace(exact, name="stackgen exact, webhook", webhook=True),
        replace(
            exact,
            name="what-if: exact, webhook, creates one by one",
            webhook=True,
            create_concurrency=1,
            what_if=True,
        ),
        replace(
            base,
            name="what-if: dispatch, webhook, kcm qps 200/400",
            webhook=True,
            kcm_qps=200.0,
            kcm_burst=400,
            what_if=True,
        ),
        replace(
            exact,
            name="what-if: exact, webhook, kcm qps 200/400",
            webhook=True,
            kcm_qps=200.0,
            kcm_burst=400,
            what_if=True,
        ),
    ]
