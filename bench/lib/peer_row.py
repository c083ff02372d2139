"""bench/e2e's peer rows: Buildkite's agent-stack-k8s on the same fake, trace and cluster.

A peer row replays the same trace window as stackgen's rows (bench/lib/replay.py) on the
same kind of fresh kwok cluster, but the controller is agent-stack-k8s (bench/lib/peer.py
starts it): one controller per trace queue, as that controller serves one queue each, all in
one namespace, polling the fake every second (its fixed interval).  Its pods are exact: each
Kubernetes Job runs one Buildkite job (label ``buildkite.com/job-uuid``), so the simulated
agents are replay.py's exact-mode agents (acquire their own job at once, exit 27 if refused).

:func:`columns` computes the figures every row shares, stackgen's and the peer's, from the
same raw records (watches, the agents, the fake's request log, the API server's audit log,
the controller's CPU time); :func:`side_by_side` and :func:`ratios` print them.
"""

from __future__ import annotations

import math
import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from bench.lib import common, peer, replay
from bench.lib.audit import CONTROL_PLANE, read_writes
from bench.lib.e2e import Processes, Seen, Watcher, http, kubectl, start_fake, summary, wait_until
from bench.lib.trace import Trace, TraceJob

PEER_VERSION = "v0.47.0"


@dataclass(frozen=True)
class PeerRow:
    """agent-stack-k8s with ``--max-in-flight N`` (25 is its default; 0 turns the cap off)."""

    key: str
    max_in_flight: int
    mode: str = "peer"
    webhook: bool = False

    def name(self, settings: replay.Settings) -> str:
        cap = f"max-in-flight {self.max_in_flight}" if self.max_in_flight else "no in-flight cap"
        return f"agent-stack-k8s {PEER_VERSION}, {cap}"


ROWS = (PeerRow("peer", peer.DEFAULT_MAX_IN_FLIGHT), PeerRow("peer-nocap", 0))


class PeerAgents(replay.Agents):
    """replay.py's agents in the peer's pods: every pod is exact (its job's UUID label)."""

    def on_pod(self, pod: Seen) -> None:
        if pod.running_at is None or pod.name in self.agents or pod.phase != "Running":
            return
        with self._cv:
            if pod.name in self.agents:
                return
            self.agents[pod.name] = replay.Agent(
                pod.name, "", pod.labels.get(peer.UUID_LABEL), pod.seen_at, pod.running_at
            )
            self._push(time.time(), "connect", pod.name)


def run_row(
    row: PeerRow,
    tr: Trace,
    settings: replay.Settings,
    *,
    cluster: Any,  # tests.support.cluster.Cluster
    procs: Processes,
    work: Path,
    log: Callable[[str], None],
    peer_bin: Path,
    timeout: float = 120.0,
    seed: int = 1,
    controller_metrics: Callable[[], dict[str, float]] | None = None,
) -> replay.RowRun:
    """Replay ``tr`` through agent-stack-k8s on ``cluster``; see the module docstring."""
    work.mkdir(parents=True, exist_ok=True)
    kc = Path(cluster.kubeconfig)
    token = "bkct_peer_" + secrets.token_hex(12)
    _, fake_url = start_fake(
        procs,
        "fake",
        token=token,
        queues=tr.queues,
        log_path=work / "fake.log",
        extra=["--poll-duration", str(settings.poll_interval)],  # as stackgen's rows
    )
    log(f"fake Buildkite at {fake_url}")
    namespace = f"bench-{row.key}"
    kubectl(kc, "create", "namespace", namespace)
    peer.create_token_secret(kc, namespace, token)
    callbacks: list[Callable[[Seen], None]] = []
    watcher = Watcher(
        kc,
        namespace,
        lambda pod: callbacks[0](pod) if callbacks else None,
        selector=peer.UUID_LABEL,
        key_label=peer.UUID_LABEL,
    )
    agents = PeerAgents(
        fake_url, watcher.exit_pod, pickup=settings.pickup, idle_timeout=1.0, seed=seed
    )
    callbacks.append(agents.on_pod)
    controllers: list[peer.Controller] = []
    try:
        watcher.start()
        agents.start()
        for queue in tr.queues:
            controllers.append(
                peer.start_controller(
                    procs,
                    f"controller-{queue}",
                    peer_bin,
                    fake_url=fake_url,
                    kubeconfig=kc,
                    namespace=namespace,
                    stack_key=f"peer-{queue}",
                    queue=queue,
                    max_in_flight=row.max_in_flight,
                    out=work,
                )
            )
        peer.wait_polling(fake_url, controllers)
        log(f"{len(controllers)} controllers polling ({', '.join(tr.queues)})")
        return _replay(
            row,
            tr,
            settings,
            fake_url,
            namespace,
            watcher,
            agents,
            controllers,
            timeout=timeout,
            log=log,
            controller_metrics=controller_metrics,
        )
    finally:
        agents.stop()
        for c in controllers:
            procs.stop(c.name, timeout=20)
        watcher.stop()
        procs.stop("fake")


def _replay(
    row: PeerRow,
    tr: Trace,
    settings: replay.Settings,
    fake_url: str,
    namespace: str,
    watcher: Watcher,
    agents: PeerAgents,
    controllers: list[peer.Controller],
    *,
    timeout: float,
    log: Callable[[str], None],
    controller_metrics: Callable[[], dict[str, float]] | None,
) -> replay.RowRun:
    bk_rtt = replay.median_rtt(
        lambda: http("GET", f"{fake_url}/_fake/jobs/00000000-0000-0000-0000-000000000000")
    )
    batch: Any = watcher.batch
    kube_rtt = replay.median_rtt(
        lambda: (
            batch.list_namespaced_job(
                namespace, label_selector=peer.UUID_LABEL, _preload_content=False
            ).data
        )
    )
    by_uuid: dict[str, TraceJob] = {}
    lock = threading.Lock()
    controller_before = controller_metrics() if controller_metrics else {}

    def added(uuid: str, job: TraceJob) -> None:
        with lock:
            by_uuid[uuid] = job
        agents.add_job(uuid, job.queue, job.duration)

    t0, replay_end = replay.add_jobs_on_time(fake_url, tr, added, log)

    def settled() -> bool:
        for c in controllers:
            if c.proc.poll() is not None:
                raise RuntimeError(
                    f"{c.name} exited with {c.proc.returncode}:\n{peer.tail(c.log_path)}"
                )
        if len(agents.started) < len(by_uuid) or agents.idle():
            return False
        _, pods = watcher.snapshot()
        return all(p.running_at is not None or p.deleted_at for p in pods.values())

    timed_out = False
    try:
        wait_until(settled, timeout, "every job started and no agent idle", interval=0.1)
        time.sleep(1.0)  # a late pod shows up here (and is counted)
        wait_until(settled, 10, "late agents", interval=0.1)
    except RuntimeError as err:
        if "timed out" not in str(err):
            raise
        timed_out = True
        log(f"WARNING: {err}")
    ended = time.time()
    log(
        f"{len(agents.started)}/{len(by_uuid)} jobs started; done "
        f"{ended - replay_end:.1f} s after the last job was added"
    )
    controller_after = controller_metrics() if controller_metrics else {}
    cpu = sum(replay.cpu_seconds(c.proc.pid) for c in controllers)
    _, listed = http("GET", f"{fake_url}/_fake/jobs")
    scheduled = {
        j["uuid"]: float(j["scheduled_at"]) for j in listed["jobs"] if j["uuid"] in by_uuid
    }
    calls = Counter(r["route"] or "unmatched" for r in peer.fake_requests(fake_url))
    kube_jobs, pods = watcher.snapshot()
    return replay.RowRun(
        row=cast(Any, row),  # RowRun's fields that measure() reads: mode, webhook, name()
        settings=settings,
        namespace=namespace,
        replay_start=t0,
        replay_end=replay_end,
        ended=ended,
        jobs=by_uuid,
        scheduled=scheduled,
        visible={},
        webhook_status=Counter(),
        agents=agents.snapshot(),
        kube_jobs=kube_jobs,
        pods=pods,
        metrics={},
        cycles=[],
        buildkite_calls=calls,
        buildkite_rtt=bk_rtt,
        kube_rtt=kube_rtt,
        idle_timeout=1.0,
        timed_out=timed_out,
        errors=agents.errors + watcher.errors,
        dispatcher_log=", ".join(str(c.log_path) for c in controllers),
        controller_before=controller_before,
        controller_after=controller_after,
        dispatcher_cpu=cpu,
    )


# ---------------------------------------------------------------------- figures


def columns(run: replay.RowRun, audit_log: Path) -> dict[str, Any]:
    """The figures every row shares, from the run's raw records.

    For each Buildkite job that ran: scheduled -> the Kubernetes Job owning the pod that ran
    it (first seen by the watch), -> that pod created (first seen), -> that pod Running.
    Surplus pods: pods that never ran a job.  Writes: the controller's write requests in the
    API server's audit log (``audit_log``) over its whole life, and kube-controller-manager's
    from the replay's start (before it, the cluster's own start-up); Buildkite calls: the
    fake's request log; CPU: the controller process(es), start-up included.
    """
    writes = read_writes(audit_log)
    kcm = read_writes(audit_log, since=run.replay_start).by_client.get(CONTROL_PLANE, 0)
    by_job: dict[str, replay.Agent] = {a.job: a for a in run.agents.values() if a.job}
    to_job, to_pod, to_running = [], [], []
    for uuid in run.jobs:
        agent = by_job.get(uuid)
        if agent is None or agent.started is None or uuid not in run.scheduled:
            continue
        at = run.scheduled[uuid]
        pod = run.pods.get(agent.pod)
        to_pod.append(max(0.0, (pod.seen_at if pod else agent.created) - at))
        running = pod.running_at if pod and pod.running_at is not None else agent.connected
        to_running.append(max(0.0, running - at))
        owner = run.kube_jobs.get((pod.labels if pod else {}).get(replay.JOB_NAME_LABEL, ""))
        if owner is not None:
            to_job.append(max(0.0, owner.seen_at - at))
    n = max(1, len(run.jobs))
    ran = {a.pod for a in by_job.values()}
    return {
        "jobs": len(run.jobs),
        "jobs_started": len(to_pod),
        "to_job": summary(to_job),
        "to_pod": summary(to_pod),
        "to_running": summary(to_running),
        "pods": len(run.pods),
        "surplus_pods": sum(1 for p in run.pods if p not in ran),
        "k8s_writes": writes.controller(),
        "k8s_writes_per_job": writes.controller() / n,
        "k8s_writers": writes.controller_clients(),
        "kcm_writes_per_job": kcm / n,
        "k8s_writes_detail": writes.jsonable(),
        "buildkite_calls": sum(run.buildkite_calls.values()),
        "buildkite_calls_per_job": sum(run.buildkite_calls.values()) / n,
        "buildkite_calls_by_route": dict(run.buildkite_calls),
        "controller_cpu_s": round(run.dispatcher_cpu, 3),
        # kube-controller-manager's /metrics over the replay: its client limiter's waits.
        "kcm": replay.controller_figures(run.controller_before, run.controller_after),
        "timed_out": run.timed_out,
    }


def _lat(s: dict[str, Any]) -> str:
    if not s["n"]:
        return "-"
    return f"{s['p50']:.2f} / {s['p95']:.2f} / {s['max']:.2f}"


def side_by_side(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """One line per row: (name, :func:`columns`)."""
    body = [
        (
            name,
            _lat(c["to_job"]),
            _lat(c["to_pod"]),
            _lat(c["to_running"]),
            f"{c['surplus_pods']}",
            f"{c['k8s_writes_per_job']:.2f}",
            f"{c['kcm_writes_per_job']:.2f}",
            f"{c['buildkite_calls_per_job']:.2f}",
            f"{c['controller_cpu_s']:.2f}",
        )
        for name, c in rows
    ]
    return common.table(
        (
            "row",
            "scheduled -> Job p50/p95/max",
            "-> pod created p50/p95/max",
            "-> pod running p50/p95/max",
            "surplus pods",
            "K8s writes/job",
            "kcm writes/job",
            "Buildkite calls/job",
            "controller CPU s",
        ),
        body,
    )


RATIO_COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...] = (
    ("Job p50", lambda c: c["to_job"]["p50"]),
    ("Job p95", lambda c: c["to_job"]["p95"]),
    ("pod created p50", lambda c: c["to_pod"]["p50"]),
    ("pod created p95", lambda c: c["to_pod"]["p95"]),
    ("pod running p50", lambda c: c["to_running"]["p50"]),
    ("pod running p95", lambda c: c["to_running"]["p95"]),
    ("pod running max", lambda c: c["to_running"]["max"]),
    ("surplus pods", lambda c: c["surplus_pods"]),
    ("K8s writes/job", lambda c: c["k8s_writes_per_job"]),
    ("kcm writes/job", lambda c: c["kcm_writes_per_job"]),
    ("Buildkite calls/job", lambda c: c["buildkite_calls_per_job"]),
    ("controller CPU", lambda c: c["controller_cpu_s"]),
)


def ratio(a: float | None, b: float | None) -> str:
    """a / b as ``0.42x``; ``-`` when either is missing, ``=`` for 0 / 0."""
    if a is None or b is None or any(isinstance(v, float) and math.isnan(v) for v in (a, b)):
        return "-"
    if b == 0:
        return "=" if a == 0 else "inf"
    return f"{a / b:.2f}x"


def ratios(
    ours: Sequence[tuple[str, dict[str, Any]]], peers: Sequence[tuple[str, dict[str, Any]]]
) -> str:
    """stackgen / peer for every column, each stackgen row against each peer row."""
    body = [
        (f"{name} / {peer_name}", *(ratio(get(c), get(p)) for _, get in RATIO_COLUMNS))
        for peer_name, p in peers
        for name, c in ours
    ]
    return common.table(("stackgen / peer", *(label for label, _ in RATIO_COLUMNS)), body)


# ---------------------------------------------------------------------- bench/e2e's glue


def select_rows(
    text: str | None, known: dict[str, Any], peer_bin: Path | None
) -> tuple[list[str], str | None]:
    """The row keys to run from ``--rows`` (None: all; the peer rows only with a binary).

    Returns (keys, problem): a problem is one line for the option parser.
    """
    if text is None:
        keys = [k for k, r in known.items() if peer_bin is not None or not isinstance(r, PeerRow)]
    else:
        keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in known]
    if unknown:
        return keys, f"unknown rows {unknown}; choose from {sorted(known)}"
    wanted = [k for k in keys if isinstance(known[k], PeerRow)]
    if wanted and peer_bin is None:
        return keys, f"rows {wanted} need --peer-bin PATH (or STACKGEN_PEER_BIN)"
    if (
        wanted
        and peer_bin is not None
        and not (peer_bin.is_file() and os.access(peer_bin, os.X_OK))
    ):
        return keys, f"--peer-bin {peer_bin}: not an executable file"
    return keys, None


def summary_line(c: dict[str, Any]) -> str:
    return (
        f"{c['jobs_started']}/{c['jobs']} jobs ran; scheduled -> pod running p95 "
        f"{c['to_running']['p95']} s; surplus {c['surplus_pods']}; "
        f"{c['k8s_writes_per_job']:.2f} writes/job; controller CPU {c['controller_cpu_s']:.2f} s"
    )


def report(shared: dict[str, tuple[str, dict[str, Any]]], order: Sequence[str]) -> str:
    """The side-by-side table and, when peer rows ran, the stackgen / peer ratios."""
    rows = [shared[k] for k in order]
    ours = [shared[k] for k in order if not k.startswith("peer")]
    peers = [shared[k] for k in order if k.startswith("peer")]
    out = (
        "side by side (seconds after the job was scheduled; the Job and pod that ran it; "
        "writes: the controller's write requests in kube-apiserver's audit log, and "
        "kube-controller-manager's (kcm: the Job controller's pods and status updates, the "
        "TTL controller); CPU: the controller process(es) over the row, start-up included)\n"
        + side_by_side(rows)
    )
    if ours and peers:
        out += "\n\nstackgen / peer (below 1: stackgen lower)\n" + ratios(ours, peers)
    writers = {name: ", ".join(c["k8s_writers"]) or "-" for name, c in rows}
    out += "\n\nwriters counted: " + "; ".join(f"{n}: {w}" for n, w in writers.items())
    return out + "\n"
