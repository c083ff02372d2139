"""Who may call the adapter: only the Kubernetes API aggregator (front proxy).

The aggregator (kube-apiserver) authenticates and authorizes the real caller (the HPA
controller, ``kubectl get --raw``), then proxies the request over TLS with its own client
certificate (``--proxy-client-cert-file``) and the caller's identity in request headers
(``X-Remote-User``, ``X-Remote-Group``, ``X-Remote-Extra-*``).  An aggregated API server
trusts those headers only from a client certificate that

1. verifies against the request-header CA (``--requestheader-client-ca-file``), for TLS
   client use (extended key usage ``clientAuth``), within its validity period, and
2. whose Common Name is one of ``--requestheader-allowed-names`` (an empty list allows any
   name the CA signed, as in Kubernetes),

and then takes the user from the first non-empty username header.  This module is the pure
part of that check; the TLS handshake itself (step 1) happens in :mod:`.tls`.

The request-header settings come from the ConfigMap ``kube-system/extension-apiserver-
authentication`` (kube-apiserver publishes them there) or, for tests and unusual set-ups,
from files and flags.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

__all__ = [
    "AUTH_CONFIGMAP",
    "AuthConfigError",
    "AuthConfigProvider",
    "RequestHeaderConfig",
    "Unauthenticated",
    "User",
    "authenticate",
    "kubernetes_configmap_reader",
]

#: (namespace, name) of the ConfigMap kube-apiserver publishes its front-proxy settings in.
AUTH_CONFIGMAP = ("kube-system", "extension-apiserver-authentication")

_KEYS = {
    "ca": "requestheader-client-ca-file",
    "allowed": "requestheader-allowed-names",
    "user": "requestheader-username-headers",
    "group": "requestheader-group-headers",
    "extra": "requestheader-extra-headers-prefix",
    "uid": "requestheader-uid-headers",
}


class AuthConfigError(Exception):
    """The request-header settings are missing or unusable: nobody can be authenticated."""


class Unauthenticated(Exception):
    """The request did not come from the aggregator (the message says which check failed)."""


@dataclass(frozen=True)
class User:
    """The caller the aggregator vouches for."""

    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def _pem_certificates(pem: str, where: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except ValueError as exc:
        raise AuthConfigError(f"{where}: not a PEM certificate bundle: {exc}") from exc
    if not certs:
        raise AuthConfigError(f"{where}: holds no certificate")
    return certs


def _json_list(data: Mapping[str, str], key: str, where: str) -> tuple[str, ...]:
    raw = data.get(key)
    if raw is None or raw == "":
        return ()
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise AuthConfigError(f"{where}: {key} is not a JSON list") from exc
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AuthConfigError(f"{where}: {key} is not a JSON list of strings")
    return tuple(v for v in value if v)


@dataclass(frozen=True)
class RequestHeaderConfig:
    """The front-proxy trust settings (``--requestheader-*`` of kube-apiserver)."""

    client_ca: str
    allowed_names: tuple[str, ...]
    username_headers: tuple[str, ...]
    group_headers: tuple[str, ...] = ()
    extra_headers_prefixes: tuple[str, ...] = ()
    uid_headers: tuple[str, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        _pem_certificates(self.client_ca, self.source or "request-header CA")
        if not self.username_headers:
            raise AuthConfigError(
                f"{self.source or 'request-header settings'}: no username header configured"
            )

    @property
    def fingerprint(self) -> str:
        """Changes whenever anything that affects authentication changes."""
        text = json.dumps(
            [
                self.client_ca,
                self.allowed_names,
                self.username_headers,
                self.group_headers,
                self.extra_headers_prefixes,
                self.uid_headers,
            ]
        )
        return hashlib.sha256(text.encode()).hexdigest()

    @classmethod
    def from_configmap(cls, data: Mapping[str, str]) -> RequestHeaderConfig:
        """Read ``extension-apiserver-authentication``'s data (values are JSON lists)."""
        where = "ConfigMap {}/{}".format(*AUTH_CONFIGMAP)
        ca = data.get(_KEYS["ca"])
        if not ca:
            raise AuthConfigError(
                f"{where} has no {_KEYS['ca']}: kube-apiserver runs without "
                "--requestheader-client-ca-file, so no request can be verified as coming "
                "from the aggregator"
            )
        return cls(
            client_ca=ca,
            allowed_names=_json_list(data, _KEYS["allowed"], where),
            username_headers=_json_list(data, _KEYS["user"], where),
            group_headers=_json_list(data, _KEYS["group"], where),
            extra_headers_prefixes=_json_list(data, _KEYS["extra"], where),
            uid_headers=_json_list(data, _KEYS["uid"], where),
            source=where,
        )

    @classmethod
    def from_files(
        cls,
        client_ca_file: str,
        *,
        allowed_names: Sequence[str] = (),
        username_headers: Sequence[str] = ("X-Remote-User",),
        group_headers: Sequence[str] = ("X-Remote-Group",),
        extra_headers_prefixes: Sequence[str] = ("X-Remote-Extra-",),
        uid_headers: Sequence[str] = ("X-Remote-Uid",),
    ) -> RequestHeaderConfig:
        """Settings given as flags (``--requestheader-client-ca-file`` and friends)."""
        try:
            with open(client_ca_file, encoding="utf-8") as fh:
                ca = fh.read()
        except OSError as exc:
            raise AuthConfigError(f"{client_ca_file}: {exc.strerror or exc}") from exc
        return cls(
            client_ca=ca,
            allowed_names=tuple(n for n in allowed_names if n),
            username_headers=tuple(h for h in username_headers if h),
            group_headers=tuple(h for h in group_headers if h),
            extra_headers_prefixes=tuple(h for h in extra_headers_prefixes if h),
            uid_headers=tuple(h for h in uid_headers if h),
            source=client_ca_file,
        )


def common_name(peer_cert: Mapping[str, Any]) -> str | None:
    """The single Common Name of a certificate as ``ssl.getpeercert()`` returns it."""
    names = [
        value for rdn in peer_cert.get("subject", ()) for key, value in rdn if key == "commonName"
    ]
    return names[0] if len(names) == 1 else None


def authenticate(
    config: RequestHeaderConfig | None,
    peer_cert: Mapping[str, Any] | None,
    headers: Mapping[str, Sequence[str]],
) -> User:
    """Check a request that passed the TLS handshake; return the user it is made for.

    Args:
        config: the request-header settings (None: not loaded; everything is refused).
        peer_cert: ``ssl.SSLSocket.getpeercert()``: None or empty without a verified
            client certificate (the handshake already verified chain, validity and usage).
        headers: request headers, names lower-cased, every value of repeated headers.

    Raises:
        Unauthenticated: with the check that failed.

    """
    if config is None:
        raise Unauthenticated("front-proxy settings not loaded: refusing every request")
    if not peer_cert:
        raise Unauthenticated("no client certificate verified by the request-header CA")
    cn = common_name(peer_cert)
    if cn is None:
        raise Unauthenticated("client certificate has no single Common Name")
    if config.allowed_names and cn not in config.allowed_names:
        raise Unauthenticated(f"client certificate CN {cn!r} is not in requestheader-allowed-names")
    name = ""
    for header in config.username_headers:
        values = headers.get(header.lower(), ())
        if values and values[0]:
            name = values[0]
            break
    if not name:
        raise Unauthenticated("no user in the username headers")
    uid = ""
    for header in config.uid_headers:
        values = headers.get(header.lower(), ())
        if values and values[0]:
            uid = values[0]
            break
    groups = tuple(v for h in config.group_headers for v in headers.get(h.lower(), ()) if v)
    extra: dict[str, tuple[str, ...]] = {}
    for prefix in config.extra_headers_prefixes:
        low = prefix.lower()
        for header, values in headers.items():
            if header.startswith(low) and len(header) > len(low):
                key = urllib.parse.unquote(header[len(low) :]).lower()
                extra[key] = extra.get(key, ()) + tuple(values)
    return User(name=name, uid=uid, groups=groups, extra=extra)


class AuthConfigProvider:
    """Holds the current request-header settings and reloads them periodically.

    A failed reload keeps the last good settings (a brief API outage must not lock the
    aggregator out); before the first success there are none and every request is refused.
    """

    def __init__(
        self,
        load: Callable[[], RequestHeaderConfig],
        *,
        refresh_seconds: float = 300.0,
        retry_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self.refresh_seconds = refresh_seconds
        self.retry_seconds = retry_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._config: RequestHeaderConfig | None = None
        self.error: str | None = None
        self.loaded_at: float | None = None

    def current(self) -> RequestHeaderConfig | None:
        """The settings in force (None before the first successful load)."""
        with self._lock:
            return self._config

    def refresh(self) -> bool:
        """Load the settings now; True on success."""
        try:
            config = self._load()
        except AuthConfigError as exc:
            message = str(exc)
        except Exception as exc:  # the Kubernetes API: network, RBAC, anything
            message = f"cannot read the front-proxy settings: {type(exc).__name__}: {exc}"
        else:
            with self._lock:
                self._config = config
                self.error = None
                self.loaded_at = self._clock()
            return True
        with self._lock:
            self.error = message
        return False

    def run(self, stop: threading.Event, on_change: Callable[[], None] | None = None) -> None:
        """Reload until ``stop`` is set: every refresh_seconds, sooner while failing.

        Call :meth:`refresh` once before (at start-up); this loop waits first.
        """
        while True:
            failing = self.error is not None or self.current() is None
            if stop.wait(self.retry_seconds if failing else self.refresh_seconds):
                return
            before = self.current()
            self.refresh()
            after = self.current()
            changed = (before is None) != (after is None) or (
                before is not None and after is not None and before.fingerprint != after.fingerprint
            )
            if changed and on_change is not None:
                with contextlib.suppress(Exception):
                    on_change()


def kubernetes_configmap_reader(kubeconfig: str | None = None) -> Callable[[], dict[str, str]]:
    """Read ``kube-system/extension-apiserver-authentication`` with the official client.

    Uses the pod's ServiceAccount in a cluster, else ``kubeconfig`` (or the default
    kubeconfig).  The ServiceAccount needs the ``extension-apiserver-authentication-reader``
    Role in kube-system (the stack's kube-system RoleBinding grants it).
    """
    from kubernetes import client, config  # heavy: imported only when used

    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
    api = client.CoreV1Api(client.ApiClient(configuration))
    namespace, name = AUTH_CONFIGMAP

    def read() -> dict[str, str]:
        configmap = api.read_namespaced_config_map(name, namespace, _request_timeout=10)
        return dict(configmap.data or {})

    return read
