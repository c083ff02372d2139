"""The one APIService every stack shares: who owns it, and handing it over.

``v1beta1.external.metrics.k8s.io`` exists once per cluster.  The rule (docs/metrics-
adapter.md, "Several stacks in one cluster"):

* stackgen's APIService is **shared** (label ``stackgen.io/shared: "true"``): it points at
  the adapter of the stack applied last, which forwards other namespaces' requests to
  their own stack's adapter.  Pruning a stack never deletes an object with that label.
* Before a stack is applied, :func:`apiservice_problems` refuses when the APIService
  belongs to another adapter (KEDA, prometheus-adapter): applying would take it over and
  break that adapter's users.  ``--server-dry-run`` runs it; ``stackgen apply`` calls it.
* Before a stack's objects are deleted, :func:`hand_over_apiservice` points the APIService
  at another stack's adapter when the leaving stack serves it, or deletes it when no
  stackgen adapter is left, so no other stack's HPAs lose their metrics.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from stackgen import tools
from stackgen.common.apiservice import apiservice_owner
from stackgen.common.errors import Problem, ToolError
from stackgen.common.names import (
    ADAPTER_APISERVICE,
    ADAPTER_CA_CONFIGMAP,
    METRICS_ADAPTER,
    SHARED_LABEL,
)
from stackgen.validation.policies import object_id

__all__ = ["apiservice_problems", "cluster_apiservice", "hand_over_apiservice"]

_INSTANCE = "app.kubernetes.io/instance"


def _kubectl_json(kubectl: tools.Tool, *args: str) -> Any | None:
    """``kubectl ARGS -o json`` parsed, or None when the object does not exist."""
    proc = tools.run(kubectl, [*args, "-o", "json"], timeout=60)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()
        if "NotFound" in err or "not found" in err:
            return None
        raise ToolError(f"kubectl {' '.join(args)}: {(err.splitlines() or ['failed'])[-1]}")
    return json.loads(proc.stdout)


def cluster_apiservice(kubectl: tools.Tool) -> dict[str, Any] | None:
    """The cluster's ``v1beta1.external.metrics.k8s.io`` APIService, if there is one."""
    found = _kubectl_json(kubectl, "get", "apiservice", ADAPTER_APISERVICE)
    return found if isinstance(found, dict) else None


def apiservice_problems(
    objects: list[dict[str, Any]], file: str, kubectl: tools.Tool
) -> list[Problem]:
    """A foreign owner of the APIService the stack would apply, as one problem."""
    ours = [
        o
        for o in objects
        if o.get("kind") == "APIService"
        and (o.get("metadata") or {}).get("name") == ADAPTER_APISERVICE
    ]
    if not ours:
        return []
    existing = cluster_apiservice(kubectl)
    if existing is None:
        return []
    owner = apiservice_owner(existing)
    if owner.stackgen:
        return []
    return [Problem(file, object_id(ours[0]), owner.conflict())]


def hand_over_apiservice(kubectl: tools.Tool, leaving_namespace: str) -> str:
    """Before the stack in ``leaving_namespace`` goes: keep the APIService served.

    Returns what was done, in words: ``absent``, ``foreign`` (left alone), ``kept`` (another
    stack serves it), ``deleted`` (no stackgen adapter is left), or ``handed over to NS``.
    """
    existing = cluster_apiservice(kubectl)
    if existing is None:
        return "absent"
    owner = apiservice_owner(existing)
    if not owner.stackgen:
        return "foreign"
    if owner.namespace != leaving_namespace:
        return "kept"
    services = _kubectl_json(
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
    )
    if not others:
        proc = tools.run(kubectl, ["delete", "apiservice", ADAPTER_APISERVICE], timeout=60)
        if proc.returncode != 0:
            raise ToolError(f"cannot delete APIService {ADAPTER_APISERVICE}")
        return "deleted"
    namespace, labels = others[0]
    patch = _handover_patch(kubectl, namespace, labels.get(_INSTANCE))
    proc = tools.run(
        kubectl,
        ["patch", "apiservice", ADAPTER_APISERVICE, "--type=merge", "-p", json.dumps(patch)],
        timeout=60,
    )
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ToolError(f"cannot hand APIService {ADAPTER_APISERVICE} over: {err[-1:]}")
    return f"handed over to {namespace}"


def _handover_patch(kubectl: tools.Tool, namespace: str, instance: str | None) -> dict[str, Any]:
    """A merge patch pointing the APIService at ``namespace``'s adapter, with its trust."""
    configmap = _kubectl_json(kubectl, "get", "configmap", ADAPTER_CA_CONFIGMAP, "-n", namespace)
    data = (configmap or {}).get("data") or {}
    spec: dict[str, Any] = {"service": {"namespace": namespace, "name": METRICS_ADAPTER}}
    annotations: dict[str, Any] = {"cert-manager.io/inject-ca-from": None}
    if "ca.crt" in data:
        spec["caBundle"] = base64.b64encode(data["ca.crt"].encode()).decode("ascii")
        spec["insecureSkipTLSVerify"] = None
    elif data.get("insecureSkipTLSVerify") == "true":
        spec["caBundle"] = None
        spec["insecureSkipTLSVerify"] = True
    else:  # cert-manager fills caBundle from the new stack's Certificate
        annotations["cert-manager.io/inject-ca-from"] = f"{namespace}/{METRICS_ADAPTER}"
    labels: dict[str, Any] = {SHARED_LABEL: "true"}
    if instance:
        labels[_INSTANCE] = instance
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": spec}
