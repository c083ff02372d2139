"""Pipeline steps as Buildkite hands them to a stack: a job's command and environment.

Buildkite expands a plugin's shorthand (``kubernetes`` ->
``github.com/buildkite-plugins/kubernetes-buildkite-plugin``), puts the step's plugins in
``BUILDKITE_PLUGINS`` as JSON, its ``image`` in ``BUILDKITE_IMAGE`` and joins a command
list with newlines.  The tests use this to feed the fake Buildkite and the pod builder
with the same pipeline YAML a user writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def expand_plugin(name: str) -> str:
    """A plugin's source as Buildkite writes it into BUILDKITE_PLUGINS."""
    if "/" in name or "://" in name:
        return name
    base, _, version = name.partition("#")
    full = f"github.com/buildkite-plugins/{base}-buildkite-plugin"
    return f"{full}#{version}" if version else full


def job_of(
    step: dict[str, Any], pipeline: dict[str, Any] | None = None
) -> tuple[str, dict[str, str]]:
    """(command, env) of the job one command step makes."""
    command = step.get("command", step.get("commands", ""))
    if isinstance(command, list):
        command = "\n".join(command)
    env: dict[str, str] = {}
    plugins = []
    for plugin in step.get("plugins") or []:
        if isinstance(plugin, str):
            plugins.append({expand_plugin(plugin): None})
        else:
            ((name, settings),) = plugin.items()
            plugins.append({expand_plugin(name): settings})
    if plugins:
        env["BUILDKITE_PLUGINS"] = json.dumps(plugins)
    image = step.get("image") or (pipeline or {}).get("image")
    if image:
        env["BUILDKITE_IMAGE"] = image
    return str(command), env


def load_steps(path: Path) -> list[tuple[str, dict[str, str]]]:
    """Every command step of a pipeline file as (command, env)."""
    pipeline = yaml.safe_load(path.read_text())
    return [job_of(step, pipeline) for step in pipeline["steps"] if "wait" not in step]
