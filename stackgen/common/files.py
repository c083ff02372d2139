"""Reading the user's files: YAML documents as one-line problems, paths as people see them.

A file is read only once it is known to be a regular file (:func:`read_regular`: never a
named pipe or a device, never more than a bound), so a hostile path cannot hang the build
or fill a disk.
"""

from __future__ import annotations

import errno
import os
import stat
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


#: The most stackgen reads of one file: far above any real overlay file.
MAX_FILE_BYTES = 32 * 1024 * 1024


class UnsafeFile(Exception):
    """A file that is not read: ``reason`` completes ``<path>: <reason>``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def not_regular(mode: int) -> str:
    """The one-line reason a folder or a special file is refused."""
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    return f"is {kind_of(mode)}, not a regular file: stackgen reads only regular files"


def identity(info: os.stat_result) -> tuple[int, int]:
    """A file's ``(st_dev, st_ino)``: the same file, whatever path reaches it."""
    return (info.st_dev, info.st_ino)


def is_inside(root: Path, path: Path) -> bool:
    """Whether ``path`` (already resolved) is ``root`` (resolved) or below it."""
    return path == root or root in path.parents


def resolve_inside(root: Path, path: Path) -> Path:
    """``path`` with every link resolved; it must stay inside ``root``.

    Raises:
        UnsafeFile: it leaves ``root``, or it cannot be resolved (a loop).

    """
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as exc:
        raise UnsafeFile("cannot be resolved (a loop of symbolic links?)") from exc
    if not is_inside(root.resolve(), resolved):
        raise UnsafeFile("leads outside the overlay folder: stackgen reads nothing outside it")
    return resolved


def read_regular(
    path: Path, limit: int = MAX_FILE_BYTES, *, expect: tuple[int, int] | None = None
) -> bytes:
    """Read a regular file (a final link is refused: resolve first) of at most ``limit`` bytes.

    ``expect``: the ``(st_dev, st_ino)`` a scan saw; another file there is refused.

    Raises:
        UnsafeFile: not a regular file, too large, or unreadable (``reason`` says which).
        FileNotFoundError: nothing there.

    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile("is a symbolic link where a file was checked") from exc
        if exc.errno == errno.EACCES or exc.errno == errno.EPERM:
            raise UnsafeFile("cannot read: permission denied") from exc
        if exc.errno in (errno.ENXIO, errno.EISDIR):
            mode = os.lstat(path).st_mode
            raise UnsafeFile(not_regular(mode)) from exc
        raise UnsafeFile(f"cannot read: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFile(not_regular(info.st_mode))
        if expect is not None and identity(info) != expect:
            raise UnsafeFile("changed while stackgen read it")
        if info.st_size > limit:
            raise UnsafeFile(f"is larger than {size_text(limit)}: not an overlay file")
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1024 * 1024, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise UnsafeFile(f"is larger than {size_text(limit)}: not an overlay file")
        return b"".join(chunks)
    except OSError as exc:
        raise UnsafeFile(f"cannot read: {exc.strerror}") from exc
    finally:
        os.close(fd)


def read_inside(root: Path, path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """:func:`read_regular` of ``path`` once it is known to resolve inside ``root``."""
    return read_regular(resolve_inside(root, path), limit)


def size_text(limit: int) -> str:
    """A byte count as people read it (``1 MiB``)."""
    return f"{limit // (1024 * 1024)} MiB" if limit >= 1024 * 1024 else f"{limit} bytes"


def unbounded_problem(file: str, field: str, exc: yamlio.UnboundedYamlError) -> Problem:
    """The one line for a YAML document :mod:`stackgen.common.yamlio` refuses to expand."""
    mark = exc.problem_mark
    where = f"line {mark.line + 1}: " if mark is not None else ""
    return Problem(file, field, f"invalid YAML: {where}{exc.problem}")


def read_yaml_file(path: Path) -> Any:
    """Read and parse a YAML file, turning every failure into a one-line ConfigError."""
    shown = display_path(path)
    try:
        text = read_regular(path.resolve())
    except FileNotFoundError as exc:
        raise ConfigError(Problem(shown, "", "file not found")) from exc
    except UnsafeFile as exc:
        raise ConfigError(Problem(shown, "", exc.reason)) from exc
    except (OSError, RuntimeError) as exc:  # resolve(): a loop of links
        raise ConfigError(Problem(shown, "", "cannot be resolved")) from exc
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
