"""The poller against the fake Buildkite: poll hint, backoff, error mapping, job ages."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest

from stackgen.adapter.poller import Poller, stack_key_for
from stackgen.adapter.selectors import parse_selector
from stackgen.adapter.store import (
    AGE_METRIC,
    MetricStore,
    MetricUnavailable,
    NoData,
    StaleData,
)
from stackgen.buildkite import AgentAPI, Backoff
from tests.support.fake_buildkite import FakeBuildkite, VirtualClock

TOKEN = "bkct_test-token-0123456789"


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


_OPEN: list[AgentAPI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


@pytest.fixture
def fake(clock: VirtualClock) -> Iterator[FakeBuildkite]:
    with FakeBuildkite(TOKEN, queues=("alpha", "beta"), default_queue="alpha", clock=clock) as bk:
        yield bk


def make(
    fake: FakeBuildkite,
    clock: VirtualClock,
    *,
    token: str = TOKEN,
    prefix: str | None = None,
    interval: float = 5,
    queues: tuple[str, ...] = ("alpha", "beta"),
) -> tuple[Poller, MetricStore]:
    store = MetricStore(queues, interval=interval, clock=clock)
    api = AgentAPI(fake.endpoint, token)
    _OPEN.append(api)
    poller = Poller(
        api,
        store,
        interval=interval,
        queues=queues,
        stack_key_prefix=prefix,
        backoff=Backoff(base=1, cap=60, rng=random.Random(7)),
        clock=clock,
    )
    return poller, store


def values(store: MetricStore, metric: str) -> dict[str, float]:
    return {s.queue: s.value for s in store.query(metric, parse_selector(""))}


def test_counts_per_queue_and_the_poll_hint(fake: FakeBuildkite, clock: VirtualClock) -> None:
    fake.add_jobs("alpha", 4)
    fake.add_jobs("beta", 1)
    fake.set_agents("beta", idle=1, busy=1)
    poller, store = make(fake, clock, interval=5)
    # Buildkite's Poll-Duration header (10 s) beats the adapter's own 5 s.
    assert poller.poll_once() == 10
    assert store.stale_after == 30
    assert values(store, "buildkite_jobs_scheduled") == {"alpha": 4, "beta": 1}
    assert values(store, "buildkite_agents_busy_percentage") == {"alpha": 0, "beta": 50}
    fake.poll_duration_seconds = 2
    assert poller.poll_once() == 5  # its own interval when Buildkite allows faster


@pytest.mark.parametrize("kind", ["500", "503", "garbage", "truncated", "401"])
def test_failures_back_off_and_go_stale_never_zero(
    fake: FakeBuildkite, clock: VirtualClock, kind: str
) -> None:
    fake.add_jobs("alpha", 3)
    poller, store = make(fake, clock, interval=10)
    assert poller.poll_once() == 10
    fake.inject("metrics", kind, times=10)
    delays = []
    for _ in range(4):
        clock.advance(10)
        delays.append(poller.poll_once())
    assert all(0 <= d <= 60 for d in delays)
    assert poller.backoff.attempt == 4
    # 40 s since the last success > 3 intervals: an error, not 3 and not 0.
    with pytest.raises(StaleData) as exc:
        store.query("buildkite_jobs_scheduled", parse_selector("queue=alpha"))
    assert "GET /metrics" in str(exc.value)
    assert TOKEN not in str(exc.value)
    fake.clear_faults()
    assert poller.poll_once() == 10
    assert poller.backoff.attempt == 0
    assert values(store, "buildkite_jobs_scheduled")["alpha"] == 3


def test_rate_limit_retry_after_is_honoured(fake: FakeBuildkite, clock: VirtualClock) -> None:
    poller, _ = make(fake, clock)
    fake.inject("metrics", "429", seconds=17)
    assert poller.poll_once() >= 17


def test_no_data_before_the_first_success(fake: FakeBuildkite, clock: VirtualClock) -> None:
    poller, store = make(fake, clock, token="wrong-token-123456")
    poller.poll_once()
    with pytest.raises(NoData, match="HTTP 401"):
        store.query("buildkite_jobs_runnable", parse_selector("queue=alpha"))


def test_ages_off_without_a_stack_key_prefix(fake: FakeBuildkite, clock: VirtualClock) -> None:
    poller, store = make(fake, clock)
    poller.poll_once()
    with pytest.raises(MetricUnavailable, match="--stack-key-prefix"):
        store.query(AGE_METRIC, parse_selector("queue=alpha"))


def test_oldest_scheduled_age_from_the_stacks_api(fake: FakeBuildkite, clock: VirtualClock) -> None:
    fake.add_job("alpha", scheduled_at=clock() - 90)
    fake.add_job("alpha", scheduled_at=clock() - 30)
    poller, store = make(fake, clock, prefix="stackgen-ci")
    poller.poll_once()
    assert values(store, AGE_METRIC) == {"alpha": 90, "beta": 0}
    assert set(fake.stacks) == {"stackgen-ci-alpha", "stackgen-ci-beta"}
    assert fake.stacks["stackgen-ci-alpha"]["cluster_queue_key"] == "alpha"
    # The oldest job is taken: the next one is the oldest now.
    oldest = fake.jobs("alpha")[0].uuid
    fake.start_job(oldest)
    clock.advance(10)
    poller.poll_once()
    assert values(store, AGE_METRIC)["alpha"] == 40


def test_a_deregistered_stack_is_registered_again(fake: FakeBuildkite, clock: VirtualClock) -> None:
    poller, store = make(fake, clock, prefix="p")
    poller.poll_once()
    poller.api.deregister_stack("p-alpha")
    clock.advance(10)
    poller.poll_once()  # 404: dropped, recorded
    clock.advance(10)
    poller.poll_once()  # registered again
    assert fake.stacks["p-alpha"]["state"] == "connected"
    assert values(store, AGE_METRIC)["alpha"] == 0


def test_unclustered_token_makes_ages_unavailable(clock: VirtualClock) -> None:
    with FakeBuildkite(
        TOKEN, queues=("alpha", "beta"), default_queue="alpha", clock=clock, cluster_uuid=""
    ) as fake:
        poller, store = make(fake, clock, prefix="p")
        poller.poll_once()
        with pytest.raises(MetricUnavailable, match="not a cluster token"):
            store.query(AGE_METRIC, parse_selector("queue=alpha"))
        # Counts still work.
        assert values(store, "buildkite_jobs_scheduled") == {"alpha": 0, "beta": 0}


def test_stacks_api_rate_limit_pauses_ages_only(fake: FakeBuildkite, clock: VirtualClock) -> None:
    poller, store = make(fake, clock, prefix="p")
    fake.inject("list_scheduled_jobs", "429", seconds=30)
    assert poller.poll_once() == 10
    requests_before = len([r for r in fake.requests if r.route == "list_scheduled_jobs"])
    clock.advance(10)
    poller.poll_once()  # within Retry-After: no scheduled-jobs call
    after = len([r for r in fake.requests if r.route == "list_scheduled_jobs"])
    assert after == requests_before
    clock.advance(25)
    poller.poll_once()
    assert values(store, AGE_METRIC) == {"alpha": 0, "beta": 0}


def test_stack_keys_are_valid_and_distinct() -> None:
    assert stack_key_for("stackgen-ci", "linux_large") == "stackgen-ci-linux_large"
    odd = stack_key_for("p", "a.b")
    assert odd.startswith("p-a-b-") and odd != stack_key_for("p", "a/b")
    long = stack_key_for("p" * 70, "q" * 40)
    assert len(long) == 80


def test_run_survives_a_crashing_cycle(fake: FakeBuildkite, clock: VirtualClock) -> None:
    poller, store = make(fake, clock)
    calls = {"n": 0}
    real = poller.poll_once

    def flaky() -> float:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("bug")
        stop.set()
        return real()

    poller.poll_once = flaky  # type: ignore[method-assign]
    poller.backoff = Backoff(base=0.01, cap=0.01)
    stop = threading.Event()
    thread = threading.Thread(target=poller.run, args=(stop,))
    thread.start()
    thread.join(5)
    assert calls["n"] == 2
    assert "internal error" in str(store.status()["metrics"]["last_error"]) or values(
        store, "buildkite_jobs_scheduled"
    )


def test_one_bad_queue_does_not_block_the_others(fake: FakeBuildkite, clock: VirtualClock) -> None:
    fake.add_job("alpha", scheduled_at=clock() - 12)
    poller, store = make(fake, clock, prefix="p", queues=("gamma", "alpha"))
    poller.poll_once()
    assert {s.queue: s.value for s in store.query(AGE_METRIC, parse_selector("queue=alpha"))} == {
        "alpha": 12
    }
    with pytest.raises(NoData, match=r"queue 'gamma'.*Cluster queue not found"):
        store.query(AGE_METRIC, parse_selector("queue=gamma"))
