"""Transient errors are retried (bounded); permanent ones and locked releases stop the run with a clear hint."""

from __future__ import annotations

import pytest

from tests.fakes import MemoryStore
from tests.test_execution import FakeCluster, _executor, _plan
from upgrader.adapters.cluster_ports import retrying
from upgrader.errors import ClusterUnreachableError, HelmError, InputError
from upgrader.execution import RunStoppedError
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
