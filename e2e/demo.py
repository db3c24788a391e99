"""`make demo`: the main job against the world that `make world-up` started.

`make world-up` starts the local cluster (building its programs on first use), the chart
repository and the injector, installs Linkerd (stable-2.13.7, HA, with viz) and the sample
mesh. This script then runs the upgrader against it the way an operator would: discover,
plan to stable-2.14.10 (markdown, as for a pull request), preflight, apply with a staged
data-plane spec (a canary wave, then the rest, two restarts at a time per namespace), and
status; `make demo` tears everything down afterwards.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from e2e.fixtures.world import World
from e2e.harness import binaries
from e2e.harness.cluster import default_dir

SPEC = """\
name: demo
description: stable-2.13.7 -> stable-2.14.10 on the local cluster, canary wave first
# The local cluster runs Kubernetes 1.36, newer than the fixture majors say they support.
waivers: [kubernetes-version]
dataPlane:
  maxConcurrentPerNamespace: 2
  maxNamespaces: 2
  waves:
    - {name: canary, namespaces: [shop], bakeTime: 5s}
    - {name: rest, namespaces: ["*"]}
"""


def _step(*cmd: str, env: dict[str, str]) -> None:
    print(f"\n$ {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))}", flush=True)
    result = subprocess.run(cmd, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"demo step failed with exit {result.returncode}: {' '.join(cmd)}")


def main() -> int:
    kubeconfig = default_dir() / "kubeconfig"
    if not kubeconfig.exists():
        print(f"error: no world running ({kubeconfig} missing); run `make world-up` first", file=sys.stderr)
        return 2
    world = World.load(kubeconfig.parent / "world")
    work = Path(tempfile.mkdtemp(prefix="upgrader-demo-"))
    env = world.helm_env(work)  # helm configured with the world's chart repository as `linkerd`
    env.update(UPGRADER_HELM=str(binaries.program("helm", "helm")), KUBECONFIG=str(kubeconfig))
    spec = work / "demo.yaml"
    spec.write_text(SPEC)
    kubectl = str(binaries.program("kubectl"))
    upgrader = [sys.executable, "-m", "upgrader"]
    _step(*upgrader, "--version", env=env)
    _step(kubectl, "get", "nodes", env=env)
    _step(*upgrader, "discover", env=env)
    _step(*upgrader, "plan", "--to", "stable-2.14.10", "--spec", str(spec), "-o", "markdown", env=env)
    _step(*upgrader, "preflight", "--to", "stable-2.14.10", "--spec", str(spec), env=env)
    _step(*upgrader, "apply", "--to", "stable-2.14.10", "--spec", str(spec), "--yes", env=env)
    _step(*upgrader, "status", env=env)
    _step(
        kubectl,
        "get",
        "pods",
        "-n",
        "shop",
        "-o",
        "custom-columns=POD:.metadata.name,PROXY:.spec.containers[?(@.name=='linkerd-proxy')].image",
        env=env,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
