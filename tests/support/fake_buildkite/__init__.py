"""A fake Buildkite for tests and benchmarks (test support, never shipped).

It speaks the wire formats written down in ``shared/BUILDKITE_API.md``.  One module per
part of the API, each listing its routes (:mod:`.routes` collects them):

* :mod:`.metrics`: ``GET /v3/metrics`` (and ``/metrics/queue``), ``GET /v3/token``;
* :mod:`.stacks_api`: the Stacks API (register, scheduled jobs, reserve, finish,
  notifications, job-acquisition tokens) with its per-scope rate limits;
* :mod:`.jobs_api`: the agent's ``PUT /v3/jobs/:id/acquire`` and ``GET /v3/jobs/:id``;

around them :mod:`.state` (jobs, queues, stacks, clock, faults), :mod:`.control` (what a
test drives it by, also over HTTP under ``/_fake/``), :mod:`.server` (HTTP on 127.0.0.1,
in a daemon thread), :mod:`.webhooks` (what Buildkite pushes: ``job.scheduled`` webhooks,
EventBridge events) and :mod:`.client` (a plain HTTP client)::

    with FakeBuildkite(token="t0k3n", clock=VirtualClock()) as bk:
        bk.add_jobs("default", 3)
        ...  # point the code under test at bk.endpoint

It also runs as a separate process: ``python -m tests.support.fake_buildkite --port 0
--token T`` prints the URL and serves until SIGTERM/SIGINT.
"""

from tests.support.fake_buildkite.client import HttpResponse, http_request
from tests.support.fake_buildkite.server import FakeBuildkite
from tests.support.fake_buildkite.state import FakeJob, RequestRecord, VirtualClock
from tests.support.fake_buildkite.webhooks import (
    WebhookDelivery,
    eventbridge_job_scheduled,
    rest_job,
    send_webhook,
    sign_webhook,
    webhook_payload,
)
from tests.support.fake_buildkite.wire import (
    DEFAULT_QUEUE_KEYS,
    FAULT_KINDS,
    JOB_STATES,
    RATE_LIMITS,
    FaultKind,
    eventbridge_timestamp,
    iso_timestamp,
)

__all__ = [
    "DEFAULT_QUEUE_KEYS",
    "FAULT_KINDS",
    "JOB_STATES",
    "RATE_LIMITS",
    "FakeBuildkite",
    "FakeJob",
    "FaultKind",
    "HttpResponse",
    "RequestRecord",
    "VirtualClock",
    "WebhookDelivery",
    "eventbridge_job_scheduled",
    "eventbridge_timestamp",
    "http_request",
    "iso_timestamp",
    "rest_job",
    "send_webhook",
    "sign_webhook",
    "webhook_payload",
]
