"""What Buildkite pushes: ``job.scheduled`` webhooks and EventBridge "Job Scheduled" events.

:func:`send_webhook` posts a webhook signed with a token (``X-Buildkite-Token``) or an
HMAC signature (``X-Buildkite-Signature``); :func:`eventbridge_job_scheduled` builds the
EventBridge event.  Bodies show a job as Buildkite's REST API does (:func:`rest_job`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

from tests.support.fake_buildkite.client import http_request
from tests.support.fake_buildkite.state import FakeJob, new_uuid
from tests.support.fake_buildkite.wire import eventbridge_timestamp, graphql_id, iso_timestamp


def rest_job(job: FakeJob, *, organization_slug: str = "acme") -> dict[str, Any]:
    """The job as Buildkite's REST API (and so its webhooks) shows it."""
    base = (
        f"https://buildkite.com/{organization_slug}/{job.pipeline_slug}/builds/{job.build_number}"
    )
    return {
        "id": job.uuid,
        "graphql_id": graphql_id("Job", job.uuid),
        "type": "script",
        "name": job.label,
        "step_key": job.step_key,
        "agent_query_rules": list(job.agent_query_rules),
        "state": job.state,
        "command": job.command,
        "priority": {"number": job.priority},
        "web_url": f"{base}#{job.uuid}",
        "created_at": iso_timestamp(cast(float, job.created_at)),
        "scheduled_at": iso_timestamp(job.scheduled_at),
        "runnable_at": iso_timestamp(cast(float, job.runnable_at)),
        "started_at": None,
        "finished_at": iso_timestamp(job.finished_at) if job.finished_at else None,
        "exit_status": job.exit_status,
        "soft_failed": False,
        "agent": None,
    }


def _rest_build(job: FakeJob, organization_slug: str) -> dict[str, Any]:
    return {
        "id": job.build_uuid,
        "graphql_id": graphql_id("Build", job.build_uuid),
        "number": job.build_number,
        "branch": job.build_branch,
        "commit": job.build_commit,
        "state": "scheduled",
        "message": "fake build",
        "web_url": (
            f"https://buildkite.com/{organization_slug}/{job.pipeline_slug}/builds/"
            f"{job.build_number}"
        ),
    }


def _rest_pipeline(job: FakeJob, organization_slug: str) -> dict[str, Any]:
    return {
        "id": job.pipeline_uuid,
        "graphql_id": graphql_id("Pipeline", job.pipeline_uuid),
        "slug": job.pipeline_slug,
        "name": job.pipeline_slug,
        "repository": job.repository,
        "web_url": f"https://buildkite.com/{organization_slug}/{job.pipeline_slug}",
    }


def webhook_payload(
    job: FakeJob | Mapping[str, Any] | None = None,
    *,
    event: str = "job.scheduled",
    organization_slug: str = "acme",
    sender: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The JSON body of a Buildkite job webhook: ``event, job, build, pipeline, sender``.

    A mapping given as ``job`` is used verbatim as the ``job`` object.
    """
    fake_job = job if isinstance(job, FakeJob) else FakeJob()
    if isinstance(job, Mapping):
        job_obj = dict(job)
    else:
        job_obj = rest_job(fake_job, organization_slug=organization_slug)
    return {
        "event": event,
        "job": job_obj,
        "build": _rest_build(fake_job, organization_slug),
        "pipeline": _rest_pipeline(fake_job, organization_slug),
        "sender": dict(sender or {"id": "8a7693f8-dbae-4783-9137-84090fce9045", "name": "Fake"}),
    }


def sign_webhook(body: bytes, key: str, timestamp: int) -> str:
    """The ``X-Buildkite-Signature`` value: HMAC-SHA256 of ``"<timestamp>.<body>"``."""
    digest = hmac.new(key.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"timestamp={timestamp},signature={digest}"


@dataclass(frozen=True)
class WebhookDelivery:
    """What ``send_webhook`` sent and what the receiver answered."""

    status: int
    response_body: bytes
    body: bytes
    headers: Mapping[str, str]


def send_webhook(
    url: str,
    event: str = "job.scheduled",
    job: FakeJob | Mapping[str, Any] | None = None,
    *,
    token: str | None = None,
    hmac_key: str | None = None,
    timestamp: int | None = None,
    mode: Literal["token", "signature", "none"] | None = None,
    payload: Mapping[str, Any] | None = None,
    organization_slug: str = "acme",
    timeout: float = 5.0,
) -> WebhookDelivery:
    """POST a Buildkite webhook to ``url``.

    ``mode="token"`` sends ``X-Buildkite-Token: token``; ``mode="signature"`` sends
    ``X-Buildkite-Signature`` keyed with ``hmac_key`` (or ``token``) at ``timestamp`` (default:
    now); ``mode="none"`` sends neither. Without ``mode``: signature if ``hmac_key`` is given,
    else token. ``payload`` replaces the whole body (for malformed-body tests).
    """
    if mode is None:
        mode = "signature" if hmac_key is not None else "token"
    body_obj = (
        dict(payload)
        if payload is not None
        else webhook_payload(job, event=event, organization_slug=organization_slug)
    )
    body = json.dumps(body_obj).encode()
    headers = {"Content-Type": "application/json", "X-Buildkite-Event": event}
    if mode == "token":
        if token is None:
            raise ValueError("mode='token' needs token=")
        headers["X-Buildkite-Token"] = token
    elif mode == "signature":
        key = hmac_key if hmac_key is not None else token
        if key is None:
            raise ValueError("mode='signature' needs hmac_key= (or token=)")
        stamp = int(time.time()) if timestamp is None else timestamp
        headers["X-Buildkite-Signature"] = sign_webhook(body, key, stamp)
    elif mode != "none":
        raise ValueError(f"unknown mode {mode!r}")
    resp = http_request("POST", url, headers=headers, body=body, timeout=timeout)
    return WebhookDelivery(resp.status, resp.body, body, headers)


def eventbridge_job_scheduled(
    job: FakeJob,
    *,
    organization_slug: str = "acme",
    organization_uuid: str = "a98961b7-adc1-41aa-8726-cfb2c46e42e0",
    account: str = "123456789012",
    region: str = "us-east-1",
    now: float | None = None,
) -> dict[str, Any]:
    """An Amazon EventBridge "Job Scheduled" event as Buildkite publishes it.

    Unlike webhooks the job is keyed ``uuid`` and times read ``YYYY-MM-DD HH:MM:SS UTC``.
    """
    sent = time.time() if now is None else now
    return {
        "version": "0",
        "id": new_uuid(),
        "detail-type": "Job Scheduled",
        "source": f"aws.partner/buildkite.com/{organization_slug}/{organization_uuid}",
        "account": account,
        "time": datetime.fromtimestamp(sent, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [],
        "detail": {
            "version": 1,
            "job": {
                "uuid": job.uuid,
                "graphql_id": graphql_id("Job", job.uuid),
                "type": "script",
                "label": job.label,
                "step_key": job.step_key,
                "command": job.command,
                "agent_query_rules": list(job.agent_query_rules),
                "exit_status": job.exit_status,
                "passed": False,
                "soft_failed": False,
                "state": job.state,
                "runnable_at": eventbridge_timestamp(cast(float, job.runnable_at)),
                "started_at": None,
                "finished_at": eventbridge_timestamp(job.finished_at) if job.finished_at else None,
                "unblocked_by": None,
            },
            "build": {
                "uuid": job.build_uuid,
                "graphql_id": graphql_id("Build", job.build_uuid),
                "number": job.build_number,
                "commit": job.build_commit,
                "message": "fake build",
                "branch": job.build_branch,
                "state": "started",
                "source": "webhook",
            },
            "pipeline": {
                "uuid": job.pipeline_uuid,
                "graphql_id": graphql_id("Pipeline", job.pipeline_uuid),
                "slug": job.pipeline_slug,
                "repo": job.repository,
            },
            "organization": {
                "uuid": organization_uuid,
                "graphql_id": graphql_id("Organization", organization_uuid),
                "slug": organization_slug,
            },
        },
    }
