"""The dispatcher's exact mode with step pods, against the fake Buildkite (real HTTP on
127.0.0.1) and an in-memory Kubernetes: a step with the ``kubernetes`` plugin gets its
own pod, one without runs as before, and a refused one is failed on Buildkite with the
reason (Stacks API finish + timeline notification), never left waiting."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pytest

from stackgen.buildkite import AgentAPI
from stackgen.common.podsteps import PluginSettings
from stackgen.dispatcher.config import from_dict
from stackgen.dispatcher.cycle import Dispatcher
from stackgen.dispatcher.jobs import LABEL_BUILDKITE_JOB
from stackgen.dispatcher.podspec import PLUGIN_KEY
from tests.support import step_pods
from tests.support.dispatcher_config import TOKEN, config_dict
from tests.support.fake_buildkite import FakeBuildkite, VirtualClock
from tests.support.fake_kube import FakeKube
from tests.support.pipelines import load_steps


@pytest.fixture
def buildkite(clock: VirtualClock) -> Iterator[FakeBuildkite]:
    with FakeBuildkite(token=TOKEN, queues=("builds", "pods"), clock=clock) as fake:
        yield fake


@pytest.fixture
def kube(clock: VirtualClock) -> FakeKube:
    fake = FakeKube(clock=clock)
    fake.add("cronjobs", step_pods.cronjob("pods"))
    return fake


@pytest.fixture
def api(buildkite: FakeBuildkite) -> Iterator[AgentAPI]:
    client = AgentAPI(buildkite.endpoint, TOKEN)
    yield client
    client.close()


def dispatcher(
    api: AgentAPI, kube: FakeKube, clock: VirtualClock, settings: PluginSettings | None = None
) -> Dispatcher:
    data = config_dict()
    pods = step_pods.queue("pods")
    if settings is not None:
        pods = dataclasses.replace(pods, kubernetes_plugin=settings)
    data["queues"] = [data["queues"][0], pods.to_dict()]
    counter = (f"{n:08x}" for n in range(1, 10_000))
    return Dispatcher(from_dict(data), api, kube, clock=clock, new_id=lambda: next(counter))


def plugin_env(settings: dict[str, Any]) -> dict[str, str]:
    return {"BUILDKITE_PLUGINS": json.dumps([{PLUGIN_KEY: settings}])}


def created(kube: FakeKube) -> dict[str, dict[str, Any]]:
    return {
        j["metadata"]["labels"][LABEL_BUILDKITE_JOB]: j
        for j in kube.objects["jobs"].values()
        if LABEL_BUILDKITE_JOB in j["metadata"]["labels"]
    }


def container_names(job: dict[str, Any]) -> list[str]:
    return [c["name"] for c in job["spec"]["template"]["spec"]["containers"]]


def test_plugin_step_gets_its_own_pod_and_a_plain_step_the_template(
    buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock, api: AgentAPI
) -> None:
    ((command, env),) = load_steps(step_pods.CASES / "two-containers" / "pipeline.yml")
    plugin = buildkite.add_job("pods", command=command, env=env)
    plain = buildkite.add_job("pods", command="make test")
    dispatcher(api, kube, clock).run_cycle("poll")
    jobs = created(kube)
    assert container_names(jobs[plugin]) == ["container-0", "container-1", "agent", "checkout"]
    assert container_names(jobs[plain]) == ["agent"]
    assert jobs[plain]["spec"]["template"]["spec"] == (
        step_pods.cronjob("pods")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        | {"containers": jobs[plain]["spec"]["template"]["spec"]["containers"]}
    )
    # Both were read from the Stacks API; only the plugin step's Job was dry-run first.
    paths = [r.path for r in buildkite.requests]
    assert any(p.endswith(f"/jobs/{plugin}") for p in paths)
    assert any(p.endswith(f"/jobs/{plain}") for p in paths)
    dry_runs = [target for method, target in kube.calls if method == "dry_run_job"]
    assert dry_runs == [jobs[plugin]["metadata"]["name"]]
    # Each pod acquires its job with its own token; nothing was failed.
    for uuid, job in jobs.items():
        agent = next(
            c for c in job["spec"]["template"]["spec"]["containers"] if c["name"] == "agent"
        )
        env_of = {e["name"]: e for e in agent["env"]}
        assert env_of["BUILDKITE_AGENT_ACQUIRE_JOB"]["value"] == uuid
    assert buildkite.finished == []


def refused_detail(buildkite: FakeBuildkite, uuid: str) -> str:
    (finish,) = [f for f in buildkite.finished if f["job_uuid"] == uuid]
    assert finish["exit_status"] == -1
    notes = [n["detail"] for n in buildkite.notifications if n["job_uuid"] == uuid]
    assert notes and finish["detail"].startswith(notes[0][:200])
    assert buildkite.job(uuid).state == "finished"
    return str(finish["detail"])


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        (
            {"podSpec": {"containers": [{"image": "ubuntu:24.04", "command": ["true"]}]}},
            "image 'ubuntu:24.04' is not allowed on this queue",
        ),
        (
            {
                "podSpec": {
                    "containers": [{"image": "alpine:3", "securityContext": {"privileged": True}}]
                }
            },
            "privileged mode is not allowed",
        ),
        ({"podSpec": {"hostNetwork": True}}, "hostNetwork is not allowed"),
        (
            {"podSpec": {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}},
            "hostPath volumes are not allowed",
        ),
        (
            {
                "podSpec": {
                    "containers": [
                        {"image": "alpine:3", "resources": {"limits": {"memory": "64Gi"}}}
                    ]
                }
            },
            "limits.memory 64Gi is above this queue's maximum 8Gi",
        ),
        ({"podTemplate": "shared"}, "podTemplate is not supported"),
    ],
)
def test_refused_step_is_failed_on_buildkite_with_the_reason(
    buildkite: FakeBuildkite,
    kube: FakeKube,
    clock: VirtualClock,
    api: AgentAPI,
    settings: dict[str, Any],
    reason: str,
) -> None:
    uuid = buildkite.add_job("pods", env=plugin_env(settings))
    ok = buildkite.add_job(
        "pods", env=plugin_env({"podSpec": {"containers": [{"image": "alpine:3"}]}})
    )
    loop = dispatcher(api, kube, clock)
    loop.run_cycle("poll")
    detail = refused_detail(buildkite, uuid)
    assert detail.startswith("stackgen refused this step's pod: ") and reason in detail
    assert set(created(kube)) == {ok}  # the refused step got no Job; its neighbour did
    assert not [s for s in kube.objects["secrets"].values() if uuid in json.dumps(s["metadata"])]
    # It is not dispatched again either.
    clock.advance(30)
    loop.run_cycle("poll")
    assert set(created(kube)) == {ok} and len(buildkite.finished) == 1


def test_plugin_disabled_on_the_queue_fails_plugin_steps_only(
    buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock, api: AgentAPI
) -> None:
    uuid = buildkite.add_job("pods", env=plugin_env({"podSpec": {}}))
    plain = buildkite.add_job("pods")
    dispatcher(api, kube, clock, PluginSettings(enabled=False)).run_cycle("poll")
    assert "the kubernetes plugin is disabled on this queue" in refused_detail(buildkite, uuid)
    assert set(created(kube)) == {plain}


def test_pod_spec_the_api_server_rejects_fails_the_job_with_its_message(
    buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock, api: AgentAPI
) -> None:
    uuid = buildkite.add_job("pods", env=plugin_env({"podSpec": {}}))
    kube.fail("dry_run_job", 422)
    dispatcher(api, kube, clock).run_cycle("poll")
    detail = refused_detail(buildkite, uuid)
    assert "Kubernetes rejected it: injected 422 on dry_run_job" in detail
    assert created(kube) == {}


def test_a_dry_run_that_fails_for_another_reason_is_retried_not_failed(
    buildkite: FakeBuildkite, kube: FakeKube, clock: VirtualClock, api: AgentAPI
) -> None:
    uuid = buildkite.add_job("pods", env=plugin_env({"podSpec": {}}))
    kube.fail("dry_run_job", 503)
    loop = dispatcher(api, kube, clock)
    loop.run_cycle("poll")
    assert buildkite.finished == [] and created(kube) == {}
    clock.advance(500)  # the reservation (pod start timeout + 120 s) lapses
    loop.run_cycle("poll")
    loop.run_cycle("poll")
    assert set(created(kube)) == {uuid}
