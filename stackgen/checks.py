"""Rules the JSON schema cannot express: cross-field rules and the content of secret files.

Every check returns problems instead of raising, so one run reports them all.
No message ever quotes the content of a secret file.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from stackgen.config import Stack, display_path, reserved_env_problem
from stackgen.errors import Problem

#: What ``stackgen init`` writes into secret files the user still has to fill in.
PLACEHOLDER_MARKER = "REPLACE-ME"

_MAX_SECRET_BYTES = 1024 * 1024


def check_stack(stack: Stack, *, environ: Mapping[str, str]) -> list[Problem]:
    """Run every cross-field rule and secret-file check; return all problems found."""
    problems: list[Problem] = []
    problems += _queue_rules(stack)
    problems += _secret_checks(stack, environ)
    problems += _hook_checks(stack)
    problems += _adapter_checks(stack)
    problems += _kustomize_checks(stack)
    return problems


# ------------------------------------------------------------------------- queues


def _queue_rules(stack: Stack) -> Iterator[Problem]:
    file = stack.file
    names = Counter(q.name for q in stack.queues)
    slugs = Counter(q.slug for q in stack.queues)
    mirrors = {m.name for m in stack.git_mirrors}
    for mirror, count in Counter(m.name for m in stack.git_mirrors).items():
        if count > 1:
            yield Problem(file, "gitMirrors", f"mirror {mirror!r} is defined {count} times")
    for key in stack.agent.tags:
        if key == "queue":
            yield Problem(file, "agent.tags.queue", "each queue sets its own queue tag; remove it")
    for key in stack.agent.env:
        why = reserved_env_problem(key)
        if why:
            yield Problem(file, f"agent.env.{key}", f"stackgen sets this variable; {why}")
    seen_names: set[str] = set()
    seen_slugs: set[str] = set()
    for index, queue in enumerate(stack.queues):
        where = f"queues[{index}]"
        if names[queue.name] > 1 and queue.name in seen_names:
            yield Problem(file, f"{where}.name", f"duplicate queue {queue.name!r}")
        elif slugs[queue.slug] > 1 and queue.slug in seen_slugs and names[queue.name] == 1:
            yield Problem(
                file,
                f"{where}.name",
                f"queue {queue.name!r} maps to the same Kubernetes name {queue.slug!r} "
                "as another queue",
            )
        seen_names.add(queue.name)
        seen_slugs.add(queue.slug)
        if queue.min_agents > queue.max_agents:
            yield Problem(
                file,
                f"{where}.minAgents",
                f"minAgents ({queue.min_agents}) is greater than maxAgents ({queue.max_agents})",
            )
        if "queue" in queue.tags and queue.tags["queue"] != queue.name:
            yield Problem(file, f"{where}.tags.queue", "the queue tag comes from the queue's name")
        for key in queue.env:
            why = reserved_env_problem(key)
            if why:
                yield Problem(file, f"{where}.env.{key}", f"stackgen sets this variable; {why}")
        if queue.mode == "hpa":
            if queue.min_agents < 1:
                yield Problem(
                    file,
                    f"{where}.minAgents",
                    "an hpa queue needs at least 1 agent (an HPA cannot scale to zero); "
                    "use mode dispatch for scale-to-zero",
                )
            if queue.buffer:
                yield Problem(file, f"{where}.buffer", "only dispatch queues have a buffer")
            if queue.git_mirror:
                yield Problem(
                    file,
                    f"{where}.gitMirror",
                    "git mirrors are attached by the dispatcher: use mode dispatch or exact",
                )
        if queue.mode == "exact" and queue.buffer:
            yield Problem(
                file, f"{where}.buffer", "exact queues start one agent per job and have no buffer"
            )
        if queue.git_mirror and queue.git_mirror not in mirrors:
            hint = f" (defined: {', '.join(sorted(mirrors))})" if mirrors else ""
            yield Problem(
                file, f"{where}.gitMirror", f"no gitMirrors entry named {queue.git_mirror!r}{hint}"
            )


# ------------------------------------------------------------------------ secrets


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


def _read_secret(
    overlay: Path, path: Path, file: str, field: str
) -> tuple[bytes | None, list[Problem]]:
    resolved, problems = resolve_inside(overlay, path, file, field)
    if resolved is None:
        return None, problems
    if resolved.is_dir():
        return None, [Problem(file, field, "is a folder, not a file")]
    try:
        with resolved.open("rb") as fh:
            data = fh.read(_MAX_SECRET_BYTES + 1)
    except PermissionError:
        return None, [Problem(file, field, "cannot read: permission denied")]
    except OSError as exc:
        return None, [Problem(file, field, f"cannot read: {exc.strerror}")]
    if len(data) > _MAX_SECRET_BYTES:
        return None, [Problem(file, field, "is larger than 1 MiB: not a secret file")]
    return data, []


def _read_text(
    overlay: Path, path: Path, file: str, field: str
) -> tuple[str | None, list[Problem]]:
    data, problems = _read_secret(overlay, path, file, field)
    if data is None:
        return None, problems
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError:
        return None, [Problem(file, field, "is not UTF-8 text")]


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
    if "\n" in token:
        return [Problem(file, field, "must hold the token on a single line")]
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
        text, problems = _read_text(stack.overlay, file_path, file, field)
        if text is None:
            return problems
        return token_problems(text, file, field)
    if env is not None:
        field = f"{source_field}.env"
        if env not in environ:
            return [Problem(file, field, f"environment variable {env} is not set")]
        return token_problems(environ[env], file, field)
    return []


def _secret_checks(stack: Stack, environ: Mapping[str, str]) -> Iterator[Problem]:
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
        yield from ssh_key_problems(stack, stack.secrets.ssh_key.private_key_file)
        yield from known_hosts_problems(stack, stack.secrets.ssh_key.known_hosts_file)


def git_credentials_problems(stack: Stack, path: Path) -> list[Problem]:
    """Every line of a git-credentials file must be ``scheme://USER:TOKEN@HOST[/path]``."""
    file, field = stack.file, "secrets.gitCredentials.file"
    text, problems = _read_text(stack.overlay, path, file, field)
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


def ssh_key_problems(stack: Stack, path: Path) -> list[Problem]:
    """The private key must parse, be a private (not public) key, and have no passphrase."""
    from cryptography.hazmat.primitives import serialization

    file, field = stack.file, "secrets.sshKey.privateKeyFile"
    data, problems = _read_secret(stack.overlay, path, file, field)
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
    text, problems = _read_text(stack.overlay, path, file, field)
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


# -------------------------------------------------------------------------- hooks


def _hook_checks(stack: Stack) -> Iterator[Problem]:
    for name, path in sorted(stack.hooks.items()):
        field = f"hooks.{name}"
        data, problems = _read_secret(stack.overlay, path, stack.file, field)
        yield from problems
        if data is not None and not data.strip():
            yield Problem(stack.file, field, "hook script is empty")


# ----------------------------------------------------------------- metrics adapter


def _adapter_checks(stack: Stack) -> Iterator[Problem]:
    tls = stack.metrics_adapter.tls
    file = stack.file
    given = {
        "caFile": tls.ca_file,
        "certFile": tls.cert_file,
        "keyFile": tls.key_file,
    }
    any_files = any(v is not None for v in given.values())
    ways = [
        name
        for name, used in (
            ("the certificate files", any_files),
            ("certManager", tls.cert_manager is not None),
            ("insecureSkipTLSVerify", tls.insecure_skip_tls_verify),
        )
        if used
    ]
    if len(ways) > 1:
        yield Problem(file, "metricsAdapter.tls", f"set one way only, not {' and '.join(ways)}")
        return
    if not stack.hpa_queues:
        return
    if not ways:
        yield Problem(
            file,
            "metricsAdapter.tls",
            "hpa queues need the adapter's serving certificate (caFile, certFile, keyFile; "
            "`stackgen init` makes them), a certManager issuer, or the explicit opt-in "
            "insecureSkipTLSVerify: true",
        )
        return
    if not any_files:
        return
    for key, value in given.items():
        if value is None:
            yield Problem(
                file, f"metricsAdapter.tls.{key}", "is required with the other certificate files"
            )
    if all(v is not None for v in given.values()):
        yield from _certificate_problems(stack)


def adapter_service_dns(stack: Stack) -> str:
    """DNS name the aggregator uses to reach the adapter."""
    return f"stackgen-metrics-adapter.{stack.namespace}.svc"


def _certificate_problems(stack: Stack) -> Iterator[Problem]:
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
        data, problems = _read_secret(stack.overlay, path, file, f"metricsAdapter.tls.{key}")
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
    pub = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if (
        private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        != pub
    ):
        yield Problem(file, "metricsAdapter.tls.keyFile", "does not belong to certFile")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception):
        yield Problem(file, "metricsAdapter.tls.certFile", "is not signed by caFile")
    now = dt.datetime.now(dt.UTC)
    for key_name, certificate in (("caFile", ca), ("certFile", cert)):
        if certificate.not_valid_after_utc < now:
            yield Problem(file, f"metricsAdapter.tls.{key_name}", "certificate has expired")
    dns = adapter_service_dns(stack)
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


# ---------------------------------------------------------------------- kustomize


def _kustomize_checks(stack: Stack) -> Iterator[Problem]:
    extras = stack.kustomize
    for field, paths in (("resources", extras.resources), ("components", extras.components)):
        for index, rel in enumerate(paths):
            _, problems = resolve_inside(
                stack.overlay, stack.overlay / rel, stack.file, f"kustomize.{field}[{index}]"
            )
            yield from problems
    for index, patch in enumerate(extras.patches):
        where = f"kustomize.patches[{index}]"
        if ("path" in patch) == ("patch" in patch):
            yield Problem(stack.file, where, "set exactly one of path or patch")
            continue
        if "path" in patch:
            _, problems = resolve_inside(
                stack.overlay, stack.overlay / patch["path"], stack.file, f"{where}.path"
            )
            yield from problems
