"""`stackgen apply` and `stackgen delete` on the real control plane.

A stack with an ``hpa`` queue and two ``dispatch`` queues is applied next to a second
stack; then the ``hpa`` queue and one ``dispatch`` queue are removed and the agent token
rotated, and ``stackgen apply`` must leave nothing stale (the CronJob, Deployment, HPA, the
whole metrics adapter with its cluster-scoped and kube-system objects, the old token
Secret) while a Job dispatched from the removed template keeps running, and touch nothing
of the other stack or of objects that merely look like the stack's. ``stackgen delete``
then removes all of the stack and nothing else. A stack deployed with
``stackgen build | kubectl apply -f -`` is taken over without conflicts, and a field
dropped afterwards really goes; a real conflict is one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from stackgen.common.identity import STACK_LABEL
from stackgen.common.status import ExitStatus
from tests.support.cluster import Cluster, to_yaml, wait_for
from tests.support.paths import ROOT

pytestmark = pytest.mark.e2e

EXAMPLE = ROOT / "overlays" / "example"
STACK = "e2e-prune"
NAMESPACE = "buildkite"  # the example's adapter certificate is made for this namespace
BYSTANDER = "e2e-bystander"
MIGRATED = "e2e-migrate"
APISERVICE = "v1beta1.external.metrics.k8s.io"
HPA_QUEUE = {"name": "default", "mode": "hpa", "minAgents": 1, "maxAgents": 2}
BUILDS = {"name": "builds", "mode": "dispatch", "maxAgents": 5}
DEPLOY = {"name": "deploy", "mode": "dispatch", "maxAgents": 2}


def stackgen(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the stackgen CLI in a subprocess (it sees the session's KUBECONFIG)."""
    return subprocess.run(
        [sys.executable, "-m", "stackgen", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def make_overlay(
    folder: Path,
    *,
    name: str,
    namespace: str,
    queues: list[dict[str, Any]],
    token: str,
    limits: dict[str, str] | None = None,
) -> Path:
    """A copy of the example overlay as stack ``name`` with these queues and token."""
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(EXAMPLE, folder)
    stack_file = folder / "stack.yaml"
    stack = yaml.safe_load(stack_file.read_text(encoding="utf-8"))
    stack["metadata"] = {"name": name, "namespace": namespace}
    stack["queues"] = queues
    if not any(q["mode"] == "hpa" for q in queues):
        del stack["metricsAdapter"]
    if limits is not None:
        stack["agent"]["resources"]["limits"] = limits
    stack_file.write_text(yaml.safe_dump(stack, sort_keys=False), encoding="utf-8")
    (folder / "secrets" / "buildkite-agent-token").write_text(token + "\n", encoding="utf-8")
    return folder


def built(overlay: Path) -> list[dict[str, Any]]:
    proc = ok(stackgen("build", overlay))
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def name_of(objects: list[dict[str, Any]], kind: str, prefix: str) -> str:
    return str(
        next(
            o["metadata"]["name"]
            for o in objects
            if o["kind"] == kind and o["metadata"]["name"].startswith(prefix)
        )
    )


def labelled(cluster: Cluster, stack_id: str) -> list[str]:
    """Every cluster-scoped or kube-system object carrying this stack label."""
    selector = f"{STACK_LABEL}={stack_id}"
    names = cluster.kubectl(
        "get",
        "apiservices,clusterroles,clusterrolebindings,namespaces",
        "-l",
        selector,
        "-o",
        "name",
    ).stdout.split()
    names += cluster.kubectl(
        "get",
        "rolebindings,roles,configmaps,secrets",
        "-n",
        "kube-system",
        "-l",
        selector,
        "-o",
        "name",
    ).stdout.split()
    return names


def all_exist(cluster: Cluster, objects: list[dict[str, Any]]) -> bool:
    """Whether every one of these objects exists."""
    proc = cluster.kubectl("get", "-f", "-", "-o", "name", input=to_yaml(objects), check=False)
    return proc.returncode == 0 and len(proc.stdout.split()) == len(objects)


def gone(cluster: Cluster, kind: str, name: str, namespace: str | None = None) -> bool:
    return cluster.get(kind, name, namespace) is None


@pytest.fixture
def clean_slate(cluster: Cluster) -> Iterator[None]:
    """No stack of an earlier test in the way; this test's stacks deleted afterwards."""
    for kind, name in (("namespace", NAMESPACE), ("apiservice", APISERVICE)):

        def absent(kind: str = kind, name: str = name) -> bool:
            return gone(cluster, kind, name)

        wait_for(absent, timeout=240, what=f"{kind} {name} to be gone")
    yield
    for name, namespace in ((STACK, NAMESPACE), (BYSTANDER, BYSTANDER), (MIGRATED, MIGRATED)):
        stackgen("delete", "--name", name, "--namespace", namespace, "--wait", "--ignore-not-found")


def test_apply_prunes_a_removed_queue_and_a_rotated_token_and_delete_removes_the_stack(
    cluster: Cluster, tmp_path: Path, scratch_namespace: Any, clean_slate: None
) -> None:
    stack_id = f"{STACK}.{NAMESPACE}"
    v1 = make_overlay(
        tmp_path / "v1",
        name=STACK,
        namespace=NAMESPACE,
        queues=[HPA_QUEUE, BUILDS, DEPLOY],
        token="token-one",
    )
    v2 = make_overlay(
        tmp_path / "v2", name=STACK, namespace=NAMESPACE, queues=[BUILDS], token="token-two"
    )
    other = make_overlay(
        tmp_path / "other",
        name=BYSTANDER,
        namespace=BYSTANDER,
        queues=[BUILDS, DEPLOY],
        token="token-one",
    )
    first, second, bystander = built(v1), built(v2), built(other)
    old_token = name_of(first, "Secret", "buildkite-agent-token-")
    new_token = name_of(second, "Secret", "buildkite-agent-token-")
    assert old_token != new_token, "a new token must give a new Secret name"

    proc = ok(stackgen("apply", v1))
    assert f"created CronJob {NAMESPACE}/buildkite-agent-deploy" in proc.stdout
    assert f"created APIService {APISERVICE}" in proc.stdout
    assert (
        f"created RoleBinding kube-system/stackgen-metrics-adapter:{NAMESPACE}:auth-reader"
        in proc.stdout
    )
    ok(stackgen("apply", other))
    assert all_exist(cluster, first) and all_exist(cluster, bystander)

    # Objects that only look like the stack's: the same labels in another namespace, and a
    # user's own unlabelled ConfigMap in the stack's namespace.
    elsewhere = scratch_namespace(prefix="e2e-lookalike")
    lookalike_labels = {
        STACK_LABEL: stack_id,
        "app.kubernetes.io/managed-by": "stackgen",
        "app.kubernetes.io/instance": STACK,
    }
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": "lookalike",
                    "namespace": elsewhere,
                    "labels": lookalike_labels,
                },
            },
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "users-own", "namespace": NAMESPACE},
            },
        ]
    )

    # A build running on the `deploy` queue: a Job from its template, as
    # `kubectl create job --from=cronjob/...` makes it (owned by the CronJob). The
    # dispatch-id label keeps its kwok pod Running until an agent would exit.
    job = json.loads(
        cluster.kubectl(
            "create",
            "job",
            "inflight",
            "--from=cronjob/buildkite-agent-deploy",
            "-n",
            NAMESPACE,
            "--dry-run=client",
            "-o",
            "json",
        ).stdout
    )
    assert job["metadata"]["ownerReferences"][0]["kind"] == "CronJob"
    job["spec"]["template"]["metadata"].setdefault("labels", {})["stackgen.io/dispatch-id"] = "e2e"
    cluster.create(job)

    def running_pod() -> Any:
        pods = cluster.items("pods", NAMESPACE, "job-name=inflight")
        return [p for p in pods if p["status"].get("phase") == "Running"]

    pod = wait_for(running_pod, timeout=120, what="the in-flight Job's pod to run")[0]

    # A dry run says what would go and changes nothing.
    proc = ok(stackgen("apply", v2, "--dry-run"))
    assert (
        f"would prune CronJob {NAMESPACE}/buildkite-agent-deploy (the Jobs it started keep running)"
        in proc.stdout
    )
    assert f"would prune Secret {NAMESPACE}/{old_token}" in proc.stdout
    assert "nothing was changed" in proc.stderr
    assert all_exist(cluster, first)

    proc = ok(stackgen("apply", v2))
    pruned = [ln for ln in proc.stdout.splitlines() if ln.startswith("pruned ")]
    # The shared APIService is never pruned as this stack's: no other stack's adapter is
    # left to hand it to, so the hand-over deletes it.
    assert f"APIService {APISERVICE}: deleted (shared by every stack)" in proc.stdout
    assert not any("APIService" in ln for ln in pruned), pruned
    for kind, name, namespace in [
        ("cronjob", "buildkite-agent-deploy", NAMESPACE),
        ("deployment", "buildkite-agent-default", NAMESPACE),
        ("hpa", "buildkite-agent-default", NAMESPACE),
        ("deployment", "stackgen-metrics-adapter", NAMESPACE),
        ("secret", old_token, NAMESPACE),
        ("apiservice", APISERVICE, None),
        ("clusterrole", f"stackgen:external-metrics-reader:{NAMESPACE}", None),
        ("clusterrole", f"stackgen-metrics-adapter:{NAMESPACE}", None),
        ("clusterrolebinding", f"stackgen:external-metrics-reader:{NAMESPACE}", None),
        ("clusterrolebinding", f"stackgen-metrics-adapter:{NAMESPACE}", None),
        ("clusterrolebinding", f"stackgen-metrics-adapter:{NAMESPACE}:system:auth-delegator", None),
        ("rolebinding", f"stackgen-metrics-adapter:{NAMESPACE}:auth-reader", "kube-system"),
    ]:
        assert gone(cluster, kind, name, namespace), f"{kind} {namespace}/{name} is still there"
    assert all_exist(cluster, second)
    assert labelled(cluster, stack_id) == [f"namespace/{NAMESPACE}"]

    # The running build was orphaned, not killed: its Job and pod are still there.
    live_job = cluster.get("job", "inflight", NAMESPACE)
    assert live_job is not None
    assert not live_job["metadata"].get("ownerReferences"), live_job["metadata"]
    live_pod = cluster.get("pod", pod["metadata"]["name"], NAMESPACE)
    assert live_pod is not None and not live_pod["metadata"].get("deletionTimestamp")

    # Nothing of the other stack, nothing that only looks like this one.
    assert all_exist(cluster, bystander)
    assert cluster.get("configmap", "lookalike", elsewhere) is not None
    assert cluster.get("configmap", "users-own", NAMESPACE) is not None

    # Applying again changes nothing and prunes nothing.
    proc = ok(stackgen("apply", v2))
    assert "pruned" not in proc.stdout
    assert all(ln.startswith("unchanged ") for ln in proc.stdout.splitlines()), proc.stdout

    # The hpa queue back (with its cluster-scoped and kube-system objects), then the
    # whole stack deleted, with kubectl's connection options instead of KUBECONFIG.
    third = built(
        make_overlay(
            tmp_path / "v3",
            name=STACK,
            namespace=NAMESPACE,
            queues=[HPA_QUEUE, BUILDS],
            token="token-two",
        )
    )
    ok(stackgen("apply", tmp_path / "v3"))
    assert all_exist(cluster, third)
    proc = ok(
        stackgen(
            "delete",
            tmp_path / "v3",
            "--wait",
            "--timeout",
            "300",
            "--kubeconfig",
            cluster.kubeconfig,
            "--context",
            cluster.context,
            env={"KUBECONFIG": str(tmp_path / "no-such-kubeconfig")},
        )
    )
    lines = proc.stdout.splitlines()
    assert lines[0] == f"APIService {APISERVICE}: deleted (shared by every stack)"
    assert lines[-1] == f"deleted Namespace {NAMESPACE} (with everything in it)"
    assert gone(cluster, "namespace", NAMESPACE)
    assert labelled(cluster, stack_id) == []
    assert all_exist(cluster, bystander)
    assert cluster.get("configmap", "lookalike", elsewhere) is not None

    # Deleting again: nothing left is an error, unless told it is fine.
    proc = stackgen("delete", "--name", STACK, "--namespace", NAMESPACE)
    assert proc.returncode == ExitStatus.INVALID and "no objects of stack" in proc.stderr
    ok(stackgen("delete", "--name", STACK, "--namespace", NAMESPACE, "--ignore-not-found"))

    # The other stack by name alone, without its overlay.
    proc = ok(stackgen("delete", "--name", BYSTANDER, "--wait"))
    assert proc.stdout.splitlines() == [f"deleted Namespace {BYSTANDER} (with everything in it)"]
    assert gone(cluster, "namespace", BYSTANDER)


def test_apply_takes_over_a_stack_deployed_with_kubectl_apply(
    cluster: Cluster, tmp_path: Path, clean_slate: None
) -> None:
    limits = {"memory": "2Gi", "cpu": "4"}
    v1 = make_overlay(
        tmp_path / "v1",
        name=MIGRATED,
        namespace=MIGRATED,
        queues=[BUILDS],
        token="t1",
        limits=limits,
    )
    v2 = make_overlay(
        tmp_path / "v2",
        name=MIGRATED,
        namespace=MIGRATED,
        queues=[BUILDS],
        token="t1",
        limits={"memory": "2Gi"},
    )
    # The deploy command before `stackgen apply`: client-side apply.
    cluster.apply(ok(stackgen("build", v1)).stdout)

    proc = ok(stackgen("apply", v1))
    assert "took over" in proc.stderr and "conflict" not in proc.stderr, proc.stderr
    assert "pruned" not in proc.stdout

    def cpu_limit() -> Any:
        cronjob = cluster.get("cronjob", "buildkite-agent-builds", MIGRATED) or {}
        container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        return container["resources"]["limits"].get("cpu")

    assert cpu_limit() == "4"
    # Dropped from the stack: gone, because no kubectl ownership keeps it.
    ok(stackgen("apply", v2))
    assert cpu_limit() is None

    # Someone edits a field the stack sets: a conflict, one line, nothing applied.
    cluster.kubectl(
        "patch",
        "cronjob",
        "buildkite-agent-builds",
        "-n",
        MIGRATED,
        "--type=merge",
        "-p",
        '{"spec":{"jobTemplate":{"spec":{"activeDeadlineSeconds":99}}}}',
    )
    proc = stackgen("apply", v2)
    assert proc.returncode == ExitStatus.INVALID, proc.stderr
    problems = [ln for ln in proc.stderr.splitlines() if not ln.startswith("stackgen:")]
    assert problems == [
        f"{v2}: CronJob {MIGRATED}/buildkite-agent-builds: server-side apply conflict: "
        ".spec.jobTemplate.spec.activeDeadlineSeconds (owned by kubectl-patch): another field "
        "manager set these fields; re-run with --force-conflicts to take them over"
    ], proc.stderr
    ok(stackgen("apply", v2, "--force-conflicts"))
    cronjob = cluster.get("cronjob", "buildkite-agent-builds", MIGRATED) or {}
    assert cronjob["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] != 99

    ok(stackgen("delete", v2, "--wait"))
    assert gone(cluster, "namespace", MIGRATED)
