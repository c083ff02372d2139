"""Objects that kustomize's ``namespace:`` moved out of kube-system.

A kustomization's ``namespace:`` sets the namespace of every namespaced object it builds,
even one whose file says ``namespace: kube-system``.  That silently breaks what must live
there: a RoleBinding to ``extension-apiserver-authentication-reader`` (the Role an
aggregated API server needs to read the client CA) only grants something inside
kube-system; anywhere else it binds a Role that does not exist.  The early
agent-stack-k8s overlay shipped exactly this mistake.

Two checks, both on what kustomize built:

* :func:`declared_in_kube_system` reads the user's files for objects (and binding
  subjects) they put in kube-system; :func:`moved_out_of_kube_system` reports those the
  build put elsewhere, naming the file and the field;
* a RoleBinding to one of the Roles Kubernetes creates only in kube-system is reported
  wherever else it ends up, even when no file said kube-system.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stackgen.common import yamlio
from stackgen.common.errors import Problem
from stackgen.common.files import display_path

__all__ = ["Declared", "declared_in_kube_system", "moved_out_of_kube_system"]

KUBE_SYSTEM = "kube-system"
#: Roles the API server's bootstrap policy creates in kube-system, and only there.
KUBE_SYSTEM_ROLES = frozenset(
    {
        "extension-apiserver-authentication-reader",
        "system::leader-locking-kube-controller-manager",
        "system::leader-locking-kube-scheduler",
        "system:controller:bootstrap-signer",
        "system:controller:cloud-provider",
        "system:controller:token-cleaner",
    }
)
_BINDINGS = ("RoleBinding", "ClusterRoleBinding")


@dataclass(frozen=True)
class Declared:
    """An object a user's file puts in kube-system (itself, or some of its subjects)."""

    file: str
    #: ``[N].`` for the Nth document of a multi-document file, else empty.
    prefix: str
    kind: str
    name: str
    #: Whether ``metadata.namespace`` itself is kube-system.
    itself: bool
    #: Indexes of the binding's subjects whose namespace is kube-system.
    subjects: tuple[int, ...]


def declared_in_kube_system(paths: Iterable[Path]) -> list[Declared]:
    """What these files put in kube-system (unreadable files are kustomize's to report)."""
    found: list[Declared] = []
    for path in paths:
        try:
            docs = list(yamlio.load_all(path.read_bytes()))
        except (OSError, yaml.YAMLError):
            continue
        found += _declared(docs, display_path(path))
    return found


def _declared(docs: list[Any], shown: str) -> Iterator[Declared]:
    for index, doc in enumerate(docs):
        if not isinstance(doc, dict) or not isinstance(doc.get("metadata"), dict):
            continue
        meta = doc["metadata"]
        kind, name = doc.get("kind"), meta.get("name")
        if not isinstance(kind, str) or not isinstance(name, str):
            continue
        subjects: tuple[int, ...] = ()
        if kind in _BINDINGS and isinstance(doc.get("subjects"), list):
            subjects = tuple(
                i
                for i, subject in enumerate(doc["subjects"])
                if isinstance(subject, dict) and subject.get("namespace") == KUBE_SYSTEM
            )
        itself = meta.get("namespace") == KUBE_SYSTEM
        if itself or subjects:
            prefix = f"[{index}]." if len(docs) > 1 else ""
            yield Declared(shown, prefix, kind, name, itself, subjects)


def moved_out_of_kube_system(
    objects: list[dict[str, Any]], declared: list[Declared], file: str
) -> list[Problem]:
    """Problems for kube-system objects (or subjects) the build moved elsewhere.

    ``file`` is what an object that no source file declared is reported against.
    """
    problems: list[Problem] = []
    reported: set[int] = set()
    for item in declared:
        built = _built_from(objects, item.kind, item.name)
        namespaces = {_namespace(o) for o in built}
        if item.itself and namespaces and not namespaces & {KUBE_SYSTEM, ""}:
            moved_to = sorted(namespaces)[0]
            reported.update(id(o) for o in built)
            problems.append(
                Problem(
                    item.file,
                    f"{item.prefix}metadata.namespace",
                    f"{item.kind}/{item.name} is declared in kube-system but the build puts it "
                    f"in namespace {moved_to!r} (a kustomization's namespace: moved it): "
                    "list it in a kustomization that sets no namespace:",
                )
            )
        problems += _moved_subjects(item, built)
    for obj in objects:
        if id(obj) not in reported:
            problems += _role_only_in_kube_system(obj, file)
    return problems


def _moved_subjects(item: Declared, built: list[dict[str, Any]]) -> Iterator[Problem]:
    for index in item.subjects:
        moved = {
            str(subject.get("namespace"))
            for obj in built
            if index < len(subjects := obj.get("subjects") or [])
            and isinstance(subject := subjects[index], dict)
            and subject.get("namespace") != KUBE_SYSTEM
        }
        if moved:
            yield Problem(
                item.file,
                f"{item.prefix}subjects[{index}].namespace",
                f"{item.kind}/{item.name}'s subject is declared in kube-system but the build "
                f"names namespace {sorted(moved)[0]!r} (a kustomization's namespace: rewrote "
                "it): bind it from a kustomization that sets no namespace:",
            )


def _role_only_in_kube_system(obj: dict[str, Any], file: str) -> Iterator[Problem]:
    if obj.get("kind") != "RoleBinding":
        return
    ref = obj.get("roleRef") or {}
    namespace = _namespace(obj)
    if ref.get("kind") != "Role" or ref.get("name") not in KUBE_SYSTEM_ROLES:
        return
    if namespace and namespace != KUBE_SYSTEM:
        name = (obj.get("metadata") or {}).get("name", "?")
        yield Problem(
            file,
            f"RoleBinding/{name}: metadata.namespace",
            f"binds Role {ref['name']!r}, which exists only in kube-system, from namespace "
            f"{namespace!r}, so it grants nothing: put the RoleBinding in kube-system "
            "(a kustomization's namespace: moves it)",
        )


def _namespace(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "")


def _built_from(objects: list[dict[str, Any]], kind: str, name: str) -> list[dict[str, Any]]:
    """The built objects of a source object (the same name, else one namePrefix/Suffix grew)."""
    same_kind = [o for o in objects if o.get("kind") == kind]
    names = [str((o.get("metadata") or {}).get("name") or "") for o in same_kind]
    exact = [o for o, built in zip(same_kind, names, strict=True) if built == name]
    return exact or [o for o, built in zip(same_kind, names, strict=True) if name in built]
