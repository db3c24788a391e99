"""Rollback rules on the fixture world: one major back per rollback, CRDs that never move back,
and a release whose last revision failed (real helm, real API)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from e2e.fixtures.world import World
from e2e.harness.leaks import run_upgrader


@pytest.fixture
def env(clean_world: World, tmp_path: Path) -> dict[str, str]:
    """An isolated helm configuration (fixture repo added as `linkerd`) and a file state store."""
    return clean_world.helm_env(tmp_path)


def _spec(tmp_path: Path, waivers: str = "kubernetes-version") -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(f"name: e2e\nwaivers: [{waivers}]\n")  # Kubernetes 1.36 is newer than any fixture major
    return path


def _helm(world: World, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(world.helm), *args, "--kubeconfig", str(world.kubeconfig)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def _history(world: World, env: dict[str, str], release: str) -> list[dict[str, Any]]:
    out = _helm(world, env, "history", release, "-n", "linkerd", "-o", "json")
    assert out.returncode == 0, out.stderr
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def _checkpoint(tmp_path: Path) -> dict[str, Any]:
    files = sorted((tmp_path / "state").glob("*.json"))
    assert len(files) == 1, files
    data: dict[str, Any] = json.loads(files[0].read_text())
    return data


def test_each_rollback_goes_one_major_back_and_a_later_apply_keeps_the_newer_crds(
    clean_world: World, env: dict[str, str], tmp_path: Path
) -> None:
    """2.13.7 -> edge-24.2.4 (two hops); rollback: 2.14.10; rollback: 2.13.7 (CRDs kept at 2.15's chart);
    then apply --to stable-2.14.10 keeps the CRDs (a keep-release step in the plan) instead of downgrading them."""
    world = clean_world
    world.install("stable-2.13.7")
    spec = _spec(tmp_path)
    out = world.upgrader(env, "apply", "--to", "edge-24.2.4", "--spec", str(spec), "--yes")
    assert out.returncode == 0, out.stderr[-3000:]
    run_id = _checkpoint(tmp_path)["run_id"]
    crds_215 = _history(world, env, "linkerd-crds")[-1]["chart"]
    assert crds_215 == "linkerd-crds-1.9.4-edge"

    refused = world.upgrader(env, "rollback", run_id)  # not a terminal, no --yes
    assert refused.returncode == 2, refused.stderr
    assert "without confirmation" in refused.stderr
    assert "linkerd/linkerd-control-plane: revision 3 (1.18.10-edge, deployed) -> revision 2 (1.16.11)" in (
        refused.stdout
    )
    assert "linkerd-crds: kept at 1.9.4-edge" in refused.stdout
    assert len(_history(world, env, "linkerd-control-plane")) == 3, "a refused rollback changes nothing"

    first = world.upgrader(env, "rollback", run_id, "--yes")
    assert first.returncode == 0, first.stderr[-3000:]
    assert _history(world, env, "linkerd-control-plane")[-1]["chart"] == "linkerd-control-plane-1.16.11"
    assert f"upgrader rollback {run_id}" in first.stdout, "the next rollback is named"
    status = run_upgrader(
        "status", run_id, "--kubeconfig", str(world.kubeconfig), "--helm", str(world.helm), env=env, timeout=60
    )
    assert "RolledBack" in status.stdout
    assert "one more hop back" in status.stdout

    second = world.upgrader(env, "rollback", run_id, "--yes")
    assert second.returncode == 0, second.stderr[-3000:]
    cp = _history(world, env, "linkerd-control-plane")
    assert cp[-1]["chart"] == "linkerd-control-plane-1.12.7"
    assert cp[-1]["description"] == "Rollback to 1"
    assert _history(world, env, "linkerd-crds")[-1]["chart"] == crds_215, "CRDs are kept by every rollback"
    third = world.upgrader(env, "rollback", run_id, "--yes")
    assert third.returncode == 3, "nothing left to roll back is a refusal"
    assert "already rolled back" in third.stderr

    plan = world.upgrader(env, "plan", "--to", "stable-2.14.10", "--spec", str(spec), "-o", "json")
    assert plan.returncode == 0, plan.stderr[-2000:]
    crds_step = json.loads(plan.stdout)["hops"][0]["steps"][1]
    assert crds_step["action"] == "keep-release", crds_step
    assert "older" in crds_step["detail"]

    crds_revisions = len(_history(world, env, "linkerd-crds"))
    (tmp_path / "state" / f"{run_id}.json").unlink()  # one run per state folder in this test
    again = world.upgrader(env, "apply", "--to", "stable-2.14.10", "--spec", str(spec), "--yes")
    assert again.returncode == 0, again.stderr[-3000:]
    assert _checkpoint(tmp_path)["state"] == "Done"
    assert len(_history(world, env, "linkerd-crds")) == crds_revisions, "linkerd-crds was not touched"
    assert _history(world, env, "linkerd-crds")[-1]["chart"] == crds_215
    assert _history(world, env, "linkerd-control-plane")[-1]["chart"] == "linkerd-control-plane-1.16.11"


def test_a_failed_last_revision_is_neither_carried_nor_rolled_back_to(
    clean_world: World, env: dict[str, str], tmp_path: Path
) -> None:
    """A helm upgrade that failed (an unschedulable nodeSelector) left pods Pending: preflight says so; apply
    carries the last deployed revision's values and succeeds; rollback returns to that deployed revision."""
    world = clean_world
    installed = world.install("stable-2.13.7")
    failed = _helm(
        world,
        env,
        "upgrade",
        "linkerd-control-plane",
        "linkerd/linkerd-control-plane",
        "--version",
        installed.release.control_plane_chart,
        "-n",
        "linkerd",
        "--reuse-values",
        "--set-json",
        'nodeSelector={"upgrader-e2e/none":"true"}',
        "--wait",
        "--timeout",
        "15s",
    )
    assert failed.returncode != 0, failed.stdout
    rows = _history(world, env, "linkerd-control-plane")
    assert [r["status"] for r in rows] == ["superseded", "failed"] or [r["status"] for r in rows] == [
        "deployed",
        "failed",
    ], rows

    checks = world.upgrader(env, "preflight", "--to", "stable-2.14.10", "--spec", str(_spec(tmp_path)), "-o", "json")
    assert checks.returncode == 4, checks.stdout[-2000:]
    by_id = {c["id"]: c for c in json.loads(checks.stdout)["checks"]}
    assert by_id["control-plane.pods-ready"]["result"] == "error"
    assert "Pending" in by_id["control-plane.pods-ready"]["message"]

    spec = _spec(tmp_path, "kubernetes-version, control-plane.pods-ready")
    dry = world.upgrader(env, "apply", "--to", "stable-2.14.10", "--spec", str(spec), "--dry-run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "revision 1, the last deployed one (revision 2 is failed" in dry.stdout

    out = world.upgrader(env, "apply", "--to", "stable-2.14.10", "--spec", str(spec), "--yes")
    assert out.returncode == 0, out.stderr[-3000:]
    values = json.loads(
        _helm(world, env, "get", "values", "linkerd-control-plane", "-n", "linkerd", "-o", "json").stdout
    )
    assert "nodeSelector" not in (values or {}), "the failed revision's values were not carried"
    assert _history(world, env, "linkerd-control-plane")[-1]["status"] == "deployed"
    run_id = _checkpoint(tmp_path)["run_id"]

    back = world.upgrader(env, "rollback", run_id, "--yes")
    assert back.returncode == 0, back.stderr[-3000:]
    assert "-> revision 1 (1.12.7)" in back.stdout, back.stdout
    last = _history(world, env, "linkerd-control-plane")[-1]
    assert (last["description"], last["status"]) == ("Rollback to 1", "deployed")
    assert _checkpoint(tmp_path)["state"] == "RolledBack"
