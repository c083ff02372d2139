"""Guard rails: what a step's pod may ask for, per queue (stack.yaml's kubernetesPlugin).

Checked on the final pod spec (after every patch).  What stackgen generated from the
queue's own template and settings is trusted as long as the step did not change it (the
build's policies checked it); everything the step brought or changed must pass:

- images match ``allowedImages`` (shell-style patterns; the template's images always pass);
- no privileged container, privilege escalation or unmasked /proc without
  ``allowPrivileged``; no added capability outside ``allowedCapabilities``;
- no host network, PID or IPC namespace, host ports or ``hostUsers: true`` without
  ``allowHostNamespaces``; no ``hostPath`` volume without ``allowHostPath``;
- no container's requests or limits above ``maxResources``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from typing import Any

from stackgen.common.podsteps import PluginSettings
from stackgen.dispatcher.kube import quantity
from stackgen.dispatcher.podspec.build import StepPod

JSON = dict[str, Any]


def refusals(pod: StepPod, settings: PluginSettings, stack_images: set[str]) -> list[str]:
    """Every reason the step's pod is refused (empty: it may run)."""
    spec = pod.spec
    reasons = list(_pod_level(spec, settings))
    for field in ("initContainers", "containers"):
        for container in spec.get(field) or []:
            name = str(container.get("name"))
            original = pod.generated.get(name)
            reasons += _container(container, original, settings, stack_images)
    return reasons


def _pod_level(spec: JSON, settings: PluginSettings) -> Iterator[str]:
    if not settings.allow_host_namespaces:
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(key):
                yield f"{key} is not allowed on this queue"
        if spec.get("hostUsers") is True:
            yield "hostUsers: true is not allowed on this queue"
    if not settings.allow_host_path:
        for volume in spec.get("volumes") or []:
            if "hostPath" in volume:
                yield f"volume {volume.get('name')!r}: hostPath volumes are not allowed on this queue"


def _unchanged(container: JSON, original: JSON | None, key: str) -> bool:
    return original is not None and container.get(key) == original.get(key)


def _container(
    container: JSON, original: JSON | None, settings: PluginSettings, stack_images: set[str]
) -> Iterator[str]:
    name = container.get("name")
    image = container.get("image")
    if not image:
        yield f"container {name!r} has no image"
    elif not _unchanged(container, original, "image") and not (
        image in stack_images or any(fnmatch.fnmatchcase(image, p) for p in settings.allowed_images)
    ):
        allowed = ", ".join(settings.allowed_images) or "none"
        yield f"container {name!r}: image {image!r} is not allowed on this queue (allowed: {allowed})"
    if not _unchanged(container, original, "securityContext"):
        yield from _security(name, container.get("securityContext") or {}, settings)
    if not settings.allow_host_namespaces and not _unchanged(container, original, "ports"):
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                yield f"container {name!r}: hostPort is not allowed on this queue"
    if not _unchanged(container, original, "resources"):
        yield from _resources(name, container.get("resources") or {}, settings.max_resources)


def _security(name: Any, context: JSON, settings: PluginSettings) -> Iterator[str]:
    if not settings.allow_privileged:
        if context.get("privileged"):
            yield f"container {name!r}: privileged mode is not allowed on this queue"
        if context.get("allowPrivilegeEscalation"):
            yield f"container {name!r}: allowPrivilegeEscalation is not allowed on this queue"
        if context.get("procMount") == "Unmasked":
            yield f"container {name!r}: procMount Unmasked is not allowed on this queue"
    added = (context.get("capabilities") or {}).get("add") or []
    extra = sorted(set(map(str, added)) - set(settings.allowed_capabilities))
    if extra:
        yield f"container {name!r}: adding capabilities {', '.join(extra)} is not allowed on this queue"


def _resources(name: Any, resources: JSON, maxima: dict[str, str]) -> Iterator[str]:
    for kind in ("requests", "limits"):
        for resource, value in (resources.get(kind) or {}).items():
            if resource not in maxima:
                continue
            try:
                asked = quantity(value)
            except ValueError:
                yield f"container {name!r}: {kind}.{resource} {value!r} is not a quantity"
                continue
            if asked > quantity(maxima[resource]):
                yield (
                    f"container {name!r}: {kind}.{resource} {value} is above this queue's "
                    f"maximum {maxima[resource]}"
                )
