"""``python -m tests.support.fake_buildkite``: serve a fake in its own process.

Prints the URL (one line) on stdout, then serves until SIGTERM/SIGINT; drive it through
its control API under ``/_fake/`` (:meth:`~.control.Control.admin`, or ``python -m
tests.support.fake_buildkite.ctl``).  Needs only the standard library and this package
(``tests/__init__.py``, ``tests/support/__init__.py`` and ``tests/support/fake_buildkite/``),
so it runs in a plain ``python:3`` container: ``--host 0.0.0.0 --port 8080
--advertise-url http://SERVICE:8080 --token-file /secrets/token``.  The token is never
printed.
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


def _secret(parser: argparse.ArgumentParser, option: str, path: str) -> str:
    """A token read from a file (stripped); a usage error names the file, never the value."""
    try:
        with open(path, encoding="utf-8") as handle:
            value = handle.read().strip()
    except OSError as err:
        parser.error(f"{option} {path}: {err.strerror}")
    if not value:
        parser.error(f"{option} {path}: the file is empty")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a fake until SIGTERM/SIGINT; print its URL (one line) on stdout first."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.fake_buildkite",
        description="Serve a fake Buildkite (agent API, Stacks API, metrics; test support).",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (0.0.0.0 inside a container)"
    )
    parser.add_argument("--port", type=int, default=0, help="port to bind (0: ephemeral)")
    parser.add_argument(
        "--advertise-url",
        default=None,
        metavar="URL",
        help="base URL agents are told to use (e.g. http://fake-buildkite.NS.svc:8080)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("FAKE_BUILDKITE_TOKEN"),
        help="the valid agent (registration) token (default: $FAKE_BUILDKITE_TOKEN)",
    )
    parser.add_argument(
        "--token-file", default=None, metavar="PATH", help="read the token from this file"
    )
    parser.add_argument(
        "--webhook-url",
        default=None,
        metavar="URL",
        help="post a signed job.scheduled webhook here for every enqueued job",
    )
    parser.add_argument(
        "--webhook-secret-file",
        default=None,
        metavar="PATH",
        help="the webhook signing key (X-Buildkite-Signature; without it: unsigned)",
    )
    parser.add_argument("--ping-interval", type=int, default=1, metavar="SECONDS")
    parser.add_argument("--job-status-interval", type=int, default=1, metavar="SECONDS")
    parser.add_argument("--heartbeat-interval", type=int, default=10, metavar="SECONDS")
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
    if args.token_file:
        args.token = _secret(parser, "--token-file", args.token_file)
    webhook_secret = None
    if args.webhook_secret_file:
        webhook_secret = _secret(parser, "--webhook-secret-file", args.webhook_secret_file)
    if not args.token:
        parser.error("--token, --token-file or FAKE_BUILDKITE_TOKEN is required")
    for name in ("ping_interval", "job_status_interval", "heartbeat_interval"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")

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
        host=args.host,
        port=args.port,
        advertise_url=args.advertise_url,
        enforce_rate_limits=not args.no_rate_limits,
        ping_interval=args.ping_interval,
        job_status_interval=args.job_status_interval,
        heartbeat_interval=args.heartbeat_interval,
        webhook_url=args.webhook_url,
        webhook_secret=webhook_secret,
    )
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
