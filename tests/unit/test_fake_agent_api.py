"""The fake Buildkite speaks the agent API as buildkite-agent v3.138.3 sends it (over HTTP).

The requests below have the shapes of the agent's own client (``api/*.go``): register with
the registration token, then the agent's access token; accept/acquire hand out a job token
that start, log chunks (gzip bodies), header times and finish present.  The real agent
binary against the fake is tests/e2e/test_real_agent.py.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from stackgen.dispatcher import webhook
from tests.support.fake_buildkite import FakeBuildkite, HttpResponse, VirtualClock, http_request
from tests.support.fake_buildkite.ctl import FakeControl, FakeControlError
from tests.support.fake_buildkite.ctl import main as ctl_main

TOKEN = "bkct_fake-registration-token-0123456789"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(1_700_000_000.0)


@pytest.fixture
def fake(clock: VirtualClock) -> Iterator[FakeBuildkite]:
    with FakeBuildkite(TOKEN, queues=("default", "gpu"), clock=clock) as bk:
        yield bk


def call(
    fake: FakeBuildkite,
    method: str,
    path: str,
    token: str | None,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> HttpResponse:
    sent = {"Content-Type": "application/json", "User-Agent": "buildkite-agent/3.138.3"}
    if token is not None:
        sent["Authorization"] = f"Token {token}"
    sent.update(headers or {})
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    return http_request(method, fake.endpoint + path, headers=sent, body=data)


def register(
    fake: FakeBuildkite,
    queue: str | None = "default",
    *,
    token: str = TOKEN,
    name: str = "agent-1",
    features: tuple[str, ...] = (),
    ignore: bool = False,
    tags: tuple[str, ...] = (),
) -> str:
    """Register as ``buildkite-agent start`` does; returns the agent's access token."""
    meta = ([f"queue={queue}"] if queue else []) + list(tags)
    body = {
        "name": name,
        "hostname": "host",
        "os": "Linux",
        "arch": "amd64",
        "script_eval_enabled": True,
        "ignore_in_dispatches": ignore,
        "version": "3.138.3",
        "build": "stackgen",
        "meta_data": meta,
        "pid": 1234,
        "features": list(features),
    }
    resp = call(fake, "POST", "/register", token, body)
    assert resp.status == 200, resp.body
    access = str(resp.json()["access_token"])
    assert call(fake, "POST", "/connect", access).status == 200
    return access


def ping_job(fake: FakeBuildkite, access: str) -> str | None:
    resp = call(fake, "GET", "/ping", access)
    assert resp.status == 200, resp.body
    job = resp.json().get("job")
    return None if job is None else str(job["id"])


def chunk(
    fake: FakeBuildkite, uuid: str, token: str, seq: int, offset: int, data: bytes
) -> HttpResponse:
    return call(
        fake,
        "POST",
        f"/jobs/{uuid}/chunks?sequence={seq}&offset={offset}&size={len(data)}",
        token,
        raw=gzip.compress(data),
        headers={"Content-Type": "text/plain", "Content-Encoding": "gzip"},
    )


def run_job(fake: FakeBuildkite, uuid: str, job_token: str, exit_status: str = "0") -> None:
    """What the agent does once it holds a job: start, log, header times, finish."""
    assert call(fake, "PUT", f"/jobs/{uuid}/start", job_token, {"started_at": "x"}).status == 200
    assert chunk(fake, uuid, job_token, 1, 0, b"~~~ Running commands\nhi\n").status == 201
    times = {"header_times": {"0": "2024-01-01T00:00:00Z"}}
    assert call(fake, "POST", f"/jobs/{uuid}/header_times", job_token, times).status == 200
    body = {"exit_status": exit_status, "finished_at": "x", "chunks_failed_count": 0}
    assert call(fake, "PUT", f"/jobs/{uuid}/finish", job_token, body).status == 200


# --------------------------------------------------------------------------- register and ping


def test_register_hands_out_an_access_token_the_registration_token_cannot_replace(
    fake: FakeBuildkite,
) -> None:
    resp = call(fake, "POST", "/register", TOKEN, {"name": "a", "meta_data": ["queue=gpu"]})
    assert resp.status == 200
    body = resp.json()
    assert body["endpoint"] == fake.endpoint
    assert body["meta_data"] == ["queue=gpu"]
    assert body["ping_interval"] >= 1 and body["heartbeat_interval"] >= 1
    access = body["access_token"]
    assert access != TOKEN

    assert call(fake, "POST", "/register", "bkct_wrong-0123456789", {}).status == 401
    refused = call(fake, "GET", "/ping", TOKEN)  # pings need the agent's own token
    assert refused.status == 401 and TOKEN not in refused.body.decode()
    assert call(fake, "POST", "/connect", access).status == 200
    assert call(fake, "GET", "/ping", access).status == 200
    beat = call(fake, "POST", "/heartbeat", access, {"sent_at": "2024-01-01T00:00:00Z"})
    assert beat.json()["sent_at"] == "2024-01-01T00:00:00Z" and beat.json()["received_at"]

    (agent,) = fake.agents()
    assert agent["queue"] == "gpu" and agent["state"] == "connected" and agent["pings"] == 1
    assert access not in json.dumps(fake.agents()) and TOKEN not in json.dumps(fake.agents())
    assert call(fake, "POST", "/disconnect", access).status == 200
    assert fake.agents()[0]["state"] == "disconnected"


def test_ping_offers_the_oldest_unreserved_job_of_the_agents_queue(
    fake: FakeBuildkite, clock: VirtualClock
) -> None:
    other = fake.enqueue("gpu", "nvidia-smi")
    reserved = fake.enqueue("default", "echo reserved")
    fake.set_job_state(reserved, "reserved")  # a stack holds it for an exact-mode agent
    clock.advance(1)
    first = fake.enqueue("default", "echo 1")
    clock.advance(1)
    second = fake.enqueue("default", "echo 2")

    a, b = register(fake, name="a"), register(fake, name="b")
    acquirer = register(fake, name="c", features=("acquire-job",), ignore=True)
    assert ping_job(fake, acquirer) is None  # ignore_in_dispatches: never offered work
    assert ping_job(fake, a) == first
    assert ping_job(fake, a) is None  # busy with the offered job
    assert ping_job(fake, b) == second
    assert fake.job(first).state == "assigned" and fake.job(first).agent_name == "a"
    assert fake.job(other).state == "scheduled" and fake.job(reserved).state == "reserved"

    fake.pause_queue("gpu")
    gpu = register(fake, "gpu", name="g")
    assert ping_job(fake, gpu) is None
    fake.pause_queue("gpu", paused=False)
    assert ping_job(fake, gpu) == other
    assert fake.metrics("default")["agents"] == {"idle": 1, "busy": 2, "total": 3}


def test_agent_query_rules_beyond_the_queue_must_match_a_tag(fake: FakeBuildkite) -> None:
    uuid = fake.enqueue("default", "make", agent_query_rules=["queue=default", "arch=arm*"])
    amd = register(fake, tags=("arch=amd64",), name="amd")
    arm = register(fake, tags=("arch=arm64",), name="arm")
    assert ping_job(fake, amd) is None
    assert ping_job(fake, arm) == uuid


def test_a_job_runs_accept_start_chunks_finish_and_the_fake_records_it(
    fake: FakeBuildkite, clock: VirtualClock
) -> None:
    uuid = fake.enqueue("default", "make test", env={"STEP_VAR": "1"}, label=":test:")
    access = register(fake, tags=("os=linux",))
    offered = call(fake, "GET", "/ping", access).json()["job"]
    assert offered["id"] == uuid and offered["token"] == ""

    clock.advance(2)
    accepted = call(fake, "PUT", f"/jobs/{uuid}/accept", access)
    assert accepted.status == 200
    job = accepted.json()
    env = job["env"]
    assert env["BUILDKITE_COMMAND"] == "make test" and env["STEP_VAR"] == "1"
    assert env["BUILDKITE_JOB_ID"] == uuid and env["BUILDKITE_AGENT_META_DATA_OS"] == "linux"
    assert env["BUILDKITE_AGENT_NAME"] == "agent-1" and env["BUILDKITE_LABEL"] == ":test:"
    assert env["BUILDKITE_SKIP_CHECKOUT"] == "true"  # no repository: no checkout
    assert env["BUILDKITE_REPO"] and env["BUILDKITE_PIPELINE_PROVIDER"]  # the agent needs them
    assert job["step"]["command"] == "make test" and job["chunks_max_size_bytes"] > 0
    job_token = job["token"]
    assert job_token and job_token != access
    again = call(fake, "PUT", f"/jobs/{uuid}/accept", access)
    assert again.status == 422

    assert call(fake, "PUT", f"/jobs/{uuid}/start", job_token, {"started_at": "x"}).status == 200
    assert call(fake, "GET", f"/jobs/{uuid}", job_token).json() == {"state": "running"}
    # Chunks may arrive out of order; a retried one replaces itself.
    assert chunk(fake, uuid, job_token, 2, 6, "wörld\n".encode()).status == 201
    assert chunk(fake, uuid, job_token, 1, 0, b"hello ").status == 201
    assert chunk(fake, uuid, job_token, 1, 0, b"hello ").status == 201
    bad_size = call(
        fake,
        "POST",
        f"/jobs/{uuid}/chunks?sequence=3&offset=13&size=99",
        job_token,
        raw=gzip.compress(b"x"),
        headers={"Content-Encoding": "gzip"},
    )
    assert bad_size.status == 422
    not_gzip = call(
        fake,
        "POST",
        f"/jobs/{uuid}/chunks?sequence=3&offset=13&size=1",
        job_token,
        raw=b"x",
        headers={"Content-Encoding": "gzip"},
    )
    assert not_gzip.status == 400
    times = {"header_times": {"0": "2024-01-01T00:00:00.5Z"}}
    assert call(fake, "POST", f"/jobs/{uuid}/header_times", job_token, times).status == 200
    clock.advance(3)
    finish = {"exit_status": "3", "signal": "", "finished_at": "x", "chunks_failed_count": 0}
    assert call(fake, "PUT", f"/jobs/{uuid}/finish", job_token, finish).status == 200
    assert call(fake, "PUT", f"/jobs/{uuid}/finish", job_token, finish).status == 422

    done = fake.job(uuid)
    assert (done.state, done.exit_status, done.chunks, done.chunks_failed_count) == (
        "finished",
        3,
        2,
        0,
    )
    assert done.accepted_at == 1_700_000_002.0 and done.finished_at == 1_700_000_005.0
    assert done.header_times == {"0": "2024-01-01T00:00:00.5Z"}
    assert fake.job_log(uuid) == "hello wörld\n"
    assert fake.agents()[0]["jobs"] == [uuid] and fake.agents()[0]["current_job"] is None


def test_plain_logs_drop_the_agents_timestamps_and_colours(fake: FakeBuildkite) -> None:
    uuid = fake.enqueue("default", "x")
    access = register(fake)
    assert ping_job(fake, access) == uuid
    token = call(fake, "PUT", f"/jobs/{uuid}/accept", access).json()["token"]
    raw = b"\x1b_bk;t=1700000000123\x07~~~ Running\n\x1b[90m$\x1b[0m make\n"
    assert chunk(fake, uuid, token, 1, 0, raw).status == 201
    assert fake.job_log(uuid) == raw.decode()
    assert fake.job_log(uuid, plain=True) == "~~~ Running\n$ make\n"
    assert FakeControl(fake.url).log(uuid, plain=True) == "~~~ Running\n$ make\n"
    assert FakeControl(fake.url).log(uuid) == raw.decode()


def test_tokens_only_reach_their_own_job(fake: FakeBuildkite) -> None:
    a_job, b_job = fake.enqueue("default", "a"), fake.enqueue("default", "b")
    a, b = register(fake, name="a"), register(fake, name="b")
    assert ping_job(fake, a) == a_job and ping_job(fake, b) == b_job
    assert call(fake, "PUT", f"/jobs/{a_job}/accept", b).status == 422  # not b's job
    token_a = call(fake, "PUT", f"/jobs/{a_job}/accept", a).json()["token"]
    assert call(fake, "PUT", f"/jobs/{b_job}/start", token_a, {}).status == 401
    assert call(fake, "PUT", f"/jobs/{a_job}/start", TOKEN, {}).status == 401
    assert call(fake, "PUT", f"/jobs/{a_job}/start", token_a, {}).status == 200


def test_disconnect_after_job_agents_get_one_job(fake: FakeBuildkite) -> None:
    first, second = fake.enqueue("default", "one"), fake.enqueue("default", "two")
    access = register(fake, features=("disconnect-after-job",))
    assert ping_job(fake, access) == first
    token = call(fake, "PUT", f"/jobs/{first}/accept", access).json()["token"]
    assert call(fake, "PUT", f"/jobs/{first}/start", token, {}).status == 200
    body = {"exit_status": "0", "chunks_failed_count": 0, "ignore_agent_in_dispatches": True}
    assert call(fake, "PUT", f"/jobs/{first}/finish", token, body).status == 200
    assert ping_job(fake, access) is None
    assert fake.job(second).state == "scheduled"


def test_an_offered_job_goes_back_when_its_agent_disconnects_without_accepting(
    fake: FakeBuildkite,
) -> None:
    uuid = fake.enqueue("default", "x")
    gone, other = register(fake, name="gone"), register(fake, name="other")
    assert ping_job(fake, gone) == uuid
    assert call(fake, "POST", "/disconnect", gone).status == 200
    assert fake.job(uuid).state == "scheduled"
    assert ping_job(fake, other) == uuid


def test_an_agent_told_to_disconnect_hears_it_at_its_next_ping(fake: FakeBuildkite) -> None:
    access = register(fake)
    fake.enqueue("default", "x")
    (agent,) = fake.agents()
    FakeControl(fake.url).disconnect_agent(agent["uuid"])
    assert call(fake, "GET", "/ping", access).json() == {"action": "disconnect"}
    with pytest.raises(FakeControlError, match="404"):
        FakeControl(fake.url).disconnect_agent("no-such-agent")


# --------------------------------------------------------------------------- acquire


def test_acquire_with_an_agent_token_and_its_documented_failures(fake: FakeBuildkite) -> None:
    uuid, waiting = fake.enqueue("default", "echo exact"), fake.enqueue("default", "later")
    fake.set_job_state(waiting, "waiting")
    access = register(fake, features=("acquire-job",), ignore=True)
    lock = {"X-Buildkite-Lock-Acquire-Job": "1", "X-Buildkite-Backoff-Sequence": "0"}

    got = call(fake, "PUT", f"/jobs/{uuid}/acquire", access, headers=lock)
    assert got.status == 200
    job = got.json()
    assert job["id"] == uuid and job["token"] and job["env"]["BUILDKITE_COMMAND"] == "echo exact"
    assert fake.job(uuid).agent_uuid == fake.agents()[0]["uuid"]
    run_job(fake, uuid, job["token"], exit_status="0")
    assert fake.job(uuid).state == "finished" and fake.job(uuid).exit_status == 0

    again = call(fake, "PUT", f"/jobs/{uuid}/acquire", access, headers=lock)
    assert again.status == 422  # the agent exits 27
    locked = call(fake, "PUT", f"/jobs/{waiting}/acquire", access, headers=lock)
    assert locked.status == 423 and locked.headers["retry-after"] == "1"  # retried, then 28


def test_exact_mode_stacks_api_reservation_and_agent_acquire_share_one_job_state(
    fake: FakeBuildkite,
) -> None:
    """Reserve + job-acquisition token (Stacks API), then the agent registers with that token."""
    uuid, other = fake.enqueue("default", "exact"), fake.enqueue("default", "other")
    reg = {"key": "stack-a", "type": "custom", "queue_key": "default", "metadata": {}}
    assert call(fake, "POST", "/stacks/register", TOKEN, reg).status == 201
    reserve = {"job_uuids": [uuid], "reservation_expiry_seconds": 300}
    resp = call(fake, "PUT", "/stacks/stack-a/scheduled-jobs/batch-reserve", TOKEN, reserve)
    assert resp.json()["reserved"] == [uuid]
    issued = call(
        fake, "POST", "/stacks/stack-a/job-acquisition-tokens", TOKEN, {"job_uuids": [uuid]}
    )
    acq_token = issued.json()["job_acquisition_tokens"][0]["job_acquisition_token"]

    access = register(fake, token=acq_token, features=("acquire-job",), ignore=True)
    assert fake.agents()[0]["bound_job"] == uuid
    assert call(fake, "PUT", f"/jobs/{other}/acquire", access).status == 401  # not its job
    got = call(fake, "PUT", f"/jobs/{uuid}/acquire", access)
    assert got.status == 200

    def stack_state() -> str:
        body = {"job_uuids": [uuid]}
        states = call(fake, "POST", "/stacks/stack-a/jobs/get-states", TOKEN, body).json()
        return str(states["states"][uuid])

    assert stack_state() == "assigned" and fake.job(uuid).reserved_by is None
    run_job(fake, uuid, got.json()["token"], exit_status="1")
    assert stack_state() == "finished" and fake.job(uuid).exit_status == 1
    listed = call(fake, "GET", "/stacks/stack-a/scheduled-jobs?queue_key=default", TOKEN)
    assert [j["id"] for j in listed.json()["jobs"]] == [other]


# --------------------------------------------------------------------------- meta-data


def test_meta_data_is_the_builds_and_needs_a_job_or_agent_token(fake: FakeBuildkite) -> None:
    uuid = fake.enqueue("default", "x")
    sibling = fake.add_job("default", build_uuid=fake.job(uuid).build_uuid, command="y")
    stranger = fake.enqueue("default", "z")
    access = register(fake)
    assert ping_job(fake, access) == uuid
    token = call(fake, "PUT", f"/jobs/{uuid}/accept", access).json()["token"]
    build = fake.job(uuid).build_uuid

    def data(scope: str, id_: str, action: str, body: Any = None, tok: str = token) -> Any:
        return call(fake, "POST", f"/{scope}/{id_}/data/{action}", tok, body)

    assert data("jobs", uuid, "exists", {"key": "k"}).json() == {"exists": False}
    assert data("jobs", uuid, "get", {"key": "k"}).status == 404
    assert data("jobs", uuid, "set", {"key": "k", "value": "v1"}).status == 200
    batch = {"items": [{"key": "a", "value": "1"}, {"key": "b", "value": "2"}]}
    assert data("jobs", uuid, "set-batch", batch).status == 200
    assert data("jobs", uuid, "set", {"key": "k", "value": ""}).status == 422
    assert data("jobs", uuid, "get", {"key": "k"}).json() == {"key": "k", "value": "v1"}
    assert data("builds", build, "keys").json() == ["a", "b", "k"]
    assert data("builds", build, "exists", {"key": "a"}).json() == {"exists": True}
    assert data("jobs", uuid, "exists", {"key": "a"}, TOKEN).status == 401
    assert data("jobs", stranger, "exists", {"key": "a"}).status == 401  # another build's job
    assert data("jobs", sibling, "exists", {"key": "a"}, access).json() == {"exists": True}
    assert fake.meta_data(sibling) == {"a": "1", "b": "2", "k": "v1"}
    assert fake.meta_data(stranger) == {}
    assert FakeControl(fake.url).meta_data(uuid) == {"a": "1", "b": "2", "k": "v1"}


# --------------------------------------------------------------------------- cancel


def test_cancel_a_running_job_is_seen_through_its_state_then_canceled_on_finish(
    fake: FakeBuildkite,
) -> None:
    running, queued = fake.enqueue("default", "sleep 60"), fake.enqueue("gpu", "x")
    access = register(fake)
    assert ping_job(fake, access) == running
    token = call(fake, "PUT", f"/jobs/{running}/accept", access).json()["token"]
    assert call(fake, "PUT", f"/jobs/{running}/start", token, {}).status == 200

    assert fake.cancel_job(running) == "canceling"
    assert call(fake, "GET", f"/jobs/{running}", token).json() == {"state": "canceling"}
    body = {"exit_status": "-1", "signal": "SIGTERM", "signal_reason": "cancel"}
    assert call(fake, "PUT", f"/jobs/{running}/finish", token, body).status == 200
    job = fake.job(running)
    assert (job.state, job.exit_status, job.signal, job.signal_reason) == (
        "canceled",
        -1,
        "SIGTERM",
        "cancel",
    )
    assert fake.cancel_job(queued) == "canceled"  # no agent held it
    with pytest.raises(ValueError, match="already canceled"):
        fake.cancel_job(queued)


# --------------------------------------------------------------------------- control API and ctl


def _agent_thread(fake: FakeBuildkite, access: str, exit_status: str) -> threading.Thread:
    """A stand-in agent that runs whatever the next ping offers (in a thread)."""

    def work() -> None:
        for _ in range(200):
            uuid = ping_job(fake, access)
            if uuid is not None:
                token = call(fake, "PUT", f"/jobs/{uuid}/accept", access).json()["token"]
                run_job(fake, uuid, token, exit_status)
                return
            threading.Event().wait(0.02)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_ctl_enqueue_wait_prints_the_log_and_exits_with_the_jobs_status(
    fake: FakeBuildkite, capsys: pytest.CaptureFixture[str]
) -> None:
    access = register(fake)
    thread = _agent_thread(fake, access, exit_status="3")
    code = ctl_main(["--url", fake.url, "enqueue", "--command", "make", "--env", "A=1", "--wait"])
    thread.join(5)
    out, err = capsys.readouterr()
    assert code == 3
    assert out == "~~~ Running commands\nhi\n"
    assert "finished, exit status 3" in err
    (job,) = fake.jobs()
    assert job.env["A"] == "1" and job.command == "make"

    assert ctl_main(["--url", fake.url, "agents"]) == 0
    listing = capsys.readouterr().out
    assert "agent-1 default connected" in listing and access not in listing
    assert ctl_main(["--url", fake.url, "jobs"]) == 0
    assert f"{job.uuid} default finished exit=3 agent=agent-1" in capsys.readouterr().out
    assert ctl_main(["--url", fake.url, "cancel", job.uuid]) == 1
    assert "409" in capsys.readouterr().err
    assert ctl_main(["--url", fake.url, "log", "no-such-job"]) == 1
    assert "404" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ctl_main(["--url", fake.url, "enqueue", "--command", "x", "--env", "novalue"])


def test_control_client_enqueue_plugins_cancel_and_unreachable(fake: FakeBuildkite) -> None:
    bk = FakeControl(fake.url)
    plugins = [{"/tmp/greeter#main": {"greeting": "hi"}}]
    uuid = bk.enqueue("default", "true", plugins=plugins, repository="/srv/repo.git")
    env = bk.job(uuid)["env"]
    assert json.loads(env["BUILDKITE_PLUGINS"]) == plugins
    assert env["BUILDKITE_REPO"] == "/srv/repo.git" and "BUILDKITE_SKIP_CHECKOUT" not in env
    assert bk.cancel(uuid) == "canceled"
    assert bk.wait(uuid, timeout=1)["state"] == "canceled"
    assert bk.log(uuid) == ""
    with pytest.raises(FakeControlError, match="cannot reach"):
        FakeControl("http://127.0.0.1:9", timeout=1).agents()


def test_enqueue_announces_each_job_with_a_signed_webhook(clock: VirtualClock) -> None:
    """Checked by the dispatcher's own verifier: what a sandbox's dispatcher will receive."""
    received: list[tuple[dict[str, str], bytes]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(({k: v for k, v in self.headers.items()}, body))
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/webhook"
    secret = "webhook-secret-0123456789"
    try:
        with FakeBuildkite(TOKEN, clock=clock, webhook_url=url, webhook_secret=secret) as bk:
            uuid = bk.enqueue("builds", "make")
            ((headers, body),) = received
            webhook.verify(headers, body, secret, now=time.time(), max_age=300)
            assert webhook.parse(headers, body).queues == ("builds",)
            assert json.loads(body)["job"]["id"] == uuid
            assert bk.webhook_deliveries == [{"job_uuid": uuid, "at": clock(), "status": 202}]
            assert FakeControl(bk.url).webhooks()[0]["status"] == 202
    finally:
        server.shutdown()
        server.server_close()
    with FakeBuildkite(TOKEN, clock=clock, webhook_url=url, webhook_secret=secret) as bk:
        down = bk.enqueue("builds", "make")  # nothing listens any more
        assert bk.job(down).state == "scheduled"
        assert bk.webhook_deliveries[0]["status"] is None


# --------------------------------------------------------------------------- standalone


def test_runs_standalone_with_only_the_standard_library(tmp_path: Path) -> None:
    """A copy of just the package files, python -E -S (no site-packages): a container's view."""
    pkg = tmp_path / "app" / "tests" / "support" / "fake_buildkite"
    pkg.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "tests" / "__init__.py", tmp_path / "app" / "tests")
    shutil.copy(REPO_ROOT / "tests" / "support" / "__init__.py", pkg.parent)
    for source in (REPO_ROOT / "tests" / "support" / "fake_buildkite").glob("*.py"):
        shutil.copy(source, pkg)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    serve = ["--host", "127.0.0.1", "--port", "0", "--token-file", str(token_file)]
    advertise = ["--advertise-url", "http://fake-buildkite.sandbox.svc:8080"]
    proc = subprocess.Popen(
        [sys.executable, "-E", "-S", "-m", "tests.support.fake_buildkite", *serve, *advertise],
        cwd=tmp_path / "app",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": os.environ.get("PATH", "")},
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        request = urllib.request.Request(
            url + "/v3/register",
            data=json.dumps({"name": "x", "meta_data": []}).encode(),
            method="POST",
            headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            body = json.loads(resp.read())
        assert body["endpoint"] == "http://fake-buildkite.sandbox.svc:8080/v3"
        ctl_args = ["-m", "tests.support.fake_buildkite.ctl", "--url", url, "agents"]
        ctl = subprocess.run(
            [sys.executable, "-E", "-S", *ctl_args],
            cwd=tmp_path / "app",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert ctl.returncode == 0, ctl.stderr
        assert " x default registered" in ctl.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert TOKEN not in out + err


def test_standalone_refuses_a_missing_or_empty_token_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for path, message in ((empty, "the file is empty"), (tmp_path / "nope", "No such file")):
        proc = subprocess.run(
            [sys.executable, "-m", "tests.support.fake_buildkite", "--token-file", str(path)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 2 and message in proc.stderr and proc.stdout == ""
