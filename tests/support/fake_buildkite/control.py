"""Driving the fake: what a test (or a harness in another process) tells it and reads back.

Python-side, :class:`Control`'s methods add queues and jobs, move jobs as an agent would,
set agent counts, inject faults and read everything back (copies, under the lock).  A
fake running as a process (``python -m tests.support.fake_buildkite``) is driven through
the same methods over a small unauthenticated control API under ``/_fake/``
(:meth:`Control.admin`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from tests.support.fake_buildkite.agent_control import AgentControl
from tests.support.fake_buildkite.metrics import metrics_payload
from tests.support.fake_buildkite.routes import ROUTE_NAMES
from tests.support.fake_buildkite.state import FakeJob, Fault, RequestRecord
from tests.support.fake_buildkite.wire import (
    DEFAULT_RESERVATION_SECONDS,
    FAULT_KINDS,
    JOB_STATES,
    TERMINAL_STATES,
    ApiError,
    FaultKind,
    Request,
    Response,
    json_response,
    parse_body,
)


class Control(AgentControl):
    """The fake's state, with the methods a test drives it by."""

    # ------------------------------------------------------------------ test helpers: setup

    def pause_queue(self, key: str, paused: bool = True) -> None:
        """Set ``cluster_queue.dispatch_paused`` (and ``paused``) for a queue."""
        self.add_queue(key, paused=paused)

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
            self._faults.append(Fault(target, kind, times, seconds))

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
            return metrics_payload(self, queue)

    # ------------------------------------------------------------------ control API (/_fake)

    def admin(self, req: Request, path: list[str]) -> Response:
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
        ``/_fake/notifications``; for real agents (:meth:`~.agent_control.AgentControl.
        admin_agent_api`): ``POST /_fake/enqueue``, ``GET /_fake/jobs/<uuid>/log``, ``POST
        /_fake/jobs/<uuid>/cancel``, ``GET /_fake/agents``, ``POST /_fake/agents/<uuid>/
        disconnect``. An unknown job UUID answers 404. Control calls are not in the request
        log and never rate limited.
        """
        query = parse_qs(req.query)
        try:
            body = parse_body(req.body) or {}
            if not isinstance(body, dict):
                raise ApiError(400, "request body must be a JSON object")
            plain = query.get("plain", ["0"])[0] not in ("", "0", "false")
            agent_answer = self.admin_agent_api(req.method, path, body, plain)
            if agent_answer is not None:
                return agent_answer
            if req.method == "POST" and path == ["jobs"]:
                fields = body.get("fields") or {}
                uuids = self.add_jobs(str(body["queue"]), int(body.get("count", 1)), **fields)
                return json_response(201, {"uuids": uuids})
            if req.method == "GET" and path == ["jobs"]:
                jobs = self.jobs(
                    queue=query.get("queue", [None])[0], state=query.get("state", [None])[0]
                )
                return json_response(200, {"jobs": [dataclasses.asdict(j) for j in jobs]})
            if len(path) in (2, 3) and path[0] == "jobs":
                return self._admin_job(req.method, path[1], path[2:], body)
            if req.method == "PUT" and path == ["agents"]:
                self.set_agents(
                    str(body["queue"]), idle=int(body.get("idle", 0)), busy=int(body.get("busy", 0))
                )
                return json_response(200, {})
            if req.method == "POST" and path == ["faults"]:
                self.inject(
                    str(body["target"]),
                    str(body["kind"]),
                    int(body.get("times", 1)),
                    seconds=body.get("seconds"),
                )
                return json_response(201, {})
            if req.method == "GET" and path == ["requests"]:
                return json_response(
                    200, {"requests": [dataclasses.asdict(r) for r in self.requests]}
                )
            if req.method == "GET" and path == ["finished"]:
                return json_response(200, {"finished": self.finished})
            if req.method == "GET" and path == ["notifications"]:
                return json_response(200, {"notifications": self.notifications})
            raise ApiError(404, "Not Found")
        except ApiError as err:
            return json_response(err.status, err.payload)
        except (KeyError, TypeError, ValueError) as err:
            return json_response(400, {"message": f"bad control request: {err}"})

    def _admin_job(
        self, method: str, uuid: str, action: list[str], body: Mapping[str, Any]
    ) -> Response:
        """``/_fake/jobs/<uuid>[/acquire|/start|/finish]``: one job, driven as an agent would."""
        with self._lock:
            if uuid not in self._jobs:
                raise ApiError(404, "Job not found")
            if method == "GET" and not action:
                return json_response(200, dataclasses.asdict(self.job(uuid)))
            if method == "PUT" and not action:
                self.set_job_state(uuid, str(body["state"]))
                return json_response(200, dataclasses.asdict(self.job(uuid)))
            if method == "POST" and action == ["acquire"]:
                status = self.acquire_job(uuid)
                return json_response(
                    200, {"acquire_status": status, "state": self._jobs[uuid].state}
                )
            if method == "POST" and action in (["start"], ["finish"]):
                state = self._jobs[uuid].state
                if state in TERMINAL_STATES:
                    raise ApiError(409, f"Job is already {state}")
                if action == ["start"]:
                    self.start_job(uuid)
                else:
                    exit_status = body.get("exit_status", 0)
                    if not isinstance(exit_status, int) or isinstance(exit_status, bool):
                        raise ApiError(400, "exit_status must be an integer")
                    self.finish_job(uuid, exit_status)
                return json_response(200, dataclasses.asdict(self.job(uuid)))
            raise ApiError(404, "Not Found")
