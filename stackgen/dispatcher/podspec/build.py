"""Build a step's pod from the queue's agent template and the step's ``kubernetes`` plugin.

The steps follow agent-stack-k8s's documented PodSpec generation, on stackgen's template
(so the stack's hooks, git credentials, SSH key, git mirror and scheduling stay wired):

1. the step's ``podSpec`` (or an empty one) is the start; the template's pod-level
   settings (service account, security context, scheduling, grace period) fill in what
   it leaves unset, and its volumes are added;
2. a ``workspace`` emptyDir is mounted at ``/workspace`` in every container the agent
   coordinates, with the plugin's ``extraVolumeMounts``;
3. each of the step's containers becomes ``container-N`` (unless named): its command
   runs as ``BUILDKITE_COMMAND`` through ``/workspace/buildkite-agent
   kubernetes-bootstrap`` (phases ``plugin,command``), with the user's hooks mounted; with
   no containers, one runs the step's command in the agent image;
4. the template's agent container starts the agent in kubernetes exec mode
   (``--kubernetes-exec``; it acquires its one job with the token the dispatcher made);
5. a ``checkout`` container (phases ``plugin,checkout``) with the stack's git credentials,
   SSH key and hooks, unless ``checkout.skip``;
6. a ``copy-agent`` init container copies the agent binary into the workspace; the
   template's init containers (dind) and the step's follow, then its ``sidecars`` as
   native sidecars;
7. the queue's ``podSpecPatch``, the step's ``image``, then the step's ``podSpecPatch``
   (strategic merge); resource defaults fill in what no container states.

Guard rails are checked afterwards (:mod:`.guard`).
"""

from __future__ import annotations

import copy
import shlex
from dataclasses import dataclass, field
from typing import Any

from stackgen.common.names import AGENT_CONTAINER, HOOKS_PATH
from stackgen.common.podsteps import PluginSettings
from stackgen.dispatcher.podspec.merge import MergeError, strategic_merge
from stackgen.dispatcher.podspec.plugin import KubernetesPlugin, PluginError

JSON = dict[str, Any]

WORKSPACE = "/workspace"
WORKSPACE_VOLUME = "workspace"
CHECKOUT = "checkout"
COPY_AGENT = "copy-agent"
#: What every coordinated container but the agent runs (the agent binary from the workspace).
BOOTSTRAP = [f"{WORKSPACE}/buildkite-agent"]
BOOTSTRAP_ARGS = ["kubernetes-bootstrap"]
#: Pod-level fields a step cannot set: the pod's identity stays the queue's.
PROTECTED_POD_FIELDS = ("serviceAccountName", "serviceAccount", "automountServiceAccountToken")
_COPY_AGENT_SCRIPT = (
    f"mkdir -p {WORKSPACE}/build {WORKSPACE}/plugins {WORKSPACE}/sockets\n"
    f"chmod 777 {WORKSPACE}/build {WORKSPACE}/plugins {WORKSPACE}/sockets\n"
    f'cp "$(command -v buildkite-agent)" {WORKSPACE}/buildkite-agent\n'
)


@dataclass
class StepPod:
    """A step's generated pod spec, and what stackgen itself put in it (for the guards)."""

    spec: JSON
    #: Containers as stackgen generated them from the queue's template, by name.
    generated: dict[str, JSON] = field(default_factory=dict)
    #: Number of containers the agent waits for (checkout + commands).
    coordinated: int = 0


def command_of(container: JSON, step_command: str, interposer: str) -> str:
    """The BUILDKITE_COMMAND a container runs (agent-stack-k8s's interposers)."""
    command = container.get("command") or []
    args = container.get("args") or []
    if not command:
        return step_command
    if interposer == "vector":
        return shlex.join([*command, *args])
    if interposer == "legacy":
        return " ".join([*command, *args])
    text = "\n".join(command)
    return f"{text} {shlex.join(args)}" if args else text


def _env(name: str, value: str) -> JSON:
    return {"name": name, "value": value}


def _set_env(container: JSON, *entries: JSON) -> None:
    """Set variables (replacing any of the same name)."""
    names = {e["name"] for e in entries}
    env = [e for e in container.get("env") or [] if e.get("name") not in names]
    container["env"] = env + list(entries)


def _agent_of(template: JSON) -> JSON:
    for container in template.get("containers") or []:
        if container.get("name") == AGENT_CONTAINER:
            return container  # type: ignore[no-any-return]
    raise PluginError("the queue's template has no agent container")


def _mounts_named(container: JSON, names: set[str]) -> list[JSON]:
    return [m for m in container.get("volumeMounts") or [] if m.get("name") in names]


def build_pod(
    template: JSON,
    command: str,
    env: dict[str, str],
    plugin: KubernetesPlugin,
    settings: PluginSettings,
) -> StepPod:
    """The step's pod spec (raises PluginError when it cannot be built)."""
    step = copy.deepcopy(plugin.pod_spec or {})
    for key in PROTECTED_POD_FIELDS:
        if key in step:
            raise PluginError(f"podSpec.{key}: a step cannot choose the pod's service account")
    agent = _agent_of(template)
    spec = _pod_level(template, step)
    shared = [{"name": WORKSPACE_VOLUME, "mountPath": WORKSPACE}, *plugin.extra_volume_mounts]
    hooks = _mounts_named(agent, {_hooks_volume(agent)})
    commands = _command_containers(step, agent, command, plugin, shared + hooks)
    checkout = None if plugin.checkout.skip else _checkout(agent, plugin, shared)
    coordinated = len(commands) + (1 if checkout else 0)
    containers = [*commands, _agent(agent, plugin, coordinated, spec)]
    if checkout:
        containers.append(checkout)
    spec["containers"] = containers
    spec["initContainers"] = [
        _copy_agent(agent),
        *copy.deepcopy(template.get("initContainers") or []),
        *(step.get("initContainers") or []),
        *_sidecars(plugin, shared),
    ]
    step_own = {c["name"] for c in commands} | {
        c.get("name")
        for c in spec["initContainers"][1 + len(template.get("initContainers") or []) :]
    }
    spec = _patched(spec, settings.pod_spec_patch, plugin, command, "the queue's podSpecPatch")
    _finish(spec, settings)
    # What the stack's own template and settings made: the guards trust it unchanged.
    generated = {
        c["name"]: copy.deepcopy(c)
        for c in [*spec["containers"], *spec["initContainers"]]
        if c.get("name") not in step_own
    }
    _custom_image(spec, env.get("BUILDKITE_IMAGE", ""))
    if plugin.pod_spec_patch is not None:
        spec = _patched(spec, plugin.pod_spec_patch, plugin, command, "podSpecPatch")
    if plugin.checkout.skip:
        spec["containers"] = [c for c in spec["containers"] if c.get("name") != CHECKOUT]
    _finish(spec, settings)
    for key in PROTECTED_POD_FIELDS:
        if spec.get(key) != template.get(key):
            raise PluginError(f"podSpecPatch.{key}: a step cannot change the pod's service account")
    return StepPod(spec=spec, generated=generated, coordinated=coordinated)


def _hooks_volume(agent: JSON) -> str:
    for mount in agent.get("volumeMounts") or []:
        if mount.get("mountPath") == HOOKS_PATH:
            return str(mount.get("name"))
    return ""


def _pod_level(template: JSON, step: JSON) -> JSON:
    """The step's pod-level fields over the template's; volumes of both plus the workspace."""
    spec = {
        k: copy.deepcopy(v)
        for k, v in template.items()
        if k not in ("containers", "initContainers", "volumes")
    }
    for key, value in step.items():
        if key not in ("containers", "initContainers", "volumes"):
            spec[key] = value
    spec["restartPolicy"] = "Never"
    spec["volumes"] = [
        *(step.get("volumes") or []),
        *copy.deepcopy(template.get("volumes") or []),
        {"name": WORKSPACE_VOLUME, "emptyDir": {}},
    ]
    return spec


def _command_containers(
    step: JSON, agent: JSON, command: str, plugin: KubernetesPlugin, mounts: list[JSON]
) -> list[JSON]:
    """The step's containers, each running the command through kubernetes-bootstrap."""
    given = step.get("containers") or [
        {
            "name": "container-0",
            "image": agent.get("image"),
            "imagePullPolicy": agent.get("imagePullPolicy"),
        }
    ]
    first_id = 0 if plugin.checkout.skip else 1
    out = []
    for index, container in enumerate(given):
        container = copy.deepcopy(container)
        container.setdefault("name", f"container-{index}")
        if not container.get("name"):
            container["name"] = f"container-{index}"
        run = command_of(container, command, plugin.interposer)
        container["command"] = list(BOOTSTRAP)
        container["args"] = list(BOOTSTRAP_ARGS)
        _set_env(
            container,
            _env("BUILDKITE_BOOTSTRAP_PHASES", "plugin,command"),
            _env("BUILDKITE_COMMAND", run),
            _env("BUILDKITE_CONTAINER_ID", str(index + first_id)),
            _env("BUILDKITE_SOCKETS_PATH", f"{WORKSPACE}/sockets/{container['name']}"),
        )
        container.setdefault("workingDir", WORKSPACE)
        container["volumeMounts"] = [
            *(container.get("volumeMounts") or []),
            *copy.deepcopy(mounts),
            *copy.deepcopy(plugin.command_volume_mounts),
        ]
        env_from = [*plugin.git_env_from, *plugin.command_env_from]
        if env_from:
            container["envFrom"] = [*(container.get("envFrom") or []), *copy.deepcopy(env_from)]
        out.append(container)
    return out


def _agent(agent: JSON, plugin: KubernetesPlugin, coordinated: int, spec: JSON) -> JSON:
    """The template's agent in kubernetes exec mode, coordinating ``coordinated`` containers."""
    agent = copy.deepcopy(agent)
    args = list(agent.get("args") or ["start"])
    if "--kubernetes-exec" not in args:
        args.append("--kubernetes-exec")
    agent["args"] = args
    grace = int(spec.get("terminationGracePeriodSeconds") or 30)
    entries = [
        _env("BUILDKITE_CONTAINER_COUNT", str(coordinated)),
        _env("BUILDKITE_BUILD_PATH", f"{WORKSPACE}/build"),
        _env("BUILDKITE_PLUGINS_PATH", f"{WORKSPACE}/plugins"),
        _env("BUILDKITE_SOCKETS_PATH", f"{WORKSPACE}/sockets/agent"),
        # The step's images may lack bash (agent-stack-k8s uses the same shell).
        _env("BUILDKITE_SHELL", "/bin/sh -ec"),
        # The agent needs cancel grace > signal grace; both within the pod's grace period.
        _env("BUILDKITE_CANCEL_GRACE_PERIOD", str(max(grace, 1))),
        _env("BUILDKITE_SIGNAL_GRACE_PERIOD_SECONDS", str(max(0, grace - 10))),
    ]
    entries += [_env(k, v) for k, v in sorted(plugin.checkout.env.items())]
    _set_env(agent, *entries)
    agent["volumeMounts"] = [
        *(agent.get("volumeMounts") or []),
        {"name": WORKSPACE_VOLUME, "mountPath": WORKSPACE},
    ]
    return agent


def _checkout(agent: JSON, plugin: KubernetesPlugin, shared: list[JSON]) -> JSON:
    """Clones the repository with the stack's hooks, git credentials and SSH key."""
    container: JSON = {
        "name": CHECKOUT,
        "image": agent.get("image"),
        "args": list(BOOTSTRAP_ARGS),
        "workingDir": WORKSPACE,
        "env": [
            _env("BUILDKITE_BOOTSTRAP_PHASES", "plugin,checkout"),
            _env("BUILDKITE_CONTAINER_ID", "0"),
            _env("BUILDKITE_SOCKETS_PATH", f"{WORKSPACE}/sockets/checkout"),
        ],
    }
    for key in ("imagePullPolicy", "resources", "securityContext"):
        if key in agent:
            container[key] = copy.deepcopy(agent[key])
    env_from = [
        *(agent.get("envFrom") or []),
        *plugin.git_env_from,
        *plugin.checkout.env_from,
    ]
    if env_from:
        container["envFrom"] = copy.deepcopy(env_from)
    # The agent's mounts (hooks, secrets, git mirror) but not its build folder.
    own = [m for m in agent.get("volumeMounts") or [] if m.get("mountPath") != "/buildkite/builds"]
    container["volumeMounts"] = copy.deepcopy([*shared, *plugin.checkout.extra_volume_mounts, *own])
    return container


def _copy_agent(agent: JSON) -> JSON:
    container: JSON = {
        "name": COPY_AGENT,
        "image": agent.get("image"),
        "command": ["/bin/sh", "-ec", _COPY_AGENT_SCRIPT],
        "volumeMounts": [{"name": WORKSPACE_VOLUME, "mountPath": WORKSPACE}],
    }
    for key in ("imagePullPolicy", "securityContext"):
        if key in agent:
            container[key] = copy.deepcopy(agent[key])
    return container


def _sidecars(plugin: KubernetesPlugin, shared: list[JSON]) -> list[JSON]:
    """The step's sidecars: native sidecars that stop with the pod."""
    out = []
    for index, sidecar in enumerate(plugin.sidecars):
        sidecar = copy.deepcopy(sidecar)
        if not sidecar.get("name"):
            sidecar["name"] = f"sidecar-{index}"
        sidecar["volumeMounts"] = [
            *(sidecar.get("volumeMounts") or []),
            *copy.deepcopy(shared),
            *copy.deepcopy(plugin.sidecar_volume_mounts),
        ]
        env_from = [*plugin.git_env_from, *plugin.sidecar_env_from]
        if env_from:
            sidecar["envFrom"] = [*(sidecar.get("envFrom") or []), *copy.deepcopy(env_from)]
        sidecar["restartPolicy"] = "Always"
        out.append(sidecar)
    return out


def _patched(
    spec: JSON, patch: dict[str, Any], plugin: KubernetesPlugin, command: str, what: str
) -> JSON:
    """A podSpecPatch applied; a command container's new command becomes BUILDKITE_COMMAND."""
    if not patch:
        return spec
    patch = copy.deepcopy(patch)
    current = {c.get("name"): c for c in spec.get("containers") or []}
    init = {c.get("name"): c for c in spec.get("initContainers") or []}
    for field_name, existing in (("initContainers", init), ("containers", current)):
        for item in patch.get(field_name) or []:
            if not isinstance(item, dict) or not ("command" in item or "args" in item):
                continue
            name = item.get("name")
            old = existing.get(name)
            if old is None or (
                item.get("command", old.get("command")) == old.get("command")
                and item.get("args", old.get("args")) == old.get("args")
            ):
                continue
            if name in (AGENT_CONTAINER, CHECKOUT, COPY_AGENT):
                raise PluginError(
                    f"{what}: changing the command or args of the {name} container is not allowed"
                )
            if old.get("command") == BOOTSTRAP and field_name == "containers":
                run = command_of(
                    {"command": item.pop("command", None), "args": item.pop("args", None)},
                    command,
                    plugin.interposer,
                )
                item["env"] = [*(item.get("env") or []), _env("BUILDKITE_COMMAND", run)]
    try:
        return strategic_merge(spec, patch)
    except MergeError as exc:
        raise PluginError(f"{what}: {exc}") from None


def _custom_image(spec: JSON, image: str) -> None:
    """The step's ``image:`` attribute runs its command containers (as agent-stack-k8s)."""
    if not image:
        return
    for container in spec.get("containers") or []:
        if container.get("command") == BOOTSTRAP:
            container["image"] = image


def _finish(spec: JSON, settings: PluginSettings) -> None:
    """Resource defaults where a container states none; duplicate mounts dropped."""
    defaults = settings.default_resources
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        resources = container.setdefault("resources", {})
        for kind in ("requests", "limits"):
            if not resources.get(kind) and defaults.get(kind):
                resources[kind] = dict(defaults[kind])
        if not resources:
            container.pop("resources")
        seen: set[str] = set()
        mounts = []
        for mount in container.get("volumeMounts") or []:
            if mount.get("mountPath") not in seen:
                seen.add(mount.get("mountPath"))
                mounts.append(mount)
        if mounts:
            container["volumeMounts"] = mounts
