"""``stackgen render``."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import click

from stackgen.cli import options as opts
from stackgen.cli.errors import handle_errors
from stackgen.common.errors import ConfigError, Problem
from stackgen.common.output import err, notice


@click.command("render")
@opts.overlay_argument
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write the kustomize tree into (must not exist, or be empty).",
)
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@opts.policy
@click.option(
    "--validate/--no-validate",
    default=True,
    show_default=True,
    help="Build and validate the tree before writing it.",
)
@handle_errors
def command(overlay: str, out_dir: Path, force: bool, policy: str, validate: bool) -> None:
    """Write the kustomize tree stackgen composes for OVERLAY into OUT.

    Plain `kustomize build OUT` then gives the same stack as `stackgen build OVERLAY`.
    Secret files are copied too, and OUT/.gitignore keeps them out of git.

    \b
    Examples:
      stackgen render overlays/example --out rendered/example
      kustomize build rendered/example | kubectl apply -f -
    """
    from stackgen.common.files import display_path
    from stackgen.compose import compose
    from stackgen.pipeline import BuildOptions, build
    from stackgen.stack.load import load_stack

    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise ConfigError(
            Problem(
                display_path(out_dir), "", "exists and is not empty (use --force to replace it)"
            )
        )
    if validate:
        result = build(overlay, BuildOptions(policy=policy))
        for message in result.notices:
            notice(message)
    stack = load_stack(overlay)
    parent = out_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".stackgen-render-", dir=parent))
    try:
        composed = compose(stack, staging / "tree")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        (staging / "tree").rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    err(
        f"rendered {display_path(Path(overlay))} into {display_path(out_dir)} "
        f"(secret files under {', '.join(composed.secret_paths)} are git-ignored there)"
    )
