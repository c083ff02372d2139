"""kubeconform, strict and offline, against schemas pinned to one Kubernetes version.

The schemas come from ``.tools/schemas`` (bin/setup), ``$STACKGEN_SCHEMA_DIR`` or the user
cache, where :mod:`stackgen.validation.kubeschemas` converts them on first use; never the
network.  The build starts kubeconform before the manifest exists (:func:`warm_kubeconform`)
so it compiles the schemas of stackgen's kinds while kustomize still runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from stackgen import tools
from stackgen.common.errors import Problem, ToolError
from stackgen.common.names import DEFAULT_KUBERNETES_VERSION
from stackgen.common.output import notice
from stackgen.common.resources import repo_root
from stackgen.validation import kubeschemas


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


#: Kinds stackgen's bases and components make.  kubeconform compiles a kind's schema on
#: its first document and keeps it, so the build feeds it one small document of each of
#: these kinds while kustomize still runs; the stack's own documents then validate at once.
#: Measured on the 20-queue bench stack: 0.35 s cold, 0.04 s warm (bench/build).
_WARM_UP_DOCUMENTS: tuple[dict[str, Any], ...] = (
    {"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"selector": {}, "template": {}}},
    {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "spec": {"schedule": "@yearly", "jobTemplate": {}},
    },
    {"apiVersion": "v1", "kind": "ConfigMap"},
    {"apiVersion": "v1", "kind": "Secret"},
    {"apiVersion": "v1", "kind": "ServiceAccount"},
    {"apiVersion": "v1", "kind": "Service"},
    {"apiVersion": "v1", "kind": "Namespace"},
    {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": 1},
    },
    {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget"},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role"},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole"},
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "x"},
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "x"},
    },
    {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease"},
    {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "spec": {"groupPriorityMinimum": 1, "versionPriority": 1},
    },
)
#: The name of every warm-up document: they are left out of the report.
WARM_UP_NAME = "stackgen-kubeconform-warm-up"
_SUMMARY_KEYS = {
    "statusValid": "valid",
    "statusInvalid": "invalid",
    "statusError": "errors",
    "statusSkipped": "skipped",
}


class KubeconformRun:
    """A kubeconform process: possibly warming up, then validating one manifest."""

    def __init__(self, running: tools.Running, warm_ups: int) -> None:
        self.running = running
        self.warm_ups = warm_ups

    def validate(self, manifest: bytes) -> None:
        """Send the manifest (after the warm-up documents) and let kubeconform finish."""
        self.running.finish(b"---\n" + manifest if self.warm_ups else manifest)

    def cancel(self) -> None:
        """Stop kubeconform (its result is not wanted)."""
        self.running.cancel()


def kubeconform_problems(
    manifest: bytes,
    kubernetes_version: str,
    file: str,
    *,
    ignore_missing_schemas: bool = False,
) -> tuple[list[Problem], dict[str, int]]:
    """Run ``kubeconform -strict`` over the manifest; return problems and its summary."""
    run = start_kubeconform(
        manifest, kubernetes_version, ignore_missing_schemas=ignore_missing_schemas
    )
    return kubeconform_result(run, kubernetes_version, file)


def start_kubeconform(
    manifest: bytes, kubernetes_version: str, *, ignore_missing_schemas: bool = False
) -> KubeconformRun:
    """Start ``kubeconform -strict`` over the manifest in the background."""
    return KubeconformRun(
        tools.start(
            tools.kubeconform(),
            _kubeconform_args(kubernetes_version, ignore_missing_schemas),
            stdin=manifest,
        ),
        0,
    )


def warm_kubeconform(
    kubernetes_version: str, *, ignore_missing_schemas: bool = False
) -> KubeconformRun:
    """Start kubeconform before the manifest exists, compiling the schemas of stackgen's kinds.

    Give it the manifest with :meth:`KubeconformRun.validate`.
    """
    root = schema_root(kubernetes_version)
    folder = root / kubeschemas.version_dir_name(kubernetes_version)
    documents = [d for d in _WARM_UP_DOCUMENTS if (folder / _schema_file(d)).is_file()]
    running = tools.start(
        tools.kubeconform(),
        _kubeconform_args(kubernetes_version, ignore_missing_schemas, root=root),
        open_stdin=True,
    )
    running.write(
        b"".join(
            b"---\n"
            + json.dumps({**d, "metadata": {"name": WARM_UP_NAME}}, separators=(",", ":")).encode()
            + b"\n"
            for d in documents
        )
    )
    return KubeconformRun(running, len(documents))


def _schema_file(document: dict[str, Any]) -> str:
    # kubeconform's file name for a kind: kind-group-version.json (group's first label).
    group, _, version = str(document["apiVersion"]).rpartition("/")
    kind = str(document["kind"]).lower()
    return f"{kind}-{group.split('.')[0]}-{version}.json" if group else f"{kind}-{version}.json"


def _kubeconform_args(
    kubernetes_version: str, ignore_missing_schemas: bool, *, root: Path | None = None
) -> list[str]:
    args = [
        "-strict",
        "-summary",
        "-output",
        "json",
        "-kubernetes-version",
        kubeschemas.schema_release(kubernetes_version),
        "-schema-location",
        str(root or schema_root(kubernetes_version)),
    ]
    if ignore_missing_schemas:
        args.append("-ignore-missing-schemas")
    return [*args, "-"]


def kubeconform_result(
    run: KubeconformRun, kubernetes_version: str, file: str
) -> tuple[list[Problem], dict[str, int]]:
    """Wait for a kubeconform run; return its problems and summary."""
    proc = run.running.wait()
    try:
        report = json.loads(proc.stdout or b"{}")
    except json.JSONDecodeError as exc:
        raise ToolError(
            f"kubeconform gave no JSON report (exit {proc.returncode}): "
            + proc.stderr.decode("utf-8", "replace").strip()[:300]
        ) from exc
    summary = {k: int(v) for k, v in (report.get("summary") or {}).items()}
    resources = report.get("resources") or []
    if run.warm_ups:
        ours = [r for r in resources if r.get("name") == WARM_UP_NAME]
        resources = [r for r in resources if r.get("name") != WARM_UP_NAME]
        for resource in ours:
            key = _SUMMARY_KEYS.get(str(resource.get("status")))
            if key in summary:
                summary[key] -= 1
        unlisted = run.warm_ups - len(ours)  # valid ones are not listed
        if "valid" in summary:
            summary["valid"] -= unlisted
    problems: list[Problem] = []
    for resource in resources:
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
                msg = _missing_schema(resource, kubernetes_version)
            problems.append(Problem(file, where, msg))
    if proc.returncode not in (0, 1) and not problems:
        raise ToolError(
            f"kubeconform failed (exit {proc.returncode}): "
            + proc.stderr.decode("utf-8", "replace").strip()[:300]
        )
    return problems, summary


#: CRD groups whose offline schemas a bin/setup step makes, and that step.
SETUP_STEP_OF_GROUP = {
    "monitoring.coreos.com": "monitoring-schemas",
    "cert-manager.io": "crd-schemas",
}


def _missing_schema(resource: dict[str, Any], kubernetes_version: str) -> str:
    api = str(resource.get("version", "?"))
    what = f"no offline schema for {api} {resource.get('kind', '?')} in Kubernetes {kubernetes_version}"
    step = SETUP_STEP_OF_GROUP.get(api.partition("/")[0])
    # bin/setup converts CRD schemas for the default version only.
    if step is not None and _minor(kubernetes_version) == _minor(DEFAULT_KUBERNETES_VERSION):
        return f"{what}: run `bin/setup {step}`, which converts them"
    return f"{what} (a CRD? pass --ignore-missing-schemas)"


def _minor(version: str) -> str:
    return ".".join(version.removeprefix("v").split(".")[:2])


def _json_pointer_to_path(pointer: str) -> str:
    out = ""
    for part in pointer.strip("/").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out
