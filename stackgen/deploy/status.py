"""``stackgen status``: one table per stack and queue, read from the cluster through kubectl.

What each row says and where it comes from:

* queues and modes: the stack's CronJobs (dispatch/exact, annotation ``stackgen.io/mode``)
  and agent Deployments (hpa), found by the label ``stackgen.io/stack``;
* agents starting / running, stuck pods with their reason: the queue's pods (label
  ``stackgen.io/queue``); pending pods the scheduler refused (``Unschedulable: …``) and
  containers waiting on an image or crashing (``ImagePullBackOff: …``) are stuck;
* last dispatch ID and its age: the queue's newest Job (label ``stackgen.io/dispatch-id``);
* leader: the Lease ``stackgen-dispatcher`` (holder and how long ago it renewed);
* scheduled / running jobs and cooldown: the leader's ``/metrics``, through the API
  server's pod proxy (``kubectl get --raw``), or from ``--dispatcher-url`` (say a
  ``kubectl port-forward``); for hpa queues the metrics adapter's ``/metrics`` through
  its Service's proxy; ``?`` when they cannot be read, with the reason;
* kept pods: the failed pods of Jobs the dispatcher kept for debugging
  (label ``stackgen.io/kept``), with the time they are kept until.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from stackgen.common.identity import STACK_LABEL

JSON = dict[str, Any]

__all__ = [
    "QueueStatus",
    "StackStatus",
    "StatusCluster",
    "collect",
    "parse_metrics",
    "render",
    "to_json",
]

LABEL_QUEUE = "stackgen.io/queue"
LABEL_DISPATCH_ID = "stackgen.io/dispatch-id"
LABEL_KEPT = "stackgen.io/kept"
LEASE = "stackgen-dispatcher"
ADAPTER = "stackgen-metrics-adapter"
DISPATCHER_PORT = 8080
#: Container waiting reasons that mean the pod will not start by itself soon.
STUCK_REASONS = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
}


class StatusCluster(Protocol):
    """What status reads from a cluster (:class:`stackgen.deploy.cluster.Kubectl` has it)."""

    def get_json(self, kinds: str, *, namespace: str | None, selector: str | None) -> JSON:
        """``kubectl get KINDS -o json`` in one namespace (or all, with ``None``)."""
        ...

    def get_raw(self, path: str) -> str:
        """``kubectl get --raw PATH``."""
        ...


@dataclass
class QueueStatus:
    """One queue's row."""

    queue: str
    mode: str
    scheduled: float | None = None
    running: float | None = None
    agents_starting: int = 0
    agents_running: int = 0
    last_dispatch_id: str | None = None
    last_dispatch_age_seconds: float | None = None
    cooldown: bool | None = None
    stuck_pods: list[dict[str, str]] = field(default_factory=list)


@dataclass
class StackStatus:
    """One stack: its queues, its leader, its kept pods."""

    stack: str
    namespace: str
    leader: str | None = None
    leader_renewed_seconds_ago: float | None = None
    metrics_error: str | None = None
    adapter_metrics_error: str | None = None
    queues: list[QueueStatus] = field(default_factory=list)
    kept_pods: list[dict[str, str]] = field(default_factory=list)


def _parse_time(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def parse_metrics(text: str) -> dict[tuple[str, str], float]:
    """Per-queue gauges of a dispatcher's ``/metrics``: (metric, queue) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "queue" in sample.labels:
                out[(sample.name, sample.labels["queue"])] = float(sample.value)
    return out


def stuck_reason(pod: JSON) -> str | None:
    """Why a pod is not starting (``Unschedulable: …``, ``ImagePullBackOff: …``), or None."""
    status = pod.get("status") or {}
    if status.get("phase") not in (None, "Pending", "Running"):
        return None
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"{condition.get('reason') or 'Unscheduled'}: {condition.get('message') or ''}".strip()
    for cs in [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_REASONS:
            return f"{waiting['reason']}: {waiting.get('message') or ''}".strip()
    return None


def _ready(pod: JSON) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _queues(objects: Iterable[JSON]) -> list[QueueStatus]:
    found: dict[str, QueueStatus] = {}
    for obj in objects:
        meta = obj.get("metadata") or {}
        queue = (meta.get("labels") or {}).get(LABEL_QUEUE)
        if not queue or obj.get("kind") not in ("CronJob", "Deployment"):
            continue
        mode = (meta.get("annotations") or {}).get("stackgen.io/mode")
        found.setdefault(
            queue,
            QueueStatus(queue, mode or ("hpa" if obj["kind"] == "Deployment" else "dispatch")),
        )
    return sorted(found.values(), key=lambda q: q.queue)


def _fill_pods(queues: dict[str, QueueStatus], pods: Iterable[JSON]) -> None:
    for pod in pods:
        meta = pod.get("metadata") or {}
        row = queues.get((meta.get("labels") or {}).get(LABEL_QUEUE, ""))
        phase = (pod.get("status") or {}).get("phase")
        if row is None or meta.get("deletionTimestamp") or phase in ("Succeeded", "Failed"):
            continue
        reason = stuck_reason(pod)
        if reason:
            row.stuck_pods.append({"pod": meta["name"], "reason": reason})
        if phase == "Running" and _ready(pod):
            row.agents_running += 1
        else:
            row.agents_starting += 1


def _fill_jobs(queues: dict[str, QueueStatus], jobs: Iterable[JSON], now: float) -> None:
    newest: dict[str, tuple[float, str]] = {}
    for job in jobs:
        meta = job.get("metadata") or {}
        labels = meta.get("labels") or {}
        created = _parse_time(meta.get("creationTimestamp"))
        queue, dispatch_id = labels.get(LABEL_QUEUE), labels.get(LABEL_DISPATCH_ID)
        if queue not in queues or not dispatch_id or created is None:
            continue
        if queue not in newest or created > newest[queue][0]:
            newest[queue] = (created, dispatch_id)
    for queue, (created, dispatch_id) in newest.items():
        queues[queue].last_dispatch_id = dispatch_id
        queues[queue].last_dispatch_age_seconds = round(max(0.0, now - created), 1)


def _labels(obj: JSON) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _kept(jobs: Iterable[JSON], pods: Iterable[JSON]) -> list[dict[str, str]]:
    kept = {
        j["metadata"]["name"]: (j["metadata"].get("annotations") or {}).get(
            "stackgen.io/kept-until", ""
        )
        for j in jobs
        if (j["metadata"].get("labels") or {}).get(LABEL_KEPT) == "true"
    }
    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        job = (
            _labels(pod).get("batch.kubernetes.io/job-name")
            or _labels(pod).get("job-name")
            or meta.get("name")  # a pod the dispatcher created itself is its own record
        )
        if job in kept and (pod.get("status") or {}).get("phase") == "Failed":
            out.append({"pod": meta["name"], "job": job, "kept_until": kept[job]})
    return sorted(out, key=lambda k: k["pod"])


def _why(exc: Exception) -> str:
    """One short line: a StackgenError's messages without their ``stackgen:`` prefix."""
    problems = getattr(exc, "problems", None)
    why = "; ".join(p.message for p in problems) if problems else str(exc)
    return why.strip()[:200]


def _fill_metrics(
    stack: StackStatus,
    cluster: StatusCluster,
    dispatcher_url: str | None,
    fetch: Callable[[str], str],
) -> None:
    dispatched = [q for q in stack.queues if q.mode in ("dispatch", "exact")]
    if not dispatched:
        return
    try:
        if dispatcher_url:
            text = fetch(dispatcher_url.rstrip("/") + "/metrics")
        elif stack.leader:
            path = f"/api/v1/namespaces/{stack.namespace}/pods/{stack.leader}:{DISPATCHER_PORT}/proxy/metrics"
            text = cluster.get_raw(path)
        else:
            raise RuntimeError("no dispatcher holds the Lease")
        values = parse_metrics(text)
    except Exception as exc:  # any failure only costs the metric columns
        stack.metrics_error = f"dispatcher metrics unavailable: {_why(exc)}"
        return
    for row in dispatched:
        row.scheduled = values.get(("stackgen_queue_scheduled_jobs", row.queue))
        row.running = values.get(("stackgen_queue_running_jobs", row.queue))
        cooldown = values.get(("stackgen_queue_cooldown", row.queue))
        row.cooldown = None if cooldown is None else cooldown >= 1


def _fill_adapter_metrics(stack: StackStatus, cluster: StatusCluster) -> None:
    """The hpa queues' counts as the adapter serves them (its Service's proxy: any replica)."""
    scaled = [q for q in stack.queues if q.mode == "hpa"]
    if not scaled:
        return
    path = f"/api/v1/namespaces/{stack.namespace}/services/{ADAPTER}:metrics/proxy/metrics"
    try:
        values = parse_metrics(cluster.get_raw(path))
    except Exception as exc:  # any failure only costs the metric columns
        stack.adapter_metrics_error = f"metrics adapter unavailable: {_why(exc)}"
        return
    for row in scaled:
        row.scheduled = values.get(("stackgen_adapter_buildkite_jobs_scheduled", row.queue))
        row.running = values.get(("stackgen_adapter_buildkite_jobs_running", row.queue))


def _http_get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as answer:
        return str(answer.read().decode("utf-8"))


def collect(
    cluster: StatusCluster,
    *,
    namespace: str | None = None,
    stack: str | None = None,
    dispatcher_url: str | None = None,
    now: float | None = None,
    fetch: Callable[[str], str] = _http_get,
) -> list[StackStatus]:
    """The status of every stack (in ``namespace``, named ``stack``) the context can see."""
    now = dt.datetime.now(dt.UTC).timestamp() if now is None else now
    objects = cluster.get_json(
        "cronjobs,deployments,leases", namespace=namespace, selector=STACK_LABEL
    )
    stacks: dict[tuple[str, str], list[JSON]] = {}
    for obj in objects.get("items") or []:
        meta = obj.get("metadata") or {}
        ident = (meta.get("labels") or {}).get(STACK_LABEL, "")
        name = ident.rsplit(".", 1)[0] if "." in ident else ident
        if stack is None or name == stack:
            stacks.setdefault((name, meta.get("namespace", "")), []).append(obj)
    out = []
    for (name, ns), members in sorted(stacks.items()):
        status = StackStatus(stack=name, namespace=ns, queues=_queues(members))
        lease = next(
            (m for m in members if m.get("kind") == "Lease" and m["metadata"]["name"] == LEASE),
            None,
        )
        spec = (lease or {}).get("spec") or {}
        status.leader = spec.get("holderIdentity") or None
        renewed = _parse_time(spec.get("renewTime"))
        if renewed is not None:
            status.leader_renewed_seconds_ago = round(max(0.0, now - renewed), 1)
        live = cluster.get_json("jobs,pods", namespace=ns, selector=LABEL_QUEUE).get("items") or []
        jobs = [o for o in live if o.get("kind") == "Job"]
        pods = [o for o in live if o.get("kind") == "Pod"]
        rows = {q.queue: q for q in status.queues}
        _fill_pods(rows, pods)
        # Pods the dispatcher created itself (dispatch.workload: pod) stand for their Job.
        bare = [p for p in pods if _labels(p).get("stackgen.io/workload") == "pod"]
        _fill_jobs(rows, jobs + bare, now)
        status.kept_pods = _kept(jobs + [p for p in bare if _labels(p).get(LABEL_KEPT)], pods)
        _fill_metrics(status, cluster, dispatcher_url, fetch)
        _fill_adapter_metrics(status, cluster)
        out.append(status)
    return out


def to_json(stacks: list[StackStatus]) -> list[JSON]:
    """``--output json``: plain data."""
    return [asdict(s) for s in stacks]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


_COLUMNS = (
    "QUEUE",
    "MODE",
    "SCHEDULED",
    "RUNNING",
    "STARTING",
    "AGENTS",
    "LAST DISPATCH",
    "AGE",
    "COOLDOWN",
    "STUCK",
)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def render(stacks: list[StackStatus]) -> str:
    """The human tables: one per stack, then its stuck and kept pods."""
    if not stacks:
        return "no stackgen stacks found (label stackgen.io/stack) in this context\n"
    lines: list[str] = []
    for s in stacks:
        leader = (
            f"{s.leader} (renewed {_age(s.leader_renewed_seconds_ago)} ago)" if s.leader else "none"
        )
        if not any(q.mode in ("dispatch", "exact") for q in s.queues):
            leader = "- (no dispatcher)"
        lines.append(f"STACK {s.stack}  NAMESPACE {s.namespace}  LEADER {leader}")
        rows: list[tuple[str, ...]] = [_COLUMNS]
        for q in s.queues:
            rows.append(
                (
                    q.queue,
                    q.mode,
                    _num(q.scheduled),
                    _num(q.running),
                    str(q.agents_starting),
                    str(q.agents_running),
                    q.last_dispatch_id or "-",
                    _age(q.last_dispatch_age_seconds),
                    ("?" if q.cooldown is None else "yes" if q.cooldown else "no")
                    if q.mode == "dispatch"
                    else "-",
                    str(len(q.stuck_pods)),
                )
            )
        lines += _table(rows)
        for error in (s.metrics_error, s.adapter_metrics_error):
            if error:
                lines.append(f"  ({error})")
        for q in s.queues:
            for stuck in q.stuck_pods:
                lines.append(f"  stuck  {stuck['pod']}  {stuck['reason']}")
        for kept in s.kept_pods:
            lines.append(
                f"  kept   {kept['pod']}  (Job {kept['job']}, until {kept['kept_until'] or '?'})"
            )
        lines.append("")
    return "\n".join(lines)
