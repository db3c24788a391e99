"""The benchmark's pure parts: the ideal makespan, pod timing stages and the audit log reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2e.bench import bench_events, greedy_makespan, ideal_makespan, parse_size, scale_docs, workload_key
from e2e.harness import audit
from e2e.harness.stages import DELETE_DELAY, READY_DELAY, READY_JITTER, PodTiming, stages, timed


@pytest.mark.parametrize(
    ("durations", "per_ns", "at_once", "ideal"),
    [
        ({("a", "1"): 2.0}, 5, 4, 2.0),
        ({("a", str(i)): 2.0 for i in range(10)}, 5, 4, 4.0),
        ({(ns, str(i)): 1.0 for ns in "abcdefgh" for i in range(4)}, 2, 4, 4.0),
        ({("a", "1"): 9.0, ("a", "2"): 1.0, ("b", "1"): 1.0}, 2, 1, 10.0),
        ({}, 5, 4, 0.0),
    ],
    ids=[
        "one workload takes its own time",
        "ten in one namespace at five at a time take two rounds",
        "eight namespaces at four at a time take two namespace rounds",
        "the longest rollout bounds its namespace however many slots it has",
        "nothing to restart takes no time",
    ],
)
def test_the_ideal_makespan_is_the_busiest_namespace_or_the_namespace_time_over_the_namespaces_at_once(
    durations: dict[tuple[str, str], float], per_ns: int, at_once: int, ideal: float
) -> None:
    """ideal = max(max_n T_n, sum_n T_n / k) with T_n = max(sum d / c, max d)."""
    assert ideal_makespan(durations, per_ns, at_once) == pytest.approx(ideal)


def test_the_ideal_is_never_below_the_total_work_over_the_allowed_parallelism() -> None:
    """A lower bound at least sum(d) / (c * k)."""
    durations = {(f"n{i % 7}", str(i)): 1.0 + (i % 5) * 0.4 for i in range(60)}
    assert ideal_makespan(durations, 3, 2) >= sum(durations.values()) / 6


def test_sizes_read_as_namespaces_by_deployments_by_pods() -> None:
    """'200x10' and '1000x5x2' as the benchmark's flags take them."""
    assert parse_size("200x10") == (200, 10)
    assert parse_size("1000X5x2") == (1000, 5, 2)


def test_pod_timing_goes_on_every_pod_template_and_leaves_the_input_alone() -> None:
    """timed() annotates the pod templates of a copy; namespaces are left as they are."""
    docs = scale_docs(1, 2)
    out = timed(docs, PodTiming(2000, 1000, 500))
    deployments = [d for d in out if d["kind"] == "Deployment"]
    assert len(deployments) == 2
    for d in deployments:
        assert d["spec"]["template"]["metadata"]["annotations"] == {
            READY_DELAY: "1000ms",
            READY_JITTER: "3000ms",
            DELETE_DELAY: "500ms",
        }
    assert "annotations" not in docs[1]["spec"]["template"]["metadata"]
    assert out[0] == docs[0]


def test_a_zero_timing_cluster_never_writes_a_jitter_that_would_replace_a_pods_delay() -> None:
    """kwok takes a jitter at or below the duration instead of it: the default stage has none, only the annotation."""
    ready = stages(PodTiming())[0]["spec"]
    assert ready["delay"]["durationMilliseconds"] == 0
    assert "jitterDurationMilliseconds" not in ready["delay"]
    assert READY_JITTER in ready["delay"]["jitterDurationFrom"]["jq"]["expression"]
    slow = stages(PodTiming(2000, 500, 100))
    assert (
        slow[0]["spec"]["delay"]["durationMilliseconds"],
        slow[0]["spec"]["delay"]["jitterDurationMilliseconds"],
    ) == (
        1500,
        2500,
    )
    assert slow[2]["spec"]["delay"]["durationMilliseconds"] == 100
    assert [s["metadata"]["name"] for s in slow] == ["pod-ready", "pod-complete", "pod-delete"]


def test_a_jitter_larger_than_the_delay_is_refused() -> None:
    """2 s +/- 3 s would start before it is scheduled."""
    with pytest.raises(ValueError, match="jitter"):
        PodTiming(2000, 3000)


def _event(audit_id: str, stage: str, agent: str, verb: str, resource: str, *, namespace: str = "") -> str:
    ref = {"resource": resource, **({"namespace": namespace} if namespace else {})}
    return json.dumps(
        {
            "auditID": audit_id,
            "stage": stage,
            "verb": verb,
            "userAgent": agent,
            "objectRef": ref,
            "requestURI": f"/api/v1/{resource}",
            "responseStatus": {"code": 200},
            "requestReceivedTimestamp": f"2026-12-01T02:00:0{audit_id}.000000Z",
        }
    )


def test_the_audit_reader_counts_each_request_once_by_client_and_kind(tmp_path: Path) -> None:
    """A watch logs two stages but is one request; helm and upgrader are counted apart; namespaced lists found."""
    lines = [
        _event("1", "ResponseStarted", "upgrader/0.1.0", "watch", "pods"),
        _event("1", "ResponseComplete", "upgrader/0.1.0", "watch", "pods"),
        _event("2", "ResponseComplete", "upgrader/0.1.0", "list", "pods"),
        _event("3", "ResponseComplete", "Helm/4.2.4", "get", "secrets", namespace="linkerd"),
        _event("4", "ResponseComplete", "upgrader/0.1.0", "list", "deployments", namespace="shop"),
    ]
    (tmp_path / "audit.log").write_text("\n".join(lines) + "\n")
    requests = audit.read(tmp_path)
    assert len(requests) == 4
    assert audit.by_client(requests) == {"upgrader": 3, "Helm": 1}
    assert audit.by_kind(requests, "upgrader") == {"watch pods": 1, "list pods": 1, "list deployments": 1}
    assert audit.namespaced_lists(requests, "upgrader") == 1
    later = audit.read(tmp_path, since=requests[1].at)
    assert [r.audit_id for r in later] == ["2", "3", "4"]


def test_the_greedy_reference_runs_the_tools_policy_with_no_overhead() -> None:
    """Five slots, ten 2 s rollouts in one namespace: two rounds; a long tail holds its namespace's slot."""
    assert greedy_makespan({("a", str(i)): 2.0 for i in range(10)}, 5, 4) == pytest.approx(4.0)
    tail = {("a", "1"): 5.0, ("a", "2"): 1.0, ("b", "1"): 1.0}
    assert greedy_makespan(tail, 2, 1) == pytest.approx(6.0)  # b waits for a's last rollout
    assert ideal_makespan(tail, 2, 1) <= greedy_makespan(tail, 2, 1)
    assert greedy_makespan({}, 5, 4) == 0.0


def _logged(event: str, workload: str) -> dict[str, str]:
    return {"event": event, "workload": workload, "timestamp": "2026-12-01T03:00:00Z"}


def test_only_bench_deployments_count_and_other_restarts_are_counted_apart() -> None:
    """A meshed workload outside the bench restarted by the same apply is not in the bench's events."""
    log = [
        _logged("restart", "Deployment shop/web"),
        _logged("restart", "Deployment bench-0000/app-0"),
        _logged("workload-passed", "Deployment shop/web"),
        _logged("workload-passed", "Deployment bench-0000/app-0"),
        {"event": "hop-done"},
    ]
    restarts, passed, others = bench_events(log)
    assert [workload_key(e) for e in restarts] == ["bench-0000/app-0"]
    assert [workload_key(e) for e in passed] == ["bench-0000/app-0"]
    assert others == 1


def test_a_log_without_bench_restarts_is_a_clear_error_not_an_index_error() -> None:
    """No bench restart (or none passed) names what was found and what to check."""
    with pytest.raises(RuntimeError, match=r"0 restart\(s\) and 0 workload-passed .*1 other restart"):
        bench_events([_logged("restart", "Deployment shop/web"), _logged("workload-passed", "Deployment shop/web")])
    with pytest.raises(RuntimeError, match=r"1 restart\(s\) and 0 workload-passed"):
        bench_events([_logged("restart", "Deployment bench-0001/app-0")])
