"""Load ``stack.yaml``: find it, read it, check it against the schema, build the model.

Loading never stops at the first problem: schema errors, cross-field rules and the
checks of every secret file are all collected, then raised together as one
:class:`~stackgen.common.errors.ConfigError` so a user fixes everything in one round.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from stackgen.common import yamlio
from stackgen.common.defaults import section_defaults, stack_default
from stackgen.common.errors import ConfigError, Problem
from stackgen.common.files import (
    UnsafeFile,
    display_path,
    read_yaml_file,
    resolve_inside,
    unbounded_problem,
)
from stackgen.common.models import DispatchSettings, GitMirror
from stackgen.common.podsteps import PluginSettings
from stackgen.common.resources import load_schema
from stackgen.stack.checks import check_stack
from stackgen.stack.limits import limit_problems, non_finite_problems
from stackgen.stack.model import (
    AdapterTls,
    AgentSettings,
    DindSettings,
    DispatcherSettings,
    ExistingSecret,
    HpaSettings,
    IssuerRef,
    KustomizeExtras,
    MetricsAdapterSettings,
    Mode,
    MonitoringSettings,
    Queue,
    Resources,
    Secrets,
    SecretSource,
    SshKey,
    SshKeySecret,
    Stack,
    WebhookSettings,
)

STACK_FILE = "stack.yaml"
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
#: minAgents when a queue does not say: an HPA cannot scale to zero (stated in the
#: schema's description of ``minAgents``; JSON schema has no per-mode default).
_MIN_AGENTS = {"hpa": 1, "dispatch": 0, "exact": 0}


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


def kustomization_file(overlay: Path) -> Path:
    """The kustomization file of a plain-kustomize overlay."""
    return next(overlay / n for n in KUSTOMIZATION_FILES if (overlay / n).is_file())


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
        checks: run :func:`stackgen.stack.checks.check_stack` (cross-field rules, secret
            files); off, the caller runs them.

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
    if stack_file.is_symlink():
        try:
            resolve_inside(overlay, stack_file)
        except UnsafeFile as exc:
            shown = display_path(stack_file)
            raise ConfigError(Problem(shown, "", f"is a symbolic link that {exc.reason}")) from exc
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
    # Imported here: jsonschema takes ~0.1 s to import, and the build runs this while
    # kustomize runs.
    from stackgen.common.schema_errors import schema_problems

    non_finite = list(non_finite_problems(data, file))
    shown = {p.path for p in non_finite}
    problems = [p for p in schema_problems(data, load_schema("stack"), file) if p.path not in shown]
    if problems or non_finite:
        return sorted(non_finite + problems, key=lambda p: p.path)
    return _mode_block_problems(data, file) + limit_problems(data, file)


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


def stack_from_data(data: dict[str, Any], overlay: Path, source: Path) -> Stack:
    """Typed objects from ``stack.yaml`` data that :func:`stack_problems` finds no fault in.

    Given data it would fault, this may raise anything or return nonsense: the build
    calls it before the schema check (which then runs while kustomize does) and reports
    the schema's problems whenever they exist.
    """
    meta = data["metadata"]
    agent = _agent(data.get("agent", {}))
    kz = data.get("kustomize", {})
    return Stack(
        overlay=overlay,
        source=source,
        name=meta["name"],
        namespace=meta.get("namespace", meta["name"]),
        labels=dict(meta.get("labels", {})),
        annotations=dict(meta.get("annotations", {})),
        kubernetes_version=data.get("kubernetesVersion", stack_default("kubernetesVersion")),
        agent=agent,
        queues=[_queue(q, agent) for q in data["queues"]],
        secrets=_secrets(data["secrets"], overlay),
        hooks={name: overlay / rel for name, rel in data.get("hooks", {}).items()},
        dispatcher=_dispatcher(data.get("dispatcher", {}), overlay),
        metrics_adapter=_metrics_adapter(data.get("metricsAdapter", {}), overlay),
        git_mirrors=[GitMirror.from_dict(m) for m in data.get("gitMirrors", [])],
        dind=_dind(data.get("dind", {})),
        monitoring=_monitoring(data.get("monitoring", {})),
        kustomize=KustomizeExtras(
            resources=list(kz.get("resources", [])),
            components=list(kz.get("components", [])),
            patches=_bounded_patches(list(kz.get("patches", [])), display_path(source)),
        ),
    )


def _bounded_patches(patches: list[Any], file: str) -> list[Any]:
    """The inline patches, copied.

    One whose YAML would expand beyond bounds is refused at once: kustomize, which
    parses it, would expand it.
    """
    for index, patch in enumerate(patches):
        text = patch.get("patch") if isinstance(patch, dict) else None
        if not isinstance(text, str):
            continue
        try:
            for _ in yamlio.load_all(text):
                pass
        except yamlio.UnboundedYamlError as exc:
            where = f"kustomize.patches[{index}].patch"
            raise ConfigError(unbounded_problem(file, where, exc)) from exc
        except yaml.YAMLError:
            continue  # kustomize says what is wrong with it
    return copy.deepcopy(patches)


def _with_defaults(data: Mapping[str, Any], section: str) -> dict[str, Any]:
    merged = section_defaults("stack", section)
    merged.update(copy.deepcopy(dict(data)))
    return merged


def _agent(data: Mapping[str, Any]) -> AgentSettings:
    agent = _with_defaults(data, "agent")
    return AgentSettings(
        image=agent["image"],
        image_pull_policy=agent["imagePullPolicy"],
        image_pull_secrets=agent["imagePullSecrets"],
        endpoint=agent["endpoint"],
        tags=agent["tags"],
        env=agent["env"],
        build_path=agent["buildPath"],
        resources=Resources.from_dict(agent["resources"]),
        node_selector=agent["nodeSelector"],
        tolerations=agent["tolerations"],
        termination_grace_period_seconds=agent["terminationGracePeriodSeconds"],
        disconnect_after_idle_seconds=agent["disconnectAfterIdleSeconds"],
    )


def _queue(data: Mapping[str, Any], agent: AgentSettings) -> Queue:
    mode: Mode = data["mode"]
    queue = _with_defaults(data, "queues")
    return Queue(
        name=queue["name"],
        mode=mode,
        min_agents=queue.get("minAgents", _MIN_AGENTS[mode]),
        max_agents=queue["maxAgents"],
        buffer=queue["buffer"],
        image=queue.get("image", agent.image),
        tags={**agent.tags, **queue.get("tags", {})},
        env={**agent.env, **queue.get("env", {})},
        resources=(
            Resources.from_dict(queue["resources"]) if "resources" in queue else agent.resources
        ),
        node_selector=dict(queue.get("nodeSelector", agent.node_selector)),
        tolerations=copy.deepcopy(list(queue.get("tolerations", agent.tolerations))),
        dind=queue["dind"],
        git_mirror=queue.get("gitMirror"),
        hpa=HpaSettings.from_dict(data.get("hpa", {})),
        dispatch=DispatchSettings.from_dict(data.get("dispatch", {})),
        pod_steps=queue["podSteps"],
        kubernetes_plugin=(
            PluginSettings.from_dict(data["kubernetesPlugin"])
            if "kubernetesPlugin" in data
            else None
        ),
    )


def _secrets(data: Mapping[str, Any], overlay: Path) -> Secrets:
    ssh = data.get("sshKey")
    credentials = data.get("gitCredentials") or {}
    existing_credentials = credentials.get("existingSecret")
    return Secrets(
        agent_token=SecretSource.from_dict(data["agentToken"], overlay, "secrets.agentToken"),
        git_credentials_file=overlay / credentials["file"] if "file" in credentials else None,
        git_credentials_secret=(
            ExistingSecret(
                existing_credentials["name"],
                existing_credentials.get(
                    "key", stack_default("secrets.gitCredentials.existingSecret.key")
                ),
            )
            if existing_credentials
            else None
        ),
        ssh_key=_ssh_key(ssh, overlay) if ssh else None,
    )


def _ssh_key(data: Mapping[str, Any], overlay: Path) -> SshKey:
    existing = data.get("existingSecret")
    return SshKey(
        private_key_file=overlay / data["privateKeyFile"] if "privateKeyFile" in data else None,
        known_hosts_file=overlay / data["knownHostsFile"] if "knownHostsFile" in data else None,
        existing_secret=(
            SshKeySecret(
                existing["name"],
                existing.get("privateKeyKey", SshKeySecret.private_key_key),
                existing.get("knownHostsKey", SshKeySecret.known_hosts_key),
            )
            if existing
            else None
        ),
    )


def _dispatcher(data: Mapping[str, Any], overlay: Path) -> DispatcherSettings:
    disp = _with_defaults(data, "dispatcher")
    webhook = _with_defaults(disp.get("webhook", {}), "dispatcher.webhook")
    return DispatcherSettings(
        image=disp["image"],
        replicas=disp["replicas"],
        resources=Resources.from_dict(disp["resources"]),
        log_level=disp["logLevel"],
        lease_duration_seconds=disp["leaseDurationSeconds"],
        webhook=WebhookSettings(
            enabled=webhook["enabled"],
            token=(
                SecretSource.from_dict(webhook["token"], overlay, "dispatcher.webhook.token")
                if "token" in webhook
                else None
            ),
            max_signature_age_seconds=webhook["maxSignatureAgeSeconds"],
        ),
    )


def _metrics_adapter(data: Mapping[str, Any], overlay: Path) -> MetricsAdapterSettings:
    adapter = _with_defaults(data, "metricsAdapter")
    tls = _with_defaults(adapter.get("tls", {}), "metricsAdapter.tls")

    def file(key: str) -> Path | None:
        return overlay / tls[key] if key in tls else None

    return MetricsAdapterSettings(
        image=adapter["image"],
        replicas=adapter["replicas"],
        resources=Resources.from_dict(adapter["resources"]),
        poll_interval_seconds=adapter["pollIntervalSeconds"],
        tls=AdapterTls(
            ca_file=file("caFile"),
            cert_file=file("certFile"),
            key_file=file("keyFile"),
            insecure_skip_tls_verify=tls["insecureSkipTLSVerify"],
            cert_manager=(
                IssuerRef(**tls["certManager"]["issuerRef"]) if "certManager" in tls else None
            ),
            existing_secret=tls["existingSecret"]["name"] if "existingSecret" in tls else None,
        ),
    )


def _dind(data: Mapping[str, Any]) -> DindSettings:
    dind = _with_defaults(data, "dind")
    return DindSettings(image=dind["image"], resources=Resources.from_dict(dind["resources"]))


def _monitoring(data: Mapping[str, Any]) -> MonitoringSettings:
    monitoring = _with_defaults(data, "monitoring")
    alerts = _with_defaults(monitoring.get("alerts", {}), "monitoring.alerts")
    thresholds = _with_defaults(alerts.get("thresholds", {}), "monitoring.alerts.thresholds")
    dashboard = _with_defaults(monitoring.get("dashboard", {}), "monitoring.dashboard")
    return MonitoringSettings(
        alerts=alerts["enabled"],
        prometheus_rule=alerts["prometheusRule"],
        alert_labels=dict(alerts["labels"]),
        rule_labels=dict(alerts["ruleLabels"]),
        thresholds=thresholds,
        dashboard=dashboard["enabled"],
        sidecar_label=dashboard["sidecarLabel"],
        sidecar_label_value=dashboard["sidecarLabelValue"],
        folder=dashboard.get("folder"),
        scrape=monitoring["scrape"],
        monitor_labels=dict(monitoring["monitorLabels"]),
    )
