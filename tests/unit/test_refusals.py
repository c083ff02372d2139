"""Input that must be refused before anything expands or applies it, and input that must
build: hostile YAML, what the API server or the runtime would reject, secrets normalised.

Cases that run the real CLI use the helpers of ``test_bad_input`` (one line naming the
file and the field, exit 1, empty stdout, no traceback, no secret on stderr).
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from stackgen.common import yamlio
from tests.support.cli import Run
from tests.support.overlays import write
from tests.support.paths import ROOT
from tests.unit.test_bad_input import assert_rejected, set_stack

# ----------------------------------------------------------------- hostile YAML

#: A "billion laughs": 9**8 (43 million) strings from a 1 KB document.
_LAUGHS = 8


def _bomb(indent: int, levels: int = _LAUGHS) -> str:
    pad = " " * indent
    lines = [f"{pad}- &l0 [" + ",".join(['"laughing"'] * 9) + "]"]
    lines += [f"{pad}- &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _bounded_run(*args: str, seconds: float = 30) -> tuple[Run, float]:
    """The CLI with its address space capped (a bomb that slips through fails, rather
    than taking the machine's memory) and a deadline; returns the run and its wall time."""

    def cap() -> None:  # pragma: no cover - runs in the child
        limit = 3 * 1024**3
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "stackgen", *args],
        capture_output=True,
        cwd=ROOT,
        timeout=seconds,
        preexec_fn=cap,
        check=False,
    )
    return (
        Run(proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace")),
        time.monotonic() - started,
    )


def _extra_resource(overlay: Path, metadata: str) -> None:
    write(
        overlay / "extra" / "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n" + metadata + "data: {a: b}\n",
    )
    set_stack(overlay, "secrets:\n", "kustomize:\n  resources: [extra/cm.yaml]\nsecrets:\n")


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("stack-labels", "stack.yaml: invalid YAML: line"),
        ("resource-name", "cm.yaml: invalid YAML: line"),
        ("resource-labels", "cm.yaml: invalid YAML: line"),
        ("inline-patch", "stack.yaml: kustomize.patches[0].patch: invalid YAML: line"),
    ],
)
def test_alias_bomb_is_refused_at_once(minimal: Path, where: str, expected: str) -> None:
    # Before: 10-25 s and 1.2-2.4 GB RSS (Python walking the expansion, or kustomize).
    if where == "stack-labels":
        set_stack(minimal, "  name: mini\n", "  name: mini\n  labels:\n    bomb:\n" + _bomb(6))
    elif where == "resource-name":
        _extra_resource(minimal, "  name:\n" + _bomb(4))
    elif where == "resource-labels":
        _extra_resource(minimal, "  name: cm\n  labels:\n    bomb:\n" + _bomb(6))
    else:
        patch = "      patch: |\n        - op: add\n          path: /metadata/labels\n"
        patch += "          value:\n" + _bomb(12)
        set_stack(
            minimal,
            "secrets:\n",
            "kustomize:\n  patches:\n    - target: {kind: Deployment}\n" + patch + "secrets:\n",
        )
    run, seconds = _bounded_run("build", str(minimal))
    assert_rejected(run, expected, "alias bomb")
    assert seconds < 10, seconds


def test_alias_bomb_in_a_plain_overlay(tmp_path: Path) -> None:
    write(tmp_path / "plain" / "kustomization.yaml", "resources: [cm.yaml]\n")
    write(
        tmp_path / "plain" / "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\ndata:\n  x:\n" + _bomb(4),
    )
    run, seconds = _bounded_run("build", str(tmp_path / "plain"))
    assert_rejected(run, "cm.yaml: invalid YAML: line", "alias bomb")
    assert seconds < 10, seconds


def test_one_huge_string_repeated_by_aliases_is_refused() -> None:
    text = "a: &a " + "x" * 200_000 + "\nb: [" + ", ".join(["*a"] * 10) + "]\n"
    with pytest.raises(yamlio.UnboundedYamlError, match="alias bomb"):
        yamlio.load(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &a [*a]\n", "refers to a node that contains it"),
        ("a: &a {b: *a}\n", "refers to a node that contains it"),
        ("[" * 150 + "]" * 150 + "\n", "nest more than 100 levels"),
    ],
)
def test_self_reference_and_deep_nesting_are_refused(text: str, message: str) -> None:
    with pytest.raises(yamlio.UnboundedYamlError, match=message):
        yamlio.load(text)
    with pytest.raises(yamlio.UnboundedYamlError, match=message):
        list(yamlio.load_all("---\nok: 1\n---\n" + text))


def test_self_reference_in_stack_yaml_is_one_line(
    stackgen: Callable[..., Run], minimal: Path
) -> None:
    set_stack(minimal, "  name: mini\n", "  name: mini\n  labels: &l {a: *l}\n")
    assert_rejected(
        stackgen("build", str(minimal)),
        "stack.yaml: invalid YAML: line 5 column 11: an alias refers to a node that contains it",
    )


def test_ordinary_aliases_and_deep_enough_nesting_still_load() -> None:
    shared = "base: &b {cpu: 1, memory: 2Gi}\n" + "".join(f"q{i}: *b\n" for i in range(2000))
    assert yamlio.load(shared)["q1999"] == {"cpu": 1, "memory": "2Gi"}
    nested = "[" * 100 + "]" * 100
    assert yamlio.load(nested) is not None


# ----------------------------------------------------------------- must build: merge keys


def test_merge_key_with_an_override_is_not_a_duplicate() -> None:
    text = "base: &b {name: a, mode: dispatch}\nq:\n  <<: *b\n  name: x\n"
    assert yamlio.load(text)["q"] == {"name": "x", "mode": "dispatch"}
    # Two merged mappings: the first named wins; the mapping's own keys win over both.
    text = "a: &a {k: 1, m: 1}\nb: &b {k: 2, n: 2}\nq:\n  <<: [*a, *b]\n  m: 3\n"
    assert yamlio.load(text)["q"] == {"k": 1, "m": 3, "n": 2}
    assert yamlio.load(text) == yaml.safe_load(text)


def test_own_keys_still_may_not_repeat_beside_a_merge() -> None:
    with pytest.raises(yamlio.DuplicateKeyError, match="'name'"):
        yamlio.load("base: &b {mode: x}\nq:\n  <<: *b\n  name: x\n  name: y\n")


def test_stack_with_merge_keys_builds(stackgen: Callable[..., Run], minimal: Path) -> None:
    write(
        minimal / "stack.yaml",
        """
        apiVersion: stackgen.io/v1alpha1
        kind: Stack
        metadata:
          name: mini
        queues:
          - &default {name: default, mode: dispatch, maxAgents: 4}
          - <<: *default
            name: other
            maxAgents: 8
        secrets:
          agentToken:
            file: secrets/token
        """,
    )
    run = stackgen("build", str(minimal))
    assert run.code == 0, run.stderr
    assert b"buildkite-agent-other" in run.stdout


# ----------------------------------------------------------------- must build: versions


def test_patch_release_uses_its_minor_schemas(stackgen: Callable[..., Run], minimal: Path) -> None:
    set_stack(minimal, "kind: Stack\n", 'kind: Stack\nkubernetesVersion: "1.33.5"\n')
    run = stackgen("build", str(minimal))
    assert run.code == 0, run.stderr
    run = stackgen("build", "--kubernetes-version", "1.33.7", str(minimal))
    assert run.code == 0, run.stderr


def test_schema_release_of_a_version() -> None:
    from stackgen.validation.kubeschemas import schema_release, version_dir_name

    assert schema_release("1.33.5") == "1.33.0"
    assert version_dir_name("1.30.12") == "v1.30.0-standalone-strict"
