"""The dispatcher end to end: fake Buildkite on 127.0.0.1 -> `stackgen dispatcher` (a real
process) -> Kubernetes Jobs -> the real Job controller makes pods -> kwok runs them ->
simulated agents take Buildkite jobs -> TTL removes finished Jobs.

Each test builds a real stack with `stackgen build`, applies it, and runs the dispatcher
from the generated config, as the dispatcher pod would (only the kubeconfig differs).
Figures (time from job scheduled to Job created, surplus agents) are printed and kept
in tests/e2e/.dispatcher-figures.json for the closing note.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import Cluster, wait_for
from tests.support.dispatcher_process import (
    TOKEN,
    WEBHOOK,
    DispatcherProcess,
    OffsetClock,
    build_stack,
)
from tests.support.fake_buildkite import FakeBuildkite, send_webhook
from tests.support.paths import ROOT

FIGURES = ROOT / "tests" / "e2e" / ".dispatcher-figures.json"


class Agents:
    """Simulated agents, one per pod the dispatcher made (kwok runs no containers).

    A pod that starts is an agent: in exact mode it acquires its own job (or exits, as
    `--acquire-job` does with 27, when it cannot); otherwise it takes the oldest scheduled
    job of its queue, waiting up to ``idle_timeout`` for one (`--disconnect-after-idle-
    timeout`). A job runs ``job_seconds``. When the agent exits, the test annotates its pod
    and kwok completes it (tests/support/kwok-stages.yaml), so pods live as long as agents.
    """

    def __init__(
        self,
        cluster: Cluster,
        fake: FakeBuildkite,
        namespace: str,
        *,
        idle_timeout: float = 5.0,
        job_seconds: float = 1.0,
    ) -> None:
        self.cluster = cluster
        self.fake = fake
        self.namespace = namespace
        self.idle_timeout = idle_timeout
        self.job_seconds = job_seconds
        self.seen: set[str] = set()
        self.surplus: list[str] = []
        self.ran: dict[str, str] = {}
        self.job_created: dict[str, float] = {}
        #: Every Job seen (name -> labels, parallelism), also after TTL removed it.
        self.jobs: dict[str, tuple[dict[str, str], int]] = {}
        self._idle: dict[str, tuple[str | None, float]] = {}  # pod -> (queue, since)
        self._busy: dict[str, tuple[str, float]] = {}  # pod -> (job, until)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._watch, args=("pods",), daemon=True),
            threading.Thread(target=self._watch, args=("jobs",), daemon=True),
            threading.Thread(target=self._tick, daemon=True),
        ]

    def __enter__(self) -> Agents:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _watch(self, kind: str) -> None:
        from kubernetes import client, watch

        api = self.cluster.api_client()
        core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
        lister = core.list_namespaced_pod if kind == "pods" else batch.list_namespaced_job
        while not self._stop.is_set():
            try:
                for event in watch.Watch().stream(
                    lister,
                    self.namespace,
                    label_selector="stackgen.io/dispatch-id",
                    timeout_seconds=2,
                ):
                    obj = event["object"]
                    if kind == "jobs":
                        self.job_created.setdefault(obj.metadata.name, time.time())
                        self.jobs.setdefault(
                            obj.metadata.name,
                            (dict(obj.metadata.labels or {}), obj.spec.parallelism or 1),
                        )
                    elif obj.status.phase == "Running" and obj.metadata.name not in self.seen:
                        self._connect(obj)
                    if self._stop.is_set():
                        break
            except Exception:  # a watch can break at any time; start another
                time.sleep(0.2)
        api.close()

    def _connect(self, pod: Any) -> None:
        name = pod.metadata.name
        self.seen.add(name)
        labels = pod.metadata.labels or {}
        exact = labels.get("stackgen.io/buildkite-job")
        if exact:
            if self.fake.acquire_job(exact) == 200:
                self._start(name, exact)
            else:
                self._exit(name, surplus=True, code=27)  # as `--acquire-job` exits
            return
        queue = (pod.metadata.annotations or {}).get("stackgen.io/queue")
        with self._lock:
            self._idle[name] = (queue, time.time())

    def _tick(self) -> None:
        while not self._stop.wait(0.1):
            now = time.time()
            with self._lock:
                idle = sorted(self._idle.items(), key=lambda kv: kv[1][1])
                busy = list(self._busy.items())
            for pod, (job, until) in busy:
                if now >= until:
                    self.fake.finish_job(job)
                    with self._lock:
                        self._busy.pop(pod, None)
                    self._exit(pod, surplus=False)
            for pod, (queue, since) in idle:
                waiting = sorted(
                    self.fake.jobs(queue=queue, state="scheduled"), key=lambda j: j.scheduled_at
                )
                taken = next(
                    (j.uuid for j in waiting if self.fake.acquire_job(j.uuid) == 200), None
                )
                if taken:
                    with self._lock:
                        self._idle.pop(pod, None)
                    self._start(pod, taken)
                elif now - since >= self.idle_timeout:
                    with self._lock:
                        self._idle.pop(pod, None)
                    self._exit(pod, surplus=True)

    def _start(self, pod: str, uuid: str) -> None:
        self.ran[pod] = uuid
        self.fake.start_job(uuid)
        with self._lock:
            self._busy[pod] = (uuid, time.time() + self.job_seconds)

    def _exit(self, pod: str, *, surplus: bool, code: int = 0) -> None:
        if surplus:
            self.surplus.append(pod)
        self.cluster.kubectl(
            "annotate",
            "pod",
            pod,
            "-n",
            self.namespace,
            f"stackgen.io/agent-exit={code}",
            "--overwrite",
            check=False,
        )


def latencies(fake: FakeBuildkite, agents: Agents, uuids: list[str]) -> list[float]:
    """Seconds from each job's scheduled_at to the first Job created after it (exact: its Job)."""
    by_uuid = {
        labels.get("stackgen.io/buildkite-job"): name for name, (labels, _) in agents.jobs.items()
    }
    out = []
    created = sorted(agents.job_created.items(), key=lambda kv: kv[1])
    for uuid in uuids:
        scheduled = fake.job(uuid).scheduled_at
        name = by_uuid.get(uuid)
        if name and name in agents.job_created:
            out.append(agents.job_created[name] - scheduled)
        else:
            after = [t for _, t in created if t >= scheduled - 0.05]
            if after:
                out.append(after[0] - scheduled)
    return out


def record(name: str, values: list[float], surplus: int, jobs: int) -> dict[str, Any]:
    ordered = sorted(values)
    figure = {
        "samples": len(ordered),
        "p50": round(statistics.median(ordered), 3) if ordered else None,
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3)
        if ordered
        else None,
        "max": round(ordered[-1], 3) if ordered else None,
        "surplus_agents": surplus,
        "buildkite_jobs": jobs,
    }
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    data[name] = figure
    FIGURES.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\n{name}: {figure}")
    return figure


@pytest.fixture
def fake_clock() -> OffsetClock:
    return OffsetClock()


@pytest.fixture
def fake(fake_clock: OffsetClock) -> Iterator[FakeBuildkite]:
    with FakeBuildkite(
        token=TOKEN, queues=("builds", "deploy", "stuck"), poll_duration_seconds=1, clock=fake_clock
    ) as server:
        yield server


@pytest.fixture
def processes() -> Iterator[list[DispatcherProcess]]:
    started: list[DispatcherProcess] = []
    yield started
    for proc in started:
        proc.stop(signal.SIGKILL)


QUEUES = """\
queues:
  - name: builds
    mode: dispatch
    maxAgents: 40
    buffer: 1
    dispatch: {pollIntervalSeconds: 2, ttlSecondsAfterFinished: 5, podStartTimeoutSeconds: 60}
  - name: deploy
    mode: exact
    maxAgents: 40
    dispatch: {pollIntervalSeconds: 2, ttlSecondsAfterFinished: 5, podStartTimeoutSeconds: 60}
"""


def test_polling_dispatch_and_exact(
    cluster: Cluster, fake: FakeBuildkite, tmp_path: Path, processes: list[DispatcherProcess]
) -> None:
    stack = build_stack(cluster, tmp_path, fake, "dispatch-poll", QUEUES)
    dispatcher = DispatcherProcess(cluster, stack, "poller", tmp_path)
    processes.append(dispatcher)
    with Agents(cluster, fake, stack.namespace) as agents:
        builds: list[str] = []
        deploys: list[str] = []
        for burst in (6, 12, 4):
            builds += fake.add_jobs("builds", burst)
            deploys += fake.add_jobs("deploy", burst // 2)
            taken = builds + deploys
            wait_for(
                lambda taken=taken: all(
                    fake.job(u).state in ("assigned", "running", "finished") for u in taken
                ),
                timeout=60,
                what="every Buildkite job taken by an agent",
            )
        wait_for(lambda: all(fake.job(u).state == "finished" for u in builds + deploys), timeout=30)
        time.sleep(1)  # let the watch see the last Jobs (TTL may have removed some already)
        # Exact mode: exactly one Job per Buildkite job.
        exact = [
            labels["stackgen.io/buildkite-job"]
            for labels, _ in agents.jobs.values()
            if "stackgen.io/buildkite-job" in labels
        ]
        assert sorted(exact) == sorted(deploys)
        # Per-queue counts: dispatch-mode agents never beyond demand + buffer per dispatch.
        dispatch_jobs = [
            n for n, (labels, _) in agents.jobs.items() if labels["stackgen.io/queue"] == "builds"
        ]
        agents_made = sum(agents.jobs[n][1] for n in dispatch_jobs)
        assert agents_made <= len(builds) + len(dispatch_jobs), (agents_made, len(dispatch_jobs))
        exact_surplus = [p for p in agents.surplus if p.startswith("buildkite-agent-deploy-")]
        assert exact_surplus == []
        record(
            "dispatch-poll",
            latencies(fake, agents, builds),
            len([p for p in agents.surplus if p.startswith("buildkite-agent-builds-")]),
            len(builds),
        )
        record("exact-poll", latencies(fake, agents, deploys), len(exact_surplus), len(deploys))
        # Every log line carries the dispatch ID; the token never appears.
        lines = dispatcher.lines()
        cycles = [line for line in lines if line.get("event") == "cycle"]
        assert cycles and all(len(line["dispatch_id"]) == 8 for line in cycles)
        assert TOKEN not in dispatcher.log_path.read_text()
        assert dispatcher.metric('stackgen_agents_dispatched_total{mode="exact"') == len(deploys)
        # Cycles read Jobs from the watch cache once it has synced, not from a list each.
        assert dispatcher.metric('stackgen_job_reads_total{source="cache"') > 0
        # TTL removes the finished Jobs (and their token Secrets go with them).
        wait_for(
            lambda: (
                not cluster.items(
                    "jobs", namespace=stack.namespace, selector="stackgen.io/dispatch-id"
                )
            ),
            timeout=90,
            what="finished Jobs garbage-collected by TTL",
        )
        wait_for(
            lambda: (
                not [
                    s
                    for s in cluster.items("secrets", namespace=stack.namespace)
                    if s["metadata"]["name"].endswith("-acquire")
                ]
            ),
            timeout=60,
            what="acquisition-token Secrets collected with their Jobs",
        )


def test_webhook_triggers_dispatch_before_the_next_poll(
    cluster: Cluster, fake: FakeBuildkite, tmp_path: Path, processes: list[DispatcherProcess]
) -> None:
    queues = QUEUES.replace("pollIntervalSeconds: 2", "pollIntervalSeconds: 60")
    dispatcher_settings = (
        "dispatcher:\n  webhook:\n    enabled: true\n    token: {file: secrets/webhook}\n"
    )
    stack = build_stack(cluster, tmp_path, fake, "dispatch-hook", queues, dispatcher_settings)
    dispatcher = DispatcherProcess(cluster, stack, "hooked", tmp_path)
    processes.append(dispatcher)
    wait_for(
        lambda: dispatcher.metric("stackgen_cycles_total") >= 1, timeout=60, ignore=(Exception,)
    )
    with Agents(cluster, fake, stack.namespace) as agents:
        builds: list[str] = []
        deploys: list[str] = []
        for round_ in range(8):
            for queue, bucket in (("builds", builds), ("deploy", deploys)):
                (uuid,) = fake.add_jobs(queue, 1)
                bucket.append(uuid)
                delivery = send_webhook(
                    f"{dispatcher.url}/webhook",
                    job=fake.job(uuid),
                    hmac_key=WEBHOOK,
                    mode="signature",
                )
                assert delivery.status == 202
            pending = builds + deploys
            wait_for(
                lambda pending=pending: all(fake.job(u).state != "scheduled" for u in pending),
                timeout=20,
                what=f"round {round_}: webhook-triggered dispatch (the next poll is 60 s away)",
            )
            time.sleep(0.5)
        forged = send_webhook(
            f"{dispatcher.url}/webhook", job=fake.job(builds[0]), hmac_key="wrong", mode="signature"
        )
        assert forged.status == 401
        record(
            "dispatch-webhook",
            latencies(fake, agents, builds),
            len([p for p in agents.surplus if "-builds-" in p]),
            len(builds),
        )
        record(
            "exact-webhook",
            latencies(fake, agents, deploys),
            len([p for p in agents.surplus if "-deploy-" in p]),
            len(deploys),
        )


def test_leader_failover_and_restart_without_duplicates(
    cluster: Cluster,
    fake: FakeBuildkite,
    tmp_path: Path,
    processes: list[DispatcherProcess],
) -> None:
    stack = build_stack(cluster, tmp_path, fake, "dispatch-ha", QUEUES)
    first = DispatcherProcess(cluster, stack, "replica-a", tmp_path)
    processes.append(first)
    wait_for(
        lambda: first.metric("stackgen_leader") == 1,
        timeout=60,
        ignore=(Exception,),
        what="a leader",
    )
    second = DispatcherProcess(cluster, stack, "replica-b", tmp_path)
    processes.append(second)
    wait_for(
        lambda: second.metric("stackgen_cycles_total") == 0 and second.proc.poll() is None,
        timeout=30,
        ignore=(Exception,),
    )
    deploys = fake.add_jobs("deploy", 30)
    wait_for(
        lambda: (
            len(
                cluster.items(
                    "jobs", namespace=stack.namespace, selector="stackgen.io/buildkite-job"
                )
            )
            >= 10
        ),
        timeout=60,
        what="the leader dispatching",
    )
    assert second.metric("stackgen_leader") == 0
    assert second.metric("stackgen_jobs_created_total") == 0  # the follower never dispatched
    # Kill the leader mid-dispatch (no chance to release the lease).
    first.stop(signal.SIGKILL)
    killed_at = time.time()
    wait_for(
        lambda: second.metric("stackgen_leader") == 1,
        timeout=30,
        ignore=(Exception,),
        what="the follower taking over",
    )
    takeover = time.time() - killed_at
    assert takeover <= 6 + 4  # within the lease duration (+ one retry period and slack)
    # Jobs the dead leader reserved but made no Job for are hidden by Buildkite only for
    # the short reservation (30 s), not the pod start timeout: every job gets exactly one
    # Job, on the real clock.
    with Agents(cluster, fake, stack.namespace):
        wait_for(
            lambda: all(fake.job(u).state != "scheduled" for u in deploys) or None,
            timeout=120,
            what="all 30 exact jobs dispatched after the failover",
        )
    served = time.time() - killed_at
    jobs = cluster.items("jobs", namespace=stack.namespace, selector="stackgen.io/buildkite-job")
    per_job: dict[str, int] = {}
    for job in jobs:
        uuid = job["metadata"]["labels"]["stackgen.io/buildkite-job"]
        per_job[uuid] = per_job.get(uuid, 0) + 1
    assert sorted(per_job) == sorted(deploys)
    assert max(per_job.values()) == 1, "a Buildkite job was dispatched twice"
    print(f"\nleader failover took {takeover:.1f}s (lease 6 s); all jobs served {served:.1f}s")
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    data["failover_seconds"] = round(takeover, 2)
    data["failover_all_jobs_served_seconds"] = round(served, 2)
    FIGURES.write_text(json.dumps(data, indent=2) + "\n")


def test_pod_that_never_starts_is_retried_then_failed_on_buildkite(
    cluster: Cluster, fake: FakeBuildkite, tmp_path: Path, processes: list[DispatcherProcess]
) -> None:
    queues = textwrap.dedent(
        """\
        queues:
          - name: stuck
            mode: exact
            maxAgents: 5
            nodeSelector: {node.stackgen.io/none: "true"}
            dispatch: {pollIntervalSeconds: 2, podStartTimeoutSeconds: 10}
        """
    )
    stack = build_stack(cluster, tmp_path, fake, "dispatch-stuck", queues)
    processes.append(DispatcherProcess(cluster, stack, "stuck", tmp_path))
    (uuid,) = fake.add_jobs("stuck", 1)
    wait_for(lambda: fake.finished, timeout=90, what="the job finished on Buildkite as failed")
    (finished,) = fake.finished
    assert finished["job_uuid"] == uuid
    assert "did not start within 10s" in finished["detail"]
    assert "nodeSelector" in finished["detail"] or "Unschedulable" in finished["detail"]
    assert any("did not start" in n["detail"] for n in fake.notifications)


@pytest.fixture(autouse=True, scope="module")
def _fresh_figures() -> Iterator[None]:
    if FIGURES.exists():
        FIGURES.unlink()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    yield
