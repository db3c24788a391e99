"""The bundled catalog validates and answers what the repository cannot."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from upgrader.catalog import KubernetesRange, ValuesChanges, default_catalog, load
from upgrader.errors import InputError

CAT = default_catalog()


def test_bundled_catalog_covers_2_10_to_2_20_with_markers_from_2_15() -> None:
    """Every major from 2.10 to 2.20 is present; edge markers exist from 2.15 on."""
    assert [m.major for m in CAT.majors] == list(range(10, 21))
    assert sorted(CAT.edge_markers()) == list(range(15, 21))
    info = CAT.major(12)
    assert info is not None
    assert [n.id for n in info.notes if n.blocking] == ["chart-split-2.12"]


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

    def changes(major: int) -> ValuesChanges:
        info = CAT.major(major)
        assert info is not None
        return info.values

    assert changes(12).removed == ["namespace", "installNamespace"]
    assert changes(12).renamed == {"policyController.defaultAllowPolicy": "proxy.defaultInboundPolicy"}
    assert changes(16).removed == ["proxyInit.resources"]
    # 2.19: controlPlaneTracing -> controller.tracing.enabled is the one rename; the namespace key has no
    # counterpart (2.19 takes a collector endpoint) and there never was a proxy.trace value.
    assert changes(19).renamed == {"controlPlaneTracing": "controller.tracing.enabled"}
    assert changes(19).removed == [
        "policyController.image",
        "controlPlaneTracingNamespace",
        "networkValidator.enableSecurityContext",
    ]
    assert changes(17).removed == changes(18).removed == []
    assert changes(20).removed == ["proxyInit.image"]


@pytest.mark.parametrize(
    ("chart", "version", "release"),
    [
        pytest.param("linkerd-control-plane", "1.16.11", "stable-2.14.10", id="stable chart is looked up"),
        pytest.param("linkerd-crds", "1.8.0", "stable-2.14.0", id="a shared crds chart names its first release"),
        pytest.param("linkerd-control-plane", "1.18.10-edge", "edge-24.2.4", id="old edge chart is looked up"),
        pytest.param("linkerd-control-plane", "2025.4.4", "edge-25.4.4", id="calendar chart needs no lookup"),
        pytest.param("linkerd-crds", "1.9.5-edge", "edge-24.2.5", id="an edge after a marker is looked up"),
        pytest.param("linkerd-viz", "30.11.0", "stable-2.14.0", id="an extension chart is looked up"),
        pytest.param("linkerd2", "2.11.3", "stable-2.11.3", id="a linkerd2 chart before the split is looked up"),
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
    [
        ("v1.28.3", True),
        ("1.21", True),
        ("v1.29.0", False),
        ("v1.20.15", False),
        ("v1.28.3+k3s1", True),
        ("v1.28.9-eks-036c24b", True),
        ("v1.29.0-rc.1", False),
    ],
)
def test_kubernetes_range_compares_minor_versions(k8s: str, inside: bool) -> None:
    """A range holds every patch of its minor versions, whatever the build or vendor suffix."""
    assert KubernetesRange(min="1.21", max="1.28").contains(k8s) is inside


def test_a_kubernetes_version_in_no_known_form_is_an_input_error() -> None:
    """A cluster version that is not vX.Y[.Z] is refused with an example of the form."""
    with pytest.raises(InputError, match="not a Kubernetes version"):
        KubernetesRange(min="1.21", max="1.28").contains("latest")


@pytest.mark.parametrize(
    ("low", "high"),
    [pytest.param("1.29", "1.21", id="min above max"), pytest.param("one", "1.21", id="min not a version")],
)
def test_an_impossible_kubernetes_range_is_rejected(low: str, high: str) -> None:
    """A catalog range must be two versions in order."""
    with pytest.raises(ValidationError):
        KubernetesRange(min=low, max=high)


@pytest.mark.parametrize(
    ("release", "low", "high"),
    [
        pytest.param("edge-26.4.4", "1.23", "1.35", id="a release at its major's floor keeps the major's range"),
        pytest.param("edge-26.5.1", "1.31", "1.35", id="a 2.19 edge whose chart needs 1.31 narrows the range"),
        pytest.param("edge-25.2.3", "1.23", "1.31", id="2.17's floor rose to 1.23 from edge-25.2.3"),
        pytest.param("stable-2.11.0", "1.17", "1.23", id="a chart floor below the major's minimum does not widen it"),
        pytest.param("enterprise-2.16.1", "1.22", "1.29", id="a release the catalog lacks gets its major's range"),
    ],
)
def test_kubernetes_for_a_release_is_its_majors_range_raised_to_its_chart_floor(
    release: str, low: str, high: str
) -> None:
    """Each release's supported Kubernetes range honours its own chart's kubeVersion floor."""
    rng = CAT.kubernetes_for(CAT.parse(release))
    assert rng is not None
    assert (rng.min, rng.max) == (low, high)


def test_kubernetes_for_an_unknown_major_is_none() -> None:
    """Without a catalog entry for the major there is no range to offer."""
    assert CAT.kubernetes_for(CAT.parse("enterprise-2.9.1")) is None


def test_invalid_catalog_is_an_input_error(tmp_path: Path) -> None:
    """A catalog file with an unknown field is rejected with the file named."""
    bad = tmp_path / "catalog.yaml"
    bad.write_text("catalog_version: 1\nmajors: []\nreleases: []\nsurprise: true\n")
    with pytest.raises(InputError, match=r"invalid release catalog .*catalog.yaml"):
        load(bad)


MAJOR_15 = """catalog_version: 1
majors:
  - {major: 15, released: 2024-02-21, marker_edge: edge-24.2.4, kubernetes: {min: "1.22", max: "1.29"}}
"""
TABLE_HEADER = "# a comment\nrelease\tdate\tlinkerd-crds\tlinkerd-control-plane\tkube_min\n"


def test_a_catalog_reads_the_release_table_it_names(tmp_path: Path) -> None:
    """``release_table`` names a TSV beside the yaml; its rows join the inline releases."""
    (tmp_path / "releases.tsv").write_text(TABLE_HEADER + "edge-24.5.2\t2024-05-13\t2024.5.2\t2024.5.2\t1.22.0\n")
    (tmp_path / "catalog.yaml").write_text(
        MAJOR_15
        + "release_table: releases.tsv\n"
        + "releases:\n  - {version: edge-24.2.4, charts: {linkerd-control-plane: 1.18.10-edge}}\n"
    )
    catalog = load(tmp_path / "catalog.yaml")
    assert [(r.version, r.charts, r.kube_min) for r in catalog.releases] == [
        ("edge-24.2.4", {"linkerd-control-plane": "1.18.10-edge"}, None),
        ("edge-24.5.2", {"linkerd-crds": "2024.5.2", "linkerd-control-plane": "2024.5.2"}, "1.22.0"),
    ]
    assert str(catalog.releases[1].date) == "2024-05-13"


@pytest.mark.parametrize(
    ("table", "rows", "error"),
    [
        pytest.param("releases.tsv", None, "No such file", id="a missing table"),
        pytest.param("../releases.tsv", "", "must name a file beside the catalog", id="a table outside the folder"),
        pytest.param(
            "releases.tsv",
            "edge-24.5.2\t2024-05-13\t2024.5.2\n",
            "row of 'edge-24.5.2' has 3 cells, not 5",
            id="a short row",
        ),
        pytest.param(
            "releases.tsv",
            "edge-24.5.2\t2024-05-13\t2024.5.2\tlatest\t1.22.0\n",
            "not a Linkerd chart version",
            id="a chart version in no known form",
        ),
        pytest.param(
            "releases.tsv",
            "edge-24.5.2\t2024-05-13\t2024.5.2\t2024.5.2\t1.22.0\n" * 2,
            "edge-24.5.2 is listed twice",
            id="a release listed twice",
        ),
        pytest.param(
            "releases.tsv",
            "edge-24.2.3\t2024-02-16\t1.9.3-edge\t1.18.9-edge\t1.22.0\n",
            "cannot tell which Linkerd major edge-24.2.3 belongs to",
            id="an edge older than every marker",
        ),
        pytest.param(
            "releases.tsv",
            "stable-2.14.10\t2024-02-20\t1.8.0\t1.16.11\t1.21.0\n",
            "unknown major 2.14",
            id="a release of a major the catalog lacks",
        ),
        pytest.param(
            "releases.tsv",
            "edge-24.5.2\t2024-05-13\t2024.5.2\t2024.5.2\t1.30.0\n",
            "edge-24.5.2 needs Kubernetes 1.30.0, above 2.15's maximum",
            id="a release whose Kubernetes floor is above its major's maximum",
        ),
    ],
)
def test_a_broken_release_table_is_an_input_error_naming_it(
    tmp_path: Path, table: str, rows: str | None, error: str
) -> None:
    """Whatever is wrong with the release table, loading says so and names the table."""
    if rows is not None:
        (tmp_path / "releases.tsv").write_text(TABLE_HEADER + rows)
    (tmp_path / "catalog.yaml").write_text(MAJOR_15 + f"release_table: {table!r}\n")
    with pytest.raises(InputError, match=r"invalid release catalog .*catalog.yaml \(release_table") as info:
        load(tmp_path / "catalog.yaml")
    assert error in str(info.value)
