"""What the secret files an overlay names hold: checked without ever quoting them.

The agent and webhook tokens, git credentials, the SSH key and known_hosts, and the
metrics adapter's certificate files.  Every check returns problems instead of raising,
so one run reports them all.  No message ever quotes the content of a secret file.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from stackgen.common.errors import Problem
from stackgen.common.files import UnsafeFile, display_path, read_regular
from stackgen.common.names import adapter_service_dns
from stackgen.stack.model import SECRET_FILE_BYTES, SshKey, Stack

#: What ``stackgen init`` writes into secret files the user still has to fill in.
PLACEHOLDER_MARKER = "REPLACE-ME"

_MAX_SECRET_BYTES = SECRET_FILE_BYTES


def resolve_inside(
    overlay: Path, path: Path, file: str, field: str
) -> tuple[Path | None, list[Problem]]:
    """Resolve a user-given path and insist it stays inside the overlay folder."""
    root = overlay.resolve()
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        return None, [Problem(file, field, "cannot resolve path")]
    if resolved != root and root not in resolved.parents:
        return None, [Problem(file, field, "path escapes the overlay folder")]
    if not resolved.exists():
        return None, [Problem(file, field, f"file not found: {display_path(path)}")]
    return resolved, []


def read_secret(
    overlay: Path, path: Path, file: str, field: str
) -> tuple[bytes | None, list[Problem]]:
    """A secret file's bytes (inside the overlay, at most 1 MiB), or why not."""
    resolved, problems = resolve_inside(overlay, path, file, field)
    if resolved is None:
        return None, problems
    try:
        # Never a named pipe or a device: checked on the open file, read up to the bound.
        return read_regular(resolved, _MAX_SECRET_BYTES), []
    except FileNotFoundError:
        return None, [Problem(file, field, f"file not found: {display_path(path)}")]
    except UnsafeFile as exc:
        return None, [Problem(file, field, exc.reason)]


def read_text(overlay: Path, path: Path, file: str, field: str) -> tuple[str | None, list[Problem]]:
    """A secret file as UTF-8 text, or why not."""
    data, problems = read_secret(overlay, path, file, field)
    if data is None:
        return None, problems
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError:
        return None, [Problem(file, field, "is not UTF-8 text")]


def stack_secret(stack: Stack, path: Path, field: str) -> tuple[bytes | None, list[Problem]]:
    """A secret file of ``stack``: its placeholder when absent and skipped, else read."""
    placeholder = stack.placeholders.get(path)
    if placeholder is not None:
        return placeholder, []
    return read_secret(stack.overlay, path, stack.file, field)


def stack_secret_text(stack: Stack, path: Path, field: str) -> tuple[str | None, list[Problem]]:
    """:func:`stack_secret` as UTF-8 text."""
    data, problems = stack_secret(stack, path, field)
    if data is None:
        return None, problems
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError:
        return None, [Problem(stack.file, field, "is not UTF-8 text")]


def token_problems(raw: str, file: str, field: str) -> list[Problem]:
    """Check an agent or webhook token without ever quoting it."""
    token = raw.strip()
    if not token:
        return [Problem(file, field, "is empty")]
    if PLACEHOLDER_MARKER in token:
        return [
            Problem(
                file,
                field,
                "still holds the placeholder written by `stackgen init`: put the real token there",
            )
        ]
    if "\0" in token:
        return [Problem(file, field, "contains a NUL character: a token is one line of text")]
    if "\n" in token or "\r" in token:
        return [Problem(file, field, "must hold the token on a single line")]
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in token if ch != "\t"):
        return [Problem(file, field, "contains a control character: a token is plain text")]
    if any(ch.isspace() for ch in token):
        return [Problem(file, field, "must be a single token without spaces")]
    return []


def _secret_source_problems(
    stack: Stack,
    source_field: str,
    file_path: Path | None,
    env: str | None,
    environ: Mapping[str, str],
) -> list[Problem]:
    file = stack.file
    if file_path is not None:
        field = f"{source_field}.file"
        text, problems = stack_secret_text(stack, file_path, field)
        if text is None:
            return problems
        return token_problems(text, file, field)
    if env is not None:
        field = f"{source_field}.env"
        if env not in environ:
            return [Problem(file, field, f"environment variable {env} is not set")]
        return token_problems(environ[env], file, field)
    return []


def secret_checks(stack: Stack, environ: Mapping[str, str]) -> Iterator[Problem]:
    """The tokens (agent, webhook), git credentials and SSH key the stack names."""
    token = stack.secrets.agent_token
    yield from _secret_source_problems(stack, token.field_path, token.file, token.env, environ)
    webhook = stack.dispatcher.webhook
    if webhook.enabled and webhook.token is None:
        yield Problem(
            stack.file, "dispatcher.webhook.token", "is required when the webhook is enabled"
        )
    if webhook.token is not None:
        yield from _secret_source_problems(
            stack, webhook.token.field_path, webhook.token.file, webhook.token.env, environ
        )
    if stack.secrets.git_credentials_file is not None:
        yield from git_credentials_problems(stack, stack.secrets.git_credentials_file)
    if stack.secrets.ssh_key is not None:
        yield from _ssh_problems(stack, stack.secrets.ssh_key)


def _ssh_problems(stack: Stack, key: SshKey) -> Iterator[Problem]:
    """Both files, or an existing Secret: never a mix."""
    files = {"privateKeyFile": key.private_key_file, "knownHostsFile": key.known_hosts_file}
    if key.existing_secret is not None:
        for name, path in files.items():
            if path is not None:
                yield Problem(
                    stack.file,
                    f"secrets.sshKey.{name}",
                    "set either the key files or existingSecret, not both",
                )
        return
    for name, path in files.items():
        if path is None:
            yield Problem(
                stack.file,
                f"secrets.sshKey.{name}",
                "is required (or name an existingSecret instead of the files)",
            )
    if key.private_key_file is not None:
        yield from ssh_key_problems(stack, key.private_key_file)
    if key.known_hosts_file is not None:
        yield from known_hosts_problems(stack, key.known_hosts_file)


def git_credentials_problems(stack: Stack, path: Path) -> list[Problem]:
    """Every line of a git-credentials file must be ``scheme://USER:TOKEN@HOST[/path]``."""
    file, field = stack.file, "secrets.gitCredentials.file"
    text, problems = stack_secret_text(stack, path, field)
    if text is None:
        return problems
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1)]
    lines = [(n, line) for n, line in lines if line]
    if not lines:
        return [Problem(file, field, "is empty: no credentials to store")]
    for number, line in lines:
        if PLACEHOLDER_MARKER in line:
            problems.append(
                Problem(
                    file,
                    field,
                    f"line {number}: still holds the placeholder written by `stackgen init`",
                )
            )
            continue
        try:
            parts = urlsplit(line)
            host = parts.hostname
            _ = parts.port
        except ValueError:
            host = None
        if (
            parts.scheme not in ("https", "http")
            or not host
            or not parts.username
            or not parts.password
            or any(ch.isspace() for ch in line)
        ):
            problems.append(
                Problem(
                    file,
                    field,
                    f"line {number}: not a credential URL (want https://USER:TOKEN@HOST)",
                )
            )
    return problems


def normalized_ssh_key(data: bytes) -> bytes:
    """An SSH private key as ssh-add reads it: LF line ends, exactly one final newline.

    A key saved on Windows (CRLF) or without its last newline is otherwise accepted by
    the checks here but refused by ssh-add in every job ("error in libcrypto").
    """
    text = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    lines = [line.rstrip() for line in text.strip().split(b"\n")]
    return b"\n".join(lines) + b"\n"


def ssh_key_problems(stack: Stack, path: Path) -> list[Problem]:
    """The private key must parse, be a private (not public) key, and have no passphrase."""
    from cryptography.hazmat.primitives import serialization

    file, field = stack.file, "secrets.sshKey.privateKeyFile"
    data, problems = stack_secret(stack, path, field)
    if data is None:
        return problems
    stripped = data.strip()
    if not stripped:
        return [Problem(file, field, "is empty")]
    if PLACEHOLDER_MARKER.encode() in stripped:
        return [Problem(file, field, "still holds the placeholder written by `stackgen init`")]
    first = stripped.split(maxsplit=1)[0]
    if first.startswith((b"ssh-", b"ecdsa-sha2-", b"sk-")) or b"PUBLIC KEY-----" in stripped[:64]:
        return [
            Problem(file, field, "is a public key: give the private key (the file without .pub)")
        ]
    try:
        if stripped.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
            serialization.load_ssh_private_key(stripped + b"\n", password=None)
        else:
            serialization.load_pem_private_key(stripped + b"\n", password=None)
    except TypeError:
        return [
            Problem(
                file,
                field,
                "is passphrase-protected: ssh-add cannot prompt in a pod; "
                "use an unencrypted deploy key",
            )
        ]
    except (ValueError, binascii.Error):
        return [Problem(file, field, "is not a valid SSH private key (OpenSSH or PEM format)")]
    except Exception:  # cryptography raises UnsupportedAlgorithm for odd key types
        return [Problem(file, field, "is not a supported SSH private key")]
    return []


def known_hosts_problems(stack: Stack, path: Path) -> list[Problem]:
    """Each known_hosts line must be ``[marker] hosts keytype base64-key [comment]``."""
    from cryptography.hazmat.primitives import serialization

    file, field = stack.file, "secrets.sshKey.knownHostsFile"
    text, problems = stack_secret_text(stack, path, field)
    if text is None:
        return problems
    entries = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if fields[0].startswith("@"):
            fields = fields[1:]
        if len(fields) < 3:
            problems.append(Problem(file, field, f"line {number}: not a known_hosts entry"))
            continue
        key_type, key_b64 = fields[1], fields[2]
        try:
            base64.b64decode(key_b64, validate=True)
            serialization.load_ssh_public_key(f"{key_type} {key_b64}".encode())
        except Exception:
            problems.append(Problem(file, field, f"line {number}: host key does not parse"))
            continue
        entries += 1
    if entries == 0 and not problems:
        problems.append(Problem(file, field, "has no host keys: ssh would trust no host"))
    return problems


def ca_problems(stack: Stack, path: Path) -> list[Problem]:
    """The CA of an existing serving-certificate Secret: it parses and has not expired."""
    from cryptography import x509

    field = "metricsAdapter.tls.caFile"
    data, problems = stack_secret(stack, path, field)
    if data is None:
        return problems
    try:
        ca = x509.load_pem_x509_certificate(data)
    except ValueError:
        return [Problem(stack.file, field, "is not a PEM certificate")]
    if ca.not_valid_after_utc < dt.datetime.now(dt.UTC):
        return [Problem(stack.file, field, "certificate has expired")]
    return []


def certificate_problems(stack: Stack) -> Iterator[Problem]:
    """The adapter's CA, certificate and key: they parse, match, and name its Service."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    tls = stack.metrics_adapter.tls
    file = stack.file
    assert tls.ca_file and tls.cert_file and tls.key_file
    blobs: dict[str, bytes] = {}
    for key, path in (
        ("caFile", tls.ca_file),
        ("certFile", tls.cert_file),
        ("keyFile", tls.key_file),
    ):
        data, problems = stack_secret(stack, path, f"metricsAdapter.tls.{key}")
        yield from problems
        if data is not None:
            blobs[key] = data
    if len(blobs) != 3:
        return
    try:
        ca = x509.load_pem_x509_certificate(blobs["caFile"])
    except ValueError:
        yield Problem(file, "metricsAdapter.tls.caFile", "is not a PEM certificate")
        return
    try:
        cert = x509.load_pem_x509_certificate(blobs["certFile"])
    except ValueError:
        yield Problem(file, "metricsAdapter.tls.certFile", "is not a PEM certificate")
        return
    try:
        private_key = serialization.load_pem_private_key(blobs["keyFile"], password=None)
    except (ValueError, TypeError):
        yield Problem(file, "metricsAdapter.tls.keyFile", "is not an unencrypted PEM private key")
        return
    # A placeholder (--skip-missing-secrets) cannot match a real file: the pairs are
    # checked only when both of a pair are real.
    placeholder = {
        k
        for k, p in (("ca", tls.ca_file), ("cert", tls.cert_file), ("key", tls.key_file))
        if p in stack.placeholders
    }
    pub = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if not placeholder & {"cert", "key"} and (
        private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        != pub
    ):
        yield Problem(file, "metricsAdapter.tls.keyFile", "does not belong to certFile")
    if not placeholder & {"ca", "cert"}:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, Exception):
            yield Problem(file, "metricsAdapter.tls.certFile", "is not signed by caFile")
    now = dt.datetime.now(dt.UTC)
    for key_name, certificate in (("caFile", ca), ("certFile", cert)):
        if certificate.not_valid_after_utc < now:
            yield Problem(file, f"metricsAdapter.tls.{key_name}", "certificate has expired")
    dns = adapter_service_dns(stack.namespace)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if dns not in names:
        yield Problem(
            file,
            "metricsAdapter.tls.certFile",
            f"has no subjectAltName {dns} (the adapter's Service)",
        )
