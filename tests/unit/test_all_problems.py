"""Every problem in one run, objects moved out of kube-system, kustomize's warnings, --policy.

Each case runs the real CLI in a fresh process, as a user's shell would: one line per
problem naming file and field, exit 1, nothing on stdout, no secret in any message.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.cli import Run
from tests.support.overlays import write
from tests.unit.test_bad_input import TOKEN, assert_rejected, set_stack

# ------------------------------------------------------------------------------ overlays

DEPLOYMENT_WITH_HOSTPATH = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: nginx:1.27
          resources: {requests: {cpu: 10m, memory: 16Mi}, limits: {memory: 32Mi}}
      volumes:
        - name: host
          hostPath: {path: /var/run}
"""

TWO_HPAS = """
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: by-cpu}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 1
  maxReplicas: 3
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: by-memory}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 1
  maxReplicas: 3
"""

INSECURE_APISERVICE = """
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.external.metrics.k8s.io}
spec:
  group: external.metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  insecureSkipTLSVerify: true
  service: {name: adapter, namespace: default}
"""

LITERAL_TOKEN_SECRET = f"""
apiVersion: v1
kind: Secret
metadata: {{name: agent-token}}
stringData: {{token: {TOKEN}}}
"""

# kustomize's helloWorld example, in short: no requests or limits (stackgen's policy wants
# them), and `commonLabels`, which kustomize v5 calls deprecated.
HELLO_DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: the-deployment}
spec:
  replicas: 3
  selector: {matchLabels: {deployment: hello}}
  template:
    metadata: {labels: {deployment: hello}}
    spec:
      containers:
        - name: the-container
          image: monopole/hello:1
          command: ["/hello", "--port=8080", "--enableRiskyFeature=$(ENABLE_RISKY)"]
          ports: [{containerPort: 8080}]
          env:
            - name: ALT_GREETING
              valueFrom: {configMapKeyRef: {name: the-map, key: altGreeting}}
            - name: ENABLE_RISKY
              valueFrom: {configMapKeyRef: {name: the-map, key: enableRisky}}
"""
HELLO_SERVICE = """
kind: Service
apiVersion: v1
metadata: {name: the-service}
spec:
  selector: {deployment: hello}
  type: LoadBalancer
  ports: [{protocol: TCP, port: 8666, targetPort: 8080}]
"""
HELLO_CONFIGMAP = """
apiVersion: v1
kind: ConfigMap
metadata: {name: the-map}
data: {altGreeting: "Good Morning!", enableRisky: "false"}
"""


def hello_world(root: Path, kustomization: str) -> Path:
    """kustomize's helloWorld example with this kustomization."""
    write(root / "kustomization.yaml", kustomization)
    write(root / "deployment.yaml", HELLO_DEPLOYMENT)
    write(root / "service.yaml", HELLO_SERVICE)
    write(root / "configMap.yaml", HELLO_CONFIGMAP)
    return root


HELLO = """
labels:
  - pairs: {app: hello}
resources: [deployment.yaml, service.yaml, configMap.yaml]
"""

AUTH_READER_BINDING = """
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: adapter-auth-reader
  namespace: kube-system
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: extension-apiserver-authentication-reader
subjects:
  - {kind: ServiceAccount, name: adapter, namespace: buildkite}
"""
SERVICE_ACCOUNT = """
apiVersion: v1
kind: ServiceAccount
metadata: {name: adapter}
"""


def problem_lines(run: Run) -> list[str]:
    return [line for line in run.lines if not line.startswith("stackgen: ")]


# ------------------------------------------------------------------- all problems at once


def test_plain_overlay_reports_every_problem_in_one_run(
    stackgen: Callable[..., Run], tmp_path: Path
) -> None:
    overlay = tmp_path / "plain"
    write(
        overlay / "kustomization.yaml",
        "resources: [secret.yaml, deployment.yaml, hpas.yaml, apiservice.yaml]\n",
    )
    write(overlay / "secret.yaml", LITERAL_TOKEN_SECRET)
    write(overlay / "deployment.yaml", DEPLOYMENT_WITH_HOSTPATH)
    write(overlay / "hpas.yaml", TWO_HPAS)
    write(overlay / "apiservice.yaml", INSECURE_APISERVICE)
    run = stackgen("build", str(overlay))
    assert_rejected(
        run,
        "secret.yaml: policy: stringData: Secret 'agent-token' holds literal values in git",
        "kustomization.yaml: policy: Deployment/web: 2 HorizontalPodAutoscalers "
        "(by-cpu, by-memory) target it",
        "kustomization.yaml: policy: Deployment/web: spec.template.spec.volumes[0]: "
        "hostPath volumes are not allowed",
        "kustomization.yaml: policy: APIService/v1beta1.external.metrics.k8s.io: "
        "spec.insecureSkipTLSVerify: skips TLS verification without the explicit opt-in",
    )
    assert len(problem_lines(run)) == 4, run.lines
    # The source check's problem comes first, as it always did.
    assert "secret.yaml" in run.lines[0]


def test_plain_overlay_kustomize_error_and_literal_secret_together(
    stackgen: Callable[..., Run], tmp_path: Path
) -> None:
    overlay = tmp_path / "plain"
    write(overlay / "kustomization.yaml", "resources: [secret.yaml, missing.yaml]\n")
    write(overlay / "secret.yaml", LITERAL_TOKEN_SECRET)
    run = stackgen("build", str(overlay))
    assert_rejected(
        run,
        "secret.yaml: policy: stringData: Secret 'agent-token' holds literal values in git",
        "kustomization.yaml: kustomize: ",
    )
    assert any("missing.yaml" in line for line in run.lines), run.lines


def test_kustomize_error_reported_with_others_is_still_scrubbed(
    stackgen: Callable[..., Run], tmp_path: Path
) -> None:
    """kustomize quotes an env file's bad line: with the literal secret's line, still redacted."""
    overlay = tmp_path / "plain"
    write(
        overlay / "kustomization.yaml",
        "resources: [secret.yaml]\nsecretGenerator:\n  - name: env\n    envs: [secret.env]\n",
    )
    write(overlay / "secret.yaml", LITERAL_TOKEN_SECRET.replace(TOKEN, "literal-in-git"))
    (overlay / "secret.env").write_bytes(b"TOKEN=" + TOKEN.encode() + b"\xff\xfe\n")
    run = stackgen("build", str(overlay))
    assert_rejected(
        run,
        "secret.yaml: policy: stringData: Secret 'agent-token' holds literal values in git",
        "plain/kustomization.yaml: kustomize: ",
        "<redacted>",
    )
    assert " ".join(str(b) for b in TOKEN.encode()) not in run.stderr


def test_plain_overlay_schema_and_policy_problems_together(
    stackgen: Callable[..., Run], tmp_path: Path
) -> None:
    overlay = tmp_path / "plain"
    write(overlay / "kustomization.yaml", "resources: [deployment.yaml, secret.yaml]\n")
    write(
        overlay / "deployment.yaml",
        DEPLOYMENT_WITH_HOSTPATH.replace(
            "image: nginx:1.27", "image: nginx:1.27\n          imag: x"
        ),
    )
    write(overlay / "secret.yaml", LITERAL_TOKEN_SECRET)
    run = stackgen("build", str(overlay))
    assert_rejected(
        run,
        "policy: stringData: Secret 'agent-token'",
        "Deployment/web: spec.template.spec.containers[0]",  # kubeconform: unknown field
        "policy: Deployment/web: spec.template.spec.volumes[0]: hostPath volumes",
    )
    schema_lines = [line for line in run.lines if "imag" in line and "policy:" not in line]
    assert schema_lines, run.lines


def test_stack_overlay_schema_literal_secret_and_policy_together(
    stackgen: Callable[..., Run], minimal: Path
) -> None:
    write(minimal / "extra" / "deployment.yaml", DEPLOYMENT_WITH_HOSTPATH)
    write(
        minimal / "extra" / "kustomization.yaml",
        f"""
        resources: [deployment.yaml]
        secretGenerator:
          - name: another-token
            literals: [token={TOKEN}]
        """,
    )
    set_stack(minimal, "    mode: dispatch\n", "    mode: dispatch\n    maxAgent: 3\n")
    set_stack(minimal, "secrets:\n", "kustomize:\n  resources: [extra]\nsecrets:\n")
    run = stackgen("build", str(minimal))
    assert_rejected(
        run,
        "stack.yaml: queues[0].maxAgent: unknown key; did you mean 'maxAgents'?",
        "extra/kustomization.yaml: policy: secretGenerator[0].literals[0]: literal secret",
        "stack.yaml: policy: Deployment/web: spec.template.spec.volumes[0]: hostPath volumes",
    )
    assert len(problem_lines(run)) == 3, run.lines
    assert "maxAgent" in run.lines[0]


def test_stack_overlay_cross_field_and_policy_problems_together(
    stackgen: Callable[..., Run], minimal: Path
) -> None:
    write(minimal / "extra" / "deployment.yaml", DEPLOYMENT_WITH_HOSTPATH)
    set_stack(
        minimal, "    mode: dispatch\n", "    mode: dispatch\n    minAgents: 9\n    maxAgents: 2\n"
    )
    set_stack(minimal, "secrets:\n", "kustomize:\n  resources: [extra/deployment.yaml]\nsecrets:\n")
    run = stackgen("build", str(minimal))
    assert_rejected(
        run,
        "minAgents (9) is greater",
        "policy: Deployment/web: spec.template.spec.volumes[0]: hostPath volumes",
    )


def test_validate_reports_every_problem_of_every_overlay(
    stackgen: Callable[..., Run], tmp_path: Path
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    write(first / "kustomization.yaml", "resources: [deployment.yaml, hpas.yaml]\n")
    write(first / "deployment.yaml", DEPLOYMENT_WITH_HOSTPATH)
    write(first / "hpas.yaml", TWO_HPAS)
    write(second / "kustomization.yaml", "resources: [secret.yaml, apiservice.yaml]\n")
    write(second / "secret.yaml", LITERAL_TOKEN_SECRET)
    write(second / "apiservice.yaml", INSECURE_APISERVICE)
    run = stackgen("validate", str(first), str(second), "--output", "json")
    assert run.code == 1, run.stderr
    report = json.loads(run.stdout)
    problems = {r["overlay"]: r["problems"] for r in report["overlays"]}
    assert len(problems[str(first)]) == 2
    assert len(problems[str(second)]) == 2
    assert all(p["check"] == "policy" for ps in problems.values() for p in ps)
    assert TOKEN not in run.stderr and TOKEN.encode() not in run.stdout


# ------------------------------------------------------------ moved out of kube-system


def test_rolebinding_moved_out_of_kube_system(stackgen: Callable[..., Run], tmp_path: Path) -> None:
    overlay = tmp_path / "adapter"
    write(overlay / "kustomization.yaml", "namespace: buildkite\nresources: [rbac.yaml]\n")
    write(overlay / "rbac.yaml", SERVICE_ACCOUNT + "---\n" + AUTH_READER_BINDING.lstrip("\n"))
    run = stackgen("build", str(overlay), "--policy", "none")
    assert_rejected(
        run,
        "rbac.yaml: [1].metadata.namespace: RoleBinding/adapter-auth-reader is declared in "
        "kube-system but the build puts it in namespace 'buildkite'",
    )
    assert len(problem_lines(run)) == 1, run.lines  # the well-known Role is not said twice


def test_rolebinding_moved_with_a_name_prefix(stackgen: Callable[..., Run], tmp_path: Path) -> None:
    overlay = tmp_path / "adapter"
    write(
        overlay / "kustomization.yaml",
        "namespace: buildkite\nnamePrefix: ci-\nresources: [binding.yaml]\n",
    )
    write(overlay / "binding.yaml", AUTH_READER_BINDING)
    assert_rejected(
        stackgen("build", str(overlay), "--policy", "none"),
        "binding.yaml: metadata.namespace: RoleBinding/adapter-auth-reader is declared in "
        "kube-system",
    )


def test_binding_to_a_kube_system_role_elsewhere(
    stackgen: Callable[..., Run], tmp_path: Path
) -> None:
    overlay = tmp_path / "adapter"
    write(overlay / "kustomization.yaml", "namespace: buildkite\nresources: [binding.yaml]\n")
    write(overlay / "binding.yaml", AUTH_READER_BINDING.replace("  namespace: kube-system\n", ""))
    assert_rejected(
        stackgen("build", str(overlay), "--policy", "none"),
        "kustomization.yaml: RoleBinding/adapter-auth-reader: metadata.namespace: binds Role "
        "'extension-apiserver-authentication-reader', which exists only in kube-system, from "
        "namespace 'buildkite'",
    )


def test_binding_subject_moved_out_of_kube_system(
    stackgen: Callable[..., Run], tmp_path: Path
) -> None:
    overlay = tmp_path / "app"
    write(overlay / "kustomization.yaml", "namespace: buildkite\nresources: [binding.yaml]\n")
    write(
        overlay / "binding.yaml",
        """
        apiVersion: rbac.authorization.k8s.io/v1
        kind: ClusterRoleBinding
        metadata: {name: read-nodes}
        roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
        subjects:
          - {kind: ServiceAccount, name: default, namespace: kube-system}
        """,
    )
    assert_rejected(
        stackgen("build", str(overlay), "--policy", "none"),
        "binding.yaml: subjects[0].namespace: ClusterRoleBinding/read-nodes's subject is "
        "declared in kube-system but the build names namespace 'buildkite'",
    )


def test_rolebinding_moved_in_a_stack_overlays_extra_resources(
    stackgen: Callable[..., Run], minimal: Path
) -> None:
    write(minimal / "extra" / "binding.yaml", AUTH_READER_BINDING)
    set_stack(minimal, "secrets:\n", "kustomize:\n  resources: [extra/binding.yaml]\nsecrets:\n")
    assert_rejected(
        stackgen("build", str(minimal)),
        "extra/binding.yaml: metadata.namespace: RoleBinding/adapter-auth-reader is declared "
        "in kube-system but the build puts it in namespace",
    )


def test_kube_system_kept_apart_builds(stackgen: Callable[..., Run], tmp_path: Path) -> None:
    """The fix the messages suggest: kube-system objects in a kustomization of their own."""
    overlay = tmp_path / "adapter"
    write(overlay / "kustomization.yaml", "resources: [app, kube-system]\n")
    write(overlay / "app" / "kustomization.yaml", "namespace: buildkite\nresources: [sa.yaml]\n")
    write(overlay / "app" / "sa.yaml", SERVICE_ACCOUNT)
    write(overlay / "kube-system" / "kustomization.yaml", "resources: [binding.yaml]\n")
    write(overlay / "kube-system" / "binding.yaml", AUTH_READER_BINDING)
    run = stackgen("build", str(overlay), "--policy", "none")
    assert run.code == 0, run.stderr
    assert b"namespace: kube-system" in run.stdout


# ------------------------------------------------------------- kustomize's warnings


@pytest.mark.parametrize(
    ("kustomization", "field"),
    [
        (
            "commonLabels: {app: hello}\nresources: [deployment.yaml, service.yaml, configMap.yaml]\n",
            "commonLabels",
        ),
        ("bases: [base]\n", "bases"),
        (
            "resources: [deployment.yaml, service.yaml, configMap.yaml]\n"
            "patchesStrategicMerge: [replicas.yaml]\n",
            "patchesStrategicMerge",
        ),
    ],
)
def test_kustomize_deprecation_warnings_are_shown(
    stackgen: Callable[..., Run], tmp_path: Path, kustomization: str, field: str
) -> None:
    overlay = hello_world(tmp_path / "hello", kustomization)
    hello_world(overlay / "base", HELLO)  # what `bases:` names
    write(
        overlay / "replicas.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: the-deployment}\n"
        "spec: {replicas: 1}\n",
    )
    run = stackgen("build", str(overlay), "--policy", "none")
    assert run.code == 0, run.stderr
    assert b"kind: Deployment" in run.stdout
    warnings = [line for line in run.lines if line.startswith("stackgen: warning: kustomize: ")]
    assert len(warnings) == 1, run.lines
    assert f"'{field}' is deprecated" in warnings[0]


def test_kustomize_warning_from_a_stack_overlays_extra_kustomization(
    stackgen: Callable[..., Run], minimal: Path
) -> None:
    write(
        minimal / "extra" / "kustomization.yaml", "commonLabels: {team: ci}\nresources: [cm.yaml]\n"
    )
    write(
        minimal / "extra" / "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra}\ndata: {a: b}\n",
    )
    set_stack(minimal, "secrets:\n", "kustomize:\n  resources: [extra]\nsecrets:\n")
    run = stackgen("build", str(minimal))
    assert run.code == 0, run.stderr
    assert b"team: ci" in run.stdout
    assert run.lines == [
        "stackgen: warning: kustomize: 'commonLabels' is deprecated. Please use 'labels' "
        "instead. Run 'kustomize edit fix' to update your Kustomization automatically."
    ]


def test_no_warning_for_current_fields(stackgen: Callable[..., Run], tmp_path: Path) -> None:
    run = stackgen("build", str(hello_world(tmp_path / "hello", HELLO)), "--policy", "none")
    assert run.code == 0, run.stderr
    assert "warning" not in run.stderr


def test_validate_shows_kustomize_warnings(stackgen: Callable[..., Run], tmp_path: Path) -> None:
    overlay = hello_world(
        tmp_path / "hello",
        "commonLabels: {app: hello}\nresources: [deployment.yaml, service.yaml, configMap.yaml]\n",
    )
    run = stackgen("validate", str(overlay), "--policy", "none")
    assert run.code == 0, run.stderr
    assert f"stackgen: {overlay}: warning: kustomize: 'commonLabels' is deprecated" in run.stderr


# ----------------------------------------------------------------------------- --policy


def test_kustomize_example_refused_by_the_stack_policies(
    stackgen: Callable[..., Run], tmp_path: Path
) -> None:
    run = stackgen("build", str(hello_world(tmp_path / "hello", HELLO)))
    assert_rejected(
        run,
        "kustomization.yaml: policy: Deployment/the-deployment: "
        "spec.template.spec.containers[0].resources: container 'the-container' has no "
        "requests.cpu, requests.memory, limits.memory",
    )


@pytest.mark.parametrize("command", ["build", "validate"])
def test_policy_none_builds_a_kustomize_example(
    stackgen: Callable[..., Run], tmp_path: Path, command: str
) -> None:
    overlay = hello_world(tmp_path / "hello", HELLO)
    run = stackgen(command, str(overlay), "--policy", "none")
    assert run.code == 0, run.stderr
    if command == "build":
        assert b"name: the-deployment" in run.stdout
        assert b"app: hello" in run.stdout
    else:
        assert b"ok   " in run.stdout


def test_policy_none_still_refuses_schema_errors(
    stackgen: Callable[..., Run], tmp_path: Path
) -> None:
    overlay = hello_world(tmp_path / "hello", HELLO)
    write(overlay / "deployment.yaml", HELLO_DEPLOYMENT.replace("replicas: 3", "replicas: three"))
    run = stackgen("build", str(overlay), "--policy", "none")
    assert_rejected(run, "kustomization.yaml: Deployment/the-deployment: spec.replicas")
    assert not any("policy:" in line for line in run.lines), run.lines


def test_policy_none_skips_the_literal_secret_rule(
    stackgen: Callable[..., Run], tmp_path: Path
) -> None:
    overlay = tmp_path / "plain"
    write(overlay / "kustomization.yaml", "resources: [secret.yaml]\n")
    write(overlay / "secret.yaml", LITERAL_TOKEN_SECRET)
    assert stackgen("build", str(overlay), "--policy", "none").code == 0
    assert_rejected(stackgen("build", str(overlay)), "policy: stringData")


def test_policy_none_keeps_the_stack_checks(stackgen: Callable[..., Run], minimal: Path) -> None:
    (minimal / "secrets" / "token").write_text("")
    assert_rejected(
        stackgen("build", str(minimal), "--policy", "none"), "secrets.agentToken.file: is empty"
    )


def test_policy_choice_is_checked(stackgen: Callable[..., Run], minimal: Path) -> None:
    run = stackgen("build", str(minimal), "--policy", "lax")
    assert run.code == 2
    assert run.stdout == b""
    assert "'lax' is not one of 'stack', 'none'" in run.stderr


def test_render_takes_policy(stackgen: Callable[..., Run], minimal: Path, tmp_path: Path) -> None:
    run = stackgen("render", str(minimal), "--out", str(tmp_path / "out"), "--policy", "none")
    assert run.code == 0, run.stderr
    assert (tmp_path / "out" / "kustomization.yaml").is_file()


# ------------------------------------------------------------ after bin/setup --core only


def test_missing_monitoring_schemas_name_their_setup_step(
    stackgen: Callable[..., Run], tmp_path: Path
) -> None:
    """prometheus-operator's CRD schemas are not part of --core: the message says what to run."""
    import os
    import shutil

    from tests.support.paths import ROOT

    schemas = tmp_path / "schemas"
    shutil.copytree(ROOT / ".tools" / "schemas", schemas, copy_function=os.link)
    (schemas / "v1.33.0-standalone-strict" / "prometheusrule-monitoring-v1.json").unlink()
    overlay = tmp_path / "rules"
    write(overlay / "kustomization.yaml", "resources: [rule.yaml]\n")
    write(
        overlay / "rule.yaml",
        """
        apiVersion: monitoring.coreos.com/v1
        kind: PrometheusRule
        metadata: {name: alerts}
        spec:
          groups: [{name: stack, rules: [{alert: Down, expr: up == 0}]}]
        """,
    )
    env = {"STACKGEN_SCHEMA_DIR": str(schemas)}
    assert_rejected(
        stackgen("build", str(overlay), "--policy", "none", env=env),
        "kustomization.yaml: PrometheusRule/alerts: no offline schema for "
        "monitoring.coreos.com/v1 PrometheusRule in Kubernetes 1.33.0: run "
        "`bin/setup monitoring-schemas`, which converts them",
    )


def test_kustomize_warnings_are_scrubbed_of_secret_content(
    minimal: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should kustomize ever quote a secret file in a warning, the notice hides it."""
    from stackgen import tools
    from stackgen.pipeline import build

    monkeypatch.setattr(
        tools, "kustomize_warnings", lambda *_: [f"kustomize: odd line 'TOKEN={TOKEN}'"]
    )
    result = build(minimal)
    warnings = [n for n in result.notices if n.startswith("warning: kustomize: ")]
    assert warnings == ["warning: kustomize: odd line 'TOKEN=<redacted>'"], result.notices
