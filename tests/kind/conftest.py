"""The kind e2e tier: real containers, real buildkite-agents, one kind cluster per session.

The ``kind_cluster`` fixture starts ONE kind cluster with ``bin/up --runtime kind --no-apply
--sandbox --name stackgen-e2e-kind-<pid>`` (state in ``$TMPDIR/stackgen-e2e-kind/``; the
project's images and the fake Buildkite's loaded into the node) and always removes it with
``bin/down``, also when a test fails or the run is interrupted; clusters of killed sessions
are removed at the next start.  ``kind_stack`` applies one stack for the whole session with
``bin/up --sandbox`` (every queue the tests use), so its agents talk to the fake Buildkite
running in the cluster; tests drive the fake with :class:`tests.support.kind.Sandbox`.

Without a Docker engine (or without ``bin/setup --kind``'s kind binary) the tier is skipped,
or fails when ``STACKGEN_E2E_REQUIRED=1`` (``bin/test`` sets it where a Docker engine can run).
"""

from __future__ import annotations

import atexit
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import kind, sandbox
from tests.support.cluster import ClusterError, stop, versions


@pytest.fixture(scope="session")
def kind_cluster() -> Iterator[kind.KindCluster]:
    """The session's kind cluster (one node, the local images, the sandbox's images loaded)."""
    missing = kind.missing()
    if missing:
        message = f"the kind tier needs {'; '.join(missing)}"
        if os.environ.get("STACKGEN_E2E_REQUIRED") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    kind.reap()
    name = f"{kind.NAME_PREFIX}{os.getpid()}"
    torn_down = False

    def teardown() -> None:
        nonlocal torn_down
        if torn_down:
            return
        torn_down = True
        proc = stop(name, kind.STATE_ROOT)
        if proc.returncode != 0:
            print(f"bin/down for {name} failed:\n{proc.stdout}\n{proc.stderr}")

    atexit.register(teardown)
    try:
        started = time.monotonic()
        try:
            cluster = kind.start(name)
        except ClusterError as exc:
            pytest.fail(str(exc), pytrace=False)
        print(f"\nkind cluster {name} up in {time.monotonic() - started:.1f}s")
        yield cluster
    finally:
        teardown()
        atexit.unregister(teardown)


@dataclass(frozen=True)
class KindStack:
    """The session's stack in the kind cluster and the sandbox it talks to."""

    cluster: kind.KindCluster
    namespace: str
    keys: kind.Keys
    sandbox: kind.Sandbox
    overlay: Path
    host_key: Path


#: The queue of a second stack whose known_hosts is wrong (the fake knows it from the start,
#: so applying that stack later leaves the fake's pod alone).
BAD_HOSTS_QUEUE = "kind-badhosts"
WEBHOOK_QUEUE = "kind-webhook"
PODSTEPS_QUEUE = "kind-podsteps"
PODS_QUEUE = "kind-pods"
PODS_TTL_SECONDS = 30
#: The pods queue's own podSpecPatch (applied before a step's).
PODS_QUEUE_PATCH = {
    "name": "container-0",
    "resources": {"requests": {"cpu": "15m", "memory": "40Mi"}, "limits": {"memory": "300Mi"}},
    "env": [{"name": "STACKGEN_PATCHED_BY", "value": "queue"}],
}
MIRROR_QUEUE = "kind-mirror"
#: The sandbox's repository over SSH: the git mirror's source and the mirror queue's checkout.
SSH_URL = f"git@{sandbox.GIT_HOST}:{sandbox.REPOSITORY}.git"
#: A git mirror of the sandbox's repository, cloned by the project's agent image (it has git
#: and ssh; the default alpine/git cannot be pulled offline). Its volumes come from a storage
#: class of volumes made beforehand (tests/kind/test_git_mirror.py): the node image's default
#: class provisions root-owned directories the restricted clone cannot write. ReadWriteOnce:
#: one node.
GIT_MIRROR = {
    "name": "sandbox",
    "repository": SSH_URL,
    "image": versions()["IMAGE_AGENT"],
    "storage": "64Mi",
    "storageClassName": "kind-git-mirror",
    "accessMode": "ReadWriteOnce",
    "keep": 1,
    "schedule": "0 0 1 1 *",
}
#: The queues of the session's stack (one stack, so the fake's pod is never restarted).
QUEUES = [
    {
        "name": "kind-dispatch",
        "mode": "dispatch",
        "minAgents": 0,
        "maxAgents": 3,
        "buffer": 0,
        "dispatch": {"pollIntervalSeconds": 1, "ttlSecondsAfterFinished": 30},
    },
    {
        "name": "kind-exact",
        "mode": "exact",
        "maxAgents": 3,
        "dispatch": {"pollIntervalSeconds": 1, "ttlSecondsAfterFinished": 30},
    },
    {"name": "kind-hpa", "mode": "hpa", "minAgents": 1, "maxAgents": 2},
    # Docker-in-Docker: a privileged sidecar next to the agent.
    {
        "name": "kind-dind",
        "mode": "dispatch",
        "maxAgents": 1,
        "buffer": 0,
        "dind": True,
        "dispatch": {"pollIntervalSeconds": 1, "ttlSecondsAfterFinished": 60},
    },
    # Its agents run as a ServiceAccount that may run Jobs and Pods (podSteps).
    {
        "name": PODSTEPS_QUEUE,
        "mode": "dispatch",
        "maxAgents": 1,
        "buffer": 0,
        "podSteps": True,
        "dispatch": {"pollIntervalSeconds": 1, "ttlSecondsAfterFinished": 30},
    },
    # Steps carrying the kubernetes plugin run in the pod they describe, local images only;
    # hostPath volumes allowed (agent-stack-k8s's sample with extraVolumeMounts uses one); a
    # queue-level podSpecPatch on container-0, which every plugin step of these tests has.
    {
        "name": PODS_QUEUE,
        "mode": "exact",
        "maxAgents": 3,
        "dispatch": {"pollIntervalSeconds": 1, "ttlSecondsAfterFinished": PODS_TTL_SECONDS},
        "kubernetesPlugin": {
            "allowedImages": ["stackgen.local/*"],
            "allowHostPath": True,
            "podSpecPatch": {"containers": [PODS_QUEUE_PATCH]},
        },
    },
    # Its agents mount the newest ready volume of the git mirror.
    {
        "name": MIRROR_QUEUE,
        "mode": "dispatch",
        "maxAgents": 1,
        "buffer": 0,
        "gitMirror": GIT_MIRROR["name"],
        "dispatch": {"pollIntervalSeconds": 1, "ttlSecondsAfterFinished": 30},
    },
    # Polls once at start, then every 5 minutes: a job there runs soon only by a webhook.
    {
        "name": WEBHOOK_QUEUE,
        "mode": "dispatch",
        "maxAgents": 1,
        "buffer": 0,
        "dispatch": {"pollIntervalSeconds": 300, "ttlSecondsAfterFinished": 30},
    },
]


@pytest.fixture(scope="session")
def kind_stack(
    kind_cluster: kind.KindCluster, tmp_path_factory: pytest.TempPathFactory
) -> KindStack:
    """One stack (dispatch, exact and hpa queues) applied with ``bin/up --sandbox``."""
    keys = kind.Keys.generate()
    root = tmp_path_factory.mktemp("kind-stack")
    host_key = root / "git-host-key"
    host_key.write_bytes(keys.host_private)
    host_key.chmod(0o600)
    dind = {
        "resources": {"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"memory": "1Gi"}}
    }
    overlay = kind.write_overlay(
        root / "overlay", keys, QUEUES, extra={"dind": dind, "gitMirrors": [GIT_MIRROR]}
    )
    started = time.monotonic()
    kind.apply_stack(kind_cluster, overlay, host_key, extra_queues=[BAD_HOSTS_QUEUE])
    print(f"\nstack applied with the sandbox in {time.monotonic() - started:.1f}s")
    sandbox = kind.Sandbox(kind_cluster)
    return KindStack(kind_cluster, "buildkite-e2e", keys, sandbox, overlay, host_key)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/kind is a kind test, marked or not."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.kind)
