"""Built stacks on a real control plane: server dry-run, apply, read back, run on kwok nodes.

Every example overlay (``overlays/*``) and every golden configuration (``tests/golden/*``)
is built with ``stackgen build``, dry-run by the API server, applied, read back, and its
workloads must become available on kwok's fake nodes, with the namespace's Pod Security
labels enforced by the apiserver's PodSecurity admission. Separately: a hand-made Job runs to
completion and ``ttlSecondsAfterFinished`` collects it (job and TTL controllers), and
stackgen's own ``--server-dry-run`` flag works against the cluster.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pytest
import yaml

from stackgen.common.status import ExitStatus
from tests.support.cluster import Cluster, versions, wait_for
from tests.support.paths import ROOT

pytestmark = pytest.mark.e2e

PINS = versions()
EXAMPLE = ROOT / "overlays" / "example"
WORKLOAD_TIMEOUT = 120


# ---------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One stack to deploy: an example overlay or a golden configuration."""

    id: str
    overlay: Path


def _is_overlay(path: Path) -> bool:
    return path.is_dir() and any(
        (path / f).is_file() for f in ("stack.yaml", "kustomization.yaml", "kustomization.yml")
    )


def discover_cases() -> list[Case]:
    """Example overlays, then golden inputs (SOURCE file, overlay/ folder, or the case itself)."""
    found: dict[Path, Case] = {}
    for path in sorted((ROOT / "overlays").iterdir()):
        if _is_overlay(path):
            found.setdefault(path.resolve(), Case(f"overlays/{path.name}", path))
    golden = ROOT / "tests" / "golden"
    for case_dir in sorted(golden.iterdir()) if golden.is_dir() else []:
        source = case_dir / "SOURCE"
        if source.is_file():
            overlay = (case_dir / source.read_text(encoding="utf-8").strip()).resolve()
        elif _is_overlay(case_dir / "overlay"):
            overlay = case_dir / "overlay"
        elif _is_overlay(case_dir):
            overlay = case_dir
        else:
            continue
        found.setdefault(overlay.resolve(), Case(f"golden/{case_dir.name}", overlay))
    return list(found.values())


CASES = discover_cases()


def stackgen(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the stackgen CLI in a subprocess (it sees the session's KUBECONFIG)."""
    return subprocess.run(
        [sys.executable, "-m", "stackgen", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )


def documents(text: str) -> list[dict[str, Any]]:
    """The objects of a multi-document YAML stream."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def pod_template(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod template of a workload (Deployment, Job, CronJob, ...), if it has one."""
    spec = obj.get("spec") or {}
    if obj["kind"] == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    template = spec.get("template")
    return template if isinstance(template, dict) else None


# ---------------------------------------------------------------------------- comparison

_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_SUFFIX = {
    None: Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}


def _quantity(value: Any) -> Decimal | None:
    match = _QUANTITY.match(str(value))
    if not match:
        return None
    try:
        return Decimal(match.group(1)) * _SUFFIX[match.group(2)]
    except InvalidOperation:
        return None


def _same_scalar(expected: Any, actual: Any) -> bool:
    if expected == actual or str(expected) == str(actual):
        return True
    # The server canonicalises resource quantities (0.5 -> 500m, 1024Mi -> 1Gi).
    left, right = _quantity(expected), _quantity(actual)
    return left is not None and left == right


def differences(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Where ``actual`` lacks or changes what ``expected`` sets (server defaults are fine)."""
    if expected is None:
        return []
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path or '.'}: expected a mapping, server has {actual!r}"]
        out = []
        for key, value in expected.items():
            if key not in actual:
                if value in ({}, [], None, "", False, 0):
                    continue  # zero values of `omitempty` fields are dropped on the way in
                out.append(f"{path}.{key}: missing on the server")
            else:
                out += differences(value, actual[key], f"{path}.{key}")
        return out
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{path}: expected {len(expected)} items, server has {actual!r}"[:300]]
        out = []
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            out += differences(e, a, f"{path}[{i}]")
        return out
    return [] if _same_scalar(expected, actual) else [f"{path}: {expected!r} != {actual!r}"]


def comparable(obj: dict[str, Any]) -> dict[str, Any]:
    """What of a built object must survive the trip through the API server unchanged."""
    obj = copy.deepcopy(obj)
    meta = obj.get("metadata") or {}
    obj["metadata"] = {
        k: meta[k] for k in ("name", "namespace", "labels", "annotations") if k in meta
    }
    obj.pop("status", None)
    return decode_secret(obj)


def decode_secret(obj: dict[str, Any]) -> dict[str, Any]:
    """A Secret's data as decoded text: base64 may be wrapped, and stringData ends up in data."""
    if obj.get("kind") != "Secret":
        return obj
    obj = copy.deepcopy(obj)
    data = {k: base64.b64decode(v).decode("latin-1") for k, v in (obj.get("data") or {}).items()}
    data.update({k: str(v) for k, v in (obj.pop("stringData", None) or {}).items()})
    obj["data"] = data
    return obj


# ---------------------------------------------------------------------------- node labels


@dataclass
class NodeLabels:
    """Gives kwok nodes the labels the stack's nodeSelectors ask for; restores them after."""

    cluster: Cluster
    original: dict[str, dict[str, str]] = field(default_factory=dict)

    def satisfy(self, objects: list[dict[str, Any]]) -> None:
        selectors: list[dict[str, str]] = []
        for obj in objects:
            template = pod_template(obj)
            selector = ((template or {}).get("spec") or {}).get("nodeSelector") or {}
            if selector and selector not in selectors:
                selectors.append(selector)
        nodes = sorted(self.cluster.kwok_nodes())
        assert len(selectors) <= len(nodes), (
            f"more distinct nodeSelectors than kwok nodes: {selectors}"
        )
        for node, selector in zip(nodes, selectors, strict=False):
            labels = self.cluster.kubectl_json("get", "node", node)["metadata"].get("labels", {})
            self.original[node] = {k: labels.get(k) for k in selector}
            pairs = [f"{k}={v}" for k, v in selector.items()]
            self.cluster.kubectl("label", "node", node, "--overwrite", *pairs)

    def restore(self) -> None:
        for node, labels in self.original.items():
            pairs = [f"{k}={v}" if v is not None else f"{k}-" for k, v in labels.items()]
            self.cluster.kubectl("label", "node", node, "--overwrite", *pairs, check=False)


# ---------------------------------------------------------------------------- stack tests


@dataclass
class Deployed:
    """A stack built, dry-run and applied on the session cluster."""

    case: Case
    manifest: str
    objects: list[dict[str, Any]]
    dry_run: subprocess.CompletedProcess[str]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]


@pytest.fixture(scope="class")
def deployed(cluster: Cluster, case: Case) -> Iterator[Deployed]:
    """Build the case, create its namespaces, server-dry-run it, apply it; delete it after."""
    built = stackgen("build", case.overlay)
    if built.returncode != 0:
        pytest.fail(f"stackgen build {case.overlay} failed:\n{built.stderr}", pytrace=False)
    objects = documents(built.stdout)
    namespaces = [o for o in objects if o["kind"] == "Namespace"]
    for ns in namespaces:
        name = ns["metadata"]["name"]

        def gone(name: str = name) -> bool:
            return cluster.get("namespace", name) is None

        wait_for(gone, timeout=180, what=f"namespace {name} left by an earlier test to be gone")
    labels = NodeLabels(cluster)
    try:
        labels.satisfy(objects)
        # Namespaces first: the server can only dry-run namespaced objects in existing ones.
        if namespaces:
            cluster.apply(namespaces)
        dry_run = stackgen("build", case.overlay, "--server-dry-run")
        applied = cluster.apply(built.stdout, check=False)
        if applied.returncode != 0:
            pytest.fail(f"kubectl apply of {case.id} failed:\n{applied.stderr}", pytrace=False)
        yield Deployed(case, built.stdout, objects, dry_run)
    finally:
        # Reverse order: the APIService goes before the namespace, whose deletion needs a
        # complete API discovery.
        cluster.delete(list(reversed(objects)), wait=True, timeout=240)
        labels.restore()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES], scope="class")
class TestStack:
    """One stack per parameter, deployed once for all the checks below."""

    def test_server_dry_run_accepts_the_stack(self, deployed: Deployed) -> None:
        proc = deployed.dry_run
        assert proc.returncode == 0, f"stackgen build --server-dry-run failed:\n{proc.stderr}"
        assert proc.stdout == deployed.manifest, "--server-dry-run changed what is printed"
        assert "skipped" not in proc.stderr, proc.stderr

    def test_objects_read_back_as_built(self, cluster: Cluster, deployed: Deployed) -> None:
        listed = cluster.kubectl_json("get", "-f", "-", input=deployed.manifest)
        items = listed["items"] if listed.get("kind") == "List" else [listed]
        assert len(items) == len(deployed.objects)
        problems = []
        for built, live in zip(deployed.objects, items, strict=True):
            where = f"{built['kind']}/{built['metadata']['name']}"
            assert (live["kind"], live["metadata"]["name"]) == (
                built["kind"],
                built["metadata"]["name"],
            )
            diffs = differences(comparable(built), decode_secret(live))
            problems += [f"{where}: {d}" for d in diffs]
        assert not problems, "\n".join(problems[:40])

    def test_workloads_become_available_on_kwok_nodes(
        self, cluster: Cluster, deployed: Deployed
    ) -> None:
        deployments = deployed.of_kind("Deployment")
        if not deployments:
            pytest.skip(f"{deployed.case.id} has no Deployment")
        min_replicas = {
            (h["metadata"].get("namespace"), h["spec"]["scaleTargetRef"]["name"]): h["spec"].get(
                "minReplicas", 1
            )
            for h in deployed.of_kind("HorizontalPodAutoscaler")
            if h["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        }
        kwok_nodes = cluster.kwok_nodes()
        for dep in deployments:
            ns, name = dep["metadata"].get("namespace", "default"), dep["metadata"]["name"]
            # An HPA's target has no replicas of its own (default 1); the HPA controller
            # raises it to minReplicas.
            wanted = max(dep["spec"].get("replicas", 1), min_replicas.get((ns, name), 0))

            def available(ns: str = ns, name: str = name, wanted: int = wanted) -> Any:
                live = cluster.get("deployment", name, ns) or {}
                status, spec = live.get("status") or {}, live.get("spec") or {}
                return (
                    spec.get("replicas") == wanted
                    and status.get("observedGeneration") == live["metadata"]["generation"]
                    and status.get("availableReplicas") == wanted
                    and status.get("updatedReplicas") == wanted
                    and live
                )

            wait_for(
                available,
                timeout=WORKLOAD_TIMEOUT,
                what=f"deployment {ns}/{name} to have {wanted} available replicas",
            )
            selector = ",".join(
                f"{k}={v}" for k, v in dep["spec"]["selector"]["matchLabels"].items()
            )
            pods = [
                p
                for p in cluster.items("pods", ns, selector)
                if not p["metadata"].get("deletionTimestamp")
            ]
            running = [p for p in pods if p["status"].get("phase") == "Running"]
            assert len(running) >= wanted, [p["metadata"]["name"] for p in pods]
            for pod in running:
                assert pod["spec"].get("nodeName") in kwok_nodes, pod["metadata"]["name"]

    def test_hpa_controller_manages_the_targets(self, cluster: Cluster, deployed: Deployed) -> None:
        hpas = deployed.of_kind("HorizontalPodAutoscaler")
        if not hpas:
            pytest.skip(f"{deployed.case.id} has no HorizontalPodAutoscaler")
        for hpa in hpas:
            ns, name = hpa["metadata"].get("namespace", "default"), hpa["metadata"]["name"]

            def able_to_scale(ns: str = ns, name: str = name) -> Any:
                live = cluster.get("hpa", name, ns) or {}
                conditions = (live.get("status") or {}).get("conditions") or []
                return [c for c in conditions if c["type"] == "AbleToScale"]

            conditions = wait_for(able_to_scale, timeout=60, what=f"HPA {ns}/{name} status")
            assert conditions[0]["status"] == "True", conditions

    def test_cronjob_templates_run_as_jobs(self, cluster: Cluster, deployed: Deployed) -> None:
        cronjobs = deployed.of_kind("CronJob")
        if not cronjobs:
            pytest.skip(f"{deployed.case.id} has no CronJob")
        for cj in cronjobs:
            ns, name = cj["metadata"].get("namespace", "default"), cj["metadata"]["name"]
            job = f"e2e-{name}"[:52]
            # Like the dispatcher: a Job from the template, not owned by the CronJob (whose
            # controller would delete it at once under its history limits).
            template = cj["spec"]["jobTemplate"]
            cluster.create(
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "metadata": {**template.get("metadata", {}), "name": job, "namespace": ns},
                    "spec": template["spec"],
                }
            )

            def finished(ns: str = ns, job: str = job) -> Any:
                live = cluster.get("job", job, ns) or {}
                conditions = (live.get("status") or {}).get("conditions") or []
                done = {c["type"] for c in conditions if c["status"] == "True"}
                return done & {"Complete", "Failed"}

            done = wait_for(finished, timeout=WORKLOAD_TIMEOUT, what=f"job {ns}/{job} to finish")
            assert done == {"Complete"}, cluster.kubectl("describe", "job", job, "-n", ns).stdout
            pods = cluster.items("pods", ns, f"job-name={job}")
            assert pods and all(p["status"]["phase"] == "Succeeded" for p in pods)
            assert all(p["spec"]["nodeName"] in cluster.kwok_nodes() for p in pods)
            cluster.kubectl("delete", "job", job, "-n", ns, "--wait=false")

    def test_pod_security_admission_enforces_namespace_labels(
        self, cluster: Cluster, deployed: Deployed, scratch_namespace: Any
    ) -> None:
        namespaces = deployed.of_kind("Namespace")
        if not namespaces:
            pytest.skip(f"{deployed.case.id} creates no Namespace")
        unlabeled = scratch_namespace()
        for ns_obj in namespaces:
            ns = ns_obj["metadata"]["name"]
            labels = cluster.kubectl_json("get", "namespace", ns)["metadata"].get("labels", {})
            enforce = labels.get("pod-security.kubernetes.io/enforce", "privileged")
            warn = labels.get("pod-security.kubernetes.io/warn")
            pod = privileged_pod("e2e-privileged-probe")
            if enforce == "privileged":
                # Nothing to break at this level; the warn label must still be honoured.
                proc = cluster.create(pod, "-n", ns, "--dry-run=server", check=False)
                assert proc.returncode == 0, proc.stderr
                if warn in ("baseline", "restricted"):
                    assert f'would violate PodSecurity "{warn}:' in proc.stderr, proc.stderr
                continue
            proc = cluster.create(pod, "-n", ns, check=False)
            if proc.returncode == 0:
                cluster.kubectl("delete", "pod", pod["metadata"]["name"], "-n", ns, "--now")
            assert proc.returncode != 0, f"a privileged pod was admitted into {ns} ({enforce})"
            assert f'violates PodSecurity "{enforce}:' in proc.stderr, proc.stderr
            # The same pod is admitted where no label asks for a profile: the labels did it.
            control = cluster.create(pod, "-n", unlabeled, "--dry-run=server", check=False)
            assert control.returncode == 0, control.stderr


def privileged_pod(name: str) -> dict[str, Any]:
    """A pod that breaks the baseline (and restricted) Pod Security profile."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "probe",
                    "image": "busybox:1.36",
                    "securityContext": {"privileged": True},
                }
            ]
        },
    }


# ---------------------------------------------------------------------------- cluster tests


def test_control_plane_is_the_pinned_kubernetes(cluster: Cluster) -> None:
    version = json.loads(cluster.kubectl("get", "--raw", "/version").stdout)
    assert version["gitVersion"] == PINS["KUBERNETES_VERSION"]
    nodes = cluster.items("nodes", selector="type=kwok")
    assert len(nodes) >= 4
    for node in nodes:
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", node["metadata"]["name"]
        assert node["metadata"]["annotations"].get("kwok.x-k8s.io/node") == "fake"


def test_job_runs_to_completion_and_ttl_collects_it(
    cluster: Cluster, scratch_namespace: Any
) -> None:
    ttl = 8
    ns = scratch_namespace({"pod-security.kubernetes.io/enforce": "restricted"}, prefix="e2e-job")
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "hello", "namespace": ns},
        "spec": {
            "completions": 2,
            "parallelism": 2,
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": ttl,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 1000,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "hello",
                            "image": "busybox:1.36",
                            "command": ["true"],
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                }
            },
        },
    }
    cluster.apply(job)

    def complete() -> Any:
        live = cluster.get("job", "hello", ns) or {}
        conditions = (live.get("status") or {}).get("conditions") or []
        return (
            live
            if any(c["type"] == "Complete" and c["status"] == "True" for c in conditions)
            else None
        )

    live = wait_for(complete, timeout=60, interval=0.25, what="job hello to be Complete")
    completed_seen = time.monotonic()
    assert live["status"]["succeeded"] == 2
    pods = cluster.items("pods", ns, "job-name=hello")
    assert len(pods) == 2, [p["metadata"]["name"] for p in pods]
    assert {p["status"]["phase"] for p in pods} == {"Succeeded"}
    assert {p["spec"]["nodeName"] for p in pods} <= cluster.kwok_nodes()

    wait_for(
        lambda: cluster.get("job", "hello", ns) is None,
        timeout=ttl + 60,
        what=f"the TTL controller to delete the Job {ttl}s after it finished",
    )
    # Not before its time (the controller works from the Job's completion time).
    assert time.monotonic() - completed_seen >= ttl - 2
    wait_for(
        lambda: not cluster.items("pods", ns, "job-name=hello"),
        timeout=60,
        what="the garbage collector to delete the Job's pods",
    )


def test_stackgen_server_dry_run_uses_the_current_context(cluster: Cluster, tmp_path: Path) -> None:
    built = stackgen("build", EXAMPLE)
    assert built.returncode == 0, built.stderr
    objects = documents(built.stdout)
    namespace = next(o for o in objects if o["kind"] == "Namespace")
    ns = namespace["metadata"]["name"]
    wait_for(
        lambda: cluster.get("namespace", ns) is None,
        timeout=180,
        what=f"namespace {ns} from an earlier test to be gone",
    )

    # Namespace missing: cluster-scoped objects are checked, the rest is reported skipped.
    proc = stackgen("build", EXAMPLE, "--server-dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == built.stdout
    assert "do not exist yet" in proc.stderr, proc.stderr

    # A deliberately invalid object that every offline check passes: only a server sees it.
    bad = tmp_path / "bad"
    shutil.copytree(EXAMPLE, bad)
    (bad / "extra" / "bad-configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Not_A_Valid_Name\ndata:\n  a: b\n",
        encoding="utf-8",
    )
    stack = yaml.safe_load((bad / "stack.yaml").read_text(encoding="utf-8"))
    stack.setdefault("kustomize", {}).setdefault("resources", []).append("extra/bad-configmap.yaml")
    (bad / "stack.yaml").write_text(yaml.safe_dump(stack, sort_keys=False), encoding="utf-8")
    offline = stackgen("validate", bad)
    assert offline.returncode == 0, f"the offline checks should pass:\n{offline.stderr}"

    cluster.apply(namespace)
    try:
        proc = stackgen("build", EXAMPLE, "--server-dry-run")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == built.stdout
        assert "skipped" not in proc.stderr, proc.stderr

        proc = stackgen("validate", EXAMPLE, "--server-dry-run")
        assert proc.returncode == 0, proc.stderr
        assert "server dry-run" in proc.stdout, proc.stdout

        # A dry run persists nothing.
        names = cluster.kubectl(
            "get", "deployments,configmaps,secrets,services", "-n", ns, "-o", "name"
        ).stdout.split()
        live = {f"{n.split('/')[0].split('.')[0]}/{n.split('/', 1)[1]}" for n in names}
        built_names = {f"{o['kind'].lower()}/{o['metadata']['name']}" for o in objects}
        assert not live & built_names, f"a dry run left objects behind: {live & built_names}"

        proc = stackgen("validate", bad, "--server-dry-run")
        assert proc.returncode == ExitStatus.INVALID, proc.stdout + proc.stderr
        assert "ConfigMap/Not_A_Valid_Name" in proc.stderr, proc.stderr
        assert "server dry-run" in proc.stderr and "RFC 1123" in proc.stderr, proc.stderr

        proc = stackgen("build", bad, "--server-dry-run")
        assert proc.returncode == ExitStatus.INVALID, proc.stderr
        assert proc.stdout == "", "nothing may reach stdout when the server rejects the stack"
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=120s", check=False)


def test_stackgen_uses_kubeconfig_from_the_environment(cluster: Cluster) -> None:
    # The session exports KUBECONFIG, so plain `kubectl` (what stackgen runs) reaches the
    # e2e cluster and not whatever ~/.kube/config points at.
    assert os.environ.get("KUBECONFIG") == str(cluster.kubeconfig)
    proc = subprocess.run(
        ["kubectl", "config", "current-context"], capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == cluster.context
