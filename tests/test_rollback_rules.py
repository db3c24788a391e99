"""Rollback rules seen from the CLI and `status`: one hop back per rollback, confirmation, live helm revisions."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from upgrader import runs
from upgrader.catalog import default_catalog
from upgrader.checkpoints import Checkpoint, FileStore, ReleaseRevisions
from upgrader.cli.common import app
from upgrader.errors import InputError, UpgraderError
from upgrader.execution import ReleaseBack, RollbackScope
from upgrader.planning import Observed, build_offering, make_plan
from upgrader.ports import HelmRelease, HelmRevision
from upgrader.preflight.observe import gather
from upgrader.spec import Spec

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
SCOPE = RollbackScope(
    where="hop 2 (stable-2.13.7 -> stable-2.14.10), back to stable-2.13.7",
    first_hop=1,
    rolled_hops=(1,),
    mark=None,
    releases=(ReleaseBack("linkerd-control-plane", "linkerd", 3, "1.16.11", "deployed", 2, "1.12.7"),),
    crds="linkerd-crds: kept at 1.8.0 (CRDs are not rolled back unless --include-crds)",
    restarts=(),
    further="then `upgrader rollback run-1` again goes one more hop back (hop 1, to stable-2.12.6)",
)


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], Path]:
    """The rollback command with a stored run; the session, scope and execution are stand-ins."""
    store = FileStore(tmp_path)
    store.store(checkpoint=Checkpoint.new("run-1", {"to": "stable-2.14.10", "hops": []}, NOW))
    executed: list[str] = []
    monkeypatch.setattr(runs, "resume_session", lambda *_a, **_k: runs.Session(None, None, None))  # type: ignore[arg-type]
    monkeypatch.setattr(runs, "rollback_scope", lambda *_a, **_k: SCOPE)

    def execute(_session: Any, _store: Any, checkpoint: Checkpoint, action: str, **_kw: Any) -> Checkpoint:
        executed.append(action)
        return checkpoint

    monkeypatch.setattr(runs, "execute", execute)
    return executed, tmp_path


def test_rollback_shows_what_it_will_do_and_refuses_without_confirmation(cli: tuple[list[str], Path]) -> None:
    """Like apply: not on a terminal and no --yes, the rollback is refused (bad input) after showing itself."""
    executed, folder = cli
    result = CliRunner().invoke(app, ["rollback", "run-1", "--state-store", f"file:{folder}"])
    assert isinstance(result.exception, InputError)
    assert "without confirmation" in result.exception.message
    assert executed == [], "nothing was rolled back"
    assert "helm rollback linkerd/linkerd-control-plane: revision 3 (1.16.11, deployed) -> revision 2" in result.output
    assert "linkerd-crds: kept at 1.8.0" in result.output
    assert "one more hop back" in result.output


def test_rollback_with_yes_rolls_back(cli: tuple[list[str], Path]) -> None:
    executed, folder = cli
    result = CliRunner().invoke(app, ["rollback", "run-1", "--yes", "--state-store", f"file:{folder}"])
    assert result.exit_code == 0, result.output
    assert executed == ["rollback"]


def test_status_names_a_failed_revision_the_checkpoint_never_recorded() -> None:
    """The run recorded revision 7 unchanged; helm has a failed revision 8: status says so."""
    record = ReleaseRevisions(namespace="linkerd", before=7)
    history = [
        HelmRevision(7, "superseded", "linkerd-crds-2024.8.2", "", ""),
        HelmRevision(8, "failed", "linkerd-crds-1.8.0", "", ""),
    ]
    line = runs.release_line(record, history)
    assert line.startswith("revision 7 -> unchanged")
    assert "helm now: revision 8 failed (linkerd-crds-1.8.0)" in line
    assert "failed revision(s): 8" in line


def test_status_adds_nothing_when_helm_agrees_with_the_checkpoint() -> None:
    record = ReleaseRevisions(namespace="linkerd", before=1, after=[2])
    history = [HelmRevision(1, "superseded", "c-1", "", ""), HelmRevision(2, "deployed", "c-2", "", "")]
    assert runs.release_line(record, history) == "revision 1 -> [2]"
    assert runs.release_line(record, None) == "revision 1 -> [2]"


class _LiveHelm:
    """history_once answering from ``histories``, or failing with ``error``; records what it was asked."""

    def __init__(self, histories: dict[str, list[HelmRevision]], error: UpgraderError | None = None) -> None:
        self.histories, self.error = histories, error
        self.asked: list[str] = []

    def history_once(self, release: str, namespace: str, *, timeout: float) -> list[HelmRevision]:
        self.asked.append(release)
        assert timeout <= 10
        if self.error is not None:
            raise self.error
        return self.histories[release]


def _touched() -> Checkpoint:
    cp = Checkpoint.new("run-1", {"to": "stable-2.14.10", "hops": []}, NOW)
    cp.releases = {
        "linkerd-crds": ReleaseRevisions(namespace="linkerd", before=1),
        "linkerd-control-plane": ReleaseRevisions(namespace="linkerd", before=1),
    }
    return cp


def test_status_skips_the_remaining_releases_after_the_first_live_failure() -> None:
    """An unreachable cluster is asked once, not once per release (and never retried)."""
    from upgrader.errors import ClusterUnreachableError  # noqa: PLC0415

    helm = _LiveHelm({}, ClusterUnreachableError("helm history linkerd-crds -n linkerd did not answer within 10 s"))
    histories, why = runs.live_histories(_touched(), helm)
    assert histories == {}
    assert helm.asked == ["linkerd-crds"]
    assert why == "helm history linkerd-crds -n linkerd did not answer within 10 s (1 more release(s) not checked)"


@pytest.mark.parametrize(
    ("state", "latest", "checked"),
    [
        pytest.param("Failed", False, True, id="an unfinished run is checked even when a later run exists"),
        pytest.param("Done", True, True, id="the latest run is checked even when finished"),
        pytest.param("RolledBack", False, False, id="an older finished run is not checked"),
    ],
)
def test_status_checks_live_only_where_it_tells_something(state: str, latest: bool, checked: bool) -> None:
    cp = _touched()
    cp.state = state  # type: ignore[assignment]
    assert runs.checks_live(cp, latest) is checked


def test_status_json_shows_helms_live_view_of_each_release(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """-o json carries a `live` object per release (a failed revision included); null when not checked."""
    store = FileStore(tmp_path)
    store.store(checkpoint=_touched())
    helm = _LiveHelm(
        {
            "linkerd-crds": [HelmRevision(1, "deployed", "linkerd-crds-1.8.0", "", "")],
            "linkerd-control-plane": [
                HelmRevision(1, "superseded", "linkerd-control-plane-1.12.7", "", ""),
                HelmRevision(2, "failed", "linkerd-control-plane-1.16.11", "", ""),
            ],
        }
    )
    monkeypatch.setattr(runs, "helm_adapter", lambda *_a, **_k: helm)
    monkeypatch.setattr(runs, "helm_binary", lambda _h: "helm")
    result = CliRunner().invoke(app, ["status", "run-1", "-o", "json", "--state-store", f"file:{tmp_path}"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["live"]["linkerd-control-plane"] == {
        "revision": 2,
        "status": "failed",
        "chart": "linkerd-control-plane-1.16.11",
        "failed_revisions": [2],
    }
    assert data["live"]["linkerd-crds"]["status"] == "deployed"
    assert data["live_unchecked"] is None
    helm.error = UpgraderError("unreachable")
    data = json.loads(
        CliRunner().invoke(app, ["status", "run-1", "-o", "json", "--state-store", f"file:{tmp_path}"]).output
    )
    assert data["live"] == {"linkerd-crds": None, "linkerd-control-plane": None}
    assert data["live_unchecked"] == "unreachable (1 more release(s) not checked)"


class _Cluster:
    """Just enough of the preflight ports: helm lists linkerd-crds at ``crds`` and renders CRD manifests."""

    def __init__(self, crds: str) -> None:
        self.crds = crds
        self.rendered: list[tuple[str, str]] = []

    def server_version(self) -> str:
        return "v1.36.3"

    def list_releases(self) -> list[HelmRelease]:
        return [
            HelmRelease("linkerd-crds", "linkerd", 1, "deployed", "linkerd-crds", self.crds),
            HelmRelease("linkerd-control-plane", "linkerd", 1, "deployed", "linkerd-control-plane", "1.12.7"),
        ]

    def template(self, chart: str, version: str, namespace: str, values: dict[str, Any]) -> str:
        self.rendered.append((chart, version))
        return CRD_MANIFEST if chart.endswith("linkerd-crds") else ""

    def __getattr__(self, name: str) -> Any:
        def refused(*_args: object, **_kwargs: object) -> Any:
            raise UpgraderError(f"{name}: not in this fake")

        return refused


CRD_MANIFEST = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servers.policy.linkerd.io}
spec:
  versions:
  - {name: v1beta1, served: true, storage: true}
"""


@pytest.mark.parametrize(
    ("installed", "rendered"),
    [
        pytest.param("1.6.1", [("linkerd/linkerd-crds", "1.8.0")], id="a CRD step that changes the chart is rendered"),
        pytest.param("1.9.4-edge", [], id="kept CRDs (installed chart newer) render nothing"),
    ],
)
def test_preflight_renders_the_chart_of_every_crd_step_that_changes_it(
    installed: str, rendered: list[tuple[str, str]]
) -> None:
    """crds.stored-versions gets the CRDs each planned CRD step would install, for every hop."""
    cat = default_catalog()
    offering, _ = build_offering(cat, None)
    observed = Observed(
        control_plane=cat.parse("stable-2.13.7"), kubernetes="v1.27.4", release_charts={"linkerd-crds": installed}
    )
    plan = make_plan(observed, cat.parse("stable-2.14.10"), offering, cat, Spec())
    cluster = _Cluster(installed)
    snap = gather(cluster, cluster, plan)  # type: ignore[arg-type]
    assert [r for r in cluster.rendered if r[0].endswith("linkerd-crds")] == rendered
    assert sorted(snap.crd_steps) == [v for _, v in rendered]
    if rendered:
        assert snap.crd_steps["1.8.0"][0].served == ("v1beta1",)
