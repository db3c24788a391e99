"""`make bench`: figures of upgrader at scale on the local cluster, printed as a table and written as
JSON and a PNG plot under ``bench/results/`` (never committed). Nothing here is a timed test; the
smoke test (``e2e/test_bench_smoke.py``) runs the same code at a few namespaces and checks only the
shape of the figures.

Scenarios (each size on a fresh local cluster, with the fixture world at stable-2.13.7):

- **restart**: ``N`` namespaces x ``M`` one-replica meshed Deployments whose pods take
  ``--ready-ms`` +/- ``--jitter-ms`` to become Ready and ``--delete-ms`` to go (KWOK stages,
  ``e2e.harness.stages``). ``upgrader apply --to stable-2.14.10`` restarts them at ``c`` per
  namespace and ``k`` namespaces at once. Figures:

  - *tool makespan*: first rollout start to last rollout end of its Deployments, as the API's
    watch saw them (``RolloutRecorder``);
  - *ideal makespan*: a lower bound from the rollout durations ``d_i`` observed in the same run.
    A namespace ``n`` is busy at least ``T_n = max(sum(d_i for i in n) / c, max(d_i for i in n))``
    (``c`` slots, and no rollout is shorter than itself); at most ``k`` namespaces are busy at
    once, so ``ideal = max(max_n T_n, sum_n T_n / k)``, which is also at least
    ``sum(d_i) / (c * k)``;
  - *naive makespan*: the same Deployments restarted again with kubectl, as a person would at the
    same effective concurrency: per namespace, ``kubectl rollout restart deployment`` for ``c`` of
    them at once then ``kubectl rollout status`` for each, next ``c``; ``k`` namespaces at a time
    (``--naive-batch all`` restarts a whole namespace at once, as ``rollout restart deploy --all``);
  - API requests by user agent from the API server's audit log (``e2e.harness.audit``):
    upgrader's (``upgrader/<version>``) over the whole apply and during its data-plane phase, per
    restarted workload; helm's and kubectl's counted apart;
  - CPU seconds and peak RSS of the upgrader process (its own, read from /proc; helm's apart).

- **plan**: ``N`` namespaces x ``M`` meshed Deployments x ``R`` pods; wall time of
  ``upgrader plan --to stable-2.14.10``, its API requests by verb and resource (LIST pages per
  resource kind; a LIST scoped to a namespace is counted apart and should be 0), peak RSS.

- **growth**: the restart scenario at several workload counts and the plan scenario at several
  pod counts (``--restart-sizes``, ``--plan-sizes``), to show how the cost grows.

Usage::

    python -m e2e.bench                       # restart 20x10 and plan 100x5x2 (a quick look)
    python -m e2e.bench --restart-sizes 20x10,100x10,200x10 --plan-sizes 100x5x2,1000x5x2
    python -m e2e.bench --only plan --plan-sizes 1000x5x2
    python -m e2e.bench --cluster                # the old figures: harness build and start times
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from e2e.fixtures.world import World
from e2e.harness import audit, binaries, leaks
from e2e.harness.cluster import LocalCluster
from e2e.harness.rollouts import RolloutRecorder
from e2e.harness.stages import PodTiming, timed
from e2e.harness.waits import wait_for

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"
FROM, TO = "stable-2.13.7", "stable-2.14.10"
IMAGE = "registry.example/bench/{name}:1.0"
PREFIX = "bench-"


# ---- pure parts ----------------------------------------------------------------------------------
def ideal_makespan(durations: Mapping[tuple[str, str], float], per_namespace: int, namespaces_at_once: int) -> float:
    """The lower bound of the module docstring, from (namespace, name) -> rollout seconds."""
    by_ns: dict[str, list[float]] = {}
    for (ns, _), seconds in durations.items():
        by_ns.setdefault(ns, []).append(seconds)
    busy = [max(sum(d) / per_namespace, *d) for d in by_ns.values()]
    return max(max(busy, default=0.0), sum(busy) / namespaces_at_once)


def greedy_makespan(durations: Mapping[tuple[str, str], float], per_namespace: int, namespaces_at_once: int) -> float:
    """What upgrader's own policy (``upgrader.dataplane.next_starts``) would take with no overhead at all: start
    whatever the throttles allow the moment a slot frees, preferring namespaces already running, namespaces and
    names in order; each workload takes its observed duration."""
    pending = sorted(durations)
    running: list[tuple[float, str]] = []  # (end time, namespace)
    now = 0.0
    while pending or running:
        busy: dict[str, int] = {}
        for _, ns in running:
            busy[ns] = busy.get(ns, 0) + 1
        for key in sorted(pending, key=lambda k: (busy.get(k[0], 0) == 0, k)):
            ns = key[0]
            if busy.get(ns, 0) >= per_namespace or (not busy.get(ns) and len(busy) >= namespaces_at_once):
                continue
            busy[ns] = busy.get(ns, 0) + 1
            running.append((now + durations[key], ns))
            pending.remove(key)
        running.sort()
        now = running.pop(0)[0]
        while running and running[0][0] <= now:
            running.pop(0)
    return now


def scale_docs(namespaces: int, per_namespace: int, replicas: int = 1) -> list[dict[str, Any]]:
    """Meshed namespaces ``bench-NNNN``, each with ``per_namespace`` Deployments of ``replicas`` pods."""
    docs: list[dict[str, Any]] = []
    for i in range(namespaces):
        ns = f"{PREFIX}{i:04d}"
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": ns,
                    "labels": {"upgrader-e2e/sample": "true"},
                    "annotations": {"linkerd.io/inject": "enabled"},
                },
            }
        )
        for j in range(per_namespace):
            name = f"app-{j:02d}"
            docs.append(
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {
                        "replicas": replicas,
                        "selector": {"matchLabels": {"app": name}},
                        "template": {
                            "metadata": {"labels": {"app": name}},
                            "spec": {"containers": [{"name": name, "image": IMAGE.format(name=name)}]},
                        },
                    },
                }
            )
    return docs


def parse_size(text: str) -> tuple[int, ...]:
    """``"200x10"`` -> (200, 10); ``"1000x5x2"`` -> (1000, 5, 2)."""
    return tuple(int(part) for part in text.lower().split("x"))


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


# ---- measuring a process -------------------------------------------------------------------------
@dataclass
class Metered:
    """A finished process with what it cost: wall seconds, its own CPU seconds and peak RSS (from /proc),
    and the CPU of the children it waited for (upgrader's helm)."""

    returncode: int
    stdout: str
    stderr: str
    wall: float
    cpu_seconds: float = 0.0
    children_cpu_seconds: float = 0.0
    peak_rss_mib: float = 0.0


def metered(argv: list[str], env: Mapping[str, str], timeout: float = 3600) -> Metered:
    """Run ``argv``, sampling /proc/<pid> every 0.1 s for VmHWM and CPU times (the last sample before exit)."""
    tick = os.sysconf("SC_CLK_TCK")
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, env=dict(env), stdout=out, stderr=err, text=True)
        sample = {"hwm": 0.0, "cpu": 0.0, "children": 0.0}
        while proc.poll() is None:
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                break
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    sample["hwm"] = max(sample["hwm"], int(line.split()[1]) / 1024)
            # after the ")": state is field 3, utime/stime 14/15, cutime/cstime 16/17 (1-based, man 5 proc)
            sample["cpu"] = (int(fields[11]) + int(fields[12])) / tick
            sample["children"] = (int(fields[13]) + int(fields[14])) / tick
            if time.monotonic() - started > timeout:
                proc.kill()
            time.sleep(0.1)
        proc.wait()
        out.seek(0)
        err.seek(0)
        result = Metered(
            proc.returncode,
            out.read(),
            err.read(),
            time.monotonic() - started,
            round(sample["cpu"], 2),
            round(sample["children"], 2),
            round(sample["hwm"], 1),
        )
    leaks.OUTPUTS.append((" ".join(argv[3:6]), result.stdout + result.stderr))  # the e2e leak guard reads these
    return result


def upgrader_argv(world: World, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "upgrader",
        "--log-format",
        "json",
        *args,
        "--kubeconfig",
        str(world.kubeconfig),
        "--helm",
        str(world.helm),
    ]


def events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def workload_key(event: dict[str, Any]) -> str:
    """``namespace/name`` of a ``restart`` or ``workload-passed`` event (its workload reads ``Kind ns/name``)."""
    return str(event["workload"]).split(" ", 1)[1]


def bench_events(log: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """The ``restart`` and ``workload-passed`` events of the bench Deployments (namespaces under ``PREFIX``),
    and how many other workloads the apply restarted (meshed workloads outside the bench, such as the
    harness's own: they take throttle slots but are not in the makespans or the per-workload figures)."""
    restarts = [e for e in log if e["event"] == "restart"]
    ours = [e for e in restarts if workload_key(e).startswith(PREFIX)]
    passed = [e for e in log if e["event"] == "workload-passed" and workload_key(e).startswith(PREFIX)]
    if not ours or not passed:
        raise RuntimeError(
            f"upgrader apply logged {len(ours)} restart(s) and {len(passed)} workload-passed event(s) of bench "
            f"Deployments (namespaces {PREFIX}*; {len(restarts) - len(ours)} other restart(s)): the benchmark "
            "needs at least one of each; check that the bench namespaces are meshed and the apply's JSON log "
            "(stderr) carries these events"
        )
    return ours, passed, len(restarts) - len(ours)


# ---- the cluster side ----------------------------------------------------------------------------
def apply_and_wait(world: World, docs: list[dict[str, Any]], timeout: float = 3600) -> float:
    """Create ``docs`` (in chunks), then wait until every Deployment under ``PREFIX`` is rolled out; seconds taken."""
    started = time.monotonic()
    namespaces = [d for d in docs if d["kind"] == "Namespace"]
    world.apply(namespaces)
    rest = [d for d in docs if d["kind"] != "Namespace"]
    with ThreadPoolExecutor(max_workers=4) as pool:  # kubectl applies one object at a time: four at once
        list(pool.map(world.apply, [rest[i : i + 250] for i in range(0, len(rest), 250)]))
    wanted = sum(1 for d in rest if d["kind"] == "Deployment")
    apps = client.AppsV1Api(world.api)

    def done() -> bool:
        items = [d for d in apps.list_deployment_for_all_namespaces().items if d.metadata.namespace.startswith(PREFIX)]
        return len(items) == wanted and not any(RolloutRecorder.rolling(d) for d in items)

    wait_for(f"{wanted} bench Deployments rolled out", done, timeout=timeout, interval=2.0)
    return time.monotonic() - started


def durations(recorder: RolloutRecorder) -> dict[tuple[str, str], float]:
    """Rollout seconds of each bench Deployment the recorder saw start and end."""
    out = {}
    for key, began in recorder.began.items():
        ns, name = key.split("/", 1)
        if ns.startswith(PREFIX) and key in recorder.ended:
            out[(ns, name)] = recorder.ended[key] - began
    return out


def span(recorder: RolloutRecorder) -> float | None:
    keys = [k for k in recorder.began if k.startswith(PREFIX) and k in recorder.ended]
    if not keys:
        return None
    return max(recorder.ended[k] for k in keys) - min(recorder.began[k] for k in keys)


def naive_restart(world: World, namespaces: list[str], per_namespace: int | None, at_once: int) -> float:
    """kubectl as a person would use it (see the module docstring); wall seconds."""
    apps = client.AppsV1Api(world.api)

    def one(ns: str) -> None:
        names = sorted(d.metadata.name for d in apps.list_namespaced_deployment(ns).items)
        step = per_namespace or len(names)
        for i in range(0, len(names), step):
            batch = names[i : i + step]
            world.kubectl("rollout", "restart", "deployment", *batch, "-n", ns)
            for name in batch:
                world.kubectl("rollout", "status", f"deployment/{name}", "-n", ns, "--timeout=10m")

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=at_once) as pool:
        list(pool.map(one, namespaces))
    return time.monotonic() - started


def _requests(folder: Path, since: dt.datetime, until: dt.datetime) -> list[audit.Request]:
    return audit.read(folder, since - dt.timedelta(seconds=1), until + dt.timedelta(seconds=1))


def _stamp(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


# ---- scenarios -----------------------------------------------------------------------------------
@dataclass
class RestartSize:
    namespaces: int
    per_namespace: int
    per_ns_concurrency: int = 5
    namespaces_at_once: int = 4
    timing: PodTiming = field(default_factory=lambda: PodTiming(2000, 1000, 1000))
    naive_batch: int | None = None  # None: the same per-namespace concurrency as upgrader's; 0: all at once
    state_store: str = ""  # upgrader's --state-store ("kubernetes:linkerd"); the harness's file store when empty

    @property
    def naive_per_namespace(self) -> int | None:
        """kubectl restarts per namespace at once (None: every Deployment of the namespace)."""
        return self.per_ns_concurrency if self.naive_batch is None else (self.naive_batch or None)


def restart(world: World, audit_dir: Path, size: RestartSize, folder: Path) -> dict[str, Any]:
    """The restart scenario on ``world`` (Linkerd at ``FROM`` installed); its figures."""
    docs = timed(scale_docs(size.namespaces, size.per_namespace), size.timing)
    ready_in = apply_and_wait(world, docs)
    env = world.helm_env(folder)
    if size.state_store:
        env["UPGRADER_STATE_STORE"] = size.state_store
    spec = folder / "bench.yaml"
    spec.write_text(
        "name: bench\nwaivers: [kubernetes-version]\n"
        f"dataPlane:\n  maxConcurrentPerNamespace: {size.per_ns_concurrency}\n"
        f"  maxNamespaces: {size.namespaces_at_once}\n"
    )
    with RolloutRecorder(world.api) as recorder:
        since = dt.datetime.now(dt.UTC)
        run = metered(upgrader_argv(world, "apply", "--to", TO, "--spec", str(spec), "--yes"), env)
        until = dt.datetime.now(dt.UTC)
    if run.returncode != 0:
        raise RuntimeError(f"upgrader apply failed ({run.returncode}):\n{run.stderr[-3000:]}")
    log = events(run.stderr)
    restarts, passed, other_restarts = bench_events(log)
    observed = durations(recorder)
    requests = _requests(audit_dir, since, until)
    dp_from, dp_to = _stamp(restarts[0]["timestamp"]), _stamp(passed[-1]["timestamp"])
    in_phase = [r for r in requests if dp_from - dt.timedelta(seconds=1) <= r.at <= dp_to + dt.timedelta(seconds=1)]
    tool_span = span(recorder)

    # Where the time between two rollouts goes: the API saw a rollout end -> upgrader logged it passed
    # (its watch and its gate), and upgrader logged a restart -> the API saw the rollout begin.
    key = workload_key
    detect = [_stamp(e["timestamp"]).timestamp() - recorder.ended[key(e)] for e in passed if key(e) in recorder.ended]
    begin = [recorder.began[key(e)] - _stamp(e["timestamp"]).timestamp() for e in restarts if key(e) in recorder.began]
    ideal = ideal_makespan(observed, size.per_ns_concurrency, size.namespaces_at_once)
    greedy = greedy_makespan(observed, size.per_ns_concurrency, size.namespaces_at_once)

    names = [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"]
    with RolloutRecorder(world.api) as naive_recorder:
        naive_since = dt.datetime.now(dt.UTC)
        naive_wall = naive_restart(world, names, size.naive_per_namespace, size.namespaces_at_once)
        naive_until = dt.datetime.now(dt.UTC)
    naive_requests = _requests(audit_dir, naive_since, naive_until)
    naive_span = span(naive_recorder)
    workloads = len(restarts)
    tool_requests = audit.by_client(requests)["upgrader"]
    tool_in_phase = audit.by_client(in_phase)["upgrader"]
    naive_observed = durations(naive_recorder)
    return {
        "scenario": "restart",
        "namespaces": size.namespaces,
        "per_namespace": size.per_namespace,
        "workloads": workloads,
        "other_restarts": other_restarts,  # meshed workloads outside the bench the apply restarted too
        "concurrency": {"per_namespace": size.per_ns_concurrency, "namespaces_at_once": size.namespaces_at_once},
        "pod_timing_ms": {
            "ready": size.timing.ready_ms,
            "jitter": size.timing.jitter_ms,
            "delete": size.timing.delete_ms,
        },
        "mesh_ready_seconds": round(ready_in, 1),
        "apply_wall_seconds": round(run.wall, 2),
        "tool_makespan_seconds": round(tool_span, 2) if tool_span is not None else None,
        "tool_log_makespan_seconds": round((dp_to - dp_from).total_seconds(), 2),
        "ideal_makespan_seconds": round(ideal, 2),
        "greedy_makespan_seconds": round(greedy, 2),
        "naive_makespan_seconds": round(naive_span, 2) if naive_span is not None else None,
        "naive_wall_seconds": round(naive_wall, 2),
        "naive_batch": size.naive_per_namespace or size.per_namespace,
        "state_store": size.state_store.split(":")[0] or "file",
        "tool_over_ideal": ratio(tool_span, ideal),
        "tool_over_greedy": ratio(tool_span, greedy),
        "tool_over_naive": ratio(tool_span, naive_span),
        "rollout_seconds": {
            "count": len(observed),
            "min": round(min(observed.values()), 2) if observed else None,
            "mean": round(statistics.fmean(observed.values()), 2) if observed else None,
            "max": round(max(observed.values()), 2) if observed else None,
            "naive_mean": round(statistics.fmean(naive_observed.values()), 2) if naive_observed else None,
        },
        "latency_seconds": {
            "rollout_end_to_passed_mean": round(statistics.fmean(detect), 3) if detect else None,
            "restart_logged_to_rollout_seen_mean": round(statistics.fmean(begin), 3) if begin else None,
        },
        "peak_per_namespace": max((n for ns, n in recorder.peak.items() if ns.startswith(PREFIX)), default=0),
        "requests": {
            "upgrader": tool_requests,
            "upgrader_data_plane_phase": tool_in_phase,
            "upgrader_per_workload": round(tool_requests / workloads, 2) if workloads else None,
            "upgrader_per_workload_data_plane_phase": round(tool_in_phase / workloads, 2) if workloads else None,
            "upgrader_by_kind": dict(audit.by_kind(requests, "upgrader").most_common()),
            "upgrader_data_plane_by_kind": dict(audit.by_kind(in_phase, "upgrader").most_common()),
            "helm": audit.by_client(requests)["Helm"],
            "kubectl_naive": audit.by_client(naive_requests)["kubectl"],
            "kubectl_naive_per_workload": round(audit.by_client(naive_requests)["kubectl"] / workloads, 2)
            if workloads
            else None,
        },
        "tool": {
            "cpu_seconds": run.cpu_seconds,
            "helm_cpu_seconds": run.children_cpu_seconds,
            "peak_rss_mib": run.peak_rss_mib,
        },
    }


def plan(
    world: World, audit_dir: Path, namespaces: int, per_namespace: int, replicas: int, folder: Path
) -> dict[str, Any]:
    """The plan scenario on ``world`` (Linkerd at ``FROM`` installed); its figures."""
    docs = scale_docs(namespaces, per_namespace, replicas)
    ready_in = apply_and_wait(world, docs)
    env = world.helm_env(folder)
    spec = folder / "plan.yaml"
    spec.write_text("name: bench-plan\nwaivers: [kubernetes-version]\n")
    since = dt.datetime.now(dt.UTC)
    run = metered(upgrader_argv(world, "plan", "--to", TO, "--spec", str(spec), "-o", "json"), env)
    until = dt.datetime.now(dt.UTC)
    if run.returncode != 0:
        raise RuntimeError(f"upgrader plan failed ({run.returncode}):\n{run.stderr[-3000:]}")
    requests = _requests(audit_dir, since, until)
    by_kind = audit.by_kind(requests, "upgrader")
    lists = {k: n for k, n in by_kind.items() if k.startswith("list ")}
    items = client.CoreV1Api(world.api).list_pod_for_all_namespaces(label_selector="app").items
    pods = sum(1 for p in items if p.metadata.namespace.startswith(PREFIX))
    return {
        "scenario": "plan",
        "namespaces": namespaces,
        "per_namespace": per_namespace,
        "replicas": replicas,
        "pods": pods,
        "mesh_ready_seconds": round(ready_in, 1),
        "wall_seconds": round(run.wall, 2),
        "requests": {
            "upgrader": audit.by_client(requests)["upgrader"],
            "helm": audit.by_client(requests)["Helm"],
            "upgrader_by_kind": dict(by_kind.most_common()),
            "list_calls": sum(lists.values()),
            "list_calls_by_resource": lists,
            # LISTs scoped to one of the mesh's namespaces (the control plane's own namespace is read apart)
            "namespaced_list_calls": audit.namespaced_lists(
                [r for r in requests if r.namespace.startswith(PREFIX)], "upgrader"
            ),
            "control_plane_namespace_list_calls": audit.namespaced_lists(
                [r for r in requests if not r.namespace.startswith(PREFIX)], "upgrader"
            ),
        },
        "tool": {
            "cpu_seconds": run.cpu_seconds,
            "helm_cpu_seconds": run.children_cpu_seconds,
            "peak_rss_mib": run.peak_rss_mib,
        },
    }


# ---- clusters, output ----------------------------------------------------------------------------
class BenchCluster(AbstractContextManager["BenchCluster"]):
    """A fresh local cluster with the fixture world at ``FROM``, stopped on exit."""

    def __init__(self, pods: int) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="upgrader-bench-"))
        nodes = 3
        self.cluster = LocalCluster(nodes=nodes, pods_per_node=max(110, pods // nodes + 200), api_qps=200)
        self.world: World | None = None

    def __enter__(self) -> BenchCluster:
        self.cluster.start()
        try:
            self.world = World.start(self.cluster.kubeconfig, self.folder / "world", self.cluster.spawn)
            self.world.install(FROM)
        except BaseException:
            self.cluster.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cluster.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def machine() -> dict[str, Any]:
    mem = next(
        (int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in line),
        0,
    )
    return {
        "cpus": os.cpu_count(),
        "memory_mib": mem,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def table(results: Iterable[dict[str, Any]]) -> str:
    """The figures as a plain-text table (one row per scenario and size)."""
    rows = [("scenario", "size", "tool s", "ideal s", "greedy s", "naive s", "tool/ideal", "tool/naive", "req/wl",
             "req/wl dp", "kubectl req/wl", "plan s", "lists", "ns lists", "RSS MiB", "CPU s")]  # fmt: skip
    for r in results:
        q, t = r["requests"], r["tool"]
        if r["scenario"] == "restart":
            rows.append(
                (
                    "restart",
                    f"{r['namespaces']}x{r['per_namespace']}={r['workloads']}"
                    + (f" (+{r['other_restarts']} other)" if r.get("other_restarts") else ""),
                    str(r["tool_makespan_seconds"]),
                    str(r["ideal_makespan_seconds"]),
                    str(r.get("greedy_makespan_seconds")),
                    str(r["naive_makespan_seconds"]),
                    str(r["tool_over_ideal"]),
                    str(r["tool_over_naive"]),
                    str(q["upgrader_per_workload"]),
                    str(q["upgrader_per_workload_data_plane_phase"]),
                    str(q["kubectl_naive_per_workload"]),
                    "",
                    "",
                    "",
                    str(t["peak_rss_mib"]),
                    str(t["cpu_seconds"]),
                )
            )
        else:
            rows.append(
                (
                    "plan",
                    f"{r['namespaces']}x{r['per_namespace']}x{r['replicas']}={r['pods']} pods",
                    *[""] * 9,
                    str(r["wall_seconds"]),
                    str(q["list_calls"]),
                    str(q["namespaced_list_calls"]),
                    str(t["peak_rss_mib"]),
                    str(t["cpu_seconds"]),
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Makespans (tool, ideal, naive) and requests per workload against workload count; plan wall time and
    RSS against pods."""
    import matplotlib  # noqa: PLC0415 - only the benchmark needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    restarts = sorted((r for r in results if r["scenario"] == "restart"), key=lambda r: r["workloads"])
    plans = sorted((r for r in results if r["scenario"] == "plan"), key=lambda r: r["pods"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    x = [r["workloads"] for r in restarts]
    for key, label in (
        ("tool_makespan_seconds", "upgrader"),
        ("ideal_makespan_seconds", "ideal (lower bound)"),
        ("greedy_makespan_seconds", "upgrader's policy, no overhead"),
        ("naive_makespan_seconds", "naive kubectl"),
    ):
        axes[0].plot(x, [r.get(key) for r in restarts], marker="o", label=label)
    axes[0].set(xlabel="workloads restarted", ylabel="makespan (s)", title="Data-plane restart")
    axes[0].legend()
    axes[1].plot(x, [r["requests"]["upgrader_per_workload"] for r in restarts], marker="o", label="upgrader (apply)")
    axes[1].plot(
        x,
        [r["requests"]["upgrader_per_workload_data_plane_phase"] for r in restarts],
        marker="o",
        label="upgrader (data-plane phase)",
    )
    axes[1].plot(x, [r["requests"]["kubectl_naive_per_workload"] for r in restarts], marker="o", label="naive kubectl")
    axes[1].axhline(4, color="grey", linestyle="--", label="target")
    axes[1].set(xlabel="workloads restarted", ylabel="API requests per workload", title="API load")
    axes[1].legend()
    px = [r["pods"] for r in plans]
    axes[2].plot(px, [r["wall_seconds"] for r in plans], marker="o", label="plan wall (s)")
    axes[2].plot(px, [r["tool"]["peak_rss_mib"] for r in plans], marker="o", label="peak RSS (MiB)")
    axes[2].set(xlabel="pods", title="Discovery and plan")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(results: list[dict[str, Any]], folder: Path, started: dt.datetime) -> tuple[Path, Path]:
    """``bench-<time>.json`` and ``.png`` in ``folder`` (and ``latest.*`` copies); their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"bench-{started.strftime('%Y%m%dT%H%M%SZ')}"
    doc = {"started": started.isoformat(), "machine": machine(), "results": results}
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(results, stem.with_suffix(".png"))
    for suffix in (".json", ".png"):
        (folder / f"latest{suffix}").write_bytes(stem.with_suffix(suffix).read_bytes())
    return stem.with_suffix(".json"), stem.with_suffix(".png")


def cluster_figures(runs: int, nodes: int) -> None:
    """Build times recorded in the cache, and warm cluster start/stop times and memory."""
    print("cold build times recorded in the cache:")
    for c in binaries.COMPONENTS.values():
        info = json.loads((c.dir / "BUILD-INFO.json").read_text())
        print(f"  {c.name:<11} {c.version:<8} {info['build_seconds']:>7.1f}s  ({info['built_at']})")
    starts, stops, rss = [], [], []
    for i in range(runs):
        t0 = time.monotonic()
        cluster = LocalCluster(nodes=nodes)
        cluster.start()
        starts.append(time.monotonic() - t0)
        time.sleep(5)  # let the controllers settle before reading memory
        rss.append(cluster.peak_rss_kib() / 1024)
        t1 = time.monotonic()
        cluster.stop()
        stops.append(time.monotonic() - t1)
        print(f"  run {i + 1}: start {starts[-1]:.1f}s, stop {stops[-1]:.1f}s, peak RSS {rss[-1]:.0f} MiB")
    print(f"warm start ({nodes} nodes): median {statistics.median(starts):.1f}s")
    print(f"peak RSS (sum over components): median {statistics.median(rss):.0f} MiB")


def main(argv: list[str] | None = None, echo: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["restart", "plan"], help="one scenario (default: both)")
    parser.add_argument(
        "--restart-sizes", default="20x10", help="namespaces x Deployments, comma-separated (default 20x10)"
    )
    parser.add_argument(
        "--plan-sizes", default="100x5x2", help="namespaces x Deployments x pods, comma-separated (default 100x5x2)"
    )
    parser.add_argument("--per-ns-concurrency", type=int, default=5)
    parser.add_argument("--namespaces-at-once", type=int, default=4)
    parser.add_argument("--ready-ms", type=int, default=2000, help="pod start time (default 2000)")
    parser.add_argument("--jitter-ms", type=int, default=1000, help="+/- on the start time (default 1000)")
    parser.add_argument("--delete-ms", type=int, default=1000, help="pod termination grace (default 1000)")
    parser.add_argument("--naive-batch", default="", help="kubectl restarts per namespace at once: N or all")
    parser.add_argument(
        "--state-store", default="", help="upgrader's checkpoint store, e.g. kubernetes:linkerd (default: a file)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--cluster", action="store_true", help="only the harness figures (build, start, memory)")
    parser.add_argument("--runs", type=int, default=3, help="cluster starts to time with --cluster")
    args = parser.parse_args(argv)
    binaries.ensure_all(["etcd", "kubernetes", "kwok", "helm"])
    if args.cluster:
        cluster_figures(args.runs, 3)
        return 0
    started = dt.datetime.now(dt.UTC)
    timing = PodTiming(args.ready_ms, args.jitter_ms, args.delete_ms)
    batch = None if not args.naive_batch else (0 if args.naive_batch == "all" else int(args.naive_batch))
    results: list[dict[str, Any]] = []
    if args.only in (None, "restart"):
        for text in args.restart_sizes.split(","):
            ns, per = parse_size(text)
            size = RestartSize(
                ns, per, args.per_ns_concurrency, args.namespaces_at_once, timing, batch, args.state_store
            )
            echo(f"restart {ns} x {per} ...")
            with BenchCluster(ns * per) as bench:
                assert bench.world is not None
                results.append(restart(bench.world, bench.cluster.audit_dir, size, bench.folder))
            echo(json.dumps(results[-1], indent=2))
            write(results, args.out, started)  # what is measured so far survives a later failure
    if args.only in (None, "plan"):
        for text in args.plan_sizes.split(","):
            ns, per, replicas = parse_size(text)
            echo(f"plan {ns} x {per} x {replicas} ...")
            with BenchCluster(ns * per * replicas) as bench:
                assert bench.world is not None
                results.append(plan(bench.world, bench.cluster.audit_dir, ns, per, replicas, bench.folder))
            echo(json.dumps(results[-1], indent=2))
            write(results, args.out, started)  # what is measured so far survives a later failure
    paths = write(results, args.out, started)
    echo(table(results))
    m = machine()
    echo(f"machine: {m['cpus']} CPUs, {m['memory_mib']} MiB; figures in {paths[0]}, plot in {paths[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
