"""What `stackgen apply` prunes and `stackgen delete` deletes: the pure planning step.

Old objects (what a listing of the cluster returned) against the new build: only the
stack's own objects (label *and* namespace), never an unlabelled one, another stack's,
one in another namespace, an owned one or (when pruning) a Namespace; CronJobs orphan
their Jobs; the APIService goes first and the Namespace last.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from stackgen.common.identity import STACK_LABEL, stack_id
from stackgen.deploy.plan import (
    KINDS_ANNOTATION,
    ObjectRef,
    StackRef,
    kinds_record,
    plan_delete,
    plan_prune,
    recorded_kinds,
    shared_to_release,
)
from tests.support.paths import ROOT

STACK = StackRef("example", "buildkite")
OTHER = StackRef("other", "ci")


def obj(
    kind: str,
    name: str,
    namespace: str = "buildkite",
    *,
    api_version: str = "v1",
    stack: StackRef | None = STACK,
    labels: dict[str, str] | None = None,
    **meta: Any,
) -> dict[str, Any]:
    all_labels = dict(labels or {})
    if stack is not None:
        all_labels[STACK_LABEL] = stack.id
    metadata: dict[str, Any] = {"name": name, "labels": all_labels, "uid": f"uid-{name}", **meta}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata}


def golden(case: str) -> list[dict[str, Any]]:
    text = (ROOT / "tests" / "golden" / case / "expected.yaml").read_text(encoding="utf-8")
    return [doc for doc in yaml.safe_load_all(text) if doc]


def refs(deletions: list[Any]) -> list[str]:
    return [str(d.ref) for d in deletions]


# ------------------------------------------------------------------------ identity


def test_stack_id_is_name_dot_namespace_and_a_valid_label_value() -> None:
    assert stack_id("example", "buildkite") == "example.buildkite"
    long_id = stack_id("a" * 63, "b" * 63)
    assert len(long_id) <= 63
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9_.]*[a-z0-9])?", long_id)
    # Shortened values stay unique: a hash of the whole pair decides.
    assert stack_id("a" * 63, "b" * 63) != stack_id("a" * 63, "b" * 62 + "c")
    assert stack_id("a-" * 31 + "a", "ns") == stack_id("a-" * 31 + "a", "ns")
    assert stack_id("x", "y") != stack_id("y", "x")


def test_every_golden_stack_object_carries_the_stack_label_on_itself_only() -> None:
    for case, stack in [("example", STACK), ("dispatch-exact-mirrors", StackRef("mono", "mono"))]:
        for o in golden(case):
            assert o["metadata"]["labels"][STACK_LABEL] == stack.id, ObjectRef.of(o)
            # Not in templates: Jobs, pods and ReplicaSets made from them are not members.
            text = yaml.safe_dump(o.get("spec") or {})
            assert STACK_LABEL not in text, ObjectRef.of(o)


# ------------------------------------------------------------------------ prune


def test_prune_deletes_what_the_new_build_lacks_and_keeps_the_rest() -> None:
    old = golden("example")
    new = [o for o in old if "default" not in o["metadata"]["name"]]  # the hpa queue went
    pruned = plan_prune(STACK, new, old)
    assert refs(pruned) == [
        "HorizontalPodAutoscaler buildkite/buildkite-agent-default",
        "Deployment buildkite/buildkite-agent-default",
        "PodDisruptionBudget buildkite/buildkite-agent-default",
    ]
    assert all(d.propagation == "Background" for d in pruned)
    assert plan_prune(STACK, old, old) == []


def test_prune_a_rotated_token_secret_and_an_orphaned_queue_template() -> None:
    old = [
        obj("Secret", "buildkite-agent-token-aaaa"),
        obj("CronJob", "buildkite-agent-deploy", api_version="batch/v1"),
        obj("CronJob", "buildkite-agent-builds", api_version="batch/v1"),
    ]
    new = [obj("Secret", "buildkite-agent-token-bbbb"), old[2]]
    pruned = plan_prune(STACK, new, old)
    assert refs(pruned) == [
        "CronJob buildkite/buildkite-agent-deploy",
        "Secret buildkite/buildkite-agent-token-aaaa",
    ]
    cronjob = pruned[0]
    # Its Jobs are running builds: the CronJob goes, they stay (and expire by TTL).
    assert cronjob.propagation == "Orphan"
    assert cronjob.uid == "uid-buildkite-agent-deploy"
    assert "keep running" in cronjob.note


def test_prune_never_deletes_anything_not_labelled_as_this_stack() -> None:
    new = [obj("ConfigMap", "kept")]
    live = [
        # Unlabelled, though named and placed like the stack's.
        obj("ConfigMap", "unlabelled", stack=None),
        # Only the app.kubernetes.io labels stackgen also puts on templates (Jobs, pods,
        # the dispatcher's acquisition Secrets): not a member.
        obj(
            "Secret",
            "job-1-acquire",
            stack=None,
            labels={
                "app.kubernetes.io/managed-by": "stackgen",
                "app.kubernetes.io/instance": "example",
            },
        ),
        # Another stack's, in this namespace and cluster-wide.
        obj("ConfigMap", "theirs", stack=OTHER),
        obj(
            "ClusterRole",
            "theirs",
            namespace="",
            stack=OTHER,
            api_version="rbac.authorization.k8s.io/v1",
        ),
        # Same name, another namespace: the same stack name and namespace make the id.
        obj("ConfigMap", "twin", stack=StackRef("example", "elsewhere")),
        # This stack's label, but in a namespace that is not the stack's: a user's copy.
        obj("ConfigMap", "copied", namespace="team-a"),
        # Label value only similar.
        obj("ConfigMap", "similar", stack=None, labels={STACK_LABEL: "example.buildkite2"}),
    ]
    assert plan_prune(STACK, new, live) == []


def test_prune_reaches_kube_system_and_cluster_scoped_members() -> None:
    rbac = "rbac.authorization.k8s.io/v1"
    live = [
        obj("RoleBinding", "stackgen-metrics-adapter:auth-reader", "kube-system", api_version=rbac),
        obj("ClusterRole", "stackgen:external-metrics-reader", "", api_version=rbac),
        obj(
            "APIService",
            "v1beta1.external.metrics.k8s.io",
            "",
            api_version="apiregistration.k8s.io/v1",
        ),
        obj("Deployment", "stackgen-metrics-adapter", api_version="apps/v1"),
        obj("ServiceAccount", "stackgen-metrics-adapter"),
        obj("Secret", "stackgen-metrics-adapter-tls-x"),
    ]
    assert refs(plan_prune(STACK, [], live)) == [
        # The APIService first: an unserved one blocks namespace deletion and discovery.
        "APIService v1beta1.external.metrics.k8s.io",
        "Deployment buildkite/stackgen-metrics-adapter",
        "Secret buildkite/stackgen-metrics-adapter-tls-x",
        "RoleBinding kube-system/stackgen-metrics-adapter:auth-reader",
        # Permissions last, so that terminating workloads keep theirs.
        "ServiceAccount buildkite/stackgen-metrics-adapter",
        "ClusterRole stackgen:external-metrics-reader",
    ]


def test_prune_skips_owned_terminating_objects_and_namespaces() -> None:
    live = [
        obj("Namespace", "buildkite", ""),
        obj("Secret", "owned", ownerReferences=[{"kind": "Job", "name": "j", "uid": "u"}]),
        obj("ConfigMap", "going", deletionTimestamp="2026-12-01T00:00:00Z"),
    ]
    assert plan_prune(STACK, [], live) == []


def test_prune_compares_kind_group_namespace_and_name_not_the_api_version() -> None:
    old = [obj("HorizontalPodAutoscaler", "a", api_version="autoscaling/v2")]
    new = [obj("HorizontalPodAutoscaler", "a", api_version="autoscaling/v1")]
    assert plan_prune(STACK, new, old) == []
    # A namespaced object of the same name elsewhere is another object.
    moved = [obj("ConfigMap", "c", "kube-system")]
    assert refs(plan_prune(STACK, moved, [obj("ConfigMap", "c")])) == ["ConfigMap buildkite/c"]


def test_plain_overlay_namespaces_come_from_the_build() -> None:
    live = [obj("ConfigMap", "old", "team-b")]
    assert plan_prune(STACK, [obj("ConfigMap", "new", "team-b")], live)
    assert plan_prune(STACK, [obj("ConfigMap", "new")], live) == []


# ------------------------------------------------------------------------ delete


def test_delete_goes_registrations_first_namespace_last_and_lets_it_take_its_contents() -> None:
    live = golden("example")
    own_api = obj(
        "APIService", "v1.things.example.com", "", api_version="apiregistration.k8s.io/v1"
    )  # a plain overlay's own API
    deletions = plan_delete(STACK, [*live, own_api])
    assert refs(deletions) == [
        "APIService v1.things.example.com",
        "ClusterRoleBinding stackgen-metrics-adapter:buildkite",
        "ClusterRoleBinding stackgen-metrics-adapter:buildkite:system:auth-delegator",
        "ClusterRoleBinding stackgen:external-metrics-reader:buildkite",
        "RoleBinding kube-system/stackgen-metrics-adapter:buildkite:auth-reader",
        "ClusterRole stackgen-metrics-adapter:buildkite",
        "ClusterRole stackgen:external-metrics-reader:buildkite",
        "Namespace buildkite",
    ]
    assert deletions[-1].note == "with everything in it"


def test_the_shared_apiservice_is_never_deleted_or_pruned_only_released() -> None:
    live = golden("example")
    shared = [o for o in live if o["kind"] == "APIService"]
    assert [o["metadata"]["labels"]["stackgen.io/shared"] for o in shared] == ["true"]
    assert "APIService" not in {d.ref.kind for d in plan_delete(STACK, live)}
    assert [str(r) for r in shared_to_release(STACK, (), live)] == [
        "APIService v1beta1.external.metrics.k8s.io"
    ]
    without_hpa = [o for o in live if o["kind"] not in ("APIService", "HorizontalPodAutoscaler")]
    assert "APIService" not in {d.ref.kind for d in plan_prune(STACK, without_hpa, live)}
    assert len(shared_to_release(STACK, without_hpa, live)) == 1
    assert shared_to_release(STACK, live, live) == []  # still in the build: nothing to release
    assert shared_to_release(StackRef("other", "buildkite"), (), live) == []


def test_delete_with_keep_namespace_deletes_the_members_one_by_one() -> None:
    live = golden("example")
    deletions = plan_delete(STACK, live, keep_namespace=True)
    assert len(deletions) == len(live) - 2  # not the Namespace, not the shared APIService
    assert "Namespace buildkite" not in refs(deletions)
    assert refs(deletions)[0] == "HorizontalPodAutoscaler buildkite/buildkite-agent-default"
    cronjob = next(d for d in deletions if d.ref.kind == "CronJob")
    assert cronjob.propagation == "Orphan"


def test_delete_of_another_stack_or_name_finds_nothing() -> None:
    live = golden("example")
    assert plan_delete(StackRef("example", "other-namespace"), live) == []
    assert plan_delete(StackRef("other", "buildkite"), live) == []
    mixed = [*live, obj("ConfigMap", "x", "ci", stack=OTHER)]
    assert "ConfigMap ci/x" not in refs(plan_delete(STACK, mixed, keep_namespace=True))


def test_delete_without_a_namespace_member_deletes_each_object() -> None:
    live = [o for o in golden("example") if o["kind"] not in ("Namespace", "APIService")]
    assert len(plan_delete(STACK, live)) == len(live)


# ------------------------------------------------------------------------ kinds record


@pytest.mark.parametrize(
    "kinds",
    [set(), {("", "ConfigMap")}, {("apps", "Deployment"), ("networking.k8s.io", "NetworkPolicy")}],
)
def test_the_kinds_record_reads_back(kinds: set[tuple[str, str]]) -> None:
    namespace = obj("Namespace", "buildkite", "")
    namespace["metadata"]["annotations"] = {KINDS_ANNOTATION: kinds_record(kinds)}
    assert recorded_kinds(namespace) == kinds
    assert recorded_kinds(None) == set()
