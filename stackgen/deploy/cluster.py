"""The cluster seam: the few calls apply and delete make, and their kubectl implementation.

:class:`Cluster` is what :mod:`stackgen.deploy.apply` and :mod:`stackgen.deploy.delete`
need from a cluster; unit tests give them a fake. :class:`Kubectl` implements it by
running ``kubectl`` (what ``--server-dry-run`` already runs), so the CLI needs no
Kubernetes client library, honours ``KUBECONFIG``, ``--kubeconfig`` and ``--context``
exactly as kubectl does, and inherits kubectl's authentication plugins.

Deletions go through ``kubectl delete --raw`` with a ``DeleteOptions`` body: that is the
only way kubectl sends a UID precondition (an object deleted and re-created since it was
listed is not deleted) and a per-object ``propagationPolicy``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from stackgen import tools
from stackgen.common.errors import ClusterError, ToolError
from stackgen.deploy.apiservice import hand_over_apiservice
from stackgen.deploy.plan import Deletion, ObjectRef, api_group
from stackgen.deploy.ssa import FIELD_MANAGER, summarize_error

JSON = dict[str, Any]
GroupKind = tuple[str, str]


@dataclass(frozen=True)
class ResourceType:
    """One kind the API server serves (a row of ``kubectl api-resources``)."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    verbs: frozenset[str]

    @property
    def qualified(self) -> str:
        """``deployments.apps``: the unambiguous name kubectl takes."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def path(self, namespace: str, name: str) -> str:
        """The object's REST path (for ``kubectl delete --raw``)."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        where = f"/namespaces/{quote(namespace, safe='')}" if self.namespaced else ""
        return f"{base}{where}/{self.plural}/{quote(name, safe=':')}"


ResourceTypes = Mapping[GroupKind, ResourceType]


@dataclass(frozen=True)
class ApplyRun:
    """What one ``kubectl apply`` of several objects did."""

    ok: bool
    #: kubectl's ``-o name`` lines of the objects it applied (``deployment.apps/x``).
    applied: tuple[str, ...]
    error: str


@dataclass(frozen=True)
class DeleteOutcome:
    """What one deletion did: ``deleted``, ``gone`` (was not there) or ``failed``."""

    status: str
    message: str = ""


class Cluster(Protocol):
    """What ``stackgen apply`` and ``stackgen delete`` ask of a cluster."""

    def resource_types(self) -> tuple[dict[GroupKind, ResourceType], str | None]:
        """Every served kind, and a warning when some API groups could not be listed."""
        ...

    def get_existing(self, objects: Sequence[Mapping[str, Any]]) -> list[JSON]:
        """The live objects (with managedFields) of these, skipping those that do not exist."""
        ...

    def list_objects(
        self, types: Sequence[ResourceType], namespace: str | None, selector: str
    ) -> list[JSON]:
        """Objects of these types matching the selector, in one namespace or cluster-wide."""
        ...

    def apply(
        self, objects: Sequence[Mapping[str, Any]], *, dry_run: bool, force: bool
    ) -> ApplyRun:
        """Server-side apply (``dry_run``: the server checks and persists nothing)."""
        ...

    def diff(self, objects: Sequence[Mapping[str, Any]], *, force: bool) -> str:
        """What a server-side apply would change, as a unified diff (Secrets masked)."""
        ...

    def replace_managed_fields(
        self, rtype: ResourceType, live: Mapping[str, Any], entries: list[JSON]
    ) -> str | None:
        """Set an object's managedFields if it is unchanged since read; an error, or None."""
        ...

    def hand_over_apiservice(self, leaving_namespace: str) -> str:
        """Point the shared APIService away from a leaving stack (:mod:`.apiservice`)."""
        ...

    def delete(self, rtype: ResourceType, deletion: Deletion, *, dry_run: bool) -> DeleteOutcome:
        """Delete one object with its UID as precondition and its propagation policy."""
        ...

    def wait_deleted(
        self, items: Sequence[tuple[ResourceType, ObjectRef]], timeout: float
    ) -> str | None:
        """Wait until these objects are gone; an error (such as a timeout), or None."""
        ...


# ------------------------------------------------------------------------ discovery

_COLUMNS = ("NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND", "VERBS")


def parse_api_resources(text: str) -> list[ResourceType]:
    """The rows of ``kubectl api-resources -o wide`` (a table aligned by column)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not all(col in lines[0].split() for col in _COLUMNS):
        raise ValueError("unexpected `kubectl api-resources -o wide` output")
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    found = []
    for line in lines[1:]:
        cells = {
            name: line[start : (starts[i + 1] if i + 1 < len(starts) else None)].strip()
            for i, (name, start) in enumerate(zip(names, starts, strict=True))
        }
        api_version = cells["APIVERSION"]
        found.append(
            ResourceType(
                group=api_group(api_version),
                version=api_version.rpartition("/")[2],
                kind=cells["KIND"],
                plural=cells["NAME"],
                namespaced=cells["NAMESPACED"] == "true",
                verbs=frozenset(v for v in cells["VERBS"].split(",") if v),
            )
        )
    return found


def _stub(obj: Mapping[str, Any]) -> JSON:
    """Only what names an object (so a lookup never carries Secret data)."""
    meta = obj.get("metadata") or {}
    stub_meta = {"name": meta.get("name")}
    if meta.get("namespace"):
        stub_meta["namespace"] = meta["namespace"]
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": stub_meta}


def _as_list(objects: Sequence[Mapping[str, Any]]) -> bytes:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}).encode()


def _items(stdout: bytes) -> list[JSON]:
    if not stdout.strip():
        return []
    data = json.loads(stdout)
    if data.get("kind") == "List" or "items" in data:
        return list(data.get("items") or [])
    return [data]


class Kubectl:
    """:class:`Cluster` on the ``kubectl`` command."""

    def __init__(
        self,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        timeout: float = 300,
    ) -> None:
        path = tools.which("kubectl")
        if path is None:
            raise ToolError(
                "kubectl not found: stackgen apply and delete run kubectl (put it on PATH)"
            )
        argv = [str(path)]
        if kubeconfig:
            argv += ["--kubeconfig", kubeconfig]
        if context:
            argv += ["--context", context]
        self._tool = tools.Tool("kubectl", tuple(argv), "")
        self._timeout = timeout

    def _run(
        self, args: list[str], *, stdin: bytes | None = None, timeout: float | None = None
    ) -> tuple[int, bytes, str]:
        proc = tools.run(self._tool, args, stdin=stdin, timeout=timeout or self._timeout)
        return proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace")

    def _check(self, what: str, code: int, stderr: str) -> None:
        if code != 0:
            raise ClusterError(f"kubectl {what}: {summarize_error(stderr)}")

    def resource_types(self) -> tuple[dict[GroupKind, ResourceType], str | None]:
        code, out, err = self._run(["api-resources", "-o", "wide"])
        text = out.decode("utf-8", "replace")
        try:
            rows = parse_api_resources(text)
        except ValueError:
            rows = []
        if not rows:
            raise ToolError(f"kubectl cannot reach the cluster: {summarize_error(err)}")
        # A group that does not answer (an APIService whose backend is down) makes
        # kubectl exit 1 but still list every other group.
        warning = summarize_error(err) if code != 0 else None
        types: dict[GroupKind, ResourceType] = {}
        for row in rows:
            types.setdefault((row.group, row.kind), row)
        return types, warning

    def get_existing(self, objects: Sequence[Mapping[str, Any]]) -> list[JSON]:
        if not objects:
            return []
        code, out, err = self._run(
            ["get", "-f", "-", "--ignore-not-found", "--show-managed-fields", "-o", "json"],
            stdin=_as_list([_stub(o) for o in objects]),
        )
        self._check("get", code, err)
        return _items(out)

    def list_objects(
        self, types: Sequence[ResourceType], namespace: str | None, selector: str
    ) -> list[JSON]:
        if not types:
            return []
        args = ["get", ",".join(t.qualified for t in types), "-l", selector, "-o", "json"]
        if namespace:
            args += ["--namespace", namespace]
        code, out, err = self._run(args)
        self._check("get", code, err)
        return _items(out)

    def _apply_args(self, *, force: bool) -> list[str]:
        args = ["--server-side", f"--field-manager={FIELD_MANAGER}", "-f", "-"]
        return [*args, "--force-conflicts"] if force else args

    def apply(
        self, objects: Sequence[Mapping[str, Any]], *, dry_run: bool, force: bool
    ) -> ApplyRun:
        args = ["apply", *self._apply_args(force=force), "-o", "name"]
        if dry_run:
            args.append("--dry-run=server")
        code, out, err = self._run(args, stdin=_as_list(objects))
        lines = tuple(
            ln.strip() for ln in out.decode("utf-8", "replace").splitlines() if ln.strip()
        )
        return ApplyRun(ok=code == 0, applied=lines, error=err)

    def diff(self, objects: Sequence[Mapping[str, Any]], *, force: bool) -> str:
        code, out, err = self._run(
            ["diff", *self._apply_args(force=force)], stdin=_as_list(objects)
        )
        if code > 1:  # 1 means "there are differences"
            raise ClusterError(f"kubectl diff: {summarize_error(err)}")
        return out.decode("utf-8", "replace")

    def replace_managed_fields(
        self, rtype: ResourceType, live: Mapping[str, Any], entries: list[JSON]
    ) -> str | None:
        meta = live.get("metadata") or {}
        patch = [
            # Only if nobody changed the object since it was read.
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
            {"op": "replace", "path": "/metadata/managedFields", "value": entries},
        ]
        args = ["patch", rtype.qualified, str(meta["name"]), "--type=json"]
        args += [f"--field-manager={FIELD_MANAGER}", "-p", json.dumps(patch)]
        if rtype.namespaced:
            args += ["--namespace", str(meta["namespace"])]
        code, _, err = self._run(args)
        return summarize_error(err) if code != 0 else None

    def hand_over_apiservice(self, leaving_namespace: str) -> str:
        return hand_over_apiservice(self._tool, leaving_namespace)

    def delete(self, rtype: ResourceType, deletion: Deletion, *, dry_run: bool) -> DeleteOutcome:
        body: JSON = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": deletion.propagation,
        }
        if deletion.uid:
            body["preconditions"] = {"uid": deletion.uid}
        if dry_run:
            body["dryRun"] = ["All"]
        ref = deletion.ref
        code, _, err = self._run(
            ["delete", "--raw", rtype.path(ref.namespace, ref.name), "-f", "-"],
            stdin=json.dumps(body).encode(),
        )
        if code == 0:
            return DeleteOutcome("deleted")
        if "(NotFound)" in err:
            return DeleteOutcome("gone")
        return DeleteOutcome("failed", summarize_error(err))

    def get_json(self, kinds: str, *, namespace: str | None, selector: str | None) -> JSON:
        """``kubectl get KINDS -o json`` in one namespace, or in all (``stackgen status``)."""
        args = ["get", kinds, "-o", "json"]
        args += ["--namespace", namespace] if namespace else ["--all-namespaces"]
        if selector:
            args += ["-l", selector]
        code, out, err = self._run(args, timeout=60)
        self._check("get", code, err)
        data: JSON = json.loads(out or b"{}")
        return data

    def get_raw(self, path: str) -> str:
        """``kubectl get --raw PATH`` (a pod's /metrics through the API server's proxy)."""
        code, out, err = self._run(["get", "--raw", path], timeout=30)
        self._check("get --raw", code, err)
        return out.decode("utf-8", "replace")

    def wait_deleted(
        self, items: Sequence[tuple[ResourceType, ObjectRef]], timeout: float
    ) -> str | None:
        by_namespace: dict[str, list[str]] = {}
        for rtype, ref in items:
            by_namespace.setdefault(ref.namespace, []).append(f"{rtype.qualified}/{ref.name}")
        for namespace, names in sorted(by_namespace.items()):
            args = ["wait", "--for=delete", f"--timeout={max(1, int(timeout))}s", *names]
            if namespace:
                args += ["--namespace", namespace]
            code, _, err = self._run(args, timeout=timeout + 60)
            if code != 0 and "NotFound" not in err and "not found" not in err:
                return summarize_error(err)
        return None


__all__ = [
    "ApplyRun",
    "Cluster",
    "DeleteOutcome",
    "Kubectl",
    "ResourceType",
    "ResourceTypes",
    "parse_api_resources",
]
