"""``stackgen status``."""

from __future__ import annotations

import json
import time

import click

from stackgen.cli import options as opts
from stackgen.cli.errors import handle_errors
from stackgen.common.output import out


@click.command("status")
@opts.kube_context
@click.option("--namespace", "-n", default=None, help="Only stacks in this namespace.")
@click.option("--stack", default=None, help="Only the stack of this name.")
@click.option(
    "--dispatcher-url",
    default=None,
    metavar="URL",
    help="Read the dispatcher's metrics here (e.g. a `kubectl port-forward`) instead of "
    "through the API server's pod proxy.",
)
@click.option(
    "--output",
    "-o",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
)
@click.option("--watch", "-w", is_flag=True, help="Refresh until interrupted.")
@click.option(
    "--interval",
    type=click.FloatRange(min=1),
    default=5.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
@handle_errors
def command(
    kubeconfig: str | None,
    context: str | None,
    namespace: str | None,
    stack: str | None,
    dispatcher_url: str | None,
    output: str,
    watch: bool,
    interval: float,
) -> None:
    """Show every stack's queues, agents, dispatches, stuck and kept pods, and leader.

    One table per stack (found by the label stackgen.io/stack in the current kubectl
    context, or --kubeconfig/--context): per queue its mode, scheduled and running jobs
    and cooldown (from the dispatcher's metrics), agents starting and running, the last
    dispatch ID and its age, and stuck pods with their reason; then pods kept for
    debugging. Everything is read with kubectl; nothing is changed.

    \b
    Examples:
      stackgen status
      stackgen status -n buildkite --watch
      stackgen status --context prod -o json
    """
    from stackgen.deploy.cluster import Kubectl
    from stackgen.deploy.status import collect, render, to_json

    cluster = Kubectl(kubeconfig=kubeconfig, context=context)
    while True:
        stacks = collect(cluster, namespace=namespace, stack=stack, dispatcher_url=dispatcher_url)
        if output == "json":
            out(json.dumps(to_json(stacks), indent=2), nl=True)
        else:
            if watch:
                click.clear()
            out(render(stacks), nl=False)
        if not watch:
            return
        try:
            time.sleep(interval)
        except KeyboardInterrupt:  # Ctrl-C ends --watch: not an error
            return
