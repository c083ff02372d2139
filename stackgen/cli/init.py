"""``stackgen init``."""

from __future__ import annotations

import re
from pathlib import Path

import click

from stackgen.cli import options as opts
from stackgen.cli.errors import handle_errors
from stackgen.common.names import DEFAULT_KUBERNETES_VERSION
from stackgen.common.output import err

_QUEUE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)(?::(?P<mode>hpa|dispatch|exact))?$")


def _queue(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> list[dict[str, str]]:
    queues = []
    for value in values or ("default",):
        match = _QUEUE.match(value)
        if not match:
            raise click.BadParameter(
                f"{value!r}: want NAME or NAME:MODE (mode hpa, dispatch or exact)"
            )
        queues.append({"name": match["name"], "mode": match["mode"] or "dispatch"})
    return queues


@click.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--queue",
    "queues",
    multiple=True,
    callback=_queue,
    metavar="NAME[:MODE]",
    help="A queue to serve (repeatable); MODE is hpa, dispatch (default) or exact.",
)
@click.option("--name", default=None, help="Stack name (default: the folder's name).")
@click.option("--namespace", default=None, help="Namespace (default: the stack name).")
@click.option(
    "--kubernetes-version",
    default=DEFAULT_KUBERNETES_VERSION,
    show_default=True,
    metavar="X.Y.Z",
    callback=opts.check_version,
)
@handle_errors
def command(
    directory: Path,
    queues: list[dict[str, str]],
    name: str | None,
    namespace: str | None,
    kubernetes_version: str,
) -> None:
    """Scaffold a new stack in DIRECTORY: stack.yaml, placeholder secrets, a hook.

    Secret files go under DIRECTORY/secrets/, which the generated .gitignore keeps out
    of git. For hpa queues, a CA and the metrics adapter's certificate are generated.

    \b
    Examples:
      stackgen init overlays/my-stack --queue default:dispatch
      stackgen init overlays/ci --queue linux:hpa --queue deploy:exact
    """
    from stackgen.stack.scaffold import scaffold

    shown = scaffold(
        directory,
        queues,
        name=name,
        namespace=namespace,
        kubernetes_version=kubernetes_version,
    )
    err(f"created {shown}: put your agent token in {shown}/secrets/agent-token, then")
    err(f"  stackgen apply {shown}")
