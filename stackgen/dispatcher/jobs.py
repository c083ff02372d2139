"""Build agent Jobs from a queue's template, and read our Jobs back as planner views.

A Job is made from the suspended CronJob's jobTemplate as
``kubectl create job --from=cronjob/NAME`` makes it: the template's spec, labels and
annotations, plus ``cronjob.kubernetes.io/instantiate: manual``.  One deliberate
difference: no owner reference to the CronJob.  Owned Jobs would be garbage-collected
with their template, so removing a queue (a prune, a rename, ``kubectl delete``) would
kill every running build of it; unowned, they drain: running agents finish their jobs,
nothing new is dispatched without a template, and each Job goes by its own
``activeDeadlineSeconds`` and ``ttlSecondsAfterFinished`` (the CronJob controller never
lists or prunes them either).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable
from typing import Any

from stackgen.common.models import DispatchedQueue
from stackgen.common.names import AGENT_CONTAINER, AGENT_TOKEN_ENV
from stackgen.dispatcher.kube import JSON, Kube
from stackgen.dispatcher.planner import CreateJob, JobView

LABEL_DISPATCH_ID = "stackgen.io/dispatch-id"
LABEL_QUEUE = "stackgen.io/queue"
LABEL_BUILDKITE_JOB = "stackgen.io/buildkite-job"
LABEL_ATTEMPT = "stackgen.io/attempt"
LABEL_WARM = "stackgen.io/warm"
ANNOTATION_QUEUE = "stackgen.io/queue"
#: Every Job the dispatcher made carries a dispatch ID: the selector for "ours".
OUR_JOBS = LABEL_DISPATCH_ID
#: The events that say why a Job has no pods (FailedCreate: exceeded quota, …).
JOB_WARNINGS = "involvedObject.kind=Job,type=Warning"
IDLE_FLAG = "--disconnect-after-idle-timeout"
#: Pods are read for a Job this close to its pod start timeout, so a stuck Job's reason
#: (Unschedulable, ErrImagePull, …) is known when the planner gives up on it.
STUCK_MARGIN = 30.0


def parse_time(value: Any) -> float:
    """Kubernetes timestamps (RFC 3339) to epoch seconds."""
    if not isinstance(value, str) or not value:
        return 0.0
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def acquisition_secret_name(job_name: str) -> str:
    """Name of the per-job Secret holding an exact-mode job-acquisition token."""
    return f"{job_name}-acquire"


def build_job(
    cronjob: JSON,
    action: CreateJob,
    queue: DispatchedQueue,
    *,
    mirror_claim: str | None = None,
    mirror_path: str | None = None,
) -> JSON:
    """The Job for one :class:`CreateJob` action, made from the queue's CronJob."""
    template = cronjob["spec"]["jobTemplate"]
    meta = template.get("metadata") or {}
    ours = _our_labels(cronjob, action)
    annotations = dict(meta.get("annotations") or {})
    annotations["cronjob.kubernetes.io/instantiate"] = "manual"
    annotations[ANNOTATION_QUEUE] = queue.name

    spec = _copy_json(template["spec"])
    spec["parallelism"] = action.parallelism
    spec["completions"] = action.parallelism
    # One agent failing must not fail (and so stop) its siblings mid-build; exact-mode
    # agents are not retried: exit 27 means another agent already took the job.
    spec["backoffLimit"] = 0 if action.buildkite_job else action.parallelism
    spec["activeDeadlineSeconds"] = queue.dispatch.active_deadline_seconds
    spec["ttlSecondsAfterFinished"] = queue.dispatch.ttl_seconds_after_finished
    pod = spec.setdefault("template", {})
    pod_meta = pod.setdefault("metadata", {})
    pod_meta["labels"] = {**(pod_meta.get("labels") or {}), **ours}
    pod_spec = pod.setdefault("spec", {})
    container = _agent_container(pod_spec)
    if action.warm:
        container["args"] = _without_idle_timeout(container.get("args") or [])
    if action.buildkite_job:
        container["env"] = _acquire_env(container.get("env") or [], action)
    if mirror_claim and mirror_path:
        pod_spec.setdefault("volumes", []).append(
            {
                "name": "git-mirror",
                "persistentVolumeClaim": {"claimName": mirror_claim, "readOnly": True},
            }
        )
        container.setdefault("volumeMounts", []).append(
            {"name": "git-mirror", "mountPath": mirror_path, "readOnly": True}
        )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": action.name,
            "labels": {**(meta.get("labels") or {}), **ours},
            "annotations": annotations,
        },
        "spec": spec,
    }


def _our_labels(cronjob: JSON, action: CreateJob) -> dict[str, str]:
    """The labels the dispatcher puts on a Job and its pods (ours: the dispatch ID, …)."""
    template_labels = (cronjob["spec"]["jobTemplate"].get("metadata") or {}).get("labels") or {}
    ours = {LABEL_DISPATCH_ID: action.dispatch_id}
    queue_label = template_labels.get(LABEL_QUEUE) or (cronjob["metadata"].get("labels") or {}).get(
        LABEL_QUEUE
    )
    if queue_label:
        ours[LABEL_QUEUE] = queue_label
    if action.buildkite_job:
        ours[LABEL_BUILDKITE_JOB] = action.buildkite_job
        ours[LABEL_ATTEMPT] = str(action.attempt)
    if action.warm:
        ours[LABEL_WARM] = "true"
    return ours


def _acquire_env(env: list[JSON], action: CreateJob) -> list[JSON]:
    """An exact-mode agent's env: it acquires its one job with a token good for it only."""
    assert action.buildkite_job is not None
    env = [e for e in env if e.get("name") != "BUILDKITE_AGENT_ACQUIRE_JOB"]
    for entry in env:
        if entry.get("name") == AGENT_TOKEN_ENV:
            entry.clear()
            entry.update(
                name=AGENT_TOKEN_ENV,
                valueFrom={
                    "secretKeyRef": {"name": acquisition_secret_name(action.name), "key": "token"}
                },
            )
    env.append({"name": "BUILDKITE_AGENT_ACQUIRE_JOB", "value": action.buildkite_job})
    return env


def _copy_json(value: Any) -> Any:
    """A deep copy of JSON data (3x faster than copy.deepcopy: one per Job created)."""
    if isinstance(value, dict):
        return {key: _copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_json(item) for item in value]
    return value


def acquisition_secret(job: JSON, token: str) -> JSON:
    """The Secret with an exact-mode agent's job-acquisition token, owned by its Job (or pod)."""
    meta = job["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": acquisition_secret_name(meta["name"]),
            "labels": {
                k: v
                for k, v in (meta.get("labels") or {}).items()
                if k.startswith(("app.kubernetes.io/", "stackgen.io/"))
            },
            "ownerReferences": [
                {
                    "apiVersion": job.get("apiVersion") or "batch/v1",
                    "kind": job.get("kind") or "Job",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": False,
                }
            ],
        },
        "type": "Opaque",
        "stringData": {"token": token},
    }


def _agent_container(pod_spec: JSON) -> JSON:
    for container in pod_spec.get("containers") or []:
        if container.get("name") == AGENT_CONTAINER:
            return container  # type: ignore[no-any-return]
    containers = pod_spec.get("containers") or []
    if not containers:
        raise ValueError("the template has no containers")
    return containers[0]  # type: ignore[no-any-return]


def _without_idle_timeout(args: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == IDLE_FLAG:
            skip = True
            continue
        if arg.startswith(IDLE_FLAG + "="):
            continue
        out.append(arg)
    return out


def _condition(job: JSON, kind: str) -> bool:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return True
    return False


def list_views(
    kube: Kube, queues: dict[str, DispatchedQueue], now: float, jobs: list[JSON] | None = None
) -> list[JobView]:
    """Our Jobs as the planner sees them; their pods are listed only when a view needs them.

    ``status.ready`` of a Job counts its ready pods, so pods are read only when a Job's
    status lacks that field while it has active pods (a cluster without it), or when a Job
    nears its pod start timeout with no pod started (for the reason the planner reports).
    Listing every pod every cycle was most of a cycle's time and memory at 10 000 Jobs
    (bench/scale).  ``jobs``: the Jobs from an informer's cache instead of a fresh list.
    """
    if jobs is None:
        jobs = kube.list_jobs(OUR_JOBS)
    views = job_views(jobs, (), queues)
    if _pods_needed(jobs, views, queues, now):
        views = job_views(jobs, kube.list_pods(OUR_JOBS), queues)
        if any(_near_timeout(v, queues, now) and not v.waiting_reason for v in views):
            views = _with_job_events(kube, views)
    return views


def _with_job_events(kube: Kube, views: list[JobView]) -> list[JobView]:
    """Reasons from the Jobs' own warnings, for Jobs that have no pod to say why.

    A Job whose pods cannot even be created (a ResourceQuota, a LimitRange, an admission
    webhook) has only its ``FailedCreate`` event to tell: read the Warning events about
    Jobs (one list) and give each such view its newest.
    """
    newest: dict[str, tuple[str, str]] = {}
    for event in kube.list_events(JOB_WARNINGS):
        name = (event.get("involvedObject") or {}).get("name")
        when = str(event.get("lastTimestamp") or event.get("eventTime") or "")
        if name and when >= newest.get(name, ("", ""))[0]:
            reason, message = event.get("reason") or "Warning", event.get("message") or ""
            newest[name] = (when, f"{reason}: {message}".strip(": "))
    return [
        dataclasses.replace(v, waiting_reason=newest[v.name][1])
        if not v.waiting_reason and v.name in newest
        else v
        for v in views
    ]


def _pods_needed(
    jobs: list[JSON], views: list[JobView], queues: dict[str, DispatchedQueue], now: float
) -> bool:
    for job in jobs:
        status = job.get("status") or {}
        if status.get("ready") is None and int(status.get("active") or 0) > 0:
            return True
    return any(_near_timeout(view, queues, now) for view in views)


def _near_timeout(view: JobView, queues: dict[str, DispatchedQueue], now: float) -> bool:
    """No pod of the Job started, and its pod start timeout is near (or past)."""
    if view.finished or view.started > 0:
        return False
    timeout = queues[view.queue].dispatch.pod_start_timeout_seconds
    return now - view.created_at >= timeout - STUCK_MARGIN


def job_views(
    jobs: Iterable[JSON], pods: Iterable[JSON], queues: dict[str, DispatchedQueue]
) -> list[JobView]:
    """Our Jobs (and why their pods wait) as the planner sees them."""
    waiting: dict[str, str] = {}
    ready_pods: dict[str, int] = {}
    #: Owner -> pods by phase (Succeeded, Failed): the pods' own word, ahead of the Job's.
    ended: dict[tuple[str, str], int] = {}
    for pod in pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        owner = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
        if not owner:
            continue
        if _pod_ready(pod):
            ready_pods[owner] = ready_pods.get(owner, 0) + 1
        phase = str((pod.get("status") or {}).get("phase"))
        if phase in ("Succeeded", "Failed"):
            ended[owner, phase] = ended.get((owner, phase), 0) + 1
        reason = pod_waiting_reason(pod)
        if reason and owner not in waiting:
            waiting[owner] = reason
    views = []
    for job in jobs:
        meta = job.get("metadata") or {}
        labels = meta.get("labels") or {}
        queue_name = (meta.get("annotations") or {}).get(ANNOTATION_QUEUE)
        if queue_name not in queues or meta.get("deletionTimestamp"):
            continue
        spec = job.get("spec") or {}
        status = job.get("status") or {}
        name = meta["name"]
        # A throttled Job controller updates the status seconds late: a pod that ended is
        # first only in uncountedTerminatedPods, and a pod's own phase (read when pods are
        # listed) comes before both.  Each is a lower bound: take the highest, or a Job
        # whose agent ran looks as if no pod ever started.
        uncounted = status.get("uncountedTerminatedPods") or {}
        succeeded = int(status.get("succeeded") or 0) + len(uncounted.get("succeeded") or ())
        failed = int(status.get("failed") or 0) + len(uncounted.get("failed") or ())
        views.append(
            JobView(
                name=name,
                queue=queue_name,
                dispatch_id=labels.get(LABEL_DISPATCH_ID, ""),
                created_at=parse_time(meta.get("creationTimestamp")),
                completions=int(spec.get("completions") or spec.get("parallelism") or 1),
                succeeded=max(succeeded, ended.get((name, "Succeeded"), 0)),
                failed=max(failed, ended.get((name, "Failed"), 0)),
                ready=max(int(status.get("ready") or 0), ready_pods.get(name, 0)),
                finished=_condition(job, "Complete") or _condition(job, "Failed"),
                buildkite_job=labels.get(LABEL_BUILDKITE_JOB),
                attempt=int(labels.get(LABEL_ATTEMPT, "1") or 1),
                warm=labels.get(LABEL_WARM) == "true",
                waiting_reason=waiting.get(name),
            )
        )
    return views


def _pod_ready(pod: JSON) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def pod_waiting_reason(pod: JSON) -> str | None:
    """Why a pod is not running (ready), from its status.

    Unschedulable, ErrImagePull, a sidecar's CrashLoopBackOff, …
    """
    status = pod.get("status") or {}
    if status.get("phase") not in (None, "Pending", "Running"):
        return None
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            reason = condition.get("reason") or "Unschedulable"
            message = condition.get("message") or ""
            return f"{reason}: {message}".strip(": ")
    for field in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(field) or []:
            state = (container.get("state") or {}).get("waiting") or {}
            if state.get("reason") and state["reason"] not in (
                "ContainerCreating",
                "PodInitializing",
            ):
                return f"{state['reason']}: {state.get('message') or ''}".strip(": ")
    return None
