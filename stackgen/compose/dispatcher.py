"""The dispatcher: its Deployment's settings, its webhook token, and its config file.

The dispatcher's config is generated from the same stack.yaml (one source of truth):
:func:`dispatcher_config` writes the queues' and mirrors' shared models
(:mod:`stackgen.common.models`) in the form the dispatcher reads back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stackgen.common.errors import ConfigError
from stackgen.common.names import (
    AGENT_TOKEN_ENV,
    API_VERSION,
    DISPATCHER,
    DISPATCHER_CONFIG,
    DISPATCHER_CONFIG_FILE,
    DISPATCHER_PORT,
    WEBHOOK_TOKEN_ENV,
    WEBHOOK_TOKEN_SECRET,
)
from stackgen.common.resources import load_schema
from stackgen.compose.kustomization import Kustomization, generated
from stackgen.compose.token import secret_env_patch
from stackgen.compose.tree import Tree, secret_value
from stackgen.stack.model import Stack


def add_webhook(tree: Tree, kz: Kustomization, environ: Mapping[str, str]) -> None:
    """The webhook token's Secret (or an existing one) in the dispatcher's environment."""
    stack = tree.stack
    webhook = stack.dispatcher.webhook
    if not (stack.dispatched_queues and webhook.enabled and webhook.token is not None):
        return
    if webhook.token.existing_secret is None:
        path = tree.write_secret("webhook-token", secret_value(stack, webhook.token, environ))
        kz.secret_generator.append(
            generated(WEBHOOK_TOKEN_SECRET, DISPATCHER, "webhook-token", files=[f"token={path}"])
        )
        secret, key = WEBHOOK_TOKEN_SECRET, "token"
    else:
        secret, key = webhook.token.existing_secret.name, webhook.token.existing_secret.key
    patch = secret_env_patch("Deployment", DISPATCHER, "dispatcher", WEBHOOK_TOKEN_ENV, secret, key)
    tree.write_yaml("stack/patches/dispatcher-webhook.yaml", patch)
    kz.patch("patches/dispatcher-webhook.yaml")


def add_dispatcher(tree: Tree, kz: Kustomization, *, check: bool) -> None:
    """The dispatcher's base, its config (checked now, or left to the caller) and patch."""
    stack = tree.stack
    if stack.dispatched_queues:
        kz.resources.append("../bases/dispatcher")
    if stack.dispatched_queues or stack.git_mirrors:
        config = dispatcher_config(stack)
        if check:
            check_dispatcher_config(config, stack.file)
        else:
            tree.composed.dispatcher_config = config
        tree.write_yaml(f"stack/{DISPATCHER_CONFIG_FILE}", config)
        kz.config_map_generator.append(
            generated(
                DISPATCHER_CONFIG, DISPATCHER, "dispatcher-config", files=[DISPATCHER_CONFIG_FILE]
            )
        )
    if stack.dispatched_queues:
        tree.write_yaml("stack/patches/dispatcher.yaml", _deployment_patch(stack))
        kz.patch("patches/dispatcher.yaml")


def _deployment_patch(stack: Stack) -> dict[str, Any]:
    disp = stack.dispatcher
    container = {"name": "dispatcher", "resources": disp.resources.to_k8s()}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": DISPATCHER},
        "spec": {"replicas": disp.replicas, "template": {"spec": {"containers": [container]}}},
    }


def dispatcher_config(stack: Stack) -> dict[str, Any]:
    """The dispatcher's config file (``schemas/dispatcher.schema.json``), from stack.yaml."""
    webhook = stack.dispatcher.webhook
    lease = stack.dispatcher.lease_duration_seconds
    return {
        "apiVersion": API_VERSION,
        "kind": "DispatcherConfig",
        "stack": stack.name,
        "namespace": stack.namespace,
        "logLevel": stack.dispatcher.log_level,
        "buildkite": {
            "endpoint": stack.agent.endpoint,
            "tokenEnv": AGENT_TOKEN_ENV,
            "stackKey": stack.stack_key(),
        },
        "server": {"port": DISPATCHER_PORT},
        "leaderElection": {
            "leaseName": DISPATCHER,
            "leaseDurationSeconds": lease,
            "renewDeadlineSeconds": max(2, lease * 2 // 3),
            "retryPeriodSeconds": max(1, lease // 5),
        },
        "webhook": {
            "enabled": webhook.enabled,
            "tokenEnv": WEBHOOK_TOKEN_ENV,
            "maxSignatureAgeSeconds": webhook.max_signature_age_seconds,
        },
        "queues": [queue.dispatched().to_dict() for queue in stack.dispatched_queues],
        "gitMirrors": [mirror.to_dict() for mirror in stack.git_mirrors],
    }


def check_dispatcher_config(config: dict[str, Any], stack_file: str) -> None:
    """Validate a generated dispatcher config against schemas/dispatcher.schema.json."""
    from stackgen.common.schema_errors import schema_problems

    file = f"{stack_file} (generated dispatcher config)"
    problems = schema_problems(config, load_schema("dispatcher"), file)
    if problems:
        raise ConfigError(problems)
