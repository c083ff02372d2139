"""Compose: a checked stack becomes a kustomize tree, one feature at a time.

:func:`compose` starts the tree (bases, components, the overlay's copy), lets each
feature add what it needs to the stack's kustomization (data, never text):

* :mod:`.token` the agent token, :mod:`.git_credentials`, :mod:`.ssh`,
* :mod:`.dispatcher` the webhook token, the dispatcher and its generated config,
* :mod:`.hooks` the agents' env and hooks, :mod:`.queues` one kustomization per queue,
* :mod:`.mirrors` git mirror refreshes, :mod:`.adapter` the metrics adapter,
* :mod:`.monitoring` alert rules, the Grafana dashboard, ServiceMonitors/PodMonitors,

then writes the frame (:mod:`.kustomization`: the Namespace, the root and stack
kustomizations).  The tree is self-contained: plain ``kustomize build`` of it gives the
same stack as ``stackgen build``, so a rendered tree can be read, committed and used
without stackgen.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from stackgen.common.names import DIND_IMAGE, STACKGEN_IMAGE
from stackgen.compose.adapter import add_metrics_adapter
from stackgen.compose.dispatcher import (
    add_dispatcher,
    add_webhook,
    check_dispatcher_config,
    dispatcher_config,
)
from stackgen.compose.git_credentials import add_git_credentials
from stackgen.compose.hooks import add_agent_env_and_hooks
from stackgen.compose.kustomization import Kustomization, namespace_object, write_root
from stackgen.compose.mirrors import add_git_mirrors
from stackgen.compose.monitoring import add_monitoring
from stackgen.compose.queues import add_queues
from stackgen.compose.ssh import add_ssh_key
from stackgen.compose.token import add_agent_token
from stackgen.compose.tree import Composed, Tree, finish_tree, image_entry, split_image, start_tree
from stackgen.stack.model import Stack

__all__ = [
    "Composed",
    "check_dispatcher_config",
    "compose",
    "dispatcher_config",
    "split_image",
]


def compose(
    stack: Stack, dest: Path, *, environ: Mapping[str, str] | None = None, check: bool = True
) -> Composed:
    """Write the kustomize tree for ``stack`` into ``dest`` (created; must not exist).

    ``check=False`` leaves the generated dispatcher config's schema check to the caller
    (``Composed.dispatcher_config``).
    """
    environ = os.environ if environ is None else environ
    tree = start_tree(stack, dest)
    kz = Kustomization(
        namespace=stack.namespace,
        resources=["namespace.yaml", "../bases/agent"],
        images=[image_entry(STACKGEN_IMAGE, stack.dispatcher.image)],
    )
    add_agent_token(tree, kz, environ)
    add_git_credentials(tree, kz)
    add_ssh_key(tree, kz)
    add_webhook(tree, kz, environ)
    add_agent_env_and_hooks(tree, kz)
    add_queues(tree, kz)
    add_git_mirrors(tree, kz)
    add_metrics_adapter(tree, kz)
    add_dispatcher(tree, kz, check=check)
    add_monitoring(tree, kz)
    _add_dind(tree, kz)
    _add_user_extras(tree, kz)
    tree.write_yaml(
        "stack/kustomization.yaml",
        kz.to_dict(),
        comment="Everything namespaced of the stack (the kube-system part lives in ../kube-system).",
    )
    tree.write_yaml(
        "stack/namespace.yaml",
        namespace_object(stack),
        comment="Pod Security admission: agents run at `baseline` (`privileged` with a dind "
        "queue);\nstackgen's own pods meet `restricted` (checked by `stackgen validate`).",
    )
    if not stack.owns_namespace:
        tree.notice(
            f"namespace {stack.namespace!r} exists in every cluster and is not the stack's own: "
            "its Pod Security labels are left as they are"
        )
    write_root(tree, stack)
    return finish_tree(tree)


def _add_dind(tree: Tree, kz: Kustomization) -> None:
    """Queues with a Docker-in-Docker sidecar lower the namespace's Pod Security: say so."""
    stack = tree.stack
    if not stack.uses_dind:
        return
    kz.images.append(image_entry(DIND_IMAGE, stack.dind.image))
    if not stack.owns_namespace:
        return
    tree.notice(
        f"Pod Security of namespace {stack.namespace!r} lowered to privileged: "
        f"dind on queue(s) {', '.join(stack.dind_queue_names)}"
    )


def _add_user_extras(tree: Tree, kz: Kustomization) -> None:
    """The user's own resources, components and patches (paths into the overlay's copy)."""
    extras = tree.stack.kustomize
    overlay = tree.stack.overlay
    kz.resources += [tree.overlay_rel(overlay / p) for p in extras.resources]
    kz.components += [tree.overlay_rel(overlay / p) for p in extras.components]
    for patch in extras.patches:
        patch = dict(patch)
        if "path" in patch:
            patch["path"] = tree.overlay_rel(overlay / patch["path"])
        kz.patches.append(patch)
