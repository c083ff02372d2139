"""The ``kubernetes`` plugin of a step, read from the job's ``BUILDKITE_PLUGINS``.

Buildkite hands a job its plugins as JSON: a list of one-key objects, each plugin's
source (expanded to ``github.com/buildkite-plugins/kubernetes-buildkite-plugin`` for
the ``kubernetes`` shorthand) mapped to its settings.  agent-stack-k8s reads that key and
so does stackgen; the agent itself drops it before running plugins in kubernetes exec mode.

Settings are checked here, strictly: an unknown key, or one stackgen does not support,
refuses the step with a line saying so (agent-stack-k8s ignores unknown keys).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

PLUGIN_KEY = "github.com/buildkite-plugins/kubernetes-buildkite-plugin"
INTERPOSERS = ("buildkite", "vector", "legacy")

_TOP_KEYS = {
    "podSpec",
    "podSpecPatch",
    "gitEnvFrom",
    "sidecars",
    "metadata",
    "extraVolumeMounts",
    "checkout",
    "commandParams",
    "sidecarParams",
    "jobActiveDeadlineSeconds",
}
_CHECKOUT_KEYS = {
    "skip",
    "cleanFlags",
    "cloneFlags",
    "fetchFlags",
    "checkoutFlags",
    "noSubmodules",
    "submoduleCloneConfig",
    "envFrom",
    "extraVolumeMounts",
}
_UNSUPPORTED = {
    "podTemplate": "use podSpec (stackgen reads no PodTemplate objects)",
    "checkout.gitCredentialsSecret": "the stack's own git credentials are wired into checkout",
    "checkout.gitMirrors": "set gitMirror on the queue in stack.yaml",
}


class PluginError(ValueError):
    """The step's plugin settings are not usable: the step is refused with this reason."""


@dataclass(frozen=True)
class Checkout:
    """``checkout:`` of the plugin."""

    skip: bool = False
    #: BUILDKITE_GIT_* variables for the agent (which hands them to the checkout).
    env: dict[str, str] = field(default_factory=dict)
    env_from: list[dict[str, Any]] = field(default_factory=list)
    extra_volume_mounts: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class KubernetesPlugin:
    """The plugin's settings, checked."""

    pod_spec: dict[str, Any] | None = None
    pod_spec_patch: dict[str, Any] | None = None
    git_env_from: list[dict[str, Any]] = field(default_factory=list)
    sidecars: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    extra_volume_mounts: list[dict[str, Any]] = field(default_factory=list)
    checkout: Checkout = Checkout()
    interposer: str = "buildkite"
    command_env_from: list[dict[str, Any]] = field(default_factory=list)
    command_volume_mounts: list[dict[str, Any]] = field(default_factory=list)
    sidecar_env_from: list[dict[str, Any]] = field(default_factory=list)
    sidecar_volume_mounts: list[dict[str, Any]] = field(default_factory=list)
    active_deadline_seconds: int | None = None


def find_plugin(env: dict[str, str]) -> KubernetesPlugin | None:
    """The step's ``kubernetes`` plugin, or None when the step has none."""
    raw = env.get("BUILDKITE_PLUGINS", "")
    if not raw.strip():
        return None
    try:
        plugins = json.loads(raw)
    except ValueError as exc:
        raise PluginError(f"BUILDKITE_PLUGINS is not JSON: {exc}") from None
    if not isinstance(plugins, list):
        raise PluginError("BUILDKITE_PLUGINS is not a list")
    found = None
    for plugin in plugins:
        if not isinstance(plugin, dict) or len(plugin) != 1:
            raise PluginError(f"BUILDKITE_PLUGINS has an invalid entry: {json.dumps(plugin)[:80]}")
        if PLUGIN_KEY in plugin:
            found = parse(plugin[PLUGIN_KEY] or {})
    return found


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PluginError(f"kubernetes plugin: {where} must be a mapping")
    return value


def _list_of_maps(value: Any, where: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(i, dict) for i in value):
        raise PluginError(f"kubernetes plugin: {where} must be a list of mappings")
    return value


def _strings(value: Any, where: str) -> dict[str, str]:
    data = _mapping(value if value is not None else {}, where)
    if not all(isinstance(v, str) for v in data.values()):
        raise PluginError(f"kubernetes plugin: {where} values must be strings")
    return data


def _check_keys(data: dict[str, Any], allowed: set[str], prefix: str) -> None:
    for key in data:
        name = f"{prefix}{key}"
        if name in _UNSUPPORTED:
            raise PluginError(f"kubernetes plugin: {name} is not supported: {_UNSUPPORTED[name]}")
        if key not in allowed:
            raise PluginError(f"kubernetes plugin: unknown key {name!r}")


def parse(settings: Any) -> KubernetesPlugin:
    """Check the plugin's settings and build them."""
    data = _mapping(settings, "its settings")
    _check_keys(data, _TOP_KEYS, "")
    metadata = _mapping(data.get("metadata") or {}, "metadata")
    _check_keys(metadata, {"labels", "annotations"}, "metadata.")
    command = _mapping(data.get("commandParams") or {}, "commandParams")
    _check_keys(command, {"interposer", "envFrom", "extraVolumeMounts"}, "commandParams.")
    interposer = command.get("interposer") or "buildkite"
    if interposer not in INTERPOSERS:
        raise PluginError(
            f"kubernetes plugin: commandParams.interposer {interposer!r} is not one of "
            f"{', '.join(INTERPOSERS)}"
        )
    sidecar = _mapping(data.get("sidecarParams") or {}, "sidecarParams")
    _check_keys(sidecar, {"envFrom", "extraVolumeMounts"}, "sidecarParams.")
    deadline = data.get("jobActiveDeadlineSeconds")
    if deadline is not None and (
        isinstance(deadline, bool) or not isinstance(deadline, int) or deadline < 1
    ):
        raise PluginError("kubernetes plugin: jobActiveDeadlineSeconds must be a positive integer")
    spec = data.get("podSpec")
    patch = data.get("podSpecPatch")
    return KubernetesPlugin(
        pod_spec=_mapping(spec, "podSpec") if spec is not None else None,
        pod_spec_patch=_mapping(patch, "podSpecPatch") if patch is not None else None,
        git_env_from=_list_of_maps(data.get("gitEnvFrom"), "gitEnvFrom"),
        sidecars=_list_of_maps(data.get("sidecars"), "sidecars"),
        labels=_strings(metadata.get("labels"), "metadata.labels"),
        annotations=_strings(metadata.get("annotations"), "metadata.annotations"),
        extra_volume_mounts=_list_of_maps(data.get("extraVolumeMounts"), "extraVolumeMounts"),
        checkout=_checkout(_mapping(data.get("checkout") or {}, "checkout")),
        interposer=interposer,
        command_env_from=_list_of_maps(command.get("envFrom"), "commandParams.envFrom"),
        command_volume_mounts=_list_of_maps(
            command.get("extraVolumeMounts"), "commandParams.extraVolumeMounts"
        ),
        sidecar_env_from=_list_of_maps(sidecar.get("envFrom"), "sidecarParams.envFrom"),
        sidecar_volume_mounts=_list_of_maps(
            sidecar.get("extraVolumeMounts"), "sidecarParams.extraVolumeMounts"
        ),
        active_deadline_seconds=deadline,
    )


_FLAG_ENV = {
    "checkoutFlags": "BUILDKITE_GIT_CHECKOUT_FLAGS",
    "cleanFlags": "BUILDKITE_GIT_CLEAN_FLAGS",
    "cloneFlags": "BUILDKITE_GIT_CLONE_FLAGS",
    "fetchFlags": "BUILDKITE_GIT_FETCH_FLAGS",
}


def _checkout(data: dict[str, Any]) -> Checkout:
    """``checkout:``: the flags become the agent's BUILDKITE_GIT_* settings."""
    _check_keys(data, _CHECKOUT_KEYS, "checkout.")
    env: dict[str, str] = {}
    for key, name in _FLAG_ENV.items():
        if key in data:
            if not isinstance(data[key], str):
                raise PluginError(f"kubernetes plugin: checkout.{key} must be a string")
            env[name] = data[key]
    if "noSubmodules" in data:
        env["BUILDKITE_NO_GIT_SUBMODULES"] = "true" if data["noSubmodules"] else "false"
    if "submoduleCloneConfig" in data:
        config = data["submoduleCloneConfig"]
        if not isinstance(config, list) or not all(isinstance(c, str) for c in config):
            raise PluginError("kubernetes plugin: checkout.submoduleCloneConfig must be strings")
        env["BUILDKITE_GIT_SUBMODULE_CLONE_CONFIG"] = ",".join(config)
    skip = data.get("skip", False)
    if not isinstance(skip, bool):
        raise PluginError("kubernetes plugin: checkout.skip must be true or false")
    return Checkout(
        skip=skip,
        env=env,
        env_from=_list_of_maps(data.get("envFrom"), "checkout.envFrom"),
        extra_volume_mounts=_list_of_maps(
            data.get("extraVolumeMounts"), "checkout.extraVolumeMounts"
        ),
    )
