"""``stackgen init``."""

from __future__ import annotations

import re
from pathlib import Path

import click

from stackgen.cli import handle_errors
from stackgen.errors import ConfigError, Problem
from stackgen.output import err

_QUEUE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)(?::(?P<mode>hpa|dispatch|exact))?$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _queue(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> list[dict[str, str]]:
    queues = []
    for value in values or ("default",):
        match = _QUEUE.match(value)
        if not match:
            raise click.BadParameter(
                f"{value!r}: want NAME or NAME:MODE (mode hpa, dispatch or exact)"
            )
        queues.append({"name": match["name"], "mode": match["mode"] or "dispatch"})
    return queues


@click.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--queue",
    "queues",
    multiple=True,
    callback=_queue,
    metavar="NAME[:MODE]",
    help="A queue to serve (repeatable); MODE is hpa, dispatch (default) or exact.",
)
@click.option("--name", default=None, help="Stack name (default: the folder's name).")
@click.option("--namespace", default=None, help="Namespace (default: the stack name).")
@click.option("--kubernetes-version", default="1.33.0", show_default=True)
@handle_errors
def command(
    directory: Path,
    queues: list[dict[str, str]],
    name: str | None,
    namespace: str | None,
    kubernetes_version: str,
) -> None:
    """Scaffold a new stack in DIRECTORY: stack.yaml, placeholder secrets, a hook.

    Secret files go under DIRECTORY/secrets/, which the generated .gitignore keeps out
    of git. For hpa queues, a CA and the metrics adapter's certificate are generated.

    \b
    Examples:
      stackgen init overlays/my-stack --queue default:dispatch
      stackgen init overlays/ci --queue linux:hpa --queue deploy:exact
    """
    import jinja2

    from stackgen.certs import generate_adapter_certs
    from stackgen.config import display_path
    from stackgen.resources import templates_dir

    shown = display_path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise ConfigError(Problem(shown, "", "exists and is not empty: choose a new folder"))
    name = name or directory.resolve().name.lower()
    namespace = namespace or name
    for label, value in (("--name", name), ("--namespace", namespace)):
        if not _LABEL.match(value) or len(value) > 40:
            raise ConfigError(
                Problem(
                    shown, label, f"{value!r} is not a DNS label (lower-case letters, digits, '-')"
                )
            )
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir() / "init")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    hpa = any(q["mode"] == "hpa" for q in queues)
    context = {
        "directory": shown,
        "name": name,
        "namespace": namespace,
        "kubernetes_version": kubernetes_version,
        "queues": queues,
        "hpa": hpa,
    }
    files = {
        "stack.yaml": ("stack.yaml.j2", 0o644),
        ".gitignore": ("gitignore.j2", 0o644),
        "hooks/environment": ("environment-hook.j2", 0o755),
        "secrets/agent-token": ("agent-token.j2", 0o600),
    }
    for rel, (template, mode) in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(env.get_template(template).render(**context), encoding="utf-8")
        path.chmod(mode)
    (directory / "secrets").chmod(0o700)
    if hpa:
        generate_adapter_certs(namespace, directory / "secrets" / "metrics-adapter")
    err(f"created {shown}: put your agent token in {shown}/secrets/agent-token, then")
    err(f"  stackgen build {shown} | kubectl apply -f -")
