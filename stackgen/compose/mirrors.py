"""Git mirrors: one refresh CronJob per mirror, and the objects they share."""

from __future__ import annotations

from stackgen.compose.kustomization import Kustomization, json_patch, selector_labels
from stackgen.compose.tree import Tree

#: Where the refresh CronJob's arguments name the mirror (checked by a ``test`` op).
_MIRROR_ARG = "/spec/jobTemplate/spec/template/spec/containers/0/args/5"


def add_git_mirrors(tree: Tree, kz: Kustomization) -> None:
    """``bases/git-mirror`` and a ``git-mirrors/<name>/`` kustomization per mirror."""
    mirrors = tree.stack.git_mirrors
    if mirrors:
        kz.resources.append("../bases/git-mirror")
    for index, mirror in enumerate(mirrors):
        mkz = Kustomization(
            resources=["../../../bases/git-mirror-refresh"],
            name_suffix=f"-{mirror.name}",
            labels=[selector_labels("stackgen.io/git-mirror", mirror.name)],
        )
        mkz.patches.append(
            json_patch(
                "CronJob",
                "git-mirror",
                {"op": "replace", "path": "/spec/schedule", "value": mirror.schedule},
                {"op": "test", "path": _MIRROR_ARG, "value": "MIRROR"},
                {"op": "replace", "path": _MIRROR_ARG, "value": mirror.name},
            )
        )
        tree.write_yaml(
            f"stack/git-mirrors/{mirror.name}/kustomization.yaml",
            mkz.to_dict(),
            comment=f"Refresh CronJob of stack.yaml's gitMirrors[{index}].",
        )
        kz.resources.append(f"git-mirrors/{mirror.name}")
