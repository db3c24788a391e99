"""`make demo`: the main job on the built-in local cluster.

Starts the local control plane (building its programs on first use), then runs the
upgrader against it the way an operator would, and tears the cluster down again.
Until the apply engine exists, the main job is discovery.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from e2e.harness import binaries
from e2e.harness.cluster import ClusterError, LocalCluster


def _step(title: str, *cmd: str, env: dict[str, str]) -> None:
    print(f"\n$ {' '.join(cmd)}", flush=True)
    result = subprocess.run(cmd, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"demo step failed ({title}): exit {result.returncode}")


def main() -> int:
    binaries.ensure_all(echo=lambda m: print(m, file=sys.stderr, flush=True))
    started = time.monotonic()
    try:
        cluster = LocalCluster(nodes=3)
        cluster.start()
    except ClusterError as exc:
        print(f"error: the local cluster did not start: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"local cluster up in {time.monotonic() - started:.1f}s: kubeconfig {cluster.kubeconfig}")
        env = dict(os.environ, UPGRADER_HELM=str(binaries.program("helm", "helm")), KUBECONFIG=str(cluster.kubeconfig))
        upgrader = [sys.executable, "-m", "upgrader"]
        _step("version", *upgrader, "--version", env=env)
        _step("nodes", str(binaries.program("kubectl")), "get", "nodes", "-o", "wide", env=env)
        _step("discover", *upgrader, "discover", env=env)
    finally:
        cluster.stop()
        print("local cluster stopped and removed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
