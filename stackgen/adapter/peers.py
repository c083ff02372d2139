"""Several stacks, one APIService: each request is answered by the adapter of its namespace.

Kubernetes has one ``v1beta1.external.metrics.k8s.io`` APIService per cluster; it points
at the adapter of one stack (the one applied last).  A metric request carries the HPA's
namespace (``…/namespaces/{ns}/{metric}``), and every stack lives in its own namespace with
its own Buildkite token, so queue names may collide across stacks without meaning the same
queue.  So:

* a request for this adapter's own namespace is answered here;
* a request for another namespace is forwarded to that namespace's adapter (the ready
  addresses of its Service ``stackgen-metrics-adapter``, from EndpointSlices), over TLS
  verified against the CA that stack publishes in its ConfigMap
  ``stackgen-metrics-adapter-ca`` (or not verified, when that stack opted into
  ``insecureSkipTLSVerify``), with this adapter's ServiceAccount token for the audience
  ``stackgen-metrics-adapter``;
* a forwarded request is accepted only from the adapter the APIService points at: its
  token must pass a TokenReview as ``system:serviceaccount:<that namespace>:
  stackgen-metrics-adapter``, and it is answered only for this adapter's own namespace
  (never forwarded again).

The aggregator authorized the original caller for the path's namespace before the request
reached the front adapter, which forwards it only to the adapter of that namespace.

:class:`Router` is the logic, over the small :class:`PeerCluster` interface;
:class:`KubernetesPeers` implements it with the official client.
"""

from __future__ import annotations

import hashlib
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from stackgen.adapter.api import Response, error_response
from stackgen.adapter.auth import Unauthenticated, User
from stackgen.common.apiservice import ApiServiceOwner, apiservice_owner
from stackgen.common.names import (
    ADAPTER_APISERVICE,
    ADAPTER_CA_CONFIGMAP,
    ADAPTER_PEER_AUDIENCE,
    METRICS_ADAPTER,
    adapter_service_dns,
)

__all__ = ["KubernetesPeers", "PeerCluster", "Router"]

#: How long what was read from the API server is reused.
_TTL = {"apiservice": 30.0, "endpoints": 10.0, "ca": 60.0, "review": 60.0}


class PeerCluster(Protocol):
    """What the router reads from the API server."""

    def apiservice(self) -> Mapping[str, Any] | None:
        """The ``v1beta1.external.metrics.k8s.io`` APIService, or None."""

    def endpoints(self, namespace: str) -> list[tuple[str, int]]:
        """Ready ``(address, port)`` of the adapter Service in ``namespace``."""

    def ca_configmap(self, namespace: str) -> Mapping[str, str] | None:
        """The data of ``namespace``'s ``stackgen-metrics-adapter-ca`` ConfigMap, or None."""

    def review(self, token: str, audience: str) -> str | None:
        """The user a token authenticates as for ``audience`` (TokenReview), or None."""


@dataclass
class _Cached:
    value: Any
    at: float


class Router:
    """Where a metric request is answered, forwarding, and who may forward to us."""

    def __init__(
        self,
        namespace: str,
        cluster: PeerCluster,
        token_file: Path | None,
        *,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.namespace = namespace
        self.cluster = cluster
        self.token_file = token_file
        self.timeout = timeout
        self._clock = clock
        self._cache: dict[tuple[str, str], _Cached] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ cache

    def _cached(self, kind: str, key: str, load: Callable[[], Any]) -> Any:
        now = self._clock()
        with self._lock:
            hit = self._cache.get((kind, key))
            if hit is not None and now - hit.at < _TTL[kind]:
                return hit.value
        value = load()
        with self._lock:
            self._cache[(kind, key)] = _Cached(value, now)
        return value

    def _forget(self, kind: str, key: str) -> None:
        with self._lock:
            self._cache.pop((kind, key), None)

    # ------------------------------------------------------------------ ownership

    def owner(self, *, fresh: bool = False) -> ApiServiceOwner | None:
        """Whose the APIService is (None: there is none)."""
        if fresh:
            self._forget("apiservice", "")
        found = self._cached("apiservice", "", self.cluster.apiservice)
        return None if found is None else apiservice_owner(found)

    # ------------------------------------------------------------------ incoming

    def peer_user(self, authorization: str) -> User:
        """Authenticate a request forwarded by the adapter in front (bearer token).

        Raises:
            Unauthenticated: not a token, or not the front adapter's.

        """
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("no client certificate and no bearer token")
        digest = hashlib.sha256(token.encode()).hexdigest()
        try:
            user = self._cached(
                "review", digest, lambda: self.cluster.review(token, ADAPTER_PEER_AUDIENCE)
            )
            front = self._front_user()
            if user is not None and user != front:
                front = self._front_user(fresh=True)  # the APIService may have changed hands
        except Exception as exc:  # the API server is away: refuse, never crash
            raise Unauthenticated(f"cannot check the bearer token: {exc}") from exc
        if user is None:
            self._forget("review", digest)
            raise Unauthenticated("bearer token rejected by TokenReview")
        if user != front:
            raise Unauthenticated(f"{user} is not the adapter the APIService points at")
        return User(name=user)

    def _front_user(self, *, fresh: bool = False) -> str | None:
        owner = self.owner(fresh=fresh)
        if owner is None or not owner.stackgen:
            return None
        return f"system:serviceaccount:{owner.namespace}:{METRICS_ADAPTER}"

    # ------------------------------------------------------------------ outgoing

    def forward(self, namespace: str, path: str, query: str, user: User | None) -> Response:
        """Answer a request for ``namespace`` with that namespace's adapter's answer."""
        try:
            endpoints = self._cached(
                "endpoints", namespace, lambda: self.cluster.endpoints(namespace)
            )
        except Exception as exc:  # the API server is away: an answer, not a crash
            return error_response(503, f"cannot find the adapter of namespace {namespace}: {exc}")
        if not endpoints:
            return error_response(
                404,
                f"no stackgen metrics adapter serves namespace {namespace} (no stack with an "
                f"hpa queue there: Service {METRICS_ADAPTER} has no ready endpoints)",
            )
        try:
            context = self._peer_context(namespace)
            token = self.token_file.read_text().strip() if self.token_file else ""
        except ValueError as exc:
            return error_response(503, str(exc))
        except Exception as exc:  # the API server or the token file
            return error_response(503, f"cannot forward to namespace {namespace}: {exc}")
        if not token:
            return error_response(503, "cannot forward: no peer token (--peer-token-file)")
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if user is not None:
            headers["X-Remote-User"] = user.name  # for the peer's logs only
        address, port = endpoints[0]
        return _get(
            address,
            port,
            namespace,
            f"{path}?{query}" if query else path,
            headers,
            context,
            self.timeout,
        )

    def _peer_context(self, namespace: str) -> ssl.SSLContext:
        data = self._cached("ca", namespace, lambda: self.cluster.ca_configmap(namespace))
        if data and data.get("ca.crt"):
            try:
                context = ssl.create_default_context(cadata=data["ca.crt"])
            except ssl.SSLError as exc:
                raise ValueError(
                    f"ConfigMap {namespace}/{ADAPTER_CA_CONFIGMAP}: ca.crt does not load: {exc}"
                ) from exc
            return context
        if data and data.get("insecureSkipTLSVerify") == "true":
            # That stack opted into an unverified APIService; its adapter is reached alike.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        raise ValueError(
            f"cannot verify the metrics adapter of namespace {namespace}: ConfigMap "
            f"{namespace}/{ADAPTER_CA_CONFIGMAP} holds no ca.crt (with cert-manager, put the "
            "issuer's CA there, e.g. with trust-manager)"
        )

    def describe(self) -> dict[str, Any]:
        """For the start-up log line."""
        return {"namespace": self.namespace, "peer_token_file": str(self.token_file or "")}


def _get(
    address: str,
    port: int,
    namespace: str,
    target: str,
    headers: dict[str, str],
    context: ssl.SSLContext,
    timeout: float,
) -> Response:
    import httpx

    host = f"[{address}]" if ":" in address else address
    try:
        with httpx.Client(verify=context, timeout=timeout, trust_env=False) as client:
            answer = client.get(
                f"https://{host}:{port}{target}",
                headers=headers,
                extensions={"sni_hostname": adapter_service_dns(namespace)},
            )
    except httpx.HTTPError as exc:
        return error_response(
            503, f"the metrics adapter of namespace {namespace} did not answer: {exc}"
        )
    return Response(
        answer.status_code,
        answer.content,
        answer.headers.get("content-type", "application/json"),
    )


class KubernetesPeers:
    """:class:`PeerCluster` with the official Kubernetes client (in-cluster or kubeconfig)."""

    def __init__(self, kubeconfig: str | None = None) -> None:
        from kubernetes import client, config  # heavy: imported only when used

        configuration = client.Configuration()
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        else:
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException:
                config.load_kube_config(client_configuration=configuration)
        self._api = client.ApiClient(configuration)
        self._client = client

    def _read(self, call: Callable[[], Any]) -> Any:
        """The object ``call`` reads, as plain JSON data (None when it does not exist)."""
        from kubernetes.client.exceptions import ApiException

        try:
            found = call()
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return self._api.sanitize_for_serialization(found)

    def apiservice(self) -> Mapping[str, Any] | None:
        """The APIService as a plain mapping."""
        api = self._client.ApiregistrationV1Api(self._api)
        found = self._read(lambda: api.read_api_service(ADAPTER_APISERVICE, _request_timeout=10))
        return found if isinstance(found, dict) else None

    def endpoints(self, namespace: str) -> list[tuple[str, int]]:
        """Ready addresses of the adapter Service's EndpointSlices, port ``https``."""
        api = self._client.DiscoveryV1Api(self._api)
        slices = self._read(
            lambda: api.list_namespaced_endpoint_slice(
                namespace,
                label_selector=f"kubernetes.io/service-name={METRICS_ADAPTER}",
                _request_timeout=10,
            )
        )
        out: list[tuple[str, int]] = []
        for item in (slices or {}).get("items", []):
            ports = [p.get("port") for p in item.get("ports") or [] if p.get("name") == "https"]
            if not ports or ports[0] is None:
                continue
            for endpoint in item.get("endpoints") or []:
                if (endpoint.get("conditions") or {}).get("ready") is False:
                    continue
                out += [(address, int(ports[0])) for address in endpoint.get("addresses", [])]
        return sorted(out)

    def ca_configmap(self, namespace: str) -> Mapping[str, str] | None:
        """The CA ConfigMap's data."""
        api = self._client.CoreV1Api(self._api)
        found = self._read(
            lambda: api.read_namespaced_config_map(
                ADAPTER_CA_CONFIGMAP, namespace, _request_timeout=10
            )
        )
        return dict(found.get("data") or {}) if isinstance(found, dict) else None

    def review(self, token: str, audience: str) -> str | None:
        """A TokenReview for ``audience``: the username, or None when not authenticated."""
        client = self._client
        body = client.V1TokenReview(
            spec=client.V1TokenReviewSpec(token=token, audiences=[audience])
        )
        status = (
            client.AuthenticationV1Api(self._api)
            .create_token_review(body, _request_timeout=10)
            .status
        )
        if not status or not status.authenticated or audience not in (status.audiences or []):
            return None
        return str(status.user.username) if status.user else None
