"""The fast paths the benchmarks asked for behave like the slow ones."""

from __future__ import annotations

from typing import Any

from stackgen.dispatcher.config import from_dict
from stackgen.dispatcher.jobs import list_views
from stackgen.dispatcher.kube import slim_listed_job
from stackgen.pipeline import build
from stackgen.validation.kubeconform import (
    kubeconform_problems,
    kubeconform_result,
    warm_kubeconform,
)
from tests.support.dispatcher_config import config_dict
from tests.support.fake_buildkite import VirtualClock
from tests.support.fake_kube import FakeKube
from tests.support.paths import EXAMPLE


def job(name: str, created: str, status: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "creationTimestamp": created,
            "labels": {"stackgen.io/dispatch-id": "abcd1234", "stackgen.io/queue": "builds"},
            "annotations": {"stackgen.io/queue": "builds"},
            "managedFields": [{"manager": "x"}],
        },
        "spec": {"completions": 2, "parallelism": 2, "template": {"spec": {"containers": []}}},
        "status": status,
    }


def test_list_views_reads_pods_only_when_a_view_needs_them() -> None:
    clock = VirtualClock(1_800_000_000)
    kube = FakeKube(clock=clock)
    queues = {q.name: q for q in from_dict(config_dict()).queues}
    kube.add("jobs", job("fresh", "2027-01-15T08:00:00Z", {"ready": 1, "active": 2}))
    views = list_views(kube, queues, now=1_800_000_000)
    assert [v.ready for v in views] == [1]
    assert ("list_pods", "stackgen.io/dispatch-id") not in kube.calls
    # A Job near its pod start timeout with no pod started: the pods give the reason.
    kube.add("jobs", job("stuck", "2027-01-15T07:55:00Z", {"ready": 0, "active": 2}))
    list_views(kube, queues, now=1_800_000_000 + 10_000)
    assert ("list_pods", "stackgen.io/dispatch-id") in kube.calls


def test_slim_listed_job_keeps_what_the_planner_reads() -> None:
    slim = slim_listed_job(job("j", "2027-01-15T08:00:00Z", {"succeeded": 1}))
    assert "managedFields" not in slim["metadata"] and "template" not in slim["spec"]
    assert slim["spec"]["completions"] == 2 and slim["status"] == {"succeeded": 1}


def test_warm_kubeconform_reports_like_a_cold_run() -> None:
    manifest = build(EXAMPLE).manifest
    cold = kubeconform_problems(manifest, "1.33.0", "x")
    run = warm_kubeconform("1.33.0")
    run.validate(manifest)
    warm = kubeconform_result(run, "1.33.0", "x")
    assert warm == cold
    assert warm[1]["valid"] == 33 and warm[1]["invalid"] == 0
    broken = manifest.replace(
        b"imagePullPolicy: IfNotPresent", b"imagePullPolicyy: IfNotPresent", 1
    )
    run = warm_kubeconform("1.33.0")
    run.validate(broken)
    problems, summary = kubeconform_result(run, "1.33.0", "x")
    assert summary["invalid"] == 1
    assert "imagePullPolicyy" in str(problems[0])
