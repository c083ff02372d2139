"""Machinery the end-to-end benchmarks share (bench/peer/run and bench/e2e).

* :class:`Processes`: child processes, each in its own session, recorded in pid files so the
  caller's trap (or the next run) can stop them;
* :func:`start_fake`: the fake Buildkite (``python -m tests.support.fake_buildkite``) as a
  process, driven through its ``/_fake/`` control API with :func:`http`;
* :class:`Watcher`: watches on Jobs and pods of one namespace (a label selector), recording
  when each object was first seen, started running and finished, with a callback on every
  pod event.  Events are parsed as plain JSON (the client's model classes cost ~1 ms per
  object, which lags a watch during a burst of pods);
* small helpers: :func:`kubectl`, :func:`wait_until`, :func:`namespace`, :func:`summary`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.lib.common import percentile

ROOT = Path(__file__).resolve().parents[2]
#: tests/support/kwok-stages.yaml completes an agent pod once this annotation is set.
EXIT_ANNOTATION = "stackgen.io/agent-exit"
#: The user agent of the harness's Kubernetes client (bench/lib/audit.py leaves it out).
HARNESS_AGENT = "stackgen-bench-harness"


# --------------------------------------------------------------------------- small helpers


def http(method: str, url: str, body: Any = None, timeout: float = 10) -> tuple[int, Any]:
    """One JSON request; returns (status, parsed body) also for HTTP errors."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        with err:
            raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw.decode(errors="replace")


def summary(values: Sequence[float]) -> dict[str, Any]:
    """n, p50, p95, max and mean (None when there are no values), rounded to ms."""

    def r(v: float | None) -> float | None:
        return None if v is None or math.isnan(v) else round(v, 3)

    return {
        "n": len(values),
        "p50": r(percentile(values, 50)),
        "p95": r(percentile(values, 95)),
        "max": r(max(values)) if values else None,
        "mean": r(sum(values) / len(values)) if values else None,
    }


def parse_k8s_time(value: str | datetime | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def kubectl(kubeconfig: Path, *args: str, input: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "--request-timeout=30s", *args],
        input=input,
        capture_output=True,
        text=True,
        check=False,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def namespace(kubeconfig: Path, name: str) -> Iterator[str]:
    kubectl(kubeconfig, "create", "namespace", name)
    try:
        yield name
    finally:
        kubectl(kubeconfig, "delete", "namespace", name, "--wait=false", check=False)


# --------------------------------------------------------------------------- processes


class Processes:
    """Child processes, each in its own session, recorded in pid files for the caller's trap."""

    def __init__(self, pid_dir: Path) -> None:
        self.pid_dir = pid_dir
        pid_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[Any]] = {}

    def start(self, name: str, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(argv, start_new_session=True, **kw)
        self.procs[name] = proc
        (self.pid_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
        return proc

    def stop(self, name: str, timeout: float = 15) -> int | None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(5)
        with contextlib.suppress(FileNotFoundError):
            (self.pid_dir / f"{name}.pid").unlink()
        return proc.returncode

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name, timeout=10)


def fake_url_from(proc: subprocess.Popen[str], timeout: float = 20) -> str:
    """The URL the fake Buildkite prints on its first line of stdout."""
    assert proc.stdout is not None
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    if not line or not line[0].startswith("http://"):
        raise RuntimeError(f"the fake Buildkite did not print its URL (exit {proc.poll()})")
    return line[0].strip()


def start_fake(
    procs: Processes,
    name: str,
    *,
    token: str,
    queues: Sequence[str],
    log_path: Path,
    extra: Sequence[str] = (),
) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -m tests.support.fake_buildkite`` on 127.0.0.1; returns (process, URL).

    Its stderr goes to ``log_path`` (the file stays open in the child only).
    """
    argv = [sys.executable, "-m", "tests.support.fake_buildkite", "--port", "0", "--token", token]
    for queue in queues:
        argv += ["--queue", queue]
    with log_path.open("w") as log:
        proc = procs.start(
            name,
            [*argv, *extra],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    return proc, fake_url_from(proc)


# --------------------------------------------------------------------------- Kubernetes


def component_metrics_url(cluster_state: Path, name: str) -> str | None:
    """A kwok cluster's control-plane component's /metrics, from its kwok.yaml (kwokctl
    binds kube-controller-manager and kube-scheduler to 127.0.0.1 and leaves /metrics
    open)."""
    import yaml

    for path in cluster_state.glob("**/kwok.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            for component in (doc or {}).get("components") or []:
                if component.get("name") != name:
                    continue
                for arg in component.get("args") or []:
                    if str(arg).startswith("--secure-port="):
                        return f"https://127.0.0.1:{str(arg).split('=', 1)[1]}/metrics"
    return None


@dataclass
class Seen:
    """When the harness first saw a Kubernetes object and what it looked like."""

    name: str
    uuid: str | None  # the value of the watcher's key label
    seen_at: float
    created: float | None  # creationTimestamp (whole seconds)
    #: A pod: Running.  A Job: its status first counts a started pod (ready, succeeded, failed).
    running_at: float | None = None
    done_at: float | None = None
    phase: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    deleted_at: float | None = None
    #: A pod: first seen with a deletionTimestamp (Terminating).
    terminating_at: float | None = None


def _conditions(obj: dict[str, Any]) -> dict[str, str]:
    return {
        c.get("type"): c.get("status") for c in (obj.get("status") or {}).get("conditions") or []
    }


class Watcher:
    """Watches Jobs and pods matching ``selector`` in one namespace.

    ``on_pod`` is called (from the pod watch's thread) with a copy of the pod's record on
    every pod event.  ``key_label`` names the label whose value is recorded as ``uuid``.
    """

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        on_pod: Callable[[Seen], None],
        *,
        selector: str,
        key_label: str,
    ) -> None:
        import kubernetes

        self.k8s = kubernetes
        self.api_client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        # Named, so that an audit log tells the harness's writes (exit annotations) from the
        # controller's under test, which may use the same client library (bench/lib/audit.py).
        self.api_client.user_agent = HARNESS_AGENT
        self.core = kubernetes.client.CoreV1Api(self.api_client)
        self.batch = kubernetes.client.BatchV1Api(self.api_client)
        self.namespace = namespace
        self.on_pod = on_pod
        self.selector = selector
        self.key_label = key_label
        self.jobs: dict[str, Seen] = {}
        self.pods: dict[str, Seen] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._loop, args=(kind,), daemon=True, name=f"watch-{kind}")
            for kind in ("jobs", "pods")
        ]
        self.errors: list[str] = []

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=10)
        self.api_client.close()

    def _lister(self, kind: str) -> Callable[..., Any]:
        return self.batch.list_namespaced_job if kind == "jobs" else self.core.list_namespaced_pod

    def _loop(self, kind: str) -> None:
        lister = self._lister(kind)
        version: str | None = None
        while not self.stopping.is_set():
            try:
                if version is None:
                    resp = lister(
                        self.namespace, label_selector=self.selector, _preload_content=False
                    )
                    listed = json.loads(resp.data)
                    version = listed["metadata"]["resourceVersion"]
                    for obj in listed.get("items") or []:
                        self._record(kind, obj)
                stream = self.k8s.watch.Watch().stream(
                    lister,
                    self.namespace,
                    label_selector=self.selector,
                    resource_version=version,
                    timeout_seconds=2,
                    allow_watch_bookmarks=True,
                    deserialize=False,
                )
                for event in stream:
                    obj = event.get("object") or {}
                    kind_of_event = event.get("type")
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if kind_of_event in ("ADDED", "MODIFIED", "DELETED"):
                        self._record(kind, obj, deleted=kind_of_event == "DELETED")
                    if self.stopping.is_set():
                        break
            except self.k8s.client.exceptions.ApiException as err:
                if err.status == 410:  # too old a resource version: list again
                    version = None
                    continue
                self.errors.append(f"{kind}: {err.status} {err.reason}")
                time.sleep(0.5)
            except KeyError:  # an ERROR event (the client reads it as a model): list again
                version = None
            except Exception as err:  # a dropped connection: resume from the last version
                if not self.stopping.is_set():
                    self.errors.append(f"{kind}: {err!r}")
                    time.sleep(0.2)

    def _record(self, kind: str, obj: dict[str, Any], deleted: bool = False) -> None:
        now = time.time()
        meta = obj.get("metadata") or {}
        name = meta.get("name", "")
        labels = dict(meta.get("labels") or {})
        with self.lock:
            table = self.jobs if kind == "jobs" else self.pods
            seen = table.get(name)
            if seen is None:
                created = parse_k8s_time(meta.get("creationTimestamp"))
                seen = table[name] = Seen(name, labels.get(self.key_label), now, created)
            seen.labels = labels
            if deleted and seen.deleted_at is None:
                seen.deleted_at = now
            if meta.get("deletionTimestamp") and seen.terminating_at is None:
                seen.terminating_at = now
            if kind == "jobs":
                conds = _conditions(obj)
                finished = conds.get("Complete") == "True" or conds.get("Failed") == "True"
                if finished and seen.done_at is None:
                    seen.done_at = now
                # For a Job, running_at: when its status first counted a started pod.
                status = obj.get("status") or {}
                counted = sum(int(status.get(k) or 0) for k in ("ready", "succeeded", "failed"))
                if counted and seen.running_at is None:
                    seen.running_at = now
                seen.phase = "Finished" if finished else ("Deleted" if deleted else "Active")
                return
            status = obj.get("status") or {}
            phase = status.get("phase")
            seen.phase = "Deleted" if deleted else phase
            started = phase in ("Running", "Succeeded", "Failed") or any(
                "running" in (cs.get("state") or {}) or "terminated" in (cs.get("state") or {})
                for cs in status.get("containerStatuses") or []
            )
            if started and seen.running_at is None and phase != "Failed":
                seen.running_at = now
            if phase in ("Succeeded", "Failed") and seen.done_at is None:
                seen.done_at = now
            snapshot = Seen(**asdict(seen))
        self.on_pod(snapshot)

    def exit_pod(self, pod: str, code: int) -> None:
        """Say that the agent in ``pod`` exited with ``code`` (an annotation kwok acts on)."""
        body = {"metadata": {"annotations": {EXIT_ANNOTATION: str(code)}}}
        try:
            self.core.patch_namespaced_pod(pod, self.namespace, body, _preload_content=False)
        except self.k8s.client.exceptions.ApiException as err:
            if err.status != 404:
                raise

    def snapshot(self) -> tuple[dict[str, Seen], dict[str, Seen]]:
        with self.lock:
            return (
                {k: Seen(**asdict(v)) for k, v in self.jobs.items()},
                {k: Seen(**asdict(v)) for k, v in self.pods.items()},
            )

    def list_now(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Jobs and pods as the API server has them now (name, key label, state)."""
        resp = self.batch.list_namespaced_job(self.namespace, _preload_content=False)
        jobs = []
        for j in json.loads(resp.data).get("items") or []:
            conds = _conditions(j)
            state = (
                "Complete"
                if conds.get("Complete") == "True"
                else "Failed"
                if conds.get("Failed") == "True"
                else "Active"
            )
            jobs.append(
                {
                    "name": j["metadata"]["name"],
                    "uuid": (j["metadata"].get("labels") or {}).get(self.key_label),
                    "state": state,
                    "ttl_seconds_after_finished": (j.get("spec") or {}).get(
                        "ttlSecondsAfterFinished"
                    ),
                }
            )
        resp = self.core.list_namespaced_pod(self.namespace, _preload_content=False)
        pods = [
            {
                "name": p["metadata"]["name"],
                "uuid": (p["metadata"].get("labels") or {}).get(self.key_label),
                "phase": (p.get("status") or {}).get("phase"),
            }
            for p in json.loads(resp.data).get("items") or []
        ]
        return jobs, pods
