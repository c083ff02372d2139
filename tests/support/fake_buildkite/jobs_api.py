"""What an agent asks of one job: acquire or accept it, start it, log, finish, its state.

Shapes as ``github.com/buildkite/agent/v3`` v3.138.3 sends them (``api/jobs.go``,
``chunks.go``, ``header_times.go``): ``PUT /v3/jobs/:id/acquire`` (``--acquire-job``:
200, 423 with ``Retry-After`` while the job waits on dependencies, 422 once it was
acquired, ran or was cancelled), ``PUT …/accept`` (a job a ping offered), ``PUT …/start``,
``POST …/chunks?sequence=&offset=&size=`` (the log, gzip-compressed in the body),
``POST …/header_times``, ``PUT …/finish`` (exit status as a string, signal, failed chunk
count) and ``GET /v3/jobs/:id`` (its state: ``canceling`` tells the agent to stop it).

Credentials: the fake's token (tests drive it so), a job-acquisition token for exactly its
job, an agent's access token, or the job token accept/acquire handed out for that job.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Mapping

from tests.support.fake_buildkite.agent_api import job_json, job_token, session, take_job
from tests.support.fake_buildkite.state import AgentRecord, FakeJob, State
from tests.support.fake_buildkite.wire import (
    TERMINAL_STATES,
    ApiError,
    Ctx,
    Response,
    Route,
    json_response,
    presented_token,
)


def job_acquisition_token(fake: State, token: str, params: Mapping[str, str], now: float) -> bool:
    """Whether ``token`` is a job-acquisition token for this very job, still valid."""
    info = fake._acq_tokens.get(token)
    return info is not None and info.job_uuid == params["uuid"] and info.expires_at > now


def agent_for_job(fake: State, token: str, params: Mapping[str, str], now: float) -> bool:
    """An agent's access token (a bound agent: only for its job), or this job's job token."""
    agent_uuid = fake._agent_tokens.get(token)
    if agent_uuid is not None:
        bound = fake._agent_records[agent_uuid].bound_job
        return bound is None or bound == params["uuid"]
    return fake._job_tokens.get(token) == params["uuid"]


def acquire_credential(fake: State, token: str, params: Mapping[str, str], now: float) -> bool:
    return job_acquisition_token(fake, token, params, now) or agent_for_job(
        fake, token, params, now
    )


def _presenting_agent(fake: State, ctx: Ctx) -> AgentRecord | None:
    agent_uuid = fake._agent_tokens.get(presented_token(ctx.request.headers) or "")
    return fake._agent_records.get(agent_uuid or "")


def acquire_job(fake: State, ctx: Ctx) -> Response:
    job = fake._require_job(ctx.params["uuid"])
    status, message = fake._acquire(job, ctx.now)
    if status == 423:
        raise ApiError(423, message, headers={"Retry-After": str(fake.acquire_retry_after)})
    if status != 200:
        raise ApiError(status, message)
    agent = _presenting_agent(fake, ctx)
    if agent is not None:
        take_job(job, agent)
        job.accepted_at = ctx.now
    return json_response(200, job_json(fake, job, job_token(fake, job)))


def accept_job(fake: State, ctx: Ctx) -> Response:
    agent = session(fake, ctx)
    job = fake._require_job(ctx.params["uuid"])
    if job.agent_uuid != agent.uuid:
        raise ApiError(422, "Job was not assigned to this agent")
    if job.state != "assigned" or job.accepted_at is not None:
        raise ApiError(422, f"Job is {job.state} and can't be accepted")
    job.state, job.accepted_at = "accepted", ctx.now
    return json_response(200, job_json(fake, job, job_token(fake, job)))


def _running_job(fake: State, ctx: Ctx) -> FakeJob:
    job = fake._require_job(ctx.params["uuid"])
    if job.state in TERMINAL_STATES:
        raise ApiError(422, f"Job is already {job.state}")
    return job


def start_job(fake: State, ctx: Ctx) -> Response:
    job = _running_job(fake, ctx)
    if job.state in ("assigned", "accepted"):
        job.state = "running"
    elif job.state != "canceling":
        raise ApiError(422, f"Job is {job.state} and can't be started")
    job.started_at = ctx.now
    return json_response(200, {"id": job.uuid, "state": job.state})


def _query_int(ctx: Ctx, name: str) -> int:
    value = ctx.arg(name)
    if value is None or not value.isdigit():
        raise ApiError(400, f"{name} must be a non-negative integer")
    return int(value)


def upload_chunk(fake: State, ctx: Ctx) -> Response:
    job = fake._require_job(ctx.params["uuid"])
    sequence, offset, size = (_query_int(ctx, n) for n in ("sequence", "offset", "size"))
    data = ctx.request.body
    if "gzip" in (ctx.request.headers.get("content-encoding") or "").lower():
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise ApiError(400, "chunk body is not valid gzip") from err
    if len(data) != size:
        raise ApiError(422, f"chunk size is {len(data)} bytes, size says {size}")
    chunks = fake._chunks.setdefault(job.uuid, {})
    chunks[sequence] = (offset, data)  # a retried chunk replaces itself
    job.chunks = len(chunks)
    return json_response(201, {"id": f"{job.uuid}-{sequence}"})


def header_times(fake: State, ctx: Ctx) -> Response:
    job = fake._require_job(ctx.params["uuid"])
    times = ctx.body.get("header_times") if isinstance(ctx.body, dict) else None
    if not isinstance(times, dict):
        raise ApiError(400, "header_times must be an object")
    job.header_times.update({str(k): str(v) for k, v in times.items()})
    return json_response(200, {})


def finish_job(fake: State, ctx: Ctx) -> Response:
    job = _running_job(fake, ctx)
    body = ctx.body if isinstance(ctx.body, dict) else {}
    raw_status = body.get("exit_status")
    try:
        exit_status = None if raw_status in (None, "") else int(str(raw_status))
    except ValueError as err:
        raise ApiError(422, "exit_status must be an integer") from err
    failed = body.get("chunks_failed_count")
    job.state = "canceled" if job.state == "canceling" else "finished"
    job.exit_status = exit_status
    job.signal = str(body["signal"]) if body.get("signal") else None
    job.signal_reason = str(body["signal_reason"]) if body.get("signal_reason") else None
    job.chunks_failed_count = failed if isinstance(failed, int) else None
    job.finished_at = ctx.now
    job.reserved_by = job.reserved_until = None
    agent = fake._agent_records.get(job.agent_uuid or "")
    if agent is not None and agent.current_job == job.uuid:
        agent.current_job = None
        agent.jobs.append(job.uuid)
        if body.get("ignore_agent_in_dispatches") is True:
            agent.ignore_in_dispatches = True
    return json_response(200, {"id": job.uuid, "state": job.state})


def job_state(fake: State, ctx: Ctx) -> Response:
    job = fake._require_job(ctx.params["uuid"])
    return json_response(200, {"state": job.state})


def _job_route(method: str, action: str, handler: Callable[[State, Ctx], Response]) -> Route:
    return Route(
        method,
        ("jobs", ":uuid", action),
        f"agent_{action}",
        None,
        handler,
        also_accepts=agent_for_job,
        token_ok=False,
        raw_body=action == "chunks",
    )


ROUTES = (
    Route(
        "PUT",
        ("jobs", ":uuid", "acquire"),
        "acquire_job",
        None,
        acquire_job,
        also_accepts=acquire_credential,
    ),
    Route("GET", ("jobs", ":uuid"), "job_state", None, job_state, also_accepts=agent_for_job),
    _job_route("PUT", "accept", accept_job),
    _job_route("PUT", "start", start_job),
    _job_route("POST", "chunks", upload_chunk),
    _job_route("POST", "header_times", header_times),
    _job_route("PUT", "finish", finish_job),
)
