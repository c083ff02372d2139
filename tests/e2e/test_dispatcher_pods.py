"""``dispatch.workload: pod`` end to end: the dispatcher creates the agent pods itself.

Fake Buildkite on 127.0.0.1 -> `stackgen dispatcher` (real processes) -> agent pods (no
Job, no Job controller) -> kwok runs them -> simulated agents take the jobs -> the
dispatcher collects finished pods after their TTL.  Each guarantee of the Job path is
checked here for pods: exactly one pod per exact job, also after the leader is killed
with SIGKILL mid-burst; nothing left behind; pods that never start; canceled jobs; pods
the API server refuses (a LimitRange, a ResourceQuota), against the Job path's answer.
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
        queues=("builds", "deploy", "stuck", "refused", "refusedjob", "quota"),
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


REFUSED = textwrap.dedent(
    """\
    queues:
      - name: refused
        mode: exact
        maxAgents: 5
        dispatch: {pollIntervalSeconds: 2, podStartTimeoutSeconds: 10, workload: pod}
      - name: refusedjob
        mode: exact
        maxAgents: 5
        dispatch: {pollIntervalSeconds: 2, podStartTimeoutSeconds: 10, workload: job}
    """
)


def test_a_pod_refused_for_good_fails_its_job_at_once_and_a_job_without_a_retry(
    cluster: Cluster, fake: FakeBuildkite, tmp_path: Path, processes: list[DispatcherProcess]
) -> None:
    """A LimitRange refuses the agent's 256Mi limit.  Pods: the create is refused, the job
    fails at once with the API server's reason.  Jobs: the Job controller's create is
    refused (FailedCreate); after the pod start timeout the job fails with the same
    reason, and no second Job is tried (it would be refused again)."""
    stack = build_stack(cluster, tmp_path, fake, "pods-refused", REFUSED)
    cluster.apply(
        textwrap.dedent(
            f"""\
            apiVersion: v1
            kind: LimitRange
            metadata: {{name: small, namespace: {stack.namespace}}}
            spec: {{limits: [{{type: Container, max: {{memory: 128Mi}}}}]}}
            """
        )
    )
    dispatcher = DispatcherProcess(cluster, stack, "pods-refused", tmp_path)
    processes.append(dispatcher)
    wait_for(lambda: dispatcher.metric("stackgen_cycles_total"), timeout=60, ignore=(Exception,))
    (by_pod,) = fake.add_jobs("refused", 1)
    (by_job,) = fake.add_jobs("refusedjob", 1)
    added = time.time()

    def finished(uuid: str) -> dict[str, Any] | None:
        return next((f for f in fake.finished if f["job_uuid"] == uuid), None)

    pod_failed = wait_for(lambda: finished(by_pod), timeout=60, what="the pod's job failed")
    pod_seconds = time.time() - added
    assert pod_seconds < 10, "failed before the pod start timeout: the refusal is final"
    assert pod_failed["detail"].startswith("stackgen: Kubernetes refused the agent pod: ")
    assert "maximum memory usage per Container is 128Mi" in pod_failed["detail"]
    job_failed = wait_for(lambda: finished(by_job), timeout=90, what="the Job's job failed")
    assert "did not start within 10s: FailedCreate" in job_failed["detail"]
    assert "maximum memory usage per Container is 128Mi" in job_failed["detail"]
    notes = [n["detail"] for n in fake.notifications if n["job_uuid"] == by_job]
    assert not [n for n in notes if "retrying" in n], notes
    assert not agent_pods(cluster, stack.namespace)
    jobs = cluster.items("jobs", namespace=stack.namespace, selector="stackgen.io/dispatch-id")
    assert len(jobs) <= 1  # the one Job (deleted by now, or going): no second attempt


def test_a_pod_refused_by_a_quota_waits_as_long_as_a_job_would_then_fails(
    cluster: Cluster, fake: FakeBuildkite, tmp_path: Path, processes: list[DispatcherProcess]
) -> None:
    queues = textwrap.dedent(
        """\
        queues:
          - name: quota
            mode: exact
            maxAgents: 5
            dispatch: {pollIntervalSeconds: 2, podStartTimeoutSeconds: 10, workload: pod}
        """
    )
    stack = build_stack(cluster, tmp_path, fake, "pods-quota", queues)
    cluster.forbid_pods(stack.namespace)
    dispatcher = DispatcherProcess(cluster, stack, "pods-quota", tmp_path)
    processes.append(dispatcher)
    wait_for(lambda: dispatcher.metric("stackgen_cycles_total"), timeout=60, ignore=(Exception,))
    (uuid,) = fake.add_jobs("quota", 1)
    added = time.time()
    note = wait_for(
        lambda: [n for n in fake.notifications if n["job_uuid"] == uuid],
        timeout=30,
        what="the refusal noted on the job's timeline",
    )
    assert "refused the agent pod (retrying for up to 20s)" in note[0]["detail"]
    assert "quota" in note[0]["detail"]
    wait_for(lambda: fake.finished, timeout=120, what="the job failed after the window")
    (failed,) = fake.finished
    assert time.time() - added >= 20  # two pod start timeouts, as the Job path takes
    assert failed["job_uuid"] == uuid
    assert failed["detail"].startswith("stackgen: Kubernetes refused the agent pod for ")
    assert "quota" in failed["detail"]
    assert len([n for n in fake.notifications if n["job_uuid"] == uuid]) == 2  # note, failure
    assert not agent_pods(cluster, stack.namespace)
