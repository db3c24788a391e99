"""The bundled catalog validates and answers what the repository cannot."""

from __future__ import annotations

from pathlib import Path

import pytest

from upgrader.catalog import KubernetesRange, default_catalog, load
from upgrader.errors import InputError

CAT = default_catalog()


def test_bundled_catalog_covers_2_10_to_2_20_with_markers_from_2_15() -> None:
    """Every major from 2.10 to 2.20 is present; edge markers exist from 2.15 on."""
    assert [m.major for m in CAT.majors] == list(range(10, 21))
    assert sorted(CAT.edge_markers()) == list(range(15, 21))
    assert CAT.major(12) is not None
    assert [n.id for n in CAT.major(12).notes if n.blocking] == ["chart-split-2.12"]


# The facts table (shared/reference/linkerd-facts.md, section 1), pinned.
FACTS = [
    (10, None, "stable-2.10.2", "1.16", "1.23"),
    (11, None, "stable-2.11.5", "1.17", "1.23"),
    (12, None, "stable-2.12.6", "1.21", "1.24"),
    (13, None, "stable-2.13.7", "1.21", "1.28"),
    (14, None, "stable-2.14.10", "1.21", "1.28"),
    (15, "edge-24.2.4", None, "1.22", "1.29"),
    (16, "edge-24.8.2", None, "1.22", "1.29"),
    (17, "edge-24.11.8", None, "1.22", "1.31"),
    (18, "edge-25.4.4", None, "1.23", "1.32"),
    (19, "edge-25.10.7", None, "1.23", "1.35"),
    (20, "edge-26.6.3", None, "1.31", "1.35"),
]


@pytest.mark.parametrize(
    ("major", "marker", "last_stable", "k8s_min", "k8s_max"), FACTS, ids=[f"2.{f[0]}" for f in FACTS]
)
def test_catalog_matches_the_facts_table(
    major: int, marker: str | None, last_stable: str | None, k8s_min: str, k8s_max: str
) -> None:
    """Marker edge, last stable and Kubernetes range of every major are the documented ones."""
    info = CAT.major(major)
    assert info is not None
    assert (info.marker_edge, info.last_stable, info.kubernetes.min, info.kubernetes.max) == (
        marker,
        last_stable,
        k8s_min,
        k8s_max,
    )


@pytest.mark.parametrize(
    ("release", "crds", "control_plane"),
    [
        ("stable-2.12.6", "1.4.0", "1.9.8"),
        ("stable-2.14.10", "1.8.0", "1.16.11"),
        ("edge-24.2.4", "1.9.4-edge", "1.18.10-edge"),
        ("edge-24.8.2", "2024.8.2", "2024.8.2"),
    ],
)
def test_catalog_chart_versions_match_the_facts(release: str, crds: str, control_plane: str) -> None:
    """Chart versions are numbered as the real charts are."""
    charts = {r.version: r.charts for r in CAT.releases}[release]
    assert (charts["linkerd-crds"], charts["linkerd-control-plane"]) == (crds, control_plane)


def test_catalog_values_changes_match_the_facts() -> None:
    """Removed and renamed keys per major, as listed in the facts (section 3)."""

    def changes(major: int) -> object:
        info = CAT.major(major)
        assert info is not None
        return info.values

    assert changes(12).removed == ["namespace", "installNamespace"]
    assert changes(12).renamed == {"policyController.defaultAllowPolicy": "proxy.defaultInboundPolicy"}
    assert changes(16).removed == ["proxyInit.resources"]
    assert "controlPlaneTracing" in changes(19).renamed
    assert "proxy.trace" in changes(19).renamed
    assert changes(19).removed == ["policyController.image"]
    assert changes(20).removed == ["proxyInit.image"]


@pytest.mark.parametrize(
    ("chart", "version", "release"),
    [
        pytest.param("linkerd-control-plane", "1.16.11", "stable-2.14.10", id="stable chart is looked up"),
        pytest.param("linkerd-crds", "1.8.0", "stable-2.14.0", id="a shared crds chart names its first release"),
        pytest.param("linkerd-control-plane", "1.18.10-edge", "edge-24.2.4", id="old edge chart is looked up"),
        pytest.param("linkerd-control-plane", "2025.4.4", "edge-25.4.4", id="calendar chart needs no lookup"),
    ],
)
def test_release_for_chart(chart: str, version: str, release: str) -> None:
    """A chart version maps back to the release that ships it."""
    assert str(CAT.release_for_chart(chart, version)) == release


def test_unknown_chart_version_has_no_release() -> None:
    """A chart version the catalog does not know maps to nothing."""
    assert CAT.release_for_chart("linkerd-control-plane", "9.9.9") is None


@pytest.mark.parametrize(
    ("k8s", "inside"),
    [("v1.28.3", True), ("1.21", True), ("v1.29.0", False), ("v1.20.15", False), ("v1.28.3+k3s1", True)],
)
def test_kubernetes_range_compares_minor_versions(k8s: str, inside: bool) -> None:
    """A range holds every patch of its minor versions, whatever the build suffix."""
    assert KubernetesRange(min="1.21", max="1.28").contains(k8s) is inside


def test_invalid_catalog_is_an_input_error(tmp_path: Path) -> None:
    """A catalog file with an unknown field is rejected with the file named."""
    bad = tmp_path / "catalog.yaml"
    bad.write_text("catalog_version: 1\nmajors: []\nreleases: []\nsurprise: true\n")
    with pytest.raises(InputError, match=r"invalid release catalog .*catalog.yaml"):
        load(bad)
