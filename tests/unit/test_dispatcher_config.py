"""The dispatcher's config: one source of truth with stack.yaml, clear start-up errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml

from stackgen.compose import dispatcher_config
from stackgen.dispatcher.config import from_dict, load
from stackgen.dispatcher.jobs import build_job
from stackgen.dispatcher.mirrors import mirror_dir
from stackgen.dispatcher.planner import CreateJob
from stackgen.stack.load import load_stack
from tests.support.cli import Run
from tests.support.fake_kube import cronjob_template
from tests.support.paths import ROOT


def test_generated_config_loads() -> None:
    stack = load_stack(ROOT / "tests/golden/dispatch-exact-mirrors/overlay")
    config = from_dict(dispatcher_config(stack))
    assert [(q.name, q.mode) for q in config.queues] == [
        ("builds", "dispatch"),
        ("deploy", "exact"),
    ]
    builds = config.queue("builds")
    assert (
        builds is not None
        and builds.git_mirror == "monorepo"
        and builds.dispatch.cooldown_share == 0.8
    )
    assert config.webhook_enabled and config.webhook_token_env == "BUILDKITE_WEBHOOK_TOKEN"
    (mirror,) = config.mirrors
    assert mirror.mount_path == "/buildkite/git-mirrors"


def test_bad_config_fails_at_start_naming_the_field(
    stackgen: Callable[..., Run], tmp_path: Path
) -> None:
    stack = load_stack(ROOT / "overlays/example")
    data = dispatcher_config(stack)
    data["queues"][0]["maxAgents"] = "many"
    path = tmp_path / "dispatcher.yaml"
    path.write_text(yaml.safe_dump(data))
    run = stackgen("dispatcher", "--config", str(path), env={"BUILDKITE_AGENT_TOKEN": "x"})
    assert run.code == 1
    assert f"{path}: queues[0].maxAgents: must be an integer, not a string" in run.stderr
    assert "Traceback" not in run.stderr


def test_missing_token_env_fails_at_start(tmp_path: Path) -> None:
    stack = load_stack(ROOT / "overlays/example")
    path = tmp_path / "dispatcher.yaml"
    path.write_text(yaml.safe_dump(dispatcher_config(stack)))
    import pytest

    from stackgen.common.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert (
        "buildkite.tokenEnv: environment variable BUILDKITE_AGENT_TOKEN is empty or unset"
        in str(info.value)
    )


def test_warm_jobs_drop_the_idle_timeout_and_mirrors_mount_read_only() -> None:
    stack = load_stack(ROOT / "tests/golden/dispatch-exact-mirrors/overlay")
    config = from_dict(dispatcher_config(stack))
    queue = config.queue("builds")
    assert queue is not None
    cron = cronjob_template("buildkite-agent-builds", "builds")
    cron["metadata"]["uid"] = "u-1"
    job = build_job(
        cron,
        CreateJob(
            queue="builds",
            name="buildkite-agent-builds-abc",
            dispatch_id="abc",
            parallelism=2,
            warm=True,
        ),
        queue,
        mirror_claim="git-mirror-monorepo-1",
        mirror_path="/buildkite/git-mirrors",
    )
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["start", "--disconnect-after-job"]
    assert {
        "name": "git-mirror",
        "mountPath": "/buildkite/git-mirrors",
        "readOnly": True,
    } in container["volumeMounts"]
    assert job["metadata"]["labels"]["stackgen.io/warm"] == "true"


def test_mirror_dir_matches_the_agents_rule() -> None:
    assert (
        mirror_dir("https://github.com/example/monorepo.git")
        == "https---github-com-example-monorepo-git"
    )
    assert mirror_dir("git@github.com:org/repo.git") == "git-github-com-org-repo-git"


def test_workload_defaults_stack_wide_and_a_queue_may_override_it(tmp_path: Path) -> None:
    import shutil

    overlay = tmp_path / "overlay"
    shutil.copytree(ROOT / "tests/golden/dispatch-exact-mirrors/overlay", overlay)
    data = yaml.safe_load((overlay / "stack.yaml").read_text())
    config = from_dict(dispatcher_config(load_stack(overlay)))
    assert [q.dispatch.workload for q in config.queues] == ["job", "job"]
    data["dispatcher"]["workload"] = "pod"
    data["queues"][0].setdefault("dispatch", {})["workload"] = "job"
    (overlay / "stack.yaml").write_text(yaml.safe_dump(data))
    config = from_dict(dispatcher_config(load_stack(overlay)))
    assert [(q.name, q.dispatch.workload) for q in config.queues] == [
        ("builds", "job"),
        ("deploy", "pod"),
    ]


def test_endpoint_override_replaces_the_configs_endpoint(tmp_path: Path) -> None:
    from stackgen.dispatcher.config import with_endpoint

    stack = load_stack(ROOT / "overlays/example")
    path = tmp_path / "dispatcher.yaml"
    path.write_text(yaml.safe_dump(dispatcher_config(stack)))
    config = load(path, environ={"BUILDKITE_AGENT_TOKEN": "x"})
    assert config.endpoint == "https://agent.buildkite.com/v3"
    sandbox = "http://fake-buildkite.stackgen-sandbox.svc:8080/v3"
    changed = with_endpoint(config, sandbox, "--endpoint")
    assert changed.endpoint == sandbox
    assert changed.queues == config.queues


def test_bad_endpoint_override_fails_at_start(stackgen: Callable[..., Run], tmp_path: Path) -> None:
    stack = load_stack(ROOT / "overlays/example")
    path = tmp_path / "dispatcher.yaml"
    path.write_text(yaml.safe_dump(dispatcher_config(stack)))
    run = stackgen(
        "dispatcher",
        "--config",
        str(path),
        env={"BUILDKITE_AGENT_TOKEN": "x", "STACKGEN_BUILDKITE_ENDPOINT": "fake buildkite"},
    )
    assert run.code == 1
    assert run.lines == [
        "--endpoint (STACKGEN_BUILDKITE_ENDPOINT): not an http(s) URL: 'fake buildkite'"
    ]
