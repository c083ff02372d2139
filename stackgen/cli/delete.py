"""``stackgen delete``."""

from __future__ import annotations

from typing import Any

import click

from stackgen.cli import options as opts
from stackgen.cli.apply import echo_line
from stackgen.cli.errors import handle_errors
from stackgen.common.output import notice


@click.command("delete")
@click.argument(
    "overlay", required=False, type=click.Path(file_okay=True, dir_okay=True, path_type=str)
)
@click.option("--name", default=None, help="Stack name (instead of OVERLAY).")
@click.option(
    "--namespace",
    default=None,
    help="Stack namespace (instead of OVERLAY; default: the name, as in stack.yaml).",
)
@opts.kube_context
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@click.option(
    "--wait",
    is_flag=True,
    help="Wait until everything is gone (the namespace waits for its agents' grace period).",
)
@click.option(
    "--timeout",
    type=click.IntRange(min=1),
    default=600,
    show_default=True,
    metavar="SECONDS",
    help="How long --wait waits.",
)
@click.option(
    "--keep-namespace",
    is_flag=True,
    help="Keep the stack's namespace (and anything else in it); delete the stack's "
    "objects in it one by one.",
)
@click.option(
    "--ignore-not-found",
    is_flag=True,
    help="Succeed when the cluster has no object of the stack.",
)
@handle_errors
def command(
    overlay: str | None,
    name: str | None,
    namespace: str | None,
    kubeconfig: str | None,
    context: str | None,
    dry_run: bool,
    wait: bool,
    timeout: int,
    keep_namespace: bool,
    ignore_not_found: bool,
) -> None:
    """Delete every object of a stack from the cluster, and nothing else.

    The stack is OVERLAY's (built, not validated, to learn its name and namespace) or
    --name/--namespace's. Its objects are those labelled stackgen.io/stack=<name>.<namespace>
    in its namespace, kube-system and cluster-wide. The external-metrics APIService goes
    first (a namespace cannot finish terminating while an APIService whose backend is gone
    exists), the stack's namespace last, with everything in it: running agents get SIGTERM
    and finish their job within their grace period.

    \b
    Examples:
      stackgen delete overlays/example
      stackgen delete --name example --namespace buildkite --dry-run
      stackgen delete overlays/example --wait --context staging
    """
    from stackgen.deploy import DeleteOptions, Kubectl, StackRef, delete_stack, identify

    if (overlay is None) == (name is None):
        raise click.UsageError("give either OVERLAY or --name (with --namespace)")
    if overlay is None and name is not None and not _dns_label(name):
        raise click.BadParameter("must be a DNS label (a-z, 0-9, -)", param_hint="--name")
    cluster = Kubectl(kubeconfig=kubeconfig, context=context)
    built: list[dict[str, Any]] = []
    if overlay is not None:
        from stackgen.pipeline import BuildOptions, build

        result = build(overlay, BuildOptions(validate=False))
        for message in result.notices:
            notice(message)
        built = result.objects
        stack = identify(built, source=overlay, name=None, namespace=namespace)
        source = overlay
    else:
        assert name is not None
        stack = StackRef(name, namespace or name)
        source = f"stack {name}"
    delete_stack(
        stack,
        cluster,
        DeleteOptions(
            dry_run=dry_run,
            wait=wait,
            timeout=timeout,
            keep_namespace=keep_namespace,
            ignore_not_found=ignore_not_found,
        ),
        source=source,
        built=built,
        echo=echo_line,
    )


def _dns_label(value: str) -> bool:
    import re

    return bool(re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", value))
