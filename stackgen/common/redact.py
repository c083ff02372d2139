"""Secret material scrubbed from what the tools say before stackgen prints it.

kustomize quotes the line it cannot read (an ``envs:`` file with an invalid UTF-8 byte:
the token, and its bytes as decimal numbers); another tool may quote a value too.
:class:`Secrets` collects what the build's secret files and variables hold; every
message that comes from a tool then passes through :meth:`Redactor.text`, which replaces
each value, each line and each ``KEY=value`` value of at least four characters (and the
same bytes spelled as numbers) by ``<redacted>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from stackgen.common.errors import Problem, StackgenError
from stackgen.common.files import UnsafeFile, read_regular

REDACTED = "<redacted>"
#: Shorter pieces are too common to hide without hiding the message.
MIN_LENGTH = 4
_SECRET_FILE_BYTES = 1024 * 1024
_BYTE_LIST = re.compile(r"\[(\d{1,3}(?: \d{1,3})+)\]")


def needles(blob: bytes) -> set[str]:
    """Every spelling of a secret file's content a message could carry."""
    found: set[str] = set()

    def add(raw: bytes) -> None:
        raw = raw.strip()
        if len(raw) < MIN_LENGTH:
            return
        text = raw.decode("utf-8", "replace")
        found.add(text)
        found.add(" ".join(str(b) for b in raw))  # Go's %v of a []byte, without brackets
        found.update(piece.strip() for piece in text.split("\ufffd"))

    add(blob)
    for line in blob.splitlines():
        add(line)
        if b"=" in line:
            add(line.split(b"=", 1)[1])
    return {n for n in found if len(n) >= MIN_LENGTH}


class Redactor:
    """Replaces secret material in text."""

    def __init__(self, blobs: Iterable[bytes]) -> None:
        self._blobs = [b for b in blobs if len(b.strip()) >= MIN_LENGTH]
        found: set[str] = set()
        for blob in self._blobs:
            found |= needles(blob)
        self._needles = sorted(found, key=len, reverse=True)

    def text(self, message: str) -> str:
        """``message`` with every secret spelling replaced."""
        if not self._needles:
            return message
        message = _BYTE_LIST.sub(self._byte_list, message)
        for needle in self._needles:
            message = message.replace(needle, REDACTED)
        return message

    def _byte_list(self, match: re.Match[str]) -> str:
        numbers = [int(n) for n in match.group(1).split()]
        if any(n > 255 for n in numbers):
            return match.group(0)
        raw = bytes(numbers)
        if any(needle.encode() in raw for needle in self._needles if needle.isascii()):
            return f"[{REDACTED}]"
        return match.group(0)

    def problems(self, problems: Iterable[Problem]) -> list[Problem]:
        """Problems with their messages scrubbed."""
        return [replace(p, message=self.text(p.message)) for p in problems]


@dataclass
class Secrets:
    """Where a build's secret material lives: files (read only if a message needs it), values."""

    files: list[Path] = field(default_factory=list)
    values: list[str] = field(default_factory=list)

    def redactor(self) -> Redactor:
        """Read the files now (bounded; unreadable ones were reported elsewhere)."""
        blobs = [v.encode() for v in self.values]
        for path in dict.fromkeys(self.files):
            try:
                blobs.append(read_regular(path.resolve(), _SECRET_FILE_BYTES))
            except (OSError, RuntimeError, UnsafeFile):
                continue
        return Redactor(blobs)

    def scrub(self, exc: StackgenError) -> None:
        """Scrub the messages of ``exc`` in place."""
        exc.problems = self.redactor().problems(exc.problems)
        exc.args = ("\n".join(str(p) for p in exc.problems),)
