"""Rollout concurrency as the API sees it: a watch on every Deployment in the cluster."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

from kubernetes import client, watch


class RolloutRecorder:
    """Watches every Deployment cluster-wide (the API's own events, not our logs) and keeps, per
    namespace, the most Deployments mid-rollout at once: generation not yet observed, or fewer
    updated/available replicas than wanted, or old replicas still around."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api, self._stop = api, threading.Event()
        self.busy: dict[str, set[str]] = defaultdict(set)
        self.peak: dict[str, int] = defaultdict(int)
        self.ever: set[str] = set()
        # Per "ns/name", when (time.time()) a rollout was first seen and when it was last seen to end.
        self.began: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._watch: Any = None
        self.error: Exception | None = None  # a watch that broke mid-run would miss events: the test fails

    @staticmethod
    def rolling(d: Any) -> bool:
        st, want = d.status, d.spec.replicas if d.spec.replicas is not None else 1
        if st is None or (st.observed_generation or 0) < (d.metadata.generation or 0):
            return True
        return (st.updated_replicas or 0) < want or (st.available_replicas or 0) < want or (st.replicas or 0) > want

    def _run(self) -> None:
        apps = client.AppsV1Api(self._api)
        rv = apps.list_deployment_for_all_namespaces().metadata.resource_version
        while not self._stop.is_set():
            self._watch = watch.Watch()
            try:
                for event in self._watch.stream(
                    apps.list_deployment_for_all_namespaces, resource_version=rv, timeout_seconds=5
                ):
                    d = event["object"]
                    rv = d.metadata.resource_version
                    ns, name = d.metadata.namespace, d.metadata.name
                    if event["type"] != "DELETED" and self.rolling(d):
                        self.busy[ns].add(name)
                        self.ever.add(f"{ns}/{name}")
                        self.began.setdefault(f"{ns}/{name}", time.time())
                    else:
                        if name in self.busy[ns]:
                            self.ended[f"{ns}/{name}"] = time.time()
                        self.busy[ns].discard(name)
                    self.peak[ns] = max(self.peak[ns], len(self.busy[ns]))
            except Exception as exc:
                if not self._stop.is_set():
                    self.error = exc
                return

    def __enter__(self) -> RolloutRecorder:
        self._thread.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        self._thread.join(timeout=10)
