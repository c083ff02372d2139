"""The names stackgen gives things, each written once.

Object names in ``bases/`` that code refers to, container paths, environment variables
and image names.  The bases themselves are YAML (kustomize reads them), so their copies of
these names are checked against this module by ``tests/unit/test_names.py``.
"""

from __future__ import annotations

import re

from stackgen.common.defaults import stack_default

#: ``apiVersion`` of stack.yaml and of the generated dispatcher config.
API_VERSION = "stackgen.io/v1alpha1"

#: Kubernetes version validated against when neither stack.yaml nor the command names one.
DEFAULT_KUBERNETES_VERSION: str = stack_default("kubernetesVersion")
#: Buildkite's agent API.
DEFAULT_ENDPOINT: str = stack_default("agent.endpoint")

#: Namespaces every cluster has: a stack may live in one, but stackgen did not create it
#: and never sets its Pod Security labels (kube-system runs the cluster's own pods).
SYSTEM_NAMESPACES = frozenset({"default", "kube-system", "kube-public", "kube-node-lease"})

# ------------------------------------------------------------------ stackgen's own apps
#: The dispatcher's Deployment, ServiceAccount, Lease and app label.
DISPATCHER = "stackgen-dispatcher"
#: The metrics adapter's Deployment, Service, ConfigMap, cert-manager Certificate and app label.
METRICS_ADAPTER = "stackgen-metrics-adapter"
#: The Secret holding the adapter's serving certificate.
METRICS_ADAPTER_TLS = f"{METRICS_ADAPTER}-tls"
#: App label of git mirror refresh pods.
GIT_MIRROR = "stackgen-git-mirror"
#: The dispatcher's config ConfigMap (generated) and its one key.
DISPATCHER_CONFIG = "stackgen-dispatcher-config"
DISPATCHER_CONFIG_FILE = "dispatcher.yaml"
#: The dispatcher's HTTP port (metrics, health, webhook).
DISPATCHER_PORT = 8080
#: The metrics adapter's plain-HTTP Prometheus port (its API is served on 6443).
ADAPTER_METRICS_PORT = 8080
#: The aggregated API the adapter serves.
ADAPTER_APISERVICE = "v1beta1.external.metrics.k8s.io"
#: The ConfigMap in each stack's namespace that tells other stacks' adapters how to verify
#: this one's serving certificate (its CA, or that it opted into skipping verification).
ADAPTER_CA_CONFIGMAP = f"{METRICS_ADAPTER}-ca"
#: Audience of the ServiceAccount token one adapter shows another when it forwards.
ADAPTER_PEER_AUDIENCE = METRICS_ADAPTER
#: Label of objects several stacks share (the APIService): pruning one stack keeps them.
SHARED_LABEL = "stackgen.io/shared"

# ------------------------------------------------------------------ agents
#: Name of the agent Deployment (hpa) and CronJob (dispatch, exact) in the bases.
AGENT_WORKLOAD = "buildkite-agent"
#: The ServiceAccount (and Role, RoleBinding) of a ``podSteps`` queue's agents, before
#: the queue's name suffix.
AGENT_STEPS_SERVICE_ACCOUNT = "buildkite-agent-steps"
#: The agent container in every agent pod.
AGENT_CONTAINER = "agent"
#: Secrets and ConfigMaps the stack generates for agents.
AGENT_TOKEN_SECRET = "buildkite-agent-token"
WEBHOOK_TOKEN_SECRET = "stackgen-webhook-token"
#: Paths inside every agent container.
HOOKS_PATH = "/buildkite/hooks"
STACKGEN_HOOKS_PATH = "/buildkite/stackgen-hooks"
GIT_MIRRORS_PATH = "/buildkite/git-mirrors"

# ------------------------------------------------------------------ environment
AGENT_TOKEN_ENV = "BUILDKITE_AGENT_TOKEN"
WEBHOOK_TOKEN_ENV = "BUILDKITE_WEBHOOK_TOKEN"

# ------------------------------------------------------------------ images
#: Image names as the bases write them; kustomize's ``images`` retags them.
AGENT_IMAGE = "buildkite/agent"
STACKGEN_IMAGE = "ghcr.io/stackgen/stackgen"
DIND_IMAGE = "docker"
#: A distinct metrics adapter image is retagged through this name.
ADAPTER_IMAGE = METRICS_ADAPTER


def adapter_service_names(namespace: str) -> list[str]:
    """DNS names the metrics adapter answers to inside the cluster (shortest first)."""
    return [
        METRICS_ADAPTER,
        f"{METRICS_ADAPTER}.{namespace}",
        f"{METRICS_ADAPTER}.{namespace}.svc",
        f"{METRICS_ADAPTER}.{namespace}.svc.cluster.local",
    ]


def adapter_service_dns(namespace: str) -> str:
    """The name the API aggregator dials: ``stackgen-metrics-adapter.<ns>.svc``."""
    return adapter_service_names(namespace)[2]


def adapter_cluster_names(namespace: str) -> dict[str, str]:
    """Names of the adapter's cluster-scoped and kube-system objects: one set per stack.

    Several stacks live in one cluster, so every such name carries the stack's namespace.
    """
    return {
        "reader": f"stackgen:external-metrics-reader:{namespace}",
        "adapter": f"{METRICS_ADAPTER}:{namespace}",
        "auth-delegator": f"{METRICS_ADAPTER}:{namespace}:system:auth-delegator",
        "auth-reader": f"{METRICS_ADAPTER}:{namespace}:auth-reader",
    }


def queue_slug(name: str) -> str:
    """Map a Buildkite queue key to a DNS label (``Linux_Large`` -> ``linux-large``)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return slug or "queue"
