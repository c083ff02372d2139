"""The one APIService every stack shares: who owns it, and handing it over.

``v1beta1.external.metrics.k8s.io`` exists once per cluster.  The rule (docs/metrics-
adapter.md, "Several stacks in one cluster"):

* stackgen's APIService is **shared** (label ``stackgen.io/shared: "true"``): it points at
  the adapter of the stack applied last, which forwards other namespaces' requests to
  their own stack's adapter.  Pruning a stack never deletes an object with that label.
* Before a stack is applied, :func:`apiservice_problems` refuses when the APIService
  belongs to another adapter (KEDA, prometheus-adapter): applying would take it over and
  break that adapter's users.  ``--server-dry-run`` runs it; ``stackgen apply`` calls it.
* Before a stack's objects are deleted (``stackgen delete``, or a prune of its last ``hpa``
  queue), :func:`stackgen.deploy.apiservice.hand_over_apiservice` points the APIService at
  another stack's adapter when the leaving stack serves it, or deletes it when no stackgen
  adapter is left, so no other stack's HPAs lose their metrics.
"""

from __future__ import annotations

from typing import Any

from stackgen import tools
from stackgen.common.apiservice import apiservice_owner
from stackgen.common.errors import Problem
from stackgen.common.names import (
    ADAPTER_APISERVICE,
)
from stackgen.validation.policies import object_id

__all__ = ["apiservice_problems", "cluster_apiservice"]

_INSTANCE = "app.kubernetes.io/instance"


def cluster_apiservice(kubectl: tools.Tool) -> dict[str, Any] | None:
    """The cluster's ``v1beta1.external.metrics.k8s.io`` APIService, if there is one."""
    found = tools.kubectl_json(kubectl, "get", "apiservice", ADAPTER_APISERVICE)
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
