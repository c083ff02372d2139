"""The metrics endpoints (``GET /v3/metrics``, ``/v3/metrics/queue``) and ``GET /v3/token``.

Counts per queue as Buildkite's agent metrics endpoint gives them (a reserved job still
waits, so it counts as scheduled; agents: those a test set plus the real agents connected
through the agent API), with the poll-duration hint agents and adapters obey.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tests.support.fake_buildkite.state import State
from tests.support.fake_buildkite.wire import (
    RUNNING_STATES,
    SCHEDULED_STATES,
    WAITING_STATES,
    ApiError,
    Ctx,
    Response,
    Route,
    json_response,
)


def metrics_payload(fake: State, queue: str | None) -> dict[str, Any]:
    """The body of ``GET /v3/metrics`` (or ``/metrics/queue?name=queue``) now."""
    names = [queue] if queue is not None else sorted(fake._queues)
    per_jobs: dict[str, dict[str, int]] = {}
    per_agents: dict[str, dict[str, int]] = {}
    for name in names:
        counts = {"scheduled": 0, "running": 0, "waiting": 0}
        for job in fake._jobs.values():
            if job.queue != name:
                continue
            if job.state in SCHEDULED_STATES:
                counts["scheduled"] += 1
            elif job.state in RUNNING_STATES:
                counts["running"] += 1
            elif job.state in WAITING_STATES:
                counts["waiting"] += 1
        counts["total"] = counts["scheduled"] + counts["running"] + counts["waiting"]
        per_jobs[name] = counts
        idle, busy = fake._agents.get(name, (0, 0))
        for agent in fake._agent_records.values():  # real agents connected to the fake
            if agent.queue == name and agent.state in ("connected", "paused", "stopping"):
                busy, idle = (busy + 1, idle) if agent.current_job else (busy, idle + 1)
        per_agents[name] = {"idle": idle, "busy": busy, "total": idle + busy}

    def total(per: dict[str, dict[str, int]], keys: Sequence[str]) -> dict[str, int]:
        return {k: sum(v[k] for v in per.values()) for k in keys}

    agents: dict[str, Any] = total(per_agents, ("idle", "busy", "total"))
    jobs: dict[str, Any] = total(per_jobs, ("scheduled", "running", "waiting", "total"))
    if queue is None:
        agents["queues"] = per_agents
        jobs["queues"] = per_jobs
    payload: dict[str, Any] = {
        "agents": agents,
        "jobs": jobs,
        "organization": {"slug": fake.organization_slug},
    }
    if fake.cluster_name is not None:
        payload["cluster"] = {"name": fake.cluster_name}
    return payload


def metrics(fake: State, ctx: Ctx) -> Response:
    return json_response(200, metrics_payload(fake, None), _poll_header(fake))


def metrics_queue(fake: State, ctx: Ctx) -> Response:
    name = ctx.arg("name")
    if not name:
        raise ApiError(400, "name is required")
    return json_response(200, metrics_payload(fake, name), _poll_header(fake))


def _poll_header(fake: State) -> dict[str, str]:
    return {"Buildkite-Agent-Metrics-Poll-Duration": str(fake.poll_duration_seconds)}


def token(fake: State, ctx: Ctx) -> Response:
    return json_response(
        200,
        {
            "uuid": fake.token_uuid,
            "description": "fake agent token",
            "token_type": "cluster" if fake.cluster_uuid else "organization",
            "organization_slug": fake.organization_slug,
            "organization_uuid": fake.organization_uuid,
            "cluster_uuid": fake.cluster_uuid,
            "cluster_name": (fake.cluster_name or "") if fake.cluster_uuid else "",
            "organization_queue_uuid": "",
            "organization_queue_key": "",
        },
    )


ROUTES = (
    Route("GET", ("metrics",), "metrics", None, metrics),
    Route("GET", ("metrics", "queue"), "metrics_queue", None, metrics_queue),
    Route("GET", ("token",), "token", None, token),
)
