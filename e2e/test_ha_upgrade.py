"""An HA upgrade ends where a fresh HA install of the target ends: the target chart's values-ha.yaml applies.

Linkerd installs HA with ``-f values-ha.yaml`` from inside the chart, so the release's user
values hold that file's settings. values-ha.yaml changes between majors (2.14 adds
``highAvailability: true`` and ``policyControllerResources``); the upgrade must bring the
target chart's file, as Linkerd's own procedure does, not carry the old one's.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from e2e.fixtures.releases import release
from e2e.fixtures.world import World
from e2e.harness.leaks import run_upgrader
from upgrader.spec import deep_merge

TARGET = "stable-2.14.10"


def _flat(values: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf value, so a difference names its key."""
    if isinstance(values, dict) and values:
        out: dict[str, Any] = {}
        for key, value in values.items():
            out |= _flat(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    return {prefix: values}


def _differences(got: dict[str, Any], want: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    a, b = _flat(got), _flat(want)
    keys = sorted(a.keys() | b.keys())
    return {k: (a.get(k, "<absent>"), b.get(k, "<absent>")) for k in keys if a.get(k, b) != b.get(k, a)}


def _rendered_config(world: World, chart_version: str, values: dict[str, Any]) -> dict[str, Any]:
    """linkerd-config's values as a fresh install of the chart with ``values`` would write them."""
    out = world.render("linkerd-control-plane", chart_version, "linkerd", values, "linkerd-control-plane")
    docs = [d for d in yaml.safe_load_all(out) if d]
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "linkerd-config")
    loaded: dict[str, Any] = yaml.safe_load(config["data"]["values"])
    return loaded


def test_ha_upgrade_matches_a_fresh_ha_install_of_the_target(clean_world: World, tmp_path: Path) -> None:
    """HA stable-2.13.7 (installed as Linkerd documents it) -> stable-2.14.10 ends Done with exactly the values a
    fresh 2.14.10 HA install with the same user values has: highAvailability and policyControllerResources arrive."""
    world = clean_world
    installed = world.install("stable-2.13.7", ha=True)  # kube-system is not labelled
    old_ha = world.chart_values_file("linkerd-control-plane", installed.release.control_plane_chart, "values-ha.yaml")
    assert "highAvailability" not in old_ha, "2.13's values-ha.yaml has no highAvailability (the flag came in 2.14)"
    env = world.helm_env(tmp_path)
    spec = tmp_path / "spec.yaml"
    # Kubernetes 1.36 is newer than any fixture major supports.
    spec.write_text("name: ha\nwaivers: [kubernetes-version]\n")

    common = ("--spec", str(spec), "--kubeconfig", str(world.kubeconfig), "--helm", str(world.helm))
    _assert_discovered_ha(world, env)
    # Preflight passes as installed: kube-system is skipped by the injector's selector (by name), no waiver
    # but the environmental Kubernetes-version one.
    pre = run_upgrader("preflight", "--to", TARGET, "-o", "json", *common, env=env)
    assert pre.returncode == 0, pre.stdout[-3000:] + pre.stderr[-3000:]
    checks = {c["id"]: c for c in json.loads(pre.stdout)["checks"]}
    assert checks["ha.kube-system-exempt"]["result"] == "passed", checks["ha.kube-system-exempt"]
    assert checks["control-plane.ha-replicas"]["result"] == "passed", checks["control-plane.ha-replicas"]
    assert {c["id"] for c in checks.values() if c["waived"]} <= {"kubernetes-version"}
    dry = run_upgrader("apply", "--to", TARGET, "--dry-run", *common, env=env)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    says = f"HA: values-ha.yaml of linkerd-control-plane {release(TARGET).control_plane_chart} applied under your"
    assert says in dry.stdout, dry.stdout[-3000:]
    assert "highAvailability: null -> true" in dry.stdout, dry.stdout[-3000:]

    out = run_upgrader("--log-format", "json", "apply", "--to", TARGET, "--yes", *common, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Done" in out.stdout
    events = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    # linkerd-crds has its own values event (its Gateway API switches): the control plane's says what HA did
    values_event = next(e for e in events if e.get("event") == "values" and e.get("release") == "linkerd-control-plane")
    assert values_event["ha_values"] == "target"

    target = release(TARGET)
    fresh_user = world.control_plane_values(target, installed.identity, ha=True)  # -f values-ha.yaml -f user values
    helm = world.helm_adapter()
    assert _differences(helm.get_values("linkerd-control-plane", "linkerd"), fresh_user) == {}
    computed = helm.get_values("linkerd-control-plane", "linkerd", all_values=True)
    assert computed["highAvailability"] is True
    assert computed["policyControllerResources"] == computed["controllerResources"]
    assert computed["linkerdVersion"] == TARGET
    chart = world.chart_file("linkerd-control-plane", target.control_plane_chart)
    defaults = yaml.safe_load(
        subprocess.run(
            [str(world.helm), "show", "values", str(chart)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    )
    # helm merges user values over the chart defaults map by map (no nulls are involved here)
    assert _differences(computed, deep_merge(defaults, fresh_user)) == {}

    live = client.CoreV1Api(world.api).read_namespaced_config_map("linkerd-config", "linkerd")
    live_values = yaml.safe_load(live.data["values"])
    assert _differences(live_values, _rendered_config(world, target.control_plane_chart, fresh_user)) == {}

    files = sorted((tmp_path / "state").glob("*.json"))
    assert len(files) == 1, files
    checkpoint = json.loads(files[0].read_text())
    assert checkpoint["state"] == "Done"
    diffs = [row for rows in checkpoint["values_diffs"].values() for row in rows]
    assert {"key": "highAvailability", "old": None, "new": True} in diffs
    _assert_discovered_ha(world, env, flag=True)


def _assert_discovered_ha(world: World, env: dict[str, str], *, flag: bool = False) -> None:
    """``discover`` reports the installation HA: on 2.13 from replicas and PDBs, on 2.14 from the flag too."""
    where = ("--kubeconfig", str(world.kubeconfig), "--helm", str(world.helm))
    out = run_upgrader("discover", "-o", "json", *where, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    found = json.loads(out.stdout)["control_plane"]
    assert found["high_availability"] is True, found
    evidence = " ".join(found["high_availability_evidence"])
    assert ("highAvailability" in evidence) is flag, evidence
