"""``stackgen schema``."""

from __future__ import annotations

import json

import click

from stackgen.output import out


@click.command("schema")
@click.option(
    "--dispatcher",
    is_flag=True,
    help="Print the dispatcher config schema instead of the stack.yaml schema.",
)
def command(dispatcher: bool) -> None:
    """Print the JSON schema of stack.yaml (for editors and check-jsonschema).

    \b
    Examples:
      stackgen schema > stack.schema.json
      stackgen schema --dispatcher
    """
    from stackgen.resources import load_schema

    out(json.dumps(load_schema("dispatcher" if dispatcher else "stack"), indent=2), nl=True)
