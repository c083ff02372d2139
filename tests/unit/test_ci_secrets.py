"""CI without secrets: ``--skip-missing-secrets``, and every secret kind from an existing Secret."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from stackgen.pipeline import BuildOptions, build
from stackgen.stack.placeholders import PLACEHOLDER_TOKEN
from tests.support.cli import Run
from tests.support.overlays import write
from tests.support.paths import ROOT

FLAG = "--skip-missing-secrets"
EXISTING = ROOT / "tests/golden/existing-secrets/overlay"


def _docs(stdout: bytes) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(stdout) if d]


@pytest.fixture
def full(tmp_path: Path, stackgen: Callable[..., Run]) -> Path:
    """A scaffold with every kind of secret file: token, git credentials, SSH key, adapter TLS."""
    overlay = tmp_path / "full"
    run = stackgen("init", str(overlay), "--queue", "default:hpa", "--queue", "jobs:dispatch")
    assert run.code == 0, run.stderr
    stack = yaml.safe_load((overlay / "stack.yaml").read_text())
    stack["secrets"]["gitCredentials"] = {"file": "secrets/git-credentials"}
    stack["secrets"]["sshKey"] = {
        "privateKeyFile": "secrets/ssh-key",
        "knownHostsFile": "secrets/known_hosts",
    }
    (overlay / "stack.yaml").write_text(yaml.safe_dump(stack, sort_keys=False))
    return overlay


def _without_secrets(overlay: Path) -> Path:
    shutil.rmtree(overlay / "secrets")
    return overlay


def test_a_checkout_without_secrets_validates_with_the_flag(
    full: Path, stackgen: Callable[..., Run]
) -> None:
    _without_secrets(full)
    plain = stackgen("validate", str(full))
    assert plain.code == 1
    assert "file not found" in plain.stderr
    run = stackgen("validate", FLAG, str(full))
    assert run.code == 0, run.stderr
    assert run.stdout.decode().startswith("ok ")
    # One notice per absent file, naming it and its field.
    for field, rel in (
        ("secrets.agentToken.file", "secrets/agent-token"),
        ("secrets.gitCredentials.file", "secrets/git-credentials"),
        ("secrets.sshKey.privateKeyFile", "secrets/ssh-key"),
        ("secrets.sshKey.knownHostsFile", "secrets/known_hosts"),
        ("metricsAdapter.tls.caFile", "secrets/metrics-adapter/ca.crt"),
        ("metricsAdapter.tls.certFile", "secrets/metrics-adapter/tls.crt"),
        ("metricsAdapter.tls.keyFile", "secrets/metrics-adapter/tls.key"),
    ):
        (line,) = [x for x in run.lines if f"{field}:" in x]
        assert f"{rel} is missing: built with a placeholder ({FLAG})" in line


def test_a_present_bad_secret_still_fails(full: Path, stackgen: Callable[..., Run]) -> None:
    _without_secrets(full)
    write(full / "secrets" / "ssh-key", "not a key at all\n", mode=0o600)
    run = stackgen("validate", FLAG, str(full))
    assert run.code == 1
    assert any(
        "secrets.sshKey.privateKeyFile: is not a valid SSH private key" in line
        for line in run.lines
    ), run.stderr
    # The absent ones were replaced: the bad key is the one problem.
    assert not any("file not found" in line for line in run.lines)


def test_present_secrets_are_used_and_checked_as_usual(
    full: Path, stackgen: Callable[..., Run]
) -> None:
    # The scaffold's token is still init's placeholder: refused with or without the flag.
    write(full / "secrets" / "git-credentials", "https://u:t@example.com\n", mode=0o600)
    run = stackgen("validate", FLAG, str(full))
    assert run.code == 1
    assert any("secrets.agentToken.file: still holds the placeholder" in x for x in run.lines)
    assert not any("agent-token is missing" in x for x in run.lines)


def test_placeholders_reach_stdout_only_with_the_flag_and_then_it_says_so(
    full: Path, stackgen: Callable[..., Run]
) -> None:
    _without_secrets(full)
    run = stackgen("build", str(full))
    assert run.code == 1 and run.stdout == b""
    run = stackgen("build", FLAG, str(full))
    assert run.code == 0, run.stderr
    secrets = [d for d in _docs(run.stdout) if d["kind"] == "Secret"]
    token = next(s for s in secrets if s["metadata"]["name"].startswith("buildkite-agent-token"))
    assert base64.b64decode(token["data"]["token"]).decode() == PLACEHOLDER_TOKEN
    assert "holds placeholder secrets" in run.lines[-1]
    # A complete overlay never gets a placeholder, flag or not.
    complete = stackgen("build", FLAG, "overlays/example")
    assert complete.code == 0, complete.stderr
    assert PLACEHOLDER_TOKEN.encode() not in complete.stdout
    assert base64.b64encode(PLACEHOLDER_TOKEN.encode()) not in complete.stdout
    assert "placeholder" not in complete.stderr


def test_an_unset_token_variable_gets_a_placeholder(minimal: Path) -> None:
    stack = yaml.safe_load((minimal / "stack.yaml").read_text())
    stack["secrets"]["agentToken"] = {"env": "CI_NO_SUCH_TOKEN"}
    (minimal / "stack.yaml").write_text(yaml.safe_dump(stack))
    result = build(minimal, BuildOptions(skip_missing_secrets=True, environ={}))
    assert result.placeholders == [
        "secrets.agentToken.env: environment variable CI_NO_SUCH_TOKEN is not set: "
        f"built with a placeholder ({FLAG})"
    ]


def test_a_missing_path_outside_the_overlay_is_not_replaced(minimal: Path) -> None:
    from stackgen.common.errors import ConfigError

    stack = yaml.safe_load((minimal / "stack.yaml").read_text())
    stack["secrets"]["agentToken"] = {"file": "../elsewhere/token"}
    (minimal / "stack.yaml").write_text(yaml.safe_dump(stack))
    with pytest.raises(ConfigError) as info:
        build(minimal, BuildOptions(skip_missing_secrets=True))
    assert "path escapes the overlay folder" in str(info.value)


# ------------------------------------------------------------------ existing Secrets


def _pods(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for obj in objects:
        spec = obj.get("spec", {})
        pod = spec.get("template", {}).get("spec") or (
            spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
        )
        if pod:
            out.append((obj["metadata"]["name"], pod))
    return out


def test_every_secret_kind_can_reference_an_existing_secret() -> None:
    objects = build(EXISTING).objects
    assert not [o for o in objects if o["kind"] == "Secret"]  # nothing generated
    agents = [(n, p) for n, p in _pods(objects) if n.startswith("buildkite-agent-")]
    assert len(agents) == 2  # the hpa pool and the dispatch template
    for name, pod in agents:
        volumes = {v["name"]: v.get("secret") for v in pod["volumes"]}
        assert volumes["git-credentials"]["secretName"] == "bk-git", name
        assert volumes["git-credentials"]["items"] == [
            {"key": "credentials", "path": "git-credentials"}
        ]
        assert volumes["ssh-key"]["secretName"] == "bk-ssh"
        assert volumes["ssh-key"]["items"] == [
            {"key": "id_ed25519", "path": "ssh-privatekey"},
            {"key": "known_hosts", "path": "known_hosts"},
        ]
    pods = dict(_pods(objects))
    adapter = pods["stackgen-metrics-adapter"]
    (serving,) = [v for v in adapter["volumes"] if v["name"] == "serving-cert"]
    assert serving["secret"]["secretName"] == "adapter-serving-cert"
    (dispatcher,) = pods["stackgen-dispatcher"]["containers"]
    env = {e["name"]: e.get("valueFrom") for e in dispatcher["env"]}
    assert env["BUILDKITE_WEBHOOK_TOKEN"] == {
        "secretKeyRef": {"name": "bk-webhook", "key": "webhook-token"}
    }
    (apiservice,) = [o for o in objects if o["kind"] == "APIService"]
    ca = (EXISTING / "ca" / "ca.crt").read_bytes()
    assert base64.b64decode(apiservice["spec"]["caBundle"]) == ca


def _stack(overlay: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    data = yaml.safe_load((overlay / "stack.yaml").read_text())
    edit(data)
    (overlay / "stack.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return overlay


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda d: d["secrets"].update(
                gitCredentials={"file": "x", "existingSecret": {"name": "g"}}
            ),
            "secrets.gitCredentials: must set exactly one of: file, existingSecret",
        ),
        (
            lambda d: d["secrets"]["sshKey"].update(privateKeyFile="secrets/id"),
            "secrets.sshKey.privateKeyFile: set either the key files or existingSecret, not both",
        ),
        (
            lambda d: d["secrets"].update(sshKey={"privateKeyFile": "secrets/id"}),
            "secrets.sshKey.knownHostsFile: is required (or name an existingSecret",
        ),
        (
            lambda d: d["metricsAdapter"]["tls"].pop("caFile"),
            "metricsAdapter.tls.caFile: is required with existingSecret",
        ),
        (
            lambda d: d["metricsAdapter"]["tls"].update(certFile="ca/ca.crt"),
            "metricsAdapter.tls: set one way only, not the certificate files and existingSecret",
        ),
    ],
)
def test_existing_secret_rules(
    tmp_path: Path,
    stackgen: Callable[..., Run],
    edit: Callable[[dict[str, Any]], None],
    expected: str,
) -> None:
    overlay = tmp_path / "overlay"
    shutil.copytree(EXISTING, overlay)
    run = stackgen("build", str(_stack(overlay, edit)))
    assert run.code == 1 and run.stdout == b""
    assert any(expected in line for line in run.lines), run.stderr


def test_a_bad_ca_file_with_an_existing_secret_is_refused(tmp_path: Path) -> None:
    from stackgen.common.errors import ConfigError

    overlay = tmp_path / "overlay"
    shutil.copytree(EXISTING, overlay)
    (overlay / "ca" / "ca.crt").write_text("not a certificate\n")
    with pytest.raises(ConfigError) as info:
        build(overlay)
    assert "metricsAdapter.tls.caFile: is not a PEM certificate" in str(info.value)
