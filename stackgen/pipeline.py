"""The build: load → compose → kustomize → validate, all before any output.

:func:`build` runs these steps and returns the manifest bytes only when every check
passed; the CLI writes them to stdout afterwards, so on any error stdout stays empty and
a pipe into ``kubectl apply`` applies nothing::

    load_and_compose / plain_overlay   stack.yaml read, the model built, the tree composed
    kustomize_while_checking           kustomize runs; meanwhile the schema, cross-field
                                       and secret-file checks, and kubeconform warms up
    judge                              kubeconform and the policies on the built objects
    (server_dry_run)                   only when asked

The tools run in the background while Python works (bench/build measures this): their
version checks while the stack loads and composes; the checks of step 1, and kubeconform
compiling the schemas of stackgen's kinds, while kustomize builds; YAML parsing and the
policies while kubeconform validates.  Problems are reported exactly as if every step ran
in turn: a failure is first put to the schema, whose word on bad input comes first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stackgen import tools
from stackgen.common import overlayfs, yamlio
from stackgen.common.errors import (
    BuildError,
    ConfigError,
    Problem,
    StackgenError,
    ToolError,
    ValidationError,
)
from stackgen.common.files import display_path
from stackgen.common.names import DEFAULT_KUBERNETES_VERSION
from stackgen.common.redact import Secrets
from stackgen.compose import check_dispatcher_config, compose
from stackgen.stack.checks import check_stack
from stackgen.stack.load import (
    find_stack_file,
    kustomization_file,
    read_stack_data,
    stack_from_data,
    stack_problems,
)
from stackgen.stack.model import Stack
from stackgen.stack.placeholders import secret_file_fields, token_sources, with_placeholders
from stackgen.stack.references import check_overlay, remote_extras
from stackgen.stack.sources import kustomize_files, literal_secrets, user_sources
from stackgen.validation.dry_run import server_dry_run
from stackgen.validation.kubeconform import KubeconformRun, kubeconform_result, warm_kubeconform
from stackgen.validation.namespaces import declared_in_kube_system, moved_out_of_kube_system
from stackgen.validation.policies import PolicyContext, as_policy, check_objects

__all__ = ["BuildOptions", "BuildResult", "build"]

#: How kustomize's own warnings start among a build's notices.
KUSTOMIZE_WARNING = "warning: kustomize: "


@dataclass
class BuildOptions:
    """How to build and what to check."""

    kubernetes_version: str | None = None
    validate: bool = True
    server_dry_run: bool = False
    ignore_missing_schemas: bool = False
    environ: Mapping[str, str] | None = None
    #: Build absent secret files with placeholders (:mod:`stackgen.stack.placeholders`).
    skip_missing_secrets: bool = False
    #: ``stack``: stackgen's policies apply; ``none``: only what kustomize, the schemas and
    #: the stack's own checks refuse (plain overlays that are not agent stacks).
    policy: str = "stack"


@dataclass
class BuildResult:
    """A built, validated stack."""

    overlay: Path
    manifest: bytes
    objects: list[dict[str, Any]]
    stack: Stack | None
    kubernetes_version: str
    notices: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    kubeconform_summary: dict[str, int] = field(default_factory=dict)
    #: The secrets built with placeholders (``skip_missing_secrets``), as notices.
    placeholders: list[str] = field(default_factory=list)


@dataclass
class Source:
    """What kustomize builds, and how the result is judged."""

    root: Path
    #: The file problems are reported against (stack.yaml, or the kustomization).
    file: str
    kubernetes_version: str
    policy: PolicyContext
    stack: Stack | None = None
    notices: list[str] = field(default_factory=list)
    placeholders: list[str] = field(default_factory=list)
    #: The input's checks that run while kustomize does (they raise ConfigError).
    checks: Callable[[], None] = lambda: None
    #: The user's own kustomize files (for what they put in kube-system).
    user_files: list[Path] = field(default_factory=list)
    #: Whether stackgen's policies judge the built objects (``--policy stack``).
    policies: bool = True


class Timer:
    """Wall time per step, as ``BuildResult.timings``."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.timings: dict[str, float] = {}

    def lap(self, step: str) -> None:
        """Record the time since the previous lap as ``step``."""
        elapsed = time.perf_counter() - self.started
        self.timings[step] = elapsed - sum(self.timings.values())


class Workdir:
    """A private temporary folder, removed in the background once it is not needed."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="stackgen-"))
        self._removal: threading.Thread | None = None

    def remove_soon(self) -> None:
        """Start removing the folder (the build goes on meanwhile)."""
        if self._removal is None:
            self._removal = threading.Thread(
                target=shutil.rmtree, args=(self.path,), kwargs={"ignore_errors": True}, daemon=True
            )
            self._removal.start()

    def __enter__(self) -> Workdir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove_soon()
        assert self._removal is not None
        self._removal.join()


def build(overlay: str | os.PathLike[str], options: BuildOptions | None = None) -> BuildResult:
    """Build and validate one overlay (with ``stack.yaml``, or plain kustomize).

    Raises:
        ConfigError: the overlay or its config is invalid.
        BuildError: kustomize failed.
        ValidationError: kubeconform, a policy or the server dry-run rejected the stack.
        ToolError: a required tool is missing.

    """
    options = options or BuildOptions()
    tools.warm_up("kustomize", "unshare", *(["kubeconform"] if options.validate else []))
    secrets = Secrets()
    try:
        result = _build(Path(overlay), options, secrets)
    except StackgenError as exc:
        # What the tools said may quote a secret file (kustomize does): never print it.
        # (A ConfigError too: it carries the tools' problems found in the same run.)
        secrets.scrub(exc)
        raise
    if any(n.startswith(KUSTOMIZE_WARNING) for n in result.notices):  # kustomize's words too
        redactor = secrets.redactor()
        result.notices = [redactor.text(n) for n in result.notices]
    return result


def _build(overlay_path: Path, options: BuildOptions, secrets: Secrets) -> BuildResult:
    timer = Timer()
    with Workdir() as workdir, contextlib.ExitStack() as cleanup:
        stack_file = find_stack_file(overlay_path)
        # Links out of the overlay, named pipes, devices: refused before a byte is read;
        # remote references and paths out of the overlay before kustomize runs.
        listing = overlayfs.scan(overlay_path).check()
        refs = check_overlay(overlay_path, listing, plain=stack_file is None)
        secrets.files += refs.secret_files
        if stack_file is None:
            raise_config(refs.problems)
            source = plain_overlay(overlay_path, options)
        else:
            source = load_and_compose(
                overlay_path, workdir.path / "tree", options, timer, (refs.problems, secrets)
            )
        timer.lap("compose")
        manifest, kubeconform, early = kustomize_while_checking(source, options, cleanup)
        timer.lap("kustomize")
        workdir.remove_soon()
        result = judge(manifest, kubeconform, source, overlay_path, timer, early)
    if options.server_dry_run:
        problems, notices = server_dry_run(result.objects, source.file)
        result.notices += notices
        timer.lap("server_dry_run")
        raise_if(problems)
    return result


def load_and_compose(
    overlay: Path,
    dest: Path,
    options: BuildOptions,
    timer: Timer,
    refs: tuple[list[Problem], Secrets],
) -> Source:
    """Step 1 for a ``stack.yaml`` overlay: the model, and the composed tree in ``dest``.

    The schema check (jsonschema: ~0.1 s to import) is left to :attr:`Source.checks`,
    which run while kustomize does; until then the data is trusted, and any failure here
    is first put to the schema.  ``refs``: what the overlay's kustomizations point at
    that kustomize must never fetch, and where the stack's secret material is collected.
    """
    reference_problems, secrets = refs
    environ = os.environ if options.environ is None else options.environ
    data, stack_file = read_stack_data(overlay)
    shown = display_path(stack_file)

    def schema_first() -> None:
        raise_config(stack_problems(data, shown))

    notices: list[str] = []
    try:
        stack = stack_from_data(data, overlay, stack_file)
        if options.skip_missing_secrets:
            placeholders = with_placeholders(stack, environ)
            stack, environ, notices = placeholders.stack, placeholders.environ, placeholders.notices
        timer.lap("load")
        user_files = user_sources(stack)
        sources = policy_lines(literal_secrets(user_files), options)
    except Exception:
        schema_first()
        raise
    secrets.files += [path for _, path in secret_file_fields(stack)]
    secrets.values += [
        environ[s.env] for s in token_sources(stack) if s.env is not None and s.env in environ
    ]
    reference_problems = reference_problems + remote_extras(stack)
    if reference_problems:  # kustomize must not start: it would fetch them
        raise_config(stack_problems(data, shown) + reference_problems)
    try:
        composed = compose(stack, dest, environ=environ, check=False)
    except Exception:
        # What the checks say (a missing secret file, …) is the real problem.
        schema_first()
        raise_config(check_stack(stack, environ=environ))
        raise_config(sources)
        raise

    def checks() -> None:
        # The cross-field checks trust what the schema passed; the literal secrets in the
        # user's kustomize files do not depend on it, so they are reported either way.
        problems = stack_problems(data, shown)
        if not problems:
            try:
                if composed.dispatcher_config is not None:
                    check_dispatcher_config(composed.dispatcher_config, stack.file)
                problems = check_stack(stack, environ=environ)
            except ConfigError as exc:
                problems = exc.problems
        raise_config(problems + sources)

    policy = PolicyContext(
        file=stack.file,
        dind_allowed=stack.uses_dind,
        insecure_tls_allowed=stack.metrics_adapter.tls.insecure_skip_tls_verify,
    )
    return Source(
        root=composed.root,
        file=stack.file,
        kubernetes_version=options.kubernetes_version or stack.kubernetes_version,
        policy=policy,
        stack=stack,
        notices=notices + composed.notices,
        placeholders=notices,
        checks=checks,
        user_files=user_files,
        policies=options.policy != "none",
    )


def plain_overlay(overlay: Path, options: BuildOptions) -> Source:
    """Step 1 for a plain kustomize overlay: only its sources are checked (for secrets).

    Its problems are reported with those of the built objects: every problem in one run.
    """
    kfile = kustomization_file(overlay)
    files = kustomize_files(overlay, first=kfile)
    # Read before kustomize starts: a file it must not expand (an alias bomb) raises here.
    literals = policy_lines(literal_secrets(files), options)
    file = display_path(kfile)
    return Source(
        root=overlay,
        file=file,
        kubernetes_version=options.kubernetes_version or DEFAULT_KUBERNETES_VERSION,
        policy=PolicyContext(file=file, dind_allowed=True, insecure_tls_allowed=True),
        checks=lambda: raise_config(literals),
        user_files=files,
        policies=options.policy != "none",
    )


def policy_lines(problems: list[Problem], options: BuildOptions) -> list[Problem]:
    """Problems of a stackgen policy: tagged, and none with ``--policy none``."""
    return as_policy(problems) if options.policy != "none" else []


def kustomize_while_checking(
    source: Source, options: BuildOptions, cleanup: contextlib.ExitStack
) -> tuple[bytes, KubeconformRun | None, list[Problem]]:
    """Step 2: ``kustomize build``; meanwhile the input's checks, and kubeconform warms up.

    The checks' problems are returned (they come first) and the build goes on, so that
    the policies' problems come in the same run.  A stack whose checks failed is judged
    by the policies only (kubeconform would repeat what the schema said), and kustomize
    errors on it are left out (its tree was composed from unchecked data); a plain
    overlay's are kept.  A missing kubeconform is reported after kustomize's own errors.
    """
    kustomize = tools.start_kustomize(source.root)
    cleanup.callback(kustomize.cancel)  # whatever happens next (a signal too), it stops
    tool_error: ToolError | None = None
    kubeconform: KubeconformRun | None = None
    early: list[Problem] = []
    try:
        try:
            source.checks()
        except ConfigError as exc:
            if not options.validate:
                raise
            early = exc.problems
        if options.validate and not (early and source.stack is not None):
            try:
                kubeconform = warm_kubeconform(
                    source.kubernetes_version, ignore_missing_schemas=options.ignore_missing_schemas
                )
                cleanup.callback(kubeconform.cancel)  # a no-op once it has finished
            except ToolError as exc:
                tool_error = exc
    except BaseException:
        kustomize.cancel()
        raise
    overlay = source.stack.overlay if source.stack else None
    warnings: list[str] = []
    try:
        manifest = tools.finish_kustomize(
            kustomize, source.root, source.file, stack_overlay=overlay, warnings=warnings
        )
    except BuildError as exc:
        if not early:
            raise
        raise ConfigError(early + ([] if source.stack else exc.problems)) from exc
    source.notices += [f"warning: {line}" for line in warnings]  # KUSTOMIZE_WARNING
    if tool_error is not None:
        raise tool_error
    return manifest, kubeconform, early


def judge(
    manifest: bytes,
    kubeconform: KubeconformRun | None,
    source: Source,
    overlay: Path,
    timer: Timer,
    early: list[Problem],
) -> BuildResult:
    """Step 3: kubeconform validates while the objects are parsed and the policies run.

    ``early``: the input checks' problems; reported first, with the policies' (and, for
    a plain overlay, kubeconform's) in one :class:`ConfigError` (which :func:`build`
    scrubs, as every error).
    """
    if kubeconform is not None:
        kubeconform.validate(manifest)
    try:
        objects = yamlio.load_fast_all(manifest)
    except yaml.YAMLError as exc:  # kustomize output is always YAML; this is a bug
        raise BuildError(
            Problem(source.file, "", f"kustomize printed unreadable YAML: {exc}")
        ) from exc
    result = BuildResult(
        overlay=overlay,
        manifest=manifest,
        objects=objects,
        stack=source.stack,
        kubernetes_version=source.kubernetes_version,
        notices=list(source.notices),
        timings=timer.timings,
        placeholders=list(source.placeholders),
    )
    if kubeconform is not None or early:
        policy = check_objects(objects, source.policy) if source.policies else []
        declared = declared_in_kube_system(source.user_files)
        policy += moved_out_of_kube_system(objects, declared, source.file)
        timer.lap("policy")
        problems: list[Problem] = []
        if kubeconform is not None:
            problems, result.kubeconform_summary = kubeconform_result(
                kubeconform, source.kubernetes_version, source.file
            )
            timer.lap("kubeconform")
        if early:
            raise_config(early + problems + policy)
        raise_if(problems + policy)
    return result


def raise_config(problems: list[Problem]) -> None:
    """Raise ConfigError for source-level problems."""
    if problems:
        raise ConfigError(problems)


def raise_if(problems: list[Problem]) -> None:
    """Raise a ValidationError carrying ``problems`` when there are any."""
    if problems:
        raise ValidationError(problems)
