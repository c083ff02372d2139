"""The dispatcher's loop against the fake Buildkite (real HTTP on 127.0.0.1) and an
in-memory Kubernetes: Jobs, labels, reservations, faults, leadership, logs."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

from stackgen.buildkite import AgentAPI
from stackgen.common import logs
from stackgen.dispatcher.config import DispatcherConfig, from_dict
from stackgen.dispatcher.cycle import Dispatcher
from stackgen.dispatcher.jobs import LABEL_BUILDKITE_JOB, LABEL_DISPATCH_ID, LABEL_QUEUE
from stackgen.dispatcher.leader import LeaderElector
from stackgen.dispatcher.metrics import Metrics
from tests.support.dispatcher_config import TOKEN, config_dict
from tests.support.fake_buildkite import FakeBuildkite, VirtualClock
from tests.support.fake_kube import FakeKube, cronjob_template


@pytest.fixture
def kube(clock: VirtualClock) -> FakeKube:
    fake = FakeKube(clock=clock)
    fake.add("cronjobs", cronjob_template("buildkite-agent-builds", "builds"))
    fake.add(
        "cronjobs",
        cronjob_template(
            "buildkite-agent-deploy", "deploy", args=["start", "--disconnect-after-job"]
        ),
    )
    return fake


@pytest.fixture
def log_stream() -> io.StringIO:
    stream = io.StringIO()
    logs.configure("debug", stream=stream, component="dispatcher")
    logs.register_secret(TOKEN)
    return stream


_APIS: list[AgentAPI] = []


def api_for(buildkite: FakeBuildkite) -> AgentAPI:
    api = AgentAPI(buildkite.endpoint, TOKEN)
    _APIS.append(api)
    return api


@pytest.fixture(autouse=True)
def close_apis() -> Iterator[None]:
    yield
    while _APIS:
        _APIS.pop().close()


def make(
    buildkite: FakeBuildkite,
    kube: FakeKube,
    clock: VirtualClock,
    config: DispatcherConfig | None = None,
    ids: Iterator[str] | None = None,
) -> Dispatcher:
    config = config or from_dict(config_dict())
    counter = ids or (f"{n:08x}" for n in range(1, 10_000))
    return Dispatcher(config, api_for(buildkite), kube, clock=clock, new_id=lambda: next(counter))


def jobs_of(kube: FakeKube, queue: str) -> list[dict[str, Any]]:
    return [
        j
        for j in kube.objects["jobs"].values()
        if j["metadata"]["labels"].get(LABEL_QUEUE) == queue
    ]


def test_dispatch_mode_creates_one_job_sized_to_demand(
    buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock, log_stream: io.StringIO
) -> None:
    buildkite.add_jobs("builds", 4)
    dispatcher = make(buildkite, kube, clock)
    report = dispatcher.run_cycle("poll")
    (job,) = jobs_of(kube, "builds")
    assert job["metadata"]["name"] == f"buildkite-agent-builds-{report.dispatch_id}"
    assert job["metadata"]["labels"][LABEL_DISPATCH_ID] == report.dispatch_id
    assert job["spec"]["parallelism"] == job["spec"]["completions"] == 5  # 4 + buffer 1
    assert job["spec"]["backoffLimit"] == 5
    assert job["spec"]["ttlSecondsAfterFinished"] == 60
    assert job["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"] == "manual"
    # Not owned by the template CronJob: removing a queue drains its Jobs, never kills them.
    assert "ownerReferences" not in job["metadata"]
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[LABEL_DISPATCH_ID] == report.dispatch_id
    # Every log line of the cycle carries the dispatch ID; none carries the token.
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    cycle = [
        line for line in lines if line.get("event") == "cycle" and line.get("queue") == "builds"
    ]
    assert cycle and cycle[0]["dispatch_id"] == report.dispatch_id
    assert cycle[0]["scheduled"] == 4 and cycle[0]["agents_dispatched"] == 5
    assert TOKEN not in log_stream.getvalue()
    # Next cycle: the Job's agents are supply: nothing more.
    clock.advance(11)
    dispatcher.run_cycle("poll")
    assert len(jobs_of(kube, "builds")) == 1


def test_template_changes_take_effect_without_restart(
    buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    dispatcher = make(buildkite, kube, clock)
    buildkite.add_jobs("builds", 1)
    dispatcher.run_cycle("poll")
    kube.objects["cronjobs"]["buildkite-agent-builds"]["spec"]["jobTemplate"]["spec"]["template"][
        "spec"
    ]["containers"][0]["image"] = "buildkite/agent:9.9.9"
    for job in list(kube.objects["jobs"]):
        kube.objects["jobs"][job]["status"] = {
            "succeeded": 2,
            "conditions": [{"type": "Complete", "status": "True"}],
        }
    buildkite.add_jobs("builds", 1)
    clock.advance(11)
    dispatcher.run_cycle("poll")
    images = sorted(
        j["spec"]["template"]["spec"]["containers"][0]["image"] for j in jobs_of(kube, "builds")
    )
    assert images == ["buildkite/agent:3.117.0", "buildkite/agent:9.9.9"]


def test_exact_mode_reserves_issues_token_secret_and_never_dispatches_twice(
    buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    uuids = buildkite.add_jobs("deploy", 2)
    dispatcher = make(buildkite, kube, clock)
    dispatcher.run_cycle("poll")
    jobs = jobs_of(kube, "deploy")
    assert sorted(j["metadata"]["labels"][LABEL_BUILDKITE_JOB] for j in jobs) == sorted(uuids)
    for job in jobs:
        container = job["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        uuid = job["metadata"]["labels"][LABEL_BUILDKITE_JOB]
        assert env["BUILDKITE_AGENT_ACQUIRE_JOB"]["value"] == uuid
        secret_name = env["BUILDKITE_AGENT_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]
        secret = kube.objects["secrets"][secret_name]
        assert secret["stringData"]["token"].startswith("bkjat_")
        assert secret["metadata"]["ownerReferences"][0]["name"] == job["metadata"]["name"]
        assert buildkite.job(uuid).state == "reserved"
    assert len(buildkite.notifications) == 2
    # A restarted dispatcher (fresh memory, same cluster) never dispatches them again,
    # even once the reservations lapse and Buildkite lists the jobs once more.
    kube.run_job_controller()  # their pods run (the agents are slow to acquire)
    clock.advance(1000)
    assert {
        j["id"]
        for j in api_for(buildkite).call(
            "GET",
            "/stacks/stackgen-buildkite-test-deploy/scheduled-jobs",
            params={"queue_key": "deploy"},
        )["jobs"]
    } == set(uuids)
    again = make(buildkite, kube, clock, ids=(f"{n:08x}" for n in range(100, 200)))
    again.run_cycle("poll")
    assert len(jobs_of(kube, "deploy")) == 2


def test_exact_mode_job_reserved_by_another_stack_is_skipped(
    buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    (uuid,) = buildkite.add_jobs("deploy", 1)
    dispatcher = make(buildkite, kube, clock)
    listed = dispatcher.api.all_scheduled_jobs
    other = api_for(buildkite)
    stack = other.register_stack("someone-else", queue_key="deploy")

    def list_then_lose_the_race(key: str, queue_key: str, **kw: Any) -> Any:
        jobs = listed(key, queue_key, **kw)
        other.batch_reserve(stack.key, [uuid])  # another stack reserves it right after
        return jobs

    dispatcher.api.all_scheduled_jobs = list_then_lose_the_race  # type: ignore[method-assign]
    dispatcher.run_cycle("poll")
    assert jobs_of(kube, "deploy") == []
    assert dispatcher.memory["deploy"].just_dispatched == {}


def test_stuck_exact_job_is_redispatched_then_finished_on_buildkite(
    buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    (uuid,) = buildkite.add_jobs("deploy", 1)
    dispatcher = make(buildkite, kube, clock)
    dispatcher.run_cycle("poll")
    kube.run_job_controller(start=False)  # unschedulable
    clock.advance(301)
    dispatcher.run_cycle("poll")
    (second,) = jobs_of(kube, "deploy")
    assert second["metadata"]["labels"]["stackgen.io/attempt"] == "2"
    kube.run_job_controller(start=False)
    clock.advance(301)
    dispatcher.run_cycle("poll")
    assert jobs_of(kube, "deploy") == []
    (finished,) = buildkite.finished
    assert finished["job_uuid"] == uuid
    assert "Unschedulable: 0/3 nodes are available" in finished["detail"]
    assert any("did not start" in n["detail"] for n in buildkite.notifications)


@pytest.mark.parametrize("fault", ["429", "500", "503", "garbage", "truncated", "401"])
def test_buildkite_faults_never_crash_and_back_off(
    buildkite: FakeBuildkite,
    kube: FakeKube,
    clock: VirtualClock,
    log_stream: io.StringIO,
    fault: str,
) -> None:
    buildkite.add_jobs("builds", 2)
    buildkite.inject("/v3/metrics", fault)
    dispatcher = make(buildkite, kube, clock)
    report = dispatcher.run_cycle("poll")
    errors = {q.queue: q.error for q in report.queues}
    assert errors["builds"]
    assert jobs_of(kube, "builds") == []
    assert dispatcher.next_due["builds"] > clock()  # retried later, with backoff
    if fault == "429":
        assert dispatcher.next_due["builds"] >= clock() + 1  # Retry-After honoured
    metric = dispatcher.metrics.api_errors.collect()[0].samples
    assert any(s.value >= 1 for s in metric)
    assert TOKEN not in log_stream.getvalue()
    clock.advance(120)
    dispatcher.run_cycle("poll")
    assert len(jobs_of(kube, "builds")) == 1


@pytest.mark.parametrize("status", [409, 429, 500, 503])
def test_kubernetes_faults_never_crash(
    buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock, status: int
) -> None:
    buildkite.add_jobs("builds", 2)
    kube.fail("create_job" if status != 409 else "list_jobs", status if status != 409 else 500)
    dispatcher = make(buildkite, kube, clock)
    report = dispatcher.run_cycle("poll")
    assert jobs_of(kube, "builds") == []
    assert any(q.error for q in report.queues) or report.queues == []
    clock.advance(120)
    dispatcher.run_cycle("poll")
    assert len(jobs_of(kube, "builds")) == 1


def test_create_conflict_after_a_lost_answer_is_not_an_error(
    buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    buildkite.add_jobs("builds", 1)
    dispatcher = make(buildkite, kube, clock)
    real_create = kube.create_job

    def create_then_lose_answer(body: dict[str, Any]) -> dict[str, Any]:
        real_create(body)
        from stackgen.dispatcher.kube import KubeError

        raise KubeError("already exists", status=409)

    kube.create_job = create_then_lose_answer  # type: ignore[method-assign]
    report = dispatcher.run_cycle("poll")
    assert [q.error for q in report.queues if q.queue == "builds"] == [None]
    assert len(jobs_of(kube, "builds")) == 1


def test_followers_do_not_dispatch(
    buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    import threading

    buildkite.add_jobs("builds", 3)
    leader_flag = {"value": False}
    config = from_dict(config_dict())
    dispatcher = Dispatcher(
        config, api_for(buildkite), kube, clock=clock, is_leader=lambda: leader_flag["value"]
    )
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
    thread.start()
    dispatcher.trigger()
    stop.wait(0.3)
    assert jobs_of(kube, "builds") == []
    leader_flag["value"] = True
    dispatcher.trigger(("builds",))
    for _ in range(50):
        if jobs_of(kube, "builds"):
            break
        stop.wait(0.05)
    stop.set()
    thread.join(2)
    assert len(jobs_of(kube, "builds")) == 1


def test_leader_election_one_leader_and_takeover(kube: FakeKube) -> None:
    now = {"t": 0.0}

    def clock() -> float:
        return now["t"]

    a = LeaderElector(
        kube, "lease", "a", lease_duration=15, renew_deadline=10, retry_period=2, clock=clock
    )
    b = LeaderElector(
        kube, "lease", "b", lease_duration=15, renew_deadline=10, retry_period=2, clock=clock
    )
    assert a.try_acquire_or_renew() is True
    assert b.try_acquire_or_renew() is False
    for _ in range(10):  # a keeps renewing: b never takes over
        now["t"] += 2
        a.try_acquire_or_renew()
        assert b.try_acquire_or_renew() is False
    # a dies: b takes over once the record has not changed for the lease duration
    now["t"] += 10
    assert b.try_acquire_or_renew() is False
    now["t"] += 6
    assert b.try_acquire_or_renew() is True
    assert kube.objects["leases"]["lease"]["spec"]["holderIdentity"] == "b"
    assert kube.objects["leases"]["lease"]["spec"]["leaseTransitions"] == 1
    # a comes back and does not steal it; after renew deadline a knows it is not leader
    assert a.try_acquire_or_renew() is False
    assert not a.is_leader


def test_release_hands_over_at_once(kube: FakeKube) -> None:
    a = LeaderElector(kube, "lease", "a", lease_duration=15, renew_deadline=10, retry_period=2)
    b = LeaderElector(kube, "lease", "b", lease_duration=15, renew_deadline=10, retry_period=2)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    a.release()
    assert b.try_acquire_or_renew()


def test_concurrent_candidates_one_wins(kube: FakeKube) -> None:
    a = LeaderElector(kube, "lease", "a", lease_duration=15, renew_deadline=10, retry_period=2)
    b = LeaderElector(kube, "lease", "b", lease_duration=15, renew_deadline=10, retry_period=2)
    assert a.try_acquire_or_renew()
    lease = kube.objects["leases"]["lease"]
    lease["spec"]["holderIdentity"] = ""  # released: both race for it with the same read
    stale = json.loads(json.dumps(lease))
    real_get = kube.get_lease
    kube.get_lease = lambda name: json.loads(json.dumps(stale))  # type: ignore[method-assign]
    results = [a.try_acquire_or_renew(), b.try_acquire_or_renew()]
    kube.get_lease = real_get  # type: ignore[method-assign]
    assert results.count(True) == 1


def test_metrics_exposed(buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock) -> None:
    from prometheus_client import generate_latest

    buildkite.add_jobs("builds", 2)
    metrics = Metrics()
    config = from_dict(config_dict())
    dispatcher = Dispatcher(config, api_for(buildkite), kube, clock=clock, metrics=metrics)
    dispatcher.run_cycle("poll")
    text = generate_latest(metrics.registry).decode()
    assert 'stackgen_queue_scheduled_jobs{queue="builds"} 2.0' in text
    assert 'stackgen_agents_dispatched_total{mode="dispatch",queue="builds"} 3.0' in text
    assert "stackgen_cycle_duration_seconds_count 1.0" in text


def test_cooled_queue_is_rechecked_within_a_second(
    buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    buildkite.add_jobs("builds", 4)
    dispatcher = make(buildkite, kube, clock)
    dispatcher.run_cycle("poll")
    kube.run_job_controller(start=False)  # the first dispatch's pods are still pending
    buildkite.add_jobs("builds", 4)
    clock.advance(11)
    report = dispatcher.run_cycle("poll")
    (builds,) = [q for q in report.queues if q.queue == "builds"]
    assert builds.plan is not None and builds.plan.cooldown
    assert dispatcher.next_due["builds"] <= clock() + 1.0


def test_exact_fan_out_is_created_concurrently(
    buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    import threading
    import time as real_time

    config = from_dict(config_dict())
    config = type(config)(
        **{
            **config.__dict__,
            "queues": tuple(type(q)(**{**q.__dict__, "max_agents": 50}) for q in config.queues),
        }
    )
    buildkite.add_jobs("deploy", 40)
    dispatcher = make(buildkite, kube, clock, config=config)
    in_flight = {"now": 0, "max": 0}
    lock = threading.Lock()
    real_create = kube.create_job

    def slow_create(body: dict[str, Any]) -> dict[str, Any]:
        with lock:
            in_flight["now"] += 1
            in_flight["max"] = max(in_flight["max"], in_flight["now"])
        real_time.sleep(0.02)
        try:
            return real_create(body)
        finally:
            with lock:
                in_flight["now"] -= 1

    kube.create_job = slow_create  # type: ignore[method-assign]
    dispatcher.run_cycle("poll")
    assert len(jobs_of(kube, "deploy")) == 40
    assert len([s for s in kube.objects["secrets"] if s.endswith("-acquire")]) == 40
    assert in_flight["max"] > 1


def test_next_poll_counts_from_the_cycle_start(
    buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    """A slow call must not push a queue's next poll back: queues polled together stay
    together instead of drifting into one cycle (and one Job listing) each."""
    dispatcher = make(buildkite, kube, clock)
    listed = dispatcher.api.all_scheduled_jobs

    def slow_listing(*args: Any, **kwargs: Any) -> Any:
        clock.advance(0.3)
        return listed(*args, **kwargs)

    dispatcher.api.all_scheduled_jobs = slow_listing  # type: ignore[method-assign]
    for _ in range(6):
        clock.advance(11)
        started = clock()
        report = dispatcher.run_cycle("poll")
        assert {q.queue for q in report.queues} == {"builds", "deploy"}
        assert dispatcher.next_due["deploy"] == started + 5  # its poll interval
        assert dispatcher.next_due["builds"] == started + 10  # Buildkite's poll-duration hint
