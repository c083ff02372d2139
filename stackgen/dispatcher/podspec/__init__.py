"""Steps in their own pod: agent-stack-k8s's ``kubernetes`` plugin, on stackgen's template.

:mod:`.plugin` reads the step's plugin settings, :mod:`.build` makes the pod spec,
:mod:`.merge` is Kubernetes' strategic merge patch (driven by :mod:`.patchmeta`), and
:mod:`.guard` holds the queue's guard rails.
"""

from stackgen.dispatcher.podspec.build import StepPod, build_pod
from stackgen.dispatcher.podspec.guard import refusals
from stackgen.dispatcher.podspec.merge import MergeError, strategic_merge
from stackgen.dispatcher.podspec.plugin import (
    PLUGIN_KEY,
    KubernetesPlugin,
    PluginError,
    find_plugin,
)

__all__ = [
    "PLUGIN_KEY",
    "KubernetesPlugin",
    "MergeError",
    "PluginError",
    "StepPod",
    "build_pod",
    "find_plugin",
    "refusals",
    "strategic_merge",
]
