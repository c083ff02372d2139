"""The kind e2e tier's cluster, stacks and sandbox (``tests/kind``).

One kind cluster per session (:func:`start`: ``bin/up --runtime kind --no-apply``), stacks
applied into it with ``bin/up --sandbox`` (:func:`apply_stack`), so every stack talks to the
fake Buildkite running in the cluster; :class:`Sandbox` drives that fake through its ctl
command (``kubectl exec``, as ``bin/sandbox`` does).

:func:`write_overlay` writes a small stack for a single-node cluster on a 2-core machine:
tiny requests, its own agent token, an SSH key the sandbox's git server accepts (with the
git server's host key in known_hosts), HTTPS credentials for it, and an environment hook
that prints a marker.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support import sandbox
from tests.support.cluster import Cluster, ClusterError, orphaned, stop, wait_for
from tests.support.paths import ROOT, TOOLS_BIN

NAME_PREFIX = "stackgen-e2e-kind-"
STATE_ROOT = Path(tempfile.gettempdir()) / "stackgen-e2e-kind"
#: What the environment hook of :func:`write_overlay` prints in every job log.
ENV_HOOK_MARKER = "stackgen-kind-e2e environment hook ran"
HTTP_USER = "kind-e2e"
TERMINAL = ("finished", "canceled", "timed_out", "expired", "skipped", "broken")


class KindCluster(Cluster):
    """A kind cluster (context ``kind-NAME``)."""

    def __init__(self, name: str, state_root: Path) -> None:
        super().__init__(name, state_root)
        self.context = f"kind-{name}"


def docker_answers() -> bool:
    """Whether a Docker engine answers ``docker info``."""
    if shutil.which("docker") is None:
        return False
    try:
        proc = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


def missing() -> list[str]:
    """What the tier needs and does not have (empty when it can run)."""
    problems = []
    if not docker_answers():
        problems.append("a Docker engine (docker info failed; bin/setup --kind starts one as root)")
    if not os.access(TOOLS_BIN / "kind", os.X_OK):
        problems.append(".tools/bin/kind (bin/setup --kind)")
    if shutil.which("kubectl") is None:
        problems.append("kubectl on PATH")
    return problems


def _run(
    argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def reap(state_root: Path = STATE_ROOT) -> None:
    """Remove the clusters of killed sessions (``<prefix><pid>`` whose pid is gone)."""
    if state_root.is_dir():
        for name in orphaned((s.name for s in state_root.iterdir()), NAME_PREFIX):
            stop(name, state_root)


def start(name: str, state_root: Path = STATE_ROOT, timeout: int = 300) -> KindCluster:
    """``bin/up --runtime kind --no-apply`` (the images loaded); ClusterError on failure."""
    state_root.mkdir(parents=True, exist_ok=True)
    proc = _run(
        [
            str(ROOT / "bin" / "up"),
            "--runtime=kind",
            f"--name={name}",
            f"--state-dir={state_root}",
            f"--timeout={timeout}",
            "--no-apply",
            "--no-setup",
            "--sandbox",
        ],
        timeout=timeout + 600,
    )
    if proc.returncode != 0:
        raise ClusterError(
            f"bin/up could not start kind cluster {name}:\n{proc.stdout}\n{proc.stderr}"
        )
    return KindCluster(name, state_root)


def apply_stack(
    cluster: KindCluster,
    overlay: Path,
    host_key: Path,
    timeout: int = 300,
    extra_queues: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """``bin/up --sandbox OVERLAY`` into the session cluster (raises with its output on failure)."""
    proc = _run(
        [
            str(ROOT / "bin" / "up"),
            "--runtime=kind",
            f"--name={cluster.name}",
            f"--state-dir={cluster.state_root}",
            f"--timeout={timeout}",
            "--no-setup",
            "--sandbox",
            str(overlay),
        ],
        timeout=timeout * 3 + 300,
        env={
            "STACKGEN_SANDBOX_GIT_HOST_KEY": str(host_key),
            "STACKGEN_SANDBOX_QUEUES": " ".join(extra_queues),
        },
    )
    if proc.returncode != 0:
        raise AssertionError(f"bin/up --sandbox {overlay} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


# ---------------------------------------------------------------------------- overlays


@dataclass(frozen=True)
class Keys:
    """The secrets a test stack uses: its token, SSH key, and the git server's host key."""

    token: str
    webhook_token: str
    ssh_private: bytes
    host_private: bytes
    http_password: str

    @classmethod
    def generate(cls) -> Keys:
        import secrets

        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        def key() -> bytes:
            return ed25519.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )

        return cls(
            token=f"bkct_kind_e2e_{secrets.token_hex(16)}",
            webhook_token=secrets.token_hex(20),
            ssh_private=key(),
            host_private=key(),
            http_password=secrets.token_hex(12),
        )

    def known_hosts(self) -> str:
        import base64

        pub = sandbox.public_key(base64.b64encode(self.host_private).decode())
        return f"{sandbox.GIT_HOST},{sandbox.GIT}.{sandbox.NAMESPACE} {pub}\n"


def write_overlay(
    dest: Path,
    keys: Keys,
    queues: Sequence[Mapping[str, Any]],
    *,
    name: str = "kind-e2e",
    namespace: str = "buildkite-e2e",
    known_hosts: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """A stack overlay in ``dest`` for the session cluster; returns ``dest``."""
    secrets_dir = dest / "secrets"
    secrets_dir.mkdir(parents=True, exist_ok=True)
    (dest / "hooks").mkdir(exist_ok=True)
    (secrets_dir / "token").write_text(keys.token + "\n")
    (secrets_dir / "webhook-token").write_text(keys.webhook_token + "\n")
    (secrets_dir / "ssh-key").write_bytes(keys.ssh_private)
    (secrets_dir / "ssh-key").chmod(0o600)
    (secrets_dir / "known_hosts").write_text(known_hosts or keys.known_hosts())
    (secrets_dir / "git-credentials").write_text(
        f"https://{HTTP_USER}:{keys.http_password}@{sandbox.GIT_HOST}\n"
    )
    hook = dest / "hooks" / "environment"
    hook.write_text(f'#!/bin/bash\nset -euo pipefail\necho "{ENV_HOOK_MARKER}"\n')
    stack: dict[str, Any] = {
        "apiVersion": "stackgen.io/v1alpha1",
        "kind": "Stack",
        "metadata": {"name": name, "namespace": namespace},
        "kubernetesVersion": "1.33.0",
        "agent": {
            "resources": {
                "requests": {"cpu": "20m", "memory": "32Mi"},
                "limits": {"memory": "512Mi"},
            }
        },
        "queues": [dict(q) for q in queues],
        "secrets": {
            "agentToken": {"file": "secrets/token"},
            "gitCredentials": {"file": "secrets/git-credentials"},
            "sshKey": {
                "privateKeyFile": "secrets/ssh-key",
                "knownHostsFile": "secrets/known_hosts",
            },
        },
        "hooks": {"environment": "hooks/environment"},
        "dispatcher": {
            "replicas": 1,
            "webhook": {"enabled": True, "token": {"file": "secrets/webhook-token"}},
        },
        "metricsAdapter": {"tls": adapter_tls(dest, namespace)},
        **(extra or {}),
    }
    (dest / "stack.yaml").write_text(yaml.safe_dump(stack, sort_keys=False))
    return dest


def adapter_tls(dest: Path, namespace: str) -> dict[str, str]:
    """A CA and the metrics adapter's serving certificate (its Service names), as files.

    Seen on the kind cluster here: with ``insecureSkipTLSVerify`` the APIService turned
    Available but kube-apiserver answered every request under it with an empty 404 (its proxy
    had no transport; not investigated further), while with this CA bundle it proxies.
    """
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from tests.support import pki

    folder = dest / "secrets" / "metrics-adapter"
    folder.mkdir(parents=True, exist_ok=True)
    ca = pki.make_ca(f"kind e2e metrics adapter CA ({namespace})")
    service = "stackgen-metrics-adapter"
    names = [service, f"{service}.{namespace}", f"{service}.{namespace}.svc"]
    leaf = pki.make_leaf(
        ca,
        f"{service}.{namespace}.svc",
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=[x509.DNSName(n) for n in names],
    )
    (folder / "ca.crt").write_text(ca.pem)
    leaf.write(folder, "tls")
    return {
        "caFile": "secrets/metrics-adapter/ca.crt",
        "certFile": "secrets/metrics-adapter/tls.crt",
        "keyFile": "secrets/metrics-adapter/tls.key",
    }


# ---------------------------------------------------------------------------- the fake


class Sandbox:
    """The fake Buildkite in the session cluster, driven through its ctl command."""

    def __init__(self, cluster: KindCluster) -> None:
        self.cluster = cluster

    def _python(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``python3 ARGS`` in the fake's container."""
        return self.cluster.kubectl(
            "-n",
            sandbox.NAMESPACE,
            "exec",
            "deploy/fake-buildkite",
            "-c",
            "fake-buildkite",
            "--",
            "python3",
            *args,
            check=check,
            timeout=timeout,
        )

    def ctl(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return self._python(
            "-m", "tests.support.fake_buildkite.ctl", *args, check=check, timeout=timeout
        )

    def control(self, expression: str) -> Any:
        """``FakeControl(url).<expression>`` evaluated in the fake's pod; its JSON result."""
        code = (
            "import json; from tests.support.fake_buildkite.ctl import FakeControl; "
            f"print(json.dumps(FakeControl('http://127.0.0.1:{sandbox.FAKE_PORT}').{expression}))"
        )
        return json.loads(self._python("-c", code).stdout)

    def enqueue(self, queue: str, command: str, **fields: Any) -> str:
        args = ["enqueue", "--queue", queue, "--command", command]
        for key, value in (fields.get("env") or {}).items():
            args += ["--env", f"{key}={value}"]
        if fields.get("repository"):
            args += ["--repository", fields["repository"]]
        return self.ctl(*args).stdout.strip()

    def job(self, uuid: str) -> dict[str, Any]:
        job: dict[str, Any] = json.loads(self.ctl("job", uuid).stdout)
        return job

    def jobs(self, queue: str | None = None) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = self.control(f"jobs({queue!r})")
        return jobs

    def agents(self) -> list[dict[str, Any]]:
        agents: list[dict[str, Any]] = self.control("agents()")
        return agents

    def wait_finished(self, uuid: str, timeout: float = 300) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            job = self.job(uuid)
            return job if job["state"] in TERMINAL else None

        return wait_for(done, timeout=timeout, interval=1, what=f"job {uuid} to finish")

    def log(self, uuid: str) -> str:
        return self.ctl("log", uuid).stdout

    def send_webhook(self, uuid: str, url: str, key: str) -> int:
        """From the fake's pod: a ``job.scheduled`` webhook for job ``uuid``, HMAC-signed with
        ``key`` (given on stdin, never on a command line), to ``url``; the answer's status."""
        code = (
            "import dataclasses, sys\n"
            "from tests.support.fake_buildkite.ctl import FakeControl\n"
            "from tests.support.fake_buildkite.state import FakeJob\n"
            "from tests.support.fake_buildkite.webhooks import send_webhook\n"
            f"raw = FakeControl('http://127.0.0.1:{sandbox.FAKE_PORT}').job({uuid!r})\n"
            "names = {f.name for f in dataclasses.fields(FakeJob)}\n"
            "job = FakeJob(**{k: v for k, v in raw.items() if k in names})\n"
            f"print(send_webhook({url!r}, job=job, hmac_key=sys.stdin.read().strip()).status)\n"
        )
        proc = self.cluster.kubectl(
            "-n",
            sandbox.NAMESPACE,
            "exec",
            "-i",
            "deploy/fake-buildkite",
            "-c",
            "fake-buildkite",
            "--",
            "python3",
            "-c",
            code,
            input=key + "\n",
            timeout=60,
        )
        return int(proc.stdout.strip())


def timed(fn: Any) -> tuple[Any, float]:
    started = time.monotonic()
    return fn(), time.monotonic() - started
