"""Observability end to end on the local control plane.

* Every metric name the alert rules and the dashboard use is exported by a live
  dispatcher or metrics adapter process (read from their ``/metrics``), so a rename is
  caught here.
* A real Prometheus (built from the same module as promtool) scrapes a real dispatcher
  process with the stack's generated rules loaded; a queue is starved (jobs scheduled,
  its agent pods unschedulable: no node has the label its nodeSelector asks for), and
  "jobs waiting too long" and "agents failing to start" fire; a node gets the label, the
  agents start and take the jobs, and both alerts resolve.  Timings are kept in
  tests/e2e/.observability-figures.json.
* `stackgen status` (the real command, through kubectl) shows the starved queue's
  stuck pods with the scheduler's reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stackgen.compose.alerts import rule_group
from stackgen.compose.dashboard import PANELS
from stackgen.stack.load import stack_from_data
from tests.support.cluster import Cluster, wait_for
from tests.support.dispatcher_process import TOKEN, DispatcherProcess, build_stack, free_port
from tests.support.fake_buildkite import FakeBuildkite
from tests.support.paths import ROOT
from tests.support.pki import make_ca
from tests.support.prometheus import PrometheusServer, exported_names, metric_names, wait_states

pytestmark = pytest.mark.e2e

FIGURES = ROOT / "tests" / "e2e" / ".observability-figures.json"
NODE_LABEL = "stackgen.io/e2e-starve"
ALERTS = ["StackgenJobsWaitingTooLong", "StackgenAgentsFailingToStart"]

STARVED = textwrap.dedent(
    f"""\
    queues:
      - name: starved
        mode: dispatch
        maxAgents: 5
        nodeSelector: {{{NODE_LABEL}: "open"}}
        dispatch: {{pollIntervalSeconds: 2, podStartTimeoutSeconds: 10,
                    cooldown: {{share: 0.5, timeoutSeconds: 5}}, ttlSecondsAfterFinished: 5}}
    monitoring:
      alerts:
        enabled: true
        prometheusRule: false    # a plain Prometheus: no prometheus-operator CRDs here
        thresholds: {{jobsWaitingSeconds: 20, agentStartWindowSeconds: 30,
                      agentStartFailures: 1, dispatcherDownSeconds: 10, noLeaderSeconds: 10}}
    """
)


@pytest.fixture
def fake() -> Iterator[FakeBuildkite]:
    with FakeBuildkite(
        token=TOKEN, queues=("starved", "default"), poll_duration_seconds=1
    ) as server:
        yield server


@pytest.fixture
def started() -> Iterator[list[Any]]:
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        thing.stop()


class AdapterProcess:
    """`stackgen metrics-adapter` with its /metrics port, against the fake Buildkite."""

    def __init__(self, fake: FakeBuildkite, folder: Path) -> None:
        ca = folder / "front-proxy-ca.crt"
        ca.write_text(make_ca("front-proxy").pem)
        self.metrics_port = free_port()
        self.log_path = folder / "adapter.log"
        self._log = self.log_path.open("wb")
        env = {**os.environ, "BUILDKITE_AGENT_TOKEN": TOKEN, "STACKGEN_QUEUES": "default"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stackgen",
                "metrics-adapter",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                f"--metrics-port={self.metrics_port}",
                f"--endpoint={fake.endpoint}",
                "--poll-interval=1",
                f"--requestheader-client-ca-file={ca}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)
        self._log.close()


def _all_rules() -> list[dict[str, Any]]:
    """The rules of a stack with every kind of queue (so every rule exists)."""
    data = {
        "apiVersion": "stackgen.io/v1alpha1",
        "kind": "Stack",
        "metadata": {"name": "all", "namespace": "ci"},
        "queues": [
            {"name": "a", "mode": "hpa"},
            {"name": "b", "mode": "dispatch"},
            {"name": "c", "mode": "exact"},
        ],
        "secrets": {"agentToken": {"file": "t"}},
    }
    stack = stack_from_data(data, ROOT, ROOT / "stack.yaml")
    return list(rule_group(stack)["rules"])


def _record(**figures: Any) -> None:
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    data.update(figures)
    FIGURES.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nobservability figures: {figures}")


def test_every_metric_the_rules_and_dashboard_use_is_exported(
    cluster: Cluster, fake: FakeBuildkite, tmp_path: Path, started: list[Any]
) -> None:
    stack = build_stack(cluster, tmp_path, fake, "obs-names", STARVED)
    dispatcher = DispatcherProcess(cluster, stack, "names", tmp_path)
    started.append(dispatcher)
    adapter = AdapterProcess(fake, tmp_path)
    started.append(adapter)
    dispatcher_text = wait_for(
        lambda: httpx.get(f"{dispatcher.url}/metrics", timeout=5).text,
        timeout=60,
        ignore=(httpx.HTTPError,),
        what="the dispatcher's /metrics",
    )
    adapter_text = wait_for(
        lambda: (
            "stackgen_adapter_buildkite_jobs_scheduled{" in adapter.metrics() and adapter.metrics()
        ),
        timeout=60,
        ignore=(httpx.HTTPError,),
        what="the adapter's /metrics with a poll's values",
    )
    exported = exported_names(dispatcher_text) | exported_names(adapter_text)
    used: dict[str, set[str]] = {}
    for rule in _all_rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"rule {rule['alert']}")
    for title, _, _, targets in PANELS:
        for _, expr in targets:
            for name in metric_names(expr):
                used.setdefault(name, set()).add(f"panel {title!r}")
    assert "up" in used  # Prometheus's own per-target series: not exported by anyone
    missing = {
        name: sorted(where) for name, where in used.items() if name != "up" and name not in exported
    }
    assert not missing, f"used but not exported by the dispatcher or the adapter: {missing}"
    assert len(used) > 15


def test_real_prometheus_fires_and_resolves_on_a_starved_queue(
    cluster: Cluster, fake: FakeBuildkite, tmp_path: Path, started: list[Any]
) -> None:
    namespace = "obs-starve"
    stack = build_stack(cluster, tmp_path, fake, namespace, STARVED)
    (rules_cm,) = [
        o
        for o in stack.objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "stackgen-alert-rules"
    ]
    rules_file = tmp_path / "stackgen-rules.yaml"
    rules_file.write_text(rules_cm["data"]["stackgen-rules.yaml"])
    dispatcher = DispatcherProcess(cluster, stack, "starver", tmp_path)
    started.append(dispatcher)
    target = dispatcher.url.removeprefix("http://")
    prometheus = PrometheusServer(
        tmp_path / "prometheus",
        {target: {"namespace": namespace, "pod": "stackgen-dispatcher-e2e"}},
        [rules_file],
    )
    started.append(prometheus)
    wait_for(prometheus.ready, timeout=120, what="prometheus ready")
    assert "StackgenJobsWaitingTooLong" in prometheus.rules_loaded()
    wait_for(
        lambda: prometheus.get(
            "/api/v1/query", query=f'stackgen_leader{{namespace="{namespace}"}} == 1'
        )["result"],
        timeout=60,
        ignore=(httpx.HTTPError,),
        what="the dispatcher scraped as leader",
    )
    assert not prometheus.firing("StackgenDispatcherNoLeader")

    uuids = fake.add_jobs("starved", 3)
    starved_at = time.time()
    fired = wait_states(prometheus, ALERTS, True, 180, starved_at)
    (alert,) = [
        a for a in prometheus.alerts()["StackgenAgentsFailingToStart"] if a["state"] == "firing"
    ]
    assert alert["labels"]["queue"] == "starved" and alert["labels"]["namespace"] == namespace

    # stackgen status, the real command through kubectl: the stuck pods and the reason.
    # (Between a deleted Job and its successor's pods there may be no stuck pod: retry.)
    shown = wait_for(
        lambda: [
            s
            for s in _status_json(cluster, namespace, dispatcher.url)
            if s["queues"][0]["stuck_pods"]
        ],
        timeout=60,
        what="stackgen status listing the stuck pods",
    )
    (row,) = shown[0]["queues"]
    assert row["queue"] == "starved" and row["mode"] == "dispatch" and row["scheduled"] == 3
    assert all("Unschedulable" in p["reason"] for p in row["stuck_pods"])
    assert shown[0]["leader"] == "starver"
    _status_table(cluster, namespace)

    # Feed the queue: a node gets the label, the pods start, "agents" take the jobs.
    node = sorted(cluster.kwok_nodes())[0]
    cluster.kubectl("label", "node", node, f"{NODE_LABEL}=open", "--overwrite")
    fed_at = time.time()
    try:
        wait_for(
            lambda: [
                p
                for p in cluster.items(
                    "pods", namespace=namespace, selector="stackgen.io/queue=starved"
                )
                if (p.get("status") or {}).get("phase") == "Running"
            ],
            timeout=120,
            what="an agent pod running once a node matches",
        )
        for uuid in uuids:
            assert fake.acquire_job(uuid) == 200
            fake.start_job(uuid)
            fake.finish_job(uuid)
        resolved = wait_states(prometheus, ALERTS, False, 240, fed_at)
    finally:
        cluster.kubectl("label", "node", node, f"{NODE_LABEL}-", check=False)
    _record(
        starved_to_firing_s=fired,
        fed_to_resolved_s=resolved,
        thresholds={
            "jobsWaitingSeconds": 20,
            "agentStartWindowSeconds": 30,
            "podStartTimeoutSeconds": 10,
        },
    )


def _stackgen(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    ran = subprocess.run(
        [sys.executable, "-m", "stackgen", *args, "--kubeconfig", str(cluster.kubeconfig)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env=cluster.env(),
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    return ran


def _status_json(cluster: Cluster, namespace: str, dispatcher_url: str) -> list[dict[str, Any]]:
    ran = _stackgen(
        cluster, "status", "-n", namespace, "--dispatcher-url", dispatcher_url, "-o", "json"
    )
    shown: list[dict[str, Any]] = json.loads(ran.stdout)
    return shown


def _status_table(cluster: Cluster, namespace: str) -> None:
    text = _stackgen(cluster, "status", "-n", namespace).stdout
    print(text)
    # Without --dispatcher-url the leader's pod proxy is tried: this leader is a local
    # process, not a pod, and the table says so instead of failing.
    assert f"NAMESPACE {namespace}  LEADER starver" in text
    assert "dispatcher metrics unavailable" in text
    assert "  stuck  " in text or "STUCK" in text


@pytest.fixture(autouse=True, scope="module")
def _fresh_figures() -> Iterator[None]:
    if FIGURES.exists():
        FIGURES.unlink()
    yield
