"""An in-memory :class:`stackgen.deploy.cluster.Cluster` for unit tests of apply and delete.

It keeps objects by reference, gives them UIDs and resource versions, records a
``stackgen`` managedFields entry when it applies one, honours label selectors
(``key=value``), namespaces, UID preconditions and dry runs, and records every call that
changes something, so a test can say exactly what was deleted, how and in which order.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stackgen.common.identity import STACK_LABEL
from stackgen.deploy.apply import kubectl_name
from stackgen.deploy.cluster import ApplyRun, DeleteOutcome, ResourceType
from stackgen.deploy.plan import STACKGEN_KINDS, Deletion, ObjectRef

JSON = dict[str, Any]

_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "APIService"}
_VERSIONS = {
    "": "v1",
    "apps": "v1",
    "batch": "v1",
    "autoscaling": "v2",
    "policy": "v1",
    "coordination.k8s.io": "v1",
    "rbac.authorization.k8s.io": "v1",
    "apiregistration.k8s.io": "v1",
    "networking.k8s.io": "v1",
}


def resource_type(group: str, kind: str) -> ResourceType:
    """A plausible ResourceType for a kind (plural: lower-case kind + s)."""
    return ResourceType(
        group=group,
        version=_VERSIONS.get(group, "v1"),
        kind=kind,
        plural=kind.lower() + "s",
        namespaced=kind not in _CLUSTER_SCOPED,
        verbs=frozenset({"create", "delete", "get", "list", "patch", "update", "watch"}),
    )


@dataclass
class FakeCluster:
    """Objects in memory; ``fail_apply`` makes the server reject objects it returns text for."""

    objects: dict[ObjectRef, JSON] = field(default_factory=dict)
    kinds: set[tuple[str, str]] = field(
        default_factory=lambda: (
            {gk for gk in STACKGEN_KINDS if gk != ("cert-manager.io", "Certificate")}
            | {("batch", "Job"), ("networking.k8s.io", "NetworkPolicy")}
        )
    )
    fail_apply: Callable[[Mapping[str, Any]], str | None] = lambda obj: None
    warning: str | None = None
    #: (ref, propagation, dry_run) of every delete call, in order.
    deletes: list[tuple[ObjectRef, str, bool]] = field(default_factory=list)
    applies: int = 0
    managed_field_writes: list[ObjectRef] = field(default_factory=list)
    #: The leaving namespace of every hand-over of the shared APIService, in order.
    hand_overs: list[str] = field(default_factory=list)
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # ------------------------------------------------------------------ test helpers

    def put(self, obj: Mapping[str, Any], **meta: Any) -> JSON:
        """Store an object as another client made it (extra metadata in ``meta``)."""
        stored = copy.deepcopy(dict(obj))
        stored.setdefault("metadata", {}).update(meta)
        stored["metadata"].setdefault("uid", f"uid-{next(self._counter)}")
        stored["metadata"]["resourceVersion"] = str(next(self._counter))
        self.objects[ObjectRef.of(stored)] = stored
        return stored

    def has(self, kind: str, name: str, namespace: str = "") -> bool:
        """Whether an object of this kind and name exists."""
        return any((r.kind, r.name, r.namespace) == (kind, name, namespace) for r in self.objects)

    # ------------------------------------------------------------------ Cluster

    def resource_types(self) -> tuple[dict[tuple[str, str], ResourceType], str | None]:
        return {gk: resource_type(*gk) for gk in self.kinds}, self.warning

    def get_existing(self, objects: Sequence[Mapping[str, Any]]) -> list[JSON]:
        found = []
        for obj in objects:
            live = self.objects.get(ObjectRef.of(obj))
            if live is not None:
                found.append(copy.deepcopy(live))
        return found

    def list_objects(
        self, types: Sequence[ResourceType], namespace: str | None, selector: str
    ) -> list[JSON]:
        key, _, value = selector.partition("=")
        kinds = {(t.group, t.kind) for t in types}
        return [
            copy.deepcopy(obj)
            for ref, obj in sorted(self.objects.items())
            if ref.group_kind in kinds
            and (namespace is None or ref.namespace == namespace)
            and ((obj.get("metadata") or {}).get("labels") or {}).get(key) == value
        ]

    def apply(
        self, objects: Sequence[Mapping[str, Any]], *, dry_run: bool, force: bool
    ) -> ApplyRun:
        self.applies += 1
        applied, errors = [], []
        for obj in objects:
            error = self.fail_apply(obj)
            if error:
                errors.append(error)
                continue
            applied.append(kubectl_name(obj))
            if dry_run:
                continue
            ref = ObjectRef.of(obj)
            before = self.objects.get(ref)
            stored = copy.deepcopy(dict(obj))
            meta = stored.setdefault("metadata", {})
            old_meta = (before or {}).get("metadata") or {}
            meta["uid"] = old_meta.get("uid") or f"uid-{next(self._counter)}"
            meta["ownerReferences"] = old_meta.get("ownerReferences")
            if not meta["ownerReferences"]:
                del meta["ownerReferences"]
            unchanged = before is not None and _content(before) == _content(stored)
            if unchanged:
                meta["resourceVersion"] = old_meta["resourceVersion"]
                meta["managedFields"] = old_meta.get("managedFields")
            else:
                meta["resourceVersion"] = str(next(self._counter))
                others = [
                    e for e in old_meta.get("managedFields") or [] if e["manager"] != "stackgen"
                ]
                meta["managedFields"] = [
                    *others,
                    {"manager": "stackgen", "operation": "Apply", "time": meta["resourceVersion"]},
                ]
            self.objects[ref] = stored
        return ApplyRun(ok=not errors, applied=tuple(applied), error="\n".join(errors))

    def diff(self, objects: Sequence[Mapping[str, Any]], *, force: bool) -> str:
        return f"diff of {len(objects)} objects\n"

    def replace_managed_fields(
        self, rtype: ResourceType, live: Mapping[str, Any], entries: list[JSON]
    ) -> str | None:
        ref = ObjectRef.of(live)
        self.objects[ref]["metadata"]["managedFields"] = entries
        self.managed_field_writes.append(ref)
        return None

    def hand_over_apiservice(self, leaving_namespace: str) -> str:
        """As :func:`stackgen.deploy.apiservice.hand_over_apiservice` does on a cluster."""
        self.hand_overs.append(leaving_namespace)
        ref = next((r for r in self.objects if r.kind == "APIService"), None)
        if ref is None:
            return "absent"
        live = self.objects[ref]
        if live["spec"]["service"]["namespace"] != leaving_namespace:
            return "kept"
        adapters = sorted(
            r for r in self.objects
            if (r.kind, r.name) == ("Service", "stackgen-metrics-adapter")
            and r.namespace != leaving_namespace
        )  # fmt: skip
        if not adapters:
            del self.objects[ref]
            return "deleted"
        service = self.objects[adapters[0]]
        live["spec"]["service"]["namespace"] = adapters[0].namespace
        live["metadata"]["labels"].update(
            {k: v for k, v in service["metadata"]["labels"].items() if k == STACK_LABEL}
        )
        return f"handed over to {adapters[0].namespace}"

    def delete(self, rtype: ResourceType, deletion: Deletion, *, dry_run: bool) -> DeleteOutcome:
        self.deletes.append((deletion.ref, deletion.propagation, dry_run))
        live = self.objects.get(deletion.ref)
        if live is None:
            return DeleteOutcome("gone")
        if deletion.uid and live["metadata"].get("uid") != deletion.uid:
            return DeleteOutcome("failed", "the UID in the precondition does not match")
        if not dry_run:
            del self.objects[deletion.ref]
            if deletion.ref.kind == "Namespace":
                for ref in [r for r in self.objects if r.namespace == deletion.ref.name]:
                    del self.objects[ref]
        return DeleteOutcome("deleted")

    def wait_deleted(
        self, items: Sequence[tuple[ResourceType, ObjectRef]], timeout: float
    ) -> str | None:
        left = [ref for _, ref in items if ref in self.objects]
        return f"still there: {left}" if left else None


def _content(obj: Mapping[str, Any]) -> JSON:
    """An object without the server's bookkeeping."""
    meta = {
        k: v
        for k, v in (obj.get("metadata") or {}).items()
        if k not in ("uid", "resourceVersion", "managedFields", "ownerReferences")
    }
    return {**obj, "metadata": meta}
