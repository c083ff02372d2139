"""A dispatcher config as the build generates one, for unit tests of the dispatcher."""

from __future__ import annotations

from typing import Any

TOKEN = "agent-token-0123456789abcdef"


def config_dict(**queue_overrides: Any) -> dict[str, Any]:
    def queue(name: str, mode: str, **kw: Any) -> dict[str, Any]:
        base = {
            "name": name,
            "mode": mode,
            "template": f"buildkite-agent-{name}",
            "minAgents": 0,
            "maxAgents": 10,
            "buffer": 1 if mode == "dispatch" else 0,
            "pollIntervalSeconds": 5,
            "cooldown": {"share": 0.5, "timeoutSeconds": 120},
            "activeDeadlineSeconds": 3600,
            "ttlSecondsAfterFinished": 60,
            "podStartTimeoutSeconds": 300,
            "gitMirror": None,
        }
        base.update(kw)
        return base

    return {
        "apiVersion": "stackgen.io/v1alpha1",
        "kind": "DispatcherConfig",
        "stack": "test",
        "namespace": "buildkite",
        "buildkite": {
            "endpoint": "http://x/v3",
            "tokenEnv": "BUILDKITE_AGENT_TOKEN",
            "stackKey": "stackgen-buildkite-test",
        },
        "server": {"port": 0},
        "leaderElection": {
            "leaseName": "stackgen-dispatcher",
            "leaseDurationSeconds": 15,
            "renewDeadlineSeconds": 10,
            "retryPeriodSeconds": 2,
        },
        "webhook": {"enabled": False},
        "queues": [queue("builds", "dispatch", **queue_overrides), queue("deploy", "exact")],
        "gitMirrors": [],
    }
