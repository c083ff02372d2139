"""The dispatcher's debug-level ``decision`` line (one dispatch ID explains a dispatch),
and failed agents' pods kept for debugging on request.

Fake Buildkite (real HTTP on 127.0.0.1) and the in-memory Kubernetes, as in
test_dispatcher_loop.py; the log is read back as JSON lines.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

from stackgen.buildkite import AgentAPI
from stackgen.common import logs
from stackgen.dispatcher.config import from_dict
from stackgen.dispatcher.cycle import Dispatcher
from stackgen.dispatcher.refusals import refusal
from tests.support.dispatcher_config import TOKEN, config_dict
from tests.support.fake_buildkite import FakeBuildkite, VirtualClock
from tests.support.fake_kube import FakeKube


@pytest.fixture
def stream() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def dispatcher(
    buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock, stream: io.StringIO
) -> Iterator[Dispatcher]:
    logs.configure("debug", stream=stream, component="dispatcher")
    api = AgentAPI(buildkite.endpoint, TOKEN)
    ids = (f"{n:08x}" for n in range(1, 10_000))
    yield Dispatcher(from_dict(config_dict()), api, kube, clock=clock, new_id=lambda: next(ids))
    api.close()


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _decision(stream: io.StringIO, dispatch_id: str, queue: str) -> dict[str, Any]:
    (line,) = [
        d
        for d in _lines(stream)
        if d.get("event") == "decision"
        and d.get("dispatch_id") == dispatch_id
        and d.get("queue") == queue
    ]
    return line


def test_decision_line_carries_the_inputs_of_a_cooldown(
    buildkite: FakeBuildkite,
    kube: FakeKube,
    clock: VirtualClock,
    dispatcher: Dispatcher,
    stream: io.StringIO,
) -> None:
    buildkite.add_jobs("builds", 4)
    first = dispatcher.run_cycle("poll")
    kube.run_job_controller(start=False)  # pods pending: the cooldown holds the next one
    buildkite.add_jobs("builds", 3)
    clock.advance(11)
    second = dispatcher.run_cycle("poll")

    made = _decision(stream, first.dispatch_id, "builds")
    assert made["level"] == "debug"
    assert made["demand"] == {"scheduled": 4, "running": 0, "runnable": 4}
    assert made["supply"]["agents"] == 0 and made["unmet"] == 4
    assert made["limits"]["buffer"] == 1 and made["limits"]["max_agents"] == 10
    assert made["actions"] == [
        {"create": f"buildkite-agent-builds-{first.dispatch_id}", "agents": 5}
    ]

    held = _decision(stream, second.dispatch_id, "builds")
    assert held["demand"]["scheduled"] == 7
    (job,) = held["supply"]["jobs"]
    assert job["dispatch_id"] == first.dispatch_id and job["remaining"] == 5
    assert job["started"] == 0 and job["age_seconds"] == 11.0
    assert held["unmet"] == 2 and held["actions"] == []
    cooldown = held["cooldown"]
    assert cooldown["holding"] is True
    assert cooldown["share"] == 0.5 and cooldown["timeout_seconds"] == 120
    assert cooldown["previous"]["dispatch_id"] == first.dispatch_id
    assert cooldown["previous"]["started"] == 0 and cooldown["previous"]["completions"] == 5
    assert any("cooldown" in note for note in held["notes"])


def test_decision_line_in_exact_mode_names_the_waiting_jobs(
    buildkite: FakeBuildkite, dispatcher: Dispatcher, stream: io.StringIO
) -> None:
    uuids = buildkite.add_jobs("deploy", 2)
    report = dispatcher.run_cycle("poll")
    decision = _decision(stream, report.dispatch_id, "deploy")
    assert decision["demand"]["waiting_jobs"] == uuids
    assert sorted(a["buildkite_job"] for a in decision["actions"]) == sorted(uuids)
    assert "cooldown" not in decision  # exact mode has none


def test_decision_line_is_debug_only(
    buildkite: FakeBuildkite, dispatcher: Dispatcher, stream: io.StringIO
) -> None:
    logs.configure("info", stream=stream, component="dispatcher")
    dispatcher.log = logs.get_logger()
    buildkite.add_jobs("builds", 2)
    dispatcher.run_cycle("poll")
    events = [d.get("event") for d in _lines(stream)]
    assert "cycle" in events and "decision" not in events


# ------------------------------------------------------------- keeping failed pods


def _fail(kube: FakeKube, name: str, finished: str | None = "2027-01-15T08:00:00Z") -> None:
    status = kube.objects["jobs"][name].setdefault("status", {})
    status["failed"] = 1
    if finished:
        status["completionTime"] = finished


def test_failed_agent_pods_are_kept_when_the_queue_asks(
    buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    from stackgen.dispatcher.keep import keep_failed

    config = from_dict(config_dict(keepFailedPodsSeconds=7200))
    api = AgentAPI(buildkite.endpoint, TOKEN)
    dispatcher = Dispatcher(config, api, kube, clock=clock)
    buildkite.add_jobs("builds", 2)
    report = dispatcher.run_cycle("poll")
    (name,) = report.queues[0].created
    log = logs.get_logger()
    assert keep_failed(dispatcher._clients, dispatcher.queues, log) == []  # nothing failed
    _fail(kube, name)
    assert keep_failed(dispatcher._clients, dispatcher.queues, log) == [name]
    job = kube.objects["jobs"][name]
    assert job["spec"]["ttlSecondsAfterFinished"] == 7200  # was the queue's 60
    assert job["metadata"]["labels"]["stackgen.io/kept"] == "true"
    assert job["metadata"]["annotations"]["stackgen.io/kept-until"] == "2027-01-15T10:00:00Z"
    assert keep_failed(dispatcher._clients, dispatcher.queues, log) == []  # once
    api.close()


def test_failed_pods_are_not_kept_without_a_request(
    buildkite: FakeBuildkite, kube: FakeKube, dispatcher: Dispatcher
) -> None:
    from stackgen.dispatcher.keep import keep_failed

    buildkite.add_jobs("builds", 1)
    (name,) = dispatcher.run_cycle("poll").queues[0].created
    _fail(kube, name)
    assert keep_failed(dispatcher._clients, dispatcher.queues, logs.get_logger()) == []
    assert kube.objects["jobs"][name]["spec"]["ttlSecondsAfterFinished"] == 60


def test_a_buildkite_job_can_ask_to_keep_its_pod(
    buildkite: FakeBuildkite, kube: FakeKube, dispatcher: Dispatcher
) -> None:
    from stackgen.dispatcher.keep import keep_failed, requested_seconds

    (uuid,) = buildkite.add_jobs("deploy", 1, env={"STACKGEN_KEEP_FAILED_POD": "1800"})
    report = dispatcher.run_cycle("poll")
    (name,) = [n for q in report.queues for n in q.created]
    job = kube.objects["jobs"][name]
    assert job["metadata"]["labels"]["stackgen.io/keep-failed-pod"] == "1800"
    assert job["metadata"]["labels"]["stackgen.io/buildkite-job"] == uuid
    _fail(kube, name, finished=None)
    assert keep_failed(dispatcher._clients, dispatcher.queues, logs.get_logger()) == [name]
    assert kube.objects["jobs"][name]["spec"]["ttlSecondsAfterFinished"] == 1800
    assert requested_seconds({"STACKGEN_KEEP_FAILED_POD": "true"}) == 3600
    assert requested_seconds({"STACKGEN_KEEP_FAILED_POD": "99999999"}) == 7 * 24 * 3600
    assert requested_seconds({"STACKGEN_KEEP_FAILED_POD": "nonsense"}) is None
    assert requested_seconds({}) is None


# ------------------------------------------------------------ refusals at create


@pytest.mark.parametrize(
    ("message", "status", "expected"),
    [
        ('pods "a" is forbidden: exceeded quota: compute, requested: pods=1', 403, "transient"),
        (
            'pods "a" is forbidden: error looking up service account ns/sa: not found',
            403,
            "transient",
        ),
        (
            'pods "a" is forbidden: status unknown for quota: compute, resource: pods',
            403,
            "transient",
        ),
        ('pods "a" is forbidden: failed quota: compute: must specify limits.cpu', 403, "final"),
        ('admission webhook "p.example.com" denied the request: unsigned', 403, "final"),
        ('admission webhook "p.example.com" denied the request: unsigned', 400, "final"),
        (
            'pods "a" is forbidden: violates PodSecurity "restricted:latest": privileged',
            403,
            "final",
        ),
        (
            'pods "a" is forbidden: maximum cpu usage per Container is 2, but limit is 4',
            403,
            "final",
        ),
        ('Pod "a" is invalid: spec.containers[0].image: Required value', 422, "final"),
        (
            'pods is forbidden: User "system:serviceaccount:b:d" cannot create resource "pods"',
            403,
            None,
        ),
        ("the server is currently unable to handle the request", 503, None),
        ("Too many requests", 429, None),
        # A Job's FailedCreate event (no status: the Job controller's create was refused).
        ('Error creating: pods "j-x" is forbidden: exceeded quota: compute', None, "transient"),
        ('Error creating: admission webhook "p" denied the request: no', None, "final"),
        ("Error creating: Timeout: request did not complete within requested timeout", None, None),
    ],
)
def test_refusals_are_told_apart(message: str, status: int | None, expected: str | None) -> None:
    assert refusal(message, status) == expected
