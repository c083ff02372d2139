"""How an ``exact`` queue runs steps that carry the ``kubernetes`` plugin: one model.

``stack.yaml``'s ``queues[].kubernetesPlugin`` states it (defaults from the schema);
``stackgen build`` writes it into the dispatcher's config with :meth:`to_dict`, and the
dispatcher reads it back with :meth:`from_dict` and enforces it
(:mod:`stackgen.dispatcher.podspec`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stackgen.common.defaults import stack_default


def _default(key: str) -> Any:
    return stack_default(f"queues.kubernetesPlugin.{key}")


@dataclass(frozen=True)
class PluginSettings:
    """The guard rails of one queue's plugin steps (all off by default but the images)."""

    #: Run plugin steps at all (False: fail them on Buildkite with the reason).
    enabled: bool = _default("enabled")
    #: Shell-style patterns of the images a step may run.
    allowed_images: tuple[str, ...] = tuple(_default("allowedImages"))
    allow_privileged: bool = _default("allowPrivileged")
    allow_host_namespaces: bool = _default("allowHostNamespaces")
    allow_host_path: bool = _default("allowHostPath")
    allowed_capabilities: tuple[str, ...] = tuple(_default("allowedCapabilities"))
    #: ``{"requests": {...}, "limits": {...}}`` for containers that state none.
    default_resources: dict[str, dict[str, str]] = field(
        default_factory=lambda: _default("defaultResources"), hash=False
    )
    #: Bounds of any container's requests and limits, by resource name.
    max_resources: dict[str, str] = field(
        default_factory=lambda: _default("maxResources"), hash=False
    )
    #: Strategic merge patch applied to every plugin step's pod spec first.
    pod_spec_patch: dict[str, Any] = field(
        default_factory=lambda: _default("podSpecPatch"), hash=False
    )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PluginSettings:
        """From a schema-valid ``kubernetesPlugin`` mapping; missing keys take the defaults."""
        base = cls()
        resources = data.get("defaultResources")
        return cls(
            enabled=data.get("enabled", base.enabled),
            allowed_images=tuple(data.get("allowedImages", base.allowed_images)),
            allow_privileged=data.get("allowPrivileged", base.allow_privileged),
            allow_host_namespaces=data.get("allowHostNamespaces", base.allow_host_namespaces),
            allow_host_path=data.get("allowHostPath", base.allow_host_path),
            allowed_capabilities=tuple(data.get("allowedCapabilities", base.allowed_capabilities)),
            default_resources=(
                {k: {n: str(q) for n, q in v.items()} for k, v in resources.items()}
                if resources is not None
                else base.default_resources
            ),
            max_resources={
                k: str(v) for k, v in data.get("maxResources", base.max_resources).items()
            },
            pod_spec_patch=copy.deepcopy(dict(data.get("podSpecPatch", base.pod_spec_patch))),
        )

    def to_dict(self) -> dict[str, Any]:
        """Keyed as in the schemas."""
        return {
            "enabled": self.enabled,
            "allowedImages": list(self.allowed_images),
            "allowPrivileged": self.allow_privileged,
            "allowHostNamespaces": self.allow_host_namespaces,
            "allowHostPath": self.allow_host_path,
            "allowedCapabilities": list(self.allowed_capabilities),
            "defaultResources": copy.deepcopy(self.default_resources),
            "maxResources": dict(self.max_resources),
            "podSpecPatch": copy.deepcopy(self.pod_spec_patch),
        }
