"""Policy checks stackgen owns, run on the built objects.

What the schemas cannot say: one HPA per target, no literal secrets, no privileged
container unless Docker-in-Docker is on, no hostPath, every container sized, and Pod
Security profiles: stackgen's own pods meet ``restricted``, agent pods ``baseline``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from stackgen.common.errors import Problem
from stackgen.common.names import (
    AGENT_STEPS_SERVICE_ACCOUNT,
    AGENT_WORKLOAD,
    DISPATCHER,
    GIT_MIRROR,
    METRICS_ADAPTER,
)

#: Pods stackgen itself runs: they must meet Pod Security `restricted`.
OWN_APPS = {DISPATCHER, METRICS_ADAPTER, GIT_MIRROR}
INSECURE_OPT_IN = "stackgen.io/insecure-skip-tls-verify"
PRIVILEGED_OPT_IN = "stackgen.io/privileged"
#: What marks a policy problem; ``--policy none`` skips these rules.
POLICY_TAG = "policy"
#: The ``--policy`` choices: stackgen's rules, or only what Kubernetes itself refuses.
POLICIES = ("stack", "none")

_SECRETISH = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|PRIVATE_?KEY|CREDENTIALS)", re.I)
# Capabilities Pod Security `baseline` allows a container to add.
_BASELINE_CAPS = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
_RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


@dataclass(frozen=True)
class PolicyContext:
    """What the stack config allows (None for plain kustomize overlays)."""

    file: str
    dind_allowed: bool
    insecure_tls_allowed: bool


def object_id(obj: dict[str, Any]) -> str:
    """``Kind/name`` (with namespace when set) for messages."""
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind', '?')}/{meta.get('name', '?')}"


def pod_spec(obj: dict[str, Any]) -> tuple[dict[str, Any], str, dict[str, Any]] | None:
    """Return (pod spec, its path, pod metadata) of any workload kind, else None."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return spec, "spec", obj.get("metadata") or {}
    if kind in {
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "ReplicaSet",
        "Job",
        "ReplicationController",
    }:
        template = spec.get("template") or {}
        return template.get("spec") or {}, "spec.template.spec", template.get("metadata") or {}
    if kind == "CronJob":
        template = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
        return (
            template.get("spec") or {},
            "spec.jobTemplate.spec.template.spec",
            template.get("metadata") or {},
        )
    if kind == "PodTemplate":
        template = obj.get("template") or {}
        return template.get("spec") or {}, "template.spec", template.get("metadata") or {}
    return None


def _containers(spec: dict[str, Any]) -> Iterator[tuple[str, int, dict[str, Any]]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for index, container in enumerate(spec.get(field) or []):
            yield field, index, container


def _app_name(obj: dict[str, Any], pod_meta: dict[str, Any]) -> str:
    for meta in (pod_meta, obj.get("metadata") or {}):
        name = (meta.get("labels") or {}).get("app.kubernetes.io/name")
        if name:
            return str(name)
    return ""


def as_policy(problems: Iterable[Problem]) -> list[Problem]:
    """Mark problems as stackgen's own rules (``FILE: policy: …``), not Kubernetes'."""
    return [replace(p, tag=POLICY_TAG) for p in problems]


def check_objects(objects: list[dict[str, Any]], ctx: PolicyContext) -> list[Problem]:
    """Run every policy check over the built objects (each problem tagged ``policy``)."""
    return as_policy(_check_objects(objects, ctx))


def _check_objects(objects: list[dict[str, Any]], ctx: PolicyContext) -> list[Problem]:
    problems: list[Problem] = []
    problems += _one_hpa_per_target(objects, ctx)
    for obj in objects:
        problems += _apiservice_tls(obj, ctx)
        found = pod_spec(obj)
        if found is None:
            continue
        spec, spec_path, pod_meta = found
        own = _app_name(obj, pod_meta) in OWN_APPS
        problems += _pod_checks(obj, spec, spec_path, pod_meta, ctx, restricted=own)
        if _app_name(obj, pod_meta) == AGENT_WORKLOAD:
            problems += _agent_token(obj, spec, spec_path, ctx)
    return problems


def _agent_token(
    obj: dict[str, Any], spec: dict[str, Any], spec_path: str, ctx: PolicyContext
) -> Iterator[Problem]:
    """Agents mount an API token only as a ``podSteps`` queue's ServiceAccount."""
    account = str(spec.get("serviceAccountName") or "")
    if spec.get("automountServiceAccountToken") is not False and not account.startswith(
        f"{AGENT_STEPS_SERVICE_ACCOUNT}-"
    ):
        yield Problem(
            ctx.file,
            f"{object_id(obj)}: {spec_path}.automountServiceAccountToken",
            "agent pods mount no Kubernetes API token unless their queue has podSteps: true",
        )


def _one_hpa_per_target(objects: list[dict[str, Any]], ctx: PolicyContext) -> Iterator[Problem]:
    targets: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for obj in objects:
        if obj.get("kind") != "HorizontalPodAutoscaler":
            continue
        ref = (obj.get("spec") or {}).get("scaleTargetRef") or {}
        namespace = (obj.get("metadata") or {}).get("namespace", "")
        key = (namespace, str(ref.get("kind")), str(ref.get("name")))
        targets[key].append((obj.get("metadata") or {}).get("name", "?"))
    for (_, kind, name), hpas in sorted(targets.items()):
        if len(hpas) > 1:
            yield Problem(
                ctx.file,
                f"{kind}/{name}",
                f"{len(hpas)} HorizontalPodAutoscalers ({', '.join(sorted(hpas))}) target it; "
                "Kubernetes then refuses to scale it (AmbiguousSelector): keep one HPA with "
                "several metrics",
            )


def _apiservice_tls(obj: dict[str, Any], ctx: PolicyContext) -> Iterator[Problem]:
    if obj.get("kind") != "APIService":
        return
    spec = obj.get("spec") or {}
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    if not spec.get("insecureSkipTLSVerify"):
        if (
            spec.get("service")
            and not spec.get("caBundle")
            and not annotations.get("cert-manager.io/inject-ca-from")
        ):
            yield Problem(
                ctx.file,
                f"{object_id(obj)}: spec.caBundle",
                "the aggregator cannot verify the adapter: give a caBundle (metricsAdapter.tls) "
                "or let cert-manager inject one",
            )
        return
    opted_in = ctx.insecure_tls_allowed and annotations.get(INSECURE_OPT_IN) == "opted-in"
    if not opted_in:
        yield Problem(
            ctx.file,
            f"{object_id(obj)}: spec.insecureSkipTLSVerify",
            "skips TLS verification without the explicit opt-in "
            "(metricsAdapter.tls.insecureSkipTLSVerify: true, or the annotation "
            f"{INSECURE_OPT_IN}: opted-in in a plain overlay); give a caBundle instead",
        )


def _pod_checks(
    obj: dict[str, Any],
    spec: dict[str, Any],
    spec_path: str,
    pod_meta: dict[str, Any],
    ctx: PolicyContext,
    *,
    restricted: bool,
) -> Iterator[Problem]:
    where = object_id(obj)
    annotations = pod_meta.get("annotations") or {}
    dind_pod = annotations.get(PRIVILEGED_OPT_IN) == "dind" and ctx.dind_allowed
    for host_field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host_field):
            yield Problem(
                ctx.file, f"{where}: {spec_path}.{host_field}", "host namespaces are not allowed"
            )
    for index, volume in enumerate(spec.get("volumes") or []):
        vpath = f"{where}: {spec_path}.volumes[{index}]"
        if "hostPath" in volume:
            yield Problem(ctx.file, vpath, "hostPath volumes are not allowed")
        elif restricted:
            kinds = set(volume) - {"name"}
            if not kinds <= _RESTRICTED_VOLUMES:
                yield Problem(
                    ctx.file,
                    vpath,
                    f"volume type {', '.join(sorted(kinds))} breaks Pod Security restricted",
                )
    pod_sc = spec.get("securityContext") or {}
    seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if seccomp == "Unconfined":
        yield Problem(
            ctx.file, f"{where}: {spec_path}.securityContext.seccompProfile", "Unconfined seccomp"
        )
    for field, index, container in _containers(spec):
        cpath = f"{where}: {spec_path}.{field}[{index}]"
        yield from _container_checks(
            container, cpath, ctx, pod_sc, restricted=restricted, dind_pod=dind_pod
        )


def _container_checks(
    container: dict[str, Any],
    cpath: str,
    ctx: PolicyContext,
    pod_sc: dict[str, Any],
    *,
    restricted: bool,
    dind_pod: bool,
) -> Iterator[Problem]:
    sc = container.get("securityContext") or {}
    name = container.get("name", "?")
    if sc.get("privileged") and not (dind_pod and name == "dind"):
        yield Problem(
            ctx.file,
            f"{cpath}.securityContext.privileged",
            "privileged containers are only allowed for the dind sidecar of a dind: true queue",
        )
    for port_index, port in enumerate(container.get("ports") or []):
        if port.get("hostPort"):
            yield Problem(
                ctx.file, f"{cpath}.ports[{port_index}].hostPort", "host ports are not allowed"
            )
    added = set((sc.get("capabilities") or {}).get("add") or [])
    if added - _BASELINE_CAPS and not (dind_pod and name == "dind"):
        yield Problem(
            ctx.file,
            f"{cpath}.securityContext.capabilities.add",
            f"adds {', '.join(sorted(added - _BASELINE_CAPS))}: beyond Pod Security baseline",
        )
    resources = container.get("resources") or {}
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    missing = [f"requests.{r}" for r in ("cpu", "memory") if r not in requests]
    if "memory" not in limits:
        missing.append("limits.memory")
    if missing:
        yield Problem(
            ctx.file, f"{cpath}.resources", f"container {name!r} has no {', '.join(missing)}"
        )
    for env_index, env in enumerate(container.get("env") or []):
        if "value" in env and _SECRETISH.search(str(env.get("name", ""))) and env.get("value"):
            yield Problem(
                ctx.file,
                f"{cpath}.env[{env_index}]",
                f"{env.get('name')} holds a literal value: secrets belong in Secrets (valueFrom)",
            )
    if restricted:
        yield from _restricted_container(sc, pod_sc, cpath, ctx, name)


def _restricted_container(
    sc: dict[str, Any], pod_sc: dict[str, Any], cpath: str, ctx: PolicyContext, name: str
) -> Iterator[Problem]:
    def effective(key: str) -> Any:
        return sc.get(key, pod_sc.get(key))

    if sc.get("allowPrivilegeEscalation") is not False:
        yield Problem(
            ctx.file,
            f"{cpath}.securityContext.allowPrivilegeEscalation",
            "must be false (restricted)",
        )
    if effective("runAsNonRoot") is not True:
        yield Problem(
            ctx.file, f"{cpath}.securityContext.runAsNonRoot", "must be true (restricted)"
        )
    if effective("runAsUser") == 0:
        yield Problem(ctx.file, f"{cpath}.securityContext.runAsUser", "must not be 0 (restricted)")
    drop = (sc.get("capabilities") or {}).get("drop") or []
    if "ALL" not in drop:
        yield Problem(
            ctx.file, f"{cpath}.securityContext.capabilities.drop", "must include ALL (restricted)"
        )
    added = set((sc.get("capabilities") or {}).get("add") or [])
    if added - {"NET_BIND_SERVICE"}:
        yield Problem(
            ctx.file,
            f"{cpath}.securityContext.capabilities.add",
            "only NET_BIND_SERVICE (restricted)",
        )
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        yield Problem(
            ctx.file,
            f"{cpath}.securityContext.seccompProfile",
            "must be RuntimeDefault (restricted)",
        )
    if sc.get("readOnlyRootFilesystem") is not True:
        yield Problem(
            ctx.file,
            f"{cpath}.securityContext.readOnlyRootFilesystem",
            f"stackgen's own container {name!r} must run with a read-only root filesystem",
        )
