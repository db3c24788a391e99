"""Losing the Kubernetes API or the state store mid-run: the lock's reads and renewals ride out a
restarting API server with backoff, and what cannot be ridden out stops the run with the command
that continues it, never an internal error or a half-written checkpoint."""

from __future__ import annotations

import datetime as dt
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

import upgrader
from upgrader.adapters.errors import HelmUnreachableError, classify
from upgrader.adapters.kube import CONNECT_RETRIES, USER_AGENT, KubeAdapter
from upgrader.adapters.kube_state import LeaseLock
from upgrader.adapters.retrying import ATTEMPTS, retrying, wait_for_the_api
from upgrader.checkpoints import Checkpoint, FileStore
from upgrader.errors import ClusterUnreachableError, TransientError, TransientHelmError, UpgraderError
from upgrader.locking import LockLostError
from upgrader.runs import _stopped_outside
from upgrader.states import RunState

NOW = dt.datetime(2026, 11, 22, 12, 0, 0, 1, tzinfo=dt.UTC)
REFUSED = urllib3.exceptions.MaxRetryError(
    None,  # type: ignore[arg-type]
    "/apis/coordination.k8s.io/v1/namespaces/linkerd/leases/x",
    urllib3.exceptions.NewConnectionError(None, "Failed to establish a new connection: Connection refused"),  # type: ignore[arg-type]
)


class FakeCoordination:
    """The CoordinationV1Api calls LeaseLock makes, over one Lease; ``down`` calls fail before answering,
    ``lost_answers`` patches land but their answers are lost (a reset after the write)."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = 0
        self.lost_answers = 0
        self.calls: list[str] = []

    def _view(self) -> Any:
        assert self.lease is not None
        spec = self.lease["spec"]
        return SimpleNamespace(
            spec=SimpleNamespace(
                holder_identity=spec["holderIdentity"],
                renew_time=dt.datetime.fromisoformat(spec["renewTime"].replace("Z", "+00:00")),
                acquire_time=None,
                lease_duration_seconds=spec["leaseDurationSeconds"],
            ),
            metadata=SimpleNamespace(resource_version=str(self.version)),
        )

    def _answer(self, call: str) -> None:
        self.calls.append(call)
        if self.down:
            self.down -= 1
            raise REFUSED

    def read_namespaced_lease(self, name: str, namespace: str, **_: Any) -> Any:
        self._answer("read")
        if self.lease is None:
            raise ApiException(status=404, reason="Not Found")
        return self._view()

    def create_namespaced_lease(self, namespace: str, body: dict[str, Any], **_: Any) -> Any:
        self._answer("create")
        self.lease, self.version = body, self.version + 1
        return self._view()

    def patch_namespaced_lease(self, name: str, namespace: str, body: dict[str, Any], **_: Any) -> Any:
        self._answer("patch")
        if self.lease is None:
            raise ApiException(status=404, reason="Not Found")
        if body["metadata"]["resourceVersion"] != str(self.version):
            raise ApiException(status=409, reason="Conflict")
        self.lease, self.version = body, self.version + 1
        if self.lost_answers:
            self.lost_answers -= 1
            raise urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))
        return self._view()


@pytest.fixture
def waiting() -> Iterator[None]:
    """As while a run holds the lock: an unanswering API is waited for (upgrader.runs turns this on)."""
    wait_for_the_api(True)
    yield
    wait_for_the_api(False)


def _held(coordination: FakeCoordination, sleeps: list[float]) -> LeaseLock:
    lock = LeaseLock(None, "linkerd", "linkerd", coordination=coordination, sleep=sleeps.append)
    lock.acquire("me@host:1/run-1", NOW)
    return lock


@pytest.mark.usefixtures("waiting")
def test_a_lock_check_rides_out_a_restarting_api_server_with_backoff() -> None:
    """Three refused reads (urllib3's MaxRetryError) are waited out with growing sleeps; the check passes."""
    coordination, sleeps = FakeCoordination(), list[float]()
    lock = _held(coordination, sleeps)
    coordination.down = 3
    assert lock.check().holder == "me@host:1/run-1"
    assert len(sleeps) == 3
    assert sleeps[0] < sleeps[2]


def test_a_renewal_whose_answer_was_lost_is_retried_and_adopted_not_taken_for_a_lost_lock() -> None:
    """A renewal that landed but whose answer a reset lost is retried: the 409 it meets is our own write."""
    coordination, sleeps = FakeCoordination(), list[float]()
    lock = _held(coordination, sleeps)
    coordination.lost_answers = 1
    token = lock.renew(NOW + dt.timedelta(seconds=20))
    assert token.resource_version == str(coordination.version)
    assert lock.check() == token
    assert len(sleeps) == 1


@pytest.mark.usefixtures("waiting")
def test_an_api_that_stays_down_is_a_retryable_error_naming_the_lock_not_an_internal_error() -> None:
    """Past the retry policy's patience the renewal raises ClusterUnreachableError, never MaxRetryError."""
    coordination, sleeps = FakeCoordination(), list[float]()
    lock = _held(coordination, sleeps)
    coordination.down = 1000
    with pytest.raises(ClusterUnreachableError, match="renew the lock linkerd/") as caught:
        lock.renew(NOW + dt.timedelta(seconds=20))
    assert "Connection refused" in caught.value.message
    assert sum(sleeps) >= 40


def test_status_reads_the_lock_once_without_waiting_for_the_api() -> None:
    """`upgrader status` works offline: describe() is one read, no retries."""
    coordination, sleeps = FakeCoordination(), list[float]()
    lock = _held(coordination, sleeps)
    coordination.down = 1000
    with pytest.raises(ClusterUnreachableError):
        lock.describe()
    assert sleeps == []


def _checkpoint(state: RunState = RunState.UPGRADING_CONTROL_PLANE) -> Checkpoint:
    plan = {"from": "stable-2.13.7", "to": "stable-2.14.10", "hops": [{"to": "stable-2.14.10"}]}
    return Checkpoint.new("run-1", plan, NOW).model_copy(update={"state": state})


@pytest.mark.parametrize(
    ("error", "words"),
    [
        pytest.param(ClusterUnreachableError("connection refused"), "lost the Kubernetes API", id="an unanswering API"),
        pytest.param(TransientError("503 Service Unavailable", status=503), "kept failing", id="an API that keeps 503"),
    ],
)
def test_a_run_that_lost_the_api_says_so_and_names_the_resume_command(error: TransientError, words: str) -> None:
    """The retry policy giving up outside a step becomes one message with the resume command."""
    stopped = _stopped_outside(error, _checkpoint())
    assert type(stopped) is UpgraderError
    assert words in stopped.message
    assert "UpgradingControlPlane" in stopped.message
    assert "upgrader resume run-1" in stopped.hint


def test_a_client_error_that_escaped_an_adapter_is_worded_as_a_lost_api_not_an_internal_error() -> None:
    """urllib3's MaxRetryError (connection refused after its own retries) reaching the run: the lost-API
    message and the resume command, never `internal error: MaxRetryError`."""
    stopped = _stopped_outside(REFUSED, _checkpoint())
    assert "lost the Kubernetes API in UpgradingControlPlane" in stopped.message
    assert "Connection refused" in stopped.message
    assert "upgrader resume run-1" in stopped.hint


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(ValueError("a bug"), id="a bug stays a bug"),
        pytest.param(FileNotFoundError(2, "No such file"), id="a file's OSError is not the API's"),
        pytest.param(UpgraderError("bad values", hint="fix them"), id="a run's own error keeps its words"),
    ],
)
def test_what_is_not_a_lost_api_or_lock_is_raised_unchanged(error: Exception) -> None:
    """Only lost locks and API failures are reworded; anything else is raised as it was."""
    with pytest.raises(type(error)) as caught:
        _stopped_outside(error, _checkpoint())
    assert caught.value is error


def test_a_lock_that_expired_while_the_api_was_down_names_the_resume_command() -> None:
    """A lost lock keeps its class (exit 3) and gains the resume command when its hint lacks it."""
    stopped = _stopped_outside(LockLostError("lock expired", hint="check the API"), _checkpoint())
    assert isinstance(stopped, LockLostError)
    assert stopped.hint == "check the API (upgrader resume run-1)"


def test_a_state_store_that_refuses_writes_keeps_the_last_checkpoint_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only folder (EROFS at the rename) is an UpgraderError naming the file and the resume command;
    the checkpoint on disk is the last one written and no temporary file is left."""
    store = FileStore(tmp_path / "state")
    store.store(checkpoint=_checkpoint(RunState.UPGRADING_CRDS))

    def read_only(*_: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(UpgraderError) as caught:
        store.store(checkpoint=_checkpoint(RunState.UPGRADING_CONTROL_PLANE))
    monkeypatch.undo()
    assert "cannot write checkpoint" in caught.value.message
    assert "Read-only file system" in caught.value.message
    assert "upgrader resume run-1" in caught.value.hint
    kept = store.fetch(run_id="run-1")
    assert kept is not None
    assert kept.state == RunState.UPGRADING_CRDS
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["run-1.json"]


@pytest.mark.usefixtures("waiting")
def test_helm_that_cannot_reach_the_api_is_waited_for_like_any_unanswering_api() -> None:
    """helm's "kubernetes cluster unreachable" is both a helm failure and an unanswering API: retried with
    the long patience (a restarting API server), with the resume-friendly hint."""
    error = classify('Error: kubernetes cluster unreachable: Get "https://127.0.0.1:6443/version": connection refused')
    assert isinstance(error, HelmUnreachableError)
    assert isinstance(error, ClusterUnreachableError)
    assert isinstance(error, TransientHelmError)
    sleeps: list[float] = []

    def helm_upgrade() -> str:
        if sum(sleeps) < 20:
            raise error
        return "deployed"

    assert retrying(helm_upgrade, sleep=sleeps.append) == "deployed"
    assert len(sleeps) > ATTEMPTS - 1


def test_a_passing_helm_failure_that_is_not_about_reaching_the_api_keeps_the_short_budget() -> None:
    """helm's 'the server is currently unable to handle the request' is transient but not unreachable."""
    error = classify("Error: UPGRADE FAILED: the server is currently unable to handle the request")
    assert isinstance(error, TransientHelmError)
    assert not isinstance(error, ClusterUnreachableError)


def test_the_clients_own_retries_back_off_and_never_resend_a_request(tmp_path: Path) -> None:
    """urllib3 keeps two connect retries (nothing was sent) with a backoff, never read retries: our retry
    policy, with its backoff, decides the rest."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    retries = KubeAdapter(kubeconfig=kubeconfig).api_client.configuration.retries
    assert retries is CONNECT_RETRIES
    assert (retries.connect, retries.read, retries.status) == (2, 0, 0)
    assert retries.backoff_factor > 0


def test_the_client_names_itself_upgrader_with_its_version_so_the_audit_log_tells_it_from_helm(tmp_path: Path) -> None:
    """Every request carries the user agent ``upgrader/<version>`` (helm's children send their own)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    api = KubeAdapter(kubeconfig=kubeconfig).api_client
    assert api.user_agent == USER_AGENT == f"upgrader/{upgrader.__version__}"
    assert api.default_headers["User-Agent"] == USER_AGENT
