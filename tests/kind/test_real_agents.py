"""Real buildkite-agents in a kind cluster, driven by the fake Buildkite of the sandbox.

A job enqueued in the fake goes through the dispatcher pod (the stackgen image) into a
Kubernetes Job whose real agent registers with the fake, takes exactly that job, runs its
command with the stack's hooks, uploads its log and finishes with the command's exit status.
"""

from __future__ import annotations

import json
from typing import Any

from tests.kind.conftest import BAD_HOSTS_QUEUE, WEBHOOK_QUEUE, KindStack
from tests.support import kind, sandbox
from tests.support.cluster import wait_for

SSH_URL = f"git@{sandbox.GIT_HOST}:{sandbox.REPOSITORY}.git"
HTTPS_URL = f"https://{sandbox.GIT_HOST}/{sandbox.REPOSITORY}.git"
#: The sandbox's git server has a self-signed certificate; the credentials are still checked.
HTTPS_CLONE = f"git -c http.sslVerify=false clone -q {HTTPS_URL} /tmp/https-clone"


def queue_jobs(stack: KindStack, queue: str) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = stack.cluster.items(
        "jobs.batch", stack.namespace, f"stackgen.io/queue={queue}"
    )
    return jobs


def agents_of(stack: KindStack, uuid: str) -> list[dict[str, Any]]:
    return [a for a in stack.sandbox.agents() if uuid in (a.get("jobs") or [])]


def run_job(stack: KindStack, queue: str, command: str, **fields: Any) -> dict[str, Any]:
    uuid = stack.sandbox.enqueue(queue, command, **fields)
    job = stack.sandbox.wait_finished(uuid, timeout=300)
    job["log"] = stack.sandbox.log(uuid)
    return job


def assert_clean_log(stack: KindStack, job: dict[str, Any]) -> None:
    """The stack's hooks ran and no secret reached the log."""
    assert kind.ENV_HOOK_MARKER in job["log"]
    assert stack.keys.token not in job["log"]
    assert stack.keys.http_password not in job["log"]


def test_dispatch_queue_runs_the_enqueued_job_on_a_real_agent(kind_stack: KindStack) -> None:
    stack = kind_stack
    # Other tests may have used this queue before (its agents stay in the fake's list).
    before = {a["name"] for a in stack.sandbox.agents() if a["queue"] == "kind-dispatch"}
    job = run_job(
        stack, "kind-dispatch", 'echo "hello from $BUILDKITE_JOB_ID on $BUILDKITE_AGENT_NAME"'
    )
    uuid = job["uuid"]
    assert (job["state"], job["exit_status"]) == ("finished", 0), job["log"]
    assert f"hello from {uuid} on {job['agent_name']}" in job["log"]
    assert_clean_log(stack, job)
    # The agent was a pod of a Job the dispatcher created for this queue, and took only it.
    assert job["agent_name"].startswith("buildkite-agent-kind-dispatch-")
    (agent,) = agents_of(stack, uuid)
    assert agent["jobs"] == [uuid]
    # No surplus: this job brought exactly one new agent (buffer 0).
    new = [
        a["name"]
        for a in stack.sandbox.agents()
        if a["queue"] == "kind-dispatch" and a["name"] not in before
    ]
    assert new == [agent["name"]]

    def job_completed() -> list[dict[str, Any]]:
        return [
            j
            for j in queue_jobs(stack, "kind-dispatch")
            if job["agent_name"].startswith(j["metadata"]["name"])
            and (j.get("status") or {}).get("succeeded") == 1
        ]

    wait_for(job_completed, timeout=120, what="the agent's Kubernetes Job to complete")


def test_dispatch_queue_reports_a_failing_command(kind_stack: KindStack) -> None:
    job = run_job(kind_stack, "kind-dispatch", "echo about to fail; exit 3")
    assert (job["state"], job["exit_status"]) == ("finished", 3), job["log"]
    assert "about to fail" in job["log"]


def test_exact_queue_one_job_one_agent(kind_stack: KindStack) -> None:
    stack = kind_stack
    uuids = [stack.sandbox.enqueue("kind-exact", f"echo exact {i}") for i in range(2)]
    jobs = [stack.sandbox.wait_finished(u, timeout=300) for u in uuids]
    assert [(j["state"], j["exit_status"]) for j in jobs] == [("finished", 0)] * 2
    names = {j["agent_name"] for j in jobs}
    assert len(names) == 2, "each exact job gets its own agent"
    for uuid in uuids:
        (agent,) = agents_of(stack, uuid)
        assert agent["jobs"] == [uuid]
        assert f"exact {uuids.index(uuid)}" in stack.sandbox.log(uuid)

    # No surplus: nothing is left running for the queue once its jobs are done.
    def idle() -> bool:
        running = [
            a
            for a in stack.sandbox.agents()
            if a["queue"] == "kind-exact" and a["state"] != "disconnected"
        ]
        return not running

    wait_for(idle, timeout=120, what="every kind-exact agent to disconnect")


def test_checkout_over_ssh_and_https_with_the_stacks_credentials(kind_stack: KindStack) -> None:
    command = (
        f"git clone -q {SSH_URL} /tmp/ssh-clone && cat /tmp/ssh-clone/README.md && "
        f"{HTTPS_CLONE} && git -C /tmp/https-clone log --oneline -1 && echo both-clones-ok"
    )
    job = run_job(kind_stack, "kind-dispatch", command)
    assert (job["state"], job["exit_status"]) == ("finished", 0), job["log"]
    assert "Served by the stackgen test git server" in job["log"]
    assert "both-clones-ok" in job["log"]
    assert "SSH key loaded into ssh-agent" in job["log"]
    assert_clean_log(kind_stack, job)


def test_https_with_a_wrong_password_is_refused(kind_stack: KindStack) -> None:
    url = f"https://{kind.HTTP_USER}:wrong@{sandbox.GIT_HOST}/{sandbox.REPOSITORY}.git"
    command = f"git -c credential.helper= -c http.sslVerify=false ls-remote {url}"
    job = run_job(kind_stack, "kind-dispatch", command)
    assert job["exit_status"] not in (0, None), job["log"]


def test_the_pre_exit_hook_leaves_no_ssh_agent_on_a_long_lived_agent(
    kind_stack: KindStack,
) -> None:
    stack = kind_stack
    job = run_job(stack, "kind-hpa", f"git ls-remote {SSH_URL} && echo ls-remote-ok")
    assert (job["state"], job["exit_status"]) == ("finished", 0), job["log"]
    assert "ls-remote-ok" in job["log"]
    pod = job["agent_name"]
    # The hpa agent lives on: nothing of the job's ssh-agent or key may be left in it.
    ps = stack.cluster.kubectl(
        "-n",
        stack.namespace,
        "exec",
        pod,
        "-c",
        "agent",
        "--",
        "bash",
        "-c",
        "ps -eo comm= | sort | uniq -c; ls -A /buildkite/run",
    ).stdout
    assert "ssh-agent" not in ps, ps
    assert job["uuid"] not in ps, ps


def test_a_wrong_known_hosts_fails_the_checkout(
    kind_stack: KindStack, tmp_path_factory: Any
) -> None:
    stack = kind_stack
    other = kind.Keys.generate()
    root = tmp_path_factory.mktemp("bad-hosts")
    overlay = kind.write_overlay(
        root / "overlay",
        stack.keys,
        [
            {
                "name": BAD_HOSTS_QUEUE,
                "mode": "dispatch",
                "maxAgents": 1,
                "buffer": 0,
                "dispatch": {"pollIntervalSeconds": 1, "ttlSecondsAfterFinished": 30},
            }
        ],
        name="kind-e2e-bad",
        namespace="buildkite-e2e-bad",
        known_hosts=other.known_hosts(),
    )
    kind.apply_stack(stack.cluster, overlay, stack.host_key)
    job = run_job(
        stack, BAD_HOSTS_QUEUE, f"git clone -q {SSH_URL} /tmp/ssh-clone && echo cloned-anyway"
    )
    assert job["exit_status"] not in (0, None), job["log"]
    assert (
        "Host key verification failed" in job["log"] or "REMOTE HOST IDENTIFICATION" in job["log"]
    )
    # The command line is echoed in the log; its output line is not there.
    printed = [line for line in job["log"].splitlines() if line.endswith("cloned-anyway")]
    assert all(line.startswith("$ ") for line in printed), printed  # only the command's echo


def test_hpa_queue_scales_on_the_adapters_metrics(kind_stack: KindStack) -> None:
    stack = kind_stack
    path = (
        f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{stack.namespace}/"
        "buildkite_jobs_runnable?labelSelector=queue%3Dkind-hpa"
    )

    def metric() -> Any:
        proc = stack.cluster.kubectl("get", "--raw", path, check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    # The adapter pod answers through the API aggregator.
    answer = wait_for(metric, timeout=180, interval=2, what="the external metrics API to answer")
    assert answer["kind"] == "ExternalMetricValueList"
    uuids = [stack.sandbox.enqueue("kind-hpa", f"sleep 45; echo hpa job {i}") for i in range(3)]

    def scaled() -> bool:
        deploy = stack.cluster.get("deployment", "buildkite-agent-kind-hpa", stack.namespace)
        return bool(deploy and deploy["spec"]["replicas"] == 2)

    wait_for(scaled, timeout=180, interval=2, what="the HPA to scale kind-hpa to 2 agents")
    jobs = [stack.sandbox.wait_finished(u, timeout=400) for u in uuids]
    assert [(j["state"], j["exit_status"]) for j in jobs] == [("finished", 0)] * 3
    assert len({j["agent_name"] for j in jobs}) == 2, "two long-lived agents shared the jobs"


def test_a_signed_webhook_from_the_fake_starts_the_job_before_the_next_poll(
    kind_stack: KindStack,
) -> None:
    stack = kind_stack
    uuid = stack.sandbox.enqueue(WEBHOOK_QUEUE, "echo started by a webhook")
    url = f"http://stackgen-dispatcher.{stack.namespace}.svc.cluster.local:8080/webhook"
    # A wrong key is refused; the stack's webhook token is accepted.
    assert stack.sandbox.send_webhook(uuid, url, "not-the-webhook-token") == 401
    assert stack.sandbox.send_webhook(uuid, url, stack.keys.webhook_token) == 202
    # The queue polls every 300 s: finishing well within that took the webhook.
    job = stack.sandbox.wait_finished(uuid, timeout=150)
    assert (job["state"], job["exit_status"]) == ("finished", 0)
    metrics = stack.cluster.kubectl(
        "get",
        "--raw",
        f"/api/v1/namespaces/{stack.namespace}/services/stackgen-dispatcher:8080/proxy/metrics",
    ).stdout
    assert 'stackgen_webhooks_total{result="accepted"} 1.0' in metrics


def test_dind_queue_runs_docker_through_the_sidecar(kind_stack: KindStack) -> None:
    stack = kind_stack
    # An image built in the job from the agent's own static binary (no registry needed),
    # then run by the sidecar's dockerd.
    command = (
        "set -e; mkdir -p /tmp/ctx; cp /usr/local/bin/buildkite-agent /tmp/ctx/; "
        """printf 'FROM scratch\\nCOPY buildkite-agent /\\nENTRYPOINT ["/buildkite-agent"]\\n' """
        "> /tmp/ctx/Dockerfile; "
        "for i in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done; "
        "DOCKER_BUILDKIT=0 docker build -q -t kind-e2e/agent:1 /tmp/ctx; "
        "docker run --rm kind-e2e/agent:1 --version"
    )
    job = run_job(stack, "kind-dind", command)
    assert (job["state"], job["exit_status"]) == ("finished", 0), job["log"]
    assert "buildkite-agent version" in job["log"]
    pod_prefix = job["agent_name"]

    def pod_succeeded() -> bool:
        pods = stack.cluster.items("pods", stack.namespace, "stackgen.io/queue=kind-dind")
        return any(
            p["metadata"]["name"] == pod_prefix and p["status"].get("phase") == "Succeeded"
            for p in pods
        )

    # The sidecar stops with the agent, so the pod (and its Job) can complete.
    wait_for(pod_succeeded, timeout=120, what="the dind pod to end Succeeded")
