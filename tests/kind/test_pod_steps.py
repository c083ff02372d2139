"""Steps in their own pod on kind, with real agents and the sandbox's fake Buildkite.

- ``podSteps``: a job on the opted-in queue creates a Kubernetes Job through the API server
  with its agent's ServiceAccount token (curl, as the agent image has no kubectl), follows
  its pod's log and passes on its exit status; on a queue without the opt-in the agent has
  no token and the API server refuses the same request.
- ``kubernetes`` plugin steps on an ``exact`` queue: the step's containers run beside the
  agent container in a pod the dispatcher builds; guard-rail refusals fail the job on
  Buildkite with the reason; several command containers take turns and the job takes the
  failing one's exit status; the queue's podSpecPatch, then the step's, set a container's
  resources; the finished step's Job and pod are collected by their TTL; one of
  agent-stack-k8s's sample steps (our copy in tests/podspec/samples.yml) passes.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from typing import Any

import yaml

from stackgen.dispatcher.podspec import PLUGIN_KEY
from tests.kind.conftest import (
    PODS_QUEUE,
    PODS_QUEUE_PATCH,
    PODS_TTL_SECONDS,
    PODSTEPS_QUEUE,
    KindStack,
)
from tests.support import sandbox
from tests.support.cluster import wait_for
from tests.support.paths import ROOT
from tests.support.pipelines import job_of

SSH_URL = f"git@{sandbox.GIT_HOST}:{sandbox.REPOSITORY}.git"
#: A project image loaded into the node that is not the agent image (no git, no agent).
DEBIAN = "stackgen.local/debian:bookworm"
STACKGEN = "stackgen.local/stackgen:0.1.0"
#: What a step's command exits with when the API server refuses to create its Job.
REFUSED = 42
SAMPLES = ROOT / "tests" / "podspec" / "samples.yml"

#: Creates a Job running $STEP_SCRIPT in $STEP_IMAGE through the Kubernetes API (the
#: ServiceAccount token when mounted, anonymous otherwise), prints its pod's log and exits
#: with the pod's exit status.
RUN_JOB = r"""set -euo pipefail
sa=/var/run/secrets/kubernetes.io/serviceaccount
api=https://kubernetes.default.svc
ns=__NAMESPACE__
if [[ -f $sa/token ]]; then
  auth=(--cacert "$sa/ca.crt" -H "Authorization: Bearer $(cat "$sa/token")")
  echo "using the mounted service-account token"
else
  auth=(-k)
  echo "no service-account token mounted"
fi
# HTTP/1.1: over HTTP/2 the API server resets a refused request's stream before its body.
call() { curl -sS --http1.1 "${auth[@]}" -H 'Content-Type: application/json' "$@"; }
name="step-$BUILDKITE_JOB_ID"
body=$(jq -n --arg name "$name" --arg image "$STEP_IMAGE" --arg script "$STEP_SCRIPT" '{
  apiVersion: "batch/v1", kind: "Job", metadata: {name: $name},
  spec: {backoffLimit: 0, template: {spec: {
    restartPolicy: "Never", automountServiceAccountToken: false,
    containers: [{name: "step", image: $image, command: ["/bin/sh", "-c", $script],
                  resources: {requests: {cpu: "10m", memory: "16Mi"}}}]}}}}')
code=$(call -o /tmp/create.json -w '%{http_code}' -X POST \
  --data "$body" "$api/apis/batch/v1/namespaces/$ns/jobs") || echo "curl exited with $?"
echo "create Job: HTTP $code"
if [[ $code != 201 ]]; then
  jq -r .message /tmp/create.json || true
  exit __REFUSED__
fi
pod=
for _ in $(seq 120); do
  pod=$(call "$api/api/v1/namespaces/$ns/pods?labelSelector=job-name%3D$name" |
    jq -r '.items[0].metadata.name // empty')
  [[ -n $pod ]] && break
  sleep 1
done
echo "step pod: $pod"
for _ in $(seq 120); do
  phase=$(call "$api/api/v1/namespaces/$ns/pods/$pod" | jq -r .status.phase)
  [[ $phase == Pending ]] || break
  sleep 1
done
call "$api/api/v1/namespaces/$ns/pods/$pod/log?follow=true"
status=
for _ in $(seq 120); do
  status=$(call "$api/api/v1/namespaces/$ns/pods/$pod" |
    jq -r '.status.containerStatuses[0].state.terminated.exitCode // empty')
  [[ -n $status ]] && break
  sleep 1
done
call -o /dev/null -X DELETE --data '{"propagationPolicy":"Background"}' \
  "$api/apis/batch/v1/namespaces/$ns/jobs/$name"
echo "step pod exited with $status"
exit "$status"
"""


def run_job_command(namespace: str, script: str) -> str:
    """The job's command: :data:`RUN_JOB` for ``script`` in the Debian image."""
    body = RUN_JOB.replace("__NAMESPACE__", namespace).replace("__REFUSED__", str(REFUSED))
    return f"export STEP_IMAGE={DEBIAN} STEP_SCRIPT={shlex.quote(script)}\n{body}"


def run(stack: KindStack, queue: str, command: str, **fields: Any) -> dict[str, Any]:
    uuid = stack.sandbox.enqueue(queue, command, **fields)
    job = stack.sandbox.wait_finished(uuid, timeout=300)
    job["log"] = stack.sandbox.log(uuid)
    return job


def step_jobs(stack: KindStack) -> list[str]:
    items = stack.cluster.items("jobs.batch", stack.namespace)
    return [j["metadata"]["name"] for j in items if j["metadata"]["name"].startswith("step-")]


def test_pod_steps_queue_runs_a_kubernetes_job_and_passes_on_its_status(
    kind_stack: KindStack,
) -> None:
    stack = kind_stack
    script = 'echo "hello from the step pod $(hostname)"; test ! -e /usr/bin/git; exit {}'
    ok = run(stack, PODSTEPS_QUEUE, run_job_command(stack.namespace, script.format(0)))
    assert (ok["state"], ok["exit_status"]) == ("finished", 0), ok["log"]
    assert "using the mounted service-account token" in ok["log"]
    assert "create Job: HTTP 201" in ok["log"]
    assert "hello from the step pod step-" in ok["log"]
    failed = run(stack, PODSTEPS_QUEUE, run_job_command(stack.namespace, script.format(7)))
    assert (failed["state"], failed["exit_status"]) == ("finished", 7), failed["log"]
    assert "hello from the step pod step-" in failed["log"]
    assert "step pod exited with 7" in failed["log"]
    # The agent deleted its Jobs through the same ServiceAccount.
    wait_for(lambda: not step_jobs(stack), timeout=60, what="the step Jobs to be deleted")


def test_a_queue_without_pod_steps_is_refused_by_the_api_server(kind_stack: KindStack) -> None:
    stack = kind_stack
    job = run(stack, "kind-dispatch", run_job_command(stack.namespace, "echo never"))
    assert (job["state"], job["exit_status"]) == ("finished", REFUSED), job["log"]
    assert "no service-account token mounted" in job["log"]
    assert "create Job: HTTP 403" in job["log"]
    assert 'cannot create resource "jobs" in API group "batch"' in job["log"]
    assert not step_jobs(stack)


# ---------------------------------------------------------------------- the kubernetes plugin


def plugin_env(settings: dict[str, Any]) -> dict[str, str]:
    return {"BUILDKITE_PLUGINS": json.dumps([{PLUGIN_KEY: settings}])}


def pod_of(stack: KindStack, uuid: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        pods = stack.cluster.items("pods", stack.namespace, f"stackgen.io/buildkite-job={uuid}")
        return pods[0] if pods else None

    pod = wait_for(found, timeout=60, what=f"the pod of job {uuid}")
    assert pod is not None
    return pod


def test_a_plugin_step_runs_its_command_in_its_own_container(kind_stack: KindStack) -> None:
    stack = kind_stack
    command = (
        "test ! -e /usr/local/bin/buildkite-agent && echo not-the-agent-image; "
        "head -n 3 README.md; echo container=$BUILDKITE_CONTAINER_ID"
    )
    env = plugin_env({"podSpec": {"containers": [{"image": DEBIAN, "command": [command]}]}})
    uuid = stack.sandbox.enqueue(PODS_QUEUE, "true", env=env, repository=SSH_URL)
    pod = pod_of(stack, uuid)
    job = stack.sandbox.wait_finished(uuid, timeout=300)
    log = stack.sandbox.log(uuid)
    assert (job["state"], job["exit_status"]) == ("finished", 0), log
    assert "not-the-agent-image" in log
    assert "Served by the stackgen test git server" in log  # the checked-out repository
    spec = pod["spec"]
    containers = {c["name"]: c["image"] for c in spec["containers"]}
    assert containers["container-0"] == DEBIAN
    assert {"agent", "checkout", "container-0"} <= set(containers)
    assert containers["agent"] == containers["checkout"] != DEBIAN


def test_a_plugin_steps_sidecar_is_reachable_from_its_command(kind_stack: KindStack) -> None:
    stack = kind_stack
    fetch = (
        "bash -c 'for i in $(seq 30); do exec 3<>/dev/tcp/127.0.0.1/8080 && break; sleep 1; done; "
        'printf "GET / HTTP/1.0\\r\\n\\r\\n" >&3; cat <&3\''
    )
    sidecar = {
        "image": STACKGEN,
        "command": ["python3", "-m", "http.server", "8080", "--directory", "/workspace"],
    }
    env = plugin_env(
        {
            "podSpec": {"containers": [{"image": DEBIAN, "command": [fetch]}]},
            "sidecars": [sidecar],
            "checkout": {"skip": True},
        }
    )
    uuid = stack.sandbox.enqueue(PODS_QUEUE, "true", env=env)
    pod = pod_of(stack, uuid)
    job = stack.sandbox.wait_finished(uuid, timeout=300)
    log = stack.sandbox.log(uuid)
    assert (job["state"], job["exit_status"]) == ("finished", 0), log
    assert "HTTP/1.0 200 OK" in log
    assert "Directory listing for /" in log
    assert "buildkite-agent" in log  # the sidecar serves the shared workspace
    init = {c["name"]: c for c in pod["spec"]["initContainers"]}
    assert init["sidecar-0"]["image"] == STACKGEN
    assert init["sidecar-0"]["restartPolicy"] == "Always"


def refusal(stack: KindStack, settings: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Enqueue a plugin step; the job as finished and the timeline notes it got."""
    uuid = stack.sandbox.enqueue(PODS_QUEUE, "true", env=plugin_env(settings))
    job = stack.sandbox.wait_finished(uuid, timeout=120)
    finished = stack.sandbox.control("_call('GET', 'finished')")["finished"]
    (finish,) = [f for f in finished if f["job_uuid"] == uuid]
    notifications = stack.sandbox.control("_call('GET', 'notifications')")["notifications"]
    notes = [n["detail"] for n in notifications if n["job_uuid"] == uuid]
    selector = f"stackgen.io/buildkite-job={uuid}"
    assert not stack.cluster.items("jobs.batch", stack.namespace, selector)
    return {**job, "detail": finish["detail"], "finish_status": finish["exit_status"]}, notes


def test_disallowed_images_and_privileged_steps_are_failed_with_the_reason(
    kind_stack: KindStack,
) -> None:
    stack = kind_stack
    image, notes = refusal(
        stack, {"podSpec": {"containers": [{"image": "ubuntu:24.04", "command": ["true"]}]}}
    )
    assert (image["state"], image["exit_status"]) == ("finished", -1)
    reason = "container 'container-0': image 'ubuntu:24.04' is not allowed on this queue"
    assert image["detail"].startswith("stackgen refused this step's pod: ")
    assert reason in image["detail"]
    assert any(reason in n for n in notes), notes
    privileged = {
        "image": DEBIAN,
        "command": ["true"],
        "securityContext": {"privileged": True},
    }
    priv, notes = refusal(stack, {"podSpec": {"containers": [privileged]}})
    assert (priv["state"], priv["exit_status"]) == ("finished", -1)
    assert "privileged" in priv["detail"], priv["detail"]
    assert any("privileged" in n for n in notes), notes


# ------------------------------------------------------------ several containers, patches, TTL


def enqueue_plugin(
    stack: KindStack, settings: dict[str, Any], command: str = "true", **fields: Any
) -> str:
    return stack.sandbox.enqueue(PODS_QUEUE, command, env=plugin_env(settings), **fields)


def finished(stack: KindStack, uuid: str) -> tuple[dict[str, Any], str]:
    """The job once finished on the fake, and its log."""
    job = stack.sandbox.wait_finished(uuid, timeout=300)
    return job, stack.sandbox.log(uuid)


def by_name(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod["spec"]["containers"]}


def test_two_command_containers_run_in_turn_and_the_job_takes_their_exit_status(
    kind_stack: KindStack,
) -> None:
    """As the agent's kubernetes exec mode runs them (agent-stack-k8s relies on the same):
    container N starts once container N-1 exited; the first non-zero exit ends the job with
    that status and the containers after it never start."""
    stack = kind_stack

    def two(first: str, second: str) -> dict[str, Any]:
        return {
            "podSpec": {
                "containers": [
                    {"image": DEBIAN, "command": [first]},
                    {"image": STACKGEN, "command": [second]},
                ]
            },
            "checkout": {"skip": True},
        }

    # Every marker differs from the command text the log also shows: it proves a run.
    in_stackgen = "echo second-ran-in=$BUILDKITE_CONTAINER_ID; python3 -c 'print(\"py\", 2 + 2)'"
    passing = enqueue_plugin(
        stack,
        {
            "podSpec": {
                "containers": [
                    {"image": DEBIAN, "command": ["echo first-ran-in=$BUILDKITE_CONTAINER_ID"]},
                    {"image": STACKGEN, "command": [in_stackgen + "; head -n 3 README.md"]},
                ]
            }
        },
        repository=SSH_URL,
    )
    echo_1, echo_2 = "echo first-ran-$((40 + 1))", "echo second-ran-$((40 + 2))"
    second_fails = enqueue_plugin(stack, two(echo_1, f"{echo_2}; exit 5"))
    first_fails = enqueue_plugin(stack, two(f"{echo_1}; exit 3", echo_2))

    pod = pod_of(stack, passing)
    job, log = finished(stack, passing)
    assert (job["state"], job["exit_status"]) == ("finished", 0), log
    # checkout is client 0, then container-0 and container-1, one after the other.
    assert "first-ran-in=1" in log and "second-ran-in=2" in log, log
    assert log.index("first-ran-in=1") < log.index("second-ran-in=2")
    assert "py 4" in log  # the second container's own image
    assert "Served by the stackgen test git server" in log  # it sees the checkout
    containers = by_name(pod)
    assert (containers["container-0"]["image"], containers["container-1"]["image"]) == (
        DEBIAN,
        STACKGEN,
    )
    env = {e["name"]: e.get("value") for e in containers["agent"]["env"]}
    assert env["BUILDKITE_CONTAINER_COUNT"] == "3"

    job, log = finished(stack, second_fails)
    assert (job["state"], job["exit_status"]) == ("finished", 5), log
    assert "first-ran-41" in log and "second-ran-42" in log, log

    job, log = finished(stack, first_fails)
    assert (job["state"], job["exit_status"]) == ("finished", 3), log
    assert "first-ran-41" in log, log
    assert "second-ran-42" not in log, log


def test_pod_spec_patches_change_resources_queue_first_then_the_step(
    kind_stack: KindStack,
) -> None:
    stack = kind_stack
    show = (
        "echo patched-by=$STACKGEN_PATCHED_BY; "
        "echo memory-limit=$(cat /sys/fs/cgroup/memory.max 2>/dev/null "
        "|| cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"
    )
    container = {"image": DEBIAN, "command": [show]}
    step_patch = {
        "containers": [
            {
                "name": "container-0",
                "resources": {
                    "requests": {"memory": "64Mi"},
                    "limits": {"cpu": "1", "memory": "200Mi"},
                },
                "env": [{"name": "STACKGEN_PATCHED_BY", "value": "step"}],
            }
        ]
    }
    queue_only = enqueue_plugin(
        stack, {"podSpec": {"containers": [container]}, "checkout": {"skip": True}}
    )
    both = enqueue_plugin(
        stack,
        {
            "podSpec": {"containers": [container]},
            "podSpecPatch": step_patch,
            "checkout": {"skip": True},
        },
    )
    queue_pod, both_pod = pod_of(stack, queue_only), pod_of(stack, both)

    job, log = finished(stack, queue_only)
    assert (job["state"], job["exit_status"]) == ("finished", 0), log
    assert "patched-by=queue" in log
    assert f"memory-limit={300 * 2**20}" in log, log
    assert by_name(queue_pod)["container-0"]["resources"] == PODS_QUEUE_PATCH["resources"]

    job, log = finished(stack, both)
    assert (job["state"], job["exit_status"]) == ("finished", 0), log
    assert "patched-by=step" in log
    assert f"memory-limit={200 * 2**20}" in log, log
    # The step's values win where both patches set a field; the queue's cpu request stays.
    assert by_name(both_pod)["container-0"]["resources"] == {
        "requests": {"cpu": "15m", "memory": "64Mi"},
        "limits": {"cpu": "1", "memory": "200Mi"},
    }
    # Stackgen's own containers keep their resources.
    assert by_name(both_pod)["agent"]["resources"] == by_name(queue_pod)["agent"]["resources"]


def test_a_finished_steps_job_and_pod_are_collected(kind_stack: KindStack) -> None:
    stack = kind_stack
    uuid = enqueue_plugin(
        stack,
        {
            "podSpec": {"containers": [{"image": DEBIAN, "command": ["echo done"]}]},
            "checkout": {"skip": True},
        },
    )
    selector = f"stackgen.io/buildkite-job={uuid}"
    pod_of(stack, uuid)
    (owner,) = stack.cluster.items("jobs.batch", stack.namespace, selector)
    assert owner["spec"]["ttlSecondsAfterFinished"] == PODS_TTL_SECONDS
    job, log = finished(stack, uuid)
    assert (job["state"], job["exit_status"]) == ("finished", 0), log

    def gone() -> bool:
        return not (
            stack.cluster.items("jobs.batch", stack.namespace, selector)
            or stack.cluster.items("pods", stack.namespace, selector)
        )

    started = time.monotonic()
    wait_for(gone, timeout=PODS_TTL_SECONDS + 120, interval=2, what=f"job {uuid}'s Job and pod")
    print(f"\nJob and pod of {uuid} collected {time.monotonic() - started:.0f}s after it finished")


# ---------------------------------------------------------------- an agent-stack-k8s sample

#: The sample's public images and the local images that stand in for them on kind.
LOCAL_IMAGES = {"alpine:latest": DEBIAN}
SAMPLE = "extra volume mounts on sidecars"


def localised(value: Any) -> Any:
    """``value`` with every ``image`` replaced by its local stand-in (KeyError if none)."""
    if isinstance(value, dict):
        return {k: LOCAL_IMAGES[v] if k == "image" else localised(v) for k, v in value.items()}
    if isinstance(value, list):
        return [localised(v) for v in value]
    return value


def node_shell(stack: KindStack, script: str) -> subprocess.CompletedProcess[str]:
    """``sh -c SCRIPT`` on the kind node (its container)."""
    return subprocess.run(
        ["docker", "exec", f"{stack.cluster.name}-control-plane", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_agent_stack_k8s_sample_pipeline_runs_and_passes(kind_stack: KindStack) -> None:
    stack = kind_stack
    pipeline = yaml.safe_load(SAMPLES.read_text())
    (step,) = [s for s in pipeline["steps"] if s.get("label") == SAMPLE]
    command, env = job_of(localised(step), pipeline)
    # The sidecar creates the file the command tests for, on a hostPath of the node.
    parcel = "/tmp/volumes/scratch/shared/parcel"
    assert node_shell(stack, f"rm -f {parcel}").returncode == 0
    uuid = stack.sandbox.enqueue(PODS_QUEUE, command, env=env, repository=SSH_URL)
    pod = pod_of(stack, uuid)
    job, log = finished(stack, uuid)
    assert (job["state"], job["exit_status"]) == ("finished", 0), log
    found = node_shell(stack, f"test -f {parcel}")
    assert found.returncode == 0, f"the sidecar wrote no {parcel} on the node: {found.stderr}"
    sidecar = {c["name"]: c for c in pod["spec"]["initContainers"]}["sidecar-0"]
    mounts = {m["mountPath"]: m.get("subPath") for m in sidecar["volumeMounts"]}
    assert mounts["/shared"] == "shared" and mounts["/sidecar-only"] == "sidecar"
    command_mounts = {
        m["mountPath"]: m.get("subPath") for m in by_name(pod)["container-0"]["volumeMounts"]
    }
    assert command_mounts["/shared"] == "shared" and "/sidecar-only" not in command_mounts
