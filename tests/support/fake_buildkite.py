"""A fake Buildkite agent API for tests and benchmarks (test support, never shipped).

It speaks the wire formats written down in ``shared/BUILDKITE_API.md``: the metrics endpoints,
``GET /v3/token``, the Stacks API (with its per-scope rate limits) and the agent's
``PUT /v3/jobs/:id/acquire``. The server is standard library only, binds 127.0.0.1 on an
ephemeral port and runs in a daemon thread::

    with FakeBuildkite(token="t0k3n", clock=VirtualClock()) as bk:
        bk.add_jobs("default", 3)
        ...  # point the code under test at bk.endpoint

It also runs as a separate process (``python -m tests.support.fake_buildkite --port 0 --token
T`` prints the URL and serves until SIGTERM/SIGINT); such a process is driven through the small
unauthenticated control API under ``/_fake/`` (see ``FakeBuildkite._admin``).

Besides the server, the module builds what Buildkite pushes: ``job.scheduled`` webhooks
(``send_webhook``, signed with a token or an HMAC signature) and EventBridge "Job Scheduled"
events (``eventbridge_job_scheduled``).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import contextlib
import copy
import dataclasses
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid as uuidlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Final, Literal, cast
from urllib.parse import parse_qs, unquote

__all__ = [
    "DEFAULT_QUEUE_KEYS",
    "FAULT_KINDS",
    "JOB_STATES",
    "RATE_LIMITS",
    "FakeBuildkite",
    "FakeJob",
    "FaultKind",
    "HttpResponse",
    "RequestRecord",
    "VirtualClock",
    "WebhookDelivery",
    "eventbridge_job_scheduled",
    "eventbridge_timestamp",
    "http_request",
    "iso_timestamp",
    "main",
    "rest_job",
    "send_webhook",
    "sign_webhook",
    "webhook_payload",
]

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

_STACK_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,80}")
_JSON_TYPE: Final = "application/json; charset=utf-8"
_MAX_BODY_BYTES: Final = 16 * 1024 * 1024


# --------------------------------------------------------------------------- time helpers


def iso_timestamp(t: float) -> str:
    """Format a Unix time as Buildkite's API does: ``2023-10-01T12:00:00.000Z``."""
    dt = datetime.fromtimestamp(t, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def eventbridge_timestamp(t: float) -> str:
    """Format a Unix time as EventBridge payloads do: ``2019-08-11 06:01:14 UTC``."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _parse_iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class VirtualClock:
    """A settable clock for tests and benchmarks; call it to read the time."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward and return the new time."""
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, now: float) -> None:
        """Jump to an absolute time."""
        with self._lock:
            self._now = float(now)


# --------------------------------------------------------------------------- records


def _new_uuid() -> str:
    return str(uuidlib.uuid4())


@dataclass
class FakeJob:
    """One Buildkite job as the fake stores it; also usable on its own for webhook bodies."""

    queue: str = "default"
    uuid: str = field(default_factory=_new_uuid)
    state: str = "scheduled"
    priority: int = 0
    scheduled_at: float = field(default_factory=time.time)
    runnable_at: float | None = None
    created_at: float | None = None
    label: str = ":pytest: test"
    command: str = "echo hello"
    step_key: str | None = None
    pipeline_slug: str = "pipeline"
    pipeline_uuid: str = field(default_factory=_new_uuid)
    build_number: int = 1
    build_branch: str = "main"
    build_uuid: str = field(default_factory=_new_uuid)
    build_commit: str = "HEAD"
    repository: str = "git@example.com:acme/pipeline.git"
    agent_query_rules: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    # Bookkeeping the fake maintains.
    reserved_by: str | None = None
    reserved_until: float | None = None
    exit_status: int | None = None
    acquired_at: float | None = None
    finished_at: float | None = None
    seq: int = 0

    def __post_init__(self) -> None:
        if self.state not in JOB_STATES:
            raise ValueError(f"unknown job state {self.state!r}")
        if self.runnable_at is None:
            self.runnable_at = self.scheduled_at
        if self.created_at is None:
            self.created_at = self.scheduled_at
        if not self.agent_query_rules:
            self.agent_query_rules = [f"queue={self.queue}"]


@dataclass(frozen=True)
class RequestRecord:
    """One request the fake answered (never its headers, so never a token)."""

    method: str
    path: str
    query: str
    route: str | None
    status: int
    timestamp: float


@dataclass
class _Stack:
    id: str
    key: str
    type: str
    queue_key: str
    metadata: dict[str, str]
    last_connected_on: float
    state: str = "connected"


@dataclass
class _Queue:
    id: str
    paused: bool = False


@dataclass
class _Fault:
    target: str
    kind: str
    remaining: int
    seconds: float | None


@dataclass
class _AcquisitionToken:
    token: str
    job_uuid: str
    stack_key: str
    expires_at: float


@dataclass
class _Request:
    method: str
    raw_path: str
    query: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Ctx:
    request: _Request
    params: dict[str, str]
    query: dict[str, list[str]]
    body: Any
    now: float

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


class _ApiError(Exception):
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


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode()


def _json_response(
    status: int, payload: Any, headers: Mapping[str, str] | None = None
) -> _Response:
    out = {"Content-Type": _JSON_TYPE}
    out.update(headers or {})
    return _Response(status, _json_bytes(payload), out)


# --------------------------------------------------------------------------- routing

# (method, path segments after /v3, route name, rate-limit scope or None)
_ROUTES: Final[tuple[tuple[str, tuple[str, ...], str, str | None], ...]] = (
    ("GET", ("metrics",), "metrics", None),
    ("GET", ("metrics", "queue"), "metrics_queue", None),
    ("GET", ("token",), "token", None),
    ("POST", ("stacks", "register"), "register", "default"),
    ("POST", ("stacks", ":key", "deregister"), "deregister", "default"),
    ("GET", ("stacks", ":key", "scheduled-jobs"), "list_scheduled_jobs", "list-scheduled-jobs"),
    (
        "PUT",
        ("stacks", ":key", "scheduled-jobs", "batch-reserve"),
        "batch_reserve",
        "batch-reserve",
    ),
    ("POST", ("stacks", ":key", "jobs", "get-states"), "get_job_states", "batch-load-job-states"),
    ("GET", ("stacks", ":key", "jobs", ":uuid"), "get_job", "show-job"),
    ("POST", ("stacks", ":key", "jobs", ":uuid", "finish"), "finish_job", "finish-job"),
    ("POST", ("stacks", ":key", "notifications"), "notifications", "stack-notification"),
    ("POST", ("stacks", ":key", "job-acquisition-tokens"), "job_acquisition_tokens", "default"),
    ("PUT", ("jobs", ":uuid", "acquire"), "acquire_job", None),
    ("GET", ("jobs", ":uuid"), "job_state", None),
)
ROUTE_NAMES: Final[frozenset[str]] = frozenset(r[2] for r in _ROUTES)


def _match_route(
    method: str, segments: Sequence[str]
) -> tuple[str, dict[str, str], str | None] | None:
    if len(segments) < 2 or segments[0] != "v3":
        return None
    rest = segments[1:]
    for route_method, pattern, name, scope in _ROUTES:
        if route_method != method or len(pattern) != len(rest):
            continue
        params: dict[str, str] = {}
        for want, got in zip(pattern, rest, strict=True):
            if want.startswith(":"):
                if not got:
                    break
                params[want[1:]] = got
            elif want != got:
                break
        else:
            return name, params, scope
    return None


def _redact(token: str) -> str:
    # Buildkite's 401 echoes a fragment of the token; the fake echoes at most 3+3 characters
    # and nothing at all of a short token.
    if len(token) >= 12:
        return f"{token[:3]}…{token[-3:]}"
    return "…"


def _graphql_id(kind: str, uuid: str) -> str:
    return base64.b64encode(f"{kind}---{uuid}".encode()).decode()


def _encode_cursor(job: FakeJob) -> str:
    return base64.urlsafe_b64encode(json.dumps([job.scheduled_at, job.seq]).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[float, int]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, binascii.Error) as err:
        raise _ApiError(400, "after is not a valid cursor") from err
    if (
        not isinstance(raw, list)
        or len(raw) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw)
    ):
        raise _ApiError(400, "after is not a valid cursor")
    return float(raw[0]), int(raw[1])


def _job_uuid_list(body: Any, key: str = "job_uuids") -> list[str]:
    if not isinstance(body, dict):
        raise _ApiError(400, "request body must be a JSON object")
    uuids = body.get(key)
    if not isinstance(uuids, list) or not all(isinstance(u, str) for u in uuids):
        raise _ApiError(400, f"{key} must be an array of strings")
    if len(uuids) > MAX_BATCH:
        raise _ApiError(422, f"{key} must not contain more than {MAX_BATCH} items")
    return list(dict.fromkeys(uuids))  # drop duplicates, keep order


def _positive_int(body: Mapping[str, Any], key: str, default: int, maximum: int | None) -> int:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise _ApiError(400, f"{key} must be an integer")
    if value < 1 or (maximum is not None and value > maximum):
        bound = f" and at most {maximum}" if maximum is not None else ""
        raise _ApiError(422, f"{key} must be at least 1{bound}")
    return value


# --------------------------------------------------------------------------- the fake


class FakeBuildkite:
    """A thread-safe, in-memory Buildkite agent API served over HTTP on 127.0.0.1.

    All state sits behind one lock. Time comes from ``clock`` (``time.time`` unless a
    ``VirtualClock`` is given): reservation and token expiry, rate-limit windows and the
    timestamps in responses and in the request log all read it.
    """

    def __init__(
        self,
        token: str = "fake-agent-token",
        *,
        organization_slug: str = "acme",
        organization_uuid: str | None = None,
        cluster_uuid: str | None = None,
        cluster_name: str | None = "Default",
        queues: Iterable[str] = ("default",),
        default_queue: str = "default",
        poll_duration_seconds: int = 10,
        clock: Callable[[], float] = time.time,
        port: int = 0,
        rate_limits: Mapping[str, int] | None = None,
        enforce_rate_limits: bool = True,
        max_stacks: int = 100,
        acquire_retry_after: int = 1,
    ) -> None:
        """Create a stopped fake.

        Args:
            token: the only valid agent token (``Authorization: Token <token>``).
            organization_slug: ``organization.slug`` in metrics; ``""`` simulates a broken org.
            organization_uuid: fixed organization UUID (random if None).
            cluster_uuid: the token's cluster (random if None; ``""`` = an unclustered token).
            cluster_name: ``cluster.name`` in metrics and ``GET /v3/token`` (None: omitted).
            queues: queue keys that exist from the start (more appear as jobs/agents are added).
            default_queue: the queue ``_default`` and ``__default__`` stand for.
            poll_duration_seconds: value of ``Buildkite-Agent-Metrics-Poll-Duration``.
            clock: returns the current Unix time.
            port: port to bind on 127.0.0.1 (0 = ephemeral).
            rate_limits: per-scope overrides of ``RATE_LIMITS``.
            enforce_rate_limits: False keeps the headers but never answers 429.
            max_stacks: registering more active stacks answers 403.
            acquire_retry_after: ``Retry-After`` seconds on a 423 from acquire.
        """
        self._token = token
        self.organization_slug = organization_slug
        self.organization_uuid = organization_uuid or _new_uuid()
        self.cluster_uuid = _new_uuid() if cluster_uuid is None else cluster_uuid
        self.cluster_name = cluster_name
        self.default_queue = default_queue
        self.poll_duration_seconds = poll_duration_seconds
        self.max_stacks = max_stacks
        self.acquire_retry_after = acquire_retry_after
        self.token_uuid = _new_uuid()
        self._clock = clock
        self._port = port
        self._rate_limits = dict(RATE_LIMITS)
        self._rate_limits.update(rate_limits or {})
        self._enforce_rate_limits = enforce_rate_limits

        self._lock = threading.RLock()
        self._jobs: dict[str, FakeJob] = {}
        self._seq = 0
        self._queues: dict[str, _Queue] = {}
        self._agents: dict[str, tuple[int, int]] = {}
        self._stacks: dict[str, _Stack] = {}
        self._windows: dict[tuple[str, str], collections.deque[float]] = {}
        self._acq_tokens: dict[str, _AcquisitionToken] = {}
        self._notifications: list[dict[str, Any]] = []
        self._finished: list[dict[str, Any]] = []
        self._requests: list[RequestRecord] = []
        self._faults: list[_Fault] = []
        for q in queues:
            self.add_queue(q)
        self.add_queue(default_queue)

        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:  # never shows the token
        state = self.url if self._server else "stopped"
        return f"<FakeBuildkite {state} org={self.organization_slug!r}>"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeBuildkite:
        """Bind 127.0.0.1 and serve in a daemon thread; returns self."""
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-buildkite-{server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection (idempotent)."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> FakeBuildkite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (only while running)."""
        if self._server is None:
            raise RuntimeError("FakeBuildkite is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (only while running)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        """The agent API endpoint, ``url + "/v3"``."""
        return self.url + "/v3"

    def now(self) -> float:
        """The fake's current time (its clock)."""
        return self._clock()

    # ------------------------------------------------------------------ test helpers: setup

    def add_queue(self, key: str, *, paused: bool | None = None) -> None:
        """Declare a cluster queue (idempotent); ``paused`` sets ``dispatch_paused`` if given."""
        with self._lock:
            queue = self._queues.setdefault(key, _Queue(id=_new_uuid()))
            if paused is not None:
                queue.paused = paused

    def pause_queue(self, key: str, paused: bool = True) -> None:
        """Set ``cluster_queue.dispatch_paused`` (and ``paused``) for a queue."""
        self.add_queue(key, paused=paused)

    def add_job(self, queue: str, **fields: Any) -> str:
        """Add one job (state ``scheduled`` unless given) and return its UUID.

        ``fields`` are ``FakeJob`` fields (``uuid``, ``priority``, ``scheduled_at``, ``env``,
        ``command``, ``step_key``, ``pipeline_slug``, ``build_number``, ...). ``scheduled_at``
        defaults to the fake's clock; ``env`` is merged over the usual ``BUILDKITE_*`` values.
        """
        with self._lock:
            queue = self._resolve_queue(queue)
            fields.setdefault("scheduled_at", self._clock())
            extra_env = dict(fields.pop("env", None) or {})
            job = FakeJob(queue=queue, **fields)
            if job.uuid in self._jobs:
                raise ValueError(f"job {job.uuid} already exists")
            self._seq += 1
            job.seq = self._seq
            job.env = self._default_env(job) | extra_env
            if job.state in TERMINAL_STATES:
                job.finished_at = self._clock()
            self._jobs[job.uuid] = job
            self.add_queue(queue)
            return job.uuid

    def add_jobs(self, queue: str, n: int, **fields: Any) -> list[str]:
        """Add ``n`` jobs with the same fields; returns their UUIDs, oldest first."""
        if "uuid" in fields and n != 1:
            raise ValueError("uuid can only be given for a single job")
        return [self.add_job(queue, **fields) for _ in range(n)]

    def set_job_state(self, uuid: str, state: str) -> None:
        """Force a job into any of ``JOB_STATES`` (a reservation is dropped unless ``reserved``)."""
        if state not in JOB_STATES:
            raise ValueError(f"unknown job state {state!r}")
        with self._lock:
            job = self._get(uuid)
            now = self._clock()
            job.state = state
            if state == "reserved":
                job.reserved_by = job.reserved_by or ""
                job.reserved_until = job.reserved_until or now + DEFAULT_RESERVATION_SECONDS
            else:
                job.reserved_by = job.reserved_until = None
            if state in TERMINAL_STATES and job.finished_at is None:
                job.finished_at = now

    def acquire_job(self, uuid: str) -> int:
        """Simulate ``buildkite-agent start --acquire-job``; returns the HTTP status it would get.

        200: the job was scheduled/reserved and is now ``assigned``; 422: already acquired,
        running, finished or cancelled; 423: still waiting on dependencies.
        """
        with self._lock:
            status, _ = self._acquire(self._get(uuid), self._clock())
            return status

    def start_job(self, uuid: str) -> None:
        """Move a job to ``running`` (an agent started it)."""
        with self._lock:
            job = self._get(uuid)
            if job.state in TERMINAL_STATES:
                raise ValueError(f"job {uuid} is {job.state}")
            if job.acquired_at is None:
                job.acquired_at = self._clock()
            job.state = "running"
            job.reserved_by = job.reserved_until = None

    def finish_job(self, uuid: str, exit_status: int = 0) -> None:
        """Move a job to ``finished`` (its agent reported the exit status)."""
        with self._lock:
            job = self._get(uuid)
            if job.state in TERMINAL_STATES:
                raise ValueError(f"job {uuid} is already {job.state}")
            job.state = "finished"
            job.exit_status = exit_status
            job.finished_at = self._clock()
            job.reserved_by = job.reserved_until = None

    def set_agents(self, queue: str, idle: int = 0, busy: int = 0) -> None:
        """Set the connected agent counts the metrics endpoint reports for a queue."""
        if idle < 0 or busy < 0:
            raise ValueError("agent counts must not be negative")
        with self._lock:
            queue = self._resolve_queue(queue)
            self.add_queue(queue)
            self._agents[queue] = (idle, busy)

    def inject(
        self,
        target: str,
        kind: FaultKind | str,
        times: int = 1,
        *,
        seconds: float | None = None,
    ) -> None:
        """Make the next ``times`` matching requests fail in a chosen way.

        ``target`` is a route name (``"metrics"``, ``"list_scheduled_jobs"``, ``"batch_reserve"``,
        ... see ``ROUTE_NAMES``) or a path prefix starting with ``/`` (``"/v3/stacks"``).
        Kinds: ``"401"``, ``"429"`` (``Retry-After: seconds``, default 1), ``"500"``, ``"503"``
        (``Retry-After`` only if ``seconds`` is given), ``"slow"`` (sleep ``seconds``, default
        1, then answer normally), ``"garbage"`` (200, a body that is not JSON) and
        ``"truncated"`` (the real answer, processed as usual, with its JSON body cut in half).
        Faults are consumed in the order they were injected.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        if not target.startswith("/") and target not in ROUTE_NAMES:
            raise ValueError(f"unknown route {target!r}; expected a path or {sorted(ROUTE_NAMES)}")
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._faults.append(_Fault(target, kind, times, seconds))

    def clear_faults(self) -> None:
        """Drop every fault not yet consumed."""
        with self._lock:
            self._faults.clear()

    def clear_requests(self) -> None:
        """Empty the request log."""
        with self._lock:
            self._requests.clear()

    # ------------------------------------------------------------------ test helpers: reading

    def jobs(self, queue: str | None = None, state: str | None = None) -> list[FakeJob]:
        """Copies of the jobs (optionally one queue / one state), oldest first."""
        with self._lock:
            self._expire(self._clock())
            if queue is not None:
                queue = self._resolve_queue(queue)
            found = [
                copy.deepcopy(j)
                for j in self._sorted_jobs()
                if (queue is None or j.queue == queue) and (state is None or j.state == state)
            ]
            return found

    def job(self, uuid: str) -> FakeJob:
        """A copy of one job."""
        with self._lock:
            self._expire(self._clock())
            return copy.deepcopy(self._get(uuid))

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request answered so far (method, path, query, route, status, timestamp)."""
        with self._lock:
            return list(self._requests)

    @property
    def notifications(self) -> list[dict[str, Any]]:
        """Stack notifications accepted: ``stack_key, job_uuid, detail, timestamp``."""
        with self._lock:
            return copy.deepcopy(self._notifications)

    @property
    def finished(self) -> list[dict[str, Any]]:
        """Stacks API finish calls accepted: ``stack_key, job_uuid, exit_status, detail, at``."""
        with self._lock:
            return copy.deepcopy(self._finished)

    @property
    def stacks(self) -> dict[str, dict[str, Any]]:
        """Registered stacks by key (as the register endpoint would show them)."""
        with self._lock:
            return {k: self._stack_json(s) for k, s in self._stacks.items()}

    @property
    def acquisition_tokens(self) -> list[dict[str, Any]]:
        """Job acquisition tokens issued: ``job_uuid, token, stack_key, expires_at``."""
        with self._lock:
            return [dataclasses.asdict(t) for t in self._acq_tokens.values()]

    @property
    def pending_faults(self) -> list[tuple[str, str, int]]:
        """Faults not yet consumed as ``(target, kind, remaining)``."""
        with self._lock:
            return [(f.target, f.kind, f.remaining) for f in self._faults if f.remaining > 0]

    def metrics(self, queue: str | None = None) -> dict[str, Any]:
        """The body ``GET /v3/metrics`` (or ``/metrics/queue?name=queue``) would return now."""
        with self._lock:
            self._expire(self._clock())
            return self._metrics_payload(queue)

    # ------------------------------------------------------------------ internals: state

    def _get(self, uuid: str) -> FakeJob:
        try:
            return self._jobs[uuid]
        except KeyError:
            raise KeyError(f"no job {uuid}") from None

    def _resolve_queue(self, key: str) -> str:
        return self.default_queue if key in DEFAULT_QUEUE_KEYS else key

    def _sorted_jobs(self) -> list[FakeJob]:
        return sorted(self._jobs.values(), key=lambda j: (j.scheduled_at, j.seq))

    def _default_env(self, job: FakeJob) -> dict[str, str]:
        env = {
            "BUILDKITE_JOB_ID": job.uuid,
            "BUILDKITE_BUILD_ID": job.build_uuid,
            "BUILDKITE_BUILD_NUMBER": str(job.build_number),
            "BUILDKITE_BRANCH": job.build_branch,
            "BUILDKITE_COMMIT": job.build_commit,
            "BUILDKITE_REPO": job.repository,
            "BUILDKITE_PIPELINE_SLUG": job.pipeline_slug,
            "BUILDKITE_PIPELINE_ID": job.pipeline_uuid,
            "BUILDKITE_ORGANIZATION_SLUG": self.organization_slug,
            "BUILDKITE_LABEL": job.label,
            "BUILDKITE_COMMAND": job.command,
            "BUILDKITE_AGENT_META_DATA_QUEUE": job.queue,
        }
        if job.step_key:
            env["BUILDKITE_STEP_KEY"] = job.step_key
        return env

    def _expire(self, now: float) -> None:
        for job in self._jobs.values():
            if (
                job.state == "reserved"
                and job.reserved_until is not None
                and job.reserved_until <= now
            ):
                job.state = "scheduled"
                job.reserved_by = job.reserved_until = None
        for token, info in list(self._acq_tokens.items()):
            if info.expires_at <= now - 3600:  # keep expired tokens a while for assertions
                del self._acq_tokens[token]

    def _acquire(self, job: FakeJob, now: float) -> tuple[int, str]:
        if job.state in SCHEDULED_STATES:
            job.state = "assigned"
            job.acquired_at = now
            job.reserved_by = job.reserved_until = None
            return 200, "assigned"
        if job.state in ACQUIRE_LOCKED_STATES:
            return 423, f"Job is {job.state} and can't be acquired yet"
        if job.state in TERMINAL_STATES:
            return 422, f"Job is {job.state} and can't be acquired"
        return 422, "Job has already been acquired"

    def _metrics_payload(self, queue: str | None) -> dict[str, Any]:
        names = [queue] if queue is not None else sorted(self._queues)
        per_jobs: dict[str, dict[str, int]] = {}
        per_agents: dict[str, dict[str, int]] = {}
        for name in names:
            counts = {"scheduled": 0, "running": 0, "waiting": 0}
            for job in self._jobs.values():
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
            idle, busy = self._agents.get(name, (0, 0))
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
            "organization": {"slug": self.organization_slug},
        }
        if self.cluster_name is not None:
            payload["cluster"] = {"name": self.cluster_name}
        return payload

    def _stack_json(self, stack: _Stack) -> dict[str, Any]:
        return {
            "id": stack.id,
            "organization_uuid": self.organization_uuid,
            "key": stack.key,
            "type": stack.type,
            "cluster_queue_key": stack.queue_key,
            "metadata": dict(stack.metadata),
            "last_connected_on": iso_timestamp(stack.last_connected_on),
            "state": stack.state,
        }

    def _scheduled_job_json(self, job: FakeJob) -> dict[str, Any]:
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

    # ------------------------------------------------------------------ internals: HTTP

    def _serve(self, req: _Request) -> _Response:
        """Answer one HTTP request (called from the server's handler threads)."""
        segments = [unquote(s) for s in req.raw_path.split("/")[1:]]
        if segments and segments[0] == "_fake":
            return self._admin(req, segments[1:])
        matched = _match_route(req.method, segments)
        route, params, scope = matched if matched else (None, {}, None)
        decoded_path = "/" + "/".join(segments)

        fault = self._take_fault(route, req.raw_path, decoded_path)
        if fault is not None and fault.kind == "slow":
            time.sleep(1.0 if fault.seconds is None else fault.seconds)
            fault = None
        if fault is not None and fault.kind != "truncated":
            resp = self._fault_response(fault, req, params, scope)
        else:
            resp = self._handle(req, route, params, scope)
            if fault is not None:  # truncated: the request was processed, the answer is cut
                body = resp.body or b'{"message": "cut short"}'
                resp.body = body[: max(1, len(body) // 2)]
                resp.status = 200 if resp.status == 204 else resp.status
                resp.headers["Content-Type"] = _JSON_TYPE
        with self._lock:
            self._requests.append(
                RequestRecord(
                    req.method, req.raw_path, req.query, route, resp.status, self._clock()
                )
            )
        return resp

    def _take_fault(self, route: str | None, raw_path: str, decoded_path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining <= 0:
                    continue
                if fault.target.startswith("/"):
                    hit = raw_path.startswith(fault.target) or decoded_path.startswith(fault.target)
                else:
                    hit = fault.target == route
                if hit:
                    fault.remaining -= 1
                    self._faults = [f for f in self._faults if f.remaining > 0]
                    return fault
            return None

    def _fault_response(
        self, fault: _Fault, req: _Request, params: Mapping[str, str], scope: str | None
    ) -> _Response:
        with self._lock:
            now = self._clock()
            headers = self._rate_headers(params.get("key", ""), scope, now) if scope else {}
        if fault.kind == "garbage":
            headers["Content-Type"] = _JSON_TYPE
            return _Response(200, b"<html><body>502 Bad Gateway</body></html>", headers)
        if fault.kind == "401":
            presented = _presented_token(req.headers) or ""
            return _json_response(401, {"message": _invalid_token_message(presented)}, headers)
        if fault.kind == "429":
            reset = max(1, math.ceil(1.0 if fault.seconds is None else fault.seconds))
            name = scope or "default"
            limit = self._rate_limits[name]
            headers.update({"Retry-After": str(reset), "RateLimit-Remaining": "0"})
            headers["RateLimit-Reset"] = str(reset)
            return _json_response(429, _rate_limited_body(name, limit, limit + 1, reset), headers)
        if fault.kind == "500":
            return _json_response(500, {"message": "Internal Server Error"}, headers)
        # "503"
        if fault.seconds is not None:
            headers["Retry-After"] = str(max(0, math.ceil(fault.seconds)))
        return _json_response(503, {"message": "Organization is temporarily unavailable"}, headers)

    def _handle(
        self,
        req: _Request,
        route: str | None,
        params: dict[str, str],
        scope: str | None,
    ) -> _Response:
        with self._lock:
            now = self._clock()
            headers: dict[str, str] = {}
            try:
                if route is None:
                    raise _ApiError(404, "Not Found")
                self._check_auth(req, route, params, now)
                body = _parse_body(req.body)
                if scope is not None:
                    key = params.get("key")
                    if key is None:  # register: the key is in the body
                        key = str(body.get("key", "")) if isinstance(body, dict) else ""
                    headers = self._rate_limit(key, scope, now)
                self._expire(now)
                ctx = _Ctx(req, params, parse_qs(req.query, keep_blank_values=True), body, now)
                handler: Callable[[_Ctx], _Response] = getattr(self, f"_api_{route}")
                resp = handler(ctx)
            except _ApiError as err:
                if scope is not None and not headers:
                    headers = self._rate_headers(params.get("key", ""), scope, now)
                headers.update(err.headers)
                return _json_response(err.status, err.payload, headers)
            for name, value in headers.items():
                resp.headers.setdefault(name, value)
            return resp

    def _check_auth(self, req: _Request, route: str, params: Mapping[str, str], now: float) -> None:
        presented = _presented_token(req.headers)
        if presented is None:
            raise _ApiError(401, "No agent token was provided in the Authorization header")
        if hmac.compare_digest(presented.encode(), self._token.encode()):
            return
        if route == "acquire_job":
            info = self._acq_tokens.get(presented)
            if info is not None and info.job_uuid == params["uuid"] and info.expires_at > now:
                return
        raise _ApiError(401, _invalid_token_message(presented))

    def _rate_headers(self, key: str, scope: str | None, now: float) -> dict[str, str]:
        if scope is None:
            return {}
        limit = self._rate_limits[scope]
        window = self._windows.setdefault((key, scope), collections.deque())
        while window and window[0] <= now - 1.0:
            window.popleft()
        reset = max(1, math.ceil(window[0] + 1.0 - now)) if window else 1
        return {
            "RateLimit-Scope": scope,
            "RateLimit-Limit": str(limit),
            "RateLimit-Remaining": str(max(0, limit - len(window))),
            "RateLimit-Reset": str(reset),
        }

    def _rate_limit(self, key: str, scope: str, now: float) -> dict[str, str]:
        headers = self._rate_headers(key, scope, now)
        window = self._windows[(key, scope)]
        limit = self._rate_limits[scope]
        if self._enforce_rate_limits and len(window) >= limit:
            reset = int(headers["RateLimit-Reset"])
            headers["Retry-After"] = str(reset)
            raise _ApiError(
                429,
                "rate limited",
                body=_rate_limited_body(scope, limit, len(window) + 1, reset),
                headers=headers,
            )
        window.append(now)
        return self._rate_headers(key, scope, now)

    def _require_stack(self, ctx: _Ctx) -> _Stack:
        stack = self._stacks.get(ctx.params["key"])
        if stack is None or stack.state != "connected":
            raise _ApiError(404, "Stack not found")
        stack.last_connected_on = ctx.now
        return stack

    def _require_job(self, uuid: str) -> FakeJob:
        job = self._jobs.get(uuid)
        if job is None:
            raise _ApiError(404, "Job not found")
        return job

    # ------------------------------------------------------------------ endpoints

    def _api_metrics(self, ctx: _Ctx) -> _Response:
        return _json_response(200, self._metrics_payload(None), self._poll_header())

    def _api_metrics_queue(self, ctx: _Ctx) -> _Response:
        name = ctx.arg("name")
        if not name:
            raise _ApiError(400, "name is required")
        return _json_response(200, self._metrics_payload(name), self._poll_header())

    def _poll_header(self) -> dict[str, str]:
        return {"Buildkite-Agent-Metrics-Poll-Duration": str(self.poll_duration_seconds)}

    def _api_token(self, ctx: _Ctx) -> _Response:
        return _json_response(
            200,
            {
                "uuid": self.token_uuid,
                "description": "fake agent token",
                "token_type": "cluster" if self.cluster_uuid else "organization",
                "organization_slug": self.organization_slug,
                "organization_uuid": self.organization_uuid,
                "cluster_uuid": self.cluster_uuid,
                "cluster_name": (self.cluster_name or "") if self.cluster_uuid else "",
                "organization_queue_uuid": "",
                "organization_queue_key": "",
            },
        )

    def _api_register(self, ctx: _Ctx) -> _Response:
        body = ctx.body
        if not isinstance(body, dict):
            raise _ApiError(400, "request body must be a JSON object")
        key, stack_type, queue_key = body.get("key"), body.get("type"), body.get("queue_key")
        metadata = body.get("metadata")
        if not isinstance(key, str) or not _STACK_KEY_RE.fullmatch(key):
            raise _ApiError(
                422, "key must be 1-80 characters of letters, digits, underscores and dashes"
            )
        if stack_type not in STACK_TYPES:
            raise _ApiError(422, f"type must be one of {', '.join(STACK_TYPES)}")
        if not isinstance(queue_key, str) or not queue_key:
            raise _ApiError(422, "queue_key is required")
        if not isinstance(metadata, dict):
            raise _ApiError(422, "metadata is required and must be an object")
        if len(metadata) > MAX_METADATA_KEYS or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 256
            for k, v in metadata.items()
        ):
            raise _ApiError(
                422, "metadata must be at most 100 string keys (<= 64) with string values (<= 256)"
            )
        queue = self._resolve_queue(queue_key)
        if queue not in self._queues:
            raise _ApiError(404, "Cluster queue not found")
        existing = self._stacks.get(key)
        if existing is None:
            active = sum(1 for s in self._stacks.values() if s.state == "connected")
            if active >= self.max_stacks:
                raise _ApiError(403, "Stack limit exceeded for this organization")
            stack = _Stack(_new_uuid(), key, stack_type, queue, dict(metadata), ctx.now)
            self._stacks[key] = stack
            return _json_response(201, self._stack_json(stack))
        existing.type, existing.queue_key, existing.metadata = stack_type, queue, dict(metadata)
        existing.state, existing.last_connected_on = "connected", ctx.now
        return _json_response(200, self._stack_json(existing))

    def _api_deregister(self, ctx: _Ctx) -> _Response:
        stack = self._require_stack(ctx)
        stack.state = "disconnected"
        return _Response(204)

    def _api_list_scheduled_jobs(self, ctx: _Ctx) -> _Response:
        self._require_stack(ctx)
        queue_key = ctx.arg("queue_key")
        if not queue_key:
            raise _ApiError(400, "queue_key is required")
        queue = self._resolve_queue(queue_key)
        if queue not in self._queues:
            raise _ApiError(404, "Cluster queue not found")
        limit_arg = ctx.arg("limit")
        limit = DEFAULT_PAGE_SIZE
        if limit_arg is not None:
            if not limit_arg.isdigit() or not 1 <= int(limit_arg) <= MAX_BATCH:
                raise _ApiError(400, f"limit must be a positive integer no larger than {MAX_BATCH}")
            limit = int(limit_arg)
        after = ctx.arg("after")
        jobs = [j for j in self._sorted_jobs() if j.queue == queue and j.state == "scheduled"]
        if after:
            cursor = _decode_cursor(after)
            jobs = [j for j in jobs if (j.scheduled_at, j.seq) > cursor]
        page = jobs[:limit]
        q = self._queues[queue]
        return _json_response(
            200,
            {
                "jobs": [self._scheduled_job_json(j) for j in page],
                "page_info": {
                    "has_next_page": len(jobs) > limit,
                    "end_cursor": _encode_cursor(page[-1]) if page else None,
                },
                "cluster_queue": {"id": q.id, "dispatch_paused": q.paused, "paused": q.paused},
            },
        )

    def _api_batch_reserve(self, ctx: _Ctx) -> _Response:
        stack = self._require_stack(ctx)
        uuids = _job_uuid_list(ctx.body)
        seconds = _positive_int(
            ctx.body,
            "reservation_expiry_seconds",
            DEFAULT_RESERVATION_SECONDS,
            MAX_RESERVATION_SECONDS,
        )
        reserved: list[str] = []
        not_reserved: list[str] = []
        for uuid in uuids:
            job = self._jobs.get(uuid)
            mine = job is not None and job.state == "reserved" and job.reserved_by == stack.key
            if job is not None and (job.state == "scheduled" or mine):
                job.state = "reserved"
                job.reserved_by = stack.key
                job.reserved_until = ctx.now + seconds
                reserved.append(uuid)
            else:
                not_reserved.append(uuid)
        return _json_response(200, {"reserved": reserved, "not_reserved": not_reserved})

    def _api_get_job(self, ctx: _Ctx) -> _Response:
        self._require_stack(ctx)
        job = self._require_job(ctx.params["uuid"])
        return _json_response(200, {"id": job.uuid, "env": dict(job.env), "command": job.command})

    def _api_get_job_states(self, ctx: _Ctx) -> _Response:
        self._require_stack(ctx)
        uuids = _job_uuid_list(ctx.body)
        states = {u: self._jobs[u].state for u in uuids if u in self._jobs}
        return _json_response(200, {"states": states})

    def _api_finish_job(self, ctx: _Ctx) -> _Response:
        stack = self._require_stack(ctx)
        job = self._require_job(ctx.params["uuid"])
        body = ctx.body if ctx.body is not None else {}
        if not isinstance(body, dict):
            raise _ApiError(400, "request body must be a JSON object")
        detail = body.get("detail")
        if not isinstance(detail, str):
            raise _ApiError(422, "detail is required")
        if len(detail.encode()) > MAX_FINISH_DETAIL_BYTES:
            raise _ApiError(422, f"detail must be at most {MAX_FINISH_DETAIL_BYTES} bytes")
        exit_status = body.get("exit_status", -1)
        if exit_status is None:
            exit_status = -1
        if not isinstance(exit_status, int) or isinstance(exit_status, bool):
            raise _ApiError(400, "exit_status must be an integer")
        if any(f["job_uuid"] == job.uuid for f in self._finished):
            raise _ApiError(422, "Job has already been finished by a stack")
        if job.state in TERMINAL_STATES:
            raise _ApiError(422, f"Job is already {job.state}")
        job.state = "finished"
        job.exit_status = exit_status
        job.finished_at = ctx.now
        job.reserved_by = job.reserved_until = None
        self._finished.append(
            {
                "stack_key": stack.key,
                "job_uuid": job.uuid,
                "exit_status": exit_status,
                "detail": detail,
                "at": ctx.now,
            }
        )
        return _json_response(200, {})

    def _api_notifications(self, ctx: _Ctx) -> _Response:
        stack = self._require_stack(ctx)
        if not isinstance(ctx.body, dict) or not isinstance(ctx.body.get("notifications"), list):
            raise _ApiError(400, "notifications must be an array")
        items: list[Any] = ctx.body["notifications"]
        if len(items) > MAX_BATCH:
            raise _ApiError(422, f"notifications must not contain more than {MAX_BATCH} items")
        errors: dict[str, list[int]] = {}
        per_job = collections.Counter(n["job_uuid"] for n in self._notifications)
        for index, item in enumerate(items):
            problem, record = self._check_notification(item, ctx.now, per_job)
            if problem is not None:
                errors.setdefault(problem, []).append(index)
                continue
            assert record is not None
            record["stack_key"] = stack.key
            per_job[record["job_uuid"]] += 1
            self._notifications.append(record)
        return _json_response(
            200, {"errors": [{"error": e, "indexes": idx} for e, idx in errors.items()]}
        )

    def _check_notification(
        self, item: Any, now: float, per_job: Mapping[str, int]
    ) -> tuple[str | None, dict[str, Any] | None]:
        if not isinstance(item, dict):
            return "notification must be an object", None
        uuid, detail, stamp = item.get("job_uuid"), item.get("detail"), item.get("timestamp")
        if not isinstance(uuid, str) or not uuid:
            return "job_uuid is required", None
        job = self._jobs.get(uuid)
        if job is None:
            return "job not found", None
        if not isinstance(detail, str) or not detail:
            return "detail is required", None
        if len(detail) > MAX_NOTIFICATION_DETAIL:
            return f"detail is too long (maximum is {MAX_NOTIFICATION_DETAIL} characters)", None
        when = now
        if stamp is not None:
            try:
                when = _parse_iso(str(stamp))
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

    def _api_job_acquisition_tokens(self, ctx: _Ctx) -> _Response:
        stack = self._require_stack(ctx)
        uuids = _job_uuid_list(ctx.body)
        lifetime = _positive_int(
            ctx.body, "token_lifetime_seconds", DEFAULT_TOKEN_LIFETIME_SECONDS, None
        )
        issued: list[dict[str, Any]] = []
        not_issued: list[str] = []
        for uuid in uuids:
            job = self._jobs.get(uuid)
            ok = job is not None and (
                job.state == "scheduled"
                or (job.state == "reserved" and job.reserved_by in (stack.key, ""))
            )
            if not ok:
                not_issued.append(uuid)
                continue
            token = "bkjat_" + secrets.token_urlsafe(24)
            expires = ctx.now + lifetime
            self._acq_tokens[token] = _AcquisitionToken(token, uuid, stack.key, expires)
            issued.append(
                {
                    "job_uuid": uuid,
                    "job_acquisition_token": token,
                    "expires_at": iso_timestamp(expires),
                }
            )
        return _json_response(201, {"job_acquisition_tokens": issued, "not_issued": not_issued})

    def _api_acquire_job(self, ctx: _Ctx) -> _Response:
        job = self._require_job(ctx.params["uuid"])
        status, message = self._acquire(job, ctx.now)
        if status == 423:
            raise _ApiError(423, message, headers={"Retry-After": str(self.acquire_retry_after)})
        if status != 200:
            raise _ApiError(status, message)
        return _json_response(
            200,
            {
                "id": job.uuid,
                "endpoint": self.endpoint if self._server else "",
                "state": job.state,
                "env": dict(job.env),
                "step": {"command": job.command, "label": job.label},
                "token": "fake-job-token-" + secrets.token_hex(8),
                "runnable_at": iso_timestamp(cast(float, job.runnable_at)),
            },
        )

    def _api_job_state(self, ctx: _Ctx) -> _Response:
        job = self._require_job(ctx.params["uuid"])
        return _json_response(200, {"state": job.state})

    # ------------------------------------------------------------------ control API (/_fake)

    def _admin(self, req: _Request, path: list[str]) -> _Response:
        """A small unauthenticated control API for a fake running in another process.

        ``POST /_fake/jobs`` ``{"queue", "count"?, "fields"?}`` -> 201 ``{"uuids"}``;
        ``GET /_fake/jobs?queue=&state=`` -> ``{"jobs"}``;
        ``GET /_fake/jobs/<uuid>`` -> the job; ``PUT /_fake/jobs/<uuid>`` ``{"state"}``;
        what an agent does to one job: ``POST /_fake/jobs/<uuid>/acquire`` -> 200
        ``{"acquire_status": 200|422|423, "state"}`` (the status ``PUT /v3/jobs/:id/acquire``
        would answer), ``POST /_fake/jobs/<uuid>/start`` and ``POST /_fake/jobs/<uuid>/finish``
        ``{"exit_status"?}`` (409 once the job is finished, canceled, ...);
        ``PUT /_fake/agents`` ``{"queue", "idle", "busy"}``; ``POST /_fake/faults`` ``{"target",
        "kind", "times"?, "seconds"?}``; ``GET /_fake/requests``, ``/_fake/finished``,
        ``/_fake/notifications``. An unknown job UUID answers 404. Control calls are not in the
        request log and never rate limited.
        """
        query = parse_qs(req.query)
        try:
            body = _parse_body(req.body) or {}
            if not isinstance(body, dict):
                raise _ApiError(400, "request body must be a JSON object")
            if req.method == "POST" and path == ["jobs"]:
                fields = body.get("fields") or {}
                uuids = self.add_jobs(str(body["queue"]), int(body.get("count", 1)), **fields)
                return _json_response(201, {"uuids": uuids})
            if req.method == "GET" and path == ["jobs"]:
                jobs = self.jobs(
                    queue=query.get("queue", [None])[0], state=query.get("state", [None])[0]
                )
                return _json_response(200, {"jobs": [dataclasses.asdict(j) for j in jobs]})
            if len(path) in (2, 3) and path[0] == "jobs":
                return self._admin_job(req.method, path[1], path[2:], body)
            if req.method == "PUT" and path == ["agents"]:
                self.set_agents(
                    str(body["queue"]), idle=int(body.get("idle", 0)), busy=int(body.get("busy", 0))
                )
                return _json_response(200, {})
            if req.method == "POST" and path == ["faults"]:
                self.inject(
                    str(body["target"]),
                    str(body["kind"]),
                    int(body.get("times", 1)),
                    seconds=body.get("seconds"),
                )
                return _json_response(201, {})
            if req.method == "GET" and path == ["requests"]:
                return _json_response(
                    200, {"requests": [dataclasses.asdict(r) for r in self.requests]}
                )
            if req.method == "GET" and path == ["finished"]:
                return _json_response(200, {"finished": self.finished})
            if req.method == "GET" and path == ["notifications"]:
                return _json_response(200, {"notifications": self.notifications})
            raise _ApiError(404, "Not Found")
        except _ApiError as err:
            return _json_response(err.status, err.payload)
        except (KeyError, TypeError, ValueError) as err:
            return _json_response(400, {"message": f"bad control request: {err}"})

    def _admin_job(
        self, method: str, uuid: str, action: list[str], body: Mapping[str, Any]
    ) -> _Response:
        """``/_fake/jobs/<uuid>[/acquire|/start|/finish]``: one job, driven as an agent would."""
        with self._lock:
            if uuid not in self._jobs:
                raise _ApiError(404, "Job not found")
            if method == "GET" and not action:
                return _json_response(200, dataclasses.asdict(self.job(uuid)))
            if method == "PUT" and not action:
                self.set_job_state(uuid, str(body["state"]))
                return _json_response(200, dataclasses.asdict(self.job(uuid)))
            if method == "POST" and action == ["acquire"]:
                status = self.acquire_job(uuid)
                return _json_response(
                    200, {"acquire_status": status, "state": self._jobs[uuid].state}
                )
            if method == "POST" and action in (["start"], ["finish"]):
                state = self._jobs[uuid].state
                if state in TERMINAL_STATES:
                    raise _ApiError(409, f"Job is already {state}")
                if action == ["start"]:
                    self.start_job(uuid)
                else:
                    exit_status = body.get("exit_status", 0)
                    if not isinstance(exit_status, int) or isinstance(exit_status, bool):
                        raise _ApiError(400, "exit_status must be an integer")
                    self.finish_job(uuid, exit_status)
                return _json_response(200, dataclasses.asdict(self.job(uuid)))
            raise _ApiError(404, "Not Found")


def _presented_token(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization")
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "token" or not token.strip():
        return None
    return token.strip()


def _invalid_token_message(presented: str) -> str:
    return (
        f'The token you provided "{_redact(presented)}" is not a valid organization agent '
        "registration token."
    )


def _rate_limited_body(scope: str, limit: int, current: int, reset: int) -> dict[str, Any]:
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


def _parse_body(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise _ApiError(400, "request body is not valid JSON") from err


# --------------------------------------------------------------------------- HTTP server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeBuildkite

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def track(self, conn: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            if open_:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that hang up; report anything else as usual."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """Unblock handler threads parked on idle keep-alive connections."""
        with self._connections_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Buildkite's clients expect
    server_version = "FakeBuildkite/1"
    sys_version = ""
    timeout = 30
    # Headers and body go out in separate writes; without TCP_NODELAY every keep-alive
    # answer would stall ~40 ms on Nagle's algorithm meeting the client's delayed ACK.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def _read_chunked(self) -> bytes | None:
        """A ``Transfer-Encoding: chunked`` body (Go sends empty POST bodies so); None if bad."""
        body = bytearray()
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                return None
            if size < 0 or len(body) + size > _MAX_BODY_BYTES:
                return None
            if size == 0:
                break
            body += self.rfile.read(size)
            if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                return None
        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):  # trailer fields
            pass
        return bytes(body)

    def _dispatch(self) -> None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunked = self._read_chunked()
            if chunked is None:
                self.close_connection = True
                resp = _json_response(400, {"message": "malformed chunked request body"})
                self.send_response(resp.status)
                self.send_header("Content-Type", _JSON_TYPE)
                self.send_header("Content-Length", str(len(resp.body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(resp.body)
                return
            body = chunked
        else:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
        raw_path, _, query = self.path.partition("?")
        headers = {name.lower(): value for name, value in self.headers.items()}
        request = _Request(self.command, raw_path, query, headers, body)
        try:
            resp = self.server.fake._serve(request)
        except Exception as err:  # a bug in the fake: answer visibly, never just hang up
            traceback.print_exc()
            resp = _json_response(500, {"message": f"fake Buildkite crashed: {err!r}"})
        self.send_response(resp.status)
        for name, value in resp.headers.items():
            self.send_header(name, value)
        if resp.status != 204:
            self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if resp.body and resp.status != 204:
            self.wfile.write(resp.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: a request line never reaches a log (and headers never do)."""


# --------------------------------------------------------------------------- HTTP client helper


@dataclass(frozen=True)
class HttpResponse:
    """A plain HTTP answer: status, headers (lower-case names) and raw body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """Decode the body as JSON."""
        return json.loads(self.body)


def http_request(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 5.0,
    client: Any = None,
) -> HttpResponse:
    """Send one request with httpx when it is installed, else urllib; never raises on status.

    ``client`` may be an open ``httpx.Client`` to reuse (keep-alive, and no per-call setup).
    """
    if client is None:
        try:
            import httpx
        except ImportError:
            pass
        else:
            # A plain-http URL needs no CA bundle; loading one costs ~30 ms per call.
            with httpx.Client(verify=not url.startswith("http://"), timeout=timeout) as one:
                return http_request(method, url, headers=headers, body=body, client=one)
    if client is not None:
        resp = client.request(method, url, headers=dict(headers or {}), content=body)
        return HttpResponse(
            resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.content
        )
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as raw:
            return HttpResponse(
                raw.status, {k.lower(): v for k, v in raw.headers.items()}, raw.read()
            )
    except urllib.error.HTTPError as err:
        with err:
            return HttpResponse(
                err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()
            )


# --------------------------------------------------------------------------- webhooks


def rest_job(job: FakeJob, *, organization_slug: str = "acme") -> dict[str, Any]:
    """The job as Buildkite's REST API (and so its webhooks) shows it."""
    base = (
        f"https://buildkite.com/{organization_slug}/{job.pipeline_slug}/builds/{job.build_number}"
    )
    return {
        "id": job.uuid,
        "graphql_id": _graphql_id("Job", job.uuid),
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
        "graphql_id": _graphql_id("Build", job.build_uuid),
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
        "graphql_id": _graphql_id("Pipeline", job.pipeline_uuid),
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
        "id": _new_uuid(),
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
                "graphql_id": _graphql_id("Job", job.uuid),
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
                "graphql_id": _graphql_id("Build", job.build_uuid),
                "number": job.build_number,
                "commit": job.build_commit,
                "message": "fake build",
                "branch": job.build_branch,
                "state": "started",
                "source": "webhook",
            },
            "pipeline": {
                "uuid": job.pipeline_uuid,
                "graphql_id": _graphql_id("Pipeline", job.pipeline_uuid),
                "slug": job.pipeline_slug,
                "repo": job.repository,
            },
            "organization": {
                "uuid": organization_uuid,
                "graphql_id": _graphql_id("Organization", organization_uuid),
                "slug": organization_slug,
            },
        },
    }


# --------------------------------------------------------------------------- standalone


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a fake until SIGTERM/SIGINT; print its URL (one line) on stdout first."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.fake_buildkite",
        description="Serve a fake Buildkite agent API on 127.0.0.1 (test support).",
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: ephemeral)")
    parser.add_argument(
        "--token",
        default=os.environ.get("FAKE_BUILDKITE_TOKEN"),
        help="the valid agent token (default: $FAKE_BUILDKITE_TOKEN)",
    )
    parser.add_argument("--organization-slug", default="acme")
    parser.add_argument("--cluster-uuid", default=None)
    parser.add_argument("--cluster-name", default="Default")
    parser.add_argument(
        "--queue", dest="queues", action="append", default=None, help="a queue (repeatable)"
    )
    parser.add_argument(
        "--jobs", action="append", default=[], metavar="QUEUE=N", help="seed N scheduled jobs"
    )
    parser.add_argument("--poll-duration", type=int, default=10)
    parser.add_argument("--no-rate-limits", action="store_true")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("--token (or FAKE_BUILDKITE_TOKEN) is required")

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    fake = FakeBuildkite(
        args.token,
        organization_slug=args.organization_slug,
        cluster_uuid=args.cluster_uuid,
        cluster_name=args.cluster_name,
        queues=args.queues or ("default",),
        default_queue=(args.queues or ["default"])[0],
        poll_duration_seconds=args.poll_duration,
        port=args.port,
        enforce_rate_limits=not args.no_rate_limits,
    )
    for spec in args.jobs:
        queue, sep, count = spec.partition("=")
        if not sep or not count.isdigit():
            parser.error(f"--jobs expects QUEUE=N, got {spec!r}")
        fake.add_jobs(queue, int(count))
    with fake:
        print(fake.url, flush=True)
        while not stop.wait(0.2):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
