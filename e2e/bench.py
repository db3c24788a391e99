"""`make bench`: figures for the e2e harness (build cost, start time, memory). Prints only."""

from __future__ import annotations

import argparse
import json
import statistics
import time

from e2e.harness import binaries
from e2e.harness.cluster import LocalCluster


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.bench")
    parser.add_argument("--runs", type=int, default=3, help="cluster starts to time (default 3)")
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args()
    binaries.ensure_all()
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
