"""Run state kept in the cluster: checkpoints as Secrets and the installation lock as a Lease."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from upgrader.adapters.errors import mapped
from upgrader.adapters.retrying import retried, retrying
from upgrader.checkpoints import CHECKPOINT_HINT, Checkpoint, Survey, check_run_id, parse_checkpoint, serialise
from upgrader.errors import ClusterUnreachableError, InputError, NotFoundError, UpgraderError
from upgrader.locking import LEASE_SECONDS, FencingToken, LeaseView, LockLostError, decide, lease_name, lost_error

RUN_LABEL = "upgrader.io/run"


class LockRefusedError(UpgraderError):
    """Another run holds the installation lock."""

    exit_code = 3


class SecretCheckpointStore:
    """One Secret ``upgrader-run-<run_id>`` (label upgrader.io/run=true) per run in ``namespace``.

    Every call is retried on passing failures: reads, and writes that land the same way twice
    (replace or create of the same body, delete of a Secret that may be gone).
    """

    def __init__(self, api: client.ApiClient, namespace: str, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self._core: Any = client.CoreV1Api(api)  # dict bodies; the client types them as models
        self.namespace = namespace
        self._sleep = sleep

    @staticmethod
    def _name(run_id: str) -> str:
        return f"upgrader-run-{check_run_id(run_id)}"

    @retried
    def fetch(self, *, run_id: str) -> Checkpoint | None:
        try:
            with mapped(f"reading checkpoint Secret {self.namespace}/{self._name(run_id)}"):
                secret = self._core.read_namespaced_secret(self._name(run_id), self.namespace, _request_timeout=10)
        except NotFoundError:
            return None
        return self._checkpoint(secret)

    @retried
    def store(self, *, checkpoint: Checkpoint) -> None:
        name = self._name(checkpoint.run_id)
        body: dict[str, Any] = {
            "metadata": {
                "name": name,
                "labels": {RUN_LABEL: "true"},
                "annotations": {"upgrader.io/state": str(checkpoint.state)},
            },
            "type": "Opaque",
            "data": {"checkpoint.json": base64.b64encode(serialise(checkpoint).encode()).decode()},
        }
        try:
            with mapped(f"writing checkpoint Secret {self.namespace}/{name}"):
                self._core.replace_namespaced_secret(name, self.namespace, body, _request_timeout=10)
        except NotFoundError:
            with mapped(f"creating checkpoint Secret {self.namespace}/{name}"):
                self._core.create_namespaced_secret(self.namespace, body, _request_timeout=10)

    def _checkpoint(self, secret: Any) -> Checkpoint:
        """The checkpoint a Secret holds; a missing key, bad base64 or a bad document is an InputError naming it."""
        source = f"checkpoint Secret {self.namespace}/{getattr(secret.metadata, 'name', '?')}"
        encoded = (secret.data or {}).get("checkpoint.json")
        if not isinstance(encoded, str):
            raise InputError(f"{source} has no checkpoint.json", hint="delete the Secret if it is not a run")
        try:
            data = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise InputError(f"{source}: checkpoint.json is not base64", hint=CHECKPOINT_HINT) from None
        return parse_checkpoint(data, source=source)

    def runs(self) -> list[Checkpoint]:
        return self.survey().runs

    @retried
    def survey(self) -> Survey:
        with mapped(f"listing checkpoint Secrets in {self.namespace}"):
            items = self._core.list_namespaced_secret(
                self.namespace, label_selector=f"{RUN_LABEL}=true", _request_timeout=30
            ).items
        found = Survey()
        for secret in items:
            found.add(partial(self._checkpoint, secret), f"Secret {self.namespace}/{secret.metadata.name}")
        return found.sorted()

    @retried
    def purge(self, *, run_id: str) -> None:
        try:
            with mapped(f"deleting checkpoint Secret {self.namespace}/{self._name(run_id)}"):
                self._core.delete_namespaced_secret(self._name(run_id), self.namespace, _request_timeout=10)
        except NotFoundError:
            pass  # already gone: what purge wants


class LeaseLock:
    """The installation lock as a coordination.k8s.io Lease, written with optimistic concurrency.

    ``acquire`` keeps a fencing token (our holder identity and the resourceVersion of our last
    write). ``renew`` replaces the Lease with that resourceVersion and ``check`` reads it; both
    raise LockLostError when anyone else wrote it since or it is gone, and from then on this
    lock never writes the Lease again. ``acquire`` by the holder of the token is a renewal, so
    it cannot re-create a Lease it lost. ``coordination`` replaces the CoordinationV1Api (tests).
    """

    REQUEST_TIMEOUT = 10  # seconds; a renewal must not hang past the lease

    def __init__(
        self,
        api: client.ApiClient | None,
        namespace: str,
        control_plane_namespace: str,
        *,
        duration_seconds: int = LEASE_SECONDS,
        coordination: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        # dict bodies; the client types them as models
        self._coord: Any = coordination if coordination is not None else client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = lease_name(control_plane_namespace)
        self.duration_seconds = duration_seconds
        self._sleep = sleep  # between the retry policy's attempts (reads and renewals; see observe and _renew)
        self._writing = threading.Lock()  # one write at a time: a renewal racing another would conflict with it
        self._token: FencingToken | None = None
        self._ours: tuple[str, ...] = ()  # resourceVersions of our own last writes, newest last (swapped whole)
        self._unsure: tuple[str, ...] = ()  # renewTimes of our writes whose answer never came (they may have landed)
        self._lost: LockLostError | None = None

    @property
    def token(self) -> FencingToken | None:
        """The fencing token of the lock this object holds, or None."""
        return self._token

    def observe(self) -> LeaseView | None:
        """The Lease as it is now, or None when there is none (a read: retried while the API does not answer)."""
        return retrying(self._observe, sleep=self._sleep, what=f"reading the lock {self.namespace}/{self.name}")

    def _observe(self) -> LeaseView | None:
        try:
            lease = self._coord.read_namespaced_lease(self.name, self.namespace, _request_timeout=self.REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise self._failure("read", exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._failure("read", exc) from exc
        spec = lease.spec
        renewed = spec.renew_time or spec.acquire_time or dt.datetime.fromtimestamp(0, dt.UTC)
        return LeaseView(
            spec.holder_identity or "",
            renewed,
            spec.lease_duration_seconds or LEASE_SECONDS,
            lease.metadata.resource_version,
        )

    def describe(self) -> LeaseView | None:
        """Holder and last renewal of the lock, for `upgrader status` (see locking.lock_summary): one read, no retry."""
        return self._observe()

    def acquire(
        self,
        me: str,
        now: dt.datetime,
        *,
        take_over: bool = False,
        holder_gone: Callable[[str], bool] | None = None,
        holder_alive: Callable[[str], bool] | None = None,
        own_run_only: bool = False,
    ) -> str:
        """Take the lock for ``me`` and keep its token; LockRefusedError names the holder otherwise.

        Returns why the lock was granted. When ``me`` already holds the token this is ``renew``:
        LockLostError if the lock was lost meanwhile, never a new Lease.
        """
        with self._writing:
            if self._token is not None and self._token.holder == me:
                self._renew(now)
                return "this run holds the lock"
            existing = self.observe()
            holder = existing.holder if existing else ""
            gone = bool(holder and holder_gone and holder_gone(holder))
            alive = bool(holder and holder != me and holder_alive and holder_alive(holder))
            decision = decide(
                existing, me, now, take_over=take_over, holder_gone=gone, holder_alive=alive, own_run_only=own_run_only
            )
            if decision.action == "refuse":
                raise LockRefusedError(f"lock {self.namespace}/{self.name}: {decision.reason}")
            body = self._body(me, now, now, existing.resource_version if existing else None)
            try:
                if existing is None:
                    lease = self._coord.create_namespaced_lease(
                        self.namespace, body, _request_timeout=self.REQUEST_TIMEOUT
                    )
                else:
                    lease = self._coord.replace_namespaced_lease(
                        self.name, self.namespace, body, _request_timeout=self.REQUEST_TIMEOUT
                    )
            except ApiException as exc:
                if exc.status == 409:  # someone else wrote the Lease between our read and write
                    taker = (self.observe() or LeaseView("another run", now, LEASE_SECONDS)).holder
                    raise LockRefusedError(
                        f"lock {self.namespace}/{self.name}: taken at the same moment by {taker}",
                        hint="only one run acts at a time; check it with upgrader status",
                    ) from exc
                raise self._failure("take", exc) from exc
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise self._failure("take", exc) from exc
            self._token = FencingToken(me, lease.metadata.resource_version, now, now)
            self._ours = (self._token.resource_version,)
            self._unsure, self._lost = (), None
            return decision.reason

    def renew(self, now: dt.datetime) -> FencingToken:
        """Move renewTime to ``now`` if the Lease is still ours as we last wrote it; LockLostError otherwise."""
        with self._writing:
            return self._renew(now)

    def check(self) -> FencingToken:
        """Fence (one GET): LockLostError when the Lease is gone or anyone else wrote it since our last write."""
        token = self._held()
        view = self.observe()
        if view is not None and view.holder == token.holder and view.resource_version in self._ours:
            return token
        with self._writing:  # a renewal in flight may have written what we just read: judge once it is done
            token = self._held()
            if view is not None and view.holder == token.holder and view.resource_version in self._ours:
                return token
            adopted = self._adopt_if_landed(view)
            if adopted is None:
                raise self._lose(view)
            return adopted

    def release(self, me: str) -> bool:
        """Delete the Lease if ``me`` still holds it (never one this run lost); True when deleted."""
        with self._writing:
            if self._token is not None and self._token.holder == me:
                if self._lost is not None:
                    return False
                version = self._ours[-1]
            else:
                existing = self.observe()
                if existing is None or existing.holder != me:
                    return False
                version = existing.resource_version
            try:
                deleted = self._delete(version)
                if not deleted:  # written since: delete it only if we are still its holder (a write of ours)
                    existing = self.observe()
                    deleted = existing is not None and existing.holder == me and self._delete(existing.resource_version)
            finally:
                if self._token is not None and self._token.holder == me:
                    self._token, self._ours = None, ()
            return deleted

    def _held(self) -> FencingToken:
        if self._lost is not None:
            raise self._lost
        if self._token is None:
            raise LockLostError(
                f"lock {self.namespace}/{self.name} is not held by this run",
                hint="take the lock (acquire) before renewing or checking it",
            )
        return self._token

    def _renew(self, now: dt.datetime) -> FencingToken:
        token = self._held()
        body = self._body(token.holder, token.acquired_at, now, self._ours[-1])
        for _ in range(2):
            try:
                # A merge patch carrying our resourceVersion: 409 when someone else wrote the Lease,
                # 404 when it is gone. Never a PUT: the API server creates a missing Lease on update,
                # which would let a run that lost the lock hold it again.
                # Retried while the API does not answer: an attempt whose answer was lost but which
                # landed makes the next one answer 409, and _adopt_if_landed below takes it as ours.
                lease = retrying(
                    lambda: self._patch(body), sleep=self._sleep, what=f"renewing the lock {self.namespace}/{self.name}"
                )
            except ApiException as exc:
                if exc.status not in (404, 409):
                    self._unsure = (*self._unsure[-3:], body["spec"]["renewTime"])
                    raise self._failure("renew", exc) from exc
                view = self.observe()
                if self._adopt_if_landed(view) is None:  # else our earlier write landed after all: renew over it
                    raise self._lose(view) from exc
                body["metadata"]["resourceVersion"] = self._ours[-1]
                continue
            self._token = FencingToken(token.holder, lease.metadata.resource_version, token.acquired_at, now)
            self._remember(self._token.resource_version)
            return self._token
        raise self._lose(self.observe())

    def _patch(self, body: dict[str, Any]) -> Any:
        """One renewal attempt: the patched Lease; ApiException for 404/409; a typed error otherwise."""
        try:
            return self._coord.patch_namespaced_lease(
                self.name,
                self.namespace,
                body,
                _request_timeout=self.REQUEST_TIMEOUT,
                _content_type="application/merge-patch+json",
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                raise
            self._unsure = (*self._unsure[-3:], body["spec"]["renewTime"])
            raise self._failure("renew", exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            self._unsure = (*self._unsure[-3:], body["spec"]["renewTime"])
            raise self._failure("renew", exc) from exc

    def _adopt_if_landed(self, view: LeaseView | None) -> FencingToken | None:
        """Take ``view`` as ours if it is our own write whose answer never came (our holder, our renewTime)."""
        token = self._held()
        if not self._unsure or view is None or view.holder != token.holder:
            return None
        if self._stamp(view.renewed_at) not in self._unsure:
            return None
        self._token = FencingToken(token.holder, view.resource_version, token.acquired_at, view.renewed_at)
        self._remember(view.resource_version)
        return self._token

    def _remember(self, version: str) -> None:
        self._ours = (*self._ours[-7:], version)
        self._unsure = ()

    def _lose(self, view: LeaseView | None) -> LockLostError:
        token = self._held()
        holder = view.holder if view is not None and view.holder else None
        detail = f"resourceVersion {view.resource_version}, ours {self._ours[-1]}" if view and holder else ""
        self._lost = lost_error(f"{self.namespace}/{self.name}", token.holder, holder, detail)
        return self._lost

    def _delete(self, version: str) -> bool:
        try:
            self._coord.delete_namespaced_lease(
                self.name,
                self.namespace,
                body={"preconditions": {"resourceVersion": version}},
                _request_timeout=self.REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            if exc.status in (404, 409):  # gone, or written since
                return False
            raise self._failure("release", exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._failure("release", exc) from exc
        return True

    def _body(self, me: str, acquired: dt.datetime, now: dt.datetime, version: str | None) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.name}
        if version is not None:
            metadata["resourceVersion"] = version
        spec = {
            "holderIdentity": me,
            "leaseDurationSeconds": self.duration_seconds,
            "acquireTime": self._stamp(acquired),
            "renewTime": self._stamp(now),
        }
        return {"metadata": metadata, "spec": spec}

    @staticmethod
    def _stamp(moment: dt.datetime) -> str:
        """A Lease MicroTime (UTC, microseconds).

        Never on a whole second: the kubernetes client turns a create's or replace's body into a
        model and re-serialises its times with ``isoformat()``, which drops ``.000000``, and the
        API server refuses that MicroTime. One microsecond later is the same moment for a lease.
        """
        if moment.microsecond == 0:
            moment += dt.timedelta(microseconds=1)
        return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _failure(self, what: str, exc: Exception) -> UpgraderError:
        """An API failure other than losing the lock: retryable unless the API refused us."""
        lease = f"{self.namespace}/{self.name}"
        if isinstance(exc, ApiException) and exc.status is not None and exc.status < 500 and exc.status != 429:
            return UpgraderError(
                f"cannot {what} the lock {lease}: {exc.status} {_api_reason(exc)}",
                hint="upgrader needs get/create/update/delete on leases.coordination.k8s.io in the "
                "control-plane namespace",
            )
        detail = f"{exc.status} {_api_reason(exc)}" if isinstance(exc, ApiException) else str(exc)
        return ClusterUnreachableError(
            f"cannot {what} the lock {lease}: the Kubernetes API did not answer ({detail})",
            hint="check that the cluster is up; the run stops before acting once the lease expires unrenewed",
        )


def _api_reason(exc: ApiException) -> str:
    """The API server's own message (e.g. "namespace ... is being terminated"), else the HTTP reason."""
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or exc.reason)
