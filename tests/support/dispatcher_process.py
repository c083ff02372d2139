"""``stackgen dispatcher`` as a real process on a stack built and applied for it.

:func:`build_stack` writes an overlay whose agents talk to a (fake) Buildkite, builds it
with ``stackgen build``, applies it and extracts the generated dispatcher config (with
short leases); :class:`DispatcherProcess` runs the dispatcher from that config, as its pod
would (only the kubeconfig differs), keeping its JSON log.  Used by tests/e2e and by
bench/e2e's replays.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from tests.support.cluster import Cluster
from tests.support.paths import ROOT


class HasEndpoint(Protocol):
    """A Buildkite (the fake, or a stand-in naming its URL) agents are pointed at."""

    @property
    def endpoint(self) -> str: ...


TOKEN = "e2e-agent-token-0123456789"
WEBHOOK = "e2e-webhook-token-abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OffsetClock:
    """Real time plus an offset a test can move forward (to expire reservations)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Stack:
    namespace: str
    config: Path
    objects: list[dict[str, Any]]


def build_stack(
    cluster: Cluster,
    tmp_path: Path,
    fake: HasEndpoint,
    namespace: str,
    queues: str,
    dispatcher: str = "",
) -> Stack:
    """Build a stack with `stackgen build`, apply it, and extract the dispatcher config."""
    overlay = tmp_path / namespace
    (overlay / "secrets").mkdir(parents=True)
    (overlay / "secrets" / "token").write_text(TOKEN + "\n")
    (overlay / "secrets" / "webhook").write_text(WEBHOOK + "\n")
    (overlay / "stack.yaml").write_text(
        textwrap.dedent(
            f"""\
            apiVersion: stackgen.io/v1alpha1
            kind: Stack
            metadata: {{name: e2e, namespace: {namespace}}}
            agent:
              endpoint: {fake.endpoint}
              disconnectAfterIdleSeconds: 5
              resources:
                requests: {{cpu: 100m, memory: 128Mi}}
                limits: {{memory: 256Mi}}
            secrets:
              agentToken: {{file: secrets/token}}
            """
        )
        + queues
        + dispatcher
    )
    built = subprocess.run(
        [sys.executable, "-m", "stackgen", "build", str(overlay)], capture_output=True, check=False
    )
    assert built.returncode == 0, built.stderr.decode()
    objects = [d for d in yaml.safe_load_all(built.stdout) if d]
    cluster.apply(built.stdout)
    (config_map,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap"
        and o["metadata"]["name"].startswith("stackgen-dispatcher-config")
    ]
    config = yaml.safe_load(config_map["data"]["dispatcher.yaml"])
    # Short leases keep the failover test fast; everything else is as generated.
    config["leaderElection"].update(
        leaseDurationSeconds=6, renewDeadlineSeconds=4, retryPeriodSeconds=1
    )
    path = tmp_path / f"{namespace}-dispatcher.yaml"
    path.write_text(yaml.safe_dump(config))
    return Stack(namespace, path, objects)


class DispatcherProcess:
    """`stackgen dispatcher` as a real process, with its JSON log kept."""

    def __init__(self, cluster: Cluster, stack: Stack, identity: str, log_dir: Path) -> None:
        self.port = free_port()
        self.identity = identity
        self.log_path = log_dir / f"dispatcher-{identity}.log"
        self._log = self.log_path.open("wb")
        env = {**cluster.env(), "BUILDKITE_AGENT_TOKEN": TOKEN, "BUILDKITE_WEBHOOK_TOKEN": WEBHOOK}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stackgen",
                "dispatcher",
                "--config",
                str(stack.config),
                "--kubeconfig",
                str(cluster.kubeconfig),
                "--identity",
                identity,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--advertise",
                f"http://127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metric(self, name: str) -> float:
        import httpx

        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)
        )

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(raw))
            except ValueError:
                out.append({"raw": raw})
        return out

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
