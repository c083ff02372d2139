"""Wire the dispatcher process together: config, clients, election, loop, HTTP, signals."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

from stackgen.buildkite import AgentAPI
from stackgen.common import logs
from stackgen.dispatcher.config import DispatcherConfig
from stackgen.dispatcher.cycle import Dispatcher
from stackgen.dispatcher.informer import JobInformer
from stackgen.dispatcher.jobs import OUR_JOBS
from stackgen.dispatcher.kube import ClientKube, Kube
from stackgen.dispatcher.leader import LeaderElector
from stackgen.dispatcher.metrics import Metrics
from stackgen.dispatcher.pods import OUR_PODS
from stackgen.dispatcher.server import Endpoint, Server

#: SIGTERM to exit, at most (plus the HTTP server's stop): the loop's threads, then, best
#: effort, deregistering the stacks and releasing the Lease.  An API server or Buildkite
#: that does not answer must not hold a pod in Terminating (or a rollout) for a minute.
SHUTDOWN_SECONDS = 5.0


@dataclass
class Options:
    """Command-line overrides (for running outside a pod, e.g. in tests)."""

    kubeconfig: str | None = None
    identity: str | None = None
    host: str | None = None
    port: int | None = None
    advertise: str | None = None
    leader_election: bool = True


def default_identity() -> str:
    """The pod name in a pod, else host and process."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def run(config: DispatcherConfig, options: Options, *, kube: Kube | None = None) -> int:
    """Run until SIGTERM/SIGINT; return the exit status."""
    logs.configure(config.log_level, component="dispatcher")
    token = config.token()
    logs.register_secret(token)
    webhook_token = (
        os.environ.get(config.webhook_token_env or "", "") if config.webhook_enabled else ""
    )
    logs.register_secret(webhook_token)
    identity = options.identity or default_identity()
    log = logs.get_logger(stack=config.stack, namespace=config.namespace, replica=identity)
    stop = threading.Event()
    _stop_on_signals(stop, log)

    metrics = Metrics()
    api = AgentAPI(config.endpoint, token)
    kube = kube or ClientKube(config.namespace, kubeconfig=options.kubeconfig)
    port = config.port if options.port is None else options.port
    ours: list[Dispatcher] = []  # the dispatcher, once made: leadership changes reach it
    elector = _elector(config, options, kube, identity, port, metrics, ours, log)

    def is_leader() -> bool:
        return elector.is_leader if elector is not None else True

    # The Jobs come from a watch when the client can watch (the real one): no full list
    # of every Job per cycle.
    watch = kube if isinstance(kube, ClientKube) else None
    informer = JobInformer(watch, OUR_JOBS, log=log) if watch is not None else None
    pod_mode = any(q.dispatch.workload == "pod" for q in config.queues)
    pod_informer = (
        JobInformer(watch, OUR_PODS, log=log, resource="pods")
        if watch is not None and pod_mode
        else None
    )
    dispatcher = Dispatcher(
        config,
        api,
        kube,
        metrics=metrics,
        log=log,
        is_leader=is_leader,
        informer=informer,
        pod_informer=pod_informer,
    )
    ours.append(dispatcher)
    if elector is None:
        metrics.leader.set(1)
    endpoint = _endpoint(config, dispatcher, elector, metrics, webhook_token, log)
    server = Server(endpoint, options.host or config.host, port).start()
    log.info(
        "dispatcher started",
        port=server.port,
        queues=[{"name": q.name, "mode": q.mode} for q in config.queues],
        leader_election=elector is not None,
        webhook=bool(webhook_token),
    )
    threads = _start_threads(stop, dispatcher, elector, [informer, pod_informer], log)
    while not stop.is_set():
        stop.wait(1.0)
    _shut_down(threads, dispatcher, elector, is_leader(), log)
    server.stop()
    api.close()
    log.info("dispatcher stopped")
    return 0


def _shut_down(
    threads: list[threading.Thread],
    dispatcher: Dispatcher,
    elector: LeaderElector | None,
    leader: bool,
    log: Any,
) -> None:
    """Within SHUTDOWN_SECONDS: let the threads end, then say goodbye (best effort).

    The goodbyes run at once on daemon threads: the Lease release (the successor need
    not wait the lease out) and, for a leader, deregistering the stacks (followers share
    the stack keys: only the leader may).  What has not finished by the deadline is left:
    the process exits anyway, and a Lease not released simply expires.
    """
    deadline = time.monotonic() + SHUTDOWN_SECONDS
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    goodbyes = []
    if leader:
        goodbyes.append(
            threading.Thread(target=dispatcher.deregister, name="deregister", daemon=True)
        )
    if elector is not None:
        goodbyes.append(threading.Thread(target=elector.release, name="lease-release", daemon=True))
    for thread in goodbyes:
        thread.start()
    for thread in goodbyes:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    late = [t.name for t in threads + goodbyes if t.is_alive()]
    if late:
        log.warning("shutdown deadline reached; leaving calls unanswered", threads=late)


def _stop_on_signals(stop: threading.Event, log: Any) -> None:
    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _elector(
    config: DispatcherConfig,
    options: Options,
    kube: Kube,
    identity: str,
    port: int,
    metrics: Metrics,
    ours: list[Dispatcher],
    log: Any,
) -> LeaderElector | None:
    """The Lease election (None when switched off); a new leader looks at once."""
    if not (options.leader_election and config.lease_enabled):
        return None
    pod_ip = os.environ.get("POD_IP")
    advertise = options.advertise or (f"http://{pod_ip}:{port}" if pod_ip else None)

    def on_leadership(leader: bool) -> None:
        metrics.leader.set(1 if leader else 0)
        for dispatcher in ours:
            dispatcher.on_leadership(leader)

    return LeaderElector(
        kube,
        config.lease_name,
        identity,
        lease_duration=config.lease_duration,
        renew_deadline=config.renew_deadline,
        retry_period=config.retry_period,
        endpoint=advertise,
        on_change=on_leadership,
        log=log,
    )


def _endpoint(
    config: DispatcherConfig,
    dispatcher: Dispatcher,
    elector: LeaderElector | None,
    metrics: Metrics,
    webhook_token: str,
    log: Any,
) -> Endpoint:
    """What /healthz, /readyz and /webhook answer from."""
    started = time.time()

    def is_leader() -> bool:
        return elector.is_leader if elector is not None else True

    def healthy() -> bool:
        # Alive while the loop turns; a wedged loop gets the pod restarted.
        return time.time() - dispatcher.last_loop < 120

    def ready() -> bool:
        return (
            dispatcher.last_success is not None
            or (elector is not None and not is_leader())
            or (time.time() - started < 5)
        )

    return Endpoint(
        metrics,
        healthy=healthy,
        ready=ready,
        trigger=dispatcher.trigger,
        is_leader=is_leader,
        leader_endpoint=lambda: elector.leader_endpoint if elector is not None else None,
        webhook_token=webhook_token or None,
        max_signature_age=config.max_signature_age,
        log=log,
    )


def _start_threads(
    stop: threading.Event,
    dispatcher: Dispatcher,
    elector: LeaderElector | None,
    informers: list[JobInformer | None],
    log: Any,
) -> list[threading.Thread]:
    """The watch, the election and the loop; returns the ones to join on shutdown."""
    threads: list[threading.Thread] = []
    for informer in informers:
        if informer is None:
            continue
        # Not joined: it may sit in a watch request for minutes and holds nothing to flush.
        name = f"{informer.resource}-watch"
        threading.Thread(target=informer.run, args=(stop,), name=name, daemon=True).start()
    if elector is not None:
        threads.append(
            threading.Thread(target=elector.run, args=(stop,), name="election", daemon=True)
        )
    threads.append(
        threading.Thread(target=_guard(dispatcher.run, stop, log), name="loop", daemon=True)
    )
    for thread in threads:
        thread.start()
    return threads


def _guard(target: Any, stop: threading.Event, log: Any) -> Any:
    """Run the loop; an unexpected exception is logged and the loop restarted, never fatal."""

    def run() -> None:
        while not stop.is_set():
            try:
                target(stop)
            except Exception:
                log.exception("dispatch loop crashed; restarting it")
                stop.wait(1.0)

    return run
