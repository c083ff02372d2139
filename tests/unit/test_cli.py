"""Every command through click's CliRunner (in-process) and the real console script."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from stackgen.cli import cli
from stackgen.common.resources import load_schema
from stackgen.stack.load import load_stack
from tests.support.cli import Run

COMMANDS = ["build", "apply", "delete", "validate", "init", "render", "schema"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_an_example(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output
    assert f"stackgen {command}" in result.output


def test_top_level_help_and_version() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output
    assert CliRunner().invoke(cli, ["--version"]).output.startswith("stackgen, version ")


def test_schema_command_prints_the_schemas() -> None:
    stack = CliRunner().invoke(cli, ["schema"])
    assert json.loads(stack.output) == load_schema("stack")
    dispatcher = CliRunner().invoke(cli, ["schema", "--dispatcher"])
    assert json.loads(dispatcher.output)["title"] == "stackgen DispatcherConfig"


def test_validate_summary_and_exit_codes(stackgen: Callable[..., Run], tmp_path: Path) -> None:
    ok = stackgen("validate", "overlays/example", "tests/golden/plain-kustomize/overlay")
    assert ok.code == 0, ok.stderr
    lines = ok.stdout.decode().splitlines()
    assert lines[0].startswith("ok   overlays/example (33 objects, Kubernetes 1.33.0")
    assert lines[-1] == "2 overlays: 2 valid, 0 invalid"
    bad = stackgen("validate", "overlays/example", str(tmp_path / "missing"))
    assert bad.code == 1
    assert bad.stdout.decode().splitlines()[-1] == "2 overlays: 1 valid, 1 invalid"
    assert "missing: no such overlay folder" in bad.stderr


def test_validate_json(stackgen: Callable[..., Run], tmp_path: Path) -> None:
    run = stackgen("validate", "--output", "json", "overlays/example", str(tmp_path / "missing"))
    assert run.code == 1
    report = json.loads(run.stdout)
    assert report["valid"] == 1 and report["invalid"] == 1
    good, bad = report["overlays"]
    assert good["valid"] is True and good["objects"] == 33
    assert good["kubeconform"]["invalid"] == 0
    assert bad["problems"][0]["message"] == "no such overlay folder"
    assert run.stderr == ""  # json mode: everything is in the report


def test_validate_other_kubernetes_version(stackgen: Callable[..., Run], tmp_path: Path) -> None:
    from stackgen.validation import kubeschemas
    from tests.support.paths import ROOT

    schemas = tmp_path / "schemas"
    # The 1.33 folder is reused; only 1.32 is converted into this private folder.
    (schemas).mkdir()
    (schemas / kubeschemas.version_dir_name("1.33.0")).symlink_to(
        ROOT / ".tools" / "schemas" / kubeschemas.version_dir_name("1.33.0")
    )
    run = stackgen(
        "validate",
        "--kubernetes-version",
        "1.32",
        "overlays/example",
        # A private cache too: a 1.32 conversion left in the user's cache by an earlier
        # run would be found there, and nothing would be converted.
        env={"STACKGEN_SCHEMA_DIR": str(schemas), "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    assert run.code == 0, run.stderr
    assert "Kubernetes 1.32.0" in run.stdout.decode()
    assert "converted" in run.stderr  # a notice, once
    assert kubeschemas.is_complete(schemas, "1.32.0")


def test_bad_kubernetes_version_flag() -> None:
    result = CliRunner().invoke(
        cli, ["build", "overlays/example", "--kubernetes-version", "latest"]
    )
    assert result.exit_code == 2
    assert "must look like 1.33.0" in result.output


def test_init_scaffolds_a_stack_that_builds_once_the_token_is_in(
    stackgen: Callable[..., Run], tmp_path: Path
) -> None:
    overlay = tmp_path / "my-stack"
    run = stackgen("init", str(overlay), "--queue", "linux:hpa", "--queue", "deploy:exact")
    assert run.code == 0, run.stderr
    assert (overlay / ".gitignore").read_text().strip().endswith("/secrets/")
    assert oct((overlay / "secrets" / "agent-token").stat().st_mode & 0o777) == "0o600"
    assert (overlay / "secrets" / "metrics-adapter" / "tls.crt").is_file()
    (overlay / "secrets" / "agent-token").write_text("a-real-token-now\n")
    stack = load_stack(overlay)
    assert [(q.name, q.mode) for q in stack.queues] == [("linux", "hpa"), ("deploy", "exact")]
    assert stack.namespace == "my-stack"
    built = stackgen("build", str(overlay))
    assert built.code == 0, built.stderr
    assert b"kind: HorizontalPodAutoscaler" in built.stdout


def test_init_refuses_non_empty_folder_and_bad_names(
    stackgen: Callable[..., Run], tmp_path: Path
) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    run = stackgen("init", str(tmp_path / "taken"))
    assert run.code == 1 and "exists and is not empty" in run.stderr
    bad = stackgen("init", str(tmp_path / "ok"), "--namespace", "Not_A_Label")
    assert bad.code == 1 and "--namespace: 'Not_A_Label' is not a DNS label" in bad.stderr
    queue = stackgen("init", str(tmp_path / "ok2"), "--queue", "x:fast")
    assert queue.code == 2 and "want NAME or NAME:MODE" in queue.stderr


def test_build_stdout_is_only_yaml(stackgen: Callable[..., Run]) -> None:
    run = stackgen("build", "overlays/example")
    assert run.stdout.startswith(b"apiVersion: v1\nkind: Namespace\n")


def test_reference_doc_is_in_sync_with_the_schema() -> None:
    from stackgen.stack.reference import render_reference
    from tests.support.paths import ROOT

    committed = (ROOT / "docs" / "stack-reference.md").read_text()
    assert committed == render_reference(), (
        "docs/stack-reference.md is stale: stackgen schema --markdown > docs/stack-reference.md"
    )


# ------------------------------------------------------ the [dispatcher] extra is missing


def _without(module: str, *argv: str, env: dict[str, str] | None = None) -> Run:
    """Run the CLI in a fresh process where importing ``module`` fails (extra not installed)."""
    import os
    import subprocess
    import sys

    code = (
        f"import sys; sys.modules[{module!r}] = None; sys.argv = ['stackgen', *{list(argv)!r}]; "
        "from stackgen.cli import main; main()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace"))


@pytest.mark.parametrize("module", ["kubernetes", "httpx", "structlog"])
@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("dispatcher", ("dispatcher", "--config", "dispatcher.yaml")),
        ("metrics-adapter", ("metrics-adapter",)),
        ("git-mirror refresh", ("git-mirror", "refresh", "--config", "d.yaml", "--mirror", "m")),
    ],
)
def test_missing_dispatcher_extra_says_what_to_install(
    module: str, command: str, argv: tuple[str, ...]
) -> None:
    run = _without(module, *argv, env={"BUILDKITE_AGENT_TOKEN": "tok-123-abc"})
    assert run.code == 1, run.stderr
    assert run.stdout == b""
    assert run.lines == [
        f"stackgen {command}: needs the [dispatcher] extra (Python module {module!r} is not "
        "installed): pip install 'stackgen[dispatcher]'"
    ]


def test_missing_extra_with_debug_shows_the_import_error() -> None:
    run = _without("kubernetes", "--debug", "dispatcher", "--config", "dispatcher.yaml")
    assert run.code != 0
    assert "ModuleNotFoundError" in run.stderr


def test_an_unrelated_missing_module_is_still_an_internal_error(tmp_path: Path) -> None:
    config = tmp_path / "dispatcher.yaml"
    config.write_text("{}\n")
    run = _without("stackgen.dispatcher.config", "dispatcher", "--config", str(config))
    assert run.code == 70, run.stderr
    assert "internal error" in run.stderr


# --------------------------------------------------------------------- shell completion


def _complete(shell_var: str, env: dict[str, str] | None = None) -> Run:
    """The installed console script with click's completion variable set."""
    import os
    import subprocess
    import sys

    script = Path(sys.executable).parent / "stackgen"
    proc = subprocess.run(
        [str(script)],
        capture_output=True,
        env={**os.environ, "_STACKGEN_COMPLETE": shell_var, **(env or {})},
        timeout=60,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace"))


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", b"complete -o nosort -F _stackgen_completion stackgen"),
        ("zsh", b"compdef _stackgen_completion stackgen"),
        ("fish", b"complete --no-files --command stackgen"),
    ],
)
def test_shell_completion_script(shell: str, marker: bytes) -> None:
    run = _complete(f"{shell}_source")
    assert run.code == 0, run.stderr
    assert marker in run.stdout


def test_shell_completion_completes_commands_and_options() -> None:
    commands = _complete("bash_complete", {"COMP_WORDS": "stackgen bu", "COMP_CWORD": "1"})
    assert commands.code == 0, commands.stderr
    assert b"plain,build" in commands.stdout.splitlines()
    policies = _complete(
        "bash_complete", {"COMP_WORDS": "stackgen build --policy ", "COMP_CWORD": "3"}
    )
    assert set(policies.stdout.splitlines()) >= {b"plain,stack", b"plain,none"}


def test_readme_documents_shell_completion() -> None:
    """The README's completion lines are the ones click answers (tested above)."""
    from tests.support.paths import ROOT

    readme = (ROOT / "README.md").read_text()
    for shell in ("bash", "zsh", "fish"):
        assert f"_STACKGEN_COMPLETE={shell}_source stackgen" in readme
