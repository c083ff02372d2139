"""``stackgen apply``: server-side apply a built stack, then prune what it no longer has.

    identify the stack → read the live objects → refuse another stack's → take kubectl
    apply's fields over → server-side apply (field manager ``stackgen``) → list the
    stack's objects → plan the prune → delete, API registrations first

Nothing is pruned unless every object applied: a half-applied stack may still use what
the new build dropped (the old token Secret, until the new one exists). See
:mod:`stackgen.deploy.plan` for what may be pruned and how.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from stackgen.common.errors import ClusterError, Problem
from stackgen.common.identity import STACK_LABEL
from stackgen.common.output import notice, out
from stackgen.deploy.cluster import Cluster, ResourceType
from stackgen.deploy.members import (
    INSTANCE_LABEL,
    foreign_apiservice_problems,
    foreign_owner_problems,
    identify,
    list_members,
    mark,
)
from stackgen.deploy.plan import (
    Deletion,
    ObjectRef,
    StackRef,
    is_shared,
    labels_of,
    plan_prune,
    recorded_kinds,
    shared_to_release,
    stack_namespaces,
)
from stackgen.deploy.ssa import FIELD_MANAGER, adopted_managed_fields, summarize_error

JSON = dict[str, Any]
Echo = Callable[[str], None]


@dataclass
class ApplyOptions:
    """How to apply."""

    #: Send everything to the server as a dry run: it checks, nothing is persisted.
    dry_run: bool = False
    #: Print what would change (``kubectl diff``) and what would be pruned; change nothing.
    diff: bool = False
    #: Delete the stack's objects the build no longer has.
    prune: bool = True
    #: Take fields over from other field managers instead of reporting conflicts.
    force_conflicts: bool = False
    #: The stack's name and namespace, for plain overlays whose build does not say.
    name: str | None = None
    namespace: str | None = None


@dataclass
class ApplyReport:
    """What an apply did (or, as a dry run, would do)."""

    stack: StackRef
    created: list[ObjectRef] = field(default_factory=list)
    configured: list[ObjectRef] = field(default_factory=list)
    unchanged: list[ObjectRef] = field(default_factory=list)
    adopted: list[ObjectRef] = field(default_factory=list)
    pruned: list[Deletion] = field(default_factory=list)


def _echo(line: str) -> None:
    out(line, nl=True)


def kubectl_name(obj: Mapping[str, Any]) -> str:
    """How ``kubectl apply -o name`` prints an object: ``deployment.apps/name``."""
    ref = ObjectRef.of(obj)
    kind = ref.kind.lower() + (f".{ref.group}" if ref.group else "")
    return f"{kind}/{ref.name}"


def apply_stack(
    objects: Sequence[Mapping[str, Any]],
    cluster: Cluster,
    options: ApplyOptions | None = None,
    *,
    source: str,
    echo: Echo = _echo,
    note: Echo = notice,
) -> ApplyReport:
    """Apply a built stack's objects and prune the stack's objects it no longer has.

    ``echo`` gets one line per object applied or pruned, ``note`` the notices.

    Raises:
        ConfigError: the build does not say which stack it is.
        ClusterError: an object belongs to another stack, the server rejected an object
            or reported a conflict (then nothing is pruned), or a deletion failed.
        ToolError: kubectl is missing or cannot reach the cluster.

    """
    options = options or ApplyOptions()
    stack = identify(objects, source=source, name=options.name, namespace=options.namespace)
    report = ApplyReport(stack)
    changing = not (options.dry_run or options.diff)
    types, warning = cluster.resource_types()
    if warning:
        note(f"some API groups did not answer (their kinds are not pruned): {warning}")
    _raise(_unserved(objects, types, source))

    live = {ObjectRef.of(o): o for o in cluster.get_existing(objects)}
    _raise(foreign_owner_problems(live.values(), stack, source))
    _raise(foreign_apiservice_problems(live.values(), source))
    namespace_obj = live.get(ObjectRef("", "Namespace", "", stack.namespace))
    old_kinds = recorded_kinds(namespace_obj)
    desired = _namespaces_first(mark(objects, stack, old_kinds))

    takeovers = _takeovers(desired, live, stack)
    report.adopted = [ObjectRef.of(o) for o, _ in takeovers]
    if takeovers:
        if changing:
            _take_over(cluster, types, takeovers, source)
        note(
            f"{'took' if changing else 'would take'} over {len(takeovers)} objects from "
            f"`kubectl apply`: field manager {FIELD_MANAGER!r} owns their fields from now on"
        )

    missing_namespaces = {
        ObjectRef.of(o).name
        for o in desired
        if ObjectRef.of(o).kind == "Namespace" and ObjectRef.of(o) not in live
    }
    if options.diff:
        checked = [o for o in desired if ObjectRef.of(o).namespace not in missing_namespaces]
        echo(cluster.diff(checked, force=options.force_conflicts or bool(takeovers)).rstrip("\n"))
    else:
        _apply(cluster, desired, live, options, takeovers, missing_namespaces, source, note)

    kinds = {*old_kinds, *(ObjectRef.of(o).group_kind for o in desired)}
    members = list_members(
        cluster, types, stack, kinds=kinds, namespaces=stack_namespaces(stack, desired)
    )
    if not options.diff:
        _report_applied(report, desired, live, members, changing, echo)
    if options.prune:
        _release_shared(cluster, stack, desired, members, options, echo)
        report.pruned = _prune(cluster, types, stack, desired, members, options, source, echo)
    counts = (
        f"{len(report.created)} created, {len(report.configured)} configured, "
        f"{len(report.unchanged)} unchanged, {len(report.pruned)} pruned"
    )
    if changing:
        note(f"applied stack {stack}: {counts}")
    else:
        note(f"dry run of stack {stack}: nothing was changed")
    return report


def _unserved(
    objects: Sequence[Mapping[str, Any]], types: Mapping[Any, Any], source: str
) -> list[Problem]:
    """One problem per object whose kind the cluster does not serve."""
    return [
        Problem(
            source,
            str(ObjectRef.of(o)),
            f"the cluster serves no {o.get('kind')} in {o.get('apiVersion')} "
            "(is its CustomResourceDefinition installed?)",
        )
        for o in objects
        if ObjectRef.of(o).group_kind not in types
    ]


def _namespaces_first(objects: list[JSON]) -> list[JSON]:
    # kubectl applies in order; kustomize already sorts so, a plain overlay may not.
    first = {("", "Namespace"), ("apiextensions.k8s.io", "CustomResourceDefinition")}
    return sorted(objects, key=lambda o: ObjectRef.of(o).group_kind not in first)


def _raise(problems: list[Problem]) -> None:
    if problems:
        raise ClusterError(problems)


def _takeovers(
    desired: Sequence[JSON], live: Mapping[ObjectRef, JSON], stack: StackRef
) -> list[tuple[JSON, list[JSON]]]:
    """Objects an earlier build of this stack was `kubectl apply`-ed as, and their new fields.

    Only objects labelled as this stack's (by an earlier build): kubectl's fields in them
    came from stackgen's output. A Namespace you made with your own `kubectl apply` keeps
    your fields (a label of yours would otherwise go with the next apply).
    """
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    found = []
    for obj in desired:
        current = live.get(ObjectRef.of(obj))
        if current is None:
            continue
        labels = labels_of(current)
        ours = labels.get(STACK_LABEL) == stack.id or labels.get(INSTANCE_LABEL) == stack.name
        if not ours and not is_shared(current):
            continue
        entries = adopted_managed_fields(
            (current.get("metadata") or {}).get("managedFields") or [], now=now
        )
        if entries is not None:
            found.append((current, entries))
    return found


def _take_over(
    cluster: Cluster,
    types: Mapping[tuple[str, str], ResourceType],
    takeovers: list[tuple[JSON, list[JSON]]],
    source: str,
) -> None:
    problems = []
    for current, entries in takeovers:
        ref = ObjectRef.of(current)
        error = cluster.replace_managed_fields(types[ref.group_kind], current, entries)
        if error:
            problems.append(
                Problem(source, str(ref), f"cannot take over kubectl apply's fields: {error}")
            )
    _raise(problems)


def _apply(
    cluster: Cluster,
    desired: list[JSON],
    live: Mapping[ObjectRef, JSON],
    options: ApplyOptions,
    takeovers: list[tuple[JSON, list[JSON]]],
    missing_namespaces: set[str],
    source: str,
    note: Echo,
) -> None:
    force = options.force_conflicts
    batches: list[tuple[list[JSON], bool]] = [(desired, force)]
    if options.dry_run:
        # The server can only dry-run objects in namespaces that exist.
        checked = [o for o in desired if ObjectRef.of(o).namespace not in missing_namespaces]
        if len(checked) < len(desired):
            note(
                f"dry run: {len(desired) - len(checked)} objects in namespace(s) "
                f"{', '.join(sorted(missing_namespaces))} (not created yet) are not checked "
                "by the server"
            )
        # What the take-over would own is applied as if owned (with force).
        adopted = {ObjectRef.of(o) for o, _ in takeovers}
        batches = [
            ([o for o in checked if ObjectRef.of(o) in adopted], True),
            ([o for o in checked if ObjectRef.of(o) not in adopted], force),
        ]
    problems: list[Problem] = []
    for batch, batch_force in batches:
        if batch:
            problems += _apply_batch(cluster, batch, options.dry_run, batch_force, source)
    _raise(problems)


def _apply_batch(
    cluster: Cluster, batch: list[JSON], dry_run: bool, force: bool, source: str
) -> list[Problem]:
    run = cluster.apply(batch, dry_run=dry_run, force=force)
    if run.ok:
        return []
    # kubectl goes on past a failed object and names the ones it applied; each of the
    # others is applied alone (server-side apply is idempotent) to say what is wrong.
    printed = Counter(run.applied)
    problems = []
    for obj in batch:
        name = kubectl_name(obj)
        if printed[name] > 0:
            printed[name] -= 1
            continue
        single = cluster.apply([obj], dry_run=dry_run, force=force)
        if not single.ok:
            problems.append(Problem(source, str(ObjectRef.of(obj)), summarize_error(single.error)))
    return problems or [Problem(source, "", summarize_error(run.error))]


def _report_applied(
    report: ApplyReport,
    desired: Sequence[JSON],
    live: Mapping[ObjectRef, JSON],
    members: Sequence[JSON],
    changing: bool,
    echo: Echo,
) -> None:
    after = {ObjectRef.of(o): (o.get("metadata") or {}).get("resourceVersion") for o in members}
    for obj in desired:
        ref = ObjectRef.of(obj)
        before = live.get(ref)
        if before is None:
            report.created.append(ref)
            echo(f"{'created' if changing else 'would create'} {ref}")
        elif not changing:
            report.configured.append(ref)
            echo(f"would apply {ref}")
        elif (before.get("metadata") or {}).get("resourceVersion") != after.get(ref):
            report.configured.append(ref)
            echo(f"configured {ref}")
        else:
            report.unchanged.append(ref)
            echo(f"unchanged {ref}")


def _release_shared(
    cluster: Cluster,
    stack: StackRef,
    desired: Sequence[JSON],
    members: Sequence[JSON],
    options: ApplyOptions,
    echo: Echo,
) -> None:
    """A build that no longer serves the shared APIService hands it over, never deletes it."""
    for ref in shared_to_release(stack, desired, members):
        if options.dry_run or options.diff:
            echo(f"would hand over {ref} (shared by every stack)")
        else:
            echo(f"{ref}: {cluster.hand_over_apiservice(stack.namespace)} (shared by every stack)")


def _prune(
    cluster: Cluster,
    types: Mapping[tuple[str, str], ResourceType],
    stack: StackRef,
    desired: Sequence[JSON],
    members: Sequence[JSON],
    options: ApplyOptions,
    source: str,
    echo: Echo,
) -> list[Deletion]:
    done: list[Deletion] = []
    problems = []
    for deletion in plan_prune(stack, desired, members):
        note = f" ({deletion.note})" if deletion.note else ""
        if options.diff:
            echo(f"would prune {deletion.ref}{note}")
            done.append(deletion)
            continue
        outcome = cluster.delete(types[deletion.ref.group_kind], deletion, dry_run=options.dry_run)
        if outcome.status == "failed":
            problems.append(Problem(source, str(deletion.ref), f"prune: {outcome.message}"))
            continue
        done.append(deletion)
        echo(f"{'pruned' if not options.dry_run else 'would prune'} {deletion.ref}{note}")
    _raise(problems)
    return done


__all__ = ["ApplyOptions", "ApplyReport", "apply_stack", "kubectl_name"]
