"""Per-queue storage and staleness of the metric store."""

from __future__ import annotations

import pytest

from stackgen.adapter.selectors import parse_selector
from stackgen.adapter.store import (
    AGE_METRIC,
    METRICS,
    MetricStore,
    MetricUnavailable,
    NoData,
    StaleData,
    UnknownMetric,
)
from stackgen.buildkite.models import MetricsSnapshot, QueueMetrics


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def snapshot(at: float, **queues: QueueMetrics) -> MetricsSnapshot:
    return MetricsSnapshot(organization="acme", cluster=None, queues=dict(queues), fetched_at=at)


def values(store: MetricStore, metric: str, selector: str = "") -> dict[str, float]:
    return {s.queue: s.value for s in store.query(metric, parse_selector(selector))}


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_two_queues_never_overwrite_each_other(clock: Clock) -> None:
    store = MetricStore(["a", "b"], interval=10, clock=clock)
    store.record_snapshot(
        snapshot(
            clock.now,
            a=QueueMetrics(scheduled=5, running=1, idle_agents=0, busy_agents=1, total_agents=1),
            b=QueueMetrics(scheduled=0, running=2, idle_agents=2, busy_agents=2, total_agents=4),
        )
    )
    assert values(store, "buildkite_jobs_scheduled", "queue=a") == {"a": 5}
    assert values(store, "buildkite_jobs_scheduled", "queue=b") == {"b": 0}
    assert values(store, "buildkite_jobs_runnable") == {"a": 6, "b": 2}
    assert values(store, "buildkite_agents_busy_percentage") == {"a": 100.0, "b": 50.0}
    assert values(store, "buildkite_agents_idle", "queue in (a,b)") == {"a": 0, "b": 2}
    assert values(store, "buildkite_agents_total", "queue notin (a)") == {"b": 4}
    # A later poll changes one queue only.
    clock.now += 10
    store.record_snapshot(
        snapshot(
            clock.now,
            a=QueueMetrics(scheduled=1),
            b=QueueMetrics(scheduled=0, running=2, idle_agents=2, busy_agents=2, total_agents=4),
        )
    )
    assert values(store, "buildkite_jobs_scheduled") == {"a": 1, "b": 0}
    assert values(store, "buildkite_jobs_running", "queue=b") == {"b": 2}


def test_every_count_metric_is_served_per_queue(clock: Clock) -> None:
    store = MetricStore(["q"], clock=clock)
    counts = QueueMetrics(
        scheduled=3, running=2, waiting=7, idle_agents=1, busy_agents=2, total_agents=3
    )
    store.record_snapshot(snapshot(clock.now, q=counts))
    expected = {
        "buildkite_jobs_scheduled": 3,
        "buildkite_jobs_running": 2,
        "buildkite_jobs_waiting": 7,
        "buildkite_jobs_runnable": 5,
        "buildkite_agents_idle": 1,
        "buildkite_agents_busy": 2,
        "buildkite_agents_total": 3,
        "buildkite_agents_busy_percentage": pytest.approx(200 / 3),
    }
    assert set(expected) | {AGE_METRIC} == set(METRICS)
    for metric, value in expected.items():
        assert values(store, metric, "queue=q") == {"q": value}, metric


def test_busy_percentage_without_agents_is_zero(clock: Clock) -> None:
    store = MetricStore(["q"], clock=clock)
    store.record_snapshot(snapshot(clock.now, q=QueueMetrics(scheduled=4)))
    assert values(store, "buildkite_agents_busy_percentage", "queue=q") == {"q": 0.0}


def test_queue_buildkite_does_not_list_reads_zero_when_fresh(clock: Clock) -> None:
    # Buildkite lists a queue only while it has jobs or agents; the HPA asks by name.
    store = MetricStore(["configured"], clock=clock)
    store.record_snapshot(snapshot(clock.now, other=QueueMetrics(scheduled=2)))
    assert values(store, "buildkite_jobs_runnable", "queue=configured") == {"configured": 0}
    assert values(store, "buildkite_jobs_runnable", "queue=asked-for") == {"asked-for": 0}
    assert values(store, "buildkite_jobs_runnable") == {"configured": 0, "other": 2}


def test_a_queue_that_disappears_goes_to_zero(clock: Clock) -> None:
    store = MetricStore([], clock=clock)
    store.record_snapshot(snapshot(clock.now, gone=QueueMetrics(scheduled=9, running=1)))
    clock.now += 5
    store.record_snapshot(snapshot(clock.now))
    assert values(store, "buildkite_jobs_runnable") == {"gone": 0}


def test_no_data_before_the_first_poll(clock: Clock) -> None:
    store = MetricStore(["q"], clock=clock)
    store.record_failure("metrics", "GET /metrics: HTTP 401: bad token")
    with pytest.raises(NoData, match=r"no successful poll.*HTTP 401"):
        store.query("buildkite_jobs_runnable", parse_selector("queue=q"))


def test_stale_data_is_an_error_never_a_zero(clock: Clock) -> None:
    store = MetricStore(["q"], interval=10, stale_intervals=3, clock=clock)
    store.record_snapshot(snapshot(clock.now, q=QueueMetrics(scheduled=4)))
    clock.now += 30  # exactly at the limit: still served
    assert values(store, "buildkite_jobs_scheduled", "queue=q") == {"q": 4}
    store.record_failure("metrics", "GET /metrics: HTTP 503: Organization is unavailable")
    clock.now += 1
    with pytest.raises(StaleData, match=r"31.0s ago \(limit 30s = 3 poll intervals\).*503") as exc:
        store.query("buildkite_jobs_scheduled", parse_selector("queue=q"))
    assert exc.value.status == 503
    # Also for queues it never heard of: no confident zero from stale data.
    with pytest.raises(StaleData):
        store.query("buildkite_jobs_scheduled", parse_selector("queue=never-seen"))
    # A fresh poll heals it.
    store.record_snapshot(snapshot(clock.now, q=QueueMetrics(scheduled=1)))
    assert values(store, "buildkite_jobs_scheduled", "queue=q") == {"q": 1}


def test_staleness_follows_the_effective_interval(clock: Clock) -> None:
    store = MetricStore(["q"], interval=10, stale_intervals=3, clock=clock)
    store.record_snapshot(snapshot(clock.now, q=QueueMetrics()))
    store.set_interval(60)  # Buildkite asked for slower polling
    clock.now += 120
    assert values(store, "buildkite_jobs_scheduled", "queue=q") == {"q": 0}
    assert store.stale_after == 180


def test_unknown_metric(clock: Clock) -> None:
    store = MetricStore(["q"], clock=clock)
    with pytest.raises(UnknownMetric) as exc:
        store.query("buildkite_jobs_everything", parse_selector(""))
    assert exc.value.status == 404


def test_selector_matching_nothing_gives_an_empty_list(clock: Clock) -> None:
    store = MetricStore(["a"], clock=clock)
    store.record_snapshot(snapshot(clock.now, a=QueueMetrics()))
    assert values(store, "buildkite_jobs_scheduled", "queue notin (a)") == {}


def test_oldest_age_per_queue_and_its_own_staleness(clock: Clock) -> None:
    store = MetricStore(["a", "b"], interval=10, clock=clock)
    store.record_snapshot(snapshot(clock.now))
    with pytest.raises(NoData):
        store.query(AGE_METRIC, parse_selector("queue=a"))
    store.record_ages({"a": 42.5, "b": 0.0}, at=clock.now)
    assert values(store, AGE_METRIC) == {"a": 42.5, "b": 0.0}
    clock.now += 25
    store.record_ages({"a": 60.0}, at=clock.now)  # b's poll failed
    store.record_failure("scheduled-jobs", "GET /stacks/x/scheduled-jobs: HTTP 429")
    store.record_snapshot(snapshot(clock.now))
    assert values(store, AGE_METRIC, "queue=a") == {"a": 60.0}
    clock.now += 10
    with pytest.raises(StaleData, match="429"):
        store.query(AGE_METRIC, parse_selector("queue=b"))
    # Counts are fresh: staleness is per source and per value.
    assert values(store, "buildkite_jobs_scheduled", "queue=b") == {"b": 0}


def test_age_for_an_unconfigured_queue_is_unavailable(clock: Clock) -> None:
    store = MetricStore(["a"], clock=clock)
    store.record_ages({"a": 1.0}, at=clock.now)
    with pytest.raises(MetricUnavailable, match="not one of the adapter's queues"):
        store.query(AGE_METRIC, parse_selector("queue=zzz"))


def test_unavailable_metric_says_why(clock: Clock) -> None:
    store = MetricStore(["a"], clock=clock)
    store.set_unavailable(AGE_METRIC, "the agent token is not a cluster token")
    with pytest.raises(MetricUnavailable, match="not a cluster token") as exc:
        store.query(AGE_METRIC, parse_selector("queue=a"))
    assert exc.value.status == 404
    store.set_unavailable(AGE_METRIC, None)
    with pytest.raises(NoData):
        store.query(AGE_METRIC, parse_selector("queue=a"))


def test_status_reports_last_success_and_error(clock: Clock) -> None:
    store = MetricStore(["a"], clock=clock)
    store.record_snapshot(snapshot(clock.now))
    store.record_failure("scheduled-jobs", "boom")
    status = store.status()
    assert status["metrics"]["last_success"] == clock.now
    assert status["scheduled-jobs"]["last_error"] == "boom"
    assert store.known_queues == ["a"]
