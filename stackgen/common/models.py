"""The settings the stack config and the dispatcher config share: one model each.

``stack.yaml`` states a queue's dispatch settings and the git mirrors; ``stackgen build``
writes them into the dispatcher's config with :meth:`DispatchedQueue.to_dict` and
:meth:`GitMirror.to_dict`, and the dispatcher reads them back with the matching
``from_dict``.  Both sides hold the very same dataclasses, check the same rules
(:func:`queue_problems`) and take their defaults from ``schemas/stack.schema.json``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from stackgen.common.defaults import stack_default
from stackgen.common.errors import Problem
from stackgen.common.names import GIT_MIRRORS_PATH
from stackgen.common.podsteps import PluginSettings

DispatchMode = Literal["dispatch", "exact"]
Workload = Literal["job", "pod"]


def _setting(key: str) -> Any:
    """A field whose default is the schema's for ``queues[].dispatch.<key>``."""
    return dataclasses.field(default=stack_default(f"queues.dispatch.{key}"), metadata={"key": key})


@dataclass(frozen=True)
class DispatchSettings:
    """How the dispatcher serves a ``dispatch`` or ``exact`` queue.

    Each field's metadata names its key (dotted: ``cooldown.share``) in stack.yaml's
    ``queues[].dispatch`` and in the dispatcher config's ``queues[]``: adding a setting is
    a field here and its entry in the two schemas.
    """

    #: Seconds between two looks at the queue's demand.
    poll_interval_seconds: float = _setting("pollIntervalSeconds")
    #: Share of the previous dispatch's agents that must have started before the next.
    cooldown_share: float = _setting("cooldown.share")
    #: ... unless the previous dispatch is older than this.
    cooldown_timeout_seconds: float = _setting("cooldown.timeoutSeconds")
    #: Hard limit on a dispatched Job's run time.
    active_deadline_seconds: int = _setting("activeDeadlineSeconds")
    #: Finished Jobs are garbage-collected after this long.
    ttl_seconds_after_finished: int = _setting("ttlSecondsAfterFinished")
    #: A pod not running after this long is given up on.
    pod_start_timeout_seconds: float = _setting("podStartTimeoutSeconds")
    #: Pods of a Job whose agent failed are kept this long after it finished (0: off).
    keep_failed_pods_seconds: int = _setting("keepFailedPodsSeconds")
    #: ``job``: a Kubernetes Job per dispatch; ``pod``: the dispatcher creates the pods.
    workload: Workload = dataclasses.field(
        default=stack_default("dispatcher.workload"), metadata={"key": "workload"}
    )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DispatchSettings:
        """From schema-valid data; missing keys take the schema's defaults."""
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            found = _lookup(data, field.metadata["key"])
            if found is not _MISSING:
                values[field.name] = found
        if "cooldown_share" in values:
            values["cooldown_share"] = float(values["cooldown_share"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Keyed as in the schemas, in field order (``cooldown`` as a nested mapping)."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            *parents, last = field.metadata["key"].split(".")
            target = out
            for parent in parents:
                target = target.setdefault(parent, {})
            target[last] = getattr(self, field.name)
        return out


_MISSING = object()


def _lookup(data: Mapping[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


@dataclass(frozen=True)
class DispatchedQueue:
    """A queue the dispatcher serves (a ``dispatch`` or ``exact`` queue of the stack)."""

    name: str
    mode: DispatchMode
    #: The suspended CronJob whose jobTemplate the queue's agent Jobs are made from.
    template: str
    min_agents: int
    max_agents: int
    buffer: int
    dispatch: DispatchSettings = DispatchSettings()
    git_mirror: str | None = None
    #: exact mode: steps with the ``kubernetes`` plugin and their guard rails.
    kubernetes_plugin: PluginSettings = dataclasses.field(default_factory=PluginSettings)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DispatchedQueue:
        """From one schema-valid ``queues[]`` entry of the dispatcher config."""
        return cls(
            name=data["name"],
            mode=data["mode"],
            template=data["template"],
            min_agents=data["minAgents"],
            max_agents=data["maxAgents"],
            buffer=data["buffer"],
            dispatch=DispatchSettings.from_dict(data),
            git_mirror=data.get("gitMirror"),
            kubernetes_plugin=PluginSettings.from_dict(data.get("kubernetesPlugin") or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """One ``queues[]`` entry of the dispatcher config."""
        return {
            "name": self.name,
            "mode": self.mode,
            "template": self.template,
            "minAgents": self.min_agents,
            "maxAgents": self.max_agents,
            "buffer": self.buffer,
            **self.dispatch.to_dict(),
            "gitMirror": self.git_mirror,
            **(
                {"kubernetesPlugin": self.kubernetes_plugin.to_dict()}
                if self.mode == "exact"
                else {}
            ),
        }


@dataclass(frozen=True)
class GitMirror:
    """A repository mirrored onto read-only volumes that dispatched agents mount."""

    name: str
    repository: str
    storage: str = str(stack_default("gitMirrors.storage"))
    storage_class_name: str | None = None
    #: Access mode of the mirror volumes (ReadWriteOnce: every agent on the volume's node).
    access_mode: str = stack_default("gitMirrors.accessMode")
    #: Ready mirror volumes kept besides the ones in use.
    keep: int = stack_default("gitMirrors.keep")
    #: Image of the pod that clones the repository.
    image: str = stack_default("gitMirrors.image")
    #: Cron schedule of refreshes (stack.yaml only: the refresh CronJob carries it).
    schedule: str = stack_default("gitMirrors.schedule")
    #: Where agents mount the newest ready volume.
    mount_path: str = GIT_MIRRORS_PATH

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GitMirror:
        """From a schema-valid ``gitMirrors[]`` entry (of stack.yaml or the dispatcher config)."""
        given = {
            "name": data["name"],
            "repository": data["repository"],
            "storage": str(data["storage"]) if "storage" in data else None,
            "storage_class_name": data.get("storageClassName"),
            "access_mode": data.get("accessMode"),
            "keep": data.get("keep"),
            "image": data.get("image"),
            "schedule": data.get("schedule"),
            "mount_path": data.get("mountPath"),
        }
        return cls(**{k: v for k, v in given.items() if v is not None or k == "storage_class_name"})

    def to_dict(self) -> dict[str, Any]:
        """One ``gitMirrors[]`` entry of the dispatcher config."""
        return {
            "name": self.name,
            "repository": self.repository,
            "storage": self.storage,
            "storageClassName": self.storage_class_name,
            "accessMode": self.access_mode,
            "keep": self.keep,
            "image": self.image,
            "mountPath": self.mount_path,
        }


class QueueLimits(Protocol):
    """What :func:`queue_problems` reads of a queue (stack.yaml's or the dispatcher's)."""

    @property
    def name(self) -> str: ...
    @property
    def min_agents(self) -> int: ...
    @property
    def max_agents(self) -> int: ...
    @property
    def git_mirror(self) -> str | None: ...


def queue_problems(
    queues: Iterable[QueueLimits], mirrors: Collection[str], file: str
) -> Iterator[Problem]:
    """The rules every config that lists queues follows.

    Unique names, minAgents ≤ maxAgents, and a ``gitMirror`` names a defined mirror.
    """
    seen: set[str] = set()
    for index, queue in enumerate(queues):
        where = f"queues[{index}]"
        if queue.name in seen:
            yield Problem(file, f"{where}.name", f"duplicate queue {queue.name!r}")
        seen.add(queue.name)
        if queue.min_agents > queue.max_agents:
            yield Problem(
                file,
                f"{where}.minAgents",
                f"minAgents ({queue.min_agents}) is greater than maxAgents ({queue.max_agents})",
            )
        if queue.git_mirror and queue.git_mirror not in mirrors:
            hint = f" (defined: {', '.join(sorted(mirrors))})" if mirrors else ""
            yield Problem(
                file, f"{where}.gitMirror", f"no gitMirrors entry named {queue.git_mirror!r}{hint}"
            )


def mirror_problems(mirrors: Iterable[GitMirror], file: str) -> Iterator[Problem]:
    """Each git mirror is defined once."""
    seen: set[str] = set()
    reported: set[str] = set()
    names = [m.name for m in mirrors]
    for name in names:
        if name in seen and name not in reported:
            reported.add(name)
            yield Problem(
                file, "gitMirrors", f"mirror {name!r} is defined {names.count(name)} times"
            )
        seen.add(name)
