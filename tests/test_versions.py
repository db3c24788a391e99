"""Version forms parse to canonical text and a major, and order totally."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.specifiers import SpecifierSet
from packaging.version import Version as PackagingVersion

from upgrader.catalog import default_catalog
from upgrader.errors import InputError
from upgrader.versions import (
    Channel,
    ChartKind,
    Version,
    edge_from_calendar_chart,
    kubernetes_minors,
    kubernetes_version,
    parse_chart_version,
)

CAT = default_catalog()


@pytest.mark.parametrize(
    ("text", "canonical", "major", "channel"),
    [
        pytest.param("stable-2.14.10", "stable-2.14.10", 14, Channel.STABLE, id="stable release"),
        pytest.param(" stable-2.12.06 ", "stable-2.12.6", 12, Channel.STABLE, id="stable is trimmed and normalised"),
        pytest.param("edge-24.8.2", "edge-24.8.2", 16, Channel.EDGE, id="the marker edge of 2.16 is 2.16"),
        pytest.param("edge-24.8.1", "edge-24.8.1", 15, Channel.EDGE, id="the edge before a marker is the older major"),
        pytest.param("edge-24.4.1", "edge-24.4.1", 15, Channel.EDGE, id="edge-24.4.1 is 2.15"),
        pytest.param("edge-26.11.3", "edge-26.11.3", 20, Channel.EDGE, id="edges after the newest marker are 2.20"),
        pytest.param("enterprise-2.17.1", "enterprise-2.17.1", 17, Channel.ENTERPRISE, id="enterprise release"),
        pytest.param("enterprise-2.15.1-1", "enterprise-2.15.1-1", 15, Channel.ENTERPRISE, id="enterprise hotpatch"),
    ],
)
def test_parse(text: str, canonical: str, major: int, channel: Channel) -> None:
    """Every accepted form maps to its canonical spelling, channel and major."""
    v = CAT.parse(text)
    assert (str(v), v.major, v.channel) == (canonical, major, channel)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("2.14.10", id="bare number without channel"),
        pytest.param("v2.14.10", id="v-prefixed number"),
        pytest.param("stable-2.14", id="stable without patch"),
        pytest.param("edge-24.13.1", id="edge with month 13"),
        pytest.param("edge-23.8.2", id="edge older than every marker"),
        pytest.param("latest", id="a word"),
        pytest.param("", id="empty"),
    ],
)
def test_unparseable_versions_are_input_errors(text: str) -> None:
    """Anything else is an InputError whose hint names the accepted forms (or why it cannot be placed)."""
    with pytest.raises(InputError) as info:
        CAT.parse(text)
    assert "stable-2.X.Y" in info.value.hint or "newer edge" in info.value.hint


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        pytest.param("stable-2.13.7", "stable-2.14.0", id="majors order first"),
        pytest.param("stable-2.14.9", "stable-2.14.10", id="patches order numerically"),
        pytest.param("stable-2.14.10", "edge-24.2.4", id="a newer major's edge is newer than an older stable"),
        pytest.param("edge-24.2.4", "enterprise-2.15.1", id="within a major edges come before enterprise"),
        pytest.param("enterprise-2.15.1", "enterprise-2.15.1-1", id="a hotpatch is newer"),
        pytest.param("stable-2.15.1", "enterprise-2.15.1", id="stable before enterprise on a tie"),
        pytest.param("edge-24.8.2", "edge-24.8.10", id="edge numbers compare numerically"),
    ],
)
def test_order(older: str, newer: str) -> None:
    """The order is by major, then channel rank, then numbers."""
    assert CAT.parse(older) < CAT.parse(newer)
    assert CAT.parse(newer) > CAT.parse(older)


def test_calendar_chart_versions_name_their_edge_release() -> None:
    """Charts from March 2024 on are versioned YYYY.M.N after edge-YY.M.N."""
    assert edge_from_calendar_chart("2024.8.2") == "edge-24.8.2"
    assert edge_from_calendar_chart("1.16.11") is None
    assert edge_from_calendar_chart("1.18.10-edge") is None


versions = st.one_of(
    st.builds(lambda m, p: f"stable-2.{m}.{p}", st.integers(10, 20), st.integers(0, 15)),
    st.builds(
        lambda m, p, h: f"enterprise-2.{m}.{p}" + (f"-{h}" if h else ""),
        st.integers(10, 25),
        st.integers(0, 15),
        st.integers(0, 3),
    ),
    st.builds(lambda y, mo, n: f"edge-{y}.{mo}.{n}", st.integers(24, 27), st.integers(1, 12), st.integers(1, 9)).filter(
        lambda t: t >= "edge-24.2.4" or t.startswith("edge-25") or t.startswith("edge-26")
    ),
)


def _parse(text: str) -> Version | None:
    try:
        return CAT.parse(text)
    except InputError:
        return None


@given(versions, versions, versions)
def test_order_is_total_and_transitive(a: str, b: str, c: str) -> None:
    """Any two versions compare one way; the order is transitive and round-trips through text."""
    va, vb, vc = _parse(a), _parse(b), _parse(c)
    if va is None or vb is None or vc is None:
        return
    assert (va < vb) + (vb < va) + (va.sort_key == vb.sort_key) == 1
    if va <= vb <= vc:
        assert va <= vc
    assert CAT.parse(str(va)) == va


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("1.16.11", ChartKind.SEMVER),
        ("1.18.10-edge", ChartKind.EDGE),
        ("2024.8.2", ChartKind.CALENDAR),
        ("30.12.11", ChartKind.SEMVER),
    ],
)
def test_chart_versions_are_classified(text: str, kind: ChartKind) -> None:
    """Each chart numbering scheme is recognised."""
    assert parse_chart_version(text).kind is kind


def test_chart_versions_order_numerically_with_calendar_charts_last() -> None:
    """1.9.8 < 1.16.11 < 1.18.10-edge < 2024.8.2 < 2024.11.8."""
    texts = ["2024.11.8", "1.16.11", "2024.8.2", "1.9.8", "1.18.10-edge"]
    assert [str(v) for v in sorted(map(parse_chart_version, texts))] == [
        "1.9.8",
        "1.16.11",
        "1.18.10-edge",
        "2024.8.2",
        "2024.11.8",
    ]


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        pytest.param("1.9.3-edge", "1.9.3", id="an edge chart sorts before the stable chart of the same number"),
        pytest.param("1.9.3", "1.9.4-edge", id="a newer edge chart sorts after an older stable chart"),
        pytest.param("30.14.10-edge", "30.17.4-edge", id="edge charts compare numerically"),
        pytest.param("v1.16.10", "1.16.11", id="a v prefix is ignored"),
    ],
)
def test_chart_versions_order_as_semver(older: str, newer: str) -> None:
    """``-edge`` is a semver pre-release: never equal to the stable chart of the same number."""
    assert parse_chart_version(older) < parse_chart_version(newer)
    assert parse_chart_version(older) != parse_chart_version(newer)


@pytest.mark.parametrize(
    ("text", "core"),
    [
        pytest.param("v1.28.3", "1.28.3", id="a v-prefixed version"),
        pytest.param("1.28", "1.28.0", id="a minor version"),
        pytest.param("v1.28.3+k3s1", "1.28.3", id="k3s build metadata"),
        pytest.param("v1.29.2-gke.1521000", "1.29.2", id="a vendor suffix"),
        pytest.param("v1.31.0-rc.1", "1.31.0", id="a release candidate counts as its minor"),
    ],
)
def test_kubernetes_versions_keep_their_numbers(text: str, core: str) -> None:
    """A cluster's version string compares by its numbers alone."""
    assert kubernetes_version(text) == PackagingVersion(core)


def test_kubernetes_minors_hold_every_patch_of_the_range() -> None:
    """1.21 to 1.28 is >=1.21,<1.29."""
    assert kubernetes_minors("1.21", "1.28") == SpecifierSet(">=1.21,<1.29")


def test_unparseable_chart_version_is_an_input_error() -> None:
    """A chart version in no known form names the accepted ones."""
    with pytest.raises(InputError, match="not a Linkerd chart version"):
        parse_chart_version("latest")
