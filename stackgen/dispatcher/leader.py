"""Leader election on a ``coordination.k8s.io`` Lease, so two replicas never dispatch twice.

The rules are client-go's: a candidate takes the Lease when it is free, or when its
record has not changed for ``leaseDurationSeconds`` as measured by the candidate's own
clock (renew times written by another host are never compared with ours, so clock
skew cannot hand out two leases).  Writes carry the resourceVersion read, so of two
candidates racing for a free Lease exactly one wins (the other gets 409).  A leader that
cannot renew within ``renew_deadline`` steps down before its lease can expire.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import Any

from stackgen.dispatcher.kube import JSON, Kube, KubeError

ENDPOINT_ANNOTATION = "stackgen.io/leader-endpoint"


def _micro_time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Holds (or waits for) one Lease; ``is_leader`` says which."""

    def __init__(
        self,
        kube: Kube,
        name: str,
        identity: str,
        *,
        lease_duration: float,
        renew_deadline: float,
        retry_period: float,
        endpoint: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        on_change: Callable[[bool], None] | None = None,
        log: Any = None,
    ) -> None:
        self.kube = kube
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.endpoint = endpoint
        self._clock = clock
        self._wall = wall
        self._on_change = on_change
        self._log = log
        self._leader = False
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._last_renew = 0.0
        self.leader_endpoint: str | None = None
        self._lock = threading.Lock()

    @property
    def is_leader(self) -> bool:
        """Whether this replica may dispatch right now."""
        with self._lock:
            if self._leader and self._clock() - self._last_renew > self.renew_deadline:
                return False  # could not renew in time: act as follower at once
            return self._leader

    def _set(self, leader: bool) -> None:
        with self._lock:
            changed = leader != self._leader
            self._leader = leader
        if changed:
            if self._log is not None:
                self._log.info("leadership changed", leader=leader, lease=self.name)
            if self._on_change:
                self._on_change(leader)

    def try_acquire_or_renew(self) -> bool:
        """One round of the election; returns whether we hold the Lease afterwards."""
        now = self._clock()
        try:
            lease = self.kube.get_lease(self.name)
            if lease is None:
                self.kube.create_lease(self._record({"metadata": {"name": self.name}}, fresh=True))
                self._won(now)
                return True
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity") or ""
            annotations = (lease.get("metadata") or {}).get("annotations") or {}
            self.leader_endpoint = annotations.get(ENDPOINT_ANNOTATION) if holder else None
            record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
            if record != self._observed:
                self._observed, self._observed_at = record, now
            duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
            expired = now - self._observed_at > duration
            if holder and holder != self.identity and not expired:
                self._set(False)
                return False
            self.kube.replace_lease(self.name, self._record(lease, fresh=holder != self.identity))
            self._won(now)
            return True
        except KubeError as exc:
            if self._log is not None and not exc.conflict:
                self._log.warning("lease update failed", lease=self.name, error=str(exc))
            if not self.is_leader:
                self._set(False)
            return self.is_leader

    def _won(self, now: float) -> None:
        with self._lock:
            self._last_renew = now
        self.leader_endpoint = self.endpoint
        self._set(True)

    def _record(self, lease: JSON, *, fresh: bool) -> JSON:
        body = dict(lease)
        meta = dict(body.get("metadata") or {})
        annotations = dict(meta.get("annotations") or {})
        if self.endpoint:
            annotations[ENDPOINT_ANNOTATION] = self.endpoint
        meta["annotations"] = annotations
        body["metadata"] = meta
        spec = dict(body.get("spec") or {})
        wall = _micro_time(self._wall())
        if fresh:
            spec["acquireTime"] = wall
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (
                1 if spec.get("holderIdentity") else 0
            )
        spec["holderIdentity"] = self.identity
        spec["leaseDurationSeconds"] = int(self.lease_duration)
        spec["renewTime"] = wall
        body["spec"] = spec
        body.setdefault("apiVersion", "coordination.k8s.io/v1")
        body.setdefault("kind", "Lease")
        return body

    def release(self) -> None:
        """Give the Lease up on shutdown so a successor need not wait it out."""
        if not self._leader:
            return
        try:
            lease = self.kube.get_lease(self.name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                body = dict(lease)
                spec = dict(body.get("spec") or {})
                spec["holderIdentity"] = ""
                spec["leaseDurationSeconds"] = 1
                body["spec"] = spec
                self.kube.replace_lease(self.name, body)
        except KubeError:
            pass
        self._set(False)

    def run(self, stop: threading.Event) -> None:
        """Keep electing until ``stop`` is set (the caller then calls :meth:`release`)."""
        while not stop.is_set():
            self.try_acquire_or_renew()
            stop.wait(self.retry_period)
