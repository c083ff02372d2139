"""``python -m tests.support.fake_buildkite.ctl``: drive a running fake from a shell.

What ``bin/sandbox`` runs inside the sandbox's fake pod (``kubectl exec``), against the fake
on ``http://127.0.0.1:8080`` (``--url`` or ``$FAKE_BUILDKITE_URL`` for another one). It only
speaks the fake's control API under ``/_fake/`` (:meth:`.control.Control.admin`)::

    enqueue --queue Q [--wait] [--timeout S] [--env K=V]... -- COMMAND...
    jobs [--queue Q] [--state S]
    log UUID
    agents
    cancel UUID
    api METHOD PATH [JSON]       (one control call, its JSON answer: for scripts and tests)

``enqueue`` prints the new job's UUID; with ``--wait`` it then waits until the job ends,
prints its state and exit status and exits with the job's exit status (1 when the job ended
without one, 2 on a timeout).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from tests.support.fake_buildkite.client import http_request
from tests.support.fake_buildkite.wire import TERMINAL_STATES

DEFAULT_URL = "http://127.0.0.1:8080"


class CtlError(Exception):
    """A control call failed (the message says which and why)."""


def _transport_errors() -> tuple[type[Exception], ...]:
    """What the HTTP client raises when the fake cannot be reached (httpx's, or urllib's)."""
    try:
        import httpx
    except ImportError:
        return (OSError,)
    return (OSError, httpx.TransportError)


def call(url: str, method: str, path: str, body: Any = None) -> Any:
    """One control call (``/_fake/...``); the decoded JSON answer, or CtlError."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    try:
        resp = http_request(method, url.rstrip("/") + "/_fake/" + path, headers=headers, body=data)
    except _transport_errors() as err:
        raise CtlError(f"cannot reach the fake Buildkite at {url}: {err}") from None
    if resp.status >= 400:
        try:
            message = resp.json().get("message", "")
        except ValueError:
            message = resp.body.decode(errors="replace")[:200]
        raise CtlError(f"{method} /_fake/{path}: HTTP {resp.status} {message}".rstrip())
    return resp.json() if resp.body else {}


def _env_pairs(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CtlError(f"--env expects KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def enqueue(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise CtlError("enqueue needs a command after --")
    fields: dict[str, Any] = {"command": " ".join(command), "label": args.label}
    env = _env_pairs(args.env)
    if env:
        fields["env"] = env
    uuids = call(args.url, "POST", "jobs", {"queue": args.queue, "fields": fields})["uuids"]
    uuid = uuids[0]
    print(uuid, flush=True)
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while True:
        job = call(args.url, "GET", f"jobs/{uuid}")
        if job["state"] in TERMINAL_STATES:
            break
        if time.monotonic() > deadline:
            print(f"timed out after {args.timeout:.0f}s: job {uuid} is {job['state']}")
            return 2
        time.sleep(args.interval)
    status = job.get("exit_status")
    print(f"{job['state']} exit_status={'-' if status is None else status}")
    if status is None:
        return 1
    return int(status) if 0 <= int(status) < 256 else 1


def jobs(args: argparse.Namespace) -> int:
    query = "&".join(
        f"{key}={value}" for key, value in (("queue", args.queue), ("state", args.state)) if value
    )
    items = call(args.url, "GET", "jobs" + (f"?{query}" if query else ""))["jobs"]
    print(f"{'UUID':36}  {'QUEUE':12}  {'STATE':10}  {'EXIT':>4}  COMMAND")
    for job in items:
        status = job.get("exit_status")
        print(
            f"{job['uuid']:36}  {job['queue']:12}  {job['state']:10}  "
            f"{'-' if status is None else status:>4}  {job['command']}"
        )
    return 0


def log(args: argparse.Namespace) -> int:
    answer = call(args.url, "GET", f"jobs/{args.uuid}/log")
    sys.stdout.write(answer.get("log", ""))
    return 0


def agents(args: argparse.Namespace) -> int:
    items = call(args.url, "GET", "agents")["agents"]
    print(f"{'NAME':40}  {'STATE':12}  {'JOB':36}  TAGS")
    for agent in items:
        print(
            f"{agent.get('name', ''):40}  {agent.get('state', ''):12}  "
            f"{agent.get('job') or '-':36}  {','.join(agent.get('meta_data') or [])}"
        )
    return 0


def cancel(args: argparse.Namespace) -> int:
    job = call(args.url, "PUT", f"jobs/{args.uuid}", {"state": "canceled"})
    print(f"{job['uuid']} {job['state']}")
    return 0


def api(args: argparse.Namespace) -> int:
    body = json.loads(args.body) if args.body else None
    print(json.dumps(call(args.url, args.method.upper(), args.path.lstrip("/"), body)))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m tests.support.fake_buildkite.ctl",
        description="Drive a running fake Buildkite through its control API (test support).",
    )
    top.add_argument(
        "--url",
        default=os.environ.get("FAKE_BUILDKITE_URL", DEFAULT_URL),
        help=f"the fake's URL (default: $FAKE_BUILDKITE_URL, else {DEFAULT_URL})",
    )
    sub = top.add_subparsers(dest="action", required=True)
    p = sub.add_parser("enqueue", help="add a scheduled job running COMMAND on queue Q")
    p.add_argument("--queue", required=True)
    p.add_argument("--wait", action="store_true", help="wait until the job ends")
    p.add_argument("--timeout", type=float, default=600, help="with --wait (default 600s)")
    p.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)
    p.add_argument("--label", default=":sandbox: sandbox job")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    p.set_defaults(run=enqueue)
    p = sub.add_parser("jobs", help="list the jobs")
    p.add_argument("--queue")
    p.add_argument("--state")
    p.set_defaults(run=jobs)
    p = sub.add_parser("log", help="print a job's log")
    p.add_argument("uuid")
    p.set_defaults(run=log)
    p = sub.add_parser("agents", help="list the agents that registered")
    p.set_defaults(run=agents)
    p = sub.add_parser("cancel", help="cancel a job")
    p.add_argument("uuid")
    p.set_defaults(run=cancel)
    p = sub.add_parser("api", help="one control call, its JSON answer on stdout (for scripts)")
    p.add_argument("method", choices=["GET", "POST", "PUT", "get", "post", "put"])
    p.add_argument("path", help="under /_fake/, e.g. jobs/UUID")
    p.add_argument("body", nargs="?", default=None, help="a JSON body")
    p.set_defaults(run=api)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result: int = args.run(args)
    except CtlError as err:
        print(f"fake-buildkite ctl: {err}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
