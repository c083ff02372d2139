"""`stackgen build` of the example with every monitoring component on: it validates
(kubeconform against the prometheus-operator CRD schemas bin/setup generates), and
what it contains: the PrometheusRule, the plain rules ConfigMap, the dashboard ConfigMap,
monitors instead of scrape annotations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from stackgen.common.errors import StackgenError
from stackgen.compose.dashboard import PANELS
from stackgen.pipeline import BuildOptions, build
from tests.support.paths import EXAMPLE

MONITORING = """
monitoring:
  alerts:
    enabled: true
    labels: {team: ci-platform}
    ruleLabels: {release: prometheus}
    thresholds: {jobsWaitingSeconds: 300}
  dashboard: {enabled: true, folder: CI}
  scrape: {scrape}
  monitorLabels: {release: prometheus}
"""


def _example(tmp_path: Path, scrape: str) -> Path:
    overlay = tmp_path / "example"
    shutil.copytree(EXAMPLE, overlay)
    with (overlay / "stack.yaml").open("a", encoding="utf-8") as f:
        f.write(MONITORING.replace("{scrape}", scrape))
    return overlay


def _by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def _configmap(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [o for o in _by_kind(objects, "ConfigMap") if o["metadata"]["name"] == name]
    return found


@pytest.mark.parametrize("scrape", ["serviceMonitor", "podMonitor"])
def test_example_with_every_component_builds_and_validates(tmp_path: Path, scrape: str) -> None:
    result = build(_example(tmp_path, scrape), BuildOptions())
    objects = result.objects
    assert result.kubeconform_summary.get("invalid", 0) == 0
    (rule,) = _by_kind(objects, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    (group,) = rule["spec"]["groups"]
    assert all(r["labels"]["team"] == "ci-platform" for r in group["rules"])
    waiting = next(r for r in group["rules"] if r["alert"] == "StackgenJobsWaitingTooLong")
    assert waiting["for"] == "5m"
    # The same rules as a plain rules file.
    rules_file = yaml.safe_load(
        _configmap(objects, "stackgen-alert-rules")["data"]["stackgen-rules.yaml"]
    )
    assert rules_file["groups"] == rule["spec"]["groups"]
    # The dashboard, labelled for Grafana's sidecar.
    board = _configmap(objects, "stackgen-dashboard")
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert board["metadata"]["annotations"]["grafana_folder"] == "CI"
    model = json.loads(board["data"]["stackgen-example.json"])
    assert [p["title"] for p in model["panels"]] == [p[0] for p in PANELS]
    # Monitors for both processes, and no scrape annotations left (nothing scraped twice).
    kind = scrape[0].upper() + scrape[1:]
    monitors = _by_kind(objects, kind)
    assert sorted(m["metadata"]["name"] for m in monitors) == [
        "stackgen-dispatcher",
        "stackgen-metrics-adapter",
    ]
    for deployment in _by_kind(objects, "Deployment"):
        pod_annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
        assert not any(k.startswith("prometheus.io/") for k in pod_annotations)


def test_without_monitors_the_pods_carry_scrape_annotations(tmp_path: Path) -> None:
    objects = build(_example(tmp_path, "annotations"), BuildOptions()).objects
    assert not _by_kind(objects, "ServiceMonitor") and not _by_kind(objects, "PodMonitor")
    scraped = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]
        for d in _by_kind(objects, "Deployment")
        if d["metadata"]["name"].startswith("stackgen-")
    }
    assert set(scraped) == {"stackgen-dispatcher", "stackgen-metrics-adapter"}
    for pod_annotations in scraped.values():
        assert pod_annotations["prometheus.io/scrape"] == "true"
        assert pod_annotations["prometheus.io/port"] == "8080"


def test_the_example_without_monitoring_has_none(tmp_path: Path) -> None:
    objects = build(EXAMPLE, BuildOptions()).objects
    assert not _by_kind(objects, "PrometheusRule")
    assert not [o for o in _by_kind(objects, "ConfigMap") if "alert" in o["metadata"]["name"]]


def test_an_invalid_prometheusrule_fails_validation(tmp_path: Path) -> None:
    """The CRD schema decides: a rule with an unknown field is refused offline."""
    overlay = _example(tmp_path, "annotations")
    (overlay / "rule-patch.yaml").write_text(
        "- op: add\n  path: /spec/groups/0/rules/0/severity\n  value: high\n"
    )
    with (overlay / "stack.yaml").open("a", encoding="utf-8") as f:
        f.write(
            "kustomize:\n  resources: [extra/agent-poddisruptionbudget.yaml]\n"
            "  patches:\n    - path: rule-patch.yaml\n"
            "      target: {kind: PrometheusRule, name: stackgen-alert-rules}\n"
        )
    text = (overlay / "stack.yaml").read_text()
    # The example's own kustomize block is replaced by the one above.
    head, _, rest = text.partition(
        "kustomize:\n  resources:\n    - extra/agent-poddisruptionbudget.yaml\n"
    )
    (overlay / "stack.yaml").write_text(head + rest)
    with pytest.raises(StackgenError) as caught:
        build(overlay, BuildOptions())
    assert "PrometheusRule/stackgen-alert-rules" in str(caught.value)
    assert "severity" in str(caught.value)
