"""The tree writer: a folder that plain ``kustomize build`` turns into the stack.

A composed tree holds stackgen's ``bases/`` and ``components/``, a copy of the user's
overlay (``stack/overlay/``), the secrets read from files or the environment
(``stack/secrets/``), and the generated kustomizations and patches: data (dicts) dumped
with :func:`stackgen.common.yamlio.dump`, never text with a user's string pasted in.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stackgen.common import overlayfs, yamlio
from stackgen.common.resources import data_dir
from stackgen.stack.model import SecretSource, Stack

#: Inside the tree: the stack's own kustomization, the secrets, the overlay's copy.
STACK_DIR = "stack"
SECRET_DIR = "stack/secrets"
OVERLAY_DIR = "stack/overlay"


@dataclass
class Composed:
    """A composed kustomize tree and what the user should hear about it."""

    root: Path
    notices: list[str] = field(default_factory=list)
    #: Paths (relative to root) that hold secret material.
    secret_paths: list[str] = field(default_factory=list)
    #: The generated dispatcher config when ``compose(check=False)`` left its check to the
    #: caller (:func:`stackgen.compose.dispatcher.check_dispatcher_config`).
    dispatcher_config: dict[str, Any] | None = None


class Tree:
    """Writes files into a composed tree, refusing to leave it."""

    def __init__(self, root: Path, stack: Stack) -> None:
        self.root = root
        self.stack = stack
        self.composed = Composed(root=root)

    def write(self, rel: str, text: str, *, mode: int = 0o644) -> None:
        """Write ``rel`` (relative to the tree's root)."""
        path = self.root / rel
        if ".." in path.parts:
            # Names from stack.yaml become folder names; the build composes before the
            # schema check ends (it runs while kustomize does), so refuse to leave the tree.
            raise ValueError(f"refusing to write outside the composed tree: {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        path.chmod(mode)

    def write_yaml(self, rel: str, data: Any, *, comment: str = "") -> None:
        """Dump ``data`` into ``rel``; ``comment`` (stackgen's words only) heads the file."""
        header = "".join(f"# {line}\n" for line in comment.splitlines())
        self.write(rel, header + yamlio.dump(data))

    def write_secret(self, name: str, value: str) -> str:
        """A secret value into ``stack/secrets/NAME`` (0600); its path from ``stack/``."""
        self.write(f"{SECRET_DIR}/{name}", value, mode=0o600)
        return f"secrets/{name}"

    def overlay_rel(self, path: Path) -> str:
        """Where a user file lands, relative to ``stack/`` (``overlay/<path in overlay>``)."""
        rel = path.resolve().relative_to(self.stack.overlay.resolve())
        return f"overlay/{rel.as_posix()}"

    def notice(self, message: str) -> None:
        """Something the user should hear (printed on stderr by the CLI)."""
        self.composed.notices.append(message)


def start_tree(stack: Stack, dest: Path) -> Tree:
    """Create ``dest`` (it must not exist) with the bases, components and the overlay's copy."""
    dest.mkdir(parents=True, exist_ok=False)
    dest.chmod(0o700)
    shutil.copytree(data_dir("bases"), dest / "bases")
    shutil.copytree(data_dir("components"), dest / "components")
    (dest / STACK_DIR).mkdir()
    _copy_overlay(stack.overlay, dest / OVERLAY_DIR)
    tree = Tree(dest, stack)
    for path, content in stack.placeholders.items():
        # Absent secret files (--skip-missing-secrets): the throwaway stand-ins.
        rel = f"{OVERLAY_DIR}/{tree.overlay_rel(path).removeprefix('overlay/')}"
        tree.write(rel, content.decode("utf-8"), mode=0o600)
    tree.composed.secret_paths += [f"{OVERLAY_DIR}/", f"{SECRET_DIR}/"]
    return tree


def finish_tree(tree: Tree) -> Composed:
    """Write the tree's ``.gitignore`` (the secret material in it)."""
    tree.write(
        ".gitignore",
        "# Secret material copied from the overlay: never commit it.\n"
        + "".join(f"/{p}\n" for p in tree.composed.secret_paths),
    )
    return tree.composed


def _copy_overlay(overlay: Path, dest: Path) -> None:
    """Copy the overlay's regular files (links inside it followed); refuse anything else."""
    overlayfs.copy(overlayfs.scan(overlay).check(), dest)


def secret_value(stack: Stack, source: SecretSource, environ: Mapping[str, str]) -> str:
    """A token from its file or environment variable, stripped (a newline breaks headers)."""
    if source.file is not None:
        return stack.secret_bytes(source.file).decode("utf-8").strip()
    assert source.env is not None, "an existing Secret has no value to read"
    return environ[source.env].strip()


def split_image(image: str) -> dict[str, str]:
    """Split an image reference into kustomize ``images`` fields (newName/newTag/digest)."""
    out: dict[str, str] = {}
    name = image
    if "@" in name:
        name, out["digest"] = name.split("@", 1)
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
        out["newTag"] = tag
    return {"newName": name, **out}


def image_entry(base_name: str, image: str) -> dict[str, str]:
    """A kustomize ``images`` entry retagging ``base_name`` to ``image``."""
    return {"name": base_name, **split_image(image)}
