"""The shared external-metrics APIService when a stack leaves: hand it over, never strand it.

``v1beta1.external.metrics.k8s.io`` exists once per cluster and every stack with an
``hpa`` queue shares it (label ``stackgen.io/shared: "true"``; docs/metrics-adapter.md,
"Several stacks in one cluster"): it points at the adapter of the stack applied last,
which forwards other namespaces' requests to their own stack's adapter.  So no stack
ever deletes it as its own: when the stack serving it goes (``stackgen delete``, or
``stackgen apply`` of a build without ``hpa`` queues), :func:`hand_over_apiservice`
points it at another stack's adapter, or deletes it when no stackgen adapter is left.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from stackgen import tools
from stackgen.common.apiservice import apiservice_owner
from stackgen.common.errors import ToolError
from stackgen.common.identity import STACK_LABEL
from stackgen.common.names import (
    ADAPTER_APISERVICE,
    ADAPTER_CA_CONFIGMAP,
    METRICS_ADAPTER,
    SHARED_LABEL,
)

__all__ = ["hand_over_apiservice"]

_INSTANCE = "app.kubernetes.io/instance"
_INJECT_CA = "cert-manager.io/inject-ca-from"


def hand_over_apiservice(kubectl: tools.Tool, leaving_namespace: str) -> str:
    """Before the stack in ``leaving_namespace`` goes: keep the APIService served.

    Returns what was done, in words: ``absent``, ``foreign`` (left alone), ``kept`` (another
    stack serves it), ``deleted`` (no stackgen adapter is left), or ``handed over to NS``.
    """
    existing = tools.kubectl_json(kubectl, "get", "apiservice", ADAPTER_APISERVICE)
    if not isinstance(existing, dict):
        return "absent"
    owner = apiservice_owner(existing)
    if not owner.stackgen:
        return "foreign"
    if owner.namespace != leaving_namespace:
        return "kept"
    services = tools.kubectl_json(
        kubectl,
        "get",
        "services",
        "--all-namespaces",
        "-l",
        f"app.kubernetes.io/name={METRICS_ADAPTER},app.kubernetes.io/managed-by=stackgen",
    )
    others = sorted(
        (s["metadata"]["namespace"], s["metadata"].get("labels") or {})
        for s in (services or {}).get("items", [])
        if s["metadata"]["name"] == METRICS_ADAPTER
        and s["metadata"]["namespace"] != leaving_namespace
        and not s["metadata"].get("deletionTimestamp")
    )
    if not others:
        proc = tools.run(kubectl, ["delete", "apiservice", ADAPTER_APISERVICE], timeout=60)
        if proc.returncode != 0:
            raise ToolError(f"cannot delete APIService {ADAPTER_APISERVICE}")
        return "deleted"
    namespace, labels = others[0]
    body = _handed_over(existing, kubectl, namespace, labels)
    # Server-side apply by stackgen's field manager (forcing the fields over from the
    # stack that served it), so the next `stackgen apply` of any stack owns them cleanly.
    proc = tools.run(
        kubectl,
        ["apply", "--server-side", "--field-manager=stackgen", "--force-conflicts", "-f", "-"],
        stdin=json.dumps(body).encode(),
        timeout=60,
    )
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ToolError(f"cannot hand APIService {ADAPTER_APISERVICE} over: {err[-1:]}")
    return f"handed over to {namespace}"


def _handed_over(
    live: dict[str, Any], kubectl: tools.Tool, namespace: str, service_labels: dict[str, Any]
) -> dict[str, Any]:
    """The APIService pointing at ``namespace``'s adapter, with that stack's trust and labels.

    It takes that stack's ``app.kubernetes.io/instance`` and ``stackgen.io/stack`` labels
    (from its adapter Service): from now on it is that stack's to hand over next.
    """
    configmap = tools.kubectl_json(
        kubectl, "get", "configmap", ADAPTER_CA_CONFIGMAP, "-n", namespace
    )
    data = (configmap or {}).get("data") or {}
    old_meta = live.get("metadata") or {}
    labels = {str(k): str(v) for k, v in (old_meta.get("labels") or {}).items()}
    labels[SHARED_LABEL] = "true"
    for key in (_INSTANCE, STACK_LABEL):
        if service_labels.get(key):
            labels[key] = str(service_labels[key])
    annotations = {
        str(k): str(v)
        for k, v in (old_meta.get("annotations") or {}).items()
        if k not in (_INJECT_CA, "kubectl.kubernetes.io/last-applied-configuration")
    }
    old_spec = live.get("spec") or {}
    spec: dict[str, Any] = {
        key: old_spec[key]
        for key in ("group", "version", "groupPriorityMinimum", "versionPriority")
        if key in old_spec
    }
    spec["service"] = {"namespace": namespace, "name": METRICS_ADAPTER}
    if "port" in (old_spec.get("service") or {}):
        spec["service"]["port"] = old_spec["service"]["port"]
    if "ca.crt" in data:
        spec["caBundle"] = base64.b64encode(data["ca.crt"].encode()).decode("ascii")
    elif data.get("insecureSkipTLSVerify") == "true":
        spec["insecureSkipTLSVerify"] = True
    else:  # cert-manager fills caBundle from the new stack's Certificate
        annotations[_INJECT_CA] = f"{namespace}/{METRICS_ADAPTER}"
    metadata: dict[str, Any] = {"name": ADAPTER_APISERVICE, "labels": labels}
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": metadata,
        "spec": spec,
    }
