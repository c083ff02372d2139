"""``kubectl apply --dry-run=server``: what only the API server can say about a stack."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from stackgen import tools
from stackgen.common.errors import Problem, ToolError
from stackgen.validation.apiservice import apiservice_problems
from stackgen.validation.policies import object_id


def server_dry_run(objects: list[dict[str, Any]], file: str) -> tuple[list[Problem], list[str]]:
    """``kubectl apply --dry-run=server`` against the current kube context.

    Objects in a namespace that does not exist yet cannot be dry-run (the API server
    looks the namespace up); they are reported as a notice, not silently passed.
    """
    kubectl = tools.kubectl()
    notices: list[str] = []
    namespaces = {
        str((o.get("metadata") or {}).get("namespace"))
        for o in objects
        if (o.get("metadata") or {}).get("namespace")
    }
    missing: set[str] = set()
    for namespace in sorted(namespaces):
        proc = tools.run(kubectl, ["get", "namespace", namespace, "-o", "name"], timeout=60)
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace")
            if "NotFound" in err or "not found" in err:
                missing.add(namespace)
            else:
                raise ToolError(
                    f"kubectl cannot reach the cluster: {err.strip().splitlines()[-1:]}"
                )
    selected = [o for o in objects if (o.get("metadata") or {}).get("namespace") not in missing]
    if missing:
        notices.append(
            f"server dry-run skipped {len(objects) - len(selected)} objects: namespace(s) "
            f"{', '.join(sorted(missing))} do not exist yet (apply once, then dry-run updates)"
        )
    # Applying over another adapter's APIService (KEDA, prometheus-adapter) would take it.
    problems: list[Problem] = apiservice_problems(objects, file, kubectl)
    if not selected:
        return problems, notices
    # One call for the whole stack; only when it fails, one call per object to say which.
    whole = _kubectl_apply_dry_run(kubectl, {"apiVersion": "v1", "kind": "List", "items": selected})
    if whole.returncode == 0:
        return problems, notices
    found = len(problems)
    for obj in selected:
        proc = _kubectl_apply_dry_run(kubectl, obj)
        if proc.returncode != 0:
            message = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            text = message[-1] if message else f"kubectl exited {proc.returncode}"
            problems.append(Problem(file, object_id(obj), f"server dry-run: {_short(text)}"))
    if len(problems) == found:
        lines = whole.stderr.decode("utf-8", "replace").strip().splitlines()
        problems.append(
            Problem(file, "", f"server dry-run: {_short(lines[-1] if lines else 'failed')}")
        )
    return problems, notices


def _kubectl_apply_dry_run(
    kubectl: tools.Tool, obj: dict[str, Any]
) -> subprocess.CompletedProcess[bytes]:
    # What a user runs: `stackgen build | kubectl apply -f -`, but nothing is persisted.
    return tools.run(
        kubectl,
        ["apply", "--dry-run=server", "-o", "name", "-f", "-"],
        stdin=json.dumps(obj).encode(),
        timeout=120,
    )


def _short(text: str) -> str:
    # Drop kubectl's "Error from server (Invalid): error when creating "STDIN":" prefix noise.
    marker = 'STDIN": '
    if marker in text:
        text = text.split(marker, 1)[1]
    return text[:500]
