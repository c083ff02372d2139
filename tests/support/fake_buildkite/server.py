"""The fake Buildkite served over HTTP on 127.0.0.1, in a daemon thread.

:class:`FakeBuildkite` is the state (:mod:`.state`) with its controls (:mod:`.control`)
behind a standard-library HTTP server: each request is matched against the route table
(:mod:`.routes`), checked (the agent token, or a job-acquisition token for its job;
injected faults; the Stacks API's per-scope rate limits) and answered by its API module
with the lock held.  Every answer is recorded (never a header, so never a token).
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import math
import socket
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote

from tests.support.fake_buildkite.control import Control
from tests.support.fake_buildkite.routes import match_route
from tests.support.fake_buildkite.state import Fault, RequestRecord
from tests.support.fake_buildkite.wire import (
    JSON_TYPE,
    MAX_BODY_BYTES,
    ApiError,
    Ctx,
    Request,
    Response,
    Route,
    invalid_token_message,
    json_response,
    parse_body,
    presented_token,
    rate_limited_body,
)


class FakeBuildkite(Control):
    """A thread-safe, in-memory Buildkite agent API served over HTTP (127.0.0.1 by default).

    All state sits behind one lock. Time comes from ``clock`` (``time.time`` unless a
    ``VirtualClock`` is given): reservation and token expiry, rate-limit windows and the
    timestamps in responses and in the request log all read it::

        with FakeBuildkite(token="t0k3n", clock=VirtualClock()) as bk:
            bk.add_jobs("default", 3)
            ...  # point the code under test at bk.endpoint
    """

    # ------------------------------------------------------------------ lifecycle

    _server: _Server | None = None
    _thread: threading.Thread | None = None

    def __repr__(self) -> str:  # never shows the token
        state = self.url if self._server else "stopped"
        return f"<FakeBuildkite {state} org={self.organization_slug!r}>"

    def start(self) -> FakeBuildkite:
        """Bind (127.0.0.1 unless ``host`` says otherwise) and serve in a daemon thread."""
        if self._server is not None:
            return self
        server = _Server((self._host, self._port), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-buildkite-{server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection (idempotent)."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> FakeBuildkite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (only while running)."""
        if self._server is None:
            raise RuntimeError("FakeBuildkite is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (only while running; 127.0.0.1 when bound to every address)."""
        host = "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host
        return f"http://{host}:{self.port}"

    @property
    def endpoint(self) -> str:
        """The agent API endpoint, ``url + "/v3"``."""
        return self.url + "/v3"

    @property
    def advertised_endpoint(self) -> str:
        """The endpoint agents are told to use: ``advertise_url`` or the bound URL, + ``/v3``.

        Empty while not serving.
        """
        if self._server is None:
            return ""
        return (self._advertise_url or self.url) + "/v3"

    # ------------------------------------------------------------------ internals: HTTP

    def serve(self, req: Request) -> Response:
        """Answer one HTTP request (called from the server's handler threads)."""
        segments = [unquote(s) for s in req.raw_path.split("/")[1:]]
        if segments and segments[0] == "_fake":
            return self.admin(req, segments[1:])
        matched = match_route(req.method, segments)
        route, params = matched if matched else (None, {})
        scope = route.scope if route else None
        decoded_path = "/" + "/".join(segments)

        fault = self._take_fault(route.name if route else None, req.raw_path, decoded_path)
        if fault is not None and fault.kind == "slow":
            time.sleep(1.0 if fault.seconds is None else fault.seconds)
            fault = None
        if fault is not None and fault.kind != "truncated":
            resp = self._fault_response(fault, req, params, scope)
        else:
            resp = self._handle(req, route, params, scope)
            if fault is not None:  # truncated: the request was processed, the answer is cut
                body = resp.body or b'{"message": "cut short"}'
                resp.body = body[: max(1, len(body) // 2)]
                resp.status = 200 if resp.status == 204 else resp.status
                resp.headers["Content-Type"] = JSON_TYPE
        with self._lock:
            self._requests.append(
                RequestRecord(
                    req.method,
                    req.raw_path,
                    req.query,
                    route.name if route else None,
                    resp.status,
                    self._clock(),
                )
            )
        return resp

    def _take_fault(self, route: str | None, raw_path: str, decoded_path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining <= 0:
                    continue
                if fault.target.startswith("/"):
                    hit = raw_path.startswith(fault.target) or decoded_path.startswith(fault.target)
                else:
                    hit = fault.target == route
                if hit:
                    fault.remaining -= 1
                    self._faults = [f for f in self._faults if f.remaining > 0]
                    return fault
            return None

    def _fault_response(
        self, fault: Fault, req: Request, params: Mapping[str, str], scope: str | None
    ) -> Response:
        with self._lock:
            now = self._clock()
            headers = self._rate_headers(params.get("key", ""), scope, now) if scope else {}
        if fault.kind == "garbage":
            headers["Content-Type"] = JSON_TYPE
            return Response(200, b"<html><body>502 Bad Gateway</body></html>", headers)
        if fault.kind == "401":
            presented = presented_token(req.headers) or ""
            return json_response(401, {"message": invalid_token_message(presented)}, headers)
        if fault.kind == "429":
            reset = max(1, math.ceil(1.0 if fault.seconds is None else fault.seconds))
            name = scope or "default"
            limit = self._rate_limits[name]
            headers.update({"Retry-After": str(reset), "RateLimit-Remaining": "0"})
            headers["RateLimit-Reset"] = str(reset)
            return json_response(429, rate_limited_body(name, limit, limit + 1, reset), headers)
        if fault.kind == "500":
            return json_response(500, {"message": "Internal Server Error"}, headers)
        # "503"
        if fault.seconds is not None:
            headers["Retry-After"] = str(max(0, math.ceil(fault.seconds)))
        return json_response(503, {"message": "Organization is temporarily unavailable"}, headers)

    def _handle(
        self,
        req: Request,
        route: Route | None,
        params: dict[str, str],
        scope: str | None,
    ) -> Response:
        with self._lock:
            now = self._clock()
            headers: dict[str, str] = {}
            try:
                if route is None:
                    raise ApiError(404, "Not Found")
                self._check_auth(req, route, params, now)
                body = None if route.raw_body else parse_body(req.body)
                if scope is not None:
                    key = params.get("key")
                    if key is None:  # register: the key is in the body
                        key = str(body.get("key", "")) if isinstance(body, dict) else ""
                    headers = self._rate_limit(key, scope, now)
                self._expire(now)
                ctx = Ctx(req, params, parse_qs(req.query, keep_blank_values=True), body, now)
                resp = route.handler(self, ctx)
            except ApiError as err:
                if scope is not None and not headers:
                    headers = self._rate_headers(params.get("key", ""), scope, now)
                headers.update(err.headers)
                return json_response(err.status, err.payload, headers)
            for name, value in headers.items():
                resp.headers.setdefault(name, value)
            return resp

    def _check_auth(
        self, req: Request, route: Route, params: Mapping[str, str], now: float
    ) -> None:
        """The agent token, or another credential the route accepts (``Route.also_accepts``)."""
        presented = presented_token(req.headers)
        if presented is None:
            raise ApiError(401, "No agent token was provided in the Authorization header")
        if route.token_ok and hmac.compare_digest(presented.encode(), self._token.encode()):
            return
        if route.also_accepts is not None and route.also_accepts(self, presented, params, now):
            return
        if not route.token_ok:  # an agent's own calls: its access token or a job token
            raise ApiError(401, "The access token you provided is not valid for this request.")
        raise ApiError(401, invalid_token_message(presented))

    def _rate_headers(self, key: str, scope: str | None, now: float) -> dict[str, str]:
        if scope is None:
            return {}
        limit = self._rate_limits[scope]
        window = self._windows.setdefault((key, scope), collections.deque())
        while window and window[0] <= now - 1.0:
            window.popleft()
        reset = max(1, math.ceil(window[0] + 1.0 - now)) if window else 1
        return {
            "RateLimit-Scope": scope,
            "RateLimit-Limit": str(limit),
            "RateLimit-Remaining": str(max(0, limit - len(window))),
            "RateLimit-Reset": str(reset),
        }

    def _rate_limit(self, key: str, scope: str, now: float) -> dict[str, str]:
        headers = self._rate_headers(key, scope, now)
        window = self._windows[(key, scope)]
        limit = self._rate_limits[scope]
        if self._enforce_rate_limits and len(window) >= limit:
            reset = int(headers["RateLimit-Reset"])
            headers["Retry-After"] = str(reset)
            raise ApiError(
                429,
                "rate limited",
                body=rate_limited_body(scope, limit, len(window) + 1, reset),
                headers=headers,
            )
        window.append(now)
        return self._rate_headers(key, scope, now)


# --------------------------------------------------------------------------- HTTP server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    #: The listen backlog.  socketserver's default (5) overflows when a client opens dozens
    #: of connections at once (the dispatcher's concurrent calls in a fan-out): the dropped
    #: SYNs are resent after a second, which no real Buildkite endpoint would add.
    request_queue_size = 128
    fake: FakeBuildkite

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def track(self, conn: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            if open_:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that hang up; report anything else as usual."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """Unblock handler threads parked on idle keep-alive connections."""
        with self._connections_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Buildkite's clients expect
    server_version = "FakeBuildkite/1"
    sys_version = ""
    timeout = 30
    # Headers and body go out in separate writes; without TCP_NODELAY every keep-alive
    # answer would stall ~40 ms on Nagle's algorithm meeting the client's delayed ACK.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def _read_chunked(self) -> bytes | None:
        """A ``Transfer-Encoding: chunked`` body (Go sends empty POST bodies so); None if bad."""
        body = bytearray()
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                return None
            if size < 0 or len(body) + size > MAX_BODY_BYTES:
                return None
            if size == 0:
                break
            body += self.rfile.read(size)
            if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                return None
        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):  # trailer fields
            pass
        return bytes(body)

    def _dispatch(self) -> None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunked = self._read_chunked()
            if chunked is None:
                self.close_connection = True
                resp = json_response(400, {"message": "malformed chunked request body"})
                self.send_response(resp.status)
                self.send_header("Content-Type", JSON_TYPE)
                self.send_header("Content-Length", str(len(resp.body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(resp.body)
                return
            body = chunked
        else:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
        raw_path, _, query = self.path.partition("?")
        headers = {name.lower(): value for name, value in self.headers.items()}
        request = Request(self.command, raw_path, query, headers, body)
        try:
            resp = self.server.fake.serve(request)
        except Exception as err:  # a bug in the fake: answer visibly, never just hang up
            traceback.print_exc()
            resp = json_response(500, {"message": f"fake Buildkite crashed: {err!r}"})
        self.send_response(resp.status)
        for name, value in resp.headers.items():
            self.send_header(name, value)
        if resp.status != 204:
            self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if resp.body and resp.status != 204:
            self.wfile.write(resp.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: a request line never reaches a log (and headers never do)."""
