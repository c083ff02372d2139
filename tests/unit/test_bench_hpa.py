"""bench/e2e's HPA rows run the simulator's policies: the objects say what the model assumes."""

from __future__ import annotations

import copy
from typing import Any

from bench.lib import hpa_replay, sim
from bench.lib.replay import Settings

HPA: dict[str, Any] = {
    "apiVersion": "autoscaling/v2",
    "kind": "HorizontalPodAutoscaler",
    "metadata": {"name": "buildkite-agent-lint", "labels": {"stackgen.io/queue": "lint"}},
    "spec": {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
        "minReplicas": 2,
        "maxReplicas": 40,
        "metrics": [
            {
                "type": "External",
                "external": {
                    "metric": {
                        "name": "buildkite_jobs_runnable",
                        "selector": {"matchLabels": {"queue": "lint"}},
                    },
                    "target": {"type": "AverageValue", "averageValue": "2"},
                },
            }
        ],
    },
}
POOL: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "buildkite-agent-lint", "labels": {"stackgen.io/queue": "lint"}},
    "spec": {"template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": []}}},
}


def _row(key: str) -> sim.HPAStrategy:
    (row,) = [r for r in hpa_replay.ROWS if r.key == key]
    return row.strategy(Settings.scaled(10))


def test_the_policies_are_bench_dispatch_s_with_a_clock_ten_times_faster() -> None:
    proto = _row("hpa-prototype")
    assert proto.sync == 1.5 and proto.adapter_poll == 1 and proto.grace == 3
    assert proto.down.window == 30 and proto.up.window == 0
    assert proto.up.policies == (("Pods", 4, 2.0), ("Percent", 100, 2.0))  # 15 s -> 1.5 -> 2
    assert proto.metrics == (("scheduled", "AverageValue", 1.0), ("busy_percent", "Value", 70.0))
    ours = _row("hpa-stackgen")
    assert ours.grace == 360 and ours.down.policies == (("Pods", 1, 2.0),)
    assert ours.up.policies == (("Pods", 7, 3.0), ("Percent", 100, 3.0))
    assert hpa_replay.hpa_flags(ours) == {"horizontal-pod-autoscaler-sync-period": "1.5s"}


def test_the_hpa_and_the_pool_get_exactly_the_simulated_policy() -> None:
    strategy = _row("hpa-prototype")
    other = {"kind": "Service", "metadata": {"name": "s"}, "spec": {}}
    out = hpa_replay.apply_policy(
        [copy.deepcopy(HPA), copy.deepcopy(POOL), copy.deepcopy(other)], strategy, 300
    )
    hpa, pool, untouched = out
    spec = hpa["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (1, 300)
    assert [
        (m["external"]["metric"]["name"], m["external"]["target"]) for m in spec["metrics"]
    ] == [
        ("buildkite_jobs_scheduled", {"type": "AverageValue", "averageValue": "1"}),
        ("buildkite_agents_busy_percentage", {"type": "Value", "value": "70"}),
    ]
    assert all(
        m["external"]["metric"]["selector"] == {"matchLabels": {"queue": "lint"}}
        for m in spec["metrics"]
    )
    assert spec["behavior"] == {
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "selectPolicy": "Max",
            "policies": [
                {"type": "Pods", "value": 4, "periodSeconds": 2},
                {"type": "Percent", "value": 100, "periodSeconds": 2},
            ],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": 30,
            "selectPolicy": "Max",
            "policies": [{"type": "Percent", "value": 100, "periodSeconds": 2}],
        },
    }
    template = pool["spec"]["template"]
    assert template["spec"]["terminationGracePeriodSeconds"] == 3
    assert template["metadata"]["labels"] == {"a": "b", hpa_replay.GRACEFUL_LABEL: "true"}
    assert untouched == other
