"""`stackgen status` on a fake cluster seam: tables and JSON from Jobs, pods, the Lease
and the dispatcher's metrics (the real kubectl path runs in tests/e2e/test_observability.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stackgen.deploy.status import collect, render, stuck_reason, to_json

NOW = 1_800_000_000.0
NS = "ci"
STACK = "obs.ci"


def _stamp(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(name: str, **labels: str) -> dict[str, Any]:
    return {"name": name, "namespace": NS, "labels": {"stackgen.io/stack": STACK, **labels}}


def _pod(name: str, queue: str, phase: str, **extra: Any) -> dict[str, Any]:
    meta = {"name": name, "namespace": NS, "labels": {"stackgen.io/queue": queue}}
    meta["labels"].update(extra.pop("labels", {}))
    return {"kind": "Pod", "metadata": meta, "status": {"phase": phase, **extra}}


OBJECTS = [
    {
        "kind": "CronJob",
        "metadata": {
            **_meta("buildkite-agent-builds", **{"stackgen.io/queue": "builds"}),
            "annotations": {"stackgen.io/mode": "dispatch"},
        },
    },
    {
        "kind": "CronJob",
        "metadata": {
            **_meta("buildkite-agent-deploy", **{"stackgen.io/queue": "deploy"}),
            "annotations": {"stackgen.io/mode": "exact"},
        },
    },
    {
        "kind": "Deployment",
        "metadata": _meta("buildkite-agent-default", **{"stackgen.io/queue": "default"}),
    },
    {"kind": "Deployment", "metadata": _meta("stackgen-dispatcher")},
    {
        "kind": "Lease",
        "metadata": _meta("stackgen-dispatcher"),
        "spec": {"holderIdentity": "stackgen-dispatcher-abc", "renewTime": _stamp(NOW - 3)},
    },
]

READY = [{"type": "Ready", "status": "True"}]
UNSCHEDULABLE = [
    {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/4 nodes are available: 4 node(s) didn't match Pod's node affinity/selector.",
    }
]
PULL = [
    {
        "name": "agent",
        "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}},
    }
]

LIVE = [
    {
        "kind": "Job",
        "metadata": {
            "name": "buildkite-agent-builds-aaaa0001",
            "creationTimestamp": _stamp(NOW - 600),
            "labels": {"stackgen.io/queue": "builds", "stackgen.io/dispatch-id": "aaaa0001"},
        },
    },
    {
        "kind": "Job",
        "metadata": {
            "name": "buildkite-agent-builds-bbbb0002",
            "creationTimestamp": _stamp(NOW - 42),
            "labels": {"stackgen.io/queue": "builds", "stackgen.io/dispatch-id": "bbbb0002"},
        },
    },
    {
        "kind": "Job",
        "metadata": {
            "name": "buildkite-agent-deploy-cccc0003-0",
            "creationTimestamp": _stamp(NOW - 3600),
            "labels": {
                "stackgen.io/queue": "deploy",
                "stackgen.io/dispatch-id": "cccc0003",
                "stackgen.io/kept": "true",
            },
            "annotations": {"stackgen.io/kept-until": "2027-01-15T10:00:00Z"},
        },
    },
    _pod("builds-1", "builds", "Running", conditions=READY),
    _pod("builds-2", "builds", "Pending", conditions=UNSCHEDULABLE),
    _pod("builds-3", "builds", "Pending", containerStatuses=PULL),
    _pod("builds-done", "builds", "Succeeded"),
    _pod(
        "deploy-failed",
        "deploy",
        "Failed",
        labels={"batch.kubernetes.io/job-name": "buildkite-agent-deploy-cccc0003-0"},
    ),
    _pod("default-1", "default", "Running", conditions=READY),
    _pod("default-2", "default", "Running", conditions=[{"type": "Ready", "status": "False"}]),
]

METRICS = """\
# HELP stackgen_queue_scheduled_jobs Scheduled Buildkite jobs per queue.
# TYPE stackgen_queue_scheduled_jobs gauge
stackgen_queue_scheduled_jobs{queue="builds"} 7.0
stackgen_queue_scheduled_jobs{queue="deploy"} 2.0
# HELP stackgen_queue_running_jobs Running Buildkite jobs per queue.
# TYPE stackgen_queue_running_jobs gauge
stackgen_queue_running_jobs{queue="builds"} 1.0
# HELP stackgen_queue_cooldown 1 while the queue waits for its last dispatch.
# TYPE stackgen_queue_cooldown gauge
stackgen_queue_cooldown{queue="builds"} 1.0
"""

ADAPTER_METRICS = """\
# TYPE stackgen_adapter_buildkite_jobs_scheduled gauge
stackgen_adapter_buildkite_jobs_scheduled{queue="default"} 4.0
# TYPE stackgen_adapter_buildkite_jobs_running gauge
stackgen_adapter_buildkite_jobs_running{queue="default"} 3.0
"""


class FakeCluster:
    def __init__(self, metrics: str | Exception = METRICS) -> None:
        self.metrics = metrics
        self.calls: list[tuple[str, Any]] = []

    def get_json(
        self, kinds: str, *, namespace: str | None, selector: str | None
    ) -> dict[str, Any]:
        self.calls.append(("get", (kinds, namespace, selector)))
        items = OBJECTS if kinds == "cronjobs,deployments,leases" else LIVE
        return {"items": items}

    def get_raw(self, path: str) -> str:
        self.calls.append(("raw", path))
        if "/services/stackgen-metrics-adapter:metrics/proxy/" in path:
            return ADAPTER_METRICS
        if isinstance(self.metrics, Exception):
            raise self.metrics
        return self.metrics


def test_status_rows_from_jobs_pods_lease_and_metrics() -> None:
    cluster = FakeCluster()
    (stack,) = collect(cluster, now=NOW)
    assert (stack.stack, stack.namespace, stack.leader) == ("obs", NS, "stackgen-dispatcher-abc")
    assert stack.leader_renewed_seconds_ago == 3.0
    # The leader's metrics, through the API server's pod proxy.
    assert (
        "raw",
        f"/api/v1/namespaces/{NS}/pods/stackgen-dispatcher-abc:8080/proxy/metrics",
    ) in cluster.calls
    rows = {q.queue: q for q in stack.queues}
    assert [q.mode for q in stack.queues] == ["dispatch", "hpa", "exact"]
    builds = rows["builds"]
    assert (builds.scheduled, builds.running, builds.cooldown) == (7.0, 1.0, True)
    assert (builds.agents_starting, builds.agents_running) == (2, 1)
    assert (builds.last_dispatch_id, builds.last_dispatch_age_seconds) == ("bbbb0002", 42.0)
    assert [s["pod"] for s in builds.stuck_pods] == ["builds-2", "builds-3"]
    assert builds.stuck_pods[0]["reason"].startswith("Unschedulable: 0/4 nodes are available")
    assert builds.stuck_pods[1]["reason"] == "ImagePullBackOff: Back-off pulling image"
    assert rows["deploy"].scheduled == 2.0 and rows["deploy"].cooldown is None
    assert (rows["default"].agents_running, rows["default"].agents_starting) == (1, 1)
    # hpa queues: the adapter's values, through its Service's proxy.
    assert (rows["default"].scheduled, rows["default"].running) == (4.0, 3.0)
    assert stack.kept_pods == [
        {
            "pod": "deploy-failed",
            "job": "buildkite-agent-deploy-cccc0003-0",
            "kept_until": "2027-01-15T10:00:00Z",
        }
    ]


def test_status_table_and_json() -> None:
    stacks = collect(FakeCluster(), now=NOW)
    text = render(stacks)
    assert (
        text.splitlines()[0]
        == f"STACK obs  NAMESPACE {NS}  LEADER stackgen-dispatcher-abc (renewed 3s ago)"
    )
    header = text.splitlines()[1].split()
    assert header[:3] == ["QUEUE", "MODE", "SCHEDULED"]
    builds = next(line for line in text.splitlines() if line.startswith("builds"))
    assert builds.split() == [
        "builds",
        "dispatch",
        "7",
        "1",
        "2",
        "1",
        "bbbb0002",
        "42s",
        "yes",
        "2",
    ]
    assert "  stuck  builds-2  Unschedulable: 0/4 nodes" in text
    assert (
        "  kept   deploy-failed  (Job buildkite-agent-deploy-cccc0003-0, until 2027-01-15T10:00:00Z)"
        in text
    )
    data = json.loads(json.dumps(to_json(stacks)))
    assert data[0]["queues"][0]["queue"] == "builds" and data[0]["queues"][0]["cooldown"] is True


def test_status_without_metrics_says_why() -> None:
    (stack,) = collect(FakeCluster(RuntimeError("Error from server (ServiceUnavailable)")), now=NOW)
    assert stack.metrics_error and "ServiceUnavailable" in stack.metrics_error
    builds = next(q for q in stack.queues if q.queue == "builds")
    assert builds.scheduled is None and builds.agents_running == 1  # the cluster's facts stay
    text = render([stack])
    assert "(dispatcher metrics unavailable: Error from server (ServiceUnavailable))" in text
    assert next(line for line in text.splitlines() if line.startswith("builds")).split()[2] == "?"


def test_status_reads_a_given_dispatcher_url() -> None:
    fetched: list[str] = []

    def fetch(url: str) -> str:
        fetched.append(url)
        return METRICS

    cluster = FakeCluster(RuntimeError("proxy must not be used"))
    (stack,) = collect(cluster, now=NOW, dispatcher_url="http://127.0.0.1:9999/", fetch=fetch)
    assert fetched == ["http://127.0.0.1:9999/metrics"] and stack.metrics_error is None


def test_status_filters_by_stack_and_says_when_none() -> None:
    assert collect(FakeCluster(), now=NOW, stack="other") == []
    assert "no stackgen stacks found" in render([])


@pytest.mark.parametrize(
    ("pod", "reason"),
    [
        (_pod("p", "q", "Pending", conditions=UNSCHEDULABLE), "Unschedulable: 0/4 nodes"),
        (_pod("p", "q", "Pending", containerStatuses=PULL), "ImagePullBackOff: Back-off"),
        (_pod("p", "q", "Running", conditions=READY), None),
        (_pod("p", "q", "Failed", conditions=UNSCHEDULABLE), None),
    ],
)
def test_stuck_reason(pod: dict[str, Any], reason: str | None) -> None:
    got = stuck_reason(pod)
    assert (got is None) if reason is None else (got or "").startswith(reason)


def test_status_error_from_kubectl_is_one_clean_line() -> None:
    from stackgen.common.errors import ClusterError

    failing = FakeCluster(
        ClusterError('kubectl get --raw: Error from server (NotFound): pods "x" not found')
    )
    (stack,) = collect(failing, now=NOW)
    assert stack.metrics_error == (
        'dispatcher metrics unavailable: kubectl get --raw: Error from server (NotFound): pods "x" not found'
    )


def test_status_command_table_json_and_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import stackgen.deploy.cluster as cluster_module
    from stackgen.cli import cli

    made: list[dict[str, Any]] = []

    class Kubectl(FakeCluster):
        def __init__(self, **kwargs: Any) -> None:
            made.append(kwargs)
            super().__init__()

    monkeypatch.setattr(cluster_module, "Kubectl", Kubectl)
    runner = CliRunner()
    table = runner.invoke(cli, ["status", "--context", "prod", "-n", NS])
    assert table.exit_code == 0, table.output
    assert made[-1] == {"kubeconfig": None, "context": "prod"}
    assert "STACK obs  NAMESPACE ci  LEADER stackgen-dispatcher-abc" in table.output
    shown = runner.invoke(cli, ["status", "-o", "json", "--kubeconfig", "/k"])
    assert json.loads(shown.output)[0]["stack"] == "obs" and made[-1]["kubeconfig"] == "/k"

    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt  # Ctrl-C

    monkeypatch.setattr("time.sleep", sleep)
    watched = runner.invoke(cli, ["status", "--watch", "--interval", "2"])
    assert watched.exit_code == 0, watched.output
    assert watched.output.count("STACK obs") == 2 and sleeps == [2.0, 2.0]


def test_status_counts_pods_the_dispatcher_created_itself() -> None:
    """``dispatch.workload: pod``: no Job; each pod is its own record (dispatch, kept)."""
    bare = {"stackgen.io/workload": "pod", "stackgen.io/dispatch-id": "dddd0004"}
    running = _pod("deploy-pod-1", "deploy", "Running", conditions=READY, labels=bare)
    running["metadata"]["creationTimestamp"] = _stamp(NOW - 7)
    failed = _pod("deploy-pod-2", "deploy", "Failed", labels={**bare, "stackgen.io/kept": "true"})
    failed["metadata"]["creationTimestamp"] = _stamp(NOW - 60)
    failed["metadata"]["annotations"] = {"stackgen.io/kept-until": "2027-01-15T11:00:00Z"}

    class Bare(FakeCluster):
        def get_json(
            self, kinds: str, *, namespace: str | None, selector: str | None
        ) -> dict[str, Any]:
            if kinds == "cronjobs,deployments,leases":
                return {"items": OBJECTS}
            return {"items": [running, failed]}

    (stack,) = collect(Bare(), now=NOW)
    deploy = next(q for q in stack.queues if q.queue == "deploy")
    assert deploy.agents_running == 1
    assert (deploy.last_dispatch_id, deploy.last_dispatch_age_seconds) == ("dddd0004", 7.0)
    assert stack.kept_pods == [
        {"pod": "deploy-pod-2", "job": "deploy-pod-2", "kept_until": "2027-01-15T11:00:00Z"}
    ]
