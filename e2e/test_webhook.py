"""A mutating webhook served by the test process over TLS on 127.0.0.1 modifies pods on CREATE."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from e2e.harness.waits import wait_for
from e2e.harness.webhook import WebhookServer


def _label_pods(request: dict[str, Any]) -> list[dict[str, Any]] | None:
    if request["kind"]["kind"] != "Pod" or request["operation"] != "CREATE":
        return None
    ops: list[dict[str, Any]] = []
    meta = request["object"]["metadata"]
    if "labels" not in meta:
        ops.append({"op": "add", "path": "/metadata/labels", "value": {}})
    if "annotations" not in meta:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {}})
    ops.append({"op": "add", "path": "/metadata/labels/e2e.upgrader.io~1mutated", "value": "true"})
    ops.append({"op": "add", "path": "/metadata/annotations/e2e.upgrader.io~1seen-by", "value": "webhook"})
    return ops


@pytest.fixture
def webhook(api: client.ApiClient, namespace: str) -> Iterator[WebhookServer]:
    """A webhook registered by URL for pods in this test's namespace only."""
    admission = client.AdmissionregistrationV1Api(api)
    name = f"e2e-{namespace}"
    with WebhookServer(_label_pods) as server:
        admission.create_mutating_webhook_configuration(
            {
                "metadata": {"name": name},
                "webhooks": [
                    {
                        "name": "pods.e2e.upgrader.io",
                        "clientConfig": {"url": server.url, "caBundle": server.ca_bundle},
                        "rules": [
                            {"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}
                        ],
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                        "failurePolicy": "Fail",
                        "sideEffects": "None",
                        "admissionReviewVersions": ["v1"],
                        "timeoutSeconds": 10,
                    }
                ],
            }
        )
        try:
            yield server
        finally:
            admission.delete_mutating_webhook_configuration(name)


def test_webhook_mutates_pods_on_create(webhook: WebhookServer, api: client.ApiClient, namespace: str) -> None:
    """The API server calls our TLS webhook by URL and applies its JSONPatch to the new pod."""
    core = client.CoreV1Api(api)
    pod = {"metadata": {"name": "probe"}, "spec": {"containers": [{"name": "app", "image": "registry.example/a:1"}]}}
    # The configuration is read from an informer: retry the create until the hook is live.
    created = wait_for("webhook to be called", lambda: (p := _create_and_check(core, namespace, pod)) and p, timeout=30)
    assert created.metadata.labels["e2e.upgrader.io/mutated"] == "true"
    assert created.metadata.annotations["e2e.upgrader.io/seen-by"] == "webhook"
    seen = [r for r in webhook.requests if r["namespace"] == namespace and r["operation"] == "CREATE"]
    assert seen, "the webhook server recorded no CREATE request"
    stored = core.read_namespaced_pod(created.metadata.name, namespace)
    assert stored.metadata.labels["e2e.upgrader.io/mutated"] == "true"


def _create_and_check(core: client.CoreV1Api, namespace: str, pod: dict[str, Any]) -> Any:
    created = core.create_namespaced_pod(namespace, {**pod, "metadata": {"generateName": "probe-"}})
    if (created.metadata.labels or {}).get("e2e.upgrader.io/mutated") == "true":
        return created
    core.delete_namespaced_pod(created.metadata.name, namespace, grace_period_seconds=0)
    return None
