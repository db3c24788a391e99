"""`make bench`: figures, printed only (nothing here is a timed test).

- default: the e2e harness (build cost, cluster start time, memory);
- ``--data-plane``: an upgrade of a scaled sample mesh (``--namespaces`` x ``--per-namespace``
  one-replica Deployments) on the local cluster: apply wall time, data-plane duration,
  restarts per minute, the most Deployments mid-rollout per namespace as the API's watch saw
  them, and the peak memory of upgrader (and its helm children).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from e2e.fixtures import mesh
from e2e.fixtures.world import World
from e2e.harness import binaries
from e2e.harness.cluster import LocalCluster
from e2e.harness.rollouts import RolloutRecorder


def data_plane(namespaces: int, per_namespace: int, per_ns: int, at_once: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="upgrader-bench-"))
    cluster = LocalCluster(nodes=3)
    cluster.start()
    try:
        world = World.start(cluster.kubeconfig, folder / "world", cluster.spawn)
        world.install("stable-2.13.7")
        docs = mesh.sample_mesh(scale_namespaces=namespaces, workloads_per_namespace=per_namespace)
        t0 = time.monotonic()
        world.apply(docs)
        world.wait_ready(mesh.namespaces(docs), timeout=1800)
        print(
            f"mesh of {namespaces} x {per_namespace} Deployments (+ the sample) ready in {time.monotonic() - t0:.0f}s"
        )
        env = world.helm_env(folder)
        spec = folder / "bench.yaml"
        spec.write_text(
            "name: bench\nwaivers: [kubernetes-version]\n"
            f"dataPlane:\n  maxConcurrentPerNamespace: {per_ns}\n  maxNamespaces: {at_once}\n"
        )
        argv = ["--log-format", "json", "apply", "--to", "stable-2.14.10", "--spec", str(spec), "--yes"]
        argv += ["--kubeconfig", str(world.kubeconfig), "--helm", str(world.helm)]
        with RolloutRecorder(world.api) as recorder:
            t0 = time.monotonic()
            out = subprocess.run(
                [sys.executable, "-m", "upgrader", *argv], env=env, capture_output=True, text=True, check=False
            )
            wall = time.monotonic() - t0
        if out.returncode != 0:
            raise SystemExit(f"apply failed ({out.returncode}):\n{out.stderr[-3000:]}")
        events = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
        at = [dt.datetime.fromisoformat(e["timestamp"]) for e in events if e["event"] in ("restart", "workload-passed")]
        restarts = sum(1 for e in events if e["event"] == "restart")
        span = (max(at) - min(at)).total_seconds()
        peaks = {ns: n for ns, n in recorder.peak.items() if ns.startswith("scale-")}
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"apply 2.13.7 -> 2.14.10: exit 0 in {wall:.1f}s wall")
        print(f"data plane: {restarts} workloads restarted in {span:.1f}s ({restarts / span * 60:.0f} per minute)")
        print(
            f"throttle: {per_ns} per namespace, {at_once} namespaces at once; API-watch peak per namespace: "
            f"max {max(peaks.values())}, {sorted(set(peaks.values()))}"
        )
        print(f"peak RSS of upgrader or a helm child: {rss:.0f} MiB")
    finally:
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.bench")
    parser.add_argument("--runs", type=int, default=3, help="cluster starts to time (default 3)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--data-plane", action="store_true", help="benchmark a data-plane upgrade instead")
    parser.add_argument("--namespaces", type=int, default=20)
    parser.add_argument("--per-namespace", type=int, default=10)
    parser.add_argument("--per-ns-concurrency", type=int, default=2)
    parser.add_argument("--namespaces-at-once", type=int, default=4)
    args = parser.parse_args()
    binaries.ensure_all()
    if args.data_plane:
        data_plane(args.namespaces, args.per_namespace, args.per_ns_concurrency, args.namespaces_at_once)
        return 0
    print("cold build times recorded in the cache:")
    for c in binaries.COMPONENTS.values():
        info = json.loads((c.dir / "BUILD-INFO.json").read_text())
        print(f"  {c.name:<11} {c.version:<8} {info['build_seconds']:>7.1f}s  ({info['built_at']})")
    starts, stops, rss = [], [], []
    for i in range(args.runs):
        t0 = time.monotonic()
        cluster = LocalCluster(nodes=args.nodes)
        cluster.start()
        starts.append(time.monotonic() - t0)
        time.sleep(5)  # let the controllers settle before reading memory
        rss.append(cluster.peak_rss_kib() / 1024)
        t1 = time.monotonic()
        cluster.stop()
        stops.append(time.monotonic() - t1)
        print(f"  run {i + 1}: start {starts[-1]:.1f}s, stop {stops[-1]:.1f}s, peak RSS {rss[-1]:.0f} MiB")
    print(
        f"warm start ({args.nodes} nodes): median {statistics.median(starts):.1f}s, "
        f"min {min(starts):.1f}s, max {max(starts):.1f}s"
    )
    print(f"stop: median {statistics.median(stops):.1f}s")
    print(f"peak RSS (sum over components): median {statistics.median(rss):.0f} MiB, max {max(rss):.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
