"""The planner never skips a major, refuses what it must, and says why."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from upgrader.catalog import default_catalog
from upgrader.planning import Observed, Plan, build_offering, make_plan
from upgrader.rendering import render
from upgrader.spec import DataPlane, Spec, Wave
from upgrader.states import RunState
from upgrader.versions import Version

CAT = default_catalog()
OFFLINE, _ = build_offering(CAT, None)
K8S_OK = "v1.22.5"  # inside every catalog range from 2.12 to 2.16


def v(text: str) -> Version:
    return CAT.parse(text)


def plan_for(
    current: str | None,
    target: str,
    *,
    data_plane: Mapping[str, Mapping[str, int]] | None = None,
    kubernetes: str | None = K8S_OK,
    spec: Spec | None = None,
    acks: frozenset[str] = frozenset(),
    offering: Mapping[Version, Mapping[str, str]] | None = None,
) -> Plan:
    observed = Observed(
        control_plane=v(current) if current else None, data_plane=data_plane or {}, kubernetes=kubernetes
    )
    return make_plan(observed, v(target), offering if offering is not None else OFFLINE, CAT, spec or Spec(), acks=acks)


def test_two_majors_ahead_is_two_hops_through_the_newest_release_between() -> None:
    """stable-2.12.6 -> stable-2.14.10 goes through stable-2.13.7 (newest 2.13) with each hop's charts."""
    plan = plan_for("stable-2.12.6", "stable-2.14.10")
    assert plan.refused is None
    assert [(h.from_, h.to, h.major) for h in plan.hops] == [
        ("stable-2.12.6", "stable-2.13.7", "2.13"),
        ("stable-2.13.7", "stable-2.14.10", "2.14"),
    ]
    assert plan.hops[0].charts == {"linkerd-crds": "1.6.1", "linkerd-control-plane": "1.12.7"}
    assert plan.hops[1].charts["linkerd-control-plane"] == "1.16.11"


def test_each_hop_is_a_full_cycle_in_state_order() -> None:
    """Every hop: preflight, CRDs, control plane, verify, data-plane waves, verify data plane."""
    plan = plan_for("stable-2.13.7", "stable-2.14.10", data_plane={"shop": {"stable-2.13.7": 3}})
    states = [s.state for s in plan.hops[0].steps]
    assert states == [
        RunState.PREFLIGHT,
        RunState.UPGRADING_CRDS,
        RunState.UPGRADING_CONTROL_PLANE,
        RunState.VERIFYING_CONTROL_PLANE,
        RunState.RESTARTING_DATA_PLANE,
        RunState.VERIFYING_DATA_PLANE,
    ]


def test_stable_to_edge_crossing_two_majors_is_two_hops() -> None:
    """stable-2.14.10 -> edge-24.8.2 (2.16) goes through the newest 2.15 release."""
    plan = plan_for("stable-2.14.10", "edge-24.8.2")
    assert [h.to for h in plan.hops] == ["edge-24.8.1", "edge-24.8.2"]


def test_within_a_major_is_one_hop() -> None:
    """stable-2.14.9 -> stable-2.14.10 is one hop with no major notes."""
    plan = plan_for("stable-2.14.9", "stable-2.14.10")
    assert [(h.to, h.kind, h.notes) for h in plan.hops] == [("stable-2.14.10", "upgrade", [])]


def test_one_major_back_is_one_rollback_hop_that_keeps_crds() -> None:
    """edge-24.8.2 -> edge-24.2.4 is a single rollback hop whose CRD step keeps the CRDs."""
    plan = plan_for("edge-24.8.2", "edge-24.2.4")
    assert [(h.to, h.kind) for h in plan.hops] == [("edge-24.2.4", "rollback")]
    assert "kept" in plan.hops[0].steps[1].detail


def test_already_at_target_plans_nothing() -> None:
    """Planning to the installed version produces an empty plan with a note."""
    plan = plan_for("stable-2.14.10", "stable-2.14.10")
    assert (plan.hops, plan.refused) == ([], None)
    assert "nothing to do" in plan.notes[-1]


@pytest.mark.parametrize(
    ("kwargs", "code", "words"),
    [
        pytest.param(
            {"current": "edge-24.8.2", "target": "stable-2.14.10"},
            "rollback-too-far",
            "only one major back",
            id="rolling back two majors is refused",
        ),
        pytest.param(
            {"current": "stable-2.13.7", "target": "stable-2.14.77"},
            "unknown-target",
            "neither the repository nor the catalog",
            id="a target nobody knows is refused",
        ),
        pytest.param(
            {"current": "stable-2.13.7", "target": "stable-2.14.10", "kubernetes": "v1.36.3"},
            "kubernetes-unsupported",
            "supports Kubernetes 1.21-1.28",
            id="a Kubernetes version outside the target's range is refused",
        ),
        pytest.param(
            {"current": "stable-2.11.5", "target": "stable-2.12.6"},
            "unacknowledged-note",
            "--ack chart-split-2.12",
            id="a blocking note that was not acknowledged is refused",
        ),
        pytest.param(
            {"current": "stable-2.14.10", "target": "edge-24.2.4", "data_plane": {"legacy": {"stable-2.12.6": 2}}},
            "data-plane-skew",
            "legacy runs stable-2.12.6",
            id="a data plane already two majors behind is refused",
        ),
        pytest.param(
            {"current": None, "target": "stable-2.14.10"},
            "unknown-current",
            "no installed Linkerd",
            id="nothing installed is refused",
        ),
        pytest.param(
            {"current": "stable-2.12.6", "target": "stable-2.14.10", "spec": Spec(path=["stable-2.12.6"])},
            "hop-too-large",
            "crosses 2 majors",
            id="a spec path that jumps two majors in one hop is refused",
        ),
    ],
)
def test_refusals(kwargs: dict[str, object], code: str, words: str) -> None:
    """Each refusal has a code, a reason naming the objects, and no hops."""
    plan = plan_for(**kwargs)  # type: ignore[arg-type]
    assert plan.refused is not None
    assert plan.refused.code == code
    assert words in plan.refused.reason
    assert plan.hops == []


def test_an_acknowledged_blocking_note_is_planned_and_shown() -> None:
    """With --ack the 2.12 chart split is planned and the note stays visible on the hop."""
    plan = plan_for("stable-2.11.5", "stable-2.12.6", acks=frozenset({"chart-split-2.12"}))
    assert plan.refused is None
    assert plan.hops[0].notes[0]["id"] == "chart-split-2.12"
    assert plan.acknowledged == ["chart-split-2.12"]


def test_waiving_the_kubernetes_check_plans_with_a_note() -> None:
    """A spec waiver for kubernetes-version turns the refusal into a visible note."""
    plan = plan_for("stable-2.13.7", "stable-2.14.10", kubernetes="v1.36.3", spec=Spec(waivers=["kubernetes-version"]))
    assert plan.refused is None
    assert any(n.startswith("waived kubernetes-version") for n in plan.notes)


def test_spec_path_entries_at_or_behind_the_current_version_are_skipped() -> None:
    """A shared spec may list releases the cluster already passed; they do not become hops."""
    plan = plan_for(
        "stable-2.13.7", "edge-24.2.4", spec=Spec(path=["stable-2.12.6", "stable-2.13.7", "stable-2.14.10"])
    )
    assert [h.to for h in plan.hops] == ["stable-2.14.10", "edge-24.2.4"]


def test_a_data_plane_a_major_behind_catches_up_before_the_control_plane_moves() -> None:
    """Proxies on 2.13 under a 2.14 control plane are restarted on 2.14 first, then the 2.15 hop runs."""
    plan = plan_for(
        "stable-2.14.10", "edge-24.2.4", data_plane={"shop": {"stable-2.13.7": 2}, "api": {"stable-2.14.10": 1}}
    )
    assert [(h.kind, h.from_, h.to) for h in plan.hops] == [
        ("data-plane", "stable-2.14.10", "stable-2.14.10"),
        ("upgrade", "stable-2.14.10", "edge-24.2.4"),
    ]
    assert plan.hops[0].waves[0].namespaces == ["shop"]
    assert plan.hops[0].charts == {}


def test_at_target_with_a_lagging_data_plane_plans_the_catch_up() -> None:
    """Already at the target but proxies lag: the plan restarts them instead of saying nothing to do."""
    plan = plan_for("stable-2.14.10", "stable-2.14.10", data_plane={"shop": {"stable-2.13.7": 2}})
    assert [h.kind for h in plan.hops] == ["data-plane"]


def test_namespaces_no_wave_covers_are_refused_when_they_would_end_two_majors_behind() -> None:
    """A two-major plan whose waves skip a meshed namespace is refused; a one-major plan only notes it."""
    spec = Spec(data_plane=DataPlane(waves=[Wave(name="canary", namespaces=["shop"])]))
    dp = {"shop": {"stable-2.12.6": 1}, "payments": {"stable-2.12.6": 1}}
    two = plan_for("stable-2.12.6", "stable-2.14.10", data_plane=dp, spec=spec)
    assert two.refused is not None
    assert (two.refused.code, "no wave restarts payments" in two.refused.reason) == ("data-plane-skew", True)
    one = plan_for("stable-2.12.6", "stable-2.13.7", data_plane=dp, spec=spec)
    assert one.refused is None
    assert any("not restarted by any wave" in n and "payments" in n for n in one.notes)


@pytest.mark.parametrize(
    ("path", "target", "expected"),
    [
        pytest.param(
            ["stable-2.13.7", "stable-2.14.10"],
            "stable-2.13.6",
            ["stable-2.13.6"],
            id="path entries beyond the target are ignored",
        ),
        pytest.param(
            ["stable-2.13.7", "stable-2.13.6"],
            "stable-2.14.10",
            ["stable-2.13.6", "stable-2.13.7", "stable-2.14.10"],
            id="path entries are put in travel order",
        ),
        pytest.param(
            ["stable-2.13.7", "stable-2.13.7"],
            "stable-2.14.10",
            ["stable-2.13.7", "stable-2.14.10"],
            id="repeated path entries become one hop",
        ),
    ],
)
def test_spec_paths_are_cleaned(path: list[str], target: str, expected: list[str]) -> None:
    """Only path entries strictly between current and target count, once each, in the direction of travel."""
    plan = plan_for("stable-2.12.6", target, spec=Spec(path=path))
    assert plan.refused is None, plan.refused
    assert [h.to for h in plan.hops] == expected


def test_pre_2_12_hops_use_the_linkerd2_chart_and_the_2_12_hop_migrates() -> None:
    """2.10 -> 2.11 upgrades the linkerd2 chart; 2.11 -> 2.12 installs the split charts adopting the old objects."""
    plan = plan_for("stable-2.10.2", "stable-2.12.6", kubernetes="v1.21.3", acks=frozenset({"chart-split-2.12"}))
    assert plan.refused is None, plan.refused
    first, second = plan.hops
    assert [(s.name, s.chart_version) for s in first.steps if s.chart] == [("linkerd2", "2.11.5")]
    assert [s.name for s in second.steps if s.chart] == ["linkerd-crds", "linkerd-control-plane"]
    assert "adopting" in second.steps[1].detail


def test_switching_channel_inside_a_major_applies_crds() -> None:
    """enterprise-2.15.3 -> edge-24.7.5 (both 2.15) is an upgrade that applies that release's CRDs."""
    offering = {CAT.parse("edge-24.7.5"): {"linkerd-crds": "2024.7.5", "linkerd-control-plane": "2024.7.5"}}
    plan = plan_for("enterprise-2.15.3", "edge-24.7.5", offering=offering)
    assert [(h.kind, h.steps[1].detail) for h in plan.hops] == [("upgrade", "helm upgrade in linkerd")]


def test_proxies_that_cannot_be_judged_are_noted() -> None:
    """Digest-pinned or unplaceable proxy versions are listed in the plan's notes."""
    plan = plan_for("edge-24.8.2", "edge-24.11.8", data_plane={"shop": {"unknown": 1, "edge-23.8.2": 2}})
    assert any("could not be judged" in n and "shop (unknown)" in n and "edge-23.8.2" in n for n in plan.notes)


def test_offline_plans_say_kubernetes_was_not_checked() -> None:
    """Without a Kubernetes version, the plan says ranges were not checked."""
    plan = plan_for("edge-25.10.7", "edge-26.6.3", kubernetes=None)
    assert any("supported ranges were not checked" in n for n in plan.notes)


def test_spec_settings_travel_with_the_plan_and_overrides_are_redacted() -> None:
    """Gates, failure policy, dry run and (redacted) value overrides are part of the plan."""
    spec = Spec.model_validate(
        {
            "onFailure": "rollback",
            "dryRun": True,
            "values": {"overrides": {"identity": {"issuer": {"tls": {"keyPEM": "SECRET"}}}}},
        }
    )
    plan = plan_for("stable-2.13.7", "stable-2.14.10", spec=spec)
    data = plan.as_json()
    assert (data["on_failure"], data["dry_run"], data["window"]) == ("rollback", True, None)
    assert data["values_overrides"]["identity"]["issuer"]["tls"]["keyPEM"] == "<redacted>"
    assert "SECRET" not in json.dumps(data)


def test_missing_major_in_the_offering_is_refused() -> None:
    """If the repository offers no 2.13 release, 2.12 -> 2.14 cannot be planned."""
    offering = {r: c for r, c in OFFLINE.items() if r.major != 13}
    plan = plan_for("stable-2.12.6", "stable-2.14.10", offering=offering)
    assert plan.refused is not None
    assert plan.refused.code == "missing-major"


def test_waves_follow_the_spec_and_skip_control_plane_and_excluded_namespaces() -> None:
    """A canary wave first, the rest after; linkerd and excluded namespaces are never restarted."""
    spec = Spec(
        data_plane=DataPlane(
            waves=[Wave(name="canary", namespaces=["shop"], bake_time="5m"), Wave(name="rest", namespaces=["*"])],
            exclude_namespaces=["legacy"],
        )
    )
    dp = {ns: {"stable-2.13.7": 2} for ns in ("linkerd", "shop", "payments", "edge", "legacy")}
    plan = plan_for("stable-2.13.7", "stable-2.14.10", data_plane=dp, spec=spec)
    assert [(w.name, w.namespaces, w.bake_time) for w in plan.hops[0].waves] == [
        ("canary", ["shop"], "5m"),
        ("rest", ["edge", "payments"], "0s"),
    ]
    assert plan.estimated_minutes > 5


def test_repository_offering_wins_over_the_catalog() -> None:
    """Live planning uses what the repository offers; releases only the catalog knows are noted, not planned."""
    repo = {
        "linkerd-control-plane": [("1.12.7", "stable-2.13.7"), ("1.16.11", "stable-2.14.10")],
        "linkerd-crds": [("1.6.1", ""), ("1.8.0", "")],
    }
    offering, notes = build_offering(CAT, repo)
    assert set(map(str, offering)) == {"stable-2.13.7", "stable-2.14.10"}
    missing = sum(
        bool({"linkerd-control-plane", "linkerd2"} & set(r.charts)) for r in CAT.releases_by_version().values()
    )
    missing -= 2
    assert any("not offered by the repository" in n and f"and {missing - 5} older" in n for n in notes), notes
    plan = plan_for("stable-2.13.7", "stable-2.14.9", offering=offering)
    assert plan.refused is not None
    assert "the catalog knows it but the repository does not offer it" in plan.refused.reason


def test_the_newest_chart_of_a_release_is_chosen_whatever_the_listing_order() -> None:
    """Two charts with the same app version: the higher chart version wins."""
    repo = {
        "linkerd-control-plane": [("1.16.11", "stable-2.14.10"), ("1.16.12", "stable-2.14.10")],
        "linkerd-crds": [("1.8.0", "")],
    }
    offering, _ = build_offering(CAT, repo)
    assert offering[CAT.parse("stable-2.14.10")]["linkerd-control-plane"] == "1.16.12"


def test_calendar_releases_unknown_to_the_catalog_are_planned_from_the_repository() -> None:
    """A new edge release in the repo is placed by its marker and its crds chart shares its calendar version."""
    repo = {
        "linkerd-control-plane": [("2024.8.2", "edge-24.8.2"), ("2024.9.1", "edge-24.9.1")],
        "linkerd-crds": [("2024.8.2", ""), ("2024.9.1", "")],
    }
    offering, _ = build_offering(CAT, repo)
    plan = plan_for("edge-24.8.2", "edge-24.9.1", offering=offering)
    assert plan.hops[0].charts == {"linkerd-control-plane": "2024.9.1", "linkerd-crds": "2024.9.1"}


# ---- properties ----------------------------------------------------------------------------
# A synthetic offering: three releases in every major 12..20, so any pair can be planned.
SYNTH = {
    CAT.parse(f"enterprise-2.{m}.{p}"): {"linkerd-crds": f"{m}.0.0", "linkerd-control-plane": f"{m}.{p}.0"}
    for m in range(12, 21)
    for p in range(3)
}
RELEASES = sorted(SYNTH, key=lambda r: r.sort_key)


@given(st.sampled_from(RELEASES), st.sampled_from(RELEASES))
def test_plan_properties(current: Version, target: Version) -> None:
    """No hop crosses more than one major; hops move monotonically; the last ends at the target;
    hop count equals the major distance (one hop within a major or one major back); >1 back is refused."""
    assume(current != target)
    spec = Spec(waivers=["kubernetes-version"], acknowledge=["chart-split-2.12"])
    plan = make_plan(Observed(control_plane=current, kubernetes=K8S_OK), target, SYNTH, CAT, spec)
    distance = target.major - current.major
    if distance < -1:
        assert plan.refused is not None
        assert plan.refused.code == "rollback-too-far"
        return
    assert plan.refused is None, plan.refused
    stops = [current, *(CAT.parse(h.to) for h in plan.hops)]
    for a, b in itertools.pairwise(stops):
        assert abs(b.major - a.major) <= 1
        assert (b > a) if target > current else (b < a)
    assert stops[-1] == target
    assert len(plan.hops) == (max(distance, 1) if distance >= 0 else 1)
    for middle in stops[1:-1]:  # every intermediate hop lands on the newest offered release of its major
        same = [r for r in SYNTH if r.major == middle.major and r.channel == target.channel] or [
            r for r in SYNTH if r.major == middle.major
        ]
        assert middle == max(same, key=lambda r: r.sort_key)


def test_wave_selectors_and_spec_selectors_use_namespace_labels() -> None:
    """A wave's selector takes the namespaces whose labels match; include/exclude selectors filter first."""
    spec = Spec.model_validate(
        {
            "dataPlane": {
                "waves": [
                    {"name": "canary", "namespaces": ["a"]},
                    {"name": "critical", "selector": {"tier": "critical"}},
                    {"name": "rest", "namespaces": ["*"]},
                ],
                "excludeSelector": {"frozen": "yes"},
            }
        }
    )
    labels = {"a": {}, "b": {"tier": "critical"}, "c": {"tier": "critical", "frozen": "yes"}, "d": {}}
    offering, _ = build_offering(CAT, None)
    observed = Observed(
        CAT.parse("stable-2.13.7"),
        {ns: {"stable-2.13.7": 1} for ns in labels},
        "v1.28.0",
        namespace_labels=labels,
    )
    plan = make_plan(observed, CAT.parse("stable-2.14.10"), offering, CAT, spec)
    assert [(w.name, w.namespaces) for w in plan.hops[0].waves] == [
        ("canary", ["a"]),
        ("critical", ["b"]),
        ("rest", ["d"]),
    ]


def test_a_prometheus_url_loses_its_credentials_in_the_plan() -> None:
    spec = Spec.model_validate({"gates": {"prometheusUrl": "https://ops:s3cret@prom.example:9090/prometheus"}})
    offering, _ = build_offering(CAT, None)
    observed = Observed(CAT.parse("stable-2.13.7"), {"shop": {"stable-2.13.7": 1}}, "v1.28.0")
    plan = make_plan(observed, CAT.parse("stable-2.14.10"), offering, CAT, spec)
    text = json.dumps(plan.as_json())
    assert "s3cret" not in text
    assert "https://prom.example:9090/prometheus" in text


def test_the_repository_offers_linkerd2_chart_releases_before_the_split() -> None:
    """helm search repo lists the linkerd2 chart for 2.10/2.11: those releases are offered with it."""
    repo = {
        "linkerd2": [("2.10.2", "stable-2.10.2"), ("2.11.5", "stable-2.11.5"), ("2.11.4", "stable-2.11.4")],
        "linkerd-control-plane": [("1.9.8", "stable-2.12.6")],
        "linkerd-crds": [("1.4.0", "")],
    }
    offering, _ = build_offering(CAT, repo)
    assert offering[CAT.parse("stable-2.11.5")] == {"linkerd2": "2.11.5"}
    assert offering[CAT.parse("stable-2.12.6")]["linkerd-crds"] == "1.4.0"
    plan = plan_for("stable-2.10.2", "stable-2.12.6", offering=offering, acks=frozenset({"chart-split-2.12"}))
    assert plan.refused is None, plan.refused
    assert [h.kind for h in plan.hops] == ["linkerd2-upgrade", "chart-split"]


def test_a_crds_step_older_than_the_installed_crds_is_kept_with_its_reason() -> None:
    """Control plane 2.13 after a rollback, CRDs still at 2.15's chart: the 2.14 hop keeps them, the 2.15 one
    (same chart) and the 2.16 one upgrade as usual; the CRDs never move back."""
    from upgrader.planning import KeepRelease, UpgradeRelease  # noqa: PLC0415

    crds_215 = OFFLINE[v("edge-24.2.4")]["linkerd-crds"]
    observed = Observed(
        control_plane=v("stable-2.13.7"), kubernetes=K8S_OK, release_charts={"linkerd-crds": crds_215}
    )
    plan = make_plan(observed, v("edge-24.8.2"), OFFLINE, CAT, Spec())
    assert plan.refused is None
    steps = [next(s for s in h.steps if s.state == RunState.UPGRADING_CRDS) for h in plan.hops]
    assert isinstance(steps[0], KeepRelease)
    assert f"kept at {crds_215}" in steps[0].detail
    assert "older" in steps[0].detail
    assert all(isinstance(s, UpgradeRelease) for s in steps[1:])
    assert plan.as_json()["hops"][0]["steps"][1]["action"] == "keep-release", "the skip is visible in the plan"


def test_crds_at_or_behind_the_hop_chart_are_upgraded() -> None:
    """Installed CRDs older than (or equal to) the hop's chart: the usual upgrade step."""
    from upgrader.planning import UpgradeRelease, crds_would_go_back  # noqa: PLC0415

    observed = Observed(control_plane=v("stable-2.13.7"), kubernetes=K8S_OK, release_charts={"linkerd-crds": "1.6.1"})
    plan = make_plan(observed, v("stable-2.14.10"), OFFLINE, CAT, Spec())
    assert isinstance(plan.hops[0].steps[1], UpgradeRelease)
    assert crds_would_go_back("2024.8.2", "1.8.0")
    assert not crds_would_go_back("1.8.0", "1.8.0")
    assert not crds_would_go_back("1.6.1", "1.8.0")
    assert not crds_would_go_back(None, "1.8.0")


def test_the_plan_says_whether_the_installation_is_ha_and_on_what_evidence() -> None:
    """Discovery's HA verdict and evidence travel into the plan (json, table, markdown); offline it is unknown."""
    from upgrader.rendering import render  # noqa: PLC0415

    evidence = ("linkerd-destination wants 3 replica(s) with PDB linkerd-dst",)
    observed = Observed(v("stable-2.13.7"), kubernetes="v1.27.4", high_availability=True, ha_evidence=evidence)
    plan = make_plan(observed, v("stable-2.14.10"), OFFLINE, CAT, Spec(waivers=["kubernetes-version"]))
    data = plan.as_json()
    assert (data["high_availability"], data["high_availability_evidence"]) == (True, list(evidence))
    line = f"control plane installed HA: yes ({evidence[0]})"
    assert line in render(plan, "table")
    assert line in render(plan, "markdown")
    assert Plan.from_json(data).high_availability is True
    offline = make_plan(Observed(v("stable-2.13.7")), v("stable-2.14.10"), OFFLINE, CAT, Spec())
    assert offline.as_json()["high_availability"] is None
    assert "installed HA" not in render(offline, "table")


# ---- waves that match nothing, hop charts ---------------------------------------------------------
LIVE_NAMESPACES = frozenset({"default", "kube-system", "linkerd", "linkerd-viz", "shop", "payments", "idle"})


def _live_plan(
    waves: list[dict[str, object]],
    labels: Mapping[str, Mapping[str, str]] | None = None,
    gates: Mapping[str, object] | None = None,
) -> Plan:
    """A live plan 2.13 -> 2.14: shop and payments meshed, idle exists with nothing meshed (scaled to 0)."""
    spec = Spec.model_validate({"dataPlane": {"waves": waves}, "gates": gates or {}})
    observed = Observed(
        v("stable-2.13.7"),
        {ns: {"stable-2.13.7": 2} for ns in ("linkerd", "linkerd-viz", "shop", "payments")},
        K8S_OK,
        extensions=("linkerd-viz",),
        namespace_labels=labels or {ns: {} for ns in LIVE_NAMESPACES},
        namespaces=LIVE_NAMESPACES,
    )
    return make_plan(observed, v("stable-2.14.10"), OFFLINE, CAT, spec)


def test_a_wave_naming_a_namespace_the_cluster_lacks_is_refused_with_similar_names() -> None:
    """A typo such as [shpo] refuses the plan naming the wave, the namespace and the close existing ones."""
    plan = _live_plan([{"name": "canary", "namespaces": ["shpo"]}, {"name": "rest", "namespaces": ["*"]}])
    assert plan.refused is not None
    assert plan.refused.code == "wave-namespace-missing"
    assert "wave canary names namespace(s) the cluster does not have: shpo (similar: shop)" in plan.refused.reason
    assert plan.hops == []


def test_an_offline_plan_cannot_judge_wave_namespaces_and_plans() -> None:
    """Offline the cluster's namespaces are unknown: no refusal, no warning."""
    spec = Spec(data_plane=DataPlane(waves=[Wave(name="canary", namespaces=["shpo"])]))
    plan = plan_for("stable-2.13.7", "stable-2.14.10", spec=spec)
    assert plan.refused is None
    assert plan.warnings == []


def test_a_wave_with_nothing_meshed_is_a_warning_saying_why() -> None:
    """A wave naming a namespace with nothing meshed (e.g. replicas 0) plans, with a warning in every format."""
    plan = _live_plan([{"name": "canary", "namespaces": ["idle"]}, {"name": "rest", "namespaces": ["*"]}])
    assert plan.refused is None
    assert [(w.name, w.namespaces) for w in plan.hops[0].waves] == [("canary", []), ("rest", ["payments", "shop"])]
    assert plan.warnings == [
        "wave canary restarts nothing: idle has no meshed pod (nothing runs there, or its workloads are scaled to 0)"
    ]
    assert plan.as_json()["warnings"] == plan.warnings
    assert f"warning: {plan.warnings[0]}" in render(plan, "table")
    assert f"**warning**: {plan.warnings[0]}" in render(plan, "markdown")


def test_waves_emptied_by_exclusion_or_an_earlier_wave_say_so() -> None:
    """The control-plane namespace is never restarted; a namespace an earlier wave took leaves a later one empty."""
    plan = _live_plan(
        [
            {"name": "first", "namespaces": ["shop"]},
            {"name": "again", "namespaces": ["shop", "linkerd"]},
            {"name": "rest", "namespaces": ["*"]},
        ]
    )
    assert plan.refused is None
    assert plan.warnings == [
        "wave again restarts nothing: shop is restarted by an earlier wave; linkerd is excluded "
        "(control-plane or extension namespace, or dataPlane exclusions)"
    ]


def test_a_selector_wave_matching_no_namespace_is_a_warning() -> None:
    """A selector no namespace's labels satisfy warns, and so does the wave it leaves empty."""
    labels = {ns: {"tier": "web"} if ns == "shop" else {} for ns in LIVE_NAMESPACES}
    plan = _live_plan(
        [{"name": "critical", "selector": {"tier": "critical"}}, {"name": "rest", "namespaces": ["*"]}], labels
    )
    assert plan.refused is None
    assert plan.warnings[0] == "wave critical: selector tier=critical matches no namespace"
    assert plan.warnings[1].startswith("wave critical restarts nothing")
    matched = _live_plan([{"name": "web", "selector": {"tier": "web"}}, {"name": "rest", "namespaces": ["*"]}], labels)
    assert matched.warnings == []


@pytest.mark.parametrize(
    ("gates", "warned"),
    [
        pytest.param({"prometheusUrl": "http://prom:9090", "metricsWindow": "5m"}, ["canary", "rest"], id="5m window"),
        pytest.param(
            {"prometheusUrl": "http://prom:9090", "metricsWindow": "1m"}, ["rest"], id="1m window: a 1m bake is enough"
        ),
        pytest.param({"metricsWindow": "5m"}, [], id="no metric gates without a Prometheus"),
    ],
)
def test_a_gated_wave_baked_for_less_than_the_metrics_window_is_a_warning(
    gates: Mapping[str, object], warned: list[str]
) -> None:
    """With metric gates, each wave that restarts something and bakes for less than gates.metricsWindow is
    named with its bake time and the window (its "after" would read mostly pods from before the wave); an
    empty wave is not, nor a wave baked for as long as the window."""
    waves: list[dict[str, object]] = [
        {"name": "canary", "namespaces": ["shop"], "bakeTime": "1m"},
        {"name": "empty", "namespaces": ["idle"]},
        {"name": "rest", "namespaces": ["*"]},
    ]
    plan = _live_plan(waves, gates=gates)
    assert plan.refused is None
    window = str(gates["metricsWindow"])
    bakes = {"canary": "1m", "rest": "0s"}
    short = [
        f"wave {name}: bakeTime {bakes[name]} is shorter than gates.metricsWindow {window}, so its metric gate "
        f"judges mostly pods from before the wave; give it a bakeTime of at least {window} (or a shorter "
        "metricsWindow)"
        for name in warned
    ]
    assert plan.warnings[1:] == short  # after the empty wave's own warning
    assert plan.warnings[0].startswith("wave empty restarts nothing")
    assert all(f"**warning**: {w}" in render(plan, "markdown") for w in short)


def test_a_hop_lists_only_the_charts_it_touches() -> None:
    """linkerd-viz is in a hop's charts (and the markdown plan) only when it is installed."""
    without = plan_for("stable-2.13.7", "stable-2.14.10")
    assert set(without.hops[0].charts) == {"linkerd-crds", "linkerd-control-plane"}
    assert "linkerd-viz" not in render(without, "markdown")
    with_viz = _live_plan([{"name": "all", "namespaces": ["*"]}])
    assert with_viz.hops[0].charts["linkerd-viz"] == OFFLINE[v("stable-2.14.10")]["linkerd-viz"]
    assert [s.name for s in with_viz.hops[0].steps if s.name == "linkerd-viz"] == ["linkerd-viz"]
    assert "| linkerd-viz |" in render(with_viz, "markdown")
