"""Only the aggregator gets in: TLS client certificates and request headers, end to end.

A real AdapterServer on 127.0.0.1 with certificates made here: a request-header (front
proxy) CA, the aggregator's client certificate, and several that must be refused.
"""

from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from stackgen.adapter.api import AdapterAPI
from stackgen.adapter.auth import (
    AuthConfigError,
    AuthConfigProvider,
    RequestHeaderConfig,
    Unauthenticated,
    authenticate,
)
from stackgen.adapter.server import AdapterServer
from stackgen.adapter.store import MetricStore
from stackgen.adapter.tls import ServerTLS
from stackgen.buildkite.models import MetricsSnapshot, QueueMetrics
from tests.support.pki import NOW, Pair, make_ca, make_leaf

METRIC_PATH = (
    "/apis/external.metrics.k8s.io/v1beta1/namespaces/buildkite/buildkite_jobs_scheduled"
    "?labelSelector=queue%3Ddefault"
)


# --------------------------------------------------------------------------- certificates


@dataclass
class Pki:
    folder: Path
    serving_ca: Pair
    front_proxy_ca: Pair
    paths: dict[str, tuple[Path, Path]]

    def client(self, name: str | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.paths["serving-ca"][0]))
        if name is not None:
            crt, key = self.paths[name]
            ctx.load_cert_chain(crt, key)
        return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    serving_ca = make_ca("serving CA")
    front_proxy_ca = make_ca("front-proxy-ca")
    other_ca = make_ca("some other CA")
    serving = make_leaf(
        serving_ca,
        "stackgen-metrics-adapter.buildkite.svc",
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=[
            x509.DNSName("stackgen-metrics-adapter.buildkite.svc"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
    )
    leaves = {
        "serving-ca": serving_ca,
        "front-proxy-ca": front_proxy_ca,
        "serving": serving,
        "aggregator": make_leaf(front_proxy_ca, "front-proxy-client"),
        "other-ca": make_leaf(other_ca, "front-proxy-client"),
        "wrong-cn": make_leaf(front_proxy_ca, "mallory"),
        "server-usage": make_leaf(
            front_proxy_ca, "front-proxy-client", usage=ExtendedKeyUsageOID.SERVER_AUTH
        ),
        "expired": make_leaf(
            front_proxy_ca, "front-proxy-client", not_after=NOW - dt.timedelta(days=1)
        ),
    }
    paths = {name: pair.write(folder, name) for name, pair in leaves.items()}
    return Pki(folder, serving_ca, front_proxy_ca, paths)


# --------------------------------------------------------------------------- a live server


@dataclass
class Live:
    server: AdapterServer
    provider: AuthConfigProvider
    tls: ServerTLS

    def request(
        self, client: ssl.SSLContext, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, object] | str]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.server.port, context=client, timeout=5)
        try:
            conn.request("GET", path, headers=headers or {})
            resp = conn.getresponse()
            raw = resp.read().decode()
            ctype = resp.getheader("Content-Type") or ""
            return resp.status, json.loads(raw) if ctype.startswith("application/json") else raw
        finally:
            conn.close()


def start_server(pki: Pki, config: RequestHeaderConfig | None) -> Iterator[Live]:
    store = MetricStore(["default"])
    store.record_snapshot(
        MetricsSnapshot("acme", None, {"default": QueueMetrics(scheduled=7)}, fetched_at=0)
    )
    store.set_interval(1e12)  # the snapshot above never goes stale in this test

    def load() -> RequestHeaderConfig:
        if config is None:
            raise AuthConfigError("ConfigMap has no requestheader-client-ca-file")
        return config

    provider = AuthConfigProvider(load)
    provider.refresh()
    crt, key = pki.paths["serving"]
    tls = ServerTLS(crt, key, provider.current)
    server = AdapterServer(("127.0.0.1", 0), AdapterAPI(store), tls, provider.current)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield Live(server, provider, tls)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def live(pki: Pki) -> Iterator[Live]:
    config = RequestHeaderConfig.from_files(
        str(pki.paths["front-proxy-ca"][0]), allowed_names=["front-proxy-client"]
    )
    yield from start_server(pki, config)


AS_HPA = {"X-Remote-User": "system:serviceaccount:kube-system:horizontal-pod-autoscaler"}


def test_the_aggregator_gets_metrics(pki: Pki, live: Live) -> None:
    status, body = live.request(pki.client("aggregator"), METRIC_PATH, AS_HPA)
    assert status == 200
    assert isinstance(body, dict)
    assert body["items"][0]["value"] == "7"
    # Discovery and OpenAPI are behind the same check.
    status, _ = live.request(
        pki.client("aggregator"), "/apis/external.metrics.k8s.io/v1beta1", AS_HPA
    )
    assert status == 200


def test_no_client_certificate_is_refused_even_with_headers(pki: Pki, live: Live) -> None:
    status, body = live.request(pki.client(None), METRIC_PATH, AS_HPA)
    assert status == 401
    assert isinstance(body, dict) and body["reason"] == "Unauthorized"
    status, _ = live.request(pki.client(None), "/openapi/v2", AS_HPA)
    assert status == 401


def test_probes_need_no_certificate(pki: Pki, live: Live) -> None:
    for path in ("/healthz", "/readyz", "/livez"):
        status, body = live.request(pki.client(None), path)
        assert status == 200, path
        assert isinstance(body, str) and body.endswith("ok\n")


@pytest.mark.parametrize("name", ["other-ca", "server-usage", "expired"])
def test_certificates_the_request_header_ca_does_not_vouch_for_end_the_connection(
    pki: Pki, live: Live, name: str
) -> None:
    # The handshake fails (TLS 1.3 reports it on the first read): no HTTP answer at all.
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        live.request(pki.client(name), METRIC_PATH, AS_HPA)
    # The server logs and counts the refusal in its handler thread, maybe a moment later.
    deadline = time.monotonic() + 5
    while live.server.refused_handshakes < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert live.server.refused_handshakes >= 1


def test_a_common_name_not_allowed_is_refused(pki: Pki, live: Live) -> None:
    status, _ = live.request(pki.client("wrong-cn"), METRIC_PATH, AS_HPA)
    assert status == 401


def test_a_request_without_a_user_is_refused(pki: Pki, live: Live) -> None:
    status, _ = live.request(pki.client("aggregator"), METRIC_PATH)
    assert status == 401
    status, _ = live.request(pki.client("aggregator"), METRIC_PATH, {"X-Remote-User": ""})
    assert status == 401


def test_empty_allowed_names_accept_any_name_the_ca_signed(pki: Pki) -> None:
    config = RequestHeaderConfig.from_files(str(pki.paths["front-proxy-ca"][0]))
    for live in start_server(pki, config):
        status, _ = live.request(pki.client("wrong-cn"), METRIC_PATH, AS_HPA)
        assert status == 200
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
            live.request(pki.client("other-ca"), METRIC_PATH, AS_HPA)


def test_without_front_proxy_settings_everything_but_probes_is_refused(pki: Pki) -> None:
    for live in start_server(pki, None):
        status, _ = live.request(pki.client("aggregator"), METRIC_PATH, AS_HPA)
        assert status == 401
        status, _ = live.request(pki.client(None), "/healthz")
        assert status == 200


def test_a_new_request_header_ca_is_picked_up(pki: Pki, tmp_path: Path) -> None:
    rotated = make_ca("front-proxy-ca 2")
    client = make_leaf(rotated, "front-proxy-client")
    crt, key = client.write(tmp_path, "rotated-client")
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text(pki.front_proxy_ca.pem)
    flags = {"allowed_names": ["front-proxy-client"]}
    for live in start_server(pki, None):
        live.provider._load = lambda: RequestHeaderConfig.from_files(str(ca_file), **flags)
        assert live.provider.refresh()
        live.tls.invalidate()
        assert live.request(pki.client("aggregator"), METRIC_PATH, AS_HPA)[0] == 200
        ca_file.write_text(rotated.pem)
        assert live.provider.refresh()
        live.tls.invalidate()
        ctx = ssl.create_default_context(cafile=str(pki.paths["serving-ca"][0]))
        ctx.load_cert_chain(crt, key)
        assert live.request(ctx, METRIC_PATH, AS_HPA)[0] == 200
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
            live.request(pki.client("aggregator"), METRIC_PATH, AS_HPA)


def test_the_serving_certificate_is_reloaded_from_disk(pki: Pki, tmp_path: Path) -> None:
    crt, key = pki.paths["serving"]
    crt_copy, key_copy = tmp_path / "tls.crt", tmp_path / "tls.key"
    crt_copy.write_bytes(crt.read_bytes())
    key_copy.write_bytes(key.read_bytes())
    tls = ServerTLS(crt_copy, key_copy, lambda: None, check_every=0)
    first = tls.context()
    assert tls.context() is first
    renewed = make_leaf(
        pki.serving_ca,
        "renewed",
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=[x509.DNSName("renewed")],
    )
    renewed.write(tmp_path, "tls")
    assert tls.context() is not first


def test_self_signed_when_both_files_are_absent(tmp_path: Path) -> None:
    tls = ServerTLS(tmp_path / "tls.crt", tmp_path / "tls.key", lambda: None)
    assert tls.self_signed
    assert isinstance(tls.context(), ssl.SSLContext)
    (tmp_path / "tls.crt").write_text("x")
    with pytest.raises(ValueError, match=r"tls\.key: missing"):
        ServerTLS(tmp_path / "tls.crt", tmp_path / "tls.key", lambda: None)


# --------------------------------------------------------------------------- the pure checks


def config(**overrides: object) -> RequestHeaderConfig:
    ca = make_ca("ca").pem
    values: dict[str, object] = {
        "client_ca": ca,
        "allowed_names": ("front-proxy-client",),
        "username_headers": ("X-Remote-User",),
        "group_headers": ("X-Remote-Group",),
        "extra_headers_prefixes": ("X-Remote-Extra-",),
        "uid_headers": ("X-Remote-Uid",),
    }
    values.update(overrides)
    return RequestHeaderConfig(**values)  # type: ignore[arg-type]


PEER = {"subject": ((("commonName", "front-proxy-client"),),)}


def test_authenticate_reads_user_groups_uid_and_extra() -> None:
    user = authenticate(
        config(),
        PEER,
        {
            "x-remote-user": ["alice"],
            "x-remote-uid": ["42"],
            "x-remote-group": ["system:authenticated", "devs"],
            "x-remote-extra-scopes": ["a", "b"],
            "x-remote-extra-acme.com%2fproject": ["x"],
        },
    )
    assert user.name == "alice" and user.uid == "42"
    assert user.groups == ("system:authenticated", "devs")
    assert user.extra == {"scopes": ("a", "b"), "acme.com/project": ("x",)}


def test_authenticate_uses_the_first_non_empty_username_header() -> None:
    cfg = config(username_headers=("X-First", "X-Remote-User"))
    user = authenticate(cfg, PEER, {"x-first": [""], "x-remote-user": ["bob"]})
    assert user.name == "bob"


@pytest.mark.parametrize(
    ("peer", "headers", "needle"),
    [
        (None, {"x-remote-user": ["a"]}, "no client certificate"),
        ({}, {"x-remote-user": ["a"]}, "no client certificate"),
        ({"subject": ((("commonName", "x"),),)}, {"x-remote-user": ["a"]}, "not in requestheader"),
        ({"subject": ((("organizationName", "x"),),)}, {"x-remote-user": ["a"]}, "Common Name"),
        (PEER, {}, "no user"),
    ],
)
def test_authenticate_refusals(
    peer: dict[str, object] | None, headers: dict[str, list[str]], needle: str
) -> None:
    with pytest.raises(Unauthenticated, match=needle):
        authenticate(config(), peer, headers)
    with pytest.raises(Unauthenticated, match="not loaded"):
        authenticate(None, PEER, {"x-remote-user": ["a"]})


def test_configmap_as_kube_apiserver_publishes_it() -> None:
    ca = make_ca("front-proxy-ca").pem
    data = {
        "client-ca-file": make_ca("client").pem,
        "requestheader-allowed-names": '["front-proxy-client"]',
        "requestheader-client-ca-file": ca,
        "requestheader-extra-headers-prefix": '["X-Remote-Extra-"]',
        "requestheader-group-headers": '["X-Remote-Group"]',
        "requestheader-username-headers": '["X-Remote-User"]',
        "requestheader-uid-headers": '["X-Remote-Uid"]',
    }
    cfg = RequestHeaderConfig.from_configmap(data)
    assert cfg.client_ca == ca
    assert cfg.allowed_names == ("front-proxy-client",)
    assert cfg.username_headers == ("X-Remote-User",)
    assert cfg.uid_headers == ("X-Remote-Uid",)
    assert "extension-apiserver-authentication" in cfg.source
    # Older kube-apiservers publish no uid headers, and may allow any name.
    del data["requestheader-uid-headers"]
    data["requestheader-allowed-names"] = "[]"
    cfg = RequestHeaderConfig.from_configmap(data)
    assert cfg.uid_headers == () and cfg.allowed_names == ()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"requestheader-client-ca-file": None}, "runs without --requestheader-client-ca-file"),
        ({"requestheader-client-ca-file": "not a pem"}, "PEM"),
        ({"requestheader-username-headers": "X-Remote-User"}, "not a JSON list"),
        ({"requestheader-username-headers": "[1]"}, "JSON list of strings"),
        ({"requestheader-username-headers": "[]"}, "no username header"),
    ],
)
def test_configmap_problems(change: dict[str, str | None], needle: str) -> None:
    data = {
        "requestheader-client-ca-file": make_ca("x").pem,
        "requestheader-username-headers": '["X-Remote-User"]',
    }
    for key, value in change.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    with pytest.raises(AuthConfigError, match=needle):
        RequestHeaderConfig.from_configmap(data)


def test_provider_keeps_the_last_good_settings() -> None:
    good = config()
    answers: list[object] = [good, RuntimeError("apiserver down")]

    def load() -> RequestHeaderConfig:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, RequestHeaderConfig)
        return answer

    provider = AuthConfigProvider(load)
    assert provider.current() is None
    assert provider.refresh() and provider.current() is good
    assert not provider.refresh()
    assert provider.current() is good
    assert provider.error is not None and "apiserver down" in provider.error
