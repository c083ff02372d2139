"""The ``stackgen`` command line: a small click group, one module per command.

Errors are caught at the boundary, and only there (:func:`.errors.handle_errors`): each
problem becomes one line on stderr and the process exits non-zero without a traceback
(unless ``--debug``).
"""

from __future__ import annotations

import signal
import sys

import click

from stackgen.cli import (
    apply,
    build,
    delete,
    dispatcher,
    init,
    metrics_adapter,
    render,
    schema,
    status,
    validate,
)
from stackgen.cli.errors import handle_errors
from stackgen.common.status import ExitStatus
from stackgen.common.version import __version__

__all__ = ["cli", "handle_errors", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="stackgen")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Compose, validate and run Buildkite agent stacks on Kubernetes.

    \b
    Examples:
      stackgen init overlays/my-stack --queue default:dispatch
      stackgen apply overlays/my-stack
      stackgen validate overlays/*
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# One module per command; each imports what it needs only when it runs, so that
# `stackgen --help` stays fast.
for _module in (
    build,
    apply,
    delete,
    status,
    init,
    render,
    schema,
    validate,
    dispatcher,
    metrics_adapter,
):
    cli.add_command(_module.command)
cli.add_command(dispatcher.git_mirror)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI cancel), unwinding exactly as Ctrl-C does.

    So every temporary tree (which holds copies of the tokens) is removed, and every tool
    stopped, on the way out.
    """


_terminated: list[int] = []


def _terminate(signum: int, frame: object) -> None:
    _terminated.append(signum)
    raise Terminated


def main() -> None:
    """Console-script entry point."""
    # The long-running commands (dispatcher, metrics-adapter) install their own handlers.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli(prog_name="stackgen")
    except BrokenPipeError:  # `stackgen build … | head` closes the pipe early
        sys.stderr.close()
        sys.exit(int(ExitStatus.INVALID))
    except SystemExit:
        if _terminated:  # click reported it as an abort ("Aborted!"): exit as killed by it
            sys.exit(128 + signal.SIGTERM)
        raise
