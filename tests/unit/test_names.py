"""The names in bases/ and components/ (YAML kustomize reads) are the ones the code uses.

stackgen.common.names writes each name once for the code; the bases carry their own copy,
so this test is what keeps the two the same.
"""

from __future__ import annotations

from typing import Any

import yaml

from stackgen.common import names
from stackgen.common.defaults import stack_default
from tests.support.paths import ROOT


def load(rel: str) -> Any:
    return yaml.safe_load((ROOT / rel).read_text(encoding="utf-8"))


def container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    spec = obj["spec"]
    pod = spec["template"] if "template" in spec else spec["jobTemplate"]["spec"]["template"]
    containers = pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
    (found,) = [c for c in containers if c["name"] == name]
    return found


def env_secret(c: dict[str, Any], variable: str) -> str:
    (entry,) = [e for e in c["env"] if e["name"] == variable]
    return str(entry["valueFrom"]["secretKeyRef"]["name"])


def test_dispatcher_base() -> None:
    deployment = load("bases/dispatcher/dispatcher-deployment.yaml")
    assert deployment["metadata"]["name"] == names.DISPATCHER
    dispatcher = container(deployment, "dispatcher")
    assert dispatcher["image"] == names.STACKGEN_IMAGE
    assert env_secret(dispatcher, names.AGENT_TOKEN_ENV) == names.AGENT_TOKEN_SECRET
    assert dispatcher["ports"][0]["containerPort"] == names.DISPATCHER_PORT
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == names.DISPATCHER_CONFIG
    assert load("bases/dispatcher/dispatcher-service.yaml")["spec"]["ports"][0]["port"] == (
        names.DISPATCHER_PORT
    )
    assert load("bases/dispatcher/dispatcher-lease.yaml")["metadata"]["name"] == names.DISPATCHER


def test_metrics_adapter_base() -> None:
    deployment = load("bases/metrics-adapter/metrics-adapter-deployment.yaml")
    assert deployment["metadata"]["name"] == names.METRICS_ADAPTER
    adapter = container(deployment, "metrics-adapter")
    assert adapter["image"] == names.STACKGEN_IMAGE
    assert env_secret(adapter, names.AGENT_TOKEN_ENV) == names.AGENT_TOKEN_SECRET
    assert adapter["envFrom"][0]["configMapRef"]["name"] == names.METRICS_ADAPTER
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["serving-cert"]["secret"]["secretName"] == names.METRICS_ADAPTER_TLS
    service = load("bases/metrics-adapter/metrics-adapter-service.yaml")
    assert service["metadata"]["name"] == names.METRICS_ADAPTER
    api = load("bases/metrics-adapter/metrics-adapter-apiservice.yaml")
    assert api["metadata"]["name"] == names.ADAPTER_APISERVICE
    assert api["spec"]["service"]["name"] == names.METRICS_ADAPTER
    assert api["metadata"]["labels"][names.SHARED_LABEL] == "true"
    token = next(v for v in volumes.values() if v["name"] == "peer-token")
    (source,) = token["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == names.ADAPTER_PEER_AUDIENCE


def test_agent_bases() -> None:
    for rel in ("bases/agent-pool/agent-deployment.yaml", "bases/agent-job/agent-cronjob.yaml"):
        workload = load(rel)
        assert workload["metadata"]["name"] == names.AGENT_WORKLOAD
        agent = container(workload, names.AGENT_CONTAINER)
        assert agent["image"] == names.AGENT_IMAGE
        assert env_secret(agent, names.AGENT_TOKEN_ENV) == names.AGENT_TOKEN_SECRET
        mounts = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}
        assert mounts["hooks"] == names.HOOKS_PATH
        assert mounts["stackgen-hooks"] == names.STACKGEN_HOOKS_PATH
        assert mounts["builds"] == stack_default("agent.buildPath")


def test_git_mirror_bases_and_dind_component() -> None:
    cronjob = load("bases/git-mirror-refresh/git-mirror-cronjob.yaml")
    assert cronjob["metadata"]["labels"]["app.kubernetes.io/name"] == names.GIT_MIRROR
    args = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[5] == "MIRROR"  # the slot stackgen.compose.mirrors replaces
    dind = container(load("components/dind/dind-deployment-patch.yaml"), "dind")
    image = stack_default("dind.image")
    assert image.split(":")[0] == names.DIND_IMAGE
    assert dind["image"] == image
