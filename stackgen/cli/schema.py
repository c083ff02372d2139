"""``stackgen schema``."""

from __future__ import annotations

import json

import click

from stackgen.cli.errors import handle_errors
from stackgen.common.output import out


@click.command("schema")
@click.option(
    "--dispatcher",
    is_flag=True,
    help="Print the dispatcher config schema instead of the stack.yaml schema.",
)
@click.option("--markdown", is_flag=True, help="Print the stack.yaml reference as Markdown.")
@handle_errors
def command(dispatcher: bool, markdown: bool) -> None:
    """Print the JSON schema of stack.yaml (for editors and check-jsonschema).

    \b
    Examples:
      stackgen schema > stack.schema.json
      stackgen schema --dispatcher
      stackgen schema --markdown > docs/stack-reference.md
    """
    from stackgen.common.resources import load_schema

    if markdown:
        from stackgen.stack.reference import render_reference

        out(render_reference(), nl=False)
        return

    out(json.dumps(load_schema("dispatcher" if dispatcher else "stack"), indent=2), nl=True)
