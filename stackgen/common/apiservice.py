"""Who owns the cluster-wide ``v1beta1.external.metrics.k8s.io`` APIService.

Kubernetes allows one APIService per group and version, so every stack with an ``hpa``
queue shares it with every other (stackgen's adapters route each request to the adapter
of the request's namespace: docs/metrics-adapter.md), and KEDA or prometheus-adapter would
want the same object.  This pure function tells a stackgen APIService from a foreign one;
the build's server dry-run (:mod:`stackgen.validation.apiservice`) and the adapter at
start-up both use it, so they refuse with the same words.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stackgen.common.names import ADAPTER_APISERVICE, METRICS_ADAPTER, SHARED_LABEL

__all__ = ["ApiServiceOwner", "apiservice_owner"]

_MANAGED_BY = "app.kubernetes.io/managed-by"


@dataclass(frozen=True)
class ApiServiceOwner:
    """Whose adapter the APIService sends requests to."""

    stackgen: bool
    #: ``namespace/name`` of the Service it points at ("" when it has none: a local API).
    service: str
    labels: Mapping[str, str]

    @property
    def namespace(self) -> str:
        """The namespace of that Service (for stackgen: the stack serving the APIService)."""
        return self.service.partition("/")[0]

    def describe(self) -> str:
        """The owner in words: its Service and labels (never anything secret)."""
        labels = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items())) or "none"
        return f"service {self.service or '(none: served by kube-apiserver)'}, labels {labels}"

    def conflict(self) -> str:
        """The one-line refusal for a foreign owner."""
        return (
            f"the APIService {ADAPTER_APISERVICE} belongs to another metrics adapter "
            f"({self.describe()}): only one adapter per cluster can serve external metrics; "
            "remove that adapter (KEDA, prometheus-adapter, …) or serve these queues in "
            "dispatch mode"
        )


def apiservice_owner(apiservice: Mapping[str, Any]) -> ApiServiceOwner:
    """Read an APIService object (as the API returns it) and say whose it is.

    stackgen's carries ``app.kubernetes.io/managed-by: stackgen`` and the shared label, and
    points at a Service named ``stackgen-metrics-adapter``; anything else is foreign.
    """
    metadata = apiservice.get("metadata") or {}
    labels = {str(k): str(v) for k, v in (metadata.get("labels") or {}).items()}
    service = (apiservice.get("spec") or {}).get("service") or {}
    where = f"{service.get('namespace', '')}/{service.get('name', '')}" if service else ""
    ours = (
        labels.get(_MANAGED_BY) == "stackgen"
        and labels.get(SHARED_LABEL) == "true"
        and service.get("name") == METRICS_ADAPTER
    )
    return ApiServiceOwner(stackgen=ours, service=where, labels=labels)
