"""Step pods as the dispatcher builds them, on the ``tests/golden/pod-steps`` stack.

The queue's template is the CronJob that golden stack renders, its settings are the
dispatcher config rendered beside it: the pod builder is tested on real build output.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from stackgen.buildkite.models import StackJob
from stackgen.common.models import DispatchedQueue
from stackgen.dispatcher.jobs import build_job
from stackgen.dispatcher.planner import CreateJob
from stackgen.dispatcher.podspec import find_plugin
from stackgen.dispatcher.steps import step_job
from tests.support.paths import ROOT
from tests.support.pipelines import load_steps

STACK = ROOT / "tests" / "golden" / "pod-steps" / "expected.yaml"
CASES = ROOT / "tests" / "podspec"
JOB_UUID = "01890000-0000-4000-8000-000000000001"


@cache
def _objects() -> tuple[dict[str, Any], ...]:
    return tuple(yaml.safe_load_all(STACK.read_text()))


def cronjob(queue: str) -> dict[str, Any]:
    """The queue's suspended CronJob, as the API server returns it (with a uid)."""
    for obj in _objects():
        if obj["kind"] == "CronJob" and obj["metadata"]["name"] == f"buildkite-agent-{queue}":
            found = copy.deepcopy(obj)
            found["metadata"]["uid"] = "00000000-0000-4000-8000-00000000c0de"
            return found
    raise KeyError(queue)


def queue(name: str) -> DispatchedQueue:
    """The queue as the dispatcher's config (rendered by the build) describes it."""
    for obj in _objects():
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].startswith(
            "stackgen-dispatcher-config"
        ):
            config = yaml.safe_load(obj["data"]["dispatcher.yaml"])
            for entry in config["queues"]:
                if entry["name"] == name:
                    return DispatchedQueue.from_dict(entry)
    raise KeyError(name)


def template_job(queue_name: str, uuid: str = JOB_UUID) -> dict[str, Any]:
    """The Job the queue's template gives a job (what a step without the plugin gets)."""
    action = CreateJob(
        queue=queue_name,
        name="buildkite-agent-pods-abcd1234-1",
        dispatch_id="abcd1234",
        parallelism=1,
        buildkite_job=uuid,
    )
    return build_job(cronjob(queue_name), action, queue(queue_name))


def step_job_for(command: str, env: dict[str, str], queue_name: str = "pods") -> dict[str, Any]:
    """The Job the dispatcher creates for a step (raises PluginError when refused)."""
    plugin = find_plugin(env)
    assert plugin is not None, "the step has no kubernetes plugin"
    job = StackJob(uuid=JOB_UUID, command=command, env=env)
    return step_job(template_job(queue_name), job, plugin, queue(queue_name))


def case_job(case: str, queue_name: str = "pods") -> dict[str, Any]:
    """The Job for the one step of ``tests/podspec/<case>/pipeline.yml``."""
    ((command, env),) = load_steps(CASES / case / "pipeline.yml")
    return step_job_for(command, env, queue_name)


def case_names() -> list[str]:
    return sorted(p.name for p in CASES.iterdir() if (p / "pipeline.yml").is_file())


def expected_path(case: str) -> Path:
    return CASES / case / "expected.yaml"


def render(job: dict[str, Any]) -> str:
    """What a case's expected.yaml holds: the Job's pod template."""
    return yaml.safe_dump(job["spec"]["template"], sort_keys=True, width=100)


def update() -> None:
    """Rewrite every case's expected.yaml (``bin/update-golden``)."""
    for case in case_names():
        expected_path(case).write_text(render(case_job(case)))
        print(f"updated {expected_path(case).relative_to(ROOT)}")


if __name__ == "__main__":
    update()
