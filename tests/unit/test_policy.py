"""stackgen's own policy checks, on hand-made objects."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from stackgen.pipeline import build
from stackgen.validation.policies import PolicyContext, check_objects
from tests.support.paths import EXAMPLE

CTX = PolicyContext(file="stack.yaml", dind_allowed=False, insecure_tls_allowed=False)


def deployment(
    name: str = "app", labels: dict[str, str] | None = None, **container: Any
) -> dict[str, Any]:
    base_container = {
        "name": "main",
        "image": "x",
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "1Gi"}},
    }
    base_container.update(container)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "template": {
                "metadata": {"labels": labels or {}},
                "spec": {"containers": [base_container]},
            }
        },
    }


def messages(objects: list[dict[str, Any]], ctx: PolicyContext = CTX) -> list[str]:
    return [str(p) for p in check_objects(objects, ctx)]


def test_example_is_clean() -> None:
    result = build(EXAMPLE)
    ctx = PolicyContext(file="x", dind_allowed=False, insecure_tls_allowed=False)
    assert check_objects(result.objects, ctx) == []


def test_privileged_only_for_dind_sidecar() -> None:
    obj = deployment(securityContext={"privileged": True})
    assert any("privileged containers are only allowed" in m for m in messages([obj]))
    dind = deployment(name="agents")
    pod = dind["spec"]["template"]
    pod["metadata"]["annotations"] = {"stackgen.io/privileged": "dind"}
    pod["spec"]["initContainers"] = [
        {
            "name": "dind",
            "restartPolicy": "Always",
            "securityContext": {"privileged": True},
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "1Gi"}},
        }
    ]
    assert any("privileged" in m for m in messages([dind]))  # dind not enabled in the stack
    allowed = PolicyContext(file="stack.yaml", dind_allowed=True, insecure_tls_allowed=False)
    assert messages([dind], allowed) == []
    renamed = copy.deepcopy(dind)
    renamed["spec"]["template"]["spec"]["initContainers"][0]["name"] = "sneaky"
    assert any("privileged" in m for m in messages([renamed], allowed))


def test_host_path_and_host_namespaces() -> None:
    obj = deployment()
    obj["spec"]["template"]["spec"]["volumes"] = [{"name": "h", "hostPath": {"path": "/"}}]
    obj["spec"]["template"]["spec"]["hostNetwork"] = True
    found = messages([obj])
    assert any("hostPath volumes are not allowed" in m for m in found)
    assert any("hostNetwork: host namespaces are not allowed" in m for m in found)


def test_every_container_needs_resources() -> None:
    obj = deployment(resources={"requests": {"cpu": "1"}})
    (message,) = messages([obj])
    assert message == (
        "stack.yaml: policy: Deployment/app: spec.template.spec.containers[0].resources: "
        "container 'main' has no requests.memory, limits.memory"
    )


def test_literal_secret_env() -> None:
    obj = deployment(env=[{"name": "GITHUB_TOKEN", "value": "ghp_xxx"}])
    (message,) = messages([obj])
    assert "GITHUB_TOKEN holds a literal value" in message
    assert "ghp_xxx" not in message


def test_added_capabilities_beyond_baseline() -> None:
    obj = deployment(securityContext={"capabilities": {"add": ["SYS_ADMIN", "CHOWN"]}})
    (message,) = messages([obj])
    assert "adds SYS_ADMIN: beyond Pod Security baseline" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("allowPrivilegeEscalation", True), "allowPrivilegeEscalation: must be false"),
        (("readOnlyRootFilesystem", False), "must run with a read-only root filesystem"),
        (("capabilities", {"drop": []}), "capabilities.drop: must include ALL"),
        (("runAsNonRoot", False), "runAsNonRoot: must be true"),
    ],
)
def test_own_pods_must_meet_restricted(change: tuple[str, Any], expected: str) -> None:
    objects = build(EXAMPLE).objects
    (dispatcher,) = [
        o
        for o in objects
        if o["metadata"]["name"] == "stackgen-dispatcher" and o["kind"] == "Deployment"
    ]
    broken = copy.deepcopy(dispatcher)
    key, value = change
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"][key] = value
    found = messages([broken])
    assert any(expected in m for m in found), found


def test_agent_pods_are_not_held_to_restricted() -> None:
    objects = build(EXAMPLE).objects
    agents = [
        o
        for o in objects
        if o["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "buildkite-agent"
    ]
    assert agents and messages(agents) == []


def test_one_hpa_per_target() -> None:
    def hpa(name: str) -> dict[str, Any]:
        return {
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "agents"}},
        }

    (message,) = messages([hpa("a"), hpa("b")])
    assert "Deployment/agents: 2 HorizontalPodAutoscalers (a, b) target it" in message
    other_ns = hpa("c")
    other_ns["metadata"]["namespace"] = "elsewhere"
    assert len(messages([hpa("a"), other_ns])) == 0


def test_insecure_apiservice_needs_opt_in() -> None:
    api = {
        "kind": "APIService",
        "metadata": {"name": "v1beta1.external.metrics.k8s.io"},
        "spec": {"insecureSkipTLSVerify": True},
    }
    assert messages([api])
    opted = copy.deepcopy(api)
    opted["metadata"]["annotations"] = {"stackgen.io/insecure-skip-tls-verify": "opted-in"}
    assert messages([opted])  # the annotation alone is not enough in a stack without the flag
    allowed = PolicyContext(file="stack.yaml", dind_allowed=False, insecure_tls_allowed=True)
    assert messages([opted], allowed) == []


def test_apiservice_without_a_way_to_verify_the_adapter() -> None:
    api = {
        "kind": "APIService",
        "metadata": {"name": "v1beta1.external.metrics.k8s.io"},
        "spec": {"service": {"name": "adapter", "namespace": "x"}},
    }
    (message,) = messages([api])
    assert "the aggregator cannot verify the adapter" in message
    injected = copy.deepcopy(api)
    injected["metadata"]["annotations"] = {"cert-manager.io/inject-ca-from": "x/cert"}
    assert messages([injected]) == []


def test_agent_pods_mount_an_api_token_only_with_pod_steps() -> None:
    agents = {"app.kubernetes.io/name": "buildkite-agent"}
    pod = deployment(name="buildkite-agent", labels=agents)
    spec = pod["spec"]["template"]["spec"]
    spec["serviceAccountName"] = "buildkite-agent"
    # The default (no automountServiceAccountToken) mounts a token: refused.
    assert any("mount no Kubernetes API token" in m for m in messages([pod]))
    spec["automountServiceAccountToken"] = True
    assert any("unless their queue has podSteps" in m for m in messages([pod]))
    spec["automountServiceAccountToken"] = False
    assert messages([pod]) == []
    # A podSteps queue's own ServiceAccount may.
    spec.update(
        serviceAccountName="buildkite-agent-steps-k8s-job", automountServiceAccountToken=True
    )
    assert messages([pod]) == []
    # Other apps are not agents.
    assert messages([deployment()]) == []
