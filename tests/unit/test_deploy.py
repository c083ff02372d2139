"""`stackgen apply` and `stackgen delete` against an in-memory cluster, and their parts.

The real cluster runs in tests/e2e/test_deploy.py; here the flow's rules are pinned down:
nothing is pruned after a failed apply, a dry run changes nothing, another stack's object
is never taken over, kubectl apply's field ownership is taken over once, conflicts and
server errors are one line each.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from stackgen.cli import cli
from stackgen.common.errors import ClusterError, ConfigError
from stackgen.common.identity import STACK_LABEL
from stackgen.common.status import ExitStatus
from stackgen.deploy import (
    ApplyOptions,
    DeleteOptions,
    StackRef,
    apply_stack,
    delete_stack,
    identify,
)
from stackgen.deploy.cluster import parse_api_resources
from stackgen.deploy.members import mark
from stackgen.deploy.plan import KINDS_ANNOTATION, ObjectRef
from stackgen.deploy.ssa import adopted_managed_fields, summarize_conflicts, summarize_error
from tests.support.fake_cluster import FakeCluster
from tests.support.paths import ROOT

STACK = StackRef("example", "buildkite")


def golden(case: str) -> list[dict[str, Any]]:
    text = (ROOT / "tests" / "golden" / case / "expected.yaml").read_text(encoding="utf-8")
    return [doc for doc in yaml.safe_load_all(text) if doc]


def run_apply(
    cluster: FakeCluster, objects: list[dict[str, Any]], **options: Any
) -> tuple[list[str], list[str]]:
    lines: list[str] = []
    notes: list[str] = []
    apply_stack(
        objects,
        cluster,
        ApplyOptions(**options),
        source="overlays/example",
        echo=lines.append,
        note=notes.append,
    )
    return lines, notes


def without(objects: list[dict[str, Any]], *names: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["metadata"]["name"] not in names]


# ------------------------------------------------------------------------ identify


def test_identify_a_stack_build_and_a_plain_overlay() -> None:
    assert identify(golden("example"), source="x") == STACK
    assert identify(golden("hpa-existing-secret"), source="x") == StackRef("linux", "ci-linux")
    plain = golden("plain-kustomize")
    assert identify(plain, source="x") == StackRef("plain", "plain")
    assert identify(plain, source="x", name="p", namespace="n") == StackRef("p", "n")


def test_identify_refuses_what_it_cannot_tell_or_a_contradiction() -> None:
    unnamed = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}]
    with pytest.raises(ConfigError, match="give --name and --namespace"):
        identify(unnamed, source="x")
    with pytest.raises(ConfigError, match="--name and --namespace are for plain"):
        identify(golden("example"), source="x", name="renamed")


def test_mark_labels_every_object_and_records_the_kinds_on_the_namespace() -> None:
    plain = golden("plain-kustomize")
    stack = identify(plain, source="x")
    marked = mark(plain, stack, {("networking.k8s.io", "NetworkPolicy")})
    assert all(o["metadata"]["labels"][STACK_LABEL] == "plain.plain" for o in marked)
    assert STACK_LABEL not in plain[0]["metadata"]["labels"]  # the input is not changed
    namespace = next(o for o in marked if o["kind"] == "Namespace")
    record = namespace["metadata"]["annotations"][KINDS_ANNOTATION]
    assert (
        record
        == "ConfigMap,CronJob.batch,Namespace,NetworkPolicy.networking.k8s.io,Secret,ServiceAccount"
    )


# ------------------------------------------------------------------------ apply


def test_apply_then_prune_a_removed_queue_and_a_rotated_token() -> None:
    cluster = FakeCluster()
    old = golden("dispatch-exact-mirrors")
    lines, _ = run_apply(cluster, old)
    assert len(lines) == len(old) and all(ln.startswith("created ") for ln in lines)
    lines, notes = run_apply(cluster, old)
    assert all(ln.startswith("unchanged ") for ln in lines), lines
    assert f"0 created, 0 configured, {len(old)} unchanged, 0 pruned" in notes[-1]

    # A Job dispatched from the `deploy` queue's template (not a member: no stack label).
    template = next(o for o in old if o["metadata"]["name"] == "buildkite-agent-deploy")
    job_meta = copy.deepcopy(template["spec"]["jobTemplate"]["metadata"])
    job_meta.update(name="d-1", namespace="mono")
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": job_meta}
    cluster.put(job)
    new = without(old, "buildkite-agent-deploy")
    token = next(o for o in new if o["metadata"]["name"].startswith("buildkite-agent-token-"))
    rotated = copy.deepcopy(token)
    rotated["metadata"]["name"] = "buildkite-agent-token-rotated"
    new = [rotated if o is token else o for o in new]

    lines, _ = run_apply(cluster, new)
    assert "created Secret mono/buildkite-agent-token-rotated" in lines
    assert [ln for ln in lines if ln.startswith("pruned")] == [
        "pruned CronJob mono/buildkite-agent-deploy (the Jobs it started keep running)",
        f"pruned Secret mono/{token['metadata']['name']}",
    ]
    assert (ObjectRef("batch", "CronJob", "mono", "buildkite-agent-deploy"), "Orphan", False) in (
        cluster.deletes
    )
    assert cluster.has("Job", "d-1", "mono")
    assert not cluster.has("Secret", token["metadata"]["name"], "mono")


def test_nothing_is_pruned_when_an_object_fails_to_apply() -> None:
    cluster = FakeCluster()
    old = golden("example")
    run_apply(cluster, old)
    conflict = (
        'Apply failed with 1 conflict: conflict with "kubectl-edit" using apps/v1: '
        ".spec.revisionHistoryLimit\nPlease review the fields above--they currently have "
        "other managers. Here\nare the ways you can resolve this warning:\n"
    )
    cluster.fail_apply = lambda o: conflict if o["kind"] == "Deployment" else None
    with pytest.raises(ClusterError) as caught:
        run_apply(cluster, without(old, "buildkite-agent-builds"))
    lines = [str(p) for p in caught.value.problems]
    assert len(lines) == 3  # one per failing object, each one line
    assert lines[0] == (
        "overlays/example: Deployment buildkite/buildkite-agent-default: server-side apply "
        "conflict: .spec.revisionHistoryLimit (owned by kubectl-edit): another field manager "
        "set these fields; re-run with --force-conflicts to take them over"
    )
    assert not cluster.deletes
    assert cluster.has("CronJob", "buildkite-agent-builds", "buildkite")


def test_a_dry_run_changes_nothing_and_says_what_it_would_do() -> None:
    cluster = FakeCluster()
    old = golden("example")
    lines, notes = run_apply(cluster, old, dry_run=True)
    assert not cluster.objects
    assert lines[0] == "would create Namespace buildkite"
    assert any("not created yet" in n for n in notes)
    run_apply(cluster, old)
    before = copy.deepcopy(cluster.objects)
    lines, notes = run_apply(cluster, without(old, "buildkite-agent-builds"), dry_run=True)
    assert (
        "would prune CronJob buildkite/buildkite-agent-builds (the Jobs it started keep running)"
        in lines
    )
    assert cluster.objects == before
    assert all(dry for _, _, dry in cluster.deletes)
    assert "nothing was changed" in notes[-1]
    lines, _ = run_apply(cluster, without(old, "buildkite-agent-builds"), diff=True)
    assert lines[0].startswith("diff of")
    assert lines[-1].startswith("would prune CronJob")
    assert cluster.objects == before


def test_no_prune_applies_only() -> None:
    cluster = FakeCluster()
    old = golden("example")
    run_apply(cluster, old)
    run_apply(cluster, without(old, "buildkite-agent-builds"), prune=False)
    assert cluster.has("CronJob", "buildkite-agent-builds", "buildkite")


def test_another_stacks_object_is_never_taken_over() -> None:
    # Another stack named "other" in the same namespace made the dispatcher's Lease.
    cluster = FakeCluster()
    theirs = copy.deepcopy(next(o for o in golden("example") if o["kind"] == "Lease"))
    theirs["metadata"]["labels"][STACK_LABEL] = "other.buildkite"
    theirs["metadata"]["labels"]["app.kubernetes.io/instance"] = "other"
    cluster.put(theirs)
    with pytest.raises(ClusterError) as caught:
        run_apply(cluster, golden("example"))
    assert [str(p) for p in caught.value.problems] == [
        "overlays/example: Lease buildkite/stackgen-dispatcher: already exists and "
        "belongs to stack 'other.buildkite' (label stackgen.io/stack): stackgen never takes "
        "over another stack's objects"
    ]
    assert cluster.applies == 0
    # Also one deployed before the label, known by its instance label.
    cluster = FakeCluster()
    old_style = copy.deepcopy(theirs)
    del old_style["metadata"]["labels"][STACK_LABEL]
    cluster.put(old_style)
    with pytest.raises(ClusterError, match="belongs to stack 'other'"):
        run_apply(cluster, golden("example"))


def test_the_shared_apiservice_goes_to_the_stack_applied_last_and_is_handed_over() -> None:
    cluster = FakeCluster()
    run_apply(cluster, golden("hpa-existing-secret"))  # stack linux in ci-linux
    run_apply(cluster, golden("example"))  # applied last: it serves the APIService
    (apiservice,) = [o for r, o in cluster.objects.items() if r.kind == "APIService"]
    assert apiservice["metadata"]["labels"][STACK_LABEL] == STACK.id
    assert apiservice["spec"]["service"]["namespace"] == "buildkite"
    # The example stack drops its hpa queue: the APIService is handed over, not pruned.
    no_hpa = [
        o
        for o in golden("example")
        if o["kind"] not in ("APIService", "HorizontalPodAutoscaler")
        and "metrics-adapter" not in o["metadata"]["name"]
        and "external-metrics" not in o["metadata"]["name"]
    ]
    lines, _ = run_apply(cluster, no_hpa)
    assert (
        "APIService v1beta1.external.metrics.k8s.io: handed over to ci-linux "
        "(shared by every stack)"
    ) in lines
    assert cluster.hand_overs == ["buildkite"]
    (apiservice,) = [o for r, o in cluster.objects.items() if r.kind == "APIService"]
    assert apiservice["spec"]["service"]["namespace"] == "ci-linux"
    assert not any(d[0].kind == "APIService" for d in cluster.deletes)
    # The last stack serving it is deleted: no stackgen adapter is left, so it goes.
    lines = []
    delete_stack(StackRef("linux", "ci-linux"), cluster, source="x", echo=lines.append, note=print)
    assert lines[0] == "APIService v1beta1.external.metrics.k8s.io: deleted (shared by every stack)"
    assert not any(r.kind == "APIService" for r in cluster.objects)


def test_a_foreign_apiservice_is_refused_in_one_line() -> None:
    cluster = FakeCluster()
    keda = {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {
            "name": "v1beta1.external.metrics.k8s.io",
            "labels": {"app.kubernetes.io/name": "keda-operator-metrics-apiserver"},
        },
        "spec": {"service": {"namespace": "keda", "name": "keda-operator-metrics-apiserver"}},
    }
    cluster.put(keda)
    with pytest.raises(ClusterError) as caught:
        run_apply(cluster, golden("example"))
    (problem,) = caught.value.problems
    assert (
        "belongs to another metrics adapter (service keda/keda-operator-metrics-apiserver"
        in str(problem)
    )
    assert cluster.applies == 0


def test_kubectl_applys_field_ownership_is_taken_over_once() -> None:
    cluster = FakeCluster()
    objects = golden("example")
    for o in objects:  # as `stackgen build | kubectl apply -f -` left them
        cluster.put(
            o,
            managedFields=[
                {
                    "manager": "kubectl-client-side-apply",
                    "operation": "Update",
                    "apiVersion": o["apiVersion"],
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:labels": {}}},
                }
            ],
        )
    # Except the namespace, made by its owner's own `kubectl apply`: their fields stay theirs.
    namespace = cluster.objects[ObjectRef("", "Namespace", "", "buildkite")]
    namespace["metadata"]["labels"] = {"team": "ci"}
    _, notes = run_apply(cluster, objects)
    assert len(cluster.managed_field_writes) == len(objects) - 1
    assert ObjectRef("", "Namespace", "", "buildkite") not in cluster.managed_field_writes
    assert any(f"took over {len(objects) - 1} objects" in n for n in notes)
    run_apply(cluster, objects)
    assert len(cluster.managed_field_writes) == len(objects) - 1  # not again


def test_a_kind_the_cluster_does_not_serve_is_one_line() -> None:
    cluster = FakeCluster()
    cluster.kinds.discard(("apiregistration.k8s.io", "APIService"))
    with pytest.raises(ClusterError, match="serves no APIService in apiregistration"):
        run_apply(cluster, golden("example"))
    assert cluster.applies == 0


def test_extra_kinds_are_recorded_and_pruned_later() -> None:
    cluster = FakeCluster()
    objects = golden("dispatch-exact-mirrors")
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": "agents",
            "namespace": "mono",
            "labels": {STACK_LABEL: "mono.mono"},
        },
        "spec": {"podSelector": {}},
    }
    run_apply(cluster, [*objects, policy])
    lines, _ = run_apply(cluster, objects)
    assert "pruned NetworkPolicy mono/agents" in lines


# ------------------------------------------------------------------------ delete


def test_delete_removes_the_stack_and_nothing_else() -> None:
    cluster = FakeCluster()
    run_apply(cluster, golden("example"))
    run_apply(cluster, golden("dispatch-exact-mirrors"))
    lines: list[str] = []
    done = delete_stack(
        STACK, cluster, DeleteOptions(wait=True), source="x", echo=lines.append, note=print
    )
    # The shared APIService: no other stack's adapter is left, so the hand-over deletes it.
    assert lines[0] == "APIService v1beta1.external.metrics.k8s.io: deleted (shared by every stack)"
    assert lines[-1] == "deleted Namespace buildkite (with everything in it)"
    assert len(done) == 7
    assert not any(r.namespace == "buildkite" or r.name == "buildkite" for r in cluster.objects)
    assert len(cluster.objects) == len(golden("dispatch-exact-mirrors"))

    with pytest.raises(ClusterError, match="no objects of stack example"):
        delete_stack(STACK, cluster, source="x", echo=print, note=print)
    assert (
        delete_stack(
            STACK, cluster, DeleteOptions(ignore_not_found=True), source="x", echo=print, note=print
        )
        == []
    )


def test_delete_dry_run_deletes_nothing() -> None:
    cluster = FakeCluster()
    run_apply(cluster, golden("example"))
    before = copy.deepcopy(cluster.objects)
    lines: list[str] = []
    delete_stack(
        STACK, cluster, DeleteOptions(dry_run=True), source="x", echo=lines.append, note=print
    )
    assert cluster.objects == before
    assert lines[-1] == "would delete Namespace buildkite (with everything in it)"


# ------------------------------------------------------------------------ ssa


def _entry(manager: str, operation: str, fields: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "manager": manager,
        "operation": operation,
        "apiVersion": "apps/v1",
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
        **extra,
    }


def test_adoption_merges_kubectl_apply_entries_and_keeps_the_others() -> None:
    csa = _entry("kubectl-client-side-apply", "Update", {"f:spec": {"f:replicas": {}}})
    ssa = _entry("kubectl", "Apply", {"f:spec": {"f:template": {}}})
    scale = _entry("kubectl", "Update", {"f:spec": {"f:replicas": {}}}, subresource="scale")
    hpa = _entry("kube-controller-manager", "Update", {"f:status": {}})
    entries = adopted_managed_fields([csa, ssa, scale, hpa], now="T")
    assert entries is not None
    assert entries[:2] == [scale, hpa]
    assert entries[2] == {
        "apiVersion": "apps/v1",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}},
        "manager": "stackgen",
        "operation": "Apply",
        "time": "T",
    }
    assert adopted_managed_fields([*entries], now="T") is None  # already stackgen's
    assert adopted_managed_fields([hpa, scale], now="T") is None
    other_version = {**ssa, "apiVersion": "apps/v1beta2"}
    assert adopted_managed_fields([csa, other_version], now="T") is None


def test_conflicts_and_errors_are_one_line() -> None:
    text = (
        'Apply failed with 3 conflicts: conflicts with "kubectl":\n'
        '- .spec.template.spec.containers[name="dispatcher"].env[name="POD_IP"].valueFrom.fieldRef\n'
        'conflicts with "kubectl" with subresource "scale" using apps/v1:\n'
        "- .spec.replicas\n"
        "Please review the fields above--they currently have other managers. Here\n"
        "are the ways you can resolve this warning:\n"
        "* If you intend to manage all of these fields, please re-run the apply\n"
    )
    line = summarize_conflicts(text)
    assert line is not None and "\n" not in line
    assert ".spec.replicas (owned by kubectl, scale)" in line
    assert "POD_IP" in line and "--force-conflicts" in line
    assert summarize_error(text) == line
    rejected = (
        "Warning: something deprecated\n"
        'Error from server (Invalid): error when creating "STDIN": Deployment.apps "x" is '
        "invalid: spec.replicas: Invalid value: -1\n"
    )
    assert summarize_error(rejected) == (
        'Deployment.apps "x" is invalid: spec.replicas: Invalid value: -1'
    )
    assert summarize_error("") == "kubectl failed without a message"


# ------------------------------------------------------------------------ kubectl


API_RESOURCES = """\
NAME                SHORTNAMES   APIVERSION                        NAMESPACED   KIND               VERBS                                                        CATEGORIES
configmaps          cm           v1                                true         ConfigMap          create,delete,deletecollection,get,list,patch,update,watch
bindings                         v1                                true         Binding            create
apiservices                      apiregistration.k8s.io/v1         false        APIService         create,delete,deletecollection,get,list,patch,update,watch   api-extensions
deployments         deploy       apps/v1                           true         Deployment         create,delete,deletecollection,get,list,patch,update,watch   all
"""


def test_api_resources_table_parses_into_types_and_paths() -> None:
    types = {(t.group, t.kind): t for t in parse_api_resources(API_RESOURCES)}
    cm = types[("", "ConfigMap")]
    assert (cm.plural, cm.version, cm.namespaced, cm.qualified) == (
        "configmaps",
        "v1",
        True,
        "configmaps",
    )
    assert cm.path("buildkite", "a") == "/api/v1/namespaces/buildkite/configmaps/a"
    api = types[("apiregistration.k8s.io", "APIService")]
    assert api.qualified == "apiservices.apiregistration.k8s.io"
    assert api.path("", "v1beta1.external.metrics.k8s.io") == (
        "/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.external.metrics.k8s.io"
    )
    assert types[("", "Binding")].verbs == {"create"}
    assert types[("apps", "Deployment")].path("ns", "a:b") == (
        "/apis/apps/v1/namespaces/ns/deployments/a:b"
    )
    with pytest.raises(ValueError):
        parse_api_resources("error: the server could not be reached")


# ------------------------------------------------------------------------ CLI


def test_delete_needs_an_overlay_or_a_name() -> None:
    result = CliRunner().invoke(cli, ["delete"])
    assert result.exit_code == ExitStatus.USAGE
    assert "give either OVERLAY or --name" in result.output
    result = CliRunner().invoke(cli, ["delete", "--name", "Not_A_Name"])
    assert result.exit_code == ExitStatus.USAGE


def test_apply_and_delete_without_kubectl_say_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("stackgen.tools.which", lambda name: None)
    for args in (["apply", str(ROOT / "overlays" / "example")], ["delete", "--name", "x"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == ExitStatus.TOOLING, result.output
        assert result.output.strip().count("\n") == 0
        assert "kubectl not found" in result.output
