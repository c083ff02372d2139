"""The agent API a real ``buildkite-agent start`` speaks: register, connect, ping, heartbeat.

Shapes as the agent's own client sends and reads them (``github.com/buildkite/agent/v3``
v3.138.3, ``api/agents.go``, ``pings.go``, ``heartbeats.go``): an agent registers with the
registration token (the fake's token, or a job-acquisition token: then it may acquire only
that job) and gets its own access token, which every later call presents.  A ping offers
the oldest scheduled job of the agent's queue that no stack reserved, unless the agent asked
not to be dispatched to (``--acquire-job`` agents register with ``ignore_in_dispatches``,
``--disconnect-after-job`` agents finish their job with ``ignore_agent_in_dispatches``).
What the agent then does with the job (accept, start, log chunks, finish) is in
:mod:`.jobs_api`.  Only the polling ping is served: the streaming ping (gRPC) is not, and
the agent falls back to polling by itself.
"""

from __future__ import annotations

import fnmatch
import re
import secrets
from collections.abc import Mapping
from typing import Any, cast

from tests.support.fake_buildkite.state import AgentRecord, FakeJob, State, new_uuid
from tests.support.fake_buildkite.wire import (
    ApiError,
    Ctx,
    Response,
    Route,
    iso_timestamp,
    json_response,
    presented_token,
)

#: A job's log chunks may be this big (the agent splits its output accordingly).
CHUNK_MAX_BYTES = 100 * 1024
LOG_MAX_BYTES = 100 * 1024 * 1024


# --------------------------------------------------------------------------- credentials


def agent_token_ok(fake: State, token: str, params: Mapping[str, str], now: float) -> bool:
    """Whether ``token`` is a registered agent's access token."""
    return token in fake._agent_tokens


def registration_token_ok(fake: State, token: str, params: Mapping[str, str], now: float) -> bool:
    """A job-acquisition token registers too (the agent may then acquire only its job)."""
    info = fake._acq_tokens.get(token)
    return info is not None and info.expires_at > now


def session(fake: State, ctx: Ctx) -> AgentRecord:
    """The agent whose access token the request presents (401 if none)."""
    token = presented_token(ctx.request.headers) or ""
    agent_uuid = fake._agent_tokens.get(token)
    if agent_uuid is None:
        raise ApiError(401, "This endpoint needs an agent access token")
    return fake._agent_records[agent_uuid]


# --------------------------------------------------------------------------- jobs as agents see them


def agent_env(agent: AgentRecord) -> dict[str, str]:
    """What Buildkite adds to a job's env for the agent that runs it."""
    env = {"BUILDKITE_AGENT_ID": agent.uuid, "BUILDKITE_AGENT_NAME": agent.name}
    for tag in agent.tags:
        key, sep, value = tag.partition("=")
        if sep and key:
            env["BUILDKITE_AGENT_META_DATA_" + re.sub(r"[^A-Z0-9]", "_", key.upper())] = value
    return env


def job_json(fake: State, job: FakeJob, token: str = "") -> dict[str, Any]:
    """A job as ping, accept and acquire answer it (``api.Job``)."""
    step: dict[str, Any] = {"command": job.command, "label": job.label}
    if job.step_key:
        step["key"] = job.step_key
    return {
        "id": job.uuid,
        "endpoint": fake.advertised_endpoint,
        "state": job.state,
        "env": dict(job.env),
        "step": step,
        "chunks_max_size_bytes": CHUNK_MAX_BYTES,
        "chunks_interval_seconds": 1,
        "log_max_size_bytes": LOG_MAX_BYTES,
        "token": token,
        "runnable_at": iso_timestamp(cast(float, job.runnable_at)),
        "priority": job.priority,
    }


def take_job(job: FakeJob, agent: AgentRecord) -> None:
    """Hand ``job`` to ``agent``: its env gains the agent's."""
    job.agent_uuid, job.agent_name = agent.uuid, agent.name
    job.env.update(agent_env(agent))
    agent.current_job = job.uuid


def job_token(fake: State, job: FakeJob) -> str:
    """A new token for ``job`` (what accept and acquire hand out; good for that job only)."""
    token = "bkjt_" + secrets.token_urlsafe(24)
    fake._job_tokens[token] = job.uuid
    return token


def _matches(job: FakeJob, agent: AgentRecord) -> bool:
    """Whether ``agent`` may run ``job``: its queue, and every other rule matched by a tag."""
    if job.queue != agent.queue:
        return False
    tags = dict(t.partition("=")[::2] for t in agent.tags)
    for rule in job.agent_query_rules:
        key, _, want = rule.partition("=")
        if key == "queue":
            continue
        if key not in tags or not fnmatch.fnmatchcase(tags[key], want):
            return False
    return True


def offer(fake: State, agent: AgentRecord) -> FakeJob | None:
    """The job a ping hands ``agent`` now (state ``assigned``), if any."""
    if agent.ignore_in_dispatches or agent.bound_job or agent.current_job:
        return None
    if agent.state not in ("registered", "connected"):
        return None
    queue = fake._queues.get(agent.queue)
    if queue is not None and queue.paused:
        return None
    for job in fake._sorted_jobs():
        if job.state == "scheduled" and _matches(job, agent):
            job.state = "assigned"
            return job
    return None


# --------------------------------------------------------------------------- routes


def register(fake: State, ctx: Ctx) -> Response:
    body = ctx.body
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    tags = body.get("meta_data") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ApiError(422, "meta_data must be an array of strings")
    features = body.get("features") or []
    queue = fake.default_queue
    for tag in tags:
        if tag.startswith("queue="):
            queue = fake._resolve_queue(tag.partition("=")[2])
    fake.add_queue(queue)
    presented = presented_token(ctx.request.headers) or ""
    acq = fake._acq_tokens.get(presented)
    number = len(fake._agent_records) + 1
    agent = AgentRecord(
        uuid=new_uuid(),
        name=str(body.get("name") or f"fake-agent-{number}"),
        hostname=str(body.get("hostname") or ""),
        version=str(body.get("version") or ""),
        queue=queue,
        tags=list(tags),
        features=[str(f) for f in features] if isinstance(features, list) else [],
        ignore_in_dispatches=bool(body.get("ignore_in_dispatches")),
        registered_at=ctx.now,
        bound_job=acq.job_uuid if acq is not None else None,
    )
    access_token = "bkaa_" + secrets.token_urlsafe(24)
    fake._agent_records[agent.uuid] = agent
    fake._agent_tokens[access_token] = agent.uuid
    return json_response(
        200,
        {
            "id": agent.uuid,
            "name": agent.name,
            "access_token": access_token,
            "endpoint": fake.advertised_endpoint,
            "request_headers": {},
            "ping_interval": fake.ping_interval,
            "job_status_interval": fake.job_status_interval,
            "heartbeat_interval": fake.heartbeat_interval,
            "meta_data": list(agent.tags),
        },
    )


def agent_public(agent: AgentRecord) -> dict[str, Any]:
    """An agent as the API shows it (never its token)."""
    return {
        "id": agent.uuid,
        "name": agent.name,
        "connection_state": agent.state,
        "meta_data": list(agent.tags),
    }


def connect(fake: State, ctx: Ctx) -> Response:
    agent = session(fake, ctx)
    agent.state, agent.connected_at = "connected", ctx.now
    return json_response(200, agent_public(agent))


def disconnect(fake: State, ctx: Ctx) -> Response:
    agent = session(fake, ctx)
    agent.state, agent.disconnected_at = "disconnected", ctx.now
    job = fake._jobs.get(agent.current_job or "")
    if job is not None and job.state == "assigned" and job.accepted_at is None:
        # Offered by a ping but never accepted: back in the queue for another agent.
        job.state, job.agent_uuid, job.agent_name = "scheduled", None, None
        agent.current_job = None
    return json_response(200, agent_public(agent))


def stop(fake: State, ctx: Ctx) -> Response:
    agent = session(fake, ctx)
    agent.state = "stopping"
    return json_response(200, agent_public(agent))


def pause(fake: State, ctx: Ctx) -> Response:
    agent = session(fake, ctx)
    agent.state = "paused"
    return json_response(200, agent_public(agent))


def resume(fake: State, ctx: Ctx) -> Response:
    agent = session(fake, ctx)
    agent.state = "connected"
    return json_response(200, agent_public(agent))


def heartbeat(fake: State, ctx: Ctx) -> Response:
    agent = session(fake, ctx)
    agent.last_heartbeat_at = ctx.now
    sent = ctx.body.get("sent_at") if isinstance(ctx.body, dict) else None
    return json_response(200, {"sent_at": sent or "", "received_at": iso_timestamp(ctx.now)})


def ping(fake: State, ctx: Ctx) -> Response:
    agent = session(fake, ctx)
    agent.last_ping_at, agent.pings = ctx.now, agent.pings + 1
    if agent.pending_action is not None:
        action, agent.pending_action = agent.pending_action, None
        return json_response(200, {"action": action})
    job = offer(fake, agent)
    if job is None:
        return json_response(200, {"action": "idle"})
    take_job(job, agent)
    return json_response(200, {"job": job_json(fake, job)})


ROUTES = (
    Route("POST", ("register",), "register", None, register, also_accepts=registration_token_ok),
    *(
        Route(method, (name,), name, None, handler, also_accepts=agent_token_ok, token_ok=False)
        for method, name, handler in (
            ("POST", "connect", connect),
            ("POST", "disconnect", disconnect),
            ("POST", "heartbeat", heartbeat),
            ("GET", "ping", ping),
            ("POST", "stop", stop),
            ("POST", "pause", pause),
            ("POST", "resume", resume),
        )
    ),
)
