"""Rules the JSON schema cannot express: cross-field rules, and what the files hold.

:func:`check_stack` runs them all and returns every problem (the secret files' checks
are in :mod:`stackgen.stack.secret_files`).  The queue rules the dispatcher config
shares (unique names, minAgents ≤ maxAgents, known git mirrors) are
:func:`stackgen.common.models.queue_problems`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping

from stackgen.common.errors import Problem
from stackgen.common.models import mirror_problems, queue_problems
from stackgen.stack.model import Stack
from stackgen.stack.secret_files import (
    ca_problems,
    certificate_problems,
    read_secret,
    resolve_inside,
    secret_checks,
)

# Variables stackgen sets itself; a user value would silently break the agent.
_RESERVED_ENV = {
    "BUILDKITE_AGENT_TOKEN": "set secrets.agentToken instead",
    "BUILDKITE_AGENT_TAGS": "set tags instead",
    "BUILDKITE_HOOKS_PATH": "set hooks instead",
    "BUILDKITE_ADDITIONAL_HOOKS_PATHS": "stackgen's own hooks live there",
    "BUILDKITE_BUILD_PATH": "set agent.buildPath instead",
    "BUILDKITE_AGENT_ENDPOINT": "set agent.endpoint instead",
}


def check_stack(stack: Stack, *, environ: Mapping[str, str]) -> list[Problem]:
    """Run every cross-field rule and secret-file check; return all problems found."""
    problems: list[Problem] = []
    problems += _queue_rules(stack)
    problems += secret_checks(stack, environ)
    problems += _hook_checks(stack)
    problems += _adapter_checks(stack)
    problems += _kustomize_checks(stack)
    return problems


# ------------------------------------------------------------------------- queues


def queue_rule_problems(stack: Stack) -> list[Problem]:
    """The queue rules alone (``stackgen init`` checks its scaffold with them)."""
    return list(_queue_rules(stack))


def _queue_rules(stack: Stack) -> Iterator[Problem]:
    file = stack.file
    yield from mirror_problems(stack.git_mirrors, file)
    if "queue" in stack.agent.tags:
        yield Problem(file, "agent.tags.queue", "each queue sets its own queue tag; remove it")
    yield from _reserved_env(stack.agent.env, file, "agent.env")
    yield from queue_problems(stack.queues, {m.name for m in stack.git_mirrors}, file)
    yield from _slug_collisions(stack)
    for index, queue in enumerate(stack.queues):
        where = f"queues[{index}]"
        if "queue" in queue.tags and queue.tags["queue"] != queue.name:
            yield Problem(file, f"{where}.tags.queue", "the queue tag comes from the queue's name")
        yield from _reserved_env(queue.env, file, f"{where}.env")
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
        if queue.kubernetes_plugin is not None and queue.mode != "exact":
            yield Problem(
                file,
                f"{where}.kubernetesPlugin",
                "only exact queues read a step's pod spec before starting it: use mode exact",
            )
        if queue.mode == "exact" and queue.buffer:
            yield Problem(
                file, f"{where}.buffer", "exact queues start one agent per job and have no buffer"
            )


def _reserved_env(env: Mapping[str, str], file: str, where: str) -> Iterator[Problem]:
    for key in env:
        why = _RESERVED_ENV.get(key)
        if why:
            yield Problem(file, f"{where}.{key}", f"stackgen sets this variable; {why}")


def _slug_collisions(stack: Stack) -> Iterator[Problem]:
    """Distinct queue names that map to the same Kubernetes name."""
    names = Counter(q.name for q in stack.queues)
    seen: set[str] = set()
    for index, queue in enumerate(stack.queues):
        if queue.slug in seen and names[queue.name] == 1:
            yield Problem(
                stack.file,
                f"queues[{index}].name",
                f"queue {queue.name!r} maps to the same Kubernetes name {queue.slug!r} "
                "as another queue",
            )
        seen.add(queue.slug)


# -------------------------------------------------------------------------- hooks


def _hook_checks(stack: Stack) -> Iterator[Problem]:
    for name, path in sorted(stack.hooks.items()):
        field = f"hooks.{name}"
        data, problems = read_secret(stack.overlay, path, stack.file, field)
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
    existing = tls.existing_secret is not None
    # caFile alone belongs to existingSecret; certFile/keyFile are the files' way.
    any_files = (
        tls.cert_file is not None
        or tls.key_file is not None
        or (tls.ca_file is not None and not existing)
    )
    ways = [
        name
        for name, used in (
            ("the certificate files", any_files),
            ("existingSecret", existing),
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
            "`stackgen init` makes them), an existingSecret with its caFile, a certManager "
            "issuer, or the explicit opt-in insecureSkipTLSVerify: true",
        )
        return
    if existing:
        if tls.ca_file is None:
            yield Problem(
                file,
                "metricsAdapter.tls.caFile",
                "is required with existingSecret: the CA that signed its certificate goes "
                "into the APIService",
            )
        else:
            yield from ca_problems(stack, tls.ca_file)
        return
    if not any_files:
        return
    for key, value in given.items():
        if value is None:
            yield Problem(
                file, f"metricsAdapter.tls.{key}", "is required with the other certificate files"
            )
    if all(v is not None for v in given.values()):
        yield from certificate_problems(stack)


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
