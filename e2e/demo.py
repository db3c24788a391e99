"""`make demo`: the main job against the world that `make world-up` started.

`make world-up` starts the local cluster (building its programs on first use), the chart
repository and the injector, installs Linkerd (stable-2.13.7, HA, with viz) and the sample
mesh. This script then runs the upgrader against it the way an operator would; `make demo`
tears everything down afterwards. Until the planner and apply engine exist, the main job
is discovery.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from e2e.harness import binaries
from e2e.harness.cluster import DEFAULT_DIR


def _step(*cmd: str, env: dict[str, str]) -> None:
    print(f"\n$ {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))}", flush=True)
    result = subprocess.run(cmd, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"demo step failed with exit {result.returncode}: {' '.join(cmd)}")


def main() -> int:
    kubeconfig = Path(os.environ.get("UPGRADER_E2E_CLUSTER_DIR", DEFAULT_DIR)) / "kubeconfig"
    if not kubeconfig.exists():
        print(f"error: no world running ({kubeconfig} missing); run `make world-up` first", file=sys.stderr)
        return 2
    env = dict(os.environ, UPGRADER_HELM=str(binaries.program("helm", "helm")), KUBECONFIG=str(kubeconfig))
    kubectl = str(binaries.program("kubectl"))
    upgrader = [sys.executable, "-m", "upgrader"]
    _step(*upgrader, "--version", env=env)
    _step(kubectl, "get", "nodes", env=env)
    _step(kubectl, "get", "deployments", "-n", "linkerd", env=env)
    _step(*upgrader, "discover", env=env)
    _step(*upgrader, "--log-format", "json", "discover", "-o", "json", env=env)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
