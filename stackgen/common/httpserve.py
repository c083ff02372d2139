"""HTTP serving for the in-cluster processes: bounded connections, deadlines, JSON errors.

The standard library's ``ThreadingHTTPServer`` starts a thread per connection and then
waits on its socket for as long as the client likes: 200 half-open connections park 200
threads, and a client that trickles its headers a byte at a time (slowloris) holds its
thread for ever.  :class:`GuardedServer` adds three things:

* **A bound**: at most ``max_connections`` connections are served at once.  When all
  are taken, the accept loop waits a moment for one to end, then closes the newcomer:
  the threads stay bounded, and a flood waits in the kernel's listen backlog.
* **Deadlines**: a connection must deliver its request (TLS handshake, request line,
  headers, body) and be answered within ``request_seconds``; an idle keep-alive
  connection is closed after ``idle_seconds``.  One reaper thread closes connections
  past their deadline, so a client trickling bytes cannot stretch it (a per-read socket
  timeout alone would restart at every byte).
* **Logs**: failures are JSON lines through structlog (:mod:`.logs`), never the
  traceback ``socketserver`` prints on stderr; access lines go to the debug level.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from stackgen.common.logs import get_logger

__all__ = ["GuardedHandler", "GuardedServer"]

#: How long the accept loop waits for a free slot before closing a new connection.
ADMIT_WAIT = 1.0
#: How often the reaper looks for connections past their deadline.
REAP_EVERY = 0.2
#: Refusals are logged at most this often (a flood must not flood the log too).
REFUSAL_LOG_EVERY = 10.0


class _Guard:
    """Connection slots and deadlines, with the reaper thread that enforces them."""

    def __init__(self, max_connections: int) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self._deadlines: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._reaper: threading.Thread | None = None
        self.refused = 0
        self.reaped = 0

    def admit(self, conn: socket.socket, seconds: float) -> bool:
        """Take a slot for a new connection (waiting briefly); False when none came free."""
        if not self._slots.acquire(timeout=ADMIT_WAIT):
            self.refused += 1
            return False
        self.deadline(conn, seconds)
        with self._lock:
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap, name="http-reaper", daemon=True)
                self._reaper.start()
        return True

    def deadline(self, conn: socket.socket, seconds: float) -> None:
        """The connection is closed if it is still open ``seconds`` from now."""
        with self._lock:
            self._deadlines[conn] = time.monotonic() + seconds

    def leave(self, conn: socket.socket) -> None:
        """The connection ended: free its slot."""
        with self._lock:
            self._deadlines.pop(conn, None)
        self._slots.release()

    def close(self) -> None:
        """Stop the reaper (the server is closing)."""
        self._closed.set()

    def _reap(self) -> None:
        while not self._closed.wait(REAP_EVERY):
            now = time.monotonic()
            with self._lock:
                late = [c for c, at in self._deadlines.items() if at <= now]
                for conn in late:
                    del self._deadlines[conn]
            for conn in late:
                self.reaped += 1
                # The plain socket's shutdown, also for a TLS socket (whose own would drop
                # its TLS state under the thread still reading it): the read returns.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(conn, socket.SHUT_RDWR)


class GuardedServer(ThreadingHTTPServer):
    """A threading HTTP server with a connection bound, deadlines and JSON error logs."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        max_connections: int = 64,
        request_seconds: float = 10.0,
        idle_seconds: float = 60.0,
        log: Any = None,
        bind_and_activate: bool = True,
    ) -> None:
        self.max_connections = max_connections
        self.request_seconds = request_seconds
        self.idle_seconds = idle_seconds
        self.log = log if log is not None else get_logger()
        self.guard = _Guard(max_connections)
        self._last_refusal_log = -REFUSAL_LOG_EVERY
        super().__init__(address, handler, bind_and_activate)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection on its own thread if a slot is free, else close it."""
        if not self.guard.admit(request, self.request_seconds):
            self._log_refusal(client_address)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.guard.leave(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """The connection's thread (frees its slot when done)."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.guard.leave(request)

    def _log_refusal(self, client_address: Any) -> None:
        now = time.monotonic()
        if now - self._last_refusal_log >= REFUSAL_LOG_EVERY:
            self._last_refusal_log = now
            self.log.warning(
                "connection limit reached: closing new connections",
                max_connections=self.max_connections,
                refused_so_far=self.guard.refused,
                client=_client(client_address),
            )

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a failed connection: one JSON line, never a traceback on stderr.

        Expected failures (hang-ups, timeouts, TLS refusals) briefly; anything else with
        its traceback inside the line.
        """
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # hang-ups, timeouts, TLS refusals (ssl.SSLError)
            self.log.info(
                "connection dropped",
                client=_client(client_address),
                error=getattr(exc, "reason", None) or type(exc).__name__,
            )
            return
        self.log.exception("request handler crashed", client=_client(client_address))

    def server_close(self) -> None:
        """Close the listening socket and stop the reaper."""
        super().server_close()
        self.guard.close()


def _client(address: Any) -> str | None:
    return str(address[0]) if isinstance(address, tuple) and address else None


class GuardedHandler(BaseHTTPRequestHandler):
    """A request handler that keeps to its server's deadlines and logs through structlog."""

    server: GuardedServer

    def setup(self) -> None:
        """A per-read timeout as a backstop (the reaper enforces the deadlines)."""
        self._served = 0
        super().setup()
        self.connection.settimeout(max(self.server.request_seconds, self.server.idle_seconds))

    def handle_one_request(self) -> None:
        """Wait at most ``idle_seconds`` for a keep-alive connection's next request."""
        if self._served:
            guard, conn = self.server.guard, self.connection
            guard.deadline(conn, self.server.idle_seconds)
            try:
                if not self.rfile.peek(1):  # type: ignore[attr-defined]
                    self.close_connection = True
                    return
            except OSError:
                self.close_connection = True
                return
            guard.deadline(conn, self.server.request_seconds)
        super().handle_one_request()
        self._served += 1

    def log_message(self, format: str, *args: Any) -> None:
        """The standard library's request lines and errors, as debug JSON lines."""
        self.server.log.debug("http", message=format % args, client=_client(self.client_address))
