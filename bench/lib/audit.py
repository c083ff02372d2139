"""Kubernetes writes counted where they land: kube-apiserver's audit log, by client.

bench/e2e gives every row's cluster the same audit policy (:func:`kwokctl_patch`): one
``Metadata`` event per write request (create, update, patch, delete, deletecollection),
nothing for reads.  :func:`writes_by_client` then counts a row's writes by user agent, so a
controller's writes are counted the same way whether it is stackgen's dispatcher (the Python
client) or agent-stack-k8s (client-go), and whatever objects it writes (Jobs, pods, Secrets,
Leases, Events).  The harness's own client names itself :data:`HARNESS_AGENT` and the
control plane's components name themselves, so what is left is the controller under test.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.lib.e2e import HARNESS_AGENT, parse_k8s_time

WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
#: Clients that are not the controller under test: the control plane (kube-apiserver,
#: kube-controller-manager, kube-scheduler), kwok (kwokctl, kwok-controller), kubectl (bin/up,
#: the stack's apply) and the harness.
NOT_CONTROLLER_PREFIXES = ("kube-", "kwok")
NOT_CONTROLLER = ("kubectl", HARNESS_AGENT)
CONTROL_PLANE = "kube-controller-manager"


def is_controller(client: str) -> bool:
    """Whether a client (see :func:`client_of`) is the controller under test."""
    return client not in NOT_CONTROLLER and not client.startswith(NOT_CONTROLLER_PREFIXES)


POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "verbs": list(WRITE_VERBS)},
        {"level": "None"},
    ],
}


def apiserver_flags(folder: Path) -> dict[str, str]:
    """kube-apiserver flags writing the audit log to ``folder/audit.log``."""
    folder.mkdir(parents=True, exist_ok=True)
    policy = folder / "audit-policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY, sort_keys=False))
    return {
        "audit-policy-file": str(policy.resolve()),
        "audit-log-path": str((folder / "audit.log").resolve()),
        "audit-log-format": "json",
        "audit-log-mode": "blocking",
    }


def client_of(user_agent: str) -> str:
    """A user agent's program: ``kube-controller-manager/v1.33 (linux/amd64) ...`` -> its name."""
    name = user_agent.split("/", 1)[0].strip()
    return name or "(none)"


@dataclass
class Writes:
    """A row's write requests by client (program of the user agent) and by resource."""

    by_client: Counter[str] = field(default_factory=Counter)
    by_resource: dict[str, Counter[str]] = field(default_factory=dict)
    failed: Counter[str] = field(default_factory=Counter)

    def controller(self) -> int:
        """Writes by any client other than the control plane, kubectl and the harness."""
        return sum(n for c, n in self.by_client.items() if is_controller(c))

    def controller_clients(self) -> list[str]:
        return sorted(c for c in self.by_client if is_controller(c))

    def jsonable(self) -> dict[str, Any]:
        return {
            "controller": self.controller(),
            "controller_clients": self.controller_clients(),
            "kube_controller_manager": self.by_client.get(CONTROL_PLANE, 0),
            "by_client": dict(self.by_client),
            "by_resource": {c: dict(v) for c, v in self.by_resource.items()},
            "failed": dict(self.failed),
        }


def writes_by_client(lines: Any, since: float = 0.0) -> Writes:
    """Count write events (JSON lines of an audit log) received at or after ``since``.

    ``since`` is a Unix time; events without a parsable time are counted.
    """
    out = Writes()
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("verb") not in WRITE_VERBS or event.get("stage") != "ResponseComplete":
            continue
        at = event.get("requestReceivedTimestamp")
        try:
            when = parse_k8s_time(at) if at else None
        except ValueError:
            when = None
        if when is not None and when < since:
            continue
        client = client_of(str(event.get("userAgent") or ""))
        ref = event.get("objectRef") or {}
        resource = str(ref.get("resource") or "?")
        if ref.get("subresource"):
            resource += "/" + str(ref["subresource"])
        out.by_client[client] += 1
        out.by_resource.setdefault(client, Counter())[f"{event['verb']} {resource}"] += 1
        if int((event.get("responseStatus") or {}).get("code") or 0) >= 400:
            out.failed[client] += 1
    return out


def read_writes(log: Path, since: float = 0.0) -> Writes:
    """:func:`writes_by_client` over an audit log file (an empty count when it is missing)."""
    if not log.exists():
        return Writes()
    with log.open(errors="replace") as lines:
        return writes_by_client(lines, since)
