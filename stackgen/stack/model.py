"""The stack config (``stack.yaml``) as typed, frozen objects.

:mod:`stackgen.stack.load` builds them from checked data; every default is the schema's
(:mod:`stackgen.common.defaults`).  A queue's dispatch settings and the git mirrors are
the models the dispatcher config uses too (:mod:`stackgen.common.models`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from stackgen.common.defaults import stack_default
from stackgen.common.errors import ConfigError, Problem
from stackgen.common.files import UnsafeFile, display_path, read_inside
from stackgen.common.models import DispatchedQueue, DispatchSettings, GitMirror
from stackgen.common.names import AGENT_WORKLOAD, SYSTEM_NAMESPACES, queue_slug
from stackgen.common.podsteps import PluginSettings

Mode = Literal["hpa", "dispatch", "exact"]
#: The most a secret file may hold (a token, a key, a certificate chain).
SECRET_FILE_BYTES = 1024 * 1024

__all__ = [
    "AdapterTls",
    "AgentSettings",
    "DindSettings",
    "DispatchSettings",
    "DispatcherSettings",
    "ExistingSecret",
    "GitMirror",
    "HpaSettings",
    "IssuerRef",
    "KustomizeExtras",
    "MetricsAdapterSettings",
    "Mode",
    "MonitoringSettings",
    "Queue",
    "Resources",
    "ScalingPolicy",
    "SecretSource",
    "Secrets",
    "SshKey",
    "SshKeySecret",
    "Stack",
    "WebhookSettings",
    "queue_slug",
]


@dataclass(frozen=True)
class Resources:
    """Kubernetes container resources."""

    requests: dict[str, str] = field(default_factory=dict)
    limits: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Resources:
        """Build from a ``{requests, limits}`` mapping (quantities kept as strings)."""
        return cls(
            requests={k: str(v) for k, v in data.get("requests", {}).items()},
            limits={k: str(v) for k, v in data.get("limits", {}).items()},
        )

    def to_k8s(self) -> dict[str, dict[str, str]]:
        """Render as a container ``resources`` field."""
        out: dict[str, dict[str, str]] = {}
        if self.requests:
            out["requests"] = dict(sorted(self.requests.items()))
        if self.limits:
            out["limits"] = dict(sorted(self.limits.items()))
        return out


@dataclass(frozen=True)
class ExistingSecret:
    """A Secret the user manages outside stackgen."""

    name: str
    key: str = stack_default("secrets.agentToken.existingSecret.key")


@dataclass(frozen=True)
class SecretSource:
    """Where a single secret value comes from: a file, an env var, or an existing Secret."""

    field_path: str
    file: Path | None = None
    env: str | None = None
    existing_secret: ExistingSecret | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], overlay: Path, field_path: str) -> SecretSource:
        """Build from a schema-valid ``{file|env|existingSecret}`` mapping."""
        existing = data.get("existingSecret")
        return cls(
            field_path=field_path,
            file=overlay / data["file"] if "file" in data else None,
            env=data.get("env"),
            existing_secret=ExistingSecret(**existing) if existing else None,
        )


@dataclass(frozen=True)
class ScalingPolicy:
    """One direction of an HPA's behavior."""

    pods: int | None
    percent: int | None
    period_seconds: int
    stabilization_window_seconds: int

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], default: ScalingPolicy | None = None
    ) -> ScalingPolicy:
        """From a ``{pods, percent, periodSeconds, stabilizationWindowSeconds}`` mapping."""
        return cls(
            pods=data.get("pods"),
            percent=data.get("percent"),
            period_seconds=data.get("periodSeconds", default.period_seconds if default else None),
            stabilization_window_seconds=data.get(
                "stabilizationWindowSeconds",
                default.stabilization_window_seconds if default else None,
            ),
        )


def _hpa_default(key: str) -> Any:
    return stack_default(f"queues.hpa.{key}")


_SCALE_UP = ScalingPolicy.from_dict(_hpa_default("scaleUp"))
_SCALE_DOWN = ScalingPolicy.from_dict(_hpa_default("scaleDown"))


@dataclass(frozen=True)
class HpaSettings:
    """How the HPA of an ``hpa`` queue scales."""

    jobs_per_agent: int = _hpa_default("jobsPerAgent")
    target_busy_percent: int = _hpa_default("targetBusyPercent")
    scale_up: ScalingPolicy = _SCALE_UP
    scale_down: ScalingPolicy = _SCALE_DOWN

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HpaSettings:
        """From a schema-valid ``queues[].hpa`` mapping."""
        base = cls()
        return cls(
            jobs_per_agent=data.get("jobsPerAgent", base.jobs_per_agent),
            target_busy_percent=data.get("targetBusyPercent", base.target_busy_percent),
            scale_up=_policy(data.get("scaleUp"), base.scale_up),
            scale_down=_policy(data.get("scaleDown"), base.scale_down),
        )


def _policy(data: Mapping[str, Any] | None, default: ScalingPolicy) -> ScalingPolicy:
    return default if data is None else ScalingPolicy.from_dict(data, default)


@dataclass(frozen=True)
class Queue:
    """One Buildkite queue and the pool of agents that serves it."""

    name: str
    mode: Mode
    min_agents: int
    max_agents: int
    buffer: int
    image: str
    tags: dict[str, str]
    env: dict[str, str]
    resources: Resources
    node_selector: dict[str, str]
    tolerations: list[dict[str, Any]]
    dind: bool
    git_mirror: str | None
    hpa: HpaSettings
    dispatch: DispatchSettings
    #: Agents get a ServiceAccount token and a Role for a step-pod plugin.
    pod_steps: bool = False
    #: exact mode: the ``kubernetes`` plugin's guard rails (None: not given in stack.yaml).
    kubernetes_plugin: PluginSettings | None = None

    @property
    def slug(self) -> str:
        """The queue's name as it appears in Kubernetes object names and labels."""
        return queue_slug(self.name)

    @property
    def workload_name(self) -> str:
        """Name of the queue's Deployment (hpa) or CronJob template (dispatch, exact)."""
        return f"{AGENT_WORKLOAD}-{self.slug}"

    @property
    def agent_tags(self) -> str:
        """Value of BUILDKITE_AGENT_TAGS: the queue first, then the rest sorted."""
        rest = ",".join(f"{k}={v}" for k, v in sorted(self.tags.items()))
        return f"queue={self.name}" + (f",{rest}" if rest else "")

    def dispatched(self) -> DispatchedQueue:
        """The queue as the dispatcher serves it (``dispatch`` and ``exact`` queues)."""
        assert self.mode != "hpa", "hpa queues are not dispatched"
        return DispatchedQueue(
            name=self.name,
            mode=self.mode,
            template=self.workload_name,
            min_agents=self.min_agents,
            max_agents=self.max_agents,
            buffer=self.buffer,
            dispatch=self.dispatch,
            git_mirror=self.git_mirror,
            kubernetes_plugin=self.kubernetes_plugin or PluginSettings(),
        )


@dataclass(frozen=True)
class AgentSettings:
    """Settings shared by every queue's agents."""

    image: str
    image_pull_policy: str
    image_pull_secrets: list[str]
    endpoint: str
    tags: dict[str, str]
    env: dict[str, str]
    build_path: str
    resources: Resources
    node_selector: dict[str, str]
    tolerations: list[dict[str, Any]]
    termination_grace_period_seconds: int
    disconnect_after_idle_seconds: int


@dataclass(frozen=True)
class SshKeySecret:
    """An existing Secret holding an SSH key and its known_hosts."""

    name: str
    private_key_key: str = stack_default("secrets.sshKey.existingSecret.privateKeyKey")
    known_hosts_key: str = stack_default("secrets.sshKey.existingSecret.knownHostsKey")


@dataclass(frozen=True)
class SshKey:
    """An SSH deploy key and the hosts it may talk to: two files, or an existing Secret."""

    private_key_file: Path | None
    known_hosts_file: Path | None
    existing_secret: SshKeySecret | None = None


@dataclass(frozen=True)
class Secrets:
    """Secret inputs of the stack."""

    agent_token: SecretSource
    git_credentials_file: Path | None
    ssh_key: SshKey | None
    #: ``secrets.gitCredentials.existingSecret``: read instead of a generated Secret.
    git_credentials_secret: ExistingSecret | None = None


@dataclass(frozen=True)
class WebhookSettings:
    """Buildkite webhook endpoint of the dispatcher."""

    enabled: bool
    token: SecretSource | None
    max_signature_age_seconds: int


@dataclass(frozen=True)
class DispatcherSettings:
    """The dispatcher Deployment."""

    image: str
    replicas: int
    resources: Resources
    log_level: str
    lease_duration_seconds: int
    webhook: WebhookSettings


@dataclass(frozen=True)
class IssuerRef:
    """A cert-manager issuer."""

    name: str
    kind: str = stack_default("metricsAdapter.tls.certManager.issuerRef.kind")
    group: str = stack_default("metricsAdapter.tls.certManager.issuerRef.group")


@dataclass(frozen=True)
class AdapterTls:
    """How the API aggregator trusts the metrics adapter."""

    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    insecure_skip_tls_verify: bool
    cert_manager: IssuerRef | None = None
    #: ``metricsAdapter.tls.existingSecret``: a ``kubernetes.io/tls`` Secret's name.
    existing_secret: str | None = None


@dataclass(frozen=True)
class MetricsAdapterSettings:
    """The external-metrics adapter serving ``hpa`` queues."""

    image: str
    replicas: int
    resources: Resources
    poll_interval_seconds: int
    tls: AdapterTls


@dataclass(frozen=True)
class DindSettings:
    """Docker-in-Docker sidecar for queues that ask for it."""

    image: str
    resources: Resources


@dataclass(frozen=True)
class KustomizeExtras:
    """The user's own kustomize additions."""

    resources: list[str]
    components: list[str]
    patches: list[dict[str, Any]]


@dataclass(frozen=True)
class MonitoringSettings:
    """Alert rules, the Grafana dashboard and how Prometheus scrapes the stack."""

    alerts: bool = stack_default("monitoring.alerts.enabled")
    prometheus_rule: bool = stack_default("monitoring.alerts.prometheusRule")
    alert_labels: dict[str, str] = field(default_factory=dict)
    rule_labels: dict[str, str] = field(default_factory=dict)
    #: stack.yaml's ``monitoring.alerts.thresholds`` (every key, defaults filled in).
    thresholds: dict[str, float] = field(
        default_factory=lambda: stack_default("monitoring.alerts.thresholds")
    )
    dashboard: bool = stack_default("monitoring.dashboard.enabled")
    sidecar_label: str = stack_default("monitoring.dashboard.sidecarLabel")
    sidecar_label_value: str = stack_default("monitoring.dashboard.sidecarLabelValue")
    folder: str | None = None
    scrape: str = stack_default("monitoring.scrape")
    monitor_labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Stack:
    """A loaded, checked ``stack.yaml``."""

    overlay: Path
    source: Path
    name: str
    namespace: str
    labels: dict[str, str]
    annotations: dict[str, str]
    kubernetes_version: str
    agent: AgentSettings
    queues: list[Queue]
    secrets: Secrets
    hooks: dict[str, Path]
    dispatcher: DispatcherSettings
    metrics_adapter: MetricsAdapterSettings
    git_mirrors: list[GitMirror]
    dind: DindSettings
    kustomize: KustomizeExtras
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
    #: Secret files absent from the overlay, built with placeholders instead
    #: (``--skip-missing-secrets``; :mod:`stackgen.stack.placeholders`).
    placeholders: Mapping[Path, bytes] = field(default_factory=dict)

    def secret_bytes(self, path: Path) -> bytes:
        """A secret file's content: its placeholder when it is absent and one was made."""
        placeholder = self.placeholders.get(path)
        if placeholder is not None:
            return placeholder
        try:
            return read_inside(self.overlay, path, SECRET_FILE_BYTES)
        except (UnsafeFile, FileNotFoundError) as exc:
            # The checks (stackgen.stack.secret_files) say the same in their own words.
            raise ConfigError(
                Problem(display_path(path), "", str(exc) or "file not found")
            ) from exc

    @property
    def owns_namespace(self) -> bool:
        """Whether the stack's namespace is its own (not one every cluster has)."""
        return self.namespace not in SYSTEM_NAMESPACES

    @property
    def hpa_queues(self) -> list[Queue]:
        """Queues scaled by an HPA."""
        return [q for q in self.queues if q.mode == "hpa"]

    @property
    def dispatched_queues(self) -> list[Queue]:
        """Queues served by the dispatcher (``dispatch`` and ``exact``)."""
        return [q for q in self.queues if q.mode in ("dispatch", "exact")]

    @property
    def uses_dind(self) -> bool:
        """Whether any queue runs the privileged Docker-in-Docker sidecar."""
        return any(q.dind for q in self.queues)

    @property
    def dind_queue_names(self) -> list[str]:
        """Names of the queues with the Docker-in-Docker sidecar."""
        return [q.name for q in self.queues if q.dind]

    @property
    def file(self) -> str:
        """``stack.yaml`` as shown in messages."""
        return display_path(self.source)

    def stack_key(self) -> str:
        """The key this stack registers under with Buildkite's Stacks API."""
        return f"stackgen-{self.namespace}-{self.name}"
