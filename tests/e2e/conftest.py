"""Fixtures of the e2e tests: a real local control plane, started once per test session.

The ``cluster`` fixture starts a kwok cluster with :func:`tests.support.cluster.start`
(``bin/up --runtime kwok --no-apply``) under its own name (``stackgen-e2e-<pid>``) with its
state (kubeconfig, kwok work dir, logs) in a temporary folder, exports ``KUBECONFIG`` for
the session (so ``stackgen --server-dry-run`` and any ``kubectl`` a test starts use it)
and always runs ``bin/down`` at the end, also when a test fails or the run is
interrupted. Clusters left behind by a killed session are removed at the start of the
next one.  The helpers themselves (``Cluster``, ``wait_for``, …) are in
``tests/support/cluster.py``.

Without the binaries bin/setup builds, the tests are skipped, or fail when
``STACKGEN_E2E_REQUIRED=1`` (bin/test sets it, so CI never skips them silently).
"""

from __future__ import annotations

import atexit
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.cluster import (
    STATE_ROOT,
    ApiCredentials,
    Cluster,
    ClusterError,
    kwok_configs,
    missing_binaries,
    reap,
    start,
    stop,
    wait_for,
)

if TYPE_CHECKING:
    import kubernetes.client

NAME_PREFIX = "stackgen-e2e-"


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The session's local cluster (kwok nodes, real apiserver/controllers/scheduler)."""
    missing = missing_binaries()
    if missing:
        message = f"e2e needs the local control plane: missing {', '.join(missing)} (run bin/setup)"
        if os.environ.get("STACKGEN_E2E_REQUIRED") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)

    reap(NAME_PREFIX)
    name = f"{NAME_PREFIX}{os.getpid()}"
    torn_down = False

    def teardown() -> None:
        nonlocal torn_down
        if torn_down:
            return
        torn_down = True
        proc = stop(name, STATE_ROOT)
        if proc.returncode != 0:
            print(f"bin/down for {name} failed:\n{proc.stdout}\n{proc.stderr}")

    # Also on an abnormal interpreter exit the processes must not outlive the session.
    atexit.register(teardown)
    previous = os.environ.get("KUBECONFIG")
    try:
        started = time.monotonic()
        try:
            cl = start(name, kwok_configs=kwok_configs())
        except ClusterError as exc:
            pytest.fail(str(exc), pytrace=False)
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
