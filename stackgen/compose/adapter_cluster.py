"""The adapter's part in a cluster of several stacks: per-stack RBAC and its CA ConfigMap.

Every cluster-scoped object of a stack (and its kube-system RoleBinding) carries the
stack's namespace in its name (:func:`stackgen.common.names.adapter_cluster_names`), so
two stacks never overwrite, and pruning one never removes, the other's.  The one object
they share is the APIService (labelled ``stackgen.io/shared``).  Whichever stack's adapter
it points at forwards requests for other namespaces to their own stack's adapter, which
needs, cluster-wide and read-only: the APIService (whose adapter is in front), the
EndpointSlices of the other adapters' Services (where to send), their CA ConfigMaps (how
to verify them), and TokenReviews (who is calling).
"""

from __future__ import annotations

from typing import Any

from stackgen.common.names import (
    ADAPTER_APISERVICE,
    ADAPTER_CA_CONFIGMAP,
    METRICS_ADAPTER,
    adapter_cluster_names,
)
from stackgen.compose.kustomization import Kustomization, generated
from stackgen.compose.tree import Tree

_LABELS = {
    "app.kubernetes.io/name": METRICS_ADAPTER,
    "app.kubernetes.io/component": "metrics-adapter",
}
_RBAC = "rbac.authorization.k8s.io"


def add_cluster_objects(tree: Tree, kz: Kustomization) -> None:
    """The stack's ClusterRoles and ClusterRoleBindings, and its CA ConfigMap."""
    stack = tree.stack
    for name, obj in _rbac(stack.namespace).items():
        tree.write_yaml(f"stack/metrics-adapter-{name}.yaml", obj)
        kz.resources.append(f"metrics-adapter-{name}.yaml")
    kz.config_map_generator.append(_ca_configmap(tree))


def _ca_configmap(tree: Tree) -> dict[str, Any]:
    """How another stack's adapter verifies this one: its CA, or its insecure opt-in.

    Not hashed: other adapters look it up by name.  With cert-manager there is no CA file
    to put in it (see docs/metrics-adapter.md).
    """
    tls = tree.stack.metrics_adapter.tls
    entry = generated(ADAPTER_CA_CONFIGMAP, METRICS_ADAPTER, "metrics-adapter-ca")
    entry["options"]["disableNameSuffixHash"] = True
    if tls.insecure_skip_tls_verify:
        entry["literals"] = ["insecureSkipTLSVerify=true"]
    elif tls.ca_file is not None:
        entry["files"] = [f"ca.crt={tree.overlay_rel(tls.ca_file)}"]
    else:  # cert-manager: an empty ConfigMap says "no CA known here"
        entry["literals"] = ["certManager=true"]
    return entry


def _binding(name: str, role: str, subject: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": f"{_RBAC}/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": dict(_LABELS)},
        "roleRef": {"apiGroup": _RBAC, "kind": "ClusterRole", "name": role},
        "subjects": [subject],
    }


def _rbac(namespace: str) -> dict[str, dict[str, Any]]:
    names = adapter_cluster_names(namespace)
    adapter = {"kind": "ServiceAccount", "name": METRICS_ADAPTER, "namespace": namespace}
    hpa = {
        "kind": "ServiceAccount",
        "name": "horizontal-pod-autoscaler",
        "namespace": "kube-system",
    }
    return {
        # The HPA controller reads external metrics.
        "clusterrole-reader": {
            "apiVersion": f"{_RBAC}/v1",
            "kind": "ClusterRole",
            "metadata": {"name": names["reader"], "labels": dict(_LABELS)},
            "rules": [
                {
                    "apiGroups": ["external.metrics.k8s.io"],
                    "resources": ["*"],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        "clusterrolebinding-reader": _binding(names["reader"], names["reader"], hpa),
        # TokenReview of the tokens other stacks' adapters forward with.
        "clusterrolebinding-auth-delegator": _binding(
            names["auth-delegator"], "system:auth-delegator", adapter
        ),
        # Routing requests to the adapter of their namespace (read-only, by name where it can).
        "clusterrole": {
            "apiVersion": f"{_RBAC}/v1",
            "kind": "ClusterRole",
            "metadata": {"name": names["adapter"], "labels": dict(_LABELS)},
            "rules": [
                {
                    "apiGroups": ["apiregistration.k8s.io"],
                    "resources": ["apiservices"],
                    "resourceNames": [ADAPTER_APISERVICE],
                    "verbs": ["get"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list"],
                },
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [ADAPTER_CA_CONFIGMAP],
                    "verbs": ["get"],
                },
            ],
        },
        "clusterrolebinding": _binding(names["adapter"], names["adapter"], adapter),
    }
