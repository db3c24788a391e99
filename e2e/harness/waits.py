"""Polling waits for tests (the product itself waits with watches)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class WaitTimeout(AssertionError):
    """A condition did not hold in time; the message says what and the last observation."""


def wait_for(what: str, check: Callable[[], Any], *, timeout: float = 60.0, interval: float = 0.3) -> Any:
    """Call ``check`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def rollout_complete(kind: str, obj: Any) -> bool:
    """Whether a Deployment/StatefulSet/DaemonSet finished rolling out (kubectl's rules)."""
    meta, spec, st = obj.metadata, obj.spec, obj.status
    if st is None or (st.observed_generation or 0) < meta.generation:
        return False
    if kind == "Deployment":
        want = spec.replicas
        return bool(
            (st.updated_replicas or 0) == want and (st.replicas or 0) == want and (st.available_replicas or 0) == want
        )
    if kind == "StatefulSet":
        want = spec.replicas
        return bool(
            (st.updated_replicas or 0) == want
            and (st.ready_replicas or 0) == want
            and (st.available_replicas or 0) == want
            and st.current_revision == st.update_revision
        )
    if kind == "DaemonSet":
        want = st.desired_number_scheduled
        return bool(
            want > 0
            and (st.updated_number_scheduled or 0) == want
            and (st.number_available or 0) == want
            and (st.number_ready or 0) == want
        )
    raise ValueError(f"unknown workload kind {kind}")
