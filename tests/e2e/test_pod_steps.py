"""Steps in their own pod, on the real API server (kwok runs the pods without containers).

- ``podSteps``: the RBAC the build generates is what the API server enforces: an opted-in
  queue's ServiceAccount may run Jobs and Pods and read pod logs in the stack's
  namespace, and nothing else; a queue without the opt-in may do nothing.
- ``kubernetes`` plugin steps in exact mode: `stackgen dispatcher` (a real process) reads
  the step from the fake Buildkite, builds its pod, the API server accepts the Job (dry
  run, then create) and the Job controller makes its pod; refused and invalid pod specs
  fail the job on Buildkite with the reason.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stackgen.dispatcher.podspec import PLUGIN_KEY
from tests.support.cluster import Cluster, wait_for
from tests.support.dispatcher_process import TOKEN, DispatcherProcess, build_stack
from tests.support.fake_buildkite import FakeBuildkite
from tests.support.pipelines import load_steps
from tests.support.step_pods import CASES

QUEUES = textwrap.dedent(
    """\
    queues:
      - name: jobs
        mode: dispatch
        maxAgents: 2
        podSteps: true
      - name: plain
        mode: dispatch
        maxAgents: 2
      - name: pods
        mode: exact
        maxAgents: 10
        dispatch: {pollIntervalSeconds: 1, ttlSecondsAfterFinished: 30}
        kubernetesPlugin:
          allowedImages: ["alpine:*", "registry.example.com/ci/*"]
          maxResources: {memory: 8Gi}
    """
)


@pytest.fixture
def fake() -> Iterator[FakeBuildkite]:
    with FakeBuildkite(token=TOKEN, queues=("jobs", "plain", "pods")) as server:
        yield server


def can_i(cluster: Cluster, account: str, namespace: str, *args: str) -> bool:
    """``kubectl auth can-i`` as a ServiceAccount (SubjectAccessReview on the API server)."""
    result = cluster.kubectl("auth", "can-i", *args, "--as", account, "-n", namespace, check=False)
    return result.stdout.strip() == "yes"


def test_pod_steps_rbac_is_enforced_by_the_api_server(
    cluster: Cluster, fake: FakeBuildkite, tmp_path: Path
) -> None:
    stack = build_stack(cluster, tmp_path, fake, "pod-steps-rbac", QUEUES)
    ns = stack.namespace
    steps = f"system:serviceaccount:{ns}:buildkite-agent-steps-jobs"
    plain = f"system:serviceaccount:{ns}:buildkite-agent"
    allowed = [
        ("create", "jobs.batch"),
        ("get", "jobs.batch"),
        ("list", "jobs.batch"),
        ("watch", "jobs.batch"),
        ("delete", "jobs.batch"),
        ("create", "pods"),
        ("watch", "pods"),
        ("delete", "pods"),
        ("get", "pods", "--subresource=log"),
    ]
    for verb, *resource in allowed:
        assert can_i(cluster, steps, ns, verb, *resource), (verb, resource)
        assert not can_i(cluster, plain, ns, verb, *resource), (verb, resource)
    # Nothing beyond what a step-pod plugin needs, nothing outside the namespace.
    for verb, *resource in [
        ("create", "secrets"),
        ("get", "secrets"),
        ("create", "pods", "--subresource=exec"),
        ("patch", "jobs.batch"),
        ("create", "cronjobs.batch"),
        ("create", "rolebindings.rbac.authorization.k8s.io"),
    ]:
        assert not can_i(cluster, steps, ns, verb, *resource), (verb, resource)
    assert not can_i(cluster, steps, "default", "create", "jobs.batch")
    assert not can_i(cluster, steps, "kube-system", "get", "pods")
    assert not can_i(cluster, steps, ns, "list", "nodes")

    # A real request through impersonation: the opted-in queue may, the other may not.
    def create_job(name: str, account: str) -> Any:
        return cluster.kubectl(
            "--as",
            account,
            "-n",
            ns,
            "create",
            "job",
            name,
            "--image=alpine:3.20",
            "--",
            "true",
            check=False,
        )

    assert create_job("probe", steps).returncode == 0
    refused = create_job("probe-2", plain)
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower()
    assert cluster.kubectl("get", "job", "probe", "-n", ns, check=False).returncode == 0
    # Only the opted-in queue's agents mount a token, as its own ServiceAccount.
    templates = {o["metadata"]["name"]: o for o in stack.objects if o["kind"] == "CronJob"}
    jobs_pod = templates["buildkite-agent-jobs"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    plain_pod = templates["buildkite-agent-plain"]["spec"]["jobTemplate"]["spec"]["template"][
        "spec"
    ]
    assert jobs_pod["automountServiceAccountToken"] is True
    assert jobs_pod["serviceAccountName"] == "buildkite-agent-steps-jobs"
    assert plain_pod["automountServiceAccountToken"] is False
    assert plain_pod["serviceAccountName"] == "buildkite-agent"


def plugin_env(settings: dict[str, Any]) -> dict[str, str]:
    return {"BUILDKITE_PLUGINS": json.dumps([{PLUGIN_KEY: settings}])}


def test_dispatcher_creates_plugin_step_pods_the_api_server_accepts(
    cluster: Cluster, fake: FakeBuildkite, tmp_path: Path
) -> None:
    stack = build_stack(cluster, tmp_path, fake, "pod-steps", QUEUES)
    ns = stack.namespace
    dispatcher = DispatcherProcess(cluster, stack, "steps", tmp_path)
    try:
        accepted = {}
        for case in ("two-containers", "sidecar", "podspecpatch-resources", "skip-checkout"):
            ((command, env),) = load_steps(CASES / case / "pipeline.yml")
            accepted[fake.add_job("pods", command=command, env=env)] = case
        plain = fake.add_job("pods", command="make test")
        refused = fake.add_job(
            "pods", env=plugin_env({"podSpec": {"containers": [{"image": "ubuntu:24.04"}]}})
        )
        # Passes the guard rails, but no API server accepts it (a container name is a DNS label).
        invalid = fake.add_job(
            "pods",
            env=plugin_env(
                {"podSpec": {"containers": [{"name": "Not_A_Label", "image": "alpine:3"}]}}
            ),
        )

        def job_of(uuid: str) -> dict[str, Any] | None:
            found = cluster.items(
                "jobs", namespace=ns, selector=f"stackgen.io/buildkite-job={uuid}"
            )
            return found[0] if found else None

        wanted = [*accepted, plain]
        wait_for(lambda: all(job_of(u) for u in wanted), timeout=120, what="the steps' Jobs")
        wait_for(lambda: len(fake.finished) >= 2, timeout=60, what="two steps failed on Buildkite")
        for uuid, case in accepted.items():
            job = job_of(uuid)
            assert job is not None
            spec = job["spec"]["template"]["spec"]
            names = [c["name"] for c in spec["containers"]]
            assert "agent" in names, case
            assert spec["initContainers"][0]["name"] == "copy-agent", case
            # The Job controller made its pod: the API server admitted the pod spec.
            wait_for(
                lambda uuid=uuid: cluster.items(
                    "pods", namespace=ns, selector=f"stackgen.io/buildkite-job={uuid}"
                ),
                timeout=120,
                what=f"the pod of {case}",
            )
        plain_job = job_of(plain)
        assert plain_job is not None
        assert [c["name"] for c in plain_job["spec"]["template"]["spec"]["containers"]] == ["agent"]
        details = {f["job_uuid"]: f["detail"] for f in fake.finished}
        assert set(details) == {refused, invalid}
        assert "image 'ubuntu:24.04' is not allowed on this queue" in details[refused]
        assert "Kubernetes rejected it" in details[invalid]
        assert "Not_A_Label" in details[invalid]
        notes = {n["job_uuid"] for n in fake.notifications if "refused" in n["detail"]}
        assert notes == {refused, invalid}
        assert job_of(refused) is None and job_of(invalid) is None
        assert TOKEN not in dispatcher.log_path.read_text()
    finally:
        dispatcher.stop()
