"""Several stacks, one APIService: each adapter answers its own namespace and forwards the rest.

Two real AdapterServers on 127.0.0.1 (stack "a" in front, stack "b" behind), each with its
own serving CA and its own Buildkite numbers for the *same* queue name; the cluster they
read (APIService, EndpointSlices, CA ConfigMaps, TokenReviews) is a fake at the
:class:`~stackgen.adapter.peers.PeerCluster` seam.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from stackgen.adapter.api import AdapterAPI
from stackgen.adapter.auth import AuthConfigProvider, RequestHeaderConfig, Unauthenticated
from stackgen.adapter.peers import Router
from stackgen.adapter.server import AdapterServer, watch_owner
from stackgen.adapter.store import MetricStore
from stackgen.adapter.telemetry import Telemetry
from stackgen.adapter.tls import ServerTLS
from stackgen.buildkite.models import MetricsSnapshot, QueueMetrics
from stackgen.common.apiservice import apiservice_owner
from tests.support.pki import Pair, make_ca, make_leaf

SA = "system:serviceaccount:{}:stackgen-metrics-adapter"


def metric_path(namespace: str, queue: str = "default") -> str:
    return (
        f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/buildkite_jobs_scheduled"
        f"?labelSelector=queue%3D{queue}"
    )


def stackgen_apiservice(namespace: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "v1beta1.external.metrics.k8s.io",
            "labels": {"app.kubernetes.io/managed-by": "stackgen", "stackgen.io/shared": "true"},
        },
        "spec": {"service": {"namespace": namespace, "name": "stackgen-metrics-adapter"}},
    }


KEDA = {
    "metadata": {
        "name": "v1beta1.external.metrics.k8s.io",
        "labels": {"app.kubernetes.io/name": "keda-operator-metrics-apiserver"},
    },
    "spec": {"service": {"namespace": "keda", "name": "keda-operator-metrics-apiserver"}},
}


@dataclass
class FakeCluster:
    """What the API server would say (a :class:`PeerCluster`)."""

    front: Mapping[str, Any] | None
    addresses: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    cas: dict[str, dict[str, str]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    reviews: int = 0

    def apiservice(self) -> Mapping[str, Any] | None:
        return self.front

    def endpoints(self, namespace: str) -> list[tuple[str, int]]:
        return self.addresses.get(namespace, [])

    def ca_configmap(self, namespace: str) -> Mapping[str, str] | None:
        return self.cas.get(namespace)

    def review(self, token: str, audience: str) -> str | None:
        assert audience == "stackgen-metrics-adapter"
        self.reviews += 1
        return self.tokens.get(token)


@dataclass
class Stack:
    namespace: str
    ca: Pair
    server: AdapterServer
    telemetry: Telemetry


@dataclass
class Cluster:
    fake: FakeCluster
    front_proxy: Pair
    folder: Path
    stacks: dict[str, Stack]

    def aggregator(self, stack: str) -> ssl.SSLContext:
        """The aggregator's client: front-proxy certificate, trusting that stack's CA."""
        ctx = ssl.create_default_context(cadata=self.stacks[stack].ca.pem)
        ctx.check_hostname = False
        crt, key = make_leaf(self.front_proxy, "front-proxy-client").write(self.folder, "agg")
        ctx.load_cert_chain(crt, key)
        return ctx

    def hpa(self, stack: str, path: str) -> tuple[int, Any]:
        """What the HPA controller's request looks like when the aggregator proxies it."""
        user = {"X-Remote-User": "system:serviceaccount:kube-system:horizontal-pod-autoscaler"}
        return self.get(stack, path, self.aggregator(stack), user)

    def plain(self, stack: str) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.stacks[stack].ca.pem)
        ctx.check_hostname = False
        return ctx

    def get(
        self, stack: str, path: str, ctx: ssl.SSLContext, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        port = self.stacks[stack].server.port
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        try:
            conn.request("GET", path, headers=headers or {})
            resp = conn.getresponse()
            raw = resp.read().decode()
            ctype = resp.getheader("Content-Type") or ""
            return resp.status, json.loads(raw) if ctype.startswith("application/json") else raw
        finally:
            conn.close()


def _serve(
    namespace: str,
    scheduled: int,
    front_proxy: Pair,
    fake: FakeCluster,
    folder: Path,
    stop: list[AdapterServer],
) -> Stack:
    ca = make_ca(f"serving CA {namespace}")
    dns = f"stackgen-metrics-adapter.{namespace}.svc"
    serving = make_leaf(
        ca,
        dns,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=[x509.DNSName(dns), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    crt, key = serving.write(folder, f"serving-{namespace}")
    fp_ca, _ = front_proxy.write(folder, "front-proxy-ca")
    config = RequestHeaderConfig.from_files(str(fp_ca), allowed_names=["front-proxy-client"])
    provider = AuthConfigProvider(lambda: config)
    provider.refresh()
    store = MetricStore(["default"])
    store.record_snapshot(
        MetricsSnapshot("acme", None, {"default": QueueMetrics(scheduled=scheduled)}, fetched_at=0)
    )
    store.set_interval(1e12)
    token_file = folder / f"token-{namespace}"
    token_file.write_text(f"token-of-{namespace}\n")
    fake.tokens[f"token-of-{namespace}"] = SA.format(namespace)
    telemetry = Telemetry()
    server = AdapterServer(
        ("127.0.0.1", 0),
        AdapterAPI(store),
        ServerTLS(crt, key, provider.current),
        provider.current,
        Router(namespace, fake, token_file),
        telemetry,
    )
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    stop.append(server)
    fake.addresses[namespace] = [("127.0.0.1", server.port)]
    fake.cas[namespace] = {"ca.crt": ca.pem}
    return Stack(namespace, ca, server, telemetry)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    front_proxy = make_ca("front-proxy-ca")
    fake = FakeCluster(front=stackgen_apiservice("a"))
    servers: list[AdapterServer] = []
    stacks = {
        "a": _serve("a", 7, front_proxy, fake, tmp_path, servers),
        "b": _serve("b", 2, front_proxy, fake, tmp_path, servers),
    }
    try:
        yield Cluster(fake, front_proxy, tmp_path, stacks)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def _value(body: Any) -> str:
    (item,) = body["items"]
    assert item["metricLabels"] == {"queue": "default"}
    return str(item["value"])


def test_each_namespace_reads_its_own_stack_through_the_front(cluster: Cluster) -> None:
    status, body = cluster.hpa("a", metric_path("a"))
    assert (status, _value(body)) == (200, "7")
    # Same queue name, other stack: forwarded to b's adapter, b's number.
    status, body = cluster.hpa("a", metric_path("b"))
    assert (status, _value(body)) == (200, "2"), body
    assert (
        'forwarded_requests_total{code="200",namespace="b"} 1.0'
        in cluster.get("a", "/metrics", cluster.plain("a"))[1]
    )
    # A namespace with no stack: a clear 404, not some other stack's numbers.
    status, body = cluster.hpa("a", metric_path("elsewhere"))
    assert status == 404
    assert "no stackgen metrics adapter serves namespace elsewhere" in body["message"]


def test_only_the_front_adapter_may_forward(cluster: Cluster) -> None:
    plain = cluster.plain("b")
    # a is in front: its token gets b's answer for b's namespace.
    status, body = cluster.get("b", metric_path("b"), plain, {"Authorization": "Bearer token-of-a"})
    assert (status, _value(body)) == (200, "2")
    # Never forwarded twice: b answers only its own namespace to a peer.
    status, body = cluster.get("b", metric_path("a"), plain, {"Authorization": "Bearer token-of-a"})
    assert status == 404 and "not served here" in body["message"]
    for headers in (
        {},  # no certificate, no token
        {"Authorization": "Bearer not-a-token"},  # TokenReview says no
        {"Authorization": "Bearer token-of-b"},  # a real adapter, but not the front one
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ):
        status, _ = cluster.get("b", metric_path("b"), plain, headers)
        assert status == 401, headers


def test_the_front_may_change_hands(cluster: Cluster) -> None:
    router = cluster.stacks["a"].server.router
    assert router is not None
    with pytest.raises(Unauthenticated):
        router.peer_user("Bearer token-of-b")
    cluster.fake.front = stackgen_apiservice("b")  # handed over: a cached answer is re-read
    assert router.peer_user("Bearer token-of-b").name == SA.format("b")
    with pytest.raises(Unauthenticated):
        router.peer_user("Bearer token-of-a")


def test_a_peer_is_verified_against_its_own_ca(cluster: Cluster) -> None:
    cluster.fake.cas["b"] = {"ca.crt": cluster.stacks["a"].ca.pem}  # the wrong CA
    status, body = cluster.hpa("a", metric_path("b"))
    assert status == 503 and "the metrics adapter of namespace b did not answer" in body["message"]
    router = cluster.stacks["a"].server.router
    assert router is not None
    router._forget("ca", "b")
    cluster.fake.cas["b"] = {"certManager": "true"}
    status, body = cluster.hpa("a", metric_path("b"))
    assert status == 503 and "holds no ca.crt" in body["message"]


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **kw: self.lines.append((level, event, kw))


def test_a_foreign_owner_is_one_error_line_and_a_metric() -> None:
    telemetry, log, stop = Telemetry(), Log(), threading.Event()
    stop.set()  # one check, then return
    router = Router("a", FakeCluster(front=KEDA), None)
    watch_owner(router, telemetry, log, stop, every=60)
    ((level, event, fields),) = log.lines
    assert level == "error"
    assert event.startswith(
        "the APIService v1beta1.external.metrics.k8s.io belongs to another metrics adapter "
        "(service keda/keda-operator-metrics-apiserver, labels "
        "app.kubernetes.io/name=keda-operator-metrics-apiserver)"
    )
    assert fields["service"] == "keda/keda-operator-metrics-apiserver"
    assert "stackgen_metrics_adapter_apiservice_foreign 1.0" in telemetry.render().decode()
    ours = Router("a", FakeCluster(front=stackgen_apiservice("b")), None)
    watch_owner(ours, telemetry, log, stop, every=60)
    assert log.lines[-1][0] == "info"
    assert "stackgen_metrics_adapter_apiservice_foreign 0.0" in telemetry.render().decode()


@pytest.mark.parametrize(
    ("apiservice", "ours"),
    [
        (stackgen_apiservice("x"), True),
        (KEDA, False),
        # prometheus-adapter, and one that merely borrowed stackgen's Service name.
        (
            {
                "metadata": {"labels": {"app.kubernetes.io/name": "prometheus-adapter"}},
                "spec": {"service": {"namespace": "monitoring", "name": "prometheus-adapter"}},
            },
            False,
        ),
        (
            {
                "metadata": {},
                "spec": {"service": {"namespace": "x", "name": "stackgen-metrics-adapter"}},
            },
            False,
        ),
        ({"metadata": {"labels": {}}, "spec": {}}, False),
    ],
)
def test_apiservice_owner(apiservice: dict[str, Any], ours: bool) -> None:
    assert apiservice_owner(apiservice).stackgen is ours


class Broken(FakeCluster):
    """An API server that is away."""

    def review(self, token: str, audience: str) -> str | None:
        raise ConnectionError("API server unreachable")

    def endpoints(self, namespace: str) -> list[tuple[str, int]]:
        raise ConnectionError("API server unreachable")


def test_an_unreachable_api_server_is_an_answer_not_a_crash(tmp_path: Path) -> None:
    router = Router("a", Broken(front=stackgen_apiservice("a")), tmp_path / "no-such-token")
    with pytest.raises(Unauthenticated, match="cannot check the bearer token"):
        router.peer_user("Bearer token-of-a")
    response = router.forward("b", "/apis/x", "", None)
    assert response.status == 503
    assert "cannot find the adapter of namespace b" in response.json()["message"]


def test_a_missing_peer_token_is_a_503(cluster: Cluster) -> None:
    router = cluster.stacks["a"].server.router
    assert router is not None and router.token_file is not None
    router.token_file.unlink()
    status, body = cluster.hpa("a", metric_path("b"))
    assert status == 503 and "cannot forward to namespace b" in body["message"]
