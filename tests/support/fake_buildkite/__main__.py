"""``python -m tests.support.fake_buildkite``: serve a fake in its own process.

Prints the URL (one line) on stdout, then serves until SIGTERM/SIGINT; drive it through
its control API under ``/_fake/`` (:meth:`~.control.Control.admin`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from tests.support.fake_buildkite.server import FakeBuildkite


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a fake until SIGTERM/SIGINT; print its URL (one line) on stdout first."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.fake_buildkite",
        description="Serve a fake Buildkite agent API on 127.0.0.1 (test support).",
    )
    parser.add_argument("--port", type=int, default=0, help="port to bind (0: ephemeral)")
    parser.add_argument(
        "--host",
        default=os.environ.get("FAKE_BUILDKITE_HOST", "127.0.0.1"),
        help="address to bind (default: $FAKE_BUILDKITE_HOST, else 127.0.0.1; a pod: 0.0.0.0)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("FAKE_BUILDKITE_TOKEN"),
        help="the valid agent token (default: $FAKE_BUILDKITE_TOKEN)",
    )
    parser.add_argument("--organization-slug", default="acme")
    parser.add_argument("--cluster-uuid", default=None)
    parser.add_argument("--cluster-name", default="Default")
    parser.add_argument(
        "--queue", dest="queues", action="append", default=None, help="a queue (repeatable)"
    )
    parser.add_argument(
        "--jobs", action="append", default=[], metavar="QUEUE=N", help="seed N scheduled jobs"
    )
    parser.add_argument("--poll-duration", type=int, default=10)
    parser.add_argument("--no-rate-limits", action="store_true")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("--token (or FAKE_BUILDKITE_TOKEN) is required")

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    fake = FakeBuildkite(
        args.token,
        organization_slug=args.organization_slug,
        cluster_uuid=args.cluster_uuid,
        cluster_name=args.cluster_name,
        queues=args.queues or ("default",),
        default_queue=(args.queues or ["default"])[0],
        poll_duration_seconds=args.poll_duration,
        port=args.port,
        enforce_rate_limits=not args.no_rate_limits,
    )
    fake.bind_host = args.host
    for spec in args.jobs:
        queue, sep, count = spec.partition("=")
        if not sep or not count.isdigit():
            parser.error(f"--jobs expects QUEUE=N, got {spec!r}")
        fake.add_jobs(queue, int(count))
    with fake:
        print(fake.url, flush=True)
        while not stop.wait(0.2):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
