"""Git credentials: a Secret from the user's git-credentials file, and its component.

The component mounts it; stackgen's hook copies it to a private in-memory file (git's
store helper writes back).  With ``existingSecret`` the component's volume reads that
Secret instead (its key mapped to the file name the hook reads); nothing is generated.
"""

from __future__ import annotations

from stackgen.compose.kustomization import Kustomization, generated
from stackgen.compose.token import point_agents_at
from stackgen.compose.tree import Tree

#: The volume of the component, and the file the hook reads from it.
_VOLUME = "git-credentials"


def add_git_credentials(tree: Tree, kz: Kustomization) -> None:
    """The ``git-credentials`` component and its Secret (generated, or an existing one)."""
    secrets = tree.stack.secrets
    path = secrets.git_credentials_file
    existing = secrets.git_credentials_secret
    if path is None and existing is None:
        return
    kz.components.append("../components/git-credentials")
    if existing is not None:
        point_agents_at(tree, kz, _VOLUME, existing.name, {existing.key: "git-credentials"})
        return
    assert path is not None
    kz.secret_generator.append(
        generated(
            "buildkite-git-credentials",
            "buildkite-agent",
            "git-credentials",
            files=[f"git-credentials={tree.overlay_rel(path)}"],
        )
    )
