"""One way to start a local cluster (``bin/up --runtime kwok``), and helpers to drive it.

The e2e session cluster (``tests/e2e/conftest.py``), the HPA e2e cluster (with a front
proxy and a short HPA sync, given as a kwokctl patch) and bench/e2e's clusters all start
with :func:`start` and stop with :func:`stop`: bin/up and bin/down, each cluster under its
own name and state folder.  A cluster named ``<prefix><pid>`` whose process is gone is
left over from a killed run: :func:`reap` removes it.

* :class:`Cluster`: ``kubectl(*args)``, ``apply(manifest)``, ``get(...)``, ``delete(...)``,
  ``credentials()`` (API server URL, CA file and a cluster-admin bearer token: what an
  in-cluster client sees), ``api_client()``;
* :func:`wait_for`: poll a predicate until it holds, or fail saying what was awaited.

``STACKGEN_E2E_KWOK_CONFIG`` (files separated by ``os.pathsep``) hands extra kwok
configuration, such as Stage objects, to kwokctl. kwokctl v0.8.0 then drops all of its
default Stages, the node ones too: such a file must also make nodes Ready and keep their
heartbeats (leases), or the nodes stay NotReady and the session cannot start.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from tests.support.paths import ROOT, TOOLS_BIN

if TYPE_CHECKING:
    import kubernetes.client

REQUIRED_BINARIES = (
    "kwokctl",
    "kwok",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "etcd",
)
#: All e2e clusters of this machine live under here, one folder per cluster.
STATE_ROOT = Path(tempfile.gettempdir()) / "stackgen-e2e"
KWOK_NODES = 4
#: Node and pod stages: kwok's defaults, except that pods the dispatcher made run until
#: the test's simulated agent in them exits (see the file).
KWOK_STAGES = Path(__file__).parent / "kwok-stages.yaml"


class ClusterError(RuntimeError):
    """bin/up could not start a cluster (the message holds its output)."""


T = TypeVar("T")
Manifest = str | bytes | Mapping[str, Any] | Sequence[Mapping[str, Any]]


def versions() -> dict[str, str]:
    """The pinned versions in bin/versions.env."""
    pins = {}
    for line in (ROOT / "bin" / "versions.env").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            pins[key.strip()] = value.strip()
    return pins


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 60,
    interval: float = 0.5,
    what: str | None = None,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` until it returns something truthy; return that value.

    Exceptions of the types in ``ignore`` count as "not yet". On timeout an AssertionError
    says what was awaited and what the predicate last returned (or raised).
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = predicate()
        except ignore as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            label = what or getattr(predicate, "__name__", "condition")
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {label}: {last!r}")
        time.sleep(interval)


def to_yaml(manifest: Manifest) -> str:
    """A manifest (YAML text, one object, or a list of objects) as YAML text."""
    if isinstance(manifest, bytes):
        return manifest.decode()
    if isinstance(manifest, str):
        return manifest
    if isinstance(manifest, Mapping):
        return yaml.safe_dump(dict(manifest), sort_keys=False)
    return yaml.safe_dump_all([dict(obj) for obj in manifest], sort_keys=False)


@dataclass(frozen=True)
class ApiCredentials:
    """What an in-cluster client has: the API server URL, its CA and a bearer token."""

    server: str
    ca_file: Path
    token: str

    def configuration(self) -> kubernetes.client.Configuration:
        """A ``kubernetes.client.Configuration`` for these credentials."""
        import kubernetes.client

        config = kubernetes.client.Configuration()
        config.host = self.server
        config.ssl_ca_cert = str(self.ca_file)
        config.verify_ssl = True
        config.api_key = {"authorization": self.token}
        config.api_key_prefix = {"authorization": "Bearer"}
        return config


class Cluster:
    """A running local cluster and small helpers to drive it with kubectl."""

    def __init__(self, name: str, state_root: Path) -> None:
        self.name = name
        self.state_root = state_root
        self.state_dir = state_root / name
        self.kubeconfig = self.state_dir / "kubeconfig"
        self.context = f"kwok-{name}"

    def env(self) -> dict[str, str]:
        """``os.environ`` with KUBECONFIG pointing at this cluster (for subprocesses)."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self,
        *args: str,
        input: str | bytes | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; raise on a non-zero exit when ``check``."""
        argv = ["kubectl", "--kubeconfig", str(self.kubeconfig), *args]
        proc = subprocess.run(
            argv,
            input=input.decode() if isinstance(input, bytes) else input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"`kubectl {' '.join(args)}` exited {proc.returncode}:\n{proc.stderr.strip()}"
            )
        return proc

    def kubectl_json(self, *args: str, input: str | None = None) -> Any:
        """Run kubectl with ``-o json`` and parse its output."""
        return json.loads(self.kubectl(*args, "-o", "json", input=input).stdout)

    def apply(
        self, manifest: Manifest, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl apply -f -`` (extra args such as ``--dry-run=server`` go after it)."""
        return self.kubectl("apply", "-f", "-", *args, input=to_yaml(manifest), check=check)

    def forbid_pods(self, namespace: str) -> None:
        """A ResourceQuota of zero pods: every pod create in ``namespace`` is refused."""
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "ResourceQuota",
                "metadata": {"name": "no-pods", "namespace": namespace},
                "spec": {"hard": {"pods": "0"}},
            }
        )

    def create(
        self, manifest: Manifest, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl create -f -``."""
        return self.kubectl("create", "-f", "-", *args, input=to_yaml(manifest), check=check)

    def delete(self, manifest: Manifest, *, wait: bool = True, timeout: float = 180) -> None:
        """Delete what a manifest names (missing objects are fine); wait until gone."""
        self.kubectl(
            "delete",
            "-f",
            "-",
            "--ignore-not-found",
            f"--wait={'true' if wait else 'false'}",
            f"--timeout={int(timeout)}s",
            input=to_yaml(manifest),
            timeout=timeout + 30,
        )

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """One object as a dict, or None when it does not exist."""
        args = ["get", kind, name, "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        proc = self.kubectl(*args, check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr or "not found" in proc.stderr:
                return None
            raise AssertionError(f"kubectl get {kind} {name}: {proc.stderr.strip()}")
        obj: dict[str, Any] = json.loads(proc.stdout)
        return obj

    def items(
        self, kind: str, namespace: str | None = None, selector: str | None = None
    ) -> list[dict[str, Any]]:
        """All objects of a kind (in one namespace, or all namespaces when None)."""
        args = ["get", kind]
        args += ["-n", namespace] if namespace else ["--all-namespaces"]
        if selector:
            args += ["-l", selector]
        items: list[dict[str, Any]] = self.kubectl_json(*args)["items"]
        return items

    @cached_property
    def server(self) -> str:
        """The API server URL (https://127.0.0.1:PORT)."""
        cfg = self.kubectl_json("config", "view", "--raw", "--minify")
        server: str = cfg["clusters"][0]["cluster"]["server"]
        return server

    def ca_file(self) -> Path:
        """A file holding the API server's CA certificate."""
        cfg = self.kubectl_json("config", "view", "--raw", "--minify")
        cluster = cfg["clusters"][0]["cluster"]
        if cluster.get("certificate-authority"):
            return Path(cluster["certificate-authority"])
        path = self.state_dir / "e2e-ca.crt"
        path.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
        return path

    @cached_property
    def _credentials(self) -> ApiCredentials:
        sa = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "stackgen-e2e", "namespace": "kube-system"},
        }
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "stackgen-e2e-cluster-admin"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": "stackgen-e2e", "namespace": "kube-system"}
            ],
        }
        self.apply([sa, binding])
        token = self.kubectl(
            "create", "token", "stackgen-e2e", "-n", "kube-system", "--duration=6h"
        ).stdout.strip()
        return ApiCredentials(server=self.server, ca_file=self.ca_file(), token=token)

    def credentials(self) -> ApiCredentials:
        """URL, CA and a cluster-admin bearer token (a ServiceAccount's, made on first use)."""
        return self._credentials

    def api_client(self) -> kubernetes.client.ApiClient:
        """A ``kubernetes.client.ApiClient`` using :meth:`credentials` (close it when done)."""
        import kubernetes.client

        return kubernetes.client.ApiClient(self.credentials().configuration())

    def kwok_nodes(self) -> set[str]:
        """Names of the fake nodes kwok manages."""
        return {n["metadata"]["name"] for n in self.items("nodes", selector="type=kwok")}


# ---------------------------------------------------------------------------- lifecycle


def _run_script(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT
    )


def stop(name: str, state_root: Path) -> subprocess.CompletedProcess[str]:
    return _run_script(
        [str(ROOT / "bin" / "down"), "--name", name, "--state-dir", str(state_root)], 180
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def orphaned(names: Iterable[str], prefix: str) -> list[str]:
    """The names ``<prefix><pid>`` whose pytest process no longer exists."""
    out = []
    for name in names:
        suffix = name.removeprefix(prefix)
        if name.startswith(prefix) and suffix.isdigit() and not pid_alive(int(suffix)):
            out.append(name)
    return out


def reap(prefix: str, state_root: Path = STATE_ROOT) -> None:
    """Remove the clusters ``<prefix><pid>`` whose process no longer exists."""
    if not state_root.is_dir():
        return
    for name in orphaned((s.name for s in state_root.iterdir()), prefix):
        stop(name, state_root)


def kwok_configs() -> list[Path]:
    """kwok configuration for the session cluster: our stages, plus STACKGEN_E2E_KWOK_CONFIG."""
    value = os.environ.get("STACKGEN_E2E_KWOK_CONFIG", "")
    return [KWOK_STAGES, *(Path(p).resolve() for p in value.split(os.pathsep) if p)]


def missing_binaries() -> list[str]:
    """What bin/setup builds that is not there (and kubectl, which it never installs)."""
    missing = [b for b in REQUIRED_BINARIES if not os.access(TOOLS_BIN / b, os.X_OK)]
    if shutil.which("kubectl") is None:
        missing.append("kubectl (on PATH)")
    return missing


def start(
    name: str,
    state_root: Path = STATE_ROOT,
    *,
    nodes: int = KWOK_NODES,
    kwok_configs: Sequence[Path] = (),
    timeout: int = 120,
    log: Path | None = None,
) -> Cluster:
    """Start a kwok cluster with ``bin/up --no-apply`` (``kwok_configs``: extra kwokctl
    configuration, e.g. Stages, or a KwokctlConfiguration patching a component's flags).

    Raises:
        ClusterError: bin/up failed (its output is in the message, or in ``log``).

    """
    state_root.mkdir(parents=True, exist_ok=True)
    argv = [
        str(ROOT / "bin" / "up"),
        "--runtime=kwok",
        f"--name={name}",
        f"--state-dir={state_root}",
        f"--nodes={nodes}",
        f"--timeout={timeout}",
        "--no-apply",
        "--no-setup",
        *(f"--kwok-config={path}" for path in kwok_configs),
    ]
    if log is not None:
        with log.open("a") as out:
            proc = subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, check=False, cwd=ROOT, timeout=300
            )
        if proc.returncode != 0:
            raise ClusterError(f"bin/up could not start cluster {name}; see {log}")
    else:
        proc = _run_script(argv, 300)
        if proc.returncode != 0:
            raise ClusterError(
                f"bin/up could not start cluster {name}:\n{proc.stdout}\n{proc.stderr}"
            )
    return Cluster(name, state_root)
