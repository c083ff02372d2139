"""The adapter's TLS: its serving certificate and the client-certificate check.

The server context asks every client for a certificate (``CERT_OPTIONAL``) and verifies one
that is presented against the request-header CA only (no system CAs), for TLS client use:
OpenSSL checks the chain, the validity period and the ``clientAuth`` purpose during the
handshake, and a certificate that fails any of them ends the connection right there.  A
client without a certificate gets through the handshake so the kubelet's probes can reach
``/healthz`` and ``/readyz``; every other path then requires the verified certificate
(:func:`stackgen.adapter.auth.authenticate`).

The context is rebuilt when the serving certificate files change on disk (cert-manager
rotation) or the request-header settings change; connections already open keep theirs.
"""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from stackgen.adapter.auth import RequestHeaderConfig
from stackgen.common.certs import self_signed_pair

__all__ = ["ServerTLS", "self_signed_pair"]


def _stat(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ServerTLS:
    """Builds (and rebuilds) the server's ``ssl.SSLContext``."""

    def __init__(
        self,
        cert_file: Path | None,
        key_file: Path | None,
        auth: Callable[[], RequestHeaderConfig | None],
        *,
        self_signed_names: list[str] | None = None,
        check_every: float = 1.0,
    ) -> None:
        """Serve ``cert_file``/``key_file``, or a self-signed pair when both are absent.

        Raises:
            ValueError: only one of the two files exists.

        """
        self._cert_file = cert_file
        self._key_file = key_file
        self._auth = auth
        self._check_every = check_every
        self._lock = threading.Lock()
        self._context: ssl.SSLContext | None = None
        self._key: object = None
        self._checked = 0.0
        have_cert = cert_file is not None and cert_file.exists()
        have_key = key_file is not None and key_file.exists()
        if have_cert != have_key:
            missing = key_file if have_cert else cert_file
            raise ValueError(f"{missing}: missing (the certificate and key come as a pair)")
        self.self_signed = not have_cert
        self._self_signed_pem: tuple[bytes, bytes] | None = None
        if self.self_signed:
            self._self_signed_pem = self_signed_pair(self_signed_names or ["localhost"])

    def _state_key(self) -> object:
        config = self._auth()
        files = None
        if not self.self_signed:
            assert self._cert_file is not None and self._key_file is not None
            files = (_stat(self._cert_file), _stat(self._key_file))
        return (files, config.fingerprint if config else None)

    def _build(self, config: RequestHeaderConfig | None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        if self.self_signed:
            assert self._self_signed_pem is not None
            cert_pem, key_pem = self._self_signed_pem
            # load_cert_chain reads files only: a private temp dir, removed at once.
            with tempfile.TemporaryDirectory(prefix="stackgen-tls-") as tmp:
                cert_path, key_path = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
                cert_path.write_bytes(cert_pem)
                fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(key_pem)
                ctx.load_cert_chain(cert_path, key_path)
        else:
            ctx.load_cert_chain(str(self._cert_file), str(self._key_file))
        if config is not None:
            ctx.verify_mode = ssl.CERT_OPTIONAL
            ctx.load_verify_locations(cadata=config.client_ca)
        return ctx

    def context(self) -> ssl.SSLContext:
        """The current context (checks the files at most once per ``check_every``)."""
        with self._lock:
            now = time.monotonic()
            if self._context is not None and now - self._checked < self._check_every:
                return self._context
            self._checked = now
            try:
                key = self._state_key()
            except OSError:
                if self._context is not None:  # a rotation in progress: keep serving
                    return self._context
                raise
            if self._context is None or key != self._key:
                self._context = self._build(self._auth())
                self._key = key
            return self._context

    def invalidate(self) -> None:
        """Rebuild on next use (the request-header settings changed)."""
        with self._lock:
            self._checked = 0.0

    def wrap(self, sock: socket.socket) -> ssl.SSLSocket:
        """Wrap an accepted connection; the handshake happens later, in its own thread."""
        return self.context().wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
