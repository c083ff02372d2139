"""``stackgen delete``: remove every object of one stack, and nothing else.

    list the stack's objects (label and namespace) → delete API registrations first →
    cluster-scoped and kube-system objects → the Namespace last, with what is in it

The external-metrics APIService is shared by every stack of the cluster: it is handed
over first (pointed at another stack's adapter, or deleted when no stackgen adapter is
left: :mod:`.apiservice`); while an APIService exists whose backend is gone, the
namespace controller cannot list every API and the namespace hangs in Terminating. The Namespace is the stack's own (stackgen made it and labelled it), so
deleting it removes everything in it, also what is not the stack's; ``keep_namespace``
deletes the stack's objects in it one by one instead and leaves it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stackgen.common.errors import ClusterError, Problem
from stackgen.common.output import notice, out
from stackgen.deploy.cluster import Cluster
from stackgen.deploy.members import list_members
from stackgen.deploy.plan import (
    Deletion,
    ObjectRef,
    StackRef,
    plan_delete,
    recorded_kinds,
    shared_to_release,
    stack_namespaces,
)

Echo = Callable[[str], None]


@dataclass
class DeleteOptions:
    """How to delete."""

    #: The server checks each deletion; nothing is deleted.
    dry_run: bool = False
    #: Wait until every deleted object is gone (the Namespace waits for its pods' grace).
    wait: bool = False
    #: Seconds to wait for, with ``wait``.
    timeout: float = 600
    #: Leave the stack's Namespace (and what else is in it); delete the stack's objects in it.
    keep_namespace: bool = False
    #: A stack with no objects on the cluster is not an error.
    ignore_not_found: bool = False


def _echo(line: str) -> None:
    out(line, nl=True)


def delete_stack(
    stack: StackRef,
    cluster: Cluster,
    options: DeleteOptions | None = None,
    *,
    source: str,
    built: Sequence[Mapping[str, Any]] = (),
    echo: Echo = _echo,
    note: Echo = notice,
) -> list[Deletion]:
    """Delete the stack's objects; return what was (or, as a dry run, would be) deleted.

    ``built`` is the stack's build when there is one: its kinds and namespaces are
    searched too. ``source`` names the stack in messages (its overlay).

    Raises:
        ClusterError: nothing of the stack was found (unless ``ignore_not_found``), or a
            deletion failed or did not finish in time.
        ToolError: kubectl is missing or cannot reach the cluster.

    """
    options = options or DeleteOptions()
    types, warning = cluster.resource_types()
    if warning:
        note(f"some API groups did not answer (their kinds are not searched): {warning}")
    namespace_stub = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": stack.namespace},
    }
    namespace_obj = next(iter(cluster.get_existing([namespace_stub])), None)
    kinds = {*recorded_kinds(namespace_obj), *(ObjectRef.of(o).group_kind for o in built)}
    namespaces = stack_namespaces(stack, built)
    members = list_members(cluster, types, stack, kinds=kinds, namespaces=namespaces)
    for ref in shared_to_release(stack, (), members):
        if options.dry_run:
            echo(f"would hand over {ref} (shared by every stack)")
        else:
            echo(f"{ref}: {cluster.hand_over_apiservice(stack.namespace)} (shared by every stack)")
    deletions = plan_delete(
        stack, members, extra_namespaces=namespaces, keep_namespace=options.keep_namespace
    )
    if not deletions:
        message = (
            f"no objects of stack {stack} found (label {stack.selector}); a stack deployed "
            "by a stackgen without that label gets it from one `stackgen apply`"
        )
        if options.ignore_not_found:
            note(message)
            return []
        raise ClusterError(message)

    done: list[Deletion] = []
    problems = []
    for deletion in deletions:
        outcome = cluster.delete(types[deletion.ref.group_kind], deletion, dry_run=options.dry_run)
        if outcome.status == "failed":
            problems.append(Problem(source, str(deletion.ref), outcome.message))
            continue
        done.append(deletion)
        verb = "would delete" if options.dry_run else "deleted"
        echo(f"{verb} {deletion.ref}" + (f" ({deletion.note})" if deletion.note else ""))
    if problems:
        raise ClusterError(problems)
    if options.dry_run:
        note(f"dry run of deleting stack {stack}: nothing was deleted")
        return done
    if options.wait:
        error = cluster.wait_deleted(
            [(types[d.ref.group_kind], d.ref) for d in done], options.timeout
        )
        if error:
            raise ClusterError(f"deleted, but not gone within {options.timeout:.0f}s: {error}")
    elif any(d.ref.kind == "Namespace" for d in done):
        note(
            f"namespace {stack.namespace} is terminating: agents get SIGTERM and finish the "
            "job they run within their grace period (--wait waits for it)"
        )
    note(f"deleted stack {stack}: {len(done)} objects")
    return done


__all__ = ["DeleteOptions", "delete_stack"]
