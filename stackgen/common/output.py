"""All user-facing output goes through :func:`out` and :func:`err`.

Keeping the two streams behind one pair of functions lets tests capture them and
makes the rule "stdout carries only the stack" easy to audit.
"""

from __future__ import annotations

import sys
from typing import BinaryIO

import click


def out(text: str | bytes, *, nl: bool = False) -> None:
    """Write payload (a rendered stack, JSON) to stdout."""
    if isinstance(text, bytes):
        stream: BinaryIO = sys.stdout.buffer
        stream.write(text + (b"\n" if nl else b""))
        stream.flush()
        return
    click.echo(text, nl=nl)


def err(message: str) -> None:
    """Write one diagnostic line to stderr."""
    click.echo(message, err=True)


def notice(message: str) -> None:
    """Write a non-fatal notice (prefixed, stderr) that does not change the result."""
    click.echo(f"stackgen: {message}", err=True)
