"""An in-memory implementation of the dispatcher's :class:`~stackgen.dispatcher.kube.Kube`
seam, for unit tests and the dispatch benchmark (test support, never shipped).

It keeps objects as the API's JSON, stamps names, uids, resourceVersions and creation
times from a clock it is given, checks resourceVersions on replace (409 when stale),
and can be told to fail the next calls of a method: with a status (and a Retry-After),
with a lost response (the call lands, the answer never arrives), or by hanging until
released (an API server that accepts connections and never answers).  Events can be
added and listed by field selector (a Job's FailedCreate, say).
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stackgen.dispatcher.kube import JSON, KubeError


def _stamp(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def matches(labels: dict[str, str], selector: str) -> bool:
    """Equality-based label selectors: ``a``, ``a=b``, ``a!=b``, ``!a``, comma-joined."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key.rstrip("=")) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@dataclass
class KubeFault:
    """How the next call of a method fails."""

    status: int | None
    retry_after: float | None = None
    #: The call is carried out, then its answer is lost (a timeout, a reset connection).
    lost: bool = False
    #: The API server's message (a refusal's reason); default: "injected <status> on <method>".
    message: str | None = None


def _error(message: str, fault: KubeFault) -> KubeError:
    exc = KubeError(message, status=fault.status)
    # Set, not passed: the seam of older stackgen versions (bench --baseline) lacks it.
    exc.retry_after = fault.retry_after
    return exc


class FakeKube:
    """Objects of one namespace, in memory."""

    def __init__(
        self, namespace: str = "buildkite", clock: Callable[[], float] = time.time
    ) -> None:
        self.namespace = namespace
        self.clock = clock
        self.objects: dict[str, dict[str, JSON]] = defaultdict(dict)
        self.calls: list[tuple[str, str]] = []
        self._faults: dict[str, list[KubeFault]] = defaultdict(list)
        self._versions = itertools.count(1)
        self._lock = threading.RLock()
        #: While set, every call (or those of ``_hung_methods``) blocks until released.
        self._hung = threading.Event()
        self._hung_methods: frozenset[str] = frozenset()
        self._release = threading.Event()

    # ------------------------------------------------------------------ helpers

    def fail(
        self,
        method: str,
        status: int | None,
        times: int = 1,
        *,
        retry_after: float | None = None,
        message: str | None = None,
    ) -> None:
        """Make the next ``times`` calls of ``method`` fail with ``status`` (None: transport).

        ``retry_after``: the Retry-After the answer carries (a 429 from the API server's
        priority and fairness, say).  ``message``: the answer's message (a ResourceQuota's
        or an admission webhook's refusal, say).
        """
        self._faults[method].extend([KubeFault(status, retry_after, message=message)] * times)

    def clear_faults(self, method: str) -> None:
        """Drop the faults still waiting for ``method`` (a quota lifted, say)."""
        with self._lock:
            self._faults[method].clear()

    def lose_response(self, method: str, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` land, but their answers are lost."""
        self._faults[method].extend([KubeFault(None, lost=True)] * times)

    def hang(self, *methods: str) -> None:
        """From now on calls (of ``methods``, or all) block until :meth:`unhang`."""
        self._hung_methods = frozenset(methods)
        self._release.clear()
        self._hung.set()

    def unhang(self) -> None:
        """Let hung and later calls through again."""
        self._hung.clear()
        self._release.set()

    def _enter(self, method: str, target: str = "") -> KubeFault | None:
        """Record a call; raise its injected fault, or return a lost-answer fault to apply."""
        self.calls.append((method, target))
        if self._hung.is_set() and (not self._hung_methods or method in self._hung_methods):
            self._release.wait()
        with self._lock:
            fault = self._faults[method].pop(0) if self._faults[method] else None
        if fault is None:
            return None
        if fault.lost:
            return fault
        raise _error(fault.message or f"injected {fault.status} on {method}", fault)

    @staticmethod
    def _lost(fault: KubeFault | None, method: str) -> None:
        if fault is not None:
            raise _error(f"{method}: the answer was lost (injected)", fault)

    def writes(self) -> int:
        """Write calls made so far (what the benchmark counts per dispatched job)."""
        return sum(
            1 for m, _ in self.calls if m.split("_")[0] in ("create", "delete", "replace", "patch")
        )

    def add(self, kind: str, obj: JSON) -> JSON:
        """Put an object in as if it had been applied (fills metadata)."""
        with self._lock:
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            meta.setdefault("namespace", self.namespace)
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _stamp(self.clock()))
            meta["resourceVersion"] = str(next(self._versions))
            self.objects[kind][meta["name"]] = obj
            return copy.deepcopy(obj)

    def _create(self, kind: str, body: JSON) -> JSON:
        with self._lock:
            if body["metadata"]["name"] in self.objects[kind]:
                raise KubeError(
                    f"{kind} {body['metadata']['name']} already exists",
                    status=409,
                    reason="AlreadyExists",
                )
            return self.add(kind, body)

    def _get(self, kind: str, name: str) -> JSON:
        with self._lock:
            if name not in self.objects[kind]:
                raise KubeError(f"{kind} {name} not found", status=404, reason="NotFound")
            return copy.deepcopy(self.objects[kind][name])

    def _list(self, kind: str, selector: str) -> list[JSON]:
        with self._lock:
            return [
                copy.deepcopy(o)
                for o in self.objects[kind].values()
                if matches((o.get("metadata") or {}).get("labels") or {}, selector)
            ]

    def _delete(self, kind: str, name: str) -> None:
        with self._lock:
            if self.objects[kind].pop(name, None) is None:
                raise KubeError(f"{kind} {name} not found", status=404, reason="NotFound")
            if kind == "pods":  # a pod's token Secret goes with it (garbage collector)
                for secret in list(self.objects["secrets"].values()):
                    owners = secret["metadata"].get("ownerReferences") or []
                    if any(o.get("kind") == "Pod" and o.get("name") == name for o in owners):
                        del self.objects["secrets"][secret["metadata"]["name"]]
            if kind == "jobs":  # cascade, like the garbage collector
                for pod in list(self.objects["pods"].values()):
                    if (pod["metadata"].get("labels") or {}).get(
                        "batch.kubernetes.io/job-name"
                    ) == name:
                        del self.objects["pods"][pod["metadata"]["name"]]
                for secret in list(self.objects["secrets"].values()):
                    owners = secret["metadata"].get("ownerReferences") or []
                    if any(o.get("kind") == "Job" and o.get("name") == name for o in owners):
                        del self.objects["secrets"][secret["metadata"]["name"]]

    # ------------------------------------------------------------- Kube protocol

    def list_jobs(self, selector: str) -> list[JSON]:
        self._enter("list_jobs", selector)
        return self._list("jobs", selector)

    def list_pods(self, selector: str) -> list[JSON]:
        self._enter("list_pods", selector)
        return self._list("pods", selector)

    def list_events(self, field_selector: str) -> list[JSON]:
        self._enter("list_events", field_selector)
        with self._lock:
            return [
                copy.deepcopy(e)
                for e in self.objects["events"].values()
                if field_matches(e, field_selector)
            ]

    def get_cronjob(self, name: str) -> JSON:
        self._enter("get_cronjob", name)
        return self._get("cronjobs", name)

    def create_job(self, body: JSON) -> JSON:
        lost = self._enter("create_job", body["metadata"]["name"])
        created = self._create("jobs", body)
        self._lost(lost, "create_job")
        return created

    def dry_run_job(self, body: JSON) -> JSON:
        """Server-side dry run of a create: nothing is stored (faults can be injected)."""
        self._enter("dry_run_job", body["metadata"]["name"])
        return copy.deepcopy(body)

    def get_job(self, name: str) -> JSON:
        self._enter("get_job", name)
        return self._get("jobs", name)

    def patch_job(self, name: str, patch: JSON) -> JSON:
        """Merge ``patch`` into the Job (maps merged key by key, everything else replaced)."""
        self._enter("patch_job", name)

        def merge(target: dict[str, Any], change: dict[str, Any]) -> None:
            for key, value in change.items():
                if isinstance(value, dict) and isinstance(target.get(key), dict):
                    merge(target[key], value)
                else:
                    target[key] = copy.deepcopy(value)

        with self._lock:
            obj = self.objects["jobs"][name]
            merge(obj, patch)
            return copy.deepcopy(obj)

    def delete_job(self, name: str) -> None:
        self._enter("delete_job", name)
        self._delete("jobs", name)

    def create_pod(self, body: JSON) -> JSON:
        lost = self._enter("create_pod", body["metadata"]["name"])
        created = self._create("pods", {**body, "status": {"phase": "Pending"}})
        self._lost(lost, "create_pod")
        return created

    def get_pod(self, name: str) -> JSON:
        self._enter("get_pod", name)
        return self._get("pods", name)

    def delete_pod(self, name: str) -> None:
        self._enter("delete_pod", name)
        self._delete("pods", name)

    def patch_pod(self, name: str, patch: JSON) -> JSON:
        """Merge ``patch``'s labels and annotations into the pod."""
        self._enter("patch_pod", name)
        with self._lock:
            meta = self.objects["pods"][name]["metadata"]
            for key in ("labels", "annotations"):
                meta.setdefault(key, {}).update((patch.get("metadata") or {}).get(key) or {})
            return copy.deepcopy(self.objects["pods"][name])

    # ------------------------------------------------ the kubelet, for bare pods

    def run_pods(self, *, start: bool = True) -> None:
        """Pending agent pods (no Job) start running and ready, or stay unschedulable."""
        with self._lock:
            for pod in self.objects["pods"].values():
                labels = pod["metadata"].get("labels") or {}
                if "batch.kubernetes.io/job-name" in labels:
                    continue
                if pod["status"].get("phase") != "Pending":
                    continue
                if start:
                    pod["status"] = {
                        "phase": "Running",
                        "conditions": [{"type": "Ready", "status": "True"}],
                    }
                else:
                    pod["status"]["conditions"] = [
                        {
                            "type": "PodScheduled",
                            "status": "False",
                            "reason": "Unschedulable",
                            "message": "0/3 nodes are available",
                        }
                    ]

    def end_pod(self, name: str, phase: str = "Succeeded") -> None:
        """A bare pod's agent exits (Succeeded, or Failed), now by the clock."""
        with self._lock:
            pod = self.objects["pods"][name]
            pod["status"] = {
                "phase": phase,
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [
                    {
                        "name": "agent",
                        "state": {"terminated": {"finishedAt": _stamp(self.clock())}},
                    }
                ],
            }

    def create_secret(self, body: JSON) -> JSON:
        lost = self._enter("create_secret", body["metadata"]["name"])
        created = self._create("secrets", body)
        self._lost(lost, "create_secret")
        return created

    def list_pvcs(self, selector: str) -> list[JSON]:
        self._enter("list_pvcs", selector)
        return self._list("pvcs", selector)

    def create_pvc(self, body: JSON) -> JSON:
        self._enter("create_pvc", body["metadata"]["name"])
        return self._create("pvcs", body)

    def patch_pvc_labels(self, name: str, labels: dict[str, str]) -> JSON:
        self._enter("patch_pvc_labels", name)
        with self._lock:
            obj = self.objects["pvcs"][name]
            obj["metadata"].setdefault("labels", {}).update(labels)
            return copy.deepcopy(obj)

    def delete_pvc(self, name: str) -> None:
        self._enter("delete_pvc", name)
        self._delete("pvcs", name)

    def get_lease(self, name: str) -> JSON | None:
        self._enter("get_lease", name)
        with self._lock:
            lease = self.objects["leases"].get(name)
            return copy.deepcopy(lease) if lease else None

    def create_lease(self, body: JSON) -> JSON:
        self._enter("create_lease", body["metadata"]["name"])
        return self._create("leases", body)

    def replace_lease(self, name: str, body: JSON) -> JSON:
        self._enter("replace_lease", name)
        with self._lock:
            current = self.objects["leases"].get(name)
            if current is None:
                raise KubeError("not found", status=404)
            if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                raise KubeError("the object has been modified", status=409, reason="Conflict")
            body = copy.deepcopy(body)
            body["metadata"]["resourceVersion"] = str(next(self._versions))
            self.objects["leases"][name] = body
            return copy.deepcopy(body)

    # ---------------------------------------------------- the Job controller, simply

    def run_job_controller(self, *, start: bool = True, ready: bool = True) -> None:
        """Create missing pods for every Job (and mark them ready), like kube + kwok would."""
        with self._lock:
            for job in list(self.objects["jobs"].values()):
                name = job["metadata"]["name"]
                spec = job["spec"]
                status = job.setdefault("status", {})
                pods = [
                    p
                    for p in self.objects["pods"].values()
                    if p["metadata"]["labels"].get("batch.kubernetes.io/job-name") == name
                ]
                want = int(spec.get("parallelism") or 1) - int(status.get("succeeded") or 0)
                for index in range(len(pods), max(0, want)):
                    labels = dict((spec["template"].get("metadata") or {}).get("labels") or {})
                    labels["batch.kubernetes.io/job-name"] = name
                    phase = "Running" if start else "Pending"
                    conditions = [
                        {"type": "Ready", "status": "True" if (start and ready) else "False"}
                    ]
                    if not start:
                        conditions.append(
                            {
                                "type": "PodScheduled",
                                "status": "False",
                                "reason": "Unschedulable",
                                "message": "0/3 nodes are available",
                            }
                        )
                    self.add(
                        "pods",
                        {
                            "metadata": {"name": f"{name}-{index}", "labels": labels},
                            "spec": copy.deepcopy(spec["template"].get("spec") or {}),
                            "status": {"phase": phase, "conditions": conditions},
                        },
                    )
                pods = [
                    p
                    for p in self.objects["pods"].values()
                    if p["metadata"]["labels"].get("batch.kubernetes.io/job-name") == name
                ]
                status["active"] = sum(
                    1 for p in pods if p["status"]["phase"] in ("Pending", "Running")
                )
                status["ready"] = sum(
                    1
                    for p in pods
                    if any(
                        c["type"] == "Ready" and c["status"] == "True"
                        for c in p["status"]["conditions"]
                    )
                )

    def add_event(self, kind: str, name: str, reason: str, message: str) -> JSON:
        """A Warning event about an object, as its controller records one."""
        with self._lock:
            stamp = _stamp(self.clock())
            return self.add(
                "events",
                {
                    "metadata": {"name": f"{name}.{uuid.uuid4().hex[:16]}"},
                    "involvedObject": {"kind": kind, "name": name, "namespace": self.namespace},
                    "type": "Warning",
                    "reason": reason,
                    "message": message,
                    "firstTimestamp": stamp,
                    "lastTimestamp": stamp,
                    "count": 1,
                },
            )

    def forbid_pods(self, message: str) -> None:
        """Every Job without pods gets a FailedCreate event, as a ResourceQuota causes."""
        with self._lock:
            for job in list(self.objects["jobs"].values()):
                name = job["metadata"]["name"]
                if not any(
                    p["metadata"]["labels"].get("batch.kubernetes.io/job-name") == name
                    for p in self.objects["pods"].values()
                ):
                    self.add_event(
                        "Job", name, "FailedCreate", f'Error creating: pods "{name}-x" {message}'
                    )

    def finish_pods(self, job_name: str, count: int | None = None) -> None:
        """Let ``count`` (default all) running pods of a Job succeed."""
        with self._lock:
            job = self.objects["jobs"][job_name]
            status = job.setdefault("status", {})
            pods = [
                p
                for p in list(self.objects["pods"].values())
                if p["metadata"]["labels"].get("batch.kubernetes.io/job-name") == job_name
                and p["status"]["phase"] == "Running"
            ]
            for pod in pods[: count if count is not None else len(pods)]:
                del self.objects["pods"][pod["metadata"]["name"]]
                status["succeeded"] = int(status.get("succeeded") or 0) + 1
            if int(status.get("succeeded") or 0) >= int(job["spec"].get("completions") or 1):
                status["conditions"] = [{"type": "Complete", "status": "True"}]
                status["ready"] = 0
                status["active"] = 0


def field_matches(obj: JSON, selector: str) -> bool:
    """Equality field selectors (``involvedObject.kind=Job,reason=FailedCreate``)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        negate = "!=" in term
        path, _, want = term.partition("!=" if negate else "=")
        value: Any = obj
        for part in path.lstrip("=").split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if (str(value) == want.lstrip("=")) == negate:
            return False
    return True


def cronjob_template(name: str, queue_slug: str, args: list[str] | None = None) -> dict[str, Any]:
    """A queue template as `stackgen build` makes it (the parts the dispatcher reads)."""
    labels = {
        "app.kubernetes.io/name": "buildkite-agent",
        "app.kubernetes.io/component": "agent",
        "app.kubernetes.io/instance": "test",
        "stackgen.io/queue": queue_slug,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "schedule": "@yearly",
            "suspend": True,
            "jobTemplate": {
                "metadata": {"labels": labels},
                "spec": {
                    "backoffLimit": 0,
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [
                                {
                                    "name": "agent",
                                    "image": "buildkite/agent:3.117.0",
                                    "args": args
                                    or [
                                        "start",
                                        "--disconnect-after-job",
                                        "--disconnect-after-idle-timeout",
                                        "60",
                                    ],
                                    "env": [
                                        {
                                            "name": "BUILDKITE_AGENT_TOKEN",
                                            "valueFrom": {
                                                "secretKeyRef": {
                                                    "name": "buildkite-agent-token-x",
                                                    "key": "token",
                                                }
                                            },
                                        },
                                    ],
                                }
                            ],
                        },
                    },
                },
            },
        },
    }
