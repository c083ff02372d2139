"""What an agent asks of one job: ``PUT /v3/jobs/:id/acquire`` and ``GET /v3/jobs/:id``.

``--acquire-job`` agents acquire their job (with the agent token, or the job-acquisition
token issued for exactly that job: see the server's auth check).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import cast

from tests.support.fake_buildkite.state import State
from tests.support.fake_buildkite.wire import (
    ApiError,
    Ctx,
    Response,
    Route,
    iso_timestamp,
    json_response,
)


def acquire_job(fake: State, ctx: Ctx) -> Response:
    job = fake._require_job(ctx.params["uuid"])
    status, message = fake._acquire(job, ctx.now)
    if status == 423:
        raise ApiError(423, message, headers={"Retry-After": str(fake.acquire_retry_after)})
    if status != 200:
        raise ApiError(status, message)
    return json_response(
        200,
        {
            "id": job.uuid,
            "endpoint": fake.advertised_endpoint,
            "state": job.state,
            "env": dict(job.env),
            "step": {"command": job.command, "label": job.label},
            "token": "fake-job-token-" + secrets.token_hex(8),
            "runnable_at": iso_timestamp(cast(float, job.runnable_at)),
        },
    )


def job_state(fake: State, ctx: Ctx) -> Response:
    job = fake._require_job(ctx.params["uuid"])
    return json_response(200, {"state": job.state})


def job_acquisition_token(fake: State, token: str, params: Mapping[str, str], now: float) -> bool:
    """Whether ``token`` is a job-acquisition token for this very job, still valid."""
    info = fake._acq_tokens.get(token)
    return info is not None and info.job_uuid == params["uuid"] and info.expires_at > now


ROUTES = (
    Route(
        "PUT",
        ("jobs", ":uuid", "acquire"),
        "acquire_job",
        None,
        acquire_job,
        also_accepts=job_acquisition_token,
    ),
    Route("GET", ("jobs", ":uuid"), "job_state", None, job_state),
)
