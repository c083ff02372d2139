"""Keep a failed agent's pod for debugging, for a bounded time, on request.

A Job whose agent pod failed is normally collected with its pods
``ttlSecondsAfterFinished`` after it finished.  When the queue asks for it
(``dispatch.keepFailedPodsSeconds``) or the Buildkite job did (exact mode: the env var
``STACKGEN_KEEP_FAILED_POD`` on the step, ``true`` or seconds, read with the job before
its Job is made), the dispatcher raises that Job's ``ttlSecondsAfterFinished`` to the
keep time (a mutable field) and marks it: label ``stackgen.io/kept=true`` and annotation
``stackgen.io/kept-until``.  The TTL controller still deletes it then: nothing is kept
forever.  ``stackgen status`` lists kept Jobs and their failed pods.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from stackgen.common.models import DispatchedQueue
from stackgen.dispatcher.jobs import LABEL_QUEUE
from stackgen.dispatcher.kube import JSON

__all__ = [
    "ANNOTATION_KEPT_UNTIL",
    "KEEP_ENV",
    "LABEL_KEEP_REQUESTED",
    "LABEL_KEPT",
    "MAX_KEEP_SECONDS",
    "keep_failed",
    "keep_patches",
    "mark_requested",
    "requested_seconds",
]

#: The Buildkite job's env var that asks for its pod to be kept if its agent fails.
KEEP_ENV = "STACKGEN_KEEP_FAILED_POD"
#: On a Job whose Buildkite job asked (value: seconds).
LABEL_KEEP_REQUESTED = "stackgen.io/keep-failed-pod"
#: On a Job the dispatcher kept.
LABEL_KEPT = "stackgen.io/kept"
ANNOTATION_KEPT_UNTIL = "stackgen.io/kept-until"
#: ``true`` asks for an hour; no request keeps a pod longer than a week.
DEFAULT_KEEP_SECONDS = 3600
MAX_KEEP_SECONDS = 7 * 24 * 3600


def requested_seconds(env: Mapping[str, str]) -> int | None:
    """What a job's env asks for: seconds to keep its pod, or None (absent, off, garbage)."""
    raw = str(env.get(KEEP_ENV, "")).strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return None
    if raw in ("true", "yes", "on", "1"):
        return DEFAULT_KEEP_SECONDS
    try:
        seconds = int(raw)
    except ValueError:
        return None
    return min(seconds, MAX_KEEP_SECONDS) if seconds > 0 else None


def mark_requested(body: JSON, env: Mapping[str, str]) -> None:
    """Label a Job about to be created when its Buildkite job asked to keep its pod."""
    seconds = requested_seconds(env)
    if seconds is not None:
        body["metadata"].setdefault("labels", {})[LABEL_KEEP_REQUESTED] = str(seconds)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _finished_at(job: JSON) -> float | None:
    status = job.get("status") or {}
    stamp = status.get("completionTime")
    for condition in status.get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            stamp = stamp or condition.get("lastTransitionTime")
    if not stamp:
        return None
    return dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


def keep_patches(
    jobs: Iterable[JSON], queues: Mapping[str, DispatchedQueue], now: float
) -> list[tuple[str, JSON]]:
    """(Job name, patch) for each Job with a failed pod that should be kept and is not yet."""
    out = []
    for job in jobs:
        meta = job.get("metadata") or {}
        labels = meta.get("labels") or {}
        if (
            labels.get(LABEL_KEPT) == "true"
            or int((job.get("status") or {}).get("failed") or 0) < 1
        ):
            continue
        queue = queues.get(labels.get(LABEL_QUEUE, ""))
        asked = labels.get(LABEL_KEEP_REQUESTED, "")
        seconds = max(
            queue.dispatch.keep_failed_pods_seconds if queue is not None else 0,
            min(int(asked), MAX_KEEP_SECONDS) if asked.isdigit() else 0,
        )
        if seconds <= 0:
            continue
        finished = _finished_at(job)
        until = (finished if finished is not None else now) + seconds
        patch: dict[str, Any] = {
            "metadata": {
                "labels": {LABEL_KEPT: "true"},
                "annotations": {ANNOTATION_KEPT_UNTIL: _iso(until)},
            },
            "spec": {"ttlSecondsAfterFinished": int(seconds)},
        }
        out.append((str(meta.get("name")), patch))
    return out


def keep_failed(clients: Any, queues: Mapping[str, DispatchedQueue], log: Any) -> list[str]:
    """Mark and extend the Jobs to keep (from the watch cache when synced); their names."""
    from stackgen.dispatcher.jobs import OUR_JOBS
    from stackgen.dispatcher.kube import KubeError

    informer = clients.informer
    try:
        if informer is not None and informer.synced:
            jobs = informer.snapshot()
        else:
            jobs = clients.kube.list_jobs(OUR_JOBS)
        kept = []
        for name, patch in keep_patches(jobs, queues, clients.clock()):
            updated = clients.kube.patch_job(name, patch)
            if informer is not None:
                informer.upsert(updated)
            kept.append(name)
            log.info(
                "keeping the pods of a Job whose agent failed, for debugging",
                job=name,
                ttl_seconds_after_finished=patch["spec"]["ttlSecondsAfterFinished"],
                kept_until=patch["metadata"]["annotations"][ANNOTATION_KEPT_UNTIL],
            )
        return kept
    except KubeError as exc:
        clients.metrics.kube_error(exc, log, "keeping failed pods failed")
        return []
