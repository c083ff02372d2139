"""A small client of Buildkite's agent API: metrics, token identity and the Stacks API.

Every call is one HTTP request: no retries inside.  Callers (the dispatcher's cycle, the
metrics adapter's poller) decide when to try again, using :class:`Backoff` and the
``retry_after`` that 429 and 503 answers carry.  Errors are typed so callers can tell
"try again" from "stop and tell a human".  The token never appears in an error or log:
Buildkite's own 401 message echoes part of it, so messages are redacted.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from stackgen.buildkite.models import (
    AcquisitionToken,
    MetricsSnapshot,
    RegisteredStack,
    ScheduledJob,
    ScheduledPage,
    StackJob,
    parse_metrics,
    parse_scheduled_page,
    parse_stack_job,
)

USER_AGENT = "stackgen-dispatcher"


class BuildkiteError(Exception):
    """A call to Buildkite failed."""

    retryable = False

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class AuthError(BuildkiteError):
    """401/403: the token is wrong or lacks access. Retrying will not help soon."""


class NotFound(BuildkiteError):
    """404: the stack, queue or job does not exist (any more)."""


class Rejected(BuildkiteError):
    """400/422: Buildkite refused the request as invalid."""


class RateLimited(BuildkiteError):
    """429: wait ``retry_after`` seconds."""

    retryable = True


class Unavailable(BuildkiteError):
    """5xx, a timeout or a broken connection."""

    retryable = True


class BadResponse(BuildkiteError):
    """A 2xx answer whose body is not what the API documents."""

    retryable = True


def redact(text: str, token: str) -> str:
    """Remove the token (and any part of it Buildkite echoes) from a message."""
    if token:
        text = text.replace(token, "[token]")
        # Buildkite's 401 message quotes the token as "<first 3>…<last 3>".
        for ellipsis in ("…", "..."):
            text = text.replace(f"{token[:3]}{ellipsis}{token[-3:]}", "[token]")
    return text


def _escape(segment: str) -> str:
    # Path parameters are escaped and "." becomes "%2E" (Buildkite's own client does so).
    return quote(segment, safe="").replace(".", "%2E")


def _retry_after(response: httpx.Response) -> float | None:
    for header in ("Retry-After", "RateLimit-Reset"):
        value = response.headers.get(header)
        if value:
            try:
                return max(0.0, float(value))
            except ValueError:
                continue
    return None


@dataclass
class Backoff:
    """Exponential backoff with full jitter, honouring a server's Retry-After."""

    base: float = 0.5
    cap: float = 60.0
    attempt: int = 0
    rng: random.Random | None = None

    def next_delay(self, retry_after: float | None = None) -> float:
        """Delay before the next attempt (and count this failure)."""
        rng = self.rng or random
        self.attempt += 1
        delay = rng.uniform(0, min(self.cap, self.base * 2 ** (self.attempt - 1)))
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, max(self.cap, retry_after or 0.0))

    def reset(self) -> None:
        """Forget past failures after a success."""
        self.attempt = 0


class AgentAPI:
    """Buildkite's agent API at ``endpoint`` (e.g. ``https://agent.buildkite.com/v3``)."""

    def __init__(
        self,
        endpoint: str,
        token: str,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._token = token
        self._client = httpx.Client(
            base_url=self.endpoint,
            timeout=timeout,
            follow_redirects=False,  # Buildkite's collector does not follow them either
            transport=transport,
            headers={
                "Authorization": f"Token {token}",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            },
        )

    def __repr__(self) -> str:  # never shows the token
        return f"AgentAPI({self.endpoint!r})"

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    # ---------------------------------------------------------------- transport

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> httpx.Response:
        """Send one request; map every failure to a BuildkiteError subclass."""
        headers = {"Content-Type": "application/json"} if body is not None else None
        content = json.dumps(body).encode() if body is not None else None
        try:
            response = self._client.request(
                method, path, params=params, content=content, headers=headers
            )
        except httpx.TimeoutException as exc:
            raise Unavailable(f"{method} {path}: timed out") from exc
        except httpx.TransportError as exc:
            message = redact(f"{method} {path}: {type(exc).__name__}: {exc}", self._token)
            raise Unavailable(message) from exc
        if response.is_success:
            return response
        raise self._error(method, path, response)

    def _error(self, method: str, path: str, response: httpx.Response) -> BuildkiteError:
        status = response.status_code
        try:
            detail = str(response.json().get("message", ""))
        except (ValueError, AttributeError):
            detail = response.text[:200]
        message = redact(f"{method} {path}: HTTP {status}: {detail}".rstrip(": "), self._token)
        kind: type[BuildkiteError]
        if status in (401, 403):
            kind = AuthError
        elif status == 404:
            kind = NotFound
        elif status == 429:
            kind = RateLimited
        elif status >= 500:
            kind = Unavailable
        elif 300 <= status < 400:
            kind = BadResponse
        else:
            kind = Rejected
        return kind(message, status=status, retry_after=_retry_after(response))

    def _json(self, method: str, path: str, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise BadResponse(f"{method} {path}: answer is not JSON") from exc

    def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        """Send one request and return its JSON body (None for an empty 2xx)."""
        response = self.request(method, path, params=params, body=body)
        if not response.content:
            return None
        return self._json(method, path, response)

    # ------------------------------------------------------------------ metrics

    def metrics(self) -> MetricsSnapshot:
        """``GET /metrics``: counts per queue, and how long to wait before polling again."""
        response = self.request("GET", "/metrics")
        data = self._json("GET", "/metrics", response)
        try:
            snapshot = parse_metrics(data, fetched_at=time.time())
        except (KeyError, TypeError, ValueError) as exc:
            raise BadResponse(f"GET /metrics: unexpected shape: {exc}") from exc
        hint = response.headers.get("Buildkite-Agent-Metrics-Poll-Duration")
        if hint:
            with contextlib.suppress(ValueError):
                snapshot.poll_after = max(0.0, float(hint))
        return snapshot

    def token_identity(self) -> dict[str, Any]:
        """``GET /token``: which organization and cluster this token belongs to."""
        data = self.call("GET", "/token")
        if not isinstance(data, dict):
            raise BadResponse("GET /token: not an object")
        return data

    # --------------------------------------------------------------- Stacks API

    def register_stack(
        self, key: str, *, queue_key: str, metadata: Mapping[str, str] | None = None
    ) -> RegisteredStack:
        """``POST /stacks/register`` (idempotent: 201 new, 200 existing)."""
        data = self.call(
            "POST",
            "/stacks/register",
            body={
                "key": key,
                "type": "custom",
                "queue_key": queue_key,
                "metadata": dict(metadata or {}),
            },
        )
        try:
            return RegisteredStack(key=str(data["key"]), queue_key=str(data["cluster_queue_key"]))
        except (KeyError, TypeError) as exc:
            raise BadResponse(f"POST /stacks/register: unexpected shape: {exc}") from exc

    def deregister_stack(self, key: str) -> None:
        """``POST /stacks/:key/deregister``."""
        self.call("POST", f"/stacks/{_escape(key)}/deregister")

    def scheduled_jobs(
        self, stack_key: str, queue_key: str, *, limit: int = 1000, after: str | None = None
    ) -> ScheduledPage:
        """One page of scheduled, unreserved jobs of a queue, oldest first."""
        params: dict[str, Any] = {"queue_key": queue_key, "limit": limit}
        if after:
            params["after"] = after
        path = f"/stacks/{_escape(stack_key)}/scheduled-jobs"
        data = self.call("GET", path, params=params)
        try:
            return parse_scheduled_page(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise BadResponse(f"GET {path}: unexpected shape: {exc}") from exc

    def all_scheduled_jobs(
        self, stack_key: str, queue_key: str, *, limit: int = 1000
    ) -> list[ScheduledJob]:
        """Every scheduled, unreserved job of a queue (follows pagination)."""
        jobs: list[ScheduledJob] = []
        after = None
        while True:
            page = self.scheduled_jobs(stack_key, queue_key, limit=limit, after=after)
            jobs.extend(page.jobs)
            if not page.has_next_page or not page.end_cursor:
                return jobs
            after = page.end_cursor

    def batch_reserve(
        self, stack_key: str, job_uuids: Iterable[str], *, expiry_seconds: int = 300
    ) -> tuple[list[str], list[str]]:
        """Reserve jobs for this stack: (reserved, not_reserved)."""
        uuids = list(job_uuids)
        path = f"/stacks/{_escape(stack_key)}/scheduled-jobs/batch-reserve"
        data = self.call(
            "PUT", path, body={"job_uuids": uuids, "reservation_expiry_seconds": expiry_seconds}
        )
        try:
            return [str(u) for u in data["reserved"]], [str(u) for u in data["not_reserved"]]
        except (KeyError, TypeError) as exc:
            raise BadResponse(f"PUT {path}: unexpected shape: {exc}") from exc

    def stack_job(self, stack_key: str, job_uuid: str) -> StackJob:
        """``GET /stacks/:key/jobs/:uuid``: the job's command and environment."""
        path = f"/stacks/{_escape(stack_key)}/jobs/{_escape(job_uuid)}"
        data = self.call("GET", path)
        try:
            return parse_stack_job(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise BadResponse(f"GET {path}: unexpected shape: {exc}") from exc

    def job_states(self, stack_key: str, job_uuids: Iterable[str]) -> dict[str, str]:
        """Current state of each job (unknown jobs are left out)."""
        path = f"/stacks/{_escape(stack_key)}/jobs/get-states"
        data = self.call("POST", path, body={"job_uuids": list(job_uuids)})
        try:
            return {str(k): str(v) for k, v in data["states"].items()}
        except (KeyError, TypeError, AttributeError) as exc:
            raise BadResponse(f"POST {path}: unexpected shape: {exc}") from exc

    def finish_job(self, stack_key: str, job_uuid: str, *, exit_status: int, detail: str) -> None:
        """Fail a job the stack could not start, with the reason (once per job)."""
        path = f"/stacks/{_escape(stack_key)}/jobs/{_escape(job_uuid)}/finish"
        self.call("POST", path, body={"exit_status": exit_status, "detail": detail[:4000]})

    def notify(self, stack_key: str, notifications: list[tuple[str, str, str]]) -> None:
        """Add (job uuid, detail, ISO timestamp) lines to jobs' timelines."""
        path = f"/stacks/{_escape(stack_key)}/notifications"
        body = {
            "notifications": [
                {"job_uuid": uuid, "detail": detail[:256] or "-", "timestamp": stamp}
                for uuid, detail, stamp in notifications
            ]
        }
        self.call("POST", path, body=body)

    def acquisition_tokens(
        self, stack_key: str, job_uuids: Iterable[str], *, lifetime_seconds: int = 900
    ) -> tuple[list[AcquisitionToken], list[str]]:
        """Short-lived tokens that let an agent acquire only its own job."""
        path = f"/stacks/{_escape(stack_key)}/job-acquisition-tokens"
        data = self.call(
            "POST",
            path,
            body={"job_uuids": list(job_uuids), "token_lifetime_seconds": lifetime_seconds},
        )
        try:
            tokens = [
                AcquisitionToken(
                    job_uuid=str(t["job_uuid"]),
                    token=str(t["job_acquisition_token"]),
                    expires_at=str(t.get("expires_at", "")),
                )
                for t in data["job_acquisition_tokens"]
            ]
            return tokens, [str(u) for u in data.get("not_issued", [])]
        except (KeyError, TypeError) as exc:
            raise BadResponse(f"POST {path}: unexpected shape: {exc}") from exc
