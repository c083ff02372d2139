"""The real HPA controller scales two queues' agent pools on the adapter's metrics.

Set-up, all made and removed by this module:

* a kwok cluster of its own, started as every cluster is (tests/support/cluster.start,
  bin/up), whose kube-apiserver has a front proxy: a request-header CA and the aggregator's
  client certificate made here, ``--enable-aggregator-routing``, and a 2 s HPA sync period,
  given to bin/up as a kwokctl patch of the components' flags;
* a network namespace with a veth pair (198.18.N.1 on the host, 198.18.N.2 inside): the
  adapter runs there as a real ``stackgen metrics-adapter`` process.  kube-apiserver is a
  local process, so an APIService pointing at 127.0.0.1 is impossible (Endpoints refuse
  loopback addresses); with aggregator routing it dials the Endpoints address, which is
  the namespace's.  Two small TCP relays on the host side, accepting only the namespace's
  address, let the adapter reach the fake Buildkite and kube-apiserver (both on 127.0.0.1);
* the stack built by ``stackgen build`` from a two-queue ``hpa`` overlay, applied as built
  except for the adapter's Deployment (the process above replaces it) and its Service's
  selector (replaced by hand-made Endpoints);
* a fake Buildkite with two queues and a tiny agent simulator: every Ready pod of a queue's
  Deployment is a connected agent that takes one scheduled job and finishes it 20 s later.

The test feeds the queues different backlogs and watches the HPAs scale up and down,
independently, then makes Buildkite fail and checks the HPAs stop scaling with the
adapter's "stale" error instead of reading zeros.  It prints the replica counts over time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.aggregator import (
    AdapterProcess,
    FrontProxyCluster,
    Netns,
    adapter_objects,
    adapter_tls,
    front_proxy_cluster,
    reap_netns,
    stackgen_build,
)
from tests.support.cluster import (
    Cluster,
    ClusterError,
    missing_binaries,
    orphaned,
    reap,
    wait_for,
)
from tests.support.fake_buildkite import FakeBuildkite
from tests.support.paths import ROOT

pytestmark = pytest.mark.e2e

NAMESPACE = "hpa-e2e"
QUEUES = ("alpha", "beta")
TOKEN = "bkua_e2e-hpa-token-0123456789"
JOB_SECONDS = 20.0
HPA_SYNC = "2s"
NAME_PREFIX = "stackgen-hpa-"
NETNS_PREFIX = "sghpa"


def _required() -> bool:
    return os.environ.get("STACKGEN_E2E_REQUIRED") == "1"


def _skip_or_fail(message: str) -> None:
    if _required():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _reap_stale_netns() -> None:
    reap_netns(NETNS_PREFIX, orphaned)


# ---------------------------------------------------------------------------- the cluster


@pytest.fixture(scope="module")
def fp_cluster() -> Iterator[FrontProxyCluster]:
    """This module's cluster (front proxy, aggregator routing, fast HPA sync)."""
    missing = missing_binaries()
    if missing:
        _skip_or_fail(f"e2e needs the local control plane: missing {', '.join(missing)}")
    if os.geteuid() != 0 or shutil.which("ip") is None:
        _skip_or_fail("the HPA e2e test creates a network namespace: needs root and `ip`")
    reap(NAME_PREFIX)
    _reap_stale_netns()
    try:
        with front_proxy_cluster(f"{NAME_PREFIX}{os.getpid()}", HPA_SYNC) as fp:
            yield fp
    except ClusterError as exc:
        pytest.fail(str(exc), pytrace=False)


# ---------------------------------------------------------------------------- the stack


def _write_overlay(folder: Path) -> Path:
    overlay = folder / "overlay"
    (overlay / "secrets").mkdir(parents=True)
    (overlay / "secrets" / "agent-token").write_text(TOKEN + "\n")
    stack = {
        "apiVersion": "stackgen.io/v1alpha1",
        "kind": "Stack",
        "metadata": {"name": "hpa", "namespace": NAMESPACE},
        "agent": {"image": "buildkite/agent:3.117.0"},
        "queues": [
            {
                "name": name,
                "mode": "hpa",
                "minAgents": 1,
                "maxAgents": 10,
                # Defaults scale up as in production; scale-down is shortened so the test
                # sees it within a minute (production: 1 pod per 20 s after 300 s).
                "hpa": {
                    "scaleDown": {"pods": 2, "periodSeconds": 5, "stabilizationWindowSeconds": 10}
                },
            }
            for name in QUEUES
        ],
        "secrets": {"agentToken": {"file": "secrets/agent-token"}},
        "metricsAdapter": {
            # The process below is started with STACKGEN_POLL_INTERVAL_SECONDS=1 instead.
            "pollIntervalSeconds": 5,
            "tls": adapter_tls(overlay, NAMESPACE),
        },
    }
    (overlay / "stack.yaml").write_text(yaml.safe_dump(stack, sort_keys=False))
    return overlay


def _built_stack(overlay: Path, netns: Netns) -> list[dict[str, Any]]:
    return adapter_objects(stackgen_build(overlay), NAMESPACE, netns.ns_ip)


# ---------------------------------------------------------------------------- agents


@dataclass
class QueueSim:
    running: dict[str, float] = field(default_factory=dict)
    done: int = 0


class AgentSimulator:
    """Every Ready pod of a queue's Deployment is an agent that runs one job at a time."""

    def __init__(self, fake: FakeBuildkite, apps: Any) -> None:
        self.fake = fake
        self.apps = apps
        self.queues = {q: QueueSim() for q in QUEUES}
        self.ready: dict[str, int] = dict.fromkeys(QUEUES, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="agents")
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.step()
            except Exception as exc:  # report it to the test, keep trying
                self.error = exc

    def step(self) -> None:
        now = time.monotonic()
        for queue, sim in self.queues.items():
            dep = self.apps.read_namespaced_deployment(f"buildkite-agent-{queue}", NAMESPACE)
            ready = dep.status.ready_replicas or 0
            self.ready[queue] = ready
            for uuid, started in list(sim.running.items()):
                if now - started >= JOB_SECONDS:
                    self.fake.finish_job(uuid)
                    del sim.running[uuid]
                    sim.done += 1
            free = max(0, ready - len(sim.running))
            for job in self.fake.jobs(queue, state="scheduled")[:free]:
                self.fake.start_job(job.uuid)
                sim.running[job.uuid] = now
            busy = len(sim.running)
            total = max(ready, busy)
            self.fake.set_agents(queue, idle=total - busy, busy=busy)


@dataclass
class Row:
    t: float
    cells: dict[str, tuple[int, int, int, int]]  # scheduled, running, desired, current


class Recorder:
    """Samples both HPAs every second; prints a table of the changes."""

    def __init__(self, fake: FakeBuildkite, autoscaling: Any) -> None:
        self.fake = fake
        self.autoscaling = autoscaling
        self.rows: list[Row] = []
        self.notes: list[tuple[float, str]] = []
        self.hpas: dict[str, Any] = {}
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="recorder")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(Exception):
                self.sample()

    def sample(self) -> Row:
        cells = {}
        for queue in QUEUES:
            hpa = self.autoscaling.read_namespaced_horizontal_pod_autoscaler(
                f"buildkite-agent-{queue}", NAMESPACE
            )
            self.hpas[queue] = hpa
            metrics = self.fake.metrics()["jobs"]["queues"].get(queue, {})
            cells[queue] = (
                int(metrics.get("scheduled", 0)),
                int(metrics.get("running", 0)),
                int(hpa.status.desired_replicas or 0),
                int(hpa.status.current_replicas or 0),
            )
        row = Row(round(time.monotonic() - self.t0, 1), cells)
        self.rows.append(row)
        return row

    def note(self, text: str) -> None:
        """An event shown between the rows of the table."""
        self.notes.append((round(time.monotonic() - self.t0, 1), text))

    def current(self, queue: str) -> int:
        return self.rows[-1].cells[queue][3] if self.rows else -1

    def peak(self, queue: str, since: float = 0.0) -> int:
        return max((r.cells[queue][3] for r in self.rows if r.t >= since), default=0)

    def table(self) -> str:
        head = "   t(s) |" + "|".join(f" {q:>5}: sched run  HPA desired current " for q in QUEUES)
        lines = [head, "-" * len(head)]
        last = None
        notes = list(self.notes)
        for row in self.rows:
            while notes and notes[0][0] <= row.t:
                t, text = notes.pop(0)
                lines.append(f"{t:>7.1f} | >>> {text}")
            key = tuple(row.cells[q] for q in QUEUES)
            if key == last:
                continue
            last = key
            cells = "|".join(
                f"        {s:>5} {r:>3}  {d:>11} {c:>7} "
                for s, r, d, c in (row.cells[q] for q in QUEUES)
            )
            lines.append(f"{row.t:>7.1f} |{cells}")
        if self.rows:
            lines.append(f"{self.rows[-1].t:>7.1f} | (last sample)")
        lines += [f"{t:>7.1f} | >>> {text}" for t, text in notes]
        return "\n".join(lines)


def _condition(hpa: Any, kind: str) -> Any:
    for cond in hpa.status.conditions or []:
        if cond.type == kind:
            return cond
    return None


# ---------------------------------------------------------------------------- the test


def test_two_queues_scale_up_and_down_independently(
    fp_cluster: FrontProxyCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import kubernetes

    cluster = fp_cluster.cluster
    with contextlib.ExitStack() as stack:
        netns = Netns.create(NETNS_PREFIX)
        stack.callback(netns.delete)

        # The stack, as stackgen builds it (minus the adapter's pod, see the docstring).
        cluster.apply(_built_stack(_write_overlay(tmp_path), netns))
        adapter_token = cluster.kubectl(
            "create", "token", "stackgen-metrics-adapter", "-n", NAMESPACE, "--duration=1h"
        ).stdout.strip()
        fake = FakeBuildkite(
            TOKEN, queues=QUEUES, default_queue=QUEUES[0], poll_duration_seconds=1
        ).start()
        stack.callback(fake.stop)

        # The adapter: a real process, reading the front-proxy settings from the
        # extension-apiserver-authentication ConfigMap with its ServiceAccount's token.
        adapter = AdapterProcess(
            netns,
            apiserver=fp_cluster.apiserver,
            ca_file=fp_cluster.ca_file,
            api_token=adapter_token,
            buildkite_port=fake.port,
            buildkite_token=TOKEN,
            queues=QUEUES,
            secrets=tmp_path / "overlay" / "secrets" / "metrics-adapter",
            work=tmp_path,
            poll_interval=1,
            cwd=ROOT,
        )
        stack.callback(adapter.stop)

        api_client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
        stack.callback(api_client.close)
        apps = kubernetes.client.AppsV1Api(api_client)
        autoscaling = kubernetes.client.AutoscalingV2Api(api_client)

        try:
            _scenario(cluster, fake, apps, autoscaling, capsys, stack)
        except BaseException:
            with capsys.disabled():
                print("\n--- adapter log (last 40 lines) ---")
                print(adapter.tail(40))
            raise
        assert adapter.stop() == 0, "the adapter did not stop cleanly on SIGTERM"
        assert TOKEN not in adapter.log_path.read_text()


def _scenario(
    cluster: Cluster,
    fake: FakeBuildkite,
    apps: Any,
    autoscaling: Any,
    capsys: pytest.CaptureFixture[str],
    stack: contextlib.ExitStack,
) -> None:
    def available() -> bool:
        svc = cluster.get("apiservice", "v1beta1.external.metrics.k8s.io")
        conds = (svc or {}).get("status", {}).get("conditions", [])
        return any(c["type"] == "Available" and c["status"] == "True" for c in conds)

    wait_for(available, timeout=60, what="the APIService to become Available")
    raw = json.loads(
        cluster.kubectl(
            "get",
            "--raw",
            f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}/"
            "buildkite_jobs_runnable?labelSelector=queue%20in%20(alpha,beta)",
        ).stdout
    )
    assert [i["metricLabels"]["queue"] for i in raw["items"]] == list(QUEUES)

    agents = AgentSimulator(fake, apps)
    agents.start()
    stack.callback(agents.stop)
    recorder = Recorder(fake, autoscaling)

    def hpas_active() -> bool:
        recorder.sample()
        return all(
            (c := _condition(recorder.hpas[q], "ScalingActive")) is not None and c.status == "True"
            for q in QUEUES
        ) and all(recorder.current(q) == 1 for q in QUEUES)

    wait_for(hpas_active, timeout=90, what="both HPAs active at minReplicas")
    recorder.rows.clear()
    recorder.t0 = time.monotonic()
    recorder.start()
    stack.callback(recorder.stop)

    try:
        # Wave 1: different backlogs.
        recorder.note("wave 1: 8 jobs on alpha, 3 on beta (each runs 20 s)")
        fake.add_jobs("alpha", 8)
        fake.add_jobs("beta", 3)
        wait_for(
            lambda: recorder.current("alpha") >= 8 and recorder.current("beta") == 3,
            timeout=60,
            what="alpha to scale to 8 and beta to 3",
        )
        wave1_end = recorder.rows[-1].t
        assert recorder.peak("beta") == 3, "beta followed alpha's backlog"
        # Wave 2: beta gets more work while alpha drains.
        wait_for(
            lambda: recorder.current("alpha") < recorder.peak("alpha"),
            timeout=90,
            what="alpha to start scaling down",
        )
        wave2_start = recorder.rows[-1].t
        recorder.note("wave 2: 6 more jobs on beta while alpha scales down")
        fake.add_jobs("beta", 6)
        wait_for(
            lambda: recorder.peak("beta", since=wave2_start) >= 6,
            timeout=60,
            what="beta to scale up for its second backlog",
        )
        wait_for(
            lambda: (
                all(recorder.current(q) == 1 for q in QUEUES)
                and not fake.jobs(state="scheduled")
                and not fake.jobs(state="running")
            ),
            timeout=150,
            what="both queues back at minReplicas with every job done",
        )
        # Buildkite fails: the adapter answers "stale" and the HPAs stop scaling, rather
        # than reading zeros.
        recorder.note("Buildkite's metrics endpoint answers 503 from now on")
        fake.inject("metrics", "503", times=100_000)
        stale_start = recorder.rows[-1].t

        def stale_reported() -> bool:
            cond = _condition(recorder.hpas["alpha"], "ScalingActive")
            return cond is not None and cond.status == "False" and "stale" in (cond.message or "")

        wait_for(stale_reported, timeout=30, what="the HPA to report stale metrics")
        cond = _condition(recorder.hpas["alpha"], "ScalingActive")
        stale_message = f"{cond.reason}: {cond.message}"
        recorder.note(f"HPA alpha: ScalingActive=False, {cond.reason} (stale)")
        fake.clear_faults()
        recorder.note("Buildkite answers again")
        wait_for(
            lambda: (
                (c := _condition(recorder.hpas["alpha"], "ScalingActive")) is not None
                and c.status == "True"
            ),
            timeout=30,
            what="the HPA to recover once Buildkite answers again",
        )
        recorder.note("HPA alpha: ScalingActive=True again")
    finally:
        recorder.stop()
        agents.stop()
        with capsys.disabled():
            print("\nHPA replica counts over time (a row whenever something changed):")
            print(recorder.table())
    assert agents.error is None, agents.error
    # Independence: while alpha peaked at 8, beta stayed at its own 3; later beta rose
    # while alpha fell.
    assert recorder.peak("alpha") >= 8
    assert recorder.peak("beta", since=0) >= 6 and recorder.peak("beta") <= 10
    rows = [r for r in recorder.rows if r.t <= wave1_end]
    assert max(r.cells["beta"][3] for r in rows) == 3
    rising_beta_falling_alpha = any(
        b.cells["beta"][3] > a.cells["beta"][3] and b.cells["alpha"][3] <= a.cells["alpha"][3]
        for a, b in zip(recorder.rows, recorder.rows[1:], strict=False)
        if a.t >= wave2_start
    )
    assert rising_beta_falling_alpha
    # During the outage the replica counts held.
    held = {r.cells["alpha"][3] for r in recorder.rows if r.t >= stale_start}
    assert held == {1}
    with capsys.disabled():
        print(f"while Buildkite failed, the HPA said: {stale_message}")
