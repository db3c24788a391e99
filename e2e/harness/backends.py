"""Which cluster the e2e suite runs against.

- ``UPGRADER_E2E_KUBECONFIG=<path>``: an existing cluster; nothing is started or stopped.
- ``UPGRADER_E2E_BACKEND=local`` (default, and what CI runs): ``LocalCluster`` on loopback.
- ``UPGRADER_E2E_BACKEND=k3s``: K3s in a container through testcontainers; needs a Docker
  engine, and says so loudly when there is none.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from e2e.harness.cluster import LocalCluster


@dataclass
class ClusterHandle:
    """What a test needs of a cluster, whichever backend provides it."""

    backend: str
    kubeconfig: Path
    log_tails: Callable[[], str] = field(default=lambda: "")
    local: LocalCluster | None = None


class BackendError(RuntimeError):
    """The chosen backend cannot run here."""


@contextmanager
def open_cluster(env: Mapping[str, str] = os.environ) -> Iterator[ClusterHandle]:
    """Start (or attach to) the cluster chosen by the environment; stop it afterwards."""
    existing = env.get("UPGRADER_E2E_KUBECONFIG")
    if existing:
        path = Path(existing)
        if not path.is_file():
            raise BackendError(f"UPGRADER_E2E_KUBECONFIG={existing} is not a file")
        yield ClusterHandle("existing", path)
        return
    backend = env.get("UPGRADER_E2E_BACKEND", "local")
    if backend == "local":
        with LocalCluster(nodes=int(env.get("UPGRADER_E2E_NODES", "3"))) as cluster:
            yield ClusterHandle("local", cluster.kubeconfig, cluster.log_tails, cluster)
    elif backend == "k3s":
        with _k3s() as handle:
            yield handle
    else:
        raise BackendError(f"unknown UPGRADER_E2E_BACKEND={backend!r}: use local or k3s")


@contextmanager
def _k3s() -> Iterator[ClusterHandle]:
    try:
        import docker  # noqa: PLC0415
        from testcontainers.k3s import K3SContainer  # noqa: PLC0415

        docker.from_env().ping()
    except Exception as exc:
        raise BackendError(
            f"UPGRADER_E2E_BACKEND=k3s needs a running Docker engine ({exc}); unset it to use the local backend"
        ) from exc
    with K3SContainer() as k3s, tempfile.TemporaryDirectory(prefix="upgrader-k3s-") as tmp:
        path = Path(tmp) / "kubeconfig"
        path.write_text(k3s.config_yaml())
        yield ClusterHandle("k3s", path, lambda: k3s.get_logs()[1].decode(errors="replace")[-8000:])
