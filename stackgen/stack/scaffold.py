"""``stackgen init``'s scaffold: a new overlay a person then edits.

Its files are text for humans (comments, commented-out examples), so they are rendered
from jinja2 templates (``stackgen/templates/init``); the values put in them are checked
first (DNS labels, queue names, modes).  Secret files get placeholders that the checks
refuse until they are replaced, and ``secrets/`` is git-ignored.
"""

from __future__ import annotations

import re
from pathlib import Path

from stackgen.common.certs import generate_adapter_certs
from stackgen.common.defaults import stack_default
from stackgen.common.errors import ConfigError, Problem
from stackgen.common.files import display_path
from stackgen.common.resources import templates_dir

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
#: File -> (template, mode).
_FILES = {
    "stack.yaml": ("stack.yaml.j2", 0o644),
    ".gitignore": ("gitignore.j2", 0o644),
    "hooks/environment": ("environment-hook.j2", 0o755),
    "secrets/agent-token": ("agent-token.j2", 0o600),
}


def scaffold(
    directory: Path,
    queues: list[dict[str, str]],
    *,
    name: str | None,
    namespace: str | None,
    kubernetes_version: str,
) -> str:
    """Write a new overlay into ``directory`` (missing or empty); return it as shown.

    ``queues`` are ``{"name", "mode"}`` mappings.  For hpa queues a CA and the metrics
    adapter's serving certificate are generated too.
    """
    import jinja2

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
        "agent_image": stack_default("agent.image"),
        "queues": queues,
        "hpa": hpa,
    }
    for rel, (template, mode) in _FILES.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(env.get_template(template).render(**context), encoding="utf-8")
        path.chmod(mode)
    (directory / "secrets").chmod(0o700)
    if hpa:
        generate_adapter_certs(namespace, directory / "secrets" / "metrics-adapter")
    return shown
