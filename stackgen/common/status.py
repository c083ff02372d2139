"""Process exit codes, in one place."""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """What ``stackgen`` returns to the shell."""

    OK = 0
    #: The input is wrong: config, secrets, kustomize, kubeconform or policy.
    INVALID = 1
    #: Bad command line (click's own convention).
    USAGE = 2
    #: A required tool is missing or broken (kustomize, kubeconform, kubectl).
    TOOLING = 3
    #: A bug in stackgen: please report it with ``--debug`` output.
    INTERNAL = 70
