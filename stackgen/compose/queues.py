"""One kustomization per queue: its agents (a Deployment + HPA, or a suspended CronJob).

Each queue builds the agent base (``agent-pool`` for hpa, ``agent-job`` for dispatch and
exact) with its own name suffix, a selector label, its image, the dind component when
asked, and a patch of its settings (env, tags, resources, scheduling; the HPA's metrics).
"""

from __future__ import annotations

from typing import Any

from stackgen.common.names import (
    AGENT_CONTAINER,
    AGENT_IMAGE,
    AGENT_STEPS_SERVICE_ACCOUNT,
    AGENT_WORKLOAD,
    GIT_MIRRORS_PATH,
)
from stackgen.compose.kustomization import Kustomization, selector_labels
from stackgen.compose.tree import Tree, image_entry
from stackgen.stack.model import Queue, ScalingPolicy, Stack

_BASES = "../../../bases"


def add_queues(tree: Tree, kz: Kustomization) -> None:
    """Every queue's kustomization (``stack/queues/<slug>/``), listed in the stack's."""
    for index, queue in enumerate(tree.stack.queues):
        folder = f"stack/queues/{queue.slug}"
        resources = [f"{_BASES}/{'agent-pool' if queue.mode == 'hpa' else 'agent-job'}"]
        if queue.pod_steps:
            resources.append(f"{_BASES}/agent-steps")
            tree.notice(
                f"queue {queue.name!r}: podSteps is on: its agents mount a ServiceAccount token "
                f"that may create, watch and delete Jobs and Pods in namespace "
                f"{tree.stack.namespace!r}"
            )
        qkz = Kustomization(
            resources=resources,
            name_suffix=f"-{queue.slug}",
            labels=[selector_labels("stackgen.io/queue", queue.slug)],
            components=["../../../components/dind"] if queue.dind else [],
            images=[image_entry(AGENT_IMAGE, queue.image)],
        )
        qkz.patch("agent-patch.yaml")
        tree.write_yaml(f"{folder}/agent-patch.yaml", agent_patch(tree.stack, queue))
        if queue.mode == "hpa":
            qkz.patch("autoscaler-patch.yaml")
            tree.write_yaml(f"{folder}/autoscaler-patch.yaml", autoscaler_patch(queue))
        tree.write_yaml(
            f"{folder}/kustomization.yaml",
            qkz.to_dict(),
            comment=f"Agents of stack.yaml's queues[{index}] ({queue.mode} mode).",
        )
        kz.resources.append(f"queues/{queue.slug}")


def _annotations(queue: Queue) -> dict[str, str]:
    annotations = {"stackgen.io/queue": queue.name, "stackgen.io/mode": queue.mode}
    if queue.git_mirror:
        annotations["stackgen.io/git-mirror"] = queue.git_mirror
    return annotations


def _container(stack: Stack, queue: Queue) -> dict[str, Any]:
    env: list[dict[str, Any]] = [{"name": "BUILDKITE_AGENT_TAGS", "value": queue.agent_tags}]
    if queue.git_mirror:
        env += [
            {"name": "BUILDKITE_GIT_MIRRORS_PATH", "value": GIT_MIRRORS_PATH},
            {"name": "BUILDKITE_GIT_MIRRORS_SKIP_UPDATE", "value": "true"},
        ]
    env += [{"name": k, "value": v} for k, v in sorted(queue.env.items())]
    container: dict[str, Any] = {
        "name": AGENT_CONTAINER,
        "imagePullPolicy": stack.agent.image_pull_policy,
        "env": env,
    }
    if queue.mode == "dispatch":
        container["args"] = [
            "start",
            "--disconnect-after-job",
            "--disconnect-after-idle-timeout",
            str(stack.agent.disconnect_after_idle_seconds),
        ]
    resources = queue.resources.to_k8s()
    if resources:
        container["resources"] = resources
    return container


def _pod_spec(stack: Stack, queue: Queue) -> dict[str, Any]:
    agent = stack.agent
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": agent.termination_grace_period_seconds,
        "containers": [_container(stack, queue)],
    }
    if queue.node_selector:
        spec["nodeSelector"] = dict(sorted(queue.node_selector.items()))
    if queue.tolerations:
        spec["tolerations"] = queue.tolerations
    if agent.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in agent.image_pull_secrets]
    if queue.dind:
        spec["initContainers"] = [{"name": "dind", "resources": stack.dind.resources.to_k8s()}]
    if queue.pod_steps:
        # The base's ServiceAccount of this queue (kustomize adds the queue's suffix).
        spec["serviceAccountName"] = AGENT_STEPS_SERVICE_ACCOUNT
        spec["automountServiceAccountToken"] = True
    return spec


def agent_patch(stack: Stack, queue: Queue) -> dict[str, Any]:
    """The queue's settings on its Deployment (hpa) or CronJob (dispatch, exact)."""
    pod = {"metadata": {"annotations": _annotations(queue)}, "spec": _pod_spec(stack, queue)}
    metadata = {"name": AGENT_WORKLOAD, "annotations": _annotations(queue)}
    if queue.mode == "hpa":
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata,
            "spec": {"template": pod},
        }
    job = {
        "activeDeadlineSeconds": queue.dispatch.active_deadline_seconds,
        "ttlSecondsAfterFinished": queue.dispatch.ttl_seconds_after_finished,
        "template": pod,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": metadata,
        "spec": {"jobTemplate": {"spec": job}},
    }


def _policies(policy: ScalingPolicy) -> list[dict[str, Any]]:
    out = []
    if policy.pods is not None:
        out.append({"type": "Pods", "value": policy.pods, "periodSeconds": policy.period_seconds})
    if policy.percent is not None:
        out.append(
            {"type": "Percent", "value": policy.percent, "periodSeconds": policy.period_seconds}
        )
    return out


def _external(metric: str, selector: dict[str, Any], target: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "External",
        "external": {"metric": {"name": metric, "selector": selector}, "target": target},
    }


def autoscaler_patch(queue: Queue) -> dict[str, Any]:
    """The HPA of an hpa queue: its bounds, metrics (this queue's) and behavior."""
    hpa = queue.hpa
    selector = {"matchLabels": {"queue": queue.name}}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": AGENT_WORKLOAD, "annotations": {"stackgen.io/queue": queue.name}},
        "spec": {
            "minReplicas": queue.min_agents,
            "maxReplicas": queue.max_agents,
            "metrics": [
                _external(
                    "buildkite_jobs_runnable",
                    selector,
                    {"type": "AverageValue", "averageValue": str(hpa.jobs_per_agent)},
                ),
                _external(
                    "buildkite_agents_busy_percentage",
                    selector,
                    {"type": "Value", "value": str(hpa.target_busy_percent)},
                ),
            ],
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": hpa.scale_up.stabilization_window_seconds,
                    "selectPolicy": "Max",
                    "policies": _policies(hpa.scale_up),
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": hpa.scale_down.stabilization_window_seconds,
                    "selectPolicy": "Max",
                    "policies": _policies(hpa.scale_down),
                },
            },
        },
    }
