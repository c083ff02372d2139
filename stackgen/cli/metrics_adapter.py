"""``stackgen metrics-adapter``: the external-metrics API server for ``hpa`` queues."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from stackgen.cli.errors import handle_errors, require_extra
from stackgen.common.defaults import stack_default
from stackgen.common.errors import StackgenError
from stackgen.common.names import AGENT_TOKEN_ENV, DEFAULT_ENDPOINT

if TYPE_CHECKING:
    from stackgen.adapter.server import AdapterSettings


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


@click.command("metrics-adapter")
@click.option(
    "--secure-port",
    type=click.IntRange(0, 65535),
    default=6443,
    show_default=True,
    help="HTTPS port (0: any free port).",
)
@click.option("--bind-address", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option(
    "--metrics-port",
    type=click.IntRange(-1, 65535),
    default=-1,
    show_default=True,
    help="Plain-HTTP port of the adapter's own Prometheus /metrics, on --bind-address "
    "(0: any free port; -1: off).",
)
@click.option(
    "--tls-cert-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Serving certificate (PEM). Without it (or if absent) a self-signed one is used, "
    "which only an APIService with insecureSkipTLSVerify accepts.",
)
@click.option(
    "--tls-private-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Key of the serving certificate (PEM).",
)
@click.option(
    "--endpoint",
    envvar="BUILDKITE_AGENT_ENDPOINT",
    default=DEFAULT_ENDPOINT,
    show_default=True,
    show_envvar=True,
    help="Buildkite agent API endpoint.",
)
@click.option(
    "--poll-interval",
    envvar="STACKGEN_POLL_INTERVAL_SECONDS",
    type=click.FloatRange(min=1),
    default=float(stack_default("metricsAdapter.pollIntervalSeconds")),
    show_default=True,
    show_envvar=True,
    help="Seconds between polls (longer when Buildkite's poll-duration header asks).",
)
@click.option(
    "--queues",
    envvar="STACKGEN_QUEUES",
    default="",
    show_envvar=True,
    help="Comma-separated Buildkite queues always answered (others as Buildkite lists them).",
)
@click.option(
    "--stale-after-intervals",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Answer an error, never a value, when the last successful poll is older than this "
    "many poll intervals.",
)
@click.option(
    "--stack-key-prefix",
    envvar="STACKGEN_STACK_KEY_PREFIX",
    default=None,
    show_envvar=True,
    help="Register Stacks API stacks <prefix>-<queue> to read the oldest scheduled job's age "
    "(needs a cluster agent token). Off without it.",
)
@click.option(
    "--requestheader-client-ca-file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="CA that signs the aggregator's client certificate. Without it, the front-proxy "
    "settings are read from ConfigMap kube-system/extension-apiserver-authentication.",
)
@click.option(
    "--requestheader-allowed-names",
    default="",
    metavar="NAMES",
    help="Comma-separated Common Names allowed for that certificate (empty: any).",
)
@click.option("--requestheader-username-headers", default="X-Remote-User", show_default=True)
@click.option("--requestheader-group-headers", default="X-Remote-Group", show_default=True)
@click.option("--requestheader-extra-headers-prefix", default="X-Remote-Extra-", show_default=True)
@click.option("--requestheader-uid-headers", default="X-Remote-Uid", show_default=True)
@click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Kubeconfig for reading the ConfigMap outside a cluster (default: in-cluster).",
)
@click.option(
    "--auth-refresh-seconds",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="How often the front-proxy settings are reloaded.",
)
@click.option(
    "--namespace",
    envvar="POD_NAMESPACE",
    default=None,
    show_envvar=True,
    help="The stack's namespace: metric requests for it are answered here, requests for "
    "another stack's namespace are forwarded to that stack's adapter (several stacks per "
    "cluster). Without it every namespace is answered here.",
)
@click.option(
    "--peer-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="ServiceAccount token (audience stackgen-metrics-adapter) shown to another "
    "stack's adapter when forwarding to it; re-read on every forward.",
)
@click.option(
    "--log-level",
    envvar="STACKGEN_LOG_LEVEL",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    show_envvar=True,
)
@handle_errors
def command(
    secure_port: int,
    bind_address: str,
    metrics_port: int,
    tls_cert_file: Path | None,
    tls_private_key_file: Path | None,
    endpoint: str,
    poll_interval: float,
    queues: str,
    stale_after_intervals: int,
    stack_key_prefix: str | None,
    requestheader_client_ca_file: str | None,
    requestheader_allowed_names: str,
    requestheader_username_headers: str,
    requestheader_group_headers: str,
    requestheader_extra_headers_prefix: str,
    requestheader_uid_headers: str,
    kubeconfig: str | None,
    auth_refresh_seconds: float,
    namespace: str | None,
    peer_token_file: Path | None,
    log_level: str,
) -> None:
    """Serve per-queue Buildkite metrics to HorizontalPodAutoscalers.

    An external-metrics API server (external.metrics.k8s.io/v1beta1) behind the
    Kubernetes API aggregator. It polls Buildkite's agent metrics endpoint and answers
    buildkite_jobs_runnable, buildkite_agents_busy_percentage and friends per queue
    (label `queue`). Only requests the aggregator proxies are served (front-proxy client
    certificate checked against the request-header CA); see docs/metrics-adapter.md.

    The agent token comes from the environment (BUILDKITE_AGENT_TOKEN), never a flag.

    \b
    Example (what the stack's Deployment runs):
      BUILDKITE_AGENT_TOKEN=... STACKGEN_QUEUES=default,linux \\
        stackgen metrics-adapter --secure-port=6443 \\
          --tls-cert-file=/var/run/serving-cert/tls.crt \\
          --tls-private-key-file=/var/run/serving-cert/tls.key
    \b
    Query it through the cluster:
      kubectl get --raw \\
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/buildkite/buildkite_jobs_runnable?labelSelector=queue%3Ddefault"
    """
    require_extra("kubernetes", "httpx", "structlog")
    from stackgen.adapter.server import AdapterSettings, RequestHeaderFlags

    token = _token(log_level)
    requestheader = (
        RequestHeaderFlags(
            client_ca_file=requestheader_client_ca_file,
            allowed_names=_csv(requestheader_allowed_names),
            username_headers=_csv(requestheader_username_headers),
            group_headers=_csv(requestheader_group_headers),
            extra_headers_prefixes=_csv(requestheader_extra_headers_prefix),
            uid_headers=_csv(requestheader_uid_headers),
        )
        if requestheader_client_ca_file
        else None
    )
    settings = AdapterSettings(
        endpoint=endpoint,
        token=token,
        bind_address=bind_address,
        secure_port=secure_port,
        metrics_port=metrics_port if metrics_port >= 0 else None,
        tls_cert_file=tls_cert_file,
        tls_key_file=tls_private_key_file,
        poll_interval=poll_interval,
        stale_intervals=stale_after_intervals,
        queues=_csv(queues),
        stack_key_prefix=stack_key_prefix or None,
        requestheader=requestheader,
        kubeconfig=kubeconfig,
        auth_refresh_seconds=auth_refresh_seconds,
        namespace=namespace or None,
        peer_token_file=peer_token_file,
    )
    _serve(settings)


def _token(log_level: str) -> str:
    """The agent token from the environment, kept out of every log line; logs set up."""
    from stackgen.common import logs

    token = os.environ.get(AGENT_TOKEN_ENV, "").strip()
    if not token:
        raise StackgenError(f"{AGENT_TOKEN_ENV} is not set: the adapter needs the agent token")
    logs.register_secret(token)
    logs.configure(log_level, component="metrics-adapter")
    return token


def _serve(settings: AdapterSettings) -> None:
    import ssl

    from stackgen.adapter.auth import AuthConfigError
    from stackgen.adapter.server import run

    try:
        run(settings)
    except (AuthConfigError, ValueError, ssl.SSLError) as exc:
        raise StackgenError(f"metrics-adapter: {exc}") from exc
    except OSError as exc:
        address = f"{settings.bind_address}:{settings.secure_port}"
        raise StackgenError(f"metrics-adapter: cannot listen on {address}: {exc}") from exc
