"""The adapter's own Prometheus metrics, on a plain-HTTP port of their own (``/metrics``).

The external-metrics API needs the API aggregator's client certificate, so Prometheus
cannot scrape it; ``--metrics-port`` serves these instead (Buildkite counts are not
secret).  Everything is read from the store at scrape time:

* ``stackgen_adapter_<metric>{queue}``: each value the HPAs are served (e.g.
  ``stackgen_adapter_buildkite_jobs_scheduled``), fresh or not;
* ``stackgen_adapter_last_success_timestamp_seconds{source}``: the last successful poll
  of each source (``metrics``, ``scheduled-jobs``), or the process start before any, so
  ``time() - …`` is how stale the served data is;
* ``stackgen_adapter_stale{source}``: 1 while the adapter answers that source's metrics
  with "stale" or "no data" errors (what the HPAs see);
* ``stackgen_adapter_polls_total{source,result}``: polls by outcome.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from stackgen.adapter.store import METRICS, SOURCE_COUNTS, SOURCE_JOBS, MetricStore
from stackgen.common.httpserve import GuardedHandler, GuardedServer

__all__ = ["AdapterMetrics", "serve_metrics"]

PREFIX = "stackgen_adapter_"


class _StoreCollector(Collector):
    def __init__(self, store: MetricStore, started: float, clock: Any) -> None:
        self.store = store
        self.started = started
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_metric: dict[str, GaugeMetricFamily] = {
            name: GaugeMetricFamily(PREFIX + name, spec.description, labels=["queue"])
            for name, spec in METRICS.items()
        }
        for (metric, queue), sample in sorted(self.store.samples().items()):
            if metric in by_metric:
                by_metric[metric].add_metric([queue], sample.value)
        yield from by_metric.values()
        status = self.store.status()
        last = GaugeMetricFamily(
            PREFIX + "last_success_timestamp_seconds",
            "Unix time of the last successful Buildkite poll per source (process start before any).",
            labels=["source"],
        )
        stale = GaugeMetricFamily(
            PREFIX + "stale",
            "1 while the source's metrics are answered with stale or no-data errors.",
            labels=["source"],
        )
        now = self.clock()
        limit = self.store.stale_after
        for source in (SOURCE_COUNTS, SOURCE_JOBS):
            success = status.get(source, {}).get("last_success")
            at = float(success) if isinstance(success, int | float) else None
            last.add_metric([source], at if at is not None else self.started)
            stale.add_metric([source], 1.0 if at is None or now - at > limit else 0.0)
        yield last
        yield stale


class AdapterMetrics:
    """The adapter's registry and the counters the poller feeds."""

    def __init__(self, store: MetricStore, *, clock: Any = time.time) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StoreCollector(store, clock(), clock))
        self.polls = Counter(
            PREFIX + "polls_total",
            "Buildkite polls by source and result (ok, error).",
            ["source", "result"],
            registry=self.registry,
        )
        for source in (SOURCE_COUNTS, SOURCE_JOBS):
            for result in ("ok", "error"):
                self.polls.labels(source, result)

    def count_poll(self, source: str, ok: bool) -> None:
        """The poller's ``on_poll``: one poll of ``source`` and how it went."""
        self.polls.labels(source, "ok" if ok else "error").inc()


def serve_metrics(metrics: AdapterMetrics, address: str, port: int) -> GuardedServer:
    """Serve ``/metrics`` on ``address:port`` in a daemon thread; returns the server.

    Plain HTTP, through the same guarded server as the adapter's API (bounded
    connections, deadlines, JSON error logs).
    """
    registry = metrics.registry

    class Handler(GuardedHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0].rstrip("/") not in ("/metrics", ""):
                self.send_error(404)
                return
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    server = _MetricsServer((address, port), Handler, family)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


class _MetricsServer(GuardedServer):
    def __init__(
        self, address: tuple[str, int], handler: Any, family: socket.AddressFamily
    ) -> None:
        self.address_family = family
        super().__init__(address, handler, max_connections=16, request_seconds=10.0)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the address (slow, useless here)."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
