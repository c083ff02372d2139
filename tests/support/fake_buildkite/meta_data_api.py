"""Build meta-data, as ``buildkite-agent meta-data set|get|exists|keys`` reach it from a job.

Shapes of ``api/meta_data.go`` (agent v3.138.3): ``POST /v3/jobs/:id/data/set``
``{"key", "value"}``, ``…/data/set-batch`` ``{"items": [{"key", "value"}]}``, and
``POST /v3/{jobs|builds}/:id/data/{get|exists|keys}``.  Meta-data belongs to the build (a
job's calls read and write its build's).  The agent's own checkout needs ``exists`` and
``set`` (it records the checked-out commit as ``buildkite:git:commit``).  A job presents
its job token; an agent's access token works too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tests.support.fake_buildkite.state import State
from tests.support.fake_buildkite.wire import ApiError, Ctx, Response, Route, json_response


def meta_data_credential(fake: State, token: str, params: Mapping[str, str], now: float) -> bool:
    """An agent's access token, or a job token of this job (or of a job of this build)."""
    if token in fake._agent_tokens:
        return True
    job = fake._jobs.get(fake._job_tokens.get(token, ""))
    return job is not None and params["id"] in (job.uuid, job.build_uuid)


def _build_data(fake: State, ctx: Ctx) -> dict[str, str]:
    """The meta-data of the build the path names (``jobs/:id``: that job's build)."""
    build = ctx.params["id"]
    if ctx.params["scope"] == "jobs":
        build = fake._require_job(build).build_uuid
    elif not any(j.build_uuid == build for j in fake._jobs.values()):
        raise ApiError(404, "Build not found")
    return fake._meta_data.setdefault(build, {})


def _pair(item: Any) -> tuple[str, str]:
    if not isinstance(item, dict):
        raise ApiError(400, "request body must be a JSON object")
    key, value = item.get("key"), item.get("value")
    if not isinstance(key, str) or not key.strip():
        raise ApiError(422, "key can't be blank")
    if not isinstance(value, str) or not value:
        raise ApiError(422, "value can't be blank")
    return key, value


def set_meta_data(fake: State, ctx: Ctx) -> Response:
    if ctx.params["scope"] != "jobs":
        raise ApiError(404, "Not Found")
    data = _build_data(fake, ctx)
    body = ctx.body if isinstance(ctx.body, dict) else {}
    items = body.get("items") if ctx.params["action"] == "set-batch" else [body]
    if not isinstance(items, list):
        raise ApiError(400, "items must be an array")
    pairs = [_pair(item) for item in items]  # all or nothing
    data.update(pairs)
    return json_response(200, {})


def read_meta_data(fake: State, ctx: Ctx) -> Response:
    data = _build_data(fake, ctx)
    action = ctx.params["action"]
    if action == "keys":
        return json_response(200, sorted(data))
    key = ctx.body.get("key") if isinstance(ctx.body, dict) else None
    if not isinstance(key, str) or not key:
        raise ApiError(422, "key can't be blank")
    if action == "exists":
        return json_response(200, {"exists": key in data})
    if key not in data:
        raise ApiError(404, f"No meta-data value exists with key `{key}`")
    return json_response(200, {"key": key, "value": data[key]})


def meta_data(fake: State, ctx: Ctx) -> Response:
    action = ctx.params["action"]
    if ctx.params["scope"] not in ("jobs", "builds"):
        raise ApiError(404, "Not Found")
    if action in ("set", "set-batch"):
        return set_meta_data(fake, ctx)
    if action in ("get", "exists", "keys"):
        return read_meta_data(fake, ctx)
    raise ApiError(404, "Not Found")


ROUTES = (
    Route(
        "POST",
        (":scope", ":id", "data", ":action"),
        "meta_data",
        None,
        meta_data,
        also_accepts=meta_data_credential,
        token_ok=False,
    ),
)
