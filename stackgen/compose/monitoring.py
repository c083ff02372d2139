"""Monitoring, all opt-in: alert rules, the Grafana dashboard, and how Prometheus scrapes.

Alert rules and the dashboard are kustomize Components generated into the tree
(``stack/components/alerts``, ``stack/components/dashboard``): the rules as a plain
Prometheus rules file in a ConfigMap (``stackgen-alert-rules``) and, unless switched off,
a prometheus-operator ``PrometheusRule`` holding the same group; the dashboard as a
ConfigMap labelled for Grafana's dashboard sidecar.  Scraping: the dispatcher's and the
adapter's pods carry ``prometheus.io/*`` annotations (the bases); with ``scrape:
serviceMonitor`` or ``podMonitor`` they lose the annotations and get monitors instead.
"""

from __future__ import annotations

import json
from typing import Any

from stackgen.common import yamlio
from stackgen.common.names import DISPATCHER, METRICS_ADAPTER
from stackgen.compose.alerts import rule_group
from stackgen.compose.dashboard import dashboard
from stackgen.compose.kustomization import Kustomization, json_patch
from stackgen.compose.tree import Tree
from stackgen.stack.model import Stack

__all__ = ["ALERT_RULES", "DASHBOARD", "RULES_FILE", "add_monitoring", "rules_file"]

ALERT_RULES = "stackgen-alert-rules"
RULES_FILE = "stackgen-rules.yaml"
DASHBOARD = "stackgen-dashboard"
_COMPONENT = {"apiVersion": "kustomize.config.k8s.io/v1alpha1", "kind": "Component"}
_MONITORING = "monitoring.coreos.com/v1"


def rules_file(stack: Stack) -> dict[str, Any]:
    """The plain Prometheus rules file (``rule_files:``) of the stack."""
    return {"groups": [rule_group(stack)]}


def _labels(app: str, component: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": app,
        "app.kubernetes.io/component": component,
        **(extra or {}),
    }


def _add_alerts(tree: Tree, kz: Kustomization) -> None:
    stack = tree.stack
    folder = "stack/components/alerts"
    resources = []
    if stack.monitoring.prometheus_rule:
        rule = {
            "apiVersion": _MONITORING,
            "kind": "PrometheusRule",
            "metadata": {
                "name": ALERT_RULES,
                "labels": _labels(ALERT_RULES, "alert-rules", stack.monitoring.rule_labels),
            },
            "spec": {"groups": [rule_group(stack)]},
        }
        tree.write_yaml(f"{folder}/prometheusrule.yaml", rule)
        resources.append("prometheusrule.yaml")
    tree.write_yaml(f"{folder}/{RULES_FILE}", rules_file(stack))
    component: dict[str, Any] = {**_COMPONENT}
    if resources:
        component["resources"] = resources
    component["configMapGenerator"] = [
        {
            "name": ALERT_RULES,
            "files": [RULES_FILE],
            # A fixed name: a Prometheus outside the stack mounts it.
            "options": {
                "disableNameSuffixHash": True,
                "labels": _labels(ALERT_RULES, "alert-rules"),
            },
        }
    ]
    tree.write_yaml(
        f"{folder}/kustomization.yaml",
        component,
        comment="Alert rules (docs/observability.md): a PrometheusRule for prometheus-operator\n"
        "and the same rules as a plain rules file in the ConfigMap stackgen-alert-rules.",
    )
    kz.components.append("components/alerts")


def _add_dashboard(tree: Tree, kz: Kustomization) -> None:
    stack = tree.stack
    mon = stack.monitoring
    folder = "stack/components/dashboard"
    name = f"stackgen-{stack.name}.json"
    tree.write(f"{folder}/{name}", json.dumps(dashboard(stack), indent=2) + "\n")
    options: dict[str, Any] = {
        "disableNameSuffixHash": True,
        "labels": _labels(DASHBOARD, "dashboard", {mon.sidecar_label: mon.sidecar_label_value}),
    }
    if mon.folder:
        options["annotations"] = {"grafana_folder": mon.folder}
    component = {
        **_COMPONENT,
        "configMapGenerator": [{"name": DASHBOARD, "files": [name], "options": options}],
    }
    tree.write_yaml(
        f"{folder}/kustomization.yaml",
        component,
        comment="The Grafana dashboard, as a ConfigMap Grafana's dashboard sidecar loads.",
    )
    kz.components.append("components/dashboard")


def _monitor(stack: Stack, kind: str, app: str, port: str) -> dict[str, Any]:
    endpoint = {"port": port, "path": "/metrics", "interval": "30s"}
    selector = {"matchLabels": {"app.kubernetes.io/name": app}}
    spec: dict[str, Any] = {"selector": selector}
    if kind == "ServiceMonitor":
        spec["endpoints"] = [endpoint]
    else:
        spec["podMetricsEndpoints"] = [endpoint]
    return {
        "apiVersion": _MONITORING,
        "kind": kind,
        "metadata": {
            "name": app,
            "labels": _labels(app, "monitor", stack.monitoring.monitor_labels),
        },
        "spec": spec,
    }


def _no_annotations(deployment: str) -> dict[str, Any]:
    path = "/spec/template/metadata/annotations/prometheus.io~1"
    return json_patch(
        "Deployment",
        deployment,
        *({"op": "remove", "path": path + k} for k in ("scrape", "port", "path")),
    )


def _add_monitors(tree: Tree, kz: Kustomization) -> None:
    stack = tree.stack
    kind = {"serviceMonitor": "ServiceMonitor", "podMonitor": "PodMonitor"}[stack.monitoring.scrape]
    targets = []
    if stack.dispatched_queues:
        targets.append((DISPATCHER, "http"))
    if stack.hpa_queues:
        targets.append((METRICS_ADAPTER, "metrics"))
    docs = []
    for app, port in targets:
        docs.append(_monitor(stack, kind, app, port))
        kz.patches.append(_no_annotations(app))
    if docs:
        tree.write("stack/monitors.yaml", "---\n".join(yamlio.dump(d) for d in docs))
        kz.resources.append("monitors.yaml")


def add_monitoring(tree: Tree, kz: Kustomization) -> None:
    """Alert rules, the dashboard and the monitors the stack asks for."""
    mon = tree.stack.monitoring
    if mon.alerts:
        _add_alerts(tree, kz)
    if mon.dashboard:
        _add_dashboard(tree, kz)
    if mon.scrape != "annotations":
        _add_monitors(tree, kz)
