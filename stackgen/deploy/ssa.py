"""Server-side apply details: taking a stack over from ``kubectl apply``, conflicts in a line.

**Taking over.** Before ``stackgen apply``, the documented deploy command was
``stackgen build … | kubectl apply -f -`` (field manager ``kubectl-client-side-apply``)
or ``kubectl apply --server-side`` (``kubectl``). Server-side apply under a new field
manager then conflicts on fields whose applied form differs from the stored one though
the value is the same (kustomize wraps a Secret's long base64; the API server adds
``apiVersion`` to every ``fieldRef``), and where it does not conflict the two managers
would *co-own* each field, so a field later dropped from the stack would stay, kept by
kubectl's ownership. So the first time stackgen applies an object that kubectl applied,
it hands kubectl's ownership to stackgen's field manager (what client-go's ``csaupgrade``
does for kubectl's own switch to server-side apply). Objects stackgen already manages
are never touched, and no other manager's fields (an HPA's, ``kubectl scale``'s,
``kubectl edit``'s) are taken: those conflict as they should.

**Conflicts.** kubectl prints a conflict as several lines and a paragraph of advice;
:func:`summarize_error` makes one line of it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

JSON = dict[str, Any]

#: The field manager of ``stackgen apply``.
FIELD_MANAGER = "stackgen"

#: Field managers of ``kubectl apply`` (client-side) and ``kubectl apply --server-side``.
KUBECTL_APPLY_MANAGERS = frozenset({"kubectl-client-side-apply", "kubectl"})


def _union(left: Mapping[str, Any], right: Mapping[str, Any]) -> JSON:
    """The union of two ``FieldsV1`` sets (nested dicts; leaves are ``{}``)."""
    merged: JSON = dict(left)
    for key, value in right.items():
        if key in merged and isinstance(merged[key], dict) and isinstance(value, dict):
            merged[key] = _union(merged[key], value)
        else:
            merged[key] = value
    return merged


def adopted_managed_fields(
    entries: Sequence[Mapping[str, Any]], *, now: str, manager: str = FIELD_MANAGER
) -> list[JSON] | None:
    """``managedFields`` with ``kubectl apply``'s ownership handed to ``manager``.

    None when there is nothing to hand over: ``manager`` already has an entry (the object
    was applied by stackgen before), kubectl never applied it, or kubectl's entries are
    of different API versions (their field sets cannot be merged; the apply then reports
    whatever conflicts remain).
    """
    if any(e.get("manager") == manager for e in entries):
        return None
    taken = [
        e
        for e in entries
        if e.get("manager") in KUBECTL_APPLY_MANAGERS
        and not e.get("subresource")  # `kubectl scale` is manager kubectl on /scale
        and e.get("operation") in ("Apply", "Update")
        and e.get("fieldsType", "FieldsV1") == "FieldsV1"
    ]
    versions = {e.get("apiVersion") for e in taken}
    if not taken or len(versions) != 1:
        return None
    fields: JSON = {}
    for entry in taken:
        fields = _union(fields, entry.get("fieldsV1") or {})
    kept = [dict(e) for e in entries if not any(e is t for t in taken)]
    return [
        *kept,
        {
            "apiVersion": versions.pop(),
            "fieldsType": "FieldsV1",
            "fieldsV1": fields,
            "manager": manager,
            "operation": "Apply",
            "time": now,
        },
    ]


# ------------------------------------------------------------------------- messages

_CONFLICT_HEAD = re.compile(
    r'conflicts? with "(?P<manager>[^"]+)"'
    r'(?: with subresource "(?P<subresource>[^"]+)")?'
    r"(?: using (?P<version>[^\s:]+))?:\s*(?P<rest>.*)$"
)
_ADVICE_START = "Please review the fields above"
_MAX_FIELDS = 6
#: kubectl's own log lines (client-side throttling notes and the like).
_KLOG = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d")


def summarize_conflicts(text: str) -> str | None:
    """One line for kubectl's "Apply failed with N conflicts" text; None if it is not one."""
    if "Apply failed with" not in text:
        return None
    owners: list[tuple[str, str]] = []  # (field, who)
    who = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(_ADVICE_START):
            break
        head = _CONFLICT_HEAD.search(line)
        if head:
            who = head["manager"] + (f", {head['subresource']}" if head["subresource"] else "")
            rest = head["rest"].strip()
            if rest:
                owners.append((rest, who))
        elif line.startswith("- ") and who:
            owners.append((line[2:].strip(), who))
    if not owners:
        return None
    shown = [f"{field} (owned by {who})" for field, who in owners[:_MAX_FIELDS]]
    if len(owners) > _MAX_FIELDS:
        shown.append(f"and {len(owners) - _MAX_FIELDS} more")
    return (
        f"server-side apply conflict: {', '.join(shown)}: another field manager set "
        "these fields; re-run with --force-conflicts to take them over"
    )


def summarize_error(text: str) -> str:
    """One line for kubectl's error output about one object (conflicts summarized)."""
    conflicts = summarize_conflicts(text)
    if conflicts:
        return conflicts
    lines = [
        ln.strip()
        for ln in text.splitlines()
        if ln.strip() and not ln.startswith("Warning:") and not _KLOG.match(ln)
    ]
    chosen = next(
        (ln for ln in lines if ln.startswith(("Error from server", "error:"))),
        lines[-1] if lines else "kubectl failed without a message",
    )
    # Drop kubectl's `error when creating "STDIN":` prefix noise.
    marker = 'STDIN": '
    if marker in chosen:
        chosen = chosen.split(marker, 1)[1]
    return chosen.removeprefix("error: ")[:500]


__all__ = [
    "FIELD_MANAGER",
    "KUBECTL_APPLY_MANAGERS",
    "adopted_managed_fields",
    "summarize_conflicts",
    "summarize_error",
]
