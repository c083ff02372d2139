"""The Stacks API: register a stack, list scheduled jobs, reserve them, finish them.

Also job states, stack notifications (timeline notes) and job-acquisition tokens, each
with Buildkite's validation and answers, and the per-scope rate limits the server applies
(each route's ``scope``).
"""

from __future__ import annotations

import base64
import binascii
import collections
import json
import secrets
from collections.abc import Mapping
from typing import Any, cast

from tests.support.fake_buildkite.state import FakeJob, IssuedToken, StackRecord, State, new_uuid
from tests.support.fake_buildkite.wire import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_RESERVATION_SECONDS,
    DEFAULT_TOKEN_LIFETIME_SECONDS,
    MAX_BATCH,
    MAX_FINISH_DETAIL_BYTES,
    MAX_METADATA_KEYS,
    MAX_NOTIFICATION_DETAIL,
    MAX_NOTIFICATIONS_PER_JOB,
    MAX_RESERVATION_SECONDS,
    NOTIFY_AFTER_FINISH_SECONDS,
    STACK_KEY_RE,
    STACK_TYPES,
    TERMINAL_STATES,
    ApiError,
    Ctx,
    Response,
    Route,
    iso_timestamp,
    job_uuid_list,
    json_response,
    parse_iso,
    positive_int,
)


def register(fake: State, ctx: Ctx) -> Response:
    body = ctx.body
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    key, stack_type, queue_key = body.get("key"), body.get("type"), body.get("queue_key")
    metadata = body.get("metadata")
    if not isinstance(key, str) or not STACK_KEY_RE.fullmatch(key):
        raise ApiError(
            422, "key must be 1-80 characters of letters, digits, underscores and dashes"
        )
    if stack_type not in STACK_TYPES:
        raise ApiError(422, f"type must be one of {', '.join(STACK_TYPES)}")
    if not isinstance(queue_key, str) or not queue_key:
        raise ApiError(422, "queue_key is required")
    if not isinstance(metadata, dict):
        raise ApiError(422, "metadata is required and must be an object")
    if len(metadata) > MAX_METADATA_KEYS or not all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 256
        for k, v in metadata.items()
    ):
        raise ApiError(
            422, "metadata must be at most 100 string keys (<= 64) with string values (<= 256)"
        )
    queue = fake._resolve_queue(queue_key)
    if queue not in fake._queues:
        raise ApiError(404, "Cluster queue not found")
    existing = fake._stacks.get(key)
    if existing is None:
        active = sum(1 for s in fake._stacks.values() if s.state == "connected")
        if active >= fake.max_stacks:
            raise ApiError(403, "Stack limit exceeded for this organization")
        stack = StackRecord(new_uuid(), key, stack_type, queue, dict(metadata), ctx.now)
        fake._stacks[key] = stack
        return json_response(201, fake._stack_json(stack))
    existing.type, existing.queue_key, existing.metadata = stack_type, queue, dict(metadata)
    existing.state, existing.last_connected_on = "connected", ctx.now
    return json_response(200, fake._stack_json(existing))


def deregister(fake: State, ctx: Ctx) -> Response:
    stack = fake._require_stack(ctx)
    stack.state = "disconnected"
    return Response(204)


def list_scheduled_jobs(fake: State, ctx: Ctx) -> Response:
    fake._require_stack(ctx)
    queue_key = ctx.arg("queue_key")
    if not queue_key:
        raise ApiError(400, "queue_key is required")
    queue = fake._resolve_queue(queue_key)
    if queue not in fake._queues:
        raise ApiError(404, "Cluster queue not found")
    limit_arg = ctx.arg("limit")
    limit = DEFAULT_PAGE_SIZE
    if limit_arg is not None:
        if not limit_arg.isdigit() or not 1 <= int(limit_arg) <= MAX_BATCH:
            raise ApiError(400, f"limit must be a positive integer no larger than {MAX_BATCH}")
        limit = int(limit_arg)
    after = ctx.arg("after")
    jobs = [j for j in fake._sorted_jobs() if j.queue == queue and j.state == "scheduled"]
    if after:
        cursor = _decode_cursor(after)
        jobs = [j for j in jobs if (j.scheduled_at, j.seq) > cursor]
    page = jobs[:limit]
    q = fake._queues[queue]
    return json_response(
        200,
        {
            "jobs": [_scheduled_job_json(j) for j in page],
            "page_info": {
                "has_next_page": len(jobs) > limit,
                "end_cursor": _encode_cursor(page[-1]) if page else None,
            },
            "cluster_queue": {"id": q.id, "dispatch_paused": q.paused, "paused": q.paused},
        },
    )


def batch_reserve(fake: State, ctx: Ctx) -> Response:
    stack = fake._require_stack(ctx)
    uuids = job_uuid_list(ctx.body)
    seconds = positive_int(
        ctx.body,
        "reservation_expiry_seconds",
        DEFAULT_RESERVATION_SECONDS,
        MAX_RESERVATION_SECONDS,
    )
    reserved: list[str] = []
    not_reserved: list[str] = []
    for uuid in uuids:
        job = fake._jobs.get(uuid)
        mine = job is not None and job.state == "reserved" and job.reserved_by == stack.key
        if job is not None and (job.state == "scheduled" or mine):
            job.state = "reserved"
            job.reserved_by = stack.key
            job.reserved_until = ctx.now + seconds
            reserved.append(uuid)
        else:
            not_reserved.append(uuid)
    return json_response(200, {"reserved": reserved, "not_reserved": not_reserved})


def get_job(fake: State, ctx: Ctx) -> Response:
    fake._require_stack(ctx)
    job = fake._require_job(ctx.params["uuid"])
    return json_response(200, {"id": job.uuid, "env": dict(job.env), "command": job.command})


def get_job_states(fake: State, ctx: Ctx) -> Response:
    fake._require_stack(ctx)
    uuids = job_uuid_list(ctx.body)
    states = {u: fake._jobs[u].state for u in uuids if u in fake._jobs}
    return json_response(200, {"states": states})


def finish_job(fake: State, ctx: Ctx) -> Response:
    stack = fake._require_stack(ctx)
    job = fake._require_job(ctx.params["uuid"])
    body = ctx.body if ctx.body is not None else {}
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    detail = body.get("detail")
    if not isinstance(detail, str):
        raise ApiError(422, "detail is required")
    if len(detail.encode()) > MAX_FINISH_DETAIL_BYTES:
        raise ApiError(422, f"detail must be at most {MAX_FINISH_DETAIL_BYTES} bytes")
    exit_status = body.get("exit_status", -1)
    if exit_status is None:
        exit_status = -1
    if not isinstance(exit_status, int) or isinstance(exit_status, bool):
        raise ApiError(400, "exit_status must be an integer")
    if any(f["job_uuid"] == job.uuid for f in fake._finished):
        raise ApiError(422, "Job has already been finished by a stack")
    if job.state in TERMINAL_STATES:
        raise ApiError(422, f"Job is already {job.state}")
    job.state = "finished"
    job.exit_status = exit_status
    job.finished_at = ctx.now
    job.reserved_by = job.reserved_until = None
    fake._finished.append(
        {
            "stack_key": stack.key,
            "job_uuid": job.uuid,
            "exit_status": exit_status,
            "detail": detail,
            "at": ctx.now,
        }
    )
    return json_response(200, {})


def notifications(fake: State, ctx: Ctx) -> Response:
    stack = fake._require_stack(ctx)
    if not isinstance(ctx.body, dict) or not isinstance(ctx.body.get("notifications"), list):
        raise ApiError(400, "notifications must be an array")
    items: list[Any] = ctx.body["notifications"]
    if len(items) > MAX_BATCH:
        raise ApiError(422, f"notifications must not contain more than {MAX_BATCH} items")
    errors: dict[str, list[int]] = {}
    per_job = collections.Counter(n["job_uuid"] for n in fake._notifications)
    for index, item in enumerate(items):
        problem, record = _check_notification(fake, item, ctx.now, per_job)
        if problem is not None:
            errors.setdefault(problem, []).append(index)
            continue
        assert record is not None
        record["stack_key"] = stack.key
        per_job[record["job_uuid"]] += 1
        fake._notifications.append(record)
    return json_response(
        200, {"errors": [{"error": e, "indexes": idx} for e, idx in errors.items()]}
    )


def _check_notification(
    fake: State, item: Any, now: float, per_job: Mapping[str, int]
) -> tuple[str | None, dict[str, Any] | None]:
    if not isinstance(item, dict):
        return "notification must be an object", None
    uuid, detail, stamp = item.get("job_uuid"), item.get("detail"), item.get("timestamp")
    if not isinstance(uuid, str) or not uuid:
        return "job_uuid is required", None
    job = fake._jobs.get(uuid)
    if job is None:
        return "job not found", None
    if not isinstance(detail, str) or not detail:
        return "detail is required", None
    if len(detail) > MAX_NOTIFICATION_DETAIL:
        return f"detail is too long (maximum is {MAX_NOTIFICATION_DETAIL} characters)", None
    when = now
    if stamp is not None:
        try:
            when = parse_iso(str(stamp))
        except ValueError:
            return "timestamp is not a valid ISO 8601 time", None
        if when > now + 1.0:
            return "timestamp cannot be in the future", None
        if when < cast(float, job.created_at) - 1.0:
            return "timestamp cannot be before the job was created", None
    if job.finished_at is not None and now - job.finished_at > NOTIFY_AFTER_FINISH_SECONDS:
        return "job finished too long ago", None
    if per_job.get(uuid, 0) >= MAX_NOTIFICATIONS_PER_JOB:
        return "job stack notification count exceeded", None
    return None, {"job_uuid": uuid, "detail": detail, "timestamp": iso_timestamp(when)}


def job_acquisition_tokens(fake: State, ctx: Ctx) -> Response:
    stack = fake._require_stack(ctx)
    uuids = job_uuid_list(ctx.body)
    lifetime = positive_int(
        ctx.body, "token_lifetime_seconds", DEFAULT_TOKEN_LIFETIME_SECONDS, None
    )
    issued: list[dict[str, Any]] = []
    not_issued: list[str] = []
    for uuid in uuids:
        job = fake._jobs.get(uuid)
        ok = job is not None and (
            job.state == "scheduled"
            or (job.state == "reserved" and job.reserved_by in (stack.key, ""))
        )
        if not ok:
            not_issued.append(uuid)
            continue
        token = "bkjat_" + secrets.token_urlsafe(24)
        expires = ctx.now + lifetime
        fake._acq_tokens[token] = IssuedToken(token, uuid, stack.key, expires)
        issued.append(
            {
                "job_uuid": uuid,
                "job_acquisition_token": token,
                "expires_at": iso_timestamp(expires),
            }
        )
    return json_response(201, {"job_acquisition_tokens": issued, "not_issued": not_issued})


def _scheduled_job_json(job: FakeJob) -> dict[str, Any]:
    return {
        "id": job.uuid,
        "priority": job.priority,
        "agent_query_rules": list(job.agent_query_rules),
        "scheduled_at": iso_timestamp(job.scheduled_at),
        "runnable_at": iso_timestamp(cast(float, job.runnable_at)),
        "pipeline": {"slug": job.pipeline_slug, "uuid": job.pipeline_uuid},
        "build": {
            "number": job.build_number,
            "branch": job.build_branch,
            "uuid": job.build_uuid,
        },
        "step": {"key": job.step_key},
    }


def _encode_cursor(job: FakeJob) -> str:
    return base64.urlsafe_b64encode(json.dumps([job.scheduled_at, job.seq]).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[float, int]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, binascii.Error) as err:
        raise ApiError(400, "after is not a valid cursor") from err
    if (
        not isinstance(raw, list)
        or len(raw) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw)
    ):
        raise ApiError(400, "after is not a valid cursor")
    return float(raw[0]), int(raw[1])


ROUTES = (
    Route("POST", ("stacks", "register"), "register", "default", register),
    Route("POST", ("stacks", ":key", "deregister"), "deregister", "default", deregister),
    Route(
        "GET",
        ("stacks", ":key", "scheduled-jobs"),
        "list_scheduled_jobs",
        "list-scheduled-jobs",
        list_scheduled_jobs,
    ),
    Route(
        "PUT",
        ("stacks", ":key", "scheduled-jobs", "batch-reserve"),
        "batch_reserve",
        "batch-reserve",
        batch_reserve,
    ),
    Route(
        "POST",
        ("stacks", ":key", "jobs", "get-states"),
        "get_job_states",
        "batch-load-job-states",
        get_job_states,
    ),
    Route("GET", ("stacks", ":key", "jobs", ":uuid"), "get_job", "show-job", get_job),
    Route(
        "POST",
        ("stacks", ":key", "jobs", ":uuid", "finish"),
        "finish_job",
        "finish-job",
        finish_job,
    ),
    Route(
        "POST",
        ("stacks", ":key", "notifications"),
        "notifications",
        "stack-notification",
        notifications,
    ),
    Route(
        "POST",
        ("stacks", ":key", "job-acquisition-tokens"),
        "job_acquisition_tokens",
        "default",
        job_acquisition_tokens,
    ),
)
