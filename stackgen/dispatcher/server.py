"""The dispatcher's HTTP endpoint: /metrics, /healthz, /readyz and /webhook.

Webhooks reaching a replica that is not the leader are passed on to the leader (its
address is on the Lease), so a Service in front of all replicas loses none; when that
fails the delivery is still answered 202: polling picks the job up anyway.

The server is a :class:`~stackgen.common.httpserve.GuardedServer`: at most
:data:`MAX_CONNECTIONS` connections at once, each with :data:`REQUEST_SECONDS` to send
its request, bodies over :data:`MAX_BODY` refused unread, errors logged as JSON.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stackgen.common.httpserve import GuardedHandler, GuardedServer
from stackgen.dispatcher import webhook
from stackgen.dispatcher.metrics import Metrics

MAX_BODY = 1024 * 1024
#: Connections served at once (probes, scrapes, webhooks: all short).
MAX_CONNECTIONS = 64
#: A connection has this long to send its whole request.
REQUEST_SECONDS = 10.0


class Endpoint:
    """What the HTTP handlers need from the rest of the process."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        healthy: Callable[[], bool],
        ready: Callable[[], bool],
        trigger: Callable[[tuple[str, ...]], None],
        is_leader: Callable[[], bool],
        leader_endpoint: Callable[[], str | None],
        webhook_token: str | None,
        max_signature_age: float,
        clock: Callable[[], float] = time.time,
        log: Any = None,
    ) -> None:
        self.metrics = metrics
        self.healthy = healthy
        self.ready = ready
        self.trigger = trigger
        self.is_leader = is_leader
        self.leader_endpoint = leader_endpoint
        self.webhook_token = webhook_token
        self.max_signature_age = max_signature_age
        self.clock = clock
        self.log = log
        self.replays = webhook.ReplayGuard(max_signature_age)

    def handle_webhook(self, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        """Verify and act on one delivery; returns (HTTP status, message)."""
        if not self.webhook_token:
            self.metrics.webhooks.labels("disabled").inc()
            return 404, "webhook not enabled"
        try:
            webhook.verify(
                headers, body, self.webhook_token, now=self.clock(), max_age=self.max_signature_age
            )
        except webhook.WebhookRejected as exc:
            self.metrics.webhooks.labels("rejected").inc()
            if self.log is not None:
                self.log.warning("webhook rejected", reason=str(exc))
            return 401, "unauthorized"
        if not self.replays.first_time(headers, self.clock()):
            self.metrics.webhooks.labels("replayed").inc()
            if self.log is not None:
                self.log.warning("webhook replayed: a signature already used, dropped")
            return 200, "duplicate delivery ignored"
        try:
            event = webhook.parse(headers, body)
        except ValueError:
            self.metrics.webhooks.labels("malformed").inc()
            return 400, "malformed body"
        if event.event != "job.scheduled":
            self.metrics.webhooks.labels("ignored").inc()
            return 202, "ignored"
        if self.is_leader():
            self.trigger(event.queues)
            self.metrics.webhooks.labels("accepted").inc()
        else:
            self._forward(headers, body)
        if self.log is not None:
            self.log.info(
                "webhook",
                source=event.source,
                queues=list(event.queues),
                buildkite_job=event.job_uuid,
            )
        return 202, "accepted"

    def _forward(self, headers: dict[str, str], body: bytes) -> None:
        target = self.leader_endpoint()
        if not target:
            self.metrics.webhooks.labels("no-leader").inc()
            return
        import httpx

        keep = {
            k: v
            for k, v in headers.items()
            if k.lower()
            in ("x-buildkite-token", "x-buildkite-signature", "x-buildkite-event", "content-type")
        }
        try:
            httpx.post(f"{target.rstrip('/')}/webhook", content=body, headers=keep, timeout=2.0)
            self.metrics.webhooks.labels("forwarded").inc()
        except httpx.HTTPError:
            self.metrics.webhooks.labels("forward-failed").inc()


def make_handler(endpoint: Endpoint) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``endpoint``."""

    class Handler(GuardedHandler):
        disable_nagle_algorithm = True  # answers are small: do not wait for delayed ACKs
        server_version = "stackgen-dispatcher"
        sys_version = ""

        def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(endpoint.metrics.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok = endpoint.healthy()
                self._send(200 if ok else 503, b"ok\n" if ok else b"unhealthy\n")
            elif path == "/readyz":
                ok = endpoint.ready()
                self._send(200 if ok else 503, b"ok\n" if ok else b"not ready\n")
            else:
                self._send(404, b"not found\n")

        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] != "/webhook":
                self._send(404, b"not found\n")
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY:
                self.close_connection = True  # the body is never read
                self._send(413, b"body too large\n")
                return
            body = self.rfile.read(length)
            status, message = endpoint.handle_webhook(dict(self.headers.items()), body)
            self._send(status, (message + "\n").encode())

    return Handler


class Server:
    """The HTTP server, in a daemon thread."""

    def __init__(
        self,
        endpoint: Endpoint,
        host: str,
        port: int,
        *,
        max_connections: int = MAX_CONNECTIONS,
        request_seconds: float = REQUEST_SECONDS,
    ) -> None:
        self.httpd = GuardedServer(
            (host, port),
            make_handler(endpoint),
            max_connections=max_connections,
            request_seconds=request_seconds,
            idle_seconds=request_seconds,  # HTTP/1.0: one request per connection
            log=endpoint.log,
        )
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self.httpd.server_address[1])

    def start(self) -> Server:
        """Start serving."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()
