"""``stackgen init``'s scaffold: a new overlay a person then edits.

Its files are text for humans (comments, commented-out examples), so they are rendered
from jinja2 templates (``stackgen/templates/init``); the values put in them are checked
first (DNS labels, queue names, modes).  Secret files get placeholders that the checks
refuse until they are replaced, and ``secrets/`` is git-ignored.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from stackgen.common import yamlio
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
    env.filters["yaml_scalar"] = _yaml_scalar
    texts = {
        rel: env.get_template(template).render(**context) for rel, (template, _) in _FILES.items()
    }
    problems = _refusals(texts["stack.yaml"], directory, shown, queues)
    if problems:
        raise ConfigError(problems)
    for rel, (_, mode) in _FILES.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(texts[rel], encoding="utf-8")
        path.chmod(mode)
    (directory / "secrets").chmod(0o700)
    if hpa:
        generate_adapter_certs(namespace, directory / "secrets" / "metrics-adapter")
    return shown


def _yaml_scalar(value: str) -> str:
    """``value`` as YAML reads it back as the same string (``on``, ``1.5`` get quotes)."""
    return value if yamlio.load(value) == value else json.dumps(value)


def _refusals(
    text: str, directory: Path, shown: str, queues: list[dict[str, str]]
) -> list[Problem]:
    """What ``stackgen build`` would refuse in the scaffold's stack.yaml.

    Its secret files aside; each problem names the command-line option that caused it.
    """
    from stackgen.stack.checks import queue_rule_problems
    from stackgen.stack.load import stack_from_data, stack_problems

    data = yamlio.load(text)
    problems = stack_problems(data, shown)
    if not problems:
        stack = stack_from_data(data, directory, directory / "stack.yaml")
        problems = queue_rule_problems(stack)
    return [Problem(shown, *_as_option(p.path, queues), p.message) for p in problems]


def _as_option(path: str, queues: list[dict[str, str]]) -> tuple[str]:
    match = re.match(r"^queues\[(\d+)\]", path)
    if match:
        return (f"--queue {queues[int(match[1])]['name']}",)
    options = {
        "metadata.name": "--name",
        "metadata.namespace": "--namespace",
        "kubernetesVersion": "--kubernetes-version",
    }
    return (options.get(path, path),)
