"""Exact mode: a step's own pod, when the step carries the ``kubernetes`` plugin.

Before an exact-mode Job is created, the job is read from the Stacks API (its command and
environment, with the step's plugins in ``BUILDKITE_PLUGINS``).  A step without the plugin
gets the queue's template as before.  A step with it gets the pod it describes
(:mod:`stackgen.dispatcher.podspec`), after the queue's guard rails and a server-side dry
run of the Job; a step refused by either is finished on Buildkite with the reason (and
the reason goes on its timeline), so it never waits for an agent that will not come.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from typing import Any

from stackgen.buildkite import BuildkiteError
from stackgen.buildkite.models import StackJob
from stackgen.common.models import DispatchedQueue
from stackgen.dispatcher.clients import Clients
from stackgen.dispatcher.keep import mark_requested
from stackgen.dispatcher.kube import JSON, KubeError
from stackgen.dispatcher.planner import CreateJob
from stackgen.dispatcher.podspec import (
    KubernetesPlugin,
    PluginError,
    build_pod,
    find_plugin,
    refusals,
)

#: Prefix of every refusal reason on Buildkite.
REFUSED = "stackgen refused this step's pod"


class StepRefused(Exception):
    """The step was failed on Buildkite (with ``detail``): create nothing for it."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def timestamp(clock: Callable[[], float]) -> str:
    """Buildkite's timestamp format (as :func:`stackgen.dispatcher.act.iso`)."""
    return dt.datetime.fromtimestamp(clock(), dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def step_job_maker(
    clients: Clients,
    queue: DispatchedQueue,
    make: Callable[[CreateJob], JSON],
    log: Any = None,
) -> Callable[[CreateJob], JSON]:
    """``make`` for an exact queue: each Job as its step asks (raises StepRefused)."""
    return functools.partial(_make, clients, queue, make, log)


def _make(
    clients: Clients,
    queue: DispatchedQueue,
    make: Callable[[CreateJob], JSON],
    log: Any,
    action: CreateJob,
) -> JSON:
    body = make(action)
    if not action.buildkite_job:
        return body
    key, _ = clients.stacks.key(queue)
    job = clients.api.stack_job(key, action.buildkite_job)
    mark_requested(body, job.env)
    try:
        plugin = find_plugin(job.env)
        if plugin is None:
            return body
        if not queue.kubernetes_plugin.enabled:
            raise PluginError("the kubernetes plugin is disabled on this queue")
        body = step_job(body, job, plugin, queue)
    except PluginError as exc:
        _refuse(clients, queue, key, action.buildkite_job, str(exc), log)
    try:
        clients.kube.dry_run_job(body)
    except KubeError as exc:
        if exc.status not in (400, 422):
            raise
        _refuse(clients, queue, key, action.buildkite_job, f"Kubernetes rejected it: {exc}", log)
    return body


def step_job(body: JSON, job: StackJob, plugin: KubernetesPlugin, queue: DispatchedQueue) -> JSON:
    """The Job ``body`` (made from the queue's template) with the step's own pod."""
    settings = queue.kubernetes_plugin
    template = body["spec"]["template"]
    stack_images = {
        str(c.get("image"))
        for c in [
            *template["spec"].get("containers", []),
            *template["spec"].get("initContainers", []),
        ]
    }
    pod = build_pod(template["spec"], job.command, job.env, plugin, settings)
    reasons = refusals(pod, settings, stack_images)
    if reasons:
        raise PluginError("; ".join(reasons))
    template["spec"] = pod.spec
    meta = template.setdefault("metadata", {})
    # The step's labels and annotations, never over stackgen's own.
    meta["labels"] = {**plugin.labels, **(meta.get("labels") or {})}
    meta["annotations"] = {**plugin.annotations, **(meta.get("annotations") or {})}
    meta["annotations"]["stackgen.io/pod-steps"] = "kubernetes-plugin"
    if plugin.active_deadline_seconds:
        body["spec"]["activeDeadlineSeconds"] = min(
            plugin.active_deadline_seconds,
            int(body["spec"].get("activeDeadlineSeconds") or 0) or plugin.active_deadline_seconds,
        )
    return body


def _refuse(
    clients: Clients, queue: DispatchedQueue, key: str, uuid: str, reason: str, log: Any
) -> None:
    """Fail the job on Buildkite with the reason, on its timeline too; then StepRefused."""
    detail = f"{REFUSED}: {reason}"
    if log is not None:
        log.error("refusing step", buildkite_job=uuid, reason=detail)
    try:
        clients.api.notify(key, [(uuid, detail[:256], timestamp(clients.clock))])
    except BuildkiteError as exc:  # a timeline note is not worth keeping the job waiting
        clients.metrics.buildkite_error(exc, log, "notifications")
    clients.api.finish_job(key, uuid, exit_status=-1, detail=detail)
    clients.metrics.jobs_failed.labels(queue.name).inc()
    raise StepRefused(detail)
