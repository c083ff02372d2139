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

#: Written into every rendered folder: `--force` replaces only folders that hold it.
STAMP = ".stackgen-render"
STAMP_TEXT = (
    "This folder was written by `stackgen render`; `stackgen render --force` may replace it.\n"
)


@click.command("render")
@opts.overlay_argument
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write the kustomize tree into (must not exist, or be empty).",
)
@click.option(
    "--force",
    is_flag=True,
    help=f"Replace OUT if stackgen rendered it before (it holds {STAMP}); nothing else.",
)
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
    Secret files are copied too, and OUT/.gitignore keeps them out of git.  OUT must lie
    outside the overlay; --force replaces only a folder stackgen rendered (it holds
    .stackgen-render), never anything else.

    \b
    Examples:
      stackgen render overlays/example --out rendered/example
      kustomize build rendered/example | kubectl apply -f -
    """
    from stackgen.common.files import display_path
    from stackgen.compose import compose
    from stackgen.pipeline import BuildOptions, build
    from stackgen.stack.load import load_stack

    check_out(Path(overlay), out_dir, force)
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
        (staging / "tree" / STAMP).write_text(STAMP_TEXT, encoding="utf-8")
        if out_dir.exists():
            out_dir.rename(staging / "replaced")
        (staging / "tree").rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    err(
        f"rendered {display_path(Path(overlay))} into {display_path(out_dir)} "
        f"(secret files under {', '.join(composed.secret_paths)} are git-ignored there)"
    )


def check_out(overlay: Path, out_dir: Path, force: bool) -> None:
    """Refuse an OUT that would hold, or sit in, the overlay, and one stackgen did not render.

    Runs before anything is read or written.
    """
    from stackgen.common.files import display_path

    shown = display_path(out_dir)

    def refuse(message: str) -> None:
        raise ConfigError(Problem(shown, "", message))

    out_real, overlay_real = out_dir.resolve(), overlay.resolve()
    if out_real == overlay_real or overlay_real in out_real.parents:
        refuse("--out is inside the overlay: render into a folder outside it")
    if out_real in overlay_real.parents:
        refuse("--out holds the overlay: render into a folder beside it")
    if out_dir.is_symlink():
        refuse("--out is a symbolic link: give the folder itself")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        refuse("exists and is not a folder")
    if not any(out_dir.iterdir()):
        return
    if not force:
        refuse("exists and is not empty (use --force to replace a folder stackgen rendered)")
    stamp = out_dir / STAMP
    if stamp.is_symlink() or not stamp.is_file():
        refuse(
            f"was not rendered by stackgen (no {STAMP} in it): --force replaces only "
            "folders stackgen rendered; remove it yourself or choose another folder"
        )
