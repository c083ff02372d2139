"""``dispatch.workload: pod``: the dispatcher creates the agent pods itself.

What the Job controller gave for free, rebuilt and checked here against the fake
Buildkite (HTTP on 127.0.0.1) and the in-memory Kubernetes: the pod is the template's,
exactly-once in exact mode (deterministic names; a lost answer; a new leader), supply
counting, pods that never start, canceled jobs, TTL collection, kept failed pods.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from stackgen.buildkite import AgentAPI
from stackgen.common import logs
from stackgen.dispatcher.config import from_dict
from stackgen.dispatcher.cycle import Dispatcher
from stackgen.dispatcher.jobs import parse_time
from stackgen.dispatcher.pods import (
    ANNOTATION_TTL,
    LABEL_GROUP,
    exact_pod_name,
    expired,
    pod_views,
)
from tests.support.dispatcher_config import TOKEN, config_dict
from tests.support.fake_buildkite import FakeBuildkite, VirtualClock
from tests.support.fake_kube import FakeKube, cronjob_template

TEMPLATE = "buildkite-agent-deploy"


def pod_config(**overrides: Any) -> dict[str, Any]:
    data = config_dict()
    for queue in data["queues"]:
        queue["workload"] = "pod"
        queue.update(overrides)
    return data


@pytest.fixture
def api(buildkite: FakeBuildkite) -> Iterator[AgentAPI]:
    client = AgentAPI(buildkite.endpoint, TOKEN)
    yield client
    client.close()


def make(api: AgentAPI, kube: FakeKube, clock: VirtualClock, **overrides: Any) -> Dispatcher:
    ids = iter(range(1, 100_000))
    return Dispatcher(
        from_dict(pod_config(**overrides)),
        api,
        kube,
        clock=clock,
        new_id=lambda: f"{next(ids):08x}",
    )


@pytest.fixture
def dispatcher(api: AgentAPI, kube: FakeKube, clock: VirtualClock) -> Dispatcher:
    return make(api, kube, clock)


def pods_of(kube: FakeKube, queue: str) -> dict[str, dict[str, Any]]:
    return {
        n: p
        for n, p in kube.objects["pods"].items()
        if p["metadata"]["annotations"].get("stackgen.io/queue") == queue
    }


# ---------------------------------------------------------------- the pod itself


def test_an_exact_job_gets_one_pod_from_the_template_and_no_job(
    dispatcher: Dispatcher, buildkite: FakeBuildkite, kube: FakeKube
) -> None:
    (uuid,) = buildkite.add_jobs("deploy", 1)
    dispatcher.run_cycle("poll")
    assert not kube.objects["jobs"]
    name = exact_pod_name(TEMPLATE, uuid, 1)
    assert list(pods_of(kube, "deploy")) == [name]
    pod = kube.objects["pods"][name]
    cronjob = kube.objects["cronjobs"][TEMPLATE]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["activeDeadlineSeconds"] == 3600
    (owner,) = pod["metadata"]["ownerReferences"]
    assert owner["kind"] == "CronJob" and owner["uid"] == cronjob["metadata"]["uid"]
    assert owner["controller"] is False
    labels = pod["metadata"]["labels"]
    assert labels["stackgen.io/buildkite-job"] == uuid
    assert labels["stackgen.io/workload"] == "pod"
    assert labels["app.kubernetes.io/name"] == "buildkite-agent"
    assert pod["metadata"]["annotations"][ANNOTATION_TTL] == "60"
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["BUILDKITE_AGENT_ACQUIRE_JOB"]["value"] == uuid
    secret_name = env["BUILDKITE_AGENT_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]
    secret = kube.objects["secrets"][secret_name]
    (secret_owner,) = secret["metadata"]["ownerReferences"]
    assert secret_owner["kind"] == "Pod" and secret_owner["name"] == name
    assert secret_owner["uid"] == pod["metadata"]["uid"]
    value = dispatcher.metrics.registry.get_sample_value
    assert value("stackgen_agent_pods_created_total", {"queue": "deploy"}) == 1
    assert value("stackgen_jobs_created_total", {"queue": "deploy"}) == 0
    (note,) = buildkite.notifications
    assert f"agent pod {name} created" in note["detail"]


def test_job_mode_stays_the_default_and_makes_jobs(
    api: AgentAPI, buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    config = config_dict()
    jobs = Dispatcher(from_dict(config), api, kube, clock=clock)
    assert all(q.dispatch.workload == "job" for q in jobs.queues.values())
    buildkite.add_jobs("deploy", 1)
    jobs.run_cycle("poll")
    assert len(kube.objects["jobs"]) == 1 and not kube.objects["pods"]


# -------------------------------------------------------------------- exactly once


def test_a_lost_answer_to_a_pod_create_makes_no_second_pod(
    dispatcher: Dispatcher, buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    (uuid,) = buildkite.add_jobs("deploy", 1)
    kube.lose_response("create_pod")
    dispatcher.run_cycle("poll")
    name = exact_pod_name(TEMPLATE, uuid, 1)
    assert list(pods_of(kube, "deploy")) == [name]
    # The dispatcher looked the pod up and gave it its token Secret all the same.
    assert f"{name}-acquire" in kube.objects["secrets"]
    for _ in range(3):
        clock.advance(6)
        dispatcher.run_cycle("poll")
    assert list(pods_of(kube, "deploy")) == [name]


def test_a_create_retried_by_anyone_finds_the_pod_that_exists(
    dispatcher: Dispatcher, buildkite: FakeBuildkite, kube: FakeKube
) -> None:
    """A pod with the job's deterministic name already exists (made by a dispatcher that
    died before it could see it listed): the create's 409 is success, no second pod."""
    (uuid,) = buildkite.add_jobs("deploy", 1)
    name = exact_pod_name(TEMPLATE, uuid, 1)
    kube.add("pods", {"metadata": {"name": name, "labels": {}}, "status": {"phase": "Pending"}})
    dispatcher.run_cycle("poll")
    assert [n for n in kube.objects["pods"] if uuid in n] == [name]
    assert ("create_pod", name) in kube.calls
    assert f"{name}-acquire" in kube.objects["secrets"]


def test_a_new_leader_counts_the_pods_it_finds_and_makes_none_again(
    api: AgentAPI, buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    first = make(api, kube, clock)
    buildkite.add_jobs("deploy", 5)
    buildkite.add_jobs("builds", 3)
    first.run_cycle("poll")
    before = set(kube.objects["pods"])
    assert len(pods_of(kube, "deploy")) == 5
    assert len(pods_of(kube, "builds")) == 4  # 3 + buffer 1
    clock.advance(40)  # the short reservations lapse: Buildkite lists the jobs again
    second = make(api, kube, clock)
    second.on_leadership(True)
    second.run_cycle("leadership")
    assert set(kube.objects["pods"]) == before


# ------------------------------------------------------------- supply (dispatch mode)


def test_pending_and_running_pods_count_as_supply(
    dispatcher: Dispatcher, buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    buildkite.add_jobs("builds", 3)
    dispatcher.run_cycle("poll", only={"builds"})
    pods = pods_of(kube, "builds")
    assert len(pods) == 4
    groups = {p["metadata"]["labels"][LABEL_GROUP] for p in pods.values()}
    assert groups == {"buildkite-agent-builds-00000001"}
    clock.advance(6)
    report = dispatcher.run_cycle("poll", only={"builds"})
    (queue,) = report.queues
    assert queue.plan is not None and queue.plan.supply == 4 and queue.plan.unmet == -1
    assert len(pods_of(kube, "builds")) == 4
    kube.run_pods()
    clock.advance(6)
    dispatcher.run_cycle("poll", only={"builds"})
    assert len(pods_of(kube, "builds")) == 4
    # Two agents finish (their jobs done): the demand falls with them, nothing new.
    for name in list(pods_of(kube, "builds"))[:2]:
        kube.end_pod(name)
    views = pod_views(kube.objects["pods"].values(), dispatcher.queues)
    (view,) = [v for v in views if v.queue == "builds"]
    assert (view.completions, view.succeeded, view.remaining, view.ready) == (4, 2, 2, 2)


# ---------------------------------------------------------- pods that never start


def test_an_exact_pod_that_never_starts_is_retried_then_failed_with_the_reason(
    dispatcher: Dispatcher, buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    (uuid,) = buildkite.add_jobs("deploy", 1)
    dispatcher.run_cycle("poll", only={"deploy"})
    kube.run_pods(start=False)
    clock.advance(301)
    dispatcher.run_cycle("poll", only={"deploy"})
    assert exact_pod_name(TEMPLATE, uuid, 1) not in kube.objects["pods"]
    assert f"{exact_pod_name(TEMPLATE, uuid, 1)}-acquire" not in kube.objects["secrets"]
    second = exact_pod_name(TEMPLATE, uuid, 2)
    assert second in kube.objects["pods"]
    (retrying,) = [n for n in buildkite.notifications if "retrying" in n["detail"]]
    assert "Unschedulable: 0/3 nodes are available" in retrying["detail"]
    kube.run_pods(start=False)
    clock.advance(301)
    dispatcher.run_cycle("poll", only={"deploy"})
    assert not pods_of(kube, "deploy")
    (finished,) = buildkite.finished
    assert finished["job_uuid"] == uuid and "Unschedulable" in finished["detail"]
    value = dispatcher.metrics.registry.get_sample_value
    assert (
        value("stackgen_pods_not_started_total", {"queue": "deploy", "reason": "Unschedulable"})
        == 2
    )


def test_a_dispatch_group_that_never_starts_is_deleted_whole(
    dispatcher: Dispatcher, buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    buildkite.add_jobs("builds", 2)
    dispatcher.run_cycle("poll", only={"builds"})
    kube.run_pods(start=False)
    first = set(pods_of(kube, "builds"))
    assert len(first) == 3
    clock.advance(301)
    dispatcher.run_cycle("poll", only={"builds"})
    now = set(pods_of(kube, "builds"))
    assert not now & first  # the stuck group went; its demand was dispatched again
    assert len(now) == 3


# -------------------------------------------------------------------- canceled jobs


def test_a_canceled_job_loses_its_unstarted_pod_and_secret(
    dispatcher: Dispatcher, buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    waiting, running = buildkite.add_jobs("deploy", 2)
    dispatcher.run_cycle("poll", only={"deploy"})
    kube.objects["pods"][exact_pod_name(TEMPLATE, running, 1)]["status"] = {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    buildkite.set_job_state(waiting, "canceled")
    buildkite.set_job_state(running, "canceled")
    clock.advance(6)
    dispatcher.run_cycle("poll", only={"deploy"})
    gone = exact_pod_name(TEMPLATE, waiting, 1)
    assert gone not in kube.objects["pods"]
    assert f"{gone}-acquire" not in kube.objects["secrets"]
    assert exact_pod_name(TEMPLATE, running, 1) in kube.objects["pods"]
    value = dispatcher.metrics.registry.get_sample_value
    assert value("stackgen_jobs_deleted_total", {"queue": "deploy", "reason": "canceled"}) == 1


# ------------------------------------------------------- TTL collection, kept pods


def test_finished_pods_are_collected_after_their_ttl_and_not_before(
    dispatcher: Dispatcher, buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    done, failed, busy = buildkite.add_jobs("deploy", 3)
    dispatcher.run_cycle("poll", only={"deploy"})
    kube.run_pods()
    kube.end_pod(exact_pod_name(TEMPLATE, done, 1))
    kube.end_pod(exact_pod_name(TEMPLATE, failed, 1), "Failed")
    clock.advance(59)
    dispatcher.housekeeping()
    assert len(pods_of(kube, "deploy")) == 3
    clock.advance(2)
    dispatcher.housekeeping()
    assert list(pods_of(kube, "deploy")) == [exact_pod_name(TEMPLATE, busy, 1)]
    assert f"{exact_pod_name(TEMPLATE, done, 1)}-acquire" not in kube.objects["secrets"]
    value = dispatcher.metrics.registry.get_sample_value
    assert value("stackgen_agent_pods_collected_total", {"reason": "ttl"}) == 2


def test_a_failed_pod_asked_for_is_kept_then_collected(
    api: AgentAPI, buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    dispatcher = make(api, kube, clock, keepFailedPodsSeconds=600)
    (uuid,) = buildkite.add_jobs("deploy", 1)
    dispatcher.run_cycle("poll", only={"deploy"})
    name = exact_pod_name(TEMPLATE, uuid, 1)
    kube.run_pods()
    kube.end_pod(name, "Failed")
    dispatcher.housekeeping()
    meta = kube.objects["pods"][name]["metadata"]
    assert meta["labels"]["stackgen.io/kept"] == "true"
    assert meta["annotations"][ANNOTATION_TTL] == "600"
    assert "stackgen.io/kept-until" in meta["annotations"]
    clock.advance(120)
    dispatcher.housekeeping()
    assert name in kube.objects["pods"]  # past the queue's TTL (60 s), kept
    clock.advance(481)
    dispatcher.housekeeping()
    assert name not in kube.objects["pods"]


def test_a_pod_never_running_past_its_deadline_is_collected() -> None:
    """The kubelet enforces activeDeadlineSeconds only on pods it runs."""
    start = "2027-01-15T08:00:00Z"
    pending = {
        "metadata": {"name": "p", "creationTimestamp": start},
        "spec": {"activeDeadlineSeconds": 100},
        "status": {"phase": "Pending"},
    }
    running = {**pending, "metadata": {"name": "r", "creationTimestamp": start}}
    running["status"] = {"phase": "Running"}
    created = parse_time(start)
    assert expired([pending, running], created + 99) == []
    assert expired([pending, running], created + 100) == [("p", "deadline")]


def test_the_dispatcher_role_may_create_and_delete_pods() -> None:
    import yaml

    from tests.support.paths import ROOT

    found = []
    for path in (ROOT / "bases" / "dispatcher").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Role":
                found.append(doc)
    assert found
    verbs = {
        verb
        for role in found
        for rule in role.get("rules") or []
        if "pods" in (rule.get("resources") or [])
        for verb in rule.get("verbs") or []
    }
    assert {"create", "get", "delete", "patch", "list", "watch"} <= verbs


@pytest.mark.parametrize(("status", "retry_after"), [(429, 5.0), (503, None), (None, None)])
def test_a_kubernetes_fault_on_pod_create_is_retried_with_its_retry_after(
    dispatcher: Dispatcher,
    buildkite: FakeBuildkite,
    kube: FakeKube,
    clock: VirtualClock,
    status: int | None,
    retry_after: float | None,
) -> None:
    """The dispatcher's own pacing: the API server's 429 and its Retry-After, as for Jobs."""
    uuids = buildkite.add_jobs("deploy", 3)
    kube.fail("create_pod", status, times=3, retry_after=retry_after)
    failed_at = clock()
    dispatcher.run_cycle("poll", only={"deploy"})
    if retry_after:
        assert dispatcher.next_due["deploy"] >= failed_at + retry_after
    for _ in range(10):
        if len(pods_of(kube, "deploy")) == 3:
            break
        clock.advance(max(0.0, dispatcher.next_due["deploy"] - clock()) + 0.01)
        dispatcher.run_cycle("poll", only={"deploy"})
    assert sorted(
        p["metadata"]["labels"]["stackgen.io/buildkite-job"]
        for p in pods_of(kube, "deploy").values()
    ) == sorted(uuids)
    assert clock() - failed_at < 30  # within the short reservation


# ------------------------------------------------------------ refused at create

WEBHOOK = 'admission webhook "policy.example.com" denied the request: images must be signed'
PODSECURITY = (
    'pods "x" is forbidden: violates PodSecurity "restricted:latest": privileged '
    '(container "agent" must not set securityContext.privileged=true)'
)
INVALID = 'Pod "x" is invalid: spec.containers[0].image: Required value'
QUOTA = (
    'pods "x" is forbidden: exceeded quota: compute, requested: pods=1, used: pods=10, '
    "limited: pods=10"
)
RBAC = (
    'pods is forbidden: User "system:serviceaccount:buildkite:stackgen-dispatcher" cannot '
    'create resource "pods" in API group "" in the namespace "buildkite"'
)


def run_until(dispatcher: Dispatcher, clock: VirtualClock, queue: str, until: float) -> int:
    """Run the queue's cycles as its schedule (backoff included) makes them due, to ``until``."""
    cycles = 0
    while (at := max(clock(), dispatcher.next_due[queue]) + 0.01) <= until:
        clock.advance(at - clock())
        dispatcher.run_cycle("poll", only={queue})
        cycles += 1
    clock.advance(max(0.0, until - clock()))
    return cycles


@pytest.mark.parametrize(
    ("workload", "status", "message"),
    [
        ("pod", 403, WEBHOOK),
        ("pod", 403, PODSECURITY),
        ("pod", 422, INVALID),
        ("job", 403, WEBHOOK),
    ],
)
def test_a_create_refused_for_good_fails_its_job_at_once_with_the_reason(
    api: AgentAPI,
    buildkite: FakeBuildkite,
    kube: FakeKube,
    clock: VirtualClock,
    workload: str,
    status: int,
    message: str,
) -> None:
    dispatcher = make(api, kube, clock, workload=workload)
    refused, other = buildkite.add_jobs("deploy", 2)
    method = f"create_{workload}"
    kube.fail(method, status, message=message)  # the first create: one of the two
    report = dispatcher.run_cycle("poll", only={"deploy"})
    (queue,) = report.queues
    assert queue.error is None  # nothing to retry: the queue does not back off
    (finished,) = buildkite.finished
    failed = finished["job_uuid"]
    assert failed in (refused, other)
    assert finished["detail"].startswith("stackgen: Kubernetes refused the ")
    assert message in finished["detail"]
    assert any(message[:60] in n["detail"] for n in buildkite.notifications)
    created = kube.objects["pods" if workload == "pod" else "jobs"]
    assert [o["metadata"]["labels"]["stackgen.io/buildkite-job"] for o in created.values()] == [
        ({refused, other} - {failed}).pop()
    ]
    value = dispatcher.metrics.registry.get_sample_value
    assert value("stackgen_creates_refused_total", {"queue": "deploy", "refusal": "final"}) == 1
    assert value("stackgen_buildkite_jobs_failed_total", {"queue": "deploy"}) == 1
    # Given up on: never created again, whatever Buildkite lists.
    calls = len([c for c in kube.calls if c[0] == method])
    run_until(dispatcher, clock, "deploy", clock() + 60)
    assert len([c for c in kube.calls if c[0] == method]) == calls


def test_a_pod_refused_by_a_quota_waits_as_long_as_a_job_would_then_fails(
    dispatcher: Dispatcher, buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    (uuid,) = buildkite.add_jobs("deploy", 1)
    kube.fail("create_pod", 403, times=1000, message=QUOTA)
    first = clock()
    dispatcher.run_cycle("poll", only={"deploy"})
    (note,) = buildkite.notifications
    assert note["detail"].startswith("stackgen: Kubernetes refused the agent pod (retrying for")
    assert "600s" in note["detail"] and "exceeded quota" in note["detail"]
    # Two pod start timeouts (300 s): the Job path's first Job, then its second.
    cycles = run_until(dispatcher, clock, "deploy", first + 599)
    assert cycles >= 10 and not buildkite.finished
    assert len(buildkite.notifications) == 1  # noted once, not at every retry
    run_until(dispatcher, clock, "deploy", first + 661)
    (finished,) = buildkite.finished
    assert finished["job_uuid"] == uuid
    assert "Kubernetes refused the agent pod for 6" in finished["detail"]
    assert "exceeded quota" in finished["detail"]
    assert not pods_of(kube, "deploy")
    value = dispatcher.metrics.registry.get_sample_value
    assert value("stackgen_creates_refused_total", {"queue": "deploy", "refusal": "transient"}) > 10
    assert dispatcher.memory["deploy"].refused == {}


def test_a_quota_lifted_in_time_starts_the_pod_and_fails_nothing(
    dispatcher: Dispatcher, buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    (uuid,) = buildkite.add_jobs("deploy", 1)
    kube.fail("create_pod", 403, times=1000, message=QUOTA)
    first = clock()
    dispatcher.run_cycle("poll", only={"deploy"})
    run_until(dispatcher, clock, "deploy", first + 200)
    kube.clear_faults("create_pod")  # pods ended: the quota has room again
    run_until(dispatcher, clock, "deploy", first + 300)
    assert list(pods_of(kube, "deploy")) == [exact_pod_name(TEMPLATE, uuid, 1)]
    assert not buildkite.finished
    assert dispatcher.memory["deploy"].refused == {}


def test_the_dispatchers_own_rbac_fails_no_job(
    dispatcher: Dispatcher, buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    """A 403 for the dispatcher's own permissions is the stack's fault, not the job's."""
    buildkite.add_jobs("deploy", 1)
    kube.fail("create_pod", 403, times=1000, message=RBAC)
    first = clock()
    dispatcher.run_cycle("poll", only={"deploy"})
    run_until(dispatcher, clock, "deploy", first + 900)
    assert not buildkite.finished and not buildkite.notifications
    value = dispatcher.metrics.registry.get_sample_value
    assert value("stackgen_api_errors_total", {"api": "kubernetes", "kind": "AuthError"}) > 10


def test_dispatch_mode_counts_and_logs_a_refusal_and_keeps_backing_off(
    api: AgentAPI, buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    stream = io.StringIO()
    logs.configure("debug", stream=stream, component="dispatcher")
    dispatcher = make(api, kube, clock)
    buildkite.add_jobs("builds", 2)
    kube.fail("create_pod", 403, times=1000, message=WEBHOOK)
    report = dispatcher.run_cycle("poll", only={"builds"})
    (queue,) = report.queues
    assert queue.error is not None and "denied the request" in queue.error
    due = dispatcher.next_due["builds"]
    assert due > clock()
    assert not buildkite.finished and not pods_of(kube, "builds")
    value = dispatcher.metrics.registry.get_sample_value
    assert value("stackgen_creates_refused_total", {"queue": "builds", "refusal": "final"}) == 1
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    (refused,) = [line for line in lines if line["event"].startswith("Kubernetes refused")]
    assert refused["level"] == "error" and refused["refusal"] == "final"
    assert "denied the request" in refused["reason"]
    kube.clear_faults("create_pod")
    run_until(dispatcher, clock, "builds", due + 1)
    assert len(pods_of(kube, "builds")) == 3


# ------------------------------------------------- collection by a new leader


def finished_pod(name: str, ended: float, ttl: int = 60) -> dict[str, Any]:
    stamp = dt.datetime.fromtimestamp(ended, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "metadata": {
            "name": name,
            "labels": {"stackgen.io/workload": "pod"},
            "annotations": {"stackgen.io/queue": "deploy", ANNOTATION_TTL: str(ttl)},
            "creationTimestamp": stamp,
        },
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [{"state": {"terminated": {"finishedAt": stamp}}}],
        },
    }


def test_a_new_leader_collects_finished_pods_at_once(api: AgentAPI) -> None:
    """Nothing collects agent pods while no dispatcher leads: whoever takes the lead
    (a fresh replica, or one that led before) collects at its next turn, not after
    the 10 s housekeeping period."""
    kube = FakeKube()
    kube.add("cronjobs", cronjob_template(TEMPLATE, "deploy"))
    leading = {"now": True}
    dispatcher = Dispatcher(from_dict(pod_config()), api, kube, is_leader=lambda: leading["now"])
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        kube.add("pods", finished_pod("old", time.time() - 3600))
        # Under the 10 s housekeeping period, with room for a loaded machine.
        assert wait(lambda: "old" not in kube.objects["pods"], 8), "a fresh leader"
        leading["now"] = False
        dispatcher.on_leadership(False)
        time.sleep(0.5)  # a turn begun as the leader ends before the next pod appears
        kube.add("pods", finished_pod("during", time.time() - 3600))
        time.sleep(1.5)
        assert "during" in kube.objects["pods"]  # followers collect nothing
        leading["now"] = True
        dispatcher.on_leadership(True)
        assert wait(lambda: "during" not in kube.objects["pods"], 8), "a leader again"
    finally:
        stop.set()
        thread.join(5)


def wait(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()  # type: ignore[no-any-return]
