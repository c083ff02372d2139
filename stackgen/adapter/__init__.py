"""The external-metrics API server (``external.metrics.k8s.io/v1beta1``) for ``hpa`` queues.

Pure parts: :mod:`.selectors` (label selectors), :mod:`.store` (per-queue values and their
freshness), :mod:`.api` (request → response) and :mod:`.auth` (front-proxy checks).
I/O: :mod:`.poller` (Buildkite), :mod:`.tls` and :mod:`.server` (HTTPS).
See docs/metrics-adapter.md.
"""

from stackgen.adapter.api import AdapterAPI, Response, format_quantity
from stackgen.adapter.auth import (
    AuthConfigError,
    AuthConfigProvider,
    RequestHeaderConfig,
    Unauthenticated,
    User,
    authenticate,
)
from stackgen.adapter.selectors import Selector, SelectorError, parse_selector
from stackgen.adapter.store import (
    METRICS,
    MetricError,
    MetricStore,
    MetricUnavailable,
    NoData,
    Sample,
    StaleData,
    UnknownMetric,
)

__all__ = [
    "METRICS",
    "AdapterAPI",
    "AuthConfigError",
    "AuthConfigProvider",
    "MetricError",
    "MetricStore",
    "MetricUnavailable",
    "NoData",
    "RequestHeaderConfig",
    "Response",
    "Sample",
    "Selector",
    "SelectorError",
    "StaleData",
    "Unauthenticated",
    "UnknownMetric",
    "User",
    "authenticate",
    "format_quantity",
    "parse_selector",
]
