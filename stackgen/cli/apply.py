"""``stackgen apply``."""

from __future__ import annotations

import os
import sys

import click

from stackgen.cli import options as opts
from stackgen.cli.errors import handle_errors
from stackgen.common.output import notice, out


def echo_line(line: str) -> None:
    """Print one progress line; if the reader went away (`| head`), go on silently.

    An apply or delete stopped half-way by a closed pipe would leave the stack half
    pruned: the work matters more than its report.
    """
    try:
        out(line, nl=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


@click.command("apply")
@opts.overlay_argument
@opts.kube_context
@click.option(
    "--dry-run",
    is_flag=True,
    help="Send everything to the server as a dry run and list what would be pruned; "
    "change nothing.",
)
@click.option(
    "--diff",
    is_flag=True,
    help="Show what would change (kubectl diff, Secrets masked) and what would be pruned; "
    "change nothing.",
)
@click.option(
    "--prune/--no-prune",
    default=True,
    show_default=True,
    help="Delete the stack's objects that the build no longer has.",
)
@click.option(
    "--force-conflicts",
    is_flag=True,
    help="Take fields over from other field managers instead of reporting conflicts.",
)
@click.option(
    "--name",
    default=None,
    help="Stack name, for a plain kustomize overlay whose objects do not say.",
)
@click.option(
    "--namespace",
    default=None,
    help="Stack namespace, for a plain kustomize overlay whose objects do not say.",
)
@opts.kubernetes_version
@opts.ignore_missing_schemas
@handle_errors
def command(
    overlay: str,
    kubeconfig: str | None,
    context: str | None,
    dry_run: bool,
    diff: bool,
    prune: bool,
    force_conflicts: bool,
    name: str | None,
    namespace: str | None,
    kubernetes_version: str | None,
    ignore_missing_schemas: bool,
) -> None:
    """Build OVERLAY, apply it server-side and prune what it no longer has.

    Builds and validates exactly as `stackgen build` (nothing is applied unless every
    check passed), applies every object with server-side apply (field manager
    `stackgen`), then deletes the stack's objects that the build no longer has: a
    removed queue's CronJob (its running Jobs are kept: they finish and expire), Deployment
    and HPA, the previous content-hashed Secrets and ConfigMaps. Only objects labelled
    stackgen.io/stack=<name>.<namespace> in the stack's namespace, kube-system or
    cluster-wide are ever deleted.

    \b
    Examples:
      stackgen apply overlays/example
      stackgen apply overlays/example --dry-run
      stackgen apply overlays/example --diff --context staging
    """
    from stackgen.deploy import ApplyOptions, Kubectl, apply_stack
    from stackgen.pipeline import BuildOptions, build

    if dry_run and diff:
        raise click.UsageError("--dry-run and --diff do not go together: choose one")
    cluster = Kubectl(kubeconfig=kubeconfig, context=context)
    result = build(
        overlay,
        BuildOptions(
            kubernetes_version=kubernetes_version,
            validate=True,
            ignore_missing_schemas=ignore_missing_schemas,
        ),
    )
    for message in result.notices:
        notice(message)
    apply_stack(
        result.objects,
        cluster,
        ApplyOptions(
            dry_run=dry_run,
            diff=diff,
            prune=prune,
            force_conflicts=force_conflicts,
            name=name,
            namespace=namespace,
        ),
        source=overlay,
        echo=echo_line,
    )
