"""The HTTPS server and the process around it (standard library HTTP, one thread per connection).

Each accepted connection is wrapped with the current TLS context and handshakes in its own
thread, so a slow or hostile client never stalls the accept loop.  The server is a
:class:`~stackgen.common.httpserve.GuardedServer`: at most :data:`MAX_CONNECTIONS` at once,
the handshake and each request within :data:`REQUEST_SECONDS`, an idle keep-alive
connection closed after :data:`IDLE_SECONDS`, errors logged as JSON.  Every request outside
:data:`~stackgen.adapter.api.PUBLIC_PATHS` must pass
:func:`~stackgen.adapter.auth.authenticate`; the rest is :class:`~stackgen.adapter.api.AdapterAPI`.
"""

from __future__ import annotations

import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from stackgen.adapter.api import (
    PUBLIC_PATHS,
    AdapterAPI,
    Response,
    error_response,
    metric_namespace,
)
from stackgen.adapter.auth import (
    AuthConfigError,
    AuthConfigProvider,
    RequestHeaderConfig,
    Unauthenticated,
    authenticate,
    kubernetes_configmap_reader,
)
from stackgen.adapter.metrics import AdapterMetrics, serve_metrics
from stackgen.adapter.peers import KubernetesPeers, Router
from stackgen.adapter.poller import Poller
from stackgen.adapter.store import POLL_INTERVAL, MetricStore
from stackgen.adapter.telemetry import CONTENT_TYPE, Telemetry
from stackgen.adapter.tls import ServerTLS
from stackgen.common.httpserve import GuardedHandler, GuardedServer
from stackgen.common.logs import get_logger
from stackgen.common.names import METRICS_ADAPTER

__all__ = ["AdapterServer", "AdapterSettings", "RequestHeaderFlags", "run"]

_MAX_BODY = 64 * 1024
_HANDSHAKE_TIMEOUT = 10.0
#: Connections served at once (the API aggregator keeps a few open; probes come and go).
MAX_CONNECTIONS = 64
#: The TLS handshake and each request (line, headers, body) must arrive within this.
REQUEST_SECONDS = 10.0
#: An idle keep-alive connection is closed after this.
IDLE_SECONDS = 120.0


class AdapterServer(GuardedServer):
    """HTTPS server: TLS per connection, front-proxy authentication per request."""

    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        app: AdapterAPI,
        tls: ServerTLS,
        auth: Callable[[], RequestHeaderConfig | None],
        router: Router | None = None,
        telemetry: Telemetry | None = None,
        *,
        max_connections: int = MAX_CONNECTIONS,
        request_seconds: float = REQUEST_SECONDS,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        self.tls = tls
        self.auth = auth
        #: Without a router (no --namespace) every namespace is answered here.
        self.router = router
        self.telemetry = telemetry or Telemetry()
        self.log = get_logger()
        self.refused_handshakes = 0
        self._count_lock = threading.Lock()
        super().__init__(
            address,
            _Handler,
            max_connections=max_connections,
            request_seconds=request_seconds,
            idle_seconds=idle_seconds,
            log=get_logger(),
        )

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the address (slow, useless here)."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def get_request(self) -> tuple[Any, Any]:
        """Accept a connection and wrap it with the current TLS context (no handshake yet)."""
        sock, addr = self.socket.accept()
        try:
            return self.tls.wrap(sock), addr
        except Exception as exc:
            sock.close()
            self.log.error("cannot set up TLS for a connection", error=repr(exc))
            raise OSError(str(exc)) from exc

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Failed handshakes and hang-ups are expected: log them briefly, no traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ssl.SSLError | ConnectionError | TimeoutError):
            if isinstance(exc, ssl.SSLError):
                with self._count_lock:
                    self.refused_handshakes += 1
            self.log.info(
                "connection refused or dropped",
                client=str(client_address[0]) if client_address else None,
                error=getattr(exc, "reason", None) or type(exc).__name__,
            )
            return
        self.log.exception("request handler crashed", client=str(client_address))

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.server_address[1])


class _Handler(GuardedHandler):
    protocol_version = "HTTP/1.1"
    server_version = METRICS_ADAPTER
    sys_version = ""
    # Headers and body are separate writes: without TCP_NODELAY a keep-alive answer waits
    # ~40 ms for Nagle's algorithm and the client's delayed ACK.
    disable_nagle_algorithm = True
    server: AdapterServer

    def setup(self) -> None:
        conn: ssl.SSLSocket = self.request
        conn.settimeout(_HANDSHAKE_TIMEOUT)
        conn.do_handshake()
        super().setup()

    def _serve(self) -> None:
        started = time.monotonic()
        url = urlsplit(self.path)
        path = url.path or "/"
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self.close_connection = True
            self._send(error_response(400, "request body too large"))
            return
        if length:
            self.rfile.read(length)  # a read-only API: ignore it, keep the connection usable
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        if path.rstrip("/") == "/metrics":
            self._send(Response(200, self.server.telemetry.render(), CONTENT_TYPE))
            return
        user, peer = None, False
        if path.rstrip("/") not in PUBLIC_PATHS:
            try:
                user, peer = self._authenticate(headers)
            except Unauthenticated as exc:
                self.server.log.info(
                    "request refused",
                    reason=str(exc),
                    method=self.command,
                    path=path,
                    client=self.client_address[0],
                )
                self._send(error_response(401, "Unauthorized"))
                return
        response = self._answer(path, url.query, headers, user, peer)
        self._send(response)
        self.server.log.debug(
            "request",
            method=self.command,
            path=path,
            query=url.query,
            status=response.status,
            user=user.name if user else None,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )

    def _authenticate(self, headers: dict[str, list[str]]) -> tuple[Any, bool]:
        """The aggregator's user (front-proxy certificate), or a peer adapter's (token)."""
        try:
            return authenticate(self.server.auth(), self.connection.getpeercert(), headers), False
        except Unauthenticated:
            authorization = self.headers.get("Authorization")
            if self.server.router is None or not authorization:
                raise
            return self.server.router.peer_user(authorization), True

    def _answer(
        self, path: str, query: str, headers: dict[str, list[str]], user: Any, peer: bool
    ) -> Response:
        """Here, or from the adapter of the request's namespace (several stacks)."""
        router = self.server.router
        namespace = metric_namespace(path)
        if router is None or namespace is None or namespace == router.namespace:
            return self.server.app.handle(
                self.command, path, parse_qs(query, keep_blank_values=True), headers
            )
        if peer:  # never forwarded twice
            return error_response(
                404,
                f"namespace {namespace} is not served here: a forwarded request is answered "
                f"only for namespace {router.namespace}",
            )
        response = router.forward(namespace, path, query, user)
        self.server.telemetry.forwarded.labels(namespace, str(response.status)).inc()
        return response

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD" and response.body:
            self.wfile.write(response.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


# --------------------------------------------------------------------------- the process


@dataclass(frozen=True)
class RequestHeaderFlags:
    """Front-proxy settings given on the command line instead of read from the cluster."""

    client_ca_file: str
    allowed_names: tuple[str, ...] = ()
    username_headers: tuple[str, ...] = ("X-Remote-User",)
    group_headers: tuple[str, ...] = ("X-Remote-Group",)
    extra_headers_prefixes: tuple[str, ...] = ("X-Remote-Extra-",)
    uid_headers: tuple[str, ...] = ("X-Remote-Uid",)

    def load(self) -> RequestHeaderConfig:
        """Read the CA file and build the settings."""
        return RequestHeaderConfig.from_files(
            self.client_ca_file,
            allowed_names=self.allowed_names,
            username_headers=self.username_headers,
            group_headers=self.group_headers,
            extra_headers_prefixes=self.extra_headers_prefixes,
            uid_headers=self.uid_headers,
        )


@dataclass(frozen=True)
class AdapterSettings:
    """Everything ``stackgen metrics-adapter`` is told."""

    endpoint: str
    token: str = field(repr=False)
    bind_address: str = "0.0.0.0"
    secure_port: int = 6443
    #: Plain-HTTP port of the adapter's own Prometheus metrics (None: off; 0: any).
    metrics_port: int | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    poll_interval: float = POLL_INTERVAL
    stale_intervals: int = 3
    queues: tuple[str, ...] = ()
    stack_key_prefix: str | None = None
    requestheader: RequestHeaderFlags | None = None
    kubeconfig: str | None = None
    auth_refresh_seconds: float = 300.0
    #: The stack's namespace: its requests are answered here, others forwarded
    #: (:mod:`.peers`).  None: every namespace is answered here (one stack per cluster).
    namespace: str | None = None
    peer_token_file: Path | None = None
    #: How often the APIService's owner is checked.
    owner_check_seconds: float = 60.0


def _thread_check(name: str, thread: threading.Thread) -> Callable[[], str | None]:
    def check() -> str | None:
        return None if thread.is_alive() else f"the {name} thread has stopped"

    return check


def _auth_provider(settings: AdapterSettings) -> tuple[AuthConfigProvider, str]:
    """Where the front-proxy settings come from (flags, or the cluster's ConfigMap)."""
    if settings.requestheader is not None:
        load = settings.requestheader.load
        source = f"flags ({settings.requestheader.client_ca_file})"
    else:
        try:
            read = kubernetes_configmap_reader(settings.kubeconfig)
        except Exception as exc:  # no in-cluster config and no kubeconfig, or a bad one
            raise AuthConfigError(f"cannot set up the Kubernetes client: {exc}") from exc

        def load() -> RequestHeaderConfig:
            return RequestHeaderConfig.from_configmap(read())

        source = "ConfigMap kube-system/extension-apiserver-authentication"
    return AuthConfigProvider(load, refresh_seconds=settings.auth_refresh_seconds), source


def _server_tls(settings: AdapterSettings, auth: AuthConfigProvider, log: Any) -> ServerTLS:
    """The serving certificate (self-signed without files), checked before serving."""
    try:
        tls = ServerTLS(
            settings.tls_cert_file,
            settings.tls_key_file,
            auth.current,
            self_signed_names=[METRICS_ADAPTER, "localhost"],
        )
        tls.context()  # a broken certificate or key fails here, before serving
    except OSError as exc:  # ssl.SSLError included
        raise ValueError(f"serving certificate {settings.tls_cert_file}: {exc}") from exc
    if tls.self_signed:
        log.warning(
            "no serving certificate files: serving a self-signed certificate, which only an "
            "APIService with insecureSkipTLSVerify accepts",
            tls_cert_file=str(settings.tls_cert_file),
        )
    return tls


def _router(settings: AdapterSettings) -> Router | None:
    """The request router of a stack among several (None without ``--namespace``)."""
    if not settings.namespace:
        return None
    try:
        peers = KubernetesPeers(settings.kubeconfig)
    except Exception as exc:  # no in-cluster config and no kubeconfig, or a bad one
        raise AuthConfigError(f"cannot set up the Kubernetes client: {exc}") from exc
    return Router(settings.namespace, peers, settings.peer_token_file)


def watch_owner(
    router: Router, telemetry: Telemetry, log: Any, stop: threading.Event, every: float
) -> None:
    """Check who owns the APIService now and every ``every`` seconds; say so on change.

    A foreign owner (KEDA, prometheus-adapter) is an error line and the gauge
    ``stackgen_metrics_adapter_apiservice_foreign`` = 1: no HPA reaches this adapter.
    """
    said = None
    while True:
        try:
            owner = router.owner(fresh=True)
        except Exception as exc:  # RBAC, API server away: try again later
            state, owner = f"error: {exc}", None
            if state != said:
                log.warning("cannot read the APIService's owner", error=str(exc))
        else:
            state = "absent" if owner is None else owner.describe()
            if state != said:
                if owner is None:
                    log.warning("the external-metrics APIService does not exist yet")
                elif not owner.stackgen:
                    log.error(owner.conflict(), service=owner.service, labels=dict(owner.labels))
                else:
                    log.info(
                        "the external-metrics APIService is stackgen's", served_by=owner.service
                    )
            telemetry.apiservice_foreign.set(0 if owner is None or owner.stackgen else 1)
        said = state
        if stop.wait(every):
            return


def _stop_on_signals(stop: threading.Event, log: Any) -> None:
    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)


def _polling(settings: AdapterSettings) -> tuple[MetricStore, Any, AdapterMetrics, Poller]:
    """The store the API serves, the Buildkite client, the adapter's metrics and the poller."""
    from stackgen.buildkite import AgentAPI

    store = MetricStore(
        settings.queues, interval=settings.poll_interval, stale_intervals=settings.stale_intervals
    )
    client = AgentAPI(settings.endpoint, settings.token, timeout=10.0)
    metrics = AdapterMetrics(store)
    poller = Poller(
        client,
        store,
        interval=settings.poll_interval,
        queues=settings.queues,
        stack_key_prefix=settings.stack_key_prefix,
        on_poll=metrics.count_poll,
    )
    return store, client, metrics, poller


def run(settings: AdapterSettings, *, stop: threading.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop``); the poller and auth reload run alongside."""
    log = get_logger()
    stop = stop or threading.Event()
    store, client, metrics, poller = _polling(settings)
    auth, source = _auth_provider(settings)
    if not auth.refresh():
        log.error("front-proxy settings not loaded: refusing API requests", error=auth.error)
    tls = _server_tls(settings, auth, log)
    poll_thread = threading.Thread(target=poller.run, args=(stop,), name="poller", daemon=True)
    auth_thread = threading.Thread(
        target=auth.run, args=(stop, tls.invalidate), name="auth-refresh", daemon=True
    )

    def auth_ready() -> str | None:
        if auth.current() is None:
            return auth.error or "not loaded yet"
        return None

    app = AdapterAPI(
        store,
        live=[
            ("poller", _thread_check("poller", poll_thread)),
            ("auth-refresh", _thread_check("auth-refresh", auth_thread)),
        ],
        ready=[("front-proxy-settings", auth_ready)],
    )
    router = _router(settings)
    # One registry: the served values and polls (metrics.py), the APIService owner and the
    # forwarded requests (telemetry.py); on the metrics port, and on /metrics here too.
    telemetry = Telemetry(registry=metrics.registry)
    server = AdapterServer(
        (settings.bind_address, settings.secure_port), app, tls, auth.current, router, telemetry
    )
    metrics_server = (
        serve_metrics(metrics, settings.bind_address, settings.metrics_port)
        if settings.metrics_port is not None
        else None
    )
    _stop_on_signals(stop, log)

    def watch_stop() -> None:
        stop.wait()
        server.shutdown()

    threading.Thread(target=watch_stop, name="shutdown", daemon=True).start()
    poll_thread.start()
    auth_thread.start()
    if router is not None:
        threading.Thread(
            target=watch_owner,
            args=(router, telemetry, log, stop, settings.owner_check_seconds),
            name="apiservice-owner",
            daemon=True,
        ).start()
    log.info(
        "serving external metrics",
        address=settings.bind_address,
        port=server.port,
        metrics_port=metrics_server.server_port if metrics_server is not None else None,
        front_proxy_settings=source,
        front_proxy_loaded=auth.current() is not None,
        **poller.describe(),
    )
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        stop.set()
        server.server_close()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        poll_thread.join(timeout=5)
        client.close()
        log.info("stopped")
