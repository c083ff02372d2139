"""An SSH deploy key: a ``kubernetes.io/ssh-auth`` Secret with the key and known_hosts.

The key is written normalised (LF line ends, one final newline: ssh-add refuses a key
saved with CRLF).  Its component mounts it; stackgen's hook starts ssh-agent and pins
known_hosts.  With ``existingSecret`` the component's volume reads that Secret (its keys mapped to the file
names the hook reads); nothing is generated.
"""

from __future__ import annotations

from stackgen.compose.kustomization import Kustomization, generated
from stackgen.compose.token import point_agents_at
from stackgen.compose.tree import Tree
from stackgen.stack.secret_files import normalized_ssh_key


def add_ssh_key(tree: Tree, kz: Kustomization) -> None:
    """The ``ssh-key`` component and its Secret (generated, or an existing one)."""
    key = tree.stack.secrets.ssh_key
    if key is None:
        return
    kz.components.append("../components/ssh-key")
    existing = key.existing_secret
    if existing is not None:
        items = {
            existing.private_key_key: "ssh-privatekey",
            existing.known_hosts_key: "known_hosts",
        }
        point_agents_at(tree, kz, "ssh-key", existing.name, items)
        return
    assert key.private_key_file is not None and key.known_hosts_file is not None
    # Written normalised (LF, one final newline): ssh-add refuses a CRLF key.
    raw = tree.stack.secret_bytes(key.private_key_file)
    private_key = tree.write_secret("ssh-privatekey", normalized_ssh_key(raw).decode("utf-8"))
    kz.secret_generator.append(
        generated(
            "buildkite-ssh-key",
            "buildkite-agent",
            "ssh-key",
            type="kubernetes.io/ssh-auth",
            files=[
                f"ssh-privatekey={private_key}",
                f"known_hosts={tree.overlay_rel(key.known_hosts_file)}",
            ],
        )
    )
