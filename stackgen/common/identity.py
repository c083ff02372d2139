"""Which stack an object belongs to: the ``stackgen.io/stack`` label.

Every object of a stack carries ``stackgen.io/stack: <name>.<namespace>`` in its own
``metadata.labels`` (never in pod or Job templates, never in selectors), so the label
marks exactly the objects a build made: not the ReplicaSets, Pods and Jobs that
controllers and the dispatcher make from templates, which carry the
``app.kubernetes.io/*`` labels too. ``stackgen apply`` prunes, and ``stackgen delete``
deletes, only objects with this label's exact value.

The namespace is part of the value because cluster-scoped objects and the kube-system
RoleBinding have no namespace of their own: two stacks with one name in two namespaces
must not claim each other's ClusterRoleBindings.
"""

from __future__ import annotations

import hashlib

#: The label on every object of a stack; its value is :func:`stack_id`.
STACK_LABEL = "stackgen.io/stack"

_MAX_LABEL_VALUE = 63


def stack_id(name: str, namespace: str) -> str:
    """The ``stackgen.io/stack`` value of stack ``name`` in ``namespace``.

    ``<name>.<namespace>`` (names and namespaces are DNS labels, without dots, so the
    pair reads back unambiguously); past 63 characters, both are shortened and a hash of
    the pair keeps the value unique: ``<name…>.<namespace…>.<hash>``.
    """
    value = f"{name}.{namespace}"
    if len(value) <= _MAX_LABEL_VALUE:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:10]
    room = (_MAX_LABEL_VALUE - len(digest) - 2) // 2
    return f"{name[:room].rstrip('-')}.{namespace[:room].rstrip('-')}.{digest}"


__all__ = ["STACK_LABEL", "stack_id"]
