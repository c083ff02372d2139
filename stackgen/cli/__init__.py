"""The ``stackgen`` command line: a small click group, one module per command.

Errors are caught here, at the boundary, and only here: each problem becomes one line
on stderr and the process exits non-zero without a traceback (unless ``--debug``).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from stackgen.common.errors import StackgenError, ToolError
from stackgen.common.output import err
from stackgen.common.status import ExitStatus
from stackgen.common.version import __version__

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(func: F) -> F:
    """Turn StackgenError into one stderr line per problem and the right exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        debug = bool((ctx.obj or {}).get("debug"))
        try:
            return func(*args, **kwargs)
        except StackgenError as exc:
            if debug:
                raise
            for problem in exc.problems:
                err(str(problem))
            status = ExitStatus.TOOLING if isinstance(exc, ToolError) else ExitStatus.INVALID
            ctx.exit(int(status))
        except (click.exceptions.Exit, click.ClickException, KeyboardInterrupt):
            raise
        except Exception as exc:
            if debug:
                raise
            err(
                f"stackgen: internal error: {type(exc).__name__}: {exc} "
                "(run with --debug for a traceback, and please report it)"
            )
            ctx.exit(int(ExitStatus.INTERNAL))

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="stackgen")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Compose, validate and run Buildkite agent stacks on Kubernetes.

    \b
    Examples:
      stackgen init overlays/my-stack --queue default:dispatch
      stackgen build overlays/my-stack | kubectl apply -f -
      stackgen validate overlays/*
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _register() -> None:
    # Imported lazily per command module so `stackgen --help` stays fast.
    from stackgen.cli import build, dispatcher, init, metrics_adapter, render, schema, validate

    for module in (build, init, render, schema, validate, dispatcher, metrics_adapter):
        cli.add_command(module.command)
    cli.add_command(dispatcher.git_mirror)


_register()


def main() -> None:
    """Console-script entry point."""
    try:
        cli(prog_name="stackgen")
    except BrokenPipeError:  # `stackgen build … | head` closes the pipe early
        sys.stderr.close()
        sys.exit(int(ExitStatus.INVALID))
