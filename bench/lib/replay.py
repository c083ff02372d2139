"""Replay a trace end to end against the real ``stackgen dispatcher``, and the same in the simulator.

One *row* is one dispatcher mode (``dispatch`` or ``exact``), polling or webhook-triggered.
:func:`run_row` replays a trace (bench/lib/trace.py) on a running kwok cluster:

1. the fake Buildkite as a process (bench/lib/e2e.py), one queue per trace queue;
2. a stack built by ``stackgen build`` and applied, and ``stackgen dispatcher`` run as a
   real process from the generated config (``tests/support/dispatcher_process.py``'s
   ``build_stack`` and ``DispatcherProcess``);
3. the trace's jobs added to the fake at their scheduled times (one control call per queue
   and moment), and in webhook rows a signed ``job.scheduled`` webhook sent to the
   dispatcher for each job as soon as it exists (``send_webhook``);
4. simulated agents (:class:`Agents`): kwok pods run no containers, so when one of the
   dispatcher's pods is Running the harness is its buildkite-agent.  Exact-mode agents
   acquire their own job at once (exit 27 when refused); dispatch-mode agents ping
   every ``pickup[1]`` seconds (the first ping U(pickup) after connecting), take the oldest
   scheduled job of their queue, and exit when idle for the pod's
   ``--disconnect-after-idle-timeout``.  An agent exits after its job's trace duration;
   the pod is annotated and kwok completes it (tests/support/kwok-stages.yaml);
5. figures from watches on Jobs and pods (first seen, Running), the agents' records, the
   fake's request log, the dispatcher's ``/metrics`` and its JSON log.

The row ends once every job has started and no agent is idle (or pod still starting).
:func:`simulate` then replays the *same* schedule (the times the fake stamped on each job,
the times each webhook was sent) in bench/lib/sim.py with the same settings, the pod start
latency and API round trips measured in the run, so the two are comparable figure by figure.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import random
import re
import ssl
import statistics
import threading
import time
import types
import urllib.request
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.lib import sim
from bench.lib.common import percentile
from bench.lib.e2e import Processes, Seen, Watcher, http, start_fake, summary, wait_until
from bench.lib.trace import Trace, TraceJob
from stackgen.common.models import DispatchSettings

DISPATCH_LABEL = "stackgen.io/dispatch-id"
BUILDKITE_JOB_LABEL = "stackgen.io/buildkite-job"
QUEUE_LABEL = "stackgen.io/queue"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
IDLE_FLAG = "--disconnect-after-idle-timeout"


# ---------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """The dispatcher's and the agents' settings of a replay, shared with the simulator.

    A replay runs ``speed`` times faster than the trace: arrivals and run times are
    divided by ``speed``, and so are stackgen's default intervals (poll 10 s, cooldown
    timeout 120 s, pod start timeout 300 s, TTL 300 s) and the agents' ping spread
    (U(0, 2) s), rounded to what the stack schema accepts.  Fixed latencies (API calls,
    controllers, the loop's own constants) are not scaled.
    """

    speed: float
    poll_interval: int
    cooldown_share: float
    cooldown_timeout: int
    pod_start_timeout: int
    ttl_after_finished: int
    #: The agents' --disconnect-after-idle-timeout: build_stack's stack.yaml sets 5 (the
    #: schema's minimum); the simulated agents read it from their pods.
    idle_timeout: int
    pickup: tuple[float, float]
    max_agents: int = 300

    @classmethod
    def scaled(cls, speed: float) -> Settings:
        d = DispatchSettings()  # stackgen's defaults (the schema's)
        return cls(
            speed=speed,
            poll_interval=max(1, round(d.poll_interval_seconds / speed)),
            cooldown_share=d.cooldown_share,
            cooldown_timeout=max(1, round(d.cooldown_timeout_seconds / speed)),
            pod_start_timeout=max(10, round(d.pod_start_timeout_seconds / speed)),
            ttl_after_finished=max(0, round(d.ttl_seconds_after_finished / speed)),
            idle_timeout=5,
            pickup=(0.0, round(2.0 / speed, 3)),
        )

    def describe(self) -> str:
        return (
            f"replayed {self.speed:g}x faster than the trace; per queue: pollIntervalSeconds "
            f"{self.poll_interval}, cooldown share {self.cooldown_share:g} / timeoutSeconds "
            f"{self.cooldown_timeout}, podStartTimeoutSeconds {self.pod_start_timeout}, "
            f"ttlSecondsAfterFinished {self.ttl_after_finished}, maxAgents {self.max_agents}, "
            f"buffer 0; agents: --disconnect-after-idle-timeout {self.idle_timeout}, ping "
            f"every {self.pickup[1]:g} s (first ping U({self.pickup[0]:g}, {self.pickup[1]:g}) s "
            "after connecting)"
        )

    def queues_yaml(self, queues: list[str], mode: str, workload: str = "job") -> str:
        lines = ["queues:"]
        for queue in queues:
            lines += [
                f"  - name: {queue}",
                f"    mode: {mode}",
                f"    maxAgents: {self.max_agents}",
                "    buffer: 0",
                "    dispatch:",
                f"      pollIntervalSeconds: {self.poll_interval}",
                f"      ttlSecondsAfterFinished: {self.ttl_after_finished}",
                f"      podStartTimeoutSeconds: {self.pod_start_timeout}",
                f"      cooldown: {{share: {self.cooldown_share}, "
                f"timeoutSeconds: {self.cooldown_timeout}}}",
                f"      workload: {workload}",
            ]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Row:
    mode: str  # dispatch | exact
    webhook: bool
    #: job: the dispatcher creates Jobs; pod: it creates the agent pods itself.
    workload: str = "job"

    @property
    def key(self) -> str:
        suffix = "-pod" if self.workload == "pod" else ""
        return f"{self.mode}-{'webhook' if self.webhook else 'poll'}{suffix}"

    def name(self, settings: Settings) -> str:
        how = "webhook" if self.webhook else f"poll {settings.poll_interval} s"
        pods = ", pods" if self.workload == "pod" else ""
        return f"stackgen {self.mode}, {how}{pods}"

    def strategy(self, settings: Settings) -> sim.StackgenStrategy:
        return sim.StackgenStrategy(
            self.name(settings),
            self.mode,
            webhook=self.webhook,
            buffer=0,
            poll_interval=float(settings.poll_interval),
            cooldown_share=settings.cooldown_share,
            cooldown_timeout=float(settings.cooldown_timeout),
            pod_start_timeout=float(settings.pod_start_timeout),
            ttl_after_finished=float(settings.ttl_after_finished),
            idle_timeout=float(settings.idle_timeout),
            # Pod rows: no Job controller queue; the sim's closest world is that queue
            # without its client rate limit (its per-object sync delay stays).
            kcm_qps=1e6 if self.workload == "pod" else None,
            kcm_burst=10**6 if self.workload == "pod" else None,
        )


ROWS = (
    Row("dispatch", False),
    Row("dispatch", True),
    Row("exact", False),
    Row("exact", True),
    Row("dispatch", False, "pod"),
    Row("dispatch", True, "pod"),
    Row("exact", False, "pod"),
    Row("exact", True, "pod"),
)


def scale_trace(tr: Trace, start: float, end: float, speed: float) -> Trace:
    """The jobs scheduled in [start, end), from time 0, ``speed`` times faster."""
    jobs = [
        TraceJob(
            j.id,
            j.queue,
            round((j.scheduled_at - start) / speed, 4),
            round(j.duration / speed, 4),
            j.build,
            j.wave,
        )
        for j in tr.jobs
        if start <= j.scheduled_at < end
    ]
    params = replace(tr.params, start=0.0, end=(end - start) / speed)
    return Trace(params, jobs)


def burst_trace(tr: Trace, n: int, duration: float = 5.0) -> Trace:
    """``n`` jobs scheduled together 1 s into the replay on the first queue of ``tr``."""
    queue = tr.queues[0]
    jobs = [TraceJob(f"burst-{i:04d}", queue, 1.0, duration, 0, 1) for i in range(n)]
    return Trace(replace(tr.params, start=0.0, end=1.0 + duration), jobs)


# ---------------------------------------------------------------------- agents


@dataclass
class Agent:
    """One agent pod, as the simulated buildkite-agent in it lived."""

    pod: str
    queue: str
    exact_job: str | None
    created: float  # pod first seen
    connected: float  # pod Running (the agent registers)
    job: str | None = None
    started: float | None = None
    exited: float | None = None
    exit_code: int | None = None


class Agents:
    """Simulated buildkite-agents in the dispatcher's pods (see the module docstring)."""

    def __init__(
        self,
        fake_url: str,
        exit_pod: Callable[[str, int], None],
        *,
        pickup: tuple[float, float],
        idle_timeout: float,
        seed: int = 1,
    ) -> None:
        self.fake_url = fake_url
        self.exit_pod = exit_pod
        self.pickup = pickup
        self.idle_timeout = idle_timeout
        self.rng = random.Random(seed)
        self.durations: dict[str, float] = {}
        self.waiting: dict[str, deque[str]] = defaultdict(deque)  # queue -> job uuids, oldest first
        self.agents: dict[str, Agent] = {}
        self.started: dict[str, tuple[str, float]] = {}  # job uuid -> (pod, when)
        self.errors: list[str] = []
        self._events: list[tuple[float, int, str, str]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._stop = False
        self._exits = ThreadPoolExecutor(max_workers=4, thread_name_prefix="agent-exit")
        self._thread = threading.Thread(target=self._loop, daemon=True, name="agents")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(10)
        self._exits.shutdown(wait=True)

    # inputs
    def add_job(self, uuid: str, queue: str, duration: float) -> None:
        with self._cv:
            self.durations[uuid] = duration
            self.waiting[queue].append(uuid)

    def on_pod(self, pod: Seen) -> None:
        """Watch callback: a pod that is Running for the first time is a connected agent."""
        if pod.running_at is None or pod.name in self.agents or pod.phase != "Running":
            return
        queue = pod.labels.get(QUEUE_LABEL, "")
        with self._cv:
            if pod.name in self.agents:
                return
            self.agents[pod.name] = Agent(
                pod.name, queue, pod.labels.get(BUILDKITE_JOB_LABEL), pod.seen_at, pod.running_at
            )
            self._push(time.time(), "connect", pod.name)

    # state
    def idle(self) -> int:
        with self._cv:
            return sum(1 for a in self.agents.values() if a.started is None and a.exited is None)

    def snapshot(self) -> dict[str, Agent]:
        with self._cv:
            return {k: replace(v) for k, v in self.agents.items()}

    # the event loop
    def _push(self, when: float, kind: str, pod: str) -> None:
        heapq.heappush(self._events, (when, next(self._seq), kind, pod))
        self._cv.notify()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and (not self._events or self._events[0][0] > time.time()):
                    timeout = self._events[0][0] - time.time() if self._events else None
                    self._cv.wait(timeout)
                if self._stop:
                    return
                _, _, kind, pod = heapq.heappop(self._events)
                agent = self.agents[pod]
            try:
                getattr(self, f"_on_{kind}")(agent)
            except Exception as err:  # keep the other agents going
                self.errors.append(f"{kind} {pod}: {err!r}")

    def _on_connect(self, agent: Agent) -> None:
        if agent.exact_job:  # --acquire-job: this job or exit 27
            if not self._take(agent, agent.exact_job):
                self._exit(agent, 27)
            return
        with self._cv:
            self._push(agent.connected + self.idle_timeout, "idle_timeout", agent.pod)
            self._push(time.time() + self.rng.uniform(*self.pickup), "ping", agent.pod)

    def _free(self, agent: Agent) -> bool:
        """Whether ``agent`` is connected without a job (it takes one when it pings)."""
        return agent.started is None and agent.exited is None

    def _took(self, agent: Agent) -> None:
        """Called once ``agent`` has started the job it took at a ping."""

    def _on_ping(self, agent: Agent) -> None:
        if not self._free(agent):
            return
        while True:
            with self._cv:
                queue = self.waiting[agent.queue]
                uuid = queue.popleft() if queue else None
            if uuid is None:
                with self._cv:
                    self._push(time.time() + self.pickup[1], "ping", agent.pod)
                return
            if self._take(agent, uuid):
                self._took(agent)
                return

    def _on_idle_timeout(self, agent: Agent) -> None:
        if agent.started is None and agent.exited is None:
            self._exit(agent, 0)

    def _on_finish(self, agent: Agent) -> None:
        status, body = http("POST", f"{self.fake_url}/_fake/jobs/{agent.job}/finish", {})
        if status != 200:
            self.errors.append(f"finish {agent.job}: {status} {body}")
        self._exit(agent, 0)

    def _take(self, agent: Agent, uuid: str) -> bool:
        status, body = http("POST", f"{self.fake_url}/_fake/jobs/{uuid}/acquire")
        if status != 200 or body["acquire_status"] != 200:
            if not agent.exact_job:
                self.errors.append(f"acquire {uuid} by {agent.pod}: {status} {body}")
            return False
        now = time.time()
        with self._cv:
            agent.job, agent.started = uuid, now
            self.started[uuid] = (agent.pod, now)
            self._push(now + self.durations.get(uuid, 0.0), "finish", agent.pod)
        status, body = http("POST", f"{self.fake_url}/_fake/jobs/{uuid}/start")
        if status != 200:
            self.errors.append(f"start {uuid}: {status} {body}")
        return True

    def _exit(self, agent: Agent, code: int) -> None:
        with self._cv:
            agent.exited, agent.exit_code = time.time(), code
        self._exits.submit(self._annotate, agent.pod, code)

    def _annotate(self, pod: str, code: int) -> None:
        try:
            self.exit_pod(pod, code)
        except Exception as err:  # the pod may be gone already
            self.errors.append(f"exit {pod}: {err!r}")


# ---------------------------------------------------------------------- one row


@dataclass
class RowRun:
    """Everything one end-to-end row recorded (times are host clock seconds)."""

    row: Row
    settings: Settings
    namespace: str
    replay_start: float
    replay_end: float
    ended: float
    jobs: dict[str, TraceJob]  # fake uuid -> trace job
    scheduled: dict[str, float]  # fake uuid -> scheduled_at stamped by the fake
    visible: dict[str, float]  # fake uuid -> webhook sent (webhook rows)
    webhook_status: Counter[int]
    agents: dict[str, Agent]
    kube_jobs: dict[str, Seen]
    pods: dict[str, Seen]
    metrics: dict[str, float]
    cycles: list[dict[str, Any]]
    buildkite_calls: Counter[str]
    buildkite_rtt: float
    kube_rtt: float
    idle_timeout: float
    timed_out: bool
    errors: list[str] = field(default_factory=list)
    dispatcher_log: str = ""
    #: kube-controller-manager's /metrics when the replay started and when the row ended.
    controller_before: dict[str, float] = field(default_factory=dict)
    controller_after: dict[str, float] = field(default_factory=dict)
    #: kube-scheduler's /metrics at the same two moments (its client binds every pod).
    scheduler_before: dict[str, float] = field(default_factory=dict)
    scheduler_after: dict[str, float] = field(default_factory=dict)
    #: CPU seconds (user + system) the dispatcher process used, start-up included.
    dispatcher_cpu: float = math.nan
    #: Every request the fake Buildkite answered: (route, its clock when it answered).
    buildkite_requests: list[tuple[str, float]] = field(default_factory=list)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition: ``name{labels}`` -> value (comments dropped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for key, value in metrics.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def scrape(url: str) -> dict[str, float]:
    """A component's /metrics on 127.0.0.1 (self-signed certificate: not verified)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(url, timeout=10, context=context) as resp:
        return parse_metrics(resp.read().decode())


WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def controller_figures(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """A component's API requests in the row and its client rate limiter's waits (for
    kube-controller-manager, also the Job controller's pod creates)."""
    if not after:
        return {}

    def delta(name: str, **labels: str) -> float:
        return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)

    requests = delta("rest_client_requests_total")
    writes = sum(delta("rest_client_requests_total", method=m) for m in WRITE_METHODS)
    limiter = "rest_client_rate_limiter_duration_seconds"
    count = delta(f"{limiter}_count")
    waited = count - delta(f"{limiter}_bucket", le="0.1")
    return {
        "requests": requests,
        "writes": writes,
        "rate_limited_over_100ms": waited,
        "rate_limiter_wait_s": round(delta(f"{limiter}_sum"), 3),
        "pods_created": delta("job_controller_job_pods_creation_total"),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median_rtt(call: Callable[[], Any], n: int = 15) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def add_jobs_on_time(
    fake_url: str,
    tr: Trace,
    added: Callable[[str, TraceJob], None],
    log: Callable[[str], None],
) -> tuple[float, float]:
    """Add the trace's jobs to the fake, each at t0 + its ``scheduled_at``.

    Jobs due together are added in one control call per queue and build; ``added(uuid,
    job)`` is called for each as soon as the fake has it.  Returns t0 and the time the
    last job was added (host clock).
    """
    jobs = sorted(tr.jobs, key=lambda j: (j.scheduled_at, j.id))
    log(f"replaying {len(jobs)} jobs over {tr.params.end:.0f} s")
    t0 = time.time() + 0.5
    i = 0
    while i < len(jobs):
        delay = t0 + jobs[i].scheduled_at - time.time()
        if delay > 0:
            time.sleep(delay)
        now = time.time()
        groups: dict[tuple[str, int], list[TraceJob]] = defaultdict(list)
        while i < len(jobs) and t0 + jobs[i].scheduled_at <= now + 0.002:
            groups[(jobs[i].queue, jobs[i].build)].append(jobs[i])
            i += 1
        for (queue, build), group in groups.items():
            status, body = http(
                "POST",
                f"{fake_url}/_fake/jobs",
                {
                    "queue": queue,
                    "count": len(group),
                    "fields": {"pipeline_slug": "monorepo", "build_number": build},
                },
            )
            if status != 201:
                raise RuntimeError(f"adding jobs answered {status}: {body}")
            for uuid, job in zip(body["uuids"], group, strict=True):
                added(uuid, job)
    replay_end = time.time()
    log(f"all {len(jobs)} jobs added ({replay_end - t0:.1f} s)")
    return t0, replay_end


def run_row(
    row: Row,
    tr: Trace,
    settings: Settings,
    *,
    cluster: Any,  # tests.support.cluster.Cluster
    procs: Processes,
    work: Path,
    log: Callable[[str], None],
    timeout: float = 120.0,
    seed: int = 1,
    controller_metrics: Callable[[], dict[str, float]] | None = None,
    scheduler_metrics: Callable[[], dict[str, float]] | None = None,
) -> RowRun:
    """Replay ``tr`` through one dispatcher mode on ``cluster``; see the module docstring."""
    from tests.support.dispatcher_process import TOKEN, WEBHOOK, DispatcherProcess, build_stack
    from tests.support.fake_buildkite import FakeJob, send_webhook

    work.mkdir(parents=True, exist_ok=True)
    queues = tr.queues
    _, fake_url = start_fake(
        procs,
        "fake",
        token=TOKEN,
        queues=queues,
        log_path=work / "fake.log",
        # The metrics endpoint's poll hint: the dispatcher polls no faster than it says.
        extra=["--poll-duration", str(settings.poll_interval)],
    )
    log(f"fake Buildkite at {fake_url}")
    namespace = f"bench-{row.key}"
    dispatcher_yaml = (
        "dispatcher:\n  webhook:\n    enabled: true\n    token: {file: secrets/webhook}\n"
        if row.webhook
        else ""
    )
    stack = build_stack(
        cluster,
        work,
        types.SimpleNamespace(endpoint=f"{fake_url}/v3"),  # build_stack reads .endpoint only
        namespace,
        settings.queues_yaml(queues, row.mode, row.workload),
        dispatcher_yaml,
    )
    idle_timeout = _idle_timeout(stack.objects, default=settings.idle_timeout)
    watcher: Watcher | None = None
    agents: Agents | None = None
    dispatcher: Any = None
    hooks = ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook")
    try:
        callbacks: list[Callable[[Seen], None]] = []
        watcher = Watcher(
            cluster.kubeconfig,
            namespace,
            lambda pod: callbacks[0](pod) if callbacks else None,
            selector=DISPATCH_LABEL,
            key_label=BUILDKITE_JOB_LABEL,
        )
        agents = Agents(
            fake_url, watcher.exit_pod, pickup=settings.pickup, idle_timeout=idle_timeout, seed=seed
        )
        callbacks.append(agents.on_pod)
        watcher.start()
        agents.start()

        dispatcher = DispatcherProcess(cluster, stack, f"bench-{row.key}", work)
        (procs.pid_dir / "dispatcher.pid").write_text(f"{dispatcher.proc.pid}\n")

        def cycling() -> bool:
            if dispatcher.proc.poll() is not None:
                raise RuntimeError(
                    f"the dispatcher exited with {dispatcher.proc.returncode}: "
                    + dispatcher.log_path.read_text()[-2000:]
                )
            try:
                return dispatcher.metric("stackgen_cycles_total") >= 1
            except Exception:
                return False

        wait_until(cycling, 60, "the dispatcher's first cycle")
        log(f"dispatcher {dispatcher.url} cycling (pid {dispatcher.proc.pid})")
        bk_rtt = median_rtt(
            lambda: http("GET", f"{fake_url}/_fake/jobs/00000000-0000-0000-0000-000000000000")
        )
        kube_rtt = median_rtt(
            lambda: (
                watcher.batch.list_namespaced_job(  # type: ignore[union-attr]
                    namespace, label_selector=DISPATCH_LABEL, _preload_content=False
                ).data
            )
        )

        # ------------------------------------------------------------ the replay
        by_uuid: dict[str, TraceJob] = {}
        visible: dict[str, float] = {}
        statuses: Counter[int] = Counter()
        lock = threading.Lock()

        def hook(uuid: str, queue: str) -> None:
            sent = time.time()
            delivery = send_webhook(
                f"{dispatcher.url}/webhook",
                job=FakeJob(queue=queue, uuid=uuid),
                hmac_key=WEBHOOK,
                mode="signature",
            )
            with lock:
                visible[uuid] = sent
                statuses[delivery.status] += 1

        controller_before = controller_metrics() if controller_metrics else {}
        scheduler_before = scheduler_metrics() if scheduler_metrics else {}

        def added(uuid: str, job: TraceJob) -> None:
            assert agents is not None
            by_uuid[uuid] = job
            agents.add_job(uuid, job.queue, job.duration)
            if row.webhook:
                hooks.submit(hook, uuid, job.queue)

        t0, replay_end = add_jobs_on_time(fake_url, tr, added, log)

        # ------------------------------------------------------------ until all started
        def settled() -> bool:
            assert agents is not None and watcher is not None
            if dispatcher.proc.poll() is not None:
                raise RuntimeError(f"the dispatcher exited with {dispatcher.proc.returncode}")
            if len(agents.started) < len(by_uuid) or agents.idle():
                return False
            _, pods = watcher.snapshot()
            return all(p.running_at is not None or p.deleted_at for p in pods.values())

        timed_out = False
        try:
            wait_until(settled, timeout, "every job started and no agent idle", interval=0.1)
            time.sleep(1.0)  # a late pod shows up here (and is counted)
            wait_until(settled, idle_timeout + 5, "late agents to time out", interval=0.1)
        except RuntimeError as err:
            if "timed out" not in str(err):
                raise
            timed_out = True
            log(f"WARNING: {err}")
        ended = time.time()
        log(
            f"{len(agents.started)}/{len(by_uuid)} jobs started; done "
            f"{ended - replay_end:.1f} s after the last job was added"
        )
        hooks.shutdown(wait=True)
        controller_after = controller_metrics() if controller_metrics else {}
        scheduler_after = scheduler_metrics() if scheduler_metrics else {}
        dispatcher_cpu = cpu_seconds(dispatcher.proc.pid)
        metrics = parse_metrics(http_text(f"{dispatcher.url}/metrics"))
        _, listed = http("GET", f"{fake_url}/_fake/jobs")
        scheduled = {
            j["uuid"]: float(j["scheduled_at"]) for j in listed["jobs"] if j["uuid"] in by_uuid
        }
        _, requests = http("GET", f"{fake_url}/_fake/requests")
        calls = Counter(r["route"] or "unmatched" for r in requests["requests"])
    finally:
        hooks.shutdown(wait=False, cancel_futures=True)
        if dispatcher is not None:
            dispatcher.stop()
            (procs.pid_dir / "dispatcher.pid").unlink(missing_ok=True)
        if agents is not None:
            agents.stop()
        if watcher is not None:
            watcher.stop()
        procs.stop("fake")

    kube_jobs, pods = watcher.snapshot()
    lines = dispatcher.lines()
    return RowRun(
        row=row,
        settings=settings,
        namespace=namespace,
        replay_start=t0,
        replay_end=replay_end,
        ended=ended,
        jobs=by_uuid,
        scheduled=scheduled,
        visible=visible,
        webhook_status=statuses,
        agents=agents.snapshot(),
        kube_jobs=kube_jobs,
        pods=pods,
        metrics=metrics,
        cycles=[line for line in lines if line.get("event") == "cycle"]
        + [line for line in lines if "deleting Job" in str(line.get("event", ""))],
        buildkite_calls=calls,
        buildkite_requests=[
            (r["route"] or "unmatched", float(r["timestamp"])) for r in requests["requests"]
        ],
        buildkite_rtt=bk_rtt,
        kube_rtt=kube_rtt,
        idle_timeout=idle_timeout,
        timed_out=timed_out,
        errors=agents.errors + watcher.errors,
        dispatcher_log=str(dispatcher.log_path),
        controller_before=controller_before,
        controller_after=controller_after,
        scheduler_before=scheduler_before,
        scheduler_after=scheduler_after,
        dispatcher_cpu=dispatcher_cpu,
    )


def http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


def _idle_timeout(objects: list[dict[str, Any]], default: float) -> float:
    """The agents' --disconnect-after-idle-timeout from the stack's CronJobs."""
    for obj in objects:
        if obj.get("kind") != "CronJob":
            continue
        spec = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        for container in spec.get("containers") or []:
            args = [str(a) for a in container.get("args") or []]
            if IDLE_FLAG in args and args.index(IDLE_FLAG) + 1 < len(args):
                return float(args[args.index(IDLE_FLAG) + 1])
            for arg in args:
                if m := re.fullmatch(rf"{IDLE_FLAG}=(\d+)", arg):
                    return float(m.group(1))
    return float(default)


# ---------------------------------------------------------------------- figures


def timeline(run: RowRun) -> dict[str, Any]:
    """Each job's way from scheduled to running, for reading one row in detail.

    Per job: scheduled, webhook sent (*visible*), the pod, the cycle that made it (its
    dispatch ID), the pod first seen and Running, the agent's start; next to it every
    cycle line of the dispatcher's log and every Buildkite request, all on the host clock.
    ``bench/e2e`` writes it to ``rows/<row>/timeline.json``.
    """
    by_job: dict[str, Agent] = {a.job: a for a in run.agents.values() if a.job}
    jobs = []
    for uuid, job in run.jobs.items():
        agent = by_job.get(uuid)
        pod = run.pods.get(agent.pod) if agent else None
        jobs.append(
            {
                "uuid": uuid,
                "queue": job.queue,
                "scheduled": run.scheduled.get(uuid),
                "visible": run.visible.get(uuid),
                "pod": agent.pod if agent else None,
                "dispatch_id": (pod.labels if pod else {}).get(DISPATCH_LABEL),
                "pod_seen": pod.seen_at if pod else None,
                "pod_running": pod.running_at if pod else None,
                "agent_started": agent.started if agent else None,
            }
        )
    return {
        "row": run.row.key,
        "jobs": jobs,
        "cycles": run.cycles,
        "buildkite_requests": run.buildkite_requests,
    }


def measure(run: RowRun) -> dict[str, Any]:
    """The row's figures, keyed as bench/lib/sim.py's report (plus e2e-only ones)."""
    uuids = list(run.jobs)
    n = len(uuids)
    by_job_pod: dict[str, Agent] = {a.job: a for a in run.agents.values() if a.job}
    wait_pod, wait_visible, wait_job, start_wait = [], [], [], []
    wait_running, running_visible = [], []
    for uuid in uuids:
        agent = by_job_pod.get(uuid)
        if agent is None or agent.started is None:
            continue
        at = run.scheduled[uuid]
        pod = run.pods.get(agent.pod)
        created = pod.seen_at if pod else agent.created
        wait_pod.append(max(0.0, created - at))
        if uuid in run.visible:
            wait_visible.append(max(0.0, created - run.visible[uuid]))
        if pod is not None and pod.running_at is not None:
            wait_running.append(max(0.0, pod.running_at - at))
            if uuid in run.visible:
                running_visible.append(max(0.0, pod.running_at - run.visible[uuid]))
        owner = run.kube_jobs.get((pod.labels if pod else {}).get(JOB_NAME_LABEL, ""))
        if owner is not None:
            wait_job.append(max(0.0, owner.seen_at - at))
        start_wait.append(agent.started - at)
    pod_start = [p.running_at - p.seen_at for p in run.pods.values() if p.running_at is not None]
    controller = []
    first_running: dict[str, float] = {}
    for p in run.pods.values():
        owner = run.kube_jobs.get(p.labels.get(JOB_NAME_LABEL, ""))
        if owner is not None:
            controller.append(p.seen_at - owner.seen_at)
            if p.running_at is not None:
                first = first_running.get(owner.name, p.running_at)
                first_running[owner.name] = min(first, p.running_at)
    # What the dispatcher's cooldown reads: a Job's status.ready counts its first started
    # pod this long after the pod is Running (the Job controller batches pod updates).
    status_lag = [
        j.running_at - first_running[j.name]
        for j in run.kube_jobs.values()
        if j.running_at is not None and j.name in first_running
    ]
    idle = 0.0
    for a in run.agents.values():
        until = a.started or a.exited or run.ended
        idle += max(0.0, until - a.connected)
    ran = {a.pod for a in by_job_pod.values()}
    surplus = sum(1 for p in run.pods if p not in ran)
    created = metric_sum(run.metrics, "stackgen_jobs_created_total")
    pods_made = metric_sum(run.metrics, "stackgen_agent_pods_created_total")
    collected = metric_sum(run.metrics, "stackgen_agent_pods_collected_total")
    deleted = metric_sum(run.metrics, "stackgen_jobs_deleted_total")
    # One token Secret per exact Job (or exact pod).
    secrets = created + pods_made if run.row.mode == "exact" else 0.0
    own = created + pods_made + collected + deleted + secrets
    per_cycle: Counter[str] = Counter()
    for line in run.cycles:
        writes = len(line.get("jobs_created") or [])
        per_cycle[line.get("dispatch_id", "")] += writes * (2 if run.row.mode == "exact" else 1)
        if "deleting Job" in str(line.get("event", "")):
            per_cycle[line.get("dispatch_id", "")] += 1
    visible_gap = [run.visible[u] - run.scheduled[u] for u in uuids if u in run.visible]
    # Per Kubernetes Job: when it was seen, and its pods (seconds after the Job).
    pods_of: dict[str, list[float]] = defaultdict(list)
    for p in run.pods.values():
        owner = run.kube_jobs.get(p.labels.get(JOB_NAME_LABEL, ""))
        if owner is not None:
            pods_of[owner.name].append(round(p.seen_at - owner.seen_at, 3))
    timeline = [
        {
            "job": j.name,
            "at": round(j.seen_at - run.replay_start, 3),
            "pods": sorted(pods_of.get(j.name, [])),
        }
        for j in sorted(run.kube_jobs.values(), key=lambda j: j.seen_at)
    ]
    cycles_by_trigger = {
        t: metric_sum(run.metrics, "stackgen_cycles_total", trigger=t) for t in ("poll", "webhook")
    }
    bk_total = sum(run.buildkite_calls.values())
    return {
        "strategy": run.row.name(run.settings),
        "mode": run.row.mode,
        "webhook": run.row.webhook,
        "jobs": n,
        "jobs_started": len(wait_pod),
        "wait_pod_p50": percentile(wait_pod, 50),
        "wait_pod_p95": percentile(wait_pod, 95),
        "wait_pod_max": max(wait_pod, default=math.nan),
        "wait_zero_share": sum(1 for w in wait_pod if w == 0) / max(1, len(wait_pod)),
        "wait_visible_p95": percentile(wait_visible, 95) if run.row.webhook else math.nan,
        "wait_running_p50": percentile(wait_running, 50),
        "wait_running_p95": percentile(wait_running, 95),
        "running_visible_p95": percentile(running_visible, 95) if run.row.webhook else math.nan,
        "agent_pods_created": pods_made,
        "agent_pods_collected": collected,
        "wait_job_p50": percentile(wait_job, 50),
        "wait_job_p95": percentile(wait_job, 95),
        "start_p50": percentile(start_wait, 50),
        "start_p95": percentile(start_wait, 95),
        "pods_created": len(run.pods),
        "surplus_pods": surplus,
        "surplus_share": surplus / max(1, n),
        "idle_agent_seconds": idle,
        "own_writes": own,
        "own_writes_per_job": own / max(1, n),
        "max_writes_per_cycle": max(per_cycle.values(), default=0),
        "k8s_jobs_created": created,
        "k8s_jobs_seen": len(run.kube_jobs),
        "k8s_jobs_deleted": deleted,
        "pod_start": summary(pod_start),
        "job_controller": summary(controller),
        "job_status_lag": summary(status_lag),
        "webhook_gap": summary(visible_gap),
        "webhook_status": {str(k): v for k, v in run.webhook_status.items()},
        "cycles": cycles_by_trigger,
        "buildkite_calls": dict(run.buildkite_calls),
        "buildkite_calls_per_job": bk_total / max(1, n),
        "buildkite_rtt_ms": round(run.buildkite_rtt * 1000, 2),
        "kube_rtt_ms": round(run.kube_rtt * 1000, 2),
        "agent_idle_timeout": run.idle_timeout,
        "controller_manager": controller_figures(run.controller_before, run.controller_after),
        "scheduler": controller_figures(run.scheduler_before, run.scheduler_after),
        "dispatcher_cpu_s": round(run.dispatcher_cpu, 2),
        "dispatcher_cpu_s_per_1000_jobs": round(run.dispatcher_cpu * 1000 / max(1, n), 1),
        "api_errors": metric_sum(run.metrics, "stackgen_api_errors_total"),
        "buildkite_jobs_failed": metric_sum(run.metrics, "stackgen_buildkite_jobs_failed_total"),
        "timed_out": run.timed_out,
        "harness_errors": run.errors[:20],
        "replay_seconds": round(run.replay_end - run.replay_start, 2),
        "drain_seconds": round(run.ended - run.replay_end, 2),
        "samples": {
            "wait_pod": [round(w, 4) for w in wait_pod],
            "wait_job": [round(w, 4) for w in wait_job],
        },
        "k8s_job_timeline": timeline,
    }


# ---------------------------------------------------------------------- the simulator


def sim_trace(run: RowRun, tr: Trace) -> tuple[Trace, dict[str, float]]:
    """The schedule the run actually replayed: each job at the time the fake stamped on it.

    Returns the trace (time 0 = the replay's start) and each trace job's webhook time.
    """
    t0 = run.replay_start
    jobs = []
    visible: dict[str, float] = {}
    for uuid, job in run.jobs.items():
        jobs.append(replace(job, scheduled_at=run.scheduled[uuid] - t0))
        if uuid in run.visible:
            visible[job.id] = run.visible[uuid] - t0
    jobs.sort(key=lambda j: (j.scheduled_at, j.id))
    end = max(tr.params.end, max((j.scheduled_at for j in jobs), default=0.0))
    return Trace(replace(tr.params, start=0.0, end=end), jobs), visible


def sim_params(
    run: RowRun, pod_start: dict[str, Any], settings: Settings, seed: int
) -> sim.SimParams:
    """bench/lib/sim.py's world with what the run measured: pod start, round trips, pickup."""
    p50 = max(1e-3, pod_start["p50"] or 1e-3)
    p95 = max(p50, pod_start["p95"] or p50)
    sigma = min(2.0, max(0.05, math.log(p95 / p50) / 1.645)) if p95 > p50 else 0.05
    return sim.SimParams(
        seed=seed,
        pod_start_shift=0.0,
        pod_start_median=p50,
        pod_start_sigma=sigma,
        pickup=settings.pickup,
        buildkite_rtt=run.buildkite_rtt,
        kube_rtt=run.kube_rtt,
        max_agents=settings.max_agents,
    )


def simulate(
    run: RowRun,
    tr: Trace,
    settings: Settings,
    params: sim.SimParams,
    seeds: int = 10,
) -> dict[str, Any]:
    """The simulator on the run's own schedule and settings: median of ``seeds`` worlds."""
    base, visible = sim_trace(run, tr)
    strategy = run.row.strategy(settings)
    results = []
    for seed in range(1, seeds + 1):
        # The poll phase: the run's polls fell at some moment relative to the bursts; the
        # simulator polls at 0, poll, 2 poll, ...  Each world shifts the schedule by
        # U(0, poll), so the median over worlds does not hinge on one phase.
        shift = random.Random(seed * 7919).uniform(0, settings.poll_interval)
        trace_ = Trace(
            replace(base.params, end=base.params.end + shift),
            [replace(j, scheduled_at=j.scheduled_at + shift) for j in base.jobs],
        )
        world = sim.Sim(trace_, strategy, replace(params, seed=seed))
        for job in world.jobs:
            if job.id in visible:
                job.visible_at = visible[job.id] + shift
        report = world.run()
        done = [j for j in world.jobs if j.state == "done" and j.agent is not None]
        wait_job = [
            max(0.0, j.agent.owner.created_at - j.scheduled_at)  # type: ignore[union-attr]
            for j in done
            if j.agent is not None and j.agent.owner is not None
        ]
        controller = [a.created_at - a.owner.created_at for a in world.agents if a.owner]
        report["wait_job_p50"] = percentile(wait_job, 50)
        report["wait_job_p95"] = percentile(wait_job, 95)
        ctl = summary(controller)
        report["job_ctl_p50"], report["job_ctl_p95"] = ctl["p50"], ctl["p95"]
        report["samples"] = {
            "wait_pod": [
                round(max(0.0, j.agent.created_at - j.scheduled_at), 4)
                for j in done
                if j.agent is not None
            ],
            "wait_job": [round(w, 4) for w in wait_job],
        }
        results.append(report)
    keys = [
        k
        for k, v in results[0].items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "ended_at"
    ]
    merged: dict[str, Any] = {k: statistics.median(r[k] for r in results) for k in keys}
    for k in ("strategy", "mode", "webhook", "samples"):
        merged[k] = results[0][k]
    merged["job_controller"] = {  # none in the HPA rows
        "p50": merged.get("job_ctl_p50", math.nan),
        "p95": merged.get("job_ctl_p95", math.nan),
    }
    merged["seeds"] = seeds
    merged["per_seed"] = [{k: r[k] for k in keys} for r in results]
    merged["params"] = sim._jsonable(params)
    return merged


def jsonable(obj: Any) -> Any:
    """NaN -> None, recursively (for JSON)."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj
