"""The HPA rows of bench/e2e: the trace replayed against a real HorizontalPodAutoscaler.

bench/dispatch models two HPA policies (bench/lib/sim.py's :class:`~bench.lib.sim.HPAStrategy`:
the early agent-stack-k8s prototype's and stackgen's own defaults).  Here the same policies
run for real, so the model is checked against the HPA controller it describes:

* a kwok cluster whose kube-apiserver proxies aggregated APIs (front-proxy certificates,
  aggregator routing; tests/support/aggregator.py) and whose kube-controller-manager syncs
  HPAs every ``15 s / speed``;
* ``stackgen metrics-adapter`` as a real process in a network namespace, polling the fake
  Buildkite every ``10 s / speed``;
* a stack built by ``stackgen build`` with one ``hpa`` queue per trace queue, the adapter's
  APIService registered, and each queue's HPA given the policy's metrics and behavior with
  every window and period divided by ``speed`` (rounded to whole seconds, as the API
  wants; the simulator gets the same rounded values), the pods' grace period likewise;
* simulated long-lived agents (:class:`PoolAgents`): every Running pod of a queue's
  Deployment is a connected ``buildkite-agent start`` that takes the oldest scheduled job
  of its queue at its next ping and runs it for the trace's duration.  The harness keeps the
  fake's connected-agent counts (idle, busy) current, which the adapter reports as
  ``buildkite_agents_*``.  When the ReplicaSet deletes a pod, its agent gets SIGTERM: an idle
  one exits, a busy one finishes its job if it can within the grace period, else the job is
  interrupted (finished with exit -1) and retried as a new job, as the simulator does.
  Agent pods are labelled ``kwok.stackgen.io/graceful-delete`` so kwok keeps them
  Terminating until then (tests/support/kwok-stages.yaml).

The row ends when every job (retries included) has finished, as the simulator's does.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from bench.lib import sim
from bench.lib.common import percentile
from bench.lib.e2e import Processes, Seen, Watcher, http, start_fake, summary, wait_until
from bench.lib.replay import Agent, Agents, Settings, add_jobs_on_time, median_rtt
from bench.lib.trace import Trace, TraceJob

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "bkua_bench-hpa-token-0123456789"
POOL_SELECTOR = "app.kubernetes.io/component=agent"
QUEUE_LABEL = "stackgen.io/queue"
GRACEFUL_LABEL = "kwok.stackgen.io/graceful-delete"
NETNS_PREFIX = "sgbench"
#: The adapter's external metric behind each of the simulator's metric names.
METRICS = {
    "scheduled": "buildkite_jobs_scheduled",
    "runnable": "buildkite_jobs_runnable",
    "busy_percent": "buildkite_agents_busy_percentage",
}


# ---------------------------------------------------------------------- the rows


def _scaled_rules(rules: sim.ScalingRules, speed: float) -> sim.ScalingRules:
    return sim.ScalingRules(
        window=float(round(rules.window / speed)),
        policies=tuple(
            (kind, value, float(max(1, round(period / speed))))
            for kind, value, period in rules.policies
        ),
        select=rules.select,
    )


def scaled_strategy(strategy: sim.HPAStrategy, speed: float) -> sim.HPAStrategy:
    """``strategy`` with its clock ``speed`` times faster, in whole seconds where the API
    wants them (stabilization windows, policy periods, the grace period)."""
    return replace(
        strategy,
        up=_scaled_rules(strategy.up, speed),
        down=_scaled_rules(strategy.down, speed),
        sync=strategy.sync / speed,
        adapter_poll=float(max(1, round(strategy.adapter_poll / speed))),
        grace=float(max(1, round(strategy.grace / speed))),
    )


@dataclass(frozen=True)
class HPARow:
    """One HPA policy of bench/dispatch, end to end."""

    key: str
    policy: str  # the strategy's name in sim.default_strategies()
    mode: str = "hpa"
    webhook: bool = False

    def name(self, settings: Settings) -> str:
        return self.policy

    def strategy(self, settings: Settings) -> sim.HPAStrategy:
        (base,) = [
            s
            for s in sim.default_strategies()
            if isinstance(s, sim.HPAStrategy) and s.name == self.policy
        ]
        return scaled_strategy(base, settings.speed)


ROWS = (
    HPARow("hpa-prototype", "HPA: early agent-stack-k8s prototype"),
    HPARow("hpa-stackgen", "HPA: stackgen settings"),
)


def hpa_flags(strategy: sim.HPAStrategy) -> dict[str, str]:
    """kube-controller-manager flags for ``strategy`` (its sync period)."""
    return {"horizontal-pod-autoscaler-sync-period": f"{strategy.sync:g}s"}


def _behavior(rules: sim.ScalingRules) -> dict[str, Any]:
    return {
        "stabilizationWindowSeconds": int(rules.window),
        "selectPolicy": rules.select,
        "policies": [
            {"type": kind, "value": int(value), "periodSeconds": int(period)}
            for kind, value, period in rules.policies
        ],
    }


def apply_policy(
    objects: list[dict[str, Any]], strategy: sim.HPAStrategy, max_replicas: int
) -> list[dict[str, Any]]:
    """The built stack with each queue's HPA and agent pool set to ``strategy``."""
    out = []
    for obj in objects:
        kind = obj["kind"]
        if kind == "HorizontalPodAutoscaler":
            spec = obj["spec"]
            selector = spec["metrics"][0]["external"]["metric"]["selector"]
            metrics = []
            for metric, target_type, target in strategy.metrics:
                key = "averageValue" if target_type == "AverageValue" else "value"
                metrics.append(
                    {
                        "type": "External",
                        "external": {
                            "metric": {"name": METRICS[metric], "selector": selector},
                            "target": {"type": target_type, key: f"{target:g}"},
                        },
                    }
                )
            spec.update(
                metrics=metrics,
                minReplicas=strategy.min_replicas,
                maxReplicas=max_replicas,
                behavior={
                    "scaleUp": _behavior(strategy.up),
                    "scaleDown": _behavior(strategy.down),
                },
            )
        elif kind == "Deployment" and obj["metadata"].get("labels", {}).get(QUEUE_LABEL):
            template = obj["spec"]["template"]
            template["metadata"].setdefault("labels", {})[GRACEFUL_LABEL] = "true"
            template["spec"]["terminationGracePeriodSeconds"] = int(strategy.grace)
        out.append(obj)
    return out


def describe(strategy: sim.HPAStrategy) -> str:
    def rules(r: sim.ScalingRules) -> str:
        policies = ", ".join(
            f"{'+' if r is strategy.up else '-'}{v}{'' if k == 'Pods' else ' %'}/{p:g} s"
            for k, v, p in r.policies
        )
        return f"window {r.window:g} s, {policies} ({r.select})"

    metrics = ", ".join(f"{METRICS[m]} {t} {v:g}" for m, t, v in strategy.metrics)
    return (
        f"HPA sync {strategy.sync:g} s, adapter poll {strategy.adapter_poll:g} s; {metrics}; "
        f"up {rules(strategy.up)}; down {rules(strategy.down)}; grace {strategy.grace:g} s"
    )


# ---------------------------------------------------------------------- agents


@dataclass
class PoolAgent(Agent):
    """A long-lived agent in one of a Deployment's pods."""

    jobs_done: int = 0
    idle_since: float | None = None
    idle: list[tuple[float, float]] = field(default_factory=list)
    terminating: float | None = None


class PoolAgents(Agents):
    """``buildkite-agent start`` in every Running pod of the agent pools (module docstring)."""

    def __init__(
        self,
        fake_url: str,
        exit_pod: Callable[[str, int], None],
        *,
        pickup: tuple[float, float],
        grace: float,
        seed: int = 1,
    ) -> None:
        super().__init__(fake_url, exit_pod, pickup=pickup, idle_timeout=math.inf, seed=seed)
        self.grace = grace
        self.finished: set[str] = set()
        self.interrupted: list[str] = []
        self.retry_of: dict[str, str] = {}
        self._gone: set[str] = set()  # pods deleted before their agent connected

    def on_pod(self, pod: Seen) -> None:
        queue = pod.labels.get(QUEUE_LABEL, "")
        with self._cv:
            agent = self.agents.get(pod.name)
            if agent is None:
                if pod.terminating_at is not None or pod.deleted_at is not None:
                    # Deleted while starting: no agent ever ran; let kwok remove the pod.
                    if pod.name not in self._gone and pod.deleted_at is None:
                        self._gone.add(pod.name)
                        self._exits.submit(self._annotate, pod.name, 0)
                    return
                if pod.running_at is None or pod.phase != "Running":
                    return
                agent = PoolAgent(pod.name, queue, None, pod.seen_at, pod.running_at)
                self.agents[pod.name] = agent
                self._push(time.time(), "connect", pod.name)
                return
            assert isinstance(agent, PoolAgent)
            if pod.terminating_at is not None and agent.terminating is None:
                agent.terminating = pod.terminating_at
                self._push(time.time(), "sigterm", pod.name)

    def pending(self) -> int:
        """Jobs added or retried that have not finished."""
        with self._cv:
            return len(self.durations) - len(self.finished) - len(self.interrupted)

    def busy(self) -> int:
        """Agents running a job now."""
        with self._cv:
            return sum(1 for a in self.agents.values() if a.job is not None and a.exited is None)

    # agent events (the base class's loop calls _on_<kind>)
    def _idle_from(self, agent: PoolAgent, now: float) -> None:
        agent.idle_since = now

    def _idle_until(self, agent: PoolAgent, now: float) -> None:
        if agent.idle_since is not None:
            agent.idle.append((agent.idle_since, now))
            agent.idle_since = None

    def _on_connect(self, agent: Agent) -> None:
        assert isinstance(agent, PoolAgent)
        with self._cv:
            if agent.terminating is not None:
                return
            self._idle_from(agent, time.time())
            self._push(time.time() + self.rng.uniform(*self.pickup), "ping", agent.pod)
        self._report(agent.queue)

    def _free(self, agent: Agent) -> bool:
        assert isinstance(agent, PoolAgent)
        return agent.job is None and agent.exited is None and agent.terminating is None

    def _took(self, agent: Agent) -> None:
        assert isinstance(agent, PoolAgent)
        with self._cv:
            self._idle_until(agent, agent.started or time.time())
        self._report(agent.queue)

    def _on_finish(self, agent: Agent) -> None:
        assert isinstance(agent, PoolAgent)
        uuid = agent.job
        if uuid is None or uuid in self.interrupted:
            return
        status, body = http("POST", f"{self.fake_url}/_fake/jobs/{uuid}/finish", {})
        if status != 200:
            self.errors.append(f"finish {uuid}: {status} {body}")
        now = time.time()
        with self._cv:
            self.finished.add(uuid)
            agent.jobs_done += 1
            agent.job = None
            if agent.terminating is None:
                self._idle_from(agent, now)
                self._push(now + self.rng.uniform(*self.pickup), "ping", agent.pod)
        if agent.terminating is not None:
            self._exit(agent, 0)
        self._report(agent.queue)

    def _on_sigterm(self, agent: Agent) -> None:
        assert isinstance(agent, PoolAgent)
        now = time.time()
        with self._cv:
            busy = agent.job is not None and agent.exited is None
            if busy:
                assert agent.started is not None
                left = agent.started + self.durations.get(agent.job or "", 0.0) - now
                if left > self.grace:
                    self._push(now + self.grace, "kill", agent.pod)
            else:
                self._idle_until(agent, now)
        if not busy:
            self._exit(agent, 0)
            self._report(agent.queue)

    def _on_kill(self, agent: Agent) -> None:
        """The grace period is over: SIGKILL; the job is lost and retried as a new job."""
        assert isinstance(agent, PoolAgent)
        uuid = agent.job
        if uuid is None or agent.exited is not None:
            return
        with self._cv:
            self.interrupted.append(uuid)
            agent.job = None
        status, body = http(
            "POST", f"{self.fake_url}/_fake/jobs/{uuid}/finish", {"exit_status": -1}
        )
        if status != 200:
            self.errors.append(f"interrupt {uuid}: {status} {body}")
        status, body = http(
            "POST",
            f"{self.fake_url}/_fake/jobs",
            {"queue": agent.queue, "count": 1, "fields": {"pipeline_slug": "monorepo"}},
        )
        if status != 201:
            self.errors.append(f"retry of {uuid}: {status} {body}")
        else:
            (retry,) = body["uuids"]
            with self._cv:
                self.retry_of[retry] = uuid
            self.add_job(retry, agent.queue, self.durations.get(uuid, 0.0))
        self._exit(agent, 137)
        self._report(agent.queue)

    def _report(self, queue: str) -> None:
        """The fake's connected-agent counts for ``queue`` (what /v3/metrics reports)."""
        with self._cv:
            live = [
                a
                for a in self.agents.values()
                if a.queue == queue and a.exited is None and isinstance(a, PoolAgent)
            ]
            busy = sum(1 for a in live if a.job is not None)
            idle = sum(1 for a in live if a.job is None and a.terminating is None)
        status, body = http(
            "PUT", f"{self.fake_url}/_fake/agents", {"queue": queue, "idle": idle, "busy": busy}
        )
        if status != 200:
            self.errors.append(f"agents {queue}: {status} {body}")


# ---------------------------------------------------------------------- one row


@dataclass
class HPARun:
    """What one HPA row recorded (times are host clock seconds)."""

    row: HPARow
    settings: Settings
    strategy: sim.HPAStrategy
    replay_start: float
    replay_end: float
    ended: float
    jobs: dict[str, TraceJob]  # fake uuid -> trace job (the trace's own jobs)
    scheduled: dict[str, float]  # every fake uuid (retries too) -> scheduled_at
    visible: dict[str, float]
    agents: dict[str, PoolAgent]
    started: dict[str, tuple[str, float]]  # job uuid -> (pod, when)
    finished: set[str]
    interrupted: list[str]
    retry_of: dict[str, str]
    pods: dict[str, Seen]
    scale_writes: int
    buildkite_calls: Counter[str]
    buildkite_rtt: float
    kube_rtt: float
    timed_out: bool
    adapter_log: str
    errors: list[str] = field(default_factory=list)


def _overlay(folder: Path, namespace: str, queues: list[str], endpoint: str, poll: float) -> Path:
    from tests.support.aggregator import adapter_tls

    overlay = folder / "overlay"
    (overlay / "secrets").mkdir(parents=True, exist_ok=True)
    (overlay / "secrets" / "agent-token").write_text(TOKEN + "\n")
    stack = {
        "apiVersion": "stackgen.io/v1alpha1",
        "kind": "Stack",
        "metadata": {"name": "bench", "namespace": namespace},
        "agent": {
            "endpoint": endpoint,
            "resources": {
                "requests": {"cpu": "100m", "memory": "128Mi"},
                "limits": {"memory": "256Mi"},
            },
        },
        "queues": [{"name": q, "mode": "hpa", "minAgents": 1} for q in queues],
        "secrets": {"agentToken": {"file": "secrets/agent-token"}},
        "metricsAdapter": {
            "pollIntervalSeconds": max(5, int(poll)),  # the process gets the real interval
            "tls": adapter_tls(overlay, namespace),
        },
    }
    (overlay / "stack.yaml").write_text(yaml.safe_dump(stack, sort_keys=False))
    return overlay


def _generations(apps: Any, namespace: str) -> dict[str, int]:
    return {
        d.metadata.name: int(d.metadata.generation or 0)
        for d in apps.list_namespaced_deployment(namespace, label_selector=QUEUE_LABEL).items
    }


def run_hpa_row(
    row: HPARow,
    tr: Trace,
    settings: Settings,
    *,
    cluster: Any,  # tests.support.cluster.Cluster, made with front_proxy_config()
    procs: Processes,
    work: Path,
    log: Callable[[str], None],
    timeout: float = 120.0,
    seed: int = 1,
) -> HPARun:
    """Replay ``tr`` against ``row``'s HPA policy on ``cluster`` (see the module docstring).

    ``timeout``: give up when jobs wait this long with no agent running one.
    """
    import kubernetes

    from tests.support.aggregator import (
        AdapterProcess,
        Netns,
        adapter_objects,
        reap_netns,
        stackgen_build,
    )
    from tests.support.cluster import orphaned

    work.mkdir(parents=True, exist_ok=True)
    strategy = row.strategy(settings)
    queues = tr.queues
    namespace = f"bench-{row.key}"
    _, fake_url = start_fake(
        procs,
        "fake",
        token=TOKEN,
        queues=queues,
        log_path=work / "fake.log",
        extra=["--poll-duration", f"{strategy.adapter_poll:g}"],
    )
    fake_port = int(fake_url.rsplit(":", 1)[1].split("/")[0])
    log(f"fake Buildkite at {fake_url}; {describe(strategy)}")
    reap_netns(NETNS_PREFIX, orphaned)
    netns = Netns.create(NETNS_PREFIX)
    adapter: AdapterProcess | None = None
    watcher: Watcher | None = None
    agents: PoolAgents | None = None
    api_client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
    try:
        overlay = _overlay(work, namespace, queues, f"{fake_url}/v3", strategy.adapter_poll)
        objects = apply_policy(stackgen_build(overlay), strategy, settings.max_agents)
        cluster.apply(adapter_objects(objects, namespace, netns.ns_ip))
        token = cluster.kubectl(
            "create", "token", "stackgen-metrics-adapter", "-n", namespace, "--duration=1h"
        ).stdout.strip()
        cfg = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]
        host, _, port = cfg["server"].removeprefix("https://").rpartition(":")
        adapter = AdapterProcess(
            netns,
            apiserver=(host, int(port)),
            ca_file=Path(cfg["certificate-authority"]),
            api_token=token,
            buildkite_port=fake_port,
            buildkite_token=TOKEN,
            queues=queues,
            secrets=overlay / "secrets" / "metrics-adapter",
            work=work,
            poll_interval=strategy.adapter_poll,
            cwd=ROOT,
        )
        apps = kubernetes.client.AppsV1Api(api_client)
        autoscaling = kubernetes.client.AutoscalingV2Api(api_client)

        watcher = Watcher(
            cluster.kubeconfig,
            namespace,
            lambda pod: agents.on_pod(pod) if agents is not None else None,
            selector=POOL_SELECTOR,
            key_label=QUEUE_LABEL,
        )
        agents = PoolAgents(
            fake_url, watcher.exit_pod, pickup=settings.pickup, grace=strategy.grace, seed=seed
        )
        agents.start()
        watcher.start()

        def ready() -> bool:
            assert adapter is not None and agents is not None
            if adapter.proc.poll() is not None:
                raise RuntimeError(f"the adapter exited: {adapter.tail(20)}")
            for queue in queues:
                hpa = autoscaling.read_namespaced_horizontal_pod_autoscaler(
                    f"buildkite-agent-{queue}", namespace
                )
                active = any(
                    c.type == "ScalingActive" and c.status == "True"
                    for c in hpa.status.conditions or []
                )
                if not active or (hpa.status.current_replicas or 0) != strategy.min_replicas:
                    return False
            connected = Counter(a.queue for a in agents.snapshot().values() if a.exited is None)
            return all(connected[q] == strategy.min_replicas for q in queues)

        wait_until(ready, 120, "every HPA active at minReplicas with its agents connected")
        log("HPAs active; agents connected")
        bk_rtt = median_rtt(
            lambda: http("GET", f"{fake_url}/_fake/jobs/00000000-0000-0000-0000-000000000000")
        )
        kube_rtt = median_rtt(
            lambda: apps.list_namespaced_deployment(namespace, _preload_content=False).data
        )
        generations = _generations(apps, namespace)

        # ------------------------------------------------------------ the replay
        by_uuid: dict[str, TraceJob] = {}

        def added(uuid: str, job: TraceJob) -> None:
            assert agents is not None
            by_uuid[uuid] = job
            agents.add_job(uuid, job.queue, job.duration)

        t0, replay_end = add_jobs_on_time(fake_url, tr, added, log)

        # The row ends, as the simulator's does, when the last job (retries too) has run to
        # its end.  It gives up after ``timeout`` s in which no job ran and none finished.
        timed_out = False
        quiet_since, last = time.time(), (-1, -1)
        while agents.pending():
            if adapter.proc.poll() is not None:
                raise RuntimeError(f"the adapter exited: {adapter.tail(20)}")
            progress = (len(agents.finished), len(agents.started))
            if progress != last or agents.busy():
                quiet_since, last = time.time(), progress
            elif time.time() - quiet_since > timeout:
                timed_out = True
                log(f"WARNING: {agents.pending()} jobs still scheduled after {timeout:g} s idle")
                break
            time.sleep(0.1)
        ended = time.time()
        scale_writes = sum(
            max(0, g - generations.get(name, g))
            for name, g in _generations(apps, namespace).items()
        )
        log(
            f"{len(agents.finished)} jobs finished, {len(agents.interrupted)} interrupted; "
            f"done {ended - replay_end:.1f} s after the last job was added"
        )
        _, listed = http("GET", f"{fake_url}/_fake/jobs")
        scheduled = {j["uuid"]: float(j["scheduled_at"]) for j in listed["jobs"]}
        _, requests = http("GET", f"{fake_url}/_fake/requests")
        calls = Counter(r["route"] or "unmatched" for r in requests["requests"])
    finally:
        if agents is not None:
            agents.stop()
        if watcher is not None:
            watcher.stop()
        if adapter is not None:
            adapter.stop()
        netns.delete()
        api_client.close()
        procs.stop("fake")

    _, pods = watcher.snapshot()
    return HPARun(
        row=row,
        settings=settings,
        strategy=strategy,
        replay_start=t0,
        replay_end=replay_end,
        ended=ended,
        jobs=by_uuid,
        scheduled=scheduled,
        visible={},
        agents={k: v for k, v in agents.snapshot().items() if isinstance(v, PoolAgent)},
        started=dict(agents.started),
        finished=set(agents.finished),
        interrupted=list(agents.interrupted),
        retry_of=dict(agents.retry_of),
        pods=pods,
        scale_writes=scale_writes,
        buildkite_calls=calls,
        buildkite_rtt=bk_rtt,
        kube_rtt=kube_rtt,
        timed_out=timed_out,
        adapter_log=str(adapter.log_path),
        errors=agents.errors + watcher.errors,
    )


# ---------------------------------------------------------------------- figures


def measure(run: HPARun) -> dict[str, Any]:
    """The row's figures, keyed as bench/lib/sim.py's report."""
    n = len(run.jobs)
    t0, end = run.replay_start, run.ended
    wait_pod, start_wait = [], []
    for uuid in run.finished:
        pod_name, started = run.started[uuid]
        at = run.scheduled[uuid]
        pod = run.pods.get(pod_name)
        created = pod.seen_at if pod else run.agents[pod_name].created
        wait_pod.append(max(0.0, created - at))
        start_wait.append(started - at)
    idle = 0.0
    for a in run.agents.values():
        spans = list(a.idle)
        if a.idle_since is not None:
            spans.append((a.idle_since, end))
        idle += sum(max(0.0, min(b, end) - max(s, t0)) for s, b in spans)
    pod_start = [p.running_at - p.seen_at for p in run.pods.values() if p.running_at is not None]
    ran = {a.pod for a in run.agents.values() if a.jobs_done}
    surplus = sum(1 for p in run.pods if p not in ran)
    bk_total = sum(run.buildkite_calls.values())
    nan = math.nan
    return {
        "strategy": run.row.name(run.settings),
        "mode": "hpa",
        "webhook": False,
        "jobs": n,
        "jobs_started": len(wait_pod),
        "wait_pod_p50": percentile(wait_pod, 50),
        "wait_pod_p95": percentile(wait_pod, 95),
        "wait_pod_max": max(wait_pod, default=nan),
        "wait_zero_share": sum(1 for w in wait_pod if w == 0) / max(1, len(wait_pod)),
        "wait_visible_p95": nan,
        "wait_job_p50": nan,
        "wait_job_p95": nan,
        "start_p50": percentile(start_wait, 50),
        "start_p95": percentile(start_wait, 95),
        "pods_created": len(run.pods),
        "surplus_pods": surplus,
        "surplus_share": surplus / max(1, n),
        "idle_agent_seconds": idle,
        "own_writes": run.scale_writes,
        "own_writes_per_job": run.scale_writes / max(1, n),
        "max_writes_per_cycle": nan,
        "interrupted": len(run.interrupted),
        "pod_start": summary(pod_start),
        "job_controller": {"p50": nan, "p95": nan},
        "buildkite_calls": dict(run.buildkite_calls),
        "buildkite_calls_per_job": bk_total / max(1, n),
        "buildkite_rtt_ms": round(run.buildkite_rtt * 1000, 2),
        "kube_rtt_ms": round(run.kube_rtt * 1000, 2),
        "policy": describe(run.strategy),
        "timed_out": run.timed_out,
        "harness_errors": run.errors[:20],
        "replay_seconds": round(run.replay_end - run.replay_start, 2),
        "drain_seconds": round(run.ended - run.replay_end, 2),
        "samples": {"wait_pod": [round(w, 4) for w in wait_pod], "wait_job": []},
    }
