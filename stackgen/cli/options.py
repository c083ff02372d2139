"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from stackgen.common.names import DEFAULT_KUBERNETES_VERSION

F = TypeVar("F", bound=Callable[..., Any])

_VERSION_HELP = (
    "Kubernetes version to validate against "
    f"(default: stack.yaml's, else {DEFAULT_KUBERNETES_VERSION})."
)


def kubernetes_version(func: F) -> F:
    """``--kubernetes-version X.Y.Z``."""
    return click.option(
        "--kubernetes-version",
        metavar="X.Y.Z",
        default=None,
        help=_VERSION_HELP,
        callback=check_version,
    )(func)


def check_version(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: ``v1.33``/``1.33`` become ``1.33.0``; anything else is refused."""
    if value is None:
        return None
    value = value.removeprefix("v")
    parts = value.split(".")
    if len(parts) == 2:
        parts.append("0")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise click.BadParameter(
            f"must look like {DEFAULT_KUBERNETES_VERSION}", ctx=ctx, param=param
        )
    return ".".join(parts)


def server_dry_run(func: F) -> F:
    """``--server-dry-run``."""
    return click.option(
        "--server-dry-run",
        is_flag=True,
        help="Also `kubectl apply --dry-run=server` against the current kube context.",
    )(func)


def ignore_missing_schemas(func: F) -> F:
    """``--ignore-missing-schemas``."""
    return click.option(
        "--ignore-missing-schemas",
        is_flag=True,
        help="Let kubeconform skip kinds it has no schema for (your CRDs).",
    )(func)


def skip_missing_secrets(func: F) -> F:
    """``--skip-missing-secrets``."""
    return click.option(
        "--skip-missing-secrets",
        is_flag=True,
        help="Build absent secret files (and unset token variables) with throwaway "
        "placeholders, each named in a notice: for CI checkouts without the git-ignored "
        "secrets. Present files are checked as usual.",
    )(func)


def policy(func: F) -> F:
    """``--policy stack|none``."""
    return click.option(
        "--policy",
        type=click.Choice(["stack", "none"]),
        default="stack",
        show_default=True,
        help="stack: stackgen's policies judge the built objects (lines marked 'policy:'); "
        "none: only what kustomize, the Kubernetes schemas and stack.yaml's own checks "
        "refuse (plain overlays that are not agent stacks, kustomize's examples).",
    )(func)


overlay_argument = click.argument(
    "overlay", type=click.Path(file_okay=True, dir_okay=True, path_type=str)
)


def kube_context(func: F) -> F:
    """``--kubeconfig FILE`` and ``--context NAME``, passed to kubectl as they are."""
    func = click.option(
        "--context",
        metavar="NAME",
        default=None,
        help="The kubeconfig context to use (default: the current context).",
    )(func)
    return click.option(
        "--kubeconfig",
        metavar="FILE",
        default=None,
        help="Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).",
    )(func)
