"""A cluster-wide list+watch cache of the data plane: namespaces, workloads, pods and budgets.

Each resource has one daemon thread. It LISTs cluster-wide (in pages), then WATCHes from the
list's resourceVersion and, when the server ends a stream (every ``timeout_seconds``), watches
again from the last resourceVersion it saw (bookmarks included). Anything else - an ERROR event,
410 Gone, a dropped connection, a refused request - is logged as ``watch-restart`` and answered
with a fresh LIST after a short backoff; that LIST replaces the resource's records wholesale, so
objects deleted while we were not watching disappear too.

Only records from ``upgrader.ports`` are kept, never client objects; LIST pages and watch events are
read as parsed JSON (``kube.Raw``), never built into the client's models. One Condition guards every
store and a change counter: a change that alters a record bumps the counter and wakes waiters, so
``snapshot()`` is a consistent copy and ``wait_for_change()`` sleeps instead of polling. Events
that leave every record as it was (a status heartbeat we do not record) do not count as changes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from functools import partial
from types import TracebackType
from typing import Any, Generic, TypeVar

import structlog
from kubernetes import client, watch

from upgrader.adapters.errors import classify, outside
from upgrader.adapters.kube import Raw, budget_record, namespace_record, pod_record, raw_pages, workload_record
from upgrader.errors import AccessDeniedError, ClusterUnreachableError, UpgraderError
from upgrader.ports import DataPlaneView

_log = structlog.get_logger("upgrader.adapters")

_LIST_TIMEOUT = 30  # seconds per LIST page
_WATCH_SECONDS = 60  # the server ends each watch after this long; we watch again from where it ended
_WATCH_READ_TIMEOUT = _WATCH_SECONDS + 30  # a silent half-open connection is dropped after this long
_BACKOFF = 1.0  # seconds between a failed LIST/WATCH and the next LIST
_STOP_GRACE = 5.0  # seconds stop() waits for the threads

_Key = tuple[str, str]  # (namespace, name); namespaces are ("", name)
_R = TypeVar("_R")


class _Ledger:
    """What every informer shares: the lock, the change counter and the stop signal."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.version = 0
        self.stopping = threading.Event()

    def changed(self) -> None:
        """Count one change and wake the waiters; call with ``cond`` held."""
        self.version += 1
        self.cond.notify_all()


class _WatchEnded(Exception):
    """The server sent an ERROR event; the watch must start over from a LIST."""


class _JsonWatch(watch.Watch):
    """A watch whose events carry the object as ``Raw`` (parsed JSON), never as a client model: every
    event of every pod goes through here, and building a model costs about a millisecond."""

    def unmarshal_event(self, data: str, return_type: Any) -> Any:
        event = super().unmarshal_event(data, None)  # type: ignore[no-untyped-call]  # JSON only
        if isinstance(event, dict) and event.get("type") != "ERROR" and isinstance(event.get("object"), dict):
            event["object"] = Raw(event["object"])
        return event


def _key(obj: Any) -> _Key:
    return (obj.metadata.namespace or "", obj.metadata.name)


def _failure(exc: BaseException, resource: str) -> UpgraderError:
    """What stopped a LIST or WATCH, as a typed error (an ERROR event or a bug of ours as a plain one)."""
    if outside(exc):
        return classify(exc, doing=f"listing and watching {resource}")
    return UpgraderError(f"{type(exc).__name__}: {exc}")


class _Informer(Generic[_R]):
    """One resource's records, kept current by one thread."""

    def __init__(self, resource: str, list_fn: Callable[..., Any], convert: Callable[[Any], _R], ledger: _Ledger):
        self.resource = resource
        self.items: dict[_Key, _R] = {}  # guarded by ledger.cond
        self.synced = False  # the first LIST has completed (guarded by ledger.cond)
        self.last_error = ""
        self.last_failure: UpgraderError | None = None
        self._list_fn = list_fn
        self._convert = convert
        self._ledger = ledger
        self._watch: Any = _JsonWatch()  # type: ignore[no-untyped-call]  # the client ships no types
        self._thread = threading.Thread(target=self._run, name=f"upgrader-informer-{resource}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def interrupt(self) -> None:
        """Unblock a watch stream that is waiting for the next event."""
        self._watch.stop()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the thread; True once it has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        stopping = self._ledger.stopping
        while not stopping.is_set():
            try:
                resource_version = self._list()
                while not stopping.is_set():
                    resource_version = self._follow(resource_version)
            except Exception as exc:  # every failure is answered the same way: a fresh LIST
                if stopping.is_set():
                    break
                self.last_failure = _failure(exc, self.resource)
                self.last_error = self.last_failure.message
                _log.warning("watch-restart", resource=self.resource, error=self.last_error, backoff_seconds=_BACKOFF)
                stopping.wait(_BACKOFF)

    def _list(self) -> str:
        """Replace the records with a fresh LIST; return its resourceVersion."""
        fresh: dict[_Key, _R] = {}
        meta: dict[str, Any] = {}
        for items, meta in raw_pages(self._list_fn, _request_timeout=_LIST_TIMEOUT):
            fresh.update((_key(obj), self._convert(obj)) for obj in items)
            if meta.get("continue") and self._ledger.stopping.is_set():
                return ""  # stopped half-way: keep what we had rather than a partial list
        with self._ledger.cond:
            if fresh != self.items:
                self.items = fresh
                self._ledger.changed()
            self.synced = True
            self._ledger.cond.notify_all()
        return str(meta.get("resourceVersion", ""))

    def _follow(self, resource_version: str) -> str:
        """Apply one watch stream's events; return the last resourceVersion seen."""
        events = self._watch.stream(
            self._list_fn,
            resource_version=resource_version,
            timeout_seconds=_WATCH_SECONDS,
            allow_watch_bookmarks=True,
            _request_timeout=(_LIST_TIMEOUT, _WATCH_READ_TIMEOUT),
        )
        with contextlib.closing(events):  # a generator: closing it closes the response
            for event in events:
                if self._ledger.stopping.is_set():
                    break
                kind, raw = event["type"], event["raw_object"]
                if kind == "ERROR":  # the client raises on most of these itself; this catches the rest
                    raise _WatchEnded(f"{raw.get('code')} {raw.get('reason')}: {raw.get('message')}")
                if kind == "BOOKMARK":
                    resource_version = raw["metadata"]["resourceVersion"]
                    continue
                obj = event["object"]
                resource_version = obj.metadata.resource_version
                self._apply(kind, obj)
        return resource_version

    def _apply(self, kind: str, obj: Any) -> None:
        key = _key(obj)
        record = None if kind == "DELETED" else self._convert(obj)
        with self._ledger.cond:
            if record is None:
                if self.items.pop(key, None) is not None:
                    self._ledger.changed()
            elif self.items.get(key) != record:
                self.items[key] = record
                self._ledger.changed()


class DataPlaneCache:
    """Namespaces, workloads, pods and PodDisruptionBudgets of the whole cluster, kept current by watches.

    ``start()`` launches the threads, ``wait_synced()`` waits for their first LIST, ``snapshot()``
    copies what is known and ``wait_for_change()`` sleeps until something changes. Usable as a
    context manager (start on entry, stop on exit).
    """

    def __init__(self, api: client.ApiClient) -> None:
        core, apps, policy = client.CoreV1Api(api), client.AppsV1Api(api), client.PolicyV1Api(api)
        self._ledger = ledger = _Ledger()
        self._namespaces = _Informer("namespaces", core.list_namespace, namespace_record, ledger)
        self._deployments = _Informer(
            "deployments", apps.list_deployment_for_all_namespaces, partial(workload_record, "Deployment"), ledger
        )
        self._statefulsets = _Informer(
            "statefulsets", apps.list_stateful_set_for_all_namespaces, partial(workload_record, "StatefulSet"), ledger
        )
        self._daemonsets = _Informer(
            "daemonsets", apps.list_daemon_set_for_all_namespaces, partial(workload_record, "DaemonSet"), ledger
        )
        self._pods = _Informer("pods", core.list_pod_for_all_namespaces, pod_record, ledger)
        self._budgets = _Informer(
            "poddisruptionbudgets", policy.list_pod_disruption_budget_for_all_namespaces, budget_record, ledger
        )
        self._informers: tuple[_Informer[Any], ...] = (
            self._namespaces,
            self._deployments,
            self._statefulsets,
            self._daemonsets,
            self._pods,
            self._budgets,
        )
        self._started = False

    def start(self) -> None:
        """Launch one LIST+WATCH thread per resource (once)."""
        if self._started:
            return
        self._started = True
        for informer in self._informers:
            informer.start()

    def stop(self) -> None:
        """End every thread (within a few seconds) and return once they have ended."""
        self._ledger.stopping.set()
        if not self._started:
            return
        deadline = time.monotonic() + _STOP_GRACE
        for informer in self._informers:
            # A stream that was being opened when we asked misses the first request to stop: ask again.
            while time.monotonic() < deadline:
                informer.interrupt()
                if informer.join(0.1):
                    break
        with self._ledger.cond:
            self._ledger.cond.notify_all()

    def __enter__(self) -> DataPlaneCache:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def wait_synced(self, timeout: float) -> None:
        """Wait until every resource has been listed once; ClusterUnreachableError after ``timeout`` seconds.

        AccessDeniedError instead when the API refused every resource still missing (RBAC: no retry helps).
        """
        with self._ledger.cond:
            self._ledger.cond.wait_for(lambda: all(i.synced for i in self._informers), timeout)
            missing = [i for i in self._informers if not i.synced]
        if not missing:
            return
        names = ", ".join(f"{i.resource} ({i.last_error or 'no answer yet'})" for i in missing)
        if all(isinstance(i.last_failure, AccessDeniedError) for i in missing):  # a lasting refusal, not a blip
            raise AccessDeniedError(
                f"the data-plane cache may not list {names}",
                hint="allow list and watch on these resources in all namespaces (see upgrader preflight)",
            )
        raise ClusterUnreachableError(
            f"the data-plane cache could not list {names} within {timeout:.0f}s"
            + ("" if self._started else " (the cache was never started)"),
            hint="check that the cluster is up, that --kubeconfig/--context point at it and that the caller "
            "may list and watch these resources in all namespaces (see upgrader preflight)",
        )

    def snapshot(self) -> DataPlaneView:
        """A consistent copy of every record, sorted by namespace and name."""
        with self._ledger.cond:
            copies = {i.resource: list(i.items.items()) for i in self._informers}
            version = self._ledger.version

        def ordered(*resources: str) -> tuple[Any, ...]:
            return tuple(record for _, record in sorted((i for r in resources for i in copies[r]), key=lambda i: i[0]))

        workloads = ordered("deployments", "statefulsets", "daemonsets")
        return DataPlaneView(
            namespaces=ordered("namespaces"),
            workloads=tuple(sorted(workloads, key=lambda w: (w.namespace, w.name, w.kind))),
            pods=ordered("pods"),
            budgets=ordered("poddisruptionbudgets"),
            version=version,
        )

    def wait_for_change(self, since: int, timeout: float) -> int:
        """Block until the change counter exceeds ``since`` (or ``timeout`` seconds pass); return the counter."""
        with self._ledger.cond:
            self._ledger.cond.wait_for(lambda: self._ledger.version > since or self._ledger.stopping.is_set(), timeout)
            return self._ledger.version
