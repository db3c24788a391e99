"""apply's other modes: --dry-run changes nothing, --plan FILE runs a reviewed plan, SIGTERM leaves a resumable
checkpoint, and helm 3 works like helm 4."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.fixtures import mesh
from e2e.fixtures.world import World
from e2e.harness.leaks import OUTPUTS, run_upgrader
from e2e.harness.waits import wait_for

SPEC = "name: e2e\nwaivers: [kubernetes-version]\n"


def _env(world: World, tmp_path: Path, helm: Path) -> dict[str, str]:
    return world.helm_env(tmp_path, helm=helm)


def _run(world: World, env: dict[str, str], helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_upgrader(*args, "--kubeconfig", str(world.kubeconfig), "--helm", str(helm), env=env, timeout=600)


def _charts(world: World) -> list[str]:
    out = subprocess.run(
        [
            str(world.helm),
            "history",
            "linkerd-control-plane",
            "-n",
            "linkerd",
            "-o",
            "json",
            "--kubeconfig",
            str(world.kubeconfig),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [r["chart"] for r in json.loads(out)]


def _spec(tmp_path: Path) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    return str(path)


def test_dry_run_changes_nothing_and_shows_what_would(clean_world: World, tmp_path: Path) -> None:
    """--dry-run runs preflight, prints the redacted values diff and server-side dry runs; no revision, no run."""
    world = clean_world
    world.install("stable-2.13.7")
    docs = mesh.sample_mesh()
    world.apply(docs)
    world.wait_ready(mesh.namespaces(docs))
    web = client.AppsV1Api(world.api).read_namespaced_deployment("web", "shop").metadata.generation
    env = _env(world, tmp_path, world.helm)
    out = _run(world, env, world.helm, "apply", "--to", "stable-2.14.10", "--spec", _spec(tmp_path), "--dry-run")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "wave all would restart 5: " in out.stdout, out.stdout
    assert "Deployment shop/web" in out.stdout
    assert client.AppsV1Api(world.api).read_namespaced_deployment("web", "shop").metadata.generation == web
    assert "values diff for linkerd-control-plane 1.16.11" in out.stdout
    assert "--dry-run=server: accepted" in out.stdout
    assert "dry run: nothing was changed" in out.stdout
    assert "PRIVATE KEY" not in out.stdout + out.stderr
    assert _charts(world) == ["linkerd-control-plane-1.12.7"]
    assert not (tmp_path / "state").exists(), "a dry run writes no checkpoint"


def test_a_reviewed_plan_file_is_applied_and_a_stale_one_refused(clean_world: World, tmp_path: Path) -> None:
    """apply --plan runs the plan written by `plan -o json`; an edited copy, or the file once the cluster moved, is
    refused."""
    world = clean_world
    world.install("stable-2.13.7")
    env = _env(world, tmp_path, world.helm)
    plan = tmp_path / "plan.json"
    made = _run(
        world,
        env,
        world.helm,
        "plan",
        "--to",
        "stable-2.14.10",
        "--spec",
        _spec(tmp_path),
        "-o",
        "json",
        "--out",
        str(plan),
    )
    assert made.returncode == 0, made.stderr[-2000:]
    edited = tmp_path / "edited.json"
    data = json.loads(plan.read_text())
    data["hops"][0]["waves"] = []  # a reviewer approved waves; someone removed them afterwards
    edited.write_text(json.dumps(data))
    refused = _run(world, env, world.helm, "apply", "--plan", str(edited), "--spec", _spec(tmp_path), "--yes")
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "does not match its digest: it was edited after it was written" in refused.stderr
    assert _charts(world) == ["linkerd-control-plane-1.12.7"], "an edited plan changes nothing"
    out = _run(world, env, world.helm, "apply", "--plan", str(plan), "--spec", _spec(tmp_path), "--yes")
    assert out.returncode == 0, out.stderr[-2000:]
    assert _charts(world)[-1] == "linkerd-control-plane-1.16.11"
    stale = _run(world, env, world.helm, "apply", "--plan", str(plan), "--spec", _spec(tmp_path), "--yes")
    assert stale.returncode == 2
    assert "no longer matches the cluster" in stale.stderr


def test_sigterm_saves_the_checkpoint_and_prints_how_to_resume(clean_world: World, tmp_path: Path) -> None:
    """SIGTERM mid-run exits with a resume hint and a checkpoint that resume completes."""
    world = clean_world
    world.install("stable-2.13.7")
    env = _env(world, tmp_path, world.helm)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "upgrader",
            "apply",
            "--to",
            "stable-2.14.10",
            "--spec",
            _spec(tmp_path),
            "--yes",
            "--kubeconfig",
            str(world.kubeconfig),
            "--helm",
            str(world.helm),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def state() -> dict[str, Any] | None:
        for path in (tmp_path / "state").glob("*.json"):
            try:
                loaded: dict[str, Any] = json.loads(path.read_text())
            except ValueError:
                return None
            return loaded
        return None

    wait_for(
        "the run to start its control-plane step",
        lambda: (s := state()) is not None and s["state"] == "UpgradingControlPlane",
        timeout=120,
        interval=0.02,
    )
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    OUTPUTS.append(("apply (SIGTERM)", stderr))
    assert proc.returncode not in (0, None)
    assert "upgrader resume run-" in stderr
    assert state() is not None
    resumed = _run(world, env, world.helm, "resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = state()
    assert final is not None
    assert final["state"] == "Done"


@pytest.mark.parametrize("component", ["helm3"])
def test_apply_with_helm_3(clean_world: World, tmp_path: Path, component: str) -> None:
    """The same one-hop apply works through helm 3."""
    from e2e.harness import binaries  # noqa: PLC0415

    helm3 = binaries.program("helm", component)
    world = clean_world
    world.install("stable-2.13.7")
    env = _env(world, tmp_path, helm3)
    out = _run(world, env, helm3, "apply", "--to", "stable-2.14.10", "--spec", _spec(tmp_path), "--yes")
    assert out.returncode == 0, out.stderr[-2000:]
    assert _charts(world) == ["linkerd-control-plane-1.12.7", "linkerd-control-plane-1.16.11"]
