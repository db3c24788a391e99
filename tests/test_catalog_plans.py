"""Offline plans reach every release the catalog knows, with that release's chart versions."""

from __future__ import annotations

import pytest

from upgrader.catalog import default_catalog
from upgrader.planning import EXTENSIONS, Observed, Plan, build_offering, make_plan
from upgrader.spec import Spec
from upgrader.versions import Version

CAT = default_catalog()
OFFLINE, OFFLINE_NOTES = build_offering(CAT, None)
BLOCKING = frozenset(n.id for m in CAT.majors for n in m.notes if n.blocking)


def offline_plan(current: str, target: str) -> Plan:
    """An offline plan on the oldest Kubernetes the target supports, every blocking note acknowledged."""
    rng = CAT.kubernetes_for(CAT.parse(target))
    assert rng is not None
    observed = Observed(control_plane=CAT.parse(current), kubernetes=f"v{rng.min}.0")
    return make_plan(observed, CAT.parse(target), OFFLINE, CAT, Spec(), acks=BLOCKING, offering_notes=OFFLINE_NOTES)


def charts_of(release: str) -> dict[str, str]:
    """The release's charts a hop touches when no extension is installed (offline plans know of none)."""
    found = CAT.release(CAT.parse(release))
    assert found is not None
    return {c: v for c, v in found.charts.items() if c not in EXTENSIONS}


def test_the_offline_offering_is_the_whole_catalog() -> None:
    """Offline, every catalog release can be installed, with its catalog charts."""
    assert {v: dict(c) for v, c in OFFLINE.items()} == {v: dict(r.charts) for v, r in CAT.releases_by_version().items()}


@pytest.mark.parametrize(
    ("current", "target", "major", "kind"),
    [
        pytest.param("stable-2.14.10", "edge-24.5.2", "2.15", "upgrade", id="into 2.15 at an edge between two markers"),
        pytest.param("edge-24.8.2", "edge-24.10.3", "2.16", "upgrade", id="from a marker to an edge before the next"),
        pytest.param("edge-25.9.4", "edge-25.5.1", "2.18", "rollback", id="back to an older edge of the same major"),
        pytest.param("stable-2.14.10", "stable-2.14.3", "2.14", "rollback", id="a patch downgrade within 2.14"),
        pytest.param("stable-2.13.7", "stable-2.13.2", "2.13", "rollback", id="a patch downgrade within 2.13"),
        pytest.param(
            "stable-2.11.5", "stable-2.11.1", "2.11", "rollback", id="a patch downgrade of the linkerd2 chart"
        ),
    ],
)
def test_an_offline_plan_reaches_any_real_release(current: str, target: str, major: str, kind: str) -> None:
    """One hop straight to the target, with the target's own chart versions."""
    plan = offline_plan(current, target)
    assert plan.refused is None
    assert [(h.from_, h.to, h.major, h.kind) for h in plan.hops] == [(current, target, major, kind)]
    assert plan.hops[0].charts == charts_of(target)


def test_a_patch_downgrade_rolls_the_control_plane_back_and_keeps_the_shared_crds() -> None:
    """stable-2.14.10 -> stable-2.14.3: control plane 1.16.11 -> 1.16.4; crds 1.8.0 stays."""
    steps = offline_plan("stable-2.14.10", "stable-2.14.3").hops[0].steps
    assert [(s.action, s.name, s.chart_version) for s in steps[1:3]] == [
        ("keep-release", "linkerd-crds", None),
        ("upgrade-release", "linkerd-control-plane", "1.16.4"),
    ]


def test_crossing_majors_offline_goes_through_the_newest_edge_of_each_major_between() -> None:
    """stable-2.14.10 -> edge-24.10.3 stops at edge-24.8.1, the last 2.15 edge before 2.16's marker."""
    plan = offline_plan("stable-2.14.10", "edge-24.10.3")
    assert [(h.to, h.major) for h in plan.hops] == [("edge-24.8.1", "2.15"), ("edge-24.10.3", "2.16")]
    assert plan.hops[0].charts == {"linkerd-crds": "2024.8.1", "linkerd-control-plane": "2024.8.1"}


def _previous(version: Version) -> Version:
    ordered = sorted(CAT.releases_by_version(), key=lambda v: v.sort_key)
    return ordered[ordered.index(version) - 1]


PLANNABLE = sorted(CAT.releases_by_version(), key=lambda v: v.sort_key)[1:]


@pytest.mark.parametrize("target", PLANNABLE, ids=[str(v) for v in PLANNABLE])
def test_every_catalog_release_is_an_offline_target_from_the_release_before_it(target: Version) -> None:
    """From the release before it (same major or the one below), each release plans as one hop with its charts."""
    plan = offline_plan(str(_previous(target)), str(target))
    assert plan.refused is None, plan.refused
    assert [h.to for h in plan.hops] == [str(target)]
    assert plan.hops[0].charts == charts_of(str(target))
