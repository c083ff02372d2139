"""The dispatcher's resilience end to end: `stackgen dispatcher` as a real process on the
local control plane, the fake Buildkite injecting faults.

* one 429 on the reserve and one 500 on the tokens: every job has its Job soon after;
* a slow Buildkite answer for some queues (the metrics call, another queue's list) never
  delays a healthy queue's jobs (head-of-line blocking);
* kill -9 between reserve and create: a restarted dispatcher serves the jobs within the
  short reservation, not after the pod start timeout;
* deleting a queue's template CronJob drains its Jobs (the garbage collector is the judge:
  a canary owned by the CronJob goes, the Jobs and their running pods stay);
* a ResourceQuota that forbids the pod is the reason Buildkite is told.

Figures go to tests/e2e/.dispatcher-figures.json (as test_dispatcher.py's do).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster import Cluster, wait_for
from tests.support.dispatcher_process import (
    TOKEN,
    DispatcherProcess,
    OffsetClock,
    Stack,
    build_stack,
)
from tests.support.fake_buildkite import FakeBuildkite
from tests.support.paths import ROOT

FIGURES = ROOT / "tests" / "e2e" / ".dispatcher-figures.json"
SETTINGS = (
    "dispatch: {pollIntervalSeconds: 2, ttlSecondsAfterFinished: 5, podStartTimeoutSeconds: 60}"
)


def queue(name: str, mode: str, settings: str = SETTINGS, extra: str = "") -> str:
    return f"  - name: {name}\n    mode: {mode}\n    maxAgents: 20\n{extra}    {settings}\n"


def record(name: str, value: Any) -> None:
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    data[name] = value
    FIGURES.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\n{name}: {value}")


class JobsSeen:
    """When each Job (and each Buildkite job's Job) was first seen, from a watch."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.by_uuid: dict[str, float] = {}
        self.names: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> JobsSeen:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _watch(self) -> None:
        from kubernetes import client, watch

        api = self.cluster.api_client()
        batch = client.BatchV1Api(api)
        while not self._stop.is_set():
            try:
                for event in watch.Watch().stream(
                    batch.list_namespaced_job,
                    self.namespace,
                    label_selector="stackgen.io/dispatch-id",
                    timeout_seconds=2,
                ):
                    job = event["object"]
                    now = time.time()
                    self.names.setdefault(job.metadata.name, now)
                    uuid = (job.metadata.labels or {}).get("stackgen.io/buildkite-job")
                    if uuid:
                        self.by_uuid.setdefault(uuid, now)
                    if self._stop.is_set():
                        break
            except Exception:  # a watch can break at any time; start another
                time.sleep(0.2)
        api.close()


@pytest.fixture
def fake() -> Iterator[FakeBuildkite]:
    with FakeBuildkite(
        token=TOKEN,
        queues=("builds", "deploy", "other", "slow", "quota"),
        poll_duration_seconds=1,
        clock=OffsetClock(),
    ) as server:
        yield server


@pytest.fixture
def processes() -> Iterator[list[DispatcherProcess]]:
    started: list[DispatcherProcess] = []
    yield started
    for proc in started:
        proc.stop(signal.SIGKILL)


def stack_key(stack: Stack, queue_name: str) -> str:
    config = yaml.safe_load(stack.config.read_text())
    return f"{config['buildkite']['stackKey']}-{queue_name}"


def start(
    cluster: Cluster, stack: Stack, name: str, tmp_path: Path, processes: list[DispatcherProcess]
) -> DispatcherProcess:
    proc = DispatcherProcess(cluster, stack, name, tmp_path)
    processes.append(proc)
    wait_for(
        lambda: proc.metric("stackgen_leader") == 1,
        timeout=60,
        ignore=(Exception,),
        what=f"{name} leading",
    )
    return proc


def test_reserve_and_token_faults_then_a_slow_lane_never_delays_a_healthy_one(
    cluster: Cluster, fake: FakeBuildkite, tmp_path: Path, processes: list[DispatcherProcess]
) -> None:
    names = (("deploy", "exact"), ("other", "exact"), ("slow", "exact"), ("builds", "dispatch"))
    queues = "queues:\n" + "".join(queue(name, mode) for name, mode in names)
    stack = build_stack(cluster, tmp_path, fake, "dispatch-faults", queues)
    start(cluster, stack, "faults", tmp_path, processes)
    with JobsSeen(cluster, stack.namespace) as seen:
        # One 429 on the reserve, one 500 on the tokens after a successful reserve.
        fake.inject("batch_reserve", "429", seconds=2)
        fake.inject("job_acquisition_tokens", "500")
        uuids = fake.add_jobs("deploy", 3) + fake.add_jobs("other", 3)
        wait_for(
            lambda: all(u in seen.by_uuid for u in uuids),
            timeout=60,
            what="every job's Job after a reserve 429 and a token 500",
        )
        faulted = [
            r.timestamp
            for r in fake.requests
            if r.route in ("batch_reserve", "job_acquisition_tokens") and r.status >= 400
        ]
        assert len(faulted) == 2
        recovery = max(seen.by_uuid[u] for u in uuids) - max(faulted)
        record("faults_reserve_token_recovery_seconds", round(recovery, 2))
        assert recovery < 20, "jobs waited for a reservation to lapse"

        # Head-of-line: the metrics call and the `slow` queue's list answer after 20 s.
        key = stack_key(stack, "slow")
        fake.inject(f"/v3/stacks/{key}/scheduled-jobs", "slow", times=1000, seconds=20)
        fake.inject("metrics", "slow", times=1000, seconds=20)
        time.sleep(3)  # both slow calls are under way
        waits = []
        for _ in range(3):
            (uuid,) = fake.add_jobs("other", 1)
            added = time.time()
            wait_for(lambda uuid=uuid: uuid in seen.by_uuid, timeout=60, what="the healthy job")
            waits.append(round(seen.by_uuid[uuid] - added, 2))
            time.sleep(2)
        fake.clear_faults()
        record("faults_head_of_line_healthy_waits_seconds", waits)
        assert max(waits) < 10, f"a healthy queue waited for slow lanes: {waits}"


def test_kill_between_reserve_and_create_is_served_within_the_short_reservation(
    cluster: Cluster, fake: FakeBuildkite, tmp_path: Path, processes: list[DispatcherProcess]
) -> None:
    stack = build_stack(
        cluster, tmp_path, fake, "dispatch-kill", "queues:\n" + queue("deploy", "exact")
    )
    first = start(cluster, stack, "doomed", tmp_path, processes)
    fake.inject("job_acquisition_tokens", "slow", seconds=25)  # held between reserve and create
    uuids = fake.add_jobs("deploy", 4)
    wait_for(
        lambda: all(fake.job(u).state == "reserved" for u in uuids),
        timeout=60,
        what="the jobs reserved",
    )
    first.stop(signal.SIGKILL)
    killed = time.time()
    assert not cluster.items(
        "jobs", namespace=stack.namespace, selector="stackgen.io/buildkite-job"
    )
    with JobsSeen(cluster, stack.namespace) as seen:
        start(cluster, stack, "successor", tmp_path, processes)
        wait_for(
            lambda: all(u in seen.by_uuid for u in uuids),
            timeout=120,
            what="the successor serving the jobs its predecessor reserved",
        )
    took = max(seen.by_uuid.values()) - killed
    record("faults_kill_between_reserve_and_create_seconds", round(took, 2))
    assert took < 90, "the jobs waited for the pod-start-long reservation (180 s here)"


def test_deleting_a_queue_template_drains_its_jobs(
    cluster: Cluster, fake: FakeBuildkite, tmp_path: Path, processes: list[DispatcherProcess]
) -> None:
    stack = build_stack(
        cluster, tmp_path, fake, "dispatch-drain", "queues:\n" + queue("builds", "dispatch")
    )
    ns = stack.namespace
    proc = start(cluster, stack, "drainer", tmp_path, processes)
    fake.add_jobs("builds", 2)

    def running_pods() -> list[dict[str, Any]]:
        pods = cluster.items("pods", namespace=ns, selector="stackgen.io/dispatch-id")
        return [p for p in pods if p["status"].get("phase") == "Running"]

    wait_for(lambda: len(running_pods()) == 2, timeout=90, what="2 agent pods running")
    (job,) = cluster.items("jobs", namespace=ns, selector="stackgen.io/dispatch-id")
    template = cluster.get("cronjob", "buildkite-agent-builds", ns)
    assert template is not None
    # A canary owned by the template: when the garbage collector has removed it, it has
    # also dealt with everything else the template owns.
    owner = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "name": "buildkite-agent-builds",
        "uid": template["metadata"]["uid"],
    }
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "gc-canary", "namespace": ns, "ownerReferences": [owner]},
        }
    )
    cycles = proc.metric("stackgen_cycles_total")
    cluster.kubectl("delete", "cronjob", "buildkite-agent-builds", "-n", ns)
    wait_for(
        lambda: cluster.get("configmap", "gc-canary", ns) is None,
        timeout=120,
        what="the garbage collector removing what the template owned",
    )
    assert [j["metadata"]["name"] for j in cluster.items("jobs", namespace=ns)] == [
        job["metadata"]["name"]
    ], "the running builds' Job went with its template"
    assert len(running_pods()) == 2
    # Nothing new is dispatched while there is no template, though jobs wait.
    fake.add_jobs("builds", 2)
    wait_for(
        lambda: proc.metric('stackgen_queue_template_missing{queue="builds"}') == 1,
        timeout=60,
        ignore=(Exception,),
        what="the template-missing condition",
    )
    wait_for(
        lambda: proc.metric("stackgen_cycles_total") >= cycles + 4,
        timeout=60,
        ignore=(Exception,),
        what="a few more cycles",
    )
    assert len(cluster.items("jobs", namespace=ns, selector="stackgen.io/dispatch-id")) == 1
    missing = [line for line in proc.lines() if "template CronJob missing" in line.get("event", "")]
    assert len(missing) == 1  # once per change of state, not once per retry
    # The agents finish their builds; the Job completes and its TTL collects it.
    for pod in running_pods():
        cluster.kubectl(
            "annotate", "pod", pod["metadata"]["name"], "-n", ns, "stackgen.io/agent-exit=0"
        )
    wait_for(
        lambda: not cluster.items("jobs", namespace=ns, selector="stackgen.io/dispatch-id"),
        timeout=120,
        what="the drained Job completed and collected by its TTL",
    )


def test_a_quota_that_forbids_the_pod_is_the_reason_buildkite_is_told(
    cluster: Cluster, fake: FakeBuildkite, tmp_path: Path, processes: list[DispatcherProcess]
) -> None:
    settings = "dispatch: {pollIntervalSeconds: 2, podStartTimeoutSeconds: 10}"
    stack = build_stack(
        cluster, tmp_path, fake, "dispatch-quota", "queues:\n" + queue("quota", "exact", settings)
    )
    cluster.forbid_pods(stack.namespace)
    start(cluster, stack, "quota", tmp_path, processes)
    (uuid,) = fake.add_jobs("quota", 1)
    wait_for(lambda: fake.finished, timeout=120, what="the job finished on Buildkite as failed")
    (finished,) = fake.finished
    assert finished["job_uuid"] == uuid
    assert "did not start within 10s: FailedCreate" in finished["detail"]
    assert "exceeded quota" in finished["detail"]
    assert any("exceeded quota" in n["detail"] for n in fake.notifications)
