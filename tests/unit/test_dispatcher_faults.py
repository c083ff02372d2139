"""One transient fault at a time: the dispatcher serves every job again within two cycles.

The real dispatcher against the fake Buildkite (HTTP on 127.0.0.1) and the in-memory
Kubernetes, on a virtual clock: each test injects one fault between listing and
creating (or a missing template, a lost answer, a dead process) and drives the
dispatcher as its loop would, a cycle whenever its schedule says a queue is due.
"""

from __future__ import annotations

import io
import json
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from stackgen.buildkite import AgentAPI
from stackgen.common import logs
from stackgen.dispatcher.config import from_dict
from stackgen.dispatcher.cycle import Dispatcher
from stackgen.dispatcher.jobs import LABEL_BUILDKITE_JOB
from tests.support.dispatcher_config import TOKEN, config_dict
from tests.support.fake_buildkite import FakeBuildkite, VirtualClock
from tests.support.fake_kube import FakeKube, cronjob_template

#: The short reservation that covers reserve -> token -> create (stackgen's RESERVE_SECONDS).
SHORT_RESERVATION = 30


@pytest.fixture
def buildkite(clock: VirtualClock) -> Iterator[FakeBuildkite]:
    with FakeBuildkite(token=TOKEN, queues=("builds", "deploy", "slow"), clock=clock) as fake:
        yield fake


@pytest.fixture
def kube(clock: VirtualClock) -> FakeKube:
    fake = FakeKube(clock=clock)
    for name in ("builds", "deploy", "slow"):
        fake.add("cronjobs", cronjob_template(f"buildkite-agent-{name}", name))
    return fake


@pytest.fixture
def log_stream() -> io.StringIO:
    stream = io.StringIO()
    logs.configure("debug", stream=stream, component="dispatcher")
    logs.register_secret(TOKEN)
    return stream


@pytest.fixture
def apis() -> Iterator[list[AgentAPI]]:
    made: list[AgentAPI] = []
    yield made
    for api in made:
        api.close()


Make = Callable[..., Dispatcher]


@pytest.fixture
def make(
    buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock, apis: list[AgentAPI]
) -> Make:
    ids = iter(range(1, 100_000))

    def new(*queues: str, slow_queue: bool = False) -> Dispatcher:
        data = config_dict()
        if slow_queue:
            data["queues"].append(
                dict(data["queues"][1], name="slow", template="buildkite-agent-slow")
            )
        data["queues"] = [q for q in data["queues"] if not queues or q["name"] in queues]
        api = AgentAPI(buildkite.endpoint, TOKEN)
        apis.append(api)
        dispatcher = Dispatcher(
            from_dict(data), api, kube, clock=clock, new_id=lambda: f"{next(ids):08x}"
        )
        for backoff in dispatcher.schedule.backoff.values():
            backoff.rng = random.Random(7)  # full jitter, but the same every run
        return dispatcher

    return new


def next_cycle(dispatcher: Dispatcher, clock: VirtualClock, kube: FakeKube) -> None:
    """Move the clock to when the loop would next run a cycle, and run it."""
    wake = dispatcher.schedule.wake_at(clock())
    if wake > clock():
        clock.set(wake)
    dispatcher.run_cycle("poll")
    kube.run_job_controller()


def served(kube: FakeKube, uuids: list[str]) -> bool:
    """Every job has its Job, and every such Job its token Secret (its pod can start)."""
    jobs = {
        j["metadata"]["labels"].get(LABEL_BUILDKITE_JOB): name
        for name, j in kube.objects["jobs"].items()
    }
    return all(u in jobs and f"{jobs[u]}-acquire" in kube.objects["secrets"] for u in uuids)


def cycles_until(
    done: Callable[[], bool], dispatcher: Dispatcher, clock: VirtualClock, kube: FakeKube
) -> int:
    """Cycles run until ``done`` (at most 20)."""
    for count in range(1, 21):
        next_cycle(dispatcher, clock, kube)
        if done():
            return count
    return 99


def jobs_per_buildkite_job(kube: FakeKube) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in kube.objects["jobs"].values():
        uuid = job["metadata"]["labels"][LABEL_BUILDKITE_JOB]
        counts[uuid] = counts.get(uuid, 0) + 1
    return counts


# ------------------------------------------------------------- between listing and creating


@pytest.mark.parametrize(
    ("route", "kind"), [("batch_reserve", "429"), ("job_acquisition_tokens", "500")]
)
def test_a_buildkite_fault_between_listing_and_creating_is_retried_next_cycle(
    make: Make,
    buildkite: FakeBuildkite,
    kube: FakeKube,
    clock: VirtualClock,
    log_stream: io.StringIO,
    route: str,
    kind: str,
) -> None:
    """A 429 on the reserve, or a 500 on the tokens after a successful reserve: the jobs
    count as supply nowhere, and the next retry serves them (Buildkite no longer lists
    the reserved ones: they are remembered)."""
    dispatcher = make("deploy")
    uuids = buildkite.add_jobs("deploy", 5)
    buildkite.inject(route, kind, seconds=1)
    report = dispatcher.run_cycle("poll")
    assert report.queues[0].error
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    (cycle,) = [line for line in lines if line.get("event") == "cycle"]
    assert cycle["supply"] == 0 and cycle["unmet"] == 5  # no phantom supply
    if kind == "429":
        assert dispatcher.next_due["deploy"] >= clock() + 1  # Retry-After honoured
    assert cycles_until(lambda: served(kube, uuids), dispatcher, clock, kube) == 1
    assert max(jobs_per_buildkite_job(kube).values()) == 1
    # The retry came before the next poll: it planned from what it had read (and from
    # memory), without listing again.
    lists = [r for r in buildkite.requests if r.route == "list_scheduled_jobs"]
    assert len(lists) == 1


@pytest.mark.parametrize(
    ("status", "retry_after"), [(429, 5.0), (500, None), (503, None), (None, None)]
)
def test_a_kubernetes_fault_on_job_create_is_retried_with_its_retry_after(
    make: Make,
    buildkite: FakeBuildkite,
    kube: FakeKube,
    clock: VirtualClock,
    status: int | None,
    retry_after: float | None,
) -> None:
    """429 (with Retry-After), 5xx, a timeout: the reserved jobs are not stranded for the
    reservation's lifetime; the retry waits at least the Retry-After."""
    dispatcher = make("deploy")
    uuids = buildkite.add_jobs("deploy", 3)
    kube.fail("create_job", status, times=3, retry_after=retry_after)
    failed_at = clock()
    dispatcher.run_cycle("poll")
    assert not served(kube, uuids)
    if retry_after:
        assert dispatcher.next_due["deploy"] >= failed_at + retry_after
    assert cycles_until(lambda: served(kube, uuids), dispatcher, clock, kube) <= 2
    assert clock() - failed_at < SHORT_RESERVATION  # not the reservation's lifetime
    assert max(jobs_per_buildkite_job(kube).values()) == 1


def test_a_lost_answer_to_a_job_create_still_gets_the_job_its_secret(
    make: Make, buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    dispatcher = make("deploy")
    uuids = buildkite.add_jobs("deploy", 1)
    kube.lose_response("create_job")
    dispatcher.run_cycle("poll")
    assert served(kube, uuids)  # the Job landed: its Secret was created all the same
    next_cycle(dispatcher, clock, kube)
    assert jobs_per_buildkite_job(kube) == {uuids[0]: 1}


def test_a_lost_answer_whose_lookup_fails_too_is_settled_next_cycle(
    make: Make, buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    dispatcher = make("deploy")
    uuids = buildkite.add_jobs("deploy", 1)
    kube.lose_response("create_job")
    kube.fail("get_job", 503)
    report = dispatcher.run_cycle("poll")
    assert report.queues[0].error
    assert len(kube.objects["jobs"]) == 1 and not served(kube, uuids)
    assert cycles_until(lambda: served(kube, uuids), dispatcher, clock, kube) == 1
    assert jobs_per_buildkite_job(kube) == {uuids[0]: 1}  # never a second Job meanwhile


class Killed(BaseException):
    """kill -9: the process is gone, mid-cycle."""


def test_kill_between_reserve_and_create_strands_jobs_only_for_the_short_reservation(
    make: Make, buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    first = make("deploy")
    uuids = buildkite.add_jobs("deploy", 4)
    create = kube.create_job

    def die(body: dict[str, Any]) -> dict[str, Any]:
        raise Killed

    kube.create_job = die  # type: ignore[method-assign]
    with pytest.raises(Killed):
        first.run_cycle("poll")
    killed_at = clock()
    assert all(buildkite.job(u).state == "reserved" for u in uuids)
    kube.create_job = create  # type: ignore[method-assign]
    successor = make("deploy")  # a restarted process, or the new leader: empty memory
    cycles_until(lambda: served(kube, uuids), successor, clock, kube)
    assert served(kube, uuids)
    poll = successor.config.queues[0].dispatch.poll_interval_seconds
    assert clock() - killed_at <= SHORT_RESERVATION + poll


def test_jobs_that_got_their_jobs_keep_a_reservation_over_the_pod_start(
    make: Make, buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    dispatcher = make("deploy")
    (uuid,) = buildkite.add_jobs("deploy", 1)
    dispatcher.run_cycle("poll")
    timeout = dispatcher.config.queues[0].dispatch.pod_start_timeout_seconds
    until = buildkite.job(uuid).reserved_until
    assert until is not None and until >= clock() + timeout


# ------------------------------------------------------------------ backoff and templates


def test_backoff_grows_while_kubernetes_keeps_failing_without_calling_buildkite_each_time(
    make: Make, buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock
) -> None:
    dispatcher = make("builds")
    buildkite.add_jobs("builds", 3)
    kube.fail("create_job", 500, times=10_000)
    start = clock()
    delays = []
    while clock() - start < 120:
        before = clock()
        next_cycle(dispatcher, clock, kube)
        delays.append(dispatcher.next_due["builds"] - before)
    attempts = sum(1 for method, _ in kube.calls if method == "create_job")
    metrics_calls = sum(1 for r in buildkite.requests if r.route == "metrics")
    assert max(delays) > 10  # it grew (full jitter, seeded), instead of 0.2-1 s forever
    assert attempts <= 15
    # Buildkite is read no faster than its poll-duration hint (10 s) while retrying.
    assert metrics_calls <= 120 / 10 + 1


def test_a_missing_template_backs_off_keeps_the_hint_and_is_logged_once(
    make: Make,
    buildkite: FakeBuildkite,
    kube: FakeKube,
    clock: VirtualClock,
    log_stream: io.StringIO,
) -> None:
    dispatcher = make("builds")
    template = kube.objects["cronjobs"].pop("buildkite-agent-builds")
    buildkite.add_jobs("builds", 3)
    start = clock()
    while clock() - start < 40:
        next_cycle(dispatcher, clock, kube)
    metrics_calls = sum(1 for r in buildkite.requests if r.route == "metrics")
    reads = sum(1 for method, _ in kube.calls if method == "get_cronjob")
    assert metrics_calls <= 40 / 10 + 1  # the Poll-Duration hint, not every retry
    assert reads <= 15  # backed off (79 metrics calls and 94 404s in 40 s before)
    gauge = dispatcher.metrics.registry.get_sample_value
    assert gauge("stackgen_queue_template_missing", {"queue": "builds"}) == 1
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    assert [line["event"] for line in lines if "template" in line["event"]] == [
        "template CronJob missing: dispatching nothing for this queue until it is back"
    ]
    kube.objects["cronjobs"]["buildkite-agent-builds"] = template
    back = clock()
    assert cycles_until(lambda: bool(kube.objects["jobs"]), dispatcher, clock, kube) <= 2
    # Never backed off beyond the queue's poll period (10 s with the hint).
    assert clock() - back <= 10
    assert gauge("stackgen_queue_template_missing", {"queue": "builds"}) == 0
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    assert [line["event"] for line in lines if "template" in line["event"]][-1] == (
        "template CronJob is back: dispatching again"
    )


# ------------------------------------------------------------------- head-of-line blocking


@pytest.mark.parametrize("blocked", ["metrics", "slow"])
def test_one_lanes_slow_buildkite_answer_never_delays_another_queue(blocked: str) -> None:
    """Real time: ``Dispatcher.run`` with one Buildkite answer held until released (the
    metrics call of the dispatch queues, or another exact queue's list).  The healthy
    exact queue's job gets its Job while that answer is still outstanding."""
    release, held = threading.Event(), threading.Event()
    with FakeBuildkite(token=TOKEN, queues=("builds", "deploy", "slow")) as buildkite:
        kube = FakeKube()
        for name in ("builds", "deploy", "slow"):
            kube.add("cronjobs", cronjob_template(f"buildkite-agent-{name}", name))
        data = config_dict()
        data["queues"].append(dict(data["queues"][1], name="slow", template="buildkite-agent-slow"))
        api = AgentAPI(buildkite.endpoint, TOKEN)
        real_metrics, real_list = api.metrics, api.all_scheduled_jobs

        def metrics() -> Any:
            if blocked == "metrics":
                held.set()
                release.wait(30)
            return real_metrics()

        def listing(key: str, queue_key: str, **kw: Any) -> Any:
            if blocked == "slow" and key.endswith("-slow"):
                held.set()
                release.wait(30)
            return real_list(key, queue_key, **kw)

        api.metrics = metrics  # type: ignore[method-assign]
        api.all_scheduled_jobs = listing  # type: ignore[method-assign]
        dispatcher = Dispatcher(from_dict(data), api, kube)
        stop = threading.Event()
        thread = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
        thread.start()
        try:
            assert held.wait(20), "the held call was never made"
            (uuid,) = buildkite.add_jobs("deploy", 1)
            dispatcher.trigger(("deploy",))
            for _ in range(400):  # up to 20 s, while the other answer is held
                if uuid in jobs_per_buildkite_job(kube):
                    break
                stop.wait(0.05)
            assert not release.is_set()
            assert uuid in jobs_per_buildkite_job(kube), "it waited for another lane's answer"
        finally:
            release.set()
            stop.set()
            thread.join(10)
            api.close()
