"""Deploying a built stack: ``stackgen apply`` (with pruning) and ``stackgen delete``.

``kubectl apply -f -`` never deletes: a removed queue would keep running and every token
rotation would leave the old content-hashed Secret behind. ``stackgen apply`` does what a
Helm user expects of ``helm upgrade``, ``stackgen delete`` what they expect of
``helm uninstall``::

    build (as `stackgen build`) → identify the stack → server-side apply → list the
    stack's objects (label stackgen.io/stack + namespace) → prune what the build lacks

* :mod:`~stackgen.deploy.plan`: pure: membership, what to prune or delete, order, policy;
* :mod:`~stackgen.deploy.members`: which stack a build is, its objects on a cluster;
* :mod:`~stackgen.deploy.ssa`: taking over from ``kubectl apply``, conflict messages;
* :mod:`~stackgen.deploy.cluster`: the :class:`Cluster` seam and its kubectl implementation;
* :mod:`~stackgen.deploy.apply`, :mod:`~stackgen.deploy.delete`: the two operations.

Why not kubectl's ApplySet pruning (``kubectl apply --prune --applyset``): its parent
object must be namespaced and created before anything else, so the first apply of a new
stack fails (its namespace does not exist yet); with ``--namespace`` kubectl refuses the
stack's kube-system RoleBinding; and one ``--cascade`` covers every pruned object, so a
removed queue's CronJob takes its running Jobs along (background) or a removed Deployment
leaves its pods running forever (orphan). docs/operations.md has the details.
"""

from __future__ import annotations

from stackgen.deploy.apply import ApplyOptions, ApplyReport, apply_stack
from stackgen.deploy.cluster import Cluster, Kubectl
from stackgen.deploy.delete import DeleteOptions, delete_stack
from stackgen.deploy.members import identify
from stackgen.deploy.plan import Deletion, ObjectRef, StackRef, plan_delete, plan_prune

__all__ = [
    "ApplyOptions",
    "ApplyReport",
    "Cluster",
    "DeleteOptions",
    "Deletion",
    "Kubectl",
    "ObjectRef",
    "StackRef",
    "apply_stack",
    "delete_stack",
    "identify",
    "plan_delete",
    "plan_prune",
]
