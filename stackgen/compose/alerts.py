"""The stack's Prometheus alert rules, as data: one rule group, thresholds from stack.yaml.

Every expression selects the stack's own series by ``namespace`` (the label
prometheus-operator's monitors and Prometheus's ``kubernetes-pods`` example job both
set), so several stacks in one Prometheus never mix.  Queue gauges are taken from the
replica holding the Lease only (``and on (instance) stackgen_leader == 1``): a former
leader keeps its last values.  The same group goes into a PrometheusRule and into a
plain rules file (docs/observability.md lists every rule).
"""

from __future__ import annotations

from typing import Any

from stackgen.common.names import DISPATCHER, METRICS_ADAPTER
from stackgen.stack.model import Stack

__all__ = ["ALERT_NAMES", "rule_group"]

ALERT_NAMES = (
    "StackgenJobsWaitingTooLong",
    "StackgenAgentsFailingToStart",
    "StackgenDispatchNotRollingOut",
    "StackgenApiErrors",
    "StackgenDispatcherDown",
    "StackgenDispatcherNoLeader",
    "StackgenMetricsAdapterDown",
    "StackgenMetricsAdapterStale",
)


def _duration(seconds: float) -> str:
    """A Prometheus duration (``90s``, ``10m``, ``2h``)."""
    seconds = int(seconds)
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _number(value: float) -> str:
    return f"{value:g}"


class _Rules:
    """Builds the rules of one stack."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.t = stack.monitoring.thresholds
        self.sel = f'namespace="{stack.namespace}"'
        self.rules: list[dict[str, Any]] = []

    def leader_only(self, expr: str) -> str:
        return f"({expr} and on (instance) (stackgen_leader{{{self.sel}}} == 1))"

    def add(
        self,
        alert: str,
        expr: str,
        *,
        summary: str,
        description: str,
        severity: str,
        for_seconds: float = 0,
        labels: dict[str, str] | None = None,
    ) -> None:
        rule: dict[str, Any] = {"alert": alert, "expr": expr}
        if for_seconds:
            rule["for"] = _duration(for_seconds)
        rule["labels"] = {
            "severity": severity,
            "stackgen_stack": self.stack.name,
            **(labels or {}),
            **self.stack.monitoring.alert_labels,
        }
        rule["annotations"] = {"summary": summary, "description": description}
        self.rules.append(rule)

    def waiting_rule(self) -> None:
        t, sel = self.t, self.sel
        parts = []
        if self.stack.dispatched_queues:
            scheduled = self.leader_only(f"stackgen_queue_scheduled_jobs{{{sel}}}")
            parts.append(f"max by (namespace, queue) ({scheduled}) > 0")
        if self.stack.hpa_queues:
            scheduled = f"stackgen_adapter_buildkite_jobs_scheduled{{{sel}}}"
            parts.append(f"max by (namespace, queue) ({scheduled}) > 0")
        self.add(
            "StackgenJobsWaitingTooLong",
            " or ".join(parts),
            for_seconds=t["jobsWaitingSeconds"],
            severity="warning",
            summary="Buildkite jobs on queue {{ $labels.queue }} have waited for over "
            + _duration(t["jobsWaitingSeconds"]),
            description="Queue {{ $labels.queue }} of stack "
            + self.stack.name
            + " has had scheduled jobs without a break for "
            + _duration(t["jobsWaitingSeconds"])
            + ": agents are not starting fast enough, or maxAgents is reached. "
            "`stackgen status` shows the queue's agents and stuck pods.",
        )

    def dispatcher_rules(self) -> None:
        t, sel = self.t, self.sel
        window = _duration(t["agentStartWindowSeconds"])
        deleted = f"stackgen_jobs_deleted_total{{{sel}}}"
        failures = _number(t["agentStartFailures"])
        self.add(
            "StackgenAgentsFailingToStart",
            f"sum by (namespace, queue) (increase({deleted}[{window}])) >= {failures}"
            f" or sum by (namespace, queue) ({deleted} unless {deleted} offset {window}) >= {failures}",
            severity="warning",
            summary="Agent pods of queue {{ $labels.queue }} do not start",
            description="Agent Jobs of queue {{ $labels.queue }} were "
            f"deleted in the last {window} because no pod of theirs started (unschedulable, image "
            "pull errors, quota). `stackgen status` lists stuck pods with the reason; the "
            "dispatcher's log has it too.",
        )
        cooldown = f"avg_over_time(stackgen_queue_cooldown{{{sel}}}[{_duration(t['dispatchStuckSeconds'])}])"
        self.add(
            "StackgenDispatchNotRollingOut",
            f"max by (namespace, queue) ({self.leader_only(cooldown)}) >= 0.9",
            severity="warning",
            summary="Dispatches of queue {{ $labels.queue }} are not rolling out",
            description="Queue {{ $labels.queue }} spent 90 % of the last "
            + _duration(t["dispatchStuckSeconds"])
            + " in cooldown: the agents of its previous dispatches are not starting (pods "
            "pending), so new demand is held back.",
        )
        self.add(
            "StackgenApiErrors",
            f"sum by (namespace, api) (rate(stackgen_api_errors_total{{{sel}}}[5m])) > "
            + _number(t["apiErrorsPerSecond"]),
            for_seconds=t["apiErrorsForSeconds"],
            severity="warning",
            summary="The dispatcher's {{ $labels.api }} calls keep failing",
            description="Failed {{ $labels.api }} calls above "
            + _number(t["apiErrorsPerSecond"])
            + " per second for "
            + _duration(t["apiErrorsForSeconds"])
            + " (stackgen_api_errors_total by kind says which).",
        )
        self.add(
            "StackgenDispatcherDown",
            f'absent(up{{{sel}, pod=~"{DISPATCHER}-.+"}} == 1)',
            for_seconds=t["dispatcherDownSeconds"],
            severity="critical",
            labels={"namespace": self.stack.namespace},
            summary="No dispatcher of stack " + self.stack.name + " is up",
            description="Prometheus has scraped no dispatcher pod of namespace "
            + self.stack.namespace
            + " successfully for "
            + _duration(t["dispatcherDownSeconds"])
            + ": no Jobs are made for dispatch and exact queues.",
        )
        self.add(
            "StackgenDispatcherNoLeader",
            f"sum by (namespace) (stackgen_leader{{{sel}}}) < 1",
            for_seconds=t["noLeaderSeconds"],
            severity="critical",
            summary="No dispatcher of stack " + self.stack.name + " holds the Lease",
            description="Dispatchers are up but none has been leader for "
            + _duration(t["noLeaderSeconds"])
            + ": nothing dispatches. Check the Lease "
            + DISPATCHER
            + " and the dispatchers' logs.",
        )

    def adapter_rules(self) -> None:
        t, sel = self.t, self.sel
        self.add(
            "StackgenMetricsAdapterDown",
            f'absent(up{{{sel}, pod=~"{METRICS_ADAPTER}-.+"}} == 1)',
            for_seconds=t["adapterDownSeconds"],
            severity="critical",
            labels={"namespace": self.stack.namespace},
            summary="No metrics adapter of stack " + self.stack.name + " is up",
            description="The HPAs of hpa queues get no metrics and stop scaling.",
        )
        self.add(
            "StackgenMetricsAdapterStale",
            "time() - max by (namespace) "
            f'(stackgen_adapter_last_success_timestamp_seconds{{{sel}, source="metrics"}}) > '
            + _number(t["adapterStaleSeconds"]),
            severity="warning",
            summary="The metrics adapter serves stale Buildkite data",
            description="The adapter's last successful Buildkite poll is older than "
            + _duration(t["adapterStaleSeconds"])
            + ": HPAs get errors instead of values and keep their size.",
        )


def rule_group(stack: Stack) -> dict[str, Any]:
    """The stack's one rule group (``groups[0]`` of a rules file or a PrometheusRule)."""
    rules = _Rules(stack)
    rules.waiting_rule()
    if stack.dispatched_queues:
        rules.dispatcher_rules()
    if stack.hpa_queues:
        rules.adapter_rules()
    return {"name": f"stackgen.{stack.namespace}.{stack.name}", "rules": rules.rules}
