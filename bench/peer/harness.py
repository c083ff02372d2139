"""Replay a bursty trace through Buildkite's own controller (agent-stack-k8s) and measure it.

Run by ``bench/peer/run``, which installs the controller and brings up the cluster; this file
does the rest against a cluster given by ``--kubeconfig``:

1. a fresh namespace holding the agent token Secret (key ``BUILDKITE_AGENT_TOKEN``);
2. the fake Buildkite (``python -m tests.support.fake_buildkite``) on 127.0.0.1;
3. the controller, outside the cluster, with a clean environment (it reads many settings from
   environment variables), its config file pointing ``agent-config.endpoint`` at the fake;
4. a seeded trace of bursts, each added to the fake in one control call;
5. simulated agents: kwok pods run no containers, so when a pod reaches Running the harness
   acquires its job on the fake (as ``buildkite-agent --acquire-job`` would: a second pod for
   the same job is refused), starts it, and finishes it after the job's drawn duration;
6. figures from the fake's request log and from watches on Kubernetes Jobs and pods.

Every process it starts is recorded in ``--pid-dir`` (so the caller's trap can stop it too)
and stopped before it returns; the namespace is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: bench/lib is shared with bench/e2e
    sys.path.insert(0, str(ROOT))

from bench.lib.e2e import (  # noqa: E402
    Processes,
    Seen,
    Watcher,
    fake_url_from,
    http,
    namespace,
    summary,
    wait_until,
)
from bench.lib.peer import (  # noqa: E402
    UUID_LABEL,
    create_token_secret,
    fake_requests,
    start_controller,
    tail,
    wait_polling,
)

# --------------------------------------------------------------------------- trace


@dataclass(frozen=True)
class Burst:
    offset: float  # seconds after the replay starts
    size: int
    durations: tuple[float, ...]  # seconds each job runs once its agent started it


def make_trace(
    seed: int,
    bursts: int,
    jobs: tuple[int, int],
    gap: tuple[float, float],
    duration: tuple[float, float],
) -> list[Burst]:
    """``bursts`` bursts of ``jobs`` (inclusive range) jobs, ``gap`` seconds apart (uniform)."""
    rng = random.Random(seed)
    out: list[Burst] = []
    offset = 0.0
    for i in range(bursts):
        if i:
            offset += round(rng.uniform(*gap), 1)
        size = rng.randint(*jobs)
        durations = tuple(round(rng.uniform(*duration), 1) for _ in range(size))
        out.append(Burst(round(offset, 1), size, durations))
    return out


# --------------------------------------------------------------------------- small helpers


def log(msg: str) -> None:
    print(f"[peer {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- simulated agents


@dataclass
class AgentSim:
    """Acquire, start and finish jobs on the fake as the pods' agents would.

    When an agent is done (its job finished, or its acquire was refused: exit 27, as with
    ``--acquire-job``), ``exit_pod(pod, code)`` is called: the harness annotates the pod, and
    the kwok stages in tests/support/kwok-stages.yaml complete it.
    """

    fake_url: str
    durations: dict[str, float]
    exit_pod: Callable[[str, int], None]
    started: dict[str, tuple[str, float]] = field(default_factory=dict)  # uuid -> (pod, t)
    refused: dict[str, list[tuple[str, int, str]]] = field(default_factory=dict)
    finished: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _due: dict[str, float] = field(default_factory=dict)
    _tried: set[str] = field(default_factory=set)  # pod names
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def on_pod(self, pod: Seen) -> None:
        if pod.uuid is None or pod.running_at is None:
            return
        with self._lock:
            if pod.name in self._tried:
                return
            self._tried.add(pod.name)
        status, body = http("POST", f"{self.fake_url}/_fake/jobs/{pod.uuid}/acquire")
        if status != 200:
            self.errors.append(f"acquire {pod.uuid}: {status} {body}")
            return
        if body["acquire_status"] != 200:  # a second pod, or the stack failed the job
            with self._lock:
                self.refused.setdefault(pod.uuid, []).append(
                    (pod.name, body["acquire_status"], body["state"])
                )
            self._exit(pod.name, 27)
            return
        status, body = http("POST", f"{self.fake_url}/_fake/jobs/{pod.uuid}/start")
        if status != 200:
            self.errors.append(f"start {pod.uuid}: {status} {body}")
        with self._lock:
            self.started[pod.uuid] = (pod.name, pod.running_at)
            self._due[pod.uuid] = time.time() + self.durations.get(pod.uuid, 0.0)

    def finish_due(self) -> None:
        now = time.time()
        with self._lock:
            due = [u for u, t in self._due.items() if t <= now]
            for u in due:
                del self._due[u]
        for uuid in due:
            status, body = http("POST", f"{self.fake_url}/_fake/jobs/{uuid}/finish", {})
            if status != 200:
                self.errors.append(f"finish {uuid}: {status} {body}")
            with self._lock:
                self.finished[uuid] = time.time()
            self._exit(self.started[uuid][0], 0)

    def _exit(self, pod: str, code: int) -> None:
        try:
            self.exit_pod(pod, code)
        except Exception as err:  # the pod may be gone already
            self.errors.append(f"exit {pod}: {err!r}")


# --------------------------------------------------------------------------- the run


@dataclass
class Options:
    kubeconfig: Path
    controller_bin: Path
    controller_version: str
    out: Path
    pid_dir: Path
    seed: int
    bursts: int
    jobs: tuple[int, int]
    gap: tuple[float, float]
    duration: tuple[float, float]
    max_in_flight: int
    queue: str
    timeout: float
    settle: float
    pod_lifetime: str
    extra_args: list[str]


def run(opts: Options) -> dict[str, Any]:
    opts.out.mkdir(parents=True, exist_ok=True)
    trace = make_trace(opts.seed, opts.bursts, opts.jobs, opts.gap, opts.duration)
    token = "bkct_peer_" + secrets.token_hex(12)
    procs = Processes(opts.pid_dir)
    ns_name = f"peer-{secrets.token_hex(3)}"
    (opts.pid_dir / "namespace").write_text(ns_name + "\n")
    log(
        f"trace: {[b.size for b in trace]} jobs at {[b.offset for b in trace]} s (seed {opts.seed})"
    )
    try:
        with namespace(opts.kubeconfig, ns_name) as ns:
            return _run(opts, trace, token, procs, ns)
    finally:
        procs.stop_all()


def _run(
    opts: Options, trace: list[Burst], token: str, procs: Processes, ns: str
) -> dict[str, Any]:
    kc = opts.kubeconfig
    create_token_secret(kc, ns, token)

    fake_log = (opts.out / "fake.log").open("w")
    fake = procs.start(
        "fake",
        [
            sys.executable,
            "-m",
            "tests.support.fake_buildkite",
            "--port",
            "0",
            "--token",
            token,
            "--queue",
            opts.queue,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=fake_log,
        text=True,
    )
    fake_url = fake_url_from(fake)
    log(f"fake Buildkite at {fake_url}")

    started = start_controller(
        procs,
        "controller",
        opts.controller_bin,
        fake_url=fake_url,
        kubeconfig=kc,
        namespace=ns,
        stack_key="stackgen-peer-bench",
        queue=opts.queue,
        max_in_flight=opts.max_in_flight,
        out=opts.out,
        extra_args=opts.extra_args,
    )
    controller, args, started_at = started.proc, started.argv, started.started_at
    log(f"controller: {' '.join(args[1:])}")

    def requests() -> list[dict[str, Any]]:
        return fake_requests(fake_url)

    wait_polling(fake_url, [started])
    ready_at = time.time()
    log(f"controller polling after {ready_at - started_at:.2f}s")

    durations: dict[str, float] = {}
    sims: list[AgentSim] = []
    watcher = Watcher(
        kc,
        ns,
        lambda pod: sims[0].on_pod(pod) if sims else None,
        selector=UUID_LABEL,
        key_label=UUID_LABEL,
    )
    sim = AgentSim(fake_url, durations, watcher.exit_pod)
    sims.append(sim)
    watcher.start()

    added: list[tuple[int, list[str]]] = []
    stop_sim = threading.Event()

    def sim_loop() -> None:
        while not stop_sim.wait(0.05):
            sim.finish_due()

    sim_thread = threading.Thread(target=sim_loop, daemon=True, name="agents")
    sim_thread.start()
    replay_start = time.monotonic()
    try:
        for i, burst in enumerate(trace):
            delay = replay_start + burst.offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            fields = {"pipeline_slug": f"monorepo-{i}", "build_number": i + 1}
            status, body = http(
                "POST",
                f"{fake_url}/_fake/jobs",
                {"queue": opts.queue, "count": burst.size, "fields": fields},
            )
            if status != 201:
                raise RuntimeError(f"adding burst {i} answered {status}: {body}")
            uuids = list(body["uuids"])
            durations.update(zip(uuids, burst.durations, strict=True))
            added.append((i, uuids))
            log(f"burst {i}: {burst.size} jobs")
        all_uuids = [u for _, us in added for u in us]

        def all_done() -> bool:
            if controller.poll() is not None:
                raise RuntimeError(
                    f"the controller exited with {controller.returncode} during the run:\n"
                    + tail(opts.out / "controller.log")
                )
            _, body = http("GET", f"{fake_url}/_fake/jobs?queue={opts.queue}")
            states = {j["uuid"]: j["state"] for j in body["jobs"]}
            return all(
                states.get(u) in ("finished", "canceled", "expired", "broken") for u in all_uuids
            )

        timed_out = False
        try:
            wait_until(all_done, opts.timeout, "every job to finish", interval=0.5)
            log("every Buildkite job finished")
        except RuntimeError as err:
            if "timed out" not in str(err):
                raise
            timed_out = True
            log(str(err))
        time.sleep(opts.settle)  # late duplicates and clean-up have a chance to show
    finally:
        stop_sim.set()
        sim_thread.join(5)

    k8s_jobs_end, pods_end = watcher.list_now()
    stop_at = time.time()
    code = procs.stop("controller", timeout=20)
    log(f"controller stopped (exit {code})")
    time.sleep(0.3)
    watcher.stop()
    jobs_seen, pods_seen = watcher.snapshot()
    reqs = requests()
    _, fake_jobs = http("GET", f"{fake_url}/_fake/jobs")
    _, finished_by_stack = http("GET", f"{fake_url}/_fake/finished")
    _, notifications = http("GET", f"{fake_url}/_fake/notifications")
    procs.stop("fake")
    fake_log.close()

    return measure(
        opts=opts,
        trace=trace,
        added=added,
        fake_jobs=fake_jobs["jobs"],
        reqs=reqs,
        finished_by_stack=finished_by_stack["finished"],
        notifications=notifications["notifications"],
        jobs_seen=jobs_seen,
        pods_seen=pods_seen,
        k8s_jobs_end=k8s_jobs_end,
        pods_end=pods_end,
        sim=sim,
        window=(started_at, ready_at, stop_at),
        timed_out=timed_out,
        watch_errors=watcher.errors,
        controller_args=args[1:],
    )


# --------------------------------------------------------------------------- figures


def measure(
    *,
    opts: Options,
    trace: list[Burst],
    added: list[tuple[int, list[str]]],
    fake_jobs: list[dict[str, Any]],
    reqs: list[dict[str, Any]],
    finished_by_stack: list[dict[str, Any]],
    notifications: list[dict[str, Any]],
    jobs_seen: dict[str, Seen],
    pods_seen: dict[str, Seen],
    k8s_jobs_end: list[dict[str, Any]],
    pods_end: list[dict[str, Any]],
    sim: AgentSim,
    window: tuple[float, float, float],
    timed_out: bool,
    watch_errors: list[str],
    controller_args: list[str],
) -> dict[str, Any]:
    uuids = [u for _, us in added for u in us]
    ours = set(uuids)
    by_uuid = {j["uuid"]: j for j in fake_jobs}
    scheduled = {u: float(by_uuid[u]["scheduled_at"]) for u in uuids}

    kjobs_by_uuid: dict[str, list[Seen]] = defaultdict(list)
    for seen in jobs_seen.values():
        kjobs_by_uuid[seen.uuid or ""].append(seen)
    pods_by_uuid: dict[str, list[Seen]] = defaultdict(list)
    for seen in pods_seen.values():
        pods_by_uuid[seen.uuid or ""].append(seen)

    def first(items: list[Seen], attr: str) -> float | None:
        values = [getattr(s, attr) for s in items if getattr(s, attr) is not None]
        return min(values) if values else None

    job_created, job_created_ts, pod_created, agent_started = [], [], [], []
    for u in uuids:
        t = first(kjobs_by_uuid.get(u, []), "seen_at")
        if t is not None:
            job_created.append(t - scheduled[u])
        ts = first(kjobs_by_uuid.get(u, []), "created")
        if ts is not None:
            job_created_ts.append(ts - scheduled[u])
        p = first(pods_by_uuid.get(u, []), "seen_at")
        if p is not None:
            pod_created.append(p - scheduled[u])
        if u in sim.started:
            agent_started.append(sim.started[u][1] - scheduled[u])

    per_job = [len(kjobs_by_uuid.get(u, [])) for u in uuids]
    pods_per_job = [len(pods_by_uuid.get(u, [])) for u in uuids]
    foreign = sorted(k for k in kjobs_by_uuid if k not in ours)
    surplus_pods = sum(max(0, n - 1) for n in pods_per_job) + sum(
        len(pods_by_uuid[k]) for k in pods_by_uuid if k not in ours
    )

    # API calls in the controller's lifetime (the harness's own calls are control calls,
    # which the fake never logs).
    start, ready, stop = window
    by_route: dict[str, Counter[int]] = defaultdict(Counter)
    for r in reqs:
        by_route[r["route"] or f"unmatched {r['method']} {r['path']}"][r["status"]] += 1
    n = len(uuids) or 1
    api_calls = {
        route: {
            "count": sum(statuses.values()),
            "per_job": round(sum(statuses.values()) / n, 3),
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
        }
        for route, statuses in sorted(by_route.items(), key=lambda kv: -sum(kv[1].values()))
    }
    total_calls = sum(v["count"] for v in api_calls.values())
    non_poll = total_calls - api_calls.get("list_scheduled_jobs", {}).get("count", 0)

    states = Counter(by_uuid[u]["state"] for u in uuids)
    left_active = [j for j in k8s_jobs_end if j["state"] == "Active"]
    pods_live = [p for p in pods_end if p["phase"] in ("Pending", "Running")]
    return {
        "benchmark": "peer",
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "controller": {
            "name": "agent-stack-k8s",
            "module": "github.com/buildkite/agent-stack-k8s/v2",
            "version": opts.controller_version,
            "binary": str(opts.controller_bin),
            "args": controller_args,
            "max_in_flight": opts.max_in_flight,
            "startup_to_first_poll_s": round(ready - start, 3),
        },
        "trace": {
            "seed": opts.seed,
            "queue": opts.queue,
            "bursts": [{"offset_s": b.offset, "jobs": b.size} for b in trace],
            "jobs": len(uuids),
            "job_duration_s": list(opts.duration),
            "pod_lifetime": opts.pod_lifetime,
        },
        "latency_s": {
            "scheduled_to_k8s_job_created": summary(job_created),
            "scheduled_to_k8s_job_created_by_creationTimestamp": summary(job_created_ts),
            "scheduled_to_pod_created": summary(pod_created),
            "scheduled_to_agent_started": summary(agent_started),
        },
        "k8s_jobs": {
            "created": len(jobs_seen),
            "per_buildkite_job_mean": round(sum(per_job) / n, 3),
            "per_buildkite_job_max": max(per_job, default=0),
            "buildkite_jobs_with_duplicates": sum(1 for c in per_job if c > 1),
            "buildkite_jobs_without_k8s_job": sum(1 for c in per_job if c == 0),
            "for_unknown_buildkite_jobs": foreign,
            "left_active_at_end": len(left_active),
            "left_active": left_active,
            "retained_finished_at_end": sum(1 for j in k8s_jobs_end if j["state"] != "Active"),
            "pods_created": len(pods_seen),
            "surplus_pods": surplus_pods,
            "pods_pending_or_running_at_end": len(pods_live),
        },
        "buildkite": {
            "job_states_at_end": dict(states),
            "failed_by_stack": len(finished_by_stack),
            "failed_by_stack_detail": finished_by_stack[:5],
            "notifications": len(notifications),
            "acquire_refused": {u: v for u, v in sim.refused.items()},
            "timed_out": timed_out,
        },
        "api_calls": {
            "window_s": round(stop - start, 3),
            "total": total_calls,
            "per_job": round(total_calls / n, 3),
            "per_job_excluding_polls": round(non_poll / n, 3),
            "polls_per_second": round(
                api_calls.get("list_scheduled_jobs", {}).get("count", 0) / max(stop - start, 1e-9),
                3,
            ),
            "by_endpoint": api_calls,
        },
        "harness_errors": sim.errors + watch_errors,
        "samples_s": {
            "k8s_job_created": [round(v, 3) for v in job_created],
            "pod_created": [round(v, 3) for v in pod_created],
            "agent_started": [round(v, 3) for v in agent_started],
        },
    }


def table(result: dict[str, Any]) -> str:
    lat = result["latency_s"]
    kj = result["k8s_jobs"]
    api = result["api_calls"]
    rows: list[tuple[str, str]] = []

    def fmt(s: dict[str, Any]) -> str:
        if not s["n"]:
            return "n/a"
        return f"{s['p50']:.2f} / {s['p95']:.2f} / {s['max']:.2f}  (n={s['n']})"

    c = result["controller"]
    rows.append(
        ("controller", f"agent-stack-k8s {c['version']} (max-in-flight {c['max_in_flight']})")
    )
    t = result["trace"]
    rows.append(
        (
            "trace",
            f"{t['jobs']} jobs in bursts of {[b['jobs'] for b in t['bursts']]}"
            f" at {[b['offset_s'] for b in t['bursts']]} s, seed {t['seed']};"
            f" jobs run {t['job_duration_s'][0]:g}-{t['job_duration_s'][1]:g} s",
        )
    )
    rows.append(("pod lifetime", t["pod_lifetime"]))
    rows.append(
        ("scheduled -> K8s Job created, s (p50/p95/max)", fmt(lat["scheduled_to_k8s_job_created"]))
    )
    rows.append(
        (
            "  same, by creationTimestamp (whole seconds: low)",
            fmt(lat["scheduled_to_k8s_job_created_by_creationTimestamp"]),
        )
    )
    rows.append(("scheduled -> pod created, s", fmt(lat["scheduled_to_pod_created"])))
    rows.append(
        ("scheduled -> agent started (pod Running), s", fmt(lat["scheduled_to_agent_started"]))
    )
    rows.append(
        (
            "K8s Jobs per Buildkite job (mean / max)",
            f"{kj['per_buildkite_job_mean']:.3f} / {kj['per_buildkite_job_max']}"
            f"  ({kj['buildkite_jobs_with_duplicates']} with duplicates,"
            f" {kj['buildkite_jobs_without_k8s_job']} without)",
        )
    )
    rows.append(("surplus pods (never ran a job)", str(kj["surplus_pods"])))
    rows.append(
        (
            "K8s Jobs left active at the end",
            f"{kj['left_active_at_end']}  (finished, kept for TTL: {kj['retained_finished_at_end']})",
        )
    )
    bk = result["buildkite"]
    rows.append(("Buildkite jobs failed by the controller", str(bk["failed_by_stack"])))
    rows.append(
        (
            "Buildkite API calls per job",
            f"{api['per_job']:.2f} ({api['per_job_excluding_polls']:.2f} without polls;"
            f" {api['total']} calls in {api['window_s']:.0f} s,"
            f" {api['polls_per_second']:.2f} polls/s)",
        )
    )
    for route, v in api["by_endpoint"].items():
        statuses = ", ".join(f"{k}: {n}" for k, n in v["statuses"].items())
        rows.append((f"  {route}", f"{v['count']} ({v['per_job']:.3f}/job; {statuses})"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def chart(result: dict[str, Any], path: Path) -> bool:
    """A CDF of the per-job latencies (PNG); False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = {
        "k8s_job_created": "Kubernetes Job created",
        "pod_created": "pod created",
        "agent_started": "agent started (pod Running)",
    }
    for key, values in result["samples_s"].items():
        label = labels.get(key, key)
        if values:
            xs = sorted(values)
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            ax.step(xs, ys, where="post", label=label)
    ax.set_xlabel("seconds after the job was scheduled")
    ax.set_ylabel("share of jobs")
    ax.set_title(
        f"agent-stack-k8s {result['controller']['version']}: {result['trace']['jobs']} jobs, "
        f"seed {result['trace']['seed']}"
    )
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- CLI


def pair(kind: type[float] | type[int]) -> Callable[[str], tuple[Any, Any]]:
    def parse(text: str) -> tuple[Any, Any]:
        lo, sep, hi = text.partition(":")
        a, b = kind(lo), kind(hi if sep else lo)
        if a > b:
            raise argparse.ArgumentTypeError(f"{text}: low above high")
        return a, b

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/peer/harness.py", description=__doc__.splitlines()[0])
    p.add_argument("--kubeconfig", type=Path, required=True)
    p.add_argument("--controller-bin", type=Path, required=True)
    p.add_argument("--controller-version", default="unknown")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "peer")
    p.add_argument("--pid-dir", type=Path, default=None)
    p.add_argument("--seed", type=int, default=6)
    p.add_argument("--bursts", type=int, default=3)
    p.add_argument("--jobs", type=pair(int), default=(10, 40), metavar="MIN:MAX")
    p.add_argument("--gap", type=pair(float), default=(20.0, 30.0), metavar="MIN:MAX")
    p.add_argument("--duration", type=pair(float), default=(5.0, 20.0), metavar="MIN:MAX")
    p.add_argument("--max-in-flight", type=int, default=25, help="25: the controller's default")
    p.add_argument(
        "--pod-lifetime",
        default="until its job finishes (tests/support/kwok-stages.yaml)",
        help="how the cluster's kwok stages end pods, for the report",
    )
    p.add_argument("--queue", default="bench")
    p.add_argument("--timeout", type=float, default=180.0)
    p.add_argument("--settle", type=float, default=5.0)
    p.add_argument("extra_args", nargs="*", help="more controller flags (after --)")
    a = p.parse_args(argv)
    opts = Options(
        kubeconfig=a.kubeconfig.resolve(),
        controller_bin=a.controller_bin.resolve(),
        controller_version=a.controller_version,
        out=a.out.resolve(),
        pid_dir=(a.pid_dir or a.out / "run").resolve(),
        seed=a.seed,
        bursts=a.bursts,
        jobs=a.jobs,
        gap=a.gap,
        duration=a.duration,
        max_in_flight=a.max_in_flight,
        queue=a.queue,
        timeout=a.timeout,
        settle=a.settle,
        pod_lifetime=a.pod_lifetime,
        extra_args=list(a.extra_args),
    )
    result = run(opts)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out_json = opts.out / f"peer-{stamp}.json"
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    (opts.out / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    png = out_json.with_suffix(".png")
    drawn = chart(result, png)
    print(table(result))
    for path in (out_json, png) if drawn else (out_json,):
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    bad = result["buildkite"]["timed_out"] or result["harness_errors"]
    if bad:
        print(f"WARNING: timed out or harness errors: {result['harness_errors'][:5]}")
    return 1 if result["buildkite"]["timed_out"] else 0


if __name__ == "__main__":
    sys.exit(main())
