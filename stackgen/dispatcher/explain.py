"""Why a cycle decided what it did: the inputs of one queue's plan, for a debug log line.

The ``cycle`` info line says what happened (scheduled, running, supply, unmet, Jobs
created).  At debug level the dispatcher also writes one ``decision`` line per queue and
cycle with everything the planner was given, so a surprising dispatch can be explained
from its dispatch ID alone: the demand (Buildkite's counts, or the waiting jobs in exact
mode), the supply (every unfinished Job and how far its pods got), the cooldown's inputs
(the previous dispatch, how many of its agents started, the share and timeout), the
queue's limits, and the actions taken.
"""

from __future__ import annotations

from typing import Any

from stackgen.common.models import DispatchedQueue
from stackgen.dispatcher.planner import CreateJob, DeleteJob, Demand, FailJob, JobView, Plan

__all__ = ["decision_fields"]

#: Enough to explain a plan; a queue with more unfinished Jobs logs the newest ones.
MAX_JOBS = 20


def _job(view: JobView, now: float) -> dict[str, Any]:
    return {
        "name": view.name,
        "dispatch_id": view.dispatch_id,
        "age_seconds": round(now - view.created_at, 1),
        "completions": view.completions,
        "remaining": view.remaining,
        "started": view.started,
        "ready": view.ready,
        **({"warm": True} if view.warm else {}),
        **({"waiting_reason": view.waiting_reason} if view.waiting_reason else {}),
        **({"buildkite_job": view.buildkite_job} if view.buildkite_job else {}),
    }


def _action(action: Any) -> dict[str, Any]:
    if isinstance(action, CreateJob):
        out: dict[str, Any] = {"create": action.name, "agents": action.parallelism}
        if action.buildkite_job:
            out["buildkite_job"] = action.buildkite_job
        return out
    if isinstance(action, DeleteJob):
        return {"delete": action.name, "reason": action.reason}
    if isinstance(action, FailJob):
        return {"fail": action.buildkite_job, "reason": action.detail}
    return {"warn": action.detail}


def _cooldown(queue: DispatchedQueue, views: list[JobView], now: float) -> dict[str, Any]:
    """The cooldown's inputs: the newest cold dispatch and how far its agents got."""
    cold = sorted((v for v in views if not v.warm), key=lambda v: (v.created_at, v.name))
    out: dict[str, Any] = {
        "share": queue.dispatch.cooldown_share,
        "timeout_seconds": queue.dispatch.cooldown_timeout_seconds,
    }
    if cold:
        last = cold[-1]
        out["previous"] = {
            "dispatch_id": last.dispatch_id,
            "started": last.started,
            "completions": last.completions,
            "age_seconds": round(now - last.created_at, 1),
            "finished": last.finished,
        }
    return out


def decision_fields(
    queue: DispatchedQueue,
    demand: Demand,
    views: list[JobView],
    plan: Plan,
    now: float,
    *,
    announced: bool = False,
) -> dict[str, Any]:
    """Everything one queue's plan was made from, and what it decided (JSON-ready)."""
    unfinished = [v for v in views if not v.finished]
    unfinished.sort(key=lambda v: (v.created_at, v.name))
    demand_fields: dict[str, Any] = {
        "scheduled": demand.scheduled,
        "running": demand.running,
        "runnable": demand.runnable,
    }
    if queue.mode == "exact":
        demand_fields["waiting_jobs"] = [w.uuid for w in demand.jobs[:MAX_JOBS]]
    if demand.paused:
        demand_fields["paused"] = True
    fields: dict[str, Any] = {
        "demand": demand_fields,
        "supply": {
            "agents": plan.supply,
            "jobs": [_job(v, now) for v in unfinished[-MAX_JOBS:]],
            "unfinished_jobs": len(unfinished),
        },
        "unmet": plan.unmet,
        "limits": {
            "min_agents": queue.min_agents,
            "max_agents": queue.max_agents,
            "buffer": queue.buffer,
            "pod_start_timeout_seconds": queue.dispatch.pod_start_timeout_seconds,
        },
        "webhook_announced": announced,
        "actions": [_action(a) for a in plan.actions],
        "notes": list(plan.notes),
    }
    if queue.mode == "dispatch":
        fields["cooldown"] = {"holding": plan.cooldown, **_cooldown(queue, views, now)}
    return fields
