"""Git mirror volumes: newest ready one, prune by what pods mount, refresh."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import Any

from stackgen.common.models import GitMirror
from stackgen.dispatcher import mirrors
from tests.support.fake_buildkite import VirtualClock
from tests.support.fake_kube import FakeKube

MIRROR = GitMirror(
    name="mono",
    repository="https://github.com/example/mono.git",
    storage="10Gi",
    storage_class_name=None,
    keep=1,
    image="alpine/git:2.49.1",
    mount_path="/buildkite/git-mirrors",
)


def claim(kube: FakeKube, name: str, state: str) -> None:
    kube.add(
        "pvcs",
        {
            "metadata": {
                "name": name,
                "labels": {mirrors.LABEL_MIRROR: "mono", mirrors.LABEL_STATE: state},
            }
        },
    )


def record_created_jobs(kube: FakeKube) -> list[dict[str, Any]]:
    """The bodies of the Jobs created from now on (a refresh deletes its clone Job)."""
    created: list[dict[str, Any]] = []
    real_create = kube.create_job

    def create_job(body: dict[str, Any]) -> dict[str, Any]:
        created.append(body)
        return real_create(body)

    kube.create_job = create_job  # type: ignore[method-assign]
    return created


def test_newest_ready_and_prune_keeps_used_and_newest() -> None:
    clock = VirtualClock(1_800_000_000)
    kube = FakeKube(clock=clock)
    for index, state in enumerate(["ready", "ready", "ready", "building"]):
        claim(kube, f"m{index}", state)
        clock.advance(60)
    assert mirrors.newest_ready_claim(kube, "mono") == "m2"
    # A running pod still mounts m0; m3 is being built right now.
    kube.add(
        "pods",
        {
            "metadata": {"name": "p"},
            "spec": {"volumes": [{"name": "g", "persistentVolumeClaim": {"claimName": "m0"}}]},
            "status": {"phase": "Running"},
        },
    )
    deleted = mirrors.prune(kube, "mono", keep=1, now=clock())
    assert deleted == ["m1"]
    assert sorted(kube.objects["pvcs"]) == ["m0", "m2", "m3"]
    # Once the pod is gone, m0 goes too; a stale build goes after 6 hours.
    del kube.objects["pods"]["p"]
    assert mirrors.prune(kube, "mono", keep=1, now=clock()) == ["m0"]
    assert mirrors.prune(kube, "mono", keep=1, now=clock() + 7 * 3600) == ["m3"]


def test_refresh_builds_a_volume_and_marks_it_ready() -> None:
    kube = FakeKube()
    calls = {"n": 0}

    def sleep(_: float) -> None:
        calls["n"] += 1
        (job,) = kube.objects["jobs"].values()
        job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}

    created = record_created_jobs(kube)
    name = mirrors.refresh(kube, MIRROR, now=1_800_000_000, sleep=sleep)
    pvc = kube.objects["pvcs"][name]
    assert pvc["metadata"]["labels"][mirrors.LABEL_STATE] == "ready"
    # The finished clone Job is gone (its pod would keep a pruned claim Terminating).
    assert not kube.objects["jobs"]
    (job,) = created
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][-1] == "/mirror/https---github-com-example-mono-git"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert calls["n"] == 1


def agent_template(volumes: list[dict[str, object]]) -> dict[str, object]:
    return {
        "metadata": {"name": "buildkite-agent-mono"},
        "spec": {"jobTemplate": {"spec": {"template": {"spec": {"volumes": volumes}}}}},
    }


def test_the_clone_mounts_the_agent_templates_credentials() -> None:
    kube = FakeKube()
    ssh = {
        "name": "ssh-key",
        "secret": {"secretName": "buildkite-ssh-key-7h2f", "defaultMode": 256},
    }
    creds = {"name": "git-credentials", "secret": {"secretName": "team-git"}}
    other = {"name": "hooks", "configMap": {"name": "hooks"}}
    kube.add("cronjobs", agent_template([other, ssh, creds]))

    def sleep(_: float) -> None:
        (job,) = kube.objects["jobs"].values()
        job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}

    created = record_created_jobs(kube)
    rwo = dataclasses.replace(MIRROR, access_mode="ReadWriteOnce")
    name = mirrors.refresh(
        kube, rwo, now=1_800_000_000, template="buildkite-agent-mono", sleep=sleep
    )
    assert kube.objects["pvcs"][name]["spec"]["accessModes"] == ["ReadWriteOnce"]
    (job,) = created
    pod = job["spec"]["template"]["spec"]
    # The template's credential volumes as they are (hashed or existing Secret names).
    assert pod["volumes"][2:] == [ssh, creds]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["ssh-key"] == "/secrets/ssh"
    assert mounts["git-credentials"] == "/secrets/git-credentials"
    assert pod["securityContext"]["runAsUser"] == mirrors.CLONE_UID
    command = pod["containers"][0]["command"]
    assert command[:2] == ["sh", "-c"]
    assert command[3:] == ["sh", MIRROR.repository, "/mirror/https---github-com-example-mono-git"]


def test_the_clone_script_uses_the_ssh_key_and_pins_known_hosts(tmp_path: Path) -> None:
    """CLONE_SCRIPT run by a real sh with a fake git on PATH: what git is given."""
    secrets = tmp_path / "secrets"
    script = mirrors.CLONE_SCRIPT.replace("/secrets/", f"{secrets}/")
    (secrets / "ssh").mkdir(parents=True)
    (secrets / "ssh" / "ssh-privatekey").write_text("KEY\n")
    (secrets / "git-credentials").mkdir()
    (secrets / "git-credentials" / "git-credentials").write_text("https://u:p@host\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_git = bin_dir / "git"
    fake_git.write_text('#!/bin/sh\necho "git $* | $GIT_SSH_COMMAND" >> "$HOME/calls"\n')
    fake_git.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home)}
    subprocess.run(["sh", "-c", script, "sh", "git@host:r.git", "/mirror/x"], env=env, check=True)
    calls = (home / "calls").read_text().splitlines()
    assert calls[0].startswith(
        f"git config --global credential.helper store --file={home}/git-credentials |"
    )
    assert calls[1].startswith("git clone --mirror -- git@host:r.git /mirror/x | ssh -i ")
    assert (
        f"-o UserKnownHostsFile={secrets}/ssh/known_hosts -o StrictHostKeyChecking=yes" in calls[1]
    )
    assert (home / "id").read_text() == "KEY\n"
    assert (home / "id").stat().st_mode & 0o777 == 0o600
    assert (home / "git-credentials").stat().st_mode & 0o777 == 0o600
