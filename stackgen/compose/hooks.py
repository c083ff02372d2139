"""The agents' environment and hooks: what every agent pod reads from ConfigMaps.

Your hooks are mounted at ``BUILDKITE_HOOKS_PATH``; stackgen's own run from
``BUILDKITE_ADDITIONAL_HOOKS_PATHS`` (``bases/agent``), so yours are never rewritten.
"""

from __future__ import annotations

from stackgen.common.names import HOOKS_PATH, STACKGEN_HOOKS_PATH
from stackgen.compose.kustomization import Kustomization, generated
from stackgen.compose.tree import Tree


def add_agent_env_and_hooks(tree: Tree, kz: Kustomization) -> None:
    """ConfigMaps ``buildkite-agent-env`` and ``buildkite-agent-hooks``."""
    stack = tree.stack
    env = {
        "BUILDKITE_AGENT_ENDPOINT": stack.agent.endpoint,
        "BUILDKITE_BUILD_PATH": stack.agent.build_path,
        "BUILDKITE_HOOKS_PATH": HOOKS_PATH,
        "BUILDKITE_ADDITIONAL_HOOKS_PATHS": STACKGEN_HOOKS_PATH,
    }
    kz.config_map_generator.append(
        generated(
            "buildkite-agent-env",
            "buildkite-agent",
            "agent-config",
            literals=[f"{key}={value}" for key, value in env.items()],
        )
    )
    files = [f"{name}={tree.overlay_rel(path)}" for name, path in sorted(stack.hooks.items())]
    kz.config_map_generator.append(
        generated(
            "buildkite-agent-hooks",
            "buildkite-agent",
            "agent-hooks",
            **({"files": files} if files else {}),
        )
    )
