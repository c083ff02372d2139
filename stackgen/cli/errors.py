"""The CLI's one error boundary: problems become stderr lines and an exit status."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any, TypeVar

import click

from stackgen.common.errors import StackgenError, ToolError
from stackgen.common.output import err
from stackgen.common.status import ExitStatus

F = TypeVar("F", bound=Callable[..., Any])

#: The Python modules of stackgen's optional extras (pyproject.toml), and the extra of each.
EXTRA_OF_MODULE = {
    "kubernetes": "dispatcher",
    "httpx": "dispatcher",
    "structlog": "dispatcher",
    "kubernetes_validate": "schemas",
}


def missing_extra(exc: ImportError) -> str | None:
    """The extra that would have brought the module ``exc`` misses, if it is one of ours."""
    return EXTRA_OF_MODULE.get((exc.name or "").partition(".")[0])


def require_extra(*modules: str) -> None:
    """Import these modules now, so a missing extra is said before any work starts."""
    for module in modules:
        importlib.import_module(module)


def _extra_line(ctx: click.Context, exc: Exception, extra: str) -> str:
    name = getattr(exc, "name", None)
    return (
        f"{ctx.command_path}: needs the [{extra}] extra (Python module {name!r} is not "
        f"installed): pip install 'stackgen[{extra}]'"
    )


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
            extra = missing_extra(exc) if isinstance(exc, ImportError) else None
            if extra is not None:
                err(_extra_line(ctx, exc, extra))
                ctx.exit(int(ExitStatus.INVALID))
            err(
                f"stackgen: internal error: {type(exc).__name__}: {exc} "
                "(run with --debug for a traceback, and please report it)"
            )
            ctx.exit(int(ExitStatus.INTERNAL))

    return wrapper  # type: ignore[return-value]
