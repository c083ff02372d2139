"""Typed views of Buildkite's answers, parsed strictly (garbage is an error, not a zero)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where} is not a non-negative integer")
    return value


@dataclass(frozen=True)
class QueueMetrics:
    """Counts of one queue from ``GET /metrics``."""

    scheduled: int = 0
    running: int = 0
    waiting: int = 0
    idle_agents: int = 0
    busy_agents: int = 0
    total_agents: int = 0

    @property
    def runnable(self) -> int:
        """Jobs that need an agent now or hold one: scheduled + running."""
        return self.scheduled + self.running

    @property
    def busy_percentage(self) -> float | None:
        """Share of connected agents that run a job (None with no agents)."""
        if self.total_agents == 0:
            return None
        return 100.0 * self.busy_agents / self.total_agents


@dataclass
class MetricsSnapshot:
    """One answer of ``GET /metrics``."""

    organization: str
    cluster: str | None
    queues: dict[str, QueueMetrics]
    fetched_at: float
    #: Buildkite's hint (Buildkite-Agent-Metrics-Poll-Duration): do not poll sooner.
    poll_after: float | None = None

    def queue(self, name: str) -> QueueMetrics:
        """Counts of a queue; a queue Buildkite does not list has no jobs and no agents."""
        return self.queues.get(name, QueueMetrics())


def parse_metrics(data: Any, *, fetched_at: float) -> MetricsSnapshot:
    """Parse a ``GET /metrics`` body; raise ValueError/KeyError/TypeError on a bad shape."""
    if not isinstance(data, dict):
        raise TypeError("body is not an object")
    org = data["organization"]["slug"]
    if not isinstance(org, str) or not org:
        raise ValueError("organization.slug is empty")
    job_queues = data["jobs"].get("queues", {})
    agent_queues = data["agents"].get("queues", {})
    if not isinstance(job_queues, dict) or not isinstance(agent_queues, dict):
        raise TypeError("queues is not an object")
    queues: dict[str, QueueMetrics] = {}
    for name in sorted(set(job_queues) | set(agent_queues)):
        jobs = job_queues.get(name, {})
        agents = agent_queues.get(name, {})
        queues[str(name)] = QueueMetrics(
            scheduled=_count(jobs.get("scheduled", 0), f"jobs.queues.{name}.scheduled"),
            running=_count(jobs.get("running", 0), f"jobs.queues.{name}.running"),
            waiting=_count(jobs.get("waiting", 0), f"jobs.queues.{name}.waiting"),
            idle_agents=_count(agents.get("idle", 0), f"agents.queues.{name}.idle"),
            busy_agents=_count(agents.get("busy", 0), f"agents.queues.{name}.busy"),
            total_agents=_count(agents.get("total", 0), f"agents.queues.{name}.total"),
        )
    cluster = data.get("cluster")
    return MetricsSnapshot(
        organization=org,
        cluster=str(cluster.get("name")) if isinstance(cluster, dict) else None,
        queues=queues,
        fetched_at=fetched_at,
    )


@dataclass(frozen=True)
class RegisteredStack:
    """What ``POST /stacks/register`` gave back: use these keys afterwards."""

    key: str
    queue_key: str


def parse_time(value: Any) -> float | None:
    """Parse Buildkite's ISO 8601 timestamps (``2024-05-01T10:00:00.000Z``) to epoch seconds."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    if text.endswith(" UTC"):  # EventBridge: "2019-08-11 06:01:14 UTC"
        text = text[:-4].replace(" ", "T") + "+00:00"
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


@dataclass(frozen=True)
class ScheduledJob:
    """One job from the Stacks API's scheduled-jobs list."""

    uuid: str
    priority: int
    scheduled_at: float | None
    agent_query_rules: tuple[str, ...] = ()
    pipeline: str = ""
    build_number: int | None = None
    step_key: str | None = None


@dataclass
class ScheduledPage:
    """One page of scheduled jobs."""

    jobs: list[ScheduledJob]
    has_next_page: bool
    end_cursor: str | None
    dispatch_paused: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def parse_scheduled_page(data: Any) -> ScheduledPage:
    """Parse a scheduled-jobs page; raise on a bad shape."""
    if not isinstance(data, dict):
        raise TypeError("body is not an object")
    jobs = []
    for raw in data["jobs"]:
        uuid = raw["id"]
        if not isinstance(uuid, str) or not uuid:
            raise ValueError("job id is empty")
        jobs.append(
            ScheduledJob(
                uuid=uuid,
                priority=int(raw.get("priority") or 0),
                scheduled_at=parse_time(raw.get("scheduled_at")),
                agent_query_rules=tuple(str(r) for r in raw.get("agent_query_rules") or ()),
                pipeline=str((raw.get("pipeline") or {}).get("slug", "")),
                build_number=(raw.get("build") or {}).get("number"),
                step_key=(raw.get("step") or {}).get("key"),
            )
        )
    info = data.get("page_info") or {}
    queue = data.get("cluster_queue") or {}
    return ScheduledPage(
        jobs=jobs,
        has_next_page=bool(info.get("has_next_page")),
        end_cursor=info.get("end_cursor"),
        dispatch_paused=bool(queue.get("dispatch_paused") or queue.get("paused")),
    )


@dataclass(frozen=True)
class AcquisitionToken:
    """A token that lets one agent acquire exactly one job."""

    job_uuid: str
    token: str = field(repr=False)
    expires_at: str = ""


@dataclass(frozen=True)
class StackJob:
    """One job as ``GET /stacks/:key/jobs/:uuid`` gives it: what the step runs."""

    uuid: str
    command: str
    env: dict[str, str] = field(default_factory=dict, repr=False)


def parse_stack_job(data: Any) -> StackJob:
    """Parse a Stacks API job; raise on a bad shape."""
    if not isinstance(data, dict):
        raise TypeError("body is not an object")
    uuid = data["id"]
    if not isinstance(uuid, str) or not uuid:
        raise ValueError("job id is empty")
    env = data.get("env") or {}
    if not isinstance(env, dict):
        raise TypeError("env is not an object")
    command = data.get("command")
    return StackJob(
        uuid=uuid,
        command=command if isinstance(command, str) else "",
        env={str(k): str(v) for k, v in env.items()},
    )
