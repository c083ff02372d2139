"""A fake Buildkite for tests and benchmarks (test support, never shipped).

It speaks the wire formats written down in ``shared/BUILDKITE_API.md``.  One module per
part of the API, each listing its routes (:mod:`.routes` collects them):

* :mod:`.metrics`: ``GET /v3/metrics`` (and ``/metrics/queue``), ``GET /v3/token``;
* :mod:`.stacks_api`: the Stacks API (register, scheduled jobs, reserve, finish,
  notifications, job-acquisition tokens) with its per-scope rate limits;
* :mod:`.agent_api`: what a real ``buildkite-agent start`` calls (register, connect,
  ping with job offers, heartbeat, disconnect);
* :mod:`.jobs_api`: what an agent does with one job (acquire or accept, start, log
  chunks, header times, finish, its state);
* :mod:`.meta_data_api`: build meta-data (``buildkite-agent meta-data``, the checkout);

around them :mod:`.state` (jobs, queues, stacks, agents, clock, faults), :mod:`.control`
and :mod:`.agent_control` (what a test drives it by, also over HTTP under ``/_fake/``),
:mod:`.server` (HTTP, 127.0.0.1 by default, in a daemon thread), :mod:`.webhooks` (what
Buildkite pushes: ``job.scheduled`` webhooks, EventBridge events), :mod:`.client` (a plain
HTTP client) and :mod:`.ctl` (a client and CLI of a running fake's control API)::

    with FakeBuildkite(token="t0k3n", clock=VirtualClock()) as bk:
        bk.add_jobs("default", 3)
        ...  # point the code under test at bk.endpoint

    with FakeBuildkite(token="t0k3n") as bk:  # a real agent: --endpoint bk.endpoint
        uuid = bk.enqueue("default", "make test")
        job = bk.wait_for_job(uuid)  # job.exit_status, bk.job_log(uuid, plain=True)

It also runs as a separate process: ``python -m tests.support.fake_buildkite --port 0
--token-file F`` prints the URL and serves until SIGTERM/SIGINT (only the standard library
is needed); ``python -m tests.support.fake_buildkite.ctl`` drives it.
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
