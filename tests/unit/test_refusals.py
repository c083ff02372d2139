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
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from stackgen.common import yamlio
from tests.support.cli import Run
from tests.support.overlays import write
from tests.support.paths import ROOT
from tests.unit.test_bad_input import GITHUB_KEY, assert_rejected, set_stack

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


# ----------------------------------------------------------------- what the API server refuses

_LONG_36 = "q" * 36  # buildkite-agent-<36> is a 52-character CronJob name: the limit


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "  - name: default\n",
            f"  - name: {_LONG_36}x\n",
            "queues[0].name: too long for Kubernetes: it gives the CronJob "
            f"'buildkite-agent-{_LONG_36}x' (53 characters; at most 52)",
        ),
        (
            "    mode: dispatch\n",
            "    mode: dispatch\n  - name: "
            + "e" * 35
            + "\n    mode: exact\n    maxAgents: 1000\n",
            "queues[1].name: too long for Kubernetes: it gives Job names of 64 characters",
        ),
        ("  name: mini\n", "  name: mini\n  labels: {team: -x}\n", "metadata.labels.team: label"),
        (
            "  name: mini\n",
            "  name: mini\n  labels: {team: " + "v" * 64 + "}\n",
            "metadata.labels.team: label value is 64 characters long",
        ),
        (
            "  name: mini\n",
            "  name: mini\n  labels: {'a/b/c': x}\n",
            "metadata.labels.a/b/c: key prefix must be a DNS name",
        ),
        (
            "  name: mini\n",
            "  name: mini\n  annotations: {big: " + "a" * 260_000 + "}\n",
            "metadata.annotations: total 260003 bytes",
        ),
        (
            "    mode: dispatch\n",
            "    mode: dispatch\n    nodeSelector: {pool: 'two words'}\n",
            "queues[0].nodeSelector.pool: label value must be empty",
        ),
        (
            "    mode: dispatch\n",
            "    mode: dispatch\n    image: Buildkite/Agent:3\n",
            "queues[0].image: must be an image reference",
        ),
        (
            "kind: Stack\n",
            "kind: Stack\nagent: {image: 'buildkite/agent:3@sha256:abc'}\n",
            "agent.image: must be an image reference",
        ),
        (
            "    mode: dispatch\n",
            "    mode: dispatch\n    env: {BIG: " + "x" * 131_068 + "}\n",
            "queues[0].env.BIG: NAME=value is 131072 bytes; the kernel refuses",
        ),
        (
            "    mode: dispatch\n",
            '    mode: dispatch\n    env: {ZERO: "a\\0b"}\n',
            "queues[0].env.ZERO: contains a NUL character",
        ),
        (
            "    mode: dispatch\n",
            "    mode: dispatch\n    tags: {big: " + "t" * 131_060 + "}\n",
            "queues[0].tags: as BUILDKITE_AGENT_TAGS: NAME=value is",
        ),
        (
            "kind: Stack\n",
            "kind: Stack\nagent:\n  resources:\n    requests: {cpu: '1', memory: 2Gi}\n"
            "    limits: {memory: 1Gi}\n",
            "agent.resources.limits.memory: is below requests.memory",
        ),
        (
            "kind: Stack\n",
            "kind: Stack\ndispatcher:\n  resources:\n    requests: {cpu: 500m, memory: 1.2.3}\n",
            "dispatcher.resources.requests.memory: must be a Kubernetes quantity",
        ),
        (
            "    mode: dispatch\n",
            "    mode: dispatch\n    resources:\n      requests: {cpu: 2, memory: 1Gi}\n"
            "      limits: {cpu: 1500m, memory: 1Gi}\n",
            "queues[0].resources.limits.cpu: is below requests.cpu",
        ),
        (
            "    mode: dispatch\n",
            "    mode: dispatch\n    resources:\n      requests: {cpu: .nan, memory: 1Gi}\n",
            "queues[0].resources.requests.cpu: must be a finite number",
        ),
        (
            "kind: Stack\n",
            "kind: Stack\nmonitoring: {alerts: {thresholds: {apiErrorsPerSecond: .inf}}}\n",
            "monitoring.alerts.thresholds.apiErrorsPerSecond: must be a finite number",
        ),
        (
            "    mode: dispatch\n",
            "    mode: dispatch\n    dispatch: {cooldown: {share: .nan}}\n",
            "queues[0].dispatch.cooldown.share: must be a finite number",
        ),
        (
            "    mode: dispatch\n",
            "    mode: dispatch\n    dispatch: {ttlSecondsAfterFinished: 2147483648}\n",
            "queues[0].dispatch.ttlSecondsAfterFinished: must be at most 2147483647",
        ),
        (
            "    mode: dispatch\n",
            "    mode: dispatch\n    buffer: 99999999999999999999\n",
            "queues[0].buffer: must be at most 2147483647",
        ),
        (
            "kind: Stack\n",
            "kind: Stack\nagent: {imagePullSecrets: [a..b]}\n",
            "agent.imagePullSecrets[0]: must be a DNS name: dot-separated parts",
        ),
    ],
)
def test_what_the_api_server_or_runtime_refuses(
    stackgen: Callable[..., Run], minimal: Path, old: str, new: str, expected: str
) -> None:
    set_stack(minimal, old, new)
    run = stackgen("build", str(minimal))
    assert_rejected(run, f"stack.yaml: {expected}")


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("*/30 * * *", "must have 5 fields"),
        ("61 * * * *", "minute field: 61 is outside 0-59"),
        ("0 0 * * 7", "day of week field: 7 is outside 0-6"),
        ("0 0 31-1 * *", "day of month field: a range must not run backwards"),
        ("*/0 * * * *", "minute field: a step (/N) must be a positive number"),
        ("0 0 * foo *", "month field: must be numbers"),
        ("TZ=UTC 0 * * * *", "must not set a time zone"),
        ("@fortnightly", "unknown descriptor"),
    ],
)
def test_bad_cron_schedule_of_a_git_mirror(
    stackgen: Callable[..., Run], minimal: Path, schedule: str, expected: str
) -> None:
    set_stack(
        minimal,
        "secrets:\n",
        "gitMirrors:\n  - name: app\n    repository: https://github.com/example/app.git\n"
        f"    schedule: '{schedule}'\nsecrets:\n",
    )
    assert_rejected(stackgen("build", str(minimal)), f"gitMirrors[0].schedule: {expected}")


def test_values_at_the_limits_build(stackgen: Callable[..., Run], minimal: Path) -> None:
    set_stack(
        minimal,
        "  name: mini\n",
        "  name: mini\n  labels: {team: " + "v" * 63 + "}\n",
    )
    set_stack(
        minimal,
        "  - name: default\n    mode: dispatch\n",
        f"  - name: {_LONG_36}\n    mode: dispatch\n    image: 'localhost:5000/ci/agent_x:3.1'\n"
        "    env: {BIG: " + "x" * 131_067 + "}\n"
        "    resources:\n      requests: {cpu: 1, memory: 1Gi}\n"
        "      limits: {cpu: 1000m, memory: 1024Mi}\n"
        "    dispatch: {ttlSecondsAfterFinished: 2147483647}\n"
        "  - name: " + "e" * 34 + "\n    mode: exact\n    maxAgents: 1000\n",
    )
    set_stack(
        minimal,
        "secrets:\n",
        "gitMirrors:\n  - name: app\n    repository: https://github.com/example/app.git\n"
        "    schedule: '0-59/15 1,2 1-31 JAN-dec mon-FRI'\nsecrets:\n",
    )
    run = stackgen("build", str(minimal))
    assert run.code == 0, run.stderr
    assert f"buildkite-agent-{_LONG_36}".encode() in run.stdout


@pytest.mark.parametrize(
    ("image", "ok"),
    [
        ("buildkite/agent:3.117.0", True),
        ("docker:28.3-dind", True),
        ("registry.example.com:5000/a/b/c:v1", True),
        ("ghcr.io/stackgen/stackgen@sha256:" + "a" * 64, True),
        ("ghcr.io/stackgen/stackgen:0.1.0@sha256:" + "A" * 64, True),
        ("[::1]:5000/agent", True),
        ("a__b/c--d/e.f", True),
        ("agent:", False),
        ("Agent", False),
        ("team/Agent", False),
        ("agent:tag with space", False),
        ("agent:" + "t" * 129, False),
        ("ghcr.io/x@sha256:short", False),
        ("ghcr.io//x", False),
        ("agent:tagé", False),
    ],
)
def test_image_reference_grammar(image: str, ok: bool) -> None:
    from stackgen.common.kubegrammar import image_problem

    assert (image_problem(image) is None) is ok


def test_quantities() -> None:
    from decimal import Decimal

    from stackgen.common.kubegrammar import parse_quantity

    assert parse_quantity("500m") == Decimal("0.5")
    assert parse_quantity("1Gi") == 1024**3
    assert parse_quantity("1e3") == 1000
    assert parse_quantity("1.5") == Decimal("1.5")
    assert parse_quantity("1.2.3") is None
    assert parse_quantity(".") is None


# ----------------------------------------------------------------- tokens and keys


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("tok-1\0tok-2\n", "secrets.agentToken.file: contains a NUL character"),
        ("tok-1\ntok-2\n", "secrets.agentToken.file: must hold the token on a single line"),
        ("tok-1\rtok-2\n", "secrets.agentToken.file: must hold the token on a single line"),
        ("tok-1\x1btok-2\n", "secrets.agentToken.file: contains a control character"),
    ],
)
def test_token_with_nul_or_line_break(
    stackgen: Callable[..., Run], minimal: Path, content: str, expected: str
) -> None:
    (minimal / "secrets" / "token").write_bytes(content.encode())
    run = stackgen("build", str(minimal))
    assert_rejected(run, expected)
    assert "tok-1" not in run.stderr and "tok-2" not in run.stderr


def _ed25519_openssh() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


@pytest.mark.parametrize("form", ["crlf", "no-final-newline", "crlf-no-final-newline", "extra"])
def test_ssh_key_is_normalised_in_the_secret(
    stackgen: Callable[..., Run], minimal: Path, tmp_path: Path, form: str
) -> None:
    import base64

    key = _ed25519_openssh()
    text = {
        "crlf": key.replace(b"\n", b"\r\n"),
        "no-final-newline": key.rstrip(b"\n"),
        "crlf-no-final-newline": key.replace(b"\n", b"\r\n").rstrip(b"\r\n"),
        "extra": b"\n" + key + b"\n\n  \n",
    }[form]
    write(minimal / "secrets" / "known_hosts", f"github.com {GITHUB_KEY}\n")
    (minimal / "secrets" / "id").write_bytes(text)
    set_stack(
        minimal,
        "    file: secrets/token\n",
        "    file: secrets/token\n  sshKey:\n    privateKeyFile: secrets/id\n"
        "    knownHostsFile: secrets/known_hosts\n",
    )
    run = stackgen("build", str(minimal))
    assert run.code == 0, run.stderr
    secret = next(
        d
        for d in yaml.safe_load_all(run.stdout)
        if d and d["kind"] == "Secret" and d["metadata"]["name"].startswith("buildkite-ssh-key")
    )
    stored = base64.b64decode(secret["data"]["ssh-privatekey"])
    assert stored == key  # LF only, exactly one final newline
    assert b"\r" not in stored and stored.endswith(b"-\n") and not stored.endswith(b"\n\n")
    copy = tmp_path / "id"
    copy.write_bytes(stored)
    copy.chmod(0o600)
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(copy)], capture_output=True, check=False, timeout=30
    )
    assert derived.returncode == 0, derived.stderr
    assert derived.stdout.startswith(b"ssh-ed25519 ")


def test_ssh_keygen_refuses_the_crlf_key_we_normalise(tmp_path: Path) -> None:
    # Why the normalisation matters: ssh tools refuse the key as saved on Windows.
    crlf = tmp_path / "id"
    crlf.write_bytes(_ed25519_openssh().replace(b"\n", b"\r\n"))
    crlf.chmod(0o600)
    proc = subprocess.run(["ssh-keygen", "-y", "-f", str(crlf)], capture_output=True, check=False)
    assert proc.returncode != 0


# ----------------------------------------------------------------- namespaces


@pytest.mark.parametrize("namespace", ["kube-system", "default"])
def test_system_namespace_gets_no_pod_security_labels(
    stackgen: Callable[..., Run], minimal: Path, namespace: str
) -> None:
    set_stack(minimal, "  name: mini\n", f"  name: mini\n  namespace: {namespace}\n")
    run = stackgen("build", str(minimal))
    assert run.code == 0, run.stderr
    objects = [d for d in yaml.safe_load_all(run.stdout) if d]
    ns = next(o for o in objects if o["kind"] == "Namespace")
    assert ns["metadata"]["name"] == namespace
    assert not any(k.startswith("pod-security.") for k in ns["metadata"].get("labels", {}))
    assert "pod-security-lowered-by" not in str(ns["metadata"].get("annotations"))
    assert f"namespace '{namespace}' exists in every cluster" in run.stderr


def test_own_namespace_keeps_its_pod_security_labels(
    stackgen: Callable[..., Run], minimal: Path
) -> None:
    run = stackgen("build", str(minimal))
    ns = next(d for d in yaml.safe_load_all(run.stdout) if d and d["kind"] == "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"


def test_stackgen_own_annotations_fit_the_reserve(stackgen: Callable[..., Run]) -> None:
    from stackgen.common.kubegrammar import annotations_size
    from stackgen.stack.limits import STACKGEN_ANNOTATIONS_RESERVE

    run = stackgen("build", str(ROOT / "overlays" / "example"))
    assert run.code == 0, run.stderr

    def metas(node: object) -> Iterator[dict[str, str]]:
        if isinstance(node, dict):
            if isinstance(node.get("annotations"), dict):
                yield node["annotations"]
            for value in node.values():
                yield from metas(value)
        elif isinstance(node, list):
            for value in node:
                yield from metas(value)

    sizes = [annotations_size(a) for d in yaml.safe_load_all(run.stdout) if d for a in metas(d)]
    assert sizes and max(sizes) < STACKGEN_ANNOTATIONS_RESERVE / 2


# ----------------------------------------------------------------- schema messages


def test_every_schema_pattern_has_words() -> None:
    import json
    import re

    from stackgen.common.schema_errors import _PATTERN_WORDS

    for path in sorted((ROOT / "schemas").glob("*.json")):

        def patterns(node: object) -> Iterator[str]:
            if isinstance(node, dict):
                if isinstance(node.get("pattern"), str):
                    yield node["pattern"]
                for value in node.values():
                    yield from patterns(value)
            elif isinstance(node, list):
                for value in node:
                    yield from patterns(value)

        for pattern in patterns(json.loads(path.read_text())):
            assert pattern in _PATTERN_WORDS, (path.name, pattern)
            assert not re.search(r"[\^$\\\[]", _PATTERN_WORDS[pattern]), pattern


def test_unknown_pattern_or_keyword_never_shows_the_schema() -> None:
    from stackgen.common.schema_errors import schema_problems

    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "string", "pattern": "^[xyz]{3}\\d+$"},
            "b": {"oneOf": [{"type": "string"}, {"type": "integer", "multipleOf": 7}]},
            "c": {"type": "number", "exclusiveMinimum": 0},
        },
    }
    problems = schema_problems({"a": "nope", "b": 3.5, "c": 0}, schema, "f.yaml")
    text = "\n".join(str(p) for p in problems)
    assert "f.yaml: a: must be in the form this field accepts" in text
    assert "f.yaml: b: does not have a form this field accepts" in text
    assert "f.yaml: c: must be more than 0" in text
    for raw in ("[xyz]", "\\d", "oneOf", "multipleOf", "exclusiveMinimum"):
        assert raw not in text


def test_kubernetes_version_message_in_words(stackgen: Callable[..., Run], minimal: Path) -> None:
    set_stack(minimal, "kind: Stack\n", 'kind: Stack\nkubernetesVersion: "1.20.0"\n')
    run = stackgen("build", str(minimal))
    assert_rejected(run, "kubernetesVersion: must be a Kubernetes version from 1.25 to 1.37")
    assert "[0-9]" not in run.stderr


# ----------------------------------------------------------------- init refuses what build refuses


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--queue", "a", "--queue", "a"], "--queue a: duplicate queue 'a'"),
        (
            ["--queue", "Linux:exact", "--queue", "linux"],
            "--queue linux: queue 'linux' maps to the same Kubernetes name 'linux'",
        ),
        (["--kubernetes-version", "1.20.0"], "--kubernetes-version: must be a Kubernetes version"),
        (["--kubernetes-version", "1.99.1"], "--kubernetes-version: must be a Kubernetes version"),
        (["--queue", "q" * 37], f"--queue {'q' * 37}: too long for Kubernetes"),
    ],
)
def test_init_refuses_what_build_refuses(
    stackgen: Callable[..., Run], tmp_path: Path, args: list[str], expected: str
) -> None:
    run = stackgen("init", str(tmp_path / "new"), *args)
    assert_rejected(run, expected)
    assert not (tmp_path / "new").exists(), "nothing is written when init refuses"


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--queue", "default:hpa", "--queue", "builds:dispatch", "--queue", "deploy:exact"],
        ["--queue", "true", "--queue", "1.5:exact", "--queue", "on", "--queue", "null:hpa"],
        ["--queue", "Linux_Large.x86-64", "--kubernetes-version", "v1.33"],
        ["--queue", "q" * 36, "--kubernetes-version", "1.33.5", "--namespace", "123"],
        ["--kubernetes-version", "1.25.0", "--name", "a", "--queue", "e" * 34 + ":exact"],
        ["--kubernetes-version", "1.37.2"],
    ],
)
def test_a_fresh_scaffold_always_builds(
    stackgen: Callable[..., Run], tmp_path: Path, args: list[str]
) -> None:
    overlay = tmp_path / "fresh"
    run = stackgen("init", str(overlay), *args)
    assert run.code == 0, run.stderr
    (overlay / "secrets" / "agent-token").write_text("bkua_example_token_value\n")
    run = stackgen("build", str(overlay))
    assert run.code == 0, run.stderr
    assert run.stdout
