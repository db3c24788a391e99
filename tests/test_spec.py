"""Plan specs: the examples in plans/ validate and plan offline; bad specs are clear input errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from upgrader.catalog import default_catalog
from upgrader.errors import InputError
from upgrader.planning import Observed, build_offering, make_plan
from upgrader.spec import load_spec, parse_duration

PLANS = sorted((Path(__file__).parent.parent / "plans").glob("*.yaml"))
CAT = default_catalog()


def test_there_is_an_example_for_each_use() -> None:
    """plans/ has a maintenance-window, a dry-run review and a staged-rollout example."""
    assert {p.stem for p in PLANS} >= {"maintenance-window", "dry-run-review", "staged-rollout"}


@pytest.mark.parametrize("path", PLANS, ids=[p.stem for p in PLANS])
def test_example_specs_validate_and_plan_offline(path: Path) -> None:
    """Each example loads and plans stable-2.13.7 -> edge-24.8.2 offline in three hops."""
    spec = load_spec(path)
    offering, notes = build_offering(CAT, None)
    dp = {"shop": {"stable-2.13.7": 4}, "payments": {"stable-2.13.7": 2}}  # legacy is unmeshed
    plan = make_plan(
        Observed(CAT.parse("stable-2.13.7"), dp, "v1.22.1"),
        CAT.parse("edge-24.8.2"),
        offering,
        CAT,
        spec,
        offering_notes=notes,
    )
    assert plan.refused is None, plan.refused
    assert [h.to for h in plan.hops] == ["stable-2.14.10", "edge-24.8.1", "edge-24.8.2"]
    assert plan.spec == spec.name
    restarted = {ns for w in plan.hops[0].waves for ns in w.namespaces}
    assert restarted == {"shop", "payments"}
    assert not [w for w in plan.warnings if "metricsWindow" in w], "every gated wave bakes for the metrics window"


def test_staged_rollout_refuses_to_leave_a_meshed_excluded_namespace_two_majors_behind() -> None:
    """If legacy were meshed, excluding it across three majors would strand its proxies: refused."""
    spec = load_spec(next(p for p in PLANS if p.stem == "staged-rollout"))
    offering, _ = build_offering(CAT, None)
    dp = {"shop": {"stable-2.13.7": 4}, "legacy": {"stable-2.13.7": 1}}
    plan = make_plan(Observed(CAT.parse("stable-2.13.7"), dp, "v1.22.1"), CAT.parse("edge-24.8.2"), offering, CAT, spec)
    assert plan.refused is not None
    assert plan.refused.code == "data-plane-skew"
    assert "no wave restarts legacy" in plan.refused.reason


def test_staged_rollout_orders_canary_then_critical_then_rest() -> None:
    """The staged example restarts shop, then payments, then the rest, and never legacy."""
    spec = load_spec(next(p for p in PLANS if p.stem == "staged-rollout"))
    offering, _ = build_offering(CAT, None)
    dp = {ns: {"stable-2.14.10": 1} for ns in ("shop", "payments", "edge", "legacy")}
    plan = make_plan(
        Observed(CAT.parse("stable-2.14.10"), dp, "v1.22.1"), CAT.parse("edge-24.2.4"), offering, CAT, spec
    )
    assert [(w.name, w.namespaces) for w in plan.hops[0].waves] == [
        ("canary", ["shop"]),
        ("critical", ["payments"]),
        ("rest", ["edge"]),
    ]
    assert plan.warnings == [], "every gated wave bakes for at least the metrics window"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("dataPlane:\n  maxNamespaces: 0\n", "dataPlane.maxNamespaces", id="zero concurrency"),
        pytest.param("onFailure: explode\n", "onFailure", id="unknown failure policy"),
        pytest.param("window:\n  start: '25:00'\n  end: '05:00'\n", "window.start", id="a window at 25:00"),
        pytest.param(
            "window:\n  start: '02:00'\n  end: '02:00'\n", "the window is empty", id="an empty window (start = end)"
        ),
        pytest.param(
            "window: {start: '01:00', end: '02:00'}\nwindows: [{start: '03:00', end: '04:00'}]\n",
            "give either window",
            id="window and windows together",
        ),
        pytest.param("window: {start: '01:00', end: '01:05', margin: 5m}\n", "leaves no time", id="margin eats it"),
        pytest.param("window: {days: [thu-thu], start: '01:00', end: '02:00'}\n", "range of one day", id="thu-thu"),
        pytest.param("dataPlane:\n  waves:\n    - name: empty\n", "names no namespaces", id="wave with no target"),
        pytest.param("gates:\n  rolloutTimeout: soon\n", "not a duration", id="bad duration"),
        pytest.param("surprise: 1\n", "surprise", id="unknown key"),
        pytest.param("values: [unclosed\n", "not valid YAML", id="broken yaml"),
        pytest.param("values:\n  haValues: old\n", "values.haValues", id="unknown haValues choice"),
    ],
)
def test_bad_specs_are_input_errors_naming_the_field(tmp_path: Path, text: str, message: str) -> None:
    """A spec problem is an InputError that names the file and the field."""
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as info:
        load_spec(path)
    assert str(path) in info.value.message


@pytest.mark.parametrize(("text", "seconds"), [("0s", 0), ("90s", 90), ("5m", 300), ("1h30m", 5400)])
def test_durations(text: str, seconds: int) -> None:
    """Durations read like Kubernetes ones."""
    assert parse_duration(text) == seconds


def test_values_file_is_merged_under_the_specs_own_overrides(tmp_path: Path) -> None:
    """values.file (relative to the spec) is read; the spec's overrides win over it."""
    (tmp_path / "values.yaml").write_text("controllerReplicas: 3\nproxy:\n  logLevel: debug\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("values:\n  file: values.yaml\n  overrides:\n    proxy:\n      logLevel: warn\n")
    loaded = load_spec(spec)
    assert loaded.values.overrides == {"controllerReplicas": 3, "proxy": {"logLevel": "warn"}}


def test_a_missing_values_file_is_bad_input(tmp_path: Path) -> None:
    """A values.file that cannot be read names the file."""
    spec = tmp_path / "spec.yaml"
    spec.write_text("values:\n  file: nope.yaml\n")
    with pytest.raises(InputError, match=r"values\.file .*nope\.yaml does not exist"):
        load_spec(spec)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("name: x\n", "target", id="HA upgrades take the target chart's values-ha.yaml by default"),
        pytest.param("values:\n  haValues: keep\n", "keep", id="haValues keep is read from camelCase"),
        pytest.param("values:\n  haValues: target\n", "target", id="haValues target is read from camelCase"),
    ],
)
def test_ha_values_choice(tmp_path: Path, text: str, expected: str) -> None:
    """values.haValues is target unless the spec says keep."""
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    assert load_spec(path).values.ha_values == expected
