"""The metrics adapter serving ``hpa`` queues: its TLS, settings and kube-system part.

The API aggregator must trust the adapter: with the user's certificate files (the
APIService carries the CA bundle), an existing ``kubernetes.io/tls`` Secret (with the CA
file for the bundle), a cert-manager Certificate (cainjector fills the bundle), or the
explicit, visible opt-in ``insecureSkipTLSVerify``.
"""

from __future__ import annotations

import base64
from typing import Any

from stackgen.common.names import (
    ADAPTER_APISERVICE,
    ADAPTER_IMAGE,
    METRICS_ADAPTER,
    METRICS_ADAPTER_TLS,
    adapter_service_names,
)
from stackgen.compose.adapter_cluster import add_cluster_objects
from stackgen.compose.kustomization import Kustomization, generated, write_kube_system
from stackgen.compose.tree import Tree, image_entry
from stackgen.stack.model import Stack

_TLS_PATCH = "patches/apiservice-tls.yaml"


def add_metrics_adapter(tree: Tree, kz: Kustomization) -> None:
    """Everything of the adapter, when the stack has hpa queues."""
    stack = tree.stack
    if not stack.hpa_queues:
        return
    kz.resources.append("../bases/metrics-adapter")
    _add_tls(tree, kz)
    add_cluster_objects(tree, kz)
    tree.write_yaml("stack/patches/metrics-adapter.yaml", _deployment_patch(stack))
    kz.patch("patches/metrics-adapter.yaml")
    settings = {
        "BUILDKITE_AGENT_ENDPOINT": stack.agent.endpoint,
        "STACKGEN_POLL_INTERVAL_SECONDS": str(stack.metrics_adapter.poll_interval_seconds),
        "STACKGEN_QUEUES": ",".join(q.name for q in stack.hpa_queues),
    }
    kz.config_map_generator.append(
        generated(
            METRICS_ADAPTER,
            METRICS_ADAPTER,
            "metrics-adapter-config",
            literals=[f"{key}={value}" for key, value in settings.items()],
        )
    )
    if stack.metrics_adapter.image != stack.dispatcher.image:
        # A distinct adapter image: retagged through a second name the adapter patch uses.
        kz.images.append(image_entry(ADAPTER_IMAGE, stack.metrics_adapter.image))
    write_kube_system(tree, stack)


def _add_tls(tree: Tree, kz: Kustomization) -> None:
    stack = tree.stack
    tls = stack.metrics_adapter.tls
    if tls.insecure_skip_tls_verify:
        patch = _apiservice_patch(insecure=True)
        tree.notice(
            "the metrics adapter's APIService skips TLS verification "
            "(metricsAdapter.tls.insecureSkipTLSVerify: true)"
        )
    elif tls.cert_manager is not None:
        tree.write_yaml("stack/metrics-adapter-certificate.yaml", _certificate(stack))
        kz.resources.append("metrics-adapter-certificate.yaml")
        patch = _apiservice_patch(inject_from=f"{stack.namespace}/{METRICS_ADAPTER}")
    elif tls.existing_secret is not None:
        assert tls.ca_file is not None
        patch_file = "patches/metrics-adapter-existing-tls.yaml"
        tree.write_yaml(f"stack/{patch_file}", _serving_cert_patch(tls.existing_secret))
        kz.patch(patch_file)
        patch = _apiservice_patch(ca_bundle=stack.secret_bytes(tls.ca_file))
    else:
        assert tls.ca_file and tls.cert_file and tls.key_file
        kz.secret_generator.append(
            generated(
                METRICS_ADAPTER_TLS,
                METRICS_ADAPTER,
                "serving-cert",
                type="kubernetes.io/tls",
                files=[
                    f"tls.crt={tree.overlay_rel(tls.cert_file)}",
                    f"tls.key={tree.overlay_rel(tls.key_file)}",
                ],
            )
        )
        patch = _apiservice_patch(ca_bundle=stack.secret_bytes(tls.ca_file))
    tree.write_yaml(f"stack/{_TLS_PATCH}", patch)
    kz.patch(_TLS_PATCH)


def _serving_cert_patch(secret: str) -> dict[str, Any]:
    """The adapter mounts an existing ``kubernetes.io/tls`` Secret (nothing generated)."""
    volume = {"name": "serving-cert", "secret": {"secretName": secret}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": METRICS_ADAPTER},
        "spec": {"template": {"spec": {"volumes": [volume]}}},
    }


def _apiservice_patch(
    *, ca_bundle: bytes | None = None, insecure: bool = False, inject_from: str | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    metadata: dict[str, Any] = {"name": ADAPTER_APISERVICE}
    if insecure:
        spec["insecureSkipTLSVerify"] = True
        metadata["annotations"] = {"stackgen.io/insecure-skip-tls-verify": "opted-in"}
    elif inject_from:
        # cert-manager's cainjector fills spec.caBundle from the Certificate's CA.
        metadata["annotations"] = {"cert-manager.io/inject-ca-from": inject_from}
    elif ca_bundle is not None:
        spec["caBundle"] = base64.b64encode(ca_bundle).decode("ascii")
    body: dict[str, Any] = {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": metadata,
    }
    if spec:
        body["spec"] = spec
    return body


def _certificate(stack: Stack) -> dict[str, Any]:
    """cert-manager's Certificate for the adapter (named as the Secret it writes is used)."""
    issuer = stack.metrics_adapter.tls.cert_manager
    assert issuer is not None
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {
            "name": METRICS_ADAPTER,
            "labels": {
                "app.kubernetes.io/name": METRICS_ADAPTER,
                "app.kubernetes.io/component": "serving-cert",
            },
        },
        "spec": {
            # The name the adapter Deployment mounts.
            "secretName": METRICS_ADAPTER_TLS,
            "dnsNames": adapter_service_names(stack.namespace),
            "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
            "usages": ["server auth", "digital signature", "key encipherment"],
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
        },
    }


def _deployment_patch(stack: Stack) -> dict[str, Any]:
    adapter = stack.metrics_adapter
    container: dict[str, Any] = {"name": "metrics-adapter", "resources": adapter.resources.to_k8s()}
    if adapter.image != stack.dispatcher.image:
        container["image"] = ADAPTER_IMAGE
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": METRICS_ADAPTER},
        "spec": {"replicas": adapter.replicas, "template": {"spec": {"containers": [container]}}},
    }
