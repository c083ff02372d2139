"""What the API server or the container runtime would refuse, found in ``stack.yaml``.

The JSON schema says what each field may hold on its own; these rules say what the
objects built from it may hold (:mod:`stackgen.common.kubegrammar`): the names stackgen
derives from queue names, label keys and values, the annotations' total size, cron
schedules, image references, environment strings against the kernel's limit, and
resource limits against their requests.  Each problem names the stack.yaml field to
change, so a stack that builds is one the API server accepts.

They read the raw (schema-valid) data, so every problem names the field as written:
``agent.env.X`` when a queue inherits it, ``queues[1].env.X`` when the queue sets it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from stackgen.common import kubegrammar as k8s
from stackgen.common.errors import Problem
from stackgen.common.names import AGENT_WORKLOAD, queue_slug

#: The annotations stackgen itself puts on an object (queue, mode, pod-security reason,
#: ``kubectl.kubernetes.io/default-container``…) stay far below this; the user's share of
#: the API server's 256 KiB is the rest (``tests/unit/test_refusals.py`` keeps it true).
STACKGEN_ANNOTATIONS_RESERVE = 8 * 1024
USER_ANNOTATIONS_MAX = k8s.ANNOTATIONS_MAX_BYTES - STACKGEN_ANNOTATIONS_RESERVE
#: A dispatcher-made Job's name: ``<CronJob>-<8 hex of the dispatch>[-<index>]``.
_DISPATCH_ID = 8

_RESOURCES = ("agent", "dispatcher", "metricsAdapter", "dind")
_IMAGES = ("agent", "dispatcher", "metricsAdapter", "dind")


def non_finite_problems(data: Any, file: str, path: str = "") -> Iterator[Problem]:
    """NaN and infinite numbers anywhere (``.nan``, ``.inf``, ``1e999``).

    No Kubernetes field or Buildkite setting holds one, and the schema's bounds let NaN
    through.
    """
    if isinstance(data, float) and not math.isfinite(data):
        yield Problem(file, path, "must be a finite number (not NaN or infinity)")
    elif isinstance(data, Mapping):
        for key, value in data.items():
            yield from non_finite_problems(value, file, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from non_finite_problems(value, file, f"{path}[{index}]")


def limit_problems(data: Mapping[str, Any], file: str) -> list[Problem]:
    """Every limit of the API server or the runtime that ``data`` (schema-valid) breaks."""
    problems: list[Problem] = []
    problems += _queue_names(data, file)
    problems += _labels_and_annotations(data, file)
    problems += _images(data, file)
    problems += _environment(data, file)
    problems += _resources(data, file)
    for index, mirror in enumerate(data.get("gitMirrors", [])):
        if "schedule" in mirror:
            why = k8s.cron_problem(str(mirror["schedule"]))
            if why:
                problems.append(Problem(file, f"gitMirrors[{index}].schedule", why))
    return problems


def _queue_names(data: Mapping[str, Any], file: str) -> Iterator[Problem]:
    for index, queue in enumerate(data["queues"]):
        if queue["mode"] == "hpa":
            continue  # a Deployment's name may be a whole DNS subdomain
        slug = queue_slug(str(queue["name"]))
        template = f"{AGENT_WORKLOAD}-{slug}"
        longest = len(f"{template}-{'0' * _DISPATCH_ID}")
        if queue["mode"] == "exact":
            longest += 1 + len(str(int(queue.get("maxAgents", 1)) - 1))
        room = min(k8s.CRONJOB_NAME_MAX - len(template), k8s.JOB_NAME_MAX - longest) + len(slug)
        if len(template) > k8s.CRONJOB_NAME_MAX or longest > k8s.JOB_NAME_MAX:
            what = (
                f"the CronJob {template!r} ({len(template)} characters; at most "
                f"{k8s.CRONJOB_NAME_MAX})"
                if len(template) > k8s.CRONJOB_NAME_MAX
                else f"Job names of {longest} characters (at most {k8s.JOB_NAME_MAX})"
            )
            yield Problem(
                file,
                f"queues[{index}].name",
                f"too long for Kubernetes: it gives {what}; keep the name to {room} characters",
            )


def _label_map(labels: Mapping[str, Any], file: str, where: str) -> Iterator[Problem]:
    for key, value in labels.items():
        why = k8s.key_problem(str(key)) or k8s.label_value_problem(str(value))
        if why:
            yield Problem(file, f"{where}.{key}", why)


def _labels_and_annotations(data: Mapping[str, Any], file: str) -> Iterator[Problem]:
    meta = data["metadata"]
    yield from _label_map(meta.get("labels", {}), file, "metadata.labels")
    monitoring = data.get("monitoring", {})
    alerts = monitoring.get("alerts", {})
    yield from _label_map(alerts.get("ruleLabels", {}), file, "monitoring.alerts.ruleLabels")
    yield from _label_map(monitoring.get("monitorLabels", {}), file, "monitoring.monitorLabels")
    dashboard = monitoring.get("dashboard", {})
    if "sidecarLabel" in dashboard:
        why = k8s.key_problem(str(dashboard["sidecarLabel"]))
        if why:
            yield Problem(file, "monitoring.dashboard.sidecarLabel", why)
    if "sidecarLabelValue" in dashboard:
        why = k8s.label_value_problem(str(dashboard["sidecarLabelValue"]))
        if why:
            yield Problem(file, "monitoring.dashboard.sidecarLabelValue", why)
    yield from _label_map(data.get("agent", {}).get("nodeSelector", {}), file, "agent.nodeSelector")
    for index, queue in enumerate(data["queues"]):
        yield from _label_map(queue.get("nodeSelector", {}), file, f"queues[{index}].nodeSelector")
    annotations = {str(k): str(v) for k, v in meta.get("annotations", {}).items()}
    for key in annotations:
        why = k8s.key_problem(key)
        if why:
            yield Problem(file, f"metadata.annotations.{key}", why)
    size = k8s.annotations_size(annotations)
    if size > USER_ANNOTATIONS_MAX:
        yield Problem(
            file,
            "metadata.annotations",
            f"total {size} bytes; every object carries them and the API server allows "
            f"{k8s.ANNOTATIONS_MAX_BYTES} bytes of annotations per object, of which stackgen "
            f"keeps {STACKGEN_ANNOTATIONS_RESERVE} for its own: at most {USER_ANNOTATIONS_MAX}",
        )


def _images(data: Mapping[str, Any], file: str) -> Iterator[Problem]:
    for section in _IMAGES:
        image = data.get(section, {}).get("image")
        if isinstance(image, str):
            why = k8s.image_problem(image)
            if why:
                yield Problem(file, f"{section}.image", why)
    for index, queue in enumerate(data["queues"]):
        if "image" in queue:
            why = k8s.image_problem(str(queue["image"]))
            if why:
                yield Problem(file, f"queues[{index}].image", why)


def _environment(data: Mapping[str, Any], file: str) -> Iterator[Problem]:
    agent = data.get("agent", {})
    for where, env in [
        ("agent.env", agent.get("env", {})),
        *((f"queues[{i}].env", q.get("env", {})) for i, q in enumerate(data["queues"])),
    ]:
        for name, value in env.items():
            why = k8s.env_problem(str(name), str(value))
            if why:
                yield Problem(file, f"{where}.{name}", why)
    for index, queue in enumerate(data["queues"]):
        tags = {**agent.get("tags", {}), **queue.get("tags", {})}
        rest = ",".join(f"{k}={v}" for k, v in sorted(tags.items()))
        value = f"queue={queue['name']}" + (f",{rest}" if rest else "")
        why = k8s.env_problem("BUILDKITE_AGENT_TAGS", value)
        if why:
            where = f"queues[{index}].tags" if queue.get("tags") else "agent.tags"
            yield Problem(file, where, f"as BUILDKITE_AGENT_TAGS: {why}")


def _resources(data: Mapping[str, Any], file: str) -> Iterator[Problem]:
    blocks = [(s, data.get(s, {}).get("resources")) for s in _RESOURCES]
    blocks += [(f"queues[{i}]", q.get("resources")) for i, q in enumerate(data["queues"])]
    for where, resources in blocks:
        if resources:
            yield from _resource_block(resources, file, f"{where}.resources")


def _resource_block(resources: Mapping[str, Any], file: str, where: str) -> Iterator[Problem]:
    parsed: dict[str, dict[str, Any]] = {}
    for kind in ("requests", "limits"):
        parsed[kind] = {}
        for name, value in resources.get(kind, {}).items():
            quantity = k8s.parse_quantity(str(value))
            if quantity is None:
                yield Problem(
                    file,
                    f"{where}.{kind}.{name}",
                    "must be a Kubernetes quantity such as 500m, 2, 1Gi or 512Mi",
                )
            else:
                parsed[kind][name] = quantity
    for name, limit in parsed["limits"].items():
        request = parsed["requests"].get(name)
        if request is not None and limit < request:
            yield Problem(
                file,
                f"{where}.limits.{name}",
                f"is below requests.{name}: the API server refuses a limit under its request",
            )
