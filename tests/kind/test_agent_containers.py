"""The stack's agent hooks with real agents, on plain Docker (no kind cluster needed).

The fake Buildkite and the test git server run as containers; each agent runs from the
project's agent image with what the stack's agent pod mounts (its hooks as built, SSH key,
known_hosts, git-credentials). Quicker than the cluster tests and independent of them: what
breaks here is the hooks or the images, not the dispatcher or Kubernetes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import kind, sandbox
from tests.support.agent_containers import AgentRig, docker, docker_ready, rig_keys_and_overlay

SSH_URL = f"git@{sandbox.GIT_HOST}:{sandbox.REPOSITORY}.git"
HTTPS_URL = f"https://{sandbox.GIT_HOST}/{sandbox.REPOSITORY}.git"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentRig]:
    why = docker_ready()
    if why:
        if os.environ.get("STACKGEN_E2E_REQUIRED") == "1":
            pytest.fail(f"the container tests need {why}", pytrace=False)
        pytest.skip(f"the container tests need {why}")
    root = tmp_path_factory.mktemp("rig")
    keys, overlay = rig_keys_and_overlay(root)
    rig = AgentRig(root, keys, overlay)
    try:
        yield rig.start()
    finally:
        rig.stop()


def test_checkout_over_ssh_and_https_with_the_stacks_hooks(rig: AgentRig) -> None:
    uuid = rig.enqueue(
        f"git clone -q {SSH_URL} /tmp/ssh && cat /tmp/ssh/README.md && "
        f"git -c http.sslVerify=false clone -q {HTTPS_URL} /tmp/https && echo both-clones-ok"
    )
    rig.agent("--disconnect-after-job")
    job = rig.job(uuid)
    assert (job["state"], job["exit_status"]) == ("finished", 0), job["log"]
    assert "Served by the stackgen test git server" in job["log"]
    assert "both-clones-ok" in job["log"]
    assert kind.ENV_HOOK_MARKER in job["log"]
    assert "SSH key loaded into ssh-agent" in job["log"]
    assert rig.keys.token not in job["log"]
    assert rig.keys.http_password not in job["log"]


def test_a_wrong_known_hosts_fails_the_checkout(rig: AgentRig, tmp_path: Path) -> None:
    other = kind.Keys.generate()
    wrong = tmp_path / "known_hosts"
    wrong.write_text(other.known_hosts())
    uuid = rig.enqueue(f"git clone -q {SSH_URL} /tmp/ssh && echo cloned-anyway")
    rig.agent("--disconnect-after-job", ssh=rig.ssh_dir(wrong, "ssh-wrong-host"))
    job = rig.job(uuid)
    assert job["exit_status"] not in (0, None), job["log"]
    assert "Host key verification failed" in job["log"]
    printed = [line for line in job["log"].splitlines() if line.endswith("cloned-anyway")]
    assert all(line.startswith("$ ") for line in printed), printed  # only the command's echo


def test_a_long_lived_agent_keeps_no_ssh_agent_and_a_wrong_password_is_refused(
    rig: AgentRig,
) -> None:
    agent = rig.agent(detach=True)
    try:
        ok = rig.enqueue(f"git ls-remote {SSH_URL} && echo ls-remote-ok")
        url = f"https://{kind.HTTP_USER}:wrong@{sandbox.GIT_HOST}/{sandbox.REPOSITORY}.git"
        refused = rig.enqueue(f"git -c credential.helper= -c http.sslVerify=false ls-remote {url}")
        from tests.support.cluster import wait_for

        def both_done() -> bool:
            return all(rig.job(u)["state"] == "finished" for u in (ok, refused))

        wait_for(both_done, timeout=120, interval=1, what="both jobs to finish")
        assert rig.job(ok)["exit_status"] == 0
        assert "ls-remote-ok" in rig.job(ok)["log"]
        assert rig.job(refused)["exit_status"] not in (0, None)
        left = docker(
            "exec", agent, "bash", "-c", "ps -eo comm=; echo --; ls -A /buildkite/run"
        ).stdout
        processes, run_dir = left.split("--\n")
        assert "ssh-agent" not in processes, left
        assert run_dir.strip() == "", left
    finally:
        docker("rm", "-f", "-v", agent, check=False)
