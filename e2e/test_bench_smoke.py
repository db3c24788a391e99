"""The benchmark's code at a few namespaces on the session's cluster: the figures are there and hang
together. Nothing is timed here; ``make bench`` measures."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from e2e import bench
from e2e.fixtures.world import World
from e2e.harness.backends import ClusterHandle
from e2e.harness.stages import PodTiming

pytestmark = pytest.mark.e2e


def test_the_benchmark_runs_both_scenarios_and_writes_coherent_figures(
    cluster: ClusterHandle, clean_world: World, tmp_path: Path
) -> None:
    """plan over 2x2x2 pods, then restart 2x3 Deployments whose pods take 0.4-0.8 s (KWOK stages), upgrader then
    kubectl: JSON with every figure, requests attributed by user agent, and a plot."""
    assert cluster.local is not None, (
        f"the benchmark reads the local cluster's audit log: it needs the local backend, not {cluster.backend}"
    )
    world, audit_dir = clean_world, cluster.local.audit_dir
    world.install(bench.FROM)
    planned = bench.plan(world, audit_dir, 2, 2, 2, tmp_path / "plan")
    timing = PodTiming(600, 200, 200)
    size = bench.RestartSize(2, 3, per_ns_concurrency=2, namespaces_at_once=2, timing=timing)
    restarted = bench.restart(world, audit_dir, size, tmp_path / "restart")
    json_path, png_path = bench.write([restarted, planned], tmp_path / "results", dt.datetime.now(dt.UTC))
    doc = json.loads(json_path.read_text())
    assert doc["machine"]["cpus"] >= 1
    assert png_path.read_bytes().startswith(b"\x89PNG")
    print("\n" + bench.table(doc["results"]))

    assert planned["pods"] == 8
    q = planned["requests"]
    assert q["upgrader"] > 0
    assert q["namespaced_list_calls"] == 0, q["upgrader_by_kind"]
    assert any(k.startswith("list pods") for k in q["list_calls_by_resource"]), q
    assert planned["tool"]["peak_rss_mib"] > 0

    r = restarted
    assert r["workloads"] == 6
    assert r["rollout_seconds"]["count"] == 6
    assert r["rollout_seconds"]["min"] >= timing.shortest_ms / 1000, "pods took their KWOK stage delay to start"
    assert r["peak_per_namespace"] <= 2
    assert 0 < r["ideal_makespan_seconds"] <= r["tool_makespan_seconds"] * 1.05, "the ideal is a lower bound"
    assert r["naive_makespan_seconds"] > 0
    assert r["tool_over_ideal"] == pytest.approx(r["tool_makespan_seconds"] / r["ideal_makespan_seconds"], abs=0.01)
    q = r["requests"]
    assert 0 < q["upgrader_data_plane_phase"] <= q["upgrader"]
    assert q["helm"] > 0, "helm's requests are counted apart from upgrader's"
    assert q["kubectl_naive"] >= 2 * r["workloads"], "a restart and a status per Deployment at least"
    assert r["tool"]["cpu_seconds"] > 0
    assert r["tool"]["peak_rss_mib"] > 0
