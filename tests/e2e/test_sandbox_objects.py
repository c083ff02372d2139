"""bin/up --sandbox's objects against a real API server (the kwok session cluster).

On kwok nothing runs, so this checks what the API server and its admission say about the
sandbox's namespace, Deployments, Services and Secrets, that the fake gets the stack's token
unchanged, and that applying again (another stack's queues known) leaves the fake's pod alone.
The pods really running is the kind tier's part (tests/kind).
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import yaml

from stackgen.pipeline import build
from tests.support import sandbox
from tests.support.cluster import Cluster
from tests.support.paths import EXAMPLE, ROOT, TOOLS_BIN


def sandbox_apply(cluster: Cluster, stack: Path, state: Path, extra: str = "") -> str:
    """bin/lib/sandbox.sh's sandbox_apply, as bin/up runs it."""
    script = (
        f'set -euo pipefail; ROOT="{ROOT}"; BIN="{TOOLS_BIN}"; STATE="{state}"; PROG=t; '
        'TIMEOUT=60; source "$ROOT/bin/lib/common.sh"; source "$ROOT/bin/versions.env"; '
        'source "$ROOT/bin/lib/sandbox.sh"; '
        f'kc() {{ kubectl --kubeconfig "{cluster.kubeconfig}" "$@"; }}; sandbox_apply "$1"'
    )
    proc = subprocess.run(
        ["bash", "-c", script, "x", str(stack)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**cluster.env(), "STACKGEN_SANDBOX_QUEUES": extra},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_sandbox_objects_are_admitted_and_reapplying_keeps_the_fake(
    cluster: Cluster, tmp_path: Path
) -> None:
    manifest = build(EXAMPLE).manifest
    stack = tmp_path / "stack.yaml"
    stack.write_bytes(manifest)
    token = next(
        d["data"]["token"]
        for d in yaml.safe_load_all(manifest)
        if d and d["kind"] == "Secret" and "token" in (d.get("data") or {})
    )
    try:
        out = sandbox_apply(cluster, stack, tmp_path / "state", extra="other-stack-queue")
        assert "ready: deployment/fake-buildkite" in out
        assert "ready: deployment/git-server" in out
        # The token went from one Secret to the other without being shown.
        assert base64.b64decode(token).decode() not in out
        secret = cluster.get("secret", "fake-buildkite", sandbox.NAMESPACE)
        assert secret is not None and secret["data"]["token"] == token.replace("\n", "")
        deploy = cluster.get("deployment", "fake-buildkite", sandbox.NAMESPACE)
        assert deploy is not None
        args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        assert sandbox.queue_args(args) == ["builds", "default", "other-stack-queue"]
        generation = deploy["metadata"]["generation"]

        # Applied again for the same stack, without naming the other queue: nothing changes.
        out = sandbox_apply(cluster, stack, tmp_path / "state")
        assert "deployment.apps/fake-buildkite unchanged" in out
        again = cluster.get("deployment", "fake-buildkite", sandbox.NAMESPACE)
        assert again is not None and again["metadata"]["generation"] == generation
        known_hosts = tmp_path / "state" / "sandbox" / "known_hosts"
        assert known_hosts.read_text().startswith(sandbox.GIT_HOST)
    finally:
        cluster.kubectl("delete", "namespace", sandbox.NAMESPACE, "--wait=false", check=False)
