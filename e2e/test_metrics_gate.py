"""The per-wave metric gates, judged by a real Prometheus scraping Linkerd proxy metrics of the sample mesh.

One Prometheus for the session (``prometheus`` fixture: 1 s scrapes, file-discovered targets) and one
``ProxyMetrics`` serving every meshed pod's proxy metric families; KWOK's new pods become scrape targets
as they start. Each test installs Linkerd, applies the sample mesh and upgrades it with a canary wave
(``shop``, baked longer than the metrics window so the gate judges the new pods only) and the rest.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.fixtures import mesh
from e2e.fixtures.proxy_metrics import LATENCY_BUCKETS_MS, ProxyMetrics, Traffic
from e2e.fixtures.world import World
from e2e.harness.leaks import run_upgrader
from e2e.harness.processes import alive
from e2e.harness.prometheus import NAME, Prometheus
from e2e.harness.waits import wait_for
from upgrader.adapters.prometheus import PrometheusMetrics
from upgrader.metrics import queries

pytestmark = pytest.mark.e2e
WINDOW = 10  # seconds: metricsWindow, > 2x the 1 s scrape interval
BAKE = 13  # seconds: longer than the window, so the canary's gate sees only its new pods


@pytest.fixture
def env(clean_world: World, tmp_path: Path) -> dict[str, str]:
    return clean_world.helm_env(tmp_path)


@pytest.fixture
def gate(proxy_metrics: ProxyMetrics, prometheus: Prometheus) -> Iterator[ProxyMetrics]:
    """The proxies at their default traffic and Prometheus running, before and after the test."""
    proxy_metrics.reset()
    yield proxy_metrics
    proxy_metrics.reset()
    if not alive(prometheus.processes.pids[NAME]):
        prometheus.start_again()


def _upgrader(world: World, env: dict[str, str], *args: str) -> Any:
    return run_upgrader(
        "--log-format", "json", *args, "--kubeconfig", str(world.kubeconfig), "--helm", str(world.helm), env=env
    )


def _events(out: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]


def _summaries(out: Any) -> list[str]:
    return [e["summary"] for e in _events(out) if e["event"] == "metrics"]


def _checkpoint(tmp_path: Path) -> dict[str, Any]:
    files = sorted((tmp_path / "state").glob("*.json"))
    assert len(files) == 1, files
    data: dict[str, Any] = json.loads(files[0].read_text())
    return data


def _spec(tmp_path: Path, prometheus: Prometheus, on_failure: str = "pause") -> Path:
    spec = tmp_path / "gates.yaml"
    spec.write_text(
        f"name: gates\nwaivers: [kubernetes-version]\nonFailure: {on_failure}\n"
        f"gates:\n  prometheusUrl: {prometheus.url}\n  minSuccessRate: 0.99\n  maxSuccessRateDrop: 0.01\n"
        f"  maxP99Increase: 1.5\n  metricsWindow: {WINDOW}s\n"
        "dataPlane:\n  waves:\n"
        f"  - {{name: canary, namespaces: [shop], bakeTime: {BAKE}s}}\n"
        "  - {name: rest, namespaces: ['*']}\n"
    )
    return spec


def _mesh_scraped(world: World, gate: ProxyMetrics, prometheus: Prometheus) -> None:
    """Linkerd and the sample mesh installed; every meshed pod scraped for a whole window already."""
    world.install("stable-2.13.7")
    docs = mesh.sample_mesh()
    world.apply(docs)
    world.wait_ready(mesh.namespaces(docs))
    wait_for("the 7 meshed shop pods as scrape targets", lambda: len([p for p in gate.pods() if p[0] == "shop"]) == 7)
    wait_for(
        "a window of shop's inbound traffic in Prometheus",
        lambda: PrometheusMetrics(prometheus.url).sample("shop", WINDOW).requests_per_second > 100,
        timeout=3 * WINDOW,
    )
    time.sleep(WINDOW)  # a full window of scrapes for the gate's "before"


def test_real_prometheus_sees_the_linkerd_families_the_gate_asks_for(
    clean_world: World, gate: ProxyMetrics, prometheus: Prometheus
) -> None:
    """The gate's three queries, sent to the real query engine, read back what the proxies serve:
    7 meshed shop pods at 20 rps each, all successful, p99 40 ms (the proxy's 30-40 ms bucket)."""
    _mesh_scraped(clean_world, gate, prometheus)
    sample = PrometheusMetrics(prometheus.url).sample("shop", WINDOW)
    assert sample.success_rate == 1.0
    assert 7 * 20 * 0.9 < sample.requests_per_second < 7 * 20 * 1.1, sample
    assert sample.p99_ms is not None
    assert 38 < sample.p99_ms < 42, sample  # 99% at or under 40 ms; the floored bucket counts may tip it over
    labels = prometheus.query('response_total{namespace="shop",deployment="web",direction="inbound"}')[0]["metric"]
    assert {"pod", "classification", "status_code", "tls", "control_plane_ns", "job"} <= set(labels), labels
    les = {s["metric"]["le"] for s in prometheus.query('response_latency_ms_bucket{namespace="shop",pod=~"web-.*"}')}
    # the proxy writes le="1" ... le="50000"; Prometheus 3 stores classic buckets' le as floats: "1.0"
    assert les == {str(float(le)) for le in LATENCY_BUCKETS_MS} | {"+Inf"}, les
    for promql in queries("shop", WINDOW).values():
        assert f"[{WINDOW}s]" in promql
    # ledger's new pods fail every request: they have no success series at all, and the gate reads 0%
    # (a bare ratio of two sums would be an empty answer, read as "no traffic")
    gate.set("payments", "ledger", Traffic(success_rate=0.0), since_now=True)
    clean_world.kubectl("rollout", "restart", "deployment/ledger", "-n", "payments")
    wait_for(
        "payments at 0% success",
        lambda: PrometheusMetrics(prometheus.url).sample("payments", WINDOW).success_rate == 0.0,
        timeout=6 * WINDOW,
    )
    bare = queries("payments", WINDOW)["success"].replace(" or vector(0))", "").removeprefix("(")
    assert prometheus.query(bare) == [], bare


def test_a_healthy_canary_passes_and_a_namespace_without_traffic_is_reported_idle(
    clean_world: World, env: dict[str, str], tmp_path: Path, gate: ProxyMetrics, prometheus: Prometheus
) -> None:
    """Healthy new pods pass every gate; ``edge`` serves no requests (only the proxies' own scrapes):
    it is reported idle with its gates skipped, not passed as healthy."""
    world = clean_world
    gate.set("edge", "node-agent", Traffic(rps=0))
    gate.set("edge", "report", Traffic(rps=0))
    _mesh_scraped(world, gate, prometheus)
    out = _upgrader(world, env, "apply", "--to", "stable-2.14.10", "--spec", str(_spec(tmp_path, prometheus)), "--yes")
    assert out.returncode == 0, out.stderr[-3000:]
    summaries = _summaries(out)
    shop = next(s for s in summaries if s.startswith("shop:"))
    figures = re.fullmatch(
        r"shop: success 100\.0% \(before 100\.0%\), p99 (\d+)ms \(before (\d+)ms\), [0-9.]+ rps", shop
    )
    assert figures, summaries
    assert all(38 <= int(ms) <= 42 for ms in figures.groups()), shop
    edge = [s for s in summaries if s.startswith("edge:")]
    assert edge == ["edge: success n/a (before n/a), p99 n/a (before n/a), 0.0 rps (no traffic: metric gates skipped)"]
    # what made it look busy before the admin port was left out: Prometheus's own scrapes of the proxies
    scrapes = prometheus.query(f'sum(rate(response_total{{namespace="edge",direction="inbound"}}[{WINDOW}s]))')
    assert float(scrapes[0]["value"][1]) > 0, scrapes


def test_a_canary_whose_new_pods_fail_5_percent_trips_both_success_gates(
    clean_world: World, env: dict[str, str], tmp_path: Path, gate: ProxyMetrics, prometheus: Prometheus
) -> None:
    """New pods of shop/web fail 5% of requests (3 of shop's 7 pods): shop's success rate falls to about
    97.9%, under minSuccessRate 99% and more than maxSuccessRateDrop 1% below 100%; the rest never starts."""
    world = clean_world
    _mesh_scraped(world, gate, prometheus)
    gate.set("shop", "web", Traffic(success_rate=0.95), since_now=True)
    out = _upgrader(world, env, "apply", "--to", "stable-2.14.10", "--spec", str(_spec(tmp_path, prometheus)), "--yes")
    assert out.returncode == 1, out.stderr[-3000:]
    reason = next(line for line in out.stderr.splitlines() if "metric gate failed" in line)
    assert "wave canary: metric gate failed: shop: success rate 97." in reason, reason
    assert "< 99.0%" in reason
    assert "shop: success rate fell from 100.0% to 97." in reason
    assert "more than the 1.0% allowed" in reason
    state = _checkpoint(tmp_path)
    assert (state["state"], state["stopped_in"]) == ("Failed", "RestartingDataPlane")
    assert not [s for s in _summaries(out) if s.startswith(("edge:", "payments:"))], "the rest never started"


def test_a_canary_whose_p99_doubles_trips_max_p99_increase(
    clean_world: World, env: dict[str, str], tmp_path: Path, gate: ProxyMetrics, prometheus: Prometheus
) -> None:
    """New pods of shop/web answer with twice the p99 (80 ms): shop's p99 leaves the 30-40 ms bucket for
    the 50-100 ms one, more than 1.5x its p99 before; the success gates still pass."""
    world = clean_world
    _mesh_scraped(world, gate, prometheus)
    gate.set("shop", "web", Traffic(p99_ms=80.0), since_now=True)
    out = _upgrader(world, env, "apply", "--to", "stable-2.14.10", "--spec", str(_spec(tmp_path, prometheus)), "--yes")
    assert out.returncode == 1, out.stderr[-3000:]
    reason = next(line for line in out.stderr.splitlines() if "metric gate failed" in line)
    found = re.search(
        r"wave canary: metric gate failed: shop: p99 latency (\d+)ms > 1\.5x (\d+)ms before \(\d+ms\)", reason
    )
    assert found, reason
    after, before = (int(ms) for ms in found.groups())
    assert 38 <= before <= 42, reason
    assert after > 2 * before, reason  # 3 of 7 pods at 80 ms: the namespace's p99 lands in the 50-100 ms bucket
    assert "success rate" not in reason


def test_prometheus_down_mid_wave_pauses_the_run_resumably(
    clean_world: World, env: dict[str, str], tmp_path: Path, gate: ProxyMetrics, prometheus: Prometheus
) -> None:
    """Prometheus stops when the canary's first new pod starts (after the gate's "before"): the "after"
    cannot be read, the retries run out, and the run pauses (exit 5, not Failed: a gate that cannot read
    its metrics has not failed, so ``onFailure: rollback`` does not run) in RestartingDataPlane, naming
    Prometheus, the error and how to resume; with Prometheus back, ``upgrader resume`` judges the canary
    again and finishes the upgrade."""
    world = clean_world
    _mesh_scraped(world, gate, prometheus)
    stopped = threading.Event()

    def stop_prometheus(namespace: str, _pod: str) -> None:
        if namespace == "shop" and not stopped.is_set():
            stopped.set()
            prometheus.stop()

    gate.on_new_pod(stop_prometheus)
    spec = _spec(tmp_path, prometheus, on_failure="rollback")
    try:
        out = _upgrader(world, env, "apply", "--to", "stable-2.14.10", "--spec", str(spec), "--yes")
    finally:
        if stopped.is_set():
            prometheus.start_again()
    assert stopped.is_set(), "the canary started no new pod"
    assert out.returncode == 5, out.stderr[-3000:]
    state = _checkpoint(tmp_path)
    assert (state["state"], state["stopped_in"]) == ("Paused", "RestartingDataPlane")
    assert state["errors"] == [], "a pause is not a failure"
    assert "RollingBack" not in [e["state"] for e in state["events"]], "onFailure: rollback did not run"
    reason = state["events"][-1]["reason"]
    assert reason.startswith("wave canary: metric gates cannot judge the wave: "), reason
    assert f"Prometheus at {prometheus.url} did not answer query" in reason, reason
    assert "Connection refused" in reason, reason
    assert state["next_command"] == f"upgrader resume {state['run_id']}"
    assert f"paused: {reason}" in out.stdout
    assert f"next: upgrader resume {state['run_id']}" in out.stdout
    time.sleep(3)  # a few scrapes again
    resumed = _upgrader(world, env, "resume", "--spec", str(spec))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _checkpoint(tmp_path)["state"] == "Done"
