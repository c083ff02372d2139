"""The wire: Buildkite's constants and formats, and the fake's request/response plumbing.

Constants and limits as ``shared/BUILDKITE_API.md`` writes them down, timestamps in
Buildkite's and EventBridge's formats, and what every API module of the fake uses to read
a request and answer it (:class:`Ctx`, :func:`json_response`, :class:`ApiError`, and the
:class:`Route` an API module lists its endpoints with).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from tests.support.fake_buildkite.state import State

# --------------------------------------------------------------------------- wire constants

JOB_STATES: Final[tuple[str, ...]] = (
    "pending",
    "waiting",
    "waiting_failed",
    "blocked",
    "blocked_failed",
    "unblocked",
    "unblocked_failed",
    "limiting",
    "limited",
    "scheduled",
    "reserved",
    "assigned",
    "accepted",
    "running",
    "finished",
    "canceling",
    "canceled",
    "timing_out",
    "timed_out",
    "skipped",
    "broken",
    "expired",
)
TERMINAL_STATES: Final = frozenset(
    {
        "finished",
        "canceled",
        "timed_out",
        "skipped",
        "broken",
        "expired",
        "waiting_failed",
        "blocked_failed",
        "unblocked_failed",
    }
)
# How job states are counted by the metrics endpoint. A reserved job still waits for an agent,
# so it counts as scheduled; assigned/accepted jobs have an agent, so they count as running.
SCHEDULED_STATES: Final = frozenset({"scheduled", "reserved"})
RUNNING_STATES: Final = frozenset({"assigned", "accepted", "running", "canceling", "timing_out"})
WAITING_STATES: Final = frozenset({"waiting", "limiting", "limited"})
# An agent's acquire answers 423 (retry later) while the job cannot run yet.
ACQUIRE_LOCKED_STATES: Final = frozenset(
    {"pending", "waiting", "blocked", "unblocked", "limiting", "limited"}
)

# The cluster's default queue: `_default` in Buildkite's Go client, `__default__` in its docs.
DEFAULT_QUEUE_KEYS: Final[tuple[str, ...]] = ("_default", "__default__")
STACK_TYPES: Final[tuple[str, ...]] = ("kubernetes", "elastic", "custom")

# Requests per second, per (stack key, scope), over a one-second sliding window.
RATE_LIMITS: Final[Mapping[str, int]] = {
    "list-scheduled-jobs": 10,
    "batch-reserve": 10,
    "show-job": 1000,
    "batch-load-job-states": 20,
    "finish-job": 100,
    "stack-notification": 200,
    "default": 10,
}

FaultKind = Literal["401", "429", "500", "503", "slow", "garbage", "truncated"]
FAULT_KINDS: Final[tuple[str, ...]] = ("401", "429", "500", "503", "slow", "garbage", "truncated")

MAX_BATCH: Final = 1000
DEFAULT_RESERVATION_SECONDS: Final = 900
MAX_RESERVATION_SECONDS: Final = 3600
DEFAULT_TOKEN_LIFETIME_SECONDS: Final = 900
MAX_FINISH_DETAIL_BYTES: Final = 4 * 1024
MAX_NOTIFICATION_DETAIL: Final = 256
MAX_NOTIFICATIONS_PER_JOB: Final = 100
NOTIFY_AFTER_FINISH_SECONDS: Final = 300
DEFAULT_PAGE_SIZE: Final = 100
MAX_METADATA_KEYS: Final = 100

STACK_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,80}")
JSON_TYPE: Final = "application/json; charset=utf-8"
MAX_BODY_BYTES: Final = 16 * 1024 * 1024


# --------------------------------------------------------------------------- time


def iso_timestamp(t: float) -> str:
    """Format a Unix time as Buildkite's API does: ``2023-10-01T12:00:00.000Z``."""
    dt = datetime.fromtimestamp(t, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def eventbridge_timestamp(t: float) -> str:
    """Format a Unix time as EventBridge payloads do: ``2019-08-11 06:01:14 UTC``."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def parse_iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# --------------------------------------------------------------------------- requests and answers


@dataclass
class Request:
    method: str
    raw_path: str
    query: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Ctx:
    request: Request
    params: dict[str, str]
    query: dict[str, list[str]]
    body: Any
    now: float

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.payload: Mapping[str, Any] = body if body is not None else {"message": message}
        self.headers = dict(headers or {})


def json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode()


def json_response(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
    out = {"Content-Type": JSON_TYPE}
    out.update(headers or {})
    return Response(status, json_bytes(payload), out)


def redact(token: str) -> str:
    # Buildkite's 401 echoes a fragment of the token; the fake echoes at most 3+3 characters
    # and nothing at all of a short token.
    if len(token) >= 12:
        return f"{token[:3]}…{token[-3:]}"
    return "…"


def graphql_id(kind: str, uuid: str) -> str:
    return base64.b64encode(f"{kind}---{uuid}".encode()).decode()


def job_uuid_list(body: Any, key: str = "job_uuids") -> list[str]:
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    uuids = body.get(key)
    if not isinstance(uuids, list) or not all(isinstance(u, str) for u in uuids):
        raise ApiError(400, f"{key} must be an array of strings")
    if len(uuids) > MAX_BATCH:
        raise ApiError(422, f"{key} must not contain more than {MAX_BATCH} items")
    return list(dict.fromkeys(uuids))  # drop duplicates, keep order


def positive_int(body: Mapping[str, Any], key: str, default: int, maximum: int | None) -> int:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(400, f"{key} must be an integer")
    if value < 1 or (maximum is not None and value > maximum):
        bound = f" and at most {maximum}" if maximum is not None else ""
        raise ApiError(422, f"{key} must be at least 1{bound}")
    return value


def presented_token(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization")
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "token" or not token.strip():
        return None
    return token.strip()


def invalid_token_message(presented: str) -> str:
    return (
        f'The token you provided "{redact(presented)}" is not a valid organization agent '
        "registration token."
    )


def rate_limited_body(scope: str, limit: int, current: int, reset: int) -> dict[str, Any]:
    return {
        "message": (
            f"You have exceeded your API rate limit. Please wait {reset} seconds before "
            "making more requests."
        ),
        "scope": scope,
        "limit": limit,
        "current": current,
        "reset": reset,
    }


def parse_body(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, "request body is not valid JSON") from err


# --------------------------------------------------------------------------- routes


@dataclass(frozen=True)
class Route:
    """One endpoint: ``method /v3/<pattern>`` (``:name`` segments are parameters).

    ``scope`` is the Stacks API rate-limit scope (None: not rate limited); ``handler``
    answers with the fake's lock held.  A route takes the agent (registration) token
    unless ``token_ok`` is False; ``also_accepts(state, token, params, now)`` may accept
    another credential (a job-acquisition token for its job, an agent's access token, a
    job token, …).  ``raw_body`` routes get the body as sent (``ctx.body`` is None; read
    ``ctx.request.body``), e.g. gzip-compressed log chunks.
    """

    method: str
    pattern: tuple[str, ...]
    name: str
    scope: str | None
    handler: Callable[[State, Ctx], Response]
    also_accepts: Callable[[State, str, Mapping[str, str], float], bool] | None = None
    token_ok: bool = True
    raw_body: bool = False

    def match(self, method: str, rest: list[str]) -> dict[str, str] | None:
        """The path parameters when this route answers ``method`` and ``rest``, else None."""
        if method != self.method or len(self.pattern) != len(rest):
            return None
        params: dict[str, str] = {}
        for want, got in zip(self.pattern, rest, strict=True):
            if want.startswith(":"):
                if not got:
                    return None
                params[want[1:]] = got
            elif want != got:
                return None
        return params
