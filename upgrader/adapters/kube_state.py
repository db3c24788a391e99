"""Run state kept in the cluster: checkpoints as Secrets and the installation lock as a Lease."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from upgrader.checkpoints import Checkpoint, check_run_id, serialise
from upgrader.errors import UpgraderError
from upgrader.locking import LEASE_SECONDS, LeaseView, decide, lease_name

RUN_LABEL = "upgrader.io/run"


class LockRefusedError(UpgraderError):
    """Another run holds the installation lock."""

    exit_code = 3


class SecretCheckpointStore:
    """One Secret ``upgrader-run-<run_id>`` (label upgrader.io/run=true) per run in ``namespace``."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self._core: Any = client.CoreV1Api(api)  # dict bodies; the client types them as models
        self.namespace = namespace

    @staticmethod
    def _name(run_id: str) -> str:
        return f"upgrader-run-{check_run_id(run_id)}"

    def fetch(self, *, run_id: str) -> Checkpoint | None:
        try:
            secret = self._core.read_namespaced_secret(self._name(run_id), self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise UpgraderError(
                f"cannot read checkpoint Secret {self.namespace}/{self._name(run_id)}: {exc.reason}",
                hint="check access to Secrets in the state namespace",
            ) from exc
        return Checkpoint.model_validate_json(base64.b64decode(secret.data["checkpoint.json"]))

    def store(self, *, checkpoint: Checkpoint) -> None:
        body: dict[str, Any] = {
            "metadata": {
                "name": self._name(checkpoint.run_id),
                "labels": {RUN_LABEL: "true"},
                "annotations": {"upgrader.io/state": str(checkpoint.state)},
            },
            "type": "Opaque",
            "data": {"checkpoint.json": base64.b64encode(serialise(checkpoint).encode()).decode()},
        }
        try:
            self._core.replace_namespaced_secret(self._name(checkpoint.run_id), self.namespace, body)
        except ApiException as exc:
            if exc.status != 404:
                raise UpgraderError(f"cannot write checkpoint to {self.namespace}: {exc.reason}") from exc
            self._core.create_namespaced_secret(self.namespace, body)

    def runs(self) -> list[Checkpoint]:
        items = self._core.list_namespaced_secret(self.namespace, label_selector=f"{RUN_LABEL}=true").items
        found = [Checkpoint.model_validate_json(base64.b64decode(s.data["checkpoint.json"])) for s in items]
        return sorted(found, key=lambda c: c.started_at)

    def purge(self, *, run_id: str) -> None:
        try:
            self._core.delete_namespaced_secret(self._name(run_id), self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise


class LeaseLock:
    """The installation lock as a coordination.k8s.io Lease, written with optimistic concurrency."""

    def __init__(self, api: client.ApiClient, namespace: str, control_plane_namespace: str) -> None:
        self._coord: Any = client.CoordinationV1Api(api)  # dict bodies; the client types them as models
        self.namespace = namespace
        self.name = lease_name(control_plane_namespace)

    def observe(self) -> LeaseView | None:
        try:
            lease = self._coord.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        spec = lease.spec
        renewed = spec.renew_time or spec.acquire_time or dt.datetime.fromtimestamp(0, dt.UTC)
        return LeaseView(
            spec.holder_identity or "",
            renewed,
            spec.lease_duration_seconds or LEASE_SECONDS,
            lease.metadata.resource_version,
        )

    def acquire(
        self, me: str, now: dt.datetime, *, take_over: bool = False, holder_gone: Callable[[str], bool] | None = None
    ) -> str:
        """Take or renew the lock for ``me``; LockRefusedError names the holder otherwise."""
        existing = self.observe()
        gone = bool(existing and existing.holder and holder_gone and holder_gone(existing.holder))
        decision = decide(existing, me, now, take_over=take_over, holder_gone=gone)
        if decision.action == "refuse":
            raise LockRefusedError(f"lock {self.namespace}/{self.name}: {decision.reason}")
        spec = {
            "holderIdentity": me,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        if decision.action != "renew":
            spec["acquireTime"] = spec["renewTime"]
        try:
            if existing is None:
                self._coord.create_namespaced_lease(self.namespace, {"metadata": {"name": self.name}, "spec": spec})
            else:
                body = {"metadata": {"name": self.name, "resourceVersion": existing.resource_version}, "spec": spec}
                self._coord.replace_namespaced_lease(self.name, self.namespace, body)
        except ApiException as exc:
            if exc.status == 409:  # someone else wrote the Lease between our read and write
                holder = (self.observe() or LeaseView("another run", now, LEASE_SECONDS)).holder
                raise LockRefusedError(
                    f"lock {self.namespace}/{self.name}: taken at the same moment by {holder}",
                    hint="only one run acts at a time; check it with upgrader status",
                ) from exc
            raise UpgraderError(
                f"cannot take the lock {self.namespace}/{self.name}: {exc.status} {_api_reason(exc)}",
                hint="upgrader needs create/update on leases.coordination.k8s.io in the control-plane namespace",
            ) from exc
        return decision.reason

    def release(self, me: str) -> None:
        """Give the lock up if ``me`` holds it."""
        existing = self.observe()
        if existing is not None and existing.holder == me:
            body = {
                "metadata": {"name": self.name, "resourceVersion": existing.resource_version},
                "spec": {"holderIdentity": None, "leaseDurationSeconds": LEASE_SECONDS},
            }
            self._coord.replace_namespaced_lease(self.name, self.namespace, body)


def _api_reason(exc: ApiException) -> str:
    """The API server's own message (e.g. "namespace ... is being terminated"), else the HTTP reason."""
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or exc.reason)
