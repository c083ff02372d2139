"""Compose the kustomize tree of a stack.

The tree holds stackgen's bases and components, the user's files, and kustomizations
rendered with jinja2 from the checked stack config.

The tree is self-contained: plain ``kustomize build`` of it gives the same stack as
``stackgen build``, so a rendered tree can be read, committed and used without stackgen.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from stackgen import __version__, yamlio
from stackgen.config import Queue, SecretSource, Stack, display_path
from stackgen.errors import ConfigError
from stackgen.resources import data_dir, load_schema, templates_dir

#: Paths inside every agent container.
HOOKS_PATH = "/buildkite/hooks"
STACKGEN_HOOKS_PATH = "/buildkite/stackgen-hooks"
GIT_MIRRORS_PATH = "/buildkite/git-mirrors"
DISPATCHER_PORT = 8080

_SECRET_DIR = "stack/secrets"
_OVERLAY_DIR = "stack/overlay"


@dataclass
class Composed:
    """A composed kustomize tree and what the user should hear about it."""

    root: Path
    notices: list[str] = field(default_factory=list)
    #: Paths (relative to root) that hold secret material.
    secret_paths: list[str] = field(default_factory=list)
    #: The generated dispatcher config when ``compose(check=False)`` left its check to the
    #: caller (:func:`check_dispatcher_config`).
    dispatcher_config: dict[str, Any] | None = None


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    # Compact, key-order-preserving JSON: valid YAML flow syntax with safe quoting.
    env.policies["json.dumps_kwargs"] = {"sort_keys": False, "ensure_ascii": False}
    return env


def split_image(image: str) -> dict[str, str]:
    """Split an image reference into kustomize ``images`` fields (newName/newTag/digest)."""
    out: dict[str, str] = {}
    name = image
    if "@" in name:
        name, out["digest"] = name.split("@", 1)
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
        out["newTag"] = tag
    out = {"newName": name, **out}
    return out


def _image_entry(base_name: str, image: str) -> dict[str, str]:
    return {"name": base_name, **split_image(image)}


def _write(path: Path, text: str, *, mode: int = 0o644) -> None:
    if ".." in path.parts:
        # Names from stack.yaml become folder names; the build composes before the schema
        # check ends (it runs while kustomize does), so refuse to leave the tree here too.
        raise ValueError(f"refusing to write outside the composed tree: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


def _copy_overlay(stack: Stack, dest: Path) -> None:
    def ignore(folder: str, names: list[str]) -> set[str]:
        return {n for n in names if n in {".git", "__pycache__"}}

    shutil.copytree(stack.overlay, dest, ignore=ignore, symlinks=False)
    for root, dirs, files in os.walk(dest):
        for name in dirs:
            Path(root, name).chmod(0o700)
        for name in files:
            Path(root, name).chmod(0o600)


def _overlay_rel(stack: Stack, path: Path) -> str:
    """Where a user file lands inside the composed ``stack/`` folder."""
    rel = path.resolve().relative_to(stack.overlay.resolve())
    return f"overlay/{rel.as_posix()}"


def _secret_value(source: SecretSource, environ: Mapping[str, str]) -> str | None:
    if source.file is not None:
        return source.file.read_text(encoding="utf-8").strip()
    if source.env is not None:
        return environ[source.env].strip()
    return None


#: Every workload that reads the agent token: (kind, label selector, container).
_TOKEN_CONSUMERS = (
    ("Deployment", "app.kubernetes.io/component=agent", "agent"),
    ("CronJob", "app.kubernetes.io/component=agent", "agent"),
    ("Deployment", "app.kubernetes.io/name=stackgen-dispatcher", "dispatcher"),
    ("Deployment", "app.kubernetes.io/name=stackgen-metrics-adapter", "metrics-adapter"),
)


def _token_ref_patch(kind: str, container: str, secret_name: str, key: str) -> dict[str, Any]:
    """Strategic-merge patch pointing one token consumer at an existing Secret."""
    env = {
        "name": "BUILDKITE_AGENT_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}},
    }
    pod: dict[str, Any] = {"spec": {"containers": [{"name": container, "env": [env]}]}}
    if kind == "CronJob":
        spec: dict[str, Any] = {"jobTemplate": {"spec": {"template": pod}}}
        api = "batch/v1"
    else:
        spec = {"template": pod}
        api = "apps/v1"
    return {"apiVersion": api, "kind": kind, "metadata": {"name": "any"}, "spec": spec}


def _pod_spec_patch(stack: Stack, queue: Queue) -> dict[str, Any]:
    agent = stack.agent
    env: list[dict[str, Any]] = [{"name": "BUILDKITE_AGENT_TAGS", "value": queue.agent_tags}]
    if queue.git_mirror:
        env += [
            {"name": "BUILDKITE_GIT_MIRRORS_PATH", "value": GIT_MIRRORS_PATH},
            {"name": "BUILDKITE_GIT_MIRRORS_SKIP_UPDATE", "value": "true"},
        ]
    env += [{"name": k, "value": v} for k, v in sorted(queue.env.items())]
    container: dict[str, Any] = {
        "name": "agent",
        "imagePullPolicy": agent.image_pull_policy,
        "env": env,
    }
    if queue.mode == "dispatch":
        container["args"] = [
            "start",
            "--disconnect-after-job",
            "--disconnect-after-idle-timeout",
            str(agent.disconnect_after_idle_seconds),
        ]
    resources = queue.resources.to_k8s()
    if resources:
        container["resources"] = resources
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": agent.termination_grace_period_seconds,
        "containers": [container],
    }
    if queue.node_selector:
        spec["nodeSelector"] = dict(sorted(queue.node_selector.items()))
    if queue.tolerations:
        spec["tolerations"] = queue.tolerations
    if agent.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in agent.image_pull_secrets]
    if queue.dind:
        spec["initContainers"] = [{"name": "dind", "resources": stack.dind.resources.to_k8s()}]
    return spec


def _queue_annotations(queue: Queue) -> dict[str, str]:
    annotations = {"stackgen.io/queue": queue.name, "stackgen.io/mode": queue.mode}
    if queue.git_mirror:
        annotations["stackgen.io/git-mirror"] = queue.git_mirror
    return annotations


def _agent_patch(stack: Stack, queue: Queue) -> dict[str, Any]:
    pod = {
        "metadata": {"annotations": _queue_annotations(queue)},
        "spec": _pod_spec_patch(stack, queue),
    }
    if queue.mode == "hpa":
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "buildkite-agent", "annotations": _queue_annotations(queue)},
            "spec": {"template": pod},
        }
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "buildkite-agent", "annotations": _queue_annotations(queue)},
        "spec": {
            "jobTemplate": {
                "spec": {
                    "activeDeadlineSeconds": queue.dispatch.active_deadline_seconds,
                    "ttlSecondsAfterFinished": queue.dispatch.ttl_seconds_after_finished,
                    "template": pod,
                }
            }
        },
    }


def _policy_list(policy: Any) -> list[dict[str, Any]]:
    out = []
    if policy.pods is not None:
        out.append({"type": "Pods", "value": policy.pods, "periodSeconds": policy.period_seconds})
    if policy.percent is not None:
        out.append(
            {"type": "Percent", "value": policy.percent, "periodSeconds": policy.period_seconds}
        )
    return out


def _autoscaler_patch(queue: Queue) -> dict[str, Any]:
    hpa = queue.hpa
    selector = {"matchLabels": {"queue": queue.name}}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "buildkite-agent", "annotations": {"stackgen.io/queue": queue.name}},
        "spec": {
            "minReplicas": queue.min_agents,
            "maxReplicas": queue.max_agents,
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {"name": "buildkite_jobs_runnable", "selector": selector},
                        "target": {"type": "AverageValue", "averageValue": str(hpa.jobs_per_agent)},
                    },
                },
                {
                    "type": "External",
                    "external": {
                        "metric": {
                            "name": "buildkite_agents_busy_percentage",
                            "selector": selector,
                        },
                        "target": {"type": "Value", "value": str(hpa.target_busy_percent)},
                    },
                },
            ],
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": hpa.scale_up.stabilization_window_seconds,
                    "selectPolicy": "Max",
                    "policies": _policy_list(hpa.scale_up),
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": hpa.scale_down.stabilization_window_seconds,
                    "selectPolicy": "Max",
                    "policies": _policy_list(hpa.scale_down),
                },
            },
        },
    }


def stack_key(stack: Stack) -> str:
    """The key this stack registers under with Buildkite's Stacks API."""
    return f"stackgen-{stack.namespace}-{stack.name}"


def dispatcher_config(stack: Stack) -> dict[str, Any]:
    """The dispatcher's config file, derived from the same stack.yaml (one source of truth)."""
    webhook = stack.dispatcher.webhook
    queues = []
    for queue in stack.dispatched_queues:
        queues.append(
            {
                "name": queue.name,
                "mode": queue.mode,
                "template": queue.workload_name,
                "minAgents": queue.min_agents,
                "maxAgents": queue.max_agents,
                "buffer": queue.buffer,
                "pollIntervalSeconds": queue.dispatch.poll_interval_seconds,
                "cooldown": {
                    "share": queue.dispatch.cooldown_share,
                    "timeoutSeconds": queue.dispatch.cooldown_timeout_seconds,
                },
                "activeDeadlineSeconds": queue.dispatch.active_deadline_seconds,
                "ttlSecondsAfterFinished": queue.dispatch.ttl_seconds_after_finished,
                "podStartTimeoutSeconds": queue.dispatch.pod_start_timeout_seconds,
                "gitMirror": queue.git_mirror,
            }
        )
    mirrors = [
        {
            "name": m.name,
            "repository": m.repository,
            "storage": m.storage,
            "storageClassName": m.storage_class_name,
            "keep": m.keep,
            "image": m.image,
            "mountPath": GIT_MIRRORS_PATH,
        }
        for m in stack.git_mirrors
    ]
    lease = stack.dispatcher.lease_duration_seconds
    return {
        "apiVersion": "stackgen.io/v1alpha1",
        "kind": "DispatcherConfig",
        "stack": stack.name,
        "namespace": stack.namespace,
        "logLevel": stack.dispatcher.log_level,
        "buildkite": {
            "endpoint": stack.agent.endpoint,
            "tokenEnv": "BUILDKITE_AGENT_TOKEN",
            "stackKey": stack_key(stack),
        },
        "server": {"port": DISPATCHER_PORT},
        "leaderElection": {
            "leaseName": "stackgen-dispatcher",
            "leaseDurationSeconds": lease,
            "renewDeadlineSeconds": max(2, lease * 2 // 3),
            "retryPeriodSeconds": max(1, lease // 5),
        },
        "webhook": {
            "enabled": webhook.enabled,
            "tokenEnv": "BUILDKITE_WEBHOOK_TOKEN",
            "maxSignatureAgeSeconds": webhook.max_signature_age_seconds,
        },
        "queues": queues,
        "gitMirrors": mirrors,
    }


def check_dispatcher_config(config: dict[str, Any], stack_file: str) -> None:
    """Validate a generated dispatcher config against schemas/dispatcher.schema.json."""
    from stackgen.schema_errors import schema_problems

    file = f"{stack_file} (generated dispatcher config)"
    problems = schema_problems(config, load_schema("dispatcher"), file)
    if problems:
        raise ConfigError(problems)


def _pss_version(kubernetes_version: str) -> str:
    major, minor = kubernetes_version.split(".")[:2]
    return f"v{major}.{minor}"


def compose(
    stack: Stack, dest: Path, *, environ: Mapping[str, str] | None = None, check: bool = True
) -> Composed:
    """Write the kustomize tree for ``stack`` into ``dest`` (created; must not exist).

    ``check=False`` leaves the generated dispatcher config's schema check to the caller
    (``Composed.dispatcher_config``).
    """
    environ = os.environ if environ is None else environ
    composed = Composed(root=dest)
    dest.mkdir(parents=True, exist_ok=False)
    dest.chmod(0o700)
    shutil.copytree(data_dir("bases"), dest / "bases")
    shutil.copytree(data_dir("components"), dest / "components")
    stack_dir = dest / "stack"
    stack_dir.mkdir()
    _copy_overlay(stack, dest / _OVERLAY_DIR)
    composed.secret_paths.append(f"{_OVERLAY_DIR}/")

    env = _environment()

    def render(template: str, **ctx: Any) -> str:
        return env.get_template(template).render(**ctx)

    # Tokens are written normalised (stripped): a trailing newline would break the header.
    token_file = None
    token = stack.secrets.agent_token
    patches: list[dict[str, Any]] = []
    if token.existing_secret is None:
        value = _secret_value(token, environ)
        assert value is not None
        _write(dest / _SECRET_DIR / "agent-token", value, mode=0o600)
        token_file = "secrets/agent-token"
    else:
        existing = token.existing_secret
        for kind, selector, container in _TOKEN_CONSUMERS:
            name = f"patches/agent-token-{container}-{kind.lower()}.yaml"
            patch = _token_ref_patch(kind, container, existing.name, existing.key)
            _write(stack_dir / name, yamlio.dump(patch))
            patches.append({"path": name, "target": {"kind": kind, "labelSelector": selector}})
    webhook_token_file = None
    webhook = stack.dispatcher.webhook
    if stack.dispatched_queues and webhook.enabled and webhook.token is not None:
        if webhook.token.existing_secret is None:
            value = _secret_value(webhook.token, environ)
            assert value is not None
            _write(dest / _SECRET_DIR / "webhook-token", value, mode=0o600)
            webhook_token_file = "secrets/webhook-token"
            secret_name, secret_key = "stackgen-webhook-token", "token"
        else:
            secret_name = webhook.token.existing_secret.name
            secret_key = webhook.token.existing_secret.key
        _write(
            stack_dir / "patches/dispatcher-webhook.yaml",
            yamlio.dump(_webhook_patch(secret_name, secret_key)),
        )
        patches.append({"path": "patches/dispatcher-webhook.yaml", "target": None})
    composed.secret_paths.append(f"{_SECRET_DIR}/")

    components = []
    git_credentials_file = None
    if stack.secrets.git_credentials_file is not None:
        components.append("git-credentials")
        git_credentials_file = _overlay_rel(stack, stack.secrets.git_credentials_file)
    ssh_key = None
    if stack.secrets.ssh_key is not None:
        components.append("ssh-key")
        ssh_key = {
            "private": _overlay_rel(stack, stack.secrets.ssh_key.private_key_file),
            "known_hosts": _overlay_rel(stack, stack.secrets.ssh_key.known_hosts_file),
        }

    adapter_tls = None
    generated_resources: list[str] = []
    if stack.hpa_queues:
        tls = stack.metrics_adapter.tls
        if tls.insecure_skip_tls_verify:
            _write(
                stack_dir / "patches/apiservice-tls.yaml",
                yamlio.dump(_apiservice_patch(insecure=True)),
            )
            composed.notices.append(
                "the metrics adapter's APIService skips TLS verification "
                "(metricsAdapter.tls.insecureSkipTLSVerify: true)"
            )
        elif tls.cert_manager is not None:
            _write(stack_dir / "metrics-adapter-certificate.yaml", yamlio.dump(_certificate(stack)))
            generated_resources.append("metrics-adapter-certificate.yaml")
            inject = f"{stack.namespace}/{ADAPTER_CERTIFICATE}"
            _write(
                stack_dir / "patches/apiservice-tls.yaml",
                yamlio.dump(_apiservice_patch(inject_from=inject)),
            )
        else:
            assert tls.ca_file and tls.cert_file and tls.key_file
            adapter_tls = {
                "cert": _overlay_rel(stack, tls.cert_file),
                "key": _overlay_rel(stack, tls.key_file),
            }
            ca = tls.ca_file.read_bytes()
            _write(
                stack_dir / "patches/apiservice-tls.yaml",
                yamlio.dump(_apiservice_patch(ca_bundle=ca)),
            )
        patches.append({"path": "patches/apiservice-tls.yaml", "target": None})
        _write(
            stack_dir / "patches/metrics-adapter.yaml",
            yamlio.dump(_adapter_patch(stack)),
        )
        patches.append({"path": "patches/metrics-adapter.yaml", "target": None})
    if stack.dispatched_queues:
        _write(stack_dir / "patches/dispatcher.yaml", yamlio.dump(_dispatcher_patch(stack)))
        patches.append({"path": "patches/dispatcher.yaml", "target": None})

    # Per-queue kustomizations.
    for queue in stack.queues:
        qdir = stack_dir / "queues" / queue.slug
        _write(
            qdir / "kustomization.yaml",
            render(
                "stack/queue-kustomization.yaml.j2",
                queue=queue,
                image=_image_entry("buildkite/agent", queue.image),
            ),
        )
        _write(qdir / "agent-patch.yaml", yamlio.dump(_agent_patch(stack, queue)))
        if queue.mode == "hpa":
            _write(qdir / "autoscaler-patch.yaml", yamlio.dump(_autoscaler_patch(queue)))
    for mirror in stack.git_mirrors:
        _write(
            stack_dir / "git-mirrors" / mirror.name / "kustomization.yaml",
            render("stack/mirror-kustomization.yaml.j2", mirror=mirror),
        )

    if stack.dispatched_queues or stack.git_mirrors:
        config = dispatcher_config(stack)
        if check:
            check_dispatcher_config(config, stack.file)
        else:
            composed.dispatcher_config = config
        _write(stack_dir / "dispatcher.yaml", yamlio.dump(config))

    dind_queues = [q.name for q in stack.queues if q.dind]
    if dind_queues:
        composed.notices.append(
            "Pod Security of namespace "
            f"{stack.namespace!r} lowered to privileged: dind on queue(s) {', '.join(dind_queues)}"
        )
    images = [_image_entry("ghcr.io/stackgen/stackgen", stack.dispatcher.image)]
    if stack.metrics_adapter.image != stack.dispatcher.image and stack.hpa_queues:
        # Distinct adapter image: retag through a second name the adapter patch uses.
        images.append(_image_entry("stackgen-metrics-adapter", stack.metrics_adapter.image))
    if dind_queues:
        images.append(_image_entry("docker", stack.dind.image))

    agent_env = {
        "BUILDKITE_AGENT_ENDPOINT": stack.agent.endpoint,
        "BUILDKITE_BUILD_PATH": stack.agent.build_path,
        "BUILDKITE_HOOKS_PATH": HOOKS_PATH,
        "BUILDKITE_ADDITIONAL_HOOKS_PATHS": STACKGEN_HOOKS_PATH,
    }
    adapter_env = {
        "BUILDKITE_AGENT_ENDPOINT": stack.agent.endpoint,
        "STACKGEN_POLL_INTERVAL_SECONDS": str(stack.metrics_adapter.poll_interval_seconds),
        "STACKGEN_QUEUES": ",".join(q.name for q in stack.hpa_queues),
    }
    hooks = {name: _overlay_rel(stack, path) for name, path in sorted(stack.hooks.items())}
    user_patches = []
    for patch in stack.kustomize.patches:
        patch = dict(patch)
        if "path" in patch:
            patch["path"] = _overlay_rel(stack, stack.overlay / patch["path"])
        user_patches.append(patch)

    _write(
        stack_dir / "kustomization.yaml",
        render(
            "stack/stack-kustomization.yaml.j2",
            name=stack.name,
            namespace=stack.namespace,
            queues=stack.queues,
            hpa_queues=stack.hpa_queues,
            dispatched_queues=stack.dispatched_queues,
            git_mirrors=stack.git_mirrors,
            dind_queues=dind_queues,
            components=components,
            generated_resources=generated_resources,
            user_resources=[
                _overlay_rel(stack, stack.overlay / p) for p in stack.kustomize.resources
            ],
            user_components=[
                _overlay_rel(stack, stack.overlay / p) for p in stack.kustomize.components
            ],
            images=images,
            token_file=token_file,
            git_credentials_file=git_credentials_file,
            ssh_key=ssh_key,
            webhook_token_file=webhook_token_file,
            adapter_tls=adapter_tls,
            agent_env=agent_env,
            adapter_env=adapter_env,
            hooks=hooks,
            patches=patches,
            user_patches=user_patches,
        ),
    )
    _write(
        stack_dir / "namespace.yaml",
        render(
            "stack/namespace.yaml.j2",
            namespace=stack.namespace,
            enforce_level="privileged" if dind_queues else "baseline",
            pss_version=_pss_version(stack.kubernetes_version),
            dind_queues=dind_queues,
        ),
    )
    if stack.hpa_queues:
        _write(
            dest / "kube-system" / "kustomization.yaml",
            render("stack/kube-system-kustomization.yaml.j2", namespace=stack.namespace),
        )
    _write(
        dest / "kustomization.yaml",
        render(
            "stack/kustomization.yaml.j2",
            version=__version__,
            stack_file=display_path(stack.source),
            name=stack.name,
            hpa_queues=stack.hpa_queues,
            user_labels=dict(sorted(stack.labels.items())),
            user_annotations=dict(sorted(stack.annotations.items())),
        ),
    )
    _write(
        dest / ".gitignore",
        "# Secret material copied from the overlay: never commit it.\n"
        + "".join(f"/{p}\n" for p in composed.secret_paths),
    )
    return composed


def _webhook_patch(secret_name: str, key: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "stackgen-dispatcher"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "dispatcher",
                            "env": [
                                {
                                    "name": "BUILDKITE_WEBHOOK_TOKEN",
                                    "valueFrom": {
                                        "secretKeyRef": {"name": secret_name, "key": key}
                                    },
                                }
                            ],
                        }
                    ]
                }
            }
        },
    }


#: cert-manager's Certificate (and the Secret it writes) for the adapter.
ADAPTER_CERTIFICATE = "stackgen-metrics-adapter"


def _apiservice_patch(
    *, ca_bundle: bytes | None = None, insecure: bool = False, inject_from: str | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    metadata: dict[str, Any] = {"name": "v1beta1.external.metrics.k8s.io"}
    if insecure:
        spec["insecureSkipTLSVerify"] = True
        metadata["annotations"] = {"stackgen.io/insecure-skip-tls-verify": "opted-in"}
    elif inject_from:
        # cert-manager's cainjector fills spec.caBundle from the Certificate's CA.
        metadata["annotations"] = {"cert-manager.io/inject-ca-from": inject_from}
    elif ca_bundle is not None:
        spec["caBundle"] = base64.b64encode(ca_bundle).decode("ascii")
    body: dict[str, Any] = {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": metadata,
    }
    if spec:
        body["spec"] = spec
    return body


def _certificate(stack: Stack) -> dict[str, Any]:
    from stackgen.certs import service_names

    issuer = stack.metrics_adapter.tls.cert_manager
    assert issuer is not None
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {
            "name": ADAPTER_CERTIFICATE,
            "labels": {
                "app.kubernetes.io/name": "stackgen-metrics-adapter",
                "app.kubernetes.io/component": "serving-cert",
            },
        },
        "spec": {
            # The name the adapter Deployment mounts.
            "secretName": "stackgen-metrics-adapter-tls",
            "dnsNames": service_names(stack.namespace),
            "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
            "usages": ["server auth", "digital signature", "key encipherment"],
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
        },
    }


def _adapter_patch(stack: Stack) -> dict[str, Any]:
    adapter = stack.metrics_adapter
    container: dict[str, Any] = {"name": "metrics-adapter", "resources": adapter.resources.to_k8s()}
    if adapter.image != stack.dispatcher.image:
        container["image"] = "stackgen-metrics-adapter"
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "stackgen-metrics-adapter"},
        "spec": {"replicas": adapter.replicas, "template": {"spec": {"containers": [container]}}},
    }


def _dispatcher_patch(stack: Stack) -> dict[str, Any]:
    disp = stack.dispatcher
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "stackgen-dispatcher"},
        "spec": {
            "replicas": disp.replicas,
            "template": {
                "spec": {
                    "containers": [{"name": "dispatcher", "resources": disp.resources.to_k8s()}]
                }
            },
        },
    }


__all__ = ["Composed", "compose", "dispatcher_config", "split_image", "stack_key"]
