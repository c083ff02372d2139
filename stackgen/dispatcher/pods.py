"""Agent pods the dispatcher creates itself (``dispatch.workload: pod``).

With Jobs, every agent pod waits in kube-controller-manager's Job controller queue,
whose client is limited to 20 requests a second (burst 30) by default: a burst of
agents appears over seconds.  In ``pod`` mode the dispatcher creates the pods itself,
as fast as the API server and the scheduler take them, and does what the Job controller
did for them:

* each pod is the Job's pod template as today (labels, annotations, the agent's env),
  with ``restartPolicy: Never``, the queue's ``activeDeadlineSeconds`` and an owner
  reference to the template CronJob (not a controller reference): nothing is orphaned
  when the stack goes, whatever happened to the dispatcher;
* an exact-mode pod's name comes from its Buildkite job and attempt
  (``<template>-<job uuid>-<attempt>``), so a create retried by anyone, after any
  failure or a restart, finds the pod that exists (409) and never makes a second one;
  its token Secret is owned by the pod;
* a dispatch-mode create of N agents is N pods ``<template>-<dispatch id>-<n>`` that
  share the label ``stackgen.io/agent-group`` (the planner sees them as one group, as it
  saw one Job);
* finished pods are deleted ``ttlSecondsAfterFinished`` after they finished (their
  annotation ``stackgen.io/ttl-seconds-after-finished``, which keeping a failed pod
  raises), and a pod still not running past its ``activeDeadlineSeconds`` (which the
  kubelet enforces only on pods it runs) is deleted too: the leader does it every
  :data:`COLLECT_EVERY` seconds, for every agent pod of the namespace (also those of a
  queue removed meanwhile).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from stackgen.common.models import DispatchedQueue
from stackgen.dispatcher.jobs import (
    ANNOTATION_QUEUE,
    LABEL_ATTEMPT,
    LABEL_BUILDKITE_JOB,
    LABEL_DISPATCH_ID,
    LABEL_WARM,
    acquisition_secret_name,
    parse_time,
    pod_waiting_reason,
)
from stackgen.dispatcher.kube import JSON, KubeError
from stackgen.dispatcher.planner import CreateJob, JobView

#: On every pod the dispatcher creates: the selector for "our agent pods".
LABEL_WORKLOAD = "stackgen.io/workload"
OUR_PODS = f"{LABEL_WORKLOAD}=pod"
#: Dispatch mode: the pods of one create share it (``<template>-<dispatch id>``).
LABEL_GROUP = "stackgen.io/agent-group"
ANNOTATION_TTL = "stackgen.io/ttl-seconds-after-finished"
#: How often the leader collects finished pods.
COLLECT_EVERY = 10.0
FINISHED = ("Succeeded", "Failed")


def exact_pod_name(template: str, buildkite_job: str, attempt: int) -> str:
    """An exact-mode pod's name: the same for the same job and attempt, whoever creates it."""
    return f"{template}-{buildkite_job.lower()}-{attempt}"


def pod_names(action: CreateJob, template: str) -> list[str]:
    """The pods one :class:`CreateJob` becomes."""
    if action.buildkite_job:
        return [exact_pod_name(template, action.buildkite_job, action.attempt)]
    return [f"{action.name}-{index}" for index in range(action.parallelism)]


def job_to_pods(job: JSON, cronjob: JSON, action: CreateJob) -> list[JSON]:
    """The pods for a Job body (made by :func:`~.jobs.build_job`, maybe a step's)."""
    meta = job["metadata"]
    spec = job["spec"]
    template = spec.get("template") or {}
    pod_meta = template.get("metadata") or {}
    labels = {**(meta.get("labels") or {}), **(pod_meta.get("labels") or {})}
    labels[LABEL_WORKLOAD] = "pod"
    if not action.buildkite_job:
        labels[LABEL_GROUP] = action.name
    annotations = {**(meta.get("annotations") or {}), **(pod_meta.get("annotations") or {})}
    annotations.pop("cronjob.kubernetes.io/instantiate", None)
    annotations[ANNOTATION_TTL] = str(int(spec.get("ttlSecondsAfterFinished") or 0))
    cron_meta = cronjob["metadata"]
    owner = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "name": cron_meta["name"],
        "uid": cron_meta.get("uid", ""),
        "controller": False,
        "blockOwnerDeletion": False,
    }
    pods = []
    for name in pod_names(action, cron_meta["name"]):
        pod_spec = dict(template.get("spec") or {})
        if action.buildkite_job:
            pod_spec["containers"] = _token_from(pod_spec, meta["name"], name)
        pod_spec["restartPolicy"] = "Never"
        pod_spec["activeDeadlineSeconds"] = int(spec["activeDeadlineSeconds"])
        pods.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "labels": dict(labels),
                    "annotations": dict(annotations),
                    "ownerReferences": [owner],
                },
                "spec": pod_spec,
            }
        )
    return pods


def _token_from(pod_spec: JSON, job_name: str, pod_name: str) -> list[JSON]:
    """The containers, their token read from the pod's own Secret, not the Job's."""
    before, after = acquisition_secret_name(job_name), acquisition_secret_name(pod_name)
    containers = []
    for container in pod_spec.get("containers") or []:
        env = []
        for entry in container.get("env") or []:
            ref = (entry.get("valueFrom") or {}).get("secretKeyRef") or {}
            if ref.get("name") == before:
                entry = {**entry, "valueFrom": {"secretKeyRef": {**ref, "name": after}}}
            env.append(entry)
        containers.append({**container, "env": env} if "env" in container else container)
    return containers


def group_of(pod: JSON) -> str:
    """The group a pod belongs to: its create's (dispatch mode), else the pod itself."""
    meta = pod.get("metadata") or {}
    return str((meta.get("labels") or {}).get(LABEL_GROUP) or meta.get("name", ""))


def _ready(pod: JSON) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def pod_views(pods: Iterable[JSON], queues: Mapping[str, DispatchedQueue]) -> list[JobView]:
    """Our agent pods as the planner sees Jobs: one view per group (per create)."""
    groups: dict[str, list[JSON]] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        queue = (meta.get("annotations") or {}).get(ANNOTATION_QUEUE)
        if queue in queues and not meta.get("deletionTimestamp"):
            groups.setdefault(group_of(pod), []).append(pod)
    views = []
    for name, members in groups.items():
        meta = members[0]["metadata"]
        labels = meta.get("labels") or {}
        phases = [(p.get("status") or {}).get("phase") for p in members]
        reasons = [r for r in map(pod_waiting_reason, members) if r]
        views.append(
            JobView(
                name=name,
                queue=meta["annotations"][ANNOTATION_QUEUE],
                dispatch_id=labels.get(LABEL_DISPATCH_ID, ""),
                created_at=min(parse_time(p["metadata"].get("creationTimestamp")) for p in members),
                completions=len(members),
                succeeded=phases.count("Succeeded"),
                failed=phases.count("Failed"),
                ready=sum(1 for p in members if _ready(p)),
                finished=all(phase in FINISHED for phase in phases),
                buildkite_job=labels.get(LABEL_BUILDKITE_JOB),
                attempt=int(labels.get(LABEL_ATTEMPT, "1") or 1),
                warm=labels.get(LABEL_WARM) == "true",
                waiting_reason=reasons[0] if reasons else None,
            )
        )
    return views


def finished_at(pod: JSON) -> float | None:
    """When a Succeeded or Failed pod finished (its last container's end), else None."""
    status = pod.get("status") or {}
    if status.get("phase") not in FINISHED:
        return None
    ends = [
        parse_time(((c.get("state") or {}).get("terminated") or {}).get("finishedAt"))
        for c in status.get("containerStatuses") or []
    ]
    ends = [e for e in ends if e]
    if ends:
        return max(ends)
    stamps = [parse_time(c.get("lastTransitionTime")) for c in status.get("conditions") or []]
    stamps = [s for s in stamps if s]
    if stamps:
        return max(stamps)
    return parse_time((pod.get("metadata") or {}).get("creationTimestamp")) or None


def expired(pods: Iterable[JSON], now: float) -> list[tuple[str, str]]:
    """(pod name, why) for each agent pod to delete now: ``ttl`` or ``deadline``."""
    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        ended = finished_at(pod)
        if ended is not None:
            ttl = (meta.get("annotations") or {}).get(ANNOTATION_TTL, "0")
            if now >= ended + (int(ttl) if ttl.isdigit() else 0):
                out.append((str(meta.get("name")), "ttl"))
            continue
        deadline = (pod.get("spec") or {}).get("activeDeadlineSeconds")
        created = parse_time(meta.get("creationTimestamp"))
        pending = (pod.get("status") or {}).get("phase") in (None, "Pending")
        if deadline and created and pending and now >= created + int(deadline):
            out.append((str(meta.get("name")), "deadline"))
    return out


def collect(clients: Any, log: Any) -> list[str]:
    """Delete finished agent pods past their TTL (and pending ones past their deadline)."""
    informer = clients.pod_informer
    try:
        deleted = []
        for name, why in expired(our_pods(clients), clients.clock()):
            try:
                clients.kube.delete_pod(name)
            except KubeError as exc:
                if not exc.not_found:
                    raise
            if informer is not None:
                informer.remove(name)
            clients.metrics.pods_collected.labels(why).inc()
            deleted.append(name)
        if deleted:
            log.info("collected finished agent pods", pods=len(deleted))
        return deleted
    except KubeError as exc:
        clients.metrics.kube_error(exc, log, "collecting finished agent pods failed")
        return []


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def keep_pod_patches(
    pods: Iterable[JSON], queues: Mapping[str, DispatchedQueue], now: float
) -> list[tuple[str, JSON]]:
    """(pod name, patch) for each failed agent pod to keep for debugging (see keep.py)."""
    from stackgen.dispatcher.keep import (
        ANNOTATION_KEPT_UNTIL,
        LABEL_KEEP_REQUESTED,
        LABEL_KEPT,
        MAX_KEEP_SECONDS,
    )

    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        if labels.get(LABEL_KEPT) == "true" or (pod.get("status") or {}).get("phase") != "Failed":
            continue
        queue = queues.get((meta.get("annotations") or {}).get(ANNOTATION_QUEUE, ""))
        asked = labels.get(LABEL_KEEP_REQUESTED, "")
        seconds = max(
            queue.dispatch.keep_failed_pods_seconds if queue is not None else 0,
            min(int(asked), MAX_KEEP_SECONDS) if asked.isdigit() else 0,
        )
        if seconds <= 0:
            continue
        ended = finished_at(pod)
        until = (ended if ended is not None else now) + seconds
        patch = {
            "metadata": {
                "labels": {LABEL_KEPT: "true"},
                "annotations": {ANNOTATION_KEPT_UNTIL: _iso(until), ANNOTATION_TTL: str(seconds)},
            }
        }
        out.append((str(meta.get("name")), patch))
    return out


def our_pods(clients: Any) -> list[JSON]:
    """Our agent pods: from the watch cache when synced, else one list."""
    informer = clients.pod_informer
    if informer is not None and informer.synced:
        return list(informer.snapshot())
    return list(clients.kube.list_pods(OUR_PODS))


def keep_pods(clients: Any, queues: Mapping[str, DispatchedQueue], log: Any) -> list[str]:
    """Mark failed agent pods to keep, and raise their TTL annotation; their names."""
    kept = []
    try:
        for name, patch in keep_pod_patches(our_pods(clients), queues, clients.clock()):
            updated = clients.kube.patch_pod(name, patch)
            if clients.pod_informer is not None:
                clients.pod_informer.upsert(updated)
            kept.append(name)
            log.info(
                "keeping a failed agent pod for debugging",
                pod=name,
                kept_until=patch["metadata"]["annotations"]["stackgen.io/kept-until"],
            )
    except KubeError as exc:
        clients.metrics.kube_error(exc, log, "keeping failed pods failed")
    return kept
