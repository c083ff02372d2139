"""Buildkite's agent-stack-k8s controller as a process: shared by bench/peer and bench/e2e.

* :func:`controller_argv`: the command line (a config file pointing ``agent-config.endpoint``
  at the fake, one namespace, one stack key, one queue, ``--max-in-flight``, JSON logs);
* :func:`start_controller`: runs it outside the cluster with a clean environment (it reads
  every flag from an environment variable of the same name too: ``QUEUE``, ``TAGS``,
  ``DEBUG``, ...), its output in a log file;
* :func:`wait_polling`: until each stack has polled the fake's scheduled jobs once;
* :func:`create_token_secret`: the agent token Secret its Job pods mount.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.lib.e2e import Processes, http, kubectl, wait_until

#: Set by agent-stack-k8s on its Jobs and pods.
UUID_LABEL = "buildkite.com/job-uuid"
TOKEN_KEY = "BUILDKITE_AGENT_TOKEN"
SECRET_NAME = "buildkite-agent-token"
#: The controller's own default (``--max-in-flight``); 0 turns the cap off.
DEFAULT_MAX_IN_FLIGHT = 25


@dataclass
class Controller:
    """One running controller: its process, command line and log."""

    name: str
    stack_key: str
    queue: str
    proc: subprocess.Popen[Any]
    argv: list[str]
    log_path: Path
    started_at: float


def controller_argv(
    binary: Path,
    config: Path,
    *,
    namespace: str,
    stack_key: str,
    queue: str,
    max_in_flight: int,
    extra_args: Sequence[str] = (),
) -> list[str]:
    return [
        str(binary),
        "--config",
        str(config),
        "--namespace",
        namespace,
        "--id",
        stack_key,
        "--queue",
        queue,
        "--max-in-flight",
        str(max_in_flight),
        "--log-format",
        "json",
        *extra_args,
    ]


def start_controller(
    procs: Processes,
    name: str,
    binary: Path,
    *,
    fake_url: str,
    kubeconfig: Path,
    namespace: str,
    stack_key: str,
    queue: str,
    max_in_flight: int,
    out: Path,
    extra_args: Sequence[str] = (),
) -> Controller:
    """Start the controller for one queue; its config and log go to ``out/<name>.*``."""
    import time

    out.mkdir(parents=True, exist_ok=True)
    config = out / f"{name}.yaml"
    config.write_text(f"agent-config:\n  endpoint: {fake_url}/v3\n")
    argv = controller_argv(
        binary,
        config,
        namespace=namespace,
        stack_key=stack_key,
        queue=queue,
        max_in_flight=max_in_flight,
        extra_args=extra_args,
    )
    # A clean environment: every flag has an environment variable of the same name too.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(out), "KUBECONFIG": str(kubeconfig)}
    log_path = out / f"{name}.log"
    with log_path.open("w") as log:
        started_at = time.time()
        proc = procs.start(name, argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    return Controller(name, stack_key, queue, proc, argv, log_path, started_at)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def fake_requests(fake_url: str) -> list[dict[str, Any]]:
    status, body = http("GET", f"{fake_url}/_fake/requests")
    if status != 200:
        raise RuntimeError(f"/_fake/requests answered {status}")
    return list(body["requests"])


def polled(fake_url: str, controllers: Sequence[Controller]) -> bool:
    """Whether every controller has polled its stack's scheduled jobs at least once.

    Raises RuntimeError (with its log's tail) when one has exited.
    """
    for c in controllers:
        if c.proc.poll() is not None:
            raise RuntimeError(
                f"{c.name} exited with {c.proc.returncode} before polling; see "
                f"{c.log_path}:\n{tail(c.log_path)}"
            )
    seen = {
        r["path"]
        for r in fake_requests(fake_url)
        if r["route"] == "list_scheduled_jobs" and r["status"] == 200
    }
    return all(any(f"/stacks/{c.stack_key}/" in p for p in seen) for c in controllers)


def wait_polling(fake_url: str, controllers: Sequence[Controller], timeout: float = 60) -> None:
    wait_until(lambda: polled(fake_url, controllers), timeout, "the controllers' first poll")


def create_token_secret(kubeconfig: Path, namespace: str, token: str) -> None:
    """The agent token Secret, then the namespace's default ServiceAccount (pods need it)."""
    kubectl(
        kubeconfig,
        "-n",
        namespace,
        "create",
        "secret",
        "generic",
        SECRET_NAME,
        f"--from-literal={TOKEN_KEY}={token}",
    )
    wait_until(
        lambda: kubectl(
            kubeconfig, "-n", namespace, "get", "serviceaccount", "default", check=False
        ),
        30,
        "the namespace's default ServiceAccount",
    )
