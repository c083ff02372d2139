"""The agent pod template is one template, kept in two kinds of workload.

An ``hpa`` queue's agents run in a Deployment (``bases/agent-pool``), a dispatched queue's
in Jobs made from a suspended CronJob (``bases/agent-job``); each opt-in component patches
both.  kustomize has no way to share one pod template between two kinds, and the bases
stay plain kustomize a reader (and ``stackgen render``'s output) can follow, so the copies
stay, and this test fails the moment they drift apart: the two pod templates may differ
only where a Job's pod must (below), and each component's two patches not at all.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.paths import ROOT

COMPONENTS = sorted(p.name for p in (ROOT / "components").iterdir() if p.is_dir())


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def pod_template(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod template of a Deployment or a CronJob (a copy)."""
    spec = obj["spec"]
    template = (
        spec["template"] if obj["kind"] == "Deployment" else spec["jobTemplate"]["spec"]["template"]
    )
    return copy.deepcopy(template)


def test_deployment_and_cronjob_agents_share_one_pod_template() -> None:
    pool = pod_template(load(ROOT / "bases/agent-pool/agent-deployment.yaml"))
    job = pod_template(load(ROOT / "bases/agent-job/agent-cronjob.yaml"))
    # Where a Job's pod must differ: it never restarts, and its agent leaves after one job.
    assert job["spec"].pop("restartPolicy") == "Never"
    (pool_agent,) = pool["spec"]["containers"]
    (job_agent,) = job["spec"]["containers"]
    assert pool_agent.pop("args") == ["start"]
    assert job_agent.pop("args") == ["start", "--disconnect-after-job"]
    assert job == pool


@pytest.mark.parametrize("component", COMPONENTS)
def test_each_component_patches_both_workloads_alike(component: str) -> None:
    folder = ROOT / "components" / component
    kustomization = load(folder / "kustomization.yaml")
    by_kind = {p["target"]["kind"]: load(folder / p["path"]) for p in kustomization["patches"]}
    assert set(by_kind) == {"Deployment", "CronJob"}
    for patch in by_kind.values():
        assert patch["metadata"]["name"] == "any"
    assert pod_template(by_kind["CronJob"]) == pod_template(by_kind["Deployment"])
