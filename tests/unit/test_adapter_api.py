"""The external-metrics API as request -> response: shapes, quantities and error mapping."""

from __future__ import annotations

import pytest

from stackgen.adapter.api import AdapterAPI, format_quantity
from stackgen.adapter.store import METRICS, MetricStore
from stackgen.buildkite.models import MetricsSnapshot, QueueMetrics

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
BASE = "/apis/external.metrics.k8s.io/v1beta1"


class Clock:
    now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def api(clock: Clock) -> AdapterAPI:
    store = MetricStore(["default", "linux"], interval=10, clock=clock)
    store.record_snapshot(
        MetricsSnapshot(
            organization="acme",
            cluster=None,
            queues={
                "default": QueueMetrics(
                    scheduled=3, running=1, idle_agents=1, busy_agents=2, total_agents=3
                ),
                "linux": QueueMetrics(scheduled=0, running=0, idle_agents=2, total_agents=2),
            },
            fetched_at=T0,
        )
    )
    return AdapterAPI(store, clock=clock)


def get(api: AdapterAPI, path: str, **query: str) -> tuple[int, object]:
    resp = api.handle("GET", path, {k: [v] for k, v in query.items()})
    return resp.status, (resp.json() if resp.content_type == "application/json" else resp.body)


def test_metric_list_has_the_exact_kubernetes_shape(api: AdapterAPI) -> None:
    status, body = get(
        api, f"{BASE}/namespaces/buildkite/buildkite_jobs_runnable", labelSelector="queue=default"
    )
    assert status == 200
    assert body == {
        "kind": "ExternalMetricValueList",
        "apiVersion": "external.metrics.k8s.io/v1beta1",
        "metadata": {},
        "items": [
            {
                "metricName": "buildkite_jobs_runnable",
                "metricLabels": {"queue": "default"},
                "timestamp": "2023-11-14T22:13:20Z",
                "value": "4",
            }
        ],
    }


def test_fractional_values_are_milli_quantities(api: AdapterAPI) -> None:
    status, body = get(
        api,
        f"{BASE}/namespaces/any/buildkite_agents_busy_percentage",
        labelSelector="queue in (default,linux)",
    )
    assert status == 200
    assert isinstance(body, dict)
    assert [(i["metricLabels"]["queue"], i["value"]) for i in body["items"]] == [
        ("default", "66667m"),
        ("linux", "0"),
    ]


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0"), (5, "5"), (100.0, "100"), (66.6666, "66667m"), (0.5, "500m"), (1e-4, "0")],
)
def test_format_quantity(value: float, text: str) -> None:
    assert format_quantity(value) == text


def test_discovery_lists_every_metric(api: AdapterAPI) -> None:
    status, body = get(api, BASE)
    assert status == 200
    assert isinstance(body, dict)
    assert body["kind"] == "APIResourceList"
    assert body["groupVersion"] == "external.metrics.k8s.io/v1beta1"
    assert {r["name"] for r in body["resources"]} == set(METRICS)
    for resource in body["resources"]:
        assert resource["namespaced"] is True
        assert resource["kind"] == "ExternalMetricValueList"
        assert resource["verbs"] == ["get"]
    status, body = get(api, "/apis")
    assert status == 200 and isinstance(body, dict)
    assert (
        body["groups"][0]["preferredVersion"]["groupVersion"] == "external.metrics.k8s.io/v1beta1"
    )
    status, body = get(api, "/apis/external.metrics.k8s.io")
    assert status == 200 and isinstance(body, dict) and body["kind"] == "APIGroup"


def test_openapi_v2_with_etag_and_v3_falls_back(api: AdapterAPI) -> None:
    resp = api.handle("GET", "/openapi/v2", {})
    assert resp.status == 200
    spec = resp.json()
    assert spec["swagger"] == "2.0"
    assert any("ExternalMetricValueList" in name for name in spec["definitions"])
    etag = resp.headers["ETag"]
    again = api.handle("GET", "/openapi/v2", {}, {"if-none-match": [etag]})
    assert again.status == 304 and again.body == b""
    # The aggregator treats 404 on /openapi/v3 as "convert v2 instead".
    assert api.handle("GET", "/openapi/v3", {}).status == 404


@pytest.mark.parametrize(
    ("path", "query", "code", "reason", "needle"),
    [
        (f"{BASE}/namespaces/ns/buildkite_nope", {}, 404, "NotFound", "no external metric"),
        (
            f"{BASE}/namespaces/ns/buildkite_jobs_runnable",
            {"labelSelector": "queue in ("},
            400,
            "BadRequest",
            "invalid labelSelector",
        ),
        (
            f"{BASE}/namespaces/ns/buildkite_jobs_oldest_scheduled_age_seconds",
            {"labelSelector": "queue=zzz"},
            404,
            "NotFound",
            "not one of the adapter's queues",
        ),
        (f"{BASE}/namespaces/ns", {}, 404, "NotFound", "could not find"),
        (f"{BASE}/namespaces/ns/m/extra", {}, 404, "NotFound", "could not find"),
        ("/api/v1/pods", {}, 404, "NotFound", "could not find"),
    ],
)
def test_errors_are_kubernetes_status_objects(
    api: AdapterAPI, path: str, query: dict[str, str], code: int, reason: str, needle: str
) -> None:
    status, body = get(api, path, **query)
    assert status == code
    assert isinstance(body, dict)
    assert body["kind"] == "Status" and body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert body["code"] == code and body["reason"] == reason
    assert needle in body["message"]


def test_stale_data_is_503_with_the_reason(api: AdapterAPI, clock: Clock) -> None:
    api.store.record_failure("metrics", "GET /metrics: timed out")
    clock.now += 31
    status, body = get(
        api, f"{BASE}/namespaces/ns/buildkite_jobs_runnable", labelSelector="queue=default"
    )
    assert status == 503
    assert isinstance(body, dict)
    assert body["reason"] == "ServiceUnavailable"
    assert "stale" in body["message"] and "timed out" in body["message"]
    assert body["details"] == {
        "name": "buildkite_jobs_runnable",
        "group": "external.metrics.k8s.io",
    }


def test_writes_are_refused(api: AdapterAPI) -> None:
    resp = api.handle("POST", f"{BASE}/namespaces/ns/buildkite_jobs_runnable", {})
    assert resp.status == 405
    assert resp.json()["reason"] == "MethodNotAllowed"


def test_labelselector_given_twice_is_refused(api: AdapterAPI) -> None:
    resp = api.handle(
        "GET", f"{BASE}/namespaces/ns/buildkite_jobs_runnable", {"labelSelector": ["a", "b"]}
    )
    assert resp.status == 400


def test_health_checks(clock: Clock) -> None:
    broken: list[str | None] = [None]
    api = AdapterAPI(
        MetricStore([], clock=clock),
        live=[("poller", lambda: None)],
        ready=[("front-proxy-settings", lambda: broken[0])],
    )
    assert api.handle("GET", "/healthz", {}).status == 200
    assert api.handle("GET", "/livez", {}).body.endswith(b"ok\n")
    assert api.handle("GET", "/readyz", {}).status == 200
    broken[0] = "ConfigMap has no requestheader-client-ca-file"
    resp = api.handle("GET", "/readyz", {})
    assert resp.status == 503
    assert b"[-]front-proxy-settings failed: ConfigMap has no" in resp.body
