"""Creates the API server refuses: which refusals pass by themselves, and what to do.

Kubernetes answers a pod it will not admit with 403 (a ResourceQuota, an admission
webhook, PodSecurity, a LimitRange) or 422 (an invalid pod); a Job's pods refused that way
leave only the Job controller's ``FailedCreate`` event.  Both workloads answer alike
(docs/dispatcher.md, "A pod Kubernetes refuses"): a *final* refusal fails the Buildkite
job without another try; a *transient* one is retried for as long as the Job path would
wait (:func:`refusal_window`), then fails it.  Dispatch mode has no job to fail: it
counts and logs the refusal, and backs off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from stackgen.common.models import DispatchedQueue
from stackgen.dispatcher.kube import KubeError

#: Refusals that may pass without anyone changing the pod: quota usage falls as pods
#: end; a new quota's usage is known once the quota controller has counted it; a
#: ServiceAccount may be created in a moment.
TRANSIENT_REFUSALS = (
    "exceeded quota",
    "status unknown for quota",
    "error looking up service account",
)

Refusal = Literal["final", "transient"]


def refusal(message: str | None, status: int | None = None) -> Refusal | None:
    """How the API server refused to create an agent pod (or Job), from its answer.

    ``message``: the create's error (``status`` 403 or 422), or a Job's ``FailedCreate``
    reason (no status: the Job controller's create was refused).  ``transient``: it may
    pass by itself (:data:`TRANSIENT_REFUSALS`).  ``final``: the same pod is refused
    again until someone changes it or the policy (an admission webhook, PodSecurity, a
    LimitRange, an invalid pod).  None: not a refusal of the pod (the dispatcher's own
    RBAC, ``cannot create resource``, is its configuration; anything else is a fault).
    """
    if not message or (status is not None and status not in (400, 403, 422)):
        return None
    text = message.lower()
    if "cannot create resource" in text:
        return None
    if any(t in text for t in TRANSIENT_REFUSALS):
        return "transient"
    if status == 422 or " is invalid" in text or "denied the request" in text:
        return "final"
    if status == 403 or "forbidden" in text:
        return "final"
    return None


def refusal_window(queue: DispatchedQueue) -> float:
    """How long a job waits out a transient refusal before it is failed.

    As long as the Job path takes: its Job is deleted after the pod start timeout, a
    second Job gets as long again, then the job is failed.
    """
    return 2 * queue.dispatch.pod_start_timeout_seconds


@dataclass(frozen=True)
class Decision:
    """What to do about one refused exact-mode create."""

    kind: Refusal
    #: Finish the Buildkite job now (a final refusal, or a transient one past its window).
    fail: bool
    #: For Buildkite: the finish detail, or (``fail`` False) the timeline note.
    detail: str


def decide(exc: KubeError, what: str, first: float, now: float, window: float) -> Decision | None:
    """The decision for a create refused ``now`` (first refused at ``first``), or None.

    ``what``: ``agent pod`` or ``Job``.  None: not a refusal of the object.
    """
    kind = refusal(str(exc), exc.status)
    if kind is None:
        return None
    if kind == "transient" and now - first < window:
        note = f"stackgen: Kubernetes refused the {what} (retrying for up to {window:.0f}s): {exc}"
        return Decision(kind, False, note)
    lasted = f" for {now - first:.0f}s" if kind == "transient" else ""
    return Decision(kind, True, f"stackgen: Kubernetes refused the {what}{lasted}: {exc}")


def dispatch_refused(metrics: Any, queue: str, error: BaseException, log: Any) -> None:
    """Dispatch mode: a refused create fails no Buildkite job (none waits for one agent).

    Counted and logged as an error; the caller re-raises, so the queue backs off.
    """
    kind = refusal(str(error), error.status) if isinstance(error, KubeError) else None
    if kind is None:
        return
    metrics.creates_refused.labels(queue, kind).inc()
    log.error(
        "Kubernetes refused this queue's agents; retrying with backoff",
        reason=str(error),
        refusal=kind,
    )
