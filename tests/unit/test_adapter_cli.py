"""``stackgen metrics-adapter`` as a real process on 127.0.0.1, against the fake Buildkite."""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.support.cli import Run
from tests.support.fake_buildkite import FakeBuildkite
from tests.support.pki import make_ca, make_leaf

TOKEN = "bkua_cli-test-token-abcdef"


def test_help_shows_the_deployment_example(stackgen: Callable[..., Run]) -> None:
    result = stackgen("metrics-adapter", "--help")
    assert result.code == 0
    text = result.stdout.decode()
    assert "--tls-cert-file=/var/run/serving-cert/tls.crt" in text
    assert "BUILDKITE_AGENT_TOKEN" in text
    assert "--requestheader-client-ca-file" in text


def test_refuses_to_start_without_a_token(stackgen: Callable[..., Run]) -> None:
    result = stackgen("metrics-adapter", env={"BUILDKITE_AGENT_TOKEN": ""})
    assert result.code == 1
    assert result.lines == [
        "stackgen: BUILDKITE_AGENT_TOKEN is not set: the adapter needs the agent token"
    ]


def test_serves_the_aggregator_and_stops_on_sigterm(tmp_path: Path) -> None:
    serving_ca, proxy_ca = make_ca("serving"), make_ca("front-proxy")
    serving = make_leaf(
        serving_ca,
        "adapter",
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    cert, key = serving.write(tmp_path, "tls")
    client_cert, client_key = make_leaf(proxy_ca, "front-proxy-client").write(tmp_path, "client")
    ca_file = tmp_path / "front-proxy-ca.crt"
    ca_file.write_text(proxy_ca.pem)
    (tmp_path / "serving-ca.crt").write_text(serving_ca.pem)

    with FakeBuildkite(TOKEN, queues=("alpha", "beta"), poll_duration_seconds=1) as fake:
        fake.add_jobs("alpha", 3)
        env = {
            **os.environ,
            "BUILDKITE_AGENT_TOKEN": TOKEN,
            "BUILDKITE_AGENT_ENDPOINT": fake.endpoint,
            "STACKGEN_POLL_INTERVAL_SECONDS": "1",
            "STACKGEN_QUEUES": "alpha,beta",
        }
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stackgen",
                "metrics-adapter",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                f"--tls-cert-file={cert}",
                f"--tls-private-key-file={key}",
                f"--requestheader-client-ca-file={ca_file}",
                "--requestheader-allowed-names=front-proxy-client",
            ],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stderr is not None
            port = None
            lines = []
            deadline = time.monotonic() + 20
            while port is None and time.monotonic() < deadline:
                line = proc.stderr.readline()
                if not line:
                    break
                lines.append(line)
                event = json.loads(line)
                assert event["component"] == "metrics-adapter"
                if event["event"] == "serving external metrics":
                    port = event["port"]
                    assert event["front_proxy_loaded"] is True
            assert port, lines
            ctx = ssl.create_default_context(cafile=str(tmp_path / "serving-ca.crt"))
            ctx.load_cert_chain(client_cert, client_key)
            path = (
                "/apis/external.metrics.k8s.io/v1beta1/namespaces/ci/buildkite_jobs_scheduled"
                "?labelSelector=queue%20in%20(alpha,beta)"
            )
            body: dict[str, object] = {}
            for _ in range(50):  # the first poll races the first request
                conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
                conn.request(
                    "GET", path, headers={"X-Remote-User": "system:kube-controller-manager"}
                )
                resp = conn.getresponse()
                body = json.loads(resp.read())
                conn.close()
                if resp.status == 200:
                    break
                time.sleep(0.1)
            items = body["items"]
            assert isinstance(items, list)
            assert {i["metricLabels"]["queue"]: i["value"] for i in items} == {
                "alpha": "3",
                "beta": "0",
            }
        finally:
            proc.send_signal(signal.SIGTERM)
            _, rest = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert TOKEN not in "".join(lines) + rest
