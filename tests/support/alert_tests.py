"""``promtool test rules`` cases for stackgen's alert rules: synthetic series per alert.

Each case is one alert with series that make it fire at ``fires_at`` and stay quiet at
``quiet_at`` (before its ``for:``/threshold is reached, or with healthy series), so every
rule is shown to fire and to hold off.  Thresholds are read from the stack, so the cases
follow stack.yaml.  Expected annotations are the rule's own with ``$labels`` filled in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

NS = "ci"
STACK = "obs"
LEADER = (
    f'stackgen_leader{{namespace="{NS}", instance="10.0.0.1:8080", pod="stackgen-dispatcher-a"}}'
)
FOLLOWER = (
    f'stackgen_leader{{namespace="{NS}", instance="10.0.0.2:8080", pod="stackgen-dispatcher-b"}}'
)


def lead(series: str) -> str:
    """A series of the leader replica (same instance and pod labels)."""
    return series.rstrip("}") + ', instance="10.0.0.1:8080", pod="stackgen-dispatcher-a"}'


def follow(series: str) -> str:
    """A series of the follower replica."""
    return series.rstrip("}") + ', instance="10.0.0.2:8080", pod="stackgen-dispatcher-b"}'


@dataclass
class Case:
    """One alert's test: input series, when it fires (with which labels) and when not."""

    alert: str
    series: list[tuple[str, str]]
    fires_at: str
    labels: list[dict[str, str]]
    quiet_at: list[str] = field(default_factory=list)


def cases(thresholds: dict[str, float]) -> list[Case]:
    """Every alert's case, at 1-minute sample intervals (values in promtool's notation)."""
    t = thresholds
    wait_m = int(t["jobsWaitingSeconds"] // 60)
    window_m = int(t["agentStartWindowSeconds"] // 60)
    stuck_m = int(t["dispatchStuckSeconds"] // 60)
    err_for_m = int(t["apiErrorsForSeconds"] // 60)
    down_m = int(t["dispatcherDownSeconds"] // 60)
    leader_m = int(t["noLeaderSeconds"] // 60)
    stale_s = int(t["adapterStaleSeconds"])
    adapter_down_m = int(t["adapterDownSeconds"] // 60)
    span = 3 * max(wait_m, window_m, stuck_m, err_for_m + 5, down_m, leader_m) + 10
    q = f'namespace="{NS}", queue="builds"'
    return [
        Case(
            "StackgenJobsWaitingTooLong",
            [
                (lead(f"stackgen_queue_scheduled_jobs{{{q}}}"), f"3x{span}"),
                # A former leader's stale gauge must not count: the leader's is what counts.
                (
                    follow(f'stackgen_queue_scheduled_jobs{{namespace="{NS}", queue="old"}}'),
                    f"9x{span}",
                ),
                (LEADER, f"1x{span}"),
                (FOLLOWER, f"0x{span}"),
            ],
            fires_at=f"{wait_m + 2}m",
            labels=[{"namespace": NS, "queue": "builds", "severity": "warning"}],
            quiet_at=[f"{max(1, wait_m - 2)}m"],
        ),
        Case(
            "StackgenJobsWaitingTooLong",
            [
                (
                    f"stackgen_adapter_buildkite_jobs_scheduled{{{q.replace('builds', 'default')}}}",
                    f"0x2 2x{span}",
                )
            ],
            fires_at=f"{wait_m + 5}m",
            labels=[{"namespace": NS, "queue": "default", "severity": "warning"}],
            quiet_at=[f"{max(1, wait_m - 2)}m"],
        ),
        Case(
            "StackgenAgentsFailingToStart",
            # The counter's series appears at its first deletion (value 1), then one more.
            [(lead(f"stackgen_jobs_deleted_total{{{q}}}"), f"_x5 1x3 2x{span}")],
            fires_at="6m",
            labels=[{"namespace": NS, "queue": "builds", "severity": "warning"}],
            quiet_at=["3m", f"{9 + window_m + 2}m"],
        ),
        Case(
            "StackgenDispatchNotRollingOut",
            [(lead(f"stackgen_queue_cooldown{{{q}}}"), f"0x3 1x{span}"), (LEADER, f"1x{span}")],
            fires_at=f"{3 + stuck_m + 1}m",
            labels=[{"namespace": NS, "queue": "builds", "severity": "warning"}],
            quiet_at=[f"{3 + stuck_m // 2}m"],
        ),
        Case(
            "StackgenApiErrors",
            # Errors at 1 per second (60 per minute), starting after 5 healthy minutes.
            [
                (
                    lead(
                        f'stackgen_api_errors_total{{namespace="{NS}", api="buildkite", kind="ServerError"}}'
                    ),
                    f"0x5 0+60x{span}",
                )
            ],
            fires_at=f"{5 + err_for_m + 7}m",
            labels=[{"namespace": NS, "api": "buildkite", "severity": "warning"}],
            quiet_at=["4m", f"{5 + max(1, err_for_m // 2)}m"],
        ),
        Case(
            "StackgenDispatcherDown",
            [(f'up{{namespace="{NS}", pod="stackgen-dispatcher-a", job="x"}}', f"1x5 0x{span}")],
            fires_at=f"{5 + down_m + 2}m",
            labels=[{"namespace": NS, "severity": "critical"}],
            quiet_at=["4m"],
        ),
        Case(
            "StackgenDispatcherNoLeader",
            [(LEADER, f"1x5 0x{span}"), (FOLLOWER, f"0x{span}")],
            fires_at=f"{5 + leader_m + 2}m",
            labels=[{"namespace": NS, "severity": "critical"}],
            quiet_at=["4m"],
        ),
        Case(
            "StackgenMetricsAdapterDown",
            [
                (
                    f'up{{namespace="{NS}", pod="stackgen-metrics-adapter-x", job="x"}}',
                    f"1x5 0x{span}",
                )
            ],
            fires_at=f"{5 + adapter_down_m + 2}m",
            labels=[{"namespace": NS, "severity": "critical"}],
            quiet_at=["4m"],
        ),
        Case(
            "StackgenMetricsAdapterStale",
            # The last success advances with the clock for 10 minutes, then stops at 600.
            [
                (
                    f'stackgen_adapter_last_success_timestamp_seconds{{namespace="{NS}", source="metrics", pod="a"}}',
                    f"0+60x10 600x{span}",
                )
            ],
            fires_at=f"{10 + stale_s // 60 + 2}m",
            labels=[{"namespace": NS, "severity": "warning"}],
            quiet_at=["9m"],
        ),
    ]


_LABEL = re.compile(r"\{\{ \$labels\.(\w+) \}\}")


def _expected(rule: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    all_labels = {**rule.get("labels", {}), **labels}
    annotations = {
        k: _LABEL.sub(lambda m: all_labels.get(m.group(1), ""), v)
        for k, v in rule["annotations"].items()
    }
    return {"exp_labels": all_labels, "exp_annotations": annotations}


def promtool_tests(
    rules_file: str, group: dict[str, Any], thresholds: dict[str, float]
) -> dict[str, Any]:
    """A ``promtool test rules`` file: one test per case, checked against ``group``'s rules."""
    by_name = {r["alert"]: r for r in group["rules"]}
    tests = []
    for case in cases(thresholds):
        rule = by_name[case.alert]
        checks: list[dict[str, Any]] = [
            {
                "eval_time": case.fires_at,
                "alertname": case.alert,
                "exp_alerts": [_expected(rule, labels) for labels in case.labels],
            }
        ]
        checks += [
            {"eval_time": at, "alertname": case.alert, "exp_alerts": []} for at in case.quiet_at
        ]
        tests.append(
            {
                "name": f"{case.alert} fires at {case.fires_at}",
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in case.series],
                "alert_rule_test": checks,
            }
        )
    return {"rule_files": [rules_file], "evaluation_interval": "1m", "tests": tests}
