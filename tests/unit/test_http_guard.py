"""The dispatcher's and the metrics adapter's HTTP servers against hostile clients, over
real sockets on 127.0.0.1: half-open connections, slowloris headers, oversized bodies,
and a handler that crashes (a JSON log line, never a traceback on stderr)."""

from __future__ import annotations

import contextlib
import io
import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stackgen.adapter.api import AdapterAPI
from stackgen.adapter.server import AdapterServer
from stackgen.adapter.store import MetricStore
from stackgen.adapter.tls import ServerTLS
from stackgen.common import logs
from stackgen.dispatcher.metrics import Metrics
from stackgen.dispatcher.server import Endpoint, Server

LIMIT = 8
DEADLINE = 1.0


@pytest.fixture
def log_stream() -> io.StringIO:
    stream = io.StringIO()
    logs.configure("debug", stream=stream, component="dispatcher")
    return stream


def endpoint(healthy: bool = True, crash: bool = False) -> Endpoint:
    def health() -> bool:
        if crash:
            raise RuntimeError("a bug in a probe")
        return healthy

    return Endpoint(
        Metrics(),
        healthy=health,
        ready=lambda: True,
        trigger=lambda queues: None,
        is_leader=lambda: True,
        leader_endpoint=lambda: None,
        webhook_token="webhook-token-abcdef",
        max_signature_age=300,
        log=logs.get_logger(),
    )


@pytest.fixture
def server(log_stream: io.StringIO) -> Iterator[Server]:
    served = Server(
        endpoint(), "127.0.0.1", 0, max_connections=LIMIT, request_seconds=DEADLINE
    ).start()
    yield served
    served.stop()


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes the connection within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


def test_half_open_connections_are_bounded_and_closed_at_their_deadline(
    server: Server,
) -> None:
    threads_before = threading.active_count()
    clients = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(5 * LIMIT)]
    try:
        time.sleep(DEADLINE / 2)
        # At most LIMIT connection threads (+ the reaper), not one per connection.
        assert threading.active_count() - threads_before <= LIMIT + 1
        assert all(closed_by_server(c, within=10) for c in clients)
    finally:
        for client in clients:
            client.close()
    response = httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
    assert response.status_code == 200


def test_a_slowloris_client_is_cut_off_at_the_request_deadline(server: Server) -> None:
    client = socket.create_connection(("127.0.0.1", server.port))
    try:
        client.sendall(b"GET /healthz HTTP/1.0\r\n")
        started = time.monotonic()
        cut = False
        while time.monotonic() - started < 15 and not cut:
            try:
                client.sendall(b"X-Slow: 1\r\n")  # a header line every 0.2 s, for ever
            except OSError:
                cut = True
                break
            readable, _, _ = select.select([client], [], [], 0.2)
            if readable:
                cut = closed_by_server(client, within=0.1)
        assert cut, "a client trickling headers kept its connection (and thread)"
    finally:
        client.close()


def test_an_oversized_body_is_refused_without_reading_it(server: Server) -> None:
    client = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        client.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n")
        assert client.recv(1024).startswith(b"HTTP/1.0 413")
    finally:
        client.close()


def test_a_crashing_handler_is_one_json_log_line_not_a_traceback_on_stderr(
    log_stream: io.StringIO, capfd: pytest.CaptureFixture[str]
) -> None:
    served = Server(endpoint(crash=True), "127.0.0.1", 0).start()
    try:
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{served.port}/healthz", timeout=5)
    finally:
        served.stop()
    assert "Traceback" not in capfd.readouterr().err
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    (crash,) = [line for line in lines if line["event"] == "request handler crashed"]
    assert "a bug in a probe" in crash["exception"]


# ------------------------------------------------------------------- the metrics adapter


@pytest.fixture
def adapter(tmp_path: Path, log_stream: io.StringIO) -> Iterator[AdapterServer]:
    tls = ServerTLS(tmp_path / "tls.crt", tmp_path / "tls.key", lambda: None)
    served = AdapterServer(
        ("127.0.0.1", 0),
        AdapterAPI(MetricStore(["default"])),
        tls,
        lambda: None,
        max_connections=LIMIT,
        request_seconds=DEADLINE,
        idle_seconds=DEADLINE,
    )
    thread = threading.Thread(target=served.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield served
    served.shutdown()
    served.server_close()
    thread.join(5)


@contextlib.contextmanager
def tls_connection(adapter: AdapterServer) -> Iterator[ssl.SSLSocket]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", adapter.port), timeout=10)
    with context.wrap_socket(raw) as tls:
        yield tls


def test_adapter_connections_that_never_handshake_are_bounded_and_closed(
    adapter: AdapterServer,
) -> None:
    threads_before = threading.active_count()
    clients = [socket.create_connection(("127.0.0.1", adapter.port)) for _ in range(3 * LIMIT)]
    try:
        time.sleep(DEADLINE / 2)
        assert threading.active_count() - threads_before <= LIMIT + 1
        assert all(closed_by_server(c, within=15) for c in clients)
    finally:
        for client in clients:
            client.close()
    with tls_connection(adapter) as tls:
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert tls.recv(1024).startswith(b"HTTP/1.1 ")


def test_adapter_idle_keep_alive_connections_are_closed(adapter: AdapterServer) -> None:
    with tls_connection(adapter) as tls:
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert tls.recv(4096).startswith(b"HTTP/1.1 ")
        tls.settimeout(15)  # idle: the server closes it after DEADLINE (a timeout fails)
        try:
            rest = tls.recv(4096)
            while rest:  # the rest of the first answer, then the end
                rest = tls.recv(4096)
        except (ConnectionError, ssl.SSLError):
            pass
