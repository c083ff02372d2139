"""A stack's identity and membership: which stack a build is, and its objects on a cluster.

A build says which stack it is: every object of a ``stack.yaml`` build carries the
``stackgen.io/stack`` label and ``app.kubernetes.io/instance: <name>``, and the build has
the stack's Namespace. A plain kustomize overlay says it through the instance label and
its namespace, or ``--name``/``--namespace``; ``stackgen apply`` then puts the
``stackgen.io/stack`` label on its objects itself.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from stackgen.common.apiservice import apiservice_owner
from stackgen.common.errors import ConfigError, Problem
from stackgen.common.identity import STACK_LABEL
from stackgen.common.names import ADAPTER_APISERVICE, SHARED_LABEL
from stackgen.deploy.cluster import Cluster, ResourceType, ResourceTypes
from stackgen.deploy.plan import (
    KINDS_ANNOTATION,
    KUBE_SYSTEM,
    STACKGEN_KINDS,
    ObjectRef,
    StackRef,
    kinds_record,
    labels_of,
)

JSON = dict[str, Any]

INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"


def identify(
    objects: Sequence[Mapping[str, Any]],
    *,
    source: str,
    name: str | None = None,
    namespace: str | None = None,
) -> StackRef:
    """The stack a build is (``name``/``namespace`` when the build cannot say).

    Raises:
        ConfigError: the build does not say which stack it is, or says otherwise than
            ``name``/``namespace``.

    """
    instances = {value for o in objects if (value := labels_of(o).get(INSTANCE_LABEL))}
    built_name = instances.pop() if len(instances) == 1 else None
    namespaces = [ObjectRef.of(o).name for o in objects if ObjectRef.of(o).kind == "Namespace"]
    if len(namespaces) != 1:
        namespaces = sorted({ObjectRef.of(o).namespace for o in objects} - {"", KUBE_SYSTEM})
    built_namespace = namespaces[0] if len(namespaces) == 1 else None
    ids = {value for o in objects if (value := labels_of(o).get(STACK_LABEL))}
    if ids and (name or namespace):
        # A stack.yaml build names itself; a different name would apply it as another stack.
        stack = StackRef(built_name or "", built_namespace or "")
        if (name and name != stack.name) or (namespace and namespace != stack.namespace):
            raise ConfigError(
                Problem(
                    source,
                    "",
                    f"the build is stack {stack.name!r} in namespace {stack.namespace!r}: "
                    "--name and --namespace are for plain kustomize overlays",
                )
            )
    final_name = name or built_name
    final_namespace = namespace or built_namespace
    if not final_name or not final_namespace:
        missing = " and ".join(
            what
            for what, value in (("--name", final_name), ("--namespace", final_namespace))
            if not value
        )
        raise ConfigError(
            Problem(
                source,
                "",
                "cannot tell which stack this is (no single app.kubernetes.io/instance "
                f"label or namespace in the build): give {missing}",
            )
        )
    stack = StackRef(final_name, final_namespace)
    if ids and ids != {stack.id}:
        raise ConfigError(
            Problem(
                source,
                "",
                f"objects of the build carry {STACK_LABEL}={sorted(ids)[0]!r}, "
                f"not {stack.id!r}: is it several stacks?",
            )
        )
    return stack


def mark(
    objects: Sequence[Mapping[str, Any]],
    stack: StackRef,
    kinds: Iterable[tuple[str, str]],
) -> list[JSON]:
    """The objects to apply: each with the stack label, the Namespace with the kinds record.

    ``kinds`` are the group-kinds recorded by earlier applies; the new record adds the
    build's own (records only grow: a kind listed in vain costs one list call's entry).
    """
    marked: list[JSON] = []
    record = kinds_record({*kinds, *(ObjectRef.of(o).group_kind for o in objects)})
    for obj in objects:
        new = copy.deepcopy(dict(obj))
        meta = new.setdefault("metadata", {})
        meta["labels"] = {**(meta.get("labels") or {}), STACK_LABEL: stack.id}
        if ObjectRef.of(new) == ObjectRef("", "Namespace", "", stack.namespace):
            meta["annotations"] = {**(meta.get("annotations") or {}), KINDS_ANNOTATION: record}
        marked.append(new)
    return marked


def foreign_owner_problems(
    live: Iterable[Mapping[str, Any]], stack: StackRef, source: str
) -> list[Problem]:
    """Objects of the build that exist and belong to another stack: never taken over.

    Without this, applying stack B would relabel stack A's object (two ``hpa`` stacks
    share the external-metrics APIService's name) and deleting B would then delete A's.
    """
    problems = []
    for obj in live:
        labels = labels_of(obj)
        owner = labels.get(STACK_LABEL)
        if labels.get(SHARED_LABEL) == "true" and labels.get(MANAGED_BY_LABEL) == "stackgen":
            continue  # shared by every stack: the stack applied last serves it
        if owner and owner != stack.id:
            problems.append(
                Problem(
                    source,
                    str(ObjectRef.of(obj)),
                    f"already exists and belongs to stack {owner!r} (label {STACK_LABEL}): "
                    "stackgen never takes over another stack's objects",
                )
            )
        elif (
            not owner
            and labels.get(MANAGED_BY_LABEL) == "stackgen"
            and labels.get(INSTANCE_LABEL) not in (None, stack.name)
        ):
            problems.append(
                Problem(
                    source,
                    str(ObjectRef.of(obj)),
                    f"already exists and belongs to stack {labels[INSTANCE_LABEL]!r} "
                    f"(label {INSTANCE_LABEL}): stackgen never takes over another stack's "
                    "objects",
                )
            )
    return problems


def foreign_apiservice_problems(live: Iterable[Mapping[str, Any]], source: str) -> list[Problem]:
    """The cluster's external-metrics APIService, when another adapter (KEDA, …) owns it."""
    problems = []
    for obj in live:
        ref = ObjectRef.of(obj)
        if (ref.kind, ref.name) != ("APIService", ADAPTER_APISERVICE):
            continue
        owner = apiservice_owner(obj)
        if not owner.stackgen:
            problems.append(Problem(source, str(ref), owner.conflict()))
    return problems


def scan_types(
    types: ResourceTypes, kinds: Iterable[tuple[str, str]]
) -> tuple[list[ResourceType], list[ResourceType]]:
    """The (namespaced, cluster-scoped) types to list: of these kinds, listable and deletable.

    Kinds the cluster does not serve (cert-manager's Certificate without cert-manager)
    have no objects to find.
    """
    chosen = sorted(
        {types[gk] for gk in {*STACKGEN_KINDS, *kinds} if gk in types},
        key=lambda t: (t.group, t.kind),
    )
    usable = [t for t in chosen if {"list", "delete"} <= t.verbs]
    return [t for t in usable if t.namespaced], [t for t in usable if not t.namespaced]


def list_members(
    cluster: Cluster,
    types: ResourceTypes,
    stack: StackRef,
    *,
    kinds: Iterable[tuple[str, str]],
    namespaces: Iterable[str],
) -> list[JSON]:
    """Live objects labelled as the stack's, in its namespaces and cluster-wide.

    The label selector does the first cut on the server; :func:`plan.is_member` checks
    label and namespace again on every object before anything is deleted.
    """
    namespaced, cluster_scoped = scan_types(types, kinds)
    found: list[JSON] = []
    for namespace in sorted(set(namespaces)):
        found += cluster.list_objects(namespaced, namespace, stack.selector)
    found += cluster.list_objects(cluster_scoped, None, stack.selector)
    return found


__all__ = [
    "foreign_owner_problems",
    "identify",
    "list_members",
    "mark",
    "scan_types",
]
