"""`upgrader plan` against the fixture world: live discovery plus the local chart repository."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from e2e.fixtures import mesh
from e2e.fixtures.world import World
from e2e.harness.leaks import run_upgrader


def _env(tmp: Path, world: World) -> dict[str, str]:
    """An isolated helm configuration with the fixture repository added as `linkerd`."""
    return world.helm_env(tmp)


def _plan(world: World, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_upgrader(
        "--log-format",
        "json",
        "plan",
        "--kubeconfig",
        str(world.kubeconfig),
        "--helm",
        str(world.helm),
        "-o",
        "json",
        *args,
        env=env,
        timeout=120,
    )


def test_plan_from_2_12_to_2_14_on_the_fixture_world(clean_world: World, tmp_path: Path) -> None:
    """At stable-2.12.6 with the sample mesh, plan --to stable-2.14.10 gives two hops with the repo's charts
    and lists every meshed namespace with its proxy versions."""
    world = clean_world
    world.install("stable-2.12.6")
    docs = mesh.sample_mesh()
    world.apply(docs)
    world.wait_ready(mesh.namespaces(docs))
    env = _env(tmp_path, world)
    spec = tmp_path / "spec.yaml"
    # The local cluster runs Kubernetes 1.36, newer than any fixture major supports.
    spec.write_text("name: e2e\nwaivers: [kubernetes-version]\n")

    out = _plan(world, env, "--to", "stable-2.14.10", "--spec", str(spec))
    assert out.returncode == 0, out.stderr
    plan: dict[str, Any] = json.loads(out.stdout)
    assert plan["refused"] is None
    assert plan["from"] == "stable-2.12.6"
    assert [(h["to"], h["charts"]["linkerd-crds"], h["charts"]["linkerd-control-plane"]) for h in plan["hops"]] == [
        ("stable-2.13.7", "1.6.1", "1.12.7"),
        ("stable-2.14.10", "1.8.0", "1.16.11"),
    ]
    assert not any("not added" in n for n in plan["notes"]), "versions must come from the repository"
    meshed = {ns for ns, _ in mesh.EXPECTED.meshed}
    assert meshed <= set(plan["data_plane"])
    for ns in meshed:
        assert set(plan["data_plane"][ns]) == {"stable-2.12.6"}, ns
    assert "legacy" not in plan["data_plane"], "unmeshed namespaces have no proxies"
    waves = plan["hops"][0]["waves"]
    assert sorted(ns for w in waves for ns in w["namespaces"]) == sorted(meshed), "linkerd itself is not a wave"
    events = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    assert any(e["event"] == "observed" and e["install_method"] == "helm" for e in events)

    assert all("linkerd-viz" not in h["charts"] for h in plan["hops"]), "viz is offered but not installed"
    assert plan["warnings"] == []

    refused = _plan(world, env, "--to", "stable-2.14.10")
    assert refused.returncode == 3
    assert json.loads(refused.stdout)["refused"]["code"] == "kubernetes-unsupported"

    # A wave naming a namespace the cluster lacks (a typo) is refused; one with nothing meshed is a warning.
    typo = tmp_path / "typo.yaml"
    typo.write_text(
        "name: e2e\nwaivers: [kubernetes-version]\n"
        "dataPlane:\n  waves:\n  - {name: canary, namespaces: [shpo]}\n  - {name: rest, namespaces: ['*']}\n"
    )
    out = _plan(world, env, "--to", "stable-2.14.10", "--spec", str(typo))
    assert out.returncode == 3, out.stderr
    refusal = json.loads(out.stdout)["refused"]
    assert refusal["code"] == "wave-namespace-missing"
    assert "wave canary names namespace(s) the cluster does not have: shpo (similar: shop)" in refusal["reason"]
    table = _plan(world, env, "--to", "stable-2.14.10", "--spec", str(typo), "-o", "table")
    assert table.returncode == 3
    assert "REFUSED (wave-namespace-missing)" in table.stdout
    unmeshed = tmp_path / "unmeshed.yaml"
    unmeshed.write_text(
        "name: e2e\nwaivers: [kubernetes-version]\n"
        "dataPlane:\n  waves:\n  - {name: canary, namespaces: [legacy]}\n  - {name: rest, namespaces: ['*']}\n"
    )
    out = _plan(world, env, "--to", "stable-2.14.10", "--spec", str(unmeshed))
    assert out.returncode == 0, out.stderr
    warned = json.loads(out.stdout)
    assert warned["hops"][0]["waves"][0]["namespaces"] == []
    assert warned["warnings"] == [
        "wave canary restarts nothing: legacy has no meshed pod (nothing runs there, or its workloads are scaled to 0)"
    ]
