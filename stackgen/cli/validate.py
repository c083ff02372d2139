"""``stackgen validate``."""

from __future__ import annotations

import json
from typing import Any

import click

from stackgen.cli import options as opts
from stackgen.common.errors import Problem, StackgenError, ToolError
from stackgen.common.output import err, notice, out
from stackgen.common.status import ExitStatus


@click.command("validate")
@click.argument("overlays", nargs=-1, required=True, type=click.Path(path_type=str))
@opts.kubernetes_version
@opts.server_dry_run
@opts.ignore_missing_schemas
@opts.skip_missing_secrets
@opts.policy
@click.option(
    "--output",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Report format on stdout.",
)
@click.pass_context
def command(
    ctx: click.Context,
    overlays: tuple[str, ...],
    kubernetes_version: str | None,
    server_dry_run: bool,
    ignore_missing_schemas: bool,
    skip_missing_secrets: bool,
    policy: str,
    output_format: str,
) -> None:
    """Check every OVERLAY: config schema, kustomize, kubeconform, policy.

    Prints one line per overlay and a summary; problems go to stderr, one per line.
    Exits 0 only when every overlay is valid.

    \b
    Examples:
      stackgen validate overlays/*
      stackgen validate --skip-missing-secrets overlays/*     # CI: secrets git-ignored
      stackgen validate overlays/* --output json
      stackgen validate overlays/prod --server-dry-run
    """
    from stackgen.pipeline import BuildOptions, build

    debug = bool((ctx.obj or {}).get("debug"))
    options = BuildOptions(
        kubernetes_version=kubernetes_version,
        server_dry_run=server_dry_run,
        ignore_missing_schemas=ignore_missing_schemas,
        skip_missing_secrets=skip_missing_secrets,
        policy=policy,
    )
    reports: list[dict[str, Any]] = []
    tooling_failed = False
    for overlay in overlays:
        report: dict[str, Any] = {"overlay": overlay, "valid": False, "problems": [], "notices": []}
        try:
            result = build(overlay, options)
        except Exception as exc:
            # One overlay failing, even in a way nobody foresaw, never stops the others.
            if debug:
                raise
            tooling_failed |= isinstance(exc, ToolError)
            problems = exc.problems if isinstance(exc, StackgenError) else [_internal(overlay, exc)]
            report["problems"] = [_as_dict(p) for p in problems]
            if output_format == "text":
                for problem in problems:
                    err(str(problem))
                count = len(problems)
                out(f"FAIL {overlay} ({count} problem{'s' if count != 1 else ''})", nl=True)
        else:
            report.update(
                valid=True,
                objects=len(result.objects),
                kubernetesVersion=result.kubernetes_version,
                kubeconform=result.kubeconform_summary,
                notices=result.notices,
                timings={k: round(v, 4) for k, v in result.timings.items()},
            )
            if output_format == "text":
                for message in result.notices:
                    notice(f"{overlay}: {message}")
                out(
                    f"ok   {overlay} ({len(result.objects)} objects, Kubernetes "
                    f"{result.kubernetes_version}{', server dry-run' if server_dry_run else ''})",
                    nl=True,
                )
        reports.append(report)
    valid = sum(1 for r in reports if r["valid"])
    invalid = len(reports) - valid
    if output_format == "json":
        out(
            json.dumps({"overlays": reports, "valid": valid, "invalid": invalid}, indent=2), nl=True
        )
    else:
        noun = "overlay" if len(reports) == 1 else "overlays"
        out(f"{len(reports)} {noun}: {valid} valid, {invalid} invalid", nl=True)
    if invalid:
        ctx.exit(int(ExitStatus.TOOLING if tooling_failed else ExitStatus.INVALID))


def _internal(overlay: str, exc: Exception) -> Problem:
    """An unforeseen failure of one overlay, as one line."""
    return Problem(
        overlay,
        "",
        f"internal error: {type(exc).__name__}: {exc} "
        "(run with --debug for a traceback, and please report it)",
    )


def _as_dict(problem: Problem) -> dict[str, str]:
    """One problem in ``--output json`` (``check: policy`` for stackgen's own rules)."""
    return {
        "file": problem.file,
        "path": problem.path,
        "message": problem.message,
        **({"check": problem.tag} if problem.tag else {}),
    }
