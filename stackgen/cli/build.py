"""``stackgen build``."""

from __future__ import annotations

import click

from stackgen.cli import options as opts
from stackgen.cli.errors import handle_errors
from stackgen.common.output import notice, out


@click.command("build")
@opts.overlay_argument
@opts.kubernetes_version
@opts.server_dry_run
@opts.ignore_missing_schemas
@opts.skip_missing_secrets
@opts.policy
@click.option(
    "--validate/--no-validate",
    default=True,
    show_default=True,
    help="Validate with kubeconform and stackgen's policies before printing.",
)
@handle_errors
def command(
    overlay: str,
    kubernetes_version: str | None,
    server_dry_run: bool,
    ignore_missing_schemas: bool,
    skip_missing_secrets: bool,
    policy: str,
    validate: bool,
) -> None:
    """Build OVERLAY into a validated stack on stdout.

    Nothing is printed unless every check passed, so a pipe into kubectl applies
    nothing on error.

    \b
    Examples:
      stackgen build overlays/example | kubectl apply -f -
      stackgen build overlays/example --server-dry-run > stack.yaml
      stackgen build overlays/example --skip-missing-secrets > /dev/null   # CI, no secrets
      stackgen build path/to/kustomize-overlay --policy none   # not an agent stack
    """
    from stackgen.pipeline import BuildOptions, build

    result = build(
        overlay,
        BuildOptions(
            kubernetes_version=kubernetes_version,
            validate=validate,
            server_dry_run=server_dry_run,
            ignore_missing_schemas=ignore_missing_schemas,
            skip_missing_secrets=skip_missing_secrets,
            policy=policy,
        ),
    )
    for message in result.notices:
        notice(message)
    if result.placeholders:
        notice(
            "the stack printed holds placeholder secrets (--skip-missing-secrets): "
            "validate it, never apply it"
        )
    out(result.manifest)
