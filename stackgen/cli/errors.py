"""The CLI's one error boundary: problems become stderr lines and an exit status."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from stackgen.common.errors import StackgenError, ToolError
from stackgen.common.output import err
from stackgen.common.status import ExitStatus

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
