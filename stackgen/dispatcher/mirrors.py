"""Git mirror volumes: build a fresh one, find the newest ready one, prune unused ones.

A refresh (``stackgen git-mirror refresh``, run by each mirror's CronJob) creates a PVC
labelled ``stackgen.io/state=building``, runs a Job that ``git clone --mirror``s the
repository into it, then labels it ``ready``.  Dispatched agents mount the newest ready
volume read-only at the agent's git-mirrors path, under the folder name the agent
itself derives from the repository URL (every non-alphanumeric character -> ``-``),
with ``BUILDKITE_GIT_MIRRORS_SKIP_UPDATE`` so they only ever read it.  Pruning deletes
mirror volumes that no pod mounts, beyond the newest ``keep`` ready ones; which volumes
are in use is read from the pods' own volume lists.

The clone uses the credentials the mirror's agents use: the ``ssh-key`` and
``git-credentials`` volumes of the agent template CronJob of a queue with that mirror
(kustomize gives generated Secrets hashed names, and ``existingSecret`` points them
elsewhere, so the template's volumes are where the real names are).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from stackgen.common.models import GitMirror
from stackgen.common.names import GIT_MIRROR
from stackgen.dispatcher.jobs import parse_time
from stackgen.dispatcher.kube import JSON, Kube, KubeError

LABEL_MIRROR = "stackgen.io/git-mirror"
LABEL_STATE = "stackgen.io/state"
#: A volume still "building" after this long belongs to a refresh that died.
STALE_BUILD_SECONDS = 6 * 3600
#: The agent template's credential volumes the clone mounts, and where (the file names
#: in them are the ones stackgen's agent hook reads: ``ssh-privatekey``, ``known_hosts``,
#: ``git-credentials``).
CREDENTIAL_MOUNTS = {"ssh-key": "/secrets/ssh", "git-credentials": "/secrets/git-credentials"}
#: The clone runs as ``nobody`` (65534 in Debian, Alpine and BusyBox images): ssh exits
#: with "No user exists for uid" under a uid the image's /etc/passwd lacks.
CLONE_UID = 65534
#: What the clone container runs (``sh -c SCRIPT sh REPOSITORY TARGET``).  git's store
#: helper writes back and ssh refuses a key others can read, so both are copied to the
#: pod's private /tmp first; known_hosts is pinned as in the agents' hook.
CLONE_SCRIPT = """set -eu
if [ -r /secrets/git-credentials/git-credentials ]; then
  cp /secrets/git-credentials/git-credentials "$HOME/git-credentials"
  chmod 600 "$HOME/git-credentials"
  git config --global credential.helper "store --file=$HOME/git-credentials"
fi
if [ -r /secrets/ssh/ssh-privatekey ]; then
  cp /secrets/ssh/ssh-privatekey "$HOME/id"
  chmod 600 "$HOME/id"
  export GIT_SSH_COMMAND="ssh -i $HOME/id -o IdentitiesOnly=yes \\
-o UserKnownHostsFile=/secrets/ssh/known_hosts -o StrictHostKeyChecking=yes"
fi
exec git clone --mirror -- "$1" "$2"
"""


def mirror_dir(repository: str) -> str:
    """The folder name the Buildkite agent uses for a repository's mirror."""
    return re.sub(r"[^A-Za-z0-9]", "-", repository)


def _claims(kube: Kube, name: str, state: str | None = None) -> list[JSON]:
    selector = f"{LABEL_MIRROR}={name}"
    if state:
        selector += f",{LABEL_STATE}={state}"
    return sorted(
        kube.list_pvcs(selector),
        key=lambda c: (
            parse_time((c.get("metadata") or {}).get("creationTimestamp")),
            c["metadata"]["name"],
        ),
    )


def newest_ready_claim(kube: Kube, name: str) -> str | None:
    """Name of the newest ready mirror volume, or None while there is none."""
    ready = _claims(kube, name, "ready")
    return ready[-1]["metadata"]["name"] if ready else None


def claims_in_use(kube: Kube) -> set[str]:
    """PVCs that some pod that has not terminated mounts."""
    used: set[str] = set()
    for pod in kube.list_pods(""):
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        for volume in (pod.get("spec") or {}).get("volumes") or []:
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim:
                used.add(claim)
    return used


def prune(kube: Kube, name: str, *, keep: int, now: float | None = None) -> list[str]:
    """Delete this mirror's volumes no pod uses, keeping the newest ``keep`` ready ones."""
    now = time.time() if now is None else now
    claims = _claims(kube, name)
    used = claims_in_use(kube)
    ready = [c for c in claims if (c["metadata"].get("labels") or {}).get(LABEL_STATE) == "ready"]
    keep_names = {c["metadata"]["name"] for c in ready[-keep:]} if keep > 0 else set()
    deleted = []
    for claim in claims:
        meta = claim["metadata"]
        if meta["name"] in used or meta["name"] in keep_names or meta.get("deletionTimestamp"):
            continue
        state = (meta.get("labels") or {}).get(LABEL_STATE)
        age = now - parse_time(meta.get("creationTimestamp"))
        if state == "building" and age < STALE_BUILD_SECONDS:
            continue  # a refresh may still be cloning into it
        try:
            kube.delete_pvc(meta["name"])
        except KubeError as exc:
            if not exc.not_found:
                raise
        deleted.append(meta["name"])
    return deleted


def credential_volumes(kube: Kube, template: str | None) -> list[JSON]:
    """The ``ssh-key`` and ``git-credentials`` volumes of agent template ``template``."""
    if template is None:
        return []
    cronjob = kube.get_cronjob(template)
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return [v for v in pod.get("volumes") or [] if v.get("name") in CREDENTIAL_MOUNTS]


def claim_body(mirror: GitMirror, name: str, labels: dict[str, str]) -> JSON:
    """A fresh mirror volume: written once, then read by many pods (``accessMode``)."""
    spec: dict[str, Any] = {
        "accessModes": [mirror.access_mode],
        "resources": {"requests": {"storage": mirror.storage}},
    }
    if mirror.storage_class_name:
        spec["storageClassName"] = mirror.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": name,
            "labels": {**labels, LABEL_MIRROR: mirror.name, LABEL_STATE: "building"},
        },
        "spec": spec,
    }


def clone_job_body(
    mirror: GitMirror, claim: str, labels: dict[str, str], credentials: Sequence[JSON] = ()
) -> JSON:
    """The Job that clones the repository into a mirror volume (Pod Security restricted)."""
    target = f"/mirror/{mirror_dir(mirror.repository)}"
    secret_mounts = [
        {"name": v["name"], "mountPath": CREDENTIAL_MOUNTS[v["name"]], "readOnly": True}
        for v in credentials
    ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"{claim}-clone", "labels": {**labels, LABEL_MIRROR: mirror.name}},
        "spec": {
            "backoffLimit": 2,
            "ttlSecondsAfterFinished": 600,
            "activeDeadlineSeconds": 3600,
            "template": {
                "metadata": {"labels": {**labels, LABEL_MIRROR: mirror.name}},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": CLONE_UID,
                        "runAsGroup": CLONE_UID,
                        "fsGroup": CLONE_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "clone",
                            "image": mirror.image,
                            "command": ["sh", "-c", CLONE_SCRIPT, "sh", mirror.repository, target],
                            "env": [{"name": "HOME", "value": "/tmp"}],
                            "resources": {
                                "requests": {"cpu": "250m", "memory": "256Mi"},
                                "limits": {"memory": "1Gi"},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "mirror", "mountPath": "/mirror"},
                                {"name": "tmp", "mountPath": "/tmp"},
                                *secret_mounts,
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "mirror", "persistentVolumeClaim": {"claimName": claim}},
                        {"name": "tmp", "emptyDir": {}},
                        *credentials,
                    ],
                },
            },
        },
    }


def refresh(
    kube: Kube,
    mirror: GitMirror,
    *,
    now: float,
    template: str | None = None,
    timeout: float = 3600,
    poll: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    log: Any = None,
) -> str:
    """Build a fresh mirror volume; return its name once ready (raise on failure).

    ``template`` is the agent template CronJob whose credential volumes the clone mounts.
    """
    claim = f"git-mirror-{mirror.name}-{int(now)}"
    labels = {
        "app.kubernetes.io/name": GIT_MIRROR,
        "app.kubernetes.io/component": "git-mirror",
    }
    credentials = credential_volumes(kube, template)
    kube.create_pvc(claim_body(mirror, claim, labels))
    job = clone_job_body(mirror, claim, labels, credentials)
    kube.create_job(job)
    if log is not None:
        log.info("cloning mirror", mirror=mirror.name, volume=claim)
    deadline = now + timeout
    waited = 0.0
    while True:
        status = kube.get_job(job["metadata"]["name"]).get("status") or {}
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        if conditions.get("Complete") == "True":
            kube.patch_pvc_labels(claim, {LABEL_STATE: "ready"})
            _delete_clone_job(kube, job["metadata"]["name"], log)
            return claim
        if conditions.get("Failed") == "True" or now + waited > deadline:
            kube.delete_pvc(claim)
            raise RuntimeError(f"cloning {mirror.repository} into {claim} failed")
        sleep(poll)
        waited += poll


def _delete_clone_job(kube: Kube, name: str, log: Any) -> None:
    """Delete a finished clone Job and its pod at once.

    A pod that mounts a claim keeps it from being deleted (the ``pvc-protection``
    finalizer counts completed pods too), so a clone pod left for the Job's TTL would keep a
    pruned volume ``Terminating`` that long.  A failed clone's Job is kept for its logs.
    """
    try:
        kube.delete_job(name)
    except KubeError as exc:
        if not exc.not_found and log is not None:
            log.warning("could not delete the clone Job", job=name, error=str(exc))
