"""The git-mirror queue on kind: a mirror volume built from the sandbox's git server, a real
agent's checkout that borrows its objects, and pruning of the volumes nobody uses.

The mirror's refresh CronJob (the stackgen image) is triggered by hand, as ``kubectl create
job --from=cronjob/...`` does, instead of waiting for its schedule; it creates a PVC, clones
the repository into it over SSH with the stack's key in a Job of the agent image, and labels
the PVC ready.  The dispatcher mounts the newest ready volume read-only into the mirror
queue's agents and prunes, once a minute, the volumes that no pod mounts beyond the newest.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from stackgen.common.names import GIT_MIRRORS_PATH
from stackgen.dispatcher.mirrors import LABEL_MIRROR, LABEL_STATE, mirror_dir
from tests.kind.conftest import GIT_MIRROR, MIRROR_QUEUE, SSH_URL, KindStack
from tests.support.cluster import wait_for

CRONJOB = f"git-mirror-{GIT_MIRROR['name']}"
#: Where the agent finds the mirror (the folder name it derives from the repository URL).
MIRROR_OBJECTS = f"{GIT_MIRRORS_PATH}/{mirror_dir(SSH_URL)}/objects"
#: The job on the mirror queue waits for this file (created with kubectl exec) before it ends,
#: so its pod keeps the mirror volume in use for as long as the test needs.
RELEASE = "/tmp/release-git-mirror"
#: The dispatcher prunes mirror volumes every 60 s (stackgen.dispatcher.cycle).
PRUNE_WAIT = 150


def mirror_claims(stack: KindStack) -> dict[str, dict[str, Any]]:
    claims = stack.cluster.items(
        "persistentvolumeclaims", stack.namespace, f"{LABEL_MIRROR}={GIT_MIRROR['name']}"
    )
    return {c["metadata"]["name"]: c for c in claims}


def refresh(stack: KindStack, job: str) -> str:
    """Run the refresh CronJob once as Job ``job``; the name of the ready volume it made."""
    before = set(mirror_claims(stack))
    stack.cluster.kubectl("-n", stack.namespace, "create", "job", f"--from=cronjob/{CRONJOB}", job)

    def finished() -> dict[str, Any] | None:
        status = (stack.cluster.get("job", job, stack.namespace) or {}).get("status") or {}
        done = {c["type"] for c in status.get("conditions") or [] if c.get("status") == "True"}
        return status if done & {"Complete", "Failed"} else None

    status = wait_for(finished, timeout=300, interval=1, what=f"refresh Job {job} to finish")
    if not status.get("succeeded"):
        logs = stack.cluster.kubectl(
            "-n",
            stack.namespace,
            "logs",
            "--tail=50",
            "--prefix",
            "-l",
            f"{LABEL_MIRROR}={GIT_MIRROR['name']}",
            "--all-containers",
            check=False,
        )
        pytest.fail(f"refresh Job {job} failed: {status}\n{logs.stdout}{logs.stderr}")
    (made,) = set(mirror_claims(stack)) - before
    return made


def state(claim: dict[str, Any]) -> str | None:
    labels: dict[str, str] = claim["metadata"].get("labels") or {}
    return labels.get(LABEL_STATE)


#: Volumes made beforehand: one per refresh of this module, and one to spare.
VOLUMES = 4
#: Where the node keeps them.
NODE_DIR = "/tmp/kind-git-mirror"


def make_volumes(stack: KindStack) -> None:
    """The mirror's storage class: world-writable host directories on the node, as PVs.

    The node image's default class (``standard``: kube-controller-manager's host-path
    provisioner; kind's local-path provisioner cannot be built offline) offers ReadWriteOnce
    only and leaves each volume a directory that containerd creates root-owned with mode 0755
    when the first pod mounts it, so the clone, which runs as nobody, gets "Permission
    denied". Volumes made beforehand, bound by the claims the refresh creates, avoid that.
    """
    node = f"{stack.cluster.name}-control-plane"
    dirs = [f"{NODE_DIR}/pv-{i}" for i in range(VOLUMES)]
    subprocess.run(["docker", "exec", node, "mkdir", "-p", *dirs], check=True, timeout=60)
    subprocess.run(["docker", "exec", node, "chmod", "0777", *dirs], check=True, timeout=60)
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": GIT_MIRROR["storageClassName"]},
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "Immediate",
        }
    ]
    for i, path in enumerate(dirs):
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"kind-git-mirror-{i}"},
                "spec": {
                    "capacity": {"storage": GIT_MIRROR["storage"]},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": GIT_MIRROR["storageClassName"],
                    "hostPath": {"path": path, "type": "Directory"},
                },
            }
        )
    stack.cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"kind": "List", "apiVersion": "v1", "items": objects})
    )


@pytest.fixture(scope="module")
def first_mirror(kind_stack: KindStack) -> Iterator[str]:
    """The session's first mirror volume, built by a refresh Job."""
    make_volumes(kind_stack)
    started = time.monotonic()
    claim = refresh(kind_stack, "git-mirror-kind-1")
    print(f"\nfirst mirror volume {claim} ready in {time.monotonic() - started:.1f}s")
    yield claim


def test_the_refresh_builds_a_ready_mirror_volume(kind_stack: KindStack, first_mirror: str) -> None:
    stack = kind_stack
    claim = mirror_claims(stack)[first_mirror]
    assert state(claim) == "ready"
    assert claim["status"]["phase"] == "Bound"
    assert claim["spec"]["accessModes"] == [GIT_MIRROR["accessMode"]]
    # The git server lets nobody in without the stack's key: the clone Job used it. The
    # refresh deleted that Job once done (its pod would keep a pruned claim Terminating).
    assert stack.cluster.get("job", f"{first_mirror}-clone", stack.namespace) is None
    log = stack.cluster.kubectl("-n", stack.namespace, "logs", "job/git-mirror-kind-1").stdout
    assert "mirror ready" in log and first_mirror in log, log


def gone(stack: KindStack, name: str) -> dict[str, dict[str, Any]] | None:
    """The mirror's claims once ``name`` is no longer among them, else None."""
    claims = mirror_claims(stack)
    return claims if name not in claims else None


def test_a_mirror_queue_job_checks_out_with_the_mirror_and_prune_spares_it(
    kind_stack: KindStack, first_mirror: str
) -> None:
    stack = kind_stack
    # The job's agent mounts the newest ready volume (the first) and keeps it in use.
    command = (
        "cat .git/objects/info/alternates && git log --oneline -1 && cat README.md && "
        f"for i in $(seq 300); do [ -e {RELEASE} ] && break; sleep 1; done; echo released"
    )
    uuid = stack.sandbox.enqueue(MIRROR_QUEUE, command, repository=SSH_URL)

    def running() -> dict[str, Any] | None:
        job = stack.sandbox.job(uuid)
        assert job["state"] not in ("finished", "canceled"), job
        return job if job["state"] == "running" and job.get("agent_name") else None

    pod_name = wait_for(running, timeout=300, interval=1, what=f"job {uuid} to run")["agent_name"]
    pod = stack.cluster.get("pod", pod_name, stack.namespace)
    assert pod is not None
    mounted = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert mounted == [first_mirror]

    # Two more volumes. Until the third is ready the second is the newest, and kept; the
    # first prune after that deletes the second (unused, not the newest) and keeps the first
    # (in use, though older) and the third (the newest ready one).
    second = refresh(stack, "git-mirror-kind-2")
    third = refresh(stack, "git-mirror-kind-3")
    started = time.monotonic()
    claims = wait_for(
        lambda: gone(stack, second), timeout=PRUNE_WAIT, interval=2, what="the second to go"
    )
    print(f"\nunused mirror volume pruned {time.monotonic() - started:.1f}s after the third")
    assert set(claims) == {first_mirror, third}
    assert stack.sandbox.job(uuid)["state"] == "running"

    stack.cluster.kubectl(
        "-n", stack.namespace, "exec", pod_name, "-c", "agent", "--", "touch", RELEASE
    )
    job = stack.sandbox.wait_finished(uuid, timeout=120)
    log = stack.sandbox.log(uuid)
    assert (job["state"], job["exit_status"]) == ("finished", 0), log
    # The agent cloned with the mounted mirror as reference: the checkout borrows its objects.
    assert MIRROR_OBJECTS in log.splitlines(), log
    assert "--reference" in log, log
    assert "Served by the stackgen test git server" in log, log
    assert "released" in log

    # Once the job's pod is done, the first is unused and goes too; the newest stays.
    started = time.monotonic()
    claims = wait_for(
        lambda: gone(stack, first_mirror), timeout=PRUNE_WAIT, interval=2, what="the first to go"
    )
    print(f"in-use mirror volume pruned {time.monotonic() - started:.1f}s after its job ended")
    assert set(claims) == {third}
    assert state(claims[third]) == "ready"
