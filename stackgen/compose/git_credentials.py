"""Git credentials: a Secret from the user's git-credentials file, and its component.

The component mounts it; stackgen's hook copies it to a private in-memory file (git's
store helper writes back).
"""

from __future__ import annotations

from stackgen.compose.kustomization import Kustomization, generated
from stackgen.compose.tree import Tree


def add_git_credentials(tree: Tree, kz: Kustomization) -> None:
    """The ``git-credentials`` component and its Secret, when stack.yaml names the file."""
    path = tree.stack.secrets.git_credentials_file
    if path is None:
        return
    kz.components.append("../components/git-credentials")
    kz.secret_generator.append(
        generated(
            "buildkite-git-credentials",
            "buildkite-agent",
            "git-credentials",
            files=[f"git-credentials={tree.overlay_rel(path)}"],
        )
    )
