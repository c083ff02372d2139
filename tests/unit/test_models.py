"""The models stack.yaml and the dispatcher config share, and their one source of defaults."""

from __future__ import annotations

from dataclasses import fields

from stackgen.common.defaults import stack_default
from stackgen.common.models import DispatchedQueue, DispatchSettings, GitMirror
from stackgen.common.podsteps import PluginSettings
from stackgen.common.resources import load_schema


def dispatcher_item(name: str) -> dict[str, object]:
    props: dict[str, object] = load_schema("dispatcher")["properties"][name]["items"]["properties"]
    return props


def test_dispatch_settings_keys_are_the_schemas() -> None:
    stack_keys = load_schema("stack")["$defs"]["dispatchSettings"]["properties"]
    written = DispatchSettings().to_dict()
    assert list(written) == list(stack_keys)
    assert set(written["cooldown"]) == set(stack_keys["cooldown"]["properties"])
    queue = DispatchedQueue("q", "exact", "buildkite-agent-q", 0, 1, 0)
    assert set(queue.to_dict()) == set(dispatcher_item("queues"))
    # A dispatch queue runs no step pods: its entry leaves the plugin settings out.
    queue = DispatchedQueue("q", "dispatch", "buildkite-agent-q", 0, 1, 0)
    assert set(queue.to_dict()) == set(dispatcher_item("queues")) - {"kubernetesPlugin"}


def test_plugin_settings_keys_and_defaults_are_the_schemas() -> None:
    stack_keys = load_schema("stack")["$defs"]["kubernetesPlugin"]["properties"]
    dispatcher_keys = dispatcher_item("queues")["kubernetesPlugin"]["properties"]  # type: ignore[index]
    written = PluginSettings().to_dict()
    assert list(written) == list(stack_keys) == list(dispatcher_keys)
    for key, value in written.items():
        assert value == stack_default(f"queues.kubernetesPlugin.{key}"), key
    given = PluginSettings.from_dict({"allowedImages": ["alpine:*"], "maxResources": {"cpu": 2}})
    assert given.allowed_images == ("alpine:*",) and given.max_resources == {"cpu": "2"}
    assert PluginSettings.from_dict(given.to_dict()) == given


def test_every_dispatch_setting_defaults_to_the_schema() -> None:
    settings = DispatchSettings()
    for field in fields(DispatchSettings):
        key = field.metadata["key"]
        # The workload's default is stack-wide: dispatcher.workload.
        path = "dispatcher.workload" if key == "workload" else f"queues.dispatch.{key}"
        assert getattr(settings, field.name) == stack_default(path), key


def test_git_mirror_keys_and_defaults_are_the_schemas() -> None:
    mirror = GitMirror("mono", "https://git.example/mono.git")
    assert set(mirror.to_dict()) == set(dispatcher_item("gitMirrors"))
    for key in ("schedule", "storage", "keep", "image"):
        assert getattr(mirror, key) == stack_default(f"gitMirrors.{key}")


def test_models_round_trip_through_the_dispatcher_config() -> None:
    queue = DispatchedQueue(
        "deploy",
        "exact",
        "buildkite-agent-deploy",
        0,
        5,
        0,
        DispatchSettings(poll_interval_seconds=3, cooldown_share=0.8),
        git_mirror="mono",
    )
    assert DispatchedQueue.from_dict(queue.to_dict()) == queue
    mirror = GitMirror("mono", "https://git.example/mono.git", storage_class_name="fast")
    assert GitMirror.from_dict(mirror.to_dict()) == mirror
