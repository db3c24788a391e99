"""The catalog knows every release of Linkerd's release table it can place, with its chart versions.

The table is the committed copy (upgrader/catalog/releases.tsv), read here with the csv
module rather than the catalog's own reader, and regenerated from Linkerd's release tags
with ``python -m upgrader.catalog.regenerate`` (not compared here: the tests must not depend
on the steering checkout's shared/ folder).
"""

from __future__ import annotations

import csv
from importlib import resources

import pytest

from upgrader.catalog import default_catalog
from upgrader.catalog.regenerate import majors_catalog, regenerate
from upgrader.errors import InputError
from upgrader.versions import Channel, Version

CAT = default_catalog()
TABLE_TEXT = resources.files("upgrader.catalog").joinpath("releases.tsv").read_text()
ROWS = list(csv.DictReader((line for line in TABLE_TEXT.splitlines() if not line.startswith("#")), delimiter="\t"))
NOT_CHARTS = {"release", "date", "kube_min"}
# Marker edges from the facts table (shared/reference/linkerd-facts.md, section 1), pinned.
MARKERS = {
    15: "edge-24.2.4",
    16: "edge-24.8.2",
    17: "edge-24.11.8",
    18: "edge-25.4.4",
    19: "edge-25.10.7",
    20: "edge-26.6.3",
}


def _charts(row: dict[str, str]) -> dict[str, str]:
    return {name: cell for name, cell in row.items() if name not in NOT_CHARTS and cell}


def _edge_numbers(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.removeprefix("edge-").split("."))


def _by_text() -> dict[str, Version]:
    return {str(v): v for v in CAT.releases_by_version()}


def test_the_release_table_has_every_stable_of_2_10_on_and_every_edge_from_the_first_marker() -> None:
    """155 rows: 35 stable releases (2.10.0 to 2.14.10) and 120 edges (edge-24.2.4 to edge-26.8.3)."""
    stables = [r["release"] for r in ROWS if r["release"].startswith("stable-")]
    edges = [r["release"] for r in ROWS if r["release"].startswith("edge-")]
    assert (len(stables), len(edges), len(ROWS)) == (35, 120, 155)
    assert (stables[0], stables[-1], edges[0], edges[-1]) == (
        "stable-2.10.0",
        "stable-2.14.10",
        "edge-24.2.4",
        "edge-26.8.3",
    )


@pytest.mark.parametrize("row", ROWS, ids=[r["release"] for r in ROWS])
def test_every_row_of_the_release_table_is_a_catalog_release_with_its_chart_versions(row: dict[str, str]) -> None:
    """The catalog knows the row's release with exactly the row's charts, date and Kubernetes floor."""
    release = CAT.release(CAT.parse(row["release"]))
    assert release is not None
    assert (release.charts, str(release.date), release.kube_min) == (_charts(row), row["date"], row["kube_min"])


def test_the_catalog_has_no_release_the_table_lacks() -> None:
    """Releases come from the table alone: nothing guessed on the side."""
    assert sorted(_by_text()) == sorted(r["release"] for r in ROWS)


@pytest.mark.parametrize(
    ("release", "chart", "version"),
    [
        pytest.param("edge-24.2.4", "linkerd-viz", "30.14.10-edge", id="edge-24.2.4 ships viz 30.14.10-edge"),
        pytest.param("stable-2.14.0", "linkerd-viz", "30.11.0", id="stable-2.14.0 ships viz 30.11.0"),
        pytest.param("stable-2.11.5", "linkerd-viz", "2.11.5", id="stable-2.11.5 ships viz 2.11.5"),
        pytest.param("stable-2.14.1", "linkerd-control-plane", "1.16.2", id="stable-2.14.1 is control plane 1.16.2"),
        pytest.param("stable-2.12.1", "linkerd-control-plane", "1.9.3", id="stable-2.12.1 is control plane 1.9.3"),
        pytest.param("stable-2.13.1", "linkerd-crds", "1.6.0", id="stable-2.13.1 still has crds 1.6.0"),
        pytest.param(
            "edge-24.2.5", "linkerd-control-plane", "1.18.11-edge", id="edge-24.2.5 is the last 1.x edge chart"
        ),
        pytest.param("edge-24.3.1", "linkerd-crds", "2024.3.1", id="edge-24.3.1 is the first calendar chart"),
    ],
)
def test_chart_versions_are_the_published_ones(release: str, chart: str, version: str) -> None:
    """Values once guessed (viz 30.17.4-edge for edge-24.2.4) are now the ones Linkerd's tags hold."""
    found = CAT.release(CAT.parse(release))
    assert found is not None
    assert found.charts[chart] == version


@pytest.mark.parametrize("version", list(_by_text().values()), ids=list(_by_text()))
def test_every_release_has_the_core_charts_of_its_era(version: Version) -> None:
    """linkerd2 before 2.12; linkerd-crds and linkerd-control-plane from 2.12; calendar charts from edge-24.3.1."""
    release = CAT.release(version)
    assert release is not None
    core = {c for c in release.charts if c != "linkerd-viz"}
    assert core == ({"linkerd2"} if version.major < 12 else {"linkerd-crds", "linkerd-control-plane"})
    if version.channel is Channel.EDGE and version.numbers >= (24, 3, 1):
        yy, month, n = version.numbers
        assert set(release.charts.values()) == {f"20{yy}.{month}.{n}"}


@pytest.mark.parametrize("major", range(10, 21), ids=[f"2.{m}" for m in range(10, 21)])
def test_every_major_has_its_named_releases(major: int) -> None:
    """A major's marker edge and last stable are catalog releases; the last stable is its newest stable."""
    info = CAT.major(major)
    assert info is not None
    known = _by_text()
    mine = [v for v in known.values() if v.major == major]
    assert mine, f"no release of 2.{major}"
    if info.marker_edge:
        assert info.marker_edge in known
        assert min(mine, key=lambda v: v.sort_key) == known[info.marker_edge]
    if info.last_stable:
        stables = [v for v in mine if v.channel is Channel.STABLE]
        assert max(stables, key=lambda v: v.sort_key) == known[info.last_stable]
        assert sorted(v.numbers[0] for v in stables) == list(range(len(stables))), "a patch release is missing"


EDGE_ROWS = [r["release"] for r in ROWS if r["release"].startswith("edge-")]


@pytest.mark.parametrize("edge", EDGE_ROWS)
def test_every_edge_belongs_to_the_newest_major_whose_marker_precedes_it(edge: str) -> None:
    """Marker edges split the edge line into majors (facts section 1)."""
    expected = max(m for m, marker in MARKERS.items() if _edge_numbers(marker) <= _edge_numbers(edge))
    assert CAT.parse(edge).major == expected


@pytest.mark.parametrize(
    ("edge", "major"),
    [
        pytest.param("edge-24.2.5", 15, id="the edge after 2.15's marker is 2.15"),
        pytest.param("edge-24.8.1", 15, id="the last edge before 2.16's marker is 2.15"),
        pytest.param("edge-24.8.3", 16, id="the edge after 2.16's marker is 2.16"),
        pytest.param("edge-24.11.7", 16, id="edge-24.11.7 (same day as 2.17's marker's eve) is 2.16"),
        pytest.param("edge-25.4.3", 17, id="the last edge before 2.18's marker is 2.17"),
        pytest.param("edge-25.10.6", 18, id="the last edge before 2.19's marker is 2.18"),
        pytest.param("edge-26.6.2", 19, id="the last edge before 2.20's marker is 2.19"),
        pytest.param("edge-26.8.3", 20, id="the newest edge is 2.20"),
    ],
)
def test_edges_next_to_a_marker_belong_to_the_right_major(edge: str, major: int) -> None:
    """Edges on either side of a marker fall in the majors the facts give."""
    assert edge in _by_text()
    assert CAT.parse(edge).major == major


def test_regenerating_the_committed_table_reproduces_its_rows() -> None:
    """The generator, fed its own output, writes the same releases in the same order."""

    def rows(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith("#")]

    assert rows(regenerate(TABLE_TEXT)) == rows(TABLE_TEXT)


MAJORS = """catalog_version: 1
majors:
  - {major: 11, released: 2021-09, last_stable: stable-2.11.5, kubernetes: {min: "1.17", max: "1.23"}}
  - {major: 12, released: 2022-08, kubernetes: {min: "1.21", max: "1.24"}}
  - {major: 15, released: 2024-02-21, marker_edge: edge-24.2.4, kubernetes: {min: "1.22", max: "1.29"}}
  - {major: 16, released: 2024-08-13, marker_edge: edge-24.8.2, kubernetes: {min: "1.22", max: "1.29"}}
"""
HEADER = "release\tdate\tlinkerd2\tlinkerd-crds\tlinkerd-control-plane\tlinkerd-viz\tkube_min\tderived\n"
SOURCE = f"""# Linkerd's table: comments first, then a header, then rows in any order.
{HEADER}edge-24.8.2\t2024-08-05\t\t2024.8.2\t2024.8.2\t2024.8.2\t1.22.0\tlinkerd-crds,linkerd-control-plane,linkerd-viz
edge-23.8.2\t2023-08-11\t\t1.7.4-edge\t1.14.2-edge\t30.10.8-edge\t1.21.0\t
stable-2.9.5\t2021-04-29\t2.9.5\t\t\t\t1.13.0\tlinkerd2
edge-1.2.3\t2019-09-10\t1.2.3\t\t\t\t1.12.0\tlinkerd2
stable-2.11.5\t2022-09-22\t2.11.5\t\t\t2.11.5\t1.17.0\tlinkerd2,linkerd-viz
edge-24.2.4\t2024-02-20\t\t1.9.4-edge\t1.18.10-edge\t30.14.10-edge\t1.22.0\t
"""


def test_the_generator_keeps_placeable_releases_in_order_and_counts_the_rest() -> None:
    """Edges before the first marker, stables of unlisted majors and foreign tags are left out and counted."""
    text = regenerate(SOURCE, majors_catalog(MAJORS))
    rows = [line for line in text.splitlines() if not line.startswith("#")]
    assert [row.split("\t")[0] for row in rows] == ["release", "stable-2.11.5", "edge-24.2.4", "edge-24.8.2"]
    assert rows[0] == "release\tdate\tlinkerd2\tlinkerd-crds\tlinkerd-control-plane\tlinkerd-viz\tkube_min"
    assert rows[1] == "stable-2.11.5\t2022-09-22\t2.11.5\t\t\t2.11.5\t1.17.0"
    assert "#   1 edge releases before edge-24.2.4 (no marker edge places them)" in text
    assert "#   1 stable releases of majors linkerd.yaml does not list" in text
    assert "#   1 tags in no release form upgrader accepts" in text


@pytest.mark.parametrize(
    ("row", "error"),
    [
        pytest.param(
            "stable-2.12.0\t2022-08-23\t\t1.4.0\t\t30.3.0\t1.21.0\t",
            "stable-2.12.0 has no linkerd-control-plane chart version",
            id="a split-era release without a control-plane chart",
        ),
        pytest.param(
            "stable-2.11.4\t2022-07-13\t2.11.4\t1.0.0\t\t\t1.17.0\t",
            r"stable-2.11.4 \(2.11\) unexpectedly has a linkerd-crds chart",
            id="a linkerd2-era release with split charts",
        ),
        pytest.param(
            "edge-24.5.2\t2024-05-13\t\t2024.5.2\tlatest\t\t1.22.0\t",
            "edge-24.5.2: .*not a Linkerd chart version",
            id="a chart version in no known form",
        ),
        pytest.param(
            "edge-24.5.2\t2024-05-13\t\t2024.5.2\t2024.5.2\t\tnew\t",
            "edge-24.5.2: .*not a Kubernetes version",
            id="a Kubernetes floor in no known form",
        ),
    ],
)
def test_the_generator_refuses_a_source_whose_format_changed(row: str, error: str) -> None:
    """A row the catalog could not trust stops the generator with the release named."""
    with pytest.raises(InputError, match=error):
        regenerate(HEADER + row + "\n", majors_catalog(MAJORS))


def test_the_generator_refuses_a_source_without_a_release_the_yaml_names() -> None:
    """A marker edge or last stable missing from the source means the two files disagree."""
    rows = SOURCE.replace("stable-2.11.5", "stable-2.11.4")
    with pytest.raises(InputError, match=r"linkerd.yaml names stable-2.11.5 for 2.11"):
        regenerate(rows, majors_catalog(MAJORS))
