"""Pod specs of steps that carry the ``kubernetes`` plugin: golden cases, wiring, guard rails.

The template is the ``pods`` queue of ``tests/golden/pod-steps`` (real build output: the
stack's hooks, git credentials and SSH key are in it).  Regenerate the golden pods with
``bin/update-golden`` and review the diff.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from stackgen.common.podsteps import PluginSettings
from stackgen.dispatcher.podspec import PLUGIN_KEY, PluginError, find_plugin
from stackgen.dispatcher.podspec.build import command_of
from tests.support import step_pods
from tests.support.paths import ROOT
from tests.support.pipelines import job_of, load_steps


def containers(job: dict[str, Any], field: str = "containers") -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in job["spec"]["template"]["spec"].get(field) or []}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env") or []}


def mounts_of(container: dict[str, Any]) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or []}


def plugin_step(settings: dict[str, Any], command: str = "echo hi", **env: str) -> dict[str, str]:
    return {"BUILDKITE_PLUGINS": json.dumps([{PLUGIN_KEY: settings}]), **env}


@pytest.mark.parametrize("case", step_pods.case_names())
def test_golden_pod(case: str) -> None:
    expected = step_pods.expected_path(case).read_text()
    actual = step_pods.render(step_pods.case_job(case))
    assert actual == expected, f"{case}: pod differs from golden (run bin/update-golden)"


def test_there_are_the_golden_cases_the_brief_names() -> None:
    assert {
        "two-containers",
        "sidecar",
        "podspecpatch-resources",
        "extra-volume-mounts",
        "skip-checkout",
    } <= set(step_pods.case_names())


def test_two_containers_run_the_command_through_the_agents_kubernetes_exec_mode() -> None:
    job = step_pods.case_job("two-containers")
    found = containers(job)
    assert list(found) == ["container-0", "container-1", "agent", "checkout"]
    agent = found["agent"]
    assert "--kubernetes-exec" in agent["args"] and agent["args"][0] == "start"
    agent_env = env_of(agent)
    # The agent waits for every container that connects: checkout + two commands.
    assert agent_env["BUILDKITE_CONTAINER_COUNT"] == "3"
    assert agent_env["BUILDKITE_AGENT_ACQUIRE_JOB"] == step_pods.JOB_UUID
    ids = {env_of(c)["BUILDKITE_CONTAINER_ID"] for n, c in found.items() if n != "agent"}
    assert ids == {"0", "1", "2"}
    for name in ("container-0", "container-1"):
        command = found[name]
        assert command["command"] == ["/workspace/buildkite-agent"]
        assert command["args"] == ["kubernetes-bootstrap"]
        assert env_of(command)["BUILDKITE_BOOTSTRAP_PHASES"] == "plugin,command"
        assert mounts_of(command)["/workspace"] == "workspace"
    assert env_of(found["container-0"])["BUILDKITE_COMMAND"] == "cat README.md"
    assert env_of(found["container-1"])["BUILDKITE_COMMAND"] == "make test 'NAME=a b'"
    assert env_of(found["checkout"])["BUILDKITE_BOOTSTRAP_PHASES"] == "plugin,checkout"
    (copy_agent,) = containers(job, "initContainers").values()
    assert copy_agent["name"] == "copy-agent" and copy_agent["image"] == agent["image"]
    meta = job["spec"]["template"]["metadata"]
    assert meta["labels"]["some-label"] == "wow"
    assert meta["annotations"]["some-annotation"] == "cool"


def test_the_stacks_secrets_and_hooks_are_wired_into_checkout_not_into_step_images() -> None:
    found = containers(step_pods.case_job("two-containers"))
    checkout = mounts_of(found["checkout"])
    assert checkout["/buildkite/secrets/ssh"] == "ssh-key"
    assert checkout["/buildkite/secrets/git-credentials"] == "git-credentials"
    assert checkout["/buildkite/stackgen-hooks"] == "stackgen-hooks"
    assert checkout["/buildkite/hooks"] == "hooks"
    assert found["checkout"]["envFrom"] == found["agent"]["envFrom"]
    command = mounts_of(found["container-0"])
    assert command["/buildkite/hooks"] == "hooks"  # the user's hooks run in every phase
    assert not {"/buildkite/secrets/ssh", "/buildkite/secrets/git-credentials"} & set(command)


def test_sidecar_is_a_native_sidecar_sharing_the_workspace() -> None:
    job = step_pods.case_job("sidecar")
    init = containers(job, "initContainers")
    assert list(init) == ["copy-agent", "sidecar-0"]
    assert init["sidecar-0"]["restartPolicy"] == "Always"
    assert mounts_of(init["sidecar-0"])["/workspace"] == "workspace"
    (command,) = [c for n, c in containers(job).items() if n.startswith("container-")]
    assert command["image"] == "alpine:3.20"  # the step's `image:`
    assert env_of(command)["BUILDKITE_COMMAND"] == "wget -qO- http://localhost:8080/"


def test_podspecpatch_changes_resources_by_container_name() -> None:
    found = containers(step_pods.case_job("podspecpatch-resources"))
    assert found["build"]["resources"] == {
        "requests": {"cpu": "2", "memory": "4Gi"},
        "limits": {"memory": "6Gi"},
    }
    assert env_of(found["build"])["MOUNTAIN"] == "cotopaxi"
    assert found["agent"]["resources"]["limits"] == {"memory": "512Mi"}
    assert found["agent"]["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}


def test_extra_volume_mounts_reach_every_coordinated_container() -> None:
    job = step_pods.case_job("extra-volume-mounts")
    found = containers(job)
    for name in ("container-0", "checkout"):
        assert mounts_of(found[name])["/cache"] == "cache"
    assert mounts_of(found["container-0"])["/settings"] == "settings"
    assert "/settings" not in mounts_of(found["checkout"])
    volumes = {v["name"] for v in job["spec"]["template"]["spec"]["volumes"]}
    assert {"cache", "settings", "workspace", "hooks"} <= volumes


def test_skipped_checkout_leaves_one_coordinated_container() -> None:
    found = containers(step_pods.case_job("skip-checkout"))
    assert list(found) == ["container-0", "agent"]
    assert env_of(found["agent"])["BUILDKITE_CONTAINER_COUNT"] == "1"
    assert env_of(found["container-0"])["BUILDKITE_CONTAINER_ID"] == "0"
    assert env_of(found["container-0"])["BUILDKITE_COMMAND"] == "echo hello-skip-checkout"
    assert found["container-0"]["image"] == found["agent"]["image"]


def test_queue_podspecpatch_applies_before_the_steps() -> None:
    queue = step_pods.queue("pods")
    assert queue.kubernetes_plugin.pod_spec_patch == {"nodeSelector": {"kubernetes.io/os": "linux"}}
    job = step_pods.case_job("two-containers")
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    env = plugin_step({"podSpecPatch": {"nodeSelector": {"kubernetes.io/os": "windows"}}})
    job = step_pods.step_job_for("echo", env)
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/os": "windows"}


def test_checkout_options_become_the_agents_git_settings() -> None:
    env = plugin_step({"checkout": {"cloneFlags": "--depth=1", "noSubmodules": True}})
    agent = containers(step_pods.step_job_for("echo", env))["agent"]
    assert env_of(agent)["BUILDKITE_GIT_CLONE_FLAGS"] == "--depth=1"
    assert env_of(agent)["BUILDKITE_NO_GIT_SUBMODULES"] == "true"


def test_podspecpatch_command_of_a_command_container_becomes_its_buildkite_command() -> None:
    env = plugin_step(
        {
            "podSpec": {"containers": [{"name": "m", "image": "alpine:3", "command": ["a"]}]},
            "podSpecPatch": {"containers": [{"name": "m", "command": ["b"]}]},
        }
    )
    found = containers(step_pods.step_job_for("ignored", env))
    assert found["m"]["command"] == ["/workspace/buildkite-agent"]
    assert env_of(found["m"])["BUILDKITE_COMMAND"] == "b"


@pytest.mark.parametrize("name", ["agent", "checkout"])
def test_podspecpatch_may_not_change_the_agents_own_commands(name: str) -> None:
    env = plugin_step({"podSpecPatch": {"containers": [{"name": name, "command": ["sh"]}]}})
    with pytest.raises(PluginError, match=f"command or args of the {name} container"):
        step_pods.step_job_for("echo", env)


def test_interposers_follow_agent_stack_k8s() -> None:
    container = {"command": ["set -e", "echo a"], "args": ["x y"]}
    assert command_of(container, "step", "buildkite") == "set -e\necho a 'x y'"
    assert command_of(container, "step", "vector") == "'set -e' 'echo a' 'x y'"
    assert command_of(container, "step", "legacy") == "set -e echo a x y"
    assert command_of({}, "step", "buildkite") == "step"


# ------------------------------------------------------------------ the sample shapes


def test_agent_stack_k8s_sample_shapes_are_accepted() -> None:
    queue = step_pods.queue("plain")
    permissive = dataclasses.replace(
        queue,
        kubernetes_plugin=dataclasses.replace(queue.kubernetes_plugin, allow_host_path=True),
    )
    steps = load_steps(ROOT / "tests" / "podspec" / "samples.yml")
    assert len(steps) >= 12
    from stackgen.buildkite.models import StackJob
    from stackgen.dispatcher.steps import step_job

    for command, env in steps:
        plugin = find_plugin(env)
        assert plugin is not None
        template = step_pods.template_job("plain")
        job = step_job(template, StackJob(step_pods.JOB_UUID, command, env), plugin, permissive)
        assert containers(job)["agent"]["args"][-1] == "--kubernetes-exec"


def test_a_step_without_the_plugin_has_no_plugin() -> None:
    assert find_plugin({}) is None
    _, env = job_of({"command": "make", "plugins": ["docker#v5.0.0"]})
    assert find_plugin(env) is None


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"podTemplate": "x"}, "podTemplate is not supported"),
        ({"checkout": {"gitCredentialsSecret": {"secretName": "x"}}}, "not supported"),
        ({"podSpecs": {}}, "unknown key 'podSpecs'"),
        ({"commandParams": {"interposer": "zsh"}}, "interposer 'zsh'"),
        ({"podSpec": {"serviceAccountName": "admin"}}, "service account"),
        ({"podSpecPatch": {"automountServiceAccountToken": True}}, "automountServiceAccountToken"),
        ({"podSpecPatch": {"containers": [{"image": "x"}]}}, "merge key 'name'"),
    ],
)
def test_unusable_plugin_settings_are_refused_with_the_reason(
    settings: dict[str, Any], reason: str
) -> None:
    with pytest.raises(PluginError, match=reason):
        step_pods.step_job_for("echo", plugin_step(settings))


# ------------------------------------------------------------------ guard rails


def refused(settings: dict[str, Any], queue: str = "pods", **env: str) -> str:
    with pytest.raises(PluginError) as info:
        step_pods.step_job_for("echo", plugin_step(settings, **env), queue)
    return str(info.value)


def container_spec(**fields: Any) -> dict[str, Any]:
    return {"podSpec": {"containers": [{"image": "alpine:3.20", "command": ["true"], **fields}]}}


def test_guard_images_must_match_the_queues_patterns() -> None:
    reason = refused(container_spec(image="ubuntu:24.04"))
    assert "'ubuntu:24.04' is not allowed on this queue" in reason
    assert "alpine:*, registry.example.com/ci/*" in reason
    assert "is not allowed" in refused({"sidecars": [{"image": "nginx:1"}]})
    assert "is not allowed" in refused({}, BUILDKITE_IMAGE="ubuntu:24.04")
    patch = {"podSpecPatch": {"containers": [{"name": "agent", "image": "evil/agent:1"}]}}
    assert "'evil/agent:1' is not allowed" in refused(patch)
    # Allowed patterns, and the stack's own agent image, pass.
    step_pods.step_job_for("echo", plugin_step(container_spec(image="alpine:3.19")))
    step_pods.step_job_for("echo", plugin_step(container_spec(image="buildkite/agent:3.117.0")))


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        (container_spec(securityContext={"privileged": True}), "privileged mode"),
        (
            container_spec(securityContext={"allowPrivilegeEscalation": True}),
            "allowPrivilegeEscalation",
        ),
        (container_spec(securityContext={"capabilities": {"add": ["SYS_ADMIN"]}}), "SYS_ADMIN"),
        (container_spec(ports=[{"containerPort": 80, "hostPort": 80}]), "hostPort"),
        ({"podSpec": {"hostNetwork": True}}, "hostNetwork"),
        ({"podSpecPatch": {"hostPID": True}}, "hostPID"),
        ({"podSpec": {"hostIPC": True}}, "hostIPC"),
        ({"podSpec": {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}}, "hostPath"),
        (
            {"sidecars": [{"image": "alpine:3", "securityContext": {"privileged": True}}]},
            "privileged mode",
        ),
        (
            {
                "podSpecPatch": {
                    "containers": [{"name": "checkout", "securityContext": {"privileged": True}}]
                }
            },
            "privileged mode",
        ),
    ],
)
def test_guard_privileged_and_host_settings_are_never_allowed_by_default(
    settings: dict[str, Any], reason: str
) -> None:
    assert reason in refused(settings)


def test_guard_allowed_capabilities_pass() -> None:
    ok = container_spec(securityContext={"capabilities": {"add": ["NET_ADMIN"]}})
    step_pods.step_job_for("echo", plugin_step(ok))


def test_guard_opt_ins_allow_what_they_name() -> None:
    queue = step_pods.queue("plain")
    opened = dataclasses.replace(
        queue,
        kubernetes_plugin=PluginSettings(
            allow_privileged=True, allow_host_namespaces=True, allow_host_path=True
        ),
    )
    from stackgen.buildkite.models import StackJob
    from stackgen.dispatcher.steps import step_job

    settings = container_spec(securityContext={"privileged": True})
    settings["podSpec"].update(hostNetwork=True, volumes=[{"name": "h", "hostPath": {"path": "/"}}])
    env = plugin_step(settings)
    plugin = find_plugin(env)
    assert plugin is not None
    step_job(step_pods.template_job("plain"), StackJob("u", "echo", env), plugin, opened)
    with pytest.raises(PluginError, match="hostNetwork"):
        step_job(step_pods.template_job("plain"), StackJob("u", "echo", env), plugin, queue)


def test_guard_resources_have_defaults_and_maxima() -> None:
    found = containers(step_pods.step_job_for("echo", plugin_step(container_spec())))
    assert found["container-0"]["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "512Mi"},
    }
    big = container_spec(resources={"requests": {"cpu": "8"}, "limits": {"memory": "16Gi"}})
    reason = refused(big)
    assert "requests.cpu 8 is above this queue's maximum 4" in reason
    assert "limits.memory 16Gi is above this queue's maximum 8Gi" in reason
    at_max = container_spec(resources={"requests": {"cpu": "4000m"}, "limits": {"memory": "8Gi"}})
    step_pods.step_job_for("echo", plugin_step(at_max))
    patch = {
        "podSpecPatch": {
            "containers": [{"name": "agent", "resources": {"limits": {"memory": "9Gi"}}}]
        }
    }
    assert "container 'agent': limits.memory 9Gi is above" in refused(patch)
