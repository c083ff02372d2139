"""The sandbox of ``bin/up --sandbox``: its objects and the layer over the stack."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from stackgen.pipeline import build
from tests.support import sandbox
from tests.support.paths import ROOT, TOOLS_BIN

EXAMPLE = ROOT / "overlays" / "example"


@pytest.fixture(scope="module")
def example_text() -> bytes:
    return build(EXAMPLE).manifest


@pytest.fixture(scope="module")
def example_docs(example_text: bytes) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(example_text) if d]


def by_kind(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def test_the_fake_gets_the_stacks_token_unchanged_and_its_queues(
    example_docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    objects = sandbox.manifests(example_docs, fake_image="F:1", git_image="G:1", state_dir=tmp_path)
    stack_secret = next(
        d
        for d in example_docs
        if d["kind"] == "Secret"
        and d["metadata"]["labels"]["app.kubernetes.io/component"] == "agent-token"
    )
    secret = by_kind(objects, "Secret", "fake-buildkite")
    assert secret["metadata"]["namespace"] == sandbox.NAMESPACE
    assert secret["data"]["token"] == stack_secret["data"]["token"]
    pod = by_kind(objects, "Deployment", "fake-buildkite")["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--host") + 1] == "0.0.0.0"
    assert args[args.index("--advertise-url") + 1] == sandbox.FAKE_URL
    assert sandbox.queue_args(args) == ["builds", "default"]
    assert pod["containers"][0]["image"] == "F:1"
    # The token is only referenced from the container, never inlined.
    assert "bkct_" not in yaml.safe_dump(pod)
    service = by_kind(objects, "Service", "fake-buildkite")
    assert service["spec"]["ports"][0]["port"] == sandbox.FAKE_PORT
    assert sandbox.ENDPOINT.startswith("http://fake-buildkite.stackgen-sandbox.svc")


def test_the_git_server_accepts_the_stacks_ssh_key_with_a_kept_host_key(
    example_docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives import serialization

    objects = sandbox.manifests(example_docs, fake_image="F:1", git_image="G:1", state_dir=tmp_path)
    data = by_kind(objects, "Secret", "git-server")["data"]
    key = serialization.load_ssh_private_key(
        (EXAMPLE / "secrets" / "ssh-deploy-key").read_bytes(), password=None
    )
    expected = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    assert base64.b64decode(data["authorized_keys"]).strip() == expected
    # The example's git-credentials are for github.com: no HTTPS user for the sandbox.
    assert "http-user" not in data
    known = (tmp_path / "known_hosts").read_text()
    assert known.startswith(f"{sandbox.GIT_HOST},git-server.stackgen-sandbox ssh-ed25519 ")
    host_key = base64.b64decode(data["ssh_host_ed25519_key"])
    # Made once: a second run (bin/up again) keeps the same host key.
    again = sandbox.manifests(example_docs, fake_image="F", git_image="G", state_dir=tmp_path)
    assert (
        base64.b64decode(by_kind(again, "Secret", "git-server")["data"]["ssh_host_ed25519_key"])
        == host_key
    )
    assert (tmp_path / "known_hosts").read_text() == known


def test_https_user_comes_from_the_line_for_the_git_server() -> None:
    lines = (
        "https://x-access-token:gh-secret@github.com\n"
        f"https://bob:p%40ss@{sandbox.GIT_HOST}/sandbox.git\n"
    )
    assert sandbox.http_user(base64.b64encode(lines.encode()).decode()) == ("bob", "p@ss")
    only_github = base64.b64encode(lines.splitlines()[0].encode()).decode()
    assert sandbox.http_user(only_github) is None
    assert sandbox.http_user(None) is None


def test_a_stack_without_a_token_secret_is_refused(
    example_docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    docs = [
        d
        for d in example_docs
        if not (
            d["kind"] == "Secret"
            and d["metadata"]["labels"]["app.kubernetes.io/component"] == "agent-token"
        )
    ]
    with pytest.raises(sandbox.SandboxError, match="no agent token Secret"):
        sandbox.manifests(docs, fake_image="F", git_image="G", state_dir=tmp_path)


@pytest.mark.skipif(not (TOOLS_BIN / "kustomize").exists(), reason="needs bin/setup kustomize")
def test_the_stack_layer_points_agents_dispatcher_and_adapter_at_the_fake(
    example_text: bytes, tmp_path: Path
) -> None:
    built = tmp_path / "stack.yaml"
    built.write_bytes(example_text)
    out = tmp_path / "out.yaml"
    script = (
        f'set -euo pipefail; ROOT="{ROOT}"; BIN="{TOOLS_BIN}"; STATE="{tmp_path}"; PROG=t; '
        'source "$ROOT/bin/lib/common.sh"; source "$ROOT/bin/versions.env"; '
        'source "$ROOT/bin/lib/sandbox.sh"; sandbox_layer "$1" "$2"'
    )
    subprocess.run(["bash", "-c", script, "x", str(built), str(out)], check=True, timeout=120)
    docs = [d for d in yaml.safe_load_all(out.read_text()) if d]
    maps = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d["data"]
        for d in docs
        if d["kind"] == "ConfigMap"
    }
    assert maps["agent-config"]["BUILDKITE_AGENT_ENDPOINT"] == sandbox.ENDPOINT
    assert maps["metrics-adapter-config"]["BUILDKITE_AGENT_ENDPOINT"] == sandbox.ENDPOINT
    dispatcher = by_kind(docs, "Deployment", "stackgen-dispatcher")
    env = dispatcher["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "STACKGEN_BUILDKITE_ENDPOINT", "value": sandbox.ENDPOINT} in env
    # Everything else is the stack as built.
    before = [d for d in yaml.safe_load_all(built.read_text()) if d]
    assert len(docs) == len(before)


def test_queues_the_fake_knows_are_kept_so_its_pod_stays(
    example_docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    first = sandbox.manifests(
        example_docs, fake_image="F", git_image="G", state_dir=tmp_path, keep_queues=["other"]
    )
    args = by_kind(first, "Deployment", "fake-buildkite")["spec"]["template"]["spec"]
    names = sandbox.queue_args(args["containers"][0]["args"])
    assert names == ["builds", "default", "other"]
    again = sandbox.manifests(
        example_docs, fake_image="F", git_image="G", state_dir=tmp_path, keep_queues=names
    )
    assert by_kind(again, "Deployment", "fake-buildkite") == by_kind(
        first, "Deployment", "fake-buildkite"
    )


def test_bin_sandbox_runs_the_ctl_in_the_fakes_pod(tmp_path: Path) -> None:
    state = tmp_path / "clusters" / "stackgen-demo"
    state.mkdir(parents=True)
    (state / "kubeconfig").write_text("{}")
    (state / "cluster.env").write_text("RUNTIME=kind\nNAME=stackgen-demo\nSANDBOX=1\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    kubectl = bindir / "kubectl"
    kubectl.write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
    kubectl.chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin"}
    argv = [str(ROOT / "bin" / "sandbox"), "--name", "stackgen-demo"]
    argv += ["--state-dir", str(tmp_path / "clusters")]
    proc = subprocess.run(
        [*argv, "enqueue", "--queue", "builds", "--wait", "--", "echo", "hi there"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    words = proc.stdout.splitlines()
    assert words[:6] == [
        "--kubeconfig",
        str(state / "kubeconfig"),
        "-n",
        "stackgen-sandbox",
        "exec",
        "deploy/fake-buildkite",
    ]
    assert words[words.index("--") + 1 :] == [
        "python3",
        "-m",
        "tests.support.fake_buildkite.ctl",
        "enqueue",
        "--queue",
        "builds",
        "--wait",
        "--command",
        "echo hi there",
    ]
    (state / "cluster.env").write_text("RUNTIME=kind\nNAME=stackgen-demo\nSANDBOX=0\n")
    proc = subprocess.run([*argv, "jobs"], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert (
        proc.stderr
        == "bin/sandbox: cluster stackgen-demo runs no sandbox (bin/up --sandbox starts one)\n"
    )


def test_placeholder_tokens_are_recognised_without_being_shown(
    example_docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    assert sandbox.placeholder_token(example_docs)
    real = [dict(d) for d in example_docs]
    for doc in real:
        labels = doc.get("metadata", {}).get("labels") or {}
        if doc["kind"] == "Secret" and labels.get("app.kubernetes.io/component") == "agent-token":
            doc["data"] = {"token": base64.b64encode(b"bkct_0123456789abcdef").decode()}
    assert not sandbox.placeholder_token(real)
    stack = tmp_path / "stack.yaml"
    stack.write_text(yaml.safe_dump_all(example_docs))
    proc = subprocess.run(
        [".venv/bin/python", "-m", "tests.support.sandbox", "placeholder", str(stack)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_a_new_token_rolls_the_fake_and_the_same_token_does_not(
    example_docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    def template(docs: list[dict[str, Any]]) -> Any:
        objects = sandbox.manifests(docs, fake_image="F", git_image="G", state_dir=tmp_path)
        return by_kind(objects, "Deployment", "fake-buildkite")["spec"]["template"]

    first = template(example_docs)
    assert template(example_docs) == first
    other = [dict(d) for d in example_docs]
    for doc in other:
        labels = doc.get("metadata", {}).get("labels") or {}
        if doc["kind"] == "Secret" and labels.get("app.kubernetes.io/component") == "agent-token":
            doc["data"] = {"token": base64.b64encode(b"bkct_another_token").decode()}
    assert template(other) != first
    assert "bkct_another_token" not in yaml.safe_dump(template(other))
