"""The fake Buildkite speaks the wire formats of shared/BUILDKITE_API.md over real HTTP."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_buildkite import (
    FAULT_KINDS,
    FakeBuildkite,
    FakeJob,
    HttpResponse,
    VirtualClock,
    eventbridge_job_scheduled,
    http_request,
    send_webhook,
    sign_webhook,
)

TOKEN = "bkct_fake-cluster-token-0123456789"
REPO_ROOT = Path(__file__).resolve().parents[2]
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
EB_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")
RATE_HEADERS = ("ratelimit-scope", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(1_700_000_000.0)


@pytest.fixture
def fake(clock: VirtualClock) -> Iterator[FakeBuildkite]:
    with FakeBuildkite(
        TOKEN,
        organization_slug="acme",
        cluster_name="Default",
        queues=("default", "gpu"),
        clock=clock,
    ) as bk:
        yield bk


class Api:
    """A tiny client for the fake (one keep-alive httpx client when installed, else urllib)."""

    def __init__(self, fake: FakeBuildkite, client: Any, token: str | None = TOKEN) -> None:
        self.fake = fake
        self.client = client
        self.token = token

    def __call__(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = "default",
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        sent = {"Accept": "application/json", "Content-Type": "application/json"}
        use = self.token if token == "default" else token
        if use is not None:
            sent["Authorization"] = f"Token {use}"
        sent.update(headers or {})
        data = json.dumps(body).encode() if body is not None else None
        return http_request(
            method, self.fake.endpoint + path, headers=sent, body=data, client=self.client
        )

    def register(self, key: str = "stack-a", queue_key: str = "default") -> HttpResponse:
        body = {"key": key, "type": "custom", "queue_key": queue_key, "metadata": {"v": "1"}}
        return self("POST", "/stacks/register", body)

    def list(self, key: str = "stack-a", query: str = "queue_key=default") -> HttpResponse:
        return self("GET", f"/stacks/{key}/scheduled-jobs?{query}")

    def reserve(self, uuids: list[str], key: str = "stack-a", **extra: Any) -> HttpResponse:
        return self(
            "PUT", f"/stacks/{key}/scheduled-jobs/batch-reserve", {"job_uuids": uuids, **extra}
        )


@pytest.fixture
def api(fake: FakeBuildkite) -> Iterator[Api]:
    try:
        import httpx
    except ImportError:
        yield Api(fake, None)
        return
    with httpx.Client(timeout=5, verify=False) as client:  # plain http to 127.0.0.1
        yield Api(fake, client)


def listed_ids(resp: HttpResponse) -> list[str]:
    assert resp.status == 200, resp.body
    return [j["id"] for j in resp.json()["jobs"]]


# --------------------------------------------------------------------------- auth


def test_auth_failures_use_buildkite_message_shape_and_never_echo_the_token(
    fake: FakeBuildkite, api: Api
) -> None:
    missing = api("GET", "/metrics", token=None)
    assert missing.status == 401
    assert set(missing.json()) == {"message"}

    wrong_token = "bkct_wrong-token-abcdefghijkl"
    wrong = api("GET", "/metrics", token=wrong_token)
    assert wrong.status == 401
    message = wrong.json()["message"]
    assert message.startswith('The token you provided "')
    assert message.endswith("is not a valid organization agent registration token.")
    assert wrong_token not in message

    stacks = api("POST", "/stacks/register", {"key": "x"}, token=wrong_token)
    assert stacks.status == 401
    assert all(h in stacks.headers for h in RATE_HEADERS)

    statuses = [(r.path, r.status) for r in fake.requests]
    assert statuses == [("/v3/metrics", 401), ("/v3/metrics", 401), ("/v3/stacks/register", 401)]
    assert TOKEN not in repr(fake.requests) + repr(fake)
    assert wrong_token not in repr(fake.requests)


def test_unknown_route_is_404_with_message(api: Api) -> None:
    resp = api("GET", "/nope")
    assert resp.status == 404
    assert "message" in resp.json()


# --------------------------------------------------------------------------- metrics and token


def test_metrics_shape_and_poll_duration_header(fake: FakeBuildkite, api: Api) -> None:
    uuids = fake.add_jobs("default", 5)
    fake.acquire_job(uuids[0])
    fake.add_job("default", state="waiting")
    fake.set_agents("default", idle=1, busy=1)

    resp = api("GET", "/metrics")
    assert resp.status == 200
    assert resp.headers["buildkite-agent-metrics-poll-duration"] == "10"
    assert resp.json() == {
        "agents": {
            "idle": 1,
            "busy": 1,
            "total": 2,
            "queues": {
                "default": {"idle": 1, "busy": 1, "total": 2},
                "gpu": {"idle": 0, "busy": 0, "total": 0},
            },
        },
        "jobs": {
            "scheduled": 4,
            "running": 1,
            "waiting": 1,
            "total": 6,
            "queues": {
                "default": {"scheduled": 4, "running": 1, "waiting": 1, "total": 6},
                "gpu": {"scheduled": 0, "running": 0, "waiting": 0, "total": 0},
            },
        },
        "organization": {"slug": "acme"},
        "cluster": {"name": "Default"},
    }


def test_two_queues_are_counted_independently(fake: FakeBuildkite, api: Api) -> None:
    fake.add_jobs("default", 3)
    gpu = fake.add_jobs("gpu", 2)
    fake.start_job(gpu[0])
    fake.set_agents("gpu", idle=0, busy=1)

    queues = api("GET", "/metrics").json()["jobs"]["queues"]
    assert queues["default"] == {"scheduled": 3, "running": 0, "waiting": 0, "total": 3}
    assert queues["gpu"] == {"scheduled": 1, "running": 1, "waiting": 0, "total": 2}

    one = api("GET", "/metrics/queue?name=gpu")
    assert one.status == 200
    assert one.headers["buildkite-agent-metrics-poll-duration"] == "10"
    body = one.json()
    assert body["jobs"] == {"scheduled": 1, "running": 1, "waiting": 0, "total": 2}
    assert body["agents"] == {"idle": 0, "busy": 1, "total": 1}
    assert "queues" not in body["jobs"] and "queues" not in body["agents"]
    assert body["organization"] == {"slug": "acme"}


def test_token_identity(fake: FakeBuildkite, api: Api) -> None:
    resp = api("GET", "/token")
    assert resp.status == 200
    body = resp.json()
    assert set(body) == {
        "uuid",
        "description",
        "token_type",
        "organization_slug",
        "organization_uuid",
        "cluster_uuid",
        "cluster_name",
        "organization_queue_uuid",
        "organization_queue_key",
    }
    assert body["cluster_uuid"] == fake.cluster_uuid != ""
    assert body["cluster_name"] == "Default"
    assert body["organization_slug"] == "acme"


# --------------------------------------------------------------------------- stacks


def test_register_new_existing_default_keys_and_deregister(fake: FakeBuildkite, api: Api) -> None:
    first = api.register(queue_key="_default")
    assert first.status == 201
    body = first.json()
    assert set(body) == {
        "id",
        "organization_uuid",
        "key",
        "type",
        "cluster_queue_key",
        "metadata",
        "last_connected_on",
        "state",
    }
    assert body["cluster_queue_key"] == "default"
    assert body["state"] == "connected"
    assert ISO_MS.match(body["last_connected_on"])

    again = api.register(queue_key="__default__")
    assert again.status == 200
    assert again.json()["id"] == body["id"]
    assert all(h in again.headers for h in RATE_HEADERS)
    assert again.headers["ratelimit-scope"] == "default"

    bad_type = api(
        "POST",
        "/stacks/register",
        {"key": "k", "type": "x", "queue_key": "default", "metadata": {}},
    )
    assert bad_type.status == 422
    bad_key = api.register(key="has.dot")
    assert bad_key.status == 422

    gone = api("POST", "/stacks/stack-a/deregister")
    assert gone.status == 204
    assert gone.body == b""
    assert api.list().status == 404
    assert fake.stacks["stack-a"]["state"] == "disconnected"


def test_reserve_hides_jobs_until_the_reservation_expires(
    fake: FakeBuildkite, api: Api, clock: VirtualClock
) -> None:
    api.register()
    uuids = [fake.add_job("default")]
    clock.advance(1)
    uuids += [fake.add_job("default", priority=5, step_key="test")]
    clock.advance(1)
    uuids += [fake.add_job("default")]

    listing = api.list()
    assert listed_ids(listing) == uuids  # oldest first
    body = listing.json()
    job = body["jobs"][1]
    assert job["priority"] == 5
    assert job["agent_query_rules"] == ["queue=default"]
    assert ISO_MS.match(job["scheduled_at"]) and ISO_MS.match(job["runnable_at"])
    assert set(job["pipeline"]) == {"slug", "uuid"}
    assert set(job["build"]) == {"number", "branch", "uuid"}
    assert job["step"] == {"key": "test"}
    assert body["page_info"]["has_next_page"] is False
    assert set(body["cluster_queue"]) == {"id", "dispatch_paused", "paused"}
    assert listing.headers["ratelimit-scope"] == "list-scheduled-jobs"

    reserved = api.reserve(uuids[:2], reservation_expiry_seconds=60)
    assert reserved.json() == {"reserved": uuids[:2], "not_reserved": []}
    assert listed_ids(api.list()) == uuids[2:]
    states = api("POST", "/stacks/stack-a/jobs/get-states", {"job_uuids": [*uuids, "nope"]})
    assert states.json() == {
        "states": {uuids[0]: "reserved", uuids[1]: "reserved", uuids[2]: "scheduled"}
    }
    assert fake.metrics()["jobs"]["scheduled"] == 3  # reserved jobs still wait for an agent

    clock.advance(61)
    assert listed_ids(api.list()) == uuids
    assert {j.state for j in fake.jobs()} == {"scheduled"}


def test_pagination_and_list_validation(fake: FakeBuildkite, api: Api, clock: VirtualClock) -> None:
    api.register()
    uuids = fake.add_jobs("default", 5)
    fake.add_jobs("gpu", 2)

    seen: list[str] = []
    after = ""
    pages = 0
    while True:
        resp = api.list(query=f"queue_key=default&limit=2{after}")
        seen += listed_ids(resp)
        pages += 1
        info = resp.json()["page_info"]
        if not info["has_next_page"]:
            break
        after = f"&after={info['end_cursor']}"
    assert seen == uuids
    assert pages == 3

    empty = api.list(query=f"queue_key=default&limit=2&after={info['end_cursor']}")
    assert empty.json()["jobs"] == [] and empty.json()["page_info"]["end_cursor"] is None

    clock.advance(1)  # a fresh rate-limit window (10 lists per second)
    for query in (
        "queue_key=default&limit=0",
        "queue_key=default&limit=1001",
        "queue_key=default&limit=abc",
        "queue_key=default&after=%21%21",
        "limit=5",
    ):
        bad = api.list(query=query)
        assert bad.status == 400, query
        assert "message" in bad.json()
    assert api.list(query="queue_key=missing").status == 404
    assert len(listed_ids(api.list(query="queue_key=gpu&limit=1000"))) == 2

    fake.pause_queue("default")
    assert api.list().json()["cluster_queue"]["dispatch_paused"] is True


def test_batch_reserve_not_reserved_and_extension(
    fake: FakeBuildkite, api: Api, clock: VirtualClock
) -> None:
    api.register("stack-a")
    api.register("stack-b")
    a, b, running = fake.add_jobs("default", 3)
    fake.start_job(running)

    first = api.reserve([a], "stack-a")
    assert first.json() == {"reserved": [a], "not_reserved": []}
    assert fake.job(a).reserved_until == clock() + 900  # the default

    other = api.reserve([a, b, running, "unknown"], "stack-b")
    assert other.json() == {"reserved": [b], "not_reserved": [a, running, "unknown"]}

    clock.advance(10)
    extended = api.reserve([a], "stack-a", reservation_expiry_seconds=3600)
    assert extended.json() == {"reserved": [a], "not_reserved": []}
    assert fake.job(a).reserved_until == clock() + 3600

    assert api.reserve([a], "stack-a", reservation_expiry_seconds=3601).status == 422
    assert api.reserve(["x"] * 1001, "stack-a").status == 422
    assert (
        api("PUT", "/stacks/stack-a/scheduled-jobs/batch-reserve", {"job_uuids": "x"}).status == 400
    )


def test_get_job_with_escaped_path_parameter(fake: FakeBuildkite, api: Api) -> None:
    api.register()
    fake.add_job("default", uuid="job.1", command="make test", env={"EXTRA": "1"})
    resp = api("GET", "/stacks/stack-a/jobs/job%2E1")
    assert resp.status == 200
    body = resp.json()
    assert set(body) == {"id", "env", "command"}
    assert body["id"] == "job.1"
    assert body["command"] == "make test"
    assert body["env"]["BUILDKITE_JOB_ID"] == "job.1"
    assert body["env"]["EXTRA"] == "1"
    assert resp.headers["ratelimit-scope"] == "show-job"
    assert api("GET", "/stacks/stack-a/jobs/unknown").status == 404


def test_finish_once_then_422(fake: FakeBuildkite, api: Api) -> None:
    api.register()
    uuid = fake.add_job("default")
    path = f"/stacks/stack-a/jobs/{uuid}/finish"
    assert api("POST", path, {"detail": "x" * 4097}).status == 422
    assert api("POST", path, {"exit_status": 1}).status == 422  # detail is required

    first = api("POST", path, {"detail": "image pull failed"})
    assert first.status == 200
    assert first.headers["ratelimit-scope"] == "finish-job"
    second = api("POST", path, {"exit_status": -1, "detail": "again"})
    assert second.status == 422
    assert "message" in second.json()

    assert fake.job(uuid).state == "finished"
    assert fake.job(uuid).exit_status == -1  # the documented default
    assert [(f["job_uuid"], f["detail"], f["exit_status"]) for f in fake.finished] == [
        (uuid, "image pull failed", -1)
    ]


def test_notifications_report_bad_entries_by_index(
    fake: FakeBuildkite, api: Api, clock: VirtualClock
) -> None:
    api.register()
    uuid = fake.add_job("default")
    future = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock() + 3600))
    batch = [
        {"job_uuid": uuid, "detail": "pod pending"},
        {"job_uuid": uuid, "detail": ""},
        {"job_uuid": uuid, "detail": "x" * 257},
        {"job_uuid": "unknown", "detail": "hi"},
        {"job_uuid": uuid, "detail": "x" * 256},
        {"job_uuid": uuid},
        {"job_uuid": uuid, "detail": "later", "timestamp": future},
    ]
    resp = api("POST", "/stacks/stack-a/notifications", {"notifications": batch})
    assert resp.status == 200
    assert resp.headers["ratelimit-scope"] == "stack-notification"
    errors = {e["error"]: e["indexes"] for e in resp.json()["errors"]}
    assert sorted(i for idx in errors.values() for i in idx) == [1, 2, 3, 5, 6]
    assert errors["detail is required"] == [1, 5]
    assert [n["detail"] for n in fake.notifications] == ["pod pending", "x" * 256]
    assert all(n["stack_key"] == "stack-a" for n in fake.notifications)

    ok = api("POST", "/stacks/stack-a/notifications", {"notifications": [batch[0]]})
    assert ok.json() == {"errors": []}
    assert api("POST", "/stacks/stack-a/notifications", {"notifications": "x"}).status == 400


def test_job_acquisition_tokens(fake: FakeBuildkite, api: Api, clock: VirtualClock) -> None:
    api.register()
    a, b, running = fake.add_jobs("default", 3)
    fake.start_job(running)
    api.reserve([a])

    resp = api(
        "POST",
        "/stacks/stack-a/job-acquisition-tokens",
        {"job_uuids": [a, b, running, "unknown"], "token_lifetime_seconds": 120},
    )
    assert resp.status == 201
    body = resp.json()
    assert body["not_issued"] == [running, "unknown"]
    tokens = {t["job_uuid"]: t for t in body["job_acquisition_tokens"]}
    assert set(tokens) == {a, b}
    assert all(t["job_acquisition_token"].startswith("bkjat_") for t in tokens.values())
    assert all(ISO_MS.match(t["expires_at"]) for t in tokens.values())

    token_a = tokens[a]["job_acquisition_token"]
    assert api("PUT", f"/jobs/{b}/acquire", token=token_a).status == 401  # only its own job
    assert api("PUT", f"/jobs/{a}/acquire", token=token_a).status == 200
    clock.advance(121)
    expired = tokens[b]["job_acquisition_token"]
    assert api("PUT", f"/jobs/{b}/acquire", token=expired).status == 401


def test_acquire_200_422_423(fake: FakeBuildkite, api: Api) -> None:
    scheduled, waiting, finished = fake.add_jobs("default", 3)
    fake.set_job_state(waiting, "waiting")
    fake.finish_job(finished)

    first = api("PUT", f"/jobs/{scheduled}/acquire", headers={"X-Buildkite-Lock-Acquire-Job": "1"})
    assert first.status == 200
    assert first.json()["id"] == scheduled
    assert first.json()["state"] == "assigned"
    assert fake.job(scheduled).state == "assigned"
    assert fake.metrics("default")["jobs"]["running"] == 1

    again = api("PUT", f"/jobs/{scheduled}/acquire")
    assert again.status == 422 and "message" in again.json()
    locked = api("PUT", f"/jobs/{waiting}/acquire")
    assert locked.status == 423
    assert locked.headers["retry-after"] == "1"
    assert api("PUT", f"/jobs/{finished}/acquire").status == 422
    assert api("GET", f"/jobs/{scheduled}").json() == {"state": "assigned"}

    fake.set_job_state(waiting, "scheduled")
    assert fake.acquire_job(waiting) == 200
    fake.start_job(waiting)
    fake.finish_job(waiting, exit_status=3)
    assert fake.job(waiting).exit_status == 3
    assert fake.acquire_job(waiting) == 422


# --------------------------------------------------------------------------- rate limits


def test_rate_limit_429_headers_and_body(
    fake: FakeBuildkite, api: Api, clock: VirtualClock
) -> None:
    api.register()
    remaining = []
    for _ in range(10):
        resp = api.list()
        assert resp.status == 200
        assert resp.headers["ratelimit-limit"] == "10"
        remaining.append(int(resp.headers["ratelimit-remaining"]))
    assert remaining == list(range(9, -1, -1))

    limited = api.list()
    assert limited.status == 429
    assert limited.json() == {
        "message": "You have exceeded your API rate limit. "
        "Please wait 1 seconds before making more requests.",
        "scope": "list-scheduled-jobs",
        "limit": 10,
        "current": 11,
        "reset": 1,
    }
    assert limited.headers["retry-after"] == "1"
    assert limited.headers["ratelimit-scope"] == "list-scheduled-jobs"
    assert limited.headers["ratelimit-remaining"] == "0"

    # Scopes (and stacks) are independent; the window slides with the clock.
    assert api("POST", "/stacks/stack-a/jobs/get-states", {"job_uuids": []}).status == 200
    api.register("stack-b")
    assert api.list("stack-b").status == 200
    clock.advance(1.0)
    assert api.list().status == 200


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize("kind", [k for k in FAULT_KINDS if k != "slow"])
def test_every_fault_kind_then_recovery(fake: FakeBuildkite, api: Api, kind: str) -> None:
    fake.add_job("default")
    fake.inject("metrics", kind, times=2, seconds=3 if kind in ("429", "503") else None)
    for _ in range(2):
        resp = api("GET", "/metrics")
        if kind == "garbage":
            assert resp.status == 200
            with pytest.raises(ValueError):
                resp.json()
        elif kind == "truncated":
            assert resp.status == 200
            assert resp.body.startswith(b'{"agents"')
            with pytest.raises(ValueError):
                resp.json()
        else:
            assert resp.status == int(kind)
            assert "message" in resp.json()
        if kind in ("429", "503"):
            assert resp.headers["retry-after"] == "3"
        if kind == "429":
            assert resp.json()["reset"] == 3
    assert api("GET", "/metrics").json()["jobs"]["scheduled"] == 1
    assert fake.pending_faults == []


def test_slow_fault_and_faults_are_consumed_in_order(fake: FakeBuildkite, api: Api) -> None:
    api.register()
    fake.inject("/v3/stacks/stack-a", "500")
    fake.inject("list_scheduled_jobs", "slow", seconds=0.2)
    fake.inject("/v3/stacks", "503")

    assert api.list().status == 500
    started = time.monotonic()
    slow = api.list()
    assert time.monotonic() - started >= 0.2
    assert slow.status == 200
    assert api("GET", "/stacks/stack-a/jobs/x").status == 503
    assert api.list().status == 200
    assert [r.status for r in fake.requests][-4:] == [500, 200, 503, 200]

    with pytest.raises(ValueError):
        fake.inject("metrics", "teapot")
    with pytest.raises(ValueError):
        fake.inject("no_such_route", "500")


def test_injected_fault_on_stacks_route_keeps_rate_headers(fake: FakeBuildkite, api: Api) -> None:
    api.register()
    fake.inject("list_scheduled_jobs", "429")
    resp = api.list()
    assert resp.status == 429
    assert resp.headers["retry-after"] == "1"
    assert all(h in resp.headers for h in RATE_HEADERS)
    assert resp.json()["scope"] == "list-scheduled-jobs"


# --------------------------------------------------------------------------- webhooks


class _Receiver(BaseHTTPRequestHandler):
    captured: list[tuple[dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.captured.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    captured: list[tuple[dict[str, str], bytes]] = []
    handler = type("Receiver", (_Receiver,), {"captured": captured})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/webhooks", captured
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_webhook_signature_is_a_correct_hmac(
    receiver: tuple[str, list[tuple[dict[str, str], bytes]]],
) -> None:
    url, captured = receiver
    job = FakeJob(queue="gpu", step_key="build")
    key = "webhook-secret"
    delivery = send_webhook(url, job=job, hmac_key=key, timestamp=1_700_000_123)
    assert delivery.status == 202

    headers, body = captured[0]
    assert body == delivery.body
    assert headers["x-buildkite-event"] == "job.scheduled"
    assert "x-buildkite-token" not in headers
    match = re.fullmatch(
        r"timestamp=(\d+),signature=([0-9a-f]{64})", headers["x-buildkite-signature"]
    )
    assert match is not None
    assert match[1] == "1700000123"
    expected = hmac.new(key.encode(), b"1700000123." + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(match[2], expected)
    assert sign_webhook(body, key, 1_700_000_123) == headers["x-buildkite-signature"]

    payload = json.loads(body)
    assert set(payload) == {"event", "job", "build", "pipeline", "sender"}
    assert payload["event"] == "job.scheduled"
    assert payload["job"]["id"] == job.uuid
    assert payload["job"]["agent_query_rules"] == ["queue=gpu"]
    assert payload["job"]["step_key"] == "build"
    for name in ("type", "state", "scheduled_at", "runnable_at", "command"):
        assert name in payload["job"]
    assert set(payload["sender"]) == {"id", "name"}


def test_webhook_token_mode(receiver: tuple[str, list[tuple[dict[str, str], bytes]]]) -> None:
    url, captured = receiver
    delivery = send_webhook(url, token="plain-token")
    assert delivery.status == 202
    headers, _ = captured[0]
    assert headers["x-buildkite-token"] == "plain-token"
    assert "x-buildkite-signature" not in headers
    with pytest.raises(ValueError):
        send_webhook(url, mode="token")


def test_eventbridge_job_scheduled_shape() -> None:
    job = FakeJob(queue="default", step_key="test", scheduled_at=1_565_503_274.0)
    event = eventbridge_job_scheduled(job, organization_slug="acme")
    assert event["detail-type"] == "Job Scheduled"
    assert event["version"] == "0"
    assert event["source"].startswith("aws.partner/buildkite.com/")
    assert event["resources"] == []
    for name in ("id", "account", "time", "region"):
        assert event[name]
    detail = event["detail"]
    assert detail["version"] == 1
    assert set(detail) == {"version", "job", "build", "pipeline", "organization"}
    assert detail["job"]["uuid"] == job.uuid
    assert "id" not in detail["job"]
    assert detail["job"]["runnable_at"] == "2019-08-11 06:01:14 UTC"
    assert EB_TIME.match(detail["job"]["runnable_at"])
    assert detail["job"]["agent_query_rules"] == ["queue=default"]
    assert set(detail["pipeline"]) >= {"uuid", "slug", "repo"}
    assert set(detail["organization"]) >= {"uuid", "slug"}
    assert detail["organization"]["slug"] == "acme"


# --------------------------------------------------------------------------- standalone process


def test_runs_as_a_separate_process_until_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.fake_buildkite",
            "--port",
            "0",
            "--token",
            TOKEN,
            "--jobs",
            "default=2",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), url
        headers = {"Authorization": f"Token {TOKEN}"}
        metrics = http_request("GET", url + "/v3/metrics", headers=headers)
        assert metrics.json()["jobs"]["scheduled"] == 2
        added = http_request(
            "POST", url + "/_fake/jobs", body=json.dumps({"queue": "default", "count": 1}).encode()
        )
        assert added.status == 201
        assert (
            http_request("GET", url + "/v3/metrics", headers=headers).json()["jobs"]["total"] == 3
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=5)
    assert proc.returncode == 0, err
    assert TOKEN not in err


# --------------------------------------------------------------------------- control API: agents


def control(fake: FakeBuildkite, method: str, path: str, body: Any = None) -> HttpResponse:
    data = json.dumps(body).encode() if body is not None else None
    return http_request(method, fake.url + "/_fake" + path, body=data)


def test_control_api_drives_one_job_as_an_agent_would(fake: FakeBuildkite, api: Api) -> None:
    uuid = fake.add_job("default")
    assert control(fake, "GET", f"/jobs/{uuid}").json()["state"] == "scheduled"

    first = control(fake, "POST", f"/jobs/{uuid}/acquire")
    assert first.status == 200
    assert first.json() == {"acquire_status": 200, "state": "assigned"}
    # A second agent (a duplicate pod) is refused, as PUT /v3/jobs/:id/acquire refuses it.
    assert control(fake, "POST", f"/jobs/{uuid}/acquire").json()["acquire_status"] == 422

    started = control(fake, "POST", f"/jobs/{uuid}/start")
    assert started.status == 200 and started.json()["state"] == "running"
    assert api("POST", "/stacks/stack-a/jobs/get-states", {"job_uuids": [uuid]}).status == 404
    api.register()
    states = api("POST", "/stacks/stack-a/jobs/get-states", {"job_uuids": [uuid]}).json()
    assert states == {"states": {uuid: "running"}}

    done = control(fake, "POST", f"/jobs/{uuid}/finish", {"exit_status": 3})
    assert done.status == 200
    assert (done.json()["state"], done.json()["exit_status"]) == ("finished", 3)
    again = control(fake, "POST", f"/jobs/{uuid}/finish", {})
    assert again.status == 409 and "finished" in again.json()["message"]
    assert control(fake, "POST", f"/jobs/{uuid}/start").status == 409
    assert control(fake, "POST", f"/jobs/{uuid}/acquire").json() == {
        "acquire_status": 422,
        "state": "finished",
    }


def test_control_api_job_errors(fake: FakeBuildkite) -> None:
    uuid = fake.add_job("default")
    missing = "00000000-0000-4000-8000-000000000000"
    for method, path in [
        ("GET", f"/jobs/{missing}"),
        ("PUT", f"/jobs/{missing}"),
        ("POST", f"/jobs/{missing}/acquire"),
        ("POST", f"/jobs/{missing}/finish"),
    ]:
        resp = control(fake, method, path, {"state": "running"})
        assert resp.status == 404, (method, path, resp.body)
    assert control(fake, "POST", f"/jobs/{uuid}/explode").status == 404
    bad = control(fake, "POST", f"/jobs/{uuid}/finish", {"exit_status": "1"})
    assert bad.status == 400
    assert control(fake, "PUT", f"/jobs/{uuid}", {"state": "nope"}).status == 400
    assert control(fake, "PUT", f"/jobs/{uuid}", {"state": "waiting"}).json()["state"] == "waiting"
    # A job still waiting on dependencies answers 423, and stays where it is.
    assert control(fake, "POST", f"/jobs/{uuid}/acquire").json() == {
        "acquire_status": 423,
        "state": "waiting",
    }
    # Control calls never reach the request log.
    assert fake.requests == []


# --------------------------------------------------------------------------- the peer's wire shapes


def test_requests_shaped_like_buildkites_go_stacks_client_are_answered(
    fake: FakeBuildkite, api: Api, clock: VirtualClock
) -> None:
    """What agent-stack-k8s v0.47.0 (Go stacksapi client) sends, byte for byte where it matters.

    Its stack key defaults to ``agent-stack-k8s`` and its default queue key is ``_default``;
    the list asks ``limit=1000``; the reservation expiry is left out (server default: 900 s);
    notification timestamps are Go's RFC 3339 with nanoseconds and an offset; finish sends exit
    status -1; deregister is a POST with an empty body.
    """
    uuids = fake.add_jobs("default", 2)
    assert api("GET", "/token").json()["cluster_uuid"]
    register = {"key": "agent-stack-k8s", "type": "kubernetes", "queue_key": "_default"}
    created = api("POST", "/stacks/register", {**register, "metadata": {}})
    assert created.status == 201
    stack = created.json()
    assert (stack["key"], stack["cluster_queue_key"]) == ("agent-stack-k8s", "default")

    listed = api("GET", "/stacks/agent-stack-k8s/scheduled-jobs?limit=1000&queue_key=default")
    assert listed_ids(listed) == uuids
    assert listed.json()["cluster_queue"]["paused"] is False
    reserved = api(
        "PUT", "/stacks/agent-stack-k8s/scheduled-jobs/batch-reserve", {"job_uuids": uuids}
    )
    assert reserved.json() == {"reserved": uuids, "not_reserved": []}
    assert fake.job(uuids[0]).reserved_until == clock() + 900

    job = api("GET", f"/stacks/agent-stack-k8s/jobs/{uuids[0]}")
    assert job.status == 200 and job.json()["env"]["BUILDKITE_JOB_ID"] == uuids[0]

    stamp = datetime_go(clock())
    notes = [{"job_uuid": u, "detail": "K8s Job created", "timestamp": stamp} for u in uuids]
    answered = api("POST", "/stacks/agent-stack-k8s/notifications", {"notifications": notes})
    assert answered.json() == {"errors": []}
    states = api("POST", "/stacks/agent-stack-k8s/jobs/get-states", {"job_uuids": uuids})
    assert states.json() == {"states": {u: "reserved" for u in uuids}}
    finish = {"exit_status": -1, "detail": "pod failed"}
    assert api("POST", f"/stacks/agent-stack-k8s/jobs/{uuids[1]}/finish", finish).status == 200
    assert fake.job(uuids[1]).state == "finished"

    gone = api("POST", "/stacks/agent-stack-k8s/deregister", headers={"Content-Length": "0"})
    assert gone.status == 204 and gone.body == b""
    assert fake.stacks["agent-stack-k8s"]["state"] == "disconnected"
    assert {r.status for r in fake.requests} <= {200, 201, 204}


def datetime_go(t: float) -> str:
    """A time as Go's encoding/json writes a local time.Time: nanoseconds and an offset."""
    from datetime import datetime, timedelta, timezone

    local = datetime.fromtimestamp(t, timezone(timedelta(hours=10)))
    return local.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123+10:00"


def test_chunked_request_bodies_are_read_and_the_connection_stays_usable(
    fake: FakeBuildkite,
) -> None:
    """Go's client sends a POST whose body is empty as ``Transfer-Encoding: chunked``.

    (agent-stack-k8s's deregister does.) The body must be decoded, not left on the
    keep-alive connection to be read as a broken next request.
    """
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    auth = {"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"}
    try:
        register = json.dumps(
            {"key": "chunky", "type": "kubernetes", "queue_key": "default", "metadata": {}}
        ).encode()
        parts = iter([register[:10], register[10:]])
        conn.request("POST", "/v3/stacks/register", body=parts, headers=auth, encode_chunked=True)
        first = conn.getresponse()
        assert (first.status, json.loads(first.read())["key"]) == (201, "chunky")

        conn.request("POST", "/v3/stacks/chunky/deregister", body=iter([]), headers=auth)
        second = conn.getresponse()
        assert (second.status, second.read()) == (204, b"")

        conn.request("GET", "/v3/token", headers=auth)  # the same connection still works
        third = conn.getresponse()
        assert third.status == 200 and json.loads(third.read())["cluster_uuid"]
    finally:
        conn.close()
    assert [(r.route, r.status) for r in fake.requests] == [
        ("register", 201),
        ("deregister", 204),
        ("token", 200),
    ]

    with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v3/stacks/chunky/deregister HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n"
        )
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400 ")
