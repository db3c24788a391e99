"""Several local clusters side by side (the rollout tests): each in its own folder on its own free ports,
kept small (one KWOK node), and one kubeconfig with a context per cluster."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from e2e.harness.cluster import LocalCluster


def merged_kubeconfig(named: Mapping[str, Path], out: Path) -> Path:
    """One kubeconfig holding each cluster's (first) cluster and user under a context named after it."""
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": "Config", "clusters": [], "users": [], "contexts": []}
    for name, path in named.items():
        config = yaml.safe_load(path.read_text())
        doc["clusters"].append({"name": name, "cluster": config["clusters"][0]["cluster"]})
        doc["users"].append({"name": f"{name}-admin", "user": config["users"][0]["user"]})
        doc["contexts"].append({"name": name, "context": {"cluster": name, "user": f"{name}-admin"}})
    doc["current-context"] = next(iter(named))
    out.touch(mode=0o600)
    out.write_text(yaml.safe_dump(doc))
    return out


@contextlib.contextmanager
def side_clusters(names: list[str], root: Path, *, nodes: int = 1) -> Iterator[dict[str, LocalCluster]]:
    """Start a small local cluster per name under ``root/<name>`` (one after the other: a cluster's programs
    die with the thread that started them), and stop them all afterwards."""
    started: dict[str, LocalCluster] = {}
    try:
        for name in names:
            cluster = LocalCluster(nodes=nodes, dir=root / name)
            cluster.start()
            started[name] = cluster
        yield started
    finally:
        for cluster in reversed(list(started.values())):
            cluster.stop()
