"""Steps in their own pod on kind, with real agents and the sandbox's fake Buildkite.

- ``podSteps``: a job on the opted-in queue creates a Kubernetes Job through the API server
  with its agent's ServiceAccount token (curl, as the agent image has no kubectl), follows
  its pod's log and passes on its exit status; on a queue without the opt-in the agent has
  no token and the API server refuses the same request.
- ``kubernetes`` plugin steps on an ``exact`` queue: the step's containers run beside the
  agent container in a pod the dispatcher builds; guard-rail refusals fail the job on
  Buildkite with the reason.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from stackgen.dispatcher.podspec import PLUGIN_KEY
from tests.kind.conftest import PODS_QUEUE, PODSTEPS_QUEUE, KindStack
from tests.support import sandbox
from tests.support.cluster import wait_for

SSH_URL = f"git@{sandbox.GIT_HOST}:{sandbox.REPOSITORY}.git"
#: A project image loaded into the node that is not the agent image (no git, no agent).
DEBIAN = "stackgen.local/debian:bookworm"
STACKGEN = "stackgen.local/stackgen:0.1.0"
#: What a step's command exits with when the API server refuses to create its Job.
REFUSED = 42

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
