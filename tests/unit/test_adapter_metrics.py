"""The metrics adapter's own Prometheus metrics: read from the store at scrape time."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stackgen.adapter.metrics import AdapterMetrics
from stackgen.adapter.store import MetricStore
from stackgen.buildkite.models import MetricsSnapshot, QueueMetrics

START = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def _samples(metrics: AdapterMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_values_last_success_and_staleness() -> None:
    clock = Clock()
    store = MetricStore(["default"], interval=10, stale_intervals=3, clock=clock)
    metrics = AdapterMetrics(store, clock=clock)
    before = _samples(metrics)
    # Before any poll: the last success is the process start, and the data is stale.
    assert (
        before[("stackgen_adapter_last_success_timestamp_seconds", (("source", "metrics"),))]
        == START
    )
    assert before[("stackgen_adapter_stale", (("source", "metrics"),))] == 1.0
    assert ("stackgen_adapter_polls_total", (("result", "error"), ("source", "metrics"))) in before

    clock.now += 5
    snapshot = MetricsSnapshot(
        organization="acme",
        cluster=None,
        queues={"default": QueueMetrics(scheduled=4, running=2, waiting=1)},
        fetched_at=clock.now,
    )
    store.record_snapshot(snapshot, at=clock.now)
    metrics.count_poll("metrics", True)
    fresh = _samples(metrics)
    assert fresh[("stackgen_adapter_buildkite_jobs_scheduled", (("queue", "default"),))] == 4
    assert fresh[("stackgen_adapter_buildkite_jobs_runnable", (("queue", "default"),))] == 6
    assert fresh[("stackgen_adapter_buildkite_jobs_waiting", (("queue", "default"),))] == 1
    assert (
        fresh[("stackgen_adapter_last_success_timestamp_seconds", (("source", "metrics"),))]
        == START + 5
    )
    assert fresh[("stackgen_adapter_stale", (("source", "metrics"),))] == 0.0
    assert fresh[("stackgen_adapter_polls_total", (("result", "ok"), ("source", "metrics")))] == 1

    clock.now += 31  # past 3 intervals of 10 s: the HPAs get "stale" errors now
    stale = _samples(metrics)
    assert stale[("stackgen_adapter_stale", (("source", "metrics"),))] == 1.0
    assert (
        stale[("stackgen_adapter_last_success_timestamp_seconds", (("source", "metrics"),))]
        == START + 5
    )


def test_the_poller_counts_its_polls_by_result() -> None:
    from stackgen.adapter.poller import Poller
    from stackgen.buildkite import AgentAPI
    from tests.support.fake_buildkite import FakeBuildkite

    token = "adapter-metrics-token-0123456789"
    with FakeBuildkite(token, queues=("alpha",), default_queue="alpha") as fake:
        store = MetricStore(["alpha"], interval=1)
        metrics = AdapterMetrics(store)
        api = AgentAPI(fake.endpoint, token)
        poller = Poller(
            api,
            store,
            interval=1,
            queues=("alpha",),
            on_poll=metrics.count_poll,
        )
        poller.poll_once()
        fake.inject("metrics", "503", times=2)
        poller.poll_once()
        poller.poll_once()
        api.close()
    samples = _samples(metrics)
    assert samples[("stackgen_adapter_polls_total", (("result", "ok"), ("source", "metrics")))] == 1
    assert (
        samples[("stackgen_adapter_polls_total", (("result", "error"), ("source", "metrics")))] == 2
    )
