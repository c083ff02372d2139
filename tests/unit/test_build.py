"""The happy path: the example builds, validates on its own, is deterministic, and a
rendered tree built by plain kustomize gives the very same bytes."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

import stackgen
from stackgen import tools
from stackgen.common.resources import load_schema
from stackgen.compose import dispatcher_config, split_image
from stackgen.pipeline import BuildOptions, build
from tests.support.cli import Run
from tests.support.paths import EXAMPLE, ROOT

RECOMMENDED = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)


def docs(manifest: bytes) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(manifest) if d]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def test_example_builds_and_passes_kubeconform_on_its_own(stackgen: Callable[..., Run]) -> None:
    run = stackgen("build", "overlays/example")
    assert run.code == 0, run.stderr
    assert run.stderr == ""
    # The output passes the bare pipeline too: kubeconform -strict with the same schemas.
    proc = subprocess.run(
        [
            *tools.kubeconform().argv,
            "-strict",
            "-summary",
            "-kubernetes-version",
            "1.33.0",
            "-schema-location",
            str(ROOT / ".tools" / "schemas"),
            "-",
        ],
        input=run.stdout,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert b"Invalid: 0, Errors: 0, Skipped: 0" in proc.stdout


def test_example_contents() -> None:
    objects = build(EXAMPLE).objects
    kinds = {o["kind"] for o in objects}
    assert {
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Secret",
        "Deployment",
        "HorizontalPodAutoscaler",
        "CronJob",
        "APIService",
        "Lease",
    } <= kinds
    # One HPA, on the hpa queue's Deployment.
    hpas = by_kind(objects, "HorizontalPodAutoscaler")
    assert list(hpas) == ["buildkite-agent-default"]
    hpa = hpas["buildkite-agent-default"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "buildkite-agent-default"
    assert {
        m["external"]["metric"]["selector"]["matchLabels"]["queue"] for m in hpa["metrics"]
    } == {"default"}
    up = hpa["behavior"]["scaleUp"]
    assert up["policies"] == [
        {"type": "Pods", "value": 7, "periodSeconds": 30},
        {"type": "Percent", "value": 100, "periodSeconds": 30},
    ]
    assert up["selectPolicy"] == "Max"
    assert hpa["behavior"]["scaleDown"]["policies"] == [
        {"type": "Pods", "value": 1, "periodSeconds": 20}
    ]
    # The HPA owns replicas: the Deployment has none, so kubectl apply never resets it.
    agent = by_kind(objects, "Deployment")["buildkite-agent-default"]
    assert "replicas" not in agent["spec"]
    # The dispatch queue's template is a suspended CronJob.
    cron = by_kind(objects, "CronJob")["buildkite-agent-builds"]
    assert cron["spec"]["suspend"] is True
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["start", "--disconnect-after-job"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["BUILDKITE_AGENT_TAGS"] == "queue=builds,os=linux,size=large"
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
    # kube-system RoleBinding stays in kube-system; its subject is in the stack namespace.
    # Every cluster-scoped name (and the kube-system one) carries the stack's namespace.
    rb = by_kind(objects, "RoleBinding")["stackgen-metrics-adapter:buildkite:auth-reader"]
    assert rb["metadata"]["namespace"] == "kube-system"
    assert rb["subjects"][0]["namespace"] == "buildkite"
    crb = by_kind(objects, "ClusterRoleBinding")[
        "stackgen-metrics-adapter:buildkite:system:auth-delegator"
    ]
    assert crb["subjects"][0]["namespace"] == "buildkite"
    api = by_kind(objects, "APIService")["v1beta1.external.metrics.k8s.io"]["spec"]
    assert api["service"]["namespace"] == "buildkite"
    assert api["caBundle"] and "insecureSkipTLSVerify" not in api
    ns = by_kind(objects, "Namespace")["buildkite"]["metadata"]["labels"]
    assert ns["pod-security.kubernetes.io/enforce"] == "baseline"
    assert ns["pod-security.kubernetes.io/enforce-version"] == "v1.33"


def test_recommended_labels_on_everything() -> None:
    for case in ("overlays/example", "tests/golden/dispatch-exact-mirrors/overlay"):
        for obj in build(ROOT / case).objects:
            labels = obj["metadata"].get("labels", {})
            missing = [k for k in RECOMMENDED if k not in labels]
            assert not missing, (obj["kind"], obj["metadata"]["name"], missing)


def test_generated_config_and_secret_references_resolve() -> None:
    objects = build(EXAMPLE).objects
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for obj in objects:
        text = json.dumps(obj)
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretKeyRef")):
            for part in text.split(f'"{key}": ')[1:]:
                name = json.loads(part[: part.index("}") + 1])["name"]
                assert (kind, name) in names, (obj["metadata"]["name"], kind, name)


def test_build_twice_gives_identical_bytes() -> None:
    first = build(EXAMPLE).manifest
    second = build(EXAMPLE).manifest
    assert first == second


def test_render_then_plain_kustomize_gives_the_same_bytes(
    stackgen: Callable[..., Run], tmp_path: Path
) -> None:
    out = tmp_path / "rendered"
    run = stackgen("render", "overlays/example", "--out", str(out))
    assert run.code == 0, run.stderr
    assert (out / "kustomization.yaml").is_file()
    gitignore = (out / ".gitignore").read_text()
    assert "/stack/secrets/" in gitignore and "/stack/overlay/" in gitignore
    plain = subprocess.run(
        [*tools.kustomize().argv, str(out)], capture_output=True, check=True
    ).stdout
    assert plain == build(EXAMPLE).manifest
    # Rendering again refuses to overwrite without --force.
    again = stackgen("render", "overlays/example", "--out", str(out))
    assert again.code == 1 and "exists and is not empty" in again.stderr
    assert stackgen("render", "overlays/example", "--out", str(out), "--force").code == 0


def test_dispatcher_config_is_generated_from_stack_and_valid() -> None:
    objects = build(EXAMPLE).objects
    config_maps = by_kind(objects, "ConfigMap")
    (name,) = [n for n in config_maps if n.startswith("stackgen-dispatcher-config-")]
    config = yaml.safe_load(config_maps[name]["data"]["dispatcher.yaml"])
    import jsonschema

    jsonschema.validate(config, load_schema("dispatcher"))
    assert config == dispatcher_config(stackgen.load_stack(EXAMPLE))
    (queue,) = config["queues"]
    assert queue["name"] == "builds"
    assert queue["template"] == "buildkite-agent-builds"
    assert queue["buffer"] == 2 and queue["maxAgents"] == 50
    assert queue["pollIntervalSeconds"] == 5
    # The dispatcher Deployment mounts exactly this ConfigMap.
    deployment = by_kind(objects, "Deployment")["stackgen-dispatcher"]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": name}} in volumes


def test_existing_secret_token_reaches_every_consumer() -> None:
    objects = build(ROOT / "tests/golden/hpa-existing-secret/overlay").objects
    assert not by_kind(objects, "Secret")  # nothing generated, nothing literal
    consumers = 0
    for obj in objects:
        spec = obj.get("spec", {})
        pod = spec.get("template", {}).get("spec") or (
            spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
        )
        for container in (pod or {}).get("containers", []):
            for env in container.get("env", []):
                if env["name"] == "BUILDKITE_AGENT_TOKEN":
                    consumers += 1
                    assert env["valueFrom"]["secretKeyRef"] == {
                        "name": "buildkite-agent-token-external",
                        "key": "agent-token",
                    }
    assert consumers == 2  # the agent pool and the metrics adapter


def test_dind_lowers_pod_security_visibly(stackgen: Callable[..., Run]) -> None:
    run = stackgen("build", "tests/golden/dispatch-exact-mirrors/overlay")
    assert run.code == 0, run.stderr
    assert "lowered to privileged: dind on queue(s) builds" in run.stderr
    objects = docs(run.stdout)
    ns = by_kind(objects, "Namespace")["mono"]["metadata"]
    assert ns["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert ns["labels"]["pod-security.kubernetes.io/warn"] == "baseline"
    assert "dind on queues builds" in ns["annotations"]["stackgen.io/pod-security-lowered-by"]
    cron = by_kind(objects, "CronJob")["buildkite-agent-builds"]
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (dind,) = pod["initContainers"]
    assert dind["restartPolicy"] == "Always"  # a native sidecar
    assert dind["securityContext"]["privileged"] is True
    # Only the dind queue is privileged.
    deploy = by_kind(objects, "CronJob")["buildkite-agent-deploy"]
    assert "initContainers" not in deploy["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def test_exact_queue_has_no_idle_timeout_and_mirror_cronjob_is_named() -> None:
    objects = build(ROOT / "tests/golden/dispatch-exact-mirrors/overlay").objects
    crons = by_kind(objects, "CronJob")
    exact = crons["buildkite-agent-deploy"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert exact["containers"][0]["args"] == ["start", "--disconnect-after-job"]
    mirror = crons["git-mirror-monorepo"]
    assert mirror["spec"]["schedule"] == "0 * * * *"
    args = mirror["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-2:] == ["--mirror", "monorepo"]
    assert "suspend" not in mirror["spec"]


def test_env_token_source(tmp_path: Path, minimal: Path) -> None:
    text = (minimal / "stack.yaml").read_text().replace("file: secrets/token", "env: MY_TOKEN")
    (minimal / "stack.yaml").write_text(text)
    result = build(minimal, BuildOptions(environ={"MY_TOKEN": "  from-env-token \n"}))
    (secret,) = by_kind(result.objects, "Secret").values()
    import base64

    assert base64.b64decode(secret["data"]["token"]) == b"from-env-token"


def test_token_file_trailing_newline_is_stripped(minimal: Path) -> None:
    (secret,) = by_kind(build(minimal).objects, "Secret").values()
    import base64

    assert base64.b64decode(secret["data"]["token"]) == b"tok-123-abc"


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("buildkite/agent:3.117.0", {"newName": "buildkite/agent", "newTag": "3.117.0"}),
        ("buildkite/agent", {"newName": "buildkite/agent"}),
        ("reg:5000/a/b:1.2", {"newName": "reg:5000/a/b", "newTag": "1.2"}),
        ("reg:5000/a/b", {"newName": "reg:5000/a/b"}),
        (
            "r.io/x:1@sha256:" + "0" * 64,
            {"newName": "r.io/x", "newTag": "1", "digest": "sha256:" + "0" * 64},
        ),
    ],
)
def test_split_image(image: str, expected: dict[str, str]) -> None:
    assert split_image(image) == expected


def test_library_api(minimal: Path) -> None:
    assert set(stackgen.__all__) >= {"build", "load_stack", "validate", "StackgenError"}
    stack = stackgen.load_stack(minimal)
    assert stack.name == "mini" and stack.namespace == "mini"
    assert [q.mode for q in stack.queues] == ["dispatch"]
    result = stackgen.validate(str(minimal))
    assert result.kubeconform_summary["invalid"] == 0
    with pytest.raises(stackgen.ConfigError) as info:
        stackgen.load_stack(minimal / "missing")
    assert isinstance(info.value, stackgen.StackgenError)
    assert str(info.value.problems[0]).endswith("no such overlay folder")


def test_cert_manager_issues_the_adapter_certificate(example: Path) -> None:
    text = (example / "stack.yaml").read_text()
    start = text.index("metricsAdapter:")
    end = text.index("kustomize:")
    text = (
        text[:start]
        + "metricsAdapter:\n  tls:\n    certManager:\n      issuerRef: {name: ca, kind: ClusterIssuer}\n\n"
        + text[end:]
    )
    (example / "stack.yaml").write_text(text)
    result = build(example)  # kubeconform validates the Certificate with cert-manager's CRD schema
    assert result.kubeconform_summary["invalid"] == 0
    (cert,) = by_kind(result.objects, "Certificate").values()
    assert cert["spec"]["secretName"] == "stackgen-metrics-adapter-tls"
    assert "stackgen-metrics-adapter.buildkite.svc" in cert["spec"]["dnsNames"]
    api = by_kind(result.objects, "APIService")["v1beta1.external.metrics.k8s.io"]
    assert api["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        "buildkite/stackgen-metrics-adapter"
    )
    assert "caBundle" not in api["spec"] and "insecureSkipTLSVerify" not in api["spec"]
    assert not [s for s in by_kind(result.objects, "Secret") if "metrics-adapter-tls" in s]


def test_pod_steps_queue_gets_a_token_and_a_namespaced_role_with_a_notice(
    stackgen: Callable[..., Run], minimal: Path
) -> None:
    text = (minimal / "stack.yaml").read_text()
    (minimal / "stack.yaml").write_text(
        text.replace("    mode: dispatch\n", "    mode: dispatch\n    podSteps: true\n", 1)
    )
    run = stackgen("build", str(minimal))
    assert run.code == 0, run.stderr
    assert "podSteps is on: its agents mount a ServiceAccount token" in run.stderr
    objects = list(yaml.safe_load_all(run.stdout))
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("ServiceAccount", "buildkite-agent-steps-default") in kinds
    (role,) = [o for o in objects if o["kind"] == "Role" and "steps" in o["metadata"]["name"]]
    assert role["metadata"]["namespace"]  # namespaced: nothing cluster-wide
    assert not [
        o
        for o in objects
        if o["kind"] in ("ClusterRole", "ClusterRoleBinding") and "steps" in o["metadata"]["name"]
    ]
    rules = {(r["apiGroups"][0], r["resources"][0]): set(r["verbs"]) for r in role["rules"]}
    assert rules == {
        ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
        ("", "pods"): {"create", "get", "list", "watch", "delete"},
        ("", "pods/log"): {"get"},
    }
    (cronjob,) = [o for o in objects if o["kind"] == "CronJob"]
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "buildkite-agent-steps-default"
    assert pod["automountServiceAccountToken"] is True
