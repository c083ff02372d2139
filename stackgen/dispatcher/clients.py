"""What every step of a cycle talks to: Buildkite, Kubernetes, the metrics, the clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from stackgen.buildkite import AgentAPI
from stackgen.dispatcher.informer import JobInformer
from stackgen.dispatcher.kube import Kube
from stackgen.dispatcher.metrics import Metrics
from stackgen.dispatcher.stacks import Stacks


@dataclass(frozen=True)
class Clients:
    """The dispatcher's connections, shared by :mod:`.demand` and :mod:`.act`."""

    api: AgentAPI
    kube: Kube
    #: The Stacks API stacks registered for exact queues.
    stacks: Stacks
    metrics: Metrics
    clock: Callable[[], float]
    #: Our Jobs from a watch (None: each cycle lists them).
    informer: JobInformer | None = None
    #: Our agent pods (workload: pod) from a watch (None: listed when needed).
    pod_informer: JobInformer | None = None
