"""Pure planning: which objects are the stack's, what to prune, in which order, how.

Nothing here talks to a cluster: the functions take the built objects and the live
objects a listing returned, and say what to delete. That is where the safety rules live,
so they are unit-tested without a cluster:

* an object is a member of a stack only if its own ``stackgen.io/stack`` label has the
  stack's exact value, and it lives in the stack's namespace, in kube-system, or (for
  plain overlays) in a namespace the build uses, or is cluster-scoped;
* an object with ``ownerReferences`` is never deleted: its owner's garbage collection
  decides (the dispatcher's job-acquisition Secrets, EndpointSlices, ...);
* pruning never deletes a Namespace (only ``stackgen delete`` does);
* nothing shared (label ``stackgen.io/shared: "true"``: the one external-metrics
  APIService of the cluster) is ever deleted as one stack's: the stack serving it hands
  it over instead (:mod:`stackgen.deploy.apiservice`);
* deletions run in an order that keeps the cluster healthy: API registrations first (a
  namespace cannot finish terminating while an APIService it served is unavailable),
  then workloads, then what they use (config, then RBAC), the Namespace last;
* a CronJob is deleted with ``propagationPolicy: Orphan``: the Jobs it started are
  running builds; they finish and their ``ttlSecondsAfterFinished`` collects them.
  Everything else goes with ``Background``: a removed Deployment's pods get SIGTERM and
  their grace period.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stackgen.common.identity import STACK_LABEL, stack_id
from stackgen.common.names import SHARED_LABEL

JSON = dict[str, Any]

KUBE_SYSTEM = "kube-system"

#: (group, kind) of every kind a stack.yaml build can contain. Listed even when the new
#: build has none of a kind, so that the last one of it is pruned.
STACKGEN_KINDS: tuple[tuple[str, str], ...] = (
    ("", "Namespace"),
    ("", "ServiceAccount"),
    ("", "ConfigMap"),
    ("", "Secret"),
    ("", "Service"),
    ("apps", "Deployment"),
    ("batch", "CronJob"),
    ("autoscaling", "HorizontalPodAutoscaler"),
    ("policy", "PodDisruptionBudget"),
    ("coordination.k8s.io", "Lease"),
    ("rbac.authorization.k8s.io", "Role"),
    ("rbac.authorization.k8s.io", "RoleBinding"),
    ("rbac.authorization.k8s.io", "ClusterRole"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    ("apiregistration.k8s.io", "APIService"),
    ("cert-manager.io", "Certificate"),
)

#: Deletion phases, lowest first; kinds not listed go in phase 3.
_PHASE: dict[tuple[str, str], int] = {
    # Registrations that make the API server call into the stack.
    ("apiregistration.k8s.io", "APIService"): 0,
    ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"): 0,
    ("admissionregistration.k8s.io", "MutatingWebhookConfiguration"): 0,
    # What runs, and what scales it.
    ("autoscaling", "HorizontalPodAutoscaler"): 1,
    ("apps", "Deployment"): 2,
    ("apps", "StatefulSet"): 2,
    ("apps", "DaemonSet"): 2,
    ("batch", "CronJob"): 2,
    ("batch", "Job"): 2,
    # Phase 3: Services, PodDisruptionBudgets, Leases, Certificates, anything else.
    ("", "ConfigMap"): 4,
    ("", "Secret"): 4,
    # Permissions last, so that terminating workloads keep theirs.
    ("rbac.authorization.k8s.io", "RoleBinding"): 5,
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): 5,
    ("rbac.authorization.k8s.io", "Role"): 6,
    ("rbac.authorization.k8s.io", "ClusterRole"): 6,
    ("", "ServiceAccount"): 6,
    ("", "Namespace"): 9,
}
_DEFAULT_PHASE = 3

#: Kinds deleted with ``propagationPolicy: Orphan``.
ORPHANED_KINDS = frozenset({("batch", "CronJob")})


@dataclass(frozen=True, order=True)
class ObjectRef:
    """One object's identity, independent of its API version."""

    group: str
    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> ObjectRef:
        """The reference of a built or live object."""
        meta = obj.get("metadata") or {}
        return cls(
            group=api_group(str(obj.get("apiVersion", ""))),
            kind=str(obj.get("kind", "")),
            namespace=str(meta.get("namespace") or ""),
            name=str(meta.get("name", "")),
        )

    @property
    def group_kind(self) -> tuple[str, str]:
        """``(group, kind)``."""
        return (self.group, self.kind)

    def __str__(self) -> str:
        # `CronJob buildkite/buildkite-agent-builds`, `APIService v1beta1.external…`
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"


def api_group(api_version: str) -> str:
    """``apps`` for ``apps/v1``, ``""`` for ``v1``."""
    return api_version.rpartition("/")[0]


def group_kind_name(group: str, kind: str) -> str:
    """``Kind.group`` (``Kind`` for the core group), as ApplySet writes group-kinds."""
    return f"{kind}.{group}" if group else kind


def parse_group_kind(text: str) -> tuple[str, str]:
    """The inverse of :func:`group_kind_name`."""
    kind, _, group = text.strip().partition(".")
    return (group, kind)


@dataclass(frozen=True)
class StackRef:
    """Which stack: its name and namespace, and the label value they make."""

    name: str
    namespace: str

    @property
    def id(self) -> str:
        """The ``stackgen.io/stack`` label value."""
        return stack_id(self.name, self.namespace)

    @property
    def selector(self) -> str:
        """The label selector of the stack's objects."""
        return f"{STACK_LABEL}={self.id}"

    def __str__(self) -> str:
        return f"{self.name} (namespace {self.namespace})"


@dataclass(frozen=True)
class Deletion:
    """One object to delete, and how."""

    ref: ObjectRef
    api_version: str
    uid: str
    propagation: str  # "Orphan" or "Background"

    @property
    def note(self) -> str:
        """What happens to the object's dependents, for the user."""
        if self.propagation == "Orphan":
            return "the Jobs it started keep running"
        if self.ref.group_kind == ("", "Namespace"):
            return "with everything in it"
        return ""


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    """An object's labels (empty when it has none)."""
    return dict((obj.get("metadata") or {}).get("labels") or {})


def stack_namespaces(stack: StackRef, desired: Iterable[Mapping[str, Any]] = ()) -> set[str]:
    """Namespaces whose objects may belong to the stack."""
    found = {stack.namespace, KUBE_SYSTEM}
    found |= {ObjectRef.of(o).namespace for o in desired} - {""}
    return found


def is_member(obj: Mapping[str, Any], stack: StackRef, namespaces: Collection[str]) -> bool:
    """Whether a live object belongs to the stack (label *and* namespace agree)."""
    if labels_of(obj).get(STACK_LABEL) != stack.id:
        return False
    namespace = ObjectRef.of(obj).namespace
    return not namespace or namespace in namespaces


def is_shared(obj: Mapping[str, Any]) -> bool:
    """Whether an object is shared by every stack of the cluster (never one stack's to delete)."""
    return labels_of(obj).get(SHARED_LABEL) == "true"


def shared_to_release(
    stack: StackRef, desired: Sequence[Mapping[str, Any]], live: Iterable[Mapping[str, Any]]
) -> list[ObjectRef]:
    """Shared objects the stack serves that ``desired`` no longer has: to hand over.

    ``desired`` is empty when the whole stack is deleted.
    """
    namespaces = stack_namespaces(stack, desired)
    wanted = {ObjectRef.of(o) for o in desired}
    return sorted(
        ObjectRef.of(o)
        for o in live
        if is_shared(o) and is_member(o, stack, namespaces) and ObjectRef.of(o) not in wanted
    )


def _deletable(obj: Mapping[str, Any]) -> bool:
    meta = obj.get("metadata") or {}
    return not meta.get("ownerReferences") and not meta.get("deletionTimestamp")


def _deletion(obj: Mapping[str, Any]) -> Deletion:
    ref = ObjectRef.of(obj)
    return Deletion(
        ref=ref,
        api_version=str(obj.get("apiVersion", "")),
        uid=str((obj.get("metadata") or {}).get("uid", "")),
        propagation="Orphan" if ref.group_kind in ORPHANED_KINDS else "Background",
    )


def deletion_order(deletions: Iterable[Deletion]) -> list[Deletion]:
    """Registrations first, the Namespace last; stable by reference within a phase."""
    return sorted(deletions, key=lambda d: (_PHASE.get(d.ref.group_kind, _DEFAULT_PHASE), d.ref))


def plan_prune(
    stack: StackRef, desired: Sequence[Mapping[str, Any]], live: Iterable[Mapping[str, Any]]
) -> list[Deletion]:
    """What to delete after applying ``desired``: the stack's live objects it lacks.

    ``live`` may hold anything a listing returned; only members of the stack count, and
    of those never a Namespace or an object another object owns.
    """
    namespaces = stack_namespaces(stack, desired)
    wanted = {ObjectRef.of(o) for o in desired}
    found: dict[ObjectRef, Deletion] = {}
    for obj in live:
        ref = ObjectRef.of(obj)
        if (
            ref in wanted
            or ref.group_kind == ("", "Namespace")
            or is_shared(obj)
            or not is_member(obj, stack, namespaces)
            or not _deletable(obj)
        ):
            continue
        found[ref] = _deletion(obj)
    return deletion_order(found.values())


def plan_delete(
    stack: StackRef,
    live: Iterable[Mapping[str, Any]],
    *,
    extra_namespaces: Collection[str] = (),
    keep_namespace: bool = False,
) -> list[Deletion]:
    """What deleting the whole stack deletes, in order.

    When the stack's Namespace is a member (stackgen made it) and not kept, it goes last
    and takes every namespaced object in it along; the members elsewhere (kube-system,
    cluster-scoped) are deleted one by one first.
    """
    namespaces = {stack.namespace, KUBE_SYSTEM, *extra_namespaces}
    members = [
        o for o in live if is_member(o, stack, namespaces) and _deletable(o) and not is_shared(o)
    ]
    namespace_obj = next(
        (o for o in members if ObjectRef.of(o) == ObjectRef("", "Namespace", "", stack.namespace)),
        None,
    )
    found: dict[ObjectRef, Deletion] = {}
    for obj in members:
        ref = ObjectRef.of(obj)
        if ref.group_kind == ("", "Namespace"):
            if obj is namespace_obj and not keep_namespace:
                found[ref] = _deletion(obj)
            continue
        if namespace_obj is not None and not keep_namespace and ref.namespace == stack.namespace:
            continue  # deleted with the namespace
        found[ref] = _deletion(obj)
    return deletion_order(found.values())


def recorded_kinds(namespace_obj: Mapping[str, Any] | None) -> set[tuple[str, str]]:
    """The group-kinds an earlier ``stackgen apply`` recorded on the stack's Namespace."""
    if not namespace_obj:
        return set()
    text = ((namespace_obj.get("metadata") or {}).get("annotations") or {}).get(KINDS_ANNOTATION)
    if not text:
        return set()
    return {parse_group_kind(part) for part in str(text).split(",") if part.strip()}


#: On the stack's Namespace: every group-kind ``stackgen apply`` applied in the stack
#: (comma-separated ``Kind.group``, like ApplySet's ``contains-group-kinds``), so a later
#: apply also lists kinds the new build no longer has (your own extra resources).
KINDS_ANNOTATION = "stackgen.io/applied-kinds"


def kinds_record(kinds: Iterable[tuple[str, str]]) -> str:
    """The :data:`KINDS_ANNOTATION` value for these group-kinds."""
    return ",".join(sorted({group_kind_name(g, k) for g, k in kinds}))


__all__ = [
    "KINDS_ANNOTATION",
    "KUBE_SYSTEM",
    "ORPHANED_KINDS",
    "STACKGEN_KINDS",
    "Deletion",
    "ObjectRef",
    "StackRef",
    "api_group",
    "deletion_order",
    "is_member",
    "is_shared",
    "kinds_record",
    "plan_delete",
    "plan_prune",
    "recorded_kinds",
    "shared_to_release",
    "stack_namespaces",
]
