"""Every user string reaches the generated kustomize tree exactly as written.

The kustomizations and patches are composed as data and dumped by the YAML library, so
a `` #`` (a comment in pasted text), a newline (a new key), quotes, ``: ``, ``{{``, a
leading ``-`` or non-ASCII text in a path, a label, an env value or a queue name cannot
change what a generated file means.  Each hostile value below is one the schema accepts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from stackgen.compose import compose
from stackgen.stack.load import stack_from_data, stack_problems


def hostile(tag: str) -> str:
    """A string that breaks YAML text it is pasted into, in every way we know of."""
    return f"-{tag} #c\n: k: 'q' \"d\" {{{{ e }}}} ü\t%@&*!|>"


#: Queue names are restricted by the schema; these are YAML 1.1's bool, float and null.
QUEUES = {"yes": "hpa", "1.0": "dispatch", "null": "exact"}
TAG = "x #y: 'z' {{ ü }}"  # tag values may hold anything but a comma
ENDPOINT = "https://bk.example/v3?a=1&b='\"{{x}}#frag:ü"
BUILD_PATH = "/builds #x\n- y: 'z' {{ ü }}"


def rel(tag: str, suffix: str = "") -> str:
    """A hostile path relative to the overlay (a folder, then a file)."""
    return f"{hostile(tag + '-dir')}/{hostile(tag)}{suffix}"


FILES = {
    "hook": rel("hook"),
    "credentials": rel("credentials"),
    "ssh-key": rel("ssh-key"),
    "known-hosts": rel("known-hosts"),
    "ca": rel("ca", ".crt"),
    "cert": rel("cert", ".crt"),
    "key": rel("key", ".key"),
    "resource": rel("resource", ".yaml"),
    "patch": rel("patch", ".yaml"),
    "component": rel("component"),
}


def stack_data() -> dict[str, Any]:
    return {
        "apiVersion": "stackgen.io/v1alpha1",
        "kind": "Stack",
        "metadata": {
            "name": "hostile",
            "labels": {hostile("label-key"): hostile("label-value")},
            "annotations": {hostile("annotation-key"): hostile("annotation-value")},
        },
        "agent": {
            "endpoint": ENDPOINT,
            "buildPath": BUILD_PATH,
            "tags": {"team": TAG},
            "env": {"AGENT_VALUE": hostile("agent-env")},
        },
        "queues": [
            {
                "name": name,
                "mode": mode,
                "env": {"QUEUE_VALUE": hostile(f"queue-env-{name}")},
                **({"gitMirror": "mono"} if mode == "exact" else {}),
            }
            for name, mode in QUEUES.items()
        ],
        "gitMirrors": [{"name": "mono", "repository": "https://git.example/mono.git"}],
        "secrets": {
            "agentToken": {"file": "token"},
            "gitCredentials": {"file": FILES["credentials"]},
            "sshKey": {"privateKeyFile": FILES["ssh-key"], "knownHostsFile": FILES["known-hosts"]},
        },
        "hooks": {"environment": FILES["hook"]},
        "metricsAdapter": {
            "tls": {"caFile": FILES["ca"], "certFile": FILES["cert"], "keyFile": FILES["key"]}
        },
        "kustomize": {
            "resources": [FILES["resource"]],
            "components": [FILES["component"]],
            "patches": [
                {"path": FILES["patch"]},
                {
                    "patch": hostile("inline-patch"),
                    "target": {"kind": "Deployment", "name": hostile("target")},
                },
            ],
        },
    }


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    overlay = tmp_path / "overlay"
    for path in FILES.values():
        (overlay / path).parent.mkdir(parents=True, exist_ok=True)
        (overlay / path).write_text("placeholder\n", encoding="utf-8")
    (overlay / "token").write_text("tok-123-abc\n", encoding="utf-8")
    data = stack_data()
    # Every value is one the schema accepts; the label and annotation keys are refused
    # later by the Kubernetes limits (stackgen.stack.limits), yet compose must still
    # carry them exactly.
    problems = stack_problems(data, "stack.yaml")
    assert {p.path.split(".")[1] for p in problems} <= {"labels", "annotations"}, problems
    stack = stack_from_data(data, overlay, overlay / "stack.yaml")
    compose(stack, tmp_path / "tree", environ={})
    return tmp_path / "tree"


def load(tree: Path, rel_path: str) -> Any:
    return yaml.safe_load((tree / rel_path).read_text(encoding="utf-8"))


def generator(kustomization: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    (found,) = [g for g in kustomization[kind] if g["name"] == name]
    return found


def test_paths_reach_the_stack_kustomization_exactly(tree: Path) -> None:
    kz = load(tree, "stack/kustomization.yaml")
    assert generator(kz, "configMapGenerator", "buildkite-agent-hooks")["files"] == [
        f"environment=overlay/{FILES['hook']}"
    ]
    assert generator(kz, "secretGenerator", "buildkite-git-credentials")["files"] == [
        f"git-credentials=overlay/{FILES['credentials']}"
    ]
    assert generator(kz, "secretGenerator", "buildkite-ssh-key")["files"] == [
        "ssh-privatekey=secrets/ssh-privatekey",  # written normalised (LF, one final newline)
        f"known_hosts=overlay/{FILES['known-hosts']}",
    ]
    assert generator(kz, "secretGenerator", "stackgen-metrics-adapter-tls")["files"] == [
        f"tls.crt=overlay/{FILES['cert']}",
        f"tls.key=overlay/{FILES['key']}",
    ]
    assert kz["resources"][-1] == f"overlay/{FILES['resource']}"
    assert kz["components"][-1] == f"overlay/{FILES['component']}"
    assert kz["patches"][-2:] == [
        {"path": f"overlay/{FILES['patch']}"},
        {
            "patch": hostile("inline-patch"),
            "target": {"kind": "Deployment", "name": hostile("target")},
        },
    ]


def test_env_values_reach_config_maps_and_patches_exactly(tree: Path) -> None:
    kz = load(tree, "stack/kustomization.yaml")
    literals = generator(kz, "configMapGenerator", "buildkite-agent-env")["literals"]
    assert f"BUILDKITE_AGENT_ENDPOINT={ENDPOINT}" in literals
    assert f"BUILDKITE_BUILD_PATH={BUILD_PATH}" in literals
    adapter = generator(kz, "configMapGenerator", "stackgen-metrics-adapter")["literals"]
    assert f"BUILDKITE_AGENT_ENDPOINT={ENDPOINT}" in adapter
    assert "STACKGEN_QUEUES=yes" in adapter
    for name in QUEUES:
        slug = name.replace(".", "-")
        patch = load(tree, f"stack/queues/{slug}/agent-patch.yaml")
        pod = (
            patch["spec"]["template"]
            if name == "yes"
            else patch["spec"]["jobTemplate"]["spec"]["template"]
        )
        env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
        assert env["AGENT_VALUE"] == hostile("agent-env")
        assert env["QUEUE_VALUE"] == hostile(f"queue-env-{name}")
        assert env["BUILDKITE_AGENT_TAGS"] == f"queue={name},team={TAG}"
        assert pod["metadata"]["annotations"]["stackgen.io/queue"] == name


def test_labels_and_annotations_reach_the_root_kustomization_exactly(tree: Path) -> None:
    root = load(tree, "kustomization.yaml")
    pairs = root["labels"][0]["pairs"]
    assert pairs[hostile("label-key")] == hostile("label-value")
    assert root["commonAnnotations"] == {hostile("annotation-key"): hostile("annotation-value")}
    assert root["labels"][1]["pairs"] == {"app.kubernetes.io/instance": "hostile"}


def test_queue_names_stay_strings(tree: Path) -> None:
    config = load(tree, "stack/dispatcher.yaml")
    assert [q["name"] for q in config["queues"]] == ["1.0", "null"]
    hpa = load(tree, "stack/queues/yes/autoscaler-patch.yaml")
    for metric in hpa["spec"]["metrics"]:
        assert metric["external"]["metric"]["selector"] == {"matchLabels": {"queue": "yes"}}
    queue = load(tree, "stack/queues/1-0/kustomization.yaml")
    assert queue["labels"] == [{"pairs": {"stackgen.io/queue": "1-0"}, "includeSelectors": True}]


def test_every_generated_file_parses_to_data_not_a_stray_key(tree: Path) -> None:
    generated = [
        p
        for p in tree.rglob("*.yaml")
        if "overlay" not in p.relative_to(tree).parts[:2]
        and p.relative_to(tree).parts[0] not in ("bases", "components")
    ]
    assert len(generated) >= 10
    for path in generated:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert isinstance(data, dict), path
        if data.get("kind") == "Kustomization":
            assert set(data) <= {
                "apiVersion",
                "kind",
                "namespace",
                "resources",
                "nameSuffix",
                "labels",
                "components",
                "images",
                "secretGenerator",
                "configMapGenerator",
                "patches",
                "commonAnnotations",
            }, path


def _generated(tree: Path) -> dict[str, bytes]:
    """Every file stackgen generated in a tree (not the bases, not the overlay's copy)."""
    return {
        p.relative_to(tree).as_posix(): p.read_bytes()
        for p in sorted(tree.rglob("*"))
        if p.is_file()
        and p.relative_to(tree).parts[0] not in ("bases", "components")
        and p.relative_to(tree).parts[:2] != ("stack", "overlay")
    }


def test_the_overlay_path_never_reaches_a_generated_file(tmp_path: Path) -> None:
    # Where the overlay lies (a ` #`, a newline, quotes in its path) changes nothing:
    # the tree holds its copy under a fixed name.
    trees = []
    for name in ("plain", hostile("overlay-path")):
        overlay = tmp_path / name / "overlay"
        for path in FILES.values():
            (overlay / path).parent.mkdir(parents=True, exist_ok=True)
            (overlay / path).write_text("placeholder\n", encoding="utf-8")
        (overlay / "token").write_text("tok-123-abc\n", encoding="utf-8")
        stack = stack_from_data(stack_data(), overlay, overlay / "stack.yaml")
        compose(stack, tmp_path / name / "tree", environ={})
        trees.append(_generated(tmp_path / name / "tree"))
    assert len(trees[0]) >= 10
    assert trees[0] == trees[1]


def test_build_from_an_overlay_path_with_a_newline_and_a_comment(tmp_path: Path) -> None:
    from tests.support.cli import run_stackgen
    from tests.support.overlays import MINIMAL, write

    manifests = []
    for name in ("mini", "mini #x\n- y: 'z'"):
        overlay = tmp_path / name
        write(overlay / "stack.yaml", MINIMAL)
        write(overlay / "hooks" / "pre #exit\nx", "#!/bin/bash\necho hook\n")
        write(overlay / "secrets" / "token", "tok-123-abc\n", mode=0o600)
        text = (overlay / "stack.yaml").read_text()
        (overlay / "stack.yaml").write_text(
            text.replace("secrets:\n", 'hooks:\n  pre-exit: "hooks/pre #exit\\nx"\nsecrets:\n')
        )
        run = run_stackgen("build", str(overlay))
        assert run.code == 0, run.stderr
        manifests.append(run.stdout)
    assert manifests[0] == manifests[1]
    assert b"echo hook" in manifests[0]
