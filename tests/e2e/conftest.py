"""A real local control plane for the e2e tests, started once per test session.

The ``cluster`` fixture runs ``bin/up --runtime kwok --no-apply`` under its own name
(``stackgen-e2e-<pid>``) with its state (kubeconfig, kwok work dir, logs) in a temporary
folder, exports ``KUBECONFIG`` for the session (so ``stackgen --server-dry-run`` and any
``kubectl`` a test starts use it) and always runs ``bin/down`` at the end, also when a test
fails or the run is interrupted. Clusters left behind by a killed session are removed at the
start of the next one.

Helpers for other e2e tests (the dispatcher's, the metrics adapter's):

* ``cluster.kubectl(*args)``, ``cluster.apply(manifest)``, ``cluster.get(...)``,
  ``cluster.delete(manifest)``, ``cluster.kubeconfig``;
* ``wait_for(predicate, timeout=...)`` (also as a fixture);
* ``cluster.credentials()``: API server URL, CA file and a bearer token (a cluster-admin
  ServiceAccount's), the shape an in-cluster client sees; ``cluster.api_client()`` builds a
  ``kubernetes.client.ApiClient`` from them;
* ``scratch_namespace``: a fresh namespace per test, deleted afterwards.

Without the binaries bin/setup builds, the tests are skipped, or fail when
``STACKGEN_E2E_REQUIRED=1`` (bin/test sets it, so CI never skips them silently).

``STACKGEN_E2E_KWOK_CONFIG`` (files separated by ``os.pathsep``) hands extra kwok
configuration, such as Stage objects, to kwokctl. kwokctl v0.8.0 then drops all of its
default Stages, the node ones too: such a file must also make nodes Ready and keep their
heartbeats (leases), or the nodes stay NotReady and the session cannot start.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import yaml

from tests.conftest import ROOT

if TYPE_CHECKING:
    import kubernetes.client

TOOLS_BIN = ROOT / ".tools" / "bin"
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
NAME_PREFIX = "stackgen-e2e-"
KWOK_NODES = 4

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


def _bin_down(name: str, state_root: Path) -> subprocess.CompletedProcess[str]:
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


def _reap_stale_clusters() -> None:
    """Remove clusters of e2e sessions whose pytest process no longer exists."""
    if not STATE_ROOT.is_dir():
        return
    for name in orphaned((s.name for s in STATE_ROOT.iterdir()), NAME_PREFIX):
        _bin_down(name, STATE_ROOT)


#: The session cluster's node and pod stages: kwok's defaults, except that pods the
#: dispatcher made run until the test's simulated agent in them exits (see the file).
KWOK_STAGES = Path(__file__).parent.parent / "support" / "kwok-stages.yaml"


def kwok_configs() -> list[Path]:
    """kwok configuration for the session cluster: our stages, plus STACKGEN_E2E_KWOK_CONFIG."""
    value = os.environ.get("STACKGEN_E2E_KWOK_CONFIG", "")
    return [KWOK_STAGES, *(Path(p).resolve() for p in value.split(os.pathsep) if p)]


def _missing_binaries() -> list[str]:
    missing = [b for b in REQUIRED_BINARIES if not os.access(TOOLS_BIN / b, os.X_OK)]
    if shutil.which("kubectl") is None:
        missing.append("kubectl (on PATH)")
    return missing


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The session's local cluster (kwok nodes, real apiserver/controllers/scheduler)."""
    missing = _missing_binaries()
    if missing:
        message = f"e2e needs the local control plane: missing {', '.join(missing)} (run bin/setup)"
        if os.environ.get("STACKGEN_E2E_REQUIRED") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)

    _reap_stale_clusters()
    name = f"{NAME_PREFIX}{os.getpid()}"
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    cl = Cluster(name, STATE_ROOT)
    torn_down = False

    def teardown() -> None:
        nonlocal torn_down
        if torn_down:
            return
        torn_down = True
        proc = _bin_down(name, STATE_ROOT)
        if proc.returncode != 0:
            print(f"bin/down for {name} failed:\n{proc.stdout}\n{proc.stderr}")

    # Also on an abnormal interpreter exit the processes must not outlive the session.
    atexit.register(teardown)
    previous = os.environ.get("KUBECONFIG")
    try:
        started = time.monotonic()
        proc = _run_script(
            [
                str(ROOT / "bin" / "up"),
                "--runtime=kwok",
                f"--name={name}",
                f"--state-dir={STATE_ROOT}",
                f"--nodes={KWOK_NODES}",
                "--timeout=120",
                "--no-apply",
                "--no-setup",
                *(f"--kwok-config={path}" for path in kwok_configs()),
            ],
            300,
        )
        if proc.returncode != 0:
            pytest.fail(
                f"bin/up could not start the e2e cluster:\n{proc.stdout}\n{proc.stderr}",
                pytrace=False,
            )
        print(f"\ne2e cluster {name} up in {time.monotonic() - started:.1f}s ({cl.kubeconfig})")
        os.environ["KUBECONFIG"] = str(cl.kubeconfig)
        yield cl
    finally:
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous
        teardown()
        atexit.unregister(teardown)


@pytest.fixture
def kubectl(cluster: Cluster) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``kubectl(*args, input=None, check=True)`` against the session cluster."""
    return cluster.kubectl


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., Any]:
    """The :func:`wait_for` helper, for tests that prefer fixtures to imports."""
    return wait_for


@pytest.fixture(scope="session")
def kubeconfig(cluster: Cluster) -> Path:
    """Path of the session cluster's kubeconfig (also exported as KUBECONFIG)."""
    return cluster.kubeconfig


@pytest.fixture(scope="session")
def api_credentials(cluster: Cluster) -> ApiCredentials:
    """API server URL, CA file and a cluster-admin bearer token."""
    return cluster.credentials()


@pytest.fixture
def k8s_client(cluster: Cluster) -> Iterator[kubernetes.client.ApiClient]:
    """A ``kubernetes.client.ApiClient`` on the session cluster (token auth)."""
    client = cluster.api_client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def scratch_namespace(cluster: Cluster) -> Iterator[Callable[..., str]]:
    """Factory: ``scratch_namespace(labels=None) -> name`` of a new namespace.

    Every namespace made is deleted after the test (without waiting for it to finish).
    """
    made: list[str] = []

    def make(labels: Mapping[str, str] | None = None, prefix: str = "e2e") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": dict(labels or {})},
            }
        )
        made.append(name)
        return name

    yield make
    for name in made:
        cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/e2e is an e2e test, marked or not."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.e2e)
