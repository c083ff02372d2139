"""Our Jobs, listed once and then kept current by a watch (an informer, client-go style).

A cycle then reads the cache instead of listing (and parsing) every Job again: at
10 000 Jobs the list is ~30 MB of JSON, about a second of CPU per cycle (bench/scale)
and the same load on the API server.  What the dispatcher creates or deletes itself goes
into the cache at once, so the next cycle never misses its own Jobs (and never counts an
agent twice) while the watch catches up.  A broken or expired watch (410 Gone) relists;
so does a timer, as a safety net.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

from stackgen.dispatcher.kube import JSON, KubeError, slim_listed_job, slim_listed_pod

#: Watch requests end after this long and are renewed from the last resourceVersion.
WATCH_TIMEOUT = 300
#: Relist this often anyway.
RELIST_EVERY = 900.0


class WatchableKube(Protocol):
    """What an informer needs of the Kubernetes client (ClientKube has it)."""

    def list_jobs_at(self, selector: str) -> tuple[list[JSON], str]: ...

    def watch_jobs(
        self, selector: str, resource_version: str, timeout: int
    ) -> Iterator[tuple[str, JSON]]: ...


class JobInformer:
    """A cache of our Jobs (or, with ``resource="pods"``, agent pods) by name."""

    def __init__(
        self, kube: WatchableKube, selector: str, *, log: Any = None, resource: str = "jobs"
    ) -> None:
        self.kube = kube
        self.selector = selector
        self.log = log
        self.resource = resource
        self._slim = slim_listed_pod if resource == "pods" else slim_listed_job
        self._list_at = getattr(kube, f"list_{resource}_at")
        self._watch = getattr(kube, f"watch_{resource}")
        self._jobs: dict[str, JSON] = {}
        # What the dispatcher wrote itself (name -> Job, or None when deleted) and when: a
        # list that was already under way then must not undo it.
        self._local: dict[str, tuple[float, JSON | None]] = {}
        self._version = ""
        self._listed_at = 0.0
        self._lock = threading.Lock()
        self._synced = threading.Event()

    @property
    def synced(self) -> bool:
        """Whether the cache holds a full list (the loop lists itself until then)."""
        return self._synced.is_set()

    def snapshot(self) -> list[JSON]:
        """The cached Jobs (treat them as read-only)."""
        with self._lock:
            return list(self._jobs.values())

    def upsert(self, job: JSON) -> None:
        """A Job the dispatcher just created (or read): cache it now."""
        name = (job.get("metadata") or {}).get("name")
        if name:
            slim = self._slim(dict(job))
            with self._lock:
                self._jobs[name] = slim
                self._local[name] = (time.monotonic(), slim)

    def remove(self, name: str) -> None:
        """A Job the dispatcher just deleted."""
        with self._lock:
            self._jobs.pop(name, None)
            self._local[name] = (time.monotonic(), None)

    def relist(self) -> None:
        """Replace the cache with a fresh list."""
        started = time.monotonic()
        items, version = self._list_at(self.selector)
        with self._lock:
            jobs = {i["metadata"]["name"]: i for i in items}
            for name, (at, job) in self._local.items():
                if at < started:
                    continue  # the list has seen it
                if job is None:
                    jobs.pop(name, None)
                else:
                    jobs.setdefault(name, job)
            self._local = {n: v for n, v in self._local.items() if v[0] >= started}
            self._jobs = jobs
            self._version = version
        self._listed_at = time.monotonic()
        self._synced.set()

    def _apply(self, kind: str, obj: JSON) -> None:
        meta = obj.get("metadata") or {}
        version = str(meta.get("resourceVersion") or "")
        with self._lock:
            self._local.pop(meta.get("name", ""), None)  # the watch has caught up with it
            if kind in ("ADDED", "MODIFIED"):
                self._jobs[meta["name"]] = self._slim(obj)
            elif kind == "DELETED":
                self._jobs.pop(meta.get("name", ""), None)
            if version:
                self._version = version

    def run(self, stop: threading.Event) -> None:
        """List, then watch until ``stop``; relist after any watch failure."""
        failures = 0
        while not stop.is_set():
            try:
                if not self.synced or time.monotonic() - self._listed_at > RELIST_EVERY:
                    self.relist()
                for kind, obj in self._watch(self.selector, self._version, WATCH_TIMEOUT):
                    self._apply(kind, obj)
                    if stop.is_set():
                        return
                failures = 0
            except KubeError as exc:
                failures += 1
                if exc.status == 410:  # the version is too old: start over from a list
                    self._synced.clear()
                    continue
                if self.log is not None:
                    self.log.warning(
                        "watch failed", resource=self.resource, error=str(exc), status=exc.status
                    )
                self._synced.clear()
                stop.wait(min(30.0, 0.5 * 2 ** min(failures, 6)))
