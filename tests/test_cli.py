"""CLI behaviour that needs no cluster: version, bad input, exit codes."""

from __future__ import annotations

import datetime as dt
import json
import pathlib
import subprocess
import sys

import pytest

from upgrader import __version__
from upgrader.catalog import default_catalog
from upgrader.checkpoints import Checkpoint, Event, FileStore, Restarted
from upgrader.planning import Observed, build_offering, make_plan
from upgrader.spec import Spec
from upgrader.states import RunState


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "upgrader", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_version_flag() -> None:
    """--version prints the version and exits 0."""
    out = _run("--version")
    assert (out.returncode, out.stdout.strip()) == (0, f"upgrader {__version__}")


def test_unknown_option_is_bad_input_without_traceback() -> None:
    """An unknown option exits 2 with click's message."""
    out = _run("discover", "--no-such-flag")
    assert out.returncode == 2
    assert "No such option" in out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_log_level_is_bad_input() -> None:
    """--log-level must be one of the known levels."""
    out = _run("--log-level", "loud", "discover")
    assert out.returncode == 2
    assert "unknown --log-level" in out.stderr


def test_missing_helm_binary_is_bad_input() -> None:
    """A helm binary that cannot be found is named in the error, with exit 2."""
    out = _run("discover", "--helm", "/nonexistent/helm", "--kubeconfig", __file__)
    assert out.returncode == 2, out.stderr
    assert "helm binary '/nonexistent/helm' not found" in out.stderr
    assert "Traceback" not in out.stderr


def test_unreadable_kubeconfig_is_bad_input(tmp_path: pathlib.Path) -> None:
    """A file that is not a kubeconfig gives exit 2 and says which file."""
    bad = tmp_path / "kubeconfig"
    bad.write_text("not: [a kubeconfig")
    out = _run("discover", "--kubeconfig", str(bad), "--helm", sys.executable)
    assert out.returncode == 2, out.stderr
    assert f"cannot load kubeconfig {bad}" in out.stderr
    assert "Traceback" not in out.stderr


def test_offline_plan_exits_0_with_the_json_contract() -> None:
    """plan --from --offline -o json prints the stable contract: from, to, hops with charts and steps, refused."""
    out = _run("plan", "--from", "stable-2.12.6", "--offline", "--to", "stable-2.14.10", "-o", "json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert (plan["from"], plan["to"], plan["refused"]) == ("stable-2.12.6", "stable-2.14.10", None)
    assert [(h["from"], h["to"], h["major"]) for h in plan["hops"]] == [
        ("stable-2.12.6", "stable-2.13.7", "2.13"),
        ("stable-2.13.7", "stable-2.14.10", "2.14"),
    ]
    assert plan["hops"][1]["charts"]["linkerd-crds"] == "1.8.0"
    assert plan["hops"][0]["steps"][0]["state"] == "Preflight"


def test_refused_plan_exits_3_and_still_prints_the_reason() -> None:
    """Rolling back two majors is refused with exit 3; the output carries the code and reason."""
    out = _run("plan", "--from", "edge-24.8.2", "--offline", "--to", "stable-2.14.10", "-o", "json")
    assert out.returncode == 3
    assert json.loads(out.stdout)["refused"]["code"] == "rollback-too-far"


def test_unparseable_target_is_bad_input() -> None:
    """An unknown version form exits 2 naming the accepted forms, without a traceback."""
    out = _run("plan", "--from", "stable-2.12.6", "--offline", "--to", "2.14")
    assert out.returncode == 2
    assert "stable-2.X.Y" in out.stderr
    assert "Traceback" not in out.stderr


def test_from_without_offline_is_bad_input() -> None:
    """--from only makes sense offline."""
    out = _run("plan", "--from", "stable-2.12.6", "--to", "stable-2.14.10")
    assert out.returncode == 2
    assert "--from and --offline go together" in out.stderr


def test_markdown_plan_written_to_a_file(tmp_path: pathlib.Path) -> None:
    """-o markdown --out FILE writes the reviewable plan with hops, charts and the state diagram."""
    target = tmp_path / "plan.md"
    out = _run(
        "plan", "--from", "stable-2.13.7", "--offline", "--to", "edge-24.8.2", "-o", "markdown", "--out", str(target)
    )
    assert out.returncode == 0, out.stderr
    text = target.read_text()
    assert "## Hop 3: edge-24.8.1 -> edge-24.8.2 (upgrade, Linkerd 2.16" in text
    assert "| linkerd-control-plane | 2024.8.2 |" in text
    assert "proxyInit.resources" in text  # values removed in 2.16 are called out
    assert "stateDiagram-v2" in text


def test_offline_plan_checks_the_given_kubernetes_version() -> None:
    """--kubernetes lets an offline plan check supported ranges (2.14 stops at 1.28)."""
    out = _run(
        "plan",
        "--from",
        "stable-2.13.7",
        "--offline",
        "--to",
        "stable-2.14.10",
        "--kubernetes",
        "v1.30.1",
        "-o",
        "json",
    )
    assert out.returncode == 3
    assert json.loads(out.stdout)["refused"]["code"] == "kubernetes-unsupported"
    bad = _run("plan", "--from", "stable-2.13.7", "--offline", "--to", "stable-2.14.10", "--kubernetes", "soon")
    assert bad.returncode == 2
    assert "is not a Kubernetes version" in bad.stderr


def test_unwritable_out_file_is_bad_input() -> None:
    """--out into a missing folder is exit 2 with the path named, not a traceback."""
    out = _run(
        "plan", "--from", "stable-2.13.7", "--offline", "--to", "stable-2.14.10", "--out", "/nonexistent/dir/plan.json"
    )
    assert out.returncode == 2
    assert "cannot write /nonexistent/dir/plan.json" in out.stderr


def test_progress_bars_show_each_wave_with_its_counts() -> None:
    """On a terminal, apply draws one bar per wave (and one for a rollback's restarts)."""
    import io  # noqa: PLC0415

    from rich.console import Console  # noqa: PLC0415

    from upgrader.cli.common import Bars  # noqa: PLC0415

    out = io.StringIO()
    bars = Bars(Console(file=out, force_terminal=True, width=100))
    bars("wave canary", 0, 3)
    bars("wave canary", 3, 3)
    bars("wave rest", 1, 4)
    bars.close()
    text = out.getvalue()
    assert "wave canary" in text
    assert "wave rest" in text
    assert "100%" in text
    assert "25%" in text


def test_discover_prints_whole_names_to_a_narrow_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a terminal (a pipe, a CI log) and 40 columns: release names and HA evidence are printed whole."""
    from typer.testing import CliRunner  # noqa: PLC0415

    from tests.fakes import FakeHelm, FakeKube  # noqa: PLC0415
    from upgrader.cli import app, inspection  # noqa: PLC0415
    from upgrader.ports import HelmRelease  # noqa: PLC0415

    name = "linkerd-control-plane-production-eu-west-1"
    kube = FakeKube(config_maps={("linkerd", "linkerd-config"): {"values": "linkerdVersion: stable-2.14.10\n"}})
    helm = FakeHelm(
        releases=[HelmRelease(name, "linkerd", 7, "deployed", "linkerd-control-plane", "1.16.11", "stable-2.14.10")]
    )
    monkeypatch.setattr(inspection, "cluster_adapters", lambda *_a, **_k: (kube, helm))
    monkeypatch.setenv("COLUMNS", "40")
    out = CliRunner().invoke(app, ["discover"])
    assert out.exit_code == 0, out.output
    assert name in out.output
    assert "stable-2.14.10" in out.output
    assert "…" not in out.output
    assert "High availability: no (no Deployment linkerd-destination, linkerd-identity, linkerd-proxy-injector" in (
        out.output
    )


def test_status_names_the_waves_passed_per_hop(tmp_path: pathlib.Path) -> None:
    """status shows each hop's passed waves by name and count, never the internal <hop>/<wave> tags."""
    cat = default_catalog()
    spec = Spec.model_validate(
        {
            "waivers": ["kubernetes-version"],
            "dataPlane": {"waves": [{"name": "canary", "namespaces": ["shop"]}, {"name": "rest", "namespaces": ["*"]}]},
        }
    )
    observed = Observed(cat.parse("stable-2.12.6"), {"shop": {"stable-2.12.6": 1}, "edge": {"stable-2.12.6": 1}})
    plan = make_plan(observed, cat.parse("stable-2.14.10"), build_offering(cat, None)[0], cat, spec)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cp = Checkpoint.new("run-1", plan.as_json(), now).model_copy(
        update={"state": RunState.DONE, "waves_done": ["0/0", "0/1", "1/0"]}
    )
    FileStore(tmp_path).store(checkpoint=cp)
    out = _run("status", "run-1", "--state-store", f"file:{tmp_path}")
    assert out.returncode == 0, out.stderr
    assert "hop 1 (stable-2.12.6 -> stable-2.13.7): waves passed: canary, rest (2 of 2)" in out.stdout
    assert "hop 2 (stable-2.13.7 -> stable-2.14.10): waves passed: canary (1 of 2)" in out.stdout
    assert "0/0" not in out.stdout


def test_status_counts_each_restart_once_and_says_a_stopped_batch_may_be_unpatched(tmp_path: pathlib.Path) -> None:
    """Two workloads recorded twice (a stop mid-batch, then a resume) and one in the next hop: 3 restarts, not 5."""
    cat = default_catalog()
    observed = Observed(cat.parse("stable-2.12.6"), {"shop": {"stable-2.12.6": 2}})
    spec = Spec.model_validate({"waivers": ["kubernetes-version"]})
    plan = make_plan(observed, cat.parse("stable-2.14.10"), build_offering(cat, None)[0], cat, spec)
    cp = Checkpoint.new("run-1", plan.as_json(), dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    for _ in range(2):
        cp.restarted += [Restarted(kind="Deployment", namespace="shop", name=n, hop=0) for n in ("web", "api")]
    cp.restarted.append(Restarted(kind="Deployment", namespace="shop", name="web", hop=1))
    cp.state, cp.stopped_in = RunState.FAILED, RunState.RESTARTING_DATA_PLANE
    FileStore(tmp_path).store(checkpoint=cp)
    out = _run("status", "run-1", "--state-store", f"file:{tmp_path}")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "workloads restarted: 3 (a batch is recorded before its patches: resume restarts any" in text
    FileStore(tmp_path).store(checkpoint=cp.model_copy(update={"state": RunState.DONE, "stopped_in": None}))
    out = _run("status", "run-1", "--state-store", f"file:{tmp_path}")
    assert "workloads restarted: 3;" in out.stdout


def test_status_of_a_run_paused_by_a_window_says_why_and_until_when(tmp_path: pathlib.Path) -> None:
    """A window pause shows its reason and the next opening in the table, not only in -o json."""
    cat = default_catalog()
    observed = Observed(cat.parse("stable-2.13.7"), {"shop": {"stable-2.13.7": 1}})
    plan = make_plan(
        observed,
        cat.parse("stable-2.14.10"),
        build_offering(cat, None)[0],
        cat,
        Spec.model_validate({"waivers": ["kubernetes-version"]}),
    )
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    reason = "window closes at 05:00 Europe/Berlin; the next step (wave all) needs about 12 min plus the 5 min margin"
    cp = Checkpoint.new("run-1", plan.as_json(), now)
    cp.events.append(Event(at=now, state=RunState.PAUSED, reason=reason))
    cp = cp.model_copy(
        update={
            "state": RunState.PAUSED,
            "stopped_in": RunState.RESTARTING_DATA_PLANE,
            "resume_after": dt.datetime(2026, 1, 2, 0, 0, tzinfo=dt.UTC),
        }
    )
    FileStore(tmp_path).store(checkpoint=cp)
    out = _run("status", "run-1", "--state-store", f"file:{tmp_path}")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert f"paused until 2026-01-02 00:00:00 UTC: {reason}" in text
