"""The build pipeline: load, compose, kustomize, validate — all before any output.

:func:`build` returns the manifest bytes only when every check passed; the CLI writes
them to stdout afterwards, so on any error stdout stays empty and a pipe into
``kubectl apply`` applies nothing.

The tools run in the background while Python works (bench/build measures this): the
tools' version checks while the stack loads and composes; the secret-file checks, and
kubeconform compiling the schemas of stackgen's kinds, while kustomize builds; YAML
parsing and the policies while kubeconform validates.  Problems are reported exactly as
if every step ran in turn.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stackgen import tools, yamlio
from stackgen.compose import check_dispatcher_config, compose
from stackgen.config import (
    DEFAULT_KUBERNETES_VERSION,
    KUSTOMIZATION_FILES,
    Stack,
    display_path,
    find_stack_file,
    read_stack_data,
    stack_from_data,
    stack_problems,
)
from stackgen.errors import BuildError, ConfigError, Problem, ToolError
from stackgen.policy import PolicyContext, literal_secret_problems
from stackgen.validation import (
    KubeconformRun,
    kubeconform_result,
    policy_problems,
    raise_if,
    server_dry_run,
    warm_kubeconform,
)


@dataclass
class BuildOptions:
    """How to build and what to check."""

    kubernetes_version: str | None = None
    validate: bool = True
    server_dry_run: bool = False
    ignore_missing_schemas: bool = False
    environ: Mapping[str, str] | None = None


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


def build(overlay: str | os.PathLike[str], options: BuildOptions | None = None) -> BuildResult:
    """Build and validate one overlay (with ``stack.yaml``, or plain kustomize).

    Raises:
        ConfigError: the overlay or its config is invalid.
        BuildError: kustomize failed.
        ValidationError: kubeconform, a policy or the server dry-run rejected the stack.
        ToolError: a required tool is missing.

    """
    options = options or BuildOptions()
    tools.warm_up("kustomize", *(["kubeconform"] if options.validate else []))
    overlay_path = Path(overlay)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    stack_file = find_stack_file(overlay_path)
    notices: list[str] = []
    stack: Stack | None = None
    source_problems: list[Problem] = []
    workdir = Path(tempfile.mkdtemp(prefix="stackgen-"))
    cleanup: threading.Thread | None = None
    pending: KubeconformRun | None = None
    try:
        try:
            if stack_file is not None:
                # The schema check (jsonschema: ~0.1 s to import) runs while kustomize
                # does; until then the data is trusted, and any failure is first put to
                # the schema, whose word on bad input comes first.
                data, stack_file = read_stack_data(overlay_path)
                shown = display_path(stack_file)
                try:
                    stack = stack_from_data(data, overlay_path, stack_file)
                    timings["load"] = time.perf_counter() - started
                    source_problems = _source_secret_problems(_user_sources(stack))
                except Exception:
                    raise_config(stack_problems(data, shown))
                    raise
                try:
                    composed = compose(
                        stack, workdir / "tree", environ=options.environ, check=False
                    )
                except Exception:
                    # What the checks say (a missing secret file, …) is the real problem.
                    raise_config(stack_problems(data, shown))
                    raise_config(_stack_checks(stack, options.environ))
                    raise_config(source_problems)
                    raise
                notices += composed.notices
                build_root = composed.root
                file = stack.file
                version = options.kubernetes_version or stack.kubernetes_version
                ctx = PolicyContext(
                    file=file,
                    dind_allowed=stack.uses_dind,
                    insecure_tls_allowed=stack.metrics_adapter.tls.insecure_skip_tls_verify,
                )
            else:
                kfile = next(
                    overlay_path / n for n in KUSTOMIZATION_FILES if (overlay_path / n).is_file()
                )
                raise_config(_source_secret_problems(_kustomize_files(overlay_path, first=kfile)))
                build_root = overlay_path
                file = display_path(kfile)
                version = options.kubernetes_version or DEFAULT_KUBERNETES_VERSION
                ctx = PolicyContext(file=file, dind_allowed=True, insecure_tls_allowed=True)
            timings["compose"] = time.perf_counter() - started - sum(timings.values())

            kustomize = start_kustomize(build_root)
            tool_error: ToolError | None = None
            try:
                if stack is not None:  # the schema, cross-field rules and secrets, meanwhile
                    raise_config(stack_problems(data, shown))
                    if composed.dispatcher_config is not None:
                        check_dispatcher_config(composed.dispatcher_config, stack.file)
                    raise_config(_stack_checks(stack, options.environ))
                    raise_config(source_problems)
                if options.validate:
                    try:
                        pending = warm_kubeconform(
                            version, ignore_missing_schemas=options.ignore_missing_schemas
                        )
                    except ToolError as exc:  # reported after kustomize's own errors
                        tool_error = exc
            except BaseException:
                kustomize.cancel()
                raise
            manifest = finish_kustomize(
                kustomize, build_root, file, stack_overlay=stack.overlay if stack else None
            )
            if tool_error is not None:
                raise tool_error
            timings["kustomize"] = time.perf_counter() - started - sum(timings.values())
        finally:
            cleanup = threading.Thread(
                target=shutil.rmtree, args=(workdir,), kwargs={"ignore_errors": True}, daemon=True
            )
            cleanup.start()

        if pending is not None:
            pending.validate(manifest)
        try:
            objects = yamlio.load_fast_all(manifest)
        except yaml.YAMLError as exc:  # kustomize output is always YAML; this is a bug
            raise BuildError(
                Problem(file, "", f"kustomize printed unreadable YAML: {exc}")
            ) from exc
        result = BuildResult(
            overlay=overlay_path,
            manifest=manifest,
            objects=objects,
            stack=stack,
            kubernetes_version=version,
            notices=notices,
            timings=timings,
        )
        if pending is not None:
            policy = policy_problems(objects, ctx)
            timings["policy"] = time.perf_counter() - started - sum(timings.values())
            problems, summary = kubeconform_result(pending, version, file)
            pending = None
            result.kubeconform_summary = summary
            timings["kubeconform"] = time.perf_counter() - started - sum(timings.values())
            raise_if(problems + policy)
    finally:
        if pending is not None:
            pending.cancel()
        if cleanup is not None:
            cleanup.join()
    if options.server_dry_run:
        problems, dry_notices = server_dry_run(objects, file)
        result.notices += dry_notices
        timings["server_dry_run"] = time.perf_counter() - started - sum(timings.values())
        raise_if(problems)
    return result


def _stack_checks(stack: Stack, environ: Mapping[str, str] | None) -> list[Problem]:
    from stackgen.checks import check_stack

    return check_stack(stack, environ=os.environ if environ is None else environ)


def raise_config(problems: list[Problem]) -> None:
    """Raise ConfigError for source-level problems."""
    if problems:
        raise ConfigError(problems)


def run_kustomize(root: Path, file: str, *, stack_overlay: Path | None = None) -> bytes:
    """``kustomize build`` one folder; failures become one-line BuildErrors."""
    return finish_kustomize(start_kustomize(root), root, file, stack_overlay=stack_overlay)


def start_kustomize(root: Path) -> tools.Running:
    """Start ``kustomize build`` of one folder in the background."""
    tool = tools.kustomize()
    if tool.notice:
        from stackgen.output import notice

        notice(tool.notice)
    return tools.start(tool, ["--load-restrictor", "LoadRestrictionsRootOnly", str(root)])


def finish_kustomize(
    running: tools.Running, root: Path, file: str, *, stack_overlay: Path | None = None
) -> bytes:
    """Wait for :func:`start_kustomize`; its failures become one-line BuildErrors."""
    proc = running.wait()
    if proc.returncode != 0:
        text = proc.stderr.decode("utf-8", "replace")
        raise BuildError(_kustomize_problems(text, root, file, stack_overlay))
    return proc.stdout


def _kustomize_problems(text: str, root: Path, file: str, overlay: Path | None) -> list[Problem]:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # kustomize prints "Error: <chain of causes>"; keep the error lines, not usage text.
    errors = [ln.removeprefix("Error: ") for ln in lines if ln.startswith("Error:")] or lines[-1:]
    problems = []
    for line in errors:
        # Map temp-tree paths back to the user's overlay so the message names real files.
        if overlay is not None:
            line = line.replace(str(root / "stack" / "overlay"), display_path(overlay))
        line = line.replace(str(root) + "/", "").replace(str(root), ".")
        problems.append(Problem(file, "", f"kustomize: {line}"))
    return problems or [Problem(file, "", "kustomize failed without a message")]


# ------------------------------------------------------------- literal-secret sources


def _user_sources(stack: Stack) -> list[Path]:
    """The user's own kustomize files that go into a stack."""
    paths: list[Path] = []
    for rel in [*stack.kustomize.resources, *stack.kustomize.components]:
        path = stack.overlay / rel
        paths += _kustomize_files(path)
    for patch in stack.kustomize.patches:
        if "path" in patch:
            paths.append(stack.overlay / patch["path"])
    return paths


def _kustomize_files(path: Path, first: Path | None = None) -> list[Path]:
    """A resource file, or a kustomization folder's files (recursively, inside it)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    out = [first] if first else []
    for candidate in sorted(path.rglob("*")):
        if candidate.suffix in (".yaml", ".yml") and candidate.is_file() and candidate != first:
            out.append(candidate)
    return out


def _source_secret_problems(paths: list[Path]) -> list[Problem]:
    problems: list[Problem] = []
    for path in paths:
        try:
            docs = list(yamlio.load_all(path.read_bytes()))
        except (OSError, yaml.YAMLError):
            continue  # kustomize reports unreadable files with its own words
        if path.name == "stack.yaml":
            continue
        problems += literal_secret_problems(path, docs, display_path(path))
    return problems


__all__ = ["BuildOptions", "BuildResult", "build"]
