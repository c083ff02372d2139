"""Driving real agents through the fake: enqueue a command, read its log, cancel it.

:class:`AgentControl` adds to the fake's state what a test (or ``python -m
tests.support.fake_buildkite.ctl``) needs around real ``buildkite-agent`` processes: a job
with a command and env that an agent will run (:meth:`~AgentControl.enqueue`), the job's
log as the agent uploaded it (:meth:`~AgentControl.job_log`), cancelling a job (a running
one becomes ``canceling``, which its agent notices and stops the command), and the agents
that registered (never their tokens).  Over HTTP the same is under ``/_fake/``
(:meth:`AgentControl.admin_agent_api`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from tests.support.fake_buildkite.state import FakeJob, State
from tests.support.fake_buildkite.webhooks import send_webhook
from tests.support.fake_buildkite.wire import (
    TERMINAL_STATES,
    ApiError,
    Response,
    json_response,
)

#: The agent's inline timestamps (``ESC _bk;t=MILLIS BEL``) and ANSI colour sequences.
_LOG_MARKUP = re.compile(r"\x1b_bk;t=\d+\x07|\x1b\[[0-9;]*[A-Za-z]")


def plain_log(text: str) -> str:
    """A job log without the agent's timestamps and colours."""
    return _LOG_MARKUP.sub("", text)


#: States in which a job has an agent that must be told to stop (``canceling``).
CANCEL_VIA_AGENT = frozenset({"assigned", "accepted", "running"})


class AgentControl(State):
    """The agent-facing controls of the fake (mixed into :class:`~.control.Control`)."""

    def enqueue(
        self,
        queue: str,
        command: str,
        *,
        env: Mapping[str, str] | None = None,
        plugins: Sequence[Mapping[str, Any]] | str | None = None,
        repository: str | None = None,
        **fields: Any,
    ) -> str:
        """Schedule one job that a real agent on ``queue`` will run; returns its UUID.

        ``env`` is merged over the ``BUILDKITE_*`` values a real job has; ``plugins`` (a
        list of ``{location: config}`` or its JSON) becomes ``BUILDKITE_PLUGINS``;
        ``repository`` is ``BUILDKITE_REPO`` (the agent checks it out).  Without one the
        job says ``BUILDKITE_SKIP_CHECKOUT=true`` (its ``BUILDKITE_REPO`` stays the
        placeholder: the agent requires one) and the command runs in an empty folder.
        Other ``fields`` are :class:`~.state.FakeJob` fields (``label``, ``priority``, …).
        """
        if plugins is not None and not isinstance(plugins, str):
            plugins = json.dumps(list(plugins), separators=(",", ":"))
        if repository:
            fields["repository"] = repository
        uuid = self.add_job(
            queue,
            command=command,
            env=dict(env or {}),
            plugins=plugins,
            skip_checkout=not repository,
            **fields,
        )
        if self.webhook_url:
            self._announce(uuid, self.webhook_url)
        return uuid

    def _announce(self, uuid: str, url: str) -> None:
        """Post a signed ``job.scheduled`` webhook for the job; record how it went."""
        job = self.job(uuid)
        try:
            delivery = send_webhook(
                url,
                job=job,
                hmac_key=self._webhook_secret,
                mode="signature" if self._webhook_secret else "none",
                organization_slug=self.organization_slug,
            )
            outcome: dict[str, Any] = {"status": delivery.status}
        except Exception as err:  # unreachable receiver (urllib or httpx): scheduled anyway
            outcome = {"status": None, "error": type(err).__name__}
        with self._lock:
            self._webhook_deliveries.append({"job_uuid": uuid, "at": self._clock(), **outcome})

    @property
    def webhook_deliveries(self) -> list[dict[str, Any]]:
        """The ``job.scheduled`` webhooks :meth:`enqueue` sent: job, time, answer status."""
        with self._lock:
            return [dict(d) for d in self._webhook_deliveries]

    def job_log(self, uuid: str, *, plain: bool = False) -> str:
        """The job's log: the chunks its agent uploaded, in order, decoded (UTF-8).

        ``plain`` drops the agent's inline timestamps and colours (as Buildkite's UI shows it).
        """
        with self._lock:
            self._get(uuid)
            chunks = sorted(self._chunks.get(uuid, {}).values())
            text = b"".join(data for _, data in chunks).decode("utf-8", "replace")
        return plain_log(text) if plain else text

    def meta_data(self, uuid: str) -> dict[str, str]:
        """The meta-data of the job's build (what ``buildkite-agent meta-data set`` wrote)."""
        with self._lock:
            return dict(self._meta_data.get(self._get(uuid).build_uuid, {}))

    def cancel_job(self, uuid: str) -> str:
        """Cancel a job as Buildkite's UI would; returns its new state.

        A job an agent holds becomes ``canceling`` (the agent sees it, stops the command and
        finishes it: then ``canceled``); one that no agent took becomes ``canceled`` at once.
        """
        with self._lock:
            job = self._get(uuid)
            if job.state in TERMINAL_STATES:
                raise ValueError(f"job {uuid} is already {job.state}")
            now = self._clock()
            job.cancel_requested_at = now
            held = job.agent_uuid is not None and (
                job.accepted_at is not None or job.state != "assigned"
            )
            if job.state in CANCEL_VIA_AGENT and held:
                job.state = "canceling"
            elif job.state != "canceling":
                self._release(job)
                job.state, job.finished_at = "canceled", now
                job.reserved_by = job.reserved_until = None
            return job.state

    def _release(self, job: FakeJob) -> None:
        agent = self._agent_records.get(job.agent_uuid or "")
        if agent is not None and agent.current_job == job.uuid:
            agent.current_job = None

    def agents(self) -> list[dict[str, Any]]:
        """The agents that registered, oldest first (no token is ever in here)."""
        with self._lock:
            return [dataclasses.asdict(a) for a in self._agent_records.values()]

    def disconnect_agent(self, uuid: str) -> None:
        """Make the agent's next ping answer ``disconnect`` (it then exits when idle)."""
        with self._lock:
            agent = self._agent_records.get(uuid)
            if agent is None:
                raise KeyError(f"no agent {uuid}")
            agent.pending_action = "disconnect"

    def wait_for_job(self, uuid: str, timeout: float = 60.0, poll: float = 0.1) -> FakeJob:
        """Wait (in real time) until the job is finished, canceled, …; returns a copy.

        Raises TimeoutError naming its last state when it does not end in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                job = dataclasses.replace(self._get(uuid))
            if job.state in TERMINAL_STATES:
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {uuid} still {job.state} after {timeout:g}s")
            time.sleep(poll)

    # ------------------------------------------------------------------ control API

    def admin_agent_api(
        self, method: str, path: list[str], body: Mapping[str, Any], plain: bool = False
    ) -> Response | None:
        """``/_fake/`` endpoints for real agents (None: not one of these).

        ``POST /_fake/enqueue`` ``{"queue", "command", "env"?, "plugins"?, "repository"?,
        "label"?, "priority"?}`` -> 201 ``{"uuid"}``; ``GET /_fake/jobs/<uuid>/log[?plain=1]``
        -> ``{"uuid", "state", "exit_status", "log"}``; ``POST /_fake/jobs/<uuid>/cancel`` ->
        ``{"uuid", "state"}`` (409 once it ended); ``GET /_fake/jobs/<uuid>/meta-data`` ->
        ``{"meta_data"}`` (its build's); ``GET /_fake/webhooks`` -> ``{"webhooks"}`` (what
        enqueue sent); ``GET /_fake/agents`` -> ``{"agents"}``;
        ``POST /_fake/agents/<uuid>/disconnect``.
        """
        if method == "POST" and path == ["enqueue"]:
            extra = {k: body[k] for k in ("label", "priority", "step_key") if k in body}
            uuid = self.enqueue(
                str(body["queue"]),
                str(body["command"]),
                env={str(k): str(v) for k, v in (body.get("env") or {}).items()},
                plugins=body.get("plugins"),
                repository=str(body.get("repository") or "") or None,
                **extra,
            )
            return json_response(201, {"uuid": uuid})
        if method == "GET" and path == ["webhooks"]:
            return json_response(200, {"webhooks": self.webhook_deliveries})
        if method == "GET" and path == ["agents"]:
            return json_response(200, {"agents": self.agents()})
        if method == "POST" and len(path) == 3 and path[0] == "agents" and path[2] == "disconnect":
            try:
                self.disconnect_agent(path[1])
            except KeyError as err:
                raise ApiError(404, "Agent not found") from err
            return json_response(200, {})
        if len(path) == 3 and path[0] == "jobs" and path[2] in ("log", "cancel", "meta-data"):
            with self._lock:
                if path[1] not in self._jobs:
                    raise ApiError(404, "Job not found")
            if method == "GET" and path[2] == "log":
                job = self._jobs[path[1]]
                return json_response(
                    200,
                    {
                        "uuid": job.uuid,
                        "state": job.state,
                        "exit_status": job.exit_status,
                        "log": self.job_log(job.uuid, plain=plain),
                    },
                )
            if method == "GET" and path[2] == "meta-data":
                return json_response(200, {"meta_data": self.meta_data(path[1])})
            if method == "POST" and path[2] == "cancel":
                try:
                    state = self.cancel_job(path[1])
                except ValueError as err:
                    raise ApiError(409, str(err)) from err
                return json_response(200, {"uuid": path[1], "state": state})
        return None
