"""The sandbox's own objects, made from a built stack (``bin/up --sandbox`` applies them).

``python -m tests.support.sandbox manifests STACK_YAML --state-dir DIR --fake-image IMG
--git-image IMG`` prints, for the stack in STACK_YAML (what ``stackgen build`` printed), the
objects of namespace ``stackgen-sandbox``:

* the fake Buildkite (``tests/support/fake_buildkite`` in its image): a Deployment and a
  Service on port 8080, knowing the stack's queues and given the stack's agent token in a
  Secret of its own. The token is copied from the stack's Secret as it is (base64), never
  decoded, never printed: the output goes straight to ``kubectl apply``.
* the test git server: a Deployment and a Service (SSH on 22, HTTPS on 443) serving a
  repository ``sandbox.git``, which accepts the stack's SSH key (its public half, derived
  here) and, over HTTPS, the user and password of the stack's git-credentials line for the
  git server's host if there is one. Its SSH host key is kept in DIR (made once, or the file
  ``--git-host-key`` names), and DIR/known_hosts holds the line a stack's known_hosts needs.

``endpoint`` prints the agent API endpoint the stack is pointed at.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

NAMESPACE = "stackgen-sandbox"
FAKE = "fake-buildkite"
GIT = "git-server"
FAKE_PORT = 8080
GIT_HOST = f"{GIT}.{NAMESPACE}.svc.cluster.local"
FAKE_URL = f"http://{FAKE}.{NAMESPACE}.svc.cluster.local:{FAKE_PORT}"
ENDPOINT = f"{FAKE_URL}/v3"
#: The repository the sandbox's git server serves (one commit on main, a README).
REPOSITORY = "sandbox"
LABELS = {"app.kubernetes.io/part-of": "stackgen-sandbox"}
RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
}


class SandboxError(Exception):
    """The stack lacks what the sandbox needs (the message says what)."""


def _component(docs: Iterable[Mapping[str, Any]], kind: str, component: str) -> list[Any]:
    return [
        d
        for d in docs
        if d.get("kind") == kind
        and (d.get("metadata", {}).get("labels") or {}).get("app.kubernetes.io/component")
        == component
    ]


def _secret_value(docs: Sequence[Mapping[str, Any]], component: str, key: str) -> str | None:
    """A Secret's base64 value (as it is in the stack), or None."""
    for secret in _component(docs, "Secret", component):
        value = (secret.get("data") or {}).get(key)
        if value:
            return str(value).replace("\n", "")
    return None


#: What the example's and ``--skip-missing-secrets``' throwaway tokens contain.
PLACEHOLDER_MARKS = ("not_a_real_token", "placeholder-token", "REPLACE-ME")


def placeholder_token(docs: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the stack's agent token is a throwaway one (decoded in memory, never shown)."""
    value = _secret_value(docs, "agent-token", "token")
    if value is None:
        return False
    token = base64.b64decode(value).decode(errors="replace")
    return any(mark in token for mark in PLACEHOLDER_MARKS)


def queues(docs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The stack's queue names, in order (from its agent workloads' annotations)."""
    names: list[str] = []
    for doc in docs:
        name = (doc.get("metadata", {}).get("annotations") or {}).get("stackgen.io/queue")
        if doc.get("kind") in ("Deployment", "CronJob") and name and name not in names:
            names.append(name)
    return names


def queue_args(args: Sequence[str]) -> list[str]:
    """The queues a fake's command line names (``--queue Q``)."""
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--queue"]


def public_key(private_b64: str) -> str:
    """The OpenSSH public key line of a base64'd OpenSSH/PEM private key."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_private_key(base64.b64decode(private_b64), password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def host_key(state_dir: Path, given: Path | None) -> tuple[bytes, str]:
    """The git server's SSH host key (private, OpenSSH) and its known_hosts line.

    Kept in ``state_dir`` (made on first use, or copied from ``given``), so a stack's
    known_hosts stays valid while the cluster lives.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    path = state_dir / "ssh_host_ed25519_key"
    state_dir.mkdir(parents=True, exist_ok=True)
    if given is not None:
        shutil.copyfile(given, path)
    elif not path.exists():
        private = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        path.write_bytes(private)
    path.chmod(0o600)
    data = path.read_bytes()
    line = f"{GIT_HOST},{GIT}.{NAMESPACE} {public_key(base64.b64encode(data).decode())}"
    (state_dir / "known_hosts").write_text(line + "\n", encoding="utf-8")
    return data, line


def http_user(credentials_b64: str | None) -> tuple[str, str] | None:
    """User and password of the git-credentials line for the sandbox's git server, if any."""
    if not credentials_b64:
        return None
    text = base64.b64decode(credentials_b64).decode(errors="replace")
    for line in text.splitlines():
        try:
            url = urlsplit(line.strip())
        except ValueError:
            continue
        host = url.hostname or ""
        if (host == GIT_HOST or host.startswith(f"{GIT}.")) and url.username and url.password:
            return unquote(url.username), unquote(url.password)
    return None


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def _meta(name: str, **labels: str) -> dict[str, Any]:
    return {"name": name, "namespace": NAMESPACE, "labels": {**LABELS, **labels}}


def _deployment(name: str, pod: dict[str, Any]) -> dict[str, Any]:
    selector = {"app.kubernetes.io/name": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, **selector),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": {**LABELS, **selector}}, "spec": pod},
        },
    }


def _service(name: str, ports: Mapping[str, int]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name),
        "spec": {
            "selector": {"app.kubernetes.io/name": name},
            "ports": [{"name": n, "port": p, "targetPort": p} for n, p in ports.items()],
        },
    }


def fake_objects(
    docs: Sequence[Mapping[str, Any]], image: str, keep_queues: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """The fake Buildkite: its token Secret (the stack's), Deployment and Service."""
    token = _secret_value(docs, "agent-token", "token")
    if token is None:
        raise SandboxError("the stack has no agent token Secret (secrets.agentToken)")
    # The fake knows the queues of every stack applied so far (``keep_queues``: those its
    # Deployment already names), so applying a stack whose queues it knows leaves its pod,
    # and the jobs it holds, alone.
    names = sorted({*keep_queues, *queues(docs)})
    args = ["--host", "0.0.0.0", "--port", str(FAKE_PORT), "--advertise-url", FAKE_URL]
    args += ["--no-rate-limits", *(a for q in names for a in ("--queue", q))]
    pod = {
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": FAKE,
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "args": args,
                "env": [
                    {
                        "name": "FAKE_BUILDKITE_TOKEN",
                        "valueFrom": {"secretKeyRef": {"name": FAKE, "key": "token"}},
                    }
                ],
                "ports": [{"name": "http", "containerPort": FAKE_PORT}],
                "readinessProbe": {"tcpSocket": {"port": FAKE_PORT}, "periodSeconds": 2},
                "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
                "securityContext": RESTRICTED,
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(FAKE),
        "type": "Opaque",
        "data": {"token": token},
    }
    deployment = _deployment(FAKE, pod)
    # A new token must restart the fake (it reads the token at start): a short digest of it
    # in the pod template rolls the Deployment when, and only when, the token changes.
    digest = hashlib.sha256(token.encode()).hexdigest()[:16]
    deployment["spec"]["template"]["metadata"]["annotations"] = {"stackgen.io/token-digest": digest}
    return [secret, deployment, _service(FAKE, {"http": FAKE_PORT})]


def git_objects(
    docs: Sequence[Mapping[str, Any]], image: str, state_dir: Path, given_key: Path | None
) -> list[dict[str, Any]]:
    """The test git server: its Secret (host key, authorized_keys, HTTPS user), Deployment, Service."""
    private, _ = host_key(state_dir, given_key)
    data = {"ssh_host_ed25519_key": _b64(private)}
    ssh_key = _secret_value(docs, "ssh-key", "ssh-privatekey")
    if ssh_key is not None:
        data["authorized_keys"] = _b64(public_key(ssh_key) + "\n")
    user = http_user(_secret_value(docs, "git-credentials", "git-credentials"))
    if user is not None:
        data["http-user"], data["http-password"] = _b64(user[0]), _b64(user[1])

    def from_secret(name: str, key: str) -> dict[str, Any]:
        ref = {"name": GIT, "key": key, "optional": True}
        return {"name": name, "valueFrom": {"secretKeyRef": ref}}

    ssh_files = [k for k in ("ssh_host_ed25519_key", "authorized_keys") if k in data]
    pod = {
        "automountServiceAccountToken": False,
        "containers": [
            {
                "name": GIT,
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "env": [
                    {"name": "GIT_SERVER_HOSTNAME", "value": GIT_HOST},
                    {"name": "GIT_INIT_REPOS", "value": REPOSITORY},
                    from_secret("GIT_HTTP_USER", "http-user"),
                    from_secret("GIT_HTTP_PASSWORD", "http-password"),
                ],
                "ports": [
                    {"name": "ssh", "containerPort": 22},
                    {"name": "https", "containerPort": 443},
                ],
                "readinessProbe": {"tcpSocket": {"port": 22}, "periodSeconds": 2},
                "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
                "volumeMounts": [{"name": "ssh", "mountPath": "/config/ssh", "readOnly": True}],
            }
        ],
        "volumes": [
            {
                "name": "ssh",
                "secret": {
                    "secretName": GIT,
                    "items": [{"key": k, "path": k} for k in ssh_files],
                },
            }
        ],
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(GIT),
        "type": "Opaque",
        "data": data,
    }
    return [secret, _deployment(GIT, pod), _service(GIT, {"ssh": 22, "https": 443})]


def manifests(
    docs: Sequence[Mapping[str, Any]],
    *,
    fake_image: str,
    git_image: str,
    state_dir: Path,
    git_host_key: Path | None = None,
    keep_queues: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Every object of the sandbox namespace, for the stack made of ``docs``."""
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "labels": dict(LABELS)},
    }
    return [
        namespace,
        *fake_objects(docs, fake_image, keep_queues),
        *git_objects(docs, git_image, state_dir, git_host_key),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.sandbox")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("manifests", help="print the sandbox's objects for a built stack")
    p.add_argument("stack", type=Path, help="the stack as `stackgen build` printed it")
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--fake-image", required=True)
    p.add_argument("--git-image", required=True)
    p.add_argument("--git-host-key", type=Path, default=None)
    p.add_argument(
        "--existing-args", default="", help="the fake Deployment's current args (JSON list)"
    )
    p.add_argument("--queue", action="append", default=[], help="one more queue (repeatable)")
    sub.add_parser("endpoint", help="print the agent API endpoint of the sandbox")
    p = sub.add_parser("placeholder", help="exit 0 when the stack's token is a placeholder")
    p.add_argument("stack", type=Path)
    args = parser.parse_args(argv)
    if args.action == "endpoint":
        print(ENDPOINT)
        return 0
    if args.action == "placeholder":
        docs = [d for d in yaml.safe_load_all(args.stack.read_text(encoding="utf-8")) if d]
        return 0 if placeholder_token(docs) else 1
    try:
        docs = [d for d in yaml.safe_load_all(args.stack.read_text(encoding="utf-8")) if d]
        objects = manifests(
            docs,
            fake_image=args.fake_image,
            git_image=args.git_image,
            state_dir=args.state_dir,
            git_host_key=args.git_host_key,
            keep_queues=[*queue_args(json.loads(args.existing_args or "[]")), *args.queue],
        )
    except (OSError, SandboxError, ValueError) as err:
        print(f"sandbox: {err}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
