"""Talk to a running fake Buildkite over its control API (``/_fake/``): client and CLI.

:class:`FakeControl` is what tests and tools use against a fake in another process (or in
a cluster: it needs only the standard library and this package)::

    bk = FakeControl("http://127.0.0.1:8080")
    uuid = bk.enqueue("default", "echo hello")
    job = bk.wait(uuid)           # finished, canceled, …
    print(job["exit_status"], bk.log(uuid))

and ``python -m tests.support.fake_buildkite.ctl`` is the same from a shell (``--url``
or ``$FAKE_BUILDKITE_URL``)::

    ctl enqueue --queue default --command 'echo hello' --wait   # prints the log;
                                                                # exits with the job's status
    ctl jobs [--queue Q] [--state S]      ctl job UUID      ctl log UUID [--raw]
    ctl wait UUID [--timeout S]           ctl cancel UUID   ctl agents

Logs print without the agent's inline timestamps and colours unless ``--raw``.

Exit status: 0, or the job's exit status for ``enqueue --wait``/``wait`` (1 when it has
none, e.g. cancelled before it ran), 1 when the fake answers an error (one line on
stderr), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

from tests.support.fake_buildkite.wire import TERMINAL_STATES

DEFAULT_URL = "http://127.0.0.1:8080"


class FakeControlError(Exception):
    """The fake answered an error (or could not be reached)."""


class FakeControl:
    """A small client of a running fake's control API (standard library only)."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        """``url``: the fake's base URL (``http://HOST:PORT``, without ``/v3``)."""
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}/_fake/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            with err:
                raw = err.read()
            try:
                message = json.loads(raw).get("message", "")
            except (ValueError, AttributeError):
                message = raw[:200].decode("utf-8", "replace")
            raise FakeControlError(f"{method} /_fake/{path}: {err.code} {message}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise FakeControlError(f"cannot reach the fake at {self.url}: {reason}") from None

    def enqueue(
        self,
        queue: str,
        command: str,
        *,
        env: Mapping[str, str] | None = None,
        plugins: Sequence[Mapping[str, Any]] | None = None,
        repository: str | None = None,
        label: str | None = None,
    ) -> str:
        """Schedule a job that an agent on ``queue`` will run; returns its UUID.

        Without a ``repository`` the agent skips the checkout.
        """
        body: dict[str, Any] = {"queue": queue, "command": command, "env": dict(env or {})}
        if plugins is not None:
            body["plugins"] = list(plugins)
        if repository:
            body["repository"] = repository
        if label is not None:
            body["label"] = label
        return str(self._call("POST", "enqueue", body)["uuid"])

    def job(self, uuid: str) -> dict[str, Any]:
        """The job as the fake records it (state, agent, times, exit status, env, …)."""
        result: dict[str, Any] = self._call("GET", f"jobs/{quote(uuid)}")
        return result

    def jobs(self, queue: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        """Every job (optionally of one queue / in one state), oldest first."""
        query = urlencode({k: v for k, v in (("queue", queue), ("state", state)) if v})
        return list(self._call("GET", "jobs" + (f"?{query}" if query else ""))["jobs"])

    def log(self, uuid: str, *, plain: bool = False) -> str:
        """The job's log as its agent uploaded it (``plain``: without timestamps, colours)."""
        query = "?plain=1" if plain else ""
        return str(self._call("GET", f"jobs/{quote(uuid)}/log{query}")["log"])

    def meta_data(self, uuid: str) -> dict[str, str]:
        """The meta-data of the job's build."""
        return dict(self._call("GET", f"jobs/{quote(uuid)}/meta-data")["meta_data"])

    def webhooks(self) -> list[dict[str, Any]]:
        """The ``job.scheduled`` webhooks enqueue sent (job, time, answer status)."""
        return list(self._call("GET", "webhooks")["webhooks"])

    def cancel(self, uuid: str) -> str:
        """Cancel the job; returns its new state (``canceling`` while its agent stops it)."""
        return str(self._call("POST", f"jobs/{quote(uuid)}/cancel")["state"])

    def agents(self) -> list[dict[str, Any]]:
        """The agents that registered (no tokens)."""
        return list(self._call("GET", "agents")["agents"])

    def disconnect_agent(self, uuid: str) -> None:
        """Tell the agent (by its UUID) to disconnect at its next ping."""
        self._call("POST", f"agents/{quote(uuid)}/disconnect")

    def wait(self, uuid: str, timeout: float = 300.0, poll: float = 0.25) -> dict[str, Any]:
        """Wait until the job ended (finished, canceled, …); returns it.

        Raises TimeoutError (naming the job's last state) when it does not end in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(uuid)
            if job["state"] in TERMINAL_STATES:
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {uuid} still {job['state']} after {timeout:g}s")
            time.sleep(poll)


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.fake_buildkite.ctl",
        description="Drive a running fake Buildkite (jobs for real agents, their logs).",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("FAKE_BUILDKITE_URL", DEFAULT_URL),
        help=f"the fake's base URL (default: $FAKE_BUILDKITE_URL or {DEFAULT_URL})",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    enq = sub.add_parser("enqueue", help="schedule a job; prints its UUID")
    enq.add_argument("--queue", default="default")
    enq.add_argument("--command", dest="job_command", required=True, metavar="COMMAND")
    enq.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    enq.add_argument("--plugins", default=None, metavar="JSON", help="BUILDKITE_PLUGINS")
    enq.add_argument("--repository", default=None, help="BUILDKITE_REPO (default: no checkout)")
    enq.add_argument("--label", default=None)
    enq.add_argument("--wait", action="store_true", help="wait, print the log, exit with it")
    enq.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS")
    jobs = sub.add_parser("jobs", help="list jobs (one line each)")
    jobs.add_argument("--queue", default=None)
    jobs.add_argument("--state", default=None)
    for name, text in (
        ("job", "show one job (JSON)"),
        ("log", "print a job's log"),
        ("cancel", "cancel a job"),
        ("wait", "wait for a job to end; print its log, exit with its status"),
    ):
        one = sub.add_parser(name, help=text)
        one.add_argument("uuid")
        if name == "wait":
            one.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS")
        if name in ("log", "wait"):
            one.add_argument("--raw", action="store_true", help="keep timestamps and colours")
    enq.add_argument("--raw", action="store_true", help="keep timestamps and colours")
    sub.add_parser("agents", help="list the agents that registered (one line each)")
    return parser


def _env_pairs(parser: argparse.ArgumentParser, pairs: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            parser.error(f"--env expects KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def _finished(bk: FakeControl, uuid: str, timeout: float, raw: bool) -> int:
    job = bk.wait(uuid, timeout=timeout)
    sys.stdout.write(bk.log(uuid, plain=not raw))
    sys.stdout.flush()
    status = job.get("exit_status")
    print(f"job {uuid} {job['state']}, exit status {status}", file=sys.stderr)
    return status if isinstance(status, int) and 0 <= status <= 255 else 1


def _run(bk: FakeControl, parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command == "enqueue":
        plugins = None
        if args.plugins is not None:
            try:
                plugins = json.loads(args.plugins)
            except ValueError:
                parser.error("--plugins must be JSON (a list of {location: config})")
            if not isinstance(plugins, list):
                parser.error("--plugins must be a JSON list")
        uuid = bk.enqueue(
            args.queue,
            args.job_command,
            env=_env_pairs(parser, args.env),
            plugins=plugins,
            repository=args.repository,
            label=args.label,
        )
        if not args.wait:
            print(uuid)
            return 0
        print(uuid, file=sys.stderr)
        return _finished(bk, uuid, args.timeout, args.raw)
    if args.command == "jobs":
        for job in bk.jobs(args.queue, args.state):
            status = "" if job.get("exit_status") is None else f" exit={job['exit_status']}"
            taker = f" agent={job['agent_name']}" if job.get("agent_name") else ""
            print(f"{job['uuid']} {job['queue']} {job['state']}{status}{taker}")
        return 0
    if args.command == "agents":
        for agent in bk.agents():
            busy = f" job={agent['current_job']}" if agent.get("current_job") else ""
            print(f"{agent['uuid']} {agent['name']} {agent['queue']} {agent['state']}{busy}")
        return 0
    if args.command == "job":
        print(json.dumps(bk.job(args.uuid), indent=2, sort_keys=True))
        return 0
    if args.command == "log":
        sys.stdout.write(bk.log(args.uuid, plain=not args.raw))
        return 0
    if args.command == "cancel":
        print(bk.cancel(args.uuid))
        return 0
    return _finished(bk, args.uuid, args.timeout, args.raw)  # wait


def main(argv: Sequence[str] | None = None) -> int:
    """Run one control command against the fake at ``--url``."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _run(FakeControl(args.url), parser, args)
    except (FakeControlError, TimeoutError) as err:
        print(f"ctl: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
