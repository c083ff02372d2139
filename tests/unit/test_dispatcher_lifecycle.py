"""Day-2 behaviour of the dispatcher: canceled jobs, pods that never start (and why),
a new leader's first cycle, metrics from the start, and a bounded shutdown.

The real dispatcher against the fake Buildkite (HTTP on 127.0.0.1) and the in-memory
Kubernetes; the shutdown test runs the whole process wiring (``app.run``) in-process.
"""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest

from stackgen.buildkite import AgentAPI
from stackgen.common import logs
from stackgen.dispatcher import app
from stackgen.dispatcher.config import from_dict
from stackgen.dispatcher.cycle import Dispatcher
from stackgen.dispatcher.jobs import LABEL_BUILDKITE_JOB
from stackgen.dispatcher.metrics import Metrics
from tests.support.dispatcher_config import TOKEN, config_dict
from tests.support.fake_buildkite import FakeBuildkite, VirtualClock
from tests.support.fake_kube import FakeKube, cronjob_template

QUOTA = "is forbidden: exceeded quota: compute, requested: pods=1, used: pods=10, limited: pods=10"


@pytest.fixture
def log_stream() -> io.StringIO:
    stream = io.StringIO()
    logs.configure("debug", stream=stream, component="dispatcher")
    return stream


@pytest.fixture
def api(buildkite: FakeBuildkite) -> Iterator[AgentAPI]:
    client = AgentAPI(buildkite.endpoint, TOKEN)
    yield client
    client.close()


@pytest.fixture
def dispatcher(api: AgentAPI, kube: FakeKube, clock: VirtualClock) -> Dispatcher:
    ids = iter(range(1, 100_000))
    return Dispatcher(
        from_dict(config_dict()), api, kube, clock=clock, new_id=lambda: f"{next(ids):08x}"
    )


def job_of(kube: FakeKube, uuid: str) -> str | None:
    return next(
        (
            n
            for n, j in kube.objects["jobs"].items()
            if j["metadata"]["labels"].get(LABEL_BUILDKITE_JOB) == uuid
        ),
        None,
    )


# -------------------------------------------------------------------------- canceled jobs


def test_a_canceled_job_loses_its_unstarted_job_and_only_that(
    dispatcher: Dispatcher, buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    waiting, running, other = buildkite.add_jobs("deploy", 3)
    dispatcher.run_cycle("poll")
    started = job_of(kube, running)
    assert started is not None
    kube.objects["jobs"][started]["status"] = {"ready": 1, "active": 1}  # its agent runs
    buildkite.set_job_state(waiting, "canceled")
    buildkite.set_job_state(running, "canceled")  # the agent hears it from Buildkite itself
    clock.advance(6)
    dispatcher.run_cycle("poll")
    assert job_of(kube, waiting) is None
    assert not [s for s in kube.objects["secrets"] if s.startswith(f"{waiting}")]
    assert job_of(kube, running) is not None and job_of(kube, other) is not None
    value = dispatcher.metrics.registry.get_sample_value
    assert value("stackgen_jobs_deleted_total", {"queue": "deploy", "reason": "canceled"}) == 1
    # Job states are asked at most once per poll period (get-states: 20/s per stack).
    states = [r for r in buildkite.requests if r.route == "get_job_states"]
    dispatcher.run_cycle("poll", only={"deploy"})
    assert [r for r in buildkite.requests if r.route == "get_job_states"] == states


@pytest.mark.parametrize("state", ["finished", "timing_out", "timed_out"])
def test_a_job_that_ran_keeps_its_job_when_the_job_status_lags(
    dispatcher: Dispatcher,
    buildkite: FakeBuildkite,
    kube: FakeKube,
    clock: VirtualClock,
    state: str,
) -> None:
    """bench/e2e exact rows deleted 26-48 Jobs "of a canceled Buildkite job" whose agents
    had run their jobs to the end: a throttled Job controller had not yet counted the pod
    in the Job's status.  Buildkite reaches these states only through an agent running
    the job, so the Job stays (its TTL collects it)."""
    ran, canceled, expired = buildkite.add_jobs("deploy", 3)
    dispatcher.run_cycle("poll")
    assert all(job_of(kube, u) is not None for u in (ran, canceled, expired))
    # The Jobs' status is still empty: no pod counted as started, ready or done.
    buildkite.set_job_state(ran, state)
    buildkite.set_job_state(canceled, "canceling")
    buildkite.set_job_state(expired, "expired")
    clock.advance(6)
    dispatcher.run_cycle("poll")
    assert job_of(kube, ran) is not None
    assert job_of(kube, canceled) is None and job_of(kube, expired) is None
    value = dispatcher.metrics.registry.get_sample_value
    assert value("stackgen_jobs_deleted_total", {"queue": "deploy", "reason": "canceled"}) == 2


def test_a_pod_the_job_controller_has_not_counted_yet_is_a_started_pod(
    dispatcher: Dispatcher, buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    """A pod that ended sits in ``status.uncountedTerminatedPods`` until the Job
    controller counts it, seconds later when it is throttled (bench/e2e at load 18: 12
    Jobs whose agents had run were deleted as "did not start within 30s" that way).
    Neither the stuck path nor the cancel path may take such a Job for unstarted."""
    stuck, canceled = buildkite.add_jobs("deploy", 2)
    dispatcher.run_cycle("poll")
    names = [job_of(kube, uuid) for uuid in (stuck, canceled)]
    for uuid, name in zip((stuck, canceled), names, strict=True):
        assert name is not None
        kube.objects["jobs"][name]["status"] = {
            "active": 0,
            "ready": 0,
            "uncountedTerminatedPods": {"succeeded": [f"uid-of-{uuid}"]},
        }
    buildkite.set_job_state(canceled, "finished")
    clock.advance(301)  # past the pod start timeout (300 s)
    dispatcher.run_cycle("poll")
    assert sorted(kube.objects["jobs"]) == sorted(n for n in names if n)  # the same two
    assert not buildkite.notifications[2:] and not buildkite.finished  # 2: "Job created"
    value = dispatcher.metrics.registry.get_sample_value
    for reason in ("not-started", "canceled"):
        assert value("stackgen_jobs_deleted_total", {"queue": "deploy", "reason": reason}) == 0


def test_a_pod_that_ended_before_its_job_says_so_is_a_started_pod(
    dispatcher: Dispatcher, buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    """Near the pod start timeout the pods are read: their own phase counts even when the
    Job's status has not moved at all yet."""
    (uuid,) = buildkite.add_jobs("deploy", 1)
    dispatcher.run_cycle("poll")
    name = job_of(kube, uuid)
    assert name is not None
    job = kube.objects["jobs"][name]
    job["status"] = {"active": 1, "ready": 0}
    labels = {**job["spec"]["template"]["metadata"]["labels"], "batch.kubernetes.io/job-name": name}
    kube.add(
        "pods",
        {"metadata": {"name": f"{name}-x", "labels": labels}, "status": {"phase": "Succeeded"}},
    )
    clock.advance(301)
    dispatcher.run_cycle("poll")
    assert name in kube.objects["jobs"]
    assert not buildkite.finished and not [
        n for n in buildkite.notifications if "retrying" in n["detail"]
    ]


# -------------------------------------------------------------- pods that never start: why


def test_quota_forbidding_the_pod_is_the_reason_buildkite_is_told(
    dispatcher: Dispatcher, buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    (uuid,) = buildkite.add_jobs("deploy", 1)
    dispatcher.run_cycle("poll")
    kube.forbid_pods(QUOTA)  # the Job controller cannot create its pod: a FailedCreate event
    clock.advance(301)
    dispatcher.run_cycle("poll")
    (retrying,) = [n for n in buildkite.notifications if "retrying" in n["detail"]]
    assert "FailedCreate: Error creating" in retrying["detail"]
    assert "exceeded quota" in retrying["detail"]
    kube.forbid_pods(QUOTA)
    clock.advance(301)
    dispatcher.run_cycle("poll")
    (finished,) = buildkite.finished
    assert finished["job_uuid"] == uuid
    assert "did not start within 300s: FailedCreate: Error creating" in finished["detail"]
    assert "exceeded quota" in finished["detail"]
    value = dispatcher.metrics.registry.get_sample_value
    assert (
        value("stackgen_pods_not_started_total", {"queue": "deploy", "reason": "FailedCreate"}) == 2
    )


def test_a_job_whose_pods_a_webhook_refuses_is_failed_without_a_second_job(
    dispatcher: Dispatcher, buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    """A refusal that will not pass is not retried (as with workload: pod, where the
    create itself is refused and the job fails at once)."""
    (uuid,) = buildkite.add_jobs("deploy", 1)
    dispatcher.run_cycle("poll")
    name = job_of(kube, uuid)
    assert name is not None
    denied = 'admission webhook "policy.example.com" denied the request: images must be signed'
    kube.add_event("Job", name, "FailedCreate", f"Error creating: {denied}")
    clock.advance(301)
    dispatcher.run_cycle("poll")
    assert not [n for n in buildkite.notifications if "retrying" in n["detail"]]
    (finished,) = buildkite.finished
    assert finished["job_uuid"] == uuid and denied in finished["detail"]
    assert not kube.objects["jobs"]
    clock.advance(301)
    dispatcher.run_cycle("poll")
    assert not kube.objects["jobs"]


def test_dispatch_mode_names_the_kubernetes_reason_in_its_log_and_metrics(
    log_stream: io.StringIO,
    dispatcher: Dispatcher,
    buildkite: FakeBuildkite,
    kube: FakeKube,
    clock: VirtualClock,
) -> None:
    buildkite.add_jobs("builds", 2)
    dispatcher.run_cycle("poll")
    kube.forbid_pods(QUOTA)
    clock.advance(301)
    dispatcher.run_cycle("poll")
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    (deleted,) = [
        line for line in lines if line["event"] == "deleting Job whose pods never started"
    ]
    assert deleted["kubernetes_reason"] == "FailedCreate"
    assert "exceeded quota" in deleted["reason"]
    value = dispatcher.metrics.registry.get_sample_value
    assert (
        value("stackgen_pods_not_started_total", {"queue": "builds", "reason": "FailedCreate"}) == 1
    )


def test_a_crash_looping_container_is_a_reason_too(
    dispatcher: Dispatcher, buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    buildkite.add_jobs("deploy", 1)
    dispatcher.run_cycle("poll")
    kube.run_job_controller(ready=False)  # running, never ready: a sidecar crash-loops
    for pod in kube.objects["pods"].values():
        pod["status"]["containerStatuses"] = [
            {
                "name": "dind",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s"}},
            }
        ]
    for job in kube.objects["jobs"].values():
        job["status"] = {"active": 1, "ready": 0}
    clock.advance(301)
    dispatcher.run_cycle("poll")
    (note,) = [n for n in buildkite.notifications if "retrying" in n["detail"]]
    assert "CrashLoopBackOff: back-off 5m0s" in note["detail"]


# --------------------------------------------------------------------- leadership, metrics


def test_the_cycle_a_new_leader_runs_is_counted_as_leadership_and_keeps_the_cooldown(
    buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock, api: AgentAPI
) -> None:
    config = from_dict(config_dict())
    buildkite.add_jobs("builds", 4)
    Dispatcher(config, api, kube, clock=clock, new_id=lambda: "0000aaaa").run_cycle("poll")
    kube.run_job_controller(start=False)  # the predecessor's agents are still starting
    buildkite.add_jobs("builds", 4)
    metrics = Metrics()
    ours: list[Dispatcher] = []
    options = app.Options(identity="b")
    elector = app._elector(config, options, kube, "b", 0, metrics, ours, logs.get_logger())
    assert elector is not None
    dispatcher = Dispatcher(
        config, api, kube, metrics=metrics, clock=clock, is_leader=lambda: elector.is_leader
    )
    ours.append(dispatcher)
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert elector.try_acquire_or_renew()
        value = metrics.registry.get_sample_value
        for _ in range(200):
            if (
                value("stackgen_cycles_total", {"trigger": "leadership", "result": "ok"}) or 0
            ) >= 1:
                break
            stop.wait(0.05)
    finally:
        stop.set()
        thread.join(5)
    # Up to one per lane (a lane may have run its first poll just before).
    assert value("stackgen_cycles_total", {"trigger": "leadership", "result": "ok"}) >= 1
    assert value("stackgen_cycles_total", {"trigger": "webhook", "result": "ok"}) == 0
    assert len(kube.objects["jobs"]) == 1  # a leadership change is not news: cooldown holds


def test_a_follower_waits_instead_of_spinning_on_queues_it_does_not_serve(
    api: AgentAPI, kube: FakeKube
) -> None:
    dispatcher = Dispatcher(from_dict(config_dict()), api, kube, is_leader=lambda: False)
    real_clock = dispatcher.clock
    loops = {"n": 0}

    def clock() -> float:
        loops["n"] += 1
        return real_clock()

    dispatcher.clock = clock  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
    thread.start()
    stop.wait(1.5)
    stop.set()
    thread.join(5)
    # About one turn a second (the health check's heartbeat), not thousands.
    assert loops["n"] < 50, f"{loops['n']} clock reads in 1.5 s: the loop spins"
    assert kube.objects["jobs"] == {}


def test_labelled_metrics_exist_at_zero_from_the_start(
    api: AgentAPI, kube: FakeKube, clock: VirtualClock
) -> None:
    metrics = Metrics()
    Dispatcher(from_dict(config_dict()), api, kube, metrics=metrics, clock=clock)
    text = generate_latest(metrics.registry).decode()
    for series in (
        'stackgen_api_errors_total{api="buildkite",kind="RateLimited"} 0.0',
        'stackgen_api_errors_total{api="kubernetes",kind="Unavailable"} 0.0',
        'stackgen_webhooks_total{result="accepted"} 0.0',
        'stackgen_webhooks_total{result="replayed"} 0.0',
        'stackgen_jobs_deleted_total{queue="deploy",reason="not-started"} 0.0',
        'stackgen_buildkite_jobs_failed_total{queue="deploy"} 0.0',
        'stackgen_agents_dispatched_total{mode="dispatch",queue="builds"} 0.0',
        'stackgen_cycles_total{result="error",trigger="leadership"} 0.0',
        'stackgen_queue_template_missing{queue="builds"} 0.0',
    ):
        assert series in text, series


# ------------------------------------------------------------------------------- shutdown


def test_sigterm_while_the_api_server_never_answers_exits_within_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The leader's election and loop sit in Kubernetes calls that never return: SIGTERM
    still ends ``app.run`` within its shutdown budget (the Lease release is best effort)."""
    monkeypatch.setenv("BUILDKITE_AGENT_TOKEN", TOKEN)
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    done = threading.Event()
    sent: dict[str, float] = {}
    with FakeBuildkite(token=TOKEN, queues=("builds", "deploy")) as buildkite:
        data = config_dict()
        data["buildkite"]["endpoint"] = buildkite.endpoint
        config = from_dict(data)
        kube = FakeKube()
        for name in ("builds", "deploy"):
            kube.add("cronjobs", cronjob_template(f"buildkite-agent-{name}", name))

        def api_server_dies_then_sigterm() -> None:
            for _ in range(400):
                lease = kube.objects["leases"].get(config.lease_name)
                if lease and lease["spec"].get("holderIdentity") == "a":
                    break
                time.sleep(0.05)
            buildkite.add_jobs("deploy", 2)
            kube.hang()  # every call from now on waits for ever (a black-holed API server)
            time.sleep(config.retry_period + 1)  # the election and the loop are inside calls
            sent["at"] = time.monotonic()
            os.kill(os.getpid(), signal.SIGTERM)
            if not done.wait(60):
                kube.unhang()  # the unfixed dispatcher would wait for ever: end the test

        thread = threading.Thread(target=api_server_dies_then_sigterm, daemon=True)
        thread.start()
        try:
            app.run(config, app.Options(identity="a", host="127.0.0.1", port=0), kube=kube)
            took = time.monotonic() - sent["at"]
        finally:
            done.set()
            kube.unhang()
            for sig, handler in saved.items():
                signal.signal(sig, handler)
            thread.join(5)
    assert took < app.SHUTDOWN_SECONDS + 5, f"SIGTERM took {took:.1f}s"
