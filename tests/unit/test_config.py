"""The stack config: schema and code agree; errors read well."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from stackgen.common import names
from stackgen.common.errors import ConfigError
from stackgen.common.resources import load_schema
from stackgen.common.schema_errors import did_you_mean, format_path
from stackgen.stack.load import load_stack
from stackgen.stack.model import DispatchSettings, HpaSettings, queue_slug
from tests.support.paths import EXAMPLE, ROOT


def test_schema_defaults_match_code_defaults() -> None:
    defs = load_schema("stack")["$defs"]
    hpa = defs["hpaSettings"]["properties"]
    code = HpaSettings()
    assert hpa["jobsPerAgent"]["default"] == code.jobs_per_agent
    assert hpa["targetBusyPercent"]["default"] == code.target_busy_percent
    up, down = hpa["scaleUp"]["default"], hpa["scaleDown"]["default"]
    assert (up["pods"], up["percent"], up["periodSeconds"], up["stabilizationWindowSeconds"]) == (
        code.scale_up.pods,
        code.scale_up.percent,
        code.scale_up.period_seconds,
        code.scale_up.stabilization_window_seconds,
    )
    assert (down["pods"], down.get("percent"), down["periodSeconds"]) == (
        code.scale_down.pods,
        code.scale_down.percent,
        code.scale_down.period_seconds,
    )
    disp = defs["dispatchSettings"]["properties"]
    dcode = DispatchSettings()
    assert disp["pollIntervalSeconds"]["default"] == dcode.poll_interval_seconds
    assert disp["cooldown"]["default"] == {
        "share": dcode.cooldown_share,
        "timeoutSeconds": dcode.cooldown_timeout_seconds,
    }
    for key, field in (
        ("activeDeadlineSeconds", "active_deadline_seconds"),
        ("ttlSecondsAfterFinished", "ttl_seconds_after_finished"),
        ("podStartTimeoutSeconds", "pod_start_timeout_seconds"),
    ):
        assert disp[key]["default"] == getattr(dcode, field)


def test_every_schema_field_is_described_or_obvious() -> None:
    schema = load_schema("stack")
    assert all("description" in v for v in schema["properties"].values())
    assert all(
        "description" in v
        for v in schema["$defs"]["queue"]["properties"].values()
        if "$ref" not in v
    )


def test_versions_file_agrees_with_python() -> None:
    versions = dict(
        line.split("=", 1)
        for line in (ROOT / "bin" / "versions.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    major_minor = re.match(r"v(\d+\.\d+)\.", versions["KUBERNETES_VERSION"]).group(1)  # type: ignore[union-attr]
    assert names.DEFAULT_KUBERNETES_VERSION.startswith(major_minor + ".")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f"kubernetes-validate=={versions['KUBERNETES_VALIDATE_VERSION']}" in pyproject
    from stackgen import tools

    assert versions["KUSTOMIZE_VERSION"] in tools.KUSTOMIZE_INSTALL
    assert versions["KUBECONFORM_VERSION"] in tools.KUBECONFORM_INSTALL


def test_example_loads_into_typed_objects() -> None:
    stack = load_stack(EXAMPLE)
    assert stack.namespace == "buildkite"
    default, builds = stack.queues
    assert (default.mode, default.min_agents, default.max_agents) == ("hpa", 1, 10)
    assert builds.dispatch.poll_interval_seconds == 5
    assert builds.resources.requests == {"cpu": "2", "memory": "4Gi"}
    assert default.resources == stack.agent.resources  # inherited
    assert builds.tags == {"os": "linux", "size": "large"}
    assert stack.hpa_queues == [default] and stack.dispatched_queues == [builds]
    assert dataclasses.is_dataclass(stack)


@pytest.mark.parametrize(
    ("name", "slug"), [("default", "default"), ("Linux_Large", "linux-large"), ("a.b", "a-b")]
)
def test_queue_slug(name: str, slug: str) -> None:
    assert queue_slug(name) == slug


def test_format_path_and_hint() -> None:
    assert format_path(["queues", 2, "hpa", "scaleUp"]) == "queues[2].hpa.scaleUp"
    assert did_you_mean("queus", ["queues", "hooks"]) == "; did you mean 'queues'?"
    assert did_you_mean("zzz", ["queues"]) == ""


def test_all_problems_are_sorted_and_located(tmp_path: Path) -> None:
    overlay = tmp_path / "o"
    overlay.mkdir()
    (overlay / "stack.yaml").write_text(
        "apiVersion: stackgen.io/v1alpha1\nkind: Stack\nmetadata: {name: Bad_Name}\n"
        "queues: [{name: a, mode: hpa, maxAgents: 0}]\nsecrets: {agentToken: {}}\nextra: 1\n"
    )
    with pytest.raises(ConfigError) as info:
        load_stack(overlay)
    lines = [str(p) for p in info.value.problems]
    assert [line.split(": ", 2)[1] for line in lines] == [
        "extra",
        "metadata.name",
        "queues[0].maxAgents",
        "secrets.agentToken",
    ]
    assert lines[3].endswith("must set exactly one of: file, env, existingSecret")
