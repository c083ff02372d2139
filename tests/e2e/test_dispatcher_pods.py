"""``dispatch.workload: pod`` end to end: the dispatcher creates the agent pods itself.

Fake Buildkite on 127.0.0.1 -> `stackgen dispatcher` (real processes) -> agent pods (no
Job, no Job controller) -> kwok runs them -> simulated agents take the jobs -> the
dispatcher collects finished pods after their TTL.  Each guarantee of the Job path is
checked here for pods: exactly one pod per exact job, also after the leader is killed
with SIGKILL mid-burst; nothing left behind; pods that never start; canceled jobs.
"""

from __future__ import annotations

import signal
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_dispatcher import Agents
from tests.support.cluster import Cluster, wait_for
from tests.support.dispatcher_process import TOKEN, DispatcherProcess, OffsetClock, build_stack
from tests.support.fake_buildkite import FakeBuildkite

QUEUES = """\
queues:
  - name: builds
    mode: dispatch
    maxAgents: 60
    buffer: 1
    dispatch: {pollIntervalSeconds: 2, ttlSecondsAfterFinished: 5, podStartTimeoutSeconds: 60}
  - name: deploy
    mode: exact
    maxAgents: 60
    dispatch: {pollIntervalSeconds: 2, ttlSecondsAfterFinished: 5, podStartTimeoutSeconds: 60}
dispatcher:
  workload: pod
"""
AGENT_PODS = "stackgen.io/workload=pod"


@pytest.fixture
def fake() -> Iterator[FakeBuildkite]:
    with FakeBuildkite(
        token=TOKEN,
        queues=("builds", "deploy", "stuck"),
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


def agent_pods(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    return cluster.items("pods", namespace=namespace, selector=AGENT_PODS)


def test_pods_without_jobs_exactly_once_and_collected_after_their_ttl(
    cluster: Cluster, fake: FakeBuildkite, tmp_path: Path, processes: list[DispatcherProcess]
) -> None:
    stack = build_stack(cluster, tmp_path, fake, "pods-poll", QUEUES)
    dispatcher = DispatcherProcess(cluster, stack, "pods", tmp_path)
    processes.append(dispatcher)
    with Agents(cluster, fake, stack.namespace) as agents:
        builds = fake.add_jobs("builds", 12)
        deploys = fake.add_jobs("deploy", 20)
        first = wait_for(lambda: agent_pods(cluster, stack.namespace), timeout=30, interval=0.1)
        owners = {
            (o["kind"], o["name"], o.get("controller"))
            for p in first
            for o in p["metadata"].get("ownerReferences") or []
        }
        assert owners and owners <= {
            ("CronJob", "buildkite-agent-builds", False),
            ("CronJob", "buildkite-agent-deploy", False),
        }
        assert all(p["spec"]["restartPolicy"] == "Never" for p in first)
        assert all(p["spec"]["activeDeadlineSeconds"] > 0 for p in first)
        wait_for(
            lambda: all(fake.job(u).state == "finished" for u in builds + deploys),
            timeout=90,
            what="every Buildkite job run by an agent pod",
        )
        assert not agents.jobs, "pod mode created Kubernetes Jobs"
        exact = [p for p in agents.seen if p.startswith("buildkite-agent-deploy-")]
        assert sorted(agents.ran[p] for p in exact if p in agents.ran) == sorted(deploys)
        assert len(exact) == len(deploys)  # one pod per exact job, no second one
        assert dispatcher.metric('stackgen_agent_pods_created_total{queue="deploy"') == len(deploys)
        assert dispatcher.metric('stackgen_jobs_created_total{queue="deploy"') == 0
        # The dispatcher collects finished pods after ttlSecondsAfterFinished (5 s); their
        # token Secrets go with them.  (The agents run on: idle ones exit after 5 s.)
        wait_for(
            lambda: not agent_pods(cluster, stack.namespace),
            timeout=60,
            what="finished agent pods collected by the dispatcher",
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
            what="token Secrets collected with their pods",
        )
    assert dispatcher.metric('stackgen_agent_pods_collected_total{reason="ttl"') >= len(deploys)


def test_kill_9_mid_burst_leaves_no_duplicate_and_no_orphan(
    cluster: Cluster, fake: FakeBuildkite, tmp_path: Path, processes: list[DispatcherProcess]
) -> None:
    stack = build_stack(cluster, tmp_path, fake, "pods-ha", QUEUES)
    first = DispatcherProcess(cluster, stack, "pods-a", tmp_path)
    processes.append(first)
    wait_for(lambda: first.metric("stackgen_leader") == 1, timeout=60, ignore=(Exception,))
    second = DispatcherProcess(cluster, stack, "pods-b", tmp_path)
    processes.append(second)
    wait_for(
        lambda: second.metric("stackgen_cycles_total") == 0 and second.proc.poll() is None,
        timeout=30,
        ignore=(Exception,),
    )
    deploys = fake.add_jobs("deploy", 40)
    wait_for(
        lambda: len(agent_pods(cluster, stack.namespace)) >= 5,
        timeout=60,
        interval=0.05,
        what="the leader creating pods",
    )
    first.stop(signal.SIGKILL)  # mid-burst: no lease release, no goodbye
    wait_for(lambda: second.metric("stackgen_leader") == 1, timeout=30, ignore=(Exception,))
    with Agents(cluster, fake, stack.namespace):
        wait_for(
            lambda: all(fake.job(u).state == "finished" for u in deploys) or None,
            timeout=150,
            what="all 40 exact jobs run after the failover",
        )
        seen: dict[str, set[str]] = {}
        for pod in agent_pods(cluster, stack.namespace):
            uuid = pod["metadata"]["labels"]["stackgen.io/buildkite-job"]
            seen.setdefault(uuid, set()).add(pod["metadata"]["name"])
        assert all(len(names) == 1 for names in seen.values()), seen
        # No orphans: every pod either of them made is collected by the survivor.
        wait_for(
            lambda: not agent_pods(cluster, stack.namespace),
            timeout=60,
            what="every agent pod collected after the kill",
        )
    created = second.metric('stackgen_agent_pods_created_total{queue="deploy"')
    assert created <= len(deploys)


def test_stuck_pods_are_retried_then_failed_and_canceled_jobs_lose_their_pod(
    cluster: Cluster, fake: FakeBuildkite, tmp_path: Path, processes: list[DispatcherProcess]
) -> None:
    queues = textwrap.dedent(
        """\
        queues:
          - name: stuck
            mode: exact
            maxAgents: 5
            nodeSelector: {node.stackgen.io/none: "true"}
            dispatch: {pollIntervalSeconds: 2, podStartTimeoutSeconds: 10, workload: pod}
        """
    )
    stack = build_stack(cluster, tmp_path, fake, "pods-stuck", queues)
    processes.append(DispatcherProcess(cluster, stack, "pods-stuck", tmp_path))
    uuid, canceled = fake.add_jobs("stuck", 2)

    def pod_of(job: str) -> list[str]:
        return [
            p["metadata"]["name"]
            for p in agent_pods(cluster, stack.namespace)
            if p["metadata"]["labels"].get("stackgen.io/buildkite-job") == job
        ]

    wait_for(lambda: pod_of(canceled), timeout=30, interval=0.2, what="the pods created")
    fake.set_job_state(canceled, "canceled")
    started = time.time()
    wait_for(lambda: not pod_of(canceled), timeout=20, what="the canceled job's pod deleted")
    assert time.time() - started < 10  # before its pod start timeout
    wait_for(lambda: fake.finished, timeout=90, what="the stuck job finished on Buildkite")
    (finished,) = fake.finished
    assert finished["job_uuid"] == uuid
    assert "did not start within 10s" in finished["detail"]
    assert "Unschedulable" in finished["detail"] or "nodeSelector" in finished["detail"]
    # Attempt 1 was noted on the timeline, then attempt 2 made (and given up on).
    notes = [n["detail"] for n in fake.notifications if "did not start" in n["detail"]]
    assert len(notes) == 2 and f"{uuid}-1 did not start" in notes[0]
    assert f"{uuid}-2 did not start" in notes[1]
    wait_for(lambda: not pod_of(uuid), timeout=30, what="the stuck pods deleted")
