"""Webhook verification and the dispatcher's HTTP endpoint, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from stackgen.dispatcher import webhook
from stackgen.dispatcher.metrics import Metrics
from stackgen.dispatcher.server import Endpoint, Server
from tests.support.fake_buildkite import (
    FakeJob,
    eventbridge_job_scheduled,
    send_webhook,
    sign_webhook,
    webhook_payload,
)

SECRET = "webhook-token-abcdef123456"


def body_for(queue: str = "builds") -> bytes:
    job = FakeJob(queue=queue)
    return json.dumps(webhook_payload(job=job)).encode()


def test_token_header_accepted_and_wrong_token_rejected() -> None:
    body = body_for()
    webhook.verify({"X-Buildkite-Token": SECRET}, body, SECRET, now=time.time(), max_age=300)
    with pytest.raises(webhook.WebhookRejected):
        webhook.verify({"X-Buildkite-Token": "nope"}, body, SECRET, now=time.time(), max_age=300)


def test_signature_accepted_forged_stale_and_missing_rejected() -> None:
    body = body_for()
    now = int(time.time())
    header = sign_webhook(body, SECRET, now)
    webhook.verify({"X-Buildkite-Signature": header}, body, SECRET, now=now, max_age=300)
    with pytest.raises(webhook.WebhookRejected, match="does not match"):
        webhook.verify({"X-Buildkite-Signature": header}, body + b" ", SECRET, now=now, max_age=300)
    forged = sign_webhook(body, "another-key", now)
    with pytest.raises(webhook.WebhookRejected, match="does not match"):
        webhook.verify({"X-Buildkite-Signature": forged}, body, SECRET, now=now, max_age=300)
    old = sign_webhook(body, SECRET, now - 301)
    with pytest.raises(webhook.WebhookRejected, match="stale"):
        webhook.verify({"X-Buildkite-Signature": old}, body, SECRET, now=now, max_age=300)
    with pytest.raises(webhook.WebhookRejected, match="neither"):
        webhook.verify({}, body, SECRET, now=now, max_age=300)
    with pytest.raises(webhook.WebhookRejected, match="malformed"):
        webhook.verify({"X-Buildkite-Signature": "garbage"}, body, SECRET, now=now, max_age=300)


def test_parse_buildkite_and_eventbridge_bodies() -> None:
    job = FakeJob(queue="deploy")
    event = webhook.parse(
        {"X-Buildkite-Event": "job.scheduled"}, json.dumps(webhook_payload(job=job)).encode()
    )
    assert event == webhook.WebhookEvent("job.scheduled", ("deploy",), job.uuid, "webhook")
    bridge = eventbridge_job_scheduled(job)
    event = webhook.parse({}, json.dumps(bridge).encode())
    assert event == webhook.WebhookEvent("job.scheduled", ("deploy",), job.uuid, "eventbridge")
    with pytest.raises(ValueError):
        webhook.parse({}, b"not json")


class Recorder:
    def __init__(self) -> None:
        self.triggers: list[tuple[str, ...]] = []

    def __call__(self, queues: tuple[str, ...]) -> None:
        self.triggers.append(queues)


def serve(recorder: Recorder, *, leader: bool, leader_endpoint: str | None = None) -> Server:
    endpoint = Endpoint(
        Metrics(),
        healthy=lambda: True,
        ready=lambda: True,
        trigger=recorder,
        is_leader=lambda: leader,
        leader_endpoint=lambda: leader_endpoint,
        webhook_token=SECRET,
        max_signature_age=300,
    )
    return Server(endpoint, "127.0.0.1", 0).start()


@pytest.fixture
def leader() -> Iterator[tuple[Server, Recorder]]:
    recorder = Recorder()
    server = serve(recorder, leader=True)
    yield server, recorder
    server.stop()


def test_webhook_over_http_triggers_the_named_queue(leader: tuple[Server, Recorder]) -> None:
    server, recorder = leader
    url = f"http://127.0.0.1:{server.port}/webhook"
    delivery = send_webhook(url, job=FakeJob(queue="builds"), hmac_key=SECRET, mode="signature")
    assert delivery.status == 202
    delivery = send_webhook(url, job=FakeJob(queue="deploy"), token=SECRET, mode="token")
    assert delivery.status == 202
    assert recorder.triggers == [("builds",), ("deploy",)]
    rejected = send_webhook(url, job=FakeJob(queue="builds"), token="wrong", mode="token")
    assert rejected.status == 401
    unsigned = send_webhook(url, job=FakeJob(queue="builds"), mode="none")
    assert unsigned.status == 401
    assert len(recorder.triggers) == 2
    health = httpx.get(f"http://127.0.0.1:{server.port}/healthz")
    assert health.status_code == 200
    metrics = httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
    assert 'stackgen_webhooks_total{result="accepted"} 2.0' in metrics
    assert 'stackgen_webhooks_total{result="rejected"} 2.0' in metrics


def test_follower_forwards_to_the_leader(leader: tuple[Server, Recorder]) -> None:
    leader_server, leader_recorder = leader
    follower_recorder = Recorder()
    follower = serve(
        follower_recorder, leader=False, leader_endpoint=f"http://127.0.0.1:{leader_server.port}"
    )
    try:
        url = f"http://127.0.0.1:{follower.port}/webhook"
        delivery = send_webhook(url, job=FakeJob(queue="builds"), hmac_key=SECRET, mode="signature")
        assert delivery.status == 202
        assert follower_recorder.triggers == []
        assert leader_recorder.triggers == [("builds",)]
    finally:
        follower.stop()


def test_a_replayed_signed_delivery_is_dropped(leader: tuple[Server, Recorder]) -> None:
    server, recorder = leader
    url = f"http://127.0.0.1:{server.port}/webhook"
    body = body_for("builds")
    signed = {
        "X-Buildkite-Event": "job.scheduled",
        "X-Buildkite-Signature": sign_webhook(body, SECRET, int(time.time())),
        "Content-Type": "application/json",
    }
    first = httpx.post(url, content=body, headers=signed)
    again = httpx.post(url, content=body, headers=signed)  # the same delivery, replayed
    assert (first.status_code, again.status_code) == (202, 200)
    assert recorder.triggers == [("builds",)]
    # A new delivery (its own timestamp, so its own signature) is accepted as usual.
    later = dict(
        signed, **{"X-Buildkite-Signature": sign_webhook(body, SECRET, int(time.time()) + 1)}
    )
    assert httpx.post(url, content=body, headers=later).status_code == 202
    assert recorder.triggers == [("builds",), ("builds",)]
    metrics = httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
    assert 'stackgen_webhooks_total{result="replayed"} 1.0' in metrics


def test_the_replay_guard_forgets_signatures_once_they_are_stale_and_stays_bounded() -> None:
    guard = webhook.ReplayGuard(max_age=300, limit=3)
    headers = [{"X-Buildkite-Signature": f"timestamp=1000,signature={n:064x}"} for n in range(5)]
    assert guard.first_time(headers[0], now=1000)
    assert not guard.first_time(headers[0], now=1200)
    for h in headers[1:]:
        assert guard.first_time(h, now=1200)
    assert len(guard._seen) == 3  # bounded: the oldest went first
    # Past its validity (verify refuses it as stale then), a signature is forgotten.
    assert guard.first_time(headers[4], now=1301) is True
    assert len(guard._seen) == 1
