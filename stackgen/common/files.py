"""Reading the user's files: YAML documents as one-line problems, paths as people see them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from stackgen.common import yamlio
from stackgen.common.errors import ConfigError, Problem


def display_path(path: Path) -> str:
    """Show a path relative to the working directory when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def unbounded_problem(file: str, field: str, exc: yamlio.UnboundedYamlError) -> Problem:
    """The one line for a YAML document :mod:`stackgen.common.yamlio` refuses to expand."""
    mark = exc.problem_mark
    where = f"line {mark.line + 1}: " if mark is not None else ""
    return Problem(file, field, f"invalid YAML: {where}{exc.problem}")


def read_yaml_file(path: Path) -> Any:
    """Read and parse a YAML file, turning every failure into a one-line ConfigError."""
    shown = display_path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(Problem(shown, "", "file not found")) from exc
    except IsADirectoryError as exc:
        raise ConfigError(Problem(shown, "", "is a folder, not a file")) from exc
    except PermissionError as exc:
        raise ConfigError(Problem(shown, "", "cannot read: permission denied")) from exc
    except OSError as exc:
        raise ConfigError(Problem(shown, "", f"cannot read: {exc.strerror}")) from exc
    try:
        return yamlio.load(text)
    except yamlio.DuplicateKeyError as exc:
        line = f"line {exc.mark.line + 1}: " if exc.mark else ""
        raise ConfigError(
            Problem(shown, "", f"invalid YAML: {line}duplicate key {exc.key!r}")
        ) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        raise ConfigError(Problem(shown, "", f"invalid YAML: {where}{exc.problem}")) from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(Problem(shown, "", "invalid YAML: not a readable YAML document")) from exc
