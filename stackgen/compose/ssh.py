"""An SSH deploy key: a ``kubernetes.io/ssh-auth`` Secret with the key and known_hosts.

Its component mounts it; stackgen's hook starts ssh-agent and pins known_hosts.
"""

from __future__ import annotations

from stackgen.compose.kustomization import Kustomization, generated
from stackgen.compose.tree import Tree


def add_ssh_key(tree: Tree, kz: Kustomization) -> None:
    """The ``ssh-key`` component and its Secret, when stack.yaml names a key."""
    key = tree.stack.secrets.ssh_key
    if key is None:
        return
    kz.components.append("../components/ssh-key")
    kz.secret_generator.append(
        generated(
            "buildkite-ssh-key",
            "buildkite-agent",
            "ssh-key",
            type="kubernetes.io/ssh-auth",
            files=[
                f"ssh-privatekey={tree.overlay_rel(key.private_key_file)}",
                f"known_hosts={tree.overlay_rel(key.known_hosts_file)}",
            ],
        )
    )
