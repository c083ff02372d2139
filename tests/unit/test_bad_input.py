"""Every kind of bad input: one line per problem naming file and field, a non-zero exit,
zero bytes on stdout, no traceback, and never a secret value in any message.

Each case runs the real CLI in a fresh process, as a user's shell would.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.cli import Run
from tests.support.overlays import write

TOKEN = "tok-123-abc"  # the minimal overlay's token: must never appear on stderr
GITHUB_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def assert_rejected(run: Run, *expected: str, code: int = 1) -> None:
    assert run.code == code, run.stderr
    assert run.stdout == b"", "stdout must stay empty on error"
    assert "Traceback" not in run.stderr
    assert run.lines, "expected at least one problem line"
    for fragment in expected:
        assert any(fragment in line for line in run.lines), (fragment, run.lines)
    assert TOKEN not in run.stderr
    assert "example-not-a-real-token" not in run.stderr
    assert "bkct_example_not_a_real_token" not in run.stderr


def set_stack(overlay: Path, old: str, new: str) -> None:
    path = overlay / "stack.yaml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_missing_overlay(stackgen: Callable[..., Run], tmp_path: Path) -> None:
    run = stackgen("build", str(tmp_path / "nope"))
    assert_rejected(run, "nope: no such overlay folder")


def test_overlay_without_stack_or_kustomization(
    stackgen: Callable[..., Run], tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    run = stackgen("build", str(tmp_path / "empty"))
    assert_rejected(run, "holds neither stack.yaml nor kustomization.yaml")


def test_unreadable_stack_file(stackgen: Callable[..., Run], minimal: Path) -> None:
    # Root reads any mode, so make the file unreadable in a way root also meets.
    (minimal / "stack.yaml").unlink()
    (minimal / "stack.yaml").symlink_to(minimal / "gone.yaml")
    run = stackgen("build", str(minimal))
    assert_rejected(run, "stack.yaml: file not found")


def test_stack_file_is_a_folder(stackgen: Callable[..., Run], minimal: Path) -> None:
    (minimal / "stack.yaml").unlink()
    (minimal / "stack.yaml").mkdir()
    assert_rejected(stackgen("build", str(minimal)), "stack.yaml: is a folder, not a file")


def test_invalid_yaml(stackgen: Callable[..., Run], minimal: Path) -> None:
    write(minimal / "stack.yaml", "apiVersion: stackgen.io/v1alpha1\nkind: [Stack\n")
    assert_rejected(stackgen("build", str(minimal)), "stack.yaml: invalid YAML: line")


def test_duplicate_key(stackgen: Callable[..., Run], minimal: Path) -> None:
    set_stack(minimal, "kind: Stack\n", "kind: Stack\nkind: Stack\n")
    assert_rejected(stackgen("build", str(minimal)), "duplicate key 'kind'")


def test_unknown_key_with_hint(stackgen: Callable[..., Run], minimal: Path) -> None:
    set_stack(minimal, "    mode: dispatch\n", "    mode: dispatch\n    maxAgent: 3\n")
    run = stackgen("build", str(minimal))
    assert_rejected(run, "stack.yaml: queues[0].maxAgent: unknown key; did you mean 'maxAgents'?")


def test_wrong_type(stackgen: Callable[..., Run], minimal: Path) -> None:
    set_stack(minimal, "    mode: dispatch\n", "    mode: dispatch\n    maxAgents: lots\n")
    run = stackgen("build", str(minimal))
    assert_rejected(run, "stack.yaml: queues[0].maxAgents: must be an integer, not a string")
    assert "lots" not in run.stderr  # values are never echoed


def test_literal_token_in_the_wrong_place_is_not_echoed(
    stackgen: Callable[..., Run], minimal: Path
) -> None:
    set_stack(minimal, "  agentToken:\n    file: secrets/token\n", f"  agentToken: {TOKEN}\n")
    assert_rejected(stackgen("build", str(minimal)), "secrets.agentToken: must be a mapping")


def test_bad_mode_hint(stackgen: Callable[..., Run], minimal: Path) -> None:
    set_stack(minimal, "mode: dispatch", "mode: dispach")
    assert_rejected(
        stackgen("build", str(minimal)),
        "queues[0].mode: must be one of: hpa, dispatch, exact; did you mean 'dispatch'?",
    )


def test_duplicate_queue(stackgen: Callable[..., Run], minimal: Path) -> None:
    set_stack(
        minimal,
        "    mode: dispatch\n",
        "    mode: dispatch\n  - name: default\n    mode: exact\n",
    )
    assert_rejected(stackgen("build", str(minimal)), "queues[1].name: duplicate queue 'default'")


def test_queues_mapping_to_same_kubernetes_name(
    stackgen: Callable[..., Run], minimal: Path
) -> None:
    set_stack(
        minimal,
        "  - name: default\n    mode: dispatch\n",
        "  - name: Linux_Big\n    mode: dispatch\n  - name: linux-big\n    mode: exact\n",
    )
    assert_rejected(stackgen("build", str(minimal)), "same Kubernetes name 'linux-big'")


def test_min_greater_than_max(stackgen: Callable[..., Run], minimal: Path) -> None:
    set_stack(
        minimal, "    mode: dispatch\n", "    mode: dispatch\n    minAgents: 5\n    maxAgents: 2\n"
    )
    assert_rejected(
        stackgen("build", str(minimal)),
        "queues[0].minAgents: minAgents (5) is greater than maxAgents (2)",
    )


def test_missing_token_file(stackgen: Callable[..., Run], minimal: Path) -> None:
    (minimal / "secrets" / "token").unlink()
    assert_rejected(stackgen("build", str(minimal)), "secrets.agentToken.file: file not found: ")


def test_empty_token(stackgen: Callable[..., Run], minimal: Path) -> None:
    (minimal / "secrets" / "token").write_text("\n  \n")
    assert_rejected(stackgen("build", str(minimal)), "secrets.agentToken.file: is empty")


def test_placeholder_token_left_in(stackgen: Callable[..., Run], tmp_path: Path) -> None:
    overlay = tmp_path / "fresh"
    created = stackgen("init", str(overlay), "--queue", "default")
    assert created.code == 0, created.stderr
    assert_rejected(
        stackgen("build", str(overlay)),
        "secrets.agentToken.file: still holds the placeholder written by `stackgen init`",
    )


def test_token_from_unset_env(stackgen: Callable[..., Run], minimal: Path) -> None:
    set_stack(minimal, "    file: secrets/token", "    env: STACKGEN_TEST_UNSET_TOKEN")
    assert_rejected(
        stackgen("build", str(minimal)),
        "secrets.agentToken.env: environment variable STACKGEN_TEST_UNSET_TOKEN is not set",
    )


def test_literal_token_in_user_kustomization(stackgen: Callable[..., Run], minimal: Path) -> None:
    write(
        minimal / "extra" / "kustomization.yaml",
        f"""
        apiVersion: kustomize.config.k8s.io/v1beta1
        kind: Kustomization
        secretGenerator:
          - name: another-token
            literals:
              - token={TOKEN}
        """,
    )
    set_stack(minimal, "secrets:\n", "kustomize:\n  resources: [extra]\nsecrets:\n")
    assert_rejected(
        stackgen("build", str(minimal)),
        "extra/kustomization.yaml: policy: secretGenerator[0].literals[0]: literal secret value in git",
    )


def test_literal_secret_manifest_in_plain_overlay(
    stackgen: Callable[..., Run], tmp_path: Path
) -> None:
    overlay = tmp_path / "plain"
    write(overlay / "kustomization.yaml", "resources: [secret.yaml]\n")
    write(
        overlay / "secret.yaml",
        f"""
        apiVersion: v1
        kind: Secret
        metadata: {{name: agent-token}}
        stringData: {{token: {TOKEN}}}
        """,
    )
    assert_rejected(
        stackgen("build", str(overlay)),
        "secret.yaml: policy: stringData: Secret 'agent-token' holds literal values in git",
    )


def _with_ssh(overlay: Path, key_text: str) -> None:
    write(overlay / "secrets" / "id", key_text, mode=0o600)
    write(overlay / "secrets" / "known_hosts", f"github.com {GITHUB_KEY}\n")
    set_stack(
        overlay,
        "    file: secrets/token\n",
        "    file: secrets/token\n  sshKey:\n    privateKeyFile: secrets/id\n"
        "    knownHostsFile: secrets/known_hosts\n",
    )


def test_malformed_ssh_key(stackgen: Callable[..., Run], minimal: Path) -> None:
    _with_ssh(
        minimal,
        "-----BEGIN OPENSSH PRIVATE KEY-----\nbm90IGEga2V5\n-----END OPENSSH PRIVATE KEY-----\n",
    )
    run = stackgen("build", str(minimal))
    assert_rejected(run, "secrets.sshKey.privateKeyFile: is not a valid SSH private key")
    assert "bm90IGEga2V5" not in run.stderr


def test_public_key_as_private_key(stackgen: Callable[..., Run], minimal: Path) -> None:
    _with_ssh(
        minimal,
        f"{GITHUB_KEY} me@host\n",
    )
    assert_rejected(
        stackgen("build", str(minimal)),
        "secrets.sshKey.privateKeyFile: is a public key: give the private key",
    )


def test_passphrase_protected_key(stackgen: Callable[..., Run], minimal: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    # PKCS#8 PEM: encrypting the OpenSSH format would need the bcrypt module.
    key = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret passphrase"),
    )
    _with_ssh(minimal, key.decode())
    assert_rejected(stackgen("build", str(minimal)), "is passphrase-protected")


def test_bad_known_hosts(stackgen: Callable[..., Run], example: Path) -> None:
    (example / "secrets" / "known_hosts").write_text("github.com ssh-ed25519 not-base64!!\n")
    assert_rejected(
        stackgen("build", str(example)),
        "secrets.sshKey.knownHostsFile: line 1: host key does not parse",
    )


def test_git_credentials_line_not_a_url(stackgen: Callable[..., Run], example: Path) -> None:
    (example / "secrets" / "git-credentials").write_text(
        "https://x-access-token:example-not-a-real-token@github.com\nexample-not-a-real-token\n"
    )
    run = stackgen("build", str(example))
    assert_rejected(
        run,
        "secrets.gitCredentials.file: line 2: not a credential URL (want https://USER:TOKEN@HOST)",
    )


def test_secret_path_escaping_overlay(stackgen: Callable[..., Run], minimal: Path) -> None:
    set_stack(minimal, "file: secrets/token", "file: ../../etc/passwd")
    assert_rejected(
        stackgen("build", str(minimal)),
        "secrets.agentToken.file: path escapes the overlay folder",
    )


def test_secret_symlink_escaping_overlay(stackgen: Callable[..., Run], minimal: Path) -> None:
    (minimal / "secrets" / "token").unlink()
    (minimal / "secrets" / "token").symlink_to("/etc/hostname")
    # The overlay's own check finds the link before stack.yaml is read.
    assert_rejected(
        stackgen("build", str(minimal)),
        "mini/secrets/token: is a symbolic link that leads outside the overlay folder",
    )


def test_hook_name_not_a_buildkite_hook(stackgen: Callable[..., Run], minimal: Path) -> None:
    write(minimal / "hooks" / "pre", "#!/bin/bash\necho hi\n")
    set_stack(minimal, "secrets:\n", "hooks:\n  pre_command: hooks/pre\nsecrets:\n")
    assert_rejected(
        stackgen("build", str(minimal)),
        "stack.yaml: hooks.pre_command: did you mean 'pre-command'?",
    )


def test_kustomize_error_in_user_resources(stackgen: Callable[..., Run], minimal: Path) -> None:
    write(minimal / "extra" / "broken.yaml", "apiVersion: v1\nmetadata: {name: x}\n")
    set_stack(minimal, "secrets:\n", "kustomize:\n  resources: [extra/broken.yaml]\nsecrets:\n")
    run = stackgen("build", str(minimal))
    assert_rejected(run, "stack.yaml: kustomize: ")
    assert "missing kind" in run.stderr or "kind" in run.stderr
    assert "/tmp/stackgen-" not in run.stderr  # temp paths are mapped back


def test_kubeconform_rejects_unknown_field_in_user_patch(
    stackgen: Callable[..., Run], example: Path
) -> None:
    write(
        example / "patches" / "agent.yaml",
        """
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: buildkite-agent-default}
        spec:
          template:
            spec:
              containers:
                - name: agent
                  imagePullPolicyy: Always
        """,
    )
    set_stack(
        example,
        "kustomize:\n",
        "kustomize:\n  patches:\n    - path: patches/agent.yaml\n",
    )
    run = stackgen("build", str(example))
    assert_rejected(
        run,
        "stack.yaml: Deployment/buildkite-agent-default: spec.template.spec.containers[0]: "
        "additional properties 'imagePullPolicyy' not allowed",
    )


def test_two_hpas_on_one_deployment(stackgen: Callable[..., Run], example: Path) -> None:
    write(
        example / "extra" / "second-hpa.yaml",
        """
        apiVersion: autoscaling/v2
        kind: HorizontalPodAutoscaler
        metadata:
          name: cpu
          labels: {app.kubernetes.io/name: buildkite-agent, app.kubernetes.io/component: agent}
        spec:
          scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: buildkite-agent-default}
          minReplicas: 1
          maxReplicas: 3
          metrics:
            - type: Resource
              resource: {name: cpu, target: {type: Utilization, averageUtilization: 80}}
        """,
    )
    set_stack(
        example,
        "    - extra/agent-poddisruptionbudget.yaml\n",
        "    - extra/agent-poddisruptionbudget.yaml\n    - extra/second-hpa.yaml\n",
    )
    assert_rejected(
        stackgen("build", str(example)),
        "Deployment/buildkite-agent-default: 2 HorizontalPodAutoscalers "
        "(buildkite-agent-default, cpu) target it",
    )


def test_insecure_apiservice_without_opt_in(stackgen: Callable[..., Run], tmp_path: Path) -> None:
    overlay = tmp_path / "plain"
    write(overlay / "kustomization.yaml", "resources: [apiservice.yaml]\n")
    write(
        overlay / "apiservice.yaml",
        """
        apiVersion: apiregistration.k8s.io/v1
        kind: APIService
        metadata: {name: v1beta1.external.metrics.k8s.io}
        spec:
          group: external.metrics.k8s.io
          version: v1beta1
          groupPriorityMinimum: 100
          versionPriority: 100
          insecureSkipTLSVerify: true
          service: {name: adapter, namespace: default}
        """,
    )
    assert_rejected(
        stackgen("build", str(overlay)),
        "APIService/v1beta1.external.metrics.k8s.io: spec.insecureSkipTLSVerify: skips TLS "
        "verification without the explicit opt-in",
    )


def test_hpa_queue_without_adapter_tls(stackgen: Callable[..., Run], minimal: Path) -> None:
    set_stack(minimal, "mode: dispatch", "mode: hpa")
    assert_rejected(stackgen("build", str(minimal)), "metricsAdapter.tls: hpa queues need")


def _empty_tools(tmp_path: Path, keep: tuple[str, ...]) -> dict[str, str]:
    """An environment whose PATH holds only the named tools (and no .tools/bin)."""
    bindir = tmp_path / "path-bin"
    bindir.mkdir()
    for tool in keep:
        found = shutil.which(tool)
        if found:
            (bindir / tool).symlink_to(found)
    tools_dir = tmp_path / "no-tools"
    (tools_dir / "bin").mkdir(parents=True)
    return {"PATH": str(bindir), "STACKGEN_TOOLS_DIR": str(tools_dir)}


def test_missing_kustomize_and_kubectl(
    stackgen: Callable[..., Run], minimal: Path, tmp_path: Path
) -> None:
    run = stackgen("build", str(minimal), env=_empty_tools(tmp_path, keep=()))
    assert_rejected(
        run,
        "neither kustomize nor kubectl found: run bin/setup, or install kustomize with: "
        "go install sigs.k8s.io/kustomize/kustomize/v5@v5.8.1",
        code=3,
    )


def test_missing_kubeconform(stackgen: Callable[..., Run], minimal: Path, tmp_path: Path) -> None:
    env = _empty_tools(tmp_path, keep=())
    from tests.support.paths import ROOT

    (Path(env["STACKGEN_TOOLS_DIR"]) / "bin" / "kustomize").symlink_to(
        ROOT / ".tools" / "bin" / "kustomize"
    )
    run = stackgen("build", str(minimal), env=env)
    assert_rejected(
        run,
        "kubeconform not found (needed to validate the stack offline): run bin/setup, or "
        "install it with: go install github.com/yannh/kubeconform/cmd/kubeconform@v0.7.0",
        code=3,
    )


def test_kubectl_kustomize_fallback_notice(
    stackgen: Callable[..., Run], minimal: Path, tmp_path: Path
) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")
    env = _empty_tools(tmp_path, keep=("kubectl",))
    from tests.support.paths import ROOT

    (Path(env["STACKGEN_TOOLS_DIR"]) / "bin" / "kubeconform").symlink_to(
        ROOT / ".tools" / "bin" / "kubeconform"
    )
    run = stackgen("build", str(minimal), env=env)
    assert run.code == 0, run.stderr
    assert "kustomize not found; using `kubectl kustomize`" in run.stderr
    assert b"kind: CronJob" in run.stdout


def test_every_problem_reported_at_once(stackgen: Callable[..., Run], minimal: Path) -> None:
    set_stack(
        minimal,
        "    mode: dispatch\n",
        "    mode: dispatch\n    minAgents: 9\n    maxAgents: 2\n",
    )
    (minimal / "secrets" / "token").write_text("")
    run = stackgen("build", str(minimal))
    assert_rejected(run, "minAgents (9) is greater", "secrets.agentToken.file: is empty")


def test_debug_shows_traceback(stackgen: Callable[..., Run], tmp_path: Path) -> None:
    run = stackgen("--debug", "build", str(tmp_path / "nope"))
    assert run.code != 0
    assert "Traceback" in run.stderr


def test_adapter_tls_ways_are_exclusive(stackgen: Callable[..., Run], example: Path) -> None:
    set_stack(
        example,
        "metricsAdapter:\n  tls:\n",
        "metricsAdapter:\n  tls:\n    insecureSkipTLSVerify: true\n",
    )
    assert_rejected(
        stackgen("build", str(example)),
        "metricsAdapter.tls: set one way only, not the certificate files and insecureSkipTLSVerify",
    )


def test_name_that_would_leave_the_composed_tree(
    stackgen: Callable[..., Run], minimal: Path, tmp_path: Path
) -> None:
    # The build composes before its schema check has finished (that runs while kustomize
    # does): a name the schema refuses must neither be written outside the temporary tree
    # nor hide the schema's message.
    escape = f"stackgen-escape-{tmp_path.name}"
    set_stack(
        minimal,
        "secrets:\n",
        f"gitMirrors:\n  - name: ../../../../{escape}\n"
        "    repository: https://github.com/example/monorepo.git\nsecrets:\n",
    )
    run = stackgen("build", str(minimal))
    assert_rejected(run, "stack.yaml: gitMirrors[0].name:")
    # stackgen-XXXX/tree/stack/git-mirrors/../../../.. is the temp dir itself.
    assert not (Path(tempfile.gettempdir()) / escape).exists()


def test_kubernetes_plugin_settings_only_on_exact_queues(
    stackgen: Callable[..., Run], minimal: Path
) -> None:
    set_stack(minimal, "    mode: dispatch\n", "    mode: dispatch\n    kubernetesPlugin: {}\n")
    assert_rejected(
        stackgen("build", str(minimal)),
        "queues[0].kubernetesPlugin: only exact queues read a step's pod spec",
    )


def test_kubernetes_plugin_unknown_guard_rail_key(
    stackgen: Callable[..., Run], minimal: Path
) -> None:
    set_stack(
        minimal,
        "    mode: dispatch\n",
        "    mode: exact\n    kubernetesPlugin: {allowedImage: [alpine]}\n",
    )
    assert_rejected(
        stackgen("build", str(minimal)),
        "queues[0].kubernetesPlugin.allowedImage: unknown key; did you mean 'allowedImages'?",
    )
