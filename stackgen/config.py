"""The stack config (``stack.yaml``): schema-checked, then loaded into typed objects.

Loading never stops at the first problem: schema errors, cross-field rules and the
checks of every secret file are all collected, then raised together as one
:class:`~stackgen.errors.ConfigError` so a user fixes everything in one round.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from stackgen import yamlio
from stackgen.errors import ConfigError, Problem
from stackgen.resources import load_schema

STACK_FILE = "stack.yaml"
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
DEFAULT_KUBERNETES_VERSION = "1.33.0"
API_VERSION = "stackgen.io/v1alpha1"

Mode = Literal["hpa", "dispatch", "exact"]

#: Every hook name the Buildkite agent runs, in the order a job runs them.
JOB_HOOKS = (
    "environment",
    "pre-checkout",
    "checkout",
    "post-checkout",
    "pre-command",
    "command",
    "post-command",
    "pre-artifact",
    "post-artifact",
    "pre-exit",
)
AGENT_HOOKS = ("agent-startup", "agent-shutdown", "pre-bootstrap")

# Variables stackgen sets itself; a user value would silently break the agent.
_RESERVED_ENV = {
    "BUILDKITE_AGENT_TOKEN": "set secrets.agentToken instead",
    "BUILDKITE_AGENT_TAGS": "set tags instead",
    "BUILDKITE_HOOKS_PATH": "set hooks instead",
    "BUILDKITE_ADDITIONAL_HOOKS_PATHS": "stackgen's own hooks live there",
    "BUILDKITE_BUILD_PATH": "set agent.buildPath instead",
    "BUILDKITE_AGENT_ENDPOINT": "set agent.endpoint instead",
}


def display_path(path: Path) -> str:
    """Show a path relative to the working directory when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- types


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
    key: str = "token"


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
            existing_secret=(
                ExistingSecret(existing["name"], existing.get("key", "token")) if existing else None
            ),
        )


@dataclass(frozen=True)
class ScalingPolicy:
    """One direction of an HPA's behavior."""

    pods: int | None
    percent: int | None
    period_seconds: int
    stabilization_window_seconds: int


@dataclass(frozen=True)
class HpaSettings:
    """How the HPA of an ``hpa`` queue scales."""

    jobs_per_agent: int = 1
    target_busy_percent: int = 100
    scale_up: ScalingPolicy = ScalingPolicy(7, 100, 30, 0)
    scale_down: ScalingPolicy = ScalingPolicy(1, None, 20, 300)


@dataclass(frozen=True)
class DispatchSettings:
    """How the dispatcher serves a ``dispatch`` or ``exact`` queue."""

    poll_interval_seconds: int = 10
    cooldown_share: float = 0.5
    cooldown_timeout_seconds: int = 120
    active_deadline_seconds: int = 10800
    ttl_seconds_after_finished: int = 300
    pod_start_timeout_seconds: int = 300


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

    @property
    def slug(self) -> str:
        """The queue's name as it appears in Kubernetes object names and labels."""
        return queue_slug(self.name)

    @property
    def workload_name(self) -> str:
        """Name of the queue's Deployment (hpa) or CronJob template (dispatch, exact)."""
        return f"buildkite-agent-{self.slug}"

    @property
    def agent_tags(self) -> str:
        """Value of BUILDKITE_AGENT_TAGS: the queue first, then the rest sorted."""
        rest = ",".join(f"{k}={v}" for k, v in sorted(self.tags.items()))
        return f"queue={self.name}" + (f",{rest}" if rest else "")


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
class SshKey:
    """An SSH deploy key and the hosts it may talk to."""

    private_key_file: Path
    known_hosts_file: Path


@dataclass(frozen=True)
class Secrets:
    """Secret inputs of the stack."""

    agent_token: SecretSource
    git_credentials_file: Path | None
    ssh_key: SshKey | None


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
    kind: str = "Issuer"
    group: str = "cert-manager.io"


@dataclass(frozen=True)
class AdapterTls:
    """How the API aggregator trusts the metrics adapter."""

    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    insecure_skip_tls_verify: bool
    cert_manager: IssuerRef | None = None


@dataclass(frozen=True)
class MetricsAdapterSettings:
    """The external-metrics adapter serving ``hpa`` queues."""

    image: str
    replicas: int
    resources: Resources
    poll_interval_seconds: int
    tls: AdapterTls


@dataclass(frozen=True)
class GitMirror:
    """A repository mirrored onto read-only volumes for dispatched agents."""

    name: str
    repository: str
    schedule: str
    storage: str
    storage_class_name: str | None
    keep: int
    image: str


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
    def file(self) -> str:
        """``stack.yaml`` as shown in messages."""
        return display_path(self.source)


# ------------------------------------------------------------------------ helpers


def queue_slug(name: str) -> str:
    """Map a Buildkite queue key to a DNS label (``Linux_Large`` -> ``linux-large``)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return slug or "queue"


def _section_defaults(section: str) -> dict[str, Any]:
    """Defaults of one top-level section, read from the schema so code and schema agree."""
    props = load_schema("stack")["properties"][section]["properties"]
    return {k: copy.deepcopy(v["default"]) for k, v in props.items() if "default" in v}


def _with_defaults(data: Mapping[str, Any], section: str) -> dict[str, Any]:
    merged = _section_defaults(section)
    merged.update(copy.deepcopy(dict(data)))
    return merged


def _policy(data: Mapping[str, Any] | None, default: ScalingPolicy) -> ScalingPolicy:
    if data is None:
        return default
    return ScalingPolicy(
        pods=data.get("pods"),
        percent=data.get("percent"),
        period_seconds=data.get("periodSeconds", default.period_seconds),
        stabilization_window_seconds=data.get(
            "stabilizationWindowSeconds", default.stabilization_window_seconds
        ),
    )


# ------------------------------------------------------------------------ loading


def read_yaml_file(path: Path) -> Any:
    """Read and parse a YAML file, turning every failure into a one-line ConfigError."""
    shown = display_path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(Problem(shown, "", "file not found")) from exc
    except IsADirectoryError as exc:
        raise ConfigError(Problem(shown, "", "is a folder, not a file")) from exc
    except PermissionError as exc:
        raise ConfigError(Problem(shown, "", "cannot read: permission denied")) from exc
    except OSError as exc:
        raise ConfigError(Problem(shown, "", f"cannot read: {exc.strerror}")) from exc
    try:
        return yamlio.load(text)
    except yamlio.DuplicateKeyError as exc:
        line = f"line {exc.mark.line + 1}: " if exc.mark else ""
        raise ConfigError(
            Problem(shown, "", f"invalid YAML: {line}duplicate key {exc.key!r}")
        ) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        raise ConfigError(Problem(shown, "", f"invalid YAML: {where}{exc.problem}")) from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(Problem(shown, "", "invalid YAML: not a readable YAML document")) from exc


def find_stack_file(overlay: Path) -> Path | None:
    """Return the overlay's stack.yaml, or None for a plain-kustomize overlay.

    Raises ConfigError when the overlay is missing or holds neither file.
    """
    shown = display_path(overlay)
    if not overlay.exists():
        raise ConfigError(Problem(shown, "", "no such overlay folder"))
    if not overlay.is_dir():
        raise ConfigError(Problem(shown, "", "an overlay must be a folder"))
    if not os.access(overlay, os.R_OK | os.X_OK):
        raise ConfigError(Problem(shown, "", "cannot read overlay folder: permission denied"))
    stack_file = overlay / STACK_FILE
    if stack_file.exists() or stack_file.is_symlink():
        return stack_file
    if any((overlay / name).is_file() for name in KUSTOMIZATION_FILES):
        return None
    raise ConfigError(
        Problem(shown, "", f"holds neither {STACK_FILE} nor kustomization.yaml: nothing to build")
    )


def load_stack(
    overlay: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    checks: bool = True,
) -> Stack:
    """Load and fully check an overlay's ``stack.yaml``.

    Args:
        overlay: the overlay folder.
        environ: environment for ``env:`` secret sources (default: ``os.environ``).
        checks: run :func:`stackgen.checks.check_stack` (cross-field rules, secret files);
            off, the caller runs them.

    Raises:
        ConfigError: with every problem found.

    """
    overlay_path = Path(overlay)
    data, stack_file = read_stack_data(overlay_path)
    problems = stack_problems(data, display_path(stack_file))
    if problems:
        raise ConfigError(problems)
    stack = stack_from_data(data, overlay_path, stack_file)
    if not checks:
        return stack
    # Imported here: the checks read files and parse keys; config stays importable alone.
    from stackgen.checks import check_stack

    problems = check_stack(stack, environ=os.environ if environ is None else environ)
    if problems:
        raise ConfigError(problems)
    return stack


def read_stack_data(overlay: Path) -> tuple[dict[str, Any], Path]:
    """An overlay's ``stack.yaml``, read but not checked, and its path.

    Raises:
        ConfigError: no stack.yaml, unreadable YAML, or not a mapping.

    """
    stack_file = find_stack_file(overlay)
    if stack_file is None:
        raise ConfigError(
            Problem(display_path(overlay), "", f"has no {STACK_FILE} (a plain kustomize overlay)")
        )
    data = read_yaml_file(stack_file)
    if not isinstance(data, dict):
        raise ConfigError(
            Problem(
                display_path(stack_file),
                "",
                "must be a YAML mapping (apiVersion, kind, metadata, …)",
            )
        )
    return data, stack_file


def stack_problems(data: dict[str, Any], file: str) -> list[Problem]:
    """What ``schemas/stack.schema.json`` and the per-mode rules say of ``data``."""
    # Imported here: jsonschema takes ~0.1 s to import, and the build pipeline runs this
    # while kustomize runs.
    from stackgen.schema_errors import schema_problems

    problems = schema_problems(data, load_schema("stack"), file)
    return problems or _mode_block_problems(data, file)


def stack_from_data(data: dict[str, Any], overlay: Path, source: Path) -> Stack:
    """Typed objects from ``stack.yaml`` data that :func:`stack_problems` finds no fault in.

    Given data it would fault, this may raise anything or return nonsense: the build
    pipeline calls it before the schema check (which then runs while kustomize does) and
    reports the schema's problems whenever they exist.
    """
    return _from_dict(data, overlay, source)


def _mode_block_problems(data: dict[str, Any], file: str) -> list[Problem]:
    """Settings blocks that do not belong to a queue's mode."""
    problems = []
    for index, queue in enumerate(data["queues"]):
        if queue["mode"] == "hpa" and "dispatch" in queue:
            problems.append(
                Problem(
                    file,
                    f"queues[{index}].dispatch",
                    "only dispatch and exact queues have dispatch settings",
                )
            )
        if queue["mode"] != "hpa" and "hpa" in queue:
            problems.append(
                Problem(file, f"queues[{index}].hpa", "only hpa queues have hpa settings")
            )
    return problems


def _from_dict(data: dict[str, Any], overlay: Path, source: Path) -> Stack:
    meta = data["metadata"]
    agent_data = _with_defaults(data.get("agent", {}), "agent")
    agent = AgentSettings(
        image=agent_data["image"],
        image_pull_policy=agent_data["imagePullPolicy"],
        image_pull_secrets=agent_data["imagePullSecrets"],
        endpoint=agent_data["endpoint"],
        tags=agent_data["tags"],
        env=agent_data["env"],
        build_path=agent_data["buildPath"],
        resources=Resources.from_dict(agent_data["resources"]),
        node_selector=agent_data["nodeSelector"],
        tolerations=agent_data["tolerations"],
        termination_grace_period_seconds=agent_data["terminationGracePeriodSeconds"],
        disconnect_after_idle_seconds=agent_data["disconnectAfterIdleSeconds"],
    )
    queues = [_queue(q, agent) for q in data["queues"]]

    secrets_data = data["secrets"]
    ssh = secrets_data.get("sshKey")
    secrets = Secrets(
        agent_token=SecretSource.from_dict(
            secrets_data["agentToken"], overlay, "secrets.agentToken"
        ),
        git_credentials_file=(
            overlay / secrets_data["gitCredentials"]["file"]
            if "gitCredentials" in secrets_data
            else None
        ),
        ssh_key=(
            SshKey(overlay / ssh["privateKeyFile"], overlay / ssh["knownHostsFile"])
            if ssh
            else None
        ),
    )

    disp = _with_defaults(data.get("dispatcher", {}), "dispatcher")
    webhook = disp.get("webhook", {})
    dispatcher = DispatcherSettings(
        image=disp["image"],
        replicas=disp["replicas"],
        resources=Resources.from_dict(disp["resources"]),
        log_level=disp["logLevel"],
        lease_duration_seconds=disp["leaseDurationSeconds"],
        webhook=WebhookSettings(
            enabled=webhook.get("enabled", False),
            token=(
                SecretSource.from_dict(webhook["token"], overlay, "dispatcher.webhook.token")
                if "token" in webhook
                else None
            ),
            max_signature_age_seconds=webhook.get("maxSignatureAgeSeconds", 300),
        ),
    )

    adapter = _with_defaults(data.get("metricsAdapter", {}), "metricsAdapter")
    tls = adapter.get("tls", {})
    metrics_adapter = MetricsAdapterSettings(
        image=adapter["image"],
        replicas=adapter["replicas"],
        resources=Resources.from_dict(adapter["resources"]),
        poll_interval_seconds=adapter["pollIntervalSeconds"],
        tls=AdapterTls(
            ca_file=overlay / tls["caFile"] if "caFile" in tls else None,
            cert_file=overlay / tls["certFile"] if "certFile" in tls else None,
            key_file=overlay / tls["keyFile"] if "keyFile" in tls else None,
            insecure_skip_tls_verify=tls.get("insecureSkipTLSVerify", False),
            cert_manager=(
                IssuerRef(**tls["certManager"]["issuerRef"]) if "certManager" in tls else None
            ),
        ),
    )

    mirror_defaults = load_schema("stack")["$defs"]["gitMirror"]["properties"]
    git_mirrors = [
        GitMirror(
            name=m["name"],
            repository=m["repository"],
            schedule=m.get("schedule", mirror_defaults["schedule"]["default"]),
            storage=str(m.get("storage", mirror_defaults["storage"]["default"])),
            storage_class_name=m.get("storageClassName"),
            keep=m.get("keep", mirror_defaults["keep"]["default"]),
            image=m.get("image", mirror_defaults["image"]["default"]),
        )
        for m in data.get("gitMirrors", [])
    ]

    dind_data = _with_defaults(data.get("dind", {}), "dind")
    dind = DindSettings(
        image=dind_data["image"],
        resources=Resources.from_dict(dind_data["resources"]),
    )
    kz = data.get("kustomize", {})
    return Stack(
        overlay=overlay,
        source=source,
        name=meta["name"],
        namespace=meta.get("namespace", meta["name"]),
        labels=dict(meta.get("labels", {})),
        annotations=dict(meta.get("annotations", {})),
        kubernetes_version=data.get("kubernetesVersion", DEFAULT_KUBERNETES_VERSION),
        agent=agent,
        queues=queues,
        secrets=secrets,
        hooks={name: overlay / rel for name, rel in data.get("hooks", {}).items()},
        dispatcher=dispatcher,
        metrics_adapter=metrics_adapter,
        git_mirrors=git_mirrors,
        dind=dind,
        kustomize=KustomizeExtras(
            resources=list(kz.get("resources", [])),
            components=list(kz.get("components", [])),
            patches=copy.deepcopy(list(kz.get("patches", []))),
        ),
    )


def _queue(data: Mapping[str, Any], agent: AgentSettings) -> Queue:
    mode: Mode = data["mode"]
    hpa = data.get("hpa", {})
    hpa_defaults = HpaSettings()
    disp = data.get("dispatch", {})
    cooldown = disp.get("cooldown", {})
    disp_defaults = DispatchSettings()
    tags = {**agent.tags, **data.get("tags", {})}
    return Queue(
        name=data["name"],
        mode=mode,
        min_agents=data.get("minAgents", 1 if mode == "hpa" else 0),
        max_agents=data.get("maxAgents", 10),
        buffer=data.get("buffer", 0),
        image=data.get("image", agent.image),
        tags=tags,
        env={**agent.env, **data.get("env", {})},
        resources=(
            Resources.from_dict(data["resources"]) if "resources" in data else agent.resources
        ),
        node_selector=dict(data.get("nodeSelector", agent.node_selector)),
        tolerations=copy.deepcopy(list(data.get("tolerations", agent.tolerations))),
        dind=data.get("dind", False),
        git_mirror=data.get("gitMirror"),
        hpa=HpaSettings(
            jobs_per_agent=hpa.get("jobsPerAgent", hpa_defaults.jobs_per_agent),
            target_busy_percent=hpa.get("targetBusyPercent", hpa_defaults.target_busy_percent),
            scale_up=_policy(hpa.get("scaleUp"), hpa_defaults.scale_up),
            scale_down=_policy(hpa.get("scaleDown"), hpa_defaults.scale_down),
        ),
        dispatch=DispatchSettings(
            poll_interval_seconds=disp.get(
                "pollIntervalSeconds", disp_defaults.poll_interval_seconds
            ),
            cooldown_share=float(cooldown.get("share", disp_defaults.cooldown_share)),
            cooldown_timeout_seconds=cooldown.get(
                "timeoutSeconds", disp_defaults.cooldown_timeout_seconds
            ),
            active_deadline_seconds=disp.get(
                "activeDeadlineSeconds", disp_defaults.active_deadline_seconds
            ),
            ttl_seconds_after_finished=disp.get(
                "ttlSecondsAfterFinished", disp_defaults.ttl_seconds_after_finished
            ),
            pod_start_timeout_seconds=disp.get(
                "podStartTimeoutSeconds", disp_defaults.pod_start_timeout_seconds
            ),
        ),
    )


def reserved_env_problem(name: str) -> str | None:
    """Explain why an agent env var may not be set by hand, or None when it may."""
    return _RESERVED_ENV.get(name)
