"""Git mirror volumes: newest ready one, prune by what pods mount, refresh."""

from __future__ import annotations

from stackgen.common.models import GitMirror
from stackgen.dispatcher import mirrors
from tests.support.fake_buildkite import VirtualClock
from tests.support.fake_kube import FakeKube

MIRROR = GitMirror(
    name="mono",
    repository="https://github.com/example/mono.git",
    storage="10Gi",
    storage_class_name=None,
    keep=1,
    image="alpine/git:2.49.1",
    mount_path="/buildkite/git-mirrors",
)


def claim(kube: FakeKube, name: str, state: str) -> None:
    kube.add(
        "pvcs",
        {
            "metadata": {
                "name": name,
                "labels": {mirrors.LABEL_MIRROR: "mono", mirrors.LABEL_STATE: state},
            }
        },
    )


def test_newest_ready_and_prune_keeps_used_and_newest() -> None:
    clock = VirtualClock(1_800_000_000)
    kube = FakeKube(clock=clock)
    for index, state in enumerate(["ready", "ready", "ready", "building"]):
        claim(kube, f"m{index}", state)
        clock.advance(60)
    assert mirrors.newest_ready_claim(kube, "mono") == "m2"
    # A running pod still mounts m0; m3 is being built right now.
    kube.add(
        "pods",
        {
            "metadata": {"name": "p"},
            "spec": {"volumes": [{"name": "g", "persistentVolumeClaim": {"claimName": "m0"}}]},
            "status": {"phase": "Running"},
        },
    )
    deleted = mirrors.prune(kube, "mono", keep=1, now=clock())
    assert deleted == ["m1"]
    assert sorted(kube.objects["pvcs"]) == ["m0", "m2", "m3"]
    # Once the pod is gone, m0 goes too; a stale build goes after 6 hours.
    del kube.objects["pods"]["p"]
    assert mirrors.prune(kube, "mono", keep=1, now=clock()) == ["m0"]
    assert mirrors.prune(kube, "mono", keep=1, now=clock() + 7 * 3600) == ["m3"]


def test_refresh_builds_a_volume_and_marks_it_ready() -> None:
    kube = FakeKube()
    calls = {"n": 0}

    def sleep(_: float) -> None:
        calls["n"] += 1
        (job,) = kube.objects["jobs"].values()
        job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}

    name = mirrors.refresh(kube, MIRROR, now=1_800_000_000, sleep=sleep)
    pvc = kube.objects["pvcs"][name]
    assert pvc["metadata"]["labels"][mirrors.LABEL_STATE] == "ready"
    (job,) = kube.objects["jobs"].values()
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][-1] == "/mirror/https---github-com-example-mono-git"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert calls["n"] == 1
