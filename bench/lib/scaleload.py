"""The scale benchmark's world: 100 queues, 10 000 scheduled jobs, 10 000 existing Jobs.

Deterministic (seeded).  Half the queues are ``dispatch`` mode, half ``exact``.  The
Kubernetes side is made as the API returns it (Jobs built by the dispatcher's own
``build_job`` from a queue template, with status and managedFields; pods with their
status), written as list pages of 500 items, so the benchmark can time what the real loop
does each cycle: parse the pages, build JobViews, plan every queue, build the Job bodies.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stackgen.common.models import DispatchedQueue, DispatchSettings
from stackgen.dispatcher.jobs import build_job
from stackgen.dispatcher.planner import CreateJob, Demand, WaitingJob
from tests.support.fake_kube import cronjob_template

NOW = 1_800_000_000.0
PAGE = 500


@dataclass(frozen=True)
class Scenario:
    """Sizes of the scale world."""

    queues: int = 100
    scheduled: int = 10_000
    jobs: int = 10_000
    seed: int = 7

    @property
    def dispatch_queues(self) -> int:
        return self.queues // 2


def queue_configs(sc: Scenario) -> list[DispatchedQueue]:
    """Half dispatch, half exact; bounds high enough that the planner creates."""
    out = []
    for i in range(sc.queues):
        mode = "dispatch" if i < sc.dispatch_queues else "exact"
        name = f"q{i:03d}-{mode}"
        out.append(
            DispatchedQueue(
                name=name,
                mode=mode,  # type: ignore[arg-type]
                template=f"buildkite-agent-{name}",
                min_agents=0,
                max_agents=1000,
                buffer=2 if mode == "dispatch" else 0,
                dispatch=DispatchSettings(
                    poll_interval_seconds=10.0,
                    cooldown_share=0.5,
                    cooldown_timeout_seconds=120.0,
                    active_deadline_seconds=10800,
                    ttl_seconds_after_finished=300,
                    pod_start_timeout_seconds=300.0,
                ),
                git_mirror=None,
            )
        )
    return out


def _stamp(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _managed_fields(ts: float) -> list[dict[str, Any]]:
    # What the API server adds to every object (lists return it unless asked not to).
    return [
        {
            "manager": "stackgen",
            "operation": "Update",
            "apiVersion": "batch/v1",
            "time": _stamp(ts),
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:metadata": {"f:annotations": {".": {}}, "f:labels": {".": {}}},
                "f:spec": {"f:backoffLimit": {}, "f:completions": {}, "f:parallelism": {}},
            },
        },
        {
            "manager": "kube-controller-manager",
            "operation": "Update",
            "apiVersion": "batch/v1",
            "time": _stamp(ts + 3),
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:status": {"f:active": {}, "f:ready": {}, "f:startTime": {}}},
            "subresource": "status",
        },
    ]


def world(sc: Scenario) -> dict[str, Any]:
    """Demands per queue, and the Job and Pod JSON objects that exist."""
    rng = random.Random(sc.seed)
    queues = queue_configs(sc)
    per_queue = sc.scheduled // sc.queues
    exact = [q for q in queues if q.mode == "exact"]
    dispatch = [q for q in queues if q.mode == "dispatch"]
    # Jobs: ~5 % of them in dispatch queues (few, wide Jobs), the rest one per exact job.
    dispatch_jobs_per_queue = max(1, sc.jobs // 20 // max(1, len(dispatch)))
    exact_jobs_per_queue = (sc.jobs - dispatch_jobs_per_queue * len(dispatch)) // max(1, len(exact))
    demands: dict[str, Demand] = {}
    jobs: list[dict[str, Any]] = []
    pods: list[dict[str, Any]] = []
    templates = {q.name: _cronjob(q) for q in queues}
    for q in dispatch:
        agents = 0
        for k in range(dispatch_jobs_per_queue):
            parallelism = rng.randint(5, 40)
            created = NOW - rng.uniform(30, 3000)
            done = rng.randint(0, parallelism)
            finished = done == parallelism
            job, job_pods = _job(
                templates[q.name], q, f"{k:08x}", parallelism, None, created, done, finished, rng
            )
            jobs.append(job)
            pods.extend(job_pods)
            agents += parallelism - done
        demands[q.name] = Demand(scheduled=per_queue, running=agents)
    for q in exact:
        waiting = [
            WaitingJob(str(uuid.UUID(int=rng.getrandbits(128))), NOW - rng.uniform(0, 600))
            for _ in range(per_queue)
        ]
        # A third of the waiting jobs already have a Job (pod still pending) ...
        already = waiting[: per_queue // 3]
        for k, w in enumerate(already):
            job, job_pods = _job(
                templates[q.name], q, f"a{k:07x}", 1, w.uuid, NOW - 5, 0, False, rng, pending=True
            )
            jobs.append(job)
            pods.extend(job_pods)
        # ... and the rest of the queue's Jobs run (or ran) jobs taken earlier.
        for k in range(exact_jobs_per_queue - len(already)):
            running = str(uuid.UUID(int=rng.getrandbits(128)))
            created = NOW - rng.uniform(30, 3000)
            finished = rng.random() < 0.3
            job, job_pods = _job(
                templates[q.name], q, f"{k:08x}", 1, running, created, int(finished), finished, rng
            )
            jobs.append(job)
            pods.extend(job_pods)
        demands[q.name] = Demand(scheduled=per_queue, jobs=tuple(waiting))
    return {
        "queues": queues,
        "demands": demands,
        "jobs": jobs,
        "pods": pods,
        "templates": templates,
    }


def _cronjob(q: DispatchedQueue) -> dict[str, Any]:
    cron = cronjob_template(q.template, q.name)
    cron["metadata"]["uid"] = str(uuid.uuid5(uuid.NAMESPACE_DNS, q.template))
    cron["metadata"]["namespace"] = "buildkite"
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    # A template as `stackgen build` makes it carries more than the fake's minimum.
    container["resources"] = {
        "requests": {"cpu": "2", "memory": "4Gi"},
        "limits": {"memory": "8Gi"},
    }
    container["env"] += [
        {"name": "BUILDKITE_AGENT_TAGS", "value": f"queue={q.name},os=linux"},
        {"name": "BUILDKITE_BUILD_PATH", "value": "/buildkite/builds"},
        {"name": "BUILDKITE_HOOKS_PATH", "value": "/buildkite/hooks"},
    ]
    container["volumeMounts"] = [
        {"name": "builds", "mountPath": "/buildkite/builds"},
        {"name": "hooks", "mountPath": "/buildkite/hooks"},
    ]
    container["securityContext"] = {"allowPrivilegeEscalation": False, "runAsNonRoot": True}
    pod_spec = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    pod_spec["volumes"] = [
        {"name": "builds", "emptyDir": {}},
        {"name": "hooks", "configMap": {"name": "buildkite-agent-hooks-5h2k9"}},
    ]
    pod_spec["serviceAccountName"] = "buildkite-agent"
    pod_spec["terminationGracePeriodSeconds"] = 3600
    return cron


def _job(
    cron: dict[str, Any],
    q: DispatchedQueue,
    dispatch_id: str,
    parallelism: int,
    buildkite_job: str | None,
    created: float,
    succeeded: int,
    finished: bool,
    rng: random.Random,
    *,
    pending: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    action = CreateJob(
        queue=q.name,
        name=f"{q.template}-{dispatch_id}",
        dispatch_id=dispatch_id,
        parallelism=parallelism,
        buildkite_job=buildkite_job,
    )
    body = build_job(cron, action, q)
    meta = body["metadata"]
    meta.update(
        namespace="buildkite",
        uid=str(uuid.UUID(int=rng.getrandbits(128))),
        resourceVersion=str(rng.randint(1, 10**7)),
        generation=1,
        creationTimestamp=_stamp(created),
        managedFields=_managed_fields(created),
    )
    active = 0 if finished else parallelism - succeeded
    ready = 0 if pending else active
    status: dict[str, Any] = {
        "startTime": _stamp(created + 1),
        "active": active,
        "ready": ready,
        "succeeded": succeeded,
        "terminating": 0,
        "uncountedTerminatedPods": {},
    }
    if finished:
        status["conditions"] = [
            {"type": "Complete", "status": "True", "lastProbeTime": _stamp(created + 600)}
        ]
        status["completionTime"] = _stamp(created + 600)
    body["status"] = status
    pods = []
    for index in range(active):
        labels = dict(body["spec"]["template"]["metadata"]["labels"])
        labels["batch.kubernetes.io/job-name"] = action.name
        labels["job-name"] = action.name
        labels["batch.kubernetes.io/controller-uid"] = meta["uid"]
        pod_spec = copy.deepcopy(body["spec"]["template"]["spec"])
        pod_spec["nodeName"] = f"node-{rng.randint(0, 99):02d}"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{action.name}-{index}-{rng.getrandbits(20):05x}",
                "namespace": "buildkite",
                "uid": str(uuid.UUID(int=rng.getrandbits(128))),
                "labels": labels,
                "creationTimestamp": _stamp(created + 0.5),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": action.name,
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
                "managedFields": _managed_fields(created),
            },
            "spec": pod_spec,
            "status": _pod_status(created, pending),
        }
        pods.append(pod)
    return body, pods


def _pod_status(created: float, pending: bool) -> dict[str, Any]:
    if pending:
        return {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [
                {
                    "name": "agent",
                    "ready": False,
                    "state": {"waiting": {"reason": "ContainerCreating"}},
                    "image": "buildkite/agent:3.117.0",
                }
            ],
        }
    return {
        "phase": "Running",
        "podIP": "10.1.2.3",
        "startTime": _stamp(created + 1),
        "conditions": [
            {"type": t, "status": "True", "lastTransitionTime": _stamp(created + 2)}
            for t in (
                "PodReadyToStartContainers",
                "Initialized",
                "Ready",
                "ContainersReady",
                "PodScheduled",
            )
        ],
        "containerStatuses": [
            {
                "name": "agent",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "image": "buildkite/agent:3.117.0",
                "imageID": "docker.io/buildkite/agent@sha256:" + "0" * 64,
                "containerID": "containerd://" + "1" * 64,
                "state": {"running": {"startedAt": _stamp(created + 2)}},
            }
        ],
    }


def write_pages(items: list[dict[str, Any]], kind: str, folder: Path) -> list[Path]:
    """The list as the API pages it (limit=500): one JSON file per page."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in range(0, len(items), PAGE):
        page = {
            "apiVersion": "batch/v1" if kind == "jobs" else "v1",
            "kind": "JobList" if kind == "jobs" else "PodList",
            "metadata": {
                "resourceVersion": "123456",
                "continue": "x" if start + PAGE < len(items) else "",
            },
            "items": items[start : start + PAGE],
        }
        path = folder / f"{kind}-{start // PAGE:04d}.json"
        path.write_text(json.dumps(page, separators=(",", ":")))
        paths.append(path)
    return paths
