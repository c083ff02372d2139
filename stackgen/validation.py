"""Validation of a built stack: kubeconform (offline, strict), policy, server dry-run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from stackgen import kubeschemas, tools
from stackgen.errors import Problem, ToolError, ValidationError
from stackgen.output import notice
from stackgen.policy import PolicyContext, check_objects, object_id
from stackgen.resources import repo_root


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stackgen" / "kubernetes-schemas"


def schema_root(kubernetes_version: str) -> Path:
    """Folder of offline schemas for the version; converted into the user cache if needed."""
    candidates: list[Path] = []
    env = os.environ.get("STACKGEN_SCHEMA_DIR")
    if env:
        candidates.append(Path(env))
    root = repo_root()
    if root is not None:
        candidates.append(root / ".tools" / "schemas")
    candidates.append(_cache_root())
    for candidate in candidates:
        if kubeschemas.is_complete(candidate, kubernetes_version):
            return candidate
    try:
        target = candidates[0] if env else _cache_root()
        folder, count = kubeschemas.convert(kubernetes_version, target)
    except kubeschemas.SchemaSourceError as exc:
        raise ToolError(
            f"offline Kubernetes {kubernetes_version} schemas not found and {exc}"
        ) from exc
    notice(f"converted {count} offline Kubernetes {kubernetes_version} schemas into {folder}")
    return target


def kubeconform_problems(
    manifest: bytes,
    kubernetes_version: str,
    file: str,
    *,
    ignore_missing_schemas: bool = False,
) -> tuple[list[Problem], dict[str, int]]:
    """Run ``kubeconform -strict`` over the manifest; return problems and its summary."""
    tool = tools.kubeconform()
    args = [
        "-strict",
        "-summary",
        "-output",
        "json",
        "-kubernetes-version",
        kubernetes_version,
        "-schema-location",
        str(schema_root(kubernetes_version)),
    ]
    if ignore_missing_schemas:
        args.append("-ignore-missing-schemas")
    proc = tools.run(tool, [*args, "-"], stdin=manifest)
    try:
        report = json.loads(proc.stdout or b"{}")
    except json.JSONDecodeError as exc:
        raise ToolError(
            f"kubeconform gave no JSON report (exit {proc.returncode}): "
            + proc.stderr.decode("utf-8", "replace").strip()[:300]
        ) from exc
    problems: list[Problem] = []
    for resource in report.get("resources") or []:
        status = resource.get("status")
        if status not in ("statusInvalid", "statusError"):
            continue
        where = f"{resource.get('kind', '?')}/{resource.get('name', '?')}"
        errors = resource.get("validationErrors") or []
        if errors:
            for error in errors:
                path = _json_pointer_to_path(str(error.get("path", "")))
                problems.append(
                    Problem(file, f"{where}: {path}" if path else where, str(error.get("msg")))
                )
        else:
            msg = str(resource.get("msg", "invalid"))
            if "could not find schema" in msg:
                api = f"{resource.get('version', '?')} {resource.get('kind', '?')}"
                msg = (
                    f"no offline schema for {api} in Kubernetes {kubernetes_version} "
                    "(a CRD? pass --ignore-missing-schemas)"
                )
            problems.append(Problem(file, where, msg))
    if proc.returncode not in (0, 1) and not problems:
        raise ToolError(
            f"kubeconform failed (exit {proc.returncode}): "
            + proc.stderr.decode("utf-8", "replace").strip()[:300]
        )
    summary = {k: int(v) for k, v in (report.get("summary") or {}).items()}
    return problems, summary


def _json_pointer_to_path(pointer: str) -> str:
    out = ""
    for part in pointer.strip("/").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


def policy_problems(objects: list[dict[str, Any]], ctx: PolicyContext) -> list[Problem]:
    """Stackgen's own policy checks."""
    return check_objects(objects, ctx)


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
    problems: list[Problem] = []
    if not selected:
        return problems, notices
    # One call for the whole stack; only when it fails, one call per object to say which.
    whole = _kubectl_apply_dry_run(kubectl, {"apiVersion": "v1", "kind": "List", "items": selected})
    if whole.returncode == 0:
        return problems, notices
    for obj in selected:
        proc = _kubectl_apply_dry_run(kubectl, obj)
        if proc.returncode != 0:
            message = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            text = message[-1] if message else f"kubectl exited {proc.returncode}"
            problems.append(Problem(file, object_id(obj), f"server dry-run: {_short(text)}"))
    if not problems:
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


def raise_if(problems: list[Problem]) -> None:
    """Raise a ValidationError carrying ``problems`` when there are any."""
    if problems:
        raise ValidationError(problems)
