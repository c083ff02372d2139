"""Two stacks in one cluster share the external-metrics APIService; a foreign one is refused.

The machinery of tests/e2e/test_hpa.py (tests/support/aggregator.py): a kwok cluster whose
kube-apiserver has a front proxy and aggregator routing, the adapters as real
``stackgen metrics-adapter`` processes in a network namespace (here one namespace with two
addresses, one adapter each, so they reach each other as pods would), and a fake Buildkite
per stack (each stack has its own token, as two organizations would).

Both stacks serve a queue of the **same name** from their own namespace.  The stack applied
last serves the APIService; its adapter answers its own namespace and forwards the other's
requests to the other stack's adapter.  The test checks that each HPA reads its own
stack's numbers, that handing the APIService over and deleting the stack in front leaves
the other stack's HPA reading metrics, and that a foreign APIService (as KEDA makes) makes
``stackgen validate --server-dry-run`` and the adapter at start-up refuse, naming it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from stackgen.deploy import (
    ApplyOptions,
    DeleteOptions,
    Kubectl,
    StackRef,
    apply_stack,
    delete_stack,
)
from tests.support.aggregator import (
    ADAPTER_PORT,
    AdapterProcess,
    FrontProxyCluster,
    Netns,
    adapter_objects,
    adapter_tls,
    front_proxy_cluster,
    reap_netns,
    stackgen_build,
)
from tests.support.cluster import (
    Cluster,
    ClusterError,
    missing_binaries,
    orphaned,
    reap,
    wait_for,
)
from tests.support.fake_buildkite import FakeBuildkite
from tests.support.paths import ROOT

pytestmark = pytest.mark.e2e

QUEUE = "builds"  # the same queue name in both stacks
HPA_SYNC = "2s"
NAME_PREFIX = "stackgen-stacks-"
NETNS_PREFIX = "sgstk"
APISERVICE = "v1beta1.external.metrics.k8s.io"


def _required() -> bool:
    return os.environ.get("STACKGEN_E2E_REQUIRED") == "1"


def _skip_or_fail(message: str) -> None:
    if _required():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def fp_cluster() -> Iterator[FrontProxyCluster]:
    """This module's own cluster (front proxy, aggregator routing, fast HPA sync)."""
    missing = missing_binaries()
    if missing:
        _skip_or_fail(f"e2e needs the local control plane: missing {', '.join(missing)}")
    if os.geteuid() != 0 or shutil.which("ip") is None:
        _skip_or_fail("this e2e test creates a network namespace: needs root and `ip`")
    reap(NAME_PREFIX)
    reap_netns(NETNS_PREFIX, orphaned)
    try:
        with front_proxy_cluster(f"{NAME_PREFIX}{os.getpid()}", HPA_SYNC) as fp:
            yield fp
    except ClusterError as exc:
        pytest.fail(str(exc), pytrace=False)


@dataclass
class StackUnderTest:
    name: str
    namespace: str
    token: str
    overlay: Path
    objects: list[dict[str, Any]]
    fake: FakeBuildkite
    adapter: AdapterProcess | None = None


def _overlay(folder: Path, name: str, namespace: str, token: str) -> Path:
    overlay = folder / name
    (overlay / "secrets").mkdir(parents=True)
    (overlay / "secrets" / "agent-token").write_text(token + "\n")
    stack = {
        "apiVersion": "stackgen.io/v1alpha1",
        "kind": "Stack",
        "metadata": {"name": name, "namespace": namespace},
        "agent": {"image": "buildkite/agent:3.117.0"},
        "queues": [{"name": QUEUE, "mode": "hpa", "minAgents": 1, "maxAgents": 10}],
        "secrets": {"agentToken": {"file": "secrets/agent-token"}},
        "metricsAdapter": {"pollIntervalSeconds": 5, "tls": adapter_tls(overlay, namespace)},
    }
    (overlay / "stack.yaml").write_text(yaml.safe_dump(stack, sort_keys=False))
    return overlay


def _raw(cluster: Cluster, namespace: str, metric: str = "buildkite_jobs_runnable") -> Any:
    path = (
        f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}"
        f"?labelSelector=queue%3D{QUEUE}"
    )
    proc = cluster.kubectl("get", "--raw", path, check=False)
    if proc.returncode != 0:
        return proc.stderr.strip()
    return json.loads(proc.stdout)


def _value(answer: Any) -> str | None:
    if not isinstance(answer, dict) or len(answer.get("items", [])) != 1:
        return None
    return str(answer["items"][0]["value"])


def _hpa(cluster: Cluster, namespace: str) -> tuple[int, bool]:
    hpa = cluster.get("hpa", f"buildkite-agent-{QUEUE}", namespace) or {}
    status = hpa.get("status", {})
    active = any(
        c["type"] == "ScalingActive" and c["status"] == "True" for c in status.get("conditions", [])
    )
    return int(status.get("desiredReplicas") or 0), active


def _start_adapter(
    fp: FrontProxyCluster, netns: Netns, stack: StackUnderTest, address: str, work: Path
) -> AdapterProcess:
    cluster = fp.cluster

    def token(*extra: str) -> str:
        return cluster.kubectl(
            "create", "token", "stackgen-metrics-adapter", "-n", stack.namespace,
            "--duration=1h", *extra,
        ).stdout.strip()  # fmt: skip

    return AdapterProcess(
        netns,
        apiserver=fp.apiserver,
        ca_file=fp.ca_file,
        api_token=token(),
        buildkite_port=stack.fake.port,
        buildkite_token=stack.token,
        queues=[QUEUE],
        secrets=stack.overlay / "secrets" / "metrics-adapter",
        work=work,
        poll_interval=1,
        cwd=ROOT,
        address=address,
        namespace=stack.namespace,
        peer_token=token("--audience=stackgen-metrics-adapter"),
    )


def test_two_stacks_share_the_aggregated_api(
    fp_cluster: FrontProxyCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = fp_cluster.cluster
    notes: list[str] = []
    t0 = time.monotonic()

    def note(text: str) -> None:
        notes.append(f"{time.monotonic() - t0:7.1f}s  {text}")

    with contextlib.ExitStack() as cleanup:
        netns = Netns.create(NETNS_PREFIX, extra=1, offset=97)
        cleanup.callback(netns.delete)
        stacks = {}
        for name, address in (("alpha", netns.ns_ip), ("beta", netns.extra_ips[0])):
            token = f"bkua_e2e-{name}-token-0123456789"
            overlay = _overlay(tmp_path, name, f"stk-{name}", token)
            fake = FakeBuildkite(token, queues=[QUEUE], default_queue=QUEUE).start()
            cleanup.callback(fake.stop)
            objects = adapter_objects(stackgen_build(overlay), f"stk-{name}", address)
            stacks[name] = StackUnderTest(name, f"stk-{name}", token, overlay, objects, fake)
        alpha, beta = stacks["alpha"], stacks["beta"]
        # `stackgen apply`'s engine, one after the other: beta, applied last, takes the
        # shared APIService over (alpha's apply made it) and serves it.
        kube = Kubectl(kubeconfig=str(cluster.kubeconfig))
        for stack in (alpha, beta):
            apply_stack(stack.objects, kube, ApplyOptions(), source=str(stack.overlay), note=note)
        front = cluster.get("apiservice", APISERVICE)
        assert front is not None and front["spec"]["service"]["namespace"] == "stk-beta"
        for stack, address in ((alpha, netns.ns_ip), (beta, netns.extra_ips[0])):
            stack.adapter = _start_adapter(fp_cluster, netns, stack, address, tmp_path / stack.name)
            cleanup.callback(stack.adapter.stop)
        alpha.fake.add_jobs(QUEUE, 5)
        beta.fake.add_jobs(QUEUE, 2)
        note("alpha: 5 jobs on queue builds; beta: 2 jobs on queue builds")
        try:
            _scenario(fp_cluster, alpha, beta, note)
        except BaseException:
            with capsys.disabled():
                for stack in (alpha, beta):
                    if stack.adapter is not None:
                        print(f"\n--- adapter {stack.name} (last 30 lines) ---")
                        print(stack.adapter.tail(30))
            raise
        finally:
            with capsys.disabled():
                print("\ntwo stacks, one APIService:\n" + "\n".join(notes))


def _scenario(
    fp: FrontProxyCluster, alpha: StackUnderTest, beta: StackUnderTest, note: Any
) -> None:
    cluster = fp.cluster
    wait_for(
        lambda: (
            (_value(_raw(cluster, "stk-alpha")), _value(_raw(cluster, "stk-beta"))) == ("5", "2")
        ),
        timeout=90,
        what="each namespace to read its own stack's runnable jobs through the aggregator",
    )
    note("kubectl get --raw: stk-alpha reads 5 (forwarded by beta's adapter), stk-beta reads 2")
    wait_for(
        lambda: _hpa(cluster, "stk-alpha") == (5, True) and _hpa(cluster, "stk-beta") == (2, True),
        timeout=90,
        what="alpha's HPA to want 5 agents and beta's 2",
    )
    note("HPA alpha desired 5, HPA beta desired 2 (same queue name, own numbers)")

    # beta, in front, goes away with `stackgen delete`'s engine: it hands the shared
    # APIService over to alpha's adapter first, then deletes beta's objects.
    assert beta.adapter is not None
    beta.adapter.stop()
    lines: list[str] = []
    delete_stack(
        StackRef(beta.name, beta.namespace),
        Kubectl(kubeconfig=str(cluster.kubeconfig)),
        DeleteOptions(),
        source=str(beta.overlay),
        echo=lines.append,
        note=note,
    )
    assert lines[0] == (
        "APIService v1beta1.external.metrics.k8s.io: handed over to stk-alpha "
        "(shared by every stack)"
    ), lines
    assert "Namespace stk-beta" in lines[-1]
    front = cluster.get("apiservice", APISERVICE)
    assert front is not None and front["spec"]["service"]["namespace"] == "stk-alpha"
    note(
        "stackgen delete of beta: APIService handed over to alpha's adapter, beta's objects deleted"
    )
    alpha.fake.add_jobs(QUEUE, 2)
    wait_for(
        lambda: _hpa(cluster, "stk-alpha") == (7, True),
        timeout=90,
        what="alpha's HPA to keep reading metrics (7 runnable jobs) after beta is gone",
    )
    note("HPA alpha desired 7 after 2 more jobs: still reading metrics")
    # Once beta's EndpointSlices are gone (and the adapter's 10 s cache of them), its
    # namespace is answered as one without a stack.
    wait_for(
        lambda: (
            "no stackgen metrics adapter serves namespace stk-beta"
            in str(_raw(cluster, "stk-beta"))
        ),
        timeout=90,
        what="stk-beta to read as a namespace without a stack",
    )

    _foreign_owner(fp, alpha, note)


def _foreign_owner(fp: FrontProxyCluster, alpha: StackUnderTest, note: Any) -> None:
    """KEDA's APIService in place of stackgen's: the build and the adapter refuse, naming it."""
    cluster = fp.cluster
    cluster.kubectl("delete", "apiservice", APISERVICE)
    keda = {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {
            "name": APISERVICE,
            "labels": {
                "app.kubernetes.io/name": "keda-operator-metrics-apiserver",
                "app.kubernetes.io/managed-by": "Helm",
            },
        },
        "spec": {
            "group": "external.metrics.k8s.io",
            "version": "v1beta1",
            "groupPriorityMinimum": 100,
            "versionPriority": 100,
            "insecureSkipTLSVerify": True,
            "service": {"namespace": "keda", "name": "keda-operator-metrics-apiserver"},
        },
    }
    cluster.apply([keda])
    note("a foreign APIService (KEDA's) replaces stackgen's")
    proc = subprocess.run(
        [sys.executable, "-m", "stackgen", "validate", "--server-dry-run", str(alpha.overlay)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if "belongs to another metrics adapter" in x]
    assert line.startswith(f"{alpha.overlay / 'stack.yaml'}: APIService/{APISERVICE}: ")
    assert "service keda/keda-operator-metrics-apiserver" in line
    assert "app.kubernetes.io/name=keda-operator-metrics-apiserver" in line
    note(f"stackgen validate --server-dry-run: exit 1: {line.split(': ', 2)[2][:90]}…")
    # The adapter, started now, says so in its log and its metrics.
    assert alpha.adapter is not None
    netns_address = alpha.adapter.address
    alpha.adapter.stop()
    restarted = _restart(fp, alpha)
    wait_for(
        lambda: "belongs to another metrics adapter" in restarted.log_path.read_text(),
        timeout=30,
        what="the restarted adapter to log the foreign owner",
    )
    context = ssl.create_default_context(
        cafile=str(alpha.overlay / "secrets" / "metrics-adapter" / "ca.crt")
    )
    context.check_hostname = False
    url = f"https://{netns_address}:{ADAPTER_PORT}/metrics"
    body = wait_for(
        lambda: urllib.request.urlopen(url, context=context, timeout=5).read().decode(),
        timeout=30,
        what="the adapter's /metrics",
        ignore=(OSError,),
    )
    assert "stackgen_metrics_adapter_apiservice_foreign 1.0" in body
    note("the adapter at start-up: an error line naming the owner, and the gauge set to 1")
    restarted.stop()


def _restart(fp: FrontProxyCluster, stack: StackUnderTest) -> AdapterProcess:
    assert stack.adapter is not None
    netns = stack.adapter.netns
    stack.adapter = _start_adapter(
        fp, netns, stack, stack.adapter.address, stack.adapter.log_path.parent / "again"
    )
    return stack.adapter
