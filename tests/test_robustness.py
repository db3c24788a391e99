"""Transient errors are retried (bounded); permanent ones and locked releases stop the run with a clear hint."""

from __future__ import annotations

import pytest
from pyhelm3 import errors as helm_errors

from tests.fakes import MemoryStore
from tests.test_execution import FakeCluster, _executor, _plan
from upgrader.adapters.cluster_ports import ClusterPorts, retrying
from upgrader.adapters.helm import HelmAdapter, transient_helm_failure
from upgrader.errors import ClusterUnreachableError, HelmError, InputError, TransientHelmError
from upgrader.execution import RunStoppedError
from upgrader.ports import HelmRelease
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


def test_retries_are_bounded() -> None:
    """A cluster that never answers fails after five attempts with the original error."""
    calls: list[int] = []

    def down() -> str:
        calls.append(1)
        raise ClusterUnreachableError("connection refused")

    with pytest.raises(ClusterUnreachableError):
        retrying(down, sleep=lambda _s: None)
    assert len(calls) == 5


def test_permanent_errors_are_not_retried() -> None:
    """Bad input fails at once."""
    calls: list[int] = []

    def bad() -> str:
        calls.append(1)
        raise InputError("nope")

    with pytest.raises(InputError):
        retrying(bad, sleep=lambda _s: None)
    assert calls == [1]


class LockedCluster(FakeCluster):
    def upgrade(self, name: str, *args: object, **kwargs: object):  # type: ignore[no-untyped-def, override]
        if name == "linkerd-control-plane":
            raise HelmError("Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress")
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


@pytest.mark.parametrize(
    "text",
    [
        "Error: UPGRADE FAILED: etcdserver: leader changed",
        "Error: UPGRADE FAILED: the server is currently unable to handle the request (get deployments.apps)",
        "Error: UPGRADE FAILED: Too Many Requests",
        'Error: Get "https://127.0.0.1:6443/version": dial tcp 127.0.0.1:6443: connect: connection refused',
        "Error: UPGRADE FAILED: http2: client connection lost",
    ],
)
def test_passing_helm_failures_are_classified_transient(text: str) -> None:
    assert transient_helm_failure(text)


@pytest.mark.parametrize(
    "text",
    [
        "Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress",
        "Error: UPGRADE FAILED: context deadline exceeded",
        "Error: UPGRADE FAILED: template: linkerd-control-plane/templates/x.yaml:3: nil pointer evaluating",
    ],
)
def test_lasting_helm_failures_are_not_transient(text: str) -> None:
    assert not transient_helm_failure(text)


def test_the_helm_adapter_raises_a_retryable_error_for_a_passing_failure() -> None:
    async def fails() -> None:
        raise helm_errors.Error(1, b"", b"Error: UPGRADE FAILED: etcdserver: leader changed")

    with pytest.raises(TransientHelmError) as info:
        HelmAdapter()._call(fails())
    assert info.value.retryable


def test_a_transient_upgrade_failure_is_retried() -> None:
    helm = _FlakyHelm(2, TransientHelmError("Error: UPGRADE FAILED: etcdserver: leader changed"))
    assert _upgrade(_ports(helm)).chart_version == "1.12.7"
    assert helm.upgrades == 3


def test_an_upgrade_that_landed_before_its_answer_was_lost_is_not_repeated() -> None:
    helm = _FlakyHelm(1, TransientHelmError("Error: http2: client connection lost"), lands=True)
    assert _upgrade(_ports(helm)).chart_version == "1.12.7"
    assert helm.upgrades == 1, "the release was observed at the target: no second upgrade"


def test_a_lasting_upgrade_failure_is_not_retried() -> None:
    helm = _FlakyHelm(1, HelmError("Error: UPGRADE FAILED: context deadline exceeded"))
    with pytest.raises(HelmError, match="deadline"):
        _upgrade(_ports(helm))
    assert helm.upgrades == 1


def test_transient_upgrade_retries_are_bounded() -> None:
    helm = _FlakyHelm(99, TransientHelmError("Error: UPGRADE FAILED: Too Many Requests"))
    with pytest.raises(TransientHelmError):
        _upgrade(_ports(helm))
    assert helm.upgrades == 5


def test_metric_samples_are_retried_on_passing_failures() -> None:
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
