"""The fake's state: jobs, queues, stacks, agents, tokens, faults, and the clock.

One :class:`State` holds everything behind one lock; the API modules read and change it
(with the lock held) and :mod:`.control` drives it from a test.  Time comes from a clock
(``time.time``, or a :class:`VirtualClock` a test moves by hand): reservation and token
expiry, rate-limit windows and every timestamp the fake writes read it.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.support.fake_buildkite.wire import (
    ACQUIRE_LOCKED_STATES,
    DEFAULT_QUEUE_KEYS,
    JOB_STATES,
    RATE_LIMITS,
    SCHEDULED_STATES,
    TERMINAL_STATES,
    ApiError,
    Ctx,
    iso_timestamp,
)


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


def new_uuid() -> str:
    return str(uuidlib.uuid4())


@dataclass
class FakeJob:
    """One Buildkite job as the fake stores it; also usable on its own for webhook bodies."""

    queue: str = "default"
    uuid: str = field(default_factory=new_uuid)
    state: str = "scheduled"
    priority: int = 0
    scheduled_at: float = field(default_factory=time.time)
    runnable_at: float | None = None
    created_at: float | None = None
    label: str = ":pytest: test"
    command: str = "echo hello"
    step_key: str | None = None
    pipeline_slug: str = "pipeline"
    pipeline_uuid: str = field(default_factory=new_uuid)
    build_number: int = 1
    build_branch: str = "main"
    build_uuid: str = field(default_factory=new_uuid)
    build_commit: str = "HEAD"
    repository: str = "git@example.com:acme/pipeline.git"
    agent_query_rules: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    #: ``BUILDKITE_PLUGINS`` (a JSON list of ``{location: config}``), or None.
    plugins: str | None = None
    #: ``BUILDKITE_SKIP_CHECKOUT=true``: the agent runs the command without a checkout.
    skip_checkout: bool = False
    # Bookkeeping the fake maintains.
    reserved_by: str | None = None
    reserved_until: float | None = None
    exit_status: int | None = None
    acquired_at: float | None = None
    finished_at: float | None = None
    seq: int = 0
    # What a real agent did with it (the agent API, :mod:`.agent_api` / :mod:`.jobs_api`).
    agent_uuid: str | None = None
    agent_name: str | None = None
    accepted_at: float | None = None
    started_at: float | None = None
    signal: str | None = None
    signal_reason: str | None = None
    chunks: int = 0
    chunks_failed_count: int | None = None
    header_times: dict[str, str] = field(default_factory=dict)
    cancel_requested_at: float | None = None

    def __post_init__(self) -> None:
        if self.state not in JOB_STATES:
            raise ValueError(f"unknown job state {self.state!r}")
        if self.runnable_at is None:
            self.runnable_at = self.scheduled_at
        if self.created_at is None:
            self.created_at = self.scheduled_at
        if not self.agent_query_rules:
            self.agent_query_rules = [f"queue={self.queue}"]


@dataclass
class AgentRecord:
    """One registered buildkite-agent (its access token is kept apart, never shown)."""

    uuid: str
    name: str
    hostname: str
    version: str
    queue: str
    tags: list[str]
    features: list[str]
    ignore_in_dispatches: bool
    registered_at: float
    #: The job a job-acquisition token registered it for (it may acquire only that one).
    bound_job: str | None = None
    state: str = "registered"  # registered, connected, stopping, disconnected
    connected_at: float | None = None
    last_ping_at: float | None = None
    last_heartbeat_at: float | None = None
    disconnected_at: float | None = None
    pings: int = 0
    current_job: str | None = None
    jobs: list[str] = field(default_factory=list)
    #: What the next ping answers instead of work (``"disconnect"``, ``"pause"``), if set.
    pending_action: str | None = None


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
class StackRecord:
    id: str
    key: str
    type: str
    queue_key: str
    metadata: dict[str, str]
    last_connected_on: float
    state: str = "connected"


@dataclass
class QueueRecord:
    id: str
    paused: bool = False


@dataclass
class Fault:
    target: str
    kind: str
    remaining: int
    seconds: float | None


@dataclass
class IssuedToken:
    token: str
    job_uuid: str
    stack_key: str
    expires_at: float


class State:
    """A thread-safe, in-memory Buildkite organization (served by :mod:`.server`).

    All state sits behind one lock. Time comes from ``clock`` (``time.time`` unless a
    ``VirtualClock`` is given).
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
        host: str = "127.0.0.1",
        advertise_url: str | None = None,
        ping_interval: int = 1,
        job_status_interval: int = 1,
        heartbeat_interval: int = 10,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
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
            host: the address to bind (``0.0.0.0`` inside a container; tests keep 127.0.0.1).
            advertise_url: the base URL agents are told to use (register's and a job's
                ``endpoint``), e.g. a Service's address; default: the bound URL.
            ping_interval: seconds between an agent's pings (register's ``ping_interval``).
            job_status_interval: seconds between a running job's state checks (cancel).
            heartbeat_interval: seconds between an agent's heartbeats.
            webhook_url: where :meth:`~.agent_control.AgentControl.enqueue` posts a
                ``job.scheduled`` webhook for each job (None: no webhooks).
            webhook_secret: the key that signs those webhooks (``X-Buildkite-Signature``).
        """
        self._token = token
        self.organization_slug = organization_slug
        self.organization_uuid = organization_uuid or new_uuid()
        self.cluster_uuid = new_uuid() if cluster_uuid is None else cluster_uuid
        self.cluster_name = cluster_name
        self.default_queue = default_queue
        self.poll_duration_seconds = poll_duration_seconds
        self.max_stacks = max_stacks
        self.acquire_retry_after = acquire_retry_after
        self.token_uuid = new_uuid()
        self._clock = clock
        self._port = port
        self._rate_limits = dict(RATE_LIMITS)
        self._rate_limits.update(rate_limits or {})
        self._enforce_rate_limits = enforce_rate_limits
        self._host = host
        self._advertise_url = advertise_url.rstrip("/") if advertise_url else None
        self.ping_interval = ping_interval
        self.job_status_interval = job_status_interval
        self.heartbeat_interval = heartbeat_interval
        self.webhook_url = webhook_url
        self._webhook_secret = webhook_secret
        self._webhook_deliveries: list[dict[str, Any]] = []

        self._lock = threading.RLock()
        self._jobs: dict[str, FakeJob] = {}
        self._seq = 0
        self._queues: dict[str, QueueRecord] = {}
        self._agents: dict[str, tuple[int, int]] = {}
        self._stacks: dict[str, StackRecord] = {}
        self._windows: dict[tuple[str, str], collections.deque[float]] = {}
        self._acq_tokens: dict[str, IssuedToken] = {}
        self._notifications: list[dict[str, Any]] = []
        self._finished: list[dict[str, Any]] = []
        self._requests: list[RequestRecord] = []
        self._faults: list[Fault] = []
        # The agent API: registered agents, their access tokens, job tokens, job logs.
        self._agent_records: dict[str, AgentRecord] = {}
        self._agent_tokens: dict[str, str] = {}  # access token -> agent UUID
        self._job_tokens: dict[str, str] = {}  # job token -> job UUID
        self._chunks: dict[str, dict[int, tuple[int, bytes]]] = {}  # job -> seq -> (offset, data)
        self._meta_data: dict[str, dict[str, str]] = {}  # build UUID -> key -> value
        for q in queues:
            self.add_queue(q)
        self.add_queue(default_queue)

    def add_queue(self, key: str, *, paused: bool | None = None) -> None:
        """Declare a cluster queue (idempotent); ``paused`` sets ``dispatch_paused`` if given."""
        with self._lock:
            queue = self._queues.setdefault(key, QueueRecord(id=new_uuid()))
            if paused is not None:
                queue.paused = paused

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

    @property
    def advertised_endpoint(self) -> str:
        """The agent API endpoint job payloads name (empty while not served)."""
        return ""

    def now(self) -> float:
        """The fake's current time (its clock)."""
        return self._clock()

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
        """The environment Buildkite gives a job (an agent adds its own at accept/acquire)."""
        build_url = (
            f"https://buildkite.com/{self.organization_slug}/{job.pipeline_slug}"
            f"/builds/{job.build_number}"
        )
        env = {
            "CI": "true",
            "BUILDKITE": "true",
            "BUILDKITE_JOB_ID": job.uuid,
            "BUILDKITE_BUILD_URL": build_url,
            "BUILDKITE_MESSAGE": job.label,
            "BUILDKITE_SOURCE": "api",
            "BUILDKITE_RETRY_COUNT": "0",
            "BUILDKITE_PULL_REQUEST": "false",
            "BUILDKITE_PIPELINE_NAME": job.pipeline_slug,
            "BUILDKITE_PIPELINE_DEFAULT_BRANCH": "main",
            "BUILDKITE_PIPELINE_PROVIDER": "git",
            "BUILDKITE_ORGANIZATION_ID": self.organization_uuid,
            "BUILDKITE_BUILD_ID": job.build_uuid,
            "BUILDKITE_BUILD_NUMBER": str(job.build_number),
            "BUILDKITE_BRANCH": job.build_branch,
            "BUILDKITE_COMMIT": job.build_commit,
            "BUILDKITE_PIPELINE_SLUG": job.pipeline_slug,
            "BUILDKITE_PIPELINE_ID": job.pipeline_uuid,
            "BUILDKITE_ORGANIZATION_SLUG": self.organization_slug,
            "BUILDKITE_LABEL": job.label,
            "BUILDKITE_COMMAND": job.command,
            "BUILDKITE_AGENT_META_DATA_QUEUE": job.queue,
        }
        if self.cluster_uuid:
            env["BUILDKITE_CLUSTER_ID"] = self.cluster_uuid
        if job.step_key:
            env["BUILDKITE_STEP_KEY"] = job.step_key
        if job.repository:
            env["BUILDKITE_REPO"] = job.repository
        if job.skip_checkout:
            env["BUILDKITE_SKIP_CHECKOUT"] = "true"
        if job.plugins:
            env["BUILDKITE_PLUGINS"] = job.plugins
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

    def _stack_json(self, stack: StackRecord) -> dict[str, Any]:
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

    def _require_stack(self, ctx: Ctx) -> StackRecord:
        stack = self._stacks.get(ctx.params["key"])
        if stack is None or stack.state != "connected":
            raise ApiError(404, "Stack not found")
        stack.last_connected_on = ctx.now
        return stack

    def _require_job(self, uuid: str) -> FakeJob:
        job = self._jobs.get(uuid)
        if job is None:
            raise ApiError(404, "Job not found")
        return job
