"""Outside failures (API answers, connection errors, helm's stderr) become typed errors in one place."""

from __future__ import annotations

import json

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException, ForbiddenException

from upgrader.adapters.errors import classify, mapped, outside
from upgrader.errors import (
    AccessDeniedError,
    ApiError,
    ChartNotFoundError,
    ClusterUnreachableError,
    HelmAccessDeniedError,
    HelmError,
    NotFoundError,
    ReleaseLockedError,
    ReleaseNotFoundError,
    TransientError,
    TransientHelmError,
    UpgraderError,
)

RBAC_DENIAL = (
    'deployments.apps "web" is forbidden: User "system:serviceaccount:ci:upgrader" cannot patch resource '
    '"deployments" in API group "apps" in the namespace "shop"'
)


def _api(status: int, reason: str, message: str = "", headers: dict[str, str] | None = None) -> ApiException:
    body = json.dumps({"kind": "Status", "status": "Failure", "message": message, "code": status}) if message else None
    exc = ApiException(status=status, reason=reason, body=body)
    exc.headers = headers
    return exc


@pytest.mark.parametrize(
    ("exc", "cls", "status"),
    [
        pytest.param(_api(503, "Service Unavailable"), TransientError, 503, id="503 is transient"),
        pytest.param(_api(502, "Bad Gateway"), TransientError, 502, id="502 is transient"),
        pytest.param(_api(504, "Gateway Timeout"), TransientError, 504, id="504 is transient"),
        pytest.param(_api(429, "Too Many Requests"), TransientError, 429, id="429 throttling is transient"),
        pytest.param(
            _api(500, "Internal Server Error", "etcdserver: leader changed"),
            TransientError,
            500,
            id="an etcd leader change is transient",
        ),
        pytest.param(_api(404, "Not Found", 'configmaps "x" not found'), NotFoundError, None, id="404 is not found"),
        pytest.param(_api(403, "Forbidden", RBAC_DENIAL), AccessDeniedError, 403, id="403 is access denied"),
        pytest.param(_api(401, "Unauthorized"), AccessDeniedError, 401, id="401 is access denied"),
        pytest.param(_api(409, "Conflict", "the object has been modified"), ApiError, 409, id="409 is lasting"),
        pytest.param(_api(422, "Unprocessable Entity", "spec.x: Invalid"), ApiError, 422, id="422 is lasting"),
        pytest.param(_api(501, "Not Implemented"), ApiError, 501, id="501 is lasting"),
    ],
)
def test_api_answers_are_sorted_by_status(exc: ApiException, cls: type[UpgraderError], status: int | None) -> None:
    """Each HTTP status lands in the class that says whether a retry helps."""
    error = classify(exc, doing="patching Deployment shop/web")
    assert type(error) is cls
    assert error.retryable == issubclass(cls, TransientError)
    if status is not None:
        assert getattr(error, "status", None) == status


def test_the_client_subclasses_of_api_exception_are_classified_too() -> None:
    """ForbiddenException (what the client raises for 403) is an API answer like any other."""
    exc = ForbiddenException(status=403, reason="Forbidden")
    assert outside(exc)
    assert isinstance(classify(exc), AccessDeniedError)


def test_a_transient_answer_names_the_operation_and_the_status() -> None:
    """The message says what we were doing and what the API answered."""
    error = classify(_api(503, "Service Unavailable", "the server is shutting down"), doing="listing pods")
    assert error.message == (
        "the Kubernetes API failed while listing pods: 503 Service Unavailable: the server is shutting down"
    )
    assert error.hint


def test_retry_after_is_kept_as_the_delay() -> None:
    """A 429's Retry-After tells the retry policy how long to wait."""
    error = classify(_api(429, "Too Many Requests", headers={"Retry-After": "3"}))
    assert isinstance(error, TransientError)
    assert error.delay == 3.0


def test_an_rbac_denial_names_verb_resource_and_namespace() -> None:
    """The API server's words are parsed into what to grant, and the hint says it."""
    error = classify(_api(403, "Forbidden", RBAC_DENIAL), doing="patching Deployment shop/web")
    assert isinstance(error, AccessDeniedError)
    assert (error.verb, error.resource, error.group, error.namespace) == ("patch", "deployments", "apps", "shop")
    assert "patching Deployment shop/web" in error.message
    assert "grant patch on deployments.apps in namespace shop" in error.hint


def test_a_denial_that_is_not_rbac_does_not_ask_for_permissions() -> None:
    """A quota or admission policy is also 403: the hint points at the API's answer, not at RBAC alone."""
    error = classify(_api(403, "Forbidden", 'pods "probe" is forbidden: exceeded quota: compute'))
    assert isinstance(error, AccessDeniedError)
    assert error.verb == ""
    assert "exceeded quota" in error.message
    assert "quota" in error.hint


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        pytest.param(
            urllib3.exceptions.MaxRetryError(
                None,  # type: ignore[arg-type]
                "/api/v1/pods",
                urllib3.exceptions.NewConnectionError(None, "Failed to establish a new connection: Connection refused"),  # type: ignore[arg-type]
            ),
            ClusterUnreachableError,
            id="connection refused (after urllib3's retries)",
        ),
        pytest.param(
            urllib3.exceptions.ReadTimeoutError(None, "/api/v1/pods", "Read timed out."),  # type: ignore[arg-type]
            ClusterUnreachableError,
            id="a read timeout",
        ),
        pytest.param(
            urllib3.exceptions.ProtocolError(
                "Connection aborted.", ConnectionResetError(104, "Connection reset by peer")
            ),
            ClusterUnreachableError,
            id="a connection reset",
        ),
        pytest.param(ConnectionRefusedError(111, "Connection refused"), ClusterUnreachableError, id="a socket error"),
        pytest.param(
            ApiException(status=0, reason="SSLError\n_ssl.c:989: The handshake operation timed out"),
            ClusterUnreachableError,
            id="a TLS handshake timeout",
        ),
        pytest.param(
            urllib3.exceptions.SSLError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"),
            ApiError,
            id="a certificate the kubeconfig does not trust is lasting",
        ),
    ],
)
def test_connection_failures_are_sorted(exc: Exception, cls: type[UpgraderError]) -> None:
    """Dropped, refused and timed-out connections are transient; an untrusted certificate is not."""
    error = classify(exc, doing="listing pods")
    assert type(error) is cls
    assert "listing pods" in error.message
    assert error.hint


@pytest.mark.parametrize(
    "text",
    [
        "Error: UPGRADE FAILED: etcdserver: leader changed",
        "Error: UPGRADE FAILED: the server is currently unable to handle the request (get deployments.apps)",
        "Error: UPGRADE FAILED: Too Many Requests",
        'Error: Kubernetes cluster unreachable: Get "https://127.0.0.1:6443/version": dial tcp 127.0.0.1:6443: '
        "connect: connection refused",
        "Error: UPGRADE FAILED: http2: client connection lost",
        'Error: UPGRADE FAILED: Get "https://10.0.0.1:443/api": net/http: TLS handshake timeout',
        "Error: UPGRADE FAILED: read tcp 10.0.0.2:51234->10.0.0.1:443: read: connection reset by peer",
        "Error: UPGRADE FAILED: rpc error: code = Unavailable desc = etcdserver: request timed out",
        "Error: UPGRADE FAILED: the server was unable to return a response in the time allotted",
    ],
)
def test_passing_helm_failures_are_transient(text: str) -> None:
    """helm's words for throttling, 5xx, dropped connections and etcd elections: a retry may help."""
    error = classify(text)
    assert isinstance(error, TransientHelmError)
    assert isinstance(error, HelmError)
    assert error.retryable
    assert error.message == text


@pytest.mark.parametrize(
    ("text", "cls"),
    [
        pytest.param(
            "Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress",
            ReleaseLockedError,
            id="another operation in progress is a locked release",
        ),
        pytest.param("Error: release: not found", ReleaseNotFoundError, id="a missing release"),
        pytest.param("Error: repo linkerd not found", ChartNotFoundError, id="a repository not added"),
        pytest.param('Error: no repo named "linkerd" found', ChartNotFoundError, id="no repo named"),
        pytest.param("Error: no repositories configured", ChartNotFoundError, id="no repositories at all"),
        pytest.param(
            'Error: chart "linkerd-control-plane" matching 9.9.9 not found in linkerd index. '
            "(try 'helm repo update')",
            ChartNotFoundError,
            id="a chart version missing from the index",
        ),
        pytest.param(
            'Error: query: failed to query with labels: secrets is forbidden: User "ci" cannot list resource '
            '"secrets" in API group "" in the namespace "linkerd"',
            HelmAccessDeniedError,
            id="a forbidden helm call",
        ),
        pytest.param("Error: UPGRADE FAILED: context deadline exceeded", HelmError, id="a --wait timeout is lasting"),
        pytest.param(
            "Error: UPGRADE FAILED: template: linkerd-control-plane/templates/x.yaml:3: nil pointer evaluating",
            HelmError,
            id="a template error is lasting",
        ),
        pytest.param(
            'Error: INSTALLATION FAILED: create: failed to create: namespaces "nowhere" not found',
            HelmError,
            id="a missing namespace is not a missing release",
        ),
    ],
)
def test_lasting_helm_failures_are_typed(text: str, cls: type[HelmError]) -> None:
    """Locks, missing releases and charts, refusals and other failures: each its class, none retried."""
    error = classify(text)
    assert type(error) is cls
    assert isinstance(error, HelmError)
    assert not error.retryable
    assert error.message == text


def test_a_locked_release_keeps_helms_words() -> None:
    """The executor still recognises helm's "another operation" text in the message."""
    error = classify("Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress\n")
    assert isinstance(error, ReleaseLockedError)
    assert "another operation" in error.message.lower()
    assert "helm rollback" in error.hint


def test_a_forbidden_helm_call_names_what_to_grant() -> None:
    """helm's text carries the API server's denial; the hint names the verb and resource."""
    error = classify(
        'Error: secrets is forbidden: User "ci" cannot list resource "secrets" in API group "" in the namespace "x"'
    )
    assert isinstance(error, HelmAccessDeniedError)
    assert isinstance(error, AccessDeniedError)
    assert "grant list on secrets in namespace x" in error.hint


def test_helm_text_is_redacted() -> None:
    """A private key echoed by helm never reaches the message."""
    key = "-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----"
    error = classify(f"Error: UPGRADE FAILED: bad value {key}")
    assert "MHc" not in error.message
    assert "<redacted>" in error.message


def test_our_own_errors_pass_through() -> None:
    """An UpgraderError is already classified."""
    error = NotFoundError("gone")
    assert classify(error) is error


def test_mapped_raises_the_classified_error_from_the_outside_one() -> None:
    """A block of client calls raises the typed error, chained to the client's."""
    exc = _api(503, "Service Unavailable")
    with pytest.raises(TransientError) as info, mapped("reading ConfigMap linkerd/linkerd-config"):
        raise exc
    assert info.value.__cause__ is exc
    assert "reading ConfigMap linkerd/linkerd-config" in info.value.message


def test_mapped_lets_our_bugs_through() -> None:
    """A KeyError in our own code is not an API failure: it is not dressed up as one."""
    with pytest.raises(KeyError), mapped("reading"):
        raise KeyError("spec")
    assert not outside(KeyError("spec"))
