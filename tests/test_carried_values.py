"""One rule for the values an upgrade carries: the last deployed revision's, wherever they are read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tests.fakes import FakeHelm
from upgrader.catalog import default_catalog
from upgrader.discovery import Installation, carried_note, carried_revision
from upgrader.errors import NeverDeployedError, UpgraderError
from upgrader.planning import Observed, build_offering, control_plane_step, make_plan
from upgrader.ports import DataPlaneView, HelmRelease, HelmRevision
from upgrader.preflight.observe import gather
from upgrader.rendering import render
from upgrader.runs import _with_pin_inputs
from upgrader.spec import Spec

CAT = default_catalog()
CP = "linkerd-control-plane"
NOTE = f"user values of {CP} revision 1, the last deployed one (revision 2 is failed: its values are not carried)"


def _rev(n: int, status: str, chart: str = "1.12.7") -> HelmRevision:
    return HelmRevision(n, status, f"{CP}-{chart}", "", "")


@pytest.mark.parametrize(
    ("history", "carried"),
    [
        pytest.param([_rev(1, "superseded"), _rev(2, "deployed")], 2, id="a deployed current revision is carried"),
        pytest.param([_rev(1, "superseded"), _rev(2, "failed")], 1, id="a failed revision is skipped"),
        pytest.param([_rev(1, "deployed"), _rev(2, "pending-upgrade")], 1, id="a pending revision is skipped"),
        pytest.param(
            [_rev(1, "superseded"), _rev(2, "failed"), _rev(3, "deployed")], 3, id="a rollback after a failure counts"
        ),
        pytest.param([_rev(1, "failed")], None, id="a release never deployed has nothing to carry"),
        pytest.param([], None, id="no history has nothing to carry"),
    ],
)
def test_carried_revision(history: list[HelmRevision], carried: int | None) -> None:
    """The newest revision that was deployed once (deployed or superseded), else None."""
    found = carried_revision(history)
    assert (found.revision if found else None) == carried


def test_carried_note_says_whose_values_travel_only_when_the_current_revision_did_not_deploy() -> None:
    assert carried_note(CP, [_rev(1, "superseded"), _rev(2, "failed")]) == NOTE
    assert carried_note(CP, [_rev(1, "superseded"), _rev(2, "deployed")]) is None


@dataclass
class _Cluster(FakeHelm):
    """Helm with a failed last control-plane revision, plus the kube reads gather makes (all refused)."""

    def __getattr__(self, name: str) -> Any:
        def refused(*_args: object, **_kwargs: object) -> Any:
            raise UpgraderError(f"{name}: not in this fake")

        return refused

    def server_version(self) -> str:
        return "v1.36.3"

    def template(self, chart: str, version: str, namespace: str, values: dict[str, Any]) -> str:
        return ""


def _failed_helm(*, ever_deployed: bool = True) -> _Cluster:
    helm = _Cluster(releases=[HelmRelease(CP, "linkerd", 2, "failed", CP, "1.16.11")])
    helm.values[CP, "linkerd"] = {"nodeSelector": {"none": "true"}}  # revision 2's: made it fail
    if ever_deployed:
        helm.past[CP] = [_rev(1, "superseded")]
        helm.past_values[CP, "linkerd", 1] = {"identityTrustAnchorsPEM": "A"}
    return helm


def _plan(observed: Observed | None = None) -> Any:
    offering, _ = build_offering(CAT, None)
    observed = observed or Observed(control_plane=CAT.parse("stable-2.13.7"), kubernetes="v1.27.4")
    return make_plan(observed, CAT.parse("stable-2.14.10"), offering, CAT, Spec())


def test_preflight_checks_the_last_deployed_revisions_values_not_the_failed_ones() -> None:
    """values.render and values.pins see revision 1's values: the failed revision's nodeSelector never travels."""
    snap = gather(_failed_helm(), _failed_helm(), _plan())  # type: ignore[arg-type]
    assert snap.user_values == {"identityTrustAnchorsPEM": "A"}


def test_preflight_of_a_release_never_deployed_cannot_check_its_values_and_says_what_to_do() -> None:
    snap = gather(_failed_helm(ever_deployed=False), _failed_helm(ever_deployed=False), _plan())  # type: ignore[arg-type]
    assert snap.user_values is None
    assert "never deployed" in snap.errors["values"]
    assert f"helm history {CP} -n linkerd" in snap.errors["values"]


class _Kube:
    def list_namespaces(self) -> list[Any]:
        return []

    def list_workloads(self) -> list[Any]:
        return []

    def list_pods(self, *, label_selector: str = "") -> list[Any]:
        return []


def test_the_plan_finds_pins_in_the_last_deployed_values_and_records_whose_they_are() -> None:
    """Plan time: the carried values are revision 1's, and Observed says so (for the plan's warning)."""
    inst = Installation("v1.27.4", releases=(HelmRelease(CP, "linkerd", 2, "failed", CP, "1.16.11"),))
    notes: list[str] = []
    observed = _with_pin_inputs(Observed(control_plane=None), _Kube(), _failed_helm(), inst, notes)
    assert observed.control_plane_values == {"identityTrustAnchorsPEM": "A"}
    assert observed.values_carried == NOTE
    assert notes == []


def test_a_plan_of_a_release_never_deployed_stops_with_a_hint() -> None:
    inst = Installation("v1.27.4", releases=(HelmRelease(CP, "linkerd", 2, "failed", CP, "1.16.11"),))
    with pytest.raises(NeverDeployedError, match="was never deployed") as stopped:
        _with_pin_inputs(Observed(control_plane=None), _Kube(), _failed_helm(ever_deployed=False), inst, [])
    assert stopped.value.hint is not None
    assert "repair or reinstall it with helm" in stopped.value.hint


def test_the_plan_says_which_values_are_carried_in_the_step_and_a_warning() -> None:
    """Item 9: the control-plane step's detail and a plan warning name the revision carried, in text and JSON."""
    observed = Observed(
        control_plane=CAT.parse("stable-2.13.7"),
        kubernetes="v1.27.4",
        values_carried=NOTE,
        data_plane_view=DataPlaneView((), (), (), ()),
    )
    plan = _plan(observed)
    step = control_plane_step(plan.hops[0])
    assert step is not None
    assert step.detail.endswith(f"; values carried: {NOTE}")
    assert f"hop 1 carries the {NOTE}" in plan.warnings
    assert f"hop 1 carries the {NOTE}" in plan.as_json()["warnings"]
    assert f"values carried: {NOTE}" in str(plan.as_json()["hops"][0]["steps"])
    assert NOTE in render(plan, "markdown")
    assert _plan(Observed(CAT.parse("stable-2.13.7"), kubernetes="v1.27.4")).warnings == []
