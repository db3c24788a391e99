"""Maintenance windows on the fixture world: a run pauses between two waves when the next one does not fit what is
left of its window, and resumes in the next window; outside every window `apply` refuses and changes nothing.

The windows are a few seconds long and defined relative to now (``HH:MM:SS`` in UTC). Step estimates come from a
previous run's record in the same file state store (seeded below, like one an earlier run against this
installation would have left): small for the steps before the waves, ``RESTART`` seconds per round of restarts.
Wave ``b`` has three workloads restarted one at a time (three rounds), so it needs about ``3 * RESTART`` seconds:
window 1 ends ``WINDOW_1`` seconds after `apply` starts. Wave ``a`` (one round and its bake) starts if the steps
before it end within ``WINDOW_1 - RESTART - BAKE - MARGIN`` = 20 s of the start (they took 5 to 8 s here, on two
shared cores: printed by the test); wave ``b`` then cannot fit whenever they took more than about 0 s, since what
is left after wave ``a`` is under ``3 * RESTART + MARGIN``. Window 2 opens ``GAP`` seconds after window 1 closes,
so `resume --wait-for-window` sleeps about 25 s.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.fixtures import mesh
from e2e.fixtures.world import World
from e2e.harness.leaks import run_upgrader
from upgrader.checkpoints import Checkpoint, FileStore
from upgrader.notifications import url_host
from upgrader.states import RunState

pytestmark = pytest.mark.e2e
RESTART = 10  # seconds per round of restarts, as the earlier run recorded it
MARGIN = 1  # seconds kept free before a window closes
BAKE = 3  # wave a's bake time
WINDOW_1 = 34  # seconds from `apply` to the end of window 1
GAP = 2  # seconds between window 1 and window 2
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
RESTARTED_BY = "upgrader.io/restarted-by"


def _upgrader(world: World, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_upgrader(
        "--log-format", "json", *args, "--kubeconfig", str(world.kubeconfig), "--helm", str(world.helm), env=env
    )


def _events(out: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]


def _at(event: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(event["timestamp"])


def _clock(moment: dt.datetime) -> str:
    return f"{moment:%H:%M:%S}"


def _namespaces() -> list[dict[str, Any]]:
    """win-a (one Deployment) and win-b (three), meshed by the injector."""
    docs: list[dict[str, Any]] = []
    for ns, apps in (("win-a", ["a0"]), ("win-b", ["b0", "b1", "b2"])):
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
        docs += [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": app, "namespace": ns},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": app}},
                    "template": {
                        "metadata": {"labels": {"app": app}},
                        "spec": {"containers": [{"name": app, "image": mesh.IMAGE.format(name=app)}]},
                    },
                },
            }
            for app in apps
        ]
    return docs


def _seed_earlier_run(state: Path, world: World) -> None:
    """The record an earlier run against this installation left in the state store: how long its steps took."""
    now = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    earlier = Checkpoint.new("run-earlier-window-test", {"from": "stable-2.13.6", "to": "stable-2.13.7"}, now)
    earlier.state = RunState.DONE
    # durations count for the same installation only: the same control-plane namespace on the same API server
    earlier.options = {"namespace": "linkerd", "cluster": url_host(world.api.configuration.host)}
    earlier.durations = {
        "preflight": [3.0],
        "helm:linkerd-crds": [3.0],
        "helm:linkerd-control-plane": [8.0],
        "verify-control-plane": [3.0],
        "restart": [float(RESTART)],
        "verify-data-plane": [3.0],
    }
    FileStore(state).store(checkpoint=earlier)


def _templates(world: World, ns: str) -> dict[str, dict[str, str]]:
    items: list[Any] = client.AppsV1Api(world.api).list_namespaced_deployment(ns).items
    return {d.metadata.name: dict(d.spec.template.metadata.annotations or {}) for d in items}


def _status(world: World, env: dict[str, str], run_id: str) -> dict[str, Any]:
    out = _upgrader(world, env, "status", run_id, "-o", "json")
    assert out.returncode == 0, out.stderr[-2000:]
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def test_a_run_pauses_between_waves_when_the_window_closes_and_resumes_in_the_next(
    clean_world: World, tmp_path: Path
) -> None:
    """Outside every window `apply` exits 3 naming the next opening and changes nothing; inside a short window the
    run pauses before a wave that does not fit what is left of it (reason, resume time, no restart of that wave),
    and `resume --wait-for-window` finishes it in the next window; every restart happened inside a window."""
    world = clean_world
    env = world.helm_env(tmp_path)
    world.install("stable-2.13.7")
    docs = _namespaces()
    world.apply(docs)
    world.wait_ready(["win-a", "win-b"])
    _seed_earlier_run(tmp_path / "state", world)
    spec = tmp_path / "windows.yaml"
    spec.write_text(
        "name: windows\nwaivers: [kubernetes-version]\n"
        "dataPlane:\n  maxConcurrentPerNamespace: 1\n"
        f"  waves:\n  - {{name: a, namespaces: [win-a], bakeTime: {BAKE}s}}\n  - {{name: b, namespaces: [win-b]}}\n"
    )
    releases = ("linkerd-crds", "linkerd-control-plane")
    history = {r: world.helm_history(r) for r in releases}

    # Outside every window: refused before anything is touched, naming when the next window opens.
    now = dt.datetime.now(dt.UTC)
    later = (now + dt.timedelta(hours=1)).replace(second=0, microsecond=0)
    closed = _upgrader(
        world, env, "apply", "--to", "stable-2.14.10", "--spec", str(spec), "--yes",
        "--window", f"{later:%H:%M}-{later + dt.timedelta(hours=1):%H:%M} UTC",
    )  # fmt: skip
    assert closed.returncode == 3, closed.stderr[-3000:]
    assert "does not start now: outside the maintenance window" in closed.stderr, closed.stderr[-3000:]
    assert f"the next window opens {later:%a %Y-%m-%d %H:%M} UTC" in closed.stderr, closed.stderr[-3000:]
    assert "--wait-for-window" in closed.stderr
    assert {r: world.helm_history(r) for r in releases} == history, "helm history unchanged"
    assert [p.name for p in (tmp_path / "state").glob("*.json")] == ["run-earlier-window-test.json"], "no run recorded"
    assert all(RESTARTED_BY not in a for ns in ("win-a", "win-b") for a in _templates(world, ns).values())

    # Window 1 from a little before now for WINDOW_1 seconds, window 2 GAP seconds after it, for 10 minutes.
    launched = dt.datetime.now(dt.UTC)
    second = launched.replace(microsecond=0)
    w1 = (second - dt.timedelta(seconds=2), second + dt.timedelta(seconds=WINDOW_1))
    w2 = (w1[1] + dt.timedelta(seconds=GAP), w1[1] + dt.timedelta(seconds=GAP + 600))
    windows = [f"{_clock(s)}-{_clock(e)} UTC margin={MARGIN}s" for s, e in (w1, w2)]
    started = time.monotonic()
    out = _upgrader(
        world, env, "apply", "--to", "stable-2.14.10", "--spec", str(spec), "--yes",
        "--window", windows[0], "--window", windows[1],
    )  # fmt: skip
    applied = time.monotonic() - started
    assert out.returncode == 5, out.stderr[-4000:]  # paused by the window: resume later
    events = _events(out)
    gates = [e for e in events if e["event"] == "window-gate"]
    print(f"\nwindow gates of apply: {[(e['timestamp'][11:22], e['step'], e['estimate'], e['fits']) for e in gates]}")
    run_id = re.search(r"run (run-[a-z0-9-]+): Paused", out.stdout)
    assert run_id is not None, (launched, windows, out.stdout)
    # estimates from the earlier run's record; wave a: one round and its bake; wave b: three rounds
    assert [(e["step"], e["estimate"], e["fits"]) for e in gates] == [
        ("preflight", 3, True),
        ("linkerd-crds", 3, True),
        ("linkerd-control-plane", 8, True),
        ("verify-control-plane", 3, True),
        ("wave a", RESTART + BAKE, True),
        ("wave b", 3 * RESTART, False),
    ]
    waves = [e for e in events if e["event"] == "wave"]
    assert [w["wave"] for w in waves] == ["a"], "wave a ran, wave b never started"
    pause = next(e for e in events if e["event"] == "window-pause")
    print(
        f"\nwindow 1 {windows[0]}, window 2 {windows[1]}; apply launched {launched:%H:%M:%S.%f}, wave a started "
        f"{(_at(waves[0]) - launched).total_seconds():.1f}s after it, paused "
        f"{(_at(pause) - launched).total_seconds():.1f}s after it ({(w1[1] - _at(pause)).total_seconds():.1f}s "
        f"before window 1 closed); apply took {applied:.1f}s"
    )
    reason = (
        rf"window closes at {_clock(w1[1])} UTC; the next step \(wave b\) needs about {3 * RESTART} s "
        rf"plus the {MARGIN} s margin; the next window opens {w2[0]:%a %Y-%m-%d} {_clock(w2[0])} UTC"
    )
    assert re.search(reason, pause["reason"]), pause["reason"]
    assert f"paused: {pause['reason']}" in out.stdout
    assert f"next: upgrader resume {run_id[1]} --wait-for-window" in out.stdout

    status = _status(world, env, run_id[1])
    print(f"recorded step durations (s) on this machine: {status['durations']}")
    assert (status["state"], status["stopped_in"]) == ("Paused", "RestartingDataPlane")
    assert dt.datetime.fromisoformat(status["resume_after"]) == w2[0]
    assert re.search(reason, status["events"][-1]["reason"]), status["events"][-1]
    assert status["next_command"] == f"upgrader resume {run_id[1]} --wait-for-window"
    assert status["waves_done"] == ["0/0"]
    assert {r["namespace"] for r in status["restarted"]} == {"win-a"}, status["restarted"]
    assert all(RESTARTED_BY not in a for a in _templates(world, "win-b").values()), "no restart of wave b started"

    started = time.monotonic()
    resumed = _upgrader(world, env, "resume", run_id[1], "--wait-for-window")
    took = time.monotonic() - started
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"run {run_id[1]}: Done" in resumed.stdout, resumed.stdout
    assert "waiting for the maintenance window: the next window opens" in resumed.stderr
    resumed_waves = [e for e in _events(resumed) if e["event"] == "wave"]
    assert [w["wave"] for w in resumed_waves] == ["b"]
    print(
        f"resume took {took:.1f}s; wave b started {(_at(resumed_waves[0]) - w2[0]).total_seconds():.1f}s after "
        "window 2 opened"
    )
    status = _status(world, env, run_id[1])
    assert status["state"] == "Done"
    assert status["resume_after"] is None

    for ns, (start, end) in (("win-a", w1), ("win-b", w2)):
        for name, template in _templates(world, ns).items():
            restarted = dt.datetime.fromisoformat(template[RESTARTED_AT].replace("Z", "+00:00"))
            assert start <= restarted < end, f"{ns}/{name} restarted at {restarted:%H:%M:%S}, outside {start}-{end}"
            assert template[RESTARTED_BY].startswith(run_id[1]), template
