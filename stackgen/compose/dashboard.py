"""The stack's Grafana dashboard, as data (docs/observability.md describes every panel).

Variables: the Prometheus data source, the stack's namespace (preset to this stack's)
and the queues.  Panels are laid out two per row, in the order an on-call engineer asks:
is work waiting, are agents coming, is the dispatcher healthy.
"""

from __future__ import annotations

from typing import Any

from stackgen.stack.model import Stack

__all__ = ["PANELS", "dashboard"]

_NS = 'namespace="$namespace"'
_Q = f'{_NS}, queue=~"$queue"'
_LEADER = f"and on (instance) (stackgen_leader{{{_NS}}} == 1)"

#: (title, unit, description, [(legend, expr)]), in layout order.
PANELS: tuple[tuple[str, str, str, tuple[tuple[str, str], ...]], ...] = (
    (
        "Jobs per queue: scheduled, running, waiting",
        "short",
        "Buildkite's counts per queue: scheduled (waiting for an agent) and running, from "
        "the dispatcher for dispatch/exact queues and from the metrics adapter for hpa "
        "queues; waiting (blocked on dependencies) from the adapter.",
        (
            (
                "{{queue}} scheduled",
                f"max by (queue) (stackgen_queue_scheduled_jobs{{{_Q}}} {_LEADER})",
            ),
            (
                "{{queue}} running",
                f"max by (queue) (stackgen_queue_running_jobs{{{_Q}}} {_LEADER})",
            ),
            (
                "{{queue}} scheduled (hpa)",
                f"max by (queue) (stackgen_adapter_buildkite_jobs_scheduled{{{_Q}}})",
            ),
            (
                "{{queue}} running (hpa)",
                f"max by (queue) (stackgen_adapter_buildkite_jobs_running{{{_Q}}})",
            ),
            (
                "{{queue}} waiting (hpa)",
                f"max by (queue) (stackgen_adapter_buildkite_jobs_waiting{{{_Q}}})",
            ),
        ),
    ),
    (
        "Agents dispatched vs running",
        "short",
        "Supply (agents the dispatcher's unfinished Jobs will still run: pending, starting, "
        "idle or busy) against running jobs (busy agents), and agents dispatched per minute.",
        (
            ("{{queue}} supply", f"max by (queue) (stackgen_queue_agent_supply{{{_Q}}} {_LEADER})"),
            (
                "{{queue}} running jobs",
                f"max by (queue) (stackgen_queue_running_jobs{{{_Q}}} {_LEADER})",
            ),
            (
                "{{queue}} dispatched/min",
                f"sum by (queue) (rate(stackgen_agents_dispatched_total{{{_Q}}}[5m])) * 60",
            ),
        ),
    ),
    (
        "Surplus and unmet demand",
        "short",
        "Surplus: supply beyond runnable jobs (agents that will find no job: the buffer, or "
        "over-provisioning). Unmet: runnable jobs no agent is dispatched for yet.",
        (
            (
                "{{queue}} surplus",
                "clamp_min(max by (queue) (stackgen_queue_agent_supply{" + _Q + "} " + _LEADER + ")"
                " - max by (queue) (stackgen_queue_scheduled_jobs{" + _Q + "} " + _LEADER + ")"
                " - max by (queue) (stackgen_queue_running_jobs{" + _Q + "} " + _LEADER + "), 0)",
            ),
            ("{{queue}} unmet", f"max by (queue) (stackgen_queue_unmet_demand{{{_Q}}} {_LEADER})"),
        ),
    ),
    (
        "Scheduled → Job created latency",
        "s",
        "Exact mode: time from Buildkite's scheduled_at to the agent's Kubernetes Job being "
        "created, 50th and 95th percentile over 5 minutes.",
        (
            (
                "{{queue}} p50",
                "histogram_quantile(0.5, sum by (queue, le) (rate(stackgen_dispatch_latency_seconds_bucket{"
                + _Q
                + "}[5m])))",
            ),
            (
                "{{queue}} p95",
                "histogram_quantile(0.95, sum by (queue, le) (rate(stackgen_dispatch_latency_seconds_bucket{"
                + _Q
                + "}[5m])))",
            ),
        ),
    ),
    (
        "Cooldown",
        "short",
        "1 while a dispatch queue waits for its previous dispatch's agents to start (no new "
        "dispatch meanwhile); long stretches at 1 mean pods are not starting.",
        (("{{queue}}", f"max by (queue) (stackgen_queue_cooldown{{{_Q}}} {_LEADER})"),),
    ),
    (
        "Agents failing to start",
        "short",
        "Jobs deleted because no pod of theirs started within podStartTimeoutSeconds, and "
        "Buildkite jobs failed for that reason (exact mode), per 15 minutes.",
        (
            (
                "{{queue}} Jobs deleted",
                f"sum by (queue) (increase(stackgen_jobs_deleted_total{{{_Q}}}[15m]))",
            ),
            (
                "{{queue}} Buildkite jobs failed",
                f"sum by (queue) (increase(stackgen_buildkite_jobs_failed_total{{{_Q}}}[15m]))",
            ),
        ),
    ),
    (
        "API errors",
        "reqps",
        "Failed Buildkite and Kubernetes calls per second by API and kind (HTTP status or "
        "error class).",
        (
            (
                "{{api}} {{kind}}",
                f"sum by (api, kind) (rate(stackgen_api_errors_total{{{_NS}}}[5m]))",
            ),
        ),
    ),
    (
        "Metrics adapter freshness",
        "s",
        "Age of the adapter's data: seconds since its last successful Buildkite poll, per "
        "source (metrics: counts; scheduled-jobs: job ages) and replica.",
        (
            (
                "{{pod}} {{source}}",
                f"time() - stackgen_adapter_last_success_timestamp_seconds{{{_NS}}}",
            ),
        ),
    ),
    (
        "Cycle duration",
        "s",
        "How long a dispatcher cycle takes (demand, supply, plan, act), 50th and 95th "
        "percentile, and cycles per minute by trigger and result.",
        (
            (
                "p50",
                f"histogram_quantile(0.5, sum by (le) (rate(stackgen_cycle_duration_seconds_bucket{{{_NS}}}[5m])))",
            ),
            (
                "p95",
                f"histogram_quantile(0.95, sum by (le) (rate(stackgen_cycle_duration_seconds_bucket{{{_NS}}}[5m])))",
            ),
            (
                "{{trigger}} {{result}}/min",
                f"sum by (trigger, result) (rate(stackgen_cycles_total{{{_NS}}}[5m])) * 60",
            ),
        ),
    ),
    (
        "Dispatcher leader",
        "short",
        "1 for the replica holding the Lease; exactly one line at 1 is healthy.",
        (("{{pod}}{{instance}}", f"stackgen_leader{{{_NS}}}"),),
    ),
)


def _panel(index: int, title: str, unit: str, description: str, targets: Any) -> dict[str, Any]:
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": (index % 2) * 12, "y": (index // 2) * 8},
        "fieldConfig": {"defaults": {"unit": unit, "min": 0}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {"refId": chr(ord("A") + n), "expr": expr, "legendFormat": legend}
            for n, (legend, expr) in enumerate(targets)
        ],
    }


def _variables(stack: Stack) -> list[dict[str, Any]]:
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    return [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
        {
            "name": "namespace",
            "type": "custom",
            "label": "Namespace",
            "query": stack.namespace,
            "current": {"text": stack.namespace, "value": stack.namespace},
        },
        {
            "name": "queue",
            "type": "custom",
            "label": "Queue",
            "query": ",".join(q.name for q in stack.queues),
            "includeAll": True,
            "allValue": ".*",
            "multi": True,
            "current": {"text": "All", "value": "$__all"},
            "datasource": datasource,
        },
    ]


def dashboard(stack: Stack) -> dict[str, Any]:
    """The Grafana dashboard JSON model for one stack."""
    return {
        "uid": f"stackgen-{stack.namespace}-{stack.name}"[:40],
        "title": f"stackgen: {stack.name} ({stack.namespace})",
        "tags": ["stackgen", "buildkite"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "templating": {"list": _variables(stack)},
        "panels": [_panel(i, *panel) for i, panel in enumerate(PANELS)],
    }
