"""Transient errors are retried (bounded); permanent ones and locked releases stop the run with a clear hint."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException
from pyhelm3 import errors as helm_errors

from tests.fakes import MemoryStore
from tests.test_execution import FakeCluster, _executor, _plan
from upgrader.adapters.cluster_ports import ClusterPorts
from upgrader.adapters.errors import classify
from upgrader.adapters.helm import HelmAdapter
from upgrader.adapters.kube import KubeAdapter
from upgrader.adapters.kube_state import SecretCheckpointStore
from upgrader.adapters.retrying import ATTEMPTS, UNREACHABLE_PATIENCE, retrying, wait_for_the_api
from upgrader.checkpoints import Checkpoint
from upgrader.errors import (
    AccessDeniedError,
    ClusterUnreachableError,
    HelmError,
    InputError,
    ReleaseLockedError,
    TransientError,
    TransientHelmError,
)
from upgrader.execution import RunStoppedError
from upgrader.ports import HelmRelease, Workload
from upgrader.states import RunState


def test_transient_errors_are_retried_until_the_call_succeeds() -> None:
    """Two 'API unreachable' failures, then success: the value comes back after two (injected) sleeps."""
    calls, sleeps = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ClusterUnreachableError("connection refused")
        return "ok"

    assert retrying(flaky, sleep=sleeps.append) == "ok"
    assert (len(calls), len(sleeps)) == (3, 2)


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(TransientError("unable to handle the request", status=503), id="a busy API"),
        pytest.param(ClusterUnreachableError("connection refused"), id="an API that does not answer (no run)"),
    ],
)
def test_retries_are_bounded(error: TransientError) -> None:
    """An API that keeps failing for a passing reason fails after five attempts with the original error
    (outside a run an unanswering API gets no more: one-shot commands answer, not wait)."""
    calls: list[int] = []

    def busy() -> str:
        calls.append(1)
        raise error

    with pytest.raises(type(error)):
        retrying(busy, sleep=lambda _s: None)
    assert len(calls) == ATTEMPTS


@pytest.fixture
def waiting() -> Iterator[None]:
    """As while a run holds the lock: an unanswering API is waited for."""
    wait_for_the_api(True)
    yield
    wait_for_the_api(False)


@pytest.mark.usefixtures("waiting")
def test_an_api_that_does_not_answer_is_waited_for_with_backoff_then_given_up() -> None:
    """While a run holds the lock, connection refused is retried past five attempts, each wait longer or
    capped, until about UNREACHABLE_PATIENCE seconds of backoff; then the original error comes back
    (the sleep is injected)."""
    calls: list[int] = []
    sleeps: list[float] = []

    def down() -> str:
        calls.append(1)
        raise ClusterUnreachableError("connection refused")

    with pytest.raises(ClusterUnreachableError):
        retrying(down, sleep=sleeps.append)
    assert len(calls) > ATTEMPTS
    assert len(calls) == len(sleeps) + 1
    assert sleeps[0] < 2 <= sleeps[3], sleeps  # backoff, never a burst
    assert UNREACHABLE_PATIENCE <= sum(sleeps) < UNREACHABLE_PATIENCE + 10


@pytest.mark.usefixtures("waiting")
def test_an_api_back_within_the_patience_is_ridden_out() -> None:
    """Twenty seconds of connection refused (a restarting API server) end in the call's answer."""
    sleeps: list[float] = []

    def restarting() -> str:
        if sum(sleeps) < 20:
            raise ClusterUnreachableError("connection refused")
        return "ok"

    assert retrying(restarting, sleep=sleeps.append) == "ok"


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(InputError("nope"), id="bad input"),
        pytest.param(AccessDeniedError("forbidden"), id="a refusal"),
        pytest.param(ReleaseLockedError("another operation is in progress"), id="a locked release"),
    ],
)
def test_permanent_errors_are_not_retried(error: Exception) -> None:
    """Only TransientError is retried: anything else fails at once."""
    calls: list[int] = []

    def bad() -> str:
        calls.append(1)
        raise error

    with pytest.raises(type(error)):
        retrying(bad, sleep=lambda _s: None)
    assert calls == [1]


def test_a_servers_retry_after_is_honoured() -> None:
    """A 429 asking for 7 seconds is waited for at least that long (the sleep is injected: no real wait)."""
    sleeps: list[float] = []
    answers = iter([TransientError("throttled", status=429, delay=7.0)])

    def throttled() -> str:
        for error in answers:
            raise error
        return "ok"

    assert retrying(throttled, sleep=sleeps.append) == "ok"
    assert len(sleeps) == 1
    assert sleeps[0] >= 7.0


class LockedCluster(FakeCluster):
    def upgrade(self, name: str, *args: object, **kwargs: object):  # type: ignore[no-untyped-def, override]
        if name == "linkerd-control-plane":  # what the helm adapter raises for helm's words
            raise classify("Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress")
        return super().upgrade(name, *args, **kwargs)  # type: ignore[arg-type]


def test_a_release_locked_by_another_helm_operation_is_reported_not_retried() -> None:
    """helm's 'another operation is in progress' stops the run naming the locked release and the unlock."""
    executor = _executor(LockedCluster(), _plan("stable-2.12.6", "stable-2.13.7"), MemoryStore())
    with pytest.raises(RunStoppedError, match="locked by another helm operation") as info:
        executor.run()
    assert "helm rollback linkerd-control-plane" in info.value.hint
    assert executor.checkpoint.stopped_in == RunState.UPGRADING_CONTROL_PLANE


class _Kube:
    api_client = None


class _FlakyHelm:
    """Our helm adapter's upgrade/status, failing the first ``failures`` upgrades with ``error``."""

    def __init__(self, failures: int, error: Exception, *, lands: bool = False, status: str = "deployed") -> None:
        self.failures, self.error, self.lands, self.state = failures, error, lands, status
        self.upgrades = 0
        self.chart_version = "1.12.7-old"

    def upgrade(self, name: str, chart: str, namespace: str, values: object, **kw: object) -> HelmRelease:
        self.upgrades += 1
        if self.upgrades <= self.failures:
            if self.lands:  # the upgrade happened, only the answer was lost
                self.chart_version = str(kw["version"])
            raise self.error
        self.chart_version = str(kw["version"])
        return self.status(name, namespace)

    def status(self, name: str, namespace: str) -> HelmRelease:
        return HelmRelease(name, namespace, 1 + self.upgrades, self.state, name, self.chart_version)


def _ports(helm: _FlakyHelm) -> ClusterPorts:
    return ClusterPorts(_Kube(), helm, preflight=lambda _p, _i: [], sleep=lambda _s: None)  # type: ignore[arg-type]


def _upgrade(ports: ClusterPorts) -> HelmRelease:
    return ports.upgrade(
        "linkerd-control-plane",
        "linkerd/linkerd-control-plane",
        "linkerd",
        {},
        version="1.12.7",
        reset_values=True,
        reuse_values=False,
    )


def test_the_helm_adapter_raises_a_retryable_error_for_a_passing_failure() -> None:
    """helm's stderr goes through classify: an etcd leader change is a TransientHelmError."""

    async def fails() -> None:
        raise helm_errors.Error(1, b"", b"Error: UPGRADE FAILED: etcdserver: leader changed")

    with pytest.raises(TransientHelmError) as info:
        HelmAdapter()._call(fails())
    assert info.value.retryable


def test_a_transient_upgrade_failure_is_retried() -> None:
    """Two passing failures, then the upgrade goes through."""
    helm = _FlakyHelm(2, TransientHelmError("Error: UPGRADE FAILED: etcdserver: leader changed"))
    assert _upgrade(_ports(helm)).chart_version == "1.12.7"
    assert helm.upgrades == 3


def test_an_upgrade_that_landed_before_its_answer_was_lost_is_not_repeated() -> None:
    """A retry first looks: the release at the target means the lost attempt did the work."""
    helm = _FlakyHelm(1, TransientHelmError("Error: http2: client connection lost"), lands=True)
    assert _upgrade(_ports(helm)).chart_version == "1.12.7"
    assert helm.upgrades == 1, "the release was observed at the target: no second upgrade"


def test_a_lasting_upgrade_failure_is_not_retried() -> None:
    """A --wait timeout is not passing: one attempt."""
    helm = _FlakyHelm(1, HelmError("Error: UPGRADE FAILED: context deadline exceeded"))
    with pytest.raises(HelmError, match="deadline"):
        _upgrade(_ports(helm))
    assert helm.upgrades == 1


def test_transient_upgrade_retries_are_bounded() -> None:
    """An API that stays throttled fails after ATTEMPTS upgrades."""
    helm = _FlakyHelm(99, TransientHelmError("Error: UPGRADE FAILED: Too Many Requests"))
    with pytest.raises(TransientHelmError):
        _upgrade(_ports(helm))
    assert helm.upgrades == ATTEMPTS


def test_metric_samples_are_retried_on_passing_failures() -> None:
    """Prometheus restarting (MetricsUnavailableError is a TransientError) is retried."""
    from upgrader.adapters.cluster_ports import RetryingMetrics  # noqa: PLC0415
    from upgrader.metrics import MetricsUnavailableError, Sample  # noqa: PLC0415

    calls: list[str] = []

    class Flaky:
        def sample(self, namespace: str, window_seconds: int) -> Sample:
            calls.append(namespace)
            if len(calls) < 3:
                raise MetricsUnavailableError("prometheus answered 503")
            return Sample(namespace, 0.999, 40.0, 10.0)

    assert RetryingMetrics(Flaky(), sleep=lambda _s: None).sample("shop", 60).success_rate == 0.999
    assert calls == ["shop"] * 3


class _Apps:
    """The AppsV1Api calls ClusterPorts.restart makes: the first ``failures`` patches fail with ``error``."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error = failures, error
        self.patches: list[tuple[str, str, dict[str, Any]]] = []

    def patch_namespaced_deployment(self, name: str, namespace: str, body: dict[str, Any], **_kw: object) -> None:
        self.patches.append((name, namespace, body))
        if len(self.patches) <= self.failures:
            raise self.error

    patch_namespaced_stateful_set = patch_namespaced_daemon_set = patch_namespaced_deployment


def _restarting(apps: _Apps, sleeps: list[float]) -> ClusterPorts:
    ports = ClusterPorts(_Kube(), _FlakyHelm(0, Exception()), preflight=lambda _p, _i: [], sleep=sleeps.append)  # type: ignore[arg-type]
    ports._apps = apps
    return ports


WEB = Workload("Deployment", "shop", "web", 2)


def test_a_restart_patch_answered_503_is_retried_and_then_lands() -> None:
    """The API answers the first restart patch 503: the same patch is sent again and succeeds, with no real sleep."""
    apps, sleeps = _Apps(1, ApiException(status=503, reason="Service Unavailable")), []
    _restarting(apps, sleeps).restart(WEB, {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"})
    assert len(apps.patches) == 2
    assert apps.patches[0] == apps.patches[1]
    assert apps.patches[1][2] == {
        "spec": {
            "template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"}}}
        }
    }
    assert len(sleeps) == 1


def test_a_restart_the_api_keeps_refusing_for_a_passing_reason_stops_after_the_last_attempt() -> None:
    """A 503 on every patch ends after ATTEMPTS patches with a retryable error naming the workload."""
    apps, sleeps = _Apps(99, ApiException(status=503, reason="Service Unavailable")), []
    with pytest.raises(TransientError, match="Deployment shop/web") as info:
        _restarting(apps, sleeps).restart(WEB, {"a": "1"})
    assert info.value.status == 503
    assert len(apps.patches) == ATTEMPTS
    assert len(sleeps) == ATTEMPTS - 1


def test_a_forbidden_restart_is_not_retried_and_says_what_to_grant() -> None:
    """A 403 on the patch stops at once, naming the verb and resource to grant."""
    denial = (
        'deployments.apps "web" is forbidden: User "ci" cannot patch resource "deployments" in API group "apps" '
        'in the namespace "shop"'
    )
    body = json.dumps({"kind": "Status", "message": denial, "code": 403})
    apps, sleeps = _Apps(99, ApiException(status=403, reason="Forbidden", body=body)), []
    with pytest.raises(AccessDeniedError) as info:
        _restarting(apps, sleeps).restart(WEB, {"a": "1"})
    assert len(apps.patches) == 1
    assert sleeps == []
    assert "grant patch on deployments.apps in namespace shop" in info.value.hint


class _Command:
    """pyhelm3's runner, failing the first ``failures`` calls of each command with helm's ``stderr``."""

    def __init__(self, failures: int, stderr: str) -> None:
        self.failures, self.stderr = failures, stderr.encode()
        self.calls: list[str] = []

    async def _answer(self, command: str, result: Any) -> Any:
        self.calls.append(command)
        if self.calls.count(command) <= self.failures:
            raise helm_errors.Error(1, b"", self.stderr)
        return result

    async def rollback(self, release: str, revision: int, **_kw: object) -> None:
        await self._answer("rollback", None)

    async def get_values(self, release: str, **_kw: object) -> dict[str, Any]:
        return dict(await self._answer("get values", {"controllerReplicas": 3}))


def _helm(command: _Command, sleeps: list[float]) -> HelmAdapter:
    return HelmAdapter(command=command, sleep=sleeps.append)


def test_helm_rollback_is_retried_on_a_passing_failure() -> None:
    """An etcd leader change during helm rollback: the rollback runs again and succeeds."""
    command, sleeps = _Command(1, "Error: ROLLBACK FAILED: etcdserver: leader changed"), []
    _helm(command, sleeps).rollback("linkerd-control-plane", "linkerd", 3)
    assert command.calls == ["rollback", "rollback"]
    assert len(sleeps) == 1


def test_helm_get_values_is_retried_on_a_passing_failure() -> None:
    """The values read (helm get values) survives a throttled API."""
    command, sleeps = _Command(2, "Error: Too Many Requests"), []
    assert _helm(command, sleeps).get_values("linkerd-control-plane", "linkerd") == {"controllerReplicas": 3}
    assert command.calls == ["get values"] * 3


def test_a_locked_release_is_not_rolled_back_again() -> None:
    """helm's "another operation is in progress" on rollback is a ReleaseLockedError at once, helm's words kept."""
    stderr = "Error: ROLLBACK FAILED: another operation (install/upgrade/rollback) is in progress"
    command, sleeps = _Command(99, stderr), []
    with pytest.raises(ReleaseLockedError, match="another operation"):
        _helm(command, sleeps).rollback("linkerd-control-plane", "linkerd", 3)
    assert command.calls == ["rollback"]
    assert sleeps == []


class _Core:
    """The CoreV1Api reads KubeAdapter makes: answers in order (an exception is raised, anything else returned)."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.calls = 0

    def read_namespaced_config_map(self, name: str, namespace: str, **_kw: object) -> object:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _kube(core: _Core, sleeps: list[float]) -> KubeAdapter:
    kube = KubeAdapter.__new__(KubeAdapter)  # no kubeconfig: the client is replaced
    kube._core, kube._sleep = core, sleeps.append  # type: ignore[assignment]
    return kube


class _ConfigMap:
    data = {"values": "linkerdVersion: stable-2.14.10"}  # noqa: RUF012 - a read-only stand-in


def test_a_read_answered_503_is_retried() -> None:
    """KubeAdapter reads go through the same retry policy: a 503, then the ConfigMap."""
    core, sleeps = _Core(ApiException(status=503, reason="Service Unavailable"), _ConfigMap()), []
    assert _kube(core, sleeps).get_config_map("linkerd", "linkerd-config") == _ConfigMap.data
    assert (core.calls, len(sleeps)) == (2, 1)


def test_a_missing_config_map_is_none_not_an_error() -> None:
    """404 is NotFoundError at the edge, which the adapter answers with None (and does not retry)."""
    core, sleeps = _Core(ApiException(status=404, reason="Not Found")), []
    assert _kube(core, sleeps).get_config_map("linkerd", "linkerd-config") is None
    assert (core.calls, sleeps) == (1, [])


def test_a_refused_read_is_access_denied() -> None:
    """403 on a read is AccessDeniedError naming the object, not 'the API did not answer'."""
    core, sleeps = _Core(ApiException(status=403, reason="Forbidden")), []
    with pytest.raises(AccessDeniedError, match="ConfigMap linkerd/linkerd-config"):
        _kube(core, sleeps).get_config_map("linkerd", "linkerd-config")
    assert sleeps == []


class _Secrets:
    """The CoreV1Api Secret calls of the checkpoint store: replace fails with ``replace_error`` first."""

    def __init__(self, *replace_errors: Exception) -> None:
        self.replace_errors = list(replace_errors)
        self.calls: list[str] = []

    def replace_namespaced_secret(self, name: str, namespace: str, body: object, **_kw: object) -> None:
        self.calls.append(f"replace {namespace}/{name}")
        if self.replace_errors:
            raise self.replace_errors.pop(0)

    def create_namespaced_secret(self, namespace: str, body: object, **_kw: object) -> None:
        self.calls.append(f"create {namespace}")


def _store(secrets: _Secrets, sleeps: list[float]) -> SecretCheckpointStore:
    store = SecretCheckpointStore(None, "linkerd", sleep=sleeps.append)  # type: ignore[arg-type]
    store._core = secrets
    return store


CHECKPOINT = Checkpoint.new("run-1", {}, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


def test_a_first_checkpoint_is_created_when_there_is_none_to_replace() -> None:
    """replace answers 404 (NotFoundError at the edge): the Secret is created instead."""
    secrets, sleeps = _Secrets(ApiException(status=404, reason="Not Found")), []
    _store(secrets, sleeps).store(checkpoint=CHECKPOINT)
    assert secrets.calls == ["replace linkerd/upgrader-run-run-1", "create linkerd"]


def test_a_checkpoint_write_dropped_by_the_network_is_written_again() -> None:
    """The same body twice lands the same way: a reset connection is retried."""
    reset = urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset by peer"))
    secrets, sleeps = _Secrets(reset), []
    _store(secrets, sleeps).store(checkpoint=CHECKPOINT)
    assert secrets.calls == ["replace linkerd/upgrader-run-run-1"] * 2
    assert len(sleeps) == 1
