"""Jobs of ``rollout apply --in-cluster``: create a run's spec Secret and its Job, and read the Job's status.

Acts only: the manifests come from ``upgrader.incluster`` and what the status means is decided in
``upgrader.rollout.job_exit``.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client

from upgrader.adapters.errors import mapped
from upgrader.adapters.retrying import retried
from upgrader.errors import NotFoundError
from upgrader.rollout import JobView


class JobAdapter:
    def __init__(self, api: Any, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self._core: Any = client.CoreV1Api(api)
        self._batch: Any = client.BatchV1Api(api)
        self._sleep = sleep

    @retried
    def put_secret(self, namespace: str, name: str, data: dict[str, str], labels: dict[str, str]) -> None:
        """Create the Secret, or replace its data (the same body lands the same way twice)."""
        body = {
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "type": "Opaque",
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }
        with mapped(f"writing Secret {namespace}/{name}"):
            try:
                self._core.create_namespaced_secret(namespace, body, _request_timeout=30)
                return
            except client.ApiException as exc:
                if exc.status != 409:  # AlreadyExists
                    raise
            self._core.replace_namespaced_secret(name, namespace, body, _request_timeout=30)

    @retried
    def create_job(self, manifest: dict[str, Any]) -> None:
        """Create the Job; one of that name already there is the same run's (left as it is)."""
        meta = manifest["metadata"]
        with mapped(f"creating Job {meta['namespace']}/{meta['name']}"):
            try:
                self._batch.create_namespaced_job(meta["namespace"], manifest, _request_timeout=30)
            except client.ApiException as exc:
                if exc.status != 409:  # AlreadyExists
                    raise

    @retried
    def job(self, namespace: str, name: str) -> JobView | None:
        try:
            with mapped(f"reading Job {namespace}/{name}"):
                job = self._batch.read_namespaced_job_status(name, namespace, _request_timeout=10)
        except NotFoundError:
            return None
        status = job.status
        finished = next(
            (c.type for c in status.conditions or [] if c.type in ("Complete", "Failed") and c.status == "True"), None
        )
        return JobView(
            active=status.active or 0, succeeded=status.succeeded or 0, failed=status.failed or 0, finished=finished
        )
