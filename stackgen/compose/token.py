"""The agent token: a Secret generated from a file or an env var, or an existing Secret.

With ``existingSecret`` every workload that reads the token is patched to read that
Secret instead of the generated one (nothing is generated, nothing literal).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stackgen.common.names import (
    AGENT_CONTAINER,
    AGENT_TOKEN_ENV,
    AGENT_TOKEN_SECRET,
    DISPATCHER,
    METRICS_ADAPTER,
)
from stackgen.compose.kustomization import Kustomization, generated
from stackgen.compose.tree import Tree, secret_value

#: Every workload that reads the agent token: (kind, label selector, container).
TOKEN_CONSUMERS = (
    ("Deployment", "app.kubernetes.io/component=agent", AGENT_CONTAINER),
    ("CronJob", "app.kubernetes.io/component=agent", AGENT_CONTAINER),
    ("Deployment", f"app.kubernetes.io/name={DISPATCHER}", "dispatcher"),
    ("Deployment", f"app.kubernetes.io/name={METRICS_ADAPTER}", "metrics-adapter"),
)


def add_agent_token(tree: Tree, kz: Kustomization, environ: Mapping[str, str]) -> None:
    """The token's Secret, or patches pointing every consumer at the existing one."""
    token = tree.stack.secrets.agent_token
    if token.existing_secret is None:
        path = tree.write_secret("agent-token", secret_value(tree.stack, token, environ))
        kz.secret_generator.append(
            generated(AGENT_TOKEN_SECRET, "buildkite-agent", "agent-token", files=[f"token={path}"])
        )
        return
    existing = token.existing_secret
    for kind, selector, container in TOKEN_CONSUMERS:
        name = f"patches/agent-token-{container}-{kind.lower()}.yaml"
        patch = secret_env_patch(
            kind, "any", container, AGENT_TOKEN_ENV, existing.name, existing.key
        )
        tree.write_yaml(f"stack/{name}", patch)
        kz.patch(name, {"kind": kind, "labelSelector": selector})


def secret_env_patch(
    kind: str, name: str, container: str, env: str, secret: str, key: str
) -> dict[str, Any]:
    """Strategic-merge patch: ``env`` of one container comes from ``secret``'s ``key``."""
    variable = {"name": env, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
    pod: dict[str, Any] = {"spec": {"containers": [{"name": container, "env": [variable]}]}}
    if kind == "CronJob":
        return {
            "apiVersion": "batch/v1",
            "kind": kind,
            "metadata": {"name": name},
            "spec": {"jobTemplate": {"spec": {"template": pod}}},
        }
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {"template": pod},
    }


def secret_volume_patch(
    kind: str, volume: str, secret: str, items: dict[str, str]
) -> dict[str, Any]:
    """Strategic-merge patch: the pod volume ``volume`` reads ``secret`` (``items``: key → path)."""
    source = {
        "secretName": secret,
        "items": [{"key": key, "path": path} for key, path in items.items()],
    }
    pod: dict[str, Any] = {"spec": {"volumes": [{"name": volume, "secret": source}]}}
    if kind == "CronJob":
        return {
            "apiVersion": "batch/v1",
            "kind": kind,
            "metadata": {"name": "any"},
            "spec": {"jobTemplate": {"spec": {"template": pod}}},
        }
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": "any"},
        "spec": {"template": pod},
    }


def point_agents_at(
    tree: Tree, kz: Kustomization, volume: str, secret: str, items: dict[str, str]
) -> None:
    """Every agent pod's ``volume`` reads the existing ``secret`` instead of a generated one."""
    for kind in ("Deployment", "CronJob"):
        name = f"patches/{volume}-existing-secret-{kind.lower()}.yaml"
        tree.write_yaml(f"stack/{name}", secret_volume_patch(kind, volume, secret, items))
        kz.patch(name, {"kind": kind, "labelSelector": "app.kubernetes.io/component=agent"})
