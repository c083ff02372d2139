"""Placeholders for the secrets a CI checkout does not have (``--skip-missing-secrets``).

``stackgen init`` git-ignores ``secrets/``, so a fresh clone has none of the secret files
stack.yaml names.  With the flag, every secret file that is *absent* (and would lie inside
the overlay) is replaced, for this build only, by throwaway material of the right shape,
made in memory: a token, a git-credentials line, an SSH key that parses, a known_hosts
line, and a CA with the adapter's serving certificate.  So the build exercises exactly the
composition, kustomize, kubeconform and policy steps the real secrets would.  A file that
exists is read and checked as usual (a bad one still fails), and so is anything outside
the overlay.  An unset ``env:`` token gets a placeholder token the same way.

Every placeholder is reported (:attr:`Placeholders.notices`), naming the file or variable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from stackgen.common.files import display_path
from stackgen.stack.model import SecretSource, Stack

#: The placeholder token: valid-shaped, and obviously not a Buildkite token.
PLACEHOLDER_TOKEN = "stackgen-placeholder-token-not-a-secret"
_CREDENTIALS = "https://placeholder:placeholder-not-a-secret@placeholder.invalid\n"
_FLAG = "--skip-missing-secrets"


@dataclass
class Placeholders:
    """A stack whose absent secrets are placeholders, and what was replaced."""

    stack: Stack
    environ: Mapping[str, str]
    notices: list[str] = field(default_factory=list)


def with_placeholders(stack: Stack, environ: Mapping[str, str]) -> Placeholders:
    """``stack`` with a placeholder for every absent secret file and unset token variable."""
    files: dict[Path, bytes] = {}
    notices: list[str] = []
    missing = [(f, p) for f, p in secret_file_fields(stack) if _absent_inside(stack.overlay, p)]
    made = _material(stack, {f for f, _ in missing})
    for field_path, path in missing:
        files[path] = made[field_path]
        notices.append(
            f"{field_path}: {display_path(path)} is missing: built with a placeholder ({_FLAG})"
        )
    env = dict(environ)
    for source in token_sources(stack):
        if source.env is not None and source.env not in env:
            env[source.env] = PLACEHOLDER_TOKEN
            notices.append(
                f"{source.field_path}.env: environment variable {source.env} is not set: "
                f"built with a placeholder ({_FLAG})"
            )
    return Placeholders(replace(stack, placeholders=files), env, notices)


def token_sources(stack: Stack) -> Iterator[SecretSource]:
    """The agent token, and the webhook token when there is one."""
    yield stack.secrets.agent_token
    if stack.dispatcher.webhook.token is not None:
        yield stack.dispatcher.webhook.token


def secret_file_fields(stack: Stack) -> Iterator[tuple[str, Path]]:
    """Every secret file stack.yaml names, with its field."""
    for source in token_sources(stack):
        if source.file is not None:
            yield f"{source.field_path}.file", source.file
    if stack.secrets.git_credentials_file is not None:
        yield "secrets.gitCredentials.file", stack.secrets.git_credentials_file
    ssh = stack.secrets.ssh_key
    if ssh is not None:
        if ssh.private_key_file is not None:
            yield "secrets.sshKey.privateKeyFile", ssh.private_key_file
        if ssh.known_hosts_file is not None:
            yield "secrets.sshKey.knownHostsFile", ssh.known_hosts_file
    tls = stack.metrics_adapter.tls
    if stack.hpa_queues:
        for key, path in (
            ("caFile", tls.ca_file),
            ("certFile", tls.cert_file),
            ("keyFile", tls.key_file),
        ):
            if path is not None:
                yield f"metricsAdapter.tls.{key}", path


def _absent_inside(overlay: Path, path: Path) -> bool:
    """Nothing at ``path`` (not even a dangling link), and it would lie inside the overlay.

    A path that escapes the overlay is left to the usual checks, which refuse it.
    """
    if os.path.lexists(path):
        return False
    try:
        root = overlay.resolve()
        resolved = path.resolve()
    except (OSError, RuntimeError):
        return False
    return resolved == root or root in resolved.parents


def _material(stack: Stack, fields: set[str]) -> dict[str, bytes]:
    """Throwaway, valid-shaped content for each of ``fields`` (made in memory)."""
    made: dict[str, bytes] = {}
    for field_path in fields:
        if field_path.endswith("agentToken.file") or field_path.endswith("webhook.token.file"):
            made[field_path] = PLACEHOLDER_TOKEN.encode() + b"\n"
        elif field_path == "secrets.gitCredentials.file":
            made[field_path] = _CREDENTIALS.encode()
    if fields & {"secrets.sshKey.privateKeyFile", "secrets.sshKey.knownHostsFile"}:
        private, host = _ssh_material()
        made["secrets.sshKey.privateKeyFile"] = private
        made["secrets.sshKey.knownHostsFile"] = host
    if any(f.startswith("metricsAdapter.tls.") for f in fields):
        made.update(_tls_material(stack.namespace))
    return made


def _ssh_material() -> tuple[bytes, bytes]:
    """An unencrypted OpenSSH ed25519 key, and a known_hosts line for a throwaway host key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    host = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    return private, b"placeholder.invalid " + host + b"\n"


def _tls_material(namespace: str) -> dict[str, bytes]:
    """A throwaway CA and the adapter's serving certificate for ``namespace`` (one day)."""
    from cryptography.hazmat.primitives import serialization

    from stackgen.common.certs import adapter_certs, private_pem

    ca, cert, key = adapter_certs(namespace, days=1)
    return {
        "metricsAdapter.tls.caFile": ca.public_bytes(serialization.Encoding.PEM),
        "metricsAdapter.tls.certFile": cert.public_bytes(serialization.Encoding.PEM),
        "metricsAdapter.tls.keyFile": private_pem(key),
    }
