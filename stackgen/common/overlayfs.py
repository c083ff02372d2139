"""The user's overlay, read without ever leaving it.

Every path is checked before a byte is read: its type comes from ``lstat`` (a link is
never taken for what it points at), a link must resolve inside the folder being read,
and only regular files and folders are read or copied.  A named pipe, a socket or a
device is refused instead of read (reading one hangs, or never ends), and so is a link
that leaves the folder, even one nothing uses.  Files are opened with ``O_NOFOLLOW`` and
``O_NONBLOCK``, checked again with ``fstat`` on the open descriptor, and read up to a
bound, so what was checked is what is read.

:func:`scan` lists a folder (links inside it followed, loops refused); :func:`copy`
writes a listing elsewhere from checked data, each file read with
:func:`stackgen.common.files.read_regular`.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from stackgen.common.errors import ConfigError, Problem
from stackgen.common.files import (
    MAX_FILE_BYTES,
    UnsafeFile,
    display_path,
    identity,
    not_regular,
    read_regular,
    resolve_inside,
    size_text,
)

#: Folders never read nor copied.
IGNORED = frozenset({".git", "__pycache__"})
#: All of an overlay: far above any real overlay, far below a full disk.
MAX_TOTAL_BYTES = 256 * 1024 * 1024
MAX_ENTRIES = 20_000


@dataclass
class Listing:
    """What :func:`scan` found: folders and regular files, by path relative to the root."""

    root: Path
    dirs: list[PurePosixPath] = field(default_factory=list)
    #: relative path -> (real path, (st_dev, st_ino)) of the regular file it reads
    files: dict[PurePosixPath, tuple[Path, tuple[int, int]]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    total_bytes: int = 0

    def check(self) -> Listing:
        """Raise ConfigError with every problem found, or return the listing."""
        if self.problems:
            raise ConfigError(self.problems)
        return self


def scan(root: Path) -> Listing:
    """List ``root``: regular files and folders, links inside it followed, nothing else.

    Links that lead nowhere are left out (the reader of such a file reports it missing).
    """
    real_root = root.resolve()
    listing = Listing(root=root)
    _walk(listing, real_root, real_root, PurePosixPath(), {identity(os.stat(real_root))})
    return listing


def _walk(
    listing: Listing,
    real_root: Path,
    folder: Path,
    rel: PurePosixPath,
    chain: set[tuple[int, int]],
) -> None:
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        listing.problems.append(_problem(listing, rel, f"cannot read: {exc.strerror}"))
        return
    for name in names:
        if name in IGNORED:
            continue
        if len(listing.dirs) + len(listing.files) >= MAX_ENTRIES:
            listing.problems.append(
                _problem(listing, PurePosixPath(), f"holds more than {MAX_ENTRIES} files")
            )
            return
        _entry(listing, real_root, folder / name, rel / name, chain)


def _entry(
    listing: Listing,
    real_root: Path,
    path: Path,
    rel: PurePosixPath,
    chain: set[tuple[int, int]],
) -> None:
    try:
        info = os.lstat(path)
    except OSError as exc:
        listing.problems.append(_problem(listing, rel, f"cannot read: {exc.strerror}"))
        return
    real = path
    if stat.S_ISLNK(info.st_mode):
        if not os.path.exists(path):
            return  # leads nowhere: nothing to read or copy
        try:
            real = resolve_inside(real_root, path)
        except UnsafeFile as exc:
            listing.problems.append(_problem(listing, rel, f"is a symbolic link that {exc.reason}"))
            return
        info = os.stat(real)
    if stat.S_ISDIR(info.st_mode):
        folder = identity(info)
        if folder in chain:
            listing.problems.append(
                _problem(listing, rel, "is a symbolic link to a folder that holds it (a loop)")
            )
            return
        listing.dirs.append(rel)
        _walk(listing, real_root, real, rel, chain | {folder})
    elif stat.S_ISREG(info.st_mode):
        listing.total_bytes += info.st_size
        if info.st_size > MAX_FILE_BYTES or listing.total_bytes > MAX_TOTAL_BYTES:
            limit = MAX_FILE_BYTES if info.st_size > MAX_FILE_BYTES else MAX_TOTAL_BYTES
            listing.problems.append(
                _problem(
                    listing, rel, f"is too large (over {size_text(limit)}): not an overlay file"
                )
            )
            return
        listing.files[rel] = (real, identity(info))
    else:
        listing.problems.append(_problem(listing, rel, not_regular(info.st_mode)))


def _problem(listing: Listing, rel: PurePosixPath, message: str) -> Problem:
    return Problem(display_path(listing.root / rel), "", message)


def copy(listing: Listing, dest: Path) -> None:
    """Write a checked listing into ``dest`` (created): folders 0700, files 0600.

    Each file is read again through :func:`read_regular`, and must still be the file
    that was scanned.
    """
    dest.mkdir(mode=0o700)
    for rel in listing.dirs:
        (dest / rel).mkdir(mode=0o700)
    for rel, (real, seen) in listing.files.items():
        shown = display_path(listing.root / rel)
        try:
            data = read_regular(real, expect=seen)
        except UnsafeFile as exc:
            raise ConfigError(Problem(shown, "", exc.reason)) from exc
        except FileNotFoundError as exc:
            raise ConfigError(Problem(shown, "", "disappeared while stackgen read it")) from exc
        target = dest / rel
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
