"""stackgen's strategic merge patch against Kubernetes' own: ``kubectl patch --local``.

Each case is applied to the same pod twice, by :func:`strategic_merge` and by the real
implementation (``kubectl patch --local --type=strategic -o json``, kubectl is on every
machine); the results must be equal, and where kubectl refuses a patch, stackgen must too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from stackgen.dispatcher.podspec import patchmeta
from stackgen.dispatcher.podspec.merge import MergeError, strategic_merge

BASE: dict[str, Any] = {
    "containers": [
        {
            "name": "a",
            "image": "x",
            "args": ["1", "2", "1"],
            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
            "volumeMounts": [{"name": "w", "mountPath": "/w"}],
            "resources": {"requests": {"cpu": "1"}, "limits": {"memory": "1Gi"}},
        },
        {"name": "b", "image": "y", "ports": [{"containerPort": 80, "protocol": "TCP"}]},
    ],
    "initContainers": [{"name": "i", "image": "z"}],
    "volumes": [{"name": "w", "emptyDir": {}}, {"name": "v", "configMap": {"name": "c"}}],
    "nodeSelector": {"k": "v"},
    "tolerations": [{"key": "t", "operator": "Exists"}],
    "securityContext": {"runAsUser": 1, "supplementalGroups": [5, 6]},
}

CASES: dict[str, dict[str, Any]] = {
    "resources of one container": {
        "containers": [{"name": "a", "resources": {"limits": {"memory": "2Gi", "cpu": "2"}}}]
    },
    "new container appended": {"containers": [{"name": "c", "image": "new"}]},
    "container deleted": {"containers": [{"name": "b", "$patch": "delete"}]},
    "order of new and existing": {
        "containers": [{"name": "c", "image": "new"}, {"name": "a", "image": "x2"}]
    },
    "interleaved order": {
        "containers": [
            {"name": "z1", "image": "1"},
            {"name": "b", "image": "y2"},
            {"name": "z2", "image": "2"},
        ]
    },
    "env merged by name": {
        "containers": [
            {"name": "a", "env": [{"name": "C", "value": "3"}, {"name": "A", "value": "9"}]}
        ]
    },
    "env item deleted": {"containers": [{"name": "a", "env": [{"name": "A", "$patch": "delete"}]}]},
    "args replaced (atomic list)": {"containers": [{"name": "a", "args": ["3"]}]},
    "volume mounts merged by mountPath": {
        "containers": [
            {
                "name": "a",
                "volumeMounts": [
                    {"name": "e", "mountPath": "/e"},
                    {"name": "w2", "mountPath": "/w"},
                ],
            }
        ]
    },
    "volume deleted and added": {
        "volumes": [{"name": "w", "$patch": "delete"}, {"name": "n", "emptyDir": {}}]
    },
    "volume source merged": {"volumes": [{"name": "v", "secret": {"secretName": "s"}}]},
    "volume source retainKeys": {
        "volumes": [{"name": "v", "$retainKeys": ["name", "secret"], "secret": {"secretName": "s"}}]
    },
    "map key deleted with null": {"nodeSelector": {"k": None, "x": "y"}},
    "map replaced": {"nodeSelector": {"$patch": "replace", "z": "1"}},
    "map deleted": {"containers": [{"name": "a", "resources": {"$patch": "delete"}}]},
    "tolerations replaced (atomic list)": {"tolerations": [{"key": "u", "operator": "Exists"}]},
    "list replaced by directive": {
        "containers": [{"$patch": "replace"}, {"name": "only", "image": "o"}]
    },
    "scalar list merged (no strategy: replaced)": {"securityContext": {"supplementalGroups": [7]}},
    "delete from primitive list": {
        "containers": [{"name": "a", "$deleteFromPrimitiveList/args": ["1"]}]
    },
    "pod-level fields": {"hostNetwork": True, "securityContext": {"runAsUser": 1000}},
    "native sidecar added": {
        "initContainers": [{"name": "s", "image": "side", "restartPolicy": "Always"}]
    },
    "ports merged by containerPort": {
        "containers": [
            {"name": "b", "ports": [{"containerPort": 81}, {"containerPort": 80, "name": "http"}]}
        ]
    },
    "new field with nested directive": {
        "containers": [
            {"name": "a", "livenessProbe": {"exec": {"command": ["x"]}, "periodSeconds": None}}
        ]
    },
    "type change replaces": {"nodeSelector": "not-a-map"},
    "missing merge key": {"containers": [{"image": "no-name"}]},
    "bad directive": {"containers": [{"name": "a", "$patch": "merge"}]},
}


def kubectl_patch(spec: dict[str, Any], patch: dict[str, Any], tmp: Path) -> dict[str, Any] | None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}
    path = tmp / "pod.json"
    path.write_text(json.dumps(pod))
    result = subprocess.run(
        [
            "kubectl",
            "patch",
            "--local",
            "--type=strategic",
            "-f",
            str(path),
            "-p",
            json.dumps({"spec": patch}),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        return None
    return json.loads(result.stdout)["spec"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", sorted(CASES))
def test_merge_is_kubernetes_strategic_merge(name: str, tmp_path: Path) -> None:
    assert shutil.which("kubectl"), "kubectl is on every machine (docs/toolchain.md)"
    patch = CASES[name]
    want = kubectl_patch(BASE, patch, tmp_path)
    if want is None:
        with pytest.raises(MergeError):
            strategic_merge(BASE, patch)
        return
    got = strategic_merge(BASE, patch)
    assert got == want


def test_merge_changes_neither_input() -> None:
    base = json.loads(json.dumps(BASE))
    patch = {"containers": [{"name": "a", "$patch": "delete"}]}
    strategic_merge(base, patch)
    assert base == BASE and patch == {"containers": [{"name": "a", "$patch": "delete"}]}


def test_set_element_order_is_refused_not_guessed() -> None:
    with pytest.raises(MergeError, match="setElementOrder"):
        strategic_merge(BASE, {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]})


def test_shipped_patch_metadata_is_generated_from_kubernetes_openapi() -> None:
    generated = patchmeta.dumps(patchmeta.generate(patchmeta.definitions_of("1.33.0")))
    shipped = (Path(patchmeta.__file__).parents[3] / "schemas" / patchmeta.FILE_NAME).read_text()
    assert shipped == generated, "regenerate: python -m stackgen.dispatcher.podspec.patchmeta"
    fields = patchmeta.load()["types"]["io.k8s.api.core.v1.Container"]["fields"]
    assert fields["volumeMounts"]["key"] == "mountPath"
    assert fields["env"]["strategy"] == ["merge"]
