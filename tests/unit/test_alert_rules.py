"""The alert rules, checked by the real promtool: `check rules`, and `test rules` with
synthetic series that make every alert fire and hold off (tests/support/alert_tests.py).

promtool is built by bin/setup (`prometheus` step) from github.com/prometheus/prometheus;
a missing promtool fails these tests, it never skips them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from stackgen import tools
from stackgen.compose.alerts import ALERT_NAMES, rule_group
from stackgen.compose.monitoring import rules_file
from stackgen.stack.load import stack_from_data
from stackgen.stack.model import Stack
from tests.support.alert_tests import NS, STACK, cases, promtool_tests


def _stack(tmp_path: Path, thresholds: dict[str, Any] | None = None) -> Stack:
    data: dict[str, Any] = {
        "apiVersion": "stackgen.io/v1alpha1",
        "kind": "Stack",
        "metadata": {"name": STACK, "namespace": NS},
        "queues": [
            {"name": "default", "mode": "hpa"},
            {"name": "builds", "mode": "dispatch"},
            {"name": "deploy", "mode": "exact"},
        ],
        "secrets": {"agentToken": {"file": "secrets/token"}},
        "monitoring": {"alerts": {"enabled": True, "thresholds": thresholds or {}}},
    }
    return stack_from_data(data, tmp_path, tmp_path / "stack.yaml")


def _promtool() -> Path:
    path = tools.which("promtool")
    assert path is not None, "promtool not found: run bin/setup (step `prometheus`)"
    return path


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(_promtool()), *map(str, args)], cwd=cwd, capture_output=True, text=True, check=False
    )


def _write(tmp_path: Path, stack: Stack) -> tuple[Path, Path]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rules_file(stack), sort_keys=False))
    tests = tmp_path / "rules_test.yaml"
    doc = promtool_tests(rules.name, rule_group(stack), stack.monitoring.thresholds)
    tests.write_text(yaml.safe_dump(doc, sort_keys=False))
    return rules, tests


@pytest.mark.parametrize(
    "thresholds",
    [
        {},
        {"jobsWaitingSeconds": 300, "agentStartWindowSeconds": 600, "noLeaderSeconds": 60},
    ],
    ids=["defaults", "tuned"],
)
def test_promtool_checks_and_unit_tests_every_alert(
    tmp_path: Path, thresholds: dict[str, Any]
) -> None:
    stack = _stack(tmp_path, thresholds)
    rules, tests = _write(tmp_path, stack)
    checked = _run("check", "rules", rules, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(ALERT_NAMES)} rules found" in checked.stdout
    tested = _run("test", "rules", tests, cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout
    # Every alert has a case that makes it fire.
    assert {c.alert for c in cases(stack.monitoring.thresholds)} == set(ALERT_NAMES)


def test_promtool_test_fails_when_a_rule_is_wrong(tmp_path: Path) -> None:
    """The synthetic series really decide: a rule with a doubled threshold fails its test."""
    stack = _stack(tmp_path)
    rules, tests = _write(tmp_path, stack)
    doc = yaml.safe_load(rules.read_text())
    for rule in doc["groups"][0]["rules"]:
        if rule["alert"] == "StackgenJobsWaitingTooLong":
            rule["for"] = "30m"
    rules.write_text(yaml.safe_dump(doc, sort_keys=False))
    tested = _run("test", "rules", tests, cwd=tmp_path)
    assert tested.returncode != 0
    assert "StackgenJobsWaitingTooLong" in tested.stdout + tested.stderr


def test_thresholds_come_from_stack_yaml(tmp_path: Path) -> None:
    stack = _stack(tmp_path, {"jobsWaitingSeconds": 90, "apiErrorsPerSecond": 0.5})
    rules = {r["alert"]: r for r in rule_group(stack)["rules"]}
    waiting = rules["StackgenJobsWaitingTooLong"]
    assert waiting["for"] == "90s"
    assert "stackgen_adapter_buildkite_jobs_scheduled" in waiting["expr"]  # hpa queue too
    assert rules["StackgenApiErrors"]["expr"].endswith("> 0.5")
    assert all(f'namespace="{NS}"' in r["expr"] for r in rules.values())


def test_only_the_parts_a_stack_has_get_rules(tmp_path: Path) -> None:
    data_stack = _stack(tmp_path)
    dispatch_only = stack_from_data(
        {
            "apiVersion": "stackgen.io/v1alpha1",
            "kind": "Stack",
            "metadata": {"name": "d"},
            "queues": [{"name": "builds", "mode": "dispatch"}],
            "secrets": {"agentToken": {"file": "secrets/token"}},
        },
        tmp_path,
        tmp_path / "stack.yaml",
    )
    names = {r["alert"] for r in rule_group(dispatch_only)["rules"]}
    assert "StackgenMetricsAdapterStale" not in names and "StackgenDispatcherDown" in names
    assert {r["alert"] for r in rule_group(data_stack)["rules"]} == set(ALERT_NAMES)
