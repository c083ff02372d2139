"""The dispatcher's seam to Kubernetes.

A small interface, and its implementation on the
official ``kubernetes`` client.

Objects cross the seam as plain JSON dicts (the API's own shape): the client is asked
not to build its model objects, which at thousands of objects costs more than the
request itself.  Tests use an in-memory implementation of :class:`Kube`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, Protocol

JSON = dict[str, Any]


def slim_listed_job(job: JSON) -> JSON:
    """A listed Job without what the dispatcher never reads from a listing.

    The loop reads a listed Job's metadata (but not managedFields), its completions and
    parallelism, and its status; the pod template and managedFields are most of its bytes.
    Dropped as each page arrives, 10 000 listed Jobs take a fraction of the memory
    (bench/scale).
    """
    meta = job.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    spec = job.get("spec")
    if isinstance(spec, dict):
        spec.pop("template", None)
    return job


#: What the dispatcher reads of a listed agent pod (the rest of its spec is dropped).
_POD_SPEC_KEPT = ("activeDeadlineSeconds", "nodeName")


def slim_listed_pod(pod: JSON) -> JSON:
    """A listed agent pod without managedFields and most of its spec (as for Jobs)."""
    meta = pod.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    spec = pod.get("spec")
    if isinstance(spec, dict):
        pod["spec"] = {k: spec[k] for k in _POD_SPEC_KEPT if k in spec}
    return pod


def quantity(value: object) -> Decimal:
    """A Kubernetes quantity (``500m``, ``2Gi``) as a number, by the client's own parser.

    Raises ValueError when ``value`` is not a quantity.
    """
    from kubernetes.utils.quantity import parse_quantity

    return Decimal(parse_quantity(value))


#: What ``stackgen_api_errors_total{api="kubernetes"}`` counts by (a fixed set).
KUBE_ERROR_KINDS = ("AuthError", "NotFound", "Conflict", "Rejected", "RateLimited", "Unavailable")


class KubeError(Exception):
    """A Kubernetes API call failed."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        reason: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        #: The API server's Retry-After (429 from priority and fairness, some 5xx).
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """429, 5xx and transport errors are worth another try; 4xx are not."""
        return self.status is None or self.status == 429 or self.status >= 500

    @property
    def maybe_landed(self) -> bool:
        """Whether a failed write may have been carried out all the same.

        The answer was lost (a timeout, a broken connection), or the server failed after
        accepting the write (5xx).
        """
        return self.status is None or self.status >= 500

    @property
    def kind(self) -> str:
        """One of :data:`KUBE_ERROR_KINDS` (the status is logged alongside)."""
        if self.status in (401, 403):
            return "AuthError"
        if self.status == 404:
            return "NotFound"
        if self.status == 409:
            return "Conflict"
        if self.status == 429:
            return "RateLimited"
        if self.status is None or self.status >= 500:
            return "Unavailable"
        return "Rejected"

    @property
    def conflict(self) -> bool:
        """409: AlreadyExists or a stale resourceVersion."""
        return self.status == 409

    @property
    def not_found(self) -> bool:
        """404."""
        return self.status == 404


def _retry_after(exc: Any) -> float | None:
    """The Retry-After header of a failed answer (seconds), if any."""
    value = (getattr(exc, "headers", None) or {}).get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class Kube(Protocol):
    """What the dispatcher does with Kubernetes, in one namespace."""

    namespace: str

    def list_jobs(self, selector: str) -> list[JSON]: ...
    def list_pods(self, selector: str) -> list[JSON]: ...
    def list_events(self, field_selector: str) -> list[JSON]: ...
    def get_cronjob(self, name: str) -> JSON: ...
    def create_job(self, body: JSON) -> JSON: ...
    def delete_job(self, name: str) -> None: ...
    def patch_job(self, name: str, patch: JSON) -> JSON: ...
    def create_secret(self, body: JSON) -> JSON: ...
    def list_pvcs(self, selector: str) -> list[JSON]: ...
    def create_pvc(self, body: JSON) -> JSON: ...
    def patch_pvc_labels(self, name: str, labels: dict[str, str]) -> JSON: ...
    def delete_pvc(self, name: str) -> None: ...
    def get_job(self, name: str) -> JSON: ...
    def get_lease(self, name: str) -> JSON | None: ...
    def create_lease(self, body: JSON) -> JSON: ...
    def replace_lease(self, name: str, body: JSON) -> JSON: ...
    def dry_run_job(self, body: JSON) -> JSON: ...
    def create_pod(self, body: JSON) -> JSON: ...
    def get_pod(self, name: str) -> JSON: ...
    def delete_pod(self, name: str) -> None: ...
    def patch_pod(self, name: str, patch: JSON) -> JSON: ...


class ClientKube:
    """:class:`Kube` on the official client (in-cluster config, else kubeconfig)."""

    def __init__(self, namespace: str, *, kubeconfig: str | None = None, timeout: float = 30.0):
        from kubernetes import client, config

        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig)
        else:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
        self.namespace = namespace
        self._timeout = timeout
        api = client.ApiClient()
        self._core = client.CoreV1Api(api)
        self._batch = client.BatchV1Api(api)
        self._coordination = client.CoordinationV1Api(api)

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            response = method(
                *args, _preload_content=False, _request_timeout=self._timeout, **kwargs
            )
            data = response.data
        except ApiException as exc:
            reason = ""
            try:
                body = json.loads(exc.body or "{}")
                reason = str(body.get("reason", ""))
                message = str(body.get("message", exc.reason))
            except (ValueError, TypeError):
                message = str(exc.reason)
            raise KubeError(
                message, status=exc.status, reason=reason, retry_after=_retry_after(exc)
            ) from exc
        except (HTTPError, OSError) as exc:
            raise KubeError(f"{type(exc).__name__}: {exc}") from exc
        return json.loads(data) if data else {}

    def _items(self, method: Any, *, slim: Any = None, **kwargs: Any) -> list[JSON]:
        return self._listing(method, slim=slim, **kwargs)[0]

    def _listing(self, method: Any, *, slim: Any = None, **kwargs: Any) -> tuple[list[JSON], str]:
        items: list[JSON] = []
        token = None
        while True:
            page = self._call(method, self.namespace, limit=500, _continue=token, **kwargs)
            page_items = page.get("items") or []
            items.extend(map(slim, page_items) if slim else page_items)
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                return items, str(meta.get("resourceVersion") or "")

    def list_jobs(self, selector: str) -> list[JSON]:
        return self._items(
            self._batch.list_namespaced_job, slim=slim_listed_job, label_selector=selector
        )

    def list_jobs_at(self, selector: str) -> tuple[list[JSON], str]:
        """Our Jobs (slimmed) and the list's resourceVersion, to watch from."""
        return self._listing(
            self._batch.list_namespaced_job, slim=slim_listed_job, label_selector=selector
        )

    def watch_jobs(
        self, selector: str, resource_version: str, timeout: int
    ) -> Iterator[tuple[str, JSON]]:
        """(event type, Job) from a watch; ends after ``timeout`` s; KubeError 410 = relist."""
        return self._watch(self._batch.list_namespaced_job, selector, resource_version, timeout)

    def list_pods_at(self, selector: str) -> tuple[list[JSON], str]:
        """Our agent pods (slimmed) and the list's resourceVersion, to watch from."""
        return self._listing(
            self._core.list_namespaced_pod, slim=slim_listed_pod, label_selector=selector
        )

    def watch_pods(
        self, selector: str, resource_version: str, timeout: int
    ) -> Iterator[tuple[str, JSON]]:
        """(event type, pod) from a watch, as :meth:`watch_jobs`."""
        return self._watch(self._core.list_namespaced_pod, selector, resource_version, timeout)

    def _watch(
        self, method: Any, selector: str, resource_version: str, timeout: int
    ) -> Iterator[tuple[str, JSON]]:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            # Unparsed (_preload_content=False): a stream of JSON lines, one event each.
            response: Any = method(
                self.namespace,
                label_selector=selector,
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout,
                _preload_content=False,
                _request_timeout=timeout + 30,
            )
        except ApiException as exc:
            raise KubeError(str(exc.reason), status=exc.status) from exc
        except (HTTPError, OSError) as exc:
            raise KubeError(f"{type(exc).__name__}: {exc}") from exc
        try:
            buffer = b""
            for chunk in response.stream(65536, decode_content=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = str(event.get("type")), event.get("object") or {}
                    if kind == "ERROR":
                        raise KubeError(
                            str(obj.get("message", "watch error")), status=obj.get("code")
                        )
                    yield kind, obj
        except (HTTPError, OSError) as exc:
            raise KubeError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            response.release_conn()

    def list_pods(self, selector: str) -> list[JSON]:
        return self._items(self._core.list_namespaced_pod, label_selector=selector)

    def list_events(self, field_selector: str) -> list[JSON]:
        return self._items(self._core.list_namespaced_event, field_selector=field_selector)

    def get_cronjob(self, name: str) -> JSON:
        result: JSON = self._call(self._batch.read_namespaced_cron_job, name, self.namespace)
        return result

    def create_job(self, body: JSON) -> JSON:
        result: JSON = self._call(self._batch.create_namespaced_job, self.namespace, body)
        return result

    def get_job(self, name: str) -> JSON:
        result: JSON = self._call(self._batch.read_namespaced_job, name, self.namespace)
        return result

    def dry_run_job(self, body: JSON) -> JSON:
        """Create ``body`` with ``dryRun=All``: validated and admitted, never stored."""
        result: JSON = self._call(
            self._batch.create_namespaced_job, self.namespace, body, dry_run="All"
        )
        return result

    def patch_job(self, name: str, patch: JSON) -> JSON:
        """A strategic-merge patch of one of our Jobs (labels, annotations, TTL)."""
        result: JSON = self._call(self._batch.patch_namespaced_job, name, self.namespace, patch)
        return result

    def delete_job(self, name: str) -> None:
        # Background: the Job goes now, the garbage collector removes its pods.
        self._call(
            self._batch.delete_namespaced_job,
            name,
            self.namespace,
            body={"propagationPolicy": "Background"},
        )

    def create_secret(self, body: JSON) -> JSON:
        result: JSON = self._call(self._core.create_namespaced_secret, self.namespace, body)
        return result

    def create_pod(self, body: JSON) -> JSON:
        result: JSON = self._call(self._core.create_namespaced_pod, self.namespace, body)
        return result

    def get_pod(self, name: str) -> JSON:
        result: JSON = self._call(self._core.read_namespaced_pod, name, self.namespace)
        return result

    def delete_pod(self, name: str) -> None:
        # Background: the pod goes now, the garbage collector removes its token Secret.
        self._call(
            self._core.delete_namespaced_pod,
            name,
            self.namespace,
            body={"propagationPolicy": "Background"},
        )

    def patch_pod(self, name: str, patch: JSON) -> JSON:
        """A strategic-merge patch of one of our pods (labels, annotations)."""
        result: JSON = self._call(self._core.patch_namespaced_pod, name, self.namespace, patch)
        return result

    def list_pvcs(self, selector: str) -> list[JSON]:
        return self._items(
            self._core.list_namespaced_persistent_volume_claim, label_selector=selector
        )

    def create_pvc(self, body: JSON) -> JSON:
        result: JSON = self._call(
            self._core.create_namespaced_persistent_volume_claim, self.namespace, body
        )
        return result

    def patch_pvc_labels(self, name: str, labels: dict[str, str]) -> JSON:
        result: JSON = self._call(
            self._core.patch_namespaced_persistent_volume_claim,
            name,
            self.namespace,
            {"metadata": {"labels": labels}},
        )
        return result

    def delete_pvc(self, name: str) -> None:
        self._call(self._core.delete_namespaced_persistent_volume_claim, name, self.namespace)

    def get_lease(self, name: str) -> JSON | None:
        try:
            result: JSON = self._call(
                self._coordination.read_namespaced_lease, name, self.namespace
            )
            return result
        except KubeError as exc:
            if exc.not_found:
                return None
            raise

    def create_lease(self, body: JSON) -> JSON:
        result: JSON = self._call(self._coordination.create_namespaced_lease, self.namespace, body)
        return result

    def replace_lease(self, name: str, body: JSON) -> JSON:
        result: JSON = self._call(
            self._coordination.replace_namespaced_lease, name, self.namespace, body
        )
        return result
