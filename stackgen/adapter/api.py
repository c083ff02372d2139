"""The external-metrics API as plain request → response (pure: no sockets).

Paths served::

    /healthz, /livez, /readyz                       probes (no client certificate needed)
    /apis                                           APIGroupList
    /apis/external.metrics.k8s.io                   APIGroup
    /apis/external.metrics.k8s.io/v1beta1           APIResourceList (discovery)
    /apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}?labelSelector=…
                                                    ExternalMetricValueList
    /openapi/v2                                     the OpenAPI (Swagger 2.0) document

``/openapi/v3`` answers 404: the aggregator then converts ``/openapi/v2`` itself (kube-aggregator
treats a 404 there as "this server serves v2 only").  Errors are Kubernetes ``Status`` objects.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from stackgen.adapter.selectors import SelectorError, parse_selector
from stackgen.adapter.store import METRICS, MetricError, MetricStore

__all__ = [
    "GROUP",
    "GROUP_VERSION",
    "PUBLIC_PATHS",
    "VERSION",
    "AdapterAPI",
    "Check",
    "Response",
    "error_response",
    "format_quantity",
    "metric_namespace",
    "status_body",
]

GROUP = "external.metrics.k8s.io"
VERSION = "v1beta1"
GROUP_VERSION = f"{GROUP}/{VERSION}"
#: Paths anyone may call (kubelet probes carry no client certificate).
PUBLIC_PATHS = frozenset({"/healthz", "/livez", "/readyz"})

_JSON = "application/json"
_LIST_KIND = "ExternalMetricValueList"
_DEF_PREFIX = "io.k8s.metrics.pkg.apis.external_metrics.v1beta1."

#: A health check: returns None when fine, else what is wrong.
Check = Callable[[], str | None]


@dataclass
class Response:
    """What to send back."""

    status: int
    body: bytes
    content_type: str = _JSON
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The body decoded (tests)."""
        return json.loads(self.body)


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _reason_phrase(status: int) -> str:
    return {
        400: "BadRequest",
        401: "Unauthorized",
        403: "Forbidden",
        404: "NotFound",
        405: "MethodNotAllowed",
        503: "ServiceUnavailable",
    }.get(status, "InternalError")


def status_body(
    code: int, message: str, reason: str | None = None, *, details: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A Kubernetes ``Status`` (failure) object."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or _reason_phrase(code),
        "code": code,
    }
    if details:
        body["details"] = dict(details)
    return body


def error_response(code: int, message: str, reason: str | None = None, **details: Any) -> Response:
    """A ``Status`` response."""
    return Response(code, _dump(status_body(code, message, reason, details=details or None)))


def format_quantity(value: float) -> str:
    """A Kubernetes quantity string: integers as is, anything else in milli-units.

    The HPA reads quantities as milli-values, so milli precision is all it can use.
    """
    milli = round(value * 1000)
    if milli % 1000 == 0:
        return str(milli // 1000)
    return f"{milli}m"


def metric_namespace(path: str) -> str | None:
    """The namespace of a metric request's path (``…/namespaces/{ns}/{metric}``), else None."""
    prefix = f"/apis/{GROUP_VERSION}/namespaces/"
    path = path.rstrip("/")
    if not path.startswith(prefix):
        return None
    parts = [unquote(p) for p in path[len(prefix) :].split("/")]
    return parts[0] if len(parts) == 2 and all(parts) else None


def _rfc3339(t: float) -> str:
    return dt.datetime.fromtimestamp(int(t), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _group() -> dict[str, Any]:
    version = {"groupVersion": GROUP_VERSION, "version": VERSION}
    return {"name": GROUP, "versions": [version], "preferredVersion": version}


def openapi_v2() -> dict[str, Any]:
    """A Swagger 2.0 document for the metric endpoint (merged by the aggregator)."""
    value = _DEF_PREFIX + "ExternalMetricValue"
    value_list = _DEF_PREFIX + "ExternalMetricValueList"
    gvk = [{"group": GROUP, "version": VERSION, "kind": _LIST_KIND}]
    return {
        "swagger": "2.0",
        "info": {"title": "stackgen metrics adapter", "version": VERSION},
        "paths": {
            f"/apis/{GROUP_VERSION}/namespaces/{{namespace}}/{{metric}}": {
                "get": {
                    "description": "Per-queue Buildkite metrics (label `queue`).",
                    "operationId": "listExternalMetricValue",
                    "produces": [_JSON],
                    "schemes": ["https"],
                    "tags": [f"{GROUP}_{VERSION}"],
                    "parameters": [
                        {"name": "namespace", "in": "path", "required": True, "type": "string"},
                        {
                            "name": "metric",
                            "in": "path",
                            "required": True,
                            "type": "string",
                            "enum": sorted(METRICS),
                        },
                        {
                            "name": "labelSelector",
                            "in": "query",
                            "type": "string",
                            "uniqueItems": True,
                            "description": "A label selector on `queue`, e.g. queue=default.",
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "OK",
                            "schema": {"$ref": f"#/definitions/{value_list}"},
                        }
                    },
                    "x-kubernetes-action": "list",
                    "x-kubernetes-group-version-kind": gvk[0],
                }
            }
        },
        "definitions": {
            value: {
                "description": "One value of one metric for one queue.",
                "type": "object",
                "required": ["metricName", "metricLabels", "timestamp", "value"],
                "properties": {
                    "metricName": {"type": "string"},
                    "metricLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "timestamp": {"type": "string", "format": "date-time"},
                    "window": {"type": "integer", "format": "int64"},
                    "value": {"type": "string", "description": "A Kubernetes quantity."},
                },
            },
            value_list: {
                "description": "Values of one metric.",
                "type": "object",
                "required": ["items"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                    "items": {"type": "array", "items": {"$ref": f"#/definitions/{value}"}},
                },
                "x-kubernetes-group-version-kind": gvk,
            },
        },
    }


class AdapterAPI:
    """Answers requests from the metric store; the caller has already authenticated them."""

    def __init__(
        self,
        store: MetricStore,
        *,
        live: Sequence[tuple[str, Check]] = (),
        ready: Sequence[tuple[str, Check]] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._live = list(live)
        self._ready = list(ready)
        self._clock = clock
        self._openapi = _dump(openapi_v2())
        self._openapi_etag = '"' + hashlib.sha256(self._openapi).hexdigest()[:32] + '"'
        resources = [
            {
                "name": name,
                "singularName": "",
                "namespaced": True,
                "kind": _LIST_KIND,
                "verbs": ["get"],
            }
            for name in METRICS
        ]
        self._resources = _dump(
            {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": GROUP_VERSION,
                "resources": resources,
            }
        )

    def _health(self, checks: Sequence[tuple[str, Check]]) -> Response:
        lines, ok = [], True
        for name, check in checks:
            problem = check()
            if problem is None:
                lines.append(f"[+]{name} ok")
            else:
                ok = False
                lines.append(f"[-]{name} failed: {problem}")
        lines.append("ok" if ok else "check failed")
        return Response(200 if ok else 503, ("\n".join(lines) + "\n").encode(), "text/plain")

    def handle(
        self,
        method: str,
        path: str,
        query: Mapping[str, Sequence[str]],
        headers: Mapping[str, Sequence[str]] | None = None,
    ) -> Response:
        """Answer one request (``path`` without the query string)."""
        headers = headers or {}
        if method not in ("GET", "HEAD"):
            return error_response(405, f"method {method} is not supported: the API is read-only")
        path = path.rstrip("/") or "/"
        if path in ("/healthz", "/livez"):
            return self._health(self._live)
        if path == "/readyz":
            return self._health(self._ready)
        if path == "/openapi/v2":
            if self._openapi_etag in headers.get("if-none-match", ()):
                return Response(304, b"", headers={"ETag": self._openapi_etag})
            return Response(200, self._openapi, headers={"ETag": self._openapi_etag})
        if path == "/apis":
            return Response(
                200, _dump({"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group()]})
            )
        if path == f"/apis/{GROUP}":
            return Response(200, _dump({"kind": "APIGroup", "apiVersion": "v1", **_group()}))
        if path == f"/apis/{GROUP_VERSION}":
            return Response(200, self._resources)
        prefix = f"/apis/{GROUP_VERSION}/namespaces/"
        if path.startswith(prefix):
            parts = [unquote(p) for p in path[len(prefix) :].split("/")]
            if len(parts) == 2 and all(parts):
                return self._metric(parts[0], parts[1], query)
        return error_response(404, f"the server could not find the requested resource ({path})")

    def _metric(self, namespace: str, metric: str, query: Mapping[str, Sequence[str]]) -> Response:
        selectors = query.get("labelSelector", ())
        if len(selectors) > 1:
            return error_response(400, "labelSelector given more than once")
        try:
            selector = parse_selector(selectors[0] if selectors else None)
        except SelectorError as exc:
            return error_response(400, f"invalid labelSelector: {exc}")
        try:
            samples = self.store.query(metric, selector)
        except MetricError as exc:
            return error_response(exc.status, str(exc), exc.reason, name=metric, group=GROUP)
        items = [
            {
                "metricName": metric,
                "metricLabels": {"queue": s.queue},
                "timestamp": _rfc3339(s.at),
                "value": format_quantity(s.value),
            }
            for s in samples
        ]
        return Response(
            200,
            _dump(
                {
                    "kind": _LIST_KIND,
                    "apiVersion": GROUP_VERSION,
                    "metadata": {},
                    "items": items,
                }
            ),
        )
