"""The pieces a real HPA needs around a local control plane, shared by the HPA e2e test
(tests/e2e/test_hpa.py) and the HPA rows of bench/e2e.

kube-apiserver runs here as a local process, so it cannot reach an adapter Service by a
ClusterIP, and an APIService may not point at 127.0.0.1 (Endpoints refuse loopback
addresses).  So:

* :func:`front_proxy_pki` makes a request-header CA and the aggregator's client
  certificate, and :func:`front_proxy_flags` the kube-apiserver flags that use them (with
  ``--enable-aggregator-routing``: the aggregator dials the Service's Endpoints address);
* :class:`Netns` is a network namespace joined to the host by a veth pair: the adapter
  runs in it as a real ``stackgen metrics-adapter`` process, at the address the
  Endpoints name (:func:`adapter_objects`);
* :class:`Relay` lets the adapter reach the fake Buildkite and kube-apiserver, which
  listen on 127.0.0.1 only;
* :class:`AdapterProcess` starts the adapter with its ServiceAccount's token.

Creating a network namespace needs root and ``ip``.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.x509.oid import ExtendedKeyUsageOID

from stackgen.common import certs
from tests.support.cluster import KWOK_STAGES, STATE_ROOT, Cluster, start, stop

ADAPTER = "stackgen-metrics-adapter"
ADAPTER_PORT = 6443
FRONT_PROXY_CLIENT = "front-proxy-client"


def _run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


# ---------------------------------------------------------------------------- front proxy


def front_proxy_pki(folder: Path) -> dict[str, Path]:
    """A request-header CA and the aggregator's client certificate, written to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca, ca_key = certs.make_ca(
        "stackgen e2e front-proxy CA",
        not_before=now - dt.timedelta(days=1),
        not_after=now + dt.timedelta(days=30),
    )
    leaf, leaf_key = certs.make_leaf(
        ca,
        ca_key,
        FRONT_PROXY_CLIENT,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        not_before=now - dt.timedelta(days=1),
        not_after=now + dt.timedelta(days=10),
    )
    paths = {
        "ca": folder / "front-proxy-ca.crt",
        "cert": folder / "front-proxy-client.crt",
        "key": folder / "front-proxy-client.key",
    }
    certs.write_pems(paths, ca, leaf, leaf_key)
    return paths


def front_proxy_flags(pki: dict[str, Path]) -> dict[str, str]:
    """kube-apiserver flags (without ``--``) for aggregated APIs behind a front proxy."""
    return {
        "requestheader-client-ca-file": str(pki["ca"]),
        "requestheader-allowed-names": FRONT_PROXY_CLIENT,
        "requestheader-username-headers": "X-Remote-User",
        "requestheader-group-headers": "X-Remote-Group",
        "requestheader-extra-headers-prefix": "X-Remote-Extra-",
        "proxy-client-cert-file": str(pki["cert"]),
        "proxy-client-key-file": str(pki["key"]),
        "enable-aggregator-routing": "true",
    }


def kwokctl_patch(components: dict[str, dict[str, str]]) -> str:
    """A KwokctlConfiguration adding flags to control-plane components (``bin/up --kwok-config``)."""
    patches = [
        {
            "name": name,
            "extraArgs": [{"key": k, "value": v} for k, v in flags.items()],
        }
        for name, flags in components.items()
    ]
    return yaml.safe_dump(
        {
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
            "kind": "KwokctlConfiguration",
            "componentsPatches": patches,
        },
        sort_keys=False,
    )


@dataclass
class FrontProxyCluster:
    """A kwok cluster whose kube-apiserver proxies aggregated APIs with a front-proxy cert."""

    cluster: Cluster
    pki: Path

    @property
    def apiserver(self) -> tuple[str, int]:
        cfg = yaml.safe_load(self.cluster.kubeconfig.read_text())
        server = cfg["clusters"][0]["cluster"]["server"]
        host, _, port = server.removeprefix("https://").rpartition(":")
        return host, int(port)

    @property
    def ca_file(self) -> Path:
        cfg = yaml.safe_load(self.cluster.kubeconfig.read_text())
        return Path(cfg["clusters"][0]["cluster"]["certificate-authority"])


@contextlib.contextmanager
def front_proxy_cluster(name: str, hpa_sync: str) -> Iterator[FrontProxyCluster]:
    """A cluster (bin/up's way) with a front proxy, aggregator routing and a fast HPA sync.

    Raises tests.support.cluster.ClusterError when it does not start.
    """
    work = STATE_ROOT / name  # bin/up's state folder of the cluster: bin/down removes it
    work.mkdir(parents=True, exist_ok=True)
    patch = work / "kwokctl-front-proxy.yaml"
    patch.write_text(
        kwokctl_patch(
            {
                "kube-apiserver": front_proxy_flags(front_proxy_pki(work / "pki")),
                "kube-controller-manager": {"horizontal-pod-autoscaler-sync-period": hpa_sync},
            }
        )
    )

    def cleanup() -> None:
        stop(name, STATE_ROOT)

    atexit.register(cleanup)
    try:
        started = time.monotonic()
        cl = start(name, nodes=2, kwok_configs=[KWOK_STAGES, patch])
        print(f"\ncluster {name} (front proxy) up in {time.monotonic() - started:.1f}s")
        yield FrontProxyCluster(cl, work / "pki")
    finally:
        cleanup()
        atexit.unregister(cleanup)


# ---------------------------------------------------------------------------- network


@dataclass
class Netns:
    """A network namespace joined to the host by a veth pair; the adapters' own host.

    ``ns_ip`` is its first address; ``extra_ips`` more addresses on the same link (one
    adapter each, when a test runs several stacks: they reach each other directly).
    """

    name: str
    host_if: str
    host_ip: str
    ns_ip: str
    extra_ips: tuple[str, ...] = ()

    @classmethod
    def create(cls, prefix: str, *, extra: int = 0, offset: int = 0) -> Netns:
        """``offset`` picks another /29 (198.18.N.0) than a sibling test's namespace."""
        assert extra <= 4, "a /29 has room for five addresses in the namespace"
        pid = os.getpid()
        name = f"{prefix}{pid}"
        third = (pid + offset) % 250 + 1
        base = f"198.18.{third}"
        ns = cls(
            name,
            f"{name}h"[:15],
            f"{base}.1",
            f"{base}.2",
            tuple(f"{base}.{3 + i}" for i in range(extra)),
        )
        peer = f"{name}n"[:15]
        used = _run("ip", "-o", "-4", "addr", "show")
        if ns.host_ip + "/" in used:
            raise AssertionError(f"{ns.host_ip} is already in use on this host")
        _run("ip", "netns", "add", name)
        try:
            _run("ip", "link", "add", ns.host_if, "type", "veth", "peer", "name", peer)
            _run("ip", "link", "set", peer, "netns", name)
            _run("ip", "addr", "add", f"{ns.host_ip}/29", "dev", ns.host_if)
            _run("ip", "link", "set", ns.host_if, "up")
            for address in (ns.ns_ip, *ns.extra_ips):
                _run("ip", "-n", name, "addr", "add", f"{address}/29", "dev", peer)
            _run("ip", "-n", name, "link", "set", peer, "up")
            _run("ip", "-n", name, "link", "set", "lo", "up")
        except BaseException:
            ns.delete()
            raise
        return ns

    def delete(self) -> None:
        """Remove the namespace (its veth end goes with it, and so does the host's)."""
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, check=False)

    def argv(self, *argv: str) -> list[str]:
        """Run a command inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]


def reap_netns(prefix: str, orphaned: Callable[[Iterable[str], str], list[str]]) -> None:
    """Delete namespaces named ``prefix<pid>`` whose process is gone (a killed run's)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    names = [line.split()[0] for line in listed.stdout.splitlines() if line.split()]
    for name in orphaned(names, prefix):
        Netns(name, f"{name}h"[:15], "", "").delete()


class Relay:
    """A TCP relay from ``listen`` to ``target`` that accepts the given peer addresses only."""

    def __init__(
        self, listen: tuple[str, int], target: tuple[str, int], peer: str | Iterable[str]
    ) -> None:
        self.target = target
        self.peers = {peer} if isinstance(peer, str) else set(peer)
        self._server = socket.create_server(listen)
        self.port = int(self._server.getsockname()[1])
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name=f"relay-{self.port}").start()

    def _accept(self) -> None:
        while True:
            try:
                client, addr = self._server.accept()
            except OSError:
                return
            if addr[0] not in self.peers:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop accepting and cut every relayed connection."""
        with self._lock:
            self._closed = True
            conns = list(self._conns)
        self._server.close()
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


# ---------------------------------------------------------------------------- the adapter


def stackgen_build(overlay: Path) -> list[dict[str, Any]]:
    """``stackgen build OVERLAY`` in a fresh process: the objects it printed."""
    proc = subprocess.run(
        [sys.executable, "-m", "stackgen", "build", str(overlay)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    if proc.returncode != 0:
        raise AssertionError(f"stackgen build failed: {proc.stderr.strip()}")
    return [o for o in yaml.safe_load_all(proc.stdout) if o]


def adapter_tls(overlay: Path, namespace: str) -> dict[str, str]:
    """Make the adapter's CA and serving certificate in ``overlay``/secrets/metrics-adapter;
    return the stack.yaml ``metricsAdapter.tls`` that names them."""
    certs.generate_adapter_certs(namespace, overlay / "secrets" / "metrics-adapter")
    return {
        "caFile": "secrets/metrics-adapter/ca.crt",
        "certFile": "secrets/metrics-adapter/tls.crt",
        "keyFile": "secrets/metrics-adapter/tls.key",
    }


def adapter_objects(objects: list[dict[str, Any]], namespace: str, ip: str) -> list[dict[str, Any]]:
    """The built stack, with the adapter served by a process at ``ip`` instead of a pod.

    The adapter's Deployment is dropped, its Service loses the selector (so the endpoints
    controller leaves hand-made Endpoints alone), and Endpoints naming ``ip`` are added
    (what the aggregator dials), with an EndpointSlice alike (what other stacks' adapters
    read to forward to this one).
    """
    out = []
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind == "Deployment" and name == ADAPTER:
            continue
        if kind == "Service" and name == ADAPTER:
            obj = {**obj, "spec": {k: v for k, v in obj["spec"].items() if k != "selector"}}
        out.append(obj)
    out.append(
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": ADAPTER, "namespace": namespace},
            "subsets": [
                {
                    "addresses": [{"ip": ip}],
                    "ports": [{"name": "https", "port": ADAPTER_PORT, "protocol": "TCP"}],
                }
            ],
        }
    )
    out.append(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{ADAPTER}-e2e",
                "namespace": namespace,
                "labels": {
                    "kubernetes.io/service-name": ADAPTER,
                    "endpointslice.kubernetes.io/managed-by": "stackgen-e2e",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": ADAPTER_PORT, "protocol": "TCP"}],
        }
    )
    return out


class AdapterProcess:
    """``stackgen metrics-adapter`` in ``netns``, as the adapter's Deployment would run it.

    It reaches kube-apiserver (``apiserver``, verified with ``ca_file``) and Buildkite
    (``buildkite_port`` on 127.0.0.1) through relays, authenticates to Kubernetes with
    ``api_token`` (its ServiceAccount's), and serves with the stack's certificate from
    ``secrets`` (tls.crt, tls.key).
    """

    def __init__(
        self,
        netns: Netns,
        *,
        apiserver: tuple[str, int],
        ca_file: Path,
        api_token: str,
        buildkite_port: int,
        buildkite_token: str,
        queues: Iterable[str],
        secrets: Path,
        work: Path,
        poll_interval: float,
        cwd: Path,
        address: str | None = None,
        namespace: str | None = None,
        peer_token: str | None = None,
    ) -> None:
        """``address``: where in ``netns`` to listen (default its first address);
        ``namespace`` and ``peer_token``: run as one stack among several (``--namespace``,
        ``--peer-token-file``)."""
        work.mkdir(parents=True, exist_ok=True)
        address = address or netns.ns_ip
        self.netns = netns
        self.address = address
        self.log_path = work / "adapter.log"
        # The namespace's first address is the source of its outgoing connections.
        inside = (netns.ns_ip, *netns.extra_ips)
        self._relays = [
            Relay((netns.host_ip, 0), ("127.0.0.1", buildkite_port), inside),
            Relay((netns.host_ip, 0), apiserver, inside),
        ]
        several: list[str] = []
        if namespace is not None:
            several.append(f"--namespace={namespace}")
        if peer_token is not None:
            token_file = work / "peer-token"
            token_file.write_text(peer_token)
            token_file.chmod(0o600)
            several.append(f"--peer-token-file={token_file}")
        bk_relay, api_relay = self._relays
        kubeconfig = work / "adapter-kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "e2e",
                            "cluster": {
                                "server": f"https://{netns.host_ip}:{api_relay.port}",
                                "certificate-authority": str(ca_file),
                                # The relay's address is not in the serving cert; this is.
                                "tls-server-name": "kubernetes",
                            },
                        }
                    ],
                    "users": [{"name": "adapter", "user": {"token": api_token}}],
                    "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "adapter"}}],
                    "current-context": "e2e",
                }
            )
        )
        kubeconfig.chmod(0o600)
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            netns.argv(
                sys.executable,
                "-m",
                "stackgen",
                "metrics-adapter",
                f"--bind-address={address}",
                f"--secure-port={ADAPTER_PORT}",
                f"--tls-cert-file={secrets / 'tls.crt'}",
                f"--tls-private-key-file={secrets / 'tls.key'}",
                f"--kubeconfig={kubeconfig}",
                *several,
            ),
            env={
                **os.environ,
                "BUILDKITE_AGENT_TOKEN": buildkite_token,
                "BUILDKITE_AGENT_ENDPOINT": f"http://{netns.host_ip}:{bk_relay.port}/v3",
                "STACKGEN_POLL_INTERVAL_SECONDS": f"{poll_interval:g}",
                "STACKGEN_QUEUES": ",".join(queues),
            },
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> int | None:
        """SIGTERM (then SIGKILL after 10 s); close the relays.  Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for relay in self._relays:
            relay.close()
        self._log.close()
        return self.proc.returncode

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text().splitlines()[-lines:])
