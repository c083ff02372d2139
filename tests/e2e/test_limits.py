"""stackgen's build-time limits against the real API server (server-side dry-run).

For each rule of :mod:`stackgen.stack.limits` that the API server also enforces, a stack
built exactly at stackgen's limit is accepted by the server, and the same object one step
past it is refused by the server (stackgen refuses that input itself: ``tests/unit/
test_refusals.py``).  Image references and the kernel's environment limit are the
runtime's, not the API server's, and are not judged here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from stackgen.common import kubegrammar as k8s
from stackgen.stack.limits import USER_ANNOTATIONS_MAX
from tests.support.cli import run_stackgen
from tests.support.cluster import Cluster
from tests.support.overlays import MINIMAL, write

pytestmark = pytest.mark.e2e

_QUEUE = "q" * 36  # buildkite-agent-<36>: a CronJob name of exactly 52 characters


def _build(tmp_path: Path, namespace: str, *edits: tuple[str, str]) -> list[dict[str, Any]]:
    """The objects of the minimal stack, in ``namespace``, its queue named ``_QUEUE``.

    ``edits`` are (old, new) replacements in its stack.yaml.
    """
    overlay = tmp_path / f"limits-{len(list(tmp_path.iterdir()))}"
    text = MINIMAL.replace("  name: mini\n", f"  name: mini\n  namespace: {namespace}\n")
    text = text.replace("  - name: default\n", f"  - name: {_QUEUE}\n")
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    write(overlay / "stack.yaml", text)
    write(overlay / "secrets" / "token", "tok-123-abc\n", mode=0o600)
    run = run_stackgen("build", str(overlay))
    assert run.code == 0, run.stderr
    return [d for d in yaml.safe_load_all(run.stdout) if d]


def _dry_run(cluster: Cluster, objects: list[dict[str, Any]]) -> tuple[bool, str]:
    # Server-side apply: a client-side apply would add the last-applied-configuration
    # annotation (a copy of the object) and double what the annotation limit counts.
    proc = cluster.apply(
        objects, "--server-side", "--force-conflicts", "--dry-run=server", check=False
    )
    return proc.returncode == 0, proc.stderr


def _cronjob(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == "CronJob")


@pytest.fixture
def namespace(scratch_namespace: Callable[..., str]) -> str:
    return scratch_namespace(prefix="limits")


def test_the_whole_stack_at_its_limits_is_accepted(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    big = "a" * (USER_ANNOTATIONS_MAX - len("big"))
    objects = _build(
        tmp_path,
        namespace,
        (
            "  namespace:",
            "  labels: {team: " + "v" * 63 + "}\n  annotations: {big: " + big + "}\n  namespace:",
        ),
        (
            "    mode: dispatch\n",
            f"    mode: dispatch\n    dispatch: {{ttlSecondsAfterFinished: {k8s.INT32_MAX}}}\n",
        ),
    )
    assert len(_cronjob(objects)["metadata"]["name"]) == k8s.CRONJOB_NAME_MAX
    ok, err = _dry_run(cluster, objects)
    assert ok, err


def test_cronjob_name_limit(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    cronjob = _cronjob(_build(tmp_path, namespace))
    assert len(cronjob["metadata"]["name"]) == 52
    assert _dry_run(cluster, [cronjob])[0]
    longer = copy.deepcopy(cronjob)
    longer["metadata"]["name"] += "x"
    ok, err = _dry_run(cluster, [longer])
    assert not ok and "52" in err, err


def test_job_name_limit(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    cronjob = _cronjob(_build(tmp_path, namespace))
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "j" * k8s.JOB_NAME_MAX, "namespace": namespace},
        "spec": copy.deepcopy(cronjob["spec"]["jobTemplate"]["spec"]),
    }
    ok, err = _dry_run(cluster, [job])
    assert ok, err
    job["metadata"]["name"] += "j"
    ok, err = _dry_run(cluster, [job])
    assert not ok, "the API server took a 64-character Job name"


def test_int32_limit(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    extra = f"    dispatch: {{ttlSecondsAfterFinished: {k8s.INT32_MAX}}}\n"
    objects = _build(tmp_path, namespace, ("    mode: dispatch\n", "    mode: dispatch\n" + extra))
    cronjob = _cronjob(objects)
    spec = cronjob["spec"]["jobTemplate"]["spec"]
    assert spec["ttlSecondsAfterFinished"] == k8s.INT32_MAX
    assert _dry_run(cluster, [cronjob])[0]
    spec["ttlSecondsAfterFinished"] = k8s.INT32_MAX + 1
    ok, _ = _dry_run(cluster, [cronjob])
    assert not ok, "the API server took an int32 field over 2^31-1"


def test_label_value_limit(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    cronjob = _cronjob(_build(tmp_path, namespace))
    cronjob["metadata"]["labels"]["team"] = "v" * k8s.LABEL_VALUE_MAX
    assert _dry_run(cluster, [cronjob])[0]
    for bad in ("v" * (k8s.LABEL_VALUE_MAX + 1), "-v", "two words"):
        cronjob["metadata"]["labels"]["team"] = bad
        ok, _ = _dry_run(cluster, [cronjob])
        assert not ok, bad


def test_node_selector_is_judged_as_labels(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    cronjob = _cronjob(_build(tmp_path, namespace))
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    pod["nodeSelector"] = {"pool": "v" * 63}
    assert _dry_run(cluster, [cronjob])[0]
    pod["nodeSelector"] = {"pool": "two words"}
    assert not _dry_run(cluster, [cronjob])[0]


def test_annotation_size_limit(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    cronjob = _cronjob(_build(tmp_path, namespace))
    own = k8s.annotations_size(cronjob["metadata"].get("annotations") or {})
    assert own < k8s.ANNOTATIONS_MAX_BYTES - USER_ANNOTATIONS_MAX  # stackgen's reserve holds
    fill = k8s.ANNOTATIONS_MAX_BYTES - own - len("big")
    cronjob["metadata"].setdefault("annotations", {})["big"] = "a" * fill
    assert k8s.annotations_size(cronjob["metadata"]["annotations"]) == k8s.ANNOTATIONS_MAX_BYTES
    ok, err = _dry_run(cluster, [cronjob])
    assert ok, err
    cronjob["metadata"]["annotations"]["big"] += "a"
    ok, err = _dry_run(cluster, [cronjob])
    assert not ok and "262144" in err, err


@pytest.mark.parametrize(
    ("schedule", "accepted"),
    [
        ("0-59/15 1,2 1-31 JAN-dec mon-FRI", True),
        ("@hourly", True),
        ("0 0 * * 6", True),
        ("0 0 * * 7", False),
        ("61 * * * *", False),
        ("*/30 * * *", False),
        ("0 0 31-1 * *", False),
        ("TZ=UTC 0 * * * *", False),
        ("@fortnightly", False),
    ],
)
def test_cron_schedules_match_the_server(
    cluster: Cluster, namespace: str, tmp_path: Path, schedule: str, accepted: bool
) -> None:
    cronjob = _cronjob(_build(tmp_path, namespace))
    cronjob["spec"]["schedule"] = schedule
    ok, err = _dry_run(cluster, [cronjob])
    assert ok is accepted, (schedule, err)
    assert (k8s.cron_problem(schedule) is None) is accepted


@pytest.mark.parametrize(
    ("request_", "limit", "accepted"),
    [
        ("1Gi", "1024Mi", True),
        ("1Gi", "1023Mi", False),
        ("2", "2000m", True),
        ("2", "1999m", False),
    ],
)
def test_limit_against_request(
    cluster: Cluster,
    namespace: str,
    tmp_path: Path,
    request_: str,
    limit: str,
    accepted: bool,
) -> None:
    cronjob = _cronjob(_build(tmp_path, namespace))
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    name = "memory" if request_.endswith("i") else "cpu"
    container["resources"] = {"requests": {name: request_}, "limits": {name: limit}}
    ok, err = _dry_run(cluster, [cronjob])
    assert ok is accepted, err
    req, lim = k8s.parse_quantity(request_), k8s.parse_quantity(limit)
    assert req is not None and lim is not None and (lim >= req) is accepted
